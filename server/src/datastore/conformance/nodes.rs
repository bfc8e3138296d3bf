//! Conformance: attested nodes and their SVID serials.

use tessera_core::SpiffeId;

use super::{Ns, ok};
use crate::datastore::{AttestedNode, Datastore, DatastoreError};

fn node(ns: &Ns, name: &str, selectors: &[&str]) -> AttestedNode {
    AttestedNode {
        spiffe_id: ns.id(&format!("/spire/agent/join_token/{name}")),
        attestation_type: "join_token".into(),
        cert_serial: "0a1b".into(),
        cert_not_after: 2_000,
        new_cert_serial: String::new(),
        new_cert_not_after: 0,
        banned: false,
        can_reattest: false,
        selectors: selectors.iter().map(|s| ns.sel(s)).collect(),
        created_at: 100,
        updated_at: 100,
        key_in_tpm: false,
        ak_public: vec![],
        measured_boot: String::new(),
    }
}

fn find_node<'a>(nodes: &'a [AttestedNode], id: &SpiffeId) -> Vec<&'a AttestedNode> {
    nodes.iter().filter(|n| &n.spiffe_id == id).collect()
}

/// Nodes are stored whole, replaced by ID, listed and deleted.
pub async fn attested_nodes(ds: &dyn Datastore) {
    let ns = Ns::new("nodes");
    let n1 = node(&ns, "one", &["b", "a", "c"]);
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get missing"),
        None
    );
    ok(ds.upsert_attested_node(n1.clone()).await, "upsert");
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get"),
        Some(n1.clone()),
        "stored whole, selectors in their order"
    );

    let mut again = node(&ns, "one", &["d"]);
    again.attestation_type = "tpm_devid".into();
    again.cert_serial = "ffee".into();
    again.cert_not_after = 9_000;
    again.new_cert_serial = "0a1b".into();
    again.new_cert_not_after = 2_000;
    again.can_reattest = true;
    again.created_at = 200;
    again.updated_at = 300;
    again.key_in_tpm = true;
    again.ak_public = vec![0, 0x23, 0, 0x0b, 0xff];
    again.measured_boot = "ok".into();
    ok(ds.upsert_attested_node(again.clone()).await, "re-attest");
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get"),
        Some(again.clone()),
        "upsert replaces the record"
    );
    // The key proof is recorded on its own, the rest untouched.
    ok(
        ds.set_node_tpm_state(&n1.spiffe_id, false, "refused: PCR 7")
            .await,
        "key not proven",
    );
    let mut unproven = again.clone();
    unproven.key_in_tpm = false;
    unproven.measured_boot = "refused: PCR 7".into();
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get"),
        Some(unproven),
        "set_node_tpm_state changes only the TPM state"
    );
    ok(
        ds.set_node_tpm_state(&n1.spiffe_id, true, "ok").await,
        "key proven",
    );
    assert!(matches!(
        ds.set_node_tpm_state(&ns.id("/spire/agent/join_token/none"), true, "")
            .await,
        Err(DatastoreError::NotFound(_))
    ));

    let n2 = node(&ns, "two", &[]);
    ok(ds.upsert_attested_node(n2.clone()).await, "upsert n2");
    let listed = ok(ds.list_attested_nodes().await, "list");
    assert_eq!(
        find_node(&listed, &n1.spiffe_id),
        vec![&again],
        "listed once"
    );
    assert_eq!(find_node(&listed, &n2.spiffe_id), vec![&n2]);

    ok(ds.delete_attested_node(&n2.spiffe_id).await, "delete");
    assert_eq!(
        ok(ds.get_attested_node(&n2.spiffe_id).await, "get deleted"),
        None
    );
    assert!(find_node(&ok(ds.list_attested_nodes().await, "list"), &n2.spiffe_id).is_empty());
    assert_err!(
        ds.delete_attested_node(&n2.spiffe_id).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    // Evicted: it may attest again.
    ok(ds.upsert_attested_node(n2.clone()).await, "attest again");
    assert_eq!(
        ok(ds.get_attested_node(&n2.spiffe_id).await, "get"),
        Some(n2)
    );
}

