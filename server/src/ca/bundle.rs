//! The trust bundle the authorities make: every X.509 root and JWT key still in the
//! journal and not expired (prepared, active, old and retired alike, since what they
//! signed may still be in use), of every server sharing the datastore, and its
//! publication to the datastore and to subscribers.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::{Bundle, JwtAuthority, TrustDomain};

use super::{CaError, CaManager};
use crate::datastore::{CaKind, CaRecord};

/// The roots an X.509 authority puts in the bundle: its own certificate when it is a
/// root, the upstream roots otherwise.
pub(super) fn bundle_roots(record: &CaRecord) -> Vec<Vec<u8>> {
    if record.upstream_roots.is_empty() {
        vec![record.cert_der.clone()]
    } else {
        record.upstream_roots.clone()
    }
}

/// The bundle of `trust_domain` made by these authorities (an upstream root shared by
/// several CAs appears once).
pub(super) fn compute<'a>(
    trust_domain: &TrustDomain,
    refresh_hint: Duration,
    x509: impl Iterator<Item = &'a CaRecord>,
    jwt: impl Iterator<Item = &'a CaRecord>,
) -> Bundle {
    let mut x509s: Vec<Vec<u8>> = Vec::new();
    for r in x509.flat_map(bundle_roots) {
        if !x509s.contains(&r) {
            x509s.push(r);
        }
    }
    let jwts = jwt
        .map(|r| JwtAuthority {
            key_id: r.jwt_kid.clone(),
            public_key_der: r.public_key_der.clone(),
            expires_at: r.not_after,
        })
        .collect();
    let mut b = Bundle::new(trust_domain.clone());
    b.set_x509_authorities(x509s);
    b.set_jwt_authorities(jwts);
    b.set_refresh_hint(refresh_hint.as_secs());
    b
}

/// Whether two bundles publish the same thing: JWT expiry is not part of the JWK
/// Set, so it does not count.
pub(super) fn publishes_the_same(a: &Bundle, b: &Bundle) -> bool {
    a.x509_authorities() == b.x509_authorities()
        && a.jwt_authorities().len() == b.jwt_authorities().len()
        && a.jwt_authorities()
            .iter()
            .zip(b.jwt_authorities())
            .all(|(x, y)| x.key_id == y.key_id && x.public_key_der == y.public_key_der)
        && a.refresh_hint() == b.refresh_hint()
}

/// The bundle to store, given the whole journal and the stored bundle at `now`:
/// `None` when the stored one already publishes the same.
fn composed(
    trust_domain: &TrustDomain,
    refresh_hint: Duration,
    records: &[CaRecord],
    stored: Option<&Bundle>,
    now: i64,
) -> Option<Bundle> {
    let live = || records.iter().filter(|r| r.not_after > now);
    let mut next = compute(
        trust_domain,
        refresh_hint,
        live().filter(|r| r.kind == CaKind::X509),
        live().filter(|r| r.kind == CaKind::Jwt),
    );
    match stored {
        Some(s) if publishes_the_same(s, &next) => None,
        _ => {
            next.set_sequence(stored.map_or(0, Bundle::sequence) + 1);
            Some(next)
        }
    }
}

impl CaManager {
    /// Stores and announces the bundle when what it publishes changed (with the next
    /// sequence number): the union of every server's live authorities, composed from
    /// the journal in one transaction. Nothing is written when this server's
    /// authorities did not change and the bundle held has nothing expired.
    pub(super) async fn publish(&self) -> Result<(), CaError> {
        let now = self.clock.unix();
        let due = {
            let st = self.read_state();
            st.dirty || holds_expired(&self.bundle(), st.all_records(), now)
        };
        if !due {
            return Ok(());
        }
        let td = self.settings.trust_domain.clone();
        let hint = self.settings.refresh_hint;
        let compose_td = td.clone();
        let stored = self
            .ds
            .compose_bundle(
                &td,
                Arc::new(move |records, stored| composed(&compose_td, hint, records, stored, now)),
            )
            .await?;
        self.write_state().dirty = false;
        if let Some(b) = stored {
            self.take_up(b);
        }
        Ok(())
    }

