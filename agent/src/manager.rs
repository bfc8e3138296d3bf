//! The agent's core: attestation (or resuming from the state directory), the sync loop
//! that keeps the authorized entries and their SVIDs current, agent SVID renewal, and
//! JWT-SVID minting on behalf of workloads.
//!
//! One loop does the timed work, so there is a single writer of the agent's state: it
//! wakes for the next sync (every `sync_interval`, jittered), for the earliest SVID
//! rotation (half-life with jitter) and for the agent SVID's renewal; failures back off
//! exponentially with jitter, up to a bound.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tessera_core::key::{Key, KeyError, KeyManager, SoftwareKey};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_core::x509::{self, unix_seconds};
use tessera_core::{Bundle, RegistrationEntry, SpiffeId, TrustDomain};
use tessera_proto::agent as pb;
use tessera_proto::agent::{attest_request, attest_response};
use tonic::Code;
use tonic::transport::Channel;

use crate::attestor::NodeAttestor;
use crate::cache::{Cache, CachedJwt, Snapshot, Svid};
use crate::client::{Trust, channel, node_client};
use crate::config::AgentConfig;
use crate::state::{SavedIdentity, StateDir};

/// Most SVIDs asked for in one call (the server's limit).
const BATCH: usize = 500;
/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const KEY_SLOTS: [&str; 2] = ["agent-svid-a", "agent-svid-b"];

/// Why the agent could not do its job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("server refused: {0}")]
    Rejected(String),
    #[error("server unreachable or failing: {0}")]
    Unavailable(String),
    #[error("attestation failed: {0}")]
    Attestation(String),
    #[error("key manager: {0}")]
    Key(#[from] KeyError),
    #[error("state directory: {0}")]
    State(#[from] crate::state::StateError),
    #[error("{0}")]
    Internal(String),
}

fn from_status(s: tonic::Status) -> AgentError {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            AgentError::Rejected(s.message().to_owned())
        }
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound => {
            AgentError::Rejected(format!("{} ({:?})", s.message(), s.code()))
        }
        _ => AgentError::Unavailable(format!("{} ({:?})", s.message(), s.code())),
    }
}

fn now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// Half-life with ±10% jitter: the instant to replace a credential valid in
/// `[not_before, not_after]`. NotBefore is backdated for clock skew, so the life is
/// counted from the moment of issue, or short lifetimes would be "due" at once.
pub fn rotation_time(not_before: i64, not_after: i64) -> i64 {
    let issued = (not_before + x509::BACKDATE.as_secs() as i64).min(not_after);
    let life = (not_after - issued).max(1) as f64;
    let frac = rand::thread_rng().gen_range(0.4..=0.6);
    issued + (life * frac) as i64
}

/// What the health check reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub spiffe_id: Option<SpiffeId>,
    pub last_sync_ok: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct SyncState {
    revision: u64,
    entries: BTreeMap<String, Arc<RegistrationEntry>>,
    svids: BTreeMap<String, Svid>,
    bundle_sequence: u64,
    federated: BTreeMap<TrustDomain, Arc<Bundle>>,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    server_id: SpiffeId,
    state_dir: StateDir,
    km: Arc<dyn KeyManager>,
    attestor: Option<Arc<dyn NodeAttestor>>,
    bundle: Arc<SharedBundle>,
    identity: Arc<SharedIdentity>,
    pub cache: Arc<Cache>,
    me: Mutex<Option<SavedIdentity>>,
    /// Replaced after every renewal: a TLS connection keeps presenting the SVID of its
    /// handshake, and the server accepts only the current and the previous one.
    channel: Mutex<Channel>,
    status: Mutex<Status>,
    sync: tokio::sync::Mutex<SyncState>,
}