/// A renewal leaves the proven serial in place and adds a pending one, which the
/// first call made with it promotes; a ban clears both, keeps the record and blocks
/// renewal.
pub async fn attested_node_svid_and_ban(ds: &dyn Datastore) {
    let ns = Ns::new("node-svid");
    let n = node(&ns, "agent", &["a", "b"]);
    let id = n.spiffe_id.clone();
    ok(ds.upsert_attested_node(n.clone()).await, "upsert");

    let renewed = ok(
        ds.renew_node_svid(&id, "0a1b", "0b2c", 3_000).await,
        "renew",
    );
    let got = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert_eq!(got, renewed, "the returned node is the stored one");
    assert_eq!(
        (got.cert_serial.as_str(), got.cert_not_after),
        ("0a1b", 2_000),
        "the proven serial stays until the agent uses the new one"
    );
    assert_eq!(
        (got.new_cert_serial.as_str(), got.new_cert_not_after),
        ("0b2c", 3_000)
    );
    assert_eq!(got.selectors, n.selectors);
    assert_eq!(got.attestation_type, n.attestation_type);
    assert_eq!(got.created_at, n.created_at);
    assert!(!got.banned);

    // The agent uses its new SVID: it becomes current and the old one is dropped.
    let active = ok(ds.activate_node_svid(&id, "0b2c").await, "activate");
    assert_eq!(
        (active.cert_serial.as_str(), active.cert_not_after),
        ("0b2c", 3_000)
    );
    assert_eq!(
        (active.new_cert_serial.as_str(), active.new_cert_not_after),
        ("", 0)
    );
    assert_eq!(
        ok(ds.get_attested_node(&id).await, "get"),
        Some(active.clone())
    );
    assert_eq!(
        ok(ds.activate_node_svid(&id, "0b2c").await, "activate again"),
        active,
        "the current serial changes nothing"
    );
    assert_err!(
        ds.activate_node_svid(&id, "0a1b").await,
        DatastoreError::Conflict(_),
        "the replaced serial"
    );
    assert_err!(
        ds.renew_node_svid(&id, "0a1b", "0c3d", 4_000).await,
        DatastoreError::Conflict(_),
        "a renewal with the replaced serial"
    );
    assert_eq!(
        ok(ds.get_attested_node(&id).await, "get"),
        Some(active),
        "a refused renewal changes nothing"
    );

    let missing = ns.id("/spire/agent/join_token/missing");
    assert_err!(
        ds.renew_node_svid(&missing, "01", "02", 1).await,
        DatastoreError::NotFound(_),
        "renew a missing node"
    );
    assert_err!(
        ds.activate_node_svid(&missing, "01").await,
        DatastoreError::NotFound(_),
        "activate on a missing node"
    );
    assert_eq!(
        ok(ds.get_attested_node(&missing).await, "get"),
        None,
        "renewal never creates"
    );

    ok(
        ds.renew_node_svid(&id, "0b2c", "0c3d", 4_000).await,
        "renew",
    );
    ok(ds.ban_attested_node(&id).await, "ban");
    let banned = ok(ds.get_attested_node(&id).await, "get").expect("a ban keeps the record");
    assert!(banned.banned);
    assert!(banned.cert_serial.is_empty() && banned.new_cert_serial.is_empty());
    assert_eq!(banned.selectors, n.selectors);
    assert_err!(
        ds.renew_node_svid(&id, "0c3d", "0d4e", 5_000).await,
        DatastoreError::Invalid(_),
        "renew a banned node"
    );
    assert_err!(
        ds.activate_node_svid(&id, "0c3d").await,
        DatastoreError::Conflict(_),
        "activate on a banned node"
    );
    let still = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert!(
        still.banned && still.cert_serial.is_empty() && still.new_cert_serial.is_empty(),
        "the ban holds"
    );
    ok(ds.ban_attested_node(&id).await, "banning twice is fine");
    assert_err!(
        ds.ban_attested_node(&missing).await,
        DatastoreError::NotFound(_),
        "ban a missing node"
    );

    ok(ds.delete_attested_node(&id).await, "delete lifts the ban");
    assert_eq!(ok(ds.get_attested_node(&id).await, "get"), None);
}

