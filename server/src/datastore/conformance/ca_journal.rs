//! Conformance: the CA journal.

use std::sync::Arc;

use tessera_core::Bundle;
use tessera_core::bundle::JwtAuthority;
use tessera_core::key::{Key, KeyType, SoftwareKey};

use super::{Ns, ok};
use crate::datastore::{CaKind, CaRecord, CaStatus, Datastore, DatastoreError};

fn ca_record(ns: &Ns, kind: CaKind, status: CaStatus, created_at: i64) -> CaRecord {
    let x509 = kind == CaKind::X509;
    CaRecord {
        id: ns.unique("ca"),
        kind,
        key_id: ns.unique("key"),
        key_manager: "memory".into(),
        cert_der: if x509 {
            vec![0x30, 0x82, 1, 2, 3]
        } else {
            vec![]
        },
        upstream_chain: if x509 {
            vec![vec![4, 5], vec![6]]
        } else {
            vec![]
        },
        upstream_roots: if x509 { vec![vec![7, 8, 9]] } else { vec![] },
        public_key_der: if x509 { vec![] } else { vec![0x30, 0x59, 10] },
        jwt_kid: if x509 { String::new() } else { "kid".into() },
        not_before: created_at,
        not_after: created_at + 86_400,
        status,
        created_at,
        server_id: String::new(),
    }
}

fn find_ca<'a>(records: &'a [CaRecord], id: &str) -> Vec<&'a CaRecord> {
    records.iter().filter(|r| r.id == id).collect()
}

/// CA journal records are stored whole, replaced by ID, listed and deleted.
pub async fn ca_journal(ds: &dyn Datastore) {
    let ns = Ns::new("ca-journal");
    let x509 = ca_record(&ns, CaKind::X509, CaStatus::Active, 100);
    let jwt = ca_record(&ns, CaKind::Jwt, CaStatus::Prepared, 200);
    ok(ds.put_ca_record(&x509).await, "put x509");
    ok(ds.put_ca_record(&jwt).await, "put jwt");
    let listed = ok(ds.list_ca_records().await, "list");
    assert_eq!(find_ca(&listed, &x509.id), vec![&x509]);
    assert_eq!(find_ca(&listed, &jwt.id), vec![&jwt]);

    let old = CaRecord {
        status: CaStatus::Old,
        ..x509.clone()
    };
    ok(ds.put_ca_record(&old).await, "replace");
    let listed = ok(ds.list_ca_records().await, "list");
    assert_eq!(find_ca(&listed, &x509.id), vec![&old], "put replaces by ID");

    ok(ds.delete_ca_record(&x509.id).await, "delete");
    let listed = ok(ds.list_ca_records().await, "list");
    assert!(find_ca(&listed, &x509.id).is_empty());
    assert_eq!(
        find_ca(&listed, &jwt.id),
        vec![&jwt],
        "others are untouched"
    );
    assert_err!(
        ds.delete_ca_record(&x509.id).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    ok(ds.delete_ca_record(&jwt.id).await, "delete jwt");
}

/// A composer that publishes, as JWT authorities, every record of `ns` in the journal
/// (a stand-in for the CA's union of every server's authorities), with the next
/// sequence number, and counts its calls.
fn union_of(
    ns: &Ns,
    keys: Arc<std::collections::BTreeMap<String, Vec<u8>>>,
) -> crate::datastore::BundleComposer {
    let td = ns.td.clone();
    Arc::new(move |records: &[CaRecord], stored: Option<&Bundle>| {
        let mine: Vec<JwtAuthority> = records
            .iter()
            .filter_map(|r| {
                keys.get(&r.id).map(|k| JwtAuthority {
                    key_id: r.id.clone(),
                    public_key_der: k.clone(),
                    expires_at: r.not_after,
                })
            })
            .collect();
        if stored.is_some_and(|b| b.jwt_authorities() == mine.as_slice()) {
            return None;
        }
        let mut b = Bundle::new(td.clone());
        b.set_jwt_authorities(mine);
        b.set_sequence(stored.map_or(0, Bundle::sequence) + 1);
        Some(b)
    })
}

/// Bundle composition: the composer sees the journal and the stored bundle, its
/// answer is stored (or the stored bundle kept), and compositions racing from many
/// writers each see every record written before them, so that the last bundle holds
/// every record and no writer's view was overwritten by a staler one.
pub async fn bundle_composition(ds: &dyn Datastore) {
    let ns = Ns::new("compose");
    let records: Vec<CaRecord> = (0..8)
        .map(|i| CaRecord {
            server_id: format!("server-{i}"),
            ..ca_record(&ns, CaKind::Jwt, CaStatus::Active, 100 + i)
        })
        .collect();
    let keys: std::collections::BTreeMap<String, Vec<u8>> = records
        .iter()
        .map(|r| {
            let k = SoftwareKey::generate(KeyType::EcP256).expect("key");
            (r.id.clone(), k.public_key_der().to_vec())
        })
        .collect();
    let keys = Arc::new(keys);

    // Nothing stored yet: the composer is asked, its answer stored and returned.
    ok(ds.put_ca_record(&records[0]).await, "put first");
    let first = ok(
        ds.compose_bundle(&ns.td, union_of(&ns, keys.clone())).await,
        "compose first",
    )
    .expect("a bundle is stored");
    assert_eq!(first.sequence(), 1);
    assert_eq!(first.jwt_authorities().len(), 1);
    let stored = ok(ds.get_bundle(&ns.td).await, "get").expect("stored");
    assert_eq!(stored, first, "what compose returns is what is stored");
    // Nothing changed: the stored bundle is kept and returned.
    let again = ok(
        ds.compose_bundle(&ns.td, union_of(&ns, keys.clone())).await,
        "compose again",
    );
    assert_eq!(again.as_ref(), Some(&first));

    // Seven writers, each writing its record and then composing, all at once.
    let racers = records[1..].iter().map(|r| {
        let keys = keys.clone();
        let ns = &ns;
        async move {
            ok(ds.put_ca_record(r).await, "put");
            ok(
                ds.compose_bundle(&ns.td, union_of(ns, keys)).await,
                "compose",
            )
        }
    });
    futures::future::join_all(racers).await;
    let last = ok(ds.get_bundle(&ns.td).await, "get").expect("stored");
    let mut published: Vec<&str> = last
        .jwt_authorities()
        .iter()
        .map(|a| a.key_id.as_str())
        .collect();
    published.sort_unstable();
    let mut expected: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(published, expected, "a staler view replaced a newer one");
    assert!(
        (2..=8).contains(&last.sequence()),
        "one sequence number per change: {}",
        last.sequence()
    );

    // A composer that answers nothing leaves no bundle where there was none.
    let empty = Ns::new("compose-none");
    let none = ok(
        ds.compose_bundle(
            &empty.td,
            Arc::new(|_: &[CaRecord], _: Option<&Bundle>| None),
        )
        .await,
        "compose nothing",
    );
    assert!(none.is_none());
    assert!(ok(ds.get_bundle(&empty.td).await, "get").is_none());

    for r in &records {
        ok(ds.delete_ca_record(&r.id).await, "delete");
    }
    ok(ds.delete_bundle(&ns.td).await, "delete bundle");
}
