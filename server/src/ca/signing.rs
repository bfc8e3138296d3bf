//! Signing with the active authorities, and the hand-over when a signature finds the
//! active key gone: the signer reports it, the rotation task checks and replaces the
//! authority, and the signer signs once more with the replacement.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::key::Key;
use tessera_core::x509::{self, Issuer, SvidTemplate};
use tessera_core::{SpiffeId, TrustDomain};

use super::bundle::bundle_roots;
use super::probe::probe_x509;
use super::{CaError, CaManager, kind_name};
use crate::datastore::{CaKind, CaStatus};

/// How long a signature that found its key gone waits for the replacement before
/// answering Unavailable.
const LOST_KEY_WAIT: Duration = Duration::from_secs(10);

/// Counts finished rotation steps, so that a signer that reported a lost key can wait
/// for the replacement on its blocking thread.
#[derive(Debug, Default)]
pub(super) struct Steps {
    done: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Steps {
    /// A rotation step finished: waiting signers look again.
    pub(super) fn one_more(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }
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

impl CaManager {
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

    /// Checks, at start, that the active X.509 authority signs SVIDs that verify.
    pub(super) async fn check_active_chains(&self) -> Result<(), CaError> {
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
        let td: TrustDomain = self.settings.trust_domain.clone();
        let id = active.id.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || {
            probe_x509(&td, &active.issuer, &active.chain_tail, &roots, now)
        })
        .await??
        .map_err(|problem| CaError::ChainCheck {
            kind: "X.509",
            authority: id,
            source: Box::new(problem),
        })
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
        let key_err = err.into_gone_key()?;
        let key = self.record(kind, &id).map(|r| r.key_id).unwrap_or_default();
        tracing::error!(authority = %id, key = %key, "signing failed because the key is missing ({key_err}); checking the key and replacing the authority");
        self.report_missing_key(&id);
        if !self.wait_for_replacement(kind, &id) {
            return Err(CaError::KeyLost {
                kind: kind_name(kind),
                authority: id,
                key,
                source: Box::new(key_err),
            });
        }
        sign().map_err(|(_, e)| e)
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
                    now: self.clock.now(),
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
            let now = self.clock.unix();
            let exp = (now + ttl.as_secs() as i64).min(active.not_after);
            tessera_core::jwt::sign_jwt_svid_issued_by(
                spiffe_id,
                audience,
                self.settings.jwt_issuer.as_deref(),
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
}
