//! The `docker` workload attestor: the caller's container, from its cgroup
//! (`super::container`) and the container engine's inspect answer
//! (`GET /containers/{id}/json` over its Unix socket: Docker's, or Podman's
//! compatible API), as selectors named as SPIRE names them: `docker:label:<k>:<v>`,
//! `docker:image_id:<Config.Image>` (the image as the container was created from
//! it, such as `nginx:1.27`), `docker:image_config_digest:<Image>` (the image's ID,
//! `sha256:...`), and `docker:env:<NAME>=<value>` for the configured names only.
//!
//! A caller in no container gets no `docker` selectors, and so does one in a
//! container the engine does not know (404: a Kubernetes pod's container on a node
//! that also runs Docker).
//!
//! A cgroup's name proves nothing by itself: a user to whom systemd delegates a
//! cgroup tree (every user's `user@<uid>.service`, or a rootless engine's) can make
//! one named like any container. So the caller must be in the container's own
//! cgroups: those that name the container in the caller's cgroup file must be the
//! ones that name it in the file of the container's first process (`State.Pid` of
//! the inspect answer), which the engine started there. A container that is not
//! running, or a caller elsewhere, is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tessera_core::Selector;
use tessera_process::http::{self, HttpError, Request};

use super::container::{self, CgroupError};
use super::{Peer, WorkloadAttestError, WorkloadAttestor};
use crate::config::DockerAttestorConfig;

/// The largest inspect answer read (a container's JSON is kilobytes).
const MAX_INSPECT: usize = 4 << 20;
/// The deadline of one request to the engine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker attestor: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("docker attestor: {0}")]
    Config(String),
    #[error("docker attestor: the engine at {socket} cannot be reached: {source}")]
    Unreachable {
        socket: String,
        #[source]
        source: HttpError,
    },
    #[error("docker attestor: the request {path} to the engine at {socket} failed: {source}")]
    Request {
        socket: String,
        path: String,
        #[source]
        source: HttpError,
    },
    #[error("docker attestor: the engine at {socket} answered {status} for {path}: {body}")]
    Status {
        socket: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error(
        "docker attestor: the caller is not in container {id}'s cgroups, only in cgroups named like them ({caller}; the container's process {container_pid} is in {container}); refused"
    )]
    NotInContainer {
        id: String,
        caller: String,
        container_pid: i64,
        container: String,
    },
    #[error(
        "docker attestor: the caller's cgroup names container {id}, which is not running (the engine gives it no process); refused"
    )]
    NotRunning { id: String },
    #[error(
        "docker attestor: the engine at {socket} answered {path} with no container inspection: {reason}"
    )]
    Malformed {
        socket: String,
        path: String,
        reason: String,
    },
}

/// The `docker` attestor (see the module documentation).
#[derive(Debug)]
pub struct Docker {
    cfg: DockerAttestorConfig,
    /// Where the container's first process is looked at (`/proc`).
    proc_root: PathBuf,
}

