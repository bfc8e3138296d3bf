//! Federation relationships managed with `tessera-server federation` against real
//! bundle endpoints: Tessera servers of two other trust domains, one serving its
//! bundle as `https_spiffe` (`other.test`), one as `https_web` with a certificate
//! from a private CA (`web.test`). The server under test (`example.org`) has one
//! relationship in its configuration and gains the others from the CLI: each is
//! fetched at once (the JWT keys arrive, which the PEM bootstrap cannot carry),
//! listed, shown, updated (a bad URL makes `refresh` fail and keeps the bundle),
//! kept across a restart, and deleted (fetching stops, the bundle stays). Bad input
//! is refused with the reason, and nothing of it is stored.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::time::Duration;

use tessera_swtpm_tests::{Server, free_port, test_dir, wait_until};

fn jwt_kids(v: &serde_json::Value) -> Vec<String> {
    let mut kids = tessera_swtpm_tests::jwt_kids(v);
    kids.sort();
    kids
}

/// The JWT key IDs of `server`'s own bundle.
fn own_kids(server: &Server) -> Vec<String> {
    jwt_kids(
        &serde_json::from_str(&server.cli_ok(&["bundle", "show", "--format", "jwks"])).unwrap(),
    )
}

/// Waits until `server` holds `td`'s bundle with the JWT keys `kids`.
fn wait_for_kids(server: &Server, td: &str, kids: &[String]) {
    let mut has = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        has = server
            .federated_jwks(td)
            .map(|v| jwt_kids(&v))
            .unwrap_or_default();
        has == kids
    });
    assert!(
        ok,
        "the bundle of {td} was not fetched (JWT keys {has:?}, want {kids:?}):\n{}",
        server.log()
    );
}

/// A private CA (PEM) and a certificate for 127.0.0.1 and localhost it signed,
/// with its key (PEM), written under `dir`: ca.pem, web.pem, web.key.
fn web_certificate(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "web.test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("web.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("web.key"), key.serialize_pem()).unwrap();
}

