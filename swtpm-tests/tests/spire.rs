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
