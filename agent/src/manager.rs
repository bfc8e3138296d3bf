//! The agent's core: attestation (or resuming from the state directory), the sync loop
//! that keeps the authorized entries and their SVIDs current, agent SVID renewal, and
//! JWT-SVID minting on behalf of workloads.
//!
//! One loop does the timed work, so there is a single writer of the agent's state: it
//! wakes for the next sync (every `sync_interval`, jittered), for the earliest SVID
//! rotation (half-life with jitter) and for the agent SVID's renewal.
//!
//! Faults, and what the agent does about them:
//!
//! - Every retry path (sync, SVID signing, agent SVID renewal, JWT-SVID minting,
//!   attestation and re-attestation) waits with [`crate::retry::Backoff`], and reports
//!   a failure that repeats once, then with a count ([`crate::retry::RepeatLog`]).
//!   While the server cannot be reached only the sync retries; signing and renewal
//!   wait for a sync to get through, so an agent knocks once per backoff step.
//! - A sync publishes what it learnt (entries gone, bundles changed) before any SVID
//!   is signed, so a deleted entry stops being served even while signing fails.
//!   Signing failures are per entry: a refused entry or a failed batch backs off on its
//!   own and holds up no other entry or batch.
//! - Start-up resumes from the state directory without the server; when the server,
//!   its HSM or the TPM is away, it waits and tries again instead of exiting, and
//!   never falls back to attesting while a saved identity is only unreachable.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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
use crate::retry::{Backoff, RepeatLog};
use crate::state::{SavedIdentity, StateDir};

/// Most SVIDs asked for in one call (the server's limit).
const BATCH: usize = 500;
const KEY_SLOTS: [&str; 2] = ["agent-svid-a", "agent-svid-b"];
/// The shortest pause before signing again, in case the server hands out SVIDs that
/// are due for rotation as soon as they are issued.
const MIN_SIGN_GAP: Duration = Duration::from_millis(200);

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

impl AgentError {
    /// Whether trying again later can work: the server, its HSM or the TPM is away
    /// or failing, as opposed to a refusal or a configuration that needs a person.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AgentError::Unavailable(_) | AgentError::Key(KeyError::Unavailable(_))
        )
    }
}

/// The retry paths, each with its own failure log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Start,
    Sync,
    Sign,
    Renew,
    Attest,
    Jwt,
}

impl Op {
    fn what(self) -> &'static str {
        match self {
            Op::Start => "start-up",
            Op::Sync => "sync",
            Op::Sign => "SVID signing",
            Op::Renew => "agent SVID renewal",
            Op::Attest => "re-attestation",
            Op::Jwt => "JWT-SVID minting",
        }
    }
}

/// JWT-SVIDs are minted when a workload asks, so their backoff is a gate: while it
/// is closed, requests fail at once with the last error instead of each reaching
/// for an unreachable server.
#[derive(Debug)]
struct JwtGate {
    backoff: Backoff,
    closed_until: Option<Instant>,
    last_error: String,
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
    /// Entries whose last signing failed: their own backoff and next try.
    sign_retry: BTreeMap<String, SignRetry>,
}

#[derive(Debug)]
struct SignRetry {
    backoff: Backoff,
    not_before: Instant,
}

impl SyncState {
    /// Drops the SVIDs of entries that are gone, and any SVID whose entry now names
    /// another SPIFFE ID (it is no longer that workload's identity); whether any went.
    fn drop_stale(&mut self) -> bool {
        let before = self.svids.len();
        let SyncState {
            entries,
            svids,
            sign_retry,
            ..
        } = self;
        svids.retain(|id, s| {
            entries
                .get(id)
                .is_some_and(|e| e.spiffe_id == s.entry.spiffe_id)
        });
        sign_retry.retain(|id, _| entries.contains_key(id));
        svids.len() != before
    }

