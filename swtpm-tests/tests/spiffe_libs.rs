//! The real SPIFFE libraries against Tessera's agent: go-spiffe v2 and java-spiffe
//! (small programs on each, `swtpm-tests/go-spiffe` and `swtpm-tests/java-spiffe`)
//! fetch X509- and JWT-SVIDs and bundles, validate JWT-SVIDs locally and through
//! the agent (their own and each other's), watch an SVID rotation, and complete
//! mTLS with each other, in and across languages, through the libraries' own TLS
//! helpers with SPIFFE ID authorization, refusing a peer with the wrong ID.
//!
//! java-spiffe talks to the agent through grpc-netty on an epoll Unix socket, which
//! sends the socket's path as the HTTP/2 `:authority` (the fetch test reads it in
//! the agent's trace): every java-spiffe call that succeeds here is one the agent
//! accepted with that authority.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tessera_swtpm_tests::spiffe_libs::{Facts, Lib, field};
use tessera_swtpm_tests::{Agent, Server, my_uid, openssl_verify, py_ok, test_dir, wait_until};

const LIBS: [Lib; 2] = [Lib::Go, Lib::Java];

fn id(path: &str) -> String {
    format!("spiffe://example.org{path}")
}

/// A server (with `server_extra` settings) and an agent attested with a join
/// token whose alias is `node`, and an entry under it for this test process's UID
/// for each of `paths`; returns once the agent serves all of them.
fn setup(dir: &Path, server_extra: &str, agent_extra: &str, paths: &[&str]) -> (Server, Agent) {
    let server = Server::start(&dir.join("server"), server_extra);
    let token = server.token(Some(&id("/node")), None);
    for p in paths {
        server.entry(
            &id(p),
            &id("/node"),
            &[&format!("unix:uid:{}", my_uid())],
            &[],
        );
    }
    let agent = Agent::start(&dir.join("agent"), &server, Some(&token), agent_extra);
    let want: BTreeSet<String> = paths.iter().map(|p| id(p)).collect();
    let ok = wait_until(Duration::from_secs(30), || {
        let out = agent.cli(&["api", "fetch", "x509"]);
        let served: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("SPIFFE ID:"))
            .map(|v| v.trim().to_owned())
            .collect();
        want.is_subset(&served)
    });
    assert!(ok, "the agent did not serve {want:?}:\n{}", agent.log());
    (server, agent)
}

