//! The trust bundle the authorities make: every X.509 root and JWT key still in the
//! journal (prepared, active, old and retired alike, since what they signed may still
//! be in use), and its publication to the datastore and to subscribers.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::{Bundle, JwtAuthority, TrustDomain};

use super::{CaError, CaManager};
use crate::datastore::CaRecord;

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

impl CaManager {
    /// The bundle the current authorities make.
    fn compute_bundle(&self) -> Bundle {
        let st = self.read_state();
        compute(
            &self.settings.trust_domain,
            self.settings.refresh_hint,
            st.x509.iter().map(|s| &s.record),
            st.jwt.iter().map(|s| &s.record),
        )
    }

    /// Stores and announces the bundle when what it publishes changed (with the next
    /// sequence number).
    pub(super) async fn publish(&self) -> Result<(), CaError> {
        let mut next = self.compute_bundle();
        let current = self.bundle_tx.borrow().clone();
        if publishes_the_same(&current, &next) {
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
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Bundle>> {
        self.bundle_tx.subscribe()
    }
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
