//! Conformance: bundles.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::bundle::JwtAuthority;
use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::{Bundle, TrustDomain};

use super::{Ns, ok};
use crate::datastore::{Datastore, DatastoreError};

pub(super) fn sample_bundle(td: &TrustDomain, sequence: u64) -> Bundle {
    let ca_key: Arc<dyn Key> =
        Arc::new(SoftwareKey::generate(KeyType::EcP256).expect("generate CA key"));
    let start = SystemTime::now();
    let cert = tessera_core::x509::self_signed_ca(
        td,
        "conformance",
        &ca_key,
        start,
        start + Duration::from_secs(3600),
    )
    .expect("self-signed CA");
    let jwt_key = SoftwareKey::generate(KeyType::EcP256).expect("generate JWT key");
    let mut bundle = Bundle::with_x509(td.clone(), vec![cert]);
    bundle.set_jwt_authorities(vec![JwtAuthority {
        key_id: format!("kid-{sequence}"),
        public_key_der: jwt_key.public_key_der().to_vec(),
        expires_at: 1_234 + i64::try_from(sequence).unwrap_or(0),
    }]);
    bundle.set_sequence(sequence);
    bundle.set_refresh_hint(60);
    bundle
}

fn find_bundle<'a>(bundles: &'a [Bundle], td: &TrustDomain) -> Vec<&'a Bundle> {
    bundles.iter().filter(|b| b.trust_domain() == td).collect()
}

/// Bundles are stored whole (authorities, sequence, refresh hint, JWT expiries),
/// replaced per trust domain, listed and deleted.
pub async fn bundles(ds: &dyn Datastore) {
    let ns = Ns::new("bundles");
    let td = ns.td.clone();
    let other = Ns::new("bundles-fed").td;
    assert_eq!(ok(ds.get_bundle(&td).await, "get missing"), None);

    let b1 = sample_bundle(&td, 3);
    ok(ds.set_bundle(&b1).await, "set");
    assert_eq!(
        ok(ds.get_bundle(&td).await, "get"),
        Some(b1.clone()),
        "stored whole"
    );

    let mut b2 = sample_bundle(&td, 4);
    b2.set_refresh_hint(0);
    ok(ds.set_bundle(&b2).await, "replace");
    let got = ok(ds.get_bundle(&td).await, "get").expect("bundle exists");
    assert_eq!(got, b2, "set replaces the trust domain's bundle");
    assert_eq!(got.sequence(), 4, "the sequence is kept");

    let mut fed = Bundle::new(other.clone());
    fed.set_sequence(1);
    ok(ds.set_bundle(&fed).await, "set federated");
    let listed = ok(ds.list_bundles().await, "list");
    assert_eq!(find_bundle(&listed, &td), vec![&b2]);
    assert_eq!(
        find_bundle(&listed, &other),
        vec![&fed],
        "an empty bundle is a bundle"
    );

    ok(ds.delete_bundle(&td).await, "delete");
    assert_eq!(ok(ds.get_bundle(&td).await, "get deleted"), None);
    assert!(find_bundle(&ok(ds.list_bundles().await, "list"), &td).is_empty());
    assert_err!(
        ds.delete_bundle(&td).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    assert_eq!(
        ok(ds.get_bundle(&other).await, "get other"),
        Some(fed.clone())
    );

    // A key the backend cannot keep must be refused, never silently dropped.
    let mut odd = fed.clone();
    odd.set_sequence(2);
    odd.set_jwt_authorities(vec![JwtAuthority {
        key_id: "odd".into(),
        public_key_der: vec![1, 2, 3],
        expires_at: 0,
    }]);
    match ds.set_bundle(&odd).await {
        Err(DatastoreError::Invalid(_)) => {
            assert_eq!(
                ok(ds.get_bundle(&other).await, "get"),
                Some(fed),
                "a refused bundle changes nothing"
            );
        }
        Ok(()) => assert_eq!(
            ok(ds.get_bundle(&other).await, "get"),
            Some(odd),
            "a stored bundle comes back whole"
        ),
        Err(e) => panic!("unstorable bundle: expected Invalid or success, got {e:?}"),
    }
    ok(ds.delete_bundle(&other).await, "delete other");
}