/// `text` without the terminal colour codes the agent's log lines carry.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The DER certificates in a PEM file, as a set.
fn der_set(path: &Path) -> BTreeSet<Vec<u8>> {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tessera_core::x509::pem_certs(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

#[test]
fn libraries_fetch_svids_and_bundles_and_validate_jwts() {
    let dir = test_dir("libs-fetch");
    // The agent logs each `:authority` it rewrites, so the test can see what
    // java-spiffe's transport sent.
    let (server, agent) = setup(
        dir.path(),
        "",
        "log_level = \"info,tessera_h2_authority=trace\"",
        &["/workload"],
    );
    let ep = agent.endpoint();
    let server_bundle = der_set(&server.bundle_pem());
    assert!(!server_bundle.is_empty());

    let mut kids_seen = Vec::new();
    let mut tokens = Vec::new();
    for lib in LIBS {
        let name = lib.name();
        // The X509-SVID through the library's X509Source, verified by the library
        // against the bundle it received, and again by OpenSSL.
        let out = dir.path().join(format!("{name}-x509"));
        let log_before = agent.log().len();
        let x = lib.run_ok(&ep, None, &["x509", out.to_str().unwrap()]);
        if lib == Lib::Java {
            // grpc-netty sent the socket's own path as `:authority`, which h2
            // alone would refuse; the agent served it.
            let log = plain(&agent.log()[log_before..]);
            let want = format!("authority={}", agent.socket.display());
            assert!(
                log.contains(&want),
                "java-spiffe's request did not carry {want}:\n{log}"
            );
        }
        assert_eq!(x.value("spiffe_id"), id("/workload"), "{name}");
        assert_eq!(x.value("verified"), id("/workload"), "{name}");
        assert_eq!(x.value("chain_len"), "1", "{name}");
        assert_eq!(
            x.value("bundle_len"),
            server_bundle.len().to_string(),
            "{name}"
        );
        let not_after: i64 = x.value("not_after").parse().unwrap();
        assert!(not_after > tessera_core::x509::unix_seconds(std::time::SystemTime::now()));
        let v = openssl_verify(&out.join("bundle.pem"), &out.join("chain.pem"));
        assert!(
            v.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        assert_eq!(der_set(&out.join("bundle.pem")), server_bundle, "{name}");

        // The bundles RPCs: the server's X.509 authorities, and JWT keys.
        let out = dir.path().join(format!("{name}-bundles"));
        let b = lib.run_ok(&ep, None, &["bundles", out.to_str().unwrap()]);
        let x509 = b.records("x509_bundle");
        assert_eq!(x509.len(), 1, "{name}: {}", b.stdout);
        assert_eq!(field(&x509[0], "td"), "example.org");
        assert_eq!(
            der_set(&out.join("example.org.x509.pem")),
            server_bundle,
            "{name}"
        );
        let jwt = b.records("jwt_bundle");
        assert_eq!(jwt.len(), 1, "{name}: {}", b.stdout);
        assert_eq!(field(&jwt[0], "td"), "example.org");
        let kids = field(&jwt[0], "kids").to_owned();
        assert!(!kids.is_empty(), "{name}: no JWT keys: {}", b.stdout);
        if lib == Lib::Go {
            // go-spiffe's own JWKS rendering of the bundle holds the same keys.
            let jwks: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("example.org.jwks.json")).unwrap())
                    .unwrap();
            let mut from_jwks: Vec<&str> = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|k| k["kid"].as_str())
                .collect();
            from_jwks.sort_unstable();
            assert_eq!(from_jwks.join(","), kids);
        }
        kids_seen.push(kids);

        let audience = format!("{name}-audience");
        let j = lib.run_ok(&ep, None, &["jwt", &audience]);
        assert_eq!(j.value("spiffe_id"), id("/workload"), "{name}");
        tokens.push((name, j.value("token").to_owned(), audience));
    }
    assert_eq!(
        kids_seen[0], kids_seen[1],
        "the libraries saw different JWT keys"
    );

    for (issuer, token, audience) in &tokens {
        // Each token validated by every library, locally and through the agent,
        // and by py-spiffe.
        for lib in LIBS {
            let v = lib.run_ok(&ep, None, &["validate", token, audience]);
            assert_eq!(
                v.value("local"),
                id("/workload"),
                "{issuer} token, {}",
                lib.name()
            );
            assert_eq!(
                v.value("agent"),
                id("/workload"),
                "{issuer} token, {}",
                lib.name()
            );
        }
        let py: serde_json::Value = serde_json::from_str(
            py_ok(&agent, "workload.py", &["validate", token, audience]).trim(),
        )
        .unwrap();
        assert_eq!(py["local"], id("/workload"));
        assert_eq!(py["agent"], id("/workload"));
    }

    // The wrong audience, and a token whose signature was altered, are refused
    // both by each library and by the agent.
    let (_, token, audience) = &tokens[0];
    // The signature's first character changes: its six bits are all
    // significant (the last character's low bits are not, and lenient base64
    // decoders ignore them), so the signature bytes differ for certain.
    let sig_at = token.rfind('.').unwrap() + 1;
    let first = &token[sig_at..=sig_at];
    let tampered = format!(
        "{}{}{}",
        &token[..sig_at],
        if first == "A" { "B" } else { "A" },
        &token[sig_at + 1..]
    );
    for (what, t, aud) in [
        ("wrong audience", token.as_str(), "someone-else"),
        ("altered signature", tampered.as_str(), audience.as_str()),
    ] {
        for lib in LIBS {
            let o = lib.run(&ep, None, &["validate", t, aud]);
            let f = Facts::from(&o);
            assert!(
                !o.status.success(),
                "{what} accepted by {}: {}",
                lib.name(),
                f.stdout
            );
            assert!(
                f.get("local").is_none() && f.get("local_error").is_some(),
                "{what}, {}: {}",
                lib.name(),
                f.stdout
            );
            let agent_error = f.value("agent_error");
            assert!(
                agent_error.contains("InvalidArgument") || agent_error.contains("INVALID_ARGUMENT"),
                "{what}, {}: {agent_error}",
                lib.name()
            );
        }
    }
}

