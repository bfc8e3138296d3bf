//! The `k8s` workload attestor: the caller's pod and container, from its cgroup
//! (`super::container`) and the kubelet's pod list (`GET /pods`, a PodList), as
//! selectors named as SPIRE names them (`k8s:ns:`, `k8s:sa:`, `k8s:pod-uid:`, ...).
//!
//! A caller in no container gets no `k8s` selectors. A caller in a container is
//! looked up in the pod list by its container ID (in every container status:
//! regular, init and ephemeral), within its pod when the cgroup names the pod; a
//! process in the pod's own cgroup, in no container, is matched by the pod alone.
//! A pod whose status does not show the container yet (it has just started) is
//! looked for again in newer lists, `max_poll_attempts` lists `poll_retry_interval`
//! apart, then refused. Lists are shared: one is fetched at a time, and reused by
//! callers that need no newer one for `poll_retry_interval`.
//!
//! A caller whose container or pod is named by a cgroup inside a systemd user
//! manager (`user@<uid>.service`) is refused: systemd delegates that tree to its
//! user, who may make cgroups in it named like any pod and container of the node
//! (their IDs are in every process's world-readable `/proc/<pid>/cgroup`), and the
//! kubelet never puts a pod there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tessera_core::Selector;
use tessera_process::http::{self, HttpError, Request};

use super::container::{self, CgroupError, ContainerInfo};
use super::{Peer, WorkloadAttestError, WorkloadAttestor};
use crate::config::K8sAttestorConfig;

/// The largest pod list read: a node's pods (110 by default) at tens of kilobytes
/// each fit many times over.
const MAX_POD_LIST: usize = 64 << 20;
/// The deadline of one request to the kubelet.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl K8sAttestorConfig {
    /// The longest the attestor looks for one caller: the polls' own time, and one
    /// request's deadline (a kubelet that answers slowly cannot stretch it to attempts
    /// times its deadline).
    pub fn poll_budget(&self) -> Duration {
        self.poll_retry_interval * self.max_poll_attempts + REQUEST_TIMEOUT
    }
}
/// The largest token or CA file read.
const MAX_FILE: u64 = 1 << 20;

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("k8s attestor: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("k8s attestor: cannot read the {what} {path}: {error}")]
    File {
        what: &'static str,
        path: String,
        error: String,
    },
    #[error("k8s attestor: the kubelet at {url} cannot be reached: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("k8s attestor: the request to the kubelet at {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("k8s attestor: the kubelet at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("k8s attestor: the answer of the kubelet at {url} is not a PodList: {reason}")]
    Malformed { url: String, reason: String },
    #[error(
        "k8s attestor: {what} is not in the pod list of the kubelet at {url} after {attempts} lists over {waited:?}; refused (a pod just started shows its containers within seconds)"
    )]
    NotFound {
        what: String,
        url: String,
        attempts: u32,
        waited: Duration,
    },
    #[error(
        "k8s attestor: the cgroup {cgroup} that names the caller's pod or container is inside a systemd user manager, whose user may make cgroups named like any pod; refused"
    )]
    UserManager { cgroup: String },
    #[error(
        "k8s attestor: container {id} is in two pods of the kubelet's list ({a}, {b}); refused"
    )]
    TwoPods { id: String, a: String, b: String },
    #[error("k8s attestor: {0}")]
    Task(String),
}

impl K8sError {
    /// Whether another list may do better: the kubelet could not be reached.
    fn retryable(&self) -> bool {
        matches!(self, K8sError::Unreachable { .. })
    }
}

/// The `k8s` attestor (see the module documentation).
#[derive(Debug)]
pub struct K8s {
    cfg: K8sAttestorConfig,
    url: String,
    /// The last pod list, and when its request was sent.
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Pod>>)>>,
}

