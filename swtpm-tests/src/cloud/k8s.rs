//! A fake Kubernetes API server for `k8s_psat`, over HTTPS with a test CA, answering
//! in the shapes of the Kubernetes API reference:
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a TokenReview; the caller
//!   must present the reviewer's bearer token (else 401, a `Status`). A token is
//!   authenticated when this cluster minted it, it has not expired, the pod it is
//!   bound to still exists with the same UID and (when the review names audiences)
//!   one of its audiences is asked for; the answer carries
//!   the service account as `user` and the pod and node bindings in `extra`, as the
//!   API server does;
//! - `GET /api/v1/namespaces/{ns}/pods/{name}` and `GET /api/v1/nodes/{name}`: the
//!   Pod and Node (404 `Status` for unknown ones), with the same bearer check;
//! - `GET /.well-known/openid-configuration` and `GET /openid/v1/jwks`: the service
//!   account issuer's discovery document and keys (no credentials needed).
//!
//! Projected tokens are minted in the documented claim layout (`iss`, `sub`, `aud`,
//! `exp`, `iat`, `nbf`, `jti`, `kubernetes.io` with `namespace`, `pod`,
//! `serviceaccount` and, as from Kubernetes 1.30, `node`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::http::{HttpServer, Reply, Req};
use super::pki::{TlsIdentity, TokenSigner, jwks};

/// A node.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

/// A pod of a service account, scheduled on a node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub node: String,
    pub host_ip: String,
    pub labels: BTreeMap<String, String>,
}

/// What a minted token says, where it differs from the pod it is projected into.
#[derive(Debug, Clone)]
pub struct Mint {
    pub audience: Vec<String>,
    /// Seconds from now until it expires (negative: already expired).
    pub expires_in: i64,
    /// Whether it carries the node binding (Kubernetes 1.30 and later).
    pub node_binding: bool,
    /// Whether it is bound to the pod at all.
    pub pod_binding: bool,
    /// The node it claims, when not the pod's own (a forged binding).
    pub node_override: Option<(String, String)>,
}

impl Default for Mint {
    fn default() -> Self {
        Self {
            audience: vec!["spire-server".into()],
            expires_in: 3600,
            node_binding: true,
            pod_binding: true,
            node_override: None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<(String, String), Pod>,
    /// Tokens this cluster issued.
    minted: BTreeSet<String>,
}

/// The fake; stops on drop.
#[derive(Debug)]
pub struct ApiServer {
    server: HttpServer,
    state: Arc<Mutex<State>>,
    signer: TokenSigner,
    /// `https://127.0.0.1:<port>`: the API server and the service account issuer.
    pub url: String,
    pub tls: TlsIdentity,
    /// The bearer token the server must present (none: a client certificate).
    pub reviewer_token: Option<String>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn claims_of(token: &str) -> Option<Value> {
    use base64::Engine;
    let body = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The strings of a JSON array (none for anything else).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A TokenReview's answer. The wording of its errors is the fake's own.
fn review(st: &State, body: &[u8]) -> Reply {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    if req["kind"] != "TokenReview" || req["apiVersion"] != "authentication.k8s.io/v1" {
        return status(
            400,
            "BadRequest",
            "not an authentication.k8s.io/v1 TokenReview",
        );
    }
    let token = req["spec"]["token"].as_str().unwrap_or("");
    let asked = strings(&req["spec"]["audiences"]);
    let mut spec = json!({ "token": token });
    if !asked.is_empty() {
        spec["audiences"] = json!(asked);
    }
    let answer = |status: Value| {
        Reply::json(
            201,
            &json!({
                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null}, "spec": spec, "status": status,
            }),
        )
    };
    let refused = |error: String| answer(json!({"user": {}, "error": error}));
    let claims = match claims_of(token) {
        Some(c) if st.minted.contains(token) => c,
        _ => {
            return refused("[invalid bearer token, this cluster did not issue it]".into());
        }
    };
    if claims["exp"].as_i64().unwrap_or(0) <= now() {
        return refused("[invalid bearer token, the token has expired]".into());
    }
    let aud = strings(&claims["aud"]);
    let audiences: Vec<String> = if asked.is_empty() {
        vec![]
    } else {
        asked.iter().filter(|a| aud.contains(a)).cloned().collect()
    };
    if !asked.is_empty() && audiences.is_empty() {
        return refused(format!(
            "[invalid bearer token, the token is for audiences {aud:?}, none of {asked:?}]"
        ));
    }
    let k8s = &claims["kubernetes.io"];
    // The API server also checks that the pod a token is bound to still exists with
    // the same UID.
    if let (Some(name), Some(uid)) = (k8s.pointer("/pod/name"), k8s.pointer("/pod/uid")) {
        let key = (
            k8s["namespace"].as_str().unwrap_or("").to_owned(),
            name.as_str().unwrap_or("").to_owned(),
        );
        if st.pods.get(&key).map(|p| p.uid.as_str()) != uid.as_str() {
            return refused(format!(
                "[invalid bearer token, the pod {}/{} this token is bound to no longer exists]",
                key.0, key.1
            ));
        }
    }
    let mut extra = serde_json::Map::new();
    for (key, ptr) in [
        ("authentication.kubernetes.io/pod-name", "/pod/name"),
        ("authentication.kubernetes.io/pod-uid", "/pod/uid"),
        ("authentication.kubernetes.io/node-name", "/node/name"),
        ("authentication.kubernetes.io/node-uid", "/node/uid"),
    ] {
        if let Some(v) = k8s.pointer(ptr) {
            extra.insert(key.into(), json!([v]));
        }
    }
    if let Some(jti) = claims["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={jti}")]),
        );
    }
    let ns = k8s["namespace"].as_str().unwrap_or("");
    answer(json!({
        "authenticated": true,
        "user": {
            "username": claims["sub"],
            "uid": k8s["serviceaccount"]["uid"],
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": extra,
        },
        "audiences": audiences,
    }))
}

