//! The CA manager: the X.509 signing CA and the JWT signing key, their rotation, and
//! the trust bundle they make.
//!
//! Each authority goes through three states, as in SPIRE: *prepared* at half of the
//! active one's life (published in the bundle so that every agent learns it before it
//! signs anything), *active* when a sixth of the active one's life is left, then *old*
//! (still published) until it expires. A key is destroyed only once its authority has
//! expired, which is after every certificate or token it signed has expired, because
//! those never outlive their issuer.
//!
//! The pieces:
//! - [`rotation`]: what to prune, prepare and activate, as a pure function of the
//!   journal and the time;
//! - `journal`: the authorities in memory and in the datastore's CA journal, their
//!   keys found again at start, lost keys retired, expired authorities pruned;
//! - `authority`: making a new authority, checked by `probe` before it is stored;
//! - `bundle`: the trust bundle the authorities make, and its publication;
//! - `signing`: signing with the active authority, and the hand-over when its key
//!   turns out to be gone;
//! - [`upstream`]: the root above the server's CA, when there is one.
//!
//! The manager reads wall-clock time only through the [`SharedClock`] it is given.
//!
//! # Lost keys
//!
//! An authority whose key is gone (deleted from the token, lost with a restart of the
//! memory key manager, unreadable, or replaced by another key under its name) is
//! *retired*: marked so in the journal, logged at error level with its key,
//! never used to sign again, and kept in the bundle until it expires, because what it
//! signed stays valid until then. The prepared authority takes over at once when
//! there is one (agents already know it), otherwise a new one is made at once. This
//! is checked at start and whenever a signature fails because the key object is
//! missing; the key manager is asked again before anything is retired, and a key
//! store that cannot answer (an HSM outage) never retires anything: the server waits
//! for it and answers Unavailable meanwhile. Signing authorities made with another
//! key manager than the one configured stop the start instead: that is far more
//! often a configuration mistake than a lost key, and retiring is for good.
//!
//! # Checked chains
//!
//! Every new authority signs a probe before it is stored: an X509-SVID that must
//! verify against the roots it will be published with, through the verifier agents
//! use, and obey every CA's path length limit (which that verifier does not apply to
//! trust anchors but OpenSSL and Go do); a JWT-SVID that must validate against its
//! own public key. An authority that fails is not stored: at start the server
//! refuses to run, at a rotation the current authority stays and the error is logged.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tessera_core::clock::SharedClock;
use tessera_core::key::{Key, KeyManager, KeyType};
use tessera_core::x509::{self, Issuer};
use tessera_core::{Bundle, TrustDomain};
use tokio::sync::watch;

use crate::datastore::{CaKind, CaRecord, CaStatus, Datastore};

mod authority;
mod bundle;
mod error;
mod journal;
mod keys;
mod probe;
pub(crate) mod rotation;
mod signing;
pub mod upstream;

#[cfg(test)]
mod tests;

pub use error::{CaError, ChainProblem};
pub use signing::{ActiveJwt, ActiveX509};

/// What the CA manager needs from the configuration.
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub trust_domain: TrustDomain,
    pub ca_ttl: Duration,
    pub ca_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub refresh_hint: Duration,
    /// The root that signs the server's CA; `None`: the server's CA is a self-signed root.
    pub upstream: Option<Arc<Issuer>>,
    /// The `iss` claim of the JWT-SVIDs it signs (`jwt_issuer`); none when `None`.
    pub jwt_issuer: Option<String>,
}

#[derive(Debug, Clone)]
struct X509Slot {
    record: CaRecord,
    issuer: Option<Arc<Issuer>>,
}

#[derive(Debug, Clone)]
struct JwtSlot {
    record: CaRecord,
    key: Option<Arc<dyn Key>>,
}

/// The authorities in memory, in journal order (oldest first).
#[derive(Debug, Default)]
struct State {
    x509: Vec<X509Slot>,
    jwt: Vec<JwtSlot>,
    /// Expired authorities whose key could not be destroyed yet (the key store was
    /// down); retried on every rotation step.
    to_destroy: Vec<CaRecord>,
    /// Authorities whose key a signature found missing, to be checked (and retired
    /// if it is really gone) by the next rotation step.
    suspect: Vec<String>,
}

impl State {
    /// The plan for one kind at `now`.
    fn plan(&self, kind: CaKind, now: i64) -> rotation::Plan {
        let authorities: Vec<rotation::Authority<'_>> = match kind {
            CaKind::X509 => self
                .x509
                .iter()
                .map(|s| rotation::Authority::of(&s.record, s.issuer.is_some()))
                .collect(),
            CaKind::Jwt => self
                .jwt
                .iter()
                .map(|s| rotation::Authority::of(&s.record, s.key.is_some()))
                .collect(),
        };
        rotation::plan(&authorities, now)
    }
}

