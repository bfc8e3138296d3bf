//! Kubernetes projected service account token attestation (`k8s_psat`), agent side:
//! the token the kubelet projects into the agent's pod, read afresh at each
//! attestation (the kubelet rotates it), sent with the cluster's name.

use std::path::PathBuf;

use async_trait::async_trait;
use tessera_core::attestation::k8s_psat::{NAME, Payload};

use super::{AttestError, Evidence, NodeAttestor, Session, json_evidence, no_challenge_session};

/// The largest token file read.
const MAX_TOKEN: u64 = 64 * 1024;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct K8sPsat {
    cluster: String,
    token_path: PathBuf,
}

impl K8sPsat {
    /// Sends the token at `token_path` as an agent of `cluster`.
    pub fn new(cluster: &str, token_path: PathBuf) -> Self {
        Self {
            cluster: cluster.to_owned(),
            token_path,
        }
    }

    /// The evidence: the cluster name and the token as it is now.
    pub async fn payload(&self) -> Result<Payload, AttestError> {
        let path = &self.token_path;
        let fail = |what: String| {
            AttestError::Failed(format!(
                "{NAME}: cannot read the service account token {}: {what}",
                path.display()
            ))
        };
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_TOKEN {
            return Err(fail(format!("it is larger than {MAX_TOKEN} bytes")));
        }
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(fail("it is empty".into()));
        }
        Ok(Payload {
            cluster: self.cluster.clone(),
            token: token.to_owned(),
        })
    }
}

#[async_trait]
impl Evidence for K8sPsat {
    const NAME: &'static str = NAME;
    async fn evidence_bytes(&self) -> Result<Vec<u8>, AttestError> {
        json_evidence(&self.payload().await?)
    }
}

impl NodeAttestor for K8sPsat {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A fresh token proves the same node again (SPIRE's k8s_psat re-attests).
    fn can_reattest(&self) -> bool {
        true
    }

    fn session(&self) -> Box<dyn Session> {
        no_challenge_session(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_the_token_as_it_is_now_with_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spire-agent");
        std::fs::write(&path, "aaa.bbb.ccc\n").unwrap();
        let a = K8sPsat::new("prod", path.clone());
        assert!(a.can_reattest());
        let body = a.session().payload().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cluster": "prod", "token": "aaa.bbb.ccc"})
        );
        // The kubelet rotated it.
        std::fs::write(&path, "ddd.eee.fff").unwrap();
        assert_eq!(a.payload().await.unwrap().token, "ddd.eee.fff");
        std::fs::write(&path, "\n").unwrap();
        let e = a.payload().await.unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = K8sPsat::new("prod", dir.path().join("absent"))
            .payload()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("k8s_psat: cannot read the service account token ")
                && e.contains("absent"),
            "{e}"
        );
        let e = a.session().answer(vec![1]).await.unwrap_err().to_string();
        assert!(e.contains("has none"), "{e}");
    }
}