impl K8s {
    /// The attestor as `[workload_attestors.k8s]` configures it. The kubelet is asked
    /// at the node's name (`node_name`, else the `node_name_env` variable), else at
    /// 127.0.0.1.
    pub fn new(cfg: K8sAttestorConfig) -> Self {
        let host = cfg
            .node_name
            .clone()
            .or_else(|| std::env::var(&cfg.node_name_env).ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let url = match cfg.kubelet_read_only_port {
            Some(port) => format!("http://{host}:{port}/pods"),
            None => format!(
                "https://{host}:{}/pods",
                cfg.kubelet_secure_port.unwrap_or(10250)
            ),
        };
        Self {
            cfg,
            url,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The caller's selectors (see the module documentation).
    pub async fn attest_pid(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        pid: i32,
    ) -> Result<Vec<Selector>, K8sError> {
        let text = container::read_text(dir, pid)?;
        let Some((info, naming)) = container::parse_naming(&text, pid)? else {
            return Ok(Vec::new());
        };
        if let Some(cgroup) = container::in_user_manager(&naming) {
            return Err(K8sError::UserManager {
                cgroup: cgroup.to_owned(),
            });
        }
        let start = Instant::now();
        let budget = self.cfg.poll_budget();
        let mut seen = None;
        let mut attempts = 0;
        let mut unreachable = None;
        while attempts < self.cfg.max_poll_attempts {
            if attempts > 0 {
                if start.elapsed() >= budget {
                    break;
                }
                tokio::time::sleep(self.cfg.poll_retry_interval).await;
            }
            attempts += 1;
            match self.pods(seen).await {
                Ok((at, pods)) => {
                    seen = Some(at);
                    unreachable = None;
                    if let Some(values) = find(&pods, &info, &self.cfg)? {
                        return Ok(container::selectors("k8s", values));
                    }
                }
                Err(e) if e.retryable() => unreachable = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = unreachable {
            return Err(e);
        }
        let what = match (&info.container_id, &info.pod_uid) {
            (Some(id), Some(uid)) => format!("container {id} of pod {uid}"),
            (Some(id), None) => format!("container {id}"),
            (None, uid) => format!("pod {}", uid.as_deref().unwrap_or("?")),
        };
        Err(K8sError::NotFound {
            what,
            url: self.url.clone(),
            attempts,
            waited: start.elapsed(),
        })
    }

    /// A pod list requested after `newer_than`, or, without it, one requested less
    /// than `poll_retry_interval` ago. One request at a time: callers waiting for the
    /// lock take the list the one before them fetched.
    async fn pods(
        &self,
        newer_than: Option<Instant>,
    ) -> Result<(Instant, Arc<Vec<Pod>>), K8sError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, pods)) = &*cache {
            let usable = match newer_than {
                Some(t) => *at > t,
                None => at.elapsed() < self.cfg.poll_retry_interval,
            };
            if usable {
                return Ok((*at, pods.clone()));
            }
        }
        let at = Instant::now();
        let pods = Arc::new(self.fetch().await?);
        *cache = Some((at, pods.clone()));
        Ok((at, pods))
    }

    /// Asks the kubelet for its pods.
    async fn fetch(&self) -> Result<Vec<Pod>, K8sError> {
        let mut req = Request::get(&self.url);
        let mut opts = http::Options {
            timeout: REQUEST_TIMEOUT,
            max_body: MAX_POD_LIST,
            tls: None,
        };
        if self.cfg.kubelet_read_only_port.is_none() {
            let cfg = self.cfg.clone();
            let (token, tls) = tokio::task::spawn_blocking(move || client_files(&cfg))
                .await
                .map_err(|e| K8sError::Task(e.to_string()))??;
            req = req.header("authorization", &format!("Bearer {token}"));
            opts.tls = Some(tls);
        }
        let resp = http::send(req, &opts).await.map_err(|e| match e {
            e if e.is_unreachable() => K8sError::Unreachable {
                url: self.url.clone(),
                source: e,
            },
            e => K8sError::Request {
                url: self.url.clone(),
                source: e,
            },
        })?;
        if resp.status != 200 {
            return Err(K8sError::Status {
                url: self.url.clone(),
                status: resp.status,
                body: resp.body_excerpt(),
            });
        }
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || parse_pod_list(&resp.body))
            .await
            .map_err(|e| K8sError::Task(e.to_string()))?
            .map_err(|reason| K8sError::Malformed { url, reason })
    }
}

#[async_trait]
impl WorkloadAttestor for K8s {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
        self.attest_pid(peer.proc_dir(), peer.cred().pid)
            .await
            .map_err(WorkloadAttestError::new)
    }
}