    /// When each entry next needs signing: now if it has no SVID or its entry changed
    /// since, its rotation time otherwise; never before its retry time.
    fn sign_times(
        &self,
        now: Instant,
        now_unix: i64,
    ) -> impl Iterator<Item = (&Arc<RegistrationEntry>, Instant)> + '_ {
        self.entries.values().map(move |e| {
            let due_unix = match self.svids.get(&e.id) {
                Some(s) if s.revision == e.revision_number => s.rotate_at,
                _ => now_unix,
            };
            let mut at = now + Duration::from_secs((due_unix - now_unix).max(0) as u64);
            if let Some(r) = self.sign_retry.get(&e.id) {
                at = at.max(r.not_before);
            }
            (e, at)
        })
    }
}

/// What one signing round did.
#[derive(Debug, Default)]
struct MintOutcome {
    signed: Vec<String>,
    failed: Vec<(Arc<RegistrationEntry>, String)>,
}

impl MintOutcome {
    fn fail_all(&mut self, entries: &[Arc<RegistrationEntry>], why: &str) {
        self.failed
            .extend(entries.iter().map(|e| (e.clone(), why.to_owned())));
    }
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
    logs: Mutex<BTreeMap<Op, RepeatLog>>,
    jwt_gate: Mutex<JwtGate>,
}

impl Agent {
    /// Resumes from the state directory, or attests (see [`Agent::establish`]).
    pub async fn start(
        cfg: AgentConfig,
        km: Arc<dyn KeyManager>,
        attestor: Option<Arc<dyn NodeAttestor>>,
    ) -> Result<Arc<Self>, AgentError> {
        let agent = Self::new(cfg, km, attestor)?;
        agent.establish().await?;
        Ok(agent)
    }

    /// Opens the state directory and prepares the connection to the server, without
    /// talking to it.
    pub fn new(
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
        let jwt_gate = Mutex::new(JwtGate {
            backoff: Backoff::for_interval(cfg.sync_interval),
            closed_until: None,
            last_error: String::new(),
        });
        Ok(Arc::new(Self {
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
            logs: Mutex::new(BTreeMap::new()),
            jwt_gate,
        }))
    }

