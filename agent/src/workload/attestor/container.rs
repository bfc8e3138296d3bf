//! Which container (and which Kubernetes pod) a caller runs in, from its
//! `/proc/<pid>/cgroup`: the file the kernel writes, which a workload cannot forge.
//! The `k8s` and `docker` attestors share it.
//!
//! The file has one line per hierarchy, `<id>:<controllers>:<path>` (cgroup v1 has
//! one per mounted hierarchy, cgroup v2 the single `0::<path>`, a hybrid host both).
//! Paths are relative to the agent's cgroup namespace root, so an agent in a
//! container of its own may see `/../` in them. The runtimes name a container's
//! cgroup after its ID (64 lowercase hex digits), as one path segment:
//!
//! - the bare ID: containerd and Docker with the cgroupfs driver
//!   (`/kubepods/burstable/pod<uid>/<id>`, `/docker/<id>`);
//! - `<runtime>-<id>` or `<runtime>-<id>.scope` where the runtime is `docker`,
//!   `cri-containerd`, `crio` or `libpod` (the systemd driver, CRI-O, Podman).
//!
//! Nothing else matches: `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope`
//! hold the runtime's monitor, not the container, and have no other form.
//!
//! A pod's cgroup is `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice`
//! (systemd, with `_` for `-` in the UID).
//!
//! The rule, for each line:
//!
//! - **in a pod**: the segment right below the pod's segment names the container.
//!   The kubelet makes the pod's cgroup and the runtime the container's right under
//!   it; whatever lies above (a node that is itself a container, as with kind) or
//!   below (cgroups the workload made inside its own) is not taken. A line with more
//!   than one pod segment is refused. A process in the pod's own cgroup (the last
//!   segment) gives the pod alone; one below the pod in something that is not a
//!   container (CRI-O's `crio-conmon-<id>.scope`) gives nothing;
//! - **not in a pod**: the container is the outermost container segment, the one
//!   nearest the root: cgroups below it were made from inside the container (a
//!   delegated cgroup tree, a nested engine), so a workload cannot name another
//!   container by making one.
//!
//! Then over all lines: lines that name nothing are ignored (`/`, `user.slice`, the
//! engine's own service); when some line names a pod, lines without a pod are
//! ignored (on a node that is a container, the cgroup v2 line may name only the
//! node); everything that remains must agree, or the caller is refused: two
//! containers or two pods for one process is a layout this code does not know, and
//! guessing would risk the wrong identity. A file larger than [`MAX_CGROUP_FILE`] or
//! with a line not of the three-field form is refused as well.

use std::io::Read;
use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, OFlags};

/// The largest `/proc/<pid>/cgroup` read. The kernel writes one line per hierarchy
/// (about a dozen) of at most a path each (4096 bytes); more is not a real file.
pub const MAX_CGROUP_FILE: usize = 64 * 1024;

/// Runtimes whose container cgroups are `<runtime>-<id>[.scope]`.
const RUNTIME_PREFIXES: [&str; 4] = ["docker", "cri-containerd", "crio", "libpod"];

/// What the cgroup file says of the caller's container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// The container's ID, 64 lowercase hex digits; `None` for a process in a pod's
    /// cgroup but in none of its containers.
    pub container_id: Option<String>,
    /// The Kubernetes pod's UID (with `-`), when the path holds a pod.
    pub pod_uid: Option<String>,
}

/// Why the cgroup file gives no answer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/{pid}/cgroup: {source}")]
    Read {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/cgroup is larger than {MAX_CGROUP_FILE} bytes")]
    TooLarge { pid: i32 },
    #[error("/proc/{pid}/cgroup line {line} is not <hierarchy>:<controllers>:<path>")]
    Malformed { pid: i32, line: usize },
    #[error("/proc/{pid}/cgroup names more than one {what} ({a} and {b}); refused")]
    Ambiguous {
        pid: i32,
        what: &'static str,
        a: String,
        b: String,
    },
}

/// Reads the cgroup file of the process whose `/proc/<pid>` directory is `dir` and
/// says which container it names (`None`: the process is in no container).
pub fn read(dir: BorrowedFd<'_>, pid: i32) -> Result<Option<ContainerInfo>, CgroupError> {
    parse(&read_text(dir, pid)?, pid)
}

