//! The agent API: node attestation, agent SVID renewal, entry sync by revision, batch
//! X509-SVID signing and JWT-SVID minting.
//!
//! The server decides every SVID's SPIFFE ID, lifetime and DNS names from the
//! registration entry; a CSR contributes only its public key (and the proof that the
//! agent holds the private half).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tessera_core::selector::SelectorSet;
use tessera_core::{RegistrationEntry, SpiffeId, TrustDomain};
use tessera_proto::agent as pb;
use tessera_proto::agent::node_server::Node;
use tessera_proto::agent::{attest_request, attest_response};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::convert::{bundle_to_proto, entry_to_proto, status_of};
use super::ratelimit::AttestationLimit;
use super::{ServerState, join_error};
use crate::attestor::Step;
use crate::audit;
use crate::datastore::{AttestedNode, DatastoreError};
use crate::entries::AuthorizedSet;
use crate::transport::PeerInfo;

/// How long the server waits for an agent's answer to a challenge.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most SVIDs one batch may ask for (SPIRE's figure).
pub const MAX_BATCH: usize = 500;

/// The agent API service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    state: Arc<ServerState>,
    /// Attestations per source address; `None` when turned off.
    attest_limit: Option<Arc<AttestationLimit>>,
}

impl AgentApi {
    pub fn new(state: Arc<ServerState>) -> Self {
        let l = &state.config.limits;
        let attest_limit =
            AttestationLimit::new(l.attestation_rate, l.attestation_burst).map(Arc::new);
        Self {
            state,
            attest_limit,
        }
    }
}

/// An agent that proved itself with its SVID on this connection.
struct Caller {
    id: SpiffeId,
    node: AttestedNode,
    /// The serial of the SVID it presented.
    serial: String,
}

/// Whether `serial` is one of the SVIDs the server accepts for `node`.
fn accepts(node: &AttestedNode, serial: &str) -> bool {
    !node.banned
        && !serial.is_empty()
        && (node.cert_serial == serial || node.new_cert_serial == serial)
}

impl Caller {
    fn selectors(&self) -> SelectorSet {
        self.node.selectors.iter().cloned().collect()
    }
}

