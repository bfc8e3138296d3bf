//! The server's gRPC APIs: the agent API (over TLS) and the admin API (over a Unix
//! socket), the state they share, and the one place where internal errors become
//! gRPC status codes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tessera_core::clock::SharedClock;
use tessera_core::key::KeyManager;
use tessera_core::{SpiffeId, TrustDomain};
use tonic::Status;

use crate::attestor::{AttestError, NodeAttestor};
use crate::ca::{CaError, CaManager};
use crate::config::ServerConfig;
use crate::datastore::{AttestedNode, Datastore, DatastoreError};
use crate::entries::EntryCache;

pub mod admin;
pub mod admin_access;
pub mod admin_federation;
pub mod agent;
pub mod convert;
mod key_proof;
mod measured_boot;
pub mod preauth;
pub mod ratelimit;

/// Everything the handlers share.
#[derive(Debug)]
pub struct ServerState {
    pub config: ServerConfig,
    pub ds: Arc<dyn Datastore>,
    pub ca: Arc<CaManager>,
    pub entries: Arc<EntryCache>,
    pub attestors: HashMap<&'static str, Arc<dyn NodeAttestor>>,
    pub nodes: NodeCache,
    pub key_manager: Arc<dyn KeyManager>,
    /// Wall-clock time, as the CA manager and the entry cache see it.
    pub clock: SharedClock,
    /// Where attestation, admin and issuance records go.
    pub audit: crate::audit::Audit,
    /// What the server measures.
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    /// The federation relationships the server keeps bundles for.
    pub federation: Arc<crate::federation::relationships::Relationships>,
}

impl ServerState {
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The ID agents expect the server to present.
    pub fn server_id(&self) -> SpiffeId {
        server_id(self.trust_domain())
    }
}

/// `spiffe://<td>/spire/server`.
pub fn server_id(td: &TrustDomain) -> SpiffeId {
    td.id(tessera_core::entry::SERVER_PATH)
        .unwrap_or_else(|_| unreachable!("the server path is a valid SPIFFE ID path"))
}

/// Attested node records, read through from the datastore and kept a few seconds, so
/// that a busy agent API does not read the database on every call. Changes made on this
/// server (evict, ban, renew) update the cache at once.
#[derive(Debug, Default)]
pub struct NodeCache {
    nodes: RwLock<HashMap<SpiffeId, (Option<AttestedNode>, Instant)>>,
}

const NODE_FRESHNESS: Duration = Duration::from_secs(5);

impl NodeCache {
    pub async fn get(
        &self,
        ds: &dyn Datastore,
        id: &SpiffeId,
    ) -> Result<Option<AttestedNode>, DatastoreError> {
        if let Some((n, at)) = self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(id)
            && at.elapsed() < NODE_FRESHNESS
        {
            return Ok(n.clone());
        }
        let n = ds.get_attested_node(id).await?;
        self.put(id, n.clone());
        Ok(n)
    }

    pub fn put(&self, id: &SpiffeId, node: Option<AttestedNode>) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (node, Instant::now()));
    }
}

impl From<DatastoreError> for Status {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::NotFound(m) => Status::not_found(format!("{m} not found")),
            DatastoreError::AlreadyExists(m) => {
                Status::already_exists(format!("{m} already exists"))
            }
            DatastoreError::Invalid(f) => Status::invalid_argument(f.message()),
            DatastoreError::Unavailable(f) => {
                Status::unavailable(format!("datastore unavailable: {f}"))
            }
            DatastoreError::Conflict(m) => Status::aborted(m),
            DatastoreError::Backend(f) => Status::internal(format!("datastore error: {f}")),
        }
    }
}

impl From<CaError> for Status {
    fn from(e: CaError) -> Self {
        if e.is_unavailable() {
            tracing::error!(error = %e, "signing unavailable");
            Status::unavailable(format!("signing is unavailable: {e}"))
        } else {
            tracing::error!(error = %e, "signing failed");
            Status::internal(format!("signing failed: {e}"))
        }
    }
}

impl From<AttestError> for Status {
    fn from(e: AttestError) -> Self {
        match e {
            AttestError::Refused(m) => {
                Status::permission_denied(format!("attestation refused: {m}"))
            }
            AttestError::Malformed(m) => {
                Status::invalid_argument(format!("malformed attestation data: {m}"))
            }
            AttestError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

/// A blocking task's join error.
pub fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::datastore::Failure;

    #[test]
    fn each_datastore_error_kind_has_one_grpc_code() {
        let io = || std::io::Error::other("disk I/O error");
        let cases = [
            (
                DatastoreError::NotFound("entry \"e1\"".into()),
                Code::NotFound,
                "entry \"e1\" not found",
            ),
            (
                DatastoreError::AlreadyExists("join token abcd…".into()),
                Code::AlreadyExists,
                "join token abcd… already exists",
            ),
            (
                DatastoreError::Invalid("attested node x is banned".into()),
                Code::InvalidArgument,
                "attested node x is banned",
            ),
            (
                DatastoreError::Unavailable(Failure::caused_by(
                    "entry e1: database is locked",
                    io(),
                )),
                Code::Unavailable,
                "datastore unavailable: entry e1: database is locked",
            ),
            (
                DatastoreError::Conflict("agent x presented an SVID no longer accepted".into()),
                Code::Aborted,
                "agent x presented an SVID no longer accepted",
            ),
            (
                DatastoreError::Backend(Failure::caused_by("entries: disk I/O error", io())),
                Code::Internal,
                "datastore error: entries: disk I/O error",
            ),
        ];
        for (err, code, message) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
        }
    }
}
