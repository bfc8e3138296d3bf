//! Checked chains: an authority whose SVIDs would not verify is never stored, at
//! start or at a rotation.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::key::{KeyManager, MemoryKeyManager};

use super::{Setup, jwt_validates, settings, sign_and_verify, upstream_root};
use crate::ca::{CaError, ChainProblem};
use crate::datastore::CaKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_whose_chain_does_not_verify_is_never_stored() {
    let t = Setup::new();
    let km = Arc::new(MemoryKeyManager::new());
    let mut s = settings(Duration::from_secs(3600));
    s.upstream = Some(upstream_root(Some(0)));
    let err = t.start_with(s, km.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            CaError::ChainCheck { source, .. }
                if matches!(**source, ChainProblem::PathLength { max: 0, .. })
        ),
        "{err:?}"
    );
    assert!(msg.contains("pathLenConstraint 0"), "{msg}");
    assert!(
        t.records(CaKind::X509).await.is_empty(),
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
        let t = Setup::new();
        let mut s = settings(Duration::from_secs(3600));
        s.upstream = Some(upstream_root(path_len));
        let ca = t
            .start_with(s, Arc::new(MemoryKeyManager::new()))
            .await
            .unwrap();
        sign_and_verify(&ca).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_rotation_an_unusable_new_authority_is_dropped_and_the_current_one_stays() {
    let t = Setup::new();
    let ca = t.start(settings(Duration::from_secs(12))).await.unwrap();
    let journal = t.ds.list_ca_records().await.unwrap();
    let active = ca.active_x509().unwrap().id;
    t.km.break_new_keys();
    // Half-way: the next authorities would be prepared, but their probes fail.
    t.set(6);
    let err = ca.rotate().await.unwrap_err();
    assert!(matches!(err, CaError::ChainCheck { .. }), "{err:?}");
    assert!(err.to_string().contains("does not verify"), "{err}");
    assert_eq!(
        t.ds.list_ca_records().await.unwrap(),
        journal,
        "an unusable CA was stored"
    );
    assert_eq!(
        t.km.key_count(),
        2,
        "the unusable key was left in the key store"
    );
    // The current authorities keep signing, and what they sign verifies.
    assert_eq!(ca.active_x509().unwrap().id, active);
    sign_and_verify(&ca).await.unwrap();
    jwt_validates(&ca).await;
    // A broken key store at start: the server does not start.
    let fresh = Setup::new();
    let err = fresh
        .start_with(
            settings(Duration::from_secs(12)),
            Arc::new(super::FaultyKmHandle(t.km.clone())),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::ChainCheck { .. }), "{err:?}");
}
