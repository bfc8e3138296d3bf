//! The `tessera-server` and `tessera-agent` verbs SPIRE users reach for, against a real
//! server: `entry count`, `entry create --data` (SPIRE's file format; a bad entry does
//! not stop the others, the exit status says some failed), `agent show|count`,
//! `bundle count`, `logger get|set|reset` on the running server, and `validate` for
//! both configuration files.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tessera_swtpm_tests::{Agent, Server, bin, test_dir, wait_until};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn entries_count_and_come_from_spire_files() {
    let dir = test_dir("verbs-entries");
    let server = Server::start(&dir.path().join("server"), "");
    assert_eq!(
        server.cli_ok(&["entry", "count"]),
        "0 registration entries\n"
    );

    let file = dir.path().join("entries.json");
    std::fs::write(
        &file,
        r#"{"entries": [
            {"selectors": [{"type": "unix", "value": "uid:1111"}],
             "spiffe_id": "spiffe://example.org/Blog",
             "parent_id": "spiffe://example.org/spire/agent/join_token/TokenBlog",
             "ttl": 200, "admin": true},
            {"selectors": [{"type": "unix", "value": "uid:1111"}],
             "spiffe_id": "spiffe://example.org/spire/evil",
             "parent_id": "spiffe://example.org/spire/agent/join_token/TokenBlog"},
            {"selectors": [], "spiffe_id": "spiffe://example.org/none",
             "parent_id": "spiffe://example.org/p"},
            {"selectors": [{"type": "unix", "value": "uid:1111"}, {"type": "unix", "value": "gid:5"}],
             "spiffe_id": "spiffe://example.org/Database",
             "parent_id": "spiffe://example.org/spire/agent/join_token/TokenDatabase",
             "x509_svid_ttl": 300, "dns_names": ["db.example.org"], "entryExpiry": 4102444800}
        ]}"#,
    )
    .unwrap();
    let o = server.cli(&["entry", "create", "--data", file.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "some entries failed: the status says so"
    );
    assert_eq!(out.matches("Entry ID").count(), 2, "{out}");
    assert!(
        out.contains("SPIFFE ID        : spiffe://example.org/Blog"),
        "{out}"
    );
    assert!(out.contains("X509-SVID TTL    : 200"), "{out}");
    assert!(out.contains("DNS name         : db.example.org"), "{out}");
    assert!(err.contains("2 of 4 entries failed"), "{err}");
    assert!(
        err.contains("entries[1] (spiffe://example.org/spire/evil):")
            && err.contains("(InvalidArgument)"),
        "{err}"
    );
    assert!(
        err.contains("entries[2]: at least one selector is required"),
        "{err}"
    );
    assert_eq!(
        server.cli_ok(&["entry", "count"]),
        "2 registration entries\n"
    );
    let blog: serde_json::Value = serde_json::from_str(&server.cli_ok(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://example.org/Blog",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(blog[0]["admin"], true);

    // Standard input, all good: exit 0; the same again: each refused as a duplicate.
    let again = r#"{"entries": [{"selectors": [{"type": "unix", "value": "uid:7"}],
        "spiffe_id": "spiffe://example.org/stdin", "parent_id": "spiffe://example.org/p"}]}"#;
    let run_stdin = |json: &str| {
        let mut child = Command::new(bin("tessera-server"))
            .arg("--socket-path")
            .arg(&server.admin)
            .args(["entry", "create", "--data", "-", "--output", "json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(json.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run_stdin(again);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["results"][0]["entry"]["spiffe_id"],
        "spiffe://example.org/stdin"
    );
    let o = run_stdin(again);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["results"][0]["error"]["code"], "AlreadyExists", "{v}");

    // Counting with filters, as `entry show` filters.
    assert_eq!(
        server.cli_ok(&[
            "entry",
            "count",
            "--parent-id",
            "spiffe://example.org/spire/agent/join_token/TokenBlog",
        ]),
        "1 registration entry\n"
    );
    assert_eq!(
        server.cli_ok(&[
            "entry",
            "count",
            "--selector",
            "unix:gid:5",
            "--output",
            "json"
        ]),
        "{\n  \"count\": 1\n}\n"
    );
    // A file that is no entry file, and flags with --data: refused, nothing created.
    std::fs::write(&file, "[1, 2]").unwrap();
    let o = server.cli(&["entry", "create", "--data", file.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("not a registration entry file"),
        "{:?}",
        text(&o)
    );
    let o = server.cli(&[
        "entry",
        "create",
        "--data",
        file.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://example.org/x",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--data"), "{:?}", text(&o));
    assert_eq!(
        server.cli_ok(&["entry", "count"]),
        "3 registration entries\n"
    );
}

#[test]
fn agents_and_bundles_are_shown_and_counted() {
    let dir = test_dir("verbs-agents");
    let server = Server::start(&dir.path().join("server"), "");
    assert_eq!(server.cli_ok(&["agent", "count"]), "0 attested agents\n");
    assert_eq!(server.cli_ok(&["bundle", "count"]), "1 bundle\n");
    let token = server.token(None, None);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let id = agent.spiffe_id();
    assert_eq!(server.cli_ok(&["agent", "count"]), "1 attested agent\n");
    let shown = server.cli_ok(&["agent", "show", "--spiffe-id", &id]);
    assert!(
        shown.starts_with(&format!(
            "SPIFFE ID         : {id}\nAttestation type  : join_token\n"
        )),
        "{shown}"
    );
    let v: serde_json::Value = serde_json::from_str(&server.cli_ok(&[
        "agent",
        "show",
        "--spiffe-id",
        &id,
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(v["spiffe_id"], id.as_str());
    assert_eq!(v["banned"], false);
    let o = server.cli(&[
        "agent",
        "show",
        "--spiffe-id",
        "spiffe://example.org/spire/agent/join_token/nobody",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("is not attested (NotFound)"),
        "{:?}",
        text(&o)
    );

    // A federated bundle counts too.
    let other = dir.path().join("other.pem");
    std::fs::copy(server.bundle_pem(), &other).unwrap();
    server.cli_ok(&[
        "bundle",
        "set",
        "--id",
        "other.org",
        "--path",
        other.to_str().unwrap(),
    ]);
    assert_eq!(server.cli_ok(&["bundle", "count"]), "2 bundles\n");
    assert_eq!(
        server.cli_ok(&["bundle", "count", "--output", "json"]),
        "{\n  \"count\": 2\n}\n"
    );
}

#[test]
fn the_running_server_changes_its_log_level() {
    let dir = test_dir("verbs-logger");
    let server = Server::start(&dir.path().join("server"), "");
    // A failed TLS handshake is logged at DEBUG only.
    let handshake = || {
        let mut s = std::net::TcpStream::connect(server.address()).unwrap();
        s.write_all(b"this is no TLS client hello\r\n\r\n").unwrap();
        let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
    };
    let debug_lines = || server.log().matches("TLS handshake failed").count();
    assert_eq!(
        server.cli_ok(&["logger", "get"]),
        "Logger Level        : info\nLogger Launch Level : info\n"
    );
    handshake();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(debug_lines(), 0, "{}", server.log());

    assert_eq!(
        server.cli_ok(&["logger", "set", "--level", "debug"]),
        "Logger Level        : debug\nLogger Launch Level : info\n"
    );
    handshake();
    assert!(
        wait_until(Duration::from_secs(5), || debug_lines() == 1),
        "{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("log filter changed through the admin API")
    );

    // A word that is no level is refused and changes nothing.
    let o = server.cli(&["logger", "set", "--level", "loud"]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.starts_with("Error: \"loud\" is not a level (use one of trace, debug,")
            && err.ends_with("(InvalidArgument)\n"),
        "{err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["logger", "get", "--output", "json"])).unwrap();
    assert_eq!(v["current_level"], "debug");

    assert_eq!(
        server.cli_ok(&["logger", "reset"]),
        "Logger Level        : info\nLogger Launch Level : info\n"
    );
    handshake();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(debug_lines(), 1, "{}", server.log());
}

#[test]
fn configuration_files_are_validated_with_file_and_line() {
    let dir = test_dir("verbs-validate");
    let good = dir.path().join("server.toml");
    std::fs::write(&good, "trust_domain = \"example.org\"\n").unwrap();
    let validate = |binary: &str, path: &std::path::Path| {
        Command::new(bin(binary))
            .args(["validate", "-c"])
            .arg(path)
            .env_remove("TESSERA_SERVER_DATA_DIR")
            .output()
            .unwrap()
    };
    let o = validate("tessera-server", &good);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(
        text(&o).0,
        format!("Configuration file {} is valid.\n", good.display())
    );
    let bad = dir.path().join("bad-server.toml");
    std::fs::write(
        &bad,
        "trust_domain = \"example.org\"\n[limits]\nidle_timeout = \"5m\"\nhandshake_timeout = \"0s\"\n",
    )
    .unwrap();
    let o = validate("tessera-server", &bad);
    assert!(!o.status.success());
    assert_eq!(
        text(&o).1,
        format!(
            "Error: {}:4:1: invalid configuration: [limits] handshake_timeout must be positive\n",
            bad.display()
        )
    );
    std::fs::write(
        &bad,
        "trust_domain = \"example.org\"\nca_ttl = \"forever\"\n",
    )
    .unwrap();
    let o = validate("tessera-server", &bad);
    assert!(!o.status.success());
    assert!(
        text(&o)
            .1
            .starts_with(&format!("Error: {}:2:", bad.display())),
        "{:?}",
        text(&o)
    );

    let agent = dir.path().join("agent.toml");
    std::fs::write(
        &agent,
        "trust_domain = \"example.org\"\nserver_address = \"127.0.0.1\"\ninsecure_bootstrap = true\n",
    )
    .unwrap();
    let o = validate("tessera-agent", &agent);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.ends_with("agent.toml is valid.\n"));
    std::fs::write(
        &agent,
        "trust_domain = \"example.org\"\nserver_address = \"127.0.0.1\"\n\
         trust_bundle_path = \"/nonexistent/bundle.pem\"\n",
    )
    .unwrap();
    let o = validate("tessera-agent", &agent);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.starts_with(&format!("Error: {}:3:1: ", agent.display())),
        "{err}"
    );
    assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
}
