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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_core::key::{Key, KeyError, KeyManager, KeyType};
use tessera_core::x509::{self, BuildError, Issuer, SvidTemplate};
use tessera_core::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::datastore::{CaKind, CaRecord, CaStatus, Datastore, DatastoreError};

pub mod upstream;

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("CA key: {0}")]
    Key(#[from] KeyError),
    #[error("CA certificate: {0}")]
    Build(#[from] BuildError),
    #[error("CA journal: {0}")]
    Datastore(#[from] DatastoreError),
    #[error("JWT signing: {0}")]
    Jwt(#[from] tessera_core::jwt::JwtError),
    #[error("no active {0} authority (the key manager may be unavailable)")]
    NoActive(&'static str),
    /// The key of the authority that was signing is gone; the authority is being
    /// retired and replaced.
    #[error(
        "the key {key} of the {kind} authority {authority} is gone ({reason}); the server is replacing the authority: retry shortly"
    )]
    KeyLost {
        kind: &'static str,
        authority: String,
        key: String,
        reason: String,
    },
    /// The journal's signing authorities were made with another key manager than the
    /// one configured.
    #[error(
        "the {kind} authority {authority} was made with key manager {was:?}, but the server is configured with {now:?}, which cannot reach its key: set [key_manager] back to {was:?}; to change key managers deliberately, see docs/RELIABILITY.md (the CA is then replaced and agents need the new bundle)"
    )]
    KeyManagerChanged {
        kind: &'static str,
        authority: String,
        was: String,
        now: &'static str,
    },
    /// A new authority's chain does not verify; it was not stored.
    #[error("the new {kind} authority {authority} is unusable: {reason}")]
    ChainCheck {
        kind: &'static str,
        authority: String,
        reason: String,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl CaError {
    /// Whether retrying later may succeed (the key store is down, the database busy).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CaError::Key(KeyError::Unavailable(_))
                | CaError::NoActive(_)
                | CaError::KeyLost { .. }
                | CaError::Build(BuildError::Key(KeyError::Unavailable(_)))
                | CaError::Jwt(tessera_core::jwt::JwtError::Key(KeyError::Unavailable(_)))
                | CaError::Datastore(DatastoreError::Unavailable(_))
        )
    }
}

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

/// Counts finished rotation steps, so that a signer that reported a lost key can wait
/// for the replacement on its blocking thread.
#[derive(Debug, Default)]
struct Steps {
    done: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

/// How long a signature that found its key gone waits for the replacement before
/// answering Unavailable.
const LOST_KEY_WAIT: Duration = Duration::from_secs(10);

/// What the key manager says about an authority's key.
enum KeyLookup {
    Found(Arc<dyn Key>),
    /// The key is gone, and why.
    Gone(String),
}

fn kind_name(kind: CaKind) -> &'static str {
    match kind {
        CaKind::X509 => "X.509",
        CaKind::Jwt => "JWT",
    }
}

/// The key error behind a failed signature, when it says the key object is gone
/// (as opposed to the key store being unavailable).
fn gone_key_error(e: &CaError) -> Option<&KeyError> {
    let k = match e {
        CaError::Key(k)
        | CaError::Build(BuildError::Key(k))
        | CaError::Jwt(tessera_core::jwt::JwtError::Key(k)) => k,
        _ => return None,
    };
    matches!(k, KeyError::NotFound(_) | KeyError::Corrupt { .. }).then_some(k)
}

/// The active X.509 authority, ready to sign.
#[derive(Debug, Clone)]
pub struct ActiveX509 {
    /// Its journal record's ID.
    pub id: String,
    pub issuer: Arc<Issuer>,
    /// What follows the leaf in an SVID chain: the CA certificate itself when it is
    /// an intermediate under an upstream root, nothing for a self-signed root (it is
    /// in the bundle).
    pub chain_tail: Vec<Vec<u8>>,
}