impl AgentApi {
    /// Checks that the caller presented an SVID the server accepts for an attested,
    /// unbanned agent: the one it last proved it holds, or its pending renewal. The
    /// first call made with the pending renewal makes it the current SVID, and from
    /// then on the one it replaced is refused.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let info = req
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Status::internal("connection carries no peer information"))?;
        let id = info.spiffe_id.clone().ok_or_else(|| {
            Status::unauthenticated("this call needs the agent's SVID (mTLS); attest first")
        })?;
        if !id.is_member_of(self.state.trust_domain()) || !id.path().starts_with("/spire/agent/") {
            return Err(Status::permission_denied(format!(
                "{id} is not an agent ID"
            )));
        }
        let ds = self.state.ds.as_ref();
        let cached = self.state.nodes.get(ds, &id).await?;
        let node = match cached {
            Some(n) if accepts(&n, &info.serial) => n,
            // The cache may be a few seconds behind (a renewal or re-attestation on
            // another server sharing the database): look again before refusing.
            _ => {
                let fresh = ds.get_attested_node(&id).await?;
                self.state.nodes.put(&id, fresh.clone());
                fresh.ok_or_else(|| {
                    Status::permission_denied(format!(
                        "agent {id} is not attested (it may have been evicted): attest again"
                    ))
                })?
            }
        };
        if node.banned {
            return Err(Status::permission_denied(format!("agent {id} is banned")));
        }
        if !accepts(&node, &info.serial) {
            return Err(Status::permission_denied(format!(
                "agent {id} presented an SVID (serial {}) that is no longer its current one",
                info.serial
            )));
        }
        let node = if node.cert_serial == info.serial {
            node
        } else {
            self.activate(&id, &info.serial).await?
        };
        Ok(Caller {
            id,
            node,
            serial: info.serial.clone(),
        })
    }

    /// The agent authenticated with its pending renewed SVID: it has it, so it
    /// becomes the current one.
    async fn activate(&self, id: &SpiffeId, serial: &str) -> Result<AttestedNode, Status> {
        match self.state.ds.activate_node_svid(id, serial).await {
            Ok(node) => {
                tracing::info!(
                    agent = %id,
                    serial,
                    "agent uses its renewed SVID; the one it replaced is no longer accepted"
                );
                self.state.nodes.put(id, Some(node.clone()));
                Ok(node)
            }
            Err(DatastoreError::Conflict(m)) => {
                self.state.nodes.put(id, None);
                Err(Status::permission_denied(m))
            }
            Err(DatastoreError::NotFound(_)) => {
                self.state.nodes.put(id, None);
                Err(Status::permission_denied(format!(
                    "agent {id} is not attested (it may have been evicted): attest again"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn authorized(&self, caller: &Caller) -> Arc<AuthorizedSet> {
        self.state
            .entries
            .authorized(&caller.id, &caller.selectors())
    }

    fn entry_ttl(&self, e: &RegistrationEntry) -> Duration {
        if e.x509_svid_ttl > 0 {
            Duration::from_secs(u64::from(e.x509_svid_ttl))
        } else {
            self.state.config.x509_svid_ttl
        }
    }
}

type AttestStream = Pin<Box<dyn Stream<Item = Result<pb::AttestResponse, Status>> + Send>>;

async fn next_message(
    inbound: &mut Streaming<pb::AttestRequest>,
) -> Result<pb::AttestRequest, Status> {
    match tokio::time::timeout(CHALLENGE_TIMEOUT, inbound.message()).await {
        Err(_) => Err(Status::deadline_exceeded(
            "the agent did not answer in time",
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => Err(Status::cancelled("the agent closed the attestation stream")),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// What an attestation established before it ended, for its audit record.
#[derive(Debug, Default)]
struct AttestFacts {
    attestor: Option<String>,
    agent_id: Option<SpiffeId>,
}

impl AgentApi {
    async fn run_attestation(
        &self,
        inbound: &mut Streaming<pb::AttestRequest>,
        tx: &mpsc::Sender<Result<pb::AttestResponse, Status>>,
        attestor_name: &mut &'static str,
        facts: &mut AttestFacts,
    ) -> Result<(), Status> {
        let first = next_message(inbound).await?;
        let Some(attest_request::Step::Params(params)) = first.step else {
            return Err(Status::invalid_argument(
                "the first attestation message must carry the attestation parameters",
            ));
        };
        facts.attestor = Some(params.attestor.clone());
        let attestor = self
            .state
            .attestors
            .get(params.attestor.as_str())
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<&str> = self.state.attestors.keys().copied().collect();
                names.sort();
                Status::invalid_argument(format!(
                    "node attestor {:?} is not enabled on this server (enabled: {})",
                    params.attestor,
                    names.join(", ")
                ))
            })?;
        *attestor_name = attestor.name();
        // Check the CSR before the evidence, so that a bad CSR does not burn a
        // one-time join token.
        let public_key = tessera_core::x509::csr_public_key(&params.csr, None)
            .map_err(|e| Status::invalid_argument(format!("agent CSR: {e}")))?;

        let mut session = attestor.session();
        let mut input = params.payload;
        let attested = loop {
            match session.step(input).await? {
                Step::Attested(a) => break a,
                Step::Challenge(c) => {
                    tx.send(Ok(pb::AttestResponse {
                        step: Some(attest_response::Step::Challenge(c)),
                    }))
                    .await
                    .map_err(|_| Status::cancelled("the agent went away"))?;
                    let msg = next_message(inbound).await?;
                    match msg.step {
                        Some(attest_request::Step::ChallengeResponse(r)) => input = r,
                        _ => return Err(Status::invalid_argument("expected a challenge response")),
                    }
                }
            }
        };

        let td = self.state.trust_domain().clone();
        let agent_id = td
            .id(&format!("/spire/agent/{}", attested.agent_path))
            .map_err(|e| Status::internal(format!("attestor produced an invalid agent ID: {e}")))?;
        facts.agent_id = Some(agent_id.clone());
        let existing = self.state.ds.get_attested_node(&agent_id).await?;
        if let Some(n) = &existing {
            if n.banned {
                return Err(Status::permission_denied(format!(
                    "agent {agent_id} is banned"
                )));
            }
            if !attested.can_reattest {
                return Err(Status::permission_denied(format!(
                    "agent {agent_id} is already attested and {} does not allow re-attestation",
                    params.attestor
                )));
            }
        }

        // TPM attestors: is the SVID key in the TPM? Checked before anything is issued.
        let key_verdict = attested
            .tpm
            .as_ref()
            .map(|t| super::key_proof::at_attestation(t, &params.csr, &public_key));
        if let Some(Err(e)) = &key_verdict {
            if self
                .state
                .config
                .requires_agent_key_in_tpm(&params.attestor)
            {
                return Err(super::key_proof::refusal(
                    &agent_id.to_string(),
                    &params.attestor,
                    e,
                ));
            }
            tracing::warn!(agent = %agent_id, "agent SVID key not proven to be in its TPM: {e}");
        }
        // Measured boot: the quote (if any) and the attestor's PCR allow-list.
        let measured = match attested.tpm.as_ref() {
            Some(t) => super::measured_boot::check(
                attestor.pcr_policy().as_deref(),
                &t.ak_public,
                t.pcr_quote.as_ref(),
                &tessera_tpm::verifier::quote::attestation_qualifying_data(
                    &t.key_nonce,
                    &params.csr,
                ),
            ),
            None => super::measured_boot::Outcome::NotChecked,
        };
        let pcr_selectors = match &measured {
            super::measured_boot::Outcome::Refused(reason) => {
                self.state.metrics.measured_boot_refused("attestation");
                return Err(super::measured_boot::refusal(&agent_id.to_string(), reason));
            }
            super::measured_boot::Outcome::Ok(s) => s.clone(),
            super::measured_boot::Outcome::NotChecked => Vec::new(),
        };

        let ca = self.state.ca.clone();
        let ttl = self.state.config.agent_svid_ttl();
        let id = agent_id.clone();
        let chain =
            tokio::task::spawn_blocking(move || ca.sign_x509_svid(&id, &public_key, &[], ttl))
                .await
                .map_err(join_error)??;
        let info = tessera_core::x509::cert_info(&chain[0])
            .map_err(|e| Status::internal(e.to_string()))?;
        let now = self.state.clock.unix();
        self.state.audit.record(&audit::Svid {
            agent_id: agent_id.to_string(),
            spiffe_id: agent_id.to_string(),
            kind: "x509",
            issued_for: "attestation",
            entry_id: None,
            serial: Some(info.serial_hex.clone()),
            audience: None,
            expires_at: audit::records::unix_rfc3339(info.not_after),
        });
        let node = AttestedNode {
            spiffe_id: agent_id.clone(),
            attestation_type: params.attestor.clone(),
            cert_serial: info.serial_hex,
            cert_not_after: info.not_after,
            new_cert_serial: String::new(),
            new_cert_not_after: 0,
            banned: false,
            can_reattest: attested.can_reattest,
            selectors: attested
                .selectors
                .into_iter()
                .chain(pcr_selectors)
                .collect(),
            created_at: existing.as_ref().map_or(now, |n| n.created_at),
            updated_at: now,
            key_in_tpm: matches!(key_verdict, Some(Ok(()))),
            ak_public: attested.tpm.map(|t| t.ak_public).unwrap_or_default(),
            measured_boot: measured.status(),
        };
        self.state.ds.upsert_attested_node(node.clone()).await?;
        self.state.nodes.put(&agent_id, Some(node));
        self.state.entries.forget_agent(&agent_id);
        tracing::info!(
            agent = %agent_id,
            attestor = %params.attestor,
            "agent attested"
        );
        let bundle = self.state.ca.bundle();
        tx.send(Ok(pb::AttestResponse {
            step: Some(attest_response::Step::Result(pb::AttestResult {
                spiffe_id: agent_id.to_string(),
                svid_chain: chain,
                bundle: Some(bundle_to_proto(&bundle)),
                can_reattest: attested.can_reattest,
            })),
        }))
        .await
        .map_err(|_| Status::cancelled("the agent went away"))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Node for AgentApi {
    type AttestStream = AttestStream;

    async fn attest(
        &self,
        req: Request<Streaming<pb::AttestRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned();
        // Before any evidence is read: a refused attempt costs nothing, and the
        // limiter logs refusals in summaries (never the evidence).
        let admitted = match (&self.attest_limit, peer.as_ref().and_then(|p| p.addr)) {
            (Some(limit), Some(addr)) => Some(limit.check(addr.ip().into())?),
            _ => None,
        };
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        // The task logs inside the call's span.
        tokio::spawn(
            async move {
                // Named only once it is an enabled attestor: the label set stays bounded.
                let mut attestor = "unknown";
                let mut facts = AttestFacts::default();
                let result = api
                    .run_attestation(&mut inbound, &tx, &mut attestor, &mut facts)
                    .await;
                api.state.audit.record(&audit::Attestation {
                    attestor: facts.attestor.map(|a| audit::records::clip(&a, 64)),
                    agent_id: facts.agent_id.map(|id| id.to_string()),
                    outcome: audit::Outcome::of(&result, &[]),
                    source: peer.as_ref().and_then(|p| p.addr).map(|a| a.to_string()),
                });
                let metrics = &api.state.metrics;
                match &result {
                    Ok(()) => {
                        metrics.attestation(attestor, "ok");
                        metrics.issued("agent", 1);
                    }
                    Err(status) => metrics.attestation(attestor, crate::metrics::outcome(status)),
                }
                if result.is_ok()
                    && let Some(a) = admitted
                {
                    a.succeeded();
                }
                if let Err(status) = result {
                    tracing::warn!(
                        peer = ?peer.and_then(|p| p.addr),
                        code = ?status.code(),
                        "attestation failed: {}",
                        status.message()
                    );
                    let _ = tx.send(Err(status)).await;
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let caller = self.authenticate(&req).await?;
        let pb::RenewAgentRequest {
            csr,
            key_certify,
            pcr_quote,
        } = req.into_inner();
        let public_key = tessera_core::x509::csr_public_key(&csr, Some(&caller.id))
            .map_err(|e| Status::invalid_argument(format!("agent CSR: {e}")))?;
        let key_verdict = super::key_proof::at_renewal(
            &caller.node,
            &caller.serial,
            &csr,
            &public_key,
            key_certify,
        );
        let attestor = caller.node.attestation_type.as_str();
        let measured = super::measured_boot::at_renewal(
            &self.state,
            &caller.node,
            &caller.serial,
            &csr,
            pcr_quote,
        );
        if let super::measured_boot::Outcome::Refused(reason) = &measured {
            // The agent loses its renewal, and its record says why.
            tracing::warn!(agent = %caller.id, "agent SVID renewal refused: measured boot: {reason}");
            self.state.metrics.measured_boot_refused("renewal");
            let status = measured.status();
            if caller.node.measured_boot != status {
                self.state
                    .ds
                    .set_node_tpm_state(&caller.id, caller.node.key_in_tpm, &status)
                    .await?;
                self.state.nodes.put(&caller.id, None);
            }
            return Err(super::measured_boot::refusal(
                &caller.id.to_string(),
                reason,
            ));
        }
        if let Some(Err(e)) = &key_verdict {
            if self.state.config.requires_agent_key_in_tpm(attestor) {
                if caller.node.key_in_tpm {
                    let _ = self
                        .state
                        .ds
                        .set_node_tpm_state(&caller.id, false, &caller.node.measured_boot)
                        .await;
                    self.state.nodes.put(&caller.id, None);
                }
                tracing::warn!(agent = %caller.id, "agent SVID renewal refused: key not proven to be in its TPM: {e}");
                return Err(super::key_proof::refusal(
                    &caller.id.to_string(),
                    attestor,
                    e,
                ));
            }
            tracing::warn!(agent = %caller.id, "renewed agent SVID key not proven to be in its TPM: {e}");
        }
        let ca = self.state.ca.clone();
        let ttl = self.state.config.agent_svid_ttl();
        let id = caller.id.clone();
        let chain =
            tokio::task::spawn_blocking(move || ca.sign_x509_svid(&id, &public_key, &[], ttl))
                .await
                .map_err(join_error)??;
        let info = tessera_core::x509::cert_info(&chain[0])
            .map_err(|e| Status::internal(e.to_string()))?;
        // Recorded as pending: the SVID the agent authenticated with stays accepted
        // until it uses the new one, so an answer lost on the way cannot lock it out.
        let node = match self
            .state
            .ds
            .renew_node_svid(&caller.id, &caller.serial, &info.serial_hex, info.not_after)
            .await
        {
            Ok(node) => node,
            Err(DatastoreError::Conflict(m)) => {
                self.state.nodes.put(&caller.id, None);
                return Err(Status::permission_denied(m));
            }
            Err(e) => return Err(e.into()),
        };
        let proven = key_verdict.map_or(node.key_in_tpm, |v| v.is_ok());
        let status = measured.status();
        let node = if proven != node.key_in_tpm || status != node.measured_boot {
            self.state
                .ds
                .set_node_tpm_state(&caller.id, proven, &status)
                .await?;
            AttestedNode {
                key_in_tpm: proven,
                measured_boot: status,
                ..node
            }
        } else {
            node
        };
        // Selectors that depend on the measured state follow it: a renewal without
        // a verified quote leaves none (else an agent whose PCRs moved on would keep
        // the old values' selectors by leaving its quote out).
        let pcr = match measured {
            super::measured_boot::Outcome::Ok(pcr) => Some(pcr),
            _ if super::key_proof::is_tpm_attestor(attestor) => Some(Vec::new()),
            _ => None,
        };
        let node = match pcr {
            Some(pcr) => {
                let selectors = super::measured_boot::with_pcr_selectors(&node.selectors, pcr);
                if selectors == node.selectors {
                    node
                } else {
                    let node = AttestedNode { selectors, ..node };
                    self.state.ds.upsert_attested_node(node.clone()).await?;
                    self.state.entries.forget_agent(&caller.id);
                    node
                }
            }
            None => node,
        };
        self.state.nodes.put(&caller.id, Some(node));
        self.state.audit.record(&audit::Svid {
            agent_id: caller.id.to_string(),
            spiffe_id: caller.id.to_string(),
            kind: "x509",
            issued_for: "renewal",
            entry_id: None,
            serial: Some(info.serial_hex),
            audience: None,
            expires_at: audit::records::unix_rfc3339(info.not_after),
        });
        self.state.metrics.issued("agent", 1);
        tracing::debug!(agent = %caller.id, "agent SVID renewed");
        Ok(Response::new(pb::RenewAgentResponse { svid_chain: chain }))
    }

    async fn sync_entries(
        &self,
        req: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let caller = self.authenticate(&req).await?;
        let req = req.into_inner();
        let set = self.authorized(&caller);
        let changed = set.digest != req.known_digest;
        let mut resp = pb::SyncResponse {
            revision: set.revision,
            ..Default::default()
        };
        if changed || !req.want_ids.is_empty() {
            let wanted: BTreeSet<&str> = req.want_ids.iter().map(String::as_str).collect();
            resp.entries = set
                .entries
                .iter()
                .filter(|e| {
                    e.revision_number > req.known_revision || wanted.contains(e.id.as_str())
                })
                .map(|e| entry_to_proto(e))
                .collect();
        }
        if changed {
            resp.full_list = true;
            resp.authorized = set
                .entries
                .iter()
                .map(|e| pb::EntryRevision {
                    id: e.id.clone(),
                    revision_number: e.revision_number,
                })
                .collect();
        }
        let bundle = self.state.ca.bundle();
        if bundle.sequence() != req.bundle_sequence {
            resp.bundle = Some(bundle_to_proto(&bundle));
        }
        let federated: BTreeSet<&TrustDomain> = set
            .entries
            .iter()
            .flat_map(|e| e.federates_with.iter())
            .collect();
        for td in federated {
            if let Some(b) = self.state.ds.get_bundle(td).await? {
                resp.federated_bundles.push(bundle_to_proto(&b));
            }
        }
        Ok(Response::new(resp))
    }

    async fn batch_new_x509_svid(
        &self,
        req: Request<pb::BatchNewX509SvidRequest>,
    ) -> Result<Response<pb::BatchNewX509SvidResponse>, Status> {
        let caller = self.authenticate(&req).await?;
        let requests = req.into_inner().requests;
        if requests.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} SVIDs asked for in one batch; at most {MAX_BATCH}",
                requests.len()
            )));
        }
        let set = self.authorized(&caller);
        // Check everything first, then sign the accepted ones in parallel blocking
        // tasks: with an HSM each signature waits on the token.
        let mut results: Vec<pb::SvidResult> = Vec::with_capacity(requests.len());
        let mut jobs: Vec<(usize, SpiffeId, Vec<u8>, Vec<String>, Duration)> = Vec::new();
        for r in requests {
            let idx = results.len();
            results.push(pb::SvidResult {
                entry_id: r.entry_id.clone(),
                ..Default::default()
            });
            let Some(entry) = set.get(&r.entry_id) else {
                tracing::warn!(agent = %caller.id, entry = %r.entry_id, "refused an SVID for an entry the agent is not authorized for");
                results[idx].status = Some(status_of(
                    Code::PermissionDenied,
                    format!(
                        "entry {} is not authorized for agent {}",
                        r.entry_id, caller.id
                    ),
                ));
                continue;
            };
            match tessera_core::x509::csr_public_key(&r.csr, Some(&entry.spiffe_id)) {
                Ok(pk) => jobs.push((
                    idx,
                    entry.spiffe_id.clone(),
                    pk,
                    entry.dns_names.clone(),
                    self.entry_ttl(entry),
                )),
                Err(e) => {
                    tracing::warn!(agent = %caller.id, entry = %r.entry_id, error = %e, "refused a CSR");
                    results[idx].status = Some(status_of(
                        Code::InvalidArgument,
                        format!("entry {}: {e}", r.entry_id),
                    ));
                }
            }
        }
        let workers = jobs.len().clamp(1, signing_parallelism());
        let per = jobs.len().div_ceil(workers);
        let mut handles = Vec::new();
        let mut jobs = jobs.into_iter();
        for _ in 0..workers {
            let chunk: Vec<_> = jobs.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            let ca = self.state.ca.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|(idx, id, pk, dns, ttl)| (idx, ca.sign_x509_svid(&id, &pk, &dns, ttl)))
                    .collect::<Vec<_>>()
            }));
        }
        for h in handles {
            for (idx, res) in h.await.map_err(join_error)? {
                match res {
                    Ok(chain) => {
                        let info = tessera_core::x509::cert_info(&chain[0]).ok();
                        let expires = info.as_ref().map_or(0, |i| i.not_after);
                        if self.state.audit.enabled() {
                            self.state.audit.record(&audit::Svid {
                                agent_id: caller.id.to_string(),
                                spiffe_id: info
                                    .as_ref()
                                    .and_then(|i| i.spiffe_id.as_ref())
                                    .map(ToString::to_string)
                                    .unwrap_or_default(),
                                kind: "x509",
                                issued_for: "workload",
                                entry_id: Some(results[idx].entry_id.clone()),
                                serial: info.as_ref().map(|i| i.serial_hex.clone()),
                                audience: None,
                                expires_at: audit::records::unix_rfc3339(expires),
                            });
                        }
                        results[idx].status = Some(status_of(Code::Ok, ""));
                        self.state.metrics.issued("workload", 1);
                        results[idx].cert_chain = chain;
                        results[idx].expires_at = expires;
                    }
                    Err(e) => {
                        // A fault of the key store fails the whole call, so the agent
                        // retries later rather than caching a partial failure.
                        let status: Status = e.into();
                        if status.code() == Code::Unavailable {
                            return Err(status);
                        }
                        results[idx].status = Some(status_of(status.code(), status.message()));
                    }
                }
            }
        }
        Ok(Response::new(pb::BatchNewX509SvidResponse { results }))
    }

    async fn new_jwt_svid(
        &self,
        req: Request<pb::NewJwtSvidRequest>,
    ) -> Result<Response<pb::NewJwtSvidResponse>, Status> {
        let caller = self.authenticate(&req).await?;
        let req = req.into_inner();
        tessera_core::jwt::check_audience(&req.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let set = self.authorized(&caller);
        let entry = set.get(&req.entry_id).cloned().ok_or_else(|| {
            Status::permission_denied(format!(
                "entry {} is not authorized for agent {}",
                req.entry_id, caller.id
            ))
        })?;
        let ttl = if entry.jwt_svid_ttl > 0 {
            Duration::from_secs(u64::from(entry.jwt_svid_ttl))
        } else {
            self.state.config.jwt_svid_ttl
        };
        let ca = self.state.ca.clone();
        let (svid, entry, audience) = tokio::task::spawn_blocking(move || {
            ca.sign_jwt_svid(&entry.spiffe_id, &req.audience, ttl)
                .map(|svid| (svid, entry, req.audience))
        })
        .await
        .map_err(join_error)??;
        self.state.audit.record(&audit::Svid {
            agent_id: caller.id.to_string(),
            spiffe_id: entry.spiffe_id.to_string(),
            kind: "jwt",
            issued_for: "workload",
            entry_id: Some(entry.id.clone()),
            serial: None,
            audience: Some(audience),
            expires_at: audit::records::unix_rfc3339(svid.expiry),
        });
        self.state.metrics.issued("jwt", 1);
        Ok(Response::new(pb::NewJwtSvidResponse {
            token: svid.token,
            issued_at: svid.issued_at,
            expires_at: svid.expiry,
        }))
    }
}

/// How many blocking signers one batch may use.
fn signing_parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}
