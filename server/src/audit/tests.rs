#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tessera_core::SpiffeId;
use tonic::Status;

use super::*;

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn svid(n: usize) -> Svid {
    Svid {
        agent_id: "spiffe://example.org/spire/agent/x/1".into(),
        spiffe_id: format!("spiffe://example.org/w/{n}"),
        kind: "x509",
        issued_for: "workload",
        entry_id: Some(format!("e{n}")),
        serial: Some("0a".into()),
        audience: None,
        expires_at: records::unix_rfc3339(1_900_000_000),
    }
}

fn open(path: &Path) -> Audit {
    Audit::open(&AuditConfig {
        path: Some(path.to_owned()),
        log: false,
    })
    .unwrap()
}

#[test]
fn records_are_json_lines_appended_to_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let audit = open(&path);
    audit.record(&svid(1));
    audit.record(&Attestation {
        attestor: Some("join_token".into()),
        agent_id: None,
        outcome: Outcome::of_status(
            &Status::permission_denied("join token abc does not exist"),
            &["abc"],
        ),
        source: Some("127.0.0.1:5000".into()),
    });
    let got = lines(&path);
    assert_eq!(got.len(), 3, "earlier content is kept: {got:?}");
    assert_eq!(got[0]["earlier"], true);
    assert_eq!(got[1]["type"], "svid");
    assert_eq!(got[1]["spiffe_id"], "spiffe://example.org/w/1");
    assert_eq!(got[1]["expires_at"], "2030-03-17T17:46:40Z");
    let time = got[1]["time"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).is_ok(),
        "{time}"
    );
    assert_eq!(got[2]["type"], "attestation");
    assert_eq!(got[2]["result"], "denied");
    assert_eq!(got[2]["code"], "PermissionDenied");
    assert_eq!(got[2]["reason"], "join token <redacted> does not exist");
    assert!(got[2].get("agent_id").is_none());

    let fresh = dir.path().join("new.log");
    open(&fresh).record(&svid(2));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn lines_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit = Arc::new(open(&path));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let audit = audit.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let mut r = svid(t * 1000 + i);
                    // Long records, so that a split write would show.
                    r.audience = Some(vec!["x".repeat(3000)]);
                    audit.record(&r);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = lines(&path);
    assert_eq!(got.len(), 1600);
}

#[test]
fn a_rotated_file_is_followed_and_a_lost_one_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("log");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("audit.log");
    let audit = open(&path);
    audit.record(&svid(1));
    // logrotate: move the file away; the next record starts a new one.
    std::fs::rename(&path, sub.join("audit.log.1")).unwrap();
    audit.record(&svid(2));
    assert_eq!(lines(&sub.join("audit.log.1")).len(), 1);
    let now = lines(&path);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["spiffe_id"], "spiffe://example.org/w/2");

    // The directory goes away: records are lost (and logged), nothing panics.
    std::fs::remove_dir_all(&sub).unwrap();
    audit.record(&svid(3));
    audit.record(&svid(4));
    assert_eq!(audit.file.as_ref().unwrap().state.lock().unwrap().lost, 2);
    std::fs::create_dir(&sub).unwrap();
    audit.record(&svid(5));
    let back = lines(&path);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["spiffe_id"], "spiffe://example.org/w/5");
}

#[test]
fn an_unwritable_path_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("audit.log");
    let err = Audit::open(&AuditConfig {
        path: Some(path.clone()),
        log: false,
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(!Audit::disabled().enabled());
}

#[test]
fn callers_are_tagged_by_transport() {
    let unix = serde_json::to_value(Caller::Unix {
        uid: Some(0),
        gid: Some(0),
        pid: Some(42),
    })
    .unwrap();
    assert_eq!(
        unix,
        serde_json::json!({"transport": "unix", "uid": 0, "gid": 0, "pid": 42})
    );
    let id = SpiffeId::new("spiffe://example.org/ops").unwrap();
    let tls = serde_json::to_value(Caller::tls(Some(&id), "10.0.0.1:443".parse().ok())).unwrap();
    assert_eq!(
        tls,
        serde_json::json!({"transport": "tls", "spiffe_id": "spiffe://example.org/ops", "address": "10.0.0.1:443"})
    );
}