/// The active JWT key.
#[derive(Debug, Clone)]
pub struct ActiveJwt {
    /// Its journal record's ID.
    pub id: String,
    pub kid: String,
    pub key: Arc<dyn Key>,
    pub not_after: i64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct CaManager {
    settings: CaSettings,
    km: Arc<dyn KeyManager>,
    ds: Arc<dyn Datastore>,
    state: RwLock<State>,
    bundle_tx: watch::Sender<Arc<Bundle>>,
    /// Serialises rotations (startup and the periodic task).
    rotation: tokio::sync::Mutex<()>,
    /// Wakes the rotation task early (a signature found its key gone).
    wake: tokio::sync::Notify,
    steps: Steps,
}

pub(crate) fn now_unix() -> i64 {
    x509::unix_seconds(SystemTime::now())
}

fn short_id() -> String {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl CaManager {
    /// Loads the CA journal, finds the keys again, and makes sure an X.509 authority and
    /// a JWT key are active (creating them when needed).
    pub async fn start(
        settings: CaSettings,
        km: Arc<dyn KeyManager>,
        ds: Arc<dyn Datastore>,
    ) -> Result<Arc<Self>, CaError> {
        let stored = ds.get_bundle(&settings.trust_domain).await?;
        let initial = stored.unwrap_or_else(|| Bundle::new(settings.trust_domain.clone()));
        let (bundle_tx, _) = watch::channel(Arc::new(initial));
        let ca = Arc::new(Self {
            settings,
            km,
            ds,
            state: RwLock::new(State::default()),
            bundle_tx,
            rotation: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            steps: Steps::default(),
        });
        ca.load().await?;
        ca.rotate().await?;
        ca.check_active_chains().await?;
        Ok(ca)
    }

    async fn load(&self) -> Result<(), CaError> {
        let records = self.ds.list_ca_records().await?;
        let now = now_unix();
        let mut state = State::default();
        let mut lost = Vec::new();
        for record in records {
            if record.not_after <= now {
                // Expired while the server was down: destroy its key and drop it.
                state.to_destroy.push(record);
                continue;
            }
            let key = if record.status == CaStatus::Retired {
                None
            } else if record.key_manager != self.km.name() {
                // Far more often a configuration mistake than a deliberate change, and
                // retiring would be for good: refuse, and let the operator decide.
                if matches!(record.status, CaStatus::Active | CaStatus::Prepared) {
                    return Err(CaError::KeyManagerChanged {
                        kind: kind_name(record.kind),
                        authority: record.id.clone(),
                        was: record.key_manager.clone(),
                        now: self.km.name(),
                    });
                }
                // A replaced authority only needs to stay published.
                None
            } else {
                match self.look_up_key(&record).await? {
                    KeyLookup::Found(k) => Some(k),
                    KeyLookup::Gone(reason) => {
                        lost.push((record.kind, record.id.clone(), reason));
                        None
                    }
                }
            };
            match record.kind {
                CaKind::X509 => {
                    let issuer = key
                        .map(|k| Issuer::new(record.cert_der.clone(), k).map(Arc::new))
                        .transpose()?;
                    state.x509.push(X509Slot { record, issuer });
                }
                CaKind::Jwt => state.jwt.push(JwtSlot { record, key }),
            }
        }
        state.x509.sort_by_key(|s| s.record.not_before);
        state.jwt.sort_by_key(|s| s.record.not_before);
        *self.write_state() = state;
        for (kind, id, reason) in lost {
            self.retire(kind, &id, &reason).await?;
        }
        Ok(())
    }

    /// Finds the key of a journal record again. A key that is gone (or is not the
    /// one the authority was made with) is `Gone`; a key store that cannot answer is
    /// an error, so that an outage never makes the server replace an authority.
    async fn look_up_key(&self, record: &CaRecord) -> Result<KeyLookup, CaError> {
        if record.key_manager != self.km.name() {
            return Ok(KeyLookup::Gone(format!(
                "it was made with key manager {:?} and the server now uses {:?}",
                record.key_manager,
                self.km.name()
            )));
        }
        let km = self.km.clone();
        let id = record.key_id.clone();
        let key = match tokio::task::spawn_blocking(move || km.get_key(&id))
            .await
            .map_err(|e| CaError::Internal(e.to_string()))?
        {
            Ok(Some(k)) => k,
            Ok(None) | Err(KeyError::NotFound(_)) => {
                return Ok(KeyLookup::Gone(format!(
                    "key manager {} no longer holds it",
                    self.km.name()
                )));
            }
            Err(KeyError::Corrupt { reason, .. }) => {
                return Ok(KeyLookup::Gone(format!(
                    "its key material is unreadable: {reason}"
                )));
            }
            Err(e) => return Err(CaError::Key(e)),
        };
        // A key under the same name may be another key (made again after a loss).
        let expected = match record.kind {
            CaKind::X509 => {
                x509::cert_info(&record.cert_der)
                    .map_err(|e| {
                        CaError::Internal(format!("CA record {} certificate: {e}", record.id))
                    })?
                    .public_key_der
            }
            CaKind::Jwt => record.public_key_der.clone(),
        };
        if key.public_key_der() != expected {
            return Ok(KeyLookup::Gone(
                "the key now under its name is another key".to_owned(),
            ));
        }
        Ok(KeyLookup::Found(key))
    }

    /// Marks an authority whose key is gone as retired, in the journal and here, and
    /// says so loudly. It stays in the bundle until it expires.
    async fn retire(&self, kind: CaKind, id: &str, reason: &str) -> Result<(), CaError> {
        let record = self.record(kind, id)?;
        if record.status == CaStatus::Retired {
            return Ok(());
        }
        self.set_status(kind, id, CaStatus::Retired).await?;
        {
            let mut st = self.write_state();
            match kind {
                CaKind::X509 => {
                    if let Some(s) = st.x509.iter_mut().find(|s| s.record.id == id) {
                        s.issuer = None;
                    }
                }
                CaKind::Jwt => {
                    if let Some(s) = st.jwt.iter_mut().find(|s| s.record.id == id) {
                        s.key = None;
                    }
                }
            }
        }
        let what = kind_name(kind);
        let expires = record.not_after;
        if record.status == CaStatus::Old {
            tracing::warn!(
                authority = %id,
                key = %record.key_id,
                key_manager = %record.key_manager,
                "the key of the replaced {what} authority {id} is gone ({reason}); it is retired and stays in the trust bundle until it expires at {expires}"
            );
        } else {
            tracing::error!(
                authority = %id,
                key = %record.key_id,
                key_manager = %record.key_manager,
                was = ?record.status,
                "{what} authority {id} LOST ITS KEY {} ({reason}): it is retired and signs nothing more; it stays in the trust bundle until it expires at {expires}, because what it signed stays valid until then; a replacement takes over at once",
                record.key_id
            );
        }
        Ok(())
    }

    fn record(&self, kind: CaKind, id: &str) -> Result<CaRecord, CaError> {
        let st = self.read_state();
        let found = match kind {
            CaKind::X509 => st
                .x509
                .iter()
                .find(|s| s.record.id == id)
                .map(|s| s.record.clone()),
            CaKind::Jwt => st
                .jwt
                .iter()
                .find(|s| s.record.id == id)
                .map(|s| s.record.clone()),
        };
        found.ok_or_else(|| CaError::Internal(format!("authority {id} vanished")))
    }

    /// Checks the authorities a signature reported without a key: retires those the
    /// key manager confirms are gone, takes up again those it still has (a stale
    /// handle), and keeps the rest for the next step (the key store is down).
    async fn check_suspects(&self) -> Result<(), CaError> {
        let suspects = std::mem::take(&mut self.write_state().suspect);
        let mut keep = Vec::new();
        for id in suspects {
            let kind = if self.read_state().x509.iter().any(|s| s.record.id == id) {
                CaKind::X509
            } else if self.read_state().jwt.iter().any(|s| s.record.id == id) {
                CaKind::Jwt
            } else {
                continue;
            };
            let record = self.record(kind, &id)?;
            if record.status == CaStatus::Retired {
                continue;
            }
            match self.look_up_key(&record).await {
                Ok(KeyLookup::Gone(reason)) => self.retire(kind, &id, &reason).await?,
                Ok(KeyLookup::Found(key)) => {
                    tracing::warn!(authority = %id, key = %record.key_id, "a signature found the key missing, but the key manager holds it: using it again");
                    let mut st = self.write_state();
                    match kind {
                        CaKind::X509 => {
                            let issuer = Issuer::new(record.cert_der.clone(), key)?;
                            if let Some(s) = st.x509.iter_mut().find(|s| s.record.id == id) {
                                s.issuer = Some(Arc::new(issuer));
                            }
                        }
                        CaKind::Jwt => {
                            if let Some(s) = st.jwt.iter_mut().find(|s| s.record.id == id) {
                                s.key = Some(key);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(authority = %id, key = %record.key_id, "cannot tell whether the key is gone ({e}); the authority is kept and checked again");
                    keep.push(id);
                }
            }
        }
        self.write_state().suspect.extend(keep);
        Ok(())
    }

    /// A signature found the key of authority `id` missing: have the rotation task
    /// check it at once.
    fn report_missing_key(&self, id: &str) {
        {
            let mut st = self.write_state();
            if !st.suspect.iter().any(|s| s == id) {
                st.suspect.push(id.to_owned());
            }
        }
        self.wake.notify_one();
    }

    /// Waits (on a blocking thread) until the active authority of `kind` is another
    /// than `lost`, or [`LOST_KEY_WAIT`] passes; returns whether it changed.
    fn wait_for_replacement(&self, kind: CaKind, lost: &str) -> bool {
        let deadline = std::time::Instant::now() + LOST_KEY_WAIT;
        let replaced = || {
            let st = self.read_state();
            match kind {
                CaKind::X509 => st.x509.iter().any(|s| {
                    s.record.status == CaStatus::Active && s.issuer.is_some() && s.record.id != lost
                }),
                CaKind::Jwt => st.jwt.iter().any(|s| {
                    s.record.status == CaStatus::Active && s.key.is_some() && s.record.id != lost
                }),
            }
        };
        let mut done = self.steps.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if replaced() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let seen = *done;
            let (guard, _) = self
                .steps
                .changed
                .wait_timeout_while(done, deadline - now, |d| *d == seen)
                .unwrap_or_else(|p| p.into_inner());
            done = guard;
        }
    }

    /// Runs `sign` with the active authority of `kind`; when its key turns out to be
    /// gone, reports it, waits for the replacement and signs once more with that.
    fn sign_with_active<T>(
        &self,
        kind: CaKind,
        sign: impl Fn() -> Result<T, (String, CaError)>,
    ) -> Result<T, CaError> {
        let (id, err) = match sign() {
            Ok(v) => return Ok(v),
            Err((id, e)) => (id, e),
        };
        let Some(key_err) = gone_key_error(&err) else {
            return Err(err);
        };
        let reason = key_err.to_string();
        let key = self.record(kind, &id).map(|r| r.key_id).unwrap_or_default();
        tracing::error!(authority = %id, key = %key, "signing failed because the key is missing ({reason}); checking the key and replacing the authority");
        self.report_missing_key(&id);
        let lost = CaError::KeyLost {
            kind: kind_name(kind),
            authority: id.clone(),
            key,
            reason,
        };
        if !self.wait_for_replacement(kind, &id) {
            return Err(lost);
        }
        sign().map_err(|(_, e)| e)
    }

    /// Checks, at start, that the active X.509 authority signs SVIDs that verify.
    async fn check_active_chains(&self) -> Result<(), CaError> {
        let Ok(active) = self.active_x509() else {
            return Ok(());
        };
        let roots = {
            let st = self.read_state();
            st.x509
                .iter()
                .find(|s| s.record.id == active.id)
                .map(|s| bundle_roots(&s.record))
                .unwrap_or_default()
        };
        let td = self.settings.trust_domain.clone();
        let id = active.id.clone();
        tokio::task::spawn_blocking(move || {
            probe_x509(&td, &active.issuer, &active.chain_tail, &roots)
        })
        .await
        .map_err(|e| CaError::Internal(e.to_string()))??
        .map_err(|reason| CaError::ChainCheck {
            kind: "X.509",
            authority: id,
            reason,
        })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// One rotation step: prune expired authorities, prepare and activate as the
    /// lifetimes say, and republish the bundle when it changed.
    pub async fn rotate(&self) -> Result<(), CaError> {
        let _guard = self.rotation.lock().await;
        let now = now_unix();
        self.prune(now).await;
        let result = async {
            self.check_suspects().await?;
            // One kind failing (its new authority unusable, say) must not hold up the
            // other, nor the publication of what did change.
            let x509 = self.rotate_x509(now).await;
            let jwt = self.rotate_jwt(now).await;
            let published = self.publish().await;
            x509.and(jwt).and(published)
        }
        .await;
        // Signers waiting for a replacement look again.
        *self.steps.done.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.steps.changed.notify_all();
        result
    }

    async fn prune(&self, now: i64) {
        let gone: Vec<CaRecord> = {
            let mut st = self.write_state();
            let mut gone: Vec<CaRecord> = st
                .x509
                .iter()
                .filter(|s| s.record.not_after <= now)
                .map(|s| s.record.clone())
                .chain(
                    st.jwt
                        .iter()
                        .filter(|s| s.record.not_after <= now)
                        .map(|s| s.record.clone()),
                )
                .collect();
            st.x509.retain(|s| s.record.not_after > now);
            st.jwt.retain(|s| s.record.not_after > now);
            gone.append(&mut st.to_destroy);
            gone
        };
        let mut retry = Vec::new();
        for r in gone {
            // Everything this key signed has expired with it: destroy it. The record
            // goes only once the key is gone, so a key store outage cannot leak keys.
            if r.key_manager == self.km.name() {
                let km = self.km.clone();
                let key_id = r.key_id.clone();
                match tokio::task::spawn_blocking(move || km.delete_key(&key_id)).await {
                    Ok(Ok(())) => {
                        tracing::info!(ca = %r.id, key = %r.key_id, "expired authority removed and its key destroyed")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(ca = %r.id, "cannot destroy expired key {} yet (will retry): {e}", r.key_id);
                        retry.push(r);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("key deletion task failed: {e}");
                        retry.push(r);
                        continue;
                    }
                }
            }
            if let Err(e) = self.ds.delete_ca_record(&r.id).await
                && !matches!(e, DatastoreError::NotFound(_))
            {
                tracing::warn!(ca = %r.id, "cannot delete CA record: {e}");
            }
        }
        self.write_state().to_destroy.extend(retry);
    }

    fn thresholds(r: &CaRecord) -> (i64, i64) {
        let life = (r.not_after - r.not_before).max(1);
        (r.not_before + life / 2, r.not_after - life / 6)
    }

    async fn rotate_x509(&self, now: i64) -> Result<(), CaError> {
        let (active, prepared) = {
            let st = self.read_state();
            let active = st
                .x509
                .iter()
                .find(|s| s.record.status == CaStatus::Active && s.issuer.is_some())
                .map(|s| s.record.clone());
            let prepared = st
                .x509
                .iter()
                .find(|s| s.record.status == CaStatus::Prepared && s.issuer.is_some())
                .map(|s| s.record.clone());
            (active, prepared)
        };
        match active {
            None => {
                // Nothing can sign: use the prepared one at once, or make a new one.
                if let Some(p) = prepared {
                    self.set_status(CaKind::X509, &p.id, CaStatus::Active)
                        .await?;
                } else {
                    let r = self.new_x509(CaStatus::Active).await?;
                    tracing::info!(ca = %r.id, not_after = r.not_after, "X.509 CA created and activated");
                }
            }
            Some(a) => {
                let (prepare_at, activate_at) = Self::thresholds(&a);
                if now >= prepare_at && prepared.is_none() {
                    let r = self.new_x509(CaStatus::Prepared).await?;
                    tracing::info!(ca = %r.id, "next X.509 CA prepared and published in the bundle");
                } else if now >= activate_at
                    && let Some(p) = prepared
                {
                    self.set_status(CaKind::X509, &a.id, CaStatus::Old).await?;
                    self.set_status(CaKind::X509, &p.id, CaStatus::Active)
                        .await?;
                    tracing::info!(old = %a.id, new = %p.id, "X.509 CA rotated");
                }
            }
        }
        Ok(())
    }

    async fn rotate_jwt(&self, now: i64) -> Result<(), CaError> {
        let (active, prepared) = {
            let st = self.read_state();
            let active = st
                .jwt
                .iter()
                .find(|s| s.record.status == CaStatus::Active && s.key.is_some())
                .map(|s| s.record.clone());
            let prepared = st
                .jwt
                .iter()
                .find(|s| s.record.status == CaStatus::Prepared && s.key.is_some())
                .map(|s| s.record.clone());
            (active, prepared)
        };
        match active {
            None => {
                if let Some(p) = prepared {
                    self.set_status(CaKind::Jwt, &p.id, CaStatus::Active)
                        .await?;
                } else {
                    let r = self.new_jwt(CaStatus::Active).await?;
                    tracing::info!(kid = %r.jwt_kid, "JWT signing key created and activated");
                }
            }
            Some(a) => {
                let (prepare_at, activate_at) = Self::thresholds(&a);
                if now >= prepare_at && prepared.is_none() {
                    let r = self.new_jwt(CaStatus::Prepared).await?;
                    tracing::info!(kid = %r.jwt_kid, "next JWT key prepared and published in the bundle");
                } else if now >= activate_at
                    && let Some(p) = prepared
                {
                    self.set_status(CaKind::Jwt, &a.id, CaStatus::Old).await?;
                    self.set_status(CaKind::Jwt, &p.id, CaStatus::Active)
                        .await?;
                    tracing::info!(old = %a.jwt_kid, new = %p.jwt_kid, "JWT key rotated");
                }
            }
        }
        Ok(())
    }

    async fn set_status(&self, kind: CaKind, id: &str, status: CaStatus) -> Result<(), CaError> {
        let record = self.record(kind, id)?;
        let mut updated = record;
        updated.status = status;
        self.ds.put_ca_record(&updated).await?;
        let mut st = self.write_state();
        match kind {
            CaKind::X509 => {
                if let Some(s) = st.x509.iter_mut().find(|s| s.record.id == id) {
                    s.record.status = status;
                }
            }
            CaKind::Jwt => {
                if let Some(s) = st.jwt.iter_mut().find(|s| s.record.id == id) {
                    s.record.status = status;
                }
            }
        }
        Ok(())
    }

    async fn generate_key(&self, key_id: String, kt: KeyType) -> Result<Arc<dyn Key>, CaError> {
        let km = self.km.clone();
        tokio::task::spawn_blocking(move || km.generate_key(&key_id, kt))
            .await
            .map_err(|e| CaError::Internal(e.to_string()))?
            .map_err(CaError::Key)
    }

    /// Destroys a key made for an authority that was never stored.
    async fn discard_key(&self, key_id: &str) {
        let km = self.km.clone();
        let id = key_id.to_owned();
        match tokio::task::spawn_blocking(move || km.delete_key(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(key = %key_id, "cannot destroy the unused key: {e}"),
            Err(e) => tracing::warn!(key = %key_id, "key deletion task failed: {e}"),
        }
    }

    async fn new_x509(&self, status: CaStatus) -> Result<CaRecord, CaError> {
        let now = SystemTime::now();
        let id = format!("x509-ca-{}-{}", x509::unix_seconds(now), short_id());
        let key = self
            .generate_key(id.clone(), self.settings.ca_key_type)
            .await?;
        let td = self.settings.trust_domain.clone();
        let ttl = self.settings.ca_ttl;
        let cn = format!("Tessera CA {id}");
        let k = key.clone();
        let upstream = self.settings.upstream.clone();
        let built = tokio::task::spawn_blocking(move || match &upstream {
            Some(up) => x509::intermediate_ca(&td, &cn, k.public_key_der(), now, now + ttl, up),
            None => x509::self_signed_ca(&td, &cn, &k, now, now + ttl),
        })
        .await
        .map_err(|e| CaError::Internal(e.to_string()))
        .and_then(|r| r.map_err(CaError::from))
        .and_then(|cert| {
            let info = x509::cert_info(&cert).map_err(|e| CaError::Internal(e.to_string()))?;
            let issuer = Arc::new(Issuer::new(cert.clone(), key)?);
            Ok((cert, info, issuer))
        });
        let (cert, info, issuer) = match built {
            Ok(b) => b,
            Err(e) => {
                // Nothing refers to the key yet: do not leave it in the key store.
                self.discard_key(&id).await;
                return Err(e);
            }
        };
        let upstream_roots = self
            .settings
            .upstream
            .as_ref()
            .map(|u| vec![u.cert_der().to_vec()])
            .unwrap_or_default();
        // Check the chain before anything is stored: a CA whose SVIDs would not
        // verify must never sign (nor be published).
        let roots = if upstream_roots.is_empty() {
            vec![cert.clone()]
        } else {
            upstream_roots.clone()
        };
        let tail = if upstream_roots.is_empty() {
            Vec::new()
        } else {
            vec![cert.clone()]
        };
        let td = self.settings.trust_domain.clone();
        let probe_issuer = issuer.clone();
        let probed =
            tokio::task::spawn_blocking(move || probe_x509(&td, &probe_issuer, &tail, &roots))
                .await
                .map_err(|e| CaError::Internal(e.to_string()))
                .and_then(|r| r);
        match probed {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                self.discard_key(&id).await;
                return Err(CaError::ChainCheck {
                    kind: "X.509",
                    authority: id,
                    reason,
                });
            }
            Err(e) => {
                self.discard_key(&id).await;
                return Err(e);
            }
        }
        if let Some(up) = &self.settings.upstream {
            let wanted = now + ttl;
            if up.not_after() < wanted {
                tracing::error!(
                    ca = %id,
                    upstream_not_after = x509::unix_seconds(up.not_after()),
                    "the upstream root expires before a full CA lifetime (ca_ttl) from now: this CA is cut short to end with it, and the server cannot sign once the root has expired; replace the upstream root"
                );
            }
        }
        let record = CaRecord {
            id: id.clone(),
            kind: CaKind::X509,
            key_id: id,
            key_manager: self.km.name().to_owned(),
            cert_der: cert.clone(),
            upstream_chain: Vec::new(),
            upstream_roots,
            public_key_der: Vec::new(),
            jwt_kid: String::new(),
            // The moment of issue, not the backdated NotBefore: lifetimes are counted
            // from here, or a short-lived CA would be "half-way" at birth.
            not_before: x509::unix_seconds(now),
            not_after: info.not_after,
            status,
            created_at: x509::unix_seconds(now),
        };
        if let Err(e) = self.ds.put_ca_record(&record).await {
            self.discard_key(&record.key_id).await;
            return Err(e.into());
        }
        let mut st = self.write_state();
        st.x509.push(X509Slot {
            record: record.clone(),
            issuer: Some(issuer),
        });
        Ok(record)
    }

    async fn new_jwt(&self, status: CaStatus) -> Result<CaRecord, CaError> {
        let now = x509::unix_seconds(SystemTime::now());
        let id = format!("jwt-key-{now}-{}", short_id());
        let key = self
            .generate_key(id.clone(), self.settings.jwt_key_type)
            .await?;
        let kid = {
            use base64::Engine;
            let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_der());
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
        };
        let td = self.settings.trust_domain.clone();
        let (probe_key, probe_kid) = (key.clone(), kid.clone());
        let probed = tokio::task::spawn_blocking(move || probe_jwt(&td, &probe_kid, &probe_key))
            .await
            .map_err(|e| CaError::Internal(e.to_string()))
            .and_then(|r| r);
        match probed {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                self.discard_key(&id).await;
                return Err(CaError::ChainCheck {
                    kind: "JWT",
                    authority: id,
                    reason,
                });
            }
            Err(e) => {
                self.discard_key(&id).await;
                return Err(e);
            }
        }
        let record = CaRecord {
            id: id.clone(),
            kind: CaKind::Jwt,
            key_id: id,
            key_manager: self.km.name().to_owned(),
            cert_der: Vec::new(),
            upstream_chain: Vec::new(),
            upstream_roots: Vec::new(),
            public_key_der: key.public_key_der().to_vec(),
            jwt_kid: kid,
            not_before: now,
            not_after: now + self.settings.ca_ttl.as_secs() as i64,
            status,
            created_at: now,
        };
        if let Err(e) = self.ds.put_ca_record(&record).await {
            self.discard_key(&record.key_id).await;
            return Err(e.into());
        }
        self.write_state().jwt.push(JwtSlot {
            record: record.clone(),
            key: Some(key),
        });
        Ok(record)
    }

    /// The bundle the current authorities make.
    fn compute_bundle(&self) -> Bundle {
        let st = self.read_state();
        let mut x509s: Vec<Vec<u8>> = Vec::new();
        for s in &st.x509 {
            for r in bundle_roots(&s.record) {
                if !x509s.contains(&r) {
                    x509s.push(r);
                }
            }
        }
        let jwts = st
            .jwt
            .iter()
            .map(|s| JwtAuthority {
                key_id: s.record.jwt_kid.clone(),
                public_key_der: s.record.public_key_der.clone(),
                expires_at: s.record.not_after,
            })
            .collect();
        let mut b = Bundle::new(self.settings.trust_domain.clone());
        b.set_x509_authorities(x509s);
        b.set_jwt_authorities(jwts);
        b.set_refresh_hint(self.settings.refresh_hint.as_secs());
        b
    }

    async fn publish(&self) -> Result<(), CaError> {
        let mut next = self.compute_bundle();
        let current = self.bundle_tx.borrow().clone();
        // JWT expiry is not part of the JWK Set; compare what the JWKS carries.
        let same = current.x509_authorities() == next.x509_authorities()
            && current.jwt_authorities().len() == next.jwt_authorities().len()
            && current
                .jwt_authorities()
                .iter()
                .zip(next.jwt_authorities())
                .all(|(a, b)| a.key_id == b.key_id && a.public_key_der == b.public_key_der)
            && current.refresh_hint() == next.refresh_hint();
        if same {
            if current.jwt_authorities() != next.jwt_authorities() {
                // Same keys, expiry learnt from the journal: update in memory only.
                next.set_sequence(current.sequence());
                self.bundle_tx.send_replace(Arc::new(next));
            }
            return Ok(());
        }
        next.set_sequence(current.sequence() + 1);
        self.ds.set_bundle(&next).await?;
        tracing::info!(
            sequence = next.sequence(),
            x509_authorities = next.x509_authorities().len(),
            jwt_authorities = next.jwt_authorities().len(),
            "trust bundle updated"
        );
        self.bundle_tx.send_replace(Arc::new(next));
        Ok(())
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle_tx.borrow().clone()
    }

    /// A receiver that sees every bundle change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle_tx.subscribe()
    }

    /// The active X.509 authority.
    pub fn active_x509(&self) -> Result<ActiveX509, CaError> {
        let st = self.read_state();
        let slot = st
            .x509
            .iter()
            .find(|s| s.record.status == CaStatus::Active && s.issuer.is_some())
            .ok_or(CaError::NoActive("X.509"))?;
        let issuer = slot.issuer.clone().ok_or(CaError::NoActive("X.509"))?;
        let chain_tail = if slot.record.upstream_roots.is_empty() {
            Vec::new()
        } else {
            std::iter::once(slot.record.cert_der.clone())
                .chain(slot.record.upstream_chain.iter().cloned())
                .collect()
        };
        Ok(ActiveX509 {
            id: slot.record.id.clone(),
            issuer,
            chain_tail,
        })
    }

    /// The active JWT key.
    pub fn active_jwt(&self) -> Result<ActiveJwt, CaError> {
        let st = self.read_state();
        let slot = st
            .jwt
            .iter()
            .find(|s| s.record.status == CaStatus::Active && s.key.is_some())
            .ok_or(CaError::NoActive("JWT"))?;
        Ok(ActiveJwt {
            id: slot.record.id.clone(),
            kid: slot.record.jwt_kid.clone(),
            key: slot.key.clone().ok_or(CaError::NoActive("JWT"))?,
            not_after: slot.record.not_after,
        })
    }

    /// Signs an X509-SVID and returns the chain (leaf first). Blocking: call from a
    /// blocking thread (with an HSM each signature waits on the token, and a key
    /// found gone waits for its replacement).
    pub fn sign_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        public_key_der: &[u8],
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        self.sign_with_active(CaKind::X509, || {
            let active = self.active_x509().map_err(|e| (String::new(), e))?;
            let leaf = x509::sign_x509_svid(
                &SvidTemplate {
                    spiffe_id,
                    public_key_der,
                    dns_names,
                    ttl,
                    now: SystemTime::now(),
                },
                &active.issuer,
            )
            .map_err(|e| (active.id.clone(), e.into()))?;
            let mut chain = vec![leaf];
            chain.extend(active.chain_tail);
            Ok(chain)
        })
    }

    /// Mints a JWT-SVID; its expiry never passes the key's. Blocking, like
    /// [`Self::sign_x509_svid`].
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<tessera_core::jwt::JwtSvid, CaError> {
        self.sign_with_active(CaKind::Jwt, || {
            let active = self.active_jwt().map_err(|e| (String::new(), e))?;
            let now = now_unix();
            let exp = (now + ttl.as_secs() as i64).min(active.not_after);
            tessera_core::jwt::sign_jwt_svid(
                spiffe_id,
                audience,
                now,
                exp,
                &active.kid,
                active.key.as_ref(),
            )
            .map_err(|e| (active.id.clone(), e.into()))
        })
    }

    /// Checks that the active authorities can sign right now. Blocking, like
    /// [`Self::sign_x509_svid`].
    pub fn health(&self) -> Result<(), CaError> {
        self.sign_with_active(CaKind::X509, || {
            let active = self.active_x509().map_err(|e| (String::new(), e))?;
            active
                .issuer
                .key()
                .sign_default(b"tessera health probe")
                .map_err(|e| (active.id.clone(), e.into()))
        })?;
        self.sign_with_active(CaKind::Jwt, || {
            let active = self.active_jwt().map_err(|e| (String::new(), e))?;
            active
                .key
                .sign_default(b"tessera health probe")
                .map_err(|e| (active.id.clone(), e.into()))
        })?;
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
            && up.not_after() < SystemTime::now() + self.settings.ca_ttl
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
                tracing::error!("CA rotation failed (will retry): {e}");
            }
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }
}

