//! Google Compute Engine instance identity attestation (`gcp_iit`), agent side: an
//! identity token in the `full` format (it carries the instance's project, zone,
//! ID and name) for the configured audience, from the metadata server, asked with
//! `Metadata-Flavor: Google`. An answer without that header is not from the
//! metadata server and is refused.

use std::time::Duration;

use async_trait::async_trait;
use tessera_process::http::Request;

use super::metadata::{Service, query_escape};
use super::{AttestError, Evidence, NodeAttestor, Session, no_challenge_session};

pub use tessera_core::attestation::gcp_iit::{DEFAULT_AUDIENCE, NAME};

/// The metadata server's host name.
pub const DEFAULT_HOST: &str = "metadata.google.internal";

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct GcpIit {
    url: String,
    service: Service,
}

impl GcpIit {
    /// Asks `host` for a token for `audience`, as `service_account`.
    pub fn new(host: &str, service_account: &str, audience: &str, timeout: Duration) -> Self {
        Self {
            url: format!(
                "http://{host}/computeMetadata/v1/instance/service-accounts/{}/identity?audience={}&format=full",
                query_escape(service_account),
                query_escape(audience)
            ),
            service: Service::new(NAME, timeout),
        }
    }

    /// A fresh token.
    pub async fn token(&self) -> Result<String, AttestError> {
        let r = self
            .service
            .send(Request::get(&self.url).header("metadata-flavor", "Google"))
            .await?;
        let flavor = r
            .headers
            .get("metadata-flavor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = self.service.ok(&self.url, r)?;
        if flavor.as_deref() != Some("Google") {
            return Err(AttestError::Failed(format!(
                "{NAME}: the answer from {} lacks \"Metadata-Flavor: Google\"; it is not from \
                 the metadata server",
                self.url
            )));
        }
        let token = String::from_utf8(body)
            .map_err(|_| AttestError::Failed(format!("{NAME}: the identity token is not text")))?;
        Ok(token.trim().to_owned())
    }
}

#[async_trait]
impl Evidence for GcpIit {
    const NAME: &'static str = NAME;
    async fn evidence_bytes(&self) -> Result<Vec<u8>, AttestError> {
        self.token().await.map(String::into_bytes)
    }
}

impl NodeAttestor for GcpIit {
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