impl Agent {
    /// Resumes from the state directory, or attests.
    pub async fn start(
        cfg: AgentConfig,
        km: Arc<dyn KeyManager>,
        attestor: Option<Arc<dyn NodeAttestor>>,
    ) -> Result<Arc<Self>, AgentError> {
        let state_dir = StateDir::open(&cfg.data_dir)?;
        let td = cfg.trust_domain.clone();
        let server_id = td
            .id(tessera_core::entry::SERVER_PATH)
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        let bundle = match state_dir.load_bundle(&td)? {
            Some(b) => b,
            None => match &cfg.trust_bundle_path {
                Some(p) => {
                    let text = std::fs::read(p).map_err(|e| {
                        AgentError::Config(format!("trust_bundle_path {}: {e}", p.display()))
                    })?;
                    let certs = x509::pem_certs(&text).map_err(|e| {
                        AgentError::Config(format!("trust_bundle_path {}: {e}", p.display()))
                    })?;
                    Bundle::with_x509(td.clone(), certs)
                }
                None => Bundle::new(td.clone()),
            },
        };
        let bundle = SharedBundle::new(bundle);
        let identity = SharedIdentity::new();
        let ch = channel(
            cfg.servers(),
            server_id.clone(),
            Trust::Bundle(bundle.clone()),
            Some(identity.clone()),
        );
        let agent = Arc::new(Self {
            cfg,
            server_id,
            state_dir,
            km,
            attestor,
            bundle,
            identity,
            cache: Arc::new(Cache::new()),
            me: Mutex::new(None),
            channel: Mutex::new(ch),
            status: Mutex::new(Status::default()),
            sync: tokio::sync::Mutex::new(SyncState::default()),
        });
        if !agent.resume().await? {
            agent.attest().await?;
        }
        {
            let b = agent.bundle.get();
            agent.sync.lock().await.bundle_sequence = b.sequence();
            agent.cache.update(|s| Snapshot {
                bundle: Some(b),
                ..clone_snapshot(s)
            });
        }
        Ok(agent)
    }