/// Seconds since the epoch for a `SystemTime`, for callers without `x509` in scope.
pub fn to_unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The roots an X.509 authority puts in the bundle: its own certificate when it is a
/// root, the upstream roots otherwise.
fn bundle_roots(record: &CaRecord) -> Vec<Vec<u8>> {
    if record.upstream_roots.is_empty() {
        vec![record.cert_der.clone()]
    } else {
        record.upstream_roots.clone()
    }
}

/// Signs a throw-away X509-SVID with `issuer` and checks it as relying parties will:
/// through the verifier agents use, against `roots`, and against every CA's path
/// length limit (including the roots', which that verifier does not apply to trust
/// anchors while OpenSSL and Go do).
///
/// A signature that fails is an error of its own (the key store may be down); a chain
/// that does not verify is `Ok(Err(why))`.
fn probe_x509(
    td: &TrustDomain,
    issuer: &Issuer,
    chain_tail: &[Vec<u8>],
    roots: &[Vec<u8>],
) -> Result<Result<(), String>, CaError> {
    let id = td
        .id("/spire/server")
        .map_err(|e| CaError::Internal(format!("probe SPIFFE ID: {e}")))?;
    let subject = tessera_core::key::SoftwareKey::generate(KeyType::EcP256)?;
    let leaf = x509::sign_x509_svid(
        &SvidTemplate {
            spiffe_id: &id,
            public_key_der: subject.public_key_der(),
            dns_names: &[],
            ttl: Duration::from_secs(60),
            now: SystemTime::now(),
        },
        issuer,
    )?;
    let mut chain = vec![leaf];
    chain.extend(chain_tail.iter().cloned());
    let bundle = Bundle::with_x509(td.clone(), roots.to_vec());
    if let Err(e) = x509::verify_svid_chain(&chain, &bundle, SystemTime::now()) {
        return Ok(Err(format!(
            "an X509-SVID it signs does not verify against the bundle: {e}"
        )));
    }
    Ok(check_path_lengths(&chain, roots))
}