fn file_error(what: &'static str, path: &std::path::Path, error: String) -> K8sError {
    K8sError::File {
        what,
        path: path.display().to_string(),
        error,
    }
}

/// A small file's contents (a token, CA certificates).
fn read_small(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, K8sError> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut buf))
        .map_err(|e| file_error(what, path, e.to_string()))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(file_error(
            what,
            path,
            format!("larger than {MAX_FILE} bytes"),
        ));
    }
    Ok(buf)
}

/// The bearer token and the TLS settings, read from their files (both may be
/// replaced at any time: a projected token is refreshed by the kubelet).
fn client_files(cfg: &K8sAttestorConfig) -> Result<(String, Arc<rustls::ClientConfig>), K8sError> {
    const TOKEN: &str = "token file";
    const CA: &str = "kubelet CA file";
    let token = String::from_utf8(read_small(TOKEN, &cfg.token_path)?)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            file_error(
                TOKEN,
                &cfg.token_path,
                "not a bearer token (empty, or characters a header cannot carry)".into(),
            )
        })?;
    let mut tls = if cfg.skip_kubelet_verification {
        tessera_core::tls::insecure_client_config()
    } else {
        let path = &cfg.kubelet_ca_path;
        let err = |e: String| file_error(CA, path, e);
        let ders = tessera_core::x509::pem_certs(&read_small(CA, path)?)
            .map_err(|e| err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(
            ders.into_iter()
                .map(rustls::pki_types::CertificateDer::from),
        );
        if added == 0 {
            return Err(err("holds no usable CA certificate".into()));
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth()
    };
    // HTTP/1.1 only: the client speaks nothing else.
    tls.alpn_protocols.clear();
    Ok((token, Arc::new(tls)))
}

/// The fields of a Pod (Kubernetes core/v1) the selectors come from; the rest is
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pod {
    metadata: ObjectMeta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ObjectMeta {
    name: String,
    namespace: String,
    uid: String,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OwnerReference {
    kind: String,
    name: String,
    uid: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodSpec {
    service_account_name: String,
    node_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    container_statuses: Option<Vec<ContainerStatus>>,
    init_container_statuses: Option<Vec<ContainerStatus>>,
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerStatus {
    name: String,
    image: String,
    #[serde(rename = "imageID")]
    image_id: String,
    /// `<runtime>://<id>`, empty until the container is created.
    #[serde(rename = "containerID")]
    container_id: String,
}

impl ContainerStatus {
    /// The ID without the runtime's scheme.
    fn id(&self) -> Option<&str> {
        self.container_id.split_once("://").map(|(_, id)| id)
    }
}

/// Parses a PodList.
fn parse_pod_list(body: &[u8]) -> Result<Vec<Pod>, String> {
    #[derive(Deserialize)]
    struct PodList {
        kind: Option<String>,
        items: Option<Vec<Pod>>,
    }
    let list: PodList = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match list.kind.as_deref() {
        Some("PodList") | None => Ok(list.items.unwrap_or_default()),
        Some(k) => Err(format!("its kind is {k}")),
    }
}

/// The selector values (without `k8s:`) for the caller `info` in `pods`, or `None`
/// when no pod holds it.
fn find(
    pods: &[Pod],
    info: &ContainerInfo,
    cfg: &K8sAttestorConfig,
) -> Result<Option<Vec<String>>, K8sError> {
    let mut found: Option<(&Pod, Option<&ContainerStatus>)> = None;
    for pod in pods {
        if info
            .pod_uid
            .as_ref()
            .is_some_and(|uid| *uid != pod.metadata.uid)
        {
            continue;
        }
        let hit = match &info.container_id {
            Some(id) => match statuses(pod).find(|s| s.id() == Some(id.as_str())) {
                Some(s) => (pod, Some(s)),
                None => continue,
            },
            // A pod-level match: only by the pod's UID.
            None if info.pod_uid.is_some() => (pod, None),
            None => continue,
        };
        if let Some((first, _)) = found {
            return Err(K8sError::TwoPods {
                id: info.container_id.clone().unwrap_or_default(),
                a: format!("{}/{}", first.metadata.namespace, first.metadata.name),
                b: format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
            });
        }
        found = Some(hit);
    }
    Ok(found.map(|(pod, status)| {
        let mut v = pod_values(pod);
        if let Some(s) = status
            && !cfg.disable_container_selectors
        {
            if !s.name.is_empty() {
                v.push(format!("container-name:{}", s.name));
            }
            v.extend(images(std::iter::once(s)).map(|i| format!("container-image:{i}")));
        }
        v
    }))
}

/// Every container status of a pod: regular, init and ephemeral.
fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let s = &pod.status;
    [
        &s.container_statuses,
        &s.init_container_statuses,
        &s.ephemeral_container_statuses,
    ]
    .into_iter()
    .flat_map(|l| l.iter().flatten())
}

/// The image names and image IDs of `statuses` (a selector may name either).
fn images<'a>(
    statuses: impl Iterator<Item = &'a ContainerStatus>,
) -> impl Iterator<Item = &'a str> {
    statuses
        .flat_map(|s| [s.image.as_str(), s.image_id.as_str()])
        .filter(|i| !i.is_empty())
}

/// The pod's own selector values.
fn pod_values(pod: &Pod) -> Vec<String> {
    let m = &pod.metadata;
    let regular = pod.status.container_statuses.as_deref().unwrap_or_default();
    let init = pod
        .status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let mut v: Vec<String> = [
        ("ns", &m.namespace),
        ("sa", &pod.spec.service_account_name),
        ("node-name", &pod.spec.node_name),
        ("pod-uid", &m.uid),
        ("pod-name", &m.name),
    ]
    .into_iter()
    .filter(|(_, val)| !val.is_empty())
    .map(|(k, val)| format!("{k}:{val}"))
    .collect();
    v.push(format!("pod-image-count:{}", regular.len()));
    v.push(format!("pod-init-image-count:{}", init.len()));
    v.extend(images(regular.iter()).map(|i| format!("pod-image:{i}")));
    v.extend(images(init.iter()).map(|i| format!("pod-init-image:{i}")));
    for (k, val) in m.labels.iter().flatten() {
        v.push(format!("pod-label:{k}:{val}"));
    }
    for o in m.owner_references.iter().flatten() {
        v.push(format!("pod-owner:{}:{}", o.kind, o.name));
        v.push(format!("pod-owner-uid:{}:{}", o.kind, o.uid));
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::workload::attestor::container::testing::{answer_one, proc_dir};

    pub(crate) const POD: &str = "5b1e7c2d-8f3a-4c6b-9d0e-2a4f6b8c0d1e";
    pub(crate) const CID: &str = "8d2f4a6c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a5c7e9b2d4f";
    const INIT: &str = "1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c";
    const DEBUG: &str = "e4c6a8b0d2f1e3c5a7b9d0f2e4c6a8b1d3f5e7c9a0b2d4f6e8c1a3b5d7f9e0c2";
    /// A pod whose container shows up only in later lists.
    const LATE_POD: &str = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    const LATE: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c3BpcmU6YWdlbnQifQ.c2ln";

    /// A kubelet's `/pods` answer, in the shape of the Kubernetes API (core/v1
    /// PodList): a Deployment's running pod with an init container that has
    /// completed and an ephemeral debug container, and a pod still creating its
    /// container unless `late_started`.
    pub(crate) fn pod_list(late_started: bool) -> String {
        let late_status = if late_started {
            format!(
                r#"{{"name":"job","state":{{"running":{{"startedAt":"2026-12-02T10:00:03Z"}}}},"lastState":{{}},"ready":true,"restartCount":0,"image":"registry.example/batch/job:2.1","imageID":"registry.example/batch/job@sha256:4c1e3a5b7d9f2e4c6a8b0d1f3e5c7a9b2d4f6e8c0a1b3d5f7e9c2a4b6d8f0e1c","containerID":"cri-o://{LATE}","started":true}}"#
            )
        } else {
            r#"{"name":"job","state":{"waiting":{"reason":"ContainerCreating"}},"lastState":{},"ready":false,"restartCount":0,"image":"registry.example/batch/job:2.1","imageID":"","started":false}"#.to_owned()
        };
        format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[
{{"metadata":{{"name":"web-7d4b9c8f6-x2x9k","generateName":"web-7d4b9c8f6-","namespace":"shop","uid":"{POD}","resourceVersion":"48213","creationTimestamp":"2026-12-02T09:00:00Z","labels":{{"app":"web","pod-template-hash":"7d4b9c8f6"}},"annotations":{{"kubernetes.io/config.seen":"2026-12-02T09:00:00.123Z"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c8f6","uid":"0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0","controller":true,"blockOwnerDeletion":true}}]}},
 "spec":{{"volumes":[{{"name":"kube-api-access-9xk2p","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}}],"defaultMode":420}}}}],
  "initContainers":[{{"name":"migrate","image":"docker.io/library/busybox:1.36","command":["sh","-c","true"],"resources":{{}},"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent"}}],
  "containers":[{{"name":"web","image":"nginx:1.27","ports":[{{"containerPort":80,"protocol":"TCP"}}],"resources":{{}},"imagePullPolicy":"IfNotPresent"}}],
  "ephemeralContainers":[{{"name":"debugger-abcde","image":"busybox:1.36","resources":{{}},"stdin":true,"tty":true}}],
  "restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"web","serviceAccount":"web","nodeName":"node-1","securityContext":{{}},"schedulerName":"default-scheduler","priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"}},
 "status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-12-02T09:00:05Z"}}],"hostIP":"10.0.0.5","hostIPs":[{{"ip":"10.0.0.5"}}],"podIP":"10.244.1.7","podIPs":[{{"ip":"10.244.1.7"}}],"startTime":"2026-12-02T09:00:00Z",
  "initContainerStatuses":[{{"name":"migrate","state":{{"terminated":{{"exitCode":0,"reason":"Completed","startedAt":"2026-12-02T09:00:01Z","finishedAt":"2026-12-02T09:00:02Z","containerID":"containerd://{INIT}"}}}},"lastState":{{}},"ready":true,"restartCount":0,"image":"docker.io/library/busybox:1.36","imageID":"docker.io/library/busybox@sha256:2f9a7c1e3b5d4f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5c7e9b0d2f4a","containerID":"containerd://{INIT}","started":false}}],
  "containerStatuses":[{{"name":"web","state":{{"running":{{"startedAt":"2026-12-02T09:00:03Z"}}}},"lastState":{{}},"ready":true,"restartCount":0,"image":"docker.io/library/nginx:1.27","imageID":"docker.io/library/nginx@sha256:6a2c4e8b0d1f3a5c7e9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c","containerID":"containerd://{CID}","started":true}}],
  "ephemeralContainerStatuses":[{{"name":"debugger-abcde","state":{{"running":{{"startedAt":"2026-12-02T09:30:00Z"}}}},"lastState":{{}},"ready":false,"restartCount":0,"image":"docker.io/library/busybox:1.36","imageID":"docker.io/library/busybox@sha256:2f9a7c1e3b5d4f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5c7e9b0d2f4a","containerID":"containerd://{DEBUG}"}}],
  "qosClass":"BestEffort"}}}},
{{"metadata":{{"name":"job-q8w7e","namespace":"batch","uid":"{LATE_POD}","resourceVersion":"48377","creationTimestamp":"2026-12-02T10:00:00Z"}},
 "spec":{{"containers":[{{"name":"job","image":"registry.example/batch/job:2.1","resources":{{}}}}],"restartPolicy":"Never","serviceAccountName":"default","serviceAccount":"default","nodeName":"node-1"}},
 "status":{{"phase":"Pending","hostIP":"10.0.0.5","startTime":"2026-12-02T10:00:00Z","containerStatuses":[{late_status}],"qosClass":"BestEffort"}}}}
]}}"#
        )
    }

    /// A kubelet on 127.0.0.1 over TLS with a certificate from a test CA, checking
    /// the bearer token: its pod list shows the late pod's container from the
    /// `late_after`-th request on. Gives the port, the CA (PEM) and the request count.
    pub(crate) async fn fake_kubelet(late_after: usize) -> (u16, String, Arc<AtomicUsize>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(answer_one(tls, move |head| {
                    let lower = head.to_ascii_lowercase();
                    if !head.starts_with("GET /pods HTTP/1.1\r\n") {
                        return (404, "{}".into());
                    }
                    if !lower.contains(&format!(
                        "authorization: bearer {}\r\n",
                        TOKEN.to_ascii_lowercase()
                    )) {
                        return (401, r#"{"kind":"Status","message":"Unauthorized"}"#.into());
                    }
                    (200, pod_list(n >= late_after))
                }));
            }
        });
        (port, ca.pem(), count)
    }

    /// Settings for the fake kubelet at `port`, with its CA and the token in `dir`.
    pub(crate) fn config(dir: &std::path::Path, port: u16, ca: &str) -> K8sAttestorConfig {
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let text = format!(
            "kubelet_secure_port = {port}\nkubelet_ca_path = {:?}\ntoken_path = {:?}\nnode_name = \"127.0.0.1\"\nmax_poll_attempts = 5\npoll_retry_interval = \"50ms\"\n",
            dir.join("ca.crt"),
            dir.join("token"),
        );
        toml::from_str(&text).unwrap()
    }

    async fn attest(k: &K8s, cgroup: &str) -> Result<Vec<String>, K8sError> {
        let (_dir, f) = proc_dir(cgroup);
        Ok(k.attest_pid(f.as_fd(), 42)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    fn systemd_path(pod: &str, runtime: &str, id: &str) -> String {
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/{runtime}-{id}.scope\n",
            pod.replace('-', "_")
        )
    }

    #[tokio::test]
    async fn a_container_gets_its_pod_and_container_selectors() {
        let (port, ca, count) = fake_kubelet(1).await;
        let dir = tempfile::tempdir().unwrap();
        let k = K8s::new(config(dir.path(), port, &ca));
        let sels = attest(&k, &systemd_path(POD, "cri-containerd", CID))
            .await
            .unwrap();
        let want = [
            "k8s:container-image:docker.io/library/nginx:1.27",
            "k8s:container-image:docker.io/library/nginx@sha256:6a2c4e8b0d1f3a5c7e9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c",
            "k8s:container-name:web",
            "k8s:node-name:node-1",
            "k8s:ns:shop",
            "k8s:pod-image-count:1",
            "k8s:pod-image:docker.io/library/nginx:1.27",
            "k8s:pod-image:docker.io/library/nginx@sha256:6a2c4e8b0d1f3a5c7e9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c",
            "k8s:pod-init-image-count:1",
            "k8s:pod-init-image:docker.io/library/busybox:1.36",
            "k8s:pod-init-image:docker.io/library/busybox@sha256:2f9a7c1e3b5d4f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5c7e9b0d2f4a",
            "k8s:pod-label:app:web",
            "k8s:pod-label:pod-template-hash:7d4b9c8f6",
            "k8s:pod-name:web-7d4b9c8f6-x2x9k",
            "k8s:pod-owner-uid:ReplicaSet:0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
            "k8s:pod-owner:ReplicaSet:web-7d4b9c8f6",
            &format!("k8s:pod-uid:{POD}"),
            "k8s:sa:web",
        ];
        assert_eq!(sels, want);
        // Init and ephemeral containers are found too; the cgroupfs layout as well.
        let sels = attest(&k, &format!("0::/kubepods/besteffort/pod{POD}/{INIT}\n"))
            .await
            .unwrap();
        assert!(
            sels.contains(&"k8s:container-name:migrate".to_owned()),
            "{sels:?}"
        );
        let sels = attest(&k, &systemd_path(POD, "cri-containerd", DEBUG))
            .await
            .unwrap();
        assert!(
            sels.contains(&"k8s:container-name:debugger-abcde".to_owned()),
            "{sels:?}"
        );
        // A process in the pod's own cgroup: the pod's selectors alone.
        let sels = attest(
            &k,
            &format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice\n",
                POD.replace('-', "_")
            ),
        )
        .await
        .unwrap();
        assert!(sels.contains(&"k8s:sa:web".to_owned()), "{sels:?}");
        assert!(
            !sels.iter().any(|s| s.starts_with("k8s:container-")),
            "{sels:?}"
        );
        // No container: no selectors, and no request.
        let before = count.load(Ordering::SeqCst);
        assert!(
            attest(&k, "0::/user.slice/user-1000.slice/session-3.scope\n")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(count.load(Ordering::SeqCst), before);
        // disable_container_selectors leaves the pod's.
        let mut cfg = config(dir.path(), port, &ca);
        cfg.disable_container_selectors = true;
        let sels = attest(&K8s::new(cfg), &systemd_path(POD, "cri-containerd", CID))
            .await
            .unwrap();
        assert!(sels.contains(&"k8s:pod-name:web-7d4b9c8f6-x2x9k".to_owned()));
        assert!(
            !sels.iter().any(|s| s.starts_with("k8s:container-")),
            "{sels:?}"
        );
    }

    #[tokio::test]
    async fn a_pod_named_by_a_users_own_cgroup_is_refused_unasked() {
        let (port, ca, count) = fake_kubelet(1).await;
        let dir = tempfile::tempdir().unwrap();
        let k = K8s::new(config(dir.path(), port, &ca));
        // A local user copies a pod's and a container's IDs (world-readable in any of
        // its processes' cgroup files) into cgroups of the tree systemd delegates to
        // them, with the kubelet's layouts below.
        let user = "/user.slice/user-1000.slice/user@1000.service";
        for fake in [
            format!(
                "0::{user}/app.slice/kubepods/besteffort/pod{POD}/{CID}
"
            ),
            format!(
                "0::{user}/kubepods.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope
",
                POD.replace('-', "_")
            ),
            format!(
                "0::{user}/app.slice/cri-containerd-{CID}.scope
"
            ),
            format!(
                "0::{user}/kubepods/pod{POD}
"
            ),
        ] {
            let e = attest(&k, &fake).await.unwrap_err();
            assert!(matches!(e, K8sError::UserManager { .. }), "{fake}: {e}");
            assert!(e.to_string().contains("user@1000.service"), "{e}");
        }
        assert_eq!(count.load(Ordering::SeqCst), 0, "the kubelet is not asked");
        // A user manager below the container (systemd run inside it) is the
        // container's own business.
        let sels = attest(
            &k,
            &format!(
                "0::/kubepods/besteffort/pod{POD}/{CID}/user.slice/user@0.service
"
            ),
        )
        .await
        .unwrap();
        assert!(
            sels.contains(&"k8s:container-name:web".to_owned()),
            "{sels:?}"
        );
    }

    #[tokio::test]
    async fn callers_within_the_retry_interval_share_one_list() {
        let (port, ca, count) = fake_kubelet(1).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), port, &ca);
        cfg.poll_retry_interval = Duration::from_secs(30);
        let k = K8s::new(cfg);
        let a = systemd_path(POD, "cri-containerd", CID);
        let b = systemd_path(POD, "cri-containerd", INIT);
        let (x, y) = tokio::join!(attest(&k, &a), attest(&k, &b));
        assert!(x.unwrap().contains(&"k8s:container-name:web".to_owned()));
        assert!(
            y.unwrap()
                .contains(&"k8s:container-name:migrate".to_owned())
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_new_pod_is_polled_for_and_one_never_seen_is_refused() {
        let (port, ca, count) = fake_kubelet(3).await;
        let dir = tempfile::tempdir().unwrap();
        let k = K8s::new(config(dir.path(), port, &ca));
        let sels = attest(&k, &systemd_path(LATE_POD, "crio", LATE))
            .await
            .unwrap();
        assert!(sels.contains(&"k8s:ns:batch".to_owned()), "{sels:?}");
        assert!(
            sels.contains(&"k8s:container-name:job".to_owned()),
            "{sels:?}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 3, "found in the third list");

        // A container in no pod: refused after max_poll_attempts lists (the first
        // one fresh: the last list is older than the retry interval by then).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = count.load(Ordering::SeqCst);
        let e = attest(&k, &systemd_path(LATE_POD, "crio", &CID.replace('8', "7")))
            .await
            .unwrap_err();
        assert!(matches!(e, K8sError::NotFound { attempts: 5, .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("https://127.0.0.1:{port}/pods")),
            "{e}"
        );
        assert_eq!(count.load(Ordering::SeqCst) - before, 5);
        // The right container in another pod than the cgroup says: not found either.
        let e = attest(&k, &systemd_path(LATE_POD, "cri-containerd", CID))
            .await
            .unwrap_err();
        assert!(matches!(e, K8sError::NotFound { .. }), "{e}");
    }

    #[tokio::test]
    async fn kubelet_failures_name_the_kubelet_and_what_was_wrong() {
        let (port, ca, _) = fake_kubelet(1).await;
        let dir = tempfile::tempdir().unwrap();
        let cgroup = systemd_path(POD, "cri-containerd", CID);
        // A wrong token: 401, at once.
        let cfg = config(dir.path(), port, &ca);
        std::fs::write(&cfg.token_path, "wrong").unwrap();
        let e = attest(&K8s::new(cfg), &cgroup).await.unwrap_err();
        assert!(matches!(e, K8sError::Status { status: 401, .. }), "{e}");
        assert!(e.to_string().contains("Unauthorized"), "{e}");
        // Another CA: the TLS handshake fails.
        let mut cfg = config(dir.path(), port, &ca);
        let (_, other_ca, _) = fake_kubelet(1).await;
        std::fs::write(&cfg.kubelet_ca_path, other_ca).unwrap();
        cfg.max_poll_attempts = 2;
        let e = attest(&K8s::new(cfg), &cgroup).await.unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        // ... unless verification is skipped.
        let mut cfg = config(dir.path(), port, &ca);
        std::fs::write(&cfg.kubelet_ca_path, "not PEM").unwrap();
        cfg.skip_kubelet_verification = true;
        assert!(!attest(&K8s::new(cfg), &cgroup).await.unwrap().is_empty());
        // Nothing listens.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut cfg = config(dir.path(), closed_port, &ca);
        cfg.max_poll_attempts = 2;
        let e = attest(&K8s::new(cfg), &cgroup).await.unwrap_err();
        assert!(matches!(e, K8sError::Unreachable { .. }), "{e}");
        assert!(
            e.to_string().contains(&format!("127.0.0.1:{closed_port}")),
            "{e}"
        );
        // No token file.
        let mut cfg = config(dir.path(), port, &ca);
        cfg.token_path = dir.path().join("absent");
        let e = attest(&K8s::new(cfg), &cgroup).await.unwrap_err();
        assert!(e.to_string().contains("token file"), "{e}");
        // A malformed answer.
        assert!(parse_pod_list(b"<html>").is_err());
        assert!(parse_pod_list(br#"{"kind":"Status"}"#).is_err());
        assert!(
            parse_pod_list(br#"{"kind":"PodList","items":null}"#)
                .unwrap()
                .is_empty()
        );
        // Two pods claiming one container.
        let mut pods = parse_pod_list(pod_list(true).as_bytes()).unwrap();
        pods.extend(parse_pod_list(pod_list(true).as_bytes()).unwrap());
        let info = ContainerInfo {
            container_id: Some(CID.into()),
            pod_uid: None,
        };
        let e = find(&pods, &info, &config(dir.path(), port, &ca)).unwrap_err();
        assert!(matches!(e, K8sError::TwoPods { .. }), "{e}");
    }

    #[tokio::test]
    async fn the_read_only_port_is_plain_http_without_a_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(answer_one(s, |head| {
                    assert!(!head.to_ascii_lowercase().contains("authorization"));
                    (200, pod_list(true))
                }));
            }
        });
        let cfg: K8sAttestorConfig = toml::from_str(&format!(
            "kubelet_read_only_port = {port}\nnode_name = \"127.0.0.1\"\n"
        ))
        .unwrap();
        let sels = attest(&K8s::new(cfg), &systemd_path(POD, "cri-containerd", CID))
            .await
            .unwrap();
        assert!(sels.contains(&"k8s:sa:web".to_owned()), "{sels:?}");
    }
}