fn kind_name(kind: CaKind) -> &'static str {
    match kind {
        CaKind::X509 => "X.509",
        CaKind::Jwt => "JWT",
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct CaManager {
    settings: CaSettings,
    km: Arc<dyn KeyManager>,
    ds: Arc<dyn Datastore>,
    clock: SharedClock,
    state: RwLock<State>,
    bundle_tx: watch::Sender<Arc<Bundle>>,
    /// Serialises rotations (startup and the periodic task).
    rotation: tokio::sync::Mutex<()>,
    /// Wakes the rotation task early (a signature found its key gone).
    wake: tokio::sync::Notify,
    steps: signing::Steps,
}

/// The system clock's time in unix seconds, for code that is not given a clock.
pub(crate) fn now_unix() -> i64 {
    x509::unix_seconds(SystemTime::now())
}

impl CaManager {
    /// Loads the CA journal, finds the keys again, and makes sure an X.509 authority and
    /// a JWT key are active (creating them when needed).
    pub async fn start(
        settings: CaSettings,
        km: Arc<dyn KeyManager>,
        ds: Arc<dyn Datastore>,
        clock: SharedClock,
    ) -> Result<Arc<Self>, CaError> {
        let stored = ds.get_bundle(&settings.trust_domain).await?;
        let initial = stored.unwrap_or_else(|| Bundle::new(settings.trust_domain.clone()));
        let (bundle_tx, _) = watch::channel(Arc::new(initial));
        let ca = Arc::new(Self {
            settings,
            km,
            ds,
            clock,
            state: RwLock::new(State::default()),
            bundle_tx,
            rotation: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            steps: signing::Steps::default(),
        });
        ca.load().await?;
        ca.rotate().await?;
        ca.check_active_chains().await?;
        Ok(ca)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// One rotation step: check the keys signatures found missing, prune expired
    /// authorities, prepare and activate as the lifetimes say, and republish the
    /// bundle when it changed.
    pub async fn rotate(&self) -> Result<(), CaError> {
        let _guard = self.rotation.lock().await;
        let now = self.clock.unix();
        // Suspects first: an authority retired now is replaced by this same step.
        let suspects = self.check_suspects().await;
        let (x509, jwt) = {
            let st = self.read_state();
            (st.plan(CaKind::X509, now), st.plan(CaKind::Jwt, now))
        };
        self.prune(x509.prune.iter().chain(&jwt.prune)).await;
        let result = async {
            suspects?;
            // One kind failing (its new authority unusable, say) must not hold up the
            // other, nor the publication of what did change.
            let x509 = self.execute(CaKind::X509, x509.step).await;
            let jwt = self.execute(CaKind::Jwt, jwt.step).await;
            let published = self.publish().await;
            x509.and(jwt).and(published)
        }
        .await;
        // Signers waiting for a replacement look again.
        self.steps.one_more();
        result
    }

    /// Carries out one kind's step of a rotation plan.
    async fn execute(&self, kind: CaKind, step: Option<rotation::Step>) -> Result<(), CaError> {
        let what = kind_name(kind);
        match step {
            None => {}
            Some(rotation::Step::ActivatePrepared { prepared }) => {
                self.set_status(kind, &prepared, CaStatus::Active).await?;
                tracing::info!(authority = %prepared, "no {what} authority could sign: the prepared one, {prepared}, is active now");
            }
            Some(rotation::Step::CreateActive) => {
                let r = self.new_authority(kind, CaStatus::Active).await?;
                match kind {
                    CaKind::X509 => {
                        tracing::info!(ca = %r.id, not_after = r.not_after, "X.509 CA created and activated")
                    }
                    CaKind::Jwt => {
                        tracing::info!(kid = %r.jwt_kid, "JWT signing key created and activated")
                    }
                }
            }
            Some(rotation::Step::Prepare) => {
                let r = self.new_authority(kind, CaStatus::Prepared).await?;
                match kind {
                    CaKind::X509 => {
                        tracing::info!(ca = %r.id, "next X.509 CA prepared and published in the bundle")
                    }
                    CaKind::Jwt => {
                        tracing::info!(kid = %r.jwt_kid, "next JWT key prepared and published in the bundle")
                    }
                }
            }
            Some(rotation::Step::Activate { old, new }) => {
                self.set_status(kind, &old, CaStatus::Old).await?;
                self.set_status(kind, &new, CaStatus::Active).await?;
                match kind {
                    CaKind::X509 => tracing::info!(old = %old, new = %new, "X.509 CA rotated"),
                    CaKind::Jwt => {
                        let kid = |id: &str| self.record(kind, id).map(|r| r.jwt_kid);
                        tracing::info!(
                            old = %kid(&old).unwrap_or(old.clone()),
                            new = %kid(&new).unwrap_or(new.clone()),
                            "JWT key rotated"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// What an operator should know that does not stop signing (for the health
    /// check): retired authorities still published, an upstream root that expires
    /// before a full CA lifetime.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        {
            let st = self.read_state();
            let retired = st
                .x509
                .iter()
                .map(|s| &s.record)
                .chain(st.jwt.iter().map(|s| &s.record))
                .filter(|r| r.status == CaStatus::Retired);
            for r in retired {
                notes.push(format!(
                    "{} authority {} is retired (its key {} is gone); published until {}",
                    kind_name(r.kind),
                    r.id,
                    r.key_id,
                    r.not_after
                ));
            }
        }
        if let Some(up) = &self.settings.upstream
            && up.not_after() < self.clock.now() + self.settings.ca_ttl
        {
            notes.push(format!(
                "upstream root expires at {} (unix), before a full CA lifetime: replace it",
                x509::unix_seconds(up.not_after())
            ));
        }
        notes
    }

    /// How often the rotation task should look at lifetimes.
    pub fn tick(&self) -> Duration {
        (self.settings.ca_ttl / 120).clamp(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// Runs rotation until the process stops.
    pub async fn run(self: Arc<Self>) {
        let tick = self.tick();
        loop {
            // A signature that found its key gone wakes the task at once.
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.wake.notified() => {}
            }
            if let Err(e) = self.rotate().await {
                tracing::error!(error = %e, "CA rotation failed (will retry)");
            }
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }
}