impl Docker {
    /// The attestor as `[workload_attestors.docker]` configures it.
    pub fn new(cfg: DockerAttestorConfig) -> Self {
        Self {
            cfg,
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// The same, looking for processes in `root` instead of `/proc` (tests).
    #[cfg(test)]
    fn with_proc_root(mut self, root: &std::path::Path) -> Self {
        self.proc_root = root.to_owned();
        self
    }

    /// Whether the caller, whose cgroup file is `text` and whose cgroups naming its
    /// container are `naming`, is in the cgroups of the container `inspect` describes.
    fn check_in_container(
        &self,
        id: &str,
        naming: &[String],
        inspect: &Inspect,
    ) -> Result<(), DockerError> {
        let state = inspect.state.as_ref();
        let container_pid = state.map_or(0, |s| s.pid);
        if container_pid <= 0 || state.is_some_and(|s| s.running == Some(false)) {
            return Err(DockerError::NotRunning { id: id.to_owned() });
        }
        let path = self
            .proc_root
            .join(container_pid.to_string())
            .join("cgroup");
        let theirs = std::fs::File::open(&path)
            .and_then(|f| {
                use std::io::Read;
                let mut buf = Vec::new();
                f.take(container::MAX_CGROUP_FILE as u64 + 1)
                    .read_to_end(&mut buf)?;
                Ok(buf)
            })
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .and_then(|t| {
                container::parse_naming(&t, container_pid as i32)
                    .ok()
                    .flatten()
            });
        match theirs {
            Some((info, theirs))
                if info.container_id.as_deref() == Some(id) && theirs == naming =>
            {
                Ok(())
            }
            other => Err(DockerError::NotInContainer {
                id: id.to_owned(),
                caller: naming.join(", "),
                container_pid,
                container: match other {
                    Some((_, theirs)) => theirs.join(", "),
                    None => format!(
                        "no cgroup of that container ({} unreadable or naming none)",
                        path.display()
                    ),
                },
            }),
        }
    }

    /// The caller's selectors (see the module documentation).
    pub async fn attest_pid(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        pid: i32,
    ) -> Result<Vec<Selector>, DockerError> {
        let text = container::read_text(dir, pid)?;
        let Some((id, naming)) = container::parse_naming(&text, pid)?
            .and_then(|(info, naming)| Some((info.container_id?, naming)))
        else {
            return Ok(Vec::new());
        };
        let socket: PathBuf = self.cfg.socket().map_err(DockerError::Config)?;
        let prefix = self
            .cfg
            .docker_version
            .as_ref()
            .map(|v| format!("/v{v}"))
            .unwrap_or_default();
        let path = format!("{prefix}/containers/{id}/json");
        let opts = http::Options {
            timeout: REQUEST_TIMEOUT,
            max_body: MAX_INSPECT,
            tls: None,
        };
        let shown = socket.display().to_string();
        let resp = http::send_unix(&socket, Request::get(&path), &opts)
            .await
            .map_err(|e| match e {
                e if e.is_unreachable() => DockerError::Unreachable {
                    socket: shown.clone(),
                    source: e,
                },
                e => DockerError::Request {
                    socket: shown.clone(),
                    path: path.clone(),
                    source: e,
                },
            })?;
        match resp.status {
            200 => {}
            404 => {
                tracing::debug!(container = %id, socket = %shown, "the engine does not know the caller's container: no docker selectors");
                return Ok(Vec::new());
            }
            status => {
                return Err(DockerError::Status {
                    socket: shown,
                    path,
                    status,
                    body: resp.body_excerpt(),
                });
            }
        }
        let malformed = |reason: String| DockerError::Malformed {
            socket: shown.clone(),
            path: path.clone(),
            reason,
        };
        let inspect: Inspect =
            serde_json::from_slice(&resp.body).map_err(|e| malformed(e.to_string()))?;
        if inspect.id != id {
            return Err(malformed(format!(
                "it describes container {:?}, not {id}",
                inspect.id
            )));
        }
        self.check_in_container(&id, &naming, &inspect)?;
        Ok(container::selectors(
            "docker",
            values(&inspect, &self.cfg.env_names),
        ))
    }
}

#[async_trait]
impl WorkloadAttestor for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
        self.attest_pid(peer.proc_dir(), peer.cred().pid)
            .await
            .map_err(WorkloadAttestError::new)
    }
}

