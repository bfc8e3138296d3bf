//! Azure managed identity attestation (`azure_msi`), agent side: an access token for
//! the configured resource from IMDS (`/metadata/identity/oauth2/token`, with
//! `Metadata: true`), for the VM's system-assigned identity or the user-assigned one
//! named by client ID, object ID or resource ID.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tessera_core::attestation::azure_msi::{NAME, Payload};
use tessera_process::http::Request;

use super::metadata::{Service, query_escape};
use super::{AttestError, Evidence, NodeAttestor, Session, json_evidence, no_challenge_session};

/// Where IMDS is.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// The resource when none is configured (Resource Manager, as SPIRE).
pub const DEFAULT_RESOURCE: &str = "https://management.azure.com/";

/// The IMDS API version asked for.
pub const API_VERSION: &str = "2018-02-01";

/// Which user-assigned identity to use (none: the system-assigned one).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    pub msi_res_id: Option<String>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AzureMsi {
    url: String,
    service: Service,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
}

impl AzureMsi {
    /// Asks IMDS at `endpoint` for a token for `resource`.
    pub fn new(endpoint: &str, resource: &str, identity: &Identity, timeout: Duration) -> Self {
        let mut url = format!(
            "{}/metadata/identity/oauth2/token?api-version={API_VERSION}&resource={}",
            endpoint.trim_end_matches('/'),
            query_escape(resource)
        );
        for (k, v) in [
            ("client_id", &identity.client_id),
            ("object_id", &identity.object_id),
            ("msi_res_id", &identity.msi_res_id),
        ] {
            if let Some(v) = v {
                url.push_str(&format!("&{k}={}", query_escape(v)));
            }
        }
        Self {
            url,
            service: Service::new(NAME, timeout),
        }
    }

    /// A fresh access token.
    pub async fn token(&self) -> Result<String, AttestError> {
        let body = self
            .service
            .fetch(Request::get(&self.url).header("metadata", "true"))
            .await?;
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            AttestError::Failed(format!("{NAME}: the IMDS token answer is not JSON: {e}"))
        })?;
        reply.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            AttestError::Failed(format!("{NAME}: the IMDS token answer has no access_token"))
        })
    }
}

#[async_trait]
impl Evidence for AzureMsi {
    const NAME: &'static str = NAME;
    async fn evidence_bytes(&self) -> Result<Vec<u8>, AttestError> {
        json_evidence(&Payload {
            token: self.token().await?,
        })
    }
}

impl NodeAttestor for AzureMsi {
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