/// Checks every CA certificate above the leaf, up to the root that issued the top of
/// `chain`, against its basicConstraints path length limit.
fn check_path_lengths(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let parse = |der: &[u8]| -> Result<(String, Option<u32>, String), String> {
        let (_, c) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
        let limit = c
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|b| b.value.path_len_constraint);
        Ok((c.subject().to_string(), limit, c.issuer().to_string()))
    };
    let mut cas = Vec::new();
    for der in &chain[1..] {
        cas.push(parse(der)?);
    }
    let top_issuer = match cas.last() {
        Some((_, _, issuer)) => issuer.clone(),
        None => parse(&chain[0])?.2,
    };
    // The root that issued the top of the chain (a self-signed CA is its own root
    // and is already in `cas` only when it is also in the chain).
    for r in roots {
        let root = parse(r)?;
        if root.0 == top_issuer && !cas.iter().any(|c| c.0 == root.0) {
            cas.push(root);
            break;
        }
    }
    for (i, (subject, limit, _)) in cas.iter().enumerate() {
        // CA certificates below this one (the leaf does not count).
        let below = i as u32;
        if let Some(max) = limit
            && below > *max
        {
            return Err(format!(
                "{subject} has pathLenConstraint {max} but {below} CA certificate(s) sit below it in the chain; OpenSSL, Go and Java reject such chains"
            ));
        }
    }
    Ok(())
}

