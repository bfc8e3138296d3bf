//! Conformance: the CA journal.

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