/// The cgroup file of the process whose `/proc/<pid>` directory is `dir`, as text
/// (bytes that are not UTF-8 replaced).
pub fn read_text(dir: BorrowedFd<'_>, pid: i32) -> Result<String, CgroupError> {
    let err = |source: std::io::Error| CgroupError::Read { pid, source };
    let fd = rustix::fs::openat(
        dir,
        "cgroup",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_CGROUP_FILE as u64 + 1)
        .read_to_end(&mut text)
        .map_err(err)?;
    if text.len() > MAX_CGROUP_FILE {
        return Err(CgroupError::TooLarge { pid });
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Parses the contents of `/proc/<pid>/cgroup` by the rule of the module
/// documentation.
pub fn parse(text: &str, pid: i32) -> Result<Option<ContainerInfo>, CgroupError> {
    Ok(parse_naming(text, pid)?.map(|(info, _)| info))
}

/// Parses like [`parse`], and also gives the cgroups that name the container (or,
/// for a process in no container of a pod, the pod): one per line that names it,
/// as `<hierarchy>:<controllers>:<path down to the naming segment>`. Two processes
/// in one container have the same; a process in a cgroup that is only named like
/// the container has others.
pub fn parse_naming(
    text: &str,
    pid: i32,
) -> Result<Option<(ContainerInfo, Vec<String>)>, CgroupError> {
    if text.len() > MAX_CGROUP_FILE {
        return Err(CgroupError::TooLarge { pid });
    }
    let mut found: Vec<(ContainerInfo, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CgroupError::Malformed { pid, line: n + 1 });
        };
        if let Some((info, depth)) = in_path(path, pid)? {
            let naming: Vec<&str> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .take(depth)
                .collect();
            found.push((
                info,
                format!("{hierarchy}:{controllers}:/{}", naming.join("/")),
            ));
        }
    }
    if found.iter().any(|(i, _)| i.pod_uid.is_some()) {
        found.retain(|(i, _)| i.pod_uid.is_some());
    }
    let mut naming: Vec<String> = found.iter().map(|(_, c)| c.clone()).collect();
    naming.sort();
    naming.dedup();
    let mut out: Option<ContainerInfo> = None;
    for (info, _) in found {
        let Some(first) = &out else {
            out = Some(info);
            continue;
        };
        let ambiguous = |what, a: &Option<String>, b: &Option<String>| CgroupError::Ambiguous {
            pid,
            what,
            a: a.clone().unwrap_or_else(|| "none".into()),
            b: b.clone().unwrap_or_else(|| "none".into()),
        };
        if first.pod_uid != info.pod_uid {
            return Err(ambiguous("pod", &first.pod_uid, &info.pod_uid));
        }
        if first.container_id != info.container_id {
            return Err(ambiguous(
                "container",
                &first.container_id,
                &info.container_id,
            ));
        }
    }
    Ok(out.map(|info| (info, naming)))
}

/// What one cgroup path names, and how many of its segments lead down to the one
/// that names it.
fn in_path(path: &str, pid: i32) -> Result<Option<(ContainerInfo, usize)>, CgroupError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut pods = segments
        .iter()
        .enumerate()
        .filter_map(|(i, s)| pod_uid(s).map(|uid| (i, uid)));
    if let Some((at, uid)) = pods.next() {
        if let Some((_, other)) = pods.next() {
            return Err(CgroupError::Ambiguous {
                pid,
                what: "pod",
                a: uid,
                b: other,
            });
        }
        let (container_id, depth) = match segments.get(at + 1) {
            None => (None, at + 1),
            Some(s) => match container_id(s) {
                Some(id) => (Some(id), at + 2),
                // Something of the runtime's own in the pod (CRI-O's conmon).
                None => return Ok(None),
            },
        };
        return Ok(Some((
            ContainerInfo {
                container_id,
                pod_uid: Some(uid),
            },
            depth,
        )));
    }
    Ok(segments.iter().enumerate().find_map(|(at, s)| {
        container_id(s).map(|id| {
            (
                ContainerInfo {
                    container_id: Some(id),
                    pod_uid: None,
                },
                at + 1,
            )
        })
    }))
}

