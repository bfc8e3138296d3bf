//! The three calls `k8s_psat` makes to a cluster's API server, in the shapes of the
//! Kubernetes API reference: a TokenReview (`POST
//! /apis/authentication.k8s.io/v1/tokenreviews`), a Pod (`GET
//! /api/v1/namespaces/{ns}/pods/{name}`) and a Node (`GET /api/v1/nodes/{name}`).
//! The server authenticates with a bearer token read from a file at each call (the
//! file may be a rotating projected token) or with the client certificate in its TLS
//! settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use tessera_process::http;

use super::NAME;
use crate::attestor::AttestError;

/// How to reach one cluster's API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// `https://host:port`, no trailing slash.
    pub base: String,
    /// The bearer token file, or none (a client certificate in `http.tls`).
    pub token_file: Option<PathBuf>,
    pub http: http::Options,
    /// The cluster, for messages.
    pub cluster: String,
}

/// What a TokenReview says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// Authenticated: the user name and the `extra` values.
    Authenticated {
        username: String,
        audiences: Vec<String>,
        extra: BTreeMap<String, Vec<String>>,
    },
    /// Not authenticated, with the API server's reason.
    Refused(String),
}

#[derive(Debug, Deserialize)]
struct TokenReview {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: User,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default)]
    username: String,
    #[serde(default)]
    extra: BTreeMap<String, Vec<String>>,
}

/// The parts of a Pod used here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

/// The parts of a Node used here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    pub metadata: Metadata,
}

/// `metadata` of a Pod or Node.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodSpec {
    #[serde(default, rename = "nodeName")]
    pub node_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// A path segment for a URL (names are DNS labels or subdomains; anything else is
/// escaped rather than trusted).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ApiServer {
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> AttestError {
        AttestError::Unavailable(format!(
            "{NAME}: cluster {:?}: the API server cannot be asked for {what}: {e}",
            self.cluster
        ))
    }

    async fn call(&self, req: http::Request, what: &str) -> Result<http::Response, AttestError> {
        let mut req = req.header("accept", "application/json");
        if let Some(path) = &self.token_file {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| self.unavailable(what, format!("{}: {e}", path.display())))?;
            req = req.header("authorization", &format!("Bearer {}", token.trim()));
        }
        let r = http::send(req, &self.http)
            .await
            .map_err(|e| self.unavailable(what, e))?;
        if r.status == 401 || r.status == 403 {
            return Err(self.unavailable(
                what,
                format!(
                    "it refused the server's credentials (HTTP {}: {})",
                    r.status,
                    r.body_excerpt()
                ),
            ));
        }
        Ok(r)
    }

    /// Asks the API server whether `token` is valid for `audiences` (empty: the API
    /// server's own).
    pub async fn review(&self, token: &str, audiences: &[String]) -> Result<Review, AttestError> {
        let mut spec = serde_json::json!({ "token": token });
        if !audiences.is_empty() {
            spec["audiences"] = serde_json::json!(audiences);
        }
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", self.base);
        let r = self
            .call(
                http::Request::post(&url, "application/json", body.to_string().into_bytes()),
                "a TokenReview",
            )
            .await?;
        if r.status != 200 && r.status != 201 {
            return Err(self.unavailable(
                "a TokenReview",
                format!("HTTP {}: {}", r.status, r.body_excerpt()),
            ));
        }
        let review: TokenReview = serde_json::from_slice(&r.body)
            .map_err(|e| self.unavailable("a TokenReview", format!("unreadable answer: {e}")))?;
        let st = review.status;
        if !st.authenticated {
            let reason = if st.error.is_empty() {
                "no reason given".to_owned()
            } else {
                st.error
            };
            return Ok(Review::Refused(reason));
        }
        Ok(Review::Authenticated {
            username: st.user.username,
            audiences: st.audiences,
            extra: st.user.extra,
        })
    }

    /// GETs an object; `None` when it does not exist.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Option<T>, AttestError> {
        let r = self
            .call(http::Request::get(&format!("{}{path}", self.base)), what)
            .await?;
        match r.status {
            200 => serde_json::from_slice(&r.body)
                .map(Some)
                .map_err(|e| self.unavailable(what, format!("unreadable answer: {e}"))),
            404 => Ok(None),
            s => Err(self.unavailable(what, format!("HTTP {s}: {}", r.body_excerpt()))),
        }
    }

    /// The pod `name` in `namespace`, if it exists.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, AttestError> {
        self.get(
            &format!(
                "/api/v1/namespaces/{}/pods/{}",
                segment(namespace),
                segment(name)
            ),
            &format!("pod {namespace}/{name}"),
        )
        .await
    }

    /// The node `name`, if it exists.
    pub async fn node(&self, name: &str) -> Result<Option<Node>, AttestError> {
        self.get(
            &format!("/api/v1/nodes/{}", segment(name)),
            &format!("node {name}"),
        )
        .await
    }
}

/// The first value of `extra[key]`, if any and not empty.
pub fn extra<'a>(extra: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    extra
        .get(key)
        .and_then(|v| v.first())
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// Keys of a TokenReview's `extra` that bind a token to its pod and node.
pub mod keys {
    pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
    pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
    pub const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
    pub const NODE_UID: &str = "authentication.kubernetes.io/node-uid";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_shapes_are_read_as_the_reference_gives_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "spire-agent-x", "namespace": "spire", "uid": "p-1",
                         "labels": {"app": "spire-agent"}},
            "spec": {"nodeName": "node-a", "serviceAccountName": "spire-agent"},
            "status": {"phase": "Running", "hostIP": "10.0.0.7"},
        }))
        .unwrap();
        assert_eq!(
            (pod.spec.node_name.as_str(), pod.status.host_ip.as_str()),
            ("node-a", "10.0.0.7")
        );
        assert_eq!(pod.metadata.labels["app"], "spire-agent");
        let review: TokenReview = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": "t"},
            "status": {"authenticated": true, "audiences": ["spire-server"],
                       "user": {"username": "system:serviceaccount:spire:spire-agent",
                                "uid": "sa-1", "groups": ["system:serviceaccounts"],
                                "extra": {keys::POD_NAME: ["spire-agent-x"],
                                          keys::POD_UID: ["p-1"]}}},
        }))
        .unwrap();
        assert!(review.status.authenticated);
        assert_eq!(extra(&review.status.user.extra, keys::POD_UID), Some("p-1"));
        assert_eq!(extra(&review.status.user.extra, keys::NODE_UID), None);
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
