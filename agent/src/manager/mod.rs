//! The agent manager: gets the agent its identity (resuming from the state directory,
//! or attesting), keeps the authorized entries and their SVIDs current, renews the
//! agent's own SVID, and mints JWT-SVIDs on behalf of workloads.
//!
//! - this module: the [`Agent`], its start-up ([`Agent::establish`]) and status;
//! - `identity`: the agent's own SVID (attestation, renewal, re-attestation);
//! - `svids`: the entries and their X509-SVIDs (sync, signing, rotation at half-life);
//! - `jwt`: JWT-SVIDs, minted on demand;
//! - `run`: the loop that does the timed work.
//!
//! The server is reached through [`ServerApi`] and the wall clock read through an
//! injected [`Clock`], so that all of this can be unit tested against a fake server
//! at any instant. How long the loop sleeps between two looks at the clock is tokio's
//! timer (tests pause and advance it).
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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tessera_core::clock::{SharedClock, SystemClock};
use tessera_core::key::{KeyError, KeyManager};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_core::x509;
use tessera_core::{Bundle, SpiffeId};
use tokio::time::Instant;

use crate::attestor::NodeAttestor;
use crate::cache::{Cache, Snapshot};
use crate::client::Failover;
use crate::config::AgentConfig;
use crate::protocol::{GrpcServer, ServerApi, ServerError};
use crate::retry::{Backoff, RepeatLog};
use crate::state::{SavedIdentity, StateDir};

mod identity;
mod jwt;
mod persisted;
mod run;
mod svids;
#[cfg(test)]
mod tests;

pub use svids::rotation_time;

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
    /// The node attestor cannot get its evidence yet (see
    /// [`ServerError::EvidenceUnavailable`]).
    #[error("the node attestor cannot get its evidence yet: {0}")]
    EvidenceUnavailable(String),
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
            AgentError::Unavailable(_)
                | AgentError::EvidenceUnavailable(_)
                | AgentError::Key(KeyError::Unavailable(_))
        )
    }
}

impl From<ServerError> for AgentError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Rejected(m) => AgentError::Rejected(m),
            ServerError::Unavailable(m) => AgentError::Unavailable(m),
            ServerError::Attestation(m) => AgentError::Attestation(m),
            ServerError::EvidenceUnavailable(m) => AgentError::EvidenceUnavailable(m),
        }
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

/// What the health check reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub spiffe_id: Option<SpiffeId>,
    pub last_sync_ok: Option<i64>,
    pub last_error: Option<String>,
}

/// What an agent is made of besides its configuration.
#[derive(Debug)]
pub struct Parts {
    /// Holds the agent's own key.
    pub km: Arc<dyn KeyManager>,
    /// Proves the node when there is no saved identity to resume.
    pub attestor: Option<Arc<dyn NodeAttestor>>,
    /// The wall clock certificates are judged by.
    pub clock: SharedClock,
    /// The server; `None` for gRPC to the configured addresses.
    pub server: Option<Arc<dyn ServerApi>>,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    clock: SharedClock,
    state_dir: StateDir,
    km: Arc<dyn KeyManager>,
    attestor: Option<Arc<dyn NodeAttestor>>,
    bundle: Arc<SharedBundle>,
    identity: Arc<SharedIdentity>,
    server: Arc<dyn ServerApi>,
    pub cache: Arc<Cache>,
    me: Mutex<Option<SavedIdentity>>,
    status: Mutex<Status>,
    sync: tokio::sync::Mutex<svids::SyncState>,
    logs: Mutex<BTreeMap<Op, RepeatLog>>,
    jwt_gate: Mutex<jwt::JwtGate>,
    metrics: Arc<crate::metrics::AgentMetrics>,
    /// The persisted SVID cache, when turned on (`persisted`).
    svid_store: std::sync::OnceLock<crate::persist::SvidStore>,
    /// The TPM workload keys are made in (entries with `workload_key = tpm`).
    workload_tpm: std::sync::OnceLock<Arc<tessera_tpm::Tpm>>,
}

impl Agent {
    /// Makes keys of entries with `workload_key = tpm` in `tpm` (the agent's TPM);
    /// without it such entries get no SVID and their failure is reported.
    pub fn set_workload_tpm(&self, tpm: Arc<tessera_tpm::Tpm>) {
        let _ = self.workload_tpm.set(tpm);
    }

    pub(crate) fn workload_tpm(&self) -> Option<Arc<tessera_tpm::Tpm>> {
        self.workload_tpm.get().cloned()
    }

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
        Self::with_parts(
            cfg,
            Parts {
                km,
                attestor,
                clock: SystemClock::shared(),
                server: None,
            },
        )
    }

    /// [`Agent::new`] with a clock and, when given, a server of the caller's choosing.
    pub fn with_parts(cfg: AgentConfig, parts: Parts) -> Result<Arc<Self>, AgentError> {
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
        let server = match parts.server {
            Some(s) => s,
            None => Arc::new(
                GrpcServer::new(cfg.servers(), server_id, bundle.clone(), identity.clone())
                    .with_failover(Failover::for_interval(cfg.sync_interval)),
            ),
        };
        let jwt_gate = Mutex::new(jwt::JwtGate::new(cfg.sync_interval));
        Ok(Arc::new(Self {
            cache: Arc::new(Cache::with_clock(parts.clock.clone())),
            cfg,
            clock: parts.clock,
            state_dir,
            km: parts.km,
            attestor: parts.attestor,
            bundle,
            identity,
            server,
            me: Mutex::new(None),
            status: Mutex::new(Status::default()),
            sync: tokio::sync::Mutex::new(svids::SyncState::default()),
            logs: Mutex::new(BTreeMap::new()),
            jwt_gate,
            metrics: crate::metrics::AgentMetrics::new(),
            svid_store: std::sync::OnceLock::new(),
            workload_tpm: std::sync::OnceLock::new(),
        }))
    }

    /// Gets the agent its identity: resumes from the state directory, or attests
    /// when there is nothing usable to resume. While the server, its HSM or the TPM
    /// is away this waits and tries again (with backoff) rather than fail: an agent
    /// started before its server must come up by itself. A refusal (a used or
    /// expired join token, evidence the server does not accept) or a configuration
    /// error is returned.
    pub async fn establish(&self) -> Result<(), AgentError> {
        // The SVIDs saved before are served at once, even while the agent's own
        // identity waits for the server (`persisted`).
        self.restore_svids().await;
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
            .failure(Instant::now().into_std(), key, line);
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

    /// The time now, in Unix seconds, by the agent's clock.
    fn now(&self) -> i64 {
        self.clock.unix()
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
        if info.not_after <= self.now() {
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

    /// The clock the agent judges certificates by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The agent's SPIFFE ID.
    /// What the agent measures.
    pub fn metrics(&self) -> &Arc<crate::metrics::AgentMetrics> {
        &self.metrics
    }

    /// When the agent's own SVID expires (Unix seconds), if it has one.
    pub fn agent_svid_not_after(&self) -> Option<i64> {
        self.agent_svid_times().map(|(_, na)| na)
    }

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
