//! Rotation on a manual clock: the next authority is prepared at half-life and
//! published, takes over with a sixth of the life left, and the old one is pruned
//! once it has expired, its key destroyed only then (and later, when the key store
//! was down). A clock stepped backwards undoes nothing.

use std::sync::Arc;
use std::time::Duration;

use super::{Setup, jwt_validates, settings, sign_and_verify};
use crate::ca::CaManager;
use crate::datastore::{CaKind, CaRecord, CaStatus};

/// A CA lifetime that divides evenly: prepare at +600, activate at +1000, the first
/// authority expires at +1200.
const LIFE: Duration = Duration::from_secs(1_200);

async fn status(t: &Setup, kind: CaKind, id: &str) -> Option<CaStatus> {
    t.records(kind)
        .await
        .iter()
        .find(|r| r.id == id)
        .map(|r| r.status)
}

/// Whether the bundle publishes the authority.
fn published(ca: &CaManager, r: &CaRecord) -> bool {
    let b = ca.bundle();
    match r.kind {
        CaKind::X509 => b.x509_authorities().contains(&r.cert_der),
        CaKind::Jwt => b.jwt_authorities().iter().any(|a| a.key_id == r.jwt_kid),
    }
}

/// Signs with the active authority of `kind`, checks the result against the bundle,
/// and says which authority signed.
async fn signer(ca: &Arc<CaManager>, kind: CaKind) -> String {
    match kind {
        CaKind::X509 => {
            let issuer = sign_and_verify(ca).await.unwrap();
            let active = ca.active_x509().unwrap().id;
            assert!(issuer.contains(&active), "{issuer} is not {active}");
            active
        }
        CaKind::Jwt => {
            let kid = jwt_validates(ca).await;
            let active = ca.active_jwt().unwrap();
            assert_eq!(kid, active.kid);
            active.id
        }
    }
}

