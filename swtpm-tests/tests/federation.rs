//! Federation both ways with SPIRE: Tessera's trust domain (`example.org`) and a
//! SPIRE trust domain (`spire.test`) each serve their bundle on an `https_spiffe`
//! bundle endpoint and fetch the other's. Each side is bootstrapped with the other's
//! X.509 authorities only (PEM, which cannot carry JWT keys), so the JWT keys each
//! side ends up with can only have come from fetching the other's endpoint. A
//! go-spiffe workload under each agent then gets the other trust domain's bundles
//! from its own agent, the two complete mTLS with SPIFFE ID authorization, and a
//! JWT-SVID from SPIRE's workload validates at Tessera's.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::time::Duration;

use tessera_swtpm_tests::spiffe_libs::{Lib, field};
use tessera_swtpm_tests::spire::{SpireAgent, SpireServer, SpireServerOptions};
use tessera_swtpm_tests::{Agent, Server, free_port, my_uid, test_dir, wait_until};

const TESSERA_WORKLOAD: &str = "spiffe://example.org/payments";
const SPIRE_WORKLOAD: &str = "spiffe://spire.test/ledger";

/// The kids of `td`'s JWT bundle, as go-spiffe got them from the agent at
/// `endpoint` (empty when the agent sent no such bundle).
fn jwt_kids(endpoint: &str, td: &str, dir: &std::path::Path) -> Vec<String> {
    let o = Lib::Go.run(endpoint, None, &["bundles", dir.to_str().unwrap()]);
    if !o.status.success() {
        return Vec::new();
    }
    let f = tessera_swtpm_tests::spiffe_libs::Facts::from(&o);
    f.records("jwt_bundle")
        .iter()
        .find(|r| field(r, "td") == td)
        .map(|r| {
            field(r, "kids")
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn tessera_and_spire_federate_both_ways_and_their_workloads_meet_over_mtls() {
    let dir = test_dir("federation");
    let uid = format!("unix:uid:{}", my_uid());
    let tessera_endpoint_port = free_port();
    let spire_endpoint_port = free_port();

    // SPIRE serves its bundle endpoint; its relationship with Tessera is created
    // below, once Tessera's bundle can be handed to it.
    let spire = SpireServer::start(
        &dir.path().join("spire-server"),
        &SpireServerOptions {
            server_extra: format!(
                "federation {{\n    bundle_endpoint {{\n      address = \"127.0.0.1\"\n      \
                 port = {spire_endpoint_port}\n    }}\n  }}"
            ),
            ..SpireServerOptions::default()
        },
    );
    // Tessera serves its bundle endpoint and federates with SPIRE from the start:
    // its fetches fail (no bundle of spire.test to check SPIRE's SVID with) until
    // the bootstrap below.
    let tessera = Server::start(
        &dir.path().join("tessera-server"),
        &format!(
            "[federation.bundle_endpoint]\naddress = \"127.0.0.1:{tessera_endpoint_port}\"\n\
             [[federation.federates_with]]\ntrust_domain = \"spire.test\"\n\
             bundle_endpoint_url = \"https://127.0.0.1:{spire_endpoint_port}\"\n\
             bundle_endpoint_profile = \"https_spiffe\"\n\
             endpoint_spiffe_id = \"spiffe://spire.test/spire/server\"\n"
        ),
    );

    // Bootstrap each side with the other's X.509 authorities (PEM).
    let spire_pem = dir.path().join("spire-bundle.pem");
    std::fs::write(
        &spire_pem,
        spire.cli_ok(&["bundle", "show"], &["-format", "pem"]),
    )
    .unwrap();
    tessera.cli_ok(&[
        "bundle",
        "set",
        "--id",
        "spiffe://spire.test",
        "--path",
        spire_pem.to_str().unwrap(),
        "--format",
        "pem",
    ]);
    let tessera_pem = tessera.bundle_pem();
    spire.cli_ok(
        &["federation", "create"],
        &[
            "-trustDomain",
            "example.org",
            "-bundleEndpointURL",
            &format!("https://127.0.0.1:{tessera_endpoint_port}"),
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://example.org/spire/server",
            "-trustDomainBundlePath",
            tessera_pem.to_str().unwrap(),
            "-trustDomainBundleFormat",
            "pem",
        ],
    );

    // Each side fetches the other's endpoint: the JWT keys arrive.
    let jwks_of = |text: &str| -> serde_json::Value { serde_json::from_str(text).unwrap() };
    let jwt_keys = tessera_swtpm_tests::jwt_kids;
    let spire_own_jwt = jwt_keys(&jwks_of(
        &spire.cli_ok(&["bundle", "show"], &["-format", "spiffe"]),
    ));
    assert!(!spire_own_jwt.is_empty(), "SPIRE has no JWT key");
    let mut tessera_has = Vec::new();
    let fetched = wait_until(Duration::from_secs(90), || {
        tessera_has = tessera
            .federated_jwks("spire.test")
            .map(|v| jwt_keys(&v))
            .unwrap_or_default();
        tessera_has == spire_own_jwt
    });
    assert!(
        fetched,
        "Tessera did not fetch SPIRE's bundle (it has JWT keys {tessera_has:?}, SPIRE's are \
         {spire_own_jwt:?}):\n{}",
        tessera.log()
    );
    assert!(tessera.log().contains("federated bundle refreshed"));
    let tessera_own_jwt = jwt_keys(&jwks_of(
        &tessera.cli_ok(&["bundle", "show", "--format", "jwks"]),
    ));
    let mut spire_has = Vec::new();
    let fetched = wait_until(Duration::from_secs(90), || {
        let o = spire.cli(
            &["bundle", "list"],
            &["-id", "spiffe://example.org", "-format", "spiffe"],
        );
        spire_has = jwt_keys(&jwks_of(&String::from_utf8_lossy(&o.stdout)));
        spire_has == tessera_own_jwt
    });
    assert!(
        fetched,
        "SPIRE did not fetch Tessera's bundle (it has JWT keys {spire_has:?}, Tessera's are \
         {tessera_own_jwt:?}):\n{}",
        spire.log()
    );

    // A workload under each agent, federating with the other trust domain.
    let spire_node = spire.id("/node");
    let spire_token = spire.token(Some(&spire_node));
    spire.entry(
        SPIRE_WORKLOAD,
        &spire_node,
        &[&uid],
        &["-federatesWith", "spiffe://example.org"],
    );
    let spire_agent = SpireAgent::start(&dir.path().join("spire-agent"), &spire, &spire_token, "");
    let token = tessera.token(Some("spiffe://example.org/node"), None);
    tessera.entry(
        TESSERA_WORKLOAD,
        "spiffe://example.org/node",
        &[&uid],
        &["--federates-with", "spire.test"],
    );
    let tessera_agent = Agent::start(
        &dir.path().join("tessera-agent"),
        &tessera,
        Some(&token),
        "",
    );
    let (t_ep, s_ep) = (tessera_agent.endpoint(), spire_agent.endpoint());

    // Each workload holds the other trust domain's JWT keys, as fetched.
    let mut kids = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            kids = jwt_kids(&t_ep, "spire.test", &dir.path().join("t-bundles"));
            kids == spire_own_jwt
        }),
        "Tessera's workload has spire.test JWT keys {kids:?}:\n{}",
        tessera_agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            kids = jwt_kids(&s_ep, "example.org", &dir.path().join("s-bundles"));
            kids == tessera_own_jwt
        }),
        "SPIRE's workload has example.org JWT keys {kids:?}:\n{}",
        spire_agent.log()
    );

    // mTLS across the trust domains, each side authorizing the other's SPIFFE ID.
    let srv = Lib::Go.serve(&t_ep, Some(TESSERA_WORKLOAD), SPIRE_WORKLOAD);
    let ok = Lib::Go.run_ok(
        &s_ep,
        Some(SPIRE_WORKLOAD),
        &["dial", &srv.addr, TESSERA_WORKLOAD],
    );
    assert_eq!(ok.value("peer"), TESSERA_WORKLOAD, "{}", ok.stdout);
    assert_eq!(
        srv.wait_values("accepted", 1).last().unwrap(),
        SPIRE_WORKLOAD
    );
    let srv = Lib::Go.serve(&s_ep, Some(SPIRE_WORKLOAD), TESSERA_WORKLOAD);
    let ok = Lib::Go.run_ok(
        &t_ep,
        Some(TESSERA_WORKLOAD),
        &["dial", &srv.addr, SPIRE_WORKLOAD],
    );
    assert_eq!(ok.value("peer"), SPIRE_WORKLOAD, "{}", ok.stdout);

    // A JWT-SVID SPIRE minted validates at Tessera's workload with the fetched keys.
    let j = Lib::Go.run_ok(&s_ep, None, &["jwt", "payments"]);
    assert_eq!(j.value("spiffe_id"), SPIRE_WORKLOAD);
    let o = Lib::Go.run(&t_ep, None, &["validate", j.value("token"), "payments"]);
    let v = tessera_swtpm_tests::spiffe_libs::Facts::from(&o);
    assert_eq!(
        v.get("local"),
        Some(SPIRE_WORKLOAD),
        "{}\n{}",
        v.stdout,
        v.stderr
    );
}