    /// Makes `stored` (the shared bundle as the datastore holds it) the bundle this
    /// server serves, when it is newer than the one it has.
    fn take_up(&self, stored: Bundle) {
        let current = self.bundle();
        if stored.sequence() == current.sequence() && stored == *current {
            return;
        }
        if stored.sequence() != current.sequence() {
            tracing::info!(
                sequence = stored.sequence(),
                x509_authorities = stored.x509_authorities().len(),
                jwt_authorities = stored.jwt_authorities().len(),
                "trust bundle updated"
            );
        }
        self.bundle_tx.send_replace(Arc::new(stored));
    }

    /// Takes up what other servers changed: when the shared bundle's sequence moved,
    /// the stored bundle and the other servers' records; and composes again when the
    /// bundle still publishes an authority that has expired (its server may be gone).
    pub(super) async fn follow(&self) -> Result<(), CaError> {
        let stored = self.ds.get_bundle(&self.settings.trust_domain).await?;
        if let Some(b) = stored
            && b.sequence() != self.bundle().sequence()
        {
            self.take_up(b);
            self.reload_others().await?;
        }
        let now = self.clock.unix();
        let expired = {
            let st = self.read_state();
            holds_expired(&self.bundle(), st.all_records(), now)
        };
        if expired {
            self.publish().await?;
        }
        Ok(())
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle_tx.borrow().clone()
    }

    /// A receiver that sees every bundle change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Bundle>> {
        self.bundle_tx.subscribe()
    }
}

/// Whether `bundle` publishes an authority of `records` that has expired at `now`
/// (a root shared with a live authority does not count).
fn holds_expired<'a>(
    bundle: &Bundle,
    records: impl Iterator<Item = &'a CaRecord>,
    now: i64,
) -> bool {
    let (expired, live): (Vec<&CaRecord>, Vec<&CaRecord>) =
        records.partition(|r| r.not_after <= now);
    let live_roots: Vec<Vec<u8>> = live
        .iter()
        .filter(|r| r.kind == CaKind::X509)
        .flat_map(|r| bundle_roots(r))
        .collect();
    expired.iter().any(|r| match r.kind {
        CaKind::X509 => bundle_roots(r)
            .iter()
            .any(|root| bundle.x509_authorities().contains(root) && !live_roots.contains(root)),
        CaKind::Jwt => bundle
            .jwt_authorities()
            .iter()
            .any(|a| a.key_id == r.jwt_kid),
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;
    use crate::datastore::{CaKind, CaStatus};

    fn record(kind: CaKind, id: &str, cert: &[u8], roots: Vec<Vec<u8>>) -> CaRecord {
        CaRecord {
            id: id.into(),
            kind,
            key_id: id.into(),
            key_manager: "memory".into(),
            cert_der: cert.to_vec(),
            upstream_chain: vec![],
            upstream_roots: roots,
            public_key_der: if kind == CaKind::Jwt {
                id.as_bytes().to_vec()
            } else {
                vec![]
            },
            jwt_kid: format!("kid-{id}"),
            not_before: 100,
            not_after: 200,
            status: CaStatus::Active,
            created_at: 100,
            server_id: "s".into(),
        }
    }

    #[test]
    fn every_authority_is_published_and_a_shared_root_once() {
        let td = TrustDomain::new("example.org").unwrap();
        let x509 = [
            record(CaKind::X509, "a", b"cert-a", vec![]),
            record(CaKind::X509, "b", b"inter-b", vec![b"root".to_vec()]),
            record(CaKind::X509, "c", b"inter-c", vec![b"root".to_vec()]),
        ];
        let jwt = [record(CaKind::Jwt, "j1", b"", vec![])];
        let b = compute(&td, Duration::from_secs(60), x509.iter(), jwt.iter());
        assert_eq!(
            b.x509_authorities(),
            &[b"cert-a".to_vec(), b"root".to_vec()]
        );
        assert_eq!(b.jwt_authorities().len(), 1);
        assert_eq!(b.jwt_authorities()[0].key_id, "kid-j1");
        assert_eq!(b.jwt_authorities()[0].expires_at, 200);
        assert_eq!(b.refresh_hint(), 60);

        let mut later = jwt[0].clone();
        later.not_after = 300;
        let c = compute(
            &td,
            Duration::from_secs(60),
            x509.iter(),
            std::iter::once(&later),
        );
        assert!(publishes_the_same(&b, &c), "JWT expiry is not published");
        let fewer = compute(&td, Duration::from_secs(60), x509[..1].iter(), jwt.iter());
        assert!(!publishes_the_same(&b, &fewer));
    }
}
