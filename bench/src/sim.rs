//! A simulated agent: a real attested identity (join token, the Attest stream, its own
//! SVID and mTLS connection) without an agent process, so that one benchmark process
//! can be thousands of agents. It syncs the way the agent does (by revision and
//! digest) and asks for SVIDs in batches.

use std::sync::Arc;
use std::time::Duration;

use tessera_agent::client::{Trust, channel, node_client};
use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_core::{Bundle, SpiffeId, TrustDomain};
use tessera_proto::agent as pb;
use tessera_proto::agent::node_client::NodeClient;
use tonic::transport::Channel;

/// What a simulated agent keeps between syncs.
#[derive(Debug, Default, Clone)]
pub struct SyncState {
    pub revision: u64,
    pub entries: std::collections::BTreeMap<String, u64>,
    pub bundle_sequence: u64,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct SimAgent {
    pub id: SpiffeId,
    client: NodeClient<Channel>,
}

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap_or_else(|_| unreachable!("a valid literal"))
}

/// The server's bundle, as the bootstrap trust for simulated agents.
pub fn bootstrap(bundle_pem: &str) -> Result<Arc<SharedBundle>, String> {
    let roots = tessera_core::x509::pem_certs(bundle_pem.as_bytes())?;
    Ok(SharedBundle::new(Bundle::with_x509(trust_domain(), roots)))
}

fn server_id() -> SpiffeId {
    trust_domain()
        .id("/spire/server")
        .unwrap_or_else(|_| unreachable!("a valid literal"))
}

/// A CSR for a fresh P-256 key (the key is dropped: only the server's work counts).
pub fn csr() -> Vec<u8> {
    let key: Arc<dyn Key> = match SoftwareKey::generate(KeyType::EcP256) {
        Ok(k) => Arc::new(k),
        Err(e) => panic!("key generation failed: {e}"),
    };
    tessera_core::x509::build_csr(&key).unwrap_or_default()
}

impl SimAgent {
    /// Attests with a join token and opens the agent's own mTLS connection.
    pub async fn attest(
        server: &str,
        bundle: Arc<SharedBundle>,
        token: &str,
    ) -> Result<Self, String> {
        let key: Arc<dyn Key> =
            Arc::new(SoftwareKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?);
        let csr = tessera_core::x509::build_csr(&key).map_err(|e| e.to_string())?;
        let mut boot = node_client(channel(
            vec![server.to_owned()],
            server_id(),
            Trust::Bundle(bundle.clone()),
            None,
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(pb::AttestRequest {
            step: Some(pb::attest_request::Step::Params(pb::AttestationParams {
                attestor: "join_token".into(),
                payload: token.as_bytes().to_vec(),
                csr,
            })),
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut inbound = boot
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("attest: {}", e.message()))?
            .into_inner();
        let result = match inbound
            .message()
            .await
            .map_err(|e| format!("attest: {}", e.message()))?
        {
            Some(pb::AttestResponse {
                step: Some(pb::attest_response::Step::Result(r)),
            }) => r,
            Some(_) => return Err("join_token attestation sent a challenge".into()),
            None => return Err("attestation stream ended".into()),
        };
        let identity = SharedIdentity::new();
        identity.set(&result.svid_chain, key);
        let id = SpiffeId::new(&result.spiffe_id).map_err(|e| e.to_string())?;
        let client = node_client(channel(
            vec![server.to_owned()],
            server_id(),
            Trust::Bundle(bundle),
            Some(identity),
        ));
        Ok(Self { id, client })
    }

    /// One sync, as the agent does it; returns how many entries it holds.
    pub async fn sync(&self, st: &mut SyncState) -> Result<usize, String> {
        let mut client = self.client.clone();
        let mut want = Vec::new();
        for _ in 0..3 {
            let digest = tessera_core::entry::revision_digest(
                st.entries.iter().map(|(k, v)| (k.as_str(), *v)),
            );
            let resp = client
                .sync_entries(pb::SyncRequest {
                    known_revision: st.revision,
                    known_digest: digest,
                    bundle_sequence: st.bundle_sequence,
                    want_ids: std::mem::take(&mut want),
                })
                .await
                .map_err(|e| format!("{}: sync: {}", self.id, e.message()))?
                .into_inner();
            if let Some(b) = resp.bundle {
                st.bundle_sequence = b.sequence;
            }
            for e in &resp.entries {
                st.entries.insert(e.id.clone(), e.revision_number);
            }
            if resp.full_list {
                let listed: std::collections::BTreeMap<&str, u64> = resp
                    .authorized
                    .iter()
                    .map(|r| (r.id.as_str(), r.revision_number))
                    .collect();
                st.entries.retain(|k, _| listed.contains_key(k.as_str()));
                want = listed
                    .iter()
                    .filter(|(k, v)| st.entries.get(**k) != Some(*v))
                    .map(|(k, _)| (*k).to_owned())
                    .collect();
            }
            st.revision = st.revision.max(resp.revision);
            if want.is_empty() {
                break;
            }
        }
        Ok(st.entries.len())
    }

    /// Asks for one SVID per (entry, CSR) pair; returns how many were signed.
    pub async fn sign(&self, requests: &[(String, Vec<u8>)]) -> Result<usize, String> {
        let resp = self
            .client
            .clone()
            .batch_new_x509_svid(pb::BatchNewX509SvidRequest {
                requests: requests
                    .iter()
                    .map(|(entry_id, csr)| pb::SvidRequest {
                        entry_id: entry_id.clone(),
                        csr: csr.clone(),
                    })
                    .collect(),
            })
            .await
            .map_err(|e| format!("batch sign: {} ({:?})", e.message(), e.code()))?
            .into_inner();
        Ok(resp
            .results
            .iter()
            .filter(|r| !r.cert_chain.is_empty())
            .count())
    }
}

/// Attests `tokens.len()` simulated agents, `parallel` at a time, in token order.
pub async fn attest_many(
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
pub async fn jitter(period: Duration) {
    let f: f64 = rand::random::<f64>();
    tokio::time::sleep(period.mul_f64(f)).await;
}
