//! What the Workload API serves from: the agent's published snapshots (the entries,
//! their X509-SVIDs and the bundles, which the API narrows to what each caller's
//! selectors entitle it to) and JWT-SVIDs minted on demand. The agent is the source;
//! the API's unit tests use a fake.

use std::sync::Arc;

use async_trait::async_trait;
use tessera_core::RegistrationEntry;
use tokio::sync::watch;

use crate::cache::{CachedJwt, Snapshot};
use crate::manager::{Agent, AgentError};

/// A source of the identities the Workload API serves.
#[async_trait]
pub trait IdentitySource: Send + Sync + std::fmt::Debug {
    /// The snapshots as they are published (the current one first).
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;

    /// The current snapshot.
    fn snapshot(&self) -> Arc<Snapshot> {
        self.subscribe().borrow().clone()
    }

    /// A JWT-SVID for `entry` (one of the snapshot's) and `audience`.
    async fn jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
    ) -> Result<CachedJwt, AgentError>;
}

#[async_trait]
impl IdentitySource for Agent {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.cache.subscribe()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.cache.snapshot()
    }

    async fn jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
    ) -> Result<CachedJwt, AgentError> {
        Agent::jwt_svid(self, entry, audience).await
    }
}
