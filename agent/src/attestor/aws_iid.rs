//! AWS EC2 instance identity attestation (`aws_iid`), agent side: the instance
//! identity document and its RSA-2048 signature (and the older `signature`, which
//! SPIRE's format carries too) from the instance metadata service, with IMDSv2: a
//! session token from `PUT /latest/api/token` first, sent with every read. IMDSv1
//! (reads without a token) is used only when `allow_imdsv1` is set and the token
//! request is refused; a service that does not answer at all is an error the agent
//! retries.

use std::time::Duration;

use async_trait::async_trait;
use tessera_core::attestation::aws_iid::{NAME, Payload};
use tessera_process::http::Request;

use super::metadata::Service;
use super::{AttestError, Evidence, NodeAttestor, Session, json_evidence, no_challenge_session};

/// Where the metadata service is.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// The session token's lifetime: long enough for the three reads.
pub const TOKEN_TTL_SECONDS: u32 = 300;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AwsIid {
    endpoint: String,
    allow_imdsv1: bool,
    service: Service,
}

impl AwsIid {
    /// Reads from the metadata service at `endpoint` (`http://host[:port]`).
    pub fn new(endpoint: &str, allow_imdsv1: bool, timeout: Duration) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            allow_imdsv1,
            service: Service::new(NAME, timeout),
        }
    }

    /// An IMDSv2 session token, or `None` when IMDSv1 is allowed and the service
    /// refuses to hand one out.
    async fn token(&self) -> Result<Option<String>, AttestError> {
        let url = format!("{}/latest/api/token", self.endpoint);
        let r = self
            .service
            .send(Request::put(&url).header(
                "x-aws-ec2-metadata-token-ttl-seconds",
                &TOKEN_TTL_SECONDS.to_string(),
            ))
            .await?;
        if r.status != 200 && self.allow_imdsv1 && (400..500).contains(&r.status) {
            tracing::warn!(
                status = r.status,
                "aws_iid: the metadata service gave no IMDSv2 token; reading with IMDSv1 (allow_imdsv1)"
            );
            return Ok(None);
        }
        let body = self.service.ok(&url, r)?;
        let token = String::from_utf8(body)
            .map_err(|_| AttestError::Failed(format!("{NAME}: the IMDSv2 token is not text")))?;
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(AttestError::Failed(format!(
                "{NAME}: the metadata service sent an empty IMDSv2 token"
            )));
        }
        Ok(Some(token))
    }

    async fn read(&self, token: Option<&str>, path: &str) -> Result<String, AttestError> {
        let mut req = Request::get(&format!(
            "{}/latest/dynamic/instance-identity/{path}",
            self.endpoint
        ));
        if let Some(t) = token {
            req = req.header("x-aws-ec2-metadata-token", t);
        }
        let body = self.service.fetch(req).await?;
        String::from_utf8(body)
            .map_err(|_| AttestError::Failed(format!("{NAME}: the {path} is not text")))
    }

    /// The evidence, read fresh.
    pub async fn evidence(&self) -> Result<Payload, AttestError> {
        let token = self.token().await?;
        let document = self.read(token.as_deref(), "document").await?;
        let rsa2048 = self.read(token.as_deref(), "rsa2048").await?;
        // Only carried for SPIRE's format; a service without it still attests.
        let signature = self
            .read(token.as_deref(), "signature")
            .await
            .unwrap_or_default();
        Ok(Payload {
            document,
            signature,
            rsa2048,
        })
    }
}

#[async_trait]
impl Evidence for AwsIid {
    const NAME: &'static str = NAME;
    async fn evidence_bytes(&self) -> Result<Vec<u8>, AttestError> {
        json_evidence(&self.evidence().await?)
    }
}

impl NodeAttestor for AwsIid {
    fn name(&self) -> &'static str {
        NAME
    }

    fn can_reattest(&self) -> bool {
        false
    }

    fn session(&self) -> Box<dyn Session> {
        no_challenge_session(self)
    }
}