    /// Gets the agent its identity: resumes from the state directory, or attests
    /// when there is nothing usable to resume. While the server, its HSM or the TPM
    /// is away this waits and tries again (with backoff) rather than fail: an agent
    /// started before its server must come up by itself. A refusal (a used or
    /// expired join token, evidence the server does not accept) or a configuration
    /// error is returned.
    pub async fn establish(&self) -> Result<(), AgentError> {
        let mut backoff = Backoff::for_interval(self.cfg.sync_interval);
        loop {
            let result = match self.resume().await {
                Ok(true) => Ok(()),
                Ok(false) => self.attest().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    self.status_mut().last_error = Some(e.to_string());
                    let wait = backoff.fail();
                    self.failed(
                        Op::Start,
                        tracing::Level::WARN,
                        &e.to_string(),
                        &format!("cannot get the agent's identity yet (will retry): {e}"),
                    );
                    tracing::debug!(?wait, "next identity attempt");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.succeeded(Op::Start);
        self.status_mut().last_error = None;
        let b = self.bundle.get();
        self.sync.lock().await.bundle_sequence = b.sequence();
        self.cache.update(|s| Snapshot {
            bundle: Some(b),
            ..clone_snapshot(s)
        });
        Ok(())
    }

    /// Logs a failure of `op` through its repeat log: `key` says which failures are
    /// the same one.
    fn failed(&self, op: Op, level: tracing::Level, key: &str, line: &str) {
        let out = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default()
            .failure(Instant::now(), key, line);
        if let Some(line) = out {
            if level == tracing::Level::ERROR {
                tracing::error!("{line}");
            } else {
                tracing::warn!("{line}");
            }
        }
    }

    /// Ends `op`'s failure streak, saying so if there was one.
    fn succeeded(&self, op: Op) {
        let streak = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&op)
            .and_then(RepeatLog::success);
        if let Some(n) = streak {
            let s = if n == 1 { "" } else { "s" };
            tracing::info!("{} works again after {n} failed attempt{s}", op.what());
        }
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

    /// One sync: entries and bundles from the server, published at once (entries
    /// gone take their SVIDs with them, whatever happens to signing afterwards).
    /// Signing is separate ([`Agent::sign_due`]).
    pub async fn sync_once(&self) -> Result<(), AgentError> {
        let mut st = self.sync.lock().await;
        let mut changed = self.sync_entries(&mut st).await?;
        changed |= st.drop_stale();
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

    /// The entry and bundle rounds of a sync; whether anything changed.
    async fn sync_entries(&self, st: &mut SyncState) -> Result<bool, AgentError> {
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
        Ok(changed)
    }

    /// When the next SVID needs signing, if any entry is held.
    async fn next_signing(&self) -> Option<Instant> {
        let st = self.sync.lock().await;
        st.sign_times(Instant::now(), now()).map(|(_, at)| at).min()
    }

    /// Signs SVIDs for the entries that are due (no SVID, due for rotation, or the
    /// entry changed since it was signed) and not backing off, and publishes them.
    /// A failure, of one entry or of a whole batch, backs off those entries only.
    pub async fn sign_due(&self) {
        let mut st = self.sync.lock().await;
        let (t, t_unix) = (Instant::now(), now());
        let due: Vec<Arc<RegistrationEntry>> = st
            .sign_times(t, t_unix)
            .filter(|(_, at)| *at <= t)
            .map(|(e, _)| e.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let outcome = self.mint(&mut st, &due).await;
        let interval = self.cfg.sync_interval;
        for id in &outcome.signed {
            st.sign_retry.remove(id);
        }
        for (entry, _) in &outcome.failed {
            let r = st
                .sign_retry
                .entry(entry.id.clone())
                .or_insert_with(|| SignRetry {
                    backoff: Backoff::for_interval(interval),
                    not_before: t,
                });
            r.not_before = Instant::now() + r.backoff.fail();
        }
        if !outcome.signed.is_empty() {
            tracing::debug!(count = outcome.signed.len(), "SVIDs signed");
            self.publish(&st);
        }
        drop(st);
        if outcome.failed.is_empty() {
            self.succeeded(Op::Sign);
            return;
        }
        // One line per cause, reported once and then counted, so that a signing
        // outage logs a line (then a count), not one per entry per try.
        let mut by_cause: BTreeMap<&str, Vec<&Arc<RegistrationEntry>>> = BTreeMap::new();
        for (entry, cause) in &outcome.failed {
            by_cause.entry(cause.as_str()).or_default().push(entry);
        }
        for (cause, entries) in by_cause {
            self.failed(
                Op::Sign,
                tracing::Level::WARN,
                cause,
                &format!(
                    "{} of {} SVIDs due could not be signed (each retries with backoff; e.g. entry {} for {}): {cause}",
                    entries.len(),
                    due.len(),
                    entries[0].id,
                    entries[0].spiffe_id
                ),
            );
        }
    }

    /// Asks the server to sign `due`, batch by batch; a failed batch does not stop
    /// the next one.
    async fn mint(&self, st: &mut SyncState, due: &[Arc<RegistrationEntry>]) -> MintOutcome {
        let mut client = self.client();
        let mut out = MintOutcome::default();
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
            .map_err(|e| AgentError::Internal(e.to_string()))
            .and_then(|r| r.map_err(AgentError::from));
            let prepared = match prepared {
                Ok(p) => p,
                Err(e) => {
                    out.fail_all(chunk, &format!("cannot make workload keys: {e}"));
                    continue;
                }
            };
            let requests = prepared
                .iter()
                .map(|(e, _, csr)| pb::SvidRequest {
                    entry_id: e.id.clone(),
                    csr: csr.clone(),
                })
                .collect();
            let resp = match client
                .batch_new_x509_svid(pb::BatchNewX509SvidRequest { requests })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    out.fail_all(chunk, &from_status(s).to_string());
                    continue;
                }
            };
            let mut by_id: BTreeMap<String, pb::SvidResult> = resp
                .results
                .into_iter()
                .map(|r| (r.entry_id.clone(), r))
                .collect();
            for (entry, key, _) in prepared {
                let Some(r) = by_id.remove(&entry.id) else {
                    out.failed
                        .push((entry, "the server did not answer for this entry".into()));
                    continue;
                };
                let code = r.status.as_ref().map_or(0, |s| s.code);
                if code != 0 || r.cert_chain.is_empty() {
                    let why = r.status.map(|s| s.message).unwrap_or_default();
                    tracing::debug!(entry = %entry.id, spiffe_id = %entry.spiffe_id, "the server refused the SVID: {why}");
                    out.failed
                        .push((entry, format!("the server refused: {why}")));
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
                        out.signed.push(entry.id.clone());
                    }
                    Err(e) => {
                        tracing::error!(entry = %entry.id, "the server sent an SVID that does not verify: {e}");
                        out.failed.push((
                            entry,
                            format!("the server sent an SVID that does not verify: {e}"),
                        ));
                    }
                }
            }
        }
        out
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

    /// When to renew the agent SVID: half-life with jitter.
    fn agent_renewal_time(&self) -> Option<Instant> {
        let (nb, na) = self.agent_svid_times()?;
        let at = rotation_time(nb, na);
        Some(Instant::now() + Duration::from_secs((at - now()).max(0) as u64))
    }

    /// Runs the timed work until the process stops. Call after [`Agent::establish`].
    pub async fn run(self: Arc<Self>) {
        let interval = self.cfg.sync_interval;
        let mut sync_backoff = Backoff::for_interval(interval);
        let mut renew_backoff = Backoff::for_interval(interval);
        let mut next_sync = Instant::now();
        // Whether the last sync got through: signing and renewal wait for one, so
        // that while the server is away only the sync knocks, once per backoff step.
        let mut reachable = false;
        let mut renew_at = self.agent_renewal_time();
        loop {
            if Instant::now() >= next_sync {
                match self.sync_once().await {
                    Ok(()) => {
                        reachable = true;
                        sync_backoff.reset();
                        self.succeeded(Op::Sync);
                        next_sync = Instant::now() + jitter(interval);
                    }
                    Err(e) => {
                        reachable = false;
                        let mut wait = sync_backoff.fail();
                        // An agent SVID that expired (an outage outlived it) is
                        // refused in the TLS handshake, which the agent sees as a
                        // broken connection, not as a refusal: check the clock.
                        let expired_at = self
                            .agent_svid_times()
                            .map(|(_, na)| na)
                            .filter(|na| *na <= now());
                        let mut error = e.to_string();
                        if let Some(na) = expired_at {
                            error = format!(
                                "the agent SVID expired at {na}, so the server no longer accepts this agent ({e})"
                            );
                        }
                        if matches!(e, AgentError::Rejected(_)) || expired_at.is_some() {
                            if self.can_reattest() {
                                self.failed(
                                    Op::Sync,
                                    tracing::Level::ERROR,
                                    &error,
                                    &format!("sync refused, attesting again: {error}"),
                                );
                                match self.attest().await {
                                    Ok(()) => {
                                        self.succeeded(Op::Attest);
                                        renew_at = self.agent_renewal_time();
                                        renew_backoff.reset();
                                        sync_backoff.reset();
                                        wait = Duration::ZERO;
                                    }
                                    Err(e) => self.failed(
                                        Op::Attest,
                                        tracing::Level::ERROR,
                                        &e.to_string(),
                                        &format!("re-attestation failed (will retry): {e}"),
                                    ),
                                }
                            } else {
                                if expired_at.is_some() {
                                    error = format!(
                                        "{error}; this agent cannot attest again by itself: give it a new join token (tessera-server token generate) and restart it with that token"
                                    );
                                }
                                self.failed(
                                    Op::Sync,
                                    tracing::Level::ERROR,
                                    &error,
                                    &format!("sync refused: {error}"),
                                );
                            }
                        } else {
                            self.failed(
                                Op::Sync,
                                tracing::Level::WARN,
                                &error,
                                &format!("sync failed (will retry): {error}"),
                            );
                        }
                        self.status_mut().last_error = Some(error);
                        tracing::debug!(?wait, "next sync attempt");
                        next_sync = Instant::now() + wait;
                    }
                }
            }
            if reachable {
                if self
                    .next_signing()
                    .await
                    .is_some_and(|t| t <= Instant::now())
                {
                    self.sign_due().await;
                }
                if renew_at.is_some_and(|t| t <= Instant::now()) {
                    match self.renew().await {
                        Ok(()) => {
                            self.succeeded(Op::Renew);
                            renew_backoff.reset();
                            renew_at = self.agent_renewal_time();
                        }
                        Err(e) => {
                            self.status_mut().last_error = Some(e.to_string());
                            self.failed(
                                Op::Renew,
                                tracing::Level::WARN,
                                &e.to_string(),
                                &format!("agent SVID renewal failed (will retry): {e}"),
                            );
                            renew_at = Some(Instant::now() + renew_backoff.fail());
                        }
                    }
                }
            }
            // Sleep until the next sync or, while the server answers, the next SVID
            // due for signing or the agent renewal.
            let mut wake = next_sync;
            if reachable {
                if let Some(t) = self.next_signing().await {
                    wake = wake.min(t.max(Instant::now() + MIN_SIGN_GAP));
                }
                if let Some(t) = renew_at {
                    wake = wake.min(t);
                }
            }
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    /// A JWT-SVID for `entry` and `audience`, from the cache or freshly minted. After
    /// the server failed, requests fail at once until the gate's backoff has passed.
    pub async fn jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
    ) -> Result<CachedJwt, AgentError> {
        let t = now();
        if let Some(j) = self.cache.jwt(&entry.id, audience, t) {
            return Ok(j);
        }
        {
            let gate = self.jwt_gate.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = gate.closed_until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    return Err(AgentError::Unavailable(format!(
                        "{} (the agent asks the server again in {}s)",
                        gate.last_error,
                        left.as_secs() + 1
                    )));
                }
            }
        }
        let result = self
            .client()
            .new_jwt_svid(pb::NewJwtSvidRequest {
                entry_id: entry.id.clone(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(from_status);
        let resp = match result {
            Ok(r) => r.into_inner(),
            Err(e) => {
                if e.is_transient() {
                    let mut gate = self.jwt_gate.lock().unwrap_or_else(|p| p.into_inner());
                    let wait = gate.backoff.fail();
                    gate.closed_until = Some(Instant::now() + wait);
                    gate.last_error = match &e {
                        AgentError::Unavailable(m) => m.clone(),
                        other => other.to_string(),
                    };
                    drop(gate);
                    self.failed(
                        Op::Jwt,
                        tracing::Level::WARN,
                        &e.to_string(),
                        &format!("JWT-SVID minting failed (requests fail fast, then retry with backoff): {e}"),
                    );
                }
                return Err(e);
            }
        };
        {
            let mut gate = self.jwt_gate.lock().unwrap_or_else(|p| p.into_inner());
            gate.backoff.reset();
            gate.closed_until = None;
        }
        self.succeeded(Op::Jwt);
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

    fn entry(id: &str, spiffe_id: &str, revision: u64) -> Arc<RegistrationEntry> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "id": id,
                "spiffe_id": spiffe_id,
                "parent_id": "spiffe://example.org/node",
                "selectors": ["unix:uid:1000"],
                "revision_number": revision,
            }))
            .unwrap(),
        )
    }

    fn svid(e: &Arc<RegistrationEntry>, rotate_at: i64) -> Svid {
        Svid {
            entry: e.clone(),
            chain: Arc::new(vec![vec![0]]),
            key: Arc::new(SoftwareKey::generate(tessera_core::key::KeyType::EcP256).unwrap()),
            not_before: rotate_at - 100,
            not_after: rotate_at + 100,
            rotate_at,
            revision: e.revision_number,
        }
    }

    fn state(entries: &[Arc<RegistrationEntry>]) -> SyncState {
        SyncState {
            entries: entries.iter().map(|e| (e.id.clone(), e.clone())).collect(),
            ..SyncState::default()
        }
    }

    #[test]
    fn entries_are_due_for_signing_when_new_changed_or_rotating_and_not_while_backing_off() {
        let (t, t_unix) = (Instant::now(), 10_000);
        let new = entry("new", "spiffe://example.org/new", 1);
        let fresh = entry("fresh", "spiffe://example.org/fresh", 1);
        let rotating = entry("rotating", "spiffe://example.org/rotating", 1);
        let changed = entry("changed", "spiffe://example.org/changed", 2);
        let failing = entry("failing", "spiffe://example.org/failing", 1);
        let mut st = state(&[
            new.clone(),
            fresh.clone(),
            rotating.clone(),
            changed.clone(),
            failing.clone(),
        ]);
        st.svids.insert("fresh".into(), svid(&fresh, t_unix + 60));
        st.svids
            .insert("rotating".into(), svid(&rotating, t_unix - 1));
        let mut old = svid(&changed, t_unix + 60);
        old.revision = 1;
        st.svids.insert("changed".into(), old);
        st.sign_retry.insert(
            "failing".into(),
            SignRetry {
                backoff: Backoff::for_interval(Duration::from_secs(5)),
                not_before: t + Duration::from_secs(30),
            },
        );
        let times: BTreeMap<String, Instant> = st
            .sign_times(t, t_unix)
            .map(|(e, at)| (e.id.clone(), at))
            .collect();
        assert_eq!(times["new"], t);
        assert_eq!(times["rotating"], t);
        assert_eq!(times["changed"], t);
        assert_eq!(times["fresh"], t + Duration::from_secs(60));
        // Backing off: not before its retry time, whatever else it needs.
        assert_eq!(times["failing"], t + Duration::from_secs(30));
    }

    #[test]
    fn removed_entries_and_changed_identities_lose_their_svids() {
        let kept = entry("kept", "spiffe://example.org/kept", 1);
        let gone = entry("gone", "spiffe://example.org/gone", 1);
        let renamed = entry("renamed", "spiffe://example.org/before", 1);
        let reselected = entry("reselected", "spiffe://example.org/same", 1);
        let mut st = state(&[kept.clone(), renamed.clone(), reselected.clone()]);
        for e in [&kept, &gone, &renamed, &reselected] {
            st.svids.insert(e.id.clone(), svid(e, 0));
        }
        st.sign_retry.insert(
            "gone".into(),
            SignRetry {
                backoff: Backoff::for_interval(Duration::from_secs(5)),
                not_before: Instant::now(),
            },
        );
        // The server renamed one entry and changed another's selectors (new revisions).
        st.entries.insert(
            "renamed".into(),
            entry("renamed", "spiffe://example.org/after", 2),
        );
        st.entries.insert(
            "reselected".into(),
            entry("reselected", "spiffe://example.org/same", 2),
        );
        assert!(st.drop_stale());
        let left: Vec<&str> = st.svids.keys().map(String::as_str).collect();
        // The SVID of a changed entry with the same SPIFFE ID is still valid for it
        // until the new one is signed; the renamed entry's old SVID is not.
        assert_eq!(left, ["kept", "reselected"]);
        assert!(st.sign_retry.is_empty());
        assert!(!st.drop_stale());
    }

    #[test]
    fn only_outages_are_retried_as_transient() {
        assert!(AgentError::Unavailable("x".into()).is_transient());
        assert!(AgentError::Key(KeyError::Unavailable("tpm".into())).is_transient());
        assert!(!AgentError::Rejected("used token".into()).is_transient());
        assert!(!AgentError::Attestation("bad".into()).is_transient());
        assert!(!AgentError::Config("x".into()).is_transient());
        assert!(from_status(tonic::Status::unavailable("down")).is_transient());
        assert!(from_status(tonic::Status::deadline_exceeded("slow")).is_transient());
        assert!(!from_status(tonic::Status::permission_denied("no")).is_transient());
    }
}
