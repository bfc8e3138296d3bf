//! Several servers on one datastore: each signs only with its own authorities and
//! never touches the others', the shared bundle is the union of all of them, a
//! server joining a signing trust domain waits for its first authorities to be
//! known, and each follows the others' rotations.

use std::sync::Arc;
use std::time::Duration;

use super::{FaultyKm, FaultyKmHandle, Setup, settings, sign_and_verify};
use crate::ca::{CaManager, CaSettings};
use crate::datastore::{CaKind, CaRecord, CaStatus};

const LIFE: Duration = Duration::from_secs(1_200);

fn server(id: &str) -> CaSettings {
    CaSettings {
        server_id: id.into(),
        ..settings(LIFE)
    }
}

/// Starts a server with its own key store on the shared journal.
async fn start(t: &Setup, id: &str, km: &Arc<FaultyKm>) -> Arc<CaManager> {
    t.start_with(server(id), Arc::new(FaultyKmHandle(km.clone())))
        .await
        .unwrap()
}

fn x509_of<'a>(records: &'a [CaRecord], server: &str) -> Vec<&'a CaRecord> {
    records.iter().filter(|r| r.server_id == server).collect()
}

fn publishes(ca: &CaManager, r: &CaRecord) -> bool {
    ca.bundle().x509_authorities().contains(&r.cert_der)
}

#[tokio::test]
async fn servers_sharing_a_journal_keep_their_own_authorities_and_publish_all() {
    let t = Setup::new();
    let (km_a, km_b) = (Arc::new(FaultyKm::default()), Arc::new(FaultyKm::default()));
    let a = start(&t, "a", &km_a).await;
    let a_first = t.records(CaKind::X509).await;
    assert_eq!(a_first.len(), 1);
    assert_eq!(a_first[0].server_id, "a");
    assert_eq!(a_first[0].status, CaStatus::Active, "alone: active at once");

    // B joins while A signs: its first authorities are prepared and published, and
    // it signs nothing before they can be known.
    let b = start(&t, "b", &km_b).await;
    let records = t.records(CaKind::X509).await;
    let b_first = x509_of(&records, "b");
    assert_eq!(b_first.len(), 1, "{records:?}");
    assert_eq!(b_first[0].status, CaStatus::Prepared);
    assert!(b.active_x509().is_err() && b.active_jwt().is_err());
    assert!(sign_and_verify(&b).await.is_err());
    // A's records are as A left them: B never looked for A's keys in its own key
    // store (where they are not), so it retired nothing of A's.
    assert_eq!(x509_of(&records, "a"), vec![&a_first[0]]);
    assert_eq!(km_b.key_count(), 2, "B's key store holds B's two keys only");
    // The shared bundle holds both; A takes it up by following.
    assert!(publishes(&b, &a_first[0]) && publishes(&b, b_first[0]));
    a.follow().await.unwrap();
    assert!(publishes(&a, b_first[0]), "A follows B's publication");

    // Once published for the propagation time (65 s here), B signs, and what it
    // signs verifies against A's bundle, and the other way round.
    t.set(64);
    b.rotate().await.unwrap();
    assert!(b.active_x509().is_err(), "not yet known");
    t.set(65);
    b.rotate().await.unwrap();
    let b_issuer = sign_and_verify(&b).await.unwrap();
    let a_issuer = sign_and_verify(&a).await.unwrap();
    assert_ne!(a_issuer, b_issuer, "each server signs with its own CA");
    let a_bundle = a.bundle();
    let b_bundle = b.bundle();
    assert_eq!(a_bundle.x509_authorities(), b_bundle.x509_authorities());
    assert_eq!(a_bundle.jwt_authorities().len(), 2);

    // A rotates at half-life; B, whose view is now stale, publishes a change of its
    // own first (its next JWT key, say): A's new CA is not lost.
    t.set(600);
    a.rotate().await.unwrap();
    let a_next = t
        .records(CaKind::X509)
        .await
        .into_iter()
        .find(|r| r.server_id == "a" && r.status == CaStatus::Prepared)
        .expect("A's next CA");
    t.set(665);
    b.rotate().await.unwrap(); // B prepares its next (half of its life is over)
    let stored =
        t.ds.get_bundle(&server("a").trust_domain)
            .await
            .unwrap()
            .unwrap();
    assert!(
        stored.x509_authorities().contains(&a_next.cert_der),
        "B's publication kept A's next CA"
    );
    assert_eq!(stored.x509_authorities().len(), 4);
    b.follow().await.unwrap();
    assert!(publishes(&b, &a_next));

    // B restarts: its own authorities are found again in its key store and sign at
    // once, without waiting.
    drop(b);
    let b = start(&t, "b", &km_b).await;
    sign_and_verify(&b).await.unwrap();
    assert_eq!(km_a.key_count(), 4, "A's four keys are untouched");
}

#[tokio::test]
async fn an_authority_of_a_server_gone_for_good_leaves_the_bundle_when_it_expires() {
    let t = Setup::new();
    let (km_a, km_b) = (Arc::new(FaultyKm::default()), Arc::new(FaultyKm::default()));
    let a = start(&t, "a", &km_a).await;
    let b = start(&t, "b", &km_b).await;
    t.set(65);
    b.rotate().await.unwrap();
    let b_ca = x509_of(&t.records(CaKind::X509).await, "b")[0].clone();
    a.follow().await.unwrap();
    assert!(publishes(&a, &b_ca));
    drop(b); // and never comes back
    // A rotates on; once B's CA has expired, A's own rotation or following drops it.
    for at in [600, 1_000, 1_100, 1_199, 1_200, 1_265, 1_300] {
        t.set(at);
        a.rotate().await.unwrap();
        a.follow().await.unwrap();
        if (at as i64) < b_ca.not_after - super::T0 as i64 {
            assert!(
                publishes(&a, &b_ca),
                "at {at}: still valid, still published"
            );
        }
    }
    assert!(!publishes(&a, &b_ca), "expired: not published");
    sign_and_verify(&a).await.unwrap();
    // B's record stays in the journal for B to prune when it returns.
    assert_eq!(x509_of(&t.records(CaKind::X509).await, "b").len(), 1);
}

#[tokio::test]
async fn records_made_before_servers_had_ids_are_taken_over() {
    let t = Setup::new();
    let km = Arc::new(FaultyKm::default());
    let a = start(&t, "a", &km).await;
    let mut legacy = t.records(CaKind::X509).await[0].clone();
    drop(a);
    legacy.server_id = String::new();
    t.ds.put_ca_record(&legacy).await.unwrap();
    let a = start(&t, "a", &km).await;
    let again = t.records(CaKind::X509).await;
    assert_eq!(again.len(), 1, "taken over, not replaced: {again:?}");
    assert_eq!(again[0].server_id, "a");
    assert_eq!(again[0].id, legacy.id);
    sign_and_verify(&a).await.unwrap();
}