fn pod_json(p: &Pod) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": p.name, "namespace": p.namespace, "uid": p.uid,
            "resourceVersion": "4711", "creationTimestamp": "2026-12-01T08:00:00Z",
            "labels": p.labels,
        },
        "spec": {
            "serviceAccountName": p.service_account, "serviceAccount": p.service_account,
            "nodeName": p.node,
            "containers": [{"name": "spire-agent", "image": "ghcr.io/example/tessera-agent:1"}],
        },
        "status": {
            "phase": "Running", "hostIP": p.host_ip, "hostIPs": [{"ip": p.host_ip}],
            "podIP": "10.244.1.17", "podIPs": [{"ip": "10.244.1.17"}],
        },
    })
}

fn node_json(n: &Node) -> Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {
            "name": n.name, "uid": n.uid, "resourceVersion": "815",
            "creationTimestamp": "2026-11-30T08:00:00Z", "labels": n.labels,
        },
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "Hostname", "address": n.name}]},
    })
}

/// `reviewer`: the bearer token callers must present (`None`: the TLS layer checked
/// their client certificate).
fn handle(
    st: &Mutex<State>,
    url: &str,
    signer: &TokenSigner,
    reviewer: Option<&str>,
    r: &Req,
) -> Reply {
    let path = r.path();
    match (r.method.as_str(), path) {
        ("GET", "/.well-known/openid-configuration") => {
            return Reply::json(
                200,
                &json!({
                    "issuer": url,
                    "jwks_uri": format!("{url}/openid/v1/jwks"),
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }),
            );
        }
        ("GET", "/openid/v1/jwks") => return Reply::json(200, &jwks(&[signer])),
        _ => {}
    }
    if let Some(t) = reviewer
        && r.header("authorization") != Some(&format!("Bearer {t}"))
    {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let st = st.lock().unwrap_or_else(|p| p.into_inner());
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (r.method.as_str(), segs.as_slice()) {
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => review(&st, &r.body),
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            match st.pods.get(&((*ns).to_owned(), (*name).to_owned())) {
                Some(p) => Reply::json(200, &pod_json(p)),
                None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
            }
        }
        ("GET", ["api", "v1", "nodes", name]) => match st.nodes.get(*name) {
            Some(n) => Reply::json(200, &node_json(n)),
            None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
        },
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

impl ApiServer {
    /// Starts the API server on 127.0.0.1, with a TLS identity made in `dir`;
    /// `client_certificates`: callers authenticate with a client certificate from its
    /// CA instead of a bearer token.
    pub fn start(dir: &std::path::Path, client_certificates: bool) -> Self {
        let tls = TlsIdentity::new(dir, "127.0.0.1");
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let signer = TokenSigner::new("k8s-sa-key-1");
        let reviewer_token = (!client_certificates).then(|| format!("reviewer-{}", now()));
        let state = Arc::new(Mutex::new(State::default()));
        let (s, u, k, t) = (
            state.clone(),
            url.clone(),
            signer.clone(),
            reviewer_token.clone(),
        );
        let handler: super::http::Handler =
            Arc::new(move |r: &Req| handle(&s, &u, &k, t.as_deref(), r));
        let config = if client_certificates {
            tls.server_config_with_clients()
        } else {
            tls.server_config()
        };
        let server = HttpServer::serve(listener, handler, Some(config));
        Self {
            server,
            state,
            signer,
            url,
            tls,
            reviewer_token,
        }
    }

    /// Adds a node.
    pub fn add_node(&self, node: Node) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.nodes.insert(node.name.clone(), node);
    }

    /// Adds (or replaces) a pod.
    pub fn add_pod(&self, pod: Pod) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
    }

    /// A token projected into `pod` as `mint` says, signed by this cluster's issuer.
    pub fn mint(&self, pod: &Pod, mint: &Mint) -> String {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let node_uid = st
            .nodes
            .get(&pod.node)
            .map(|n| n.uid.clone())
            .unwrap_or_default();
        let t = now();
        let mut k8s = json!({
            "namespace": pod.namespace,
            "serviceaccount": {"name": pod.service_account, "uid": "3c1b6a2e-7d4f-4e2a-9b1c-5f6e7d8c9b0a"},
        });
        if mint.pod_binding {
            k8s["pod"] = json!({"name": pod.name, "uid": pod.uid});
        }
        if mint.node_binding {
            let (name, uid) = mint
                .node_override
                .clone()
                .unwrap_or((pod.node.clone(), node_uid));
            k8s["node"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": mint.audience,
            "exp": t + mint.expires_in,
            "iat": t - 5,
            "nbf": t - 5,
            "iss": self.url,
            "jti": format!("{:x}", t as u64 ^ st.minted.len() as u64),
            "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{}:{}", pod.namespace, pod.service_account),
        });
        let token = self.signer.sign(&claims);
        st.minted.insert(token.clone());
        token
    }

    /// A token like [`Self::mint`]'s, signed by another key under this issuer's key
    /// ID (a forgery the API server never issued).
    pub fn forge(&self, pod: &Pod) -> String {
        let real = self.mint(pod, &Mint::default());
        let claims = claims_of(&real).expect("claims");
        TokenSigner::new(&self.signer.kid).sign(&claims)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.server.requests()
    }
}
