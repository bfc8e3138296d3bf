//! Audit records, read back from a real server's audit file: every attestation
//! decision, every admin call (with the caller's uid and pid), every SVID issued to an
//! agent, as JSON lines in a 0600 file; never a secret in them; records to the log
//! instead of a file; and a file that cannot be written losing records (loudly)
//! without failing a request.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tessera_swtpm_tests::admin::{audit_records, records_of};
use tessera_swtpm_tests::{Agent, Server, bin, my_uid, test_dir, wait_until};

fn audit_section(path: &std::path::Path) -> String {
    format!("[audit]\npath = \"{}\"\n", path.display())
}

/// Runs `tessera-server <args>` against `server`'s admin socket; returns its PID and
/// standard output.
fn cli_with_pid(server: &Server, args: &[&str]) -> (u32, String) {
    let child = Command::new(bin("tessera-server"))
        .arg("--socket-path")
        .arg(&server.admin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn admin_calls<'a>(all: &'a [Value], method: &str) -> Vec<&'a Value> {
    records_of(all, "admin")
        .filter(|r| r["method"] == method)
        .collect()
}

#[test]
fn decisions_calls_and_issued_svids_are_recorded_without_secrets() {
    let dir = test_dir("audit-file");
    let audit_dir = dir.path().join("audit");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let audit = audit_dir.join("audit.log");
    let server = Server::start(
        &dir.path().join("server"),
        &format!("agent_svid_ttl = \"8s\"\n{}", audit_section(&audit)),
    );
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the audit file is private");

    // Admin calls, with the caller's credentials; a token never used stays secret.
    let (pid, out) = cli_with_pid(&server, &["token", "generate", "--ttl", "10m"]);
    let unused = out.trim().strip_prefix("Token: ").unwrap().to_owned();
    let token = server.token(Some("spiffe://example.org/node"), None);
    let failed = server.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "not-an-id",
        "--parent-id",
        "spiffe://example.org/node",
        "--selector",
        "unix:uid:1",
    ]);
    assert!(!failed.status.success());
    let entry_id = server.entry(
        "spiffe://example.org/workload",
        "spiffe://example.org/node",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let records = audit_records(&audit);
    let tokens = admin_calls(&records, "CreateJoinToken");
    assert_eq!(tokens.len(), 2, "{records:#?}");
    let mine = tokens[0];
    assert_eq!(mine["caller"]["transport"], "unix");
    assert_eq!(mine["caller"]["uid"], my_uid());
    assert_eq!(
        mine["caller"]["pid"], pid,
        "the pid of the CLI process that called"
    );
    assert_eq!(mine["args"]["ttl_seconds"], 600);
    assert_eq!(mine["result"], "ok");
    assert!(mine["produced"]["expires_at"].is_i64(), "{mine}");
    assert_eq!(tokens[1]["args"]["spiffe_id"], "spiffe://example.org/node");
    let creates = admin_calls(&records, "CreateEntry");
    assert_eq!(creates.len(), 2);
    assert_eq!(creates[0]["result"], "failed");
    assert_eq!(creates[0]["code"], "InvalidArgument");
    assert!(
        creates[0]["reason"].as_str().unwrap().contains("spiffe_id"),
        "{}",
        creates[0]
    );
    assert_eq!(creates[1]["result"], "ok");
    assert_eq!(
        creates[1]["args"]["entry"]["spiffe_id"],
        "spiffe://example.org/workload"
    );
    assert_eq!(creates[1]["produced"]["entry_id"], entry_id.as_str());
    for r in &records {
        let time = r["time"].as_str().unwrap();
        assert!(
            time.ends_with('Z') && time.contains('T'),
            "RFC 3339 UTC: {time}"
        );
    }

    // A refused attestation: the presented token is never written, no agent ID.
    let bogus = "d0e5b3c1-0000-4000-8000-0123456789ab";
    let mut refused = Agent::configure(&dir.path().join("refused"), &server, "");
    refused.spawn(Some(bogus));
    assert!(
        !refused
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );

    // An attestation that succeeds, the agent's SVID, a renewal, workload SVIDs.
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    assert!(wait_until(Duration::from_secs(20), || {
        agent.cli(&["api", "fetch", "x509"]).status.success()
    }));
    let jwt_out = agent.cli(&["api", "fetch", "jwt", "--audience", "db"]);
    assert!(jwt_out.status.success());
    let jwt = String::from_utf8_lossy(&jwt_out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(jwt.split('.').count() == 3, "{jwt}");
    let minted_jwt = server
        .cli_ok(&[
            "jwt",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/m",
            "--audience",
            "a",
        ])
        .trim()
        .to_owned();
    let minted_x509 = server.cli_ok(&["x509", "mint", "--spiffe-id", "spiffe://example.org/m"]);
    assert!(minted_x509.contains("PRIVATE KEY"));
    assert!(
        wait_until(Duration::from_secs(20), || {
            records_of(&audit_records(&audit), "svid").any(|r| r["issued_for"] == "renewal")
        }),
        "no renewal recorded:\n{}",
        server.log()
    );

    let records = audit_records(&audit);
    let attestations: Vec<&Value> = records_of(&records, "attestation").collect();
    assert_eq!(attestations.len(), 2, "{attestations:#?}");
    let (no, yes) = (attestations[0], attestations[1]);
    assert_eq!(no["attestor"], "join_token");
    assert_eq!(no["result"], "denied");
    assert_eq!(no["code"], "PermissionDenied");
    assert!(
        no["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist or has already been used"),
        "{no}"
    );
    assert!(no.get("agent_id").is_none(), "{no}");
    assert!(
        no["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{no}"
    );
    assert_eq!(yes["result"], "ok");
    assert_eq!(yes["agent_id"], agent_id.as_str());
    assert!(
        yes["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{yes}"
    );

    let agents: Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    let svids: Vec<&Value> = records_of(&records, "svid").collect();
    let own = svids
        .iter()
        .find(|r| r["issued_for"] == "attestation")
        .unwrap();
    assert_eq!(own["agent_id"], agent_id.as_str());
    assert_eq!(own["spiffe_id"], agent_id.as_str());
    assert_eq!(own["kind"], "x509");
    assert!(own["serial"].as_str().unwrap().len() >= 16, "{own}");
    let renewal = svids.iter().find(|r| r["issued_for"] == "renewal").unwrap();
    assert_ne!(renewal["serial"], own["serial"]);
    // The server's record of the agent names one of the serials the audit saw.
    let current = agents[0]["x509_svid_serial"].as_str().unwrap();
    assert!(
        svids.iter().any(|r| r["agent_id"] == agent_id.as_str()
            && r["spiffe_id"] == agent_id.as_str()
            && r["serial"] == current),
        "serial {current} not in {svids:#?}"
    );
    let workload = svids
        .iter()
        .find(|r| {
            r["issued_for"] == "workload"
                && r["kind"] == "x509"
                && r["spiffe_id"] == "spiffe://example.org/workload"
        })
        .unwrap();
    assert_eq!(workload["agent_id"], agent_id.as_str());
    assert_eq!(workload["entry_id"], entry_id.as_str());
    assert!(workload["expires_at"].as_str().unwrap().ends_with('Z'));
    let jwt_rec = svids.iter().find(|r| r["kind"] == "jwt").unwrap();
    assert_eq!(jwt_rec["audience"], serde_json::json!(["db"]));
    assert!(jwt_rec.get("serial").is_none());
    let mint = admin_calls(&records, "MintX509Svid");
    assert_eq!(mint.len(), 1);
    assert!(mint[0]["produced"]["serial"].is_string(), "{}", mint[0]);

    // No secret anywhere: tokens not yet used (or never valid), keys, PEM, JWTs.
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [unused.as_str(), bogus, jwt.as_str(), minted_jwt.as_str()] {
        assert!(
            !text.contains(secret),
            "a secret is in the audit file: {secret}"
        );
    }
    for pem in ["-----BEGIN", "PRIVATE KEY", "CERTIFICATE"] {
        assert!(!text.contains(pem), "PEM in the audit file: {pem}");
    }
    // The token an agent used names it from then on (as in its SVID and `agent list`),
    // but no admin record, written while it was a secret, holds it.
    for r in records_of(&records, "admin") {
        assert!(!r.to_string().contains(&token), "{r}");
    }
}

#[test]
fn records_can_go_to_the_log_and_a_lost_file_does_not_fail_requests() {
    let dir = test_dir("audit-log");
    let server = Server::start(&dir.path().join("log"), "[audit]\nlog = true\n");
    let token = server.token(None, None);
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("\"type\":\"admin\"") && l.contains("\"method\":\"CreateJoinToken\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no audit record in the log:\n{}", server.log()));
    assert!(
        line.contains("INFO") && line.contains("audit"),
        "the target is audit: {line}"
    );
    assert!(!server.log().contains(&token));
    drop(server);

    let audit_dir = dir.path().join("audit");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let audit = audit_dir.join("audit.log");
    let server = Server::start(&dir.path().join("file"), &audit_section(&audit));
    server.token(None, None);
    assert_eq!(
        admin_calls(&audit_records(&audit), "CreateJoinToken").len(),
        1
    );
    // The directory goes away: the calls still succeed; the log says records are lost.
    std::fs::remove_dir_all(&audit_dir).unwrap();
    server.token(None, None);
    server.cli_ok(&["entry", "show"]);
    assert!(
        server.log().contains("AUDIT RECORD LOST"),
        "{}",
        server.log()
    );
    // Back: records resume in a new file, and the log counts what was lost.
    std::fs::create_dir_all(&audit_dir).unwrap();
    server.cli_ok(&["agent", "list"]);
    let after = audit_records(&audit);
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0]["method"], "ListAgents");
    assert!(
        server.log().contains("2 records were lost"),
        "{}",
        server.log()
    );

    // A path the server cannot open stops it at start, naming the path.
    let mut bad = Server::configure(
        &dir.path().join("bad"),
        "[audit]\npath = \"/nonexistent/dir/audit.log\"\n",
    );
    let status = bad.try_start(Duration::from_secs(20)).expect("must exit");
    assert!(!status.success());
    assert!(
        bad.log().contains("/nonexistent/dir/audit.log"),
        "{}",
        bad.log()
    );
}
