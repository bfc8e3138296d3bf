//! A simulated agent: a real attested identity (join token, the Attest stream, its own
//! SVID and mTLS connection) without an agent process, so that one benchmark process
//! can be thousands of agents. It speaks the agent's own protocol code
//! (`tessera_agent::protocol`): it syncs as the agent does (by revision and digest)
//! and asks for SVIDs in batches.

use std::sync::Arc;
use std::time::Duration;

use tessera_agent::attestor::join_token::JoinToken;
use tessera_agent::client::Trust;
use tessera_agent::protocol::sync::{Revisions, sync};
use tessera_agent::protocol::{GrpcServer, ServerApi};
use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_core::{Bundle, SpiffeId, TrustDomain};
use tessera_proto::agent as pb;

/// What a simulated agent keeps between syncs: entry IDs and revisions.
pub(crate) type SyncState = Revisions;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct SimAgent {
    pub id: SpiffeId,
    server: Arc<GrpcServer>,
}

pub(crate) fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap_or_else(|_| unreachable!("a valid literal"))
}

/// The server's bundle, as the bootstrap trust for simulated agents.
pub(crate) fn bootstrap(bundle_pem: &str) -> Result<Arc<SharedBundle>, String> {
    let roots = tessera_core::x509::pem_certs(bundle_pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(SharedBundle::new(Bundle::with_x509(trust_domain(), roots)))
}

fn server_id() -> SpiffeId {
    trust_domain()
        .id("/spire/server")
        .unwrap_or_else(|_| unreachable!("a valid literal"))
}

/// A CSR for a fresh P-256 key (the key is dropped: only the server's work counts).
pub(crate) fn csr() -> Vec<u8> {
    let key: Arc<dyn Key> = match SoftwareKey::generate(KeyType::EcP256) {
        Ok(k) => Arc::new(k),
        Err(e) => panic!("key generation failed: {e}"),
    };
    tessera_core::x509::build_csr(&key).unwrap_or_default()
}

impl SimAgent {
    /// Attests with a join token and opens the agent's own mTLS connection.
    pub(crate) async fn attest(
        server: &str,
        bundle: Arc<SharedBundle>,
        token: &str,
    ) -> Result<Self, String> {
        let key: Arc<dyn Key> =
            Arc::new(SoftwareKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?);
        let csr = tessera_core::x509::build_csr(&key).map_err(|e| e.to_string())?;
        let identity = SharedIdentity::new();
        let conn = GrpcServer::new(
            vec![server.to_owned()],
            server_id(),
            bundle.clone(),
            identity.clone(),
        );
        let token = JoinToken::new(token.to_owned().into());
        let result = conn
            .attest(Trust::Bundle(bundle), &token, csr)
            .await
            .map_err(|e| format!("attest: {e}"))?;
        identity.set(&result.svid_chain, key);
        conn.reconnect();
        let id = SpiffeId::new(&result.spiffe_id).map_err(|e| e.to_string())?;
        Ok(Self {
            id,
            server: Arc::new(conn),
        })
    }

    /// One sync, as the agent does it; returns how many entries it holds.
    pub(crate) async fn sync(&self, st: &mut SyncState) -> Result<usize, String> {
        sync(self.server.as_ref(), st)
            .await
            .map_err(|e| format!("{}: sync: {e}", self.id))?;
        Ok(st.entries.len())
    }

    /// Asks for one SVID per (entry, CSR) pair; returns how many were signed.
    pub(crate) async fn sign(&self, requests: &[(String, Vec<u8>)]) -> Result<usize, String> {
        let results = self
            .server
            .batch_new_x509_svid(
                requests
                    .iter()
                    .map(|(entry_id, csr)| pb::SvidRequest {
                        entry_id: entry_id.clone(),
                        csr: csr.clone(),
                    })
                    .collect(),
            )
            .await
            .map_err(|e| format!("batch sign: {e}"))?;
        Ok(results.iter().filter(|r| !r.cert_chain.is_empty()).count())
    }
}

/// Attests `tokens.len()` simulated agents, `parallel` at a time, in token order.
pub(crate) async fn attest_many(
    server: &str,
    bundle: Arc<SharedBundle>,
    tokens: Vec<String>,
    parallel: usize,
) -> Result<Vec<SimAgent>, String> {
    use futures::StreamExt;
    let results: Vec<Result<SimAgent, String>> = futures::stream::iter(tokens)
        .map(|t| {
            let bundle = bundle.clone();
            let server = server.to_owned();
            async move { SimAgent::attest(&server, bundle, &t).await }
        })
        .buffered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Sleeps a random fraction of `period` (spreads agents out, as real ones are).
pub(crate) async fn jitter(period: Duration) {
    let f: f64 = rand::random::<f64>();
    tokio::time::sleep(period.mul_f64(f)).await;
}
