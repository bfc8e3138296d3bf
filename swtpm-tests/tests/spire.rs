//! SPIRE beside Tessera on this machine: SPIRE's own server and agent (built at
//! a pinned release by `scripts/spire.sh`, started by the `spire` harness; the
//! agent attests with a join token) and Tessera's, each with a workload entry for
//! this process; go-spiffe fetches X509- and JWT-SVIDs from each agent, and each
//! SVID verifies against its own trust domain's bundle and not against the
//! other's.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::time::Duration;

use tessera_swtpm_tests::spiffe_libs::{Facts, Lib};
use tessera_swtpm_tests::spire::{SpireAgent, SpireServer, SpireServerOptions};
use tessera_swtpm_tests::{Agent, Server, my_uid, openssl_verify, test_dir, wait_until};

fn der_set(path: &Path) -> std::collections::BTreeSet<Vec<u8>> {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tessera_core::x509::pem_certs(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

#[test]
fn go_spiffe_gets_svids_from_spire_and_tessera_side_by_side() {
    let dir = test_dir("spire-side-by-side");
    let uid = format!("unix:uid:{}", my_uid());

    // SPIRE: server, join token with a node alias, an entry for this UID, agent.
    let spire = SpireServer::start(
        &dir.path().join("spire-server"),
        &SpireServerOptions::default(),
    );
    let node = spire.id("/node");
    let spire_token = spire.token(Some(&node));
    let spire_workload = spire.id("/workload");
    spire.entry(&spire_workload, &node, &[&uid], &["-x509SVIDTTL", "300"]);
    let spire_agent = SpireAgent::start(&dir.path().join("spire-agent"), &spire, &spire_token, "");
    // It attested with the join token: SPIRE lists it under the token's agent ID.
    assert_eq!(
        spire.agents(),
        vec![(
            spire.id(&format!("/spire/agent/join_token/{spire_token}")),
            "join_token".to_owned()
        )],
        "{}",
        spire.log()
    );

    // Tessera: the same shape.
    let tessera = Server::start(&dir.path().join("tessera-server"), "");
    let token = tessera.token(Some("spiffe://example.org/node"), None);
    tessera.entry(
        "spiffe://example.org/workload",
        "spiffe://example.org/node",
        &[&uid],
        &[],
    );
    let tessera_agent = Agent::start(
        &dir.path().join("tessera-agent"),
        &tessera,
        Some(&token),
        "",
    );

    let spire_bundle = spire.bundle_pem();
    let tessera_bundle = tessera.bundle_pem();
    let cases = [
        (
            "spire",
            spire_agent.endpoint(),
            spire_workload.as_str(),
            &spire_bundle,
            &tessera_bundle,
        ),
        (
            "tessera",
            tessera_agent.endpoint(),
            "spiffe://example.org/workload",
            &tessera_bundle,
            &spire_bundle,
        ),
    ];
    for (name, endpoint, want_id, own_bundle, other_bundle) in cases {
        let out = dir.path().join(format!("{name}-x509"));
        // The agent may still be syncing the entry: retry until it serves it.
        let mut facts = None;
        wait_until(Duration::from_secs(60), || {
            let o = Lib::Go.run(&endpoint, None, &["x509", out.to_str().unwrap()]);
            let ok = o.status.success();
            facts = Some(Facts::from(&o));
            ok
        });
        let f = facts.unwrap();
        assert_eq!(
            f.get("spiffe_id"),
            Some(want_id),
            "{name}: {}\n{}",
            f.stdout,
            f.stderr
        );
        // go-spiffe verified the chain against the bundle the agent sent ...
        assert_eq!(f.value("verified"), want_id, "{name}");
        // ... which is that server's own bundle,
        assert_eq!(
            der_set(&out.join("bundle.pem")),
            der_set(own_bundle),
            "{name}"
        );
        // and OpenSSL agrees: valid against its own trust domain, not the other's.
        let v = openssl_verify(own_bundle, &out.join("chain.pem"));
        assert!(
            v.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        let v = openssl_verify(other_bundle, &out.join("chain.pem"));
        assert!(
            !v.status.success(),
            "{name}'s SVID verified against the other trust domain's bundle"
        );
        if name == "spire" {
            // SPIRE honoured the entry's own X509-SVID TTL (300 s, not its 1 h default).
            let not_after: i64 = f.value("not_after").parse().unwrap();
            let left = not_after - tessera_core::x509::unix_seconds(std::time::SystemTime::now());
            assert!(
                (200..=300).contains(&left),
                "SPIRE's SVID has {left} s left"
            );
        }

        // A JWT-SVID from the same agent, validated by go-spiffe and by the agent.
        let j = Lib::Go.run_ok(&endpoint, None, &["jwt", "side-by-side"]);
        assert_eq!(j.value("spiffe_id"), want_id, "{name}");
        let v = Lib::Go.run_ok(
            &endpoint,
            None,
            &["validate", j.value("token"), "side-by-side"],
        );
        assert_eq!(v.value("local"), want_id, "{name}");
        assert_eq!(v.value("agent"), want_id, "{name}");
    }

    // Without federation the two trust domains do not trust each other: a
    // Tessera workload's mTLS server refuses SPIRE's workload, even when it is
    // the very ID it was told to accept.
    let srv = Lib::Go.serve(&tessera_agent.endpoint(), None, &spire_workload);
    let o = Lib::Go.run(
        &spire_agent.endpoint(),
        None,
        &["dial", &srv.addr, &srv.self_id],
    );
    assert!(
        !o.status.success(),
        "mTLS across unfederated trust domains succeeded"
    );
    // SPIRE's workload does not know Tessera's trust domain.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("example.org"), "{err}");
    assert!(srv.values("accepted").is_empty(), "{}", srv.output());
}

/// Entries made by SPIRE, printed by SPIRE (`entry show -output json`), read by
/// Tessera (`entry create --data`): each arrives with its ID and every field SPIRE
/// printed for it, and a second run changes nothing.
#[test]
fn entries_spire_printed_move_to_tessera_as_they_are() {
    let dir = test_dir("spire-entries");
    let spire = SpireServer::start(
        &dir.path().join("spire-server"),
        &SpireServerOptions {
            trust_domain: "example.org".into(),
            ..SpireServerOptions::default()
        },
    );
    // SPIRE wants the bundle of a trust domain before an entry federates with it.
    let other = tessera_swtpm_tests::TestCa::new(&dir.path().join("other"), "other-test");
    spire.cli_ok(
        &["bundle", "set"],
        &[
            "-id",
            "spiffe://other.test",
            "-path",
            other.cert.to_str().unwrap(),
        ],
    );
    let expiry = (std::time::SystemTime::now() + Duration::from_secs(30 * 86_400))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let node = spire.id("/node");
    let made = [
        spire.entry(
            &spire.id("/db"),
            &node,
            &["unix:uid:1000", "unix:gid:50"],
            &[
                "-entryID",
                "db-primary",
                "-x509SVIDTTL",
                "600",
                "-jwtSVIDTTL",
                "120",
                "-dns",
                "db.example.org",
                "-dns",
                "db",
                "-hint",
                "primary",
                "-federatesWith",
                "spiffe://other.test",
                "-entryExpiry",
                &expiry,
            ],
        ),
        spire.entry(&spire.id("/ops"), &node, &["unix:uid:0"], &["-admin"]),
        spire.entry(
            &spire.id("/edge-ca"),
            &node,
            &["unix:uid:999"],
            &["-downstream"],
        ),
        spire.entry(&spire.id("/plain"), &node, &["unix:uid:1001"], &[]),
    ];
    assert_eq!(made[0], "db-primary");

    let printed = spire.cli_ok(&["entry", "show"], &["-output", "json"]);
    let file = dir.path().join("spire-entries.json");
    std::fs::write(&file, &printed).unwrap();
    let spire_entries: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let spire_entries = spire_entries["entries"].as_array().unwrap().clone();
    assert_eq!(spire_entries.len(), made.len(), "{printed}");

    let tessera = Server::start(&dir.path().join("tessera-server"), "");
    let created = tessera.cli_ok(&[
        "entry",
        "create",
        "--data",
        file.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(
        created["results"].as_array().unwrap().len(),
        made.len(),
        "{created}"
    );

    let shown: serde_json::Value =
        serde_json::from_str(&tessera.cli_ok(&["entry", "show", "--output", "json"])).unwrap();
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), made.len(), "{shown:?}");
    let id_of = |v: &serde_json::Value| {
        format!(
            "spiffe://{}{}",
            v["trust_domain"].as_str().unwrap(),
            v["path"].as_str().unwrap()
        )
    };
    for s in &spire_entries {
        let id = s["id"].as_str().unwrap();
        let t = shown
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("entry {id} did not arrive: {shown:?}"));
        assert_eq!(t["spiffe_id"], id_of(&s["spiffe_id"]), "{id}");
        assert_eq!(t["parent_id"], id_of(&s["parent_id"]), "{id}");
        let selectors = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| match x.as_str() {
                    Some(s) => s.to_owned(),
                    None => format!(
                        "{}:{}",
                        x["type"].as_str().unwrap(),
                        x["value"].as_str().unwrap()
                    ),
                })
                .collect()
        };
        assert_eq!(
            selectors(&t["selectors"]),
            selectors(&s["selectors"]),
            "{id}"
        );
        for field in [
            "x509_svid_ttl",
            "jwt_svid_ttl",
            "admin",
            "downstream",
            "dns_names",
            "hint",
        ] {
            assert_eq!(t[field], s[field], "{id}: {field}");
        }
        let expires: i64 = s["expires_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(t["expires_at"], expires, "{id}: expires_at");
        let federates = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    x.as_str()
                        .unwrap()
                        .trim_start_matches("spiffe://")
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(
            federates(&t["federates_with"]),
            federates(&s["federates_with"]),
            "{id}"
        );
    }
    let db = shown.iter().find(|t| t["id"] == "db-primary").unwrap();
    assert_eq!(db["federates_with"].as_array().unwrap().len(), 1, "{db}");
    assert_eq!(db["hint"], "primary");

    // The same file again: every entry is there already, and nothing changes.
    let o = tessera.cli(&["entry", "create", "--data", file.to_str().unwrap()]);
    assert!(!o.status.success(), "duplicates must be reported");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{0} of {0} entries failed", made.len())),
        "{err}"
    );
    assert_eq!(
        tessera.cli_ok(&["entry", "count"]),
        format!("{} registration entries\n", made.len())
    );
}