/// Runs a `federation` command expected to fail; returns its standard error.
fn refused(server: &Server, args: &[&str]) -> String {
    let o = server.cli(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "tessera-server {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

/// The trust domains and sources `federation list --output json` prints.
fn listed(server: &Server) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["federation", "list", "--output", "json"])).unwrap();
    v["federation_relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["trust_domain"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn relationships_are_created_listed_updated_and_deleted_with_the_cli() {
    let dir = test_dir("federation-cli");
    let (other_port, web_port, closed) = (free_port(), free_port(), free_port());
    web_certificate(dir.path());
    let other = Server::start_in(
        &dir.path().join("other"),
        "other.test",
        &format!("[federation.bundle_endpoint]\naddress = \"127.0.0.1:{other_port}\"\n"),
    );
    let web = Server::start_in(
        &dir.path().join("web"),
        "web.test",
        &format!(
            "[federation.bundle_endpoint]\naddress = \"127.0.0.1:{web_port}\"\n\
             profile = \"https_web\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("web.pem").display(),
            dir.path().join("web.key").display()
        ),
    );
    let mut server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[[federation.federates_with]]\ntrust_domain = \"config.test\"\n\
             bundle_endpoint_url = \"https://127.0.0.1:{closed}\"\n\
             bundle_endpoint_profile = \"https_web\"\n"
        ),
    );
    let other_url = format!("https://127.0.0.1:{other_port}");
    let web_url = format!("https://127.0.0.1:{web_port}");
    let other_pem = other.bundle_pem();
    let other_pem = other_pem.to_str().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    let ca_pem = ca_pem.to_str().unwrap();
    let (other_kids, web_kids) = (own_kids(&other), own_kids(&web));
    assert!(!other_kids.is_empty() && !web_kids.is_empty());

    // The configured relationship is listed, with its source.
    let text = server.cli_ok(&["federation", "list"]);
    assert!(
        text.starts_with("Found 1 federation relationship\n"),
        "{text}"
    );
    assert!(
        text.contains("Source                    : config"),
        "{text}"
    );

    // Bad input is refused with the reason; nothing is stored.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "no certificate here\n").unwrap();
    let huge = dir.path().join("huge.pem");
    std::fs::write(&huge, "#".repeat(600 * 1024)).unwrap();
    let spiffe = |td: &str, url: &str| {
        vec![
            "federation".to_owned(),
            "create".to_owned(),
            "--trust-domain".to_owned(),
            td.to_owned(),
            "--bundle-endpoint-url".to_owned(),
            url.to_owned(),
            "--bundle-endpoint-profile".to_owned(),
            "https_spiffe".to_owned(),
            "--endpoint-spiffe-id".to_owned(),
            format!("spiffe://{td}/spire/server"),
        ]
    };
    let run = |args: &[String]| {
        refused(
            &server,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    for (args, says) in [
        (
            spiffe("config.test", &other_url),
            "is in the server's configuration",
        ),
        (spiffe("example.org", &other_url), "own trust domain"),
        (spiffe("other.test", "http://127.0.0.1:1"), "must be https"),
        (
            spiffe("other.test", &other_url)[..8].to_vec(),
            "needs endpoint_spiffe_id",
        ),
        (
            [
                &spiffe("other.test", &other_url)[..6],
                &[
                    "--bundle-endpoint-profile".to_owned(),
                    "https_web".to_owned(),
                ],
                &["--ca-bundle".to_owned(), not_pem.display().to_string()],
            ]
            .concat(),
            "ca_bundle: the PEM given",
        ),
        (
            [
                &spiffe("other.test", &other_url)[..6],
                &[
                    "--bundle-endpoint-profile".to_owned(),
                    "https_web".to_owned(),
                ],
                &["--ca-bundle".to_owned(), huge.display().to_string()],
            ]
            .concat(),
            "more than the 524288 accepted",
        ),
        (
            spiffe("other.test", &other_url)[..4].to_vec(),
            "--bundle-endpoint-url is required",
        ),
    ] {
        let err = run(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(listed(&server), pairs(&[("config.test", "config")]));

    // https_spiffe, with SPIRE's flag names and the other side's bundle (PEM, so
    // without its JWT keys): fetched at once.
    let out = server.cli_ok(&[
        "federation",
        "create",
        "--trustDomain",
        "other.test",
        "--bundleEndpointURL",
        &other_url,
        "--bundleEndpointProfile",
        "https_spiffe",
        "--endpointSpiffeID",
        "spiffe://other.test/spire/server",
        "--trustDomainBundlePath",
        other_pem,
    ]);
    assert!(out.starts_with("Federation relationship created."), "{out}");
    wait_for_kids(&server, "other.test", &other_kids);
    let err = refused(
        &server,
        &spiffe("other.test", &other_url)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(err.contains("already exists"), "{err}");

    // https_web, checked against the roots given with it.
    server.cli_ok(&[
        "federation",
        "create",
        "--trust-domain",
        "web.test",
        "--bundle-endpoint-url",
        &web_url,
        "--bundle-endpoint-profile",
        "https_web",
        "--ca-bundle",
        ca_pem,
    ]);
    wait_for_kids(&server, "web.test", &web_kids);
    assert_eq!(
        listed(&server),
        pairs(&[
            ("config.test", "config"),
            ("other.test", "datastore"),
            ("web.test", "datastore"),
        ])
    );
    let shown: serde_json::Value = serde_json::from_str(&server.cli_ok(&[
        "federation",
        "show",
        "--trust-domain",
        "other.test",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(shown["bundle_endpoint_url"], other_url.as_str());
    assert_eq!(shown["bundle_endpoint_profile"], "https_spiffe");
    assert_eq!(
        shown["endpoint_spiffe_id"],
        "spiffe://other.test/spire/server"
    );

    // Updated to an address where nothing answers: a refresh fails saying why, and
    // the bundle fetched before stays.
    let mut update = spiffe("other.test", &format!("https://127.0.0.1:{closed}"));
    update[1] = "update".to_owned();
    let out = server.cli_ok(&update.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.starts_with("Federation relationship updated."), "{out}");
    let err = refused(&server, &["federation", "refresh", "--id", "other.test"]);
    assert!(err.contains(&format!("127.0.0.1:{closed}")), "{err}");
    wait_for_kids(&server, "other.test", &other_kids);
    update[5] = other_url.clone();
    server.cli_ok(&update.iter().map(String::as_str).collect::<Vec<_>>());
    let out = server.cli_ok(&["federation", "refresh", "--id", "other.test"]);
    assert!(out.starts_with("Bundle of other.test refreshed"), "{out}");

    // Kept across a restart, and fetched again by the new process.
    server.restart();
    assert_eq!(listed(&server).len(), 3);
    assert!(
        wait_until(Duration::from_secs(10), || {
            server.log().contains("federation relationship started")
                && server.log().contains("federated bundle refreshed")
        }),
        "{}",
        server.log()
    );

    // Deleted: no longer listed or refreshed; the bundle stays until bundle delete.
    let out = server.cli_ok(&["federation", "delete", "--id", "other.test"]);
    assert_eq!(out, "Federation relationship deleted.\n");
    assert_eq!(
        listed(&server),
        pairs(&[("config.test", "config"), ("web.test", "datastore")])
    );
    assert_eq!(
        server.federated_jwks("other.test").map(|v| jwt_kids(&v)),
        Some(other_kids.clone())
    );
    assert!(
        wait_until(Duration::from_secs(5), || server
            .log()
            .contains("its bundle is no longer fetched")),
        "{}",
        server.log()
    );
    for args in [
        &["federation", "delete", "--id", "other.test"][..],
        &["federation", "refresh", "--id", "other.test"],
        &["federation", "show", "--trust-domain", "other.test"],
    ] {
        let err = refused(&server, args);
        assert!(
            err.contains("not found") || err.contains("no federation relationship"),
            "{args:?}: {err}"
        );
    }
    let err = refused(&server, &["federation", "delete", "--id", "config.test"]);
    assert!(err.contains("is in the server's configuration"), "{err}");

    // Back from a file as `spire-server federation create -data` reads it, with
    // the bundle inside.
    let data = dir.path().join("relationships.json");
    std::fs::write(
        &data,
        serde_json::json!({
            "federationRelationships": [{
                "trustDomain": "other.test",
                "bundleEndpointURL": other_url,
                "bundleEndpointProfile": "https_spiffe",
                "endpointSPIFFEID": "spiffe://other.test/spire/server",
                "trustDomainBundle": std::fs::read_to_string(other_pem).unwrap(),
                "trustDomainBundleFormat": "pem",
            }]
        })
        .to_string(),
    )
    .unwrap();
    let out = server.cli_ok(&["federation", "create", "--data", data.to_str().unwrap()]);
    assert!(out.starts_with("Federation relationship created."), "{out}");
    let out = server.cli_ok(&["federation", "refresh", "--id", "other.test"]);
    assert!(out.starts_with("Bundle of other.test refreshed"), "{out}");
    assert_eq!(listed(&server).len(), 3);
}

/// `https_web` with ACME: the endpoint's certificate is issued by Pebble (a real
/// ACME server), which validates tls-alpn-01 on the endpoint's own port; another
/// server fetches the bundle checking the certificate under Pebble's root; after a
/// restart the stored certificate is served without a new order.
#[test]
fn an_https_web_endpoint_gets_its_certificate_over_acme() {
    use tessera_swtpm_tests::pebble::Pebble;
    let dir = test_dir("federation-acme");
    let port = free_port();
    let pebble = Pebble::start(&dir.path().join("pebble"), port);
    let mut web = Server::start_in(
        &dir.path().join("web"),
        "web.test",
        &format!(
            "[federation.bundle_endpoint]\naddress = \"127.0.0.1:{port}\"\n\
             profile = \"https_web\"\n[federation.bundle_endpoint.acme]\n\
             domain_name = \"localhost\"\nemail = \"ops@web.test\"\ntos_accepted = true\n\
             directory_url = \"{}\"\nca_bundle = \"{}\"\n",
            pebble.directory(),
            pebble.api_roots().display()
        ),
    );
    let issued = |server: &Server| server.log().contains("certificate issued over ACME");
    assert!(
        wait_until(Duration::from_secs(60), || issued(&web)),
        "no certificate issued:\n{}\npebble:\n{}",
        web.log(),
        pebble.log()
    );
    let stored = dir.path().join("web/data/acme/localhost.crt.pem");
    let first = std::fs::read_to_string(&stored).unwrap();

    // The relying side trusts Pebble's issuing root only.
    let root = pebble.issuer_roots();
    let server = Server::start(&dir.path().join("server"), "");
    let web_rel = |verb: &str, roots: &Path| {
        server.cli_ok(&[
            "federation",
            verb,
            "--trust-domain",
            "web.test",
            "--bundle-endpoint-url",
            &format!("https://localhost:{port}"),
            "--bundle-endpoint-profile",
            "https_web",
            "--ca-bundle",
            roots.to_str().unwrap(),
        ])
    };
    web_rel("create", &root);
    wait_for_kids(&server, "web.test", &own_kids(&web));
    // Under a root it was not issued under, the fetch is refused, saying why.
    web_rel("update", &pebble.api_roots());
    let err = refused(&server, &["federation", "refresh", "--id", "web.test"]);
    assert!(err.contains("TLS with localhost"), "{err}");
    web_rel("update", &root);

    // Restarted, the endpoint serves the stored certificate: no new order.
    web.restart();
    let out = server.cli_ok(&["federation", "refresh", "--id", "web.test"]);
    assert!(out.starts_with("Bundle of web.test refreshed"), "{out}");
    assert!(
        !issued(&web),
        "ordered again after a restart:\n{}",
        web.log()
    );
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), first);
}
