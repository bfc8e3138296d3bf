//! The CA manager: the X.509 signing CA and the JWT signing key, their rotation, and
//! the trust bundle they make.
//!
//! Each authority goes through three states, as in SPIRE: *prepared* at half of the
//! active one's life (published in the bundle so that every agent learns it before it
//! signs anything), *active* when a sixth of the active one's life is left, then *old*
//! (still published) until it expires. A key is destroyed only once its authority has
//! expired, which is after every certificate or token it signed has expired, because
//! those never outlive their issuer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_core::key::{Key, KeyError, KeyManager, KeyType};
use tessera_core::x509::{self, BuildError, Issuer, SvidTemplate};
use tessera_core::{Bundle, JwtAuthority, SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::datastore::{CaKind, CaRecord, CaStatus, Datastore, DatastoreError};

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
}

/// The active X.509 authority, ready to sign.
#[derive(Debug, Clone)]
pub struct ActiveX509 {
    pub issuer: Arc<Issuer>,
    /// What follows the leaf in an SVID chain: the CA certificate itself when it is
    /// an intermediate under an upstream root, nothing for a self-signed root (it is
    /// in the bundle).
    pub chain_tail: Vec<Vec<u8>>,
}

/// The active JWT key.
#[derive(Debug, Clone)]
pub struct ActiveJwt {
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
        });
        ca.load().await?;
        ca.rotate().await?;
        Ok(ca)
    }

    async fn load(&self) -> Result<(), CaError> {
        let records = self.ds.list_ca_records().await?;
        let now = now_unix();
        let mut state = State::default();
        for record in records {
            if record.not_after <= now {
                continue;
            }
            let key = self.find_key(&record).await?;
            match record.kind {
                CaKind::X509 => {
                    let issuer = match key {
                        Some(k) => match Issuer::new(record.cert_der.clone(), k) {
                            Ok(i) => Some(Arc::new(i)),
                            Err(e) => {
                                tracing::warn!(ca = %record.id, "CA key does not match its certificate: {e}");
                                None
                            }
                        },
                        None => None,
                    };
                    state.x509.push(X509Slot { record, issuer });
                }
                CaKind::Jwt => state.jwt.push(JwtSlot { record, key }),
            }
        }
        state.x509.sort_by_key(|s| s.record.not_before);
        state.jwt.sort_by_key(|s| s.record.not_before);
        *self.write_state() = state;
        Ok(())
    }

    /// The key of a journal record. A key that is gone leaves the authority in the
    /// bundle but unable to sign; a key store that cannot answer stops the start, so
    /// that a token outage never makes the server replace its CA.
    async fn find_key(&self, record: &CaRecord) -> Result<Option<Arc<dyn Key>>, CaError> {
        if record.key_manager != self.km.name() {
            tracing::warn!(
                ca = %record.id,
                "authority was made with key manager {:?}, now {:?}: it stays in the bundle but cannot sign",
                record.key_manager,
                self.km.name()
            );
            return Ok(None);
        }
        let km = self.km.clone();
        let id = record.key_id.clone();
        match tokio::task::spawn_blocking(move || km.get_key(&id))
            .await
            .map_err(|e| CaError::Internal(e.to_string()))?
        {
            Ok(Some(k)) => Ok(Some(k)),
            Ok(None) => {
                tracing::warn!(ca = %record.id, key = %record.key_id, "CA key is gone from the key manager; the authority cannot sign");
                Ok(None)
            }
            Err(KeyError::Corrupt { id, reason }) => {
                tracing::warn!(ca = %record.id, "CA key {id} is unreadable ({reason}); the authority cannot sign");
                Ok(None)
            }
            Err(e) => Err(CaError::Key(e)),
        }
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
        self.rotate_x509(now).await?;
        self.rotate_jwt(now).await?;
        self.publish().await
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
        let record = {
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
            found.ok_or_else(|| CaError::Internal(format!("authority {id} vanished")))?
        };
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
        let cert = tokio::task::spawn_blocking(move || match &upstream {
            Some(up) => x509::intermediate_ca(&td, &cn, k.public_key_der(), now, now + ttl, up),
            None => x509::self_signed_ca(&td, &cn, &k, now, now + ttl),
        })
        .await
        .map_err(|e| CaError::Internal(e.to_string()))??;
        let upstream_roots = self
            .settings
            .upstream
            .as_ref()
            .map(|u| vec![u.cert_der().to_vec()])
            .unwrap_or_default();
        let info = x509::cert_info(&cert).map_err(|e| CaError::Internal(e.to_string()))?;
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
        self.ds.put_ca_record(&record).await?;
        let issuer = Arc::new(Issuer::new(cert, key)?);
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
        self.ds.put_ca_record(&record).await?;
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
            let roots = if s.record.upstream_roots.is_empty() {
                vec![s.record.cert_der.clone()]
            } else {
                s.record.upstream_roots.clone()
            };
            for r in roots {
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
            .find(|s| s.record.status == CaStatus::Active)
            .ok_or(CaError::NoActive("X.509"))?;
        let issuer = slot.issuer.clone().ok_or(CaError::NoActive("X.509"))?;
        let chain_tail = if slot.record.upstream_roots.is_empty() {
            Vec::new()
        } else {
            std::iter::once(slot.record.cert_der.clone())
                .chain(slot.record.upstream_chain.iter().cloned())
                .collect()
        };
        Ok(ActiveX509 { issuer, chain_tail })
    }

    /// The active JWT key.
    pub fn active_jwt(&self) -> Result<ActiveJwt, CaError> {
        let st = self.read_state();
        let slot = st
            .jwt
            .iter()
            .find(|s| s.record.status == CaStatus::Active)
            .ok_or(CaError::NoActive("JWT"))?;
        Ok(ActiveJwt {
            kid: slot.record.jwt_kid.clone(),
            key: slot.key.clone().ok_or(CaError::NoActive("JWT"))?,
            not_after: slot.record.not_after,
        })
    }

    /// Signs an X509-SVID and returns the chain (leaf first). Blocking: call from a
    /// blocking thread when the key may be in hardware.
    pub fn sign_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        public_key_der: &[u8],
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        let active = self.active_x509()?;
        let leaf = x509::sign_x509_svid(
            &SvidTemplate {
                spiffe_id,
                public_key_der,
                dns_names,
                ttl,
                now: SystemTime::now(),
            },
            &active.issuer,
        )?;
        let mut chain = vec![leaf];
        chain.extend(active.chain_tail);
        Ok(chain)
    }

    /// Mints a JWT-SVID; its expiry never passes the key's. Blocking, like
    /// [`Self::sign_x509_svid`].
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<tessera_core::jwt::JwtSvid, CaError> {
        let active = self.active_jwt()?;
        let now = now_unix();
        let exp = (now + ttl.as_secs() as i64).min(active.not_after);
        Ok(tessera_core::jwt::sign_jwt_svid(
            spiffe_id,
            audience,
            now,
            exp,
            &active.kid,
            active.key.as_ref(),
        )?)
    }

    /// Checks that the active authorities can sign right now.
    pub fn health(&self) -> Result<(), CaError> {
        let active = self.active_x509()?;
        active.issuer.key().sign_default(b"tessera health probe")?;
        let jwt = self.active_jwt()?;
        jwt.key.sign_default(b"tessera health probe")?;
        Ok(())
    }

    /// How often the rotation task should look at lifetimes.
    pub fn tick(&self) -> Duration {
        (self.settings.ca_ttl / 120).clamp(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// Runs rotation until the process stops.
    pub async fn run(self: Arc<Self>) {
        let tick = self.tick();
        loop {
            tokio::time::sleep(tick).await;
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
