//! Lost keys: an authority whose key is gone is retired and replaced, a key store
//! that does not answer replaces nothing, and another key manager stops the start.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::key::{KeyError, KeyManager, KeyType, MemoryKeyManager};
use tessera_core::x509::{self, BuildError};

use super::{Setup, jwt_validates, settings, sign_and_verify};
use crate::ca::CaError;
use crate::datastore::{CaKind, CaRecord, CaStatus};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_memory_key_manager_retires_the_keyless_authorities() {
    let t = Setup::new();
    let memory = || Arc::new(MemoryKeyManager::new());
    let first = t.start_with(settings(HOUR), memory()).await.unwrap();
    let old_issuer = sign_and_verify(&first).await.unwrap();
    let old_kid = first.active_jwt().unwrap().kid;
    let old_ids = [
        first.active_x509().unwrap().id,
        first.active_jwt().unwrap().id,
    ];
    drop(first);

    // The keys died with the process: the restarted server must sign at once.
    let second = t.start_with(settings(HOUR), memory()).await.unwrap();
    let new_issuer = sign_and_verify(&second).await.unwrap();
    assert_ne!(new_issuer, old_issuer, "signed by the keyless CA");
    jwt_validates(&second).await;
    assert_ne!(second.active_jwt().unwrap().kid, old_kid);

    for (kind, old) in [CaKind::X509, CaKind::Jwt].into_iter().zip(&old_ids) {
        let r = t.records(kind).await;
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
    let third = t.start_with(settings(HOUR), memory()).await.unwrap();
    let r = t.records(CaKind::X509).await;
    assert_eq!(
        r.iter().filter(|r| r.status == CaStatus::Retired).count(),
        2
    );
    assert_eq!(r.iter().filter(|r| r.status == CaStatus::Active).count(), 1);
    sign_and_verify(&third).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_while_running_is_replaced_and_the_signature_goes_through() {
    let t = Setup::new();
    let ca = t.start(settings(HOUR)).await.unwrap();
    tokio::spawn(ca.clone().run());
    let before = sign_and_verify(&ca).await.unwrap();
    let x509_key = ca.active_x509().unwrap().id;
    let jwt_key = ca.active_jwt().unwrap().id;

    t.km.delete_behind_the_back(&x509_key);
    t.km.delete_behind_the_back(&jwt_key);
    // The very call that finds the key gone gets its SVID, from a new CA.
    let after = sign_and_verify(&ca).await.unwrap();
    assert_ne!(after, before);
    jwt_validates(&ca).await;
    let status_of = |r: &[CaRecord], id: &str| r.iter().find(|r| r.id == id).map(|r| r.status);
    let r = t.records(CaKind::X509).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(status_of(&r, &x509_key), Some(CaStatus::Retired));
    assert_eq!(r.iter().filter(|r| r.status == CaStatus::Active).count(), 1);
    let r = t.records(CaKind::Jwt).await;
    assert_eq!(status_of(&r, &jwt_key), Some(CaStatus::Retired));
    assert_eq!(ca.bundle().x509_authorities().len(), 2);
    ca.health().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outage_never_replaces_an_authority() {
    let t = Setup::new();
    let ca = t.start(settings(HOUR)).await.unwrap();
    tokio::spawn(ca.clone().run());
    sign_and_verify(&ca).await.unwrap();
    let journal = t.ds.list_ca_records().await.unwrap();

    t.km.set_outage(true);
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
    let restart = t.start(settings(HOUR)).await.unwrap_err();
    assert!(restart.is_unavailable(), "{restart}");
    assert_eq!(
        t.ds.list_ca_records().await.unwrap(),
        journal,
        "the journal changed"
    );

    t.km.set_outage(false);
    sign_and_verify(&ca).await.unwrap();
    assert_eq!(t.ds.list_ca_records().await.unwrap(), journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_hands_over_to_the_prepared_authority() {
    let t = Setup::new();
    let ca = t.start(settings(Duration::from_secs(12))).await.unwrap();
    // Half-way through its life the next CA is prepared (and published).
    t.set(6);
    ca.rotate().await.unwrap();
    let r = t.records(CaKind::X509).await;
    assert_eq!(r.len(), 2, "{r:?}");
    let prepared = r
        .iter()
        .find(|r| r.status == CaStatus::Prepared)
        .cloned()
        .unwrap();
    let active = ca.active_x509().unwrap().id;
    tokio::spawn(ca.clone().run());

    t.km.delete_behind_the_back(&active);
    sign_and_verify(&ca).await.unwrap();
    assert_eq!(
        ca.active_x509().unwrap().id,
        prepared.id,
        "not the one agents know"
    );
    let r = t.records(CaKind::X509).await;
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
    let t = Setup::new();
    let ca = t.start(settings(HOUR)).await.unwrap();
    let id = ca.active_x509().unwrap().id;
    drop(ca);
    super::FaultyKmHandle(t.km.clone())
        .generate_key(&id, KeyType::EcP256)
        .unwrap();
    let ca = t.start(settings(HOUR)).await.unwrap();
    assert_ne!(ca.active_x509().unwrap().id, id);
    let r = t.records(CaKind::X509).await;
    assert_eq!(
        r.iter().find(|r| r.id == id).map(|r| r.status),
        Some(CaStatus::Retired)
    );
    sign_and_verify(&ca).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_manager_is_refused_not_retired() {
    let t = Setup::new();
    drop(t.start(settings(HOUR)).await.unwrap());
    let journal = t.ds.list_ca_records().await.unwrap();
    let err = t
        .start_with(settings(HOUR), Arc::new(MemoryKeyManager::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::KeyManagerChanged { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("set [key_manager] back to \"pkcs11\""),
        "{err}"
    );
    assert_eq!(
        t.ds.list_ca_records().await.unwrap(),
        journal,
        "the journal changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_authorities_go_when_they_expire() {
    let t = Setup::new();
    let ttl = Duration::from_secs(10);
    let first = t
        .start_with(settings(ttl), Arc::new(MemoryKeyManager::new()))
        .await
        .unwrap();
    let old = first.active_x509().unwrap().id;
    drop(first);
    let second = t
        .start_with(settings(ttl), Arc::new(MemoryKeyManager::new()))
        .await
        .unwrap();
    assert_eq!(second.bundle().x509_authorities().len(), 2);
    t.set(11);
    second.rotate().await.unwrap();
    assert!(
        !t.ds
            .list_ca_records()
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