#[test]
fn libraries_watch_a_rotation() {
    let dir = test_dir("libs-rotation");
    let (_server, agent) = setup(
        dir.path(),
        "x509_svid_ttl = \"4s\"",
        "sync_interval = \"300ms\"",
        &["/workload"],
    );
    let ep = agent.endpoint();
    // Both watch at once: three different SVIDs each, pushed on the open stream.
    let watchers: Vec<_> = LIBS
        .iter()
        .map(|&lib| {
            let child = lib
                .command(&ep, None, &["watch", "3", "45"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (lib, child)
        })
        .collect();
    for (lib, child) in watchers {
        let o = child.wait_with_output().unwrap();
        let f = Facts::from(&o);
        assert!(
            o.status.success(),
            "{} watch failed:\n{}\n{}\n{}",
            lib.name(),
            f.stdout,
            f.stderr,
            agent.log()
        );
        let updates = f.records("update");
        let serials: BTreeSet<&str> = updates.iter().map(|u| field(u, "serial")).collect();
        assert!(serials.len() >= 3, "{}: {}", lib.name(), f.stdout);
        for (i, u) in updates.iter().enumerate() {
            assert_eq!(field(u, "spiffe_id"), id("/workload"));
            if i == 0 {
                continue;
            }
            let prev = &updates[i - 1];
            // Each new SVID arrived while the one before was still valid.
            let at_ms: i64 = field(u, "at").parse().unwrap();
            let prev_not_after: i64 = field(prev, "not_after").parse().unwrap();
            assert!(
                at_ms < prev_not_after * 1000,
                "{}: update {i} arrived after the previous SVID expired: {}",
                lib.name(),
                f.stdout
            );
        }
    }
}

#[test]
fn libraries_complete_mtls_with_spiffe_id_authorization() {
    let dir = test_dir("libs-mtls");
    let (_server, agent) = setup(dir.path(), "", "", &["/server", "/client", "/intruder"]);
    let ep = agent.endpoint();
    let (server_id, client_id, intruder_id) = (id("/server"), id("/client"), id("/intruder"));

    for server_lib in LIBS {
        let srv = server_lib.serve(&ep, Some(&server_id), &client_id);
        assert_eq!(srv.self_id, server_id);
        let sname = server_lib.name();
        for (n, client_lib) in LIBS.into_iter().enumerate() {
            let cname = client_lib.name();
            // The right client, expecting the right server: both sides authorize.
            let ok = client_lib.run_ok(&ep, Some(&client_id), &["dial", &srv.addr, &server_id]);
            assert_eq!(ok.value("peer"), server_id, "{cname} -> {sname}");
            assert!(
                ok.value("reply")
                    .starts_with(&format!("hello {client_id} from {server_id}")),
                "{cname} -> {sname}: {}",
                ok.stdout
            );
            assert_eq!(
                srv.wait_values("accepted", n + 1).last().unwrap(),
                &client_id
            );

            // A client of the same trust domain with the wrong ID: the server's
            // authorizer refuses it, naming the ID.
            let refused_before = srv.values("refused").len();
            let o = client_lib.run(&ep, Some(&intruder_id), &["dial", &srv.addr, &server_id]);
            assert!(
                !o.status.success(),
                "{sname} accepted {intruder_id} from {cname}: {}",
                String::from_utf8_lossy(&o.stdout)
            );
            let refused = srv.wait_values("refused", refused_before + 1);
            assert!(
                refused[refused_before..]
                    .iter()
                    .any(|r| r.contains(&intruder_id)),
                "{sname} refused {cname}'s intruder without naming it: {refused:?}"
            );

            // The client's authorizer refuses a server that is not the one it expects.
            let o = client_lib.run(
                &ep,
                Some(&client_id),
                &["dial", &srv.addr, &id("/someone-else")],
            );
            assert!(
                !o.status.success(),
                "{cname} accepted {server_id} as someone else"
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(&server_id), "{cname}: {err}");
        }
        // Only the authorized client was ever accepted.
        let accepted = srv.values("accepted");
        assert_eq!(
            accepted,
            vec![client_id.clone(), client_id.clone()],
            "{sname}: {}",
            srv.output()
        );
    }
}