/// The fields of the engine's ContainerJSON the selectors come from.
#[derive(Debug, Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Config", default)]
    config: Option<ContainerConfig>,
    #[serde(rename = "State", default)]
    state: Option<State>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct State {
    /// The container's first process, in the engine's PID namespace; 0 when it is
    /// not running.
    #[serde(rename = "Pid")]
    pid: i64,
    #[serde(rename = "Running")]
    running: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerConfig {
    #[serde(rename = "Image")]
    image: String,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Env")]
    env: Option<Vec<String>>,
}

/// The selector values (without `docker:`).
fn values(inspect: &Inspect, env_names: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    if !inspect.image.is_empty() {
        v.push(format!("image_config_digest:{}", inspect.image));
    }
    let Some(cfg) = &inspect.config else {
        return v;
    };
    if !cfg.image.is_empty() {
        v.push(format!("image_id:{}", cfg.image));
    }
    for (k, val) in cfg.labels.iter().flatten() {
        // `label:a:b:c` would be both `a`=`b:c` and `a:b`=`c`: a key with a colon
        // (which an image's author may set) could take a selector meant for another.
        if k.contains(':') {
            tracing::warn!(label = %k.escape_debug(), "a container label whose key holds ':' gives no selector");
            continue;
        }
        v.push(format!("label:{k}:{val}"));
    }
    for e in cfg.env.iter().flatten() {
        let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
        if env_names.iter().any(|n| n == name) {
            v.push(format!("env:{e}"));
        }
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::workload::attestor::container::testing::{answer_one, proc_dir};

    pub(crate) const CID: &str = "3f1c0a9e6b5d4c2f8e7a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e";
    const PODMAN_CID: &str = "a41d9c7e2b5f8a3c6e1d4b7f0a9c2e5b8d1f4a7c0e3b6d9f2a5c8e1b4d7f0a3c";
    const IMAGE: &str = "sha256:9bea9f2796e236cb18c2b3ad561ff29f655d1001f9ec7247a0bc5e08d25652a1";

    /// The first process of the container [`CID`] in [`docker_inspect`]'s answer
    /// (its `State.Pid`) unless a test says otherwise; [`PODMAN_CID`]'s is 5151.
    pub(crate) const FIRST_PID: i64 = 4242;

    /// `docker container inspect`'s JSON (the Engine API's ContainerJSON) of an
    /// nginx container started with two labels, whose first process is `pid`.
    fn docker_inspect(id: &str, pid: i64) -> String {
        format!(
            r#"{{"Id":"{id}","Created":"2026-12-02T09:00:00.123456789Z","Path":"/docker-entrypoint.sh","Args":["nginx","-g","daemon off;"],
"State":{{"Status":"running","Running":true,"Paused":false,"Restarting":false,"OOMKilled":false,"Dead":false,"Pid":{pid},"ExitCode":0,"Error":"","StartedAt":"2026-12-02T09:00:00.5Z","FinishedAt":"0001-01-01T00:00:00Z"}},
"Image":"{IMAGE}","ResolvConfPath":"/var/lib/docker/containers/{id}/resolv.conf","HostnamePath":"/var/lib/docker/containers/{id}/hostname","HostsPath":"/var/lib/docker/containers/{id}/hosts","LogPath":"/var/lib/docker/containers/{id}/{id}-json.log",
"Name":"/web","RestartCount":0,"Driver":"overlay2","Platform":"linux","MountLabel":"","ProcessLabel":"","AppArmorProfile":"docker-default","ExecIDs":null,
"HostConfig":{{"NetworkMode":"bridge","RestartPolicy":{{"Name":"no","MaximumRetryCount":0}},"CgroupnsMode":"private"}},
"GraphDriver":{{"Data":null,"Name":"overlay2"}},"Mounts":[],
"Config":{{"Hostname":"3f1c0a9e6b5d","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"ExposedPorts":{{"80/tcp":{{}}}},"Tty":false,"OpenStdin":false,"StdinOnce":false,
 "Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","NGINX_VERSION=1.27.3","APP_ROLE=frontend","DB_PASSWORD=hunter2"],
 "Cmd":["nginx","-g","daemon off;"],"Image":"nginx:1.27","Volumes":null,"WorkingDir":"","Entrypoint":["/docker-entrypoint.sh"],"OnBuild":null,
 "Labels":{{"com.example.team":"shop","maintainer":"NGINX Docker Maintainers <docker-maint@nginx.com>"}},"StopSignal":"SIGQUIT"}},
"NetworkSettings":{{"Bridge":"","SandboxID":"","Ports":{{"80/tcp":null}},"Networks":{{"bridge":{{"IPAddress":"172.17.0.2","Gateway":"172.17.0.1"}}}}}}}}"#
        )
    }

    /// Podman's compatible inspect of a container with no label (`Labels` null).
    fn podman_inspect(id: &str) -> String {
        format!(
            r#"{{"Id":"{id}","Created":"2026-12-02T09:10:00.5Z","Path":"sleep","Args":["infinity"],"State":{{"Status":"running","Running":true,"Pid":5151,"ExitCode":0}},
"Image":"sha256:7e01a0d0a1dcd9e539f8e9bbd80106d59efbf97293b3d38f5d7a34501526cdb5","Name":"/worker","RestartCount":0,"Driver":"overlay","Platform":"linux",
"HostConfig":{{"NetworkMode":"bridge","CgroupnsMode":"private"}},"Mounts":[],
"Config":{{"Hostname":"a41d9c7e2b5f","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","container=podman","APP_ROLE=worker","HOSTNAME=a41d9c7e2b5f"],"Cmd":["sleep","infinity"],"Image":"docker.io/library/debian:bookworm","Volumes":null,"WorkingDir":"/","Entrypoint":null,"Labels":null,"StopSignal":"15"}},
"NetworkSettings":{{"Ports":{{}}}}}}"#
        )
    }

    /// An engine on a Unix socket in `dir` that knows two containers; it records the
    /// request lines. [`CID`]'s first process is the PID in the third value
    /// ([`FIRST_PID`] until a test sets another).
    pub(crate) fn fake_engine(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, Arc<Mutex<Vec<String>>>, Arc<AtomicI64>) {
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let first_pid = Arc::new(AtomicI64::new(FIRST_PID));
        let pid = first_pid.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let log = log.clone();
                let pid = pid.load(Ordering::SeqCst);
                tokio::spawn(answer_one(s, move |head| {
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    log.lock().unwrap().push(line.clone());
                    let target = line.split(' ').nth(1).unwrap_or_default();
                    let target = target.strip_prefix("/v1.41").unwrap_or(target);
                    match target {
                        t if t == format!("/containers/{CID}/json") => {
                            (200, docker_inspect(CID, pid))
                        }
                        t if t == format!("/containers/{PODMAN_CID}/json") => {
                            (200, podman_inspect(PODMAN_CID))
                        }
                        t => (
                            404,
                            format!(
                                r#"{{"message":"No such container: {}"}}"#,
                                t.trim_start_matches("/containers/")
                                    .trim_end_matches("/json")
                            ),
                        ),
                    }
                }));
            }
        });
        (path, seen, first_pid)
    }

    fn config(socket: &std::path::Path, extra: &str) -> DockerAttestorConfig {
        toml::from_str(&format!(
            "docker_socket_path = \"unix://{}\"\n{extra}",
            socket.display()
        ))
        .unwrap()
    }

    /// `d`'s selectors for a caller in `cgroup`, whose containers' first processes
    /// are in the same cgroups (the caller is in the container).
    async fn attest(d: &Docker, cgroup: &str) -> Result<Vec<String>, DockerError> {
        attest_beside(d, cgroup, cgroup).await
    }

    /// `d`'s selectors for a caller in `cgroup` when the containers' first processes
    /// are in `first`.
    async fn attest_beside(
        d: &Docker,
        cgroup: &str,
        first: &str,
    ) -> Result<Vec<String>, DockerError> {
        let (_dir, f) = proc_dir(cgroup);
        let proc = tempfile::tempdir().unwrap();
        for pid in [FIRST_PID, 5151] {
            std::fs::create_dir(proc.path().join(pid.to_string())).unwrap();
            std::fs::write(proc.path().join(format!("{pid}/cgroup")), first).unwrap();
        }
        let d = Docker::new(d.cfg.clone()).with_proc_root(proc.path());
        Ok(d.attest_pid(f.as_fd(), 42)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    #[tokio::test]
    async fn docker_and_podman_containers_get_their_selectors() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, seen, _) = fake_engine(dir.path());
        let d = Docker::new(config(&socket, "env_names = [\"APP_ROLE\", \"ABSENT\"]\n"));
        let sels = attest(&d, &format!("0::/system.slice/docker-{CID}.scope\n"))
            .await
            .unwrap();
        assert_eq!(
            sels,
            [
                "docker:env:APP_ROLE=frontend",
                &format!("docker:image_config_digest:{IMAGE}"),
                "docker:image_id:nginx:1.27",
                "docker:label:com.example.team:shop",
                "docker:label:maintainer:NGINX Docker Maintainers <docker-maint@nginx.com>",
            ]
        );
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [format!("GET /containers/{CID}/json HTTP/1.1")]
        );
        // Podman, rootful on cgroup v2, with the API version asked for.
        let d = Docker::new(config(
            &socket,
            "docker_version = \"1.41\"\nenv_names = [\"APP_ROLE\"]\n",
        ));
        let sels = attest(
            &d,
            &format!("0::/machine.slice/libpod-{PODMAN_CID}.scope/container\n"),
        )
        .await
        .unwrap();
        assert_eq!(
            sels,
            [
                "docker:env:APP_ROLE=worker",
                "docker:image_config_digest:sha256:7e01a0d0a1dcd9e539f8e9bbd80106d59efbf97293b3d38f5d7a34501526cdb5",
                "docker:image_id:docker.io/library/debian:bookworm",
            ]
        );
        assert_eq!(
            seen.lock().unwrap().last().unwrap(),
            &format!("GET /v1.41/containers/{PODMAN_CID}/json HTTP/1.1")
        );
        // No env_names: no environment at all (it may hold secrets).
        let d = Docker::new(config(&socket, ""));
        let sels = attest(&d, &format!("4:memory:/docker/{CID}\n"))
            .await
            .unwrap();
        assert!(
            !sels.iter().any(|s| s.starts_with("docker:env:")),
            "{sels:?}"
        );
        // Not in a container: no selectors, no request.
        let n = seen.lock().unwrap().len();
        assert!(
            attest(&d, "0::/user.slice/user-0.slice/session-1.scope\n")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(seen.lock().unwrap().len(), n);
        // A container the engine does not know: no selectors.
        let other = CID.replace('3', "4");
        assert!(
            attest(&d, &format!("0::/docker/{other}\n"))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_caller_outside_the_containers_cgroups_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _, first_pid) = fake_engine(dir.path());
        let d = Docker::new(config(&socket, ""));
        let real = format!("0::/system.slice/docker-{CID}.scope\n");
        // Cgroups named like the container, made by a user in the tree systemd
        // delegates to them, or anywhere a process may make cgroups.
        for fake in [
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{CID}.scope\n"
            ),
            format!("0::/user.slice/user-1000.slice/user@1000.service/docker/{CID}\n"),
            format!("0::/system.slice/builder.service/system.slice/docker-{CID}.scope\n"),
        ] {
            let e = attest_beside(&d, &fake, &real).await.unwrap_err();
            assert!(
                matches!(e, DockerError::NotInContainer { .. }),
                "{fake}: {e}"
            );
            let m = e.to_string();
            assert!(
                m.contains(&format!(
                    "process {FIRST_PID} is in 0::/system.slice/docker-{CID}.scope"
                )),
                "{m}"
            );
        }
        // The first process in a cgroup of its own inside the container (Podman's
        // `container`, or systemd run in it): the caller is in the container all
        // the same.
        let sels = attest_beside(
            &d,
            &format!("0::/machine.slice/libpod-{PODMAN_CID}.scope\n"),
            &format!("0::/machine.slice/libpod-{PODMAN_CID}.scope/container\n"),
        )
        .await
        .unwrap();
        assert!(
            sels.contains(&"docker:image_id:docker.io/library/debian:bookworm".to_owned()),
            "{sels:?}"
        );
        // A label key with a colon would pass for another label (`team`=`shop:x`);
        // odd bytes elsewhere are kept as they are (a selector matches them exactly).
        let labels = |l: &str| {
            let inspect: Inspect =
                serde_json::from_str(&format!(r#"{{"Id":"x","Config":{{"Labels":{l}}}}}"#))
                    .unwrap();
            values(&inspect, &[])
        };
        assert_eq!(labels(r#"{"team:shop":"x"}"#), Vec::<String>::new());
        assert_eq!(labels(r#"{"team":"shop:x"}"#), ["label:team:shop:x"]);
        assert_eq!(labels(r#"{"a\nb":"c\u0000"}"#), ["label:a\nb:c\u{0}"]);
        // A container whose first process is gone, or that is not running (Pid 0).
        first_pid.store(77_777, Ordering::SeqCst);
        let e = attest(&d, &real).await.unwrap_err();
        assert!(matches!(e, DockerError::NotInContainer { .. }), "{e}");
        assert!(e.to_string().contains("unreadable"), "{e}");
        first_pid.store(0, Ordering::SeqCst);
        let e = attest(&d, &real).await.unwrap_err();
        assert!(matches!(e, DockerError::NotRunning { .. }), "{e}");
    }

    #[tokio::test]
    async fn engine_failures_name_the_socket_and_what_was_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = format!("0::/docker/{CID}\n");
        // Nothing listens.
        let absent = dir.path().join("absent.sock");
        let e = attest(&Docker::new(config(&absent, "")), &cgroup)
            .await
            .unwrap_err();
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("docker attestor"), "{e}");
        assert!(e.to_string().contains("absent.sock"), "{e}");
        // A 500, an answer that is not an inspection, one about another container.
        for (status, body, want) in [
            (
                500,
                r#"{"message":"server error"}"#.to_owned(),
                "answered 500",
            ),
            (200, "[]".to_owned(), "no container inspection"),
            (
                200,
                docker_inspect(&CID.replace('3', "4"), FIRST_PID),
                "describes container",
            ),
        ] {
            let path = dir.path().join(format!("e{status}{}.sock", want.len()));
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = listener.accept().await.unwrap();
                answer_one(s, |_| (status, body)).await;
            });
            let e = attest(&Docker::new(config(&path, "")), &cgroup)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            server.await.unwrap();
        }
        // The socket setting must be a unix:// URL.
        let cfg: DockerAttestorConfig =
            toml::from_str("docker_socket_path = \"/var/run/docker.sock\"").unwrap();
        let e = attest(&Docker::new(cfg), &cgroup).await.unwrap_err();
        assert!(e.to_string().contains("unix:///absolute/path"), "{e}");
    }
}

/// End to end, with a real process: a cgroup whose path carries a container ID is
/// made on this host's cgroup v2 hierarchy (the unified one of a hybrid host), a
/// child process is moved into it, pinned as the Workload API pins callers, and
/// attested through the configured attestors against the fake kubelet and engine.
/// This needs root (to make cgroups); run as another user, the tests say so and
/// check nothing.
#[cfg(test)]
mod real_cgroup {
    use std::os::fd::AsFd;
    use std::path::PathBuf;
    use std::process::Child;

    use crate::config::WorkloadAttestorsConfig;
    use crate::workload::attestor::{Peer, WorkloadAttestors, k8s};
    use crate::workload::peer::tests::{pin_child, sh};

    /// A child process in a cgroup made for it; both go when this is dropped.
    struct Contained {
        child: Child,
        /// The cgroups made, innermost first.
        made: Vec<PathBuf>,
    }

    impl Contained {
        /// A child in the cgroup `rel` (below a folder of this test's own), or `None`
        /// when this process may not make cgroups.
        fn new(rel: &str) -> Option<Self> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("not root: cannot make cgroups; the real-process check is skipped");
                return None;
            }
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let root = mountinfo
                .lines()
                .find(|l| l.contains(" - cgroup2 "))
                .and_then(|l| l.split(' ').nth(4))
                .map(PathBuf::from)
                .expect("this host mounts a cgroup v2 hierarchy");
            let base = root.join(format!("tessera-test-{}", std::process::id()));
            let mut made = Vec::new();
            let mut dir = base.clone();
            for seg in std::iter::once("").chain(rel.split('/')) {
                if !seg.is_empty() {
                    dir = dir.join(seg);
                }
                if !dir.exists() {
                    std::fs::create_dir(&dir).unwrap();
                    made.insert(0, dir.clone());
                }
            }
            let child = sh("read x");
            let out = Contained { child, made };
            std::fs::write(dir.join("cgroup.procs"), out.child.id().to_string()).unwrap();
            Some(out)
        }
    }

    impl Drop for Contained {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for d in &self.made {
                let _ = std::fs::remove_dir(d);
            }
        }
    }

    async fn attest(c: &Contained, attestors: &WorkloadAttestors) -> Vec<String> {
        let pinned = pin_child(&c.child, true).unwrap();
        let dir = pinned.check().unwrap();
        let sels = attestors
            .attest(&Peer::new(&pinned, dir.as_fd()))
            .await
            .unwrap();
        drop(dir);
        pinned.check().unwrap();
        sels.iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn a_process_in_a_docker_and_a_kubernetes_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _, first_pid) = super::tests::fake_engine(dir.path());
        let (port, ca, _) = k8s::tests::fake_kubelet(1).await;
        let mut cfg: WorkloadAttestorsConfig = toml::from_str(&format!(
            "[docker]\ndocker_socket_path = \"unix://{}\"\n",
            socket.display()
        ))
        .unwrap();
        let docker_only = WorkloadAttestors::from_config(&cfg);
        assert_eq!(docker_only.names(), ["unix", "docker"]);
        cfg.k8s = Some(k8s::tests::config(dir.path(), port, &ca));
        let attestors = WorkloadAttestors::from_config(&cfg);
        assert_eq!(attestors.names(), ["unix", "k8s", "docker"]);

        let Some(docker) =
            Contained::new(&format!("system.slice/docker-{}.scope", super::tests::CID))
        else {
            return;
        };
        first_pid.store(
            i64::from(docker.child.id()),
            std::sync::atomic::Ordering::SeqCst,
        );
        let sels = attest(&docker, &docker_only).await;
        assert!(
            sels.contains(&"docker:image_id:nginx:1.27".to_owned()),
            "{sels:?}"
        );
        assert!(sels.iter().any(|s| s.starts_with("unix:uid:")), "{sels:?}");
        // Another process, in a cgroup of its own named like the container: its
        // `unix` selectors count, the container's do not.
        let fake = Contained::new(&format!(
            "user.slice/user-1000.slice/user@1000.service/app.slice/docker-{}.scope",
            super::tests::CID
        ))
        .unwrap();
        let sels = attest(&fake, &docker_only).await;
        assert!(sels.iter().any(|s| s.starts_with("unix:uid:")), "{sels:?}");
        assert!(!sels.iter().any(|s| s.starts_with("docker:")), "{sels:?}");
        drop(fake);
        drop(docker);

        let pod_slice = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            k8s::tests::POD.replace('-', "_")
        );
        let pod = Contained::new(&format!(
            "{pod_slice}/cri-containerd-{}.scope",
            k8s::tests::CID
        ))
        .unwrap();
        let sels = attest(&pod, &attestors).await;
        assert!(
            sels.contains(&"k8s:pod-name:web-7d4b9c8f6-x2x9k".to_owned()),
            "{sels:?}"
        );
        assert!(
            sels.contains(&"k8s:container-name:web".to_owned()),
            "{sels:?}"
        );
        // Unknown to the engine: no docker selectors.
        assert!(!sels.iter().any(|s| s.starts_with("docker:")), "{sels:?}");
        let made = pod.made.clone();
        drop(pod);
        assert!(
            made.iter().all(|d| !d.exists()),
            "the test's cgroups are removed"
        );
    }
}
