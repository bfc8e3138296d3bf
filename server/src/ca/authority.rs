//! Making a new authority: its key, its certificate (self-signed, or signed by the
//! upstream root), the probe it must pass, then its journal record. Nothing is kept
//! of an authority that fails on the way: its key is destroyed again.

use std::sync::Arc;

use tessera_core::x509::{self, Issuer};

use super::probe::{probe_jwt, probe_x509};
use super::{CaError, CaManager, JwtSlot, X509Slot};
use crate::datastore::{CaKind, CaRecord, CaStatus};

fn short_id() -> String {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl CaManager {
    /// Makes, checks and stores a new authority of `kind` with `status`.
    pub(super) async fn new_authority(
        &self,
        kind: CaKind,
        status: CaStatus,
    ) -> Result<CaRecord, CaError> {
        match kind {
            CaKind::X509 => self.new_x509(status).await,
            CaKind::Jwt => self.new_jwt(status).await,
        }
    }

    async fn new_x509(&self, status: CaStatus) -> Result<CaRecord, CaError> {
        let now = self.clock.now();
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
        .map_err(CaError::from)
        .and_then(|r| r.map_err(CaError::from))
        .and_then(|cert| {
            let info = x509::cert_info(&cert).map_err(|source| CaError::Record {
                authority: id.clone(),
                source: Box::new(source),
            })?;
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
        let (roots, tail) = if upstream_roots.is_empty() {
            (vec![cert.clone()], Vec::new())
        } else {
            (upstream_roots.clone(), vec![cert.clone()])
        };
        let td = self.settings.trust_domain.clone();
        let probe_issuer = issuer.clone();
        let probed =
            tokio::task::spawn_blocking(move || probe_x509(&td, &probe_issuer, &tail, &roots, now))
                .await
                .map_err(CaError::from)
                .and_then(|r| r);
        match probed {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => {
                self.discard_key(&id).await;
                return Err(CaError::ChainCheck {
                    kind: "X.509",
                    authority: id,
                    source: Box::new(problem),
                });
            }
            Err(e) => {
                self.discard_key(&id).await;
                return Err(e);
            }
        }
        if let Some(up) = &self.settings.upstream
            && up.not_after() < now + ttl
        {
            tracing::error!(
                ca = %id,
                upstream_not_after = x509::unix_seconds(up.not_after()),
                "the upstream root expires before a full CA lifetime (ca_ttl) from now: this CA is cut short to end with it, and the server cannot sign once the root has expired; replace the upstream root"
            );
        }
        let record = CaRecord {
            id: id.clone(),
            kind: CaKind::X509,
            key_id: id,
            key_manager: self.km.name().to_owned(),
            cert_der: cert,
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
            server_id: self.settings.server_id.clone(),
        };
        if let Err(e) = self.ds.put_ca_record(&record).await {
            self.discard_key(&record.key_id).await;
            return Err(e.into());
        }
        {
            let mut st = self.write_state();
            st.dirty = true;
            st.x509.push(X509Slot {
                record: record.clone(),
                issuer: Some(issuer),
            });
        }
        Ok(record)
    }

    async fn new_jwt(&self, status: CaStatus) -> Result<CaRecord, CaError> {
        let now = self.clock.unix();
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
        let probed =
            tokio::task::spawn_blocking(move || probe_jwt(&td, &probe_kid, &probe_key, now))
                .await
                .map_err(CaError::from)
                .and_then(|r| r);
        match probed {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => {
                self.discard_key(&id).await;
                return Err(CaError::ChainCheck {
                    kind: "JWT",
                    authority: id,
                    source: Box::new(problem),
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
            server_id: self.settings.server_id.clone(),
        };
        if let Err(e) = self.ds.put_ca_record(&record).await {
            self.discard_key(&record.key_id).await;
            return Err(e.into());
        }
        {
            let mut st = self.write_state();
            st.dirty = true;
            st.jwt.push(JwtSlot {
                record: record.clone(),
                key: Some(key),
            });
        }
        Ok(record)
    }
}