/// Whether one of `naming` (see [`parse_naming`]) lies inside a systemd user
/// manager's tree (`user@<uid>.service`): systemd delegates that tree to its user,
/// who may make cgroups in it named like any container or pod.
pub fn in_user_manager(naming: &[String]) -> Option<&str> {
    naming.iter().map(String::as_str).find(|c| {
        c.splitn(3, ':').nth(2).is_some_and(|path| {
            path.split('/').any(|s| {
                s.strip_prefix("user@")
                    .and_then(|r| r.strip_suffix(".service"))
                    .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
            })
        })
    })
}

/// The container ID a segment names, if it is a container's cgroup.
fn container_id(segment: &str) -> Option<String> {
    if is_id(segment) {
        return Some(segment.to_owned());
    }
    RUNTIME_PREFIXES.iter().find_map(|runtime| {
        let rest = segment.strip_prefix(runtime)?.strip_prefix('-')?;
        let id = rest.strip_suffix(".scope").unwrap_or(rest);
        is_id(id).then(|| id.to_owned())
    })
}

/// Whether `s` is a container ID: 64 lowercase hex digits.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pod UID a segment names: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let raw = if let Some(uid) = segment.strip_prefix("pod") {
        uid
    } else {
        let stem = segment.strip_suffix(".slice")?;
        if !stem.starts_with("kubepods-") {
            return None;
        }
        stem.rsplit_once("-pod")?.1
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

/// Whether `s` is a UUID in its 8-4-4-4-12 text form (lowercase, as Kubernetes
/// writes them).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Selectors of type `kind` from `values` (`name:value`), sorted and without
/// duplicates. A value too long for a selector (a label of kilobytes) is left out and
/// logged: fewer selectors can only match fewer entries.
pub fn selectors(
    kind: &str,
    values: impl IntoIterator<Item = String>,
) -> Vec<tessera_core::Selector> {
    let values: std::collections::BTreeSet<String> = values.into_iter().collect();
    values
        .into_iter()
        .filter_map(|v| match tessera_core::Selector::new(kind, &v) {
            Ok(s) => Some(s),
            Err(e) => {
                let head: String = v.chars().take(64).collect();
                tracing::warn!(attestor = kind, value = %head, "selector left out: {e}");
                None
            }
        })
        .collect()
}

/// What the fake daemons of the attestors' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Answers one HTTP/1.1 request on `s` with what `answer` makes of its head
    /// (request line and headers): a status and a JSON body.
    pub(crate) async fn answer_one<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        answer: impl FnOnce(&str) -> (u16, String),
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let (status, body) = answer(&String::from_utf8_lossy(&head));
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    /// A directory standing for `/proc/<pid>` that holds only `cgroup`.
    pub(crate) fn proc_dir(cgroup: &str) -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup"), cgroup).unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        (dir, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f1c0a9e6b5d4c2f8e7a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e";
    const OTHER: &str = "b7e2d94c51a07f38e6c2d1b09a8f7e6d5c4b3a29180f7e6d5c4b3a2918a0b1c2";
    const POD: &str = "6f0e2c3a-9b1d-4e5f-8a7b-1c2d3e4f5a6b";

    /// The cgroup v1 controllers of a typical host, in the kernel's order.
    const V1: [&str; 12] = [
        "12:hugetlb",
        "11:devices",
        "10:pids",
        "9:perf_event",
        "8:net_cls,net_prio",
        "7:cpuset",
        "6:memory",
        "5:cpu,cpuacct",
        "4:freezer",
        "3:blkio",
        "2:rdma",
        "1:name=systemd",
    ];

    /// A cgroup v1 file with every controller at `path` (rdma at `/`, as on real
    /// hosts where nothing limits it), and `unified` as the v2 line of a hybrid host.
    fn v1(path: &str, unified: Option<&str>) -> String {
        let mut out = String::new();
        for c in V1 {
            let p = if c == "2:rdma" { "/" } else { path };
            out.push_str(&format!("{c}:{p}\n"));
        }
        if let Some(u) = unified {
            out.push_str(&format!("0::{u}\n"));
        }
        out
    }

    fn v2(path: &str) -> String {
        format!("0::{path}\n")
    }

    fn container(id: &str) -> Option<ContainerInfo> {
        Some(ContainerInfo {
            container_id: Some(id.into()),
            pod_uid: None,
        })
    }

    fn in_pod(id: Option<&str>) -> Option<ContainerInfo> {
        Some(ContainerInfo {
            container_id: id.map(Into::into),
            pod_uid: Some(POD.into()),
        })
    }

    fn p(text: &str) -> Option<ContainerInfo> {
        parse(text, 42).unwrap()
    }

    #[test]
    fn kubernetes_with_containerd() {
        let pod_ = POD.replace('-', "_");
        // cgroupfs driver, v1 then v2.
        let path = format!("/kubepods/burstable/pod{POD}/{CID}");
        assert_eq!(p(&v1(&path, None)), in_pod(Some(CID)));
        assert_eq!(p(&v2(&path)), in_pod(Some(CID)));
        // Guaranteed QoS has no class segment.
        assert_eq!(
            p(&v2(&format!("/kubepods/pod{POD}/{CID}"))),
            in_pod(Some(CID))
        );
        // systemd driver, v1 then v2.
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(p(&v1(&path, None)), in_pod(Some(CID)));
        assert_eq!(p(&v2(&path)), in_pod(Some(CID)));
        assert_eq!(
            p(&v2(&format!(
                "/kubepods.slice/kubepods-pod{pod_}.slice/cri-containerd-{CID}.scope"
            ))),
            in_pod(Some(CID))
        );
        // The agent in a pod with its own cgroup namespace sees other pods above its
        // root.
        assert_eq!(
            p(&v2(&format!(
                "/../../kubepods-besteffort-pod{pod_}.slice/cri-containerd-{CID}.scope"
            ))),
            in_pod(Some(CID))
        );
        // A process in the pod's own cgroup: the pod alone.
        assert_eq!(
            p(&v2(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice"
            ))),
            in_pod(None)
        );
    }

    #[test]
    fn kubernetes_with_cri_o() {
        let pod_ = POD.replace('-', "_");
        let slice =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice");
        // v1 on a hybrid host: the v2 line holds CRI-O's own service.
        let text = v1(
            &format!("{slice}/crio-{CID}.scope"),
            Some("/system.slice/crio.service"),
        );
        assert_eq!(p(&text), in_pod(Some(CID)));
        assert_eq!(
            p(&v2(&format!("{slice}/crio-{CID}.scope"))),
            in_pod(Some(CID))
        );
        // cgroupfs driver.
        assert_eq!(
            p(&v2(&format!("/kubepods/burstable/pod{POD}/crio-{CID}"))),
            in_pod(Some(CID))
        );
        // conmon, the container's monitor, is no container.
        assert_eq!(p(&v2(&format!("{slice}/crio-conmon-{CID}.scope"))), None);
        assert_eq!(
            p(&v2(&format!(
                "/kubepods/burstable/pod{POD}/crio-conmon-{CID}"
            ))),
            None
        );
        // Seen from another container's cgroup namespace in the same pod: no pod.
        assert_eq!(p(&v2(&format!("/../crio-{CID}.scope"))), container(CID));
    }

    #[test]
    fn kind_node_in_docker_the_pod_wins() {
        // Kubernetes in Docker (kind) on v1: the pod's line names the node's container
        // above the pod; the v2 line names only the node.
        let text = v1(
            &format!("/docker/{OTHER}/kubepods/besteffort/pod{POD}/{CID}"),
            Some(&format!("/docker/{OTHER}/system.slice/containerd.service")),
        );
        assert_eq!(p(&text), in_pod(Some(CID)));
    }

    #[test]
    fn docker() {
        // cgroupfs driver on a v1 host (hybrid: the v2 line elsewhere), and on v2.
        let text = v1(
            &format!("/docker/{CID}"),
            Some("/system.slice/containerd.service"),
        );
        assert_eq!(p(&text), container(CID));
        assert_eq!(p(&v2(&format!("/docker/{CID}"))), container(CID));
        // systemd driver.
        assert_eq!(
            p(&v1(&format!("/system.slice/docker-{CID}.scope"), None)),
            container(CID)
        );
        assert_eq!(
            p(&v2(&format!("/system.slice/docker-{CID}.scope"))),
            container(CID)
        );
    }

    #[test]
    fn podman() {
        // Rootful on v2: crun runs the container in a `container` sub-cgroup.
        assert_eq!(
            p(&v2(&format!("/machine.slice/libpod-{CID}.scope/container"))),
            container(CID)
        );
        assert_eq!(
            p(&v2(&format!("/machine.slice/libpod-{CID}.scope"))),
            container(CID)
        );
        // Rootless, under the user's systemd.
        assert_eq!(
            p(&v2(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container"
            ))),
            container(CID)
        );
        // v1.
        assert_eq!(
            p(&v1(&format!("/machine.slice/libpod-{CID}.scope"), None)),
            container(CID)
        );
        // conmon.
        assert_eq!(
            p(&v2(&format!("/machine.slice/libpod-conmon-{CID}.scope"))),
            None
        );
    }

    #[test]
    fn no_container() {
        assert_eq!(p(&v2("/user.slice/user-1000.slice/session-2.scope")), None);
        assert_eq!(p(&v2("/")), None);
        assert_eq!(
            p(&v1(
                "/user.slice/user-1000.slice/session-2.scope",
                Some("/user.slice/user-1000.slice/session-2.scope")
            )),
            None
        );
        assert_eq!(p(&v2("/system.slice/docker.service")), None);
        assert_eq!(p(""), None);
        // Near misses: too short, upper case, another runtime's word, a pod without
        // a valid UID.
        assert_eq!(p(&v2(&format!("/docker/{}", &CID[..63]))), None);
        assert_eq!(p(&v2(&format!("/docker/{}", CID.to_uppercase()))), None);
        assert_eq!(p(&v2(&format!("/system.slice/rkt-{CID}.scope"))), None);
        assert_eq!(p(&v2(&format!("/system.slice/docker-{CID}.service"))), None);
        assert_eq!(
            p(&v2(&format!("/kubepods/podnot-a-uid/{CID}"))),
            container(CID)
        );
    }

    #[test]
    fn hostile_contents_are_refused_or_ignored_by_the_rule() {
        // Two containers for one process.
        let text = format!("1:name=systemd:/docker/{CID}\n0::/docker/{OTHER}\n");
        let e = parse(&text, 7).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::Ambiguous {
                    what: "container",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("/proc/7/cgroup"), "{e}");
        // Two pods in one path, or across lines.
        let e = parse(
            &v2(&format!(
                "/kubepods/pod{POD}/pod{}/{CID}",
                POD.replace('6', "7")
            )),
            7,
        )
        .unwrap_err();
        assert!(
            matches!(e, CgroupError::Ambiguous { what: "pod", .. }),
            "{e}"
        );
        let text = format!(
            "1:name=systemd:/kubepods/pod{POD}/{CID}\n0::/kubepods/pod{}/{CID}\n",
            POD.replace('6', "7")
        );
        assert!(parse(&text, 7).is_err());
        // A cgroup made inside a container names nothing new: the outermost counts.
        assert_eq!(
            p(&v2(&format!(
                "/system.slice/docker-{CID}.scope/docker-{OTHER}.scope"
            ))),
            container(CID)
        );
        assert_eq!(
            p(&v2(&format!(
                "/kubepods/pod{POD}/{CID}/docker-{OTHER}.scope"
            ))),
            in_pod(Some(CID))
        );
        // Several IDs in one segment are no ID.
        assert_eq!(p(&v2(&format!("/docker/{CID}{OTHER}"))), None);
        // Not the kernel's three fields.
        let e = parse("garbage\n", 7).unwrap_err();
        assert!(matches!(e, CgroupError::Malformed { line: 1, .. }), "{e}");
        // A path may hold colons: only the first two separate fields.
        assert_eq!(p(&v2(&format!("/a:b/docker/{CID}"))), container(CID));
        // Huge.
        let huge = v2(&format!("/{}/docker/{CID}", "x".repeat(MAX_CGROUP_FILE)));
        assert!(matches!(parse(&huge, 7), Err(CgroupError::TooLarge { .. })));
    }

    #[test]
    fn reads_through_the_proc_directory() {
        use std::os::fd::AsFd;
        let dir = std::fs::File::open("/proc/self").unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let pid = std::process::id() as i32;
        assert_eq!(read(dir.as_fd(), pid).unwrap(), parse(&own, pid).unwrap());
        let not_proc = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(not_proc.path()).unwrap();
        let e = read(d.as_fd(), 9).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /proc/9/cgroup"),
            "{e}"
        );
    }
}
