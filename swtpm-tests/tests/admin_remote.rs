//! Remote administration over mTLS: an admin workload gets its X509-SVID from a real
//! agent through the Workload API and uses it with `tessera-server --remote --svid`
//! to create and list entries on the server's TLS port; an ID listed in `admin_ids`
//! may too; a workload that is no admin, an agent, and a caller without a client
//! certificate are refused with PermissionDenied saying why; taking `admin` off the
//! entry takes the right away at once; each call is in the audit file with the
//! caller's SPIFFE ID.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine;
use tessera_swtpm_tests::admin::{
    SVID_FILES, audit_records, list_entries_without_certificate, records_of, remote_cli,
    workload_svid_dir,
};
use tessera_swtpm_tests::{Agent, Server, my_uid, test_dir, wait_until};

const ADMIN: &str = "spiffe://example.org/ops/admin";
const LISTED: &str = "spiffe://example.org/ops/listed";
const WEB: &str = "spiffe://example.org/ops/web";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn remote_ok(server: &Server, svid: &Path, args: &[&str]) -> String {
    let o = remote_cli(server, svid, args);
    assert!(o.status.success(), "remote {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn remote_refused(server: &Server, svid: &Path, args: &[&str]) -> String {
    let o = remote_cli(server, svid, args);
    assert!(
        !o.status.success(),
        "remote {args:?} was allowed: {}",
        text(&o)
    );
    let t = text(&o);
    assert!(t.contains("(PermissionDenied)"), "{t}");
    t
}

/// The agent's own identity (its SVID and key from its state directory) as an
/// `--svid` directory.
fn agent_svid_dir(agent: &Agent, server: &Server, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    let data = agent.dir.join("data");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("agent.json")).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let chain: String = state["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            tessera_core::x509::to_pem("CERTIFICATE", &b64.decode(c.as_str().unwrap()).unwrap())
        })
        .collect();
    std::fs::write(out.join(SVID_FILES[0]), chain).unwrap();
    let key = std::fs::read(
        data.join("keys")
            .join(format!("{}.key", state["key_id"].as_str().unwrap())),
    )
    .unwrap();
    std::fs::write(
        out.join(SVID_FILES[1]),
        tessera_core::x509::to_pem("PRIVATE KEY", &key),
    )
    .unwrap();
    std::fs::copy(server.bundle_pem(), out.join(SVID_FILES[2])).unwrap();
    out.to_owned()
}