/// Renewals whose answers never reach the agent: the agent keeps presenting the SVID
/// it has, each renewal replaces only the pending serial, and the agent is never
/// locked out; once it uses the SVID it finally got, every older one is refused.
pub async fn attested_node_lost_renewals(ds: &dyn Datastore) {
    let ns = Ns::new("node-lost");
    let n = node(&ns, "agent", &[]);
    let id = n.spiffe_id.clone();
    ok(ds.upsert_attested_node(n).await, "upsert");
    for (i, serial) in ["01", "02", "03"].into_iter().enumerate() {
        let got = ok(
            ds.renew_node_svid(&id, "0a1b", serial, 3_000 + i as i64)
                .await,
            "renewal with the proven SVID",
        );
        assert_eq!(
            got.cert_serial, "0a1b",
            "renewal {i} dropped the proven SVID"
        );
        assert_eq!(got.new_cert_serial, serial);
        assert_eq!(
            ok(ds.activate_node_svid(&id, "0a1b").await, "a call with it").cert_serial,
            "0a1b"
        );
    }
    // Lost answers: 01 and 02 were never received; they are not accepted.
    for lost in ["01", "02"] {
        assert_err!(
            ds.activate_node_svid(&id, lost).await,
            DatastoreError::Conflict(_),
            "an answer that was replaced"
        );
    }
    // The agent renews with the SVID it finally received: it is promoted first.
    let got = ok(
        ds.renew_node_svid(&id, "03", "04", 5_000).await,
        "renew with 03",
    );
    assert_eq!(
        (got.cert_serial.as_str(), got.new_cert_serial.as_str()),
        ("03", "04")
    );
    assert_err!(
        ds.activate_node_svid(&id, "0a1b").await,
        DatastoreError::Conflict(_),
        "the superseded SVID"
    );
    ok(ds.delete_attested_node(&id).await, "delete");
}

/// Concurrent renewals of one node with the same proven SVID: each is applied whole,
/// one after the other; the proven serial survives and exactly one pending serial is
/// left, one of those issued.
pub async fn attested_node_concurrent_renewals(ds: &dyn Datastore) {
    let ns = Ns::new("node-race");
    let n = node(&ns, "agent", &["a"]);
    let id = n.spiffe_id.clone();
    ok(ds.upsert_attested_node(n).await, "upsert");
    let serials: Vec<String> = (0..12).map(|i| format!("{:04x}", 0x100 + i)).collect();
    let renewals = serials
        .iter()
        .map(|s| ds.renew_node_svid(&id, "0a1b", s, 9_000));
    for r in futures::future::join_all(renewals).await {
        ok(r, "concurrent renewal");
    }
    let got = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert_eq!(got.cert_serial, "0a1b");
    assert!(serials.contains(&got.new_cert_serial), "{got:?}");
    // Activation racing renewals with the pending serial: whichever wins, the node
    // ends with a proven serial among those issued, and never with the original one
    // beside a serial it did not issue.
    let pending = got.new_cert_serial.clone();
    let more: Vec<String> = (0..6).map(|i| format!("{:04x}", 0x200 + i)).collect();
    let activation = ds.activate_node_svid(&id, &pending);
    let renewals = more
        .iter()
        .map(|s| ds.renew_node_svid(&id, &pending, s, 9_500));
    let (act, ren) = futures::join!(activation, futures::future::join_all(renewals));
    ok(act, "activation");
    for r in ren {
        ok(r, "renewal with the pending serial");
    }
    let got = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert_eq!(got.cert_serial, pending, "{got:?}");
    assert!(more.contains(&got.new_cert_serial), "{got:?}");
    ok(ds.delete_attested_node(&id).await, "delete");
}