    /// Loads the saved identity if it is still usable.
    async fn resume(&self) -> Result<bool, AgentError> {
        let Some(saved) = self.state_dir.load_identity()? else {
            return Ok(false);
        };
        let info = match x509::cert_info(&saved.chain[0]) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("saved agent SVID is unreadable ({e}); attesting again");
                return Ok(false);
            }
        };
        if info.not_after <= now() {
            tracing::warn!(
                expired_at = info.not_after,
                "saved agent SVID has expired; attesting again"
            );
            return Ok(false);
        }
        if saved.spiffe_id.trust_domain() != &self.cfg.trust_domain {
            return Err(AgentError::Config(format!(
                "the state directory {} belongs to trust domain {}, not {}",
                self.state_dir.path().display(),
                saved.spiffe_id.trust_domain(),
                self.cfg.trust_domain
            )));
        }
        let km = self.km.clone();
        let key_id = saved.key_id.clone();
        let key = tokio::task::spawn_blocking(move || km.get_key(&key_id))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        let Some(key) = key else {
            tracing::warn!(key = %saved.key_id, "the agent key is gone from the key manager; attesting again");
            return Ok(false);
        };
        if key.public_key_der() != info.public_key_der.as_slice() {
            tracing::warn!("the agent key does not match the saved SVID; attesting again");
            return Ok(false);
        }
        self.identity.set(&saved.chain, key);
        tracing::info!(spiffe_id = %saved.spiffe_id, expires_at = info.not_after, "resumed from the state directory without attesting");
        self.status_mut().spiffe_id = Some(saved.spiffe_id.clone());
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        Ok(true)
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The health check's view.
    pub fn status(&self) -> Status {
        self.status_mut().clone()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    fn next_key_slot(&self) -> &'static str {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner());
        match me.as_ref().map(|m| m.key_id.as_str()) {
            Some(k) if k == KEY_SLOTS[0] => KEY_SLOTS[1],
            _ => KEY_SLOTS[0],
        }
    }

    async fn new_agent_key(&self) -> Result<(&'static str, Arc<dyn Key>), AgentError> {
        let slot = self.next_key_slot();
        let km = self.km.clone();
        let key = tokio::task::spawn_blocking(move || {
            km.generate_key(slot, tessera_core::key::KeyType::EcP256)
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
        Ok((slot, key))
    }

    /// Node attestation: proves the node to the server and installs the agent SVID.
    pub async fn attest(&self) -> Result<(), AgentError> {
        let attestor = self.attestor.clone().ok_or_else(|| {
            AgentError::Config("the agent has no usable identity and no node attestor is configured (give a join token)".into())
        })?;
        let trust = if !self.bundle.get().x509_authorities().is_empty() {
            Trust::Bundle(self.bundle.clone())
        } else {
            tracing::warn!(
                "INSECURE BOOTSTRAP: trusting whatever server answers at {:?}; anyone able to answer first becomes this agent's CA",
                self.cfg.servers()
            );
            Trust::Insecure
        };
        let ch = channel(self.cfg.servers(), self.server_id.clone(), trust, None);
        let mut client = node_client(ch);
        let (slot, key) = self.new_agent_key().await?;
        let csr = x509::build_csr(&key).map_err(|e| AgentError::Internal(format!("CSR: {e}")))?;
        let mut session = attestor.session();
        let payload = session
            .payload()
            .await
            .map_err(|e| AgentError::Attestation(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::AttestRequest {
            step: Some(attest_request::Step::Params(pb::AttestationParams {
                attestor: attestor.name().to_owned(),
                payload,
                csr,
            })),
        })
        .await
        .map_err(|_| AgentError::Internal("attestation channel closed".into()))?;
        let mut inbound = client
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(from_status)?
            .into_inner();
        let result = loop {
            let msg = inbound
                .message()
                .await
                .map_err(from_status)?
                .ok_or_else(|| {
                    AgentError::Attestation("the server closed the stream without a result".into())
                })?;
            match msg.step {
                Some(attest_response::Step::Challenge(c)) => {
                    let answer = session
                        .answer(c)
                        .await
                        .map_err(|e| AgentError::Attestation(e.to_string()))?;
                    tx.send(pb::AttestRequest {
                        step: Some(attest_request::Step::ChallengeResponse(answer)),
                    })
                    .await
                    .map_err(|_| AgentError::Attestation("the server closed the stream".into()))?;
                }
                Some(attest_response::Step::Result(r)) => break r,
                None => {
                    return Err(AgentError::Attestation(
                        "empty message from the server".into(),
                    ));
                }
            }
        };
        let spiffe_id = SpiffeId::new(&result.spiffe_id)
            .map_err(|e| AgentError::Attestation(format!("server sent a bad agent ID: {e}")))?;
        if !tessera_core::entry::is_agent_id(&spiffe_id, &self.cfg.trust_domain) {
            return Err(AgentError::Attestation(format!(
                "the server gave this agent the ID {spiffe_id}, which is not an agent ID \
                 (spiffe://{}/spire/agent/...)",
                self.cfg.trust_domain
            )));
        }
        let leaf = result
            .svid_chain
            .first()
            .ok_or_else(|| AgentError::Attestation("server sent no SVID".into()))?;
        let leaf_id = x509::validate_leaf(leaf)
            .map_err(|e| AgentError::Attestation(format!("agent SVID: {e}")))?;
        let info = x509::cert_info(leaf).map_err(|e| AgentError::Attestation(e.to_string()))?;
        if leaf_id != spiffe_id || info.public_key_der != key.public_key_der() {
            return Err(AgentError::Attestation(
                "the SVID the server sent is not for this agent's key and ID".into(),
            ));
        }
        let bundle = bundle_from_proto(result.bundle, &self.cfg.trust_domain)
            .ok_or_else(|| AgentError::Attestation("the server sent no usable bundle".into()))?;
        x509::verify_svid_chain(&result.svid_chain, &bundle, SystemTime::now()).map_err(|e| {
            AgentError::Attestation(format!(
                "agent SVID does not chain to the server's bundle: {e}"
            ))
        })?;
        self.state_dir.save_bundle(&bundle)?;
        self.bundle.set(bundle.clone());
        let saved = SavedIdentity {
            spiffe_id: spiffe_id.clone(),
            key_id: slot.to_owned(),
            chain: result.svid_chain.clone(),
            attestor: attestor.name().to_owned(),
            can_reattest: result.can_reattest,
        };
        self.state_dir.save_identity(&saved)?;
        self.identity.set(&result.svid_chain, key);
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        self.reconnect();
        self.status_mut().spiffe_id = Some(spiffe_id.clone());
        {
            let mut st = self.sync.lock().await;
            st.bundle_sequence = bundle.sequence();
        }
        tracing::info!(spiffe_id = %spiffe_id, attestor = attestor.name(), "node attested");
        Ok(())
    }

    fn client(&self) -> tessera_proto::agent::node_client::NodeClient<Channel> {
        node_client(
            self.channel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Opens a fresh connection (presenting the current SVID) for the next calls.
    fn reconnect(&self) {
        let ch = channel(
            self.cfg.servers(),
            self.server_id.clone(),
            Trust::Bundle(self.bundle.clone()),
            Some(self.identity.clone()),
        );
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = ch;
    }

    /// One sync: entries, bundles, then SVIDs for whatever needs one.
    pub async fn sync_once(&self) -> Result<(), AgentError> {
        let mut st = self.sync.lock().await;
        let mut client = self.client();
        let mut want: Vec<String> = Vec::new();
        let mut changed = false;
        for _round in 0..3 {
            let digest = tessera_core::entry::revision_digest(
                st.entries
                    .values()
                    .map(|e| (e.id.as_str(), e.revision_number)),
            );
            let resp = client
                .sync_entries(pb::SyncRequest {
                    known_revision: st.revision,
                    known_digest: digest,
                    bundle_sequence: st.bundle_sequence,
                    want_ids: std::mem::take(&mut want),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            if let Some(b) = bundle_from_proto(resp.bundle, &self.cfg.trust_domain) {
                self.state_dir.save_bundle(&b)?;
                st.bundle_sequence = b.sequence();
                self.bundle.set(b);
                changed = true;
                tracing::info!(sequence = st.bundle_sequence, "trust bundle updated");
            }
            let fed: BTreeMap<TrustDomain, Arc<Bundle>> = resp
                .federated_bundles
                .into_iter()
                .filter_map(|b| tessera_proto::convert::bundle_from_proto(b).ok())
                .map(|b| (b.trust_domain().clone(), Arc::new(b)))
                .collect();
            if fed.len() != st.federated.len()
                || fed
                    .iter()
                    .any(|(k, v)| st.federated.get(k).is_none_or(|o| !o.same_authorities(v)))
            {
                st.federated = fed;
                changed = true;
            }
            for p in resp.entries {
                match tessera_proto::convert::entry_from_proto(p) {
                    // Never hold, so never serve, an identity of the server or an agent.
                    Ok(e) if e.spiffe_id.is_reserved() => tracing::error!(
                        entry = %e.id,
                        spiffe_id = %e.spiffe_id,
                        "ignoring an entry the server sent: its SPIFFE ID is in the reserved \
                         namespace /spire"
                    ),
                    Ok(e) => {
                        st.entries.insert(e.id.clone(), Arc::new(e));
                        changed = true;
                    }
                    Err(e) => tracing::warn!("ignoring an entry the server sent: {e}"),
                }
            }
            if resp.full_list {
                let listed: BTreeMap<&str, u64> = resp
                    .authorized
                    .iter()
                    .map(|r| (r.id.as_str(), r.revision_number))
                    .collect();
                let before = st.entries.len();
                st.entries.retain(|id, _| listed.contains_key(id.as_str()));
                changed |= st.entries.len() != before;
                want = listed
                    .iter()
                    .filter(|(id, rev)| {
                        st.entries
                            .get(**id)
                            .is_none_or(|e| e.revision_number != **rev)
                    })
                    .map(|(id, _)| (*id).to_owned())
                    .collect();
            }
            st.revision = st.revision.max(resp.revision);
            if want.is_empty() {
                break;
            }
        }
        // SVIDs of entries that are gone go with them.
        let before = st.svids.len();
        let SyncState { entries, svids, .. } = &mut *st;
        svids.retain(|id, _| entries.contains_key(id));
        changed |= svids.len() != before;
        changed |= self.mint(&mut st).await?;
        if changed || !self.cache.snapshot().synced {
            let keep: HashSet<String> = st.entries.keys().cloned().collect();
            self.cache.forget_jwts_except(&keep);
            self.publish(&st);
        }
        let mut status = self.status_mut();
        status.last_sync_ok = Some(now());
        status.last_error = None;
        Ok(())
    }

    /// Signs SVIDs for entries that have none, whose SVID is due for rotation, or whose
    /// entry changed since it was signed.
    async fn mint(&self, st: &mut SyncState) -> Result<bool, AgentError> {
        let t = now();
        let due: Vec<Arc<RegistrationEntry>> = st
            .entries
            .values()
            .filter(|e| match st.svids.get(&e.id) {
                None => true,
                Some(s) => s.rotate_at <= t || s.revision != e.revision_number,
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(false);
        }
        let mut client = self.client();
        let mut changed = false;
        for chunk in due.chunks(BATCH) {
            let kt = self.cfg.workload_key_type;
            let chunk_owned: Vec<Arc<RegistrationEntry>> = chunk.to_vec();
            let prepared = tokio::task::spawn_blocking(move || {
                chunk_owned
                    .into_iter()
                    .map(|e| {
                        let key = Arc::new(SoftwareKey::generate(kt)?);
                        let dyn_key: Arc<dyn Key> = key.clone();
                        let csr = x509::build_csr(&dyn_key)
                            .map_err(|e| KeyError::Backend(e.to_string()))?;
                        Ok((e, key, csr))
                    })
                    .collect::<Result<Vec<_>, KeyError>>()
            })
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
            let requests = prepared
                .iter()
                .map(|(e, _, csr)| pb::SvidRequest {
                    entry_id: e.id.clone(),
                    csr: csr.clone(),
                })
                .collect();
            let resp = client
                .batch_new_x509_svid(pb::BatchNewX509SvidRequest { requests })
                .await
                .map_err(from_status)?
                .into_inner();
            let mut by_id: BTreeMap<String, pb::SvidResult> = resp
                .results
                .into_iter()
                .map(|r| (r.entry_id.clone(), r))
                .collect();
            for (entry, key, _) in prepared {
                let Some(r) = by_id.remove(&entry.id) else {
                    tracing::warn!(entry = %entry.id, "the server did not answer for this entry");
                    continue;
                };
                let code = r.status.as_ref().map_or(0, |s| s.code);
                if code != 0 || r.cert_chain.is_empty() {
                    tracing::warn!(
                        entry = %entry.id,
                        spiffe_id = %entry.spiffe_id,
                        "the server refused the SVID: {}",
                        r.status.map(|s| s.message).unwrap_or_default()
                    );
                    continue;
                }
                match check_svid(
                    &r.cert_chain,
                    &entry.spiffe_id,
                    key.public_key_der(),
                    &self.bundle.get(),
                ) {
                    Ok((nb, na)) => {
                        st.svids.insert(
                            entry.id.clone(),
                            Svid {
                                entry: entry.clone(),
                                chain: Arc::new(r.cert_chain),
                                key,
                                not_before: nb,
                                not_after: na,
                                rotate_at: rotation_time(nb, na),
                                revision: entry.revision_number,
                            },
                        );
                        changed = true;
                    }
                    Err(e) => {
                        tracing::error!(entry = %entry.id, "the server sent an SVID that does not verify: {e}")
                    }
                }
            }
        }
        if changed {
            tracing::debug!(count = due.len(), "SVIDs signed");
        }
        Ok(changed)
    }

    fn publish(&self, st: &SyncState) {
        let bundle = self.bundle.get();
        let entries: Vec<Arc<RegistrationEntry>> = st.entries.values().cloned().collect();
        let svids = st.svids.clone();
        let federated = st.federated.clone();
        self.cache.update(move |_| Snapshot {
            generation: 0,
            synced: true,
            bundle: Some(bundle),
            federated,
            entries,
            svids,
        });
    }

    /// Renews the agent's own SVID with a fresh key.
    pub async fn renew(&self) -> Result<(), AgentError> {
        let (slot, key) = self.new_agent_key().await?;
        let csr = x509::build_csr(&key).map_err(|e| AgentError::Internal(format!("CSR: {e}")))?;
        let resp = self
            .client()
            .renew_agent(pb::RenewAgentRequest { csr })
            .await
            .map_err(from_status)?
            .into_inner();
        let leaf = resp
            .svid_chain
            .first()
            .ok_or_else(|| AgentError::Internal("no SVID in the renewal".into()))?;
        let info = x509::cert_info(leaf).map_err(|e| AgentError::Internal(e.to_string()))?;
        if info.public_key_der != key.public_key_der() {
            return Err(AgentError::Internal(
                "the renewed SVID is not for the new key".into(),
            ));
        }
        let old_key = {
            let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            let cur = me
                .as_mut()
                .ok_or_else(|| AgentError::Internal("no identity to renew".into()))?;
            let old = std::mem::replace(&mut cur.key_id, slot.to_owned());
            cur.chain = resp.svid_chain.clone();
            self.state_dir.save_identity(cur)?;
            old
        };
        self.identity.set(&resp.svid_chain, key);
        self.reconnect();
        let km = self.km.clone();
        let _ = tokio::task::spawn_blocking(move || km.delete_key(&old_key)).await;
        tracing::info!(expires_at = info.not_after, "agent SVID renewed");
        Ok(())
    }

    fn agent_svid_times(&self) -> Option<(i64, i64)> {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner());
        let leaf = me.as_ref()?.chain.first()?;
        let info = x509::cert_info(leaf).ok()?;
        Some((info.not_before, info.not_after))
    }

    fn can_reattest(&self) -> bool {
        self.attestor.as_ref().is_some_and(|a| a.can_reattest())
    }

    /// Runs the timed work until the process stops.
    pub async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        let mut agent_rotate_at = self
            .agent_svid_times()
            .map(|(nb, na)| rotation_time(nb, na));
        let mut next_sync = std::time::Instant::now();
        loop {
            let now_i = std::time::Instant::now();
            if now_i >= next_sync || self.earliest_rotation().await.is_some_and(|t| t <= now()) {
                match self.sync_once().await {
                    Ok(()) => {
                        failures = 0;
                        next_sync = std::time::Instant::now() + jitter(self.cfg.sync_interval);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        self.status_mut().last_error = Some(e.to_string());
                        if matches!(e, AgentError::Rejected(_)) {
                            tracing::error!("sync refused: {e}");
                            if self.can_reattest() {
                                match self.attest().await {
                                    Ok(()) => {
                                        agent_rotate_at = self
                                            .agent_svid_times()
                                            .map(|(nb, na)| rotation_time(nb, na));
                                        failures = 0;
                                    }
                                    Err(e) => tracing::error!("re-attestation failed: {e}"),
                                }
                            }
                        } else {
                            tracing::warn!("sync failed (will retry): {e}");
                        }
                        next_sync =
                            std::time::Instant::now() + backoff(self.cfg.sync_interval, failures);
                    }
                }
            }
            if agent_rotate_at.is_some_and(|t| t <= now()) {
                match self.renew().await {
                    Ok(()) => {
                        agent_rotate_at = self
                            .agent_svid_times()
                            .map(|(nb, na)| rotation_time(nb, na))
                    }
                    Err(e) => {
                        tracing::warn!("agent SVID renewal failed (will retry): {e}");
                        self.status_mut().last_error = Some(e.to_string());
                        agent_rotate_at = Some(
                            now() + backoff(self.cfg.sync_interval, 1).as_secs().max(1) as i64,
                        );
                    }
                }
            }
            // Sleep until the next sync, the next SVID rotation, or the agent renewal.
            let mut wake = next_sync;
            let to_instant = |unix: i64| {
                let d = (unix - now()).max(0) as u64;
                std::time::Instant::now() + Duration::from_secs(d)
            };
            if let Some(t) = self.earliest_rotation().await {
                wake = wake
                    .min(to_instant(t).max(std::time::Instant::now() + Duration::from_millis(200)));
            }
            if let Some(t) = agent_rotate_at {
                wake = wake.min(to_instant(t));
            }
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    async fn earliest_rotation(&self) -> Option<i64> {
        self.sync
            .lock()
            .await
            .svids
            .values()
            .map(|s| s.rotate_at)
            .min()
    }

    /// A JWT-SVID for `entry` and `audience`, from the cache or freshly minted.
    pub async fn jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
    ) -> Result<CachedJwt, AgentError> {
        let t = now();
        if let Some(j) = self.cache.jwt(&entry.id, audience, t) {
            return Ok(j);
        }
        let resp = self
            .client()
            .new_jwt_svid(pb::NewJwtSvidRequest {
                entry_id: entry.id.clone(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(from_status)?
            .into_inner();
        let jwt = CachedJwt {
            token: resp.token,
            issued_at: resp.issued_at,
            expires_at: resp.expires_at,
        };
        self.cache.put_jwt(&entry.id, audience, jwt.clone());
        Ok(jwt)
    }

    /// The agent's SPIFFE ID.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.me
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.spiffe_id.clone())
    }
}

fn clone_snapshot(s: &Snapshot) -> Snapshot {
    Snapshot {
        generation: s.generation,
        synced: s.synced,
        bundle: s.bundle.clone(),
        federated: s.federated.clone(),
        entries: s.entries.clone(),
        svids: s.svids.clone(),
    }
}

/// `d` ±10%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// Exponential backoff from `base`, capped, with jitter.
fn backoff(base: Duration, failures: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << failures.min(6))
        .min(MAX_BACKOFF);
    exp.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Checks an SVID the server sent: leaf profile, SPIFFE ID, key, chain to the bundle.
fn check_svid(
    chain: &[Vec<u8>],
    id: &SpiffeId,
    spki: &[u8],
    bundle: &Bundle,
) -> Result<(i64, i64), String> {
    let got =
        x509::verify_svid_chain(chain, bundle, SystemTime::now()).map_err(|e| e.to_string())?;
    if &got != id {
        return Err(format!("SVID is for {got}, expected {id}"));
    }
    if got.is_reserved() {
        return Err(format!(
            "SVID is for {got}, in the reserved namespace /spire: not a workload ID"
        ));
    }
    let info = x509::cert_info(&chain[0]).map_err(|e| e.to_string())?;
    if info.public_key_der != spki {
        return Err("SVID is not for the key the agent made".into());
    }
    Ok((info.not_before, info.not_after))
}

/// The bundle in a server message, if present, usable and of our trust domain.
fn bundle_from_proto(p: Option<tessera_proto::types::Bundle>, td: &TrustDomain) -> Option<Bundle> {
    match tessera_proto::convert::bundle_from_proto(p?) {
        Ok(b) if b.trust_domain() == td => Some(b),
        Ok(b) => {
            tracing::warn!("ignoring a bundle for {} (expected {td})", b.trust_domain());
            None
        }
        Err(e) => {
            tracing::warn!("ignoring an unusable bundle from the server: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_at_half_life_of_the_real_lifetime() {
        // Issued at 1000 (NotBefore backdated to 990), valid until 1004.
        for _ in 0..100 {
            let t = rotation_time(990, 1004);
            assert!((1001..=1003).contains(&t), "{t}");
        }
        // One hour: between 40% and 60%.
        for _ in 0..100 {
            let t = rotation_time(990, 1000 + 3600);
            assert!((1000 + 1440..=1000 + 2160).contains(&t), "{t}");
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let base = Duration::from_secs(5);
        assert!(backoff(base, 0) <= base);
        assert!(backoff(base, 20) <= MAX_BACKOFF);
        assert!(backoff(base, 3) >= base.saturating_mul(4));
    }
}
