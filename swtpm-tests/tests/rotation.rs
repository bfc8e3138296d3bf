//! Rotation with short lifetimes: an open FetchX509SVID stream receives each new SVID
//! before the old one expires, and across a CA rotation every SVID the workload holds
//! stays valid against the bundle it was sent with (and against every later bundle
//! until it expires).

use std::time::Duration;

use tessera_swtpm_tests::{Agent, Server, assert_continuous, my_uid, test_dir, watch_x509};

#[test]
fn svids_and_cas_rotate_without_a_gap() {
    let dir = test_dir("rotation");
    let server = Server::start(
        &dir.path().join("server"),
        "ca_ttl = \"24s\"\nx509_svid_ttl = \"4s\"\njwt_svid_ttl = \"4s\"\nbundle_refresh_hint = \"1s\"",
    );
    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        "spiffe://example.org/workload",
        "spiffe://example.org/node",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        "sync_interval = \"300ms\"",
    );

    // Long enough for the CA prepared at 12 s to become active at 20 s, and beyond.
    let updates = watch_x509(&agent, Duration::from_secs(30));
    let serials: std::collections::BTreeSet<&str> =
        updates.iter().map(|r| r.serial.as_str()).collect();
    assert!(
        serials.len() >= 6,
        "only {} SVIDs in 30 s:\n{}",
        serials.len(),
        agent.log()
    );
    assert_continuous(&updates);
    let issuers: std::collections::BTreeSet<&str> =
        updates.iter().map(|r| r.issuer.as_str()).collect();
    assert!(
        issuers.len() >= 2,
        "the CA did not rotate within the test: {issuers:?}\n{}",
        server.log()
    );
    assert!(
        server.log().contains("X.509 CA rotated"),
        "{}",
        server.log()
    );
}