#[test]
fn admins_administer_over_mtls_and_everyone_else_is_refused() {
    let dir = test_dir("admin-remote");
    let audit = dir.path().join("audit.log");
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "admin_ids = [\"{LISTED}\"]\n[audit]\npath = \"{}\"\n",
            audit.display()
        ),
    );
    let token = server.token(Some("spiffe://example.org/node"), None);
    let me = format!("unix:uid:{}", my_uid());
    let admin_entry = server.entry(
        ADMIN,
        "spiffe://example.org/node",
        &[&me],
        &["--admin", "true"],
    );
    server.entry(LISTED, "spiffe://example.org/node", &[&me], &[]);
    server.entry(WEB, "spiffe://example.org/node", &[&me], &[]);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let o = agent.cli(&["api", "fetch", "x509"]);
            String::from_utf8_lossy(&o.stdout)
                .matches("SPIFFE ID:")
                .count()
                >= 3
        }),
        "the agent did not serve the three SVIDs:\n{}",
        agent.log()
    );
    let admin = workload_svid_dir(&agent, ADMIN, &dir.path().join("admin"));
    let listed = workload_svid_dir(&agent, LISTED, &dir.path().join("listed"));
    let web = workload_svid_dir(&agent, WEB, &dir.path().join("web"));

    // The admin creates and lists entries over TLS.
    let made = remote_ok(
        &server,
        &admin,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/remote/made",
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:4242",
            "--output",
            "json",
        ],
    );
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let listed_remotely = remote_ok(
        &server,
        &admin,
        &[
            "entry",
            "show",
            "--spiffe-id",
            "spiffe://example.org/remote/made",
        ],
    );
    assert!(
        listed_remotely.starts_with("Found 1 entry"),
        "{listed_remotely}"
    );
    assert!(listed_remotely.contains(made["id"].as_str().unwrap()));
    let local = server.cli_ok(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://example.org/remote/made",
    ]);
    assert!(local.contains(made["id"].as_str().unwrap()), "{local}");
    assert_eq!(
        remote_ok(&server, &admin, &["entry", "count"]),
        "5 registration entries\n"
    );

    // An ID in admin_ids may, without an admin entry.
    assert_eq!(
        remote_ok(&server, &listed, &["agent", "count"]),
        "1 attested agent\n"
    );

    // A workload that is no admin, the agent itself, and no certificate at all.
    let t = remote_refused(&server, &web, &["entry", "show"]);
    assert!(
        t.contains(&format!(
            "{WEB} may not call the admin API: no registration entry for it has admin set"
        )),
        "{t}"
    );
    let own = agent_svid_dir(&agent, &server, &dir.path().join("agent-svid"));
    let t = remote_refused(
        &server,
        &own,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/evil",
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:0",
        ],
    );
    assert!(
        t.contains("is an agent; agents may not call the admin API"),
        "{t}"
    );
    let status = list_entries_without_certificate(&server, &server.bundle_pem());
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("presented none"), "{status:?}");
    assert!(
        !server
            .cli_ok(&["entry", "show"])
            .contains("spiffe://example.org/evil"),
        "a refused call changed nothing"
    );

    // Taking admin off the entry takes the right away at once (the SVID still valid).
    server.cli_ok(&[
        "entry",
        "update",
        "--entry-id",
        &admin_entry,
        "--admin",
        "false",
    ]);
    let t = remote_refused(&server, &admin, &["entry", "count"]);
    assert!(
        t.contains(&format!("{ADMIN} may not call the admin API")),
        "{t}"
    );

    // Every remote call is audited with the caller's SPIFFE ID and address.
    let records = audit_records(&audit);
    let remote: Vec<&serde_json::Value> = records_of(&records, "admin")
        .filter(|r| r["caller"]["transport"] == "tls")
        .collect();
    let by = |id: &str, result: &str| {
        remote
            .iter()
            .filter(|r| r["caller"]["spiffe_id"] == id && r["result"] == result)
            .count()
    };
    assert_eq!(by(ADMIN, "ok"), 3, "{remote:#?}");
    assert_eq!(by(ADMIN, "denied"), 1);
    assert_eq!(by(LISTED, "ok"), 1);
    assert_eq!(by(WEB, "denied"), 1);
    assert_eq!(by(&agent.spiffe_id(), "denied"), 1);
    // A call without a certificate is refused as its headers arrive, before anything
    // is read, and leaves no record: it has no identity, and a flood of them must not
    // fill the disk.
    assert!(
        remote
            .iter()
            .all(|r| r["caller"].get("spiffe_id").is_some()),
        "{remote:#?}"
    );
    assert!(remote.iter().all(|r| {
        r["caller"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    }));
    let create = remote
        .iter()
        .find(|r| r["method"] == "CreateEntry" && r["result"] == "ok")
        .unwrap();
    assert_eq!(create["produced"]["entry_id"], made["id"]);
}

#[test]
fn the_remote_flags_say_what_is_missing_or_wrong() {
    let dir = test_dir("admin-remote-flags");
    let server = Server::start(&dir.path().join("server"), "");
    let o = std::process::Command::new(tessera_swtpm_tests::bin("tessera-server"))
        .args(["--remote", &server.address(), "entry", "count"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--remote needs --svid DIR"),
        "{}",
        text(&o)
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = remote_cli(&server, &empty, &["entry", "count"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("svid.0.pem") && t.contains("No such file"),
        "{t}"
    );
    // A server that is not there: named, with the reason.
    let mut gone = Server::configure(&dir.path().join("gone"), "");
    gone.port = tessera_swtpm_tests::free_port();
    let minted = dir.path().join("minted");
    server.cli_ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/m",
        "--write",
        minted.to_str().unwrap(),
    ]);
    let svid = dir.path().join("svid");
    std::fs::create_dir_all(&svid).unwrap();
    for (from, to) in [
        ("svid.pem", SVID_FILES[0]),
        ("key.pem", SVID_FILES[1]),
        ("bundle.pem", SVID_FILES[2]),
    ] {
        std::fs::copy(minted.join(from), svid.join(to)).unwrap();
    }
    let o = remote_cli(&gone, &svid, &["entry", "count"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "cannot reach the server's admin API at {}",
            gone.address()
        )),
        "{t}"
    );
    // A minted SVID is no admin's either.
    let t = remote_refused(&server, &svid, &["entry", "count"]);
    assert!(
        t.contains("spiffe://example.org/m may not call the admin API"),
        "{t}"
    );
}