/// The whole life of the first authority of `kind`, step by step.
async fn prepare_activate_prune(kind: CaKind) {
    let t = Setup::new();
    let ca = t.start(settings(LIFE)).await.unwrap();
    let first = t.records(kind).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let a = first[0].clone();
    assert_eq!(a.status, CaStatus::Active);
    assert_eq!(signer(&ca, kind).await, a.id);

    // Not yet half-way: nothing changes.
    t.set(599);
    ca.rotate().await.unwrap();
    assert_eq!(t.records(kind).await, first);

    // Half-way: the next one is prepared and published, but does not sign yet.
    t.set(600);
    ca.rotate().await.unwrap();
    let r = t.records(kind).await;
    assert_eq!(r.len(), 2, "{r:?}");
    let b = r.iter().find(|r| r.id != a.id).cloned().unwrap();
    assert_eq!(b.status, CaStatus::Prepared);
    assert!(
        published(&ca, &b),
        "the prepared authority is not published"
    );
    assert!(published(&ca, &a));
    assert_eq!(signer(&ca, kind).await, a.id);

    // Just before a sixth is left: still the first one signs.
    t.set(999);
    ca.rotate().await.unwrap();
    assert_eq!(status(&t, kind, &b.id).await, Some(CaStatus::Prepared));
    assert_eq!(signer(&ca, kind).await, a.id);

    // A sixth left: the prepared one takes over; the first stays published.
    t.set(1_000);
    ca.rotate().await.unwrap();
    assert_eq!(status(&t, kind, &a.id).await, Some(CaStatus::Old));
    assert_eq!(status(&t, kind, &b.id).await, Some(CaStatus::Active));
    assert_eq!(signer(&ca, kind).await, b.id);
    assert!(
        published(&ca, &a),
        "the old authority left the bundle early"
    );

    // Until it expires, its key is kept: what it signed is still valid.
    t.set(1_199);
    ca.rotate().await.unwrap();
    assert!(t.km.holds(&a.key_id), "the key was destroyed before expiry");
    assert_eq!(status(&t, kind, &a.id).await, Some(CaStatus::Old));

    // Expired: unpublished, key destroyed, record gone.
    t.set(1_200);
    ca.rotate().await.unwrap();
    assert!(!t.km.holds(&a.key_id), "the expired key was kept");
    assert_eq!(status(&t, kind, &a.id).await, None);
    assert!(
        !published(&ca, &a),
        "the expired authority is still published"
    );
    assert_eq!(signer(&ca, kind).await, b.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_ca_is_prepared_at_half_life_activated_with_a_sixth_left_and_pruned_after_expiry() {
    prepare_activate_prune(CaKind::X509).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_key_is_prepared_at_half_life_activated_with_a_sixth_left_and_pruned_after_expiry() {
    prepare_activate_prune(CaKind::Jwt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_destroyed_once_the_key_store_answers_again() {
    let t = Setup::new();
    let ca = t.start(settings(LIFE)).await.unwrap();
    let mut first: Vec<CaRecord> = Vec::new();
    for kind in [CaKind::X509, CaKind::Jwt] {
        first.extend(t.records(kind).await);
    }
    assert_eq!(first.len(), 2);
    for at in [600, 1_000] {
        t.set(at);
        ca.rotate().await.unwrap();
    }

    // The old authorities expire while the token is away.
    t.km.set_outage(true);
    t.set(1_200);
    ca.rotate()
        .await
        .expect_err("the next authorities cannot be prepared during the outage");
    for old in &first {
        assert!(t.km.holds(&old.key_id), "{}: the key vanished", old.id);
        assert!(
            status(&t, old.kind, &old.id).await.is_some(),
            "{}: the record went before its key",
            old.id
        );
        assert!(!published(&ca, old), "{}: still published", old.id);
    }
    // Still down a step later: still kept.
    t.set(1_230);
    let _ = ca.rotate().await;
    assert!(first.iter().all(|old| t.km.holds(&old.key_id)));

    // Back: destroyed, then forgotten; and the next authorities are prepared.
    t.km.set_outage(false);
    t.set(1_260);
    ca.rotate().await.unwrap();
    for old in &first {
        assert!(!t.km.holds(&old.key_id), "{}: the key was kept", old.id);
        assert_eq!(status(&t, old.kind, &old.id).await, None, "{}", old.id);
        let r = t.records(old.kind).await;
        assert_eq!(
            r.iter().filter(|r| r.status == CaStatus::Prepared).count(),
            1,
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_backwards_does_not_undo_a_rotation() {
    let t = Setup::new();
    let ca = t.start(settings(LIFE)).await.unwrap();
    for at in [600, 1_000] {
        t.set(at);
        ca.rotate().await.unwrap();
    }
    let journal = t.ds.list_ca_records().await.unwrap();
    let bundle = ca.bundle();
    let (x509, jwt) = (ca.active_x509().unwrap().id, ca.active_jwt().unwrap().id);

    // Back before the hand-over (but after the new authorities were made).
    t.set(700);
    ca.rotate().await.unwrap();
    assert_eq!(ca.active_x509().unwrap().id, x509);
    assert_eq!(ca.active_jwt().unwrap().id, jwt);
    assert_eq!(signer(&ca, CaKind::X509).await, x509);
    assert_eq!(signer(&ca, CaKind::Jwt).await, jwt);

    // Back before the first authorities were even made.
    t.set(0);
    ca.rotate().await.unwrap();
    assert_eq!(t.ds.list_ca_records().await.unwrap(), journal);
    assert_eq!(ca.bundle().sequence(), bundle.sequence());
    assert_eq!(ca.active_x509().unwrap().id, x509);

    // Forward again: the rotation goes on from where it was.
    t.set(1_200);
    ca.rotate().await.unwrap();
    for kind in [CaKind::X509, CaKind::Jwt] {
        let r = t.records(kind).await;
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            r.iter().filter(|r| r.status == CaStatus::Prepared).count(),
            1
        );
    }
}