/// Signs a throw-away JWT-SVID with `key` and validates it against a bundle holding
/// only that key.
/// Errors like [`probe_x509`]'s.
fn probe_jwt(
    td: &TrustDomain,
    kid: &str,
    key: &Arc<dyn Key>,
) -> Result<Result<(), String>, CaError> {
    let id = td
        .id("/spire/server")
        .map_err(|e| CaError::Internal(format!("probe SPIFFE ID: {e}")))?;
    let now = now_unix();
    let aud = vec!["tessera-probe".to_owned()];
    let svid = tessera_core::jwt::sign_jwt_svid(&id, &aud, now, now + 60, kid, key.as_ref())?;
    let mut bundle = Bundle::new(td.clone());
    bundle.set_jwt_authorities(vec![JwtAuthority {
        key_id: kid.to_owned(),
        public_key_der: key.public_key_der().to_vec(),
        expires_at: now + 60,
    }]);
    Ok(
        tessera_core::jwt::validate_jwt_svid(&svid.token, |_| Some(&bundle), &aud, now)
            .map(|_| ())
            .map_err(|e| format!("a JWT-SVID it signs does not validate: {e}")),
    )
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use tessera_core::key::{MemoryKeyManager, SignatureScheme, SoftwareKey};

    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;

    /// What the test key store does when asked for a key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        None,
        /// The key objects are gone (deleted from the token).
        Deleted,
        /// The token does not answer.
        Outage,
    }

    /// A key manager whose keys can be deleted behind the server's back or made
    /// unreachable, as a token's can.
    #[derive(Debug, Default)]
    struct FaultyKm {
        keys: Mutex<BTreeMap<String, Arc<SoftwareKey>>>,
        faults: Mutex<BTreeMap<String, Fault>>,
        outage: Mutex<bool>,
        /// Keys made from now on sign wrongly (a token with a broken mechanism).
        broken_new_keys: Mutex<bool>,
        broken: Mutex<std::collections::BTreeSet<String>>,
    }

    impl FaultyKm {
        fn fault(&self, id: &str) -> Fault {
            if *self.outage.lock().unwrap() {
                return Fault::Outage;
            }
            *self.faults.lock().unwrap().get(id).unwrap_or(&Fault::None)
        }
        fn delete_behind_the_back(&self, id: &str) {
            self.faults
                .lock()
                .unwrap()
                .insert(id.to_owned(), Fault::Deleted);
            self.keys.lock().unwrap().remove(id);
        }
        fn set_outage(&self, on: bool) {
            *self.outage.lock().unwrap() = on;
        }
    }

    #[derive(Debug)]
    struct FaultyKey {
        id: String,
        inner: Arc<SoftwareKey>,
        km: Arc<FaultyKm>,
    }

    impl Key for FaultyKey {
        fn key_type(&self) -> KeyType {
            self.inner.key_type()
        }
        fn public_key_der(&self) -> &[u8] {
            self.inner.public_key_der()
        }
        fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
            match self.km.fault(&self.id) {
                Fault::None if self.km.broken.lock().unwrap().contains(&self.id) => {
                    // A well-formed signature over other bytes.
                    self.inner.sign(scheme, &[message, b"!"].concat())
                }
                Fault::None => self.inner.sign(scheme, message),
                Fault::Deleted => Err(KeyError::NotFound(self.id.clone())),
                Fault::Outage => Err(KeyError::Unavailable("token removed".into())),
            }
        }
    }

    #[derive(Debug, Clone)]
    struct FaultyKmHandle(Arc<FaultyKm>);

    impl KeyManager for FaultyKmHandle {
        fn name(&self) -> &'static str {
            "pkcs11"
        }
        fn generate_key(&self, id: &str, kt: KeyType) -> Result<Arc<dyn Key>, KeyError> {
            if *self.0.outage.lock().unwrap() {
                return Err(KeyError::Unavailable("token removed".into()));
            }
            let k = Arc::new(SoftwareKey::generate(kt)?);
            if *self.0.broken_new_keys.lock().unwrap() {
                self.0.broken.lock().unwrap().insert(id.to_owned());
            }
            self.0.keys.lock().unwrap().insert(id.to_owned(), k.clone());
            self.0.faults.lock().unwrap().remove(id);
            Ok(Arc::new(FaultyKey {
                id: id.to_owned(),
                inner: k,
                km: self.0.clone(),
            }))
        }
        fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
            if *self.0.outage.lock().unwrap() {
                return Err(KeyError::Unavailable("token removed".into()));
            }
            Ok(self.0.keys.lock().unwrap().get(id).map(|k| {
                Arc::new(FaultyKey {
                    id: id.to_owned(),
                    inner: k.clone(),
                    km: self.0.clone(),
                }) as Arc<dyn Key>
            }))
        }
        fn list_keys(&self) -> Result<Vec<String>, KeyError> {
            Ok(self.0.keys.lock().unwrap().keys().cloned().collect())
        }
        fn delete_key(&self, id: &str) -> Result<(), KeyError> {
            self.0.keys.lock().unwrap().remove(id);
            Ok(())
        }
    }

    fn settings(ttl: Duration) -> CaSettings {
        CaSettings {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            ca_ttl: ttl,
            ca_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            refresh_hint: Duration::from_secs(60),
            upstream: None,
        }
    }

    fn datastore(dir: &tempfile::TempDir) -> Arc<dyn Datastore> {
        Arc::new(SqliteDatastore::open(&dir.path().join("ds.sqlite3")).unwrap())
    }

    async fn records(ds: &Arc<dyn Datastore>, kind: CaKind) -> Vec<CaRecord> {
        let mut r: Vec<CaRecord> = ds
            .list_ca_records()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect();
        r.sort_by_key(|r| r.created_at);
        r
    }

    fn workload_id() -> SpiffeId {
        "spiffe://example.org/workload".parse().unwrap()
    }

    /// Signs an SVID on a blocking thread (as the server does) and checks it against
    /// the CA's current bundle.
    async fn sign_and_verify(ca: &Arc<CaManager>) -> Result<String, CaError> {
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let spki = key.public_key_der().to_vec();
        let c = ca.clone();
        let chain = tokio::task::spawn_blocking(move || {
            c.sign_x509_svid(&workload_id(), &spki, &[], Duration::from_secs(60))
        })
        .await
        .unwrap()?;
        let id = x509::verify_svid_chain(&chain, &ca.bundle(), SystemTime::now())
            .expect("an SVID signed after the event verifies against the bundle");
        assert_eq!(id, workload_id());
        Ok(x509::cert_info(&chain[0]).unwrap().issuer)
    }

    async fn jwt_validates(ca: &Arc<CaManager>) {
        let c = ca.clone();
        let svid = tokio::task::spawn_blocking(move || {
            c.sign_jwt_svid(&workload_id(), &["db".to_owned()], Duration::from_secs(60))
        })
        .await
        .unwrap()
        .unwrap();
        let bundle = ca.bundle();
        tessera_core::jwt::validate_jwt_svid(
            &svid.token,
            |_| Some(bundle.clone()),
            &["db".to_owned()],
            now_unix(),
        )
        .expect("a JWT-SVID minted after the event validates against the bundle");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_of_the_memory_key_manager_retires_the_keyless_authorities() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let first = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(MemoryKeyManager::new()),
            ds.clone(),
        )
        .await
        .unwrap();
        let old_issuer = sign_and_verify(&first).await.unwrap();
        let old_kid = first.active_jwt().unwrap().kid;
        let old_ids = [
            first.active_x509().unwrap().id,
            first.active_jwt().unwrap().id,
        ];
        drop(first);

        // The keys died with the process: the restarted server must sign at once.
        let second = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(MemoryKeyManager::new()),
            ds.clone(),
        )
        .await
        .unwrap();
        let new_issuer = sign_and_verify(&second).await.unwrap();
        assert_ne!(new_issuer, old_issuer, "signed by the keyless CA");
        jwt_validates(&second).await;
        assert_ne!(second.active_jwt().unwrap().kid, old_kid);

        for (kind, old) in [CaKind::X509, CaKind::Jwt].into_iter().zip(&old_ids) {
            let r = records(&ds, kind).await;
            assert_eq!(r.len(), 2, "{r:?}");
            for rec in r {
                let want = if &rec.id == old {
                    CaStatus::Retired
                } else {
                    CaStatus::Active
                };
                assert_eq!(rec.status, want, "{}", rec.id);
            }
        }
        // The retired authorities stay published: what they signed is still valid.
        let bundle = second.bundle();
        assert_eq!(bundle.x509_authorities().len(), 2);
        assert!(bundle.jwt_authorities().iter().any(|a| a.key_id == old_kid));
        second.health().unwrap();

        // A third start changes nothing more.
        let third = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(MemoryKeyManager::new()),
            ds.clone(),
        )
        .await
        .unwrap();
        let r = records(&ds, CaKind::X509).await;
        assert_eq!(
            r.iter().filter(|r| r.status == CaStatus::Retired).count(),
            2
        );
        assert_eq!(r.iter().filter(|r| r.status == CaStatus::Active).count(), 1);
        sign_and_verify(&third).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_deleted_while_running_is_replaced_and_the_signature_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(FaultyKm::default());
        let ca = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(FaultyKmHandle(km.clone())),
            ds.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(ca.clone().run());
        let before = sign_and_verify(&ca).await.unwrap();
        let x509_key = ca.active_x509().unwrap().id;
        let jwt_key = ca.active_jwt().unwrap().id;

        km.delete_behind_the_back(&x509_key);
        km.delete_behind_the_back(&jwt_key);
        // The very call that finds the key gone gets its SVID, from a new CA.
        let after = sign_and_verify(&ca).await.unwrap();
        assert_ne!(after, before);
        jwt_validates(&ca).await;
        let status_of = |r: &[CaRecord], id: &str| r.iter().find(|r| r.id == id).map(|r| r.status);
        let r = records(&ds, CaKind::X509).await;
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(status_of(&r, &x509_key), Some(CaStatus::Retired));
        assert_eq!(r.iter().filter(|r| r.status == CaStatus::Active).count(), 1);
        let r = records(&ds, CaKind::Jwt).await;
        assert_eq!(status_of(&r, &jwt_key), Some(CaStatus::Retired));
        assert_eq!(ca.bundle().x509_authorities().len(), 2);
        ca.health().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_outage_never_replaces_an_authority() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(FaultyKm::default());
        let ca = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(FaultyKmHandle(km.clone())),
            ds.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(ca.clone().run());
        sign_and_verify(&ca).await.unwrap();
        let journal = ds.list_ca_records().await.unwrap();

        km.set_outage(true);
        let err = sign_and_verify(&ca).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            matches!(
                err,
                CaError::Build(BuildError::Key(KeyError::Unavailable(_)))
            ),
            "{err:?}"
        );
        ca.rotate().await.unwrap();
        assert!(ca.health().unwrap_err().is_unavailable());
        // A restart during the outage refuses to start rather than replace anything.
        let restart = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(FaultyKmHandle(km.clone())),
            ds.clone(),
        )
        .await
        .unwrap_err();
        assert!(restart.is_unavailable(), "{restart}");
        assert_eq!(
            ds.list_ca_records().await.unwrap(),
            journal,
            "the journal changed"
        );

        km.set_outage(false);
        sign_and_verify(&ca).await.unwrap();
        assert_eq!(ds.list_ca_records().await.unwrap(), journal);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_key_hands_over_to_the_prepared_authority() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(FaultyKm::default());
        let ca = CaManager::start(
            settings(Duration::from_secs(12)),
            Arc::new(FaultyKmHandle(km.clone())),
            ds.clone(),
        )
        .await
        .unwrap();
        // Half-way through its life the next CA is prepared (and published).
        tokio::time::sleep(Duration::from_secs(6)).await;
        ca.rotate().await.unwrap();
        let r = records(&ds, CaKind::X509).await;
        assert_eq!(r.len(), 2, "{r:?}");
        let prepared = r
            .iter()
            .find(|r| r.status == CaStatus::Prepared)
            .cloned()
            .unwrap();
        let active = ca.active_x509().unwrap().id;
        tokio::spawn(ca.clone().run());

        km.delete_behind_the_back(&active);
        sign_and_verify(&ca).await.unwrap();
        assert_eq!(
            ca.active_x509().unwrap().id,
            prepared.id,
            "not the one agents know"
        );
        let r = records(&ds, CaKind::X509).await;
        assert_eq!(
            r.len(),
            2,
            "a new CA was made while one was prepared: {r:?}"
        );
        assert_eq!(
            r.iter().find(|r| r.id == active).map(|r| r.status),
            Some(CaStatus::Retired)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_key_under_the_same_name_is_a_lost_key() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(FaultyKm::default());
        let handle = FaultyKmHandle(km.clone());
        let ca = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(handle.clone()),
            ds.clone(),
        )
        .await
        .unwrap();
        let id = ca.active_x509().unwrap().id;
        drop(ca);
        handle.generate_key(&id, KeyType::EcP256).unwrap();
        let ca = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(handle),
            ds.clone(),
        )
        .await
        .unwrap();
        assert_ne!(ca.active_x509().unwrap().id, id);
        let r = records(&ds, CaKind::X509).await;
        assert_eq!(
            r.iter().find(|r| r.id == id).map(|r| r.status),
            Some(CaStatus::Retired)
        );
        sign_and_verify(&ca).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_key_manager_is_refused_not_retired() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(FaultyKm::default());
        drop(
            CaManager::start(
                settings(Duration::from_secs(3600)),
                Arc::new(FaultyKmHandle(km)),
                ds.clone(),
            )
            .await
            .unwrap(),
        );
        let journal = ds.list_ca_records().await.unwrap();
        let err = CaManager::start(
            settings(Duration::from_secs(3600)),
            Arc::new(MemoryKeyManager::new()),
            ds.clone(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CaError::KeyManagerChanged { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("set [key_manager] back to \"pkcs11\""),
            "{err}"
        );
        assert_eq!(
            ds.list_ca_records().await.unwrap(),
            journal,
            "the journal changed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retired_authorities_go_when_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let first = CaManager::start(
            settings(Duration::from_secs(10)),
            Arc::new(MemoryKeyManager::new()),
            ds.clone(),
        )
        .await
        .unwrap();
        let old = first.active_x509().unwrap().id;
        drop(first);
        let second = CaManager::start(
            settings(Duration::from_secs(10)),
            Arc::new(MemoryKeyManager::new()),
            ds.clone(),
        )
        .await
        .unwrap();
        assert_eq!(second.bundle().x509_authorities().len(), 2);
        tokio::time::sleep(Duration::from_secs(11)).await;
        second.rotate().await.unwrap();
        assert!(
            !ds.list_ca_records()
                .await
                .unwrap()
                .iter()
                .any(|r| r.id == old),
            "the expired retired record stayed"
        );
        assert!(
            !second
                .bundle()
                .x509_authorities()
                .iter()
                .any(|c| x509::cert_info(c).unwrap().subject.contains(&old))
        );
    }

    /// An upstream root made with rcgen, with a SPIFFE ID and the given constraints.
    fn upstream_root(path_len: Option<u8>) -> Arc<Issuer> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(match path_len {
            Some(n) => rcgen::BasicConstraints::Constrained(n),
            None => rcgen::BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org".try_into().unwrap(),
        )];
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test upstream root");
        let cert = p.self_signed(&kp).unwrap();
        let key = SoftwareKey::from_pkcs8(&kp.serialize_der()).unwrap();
        Arc::new(Issuer::new(cert.der().to_vec(), Arc::new(key)).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ca_whose_chain_does_not_verify_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(MemoryKeyManager::new());
        let mut s = settings(Duration::from_secs(3600));
        s.upstream = Some(upstream_root(Some(0)));
        let err = CaManager::start(s, km.clone(), ds.clone())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CaError::ChainCheck { .. }), "{err:?}");
        assert!(msg.contains("pathLenConstraint 0"), "{msg}");
        assert!(
            records(&ds, CaKind::X509).await.is_empty(),
            "an unusable CA was stored"
        );
        assert!(
            !km.list_keys()
                .unwrap()
                .iter()
                .any(|k| k.starts_with("x509-")),
            "its key was left behind"
        );

        // pathLen 1 and unconstrained roots are fine, and the chain verifies.
        for path_len in [Some(1), None] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = settings(Duration::from_secs(3600));
            s.upstream = Some(upstream_root(path_len));
            let ca = CaManager::start(s, Arc::new(MemoryKeyManager::new()), datastore(&dir))
                .await
                .unwrap();
            sign_and_verify(&ca).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_a_rotation_an_unusable_new_authority_is_dropped_and_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let ds = datastore(&dir);
        let km = Arc::new(FaultyKm::default());
        let ca = CaManager::start(
            settings(Duration::from_secs(12)),
            Arc::new(FaultyKmHandle(km.clone())),
            ds.clone(),
        )
        .await
        .unwrap();
        let journal = ds.list_ca_records().await.unwrap();
        let active = ca.active_x509().unwrap().id;
        *km.broken_new_keys.lock().unwrap() = true;
        // Half-way: the next authorities would be prepared, but their probes fail.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let err = ca.rotate().await.unwrap_err();
        assert!(matches!(err, CaError::ChainCheck { .. }), "{err:?}");
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert_eq!(
            ds.list_ca_records().await.unwrap(),
            journal,
            "an unusable CA was stored"
        );
        assert_eq!(
            km.keys.lock().unwrap().len(),
            2,
            "the unusable key was left in the key store"
        );
        // The current authorities keep signing, and what they sign verifies.
        assert_eq!(ca.active_x509().unwrap().id, active);
        sign_and_verify(&ca).await.unwrap();
        jwt_validates(&ca).await;
        // A broken key store at start: the server does not start.
        let dir2 = tempfile::tempdir().unwrap();
        let err = CaManager::start(
            settings(Duration::from_secs(12)),
            Arc::new(FaultyKmHandle(km.clone())),
            datastore(&dir2),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CaError::ChainCheck { .. }), "{err:?}");
    }

    #[test]
    fn path_lengths_are_checked_up_to_the_root() {
        let root = upstream_root(Some(0));
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let inter = x509::intermediate_ca(
            &td,
            "inter",
            key.public_key_der(),
            now,
            now + Duration::from_secs(600),
            &root,
        )
        .unwrap();
        let issuer = Issuer::new(inter.clone(), key).unwrap();
        let verdict = probe_x509(&td, &issuer, &[inter], &[root.cert_der().to_vec()]).unwrap();
        let why = verdict.unwrap_err();
        assert!(why.contains("pathLenConstraint 0"), "{why}");
        // A self-signed root with pathLen 0 may sign leaves directly.
        let self_root = upstream_root(Some(0));
        assert_eq!(
            probe_x509(&td, &self_root, &[], &[self_root.cert_der().to_vec()]).unwrap(),
            Ok(())
        );
    }
}
