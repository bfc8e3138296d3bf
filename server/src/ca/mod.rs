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
//! # Several servers
//!
//! Servers sharing a datastore are one authority, as in SPIRE: each keeps its own
//! authorities (its `server_id` is on every record it makes), rotates and prunes only
//! those, and signs only with those; the others' are only published. The shared
//! bundle is the union of every server's live authorities, made from the journal by
//! [`Datastore::compose_bundle`] in one transaction, so a server never publishes a
//! stale view over another's. Its sequence number is the journal's change counter:
//! each server polls it ([`FOLLOW_INTERVAL`]) and, when another server changed it,
//! takes up the stored bundle (and with it the other servers' new authorities, which
//! its TLS server then trusts) and reads their records again. A new authority signs
//! only once it has been published for the propagation time, so that agents of every
//! server have it; see [`rotation`].
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

/// How often a server looks whether another server changed the shared bundle.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

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
    /// This server's ID among those sharing the datastore (on every record it makes).
    pub server_id: String,
    /// How long a new authority is published before it signs: the agents' sync
    /// interval plus the bundle's refresh hint.
    pub propagation: Duration,
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
    /// This server's.
    x509: Vec<X509Slot>,
    jwt: Vec<JwtSlot>,
    /// The other servers' (published, never used here).
    others: Vec<CaRecord>,
    /// This server's records changed since the bundle was last composed.
    dirty: bool,
    /// Expired authorities whose key could not be destroyed yet (the key store was
    /// down); retried on every rotation step.
    to_destroy: Vec<CaRecord>,
    /// Authorities whose key a signature found missing, to be checked (and retired
    /// if it is really gone) by the next rotation step.
    suspect: Vec<String>,
}

impl State {
    /// This server's authorities of `kind` as rotation sees them.
    fn authorities(&self, kind: CaKind) -> Vec<rotation::Authority<'_>> {
        match kind {
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
        }
    }

    /// What rotation of `kind` needs besides the authorities, at `now`.
    fn context(&self, kind: CaKind, now: i64, propagation: Duration) -> rotation::Context {
        rotation::Context {
            now,
            propagation: i64::try_from(propagation.as_secs()).unwrap_or(i64::MAX),
            others_sign: self
                .others
                .iter()
                .any(|r| r.kind == kind && r.status == CaStatus::Active && r.not_after > now),
        }
    }

    /// The plan for one kind at `now`.
    fn plan(&self, kind: CaKind, now: i64, propagation: Duration) -> rotation::Plan {
        rotation::plan(
            &self.authorities(kind),
            self.context(kind, now, propagation),
        )
    }

    /// The earliest moment a prepared authority of this server's becomes known.
    fn waiting_until(&self, now: i64, propagation: Duration) -> Option<i64> {
        [CaKind::X509, CaKind::Jwt]
            .into_iter()
            .filter_map(|k| {
                rotation::waiting_until(&self.authorities(k), self.context(k, now, propagation))
            })
            .min()
    }

    /// Every record held, this server's and the others'.
    fn all_records(&self) -> impl Iterator<Item = &CaRecord> {
        self.x509
            .iter()
            .map(|s| &s.record)
            .chain(self.jwt.iter().map(|s| &s.record))
            .chain(&self.others)
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
        let propagation = self.settings.propagation;
        let (x509, jwt) = {
            let st = self.read_state();
            (
                st.plan(CaKind::X509, now, propagation),
                st.plan(CaKind::Jwt, now, propagation),
            )
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

    /// Runs rotation, and follows the other servers' changes, until the process
    /// stops.
    pub async fn run(self: Arc<Self>) {
        let tick = self.tick();
        let mut next_rotation = tokio::time::Instant::now() + tick;
        let mut following_failed = false;
        loop {
            // A prepared authority that becomes known before the next tick is taken
            // up on time.
            let now = self.clock.unix();
            if let Some(at) = self
                .read_state()
                .waiting_until(now, self.settings.propagation)
            {
                let secs = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
                next_rotation =
                    next_rotation.min(tokio::time::Instant::now() + Duration::from_secs(secs));
            }
            // A signature that found its key gone wakes the task at once.
            let woken = tokio::select! {
                () = tokio::time::sleep(FOLLOW_INTERVAL) => false,
                () = self.wake.notified() => true,
            };
            match self.follow().await {
                Ok(()) if following_failed => {
                    following_failed = false;
                    tracing::info!("the shared trust bundle can be read again");
                }
                Ok(()) => {}
                // Said once, not every second of a datastore outage.
                Err(e) if !following_failed => {
                    following_failed = true;
                    tracing::warn!(error = %e, "cannot read the shared trust bundle (will retry every second)");
                }
                Err(_) => {}
            }
            if woken || tokio::time::Instant::now() >= next_rotation {
                next_rotation = tokio::time::Instant::now() + tick;
                if let Err(e) = self.rotate().await {
                    tracing::error!(error = %e, "CA rotation failed (will retry)");
                }
            }
        }
    }

    /// Waits until this server has an X.509 authority and a JWT key that sign: at
    /// once, unless it has just prepared its first ones in a trust domain where other
    /// servers sign (then for the propagation time, so that agents know them before
    /// this server presents or signs anything with them).
    pub async fn until_signing(&self) {
        let mut said = false;
        let mut last_error: Option<String> = None;
        while self.active_x509().is_err() || self.active_jwt().is_err() {
            let now = self.clock.unix();
            let until = self
                .read_state()
                .waiting_until(now, self.settings.propagation);
            if !said {
                said = true;
                tracing::info!(
                    wait_secs = until.map_or(0, |at| at - now),
                    "this server's authorities are published in the shared bundle; it signs once every agent can have learnt them (agent_sync_interval + bundle_refresh_hint)"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match self.rotate().await {
                Ok(()) => last_error = None,
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::error!(error = %text, "CA rotation failed (will retry)");
                        last_error = Some(text);
                    }
                }
            }
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }
}
