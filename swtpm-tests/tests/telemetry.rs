//! What operators watch, checked from outside: Debian's Prometheus scrapes the server
//! and the agent and answers queries through its HTTP API; `/live` and `/ready`
//! follow the datastore, the CA's key store and the agent's sync; the standard
//! `grpc.health.v1` service answers on the Workload API socket; both binaries speak
//! systemd's notification protocol (READY, WATCHDOG, STOPPING) on a datagram socket
//! the test holds, as systemd would.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_swtpm_tests::faults_agent::{fetch_x509, sigterm};
use tessera_swtpm_tests::{Agent, Server, SoftHsm, bin, free_port, my_uid, test_dir, wait_until};

const NODE: &str = "spiffe://example.org/node";
const WORKLOAD: &str = "spiffe://example.org/workload";

/// One HTTP/1.1 GET: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn telemetry(metrics: Option<&str>, health: Option<&str>) -> String {
    let mut t = String::from("[telemetry]\n");
    if let Some(m) = metrics {
        t.push_str(&format!("metrics_address = \"{m}\"\n"));
    }
    if let Some(h) = health {
        t.push_str(&format!("health_address = \"{h}\"\n"));
    }
    t
}

fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A server, an agent for `NODE` and an entry for this process, with the given
/// telemetry sections.
fn setup(dir: &Path, server_extra: &str, agent_extra: &str) -> (Server, Agent) {
    let server = Server::start(&dir.join("server"), server_extra);
    let token = server.token(Some(NODE), None);
    server.entry(WORKLOAD, NODE, &[&format!("unix:uid:{}", my_uid())], &[]);
    let agent = Agent::start(&dir.join("agent"), &server, Some(&token), agent_extra);
    (server, agent)
}

fn served(agent: &Agent) {
    let ok = wait_until(Duration::from_secs(20), || {
        fetch_x509(agent, Duration::from_secs(5)).is_ok_and(|f| f.verified.is_ok())
    });
    assert!(ok, "no SVID served:\n{}", agent.log());
}

/// Debian's Prometheus server, scraping `targets` (job name, address) every second.
struct Prometheus {
    child: Child,
    address: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let address = loopback();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Debian's prometheus (scripts/setup.sh --tests installs it)");
        Prometheus { child, address }
    }

    /// The values of an instant query, as (labels, value) pairs.
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Ok(mut s) = TcpStream::connect(&self.address) else {
            return Vec::new();
        };
        let (status, body) = {
            drop(s.set_read_timeout(Some(Duration::from_secs(5))));
            let _ = write!(
                s,
                "GET /api/v1/query?query={enc} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let status = out.split_whitespace().nth(1).unwrap_or("0").to_owned();
            (
                status,
                out.split_once("\r\n\r\n")
                    .map_or(String::new(), |(_, b)| b.to_owned()),
            )
        };
        if status != "200" {
            return Vec::new();
        }
        // Prometheus may answer in chunks: the JSON object is between the first '{'
        // and the last '}'.
        let (Some(a), Some(b)) = (body.find('{'), body.rfind('}')) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body[a..=b]).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let value = r["value"][1].as_str()?.parse().ok()?;
                        Some((r["metric"].clone(), value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `q` has a sample whose value satisfies `ok`.
    fn wait_for(&self, q: &str, ok: impl Fn(f64) -> bool) -> Vec<(serde_json::Value, f64)> {
        let mut last = Vec::new();
        let done = wait_until(Duration::from_secs(60), || {
            last = self.query(q);
            last.iter().any(|(_, v)| ok(*v))
        });
        assert!(done, "Prometheus never answered {q} as expected: {last:?}");
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_both_binaries_and_answers_queries() {
    let dir = test_dir("telemetry-prom");
    let (server_at, agent_at) = (loopback(), loopback());
    let (server, agent) = setup(
        dir.path(),
        &telemetry(Some(&server_at), Some(&server_at)),
        &telemetry(Some(&agent_at), None),
    );
    served(&agent);

    // The page itself: Prometheus' text format, the families the docs list.
    let (status, page) = http_get(&server_at, "/metrics");
    assert_eq!(status, 200, "{page}");
    for needle in [
        "# TYPE tessera_server_attestations_total counter",
        "tessera_server_attestations_total{attestor=\"join_token\",outcome=\"ok\"} 1",
        "tessera_server_svids_issued_total{kind=\"workload\"}",
        "tessera_server_key_sign_duration_seconds_count{key_manager=\"disk\"}",
        "tessera_server_datastore_duration_seconds_count{op=\"upsert_attested_node\"}",
        "tessera_rpc_calls_total{service=\"tessera.agent.v1.Node\",method=\"Attest\",code=\"OK\"} 1",
    ] {
        assert!(page.contains(needle), "{needle} missing from:\n{page}");
    }
    let (status, page) = http_get(&agent_at, "/metrics");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(
            "tessera_rpc_calls_total{service=\"SpiffeWorkloadAPI\",method=\"FetchX509SVID\""
        ),
        "{page}"
    );
    // The agent's health is not on its metrics listener unless asked for.
    assert_eq!(http_get(&agent_at, "/ready").0, 404);

    // Prometheus, scraping both, answers queries over what it stored.
    let prom = Prometheus::start(
        &dir.path().join("prometheus"),
        &[("server", &server_at), ("agent", &agent_at)],
    );
    // Both targets scraped successfully.
    prom.wait_for("sum(up)", |v| v == 2.0);
    prom.wait_for(
        "tessera_server_svids_issued_total{job=\"server\",kind=\"workload\"}",
        |v| v >= 1.0,
    );
    prom.wait_for("tessera_agent_svids_cached{job=\"agent\"}", |v| v >= 1.0);
    prom.wait_for("tessera_agent_ready{job=\"agent\"}", |v| v == 1.0);
    // The agent SVID's expiry is in the future, in seconds since the epoch.
    prom.wait_for("tessera_agent_svid_expiry_seconds - time()", |v| v > 0.0);
    prom.wait_for(
        "tessera_server_authority_expiry_seconds{authority=\"x509_ca\"} - time()",
        |v| v > 0.0,
    );
    prom.wait_for(
        "sum(tessera_rpc_calls_total{job=\"agent\",method=\"FetchX509SVID\"})",
        |v| v >= 1.0,
    );
    drop(server);
}

#[test]
fn live_and_ready_follow_the_key_store_and_the_agent_sync() {
    let dir = test_dir("telemetry-health");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "tessera", "1234");
    let (server_health, agent_health) = (loopback(), loopback());
    let mut server = Server::start_with_env(
        &dir.path().join("server"),
        &format!(
            "{}\n[key_manager]\ntype = \"pkcs11\"\n{}",
            telemetry(None, Some(&server_health)),
            hsm.section()
        ),
        &hsm.env(),
    );
    let token = server.token(Some(NODE), None);
    server.entry(WORKLOAD, NODE, &[&format!("unix:uid:{}", my_uid())], &[]);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        &telemetry(None, Some(&agent_health)),
    );
    served(&agent);

    assert_eq!(
        http_get(&server_health, "/live"),
        (200, "{\"live\":true}\n".into())
    );
    assert_eq!(http_get(&server_health, "/ready").0, 200);
    assert_eq!(
        http_get(&server_health, "/metrics").0,
        404,
        "metrics were not asked for"
    );
    assert!(wait_until(Duration::from_secs(10), || http_get(
        &agent_health,
        "/ready"
    )
    .0 == 200));

    // The token goes away: the CA cannot sign, the server is live but not ready.
    let away = hsm.dir.join("tokens.away");
    std::fs::rename(hsm.tokens_dir(), &away).unwrap();
    let (status, body) = http_get(&server_health, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"ready\":false") && body.contains("CA:"),
        "{body}"
    );
    assert_eq!(http_get(&server_health, "/live").0, 200);
    std::fs::rename(&away, hsm.tokens_dir()).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || http_get(
            &server_health,
            "/ready"
        )
        .0 == 200),
        "{}",
        server.log()
    );

    // The server goes away: the agent's syncs fail and it says so.
    server.stop();
    let mut body = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let (s, b) = http_get(&agent_health, "/ready");
        body = b;
        s == 503
    }));
    assert!(body.contains("sync"), "{body}");
    assert_eq!(http_get(&agent_health, "/live").0, 200);
    server.start_again();
    assert!(
        wait_until(Duration::from_secs(30), || http_get(
            &agent_health,
            "/ready"
        )
        .0 == 200),
        "{}",
        agent.log()
    );
}

fn grpc_health(agent: &Agent, service: &str) -> Result<i32, tonic::Status> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?;
        Ok(r.into_inner().status)
    })
}

#[test]
fn grpc_health_answers_on_the_workload_api_socket() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = test_dir("telemetry-grpc-health");
    let (mut server, agent) = setup(dir.path(), "", "");
    served(&agent);
    let serving = ServingStatus::Serving as i32;
    for service in ["", "SpiffeWorkloadAPI"] {
        assert!(
            wait_until(Duration::from_secs(10), || grpc_health(&agent, service)
                .ok()
                == Some(serving)),
            "{service:?}: {:?}",
            grpc_health(&agent, service)
        );
    }
    let unknown = grpc_health(&agent, "no.such.Service").unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    server.stop();
    let not_serving = ServingStatus::NotServing as i32;
    assert!(
        wait_until(Duration::from_secs(20), || grpc_health(&agent, "").ok()
            == Some(not_serving)),
        "{:?}",
        grpc_health(&agent, "")
    );
}

/// Reads notification datagrams into `seen` until `done(seen)` holds (or 20 s pass).
fn recv_until(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    done: impl Fn(&[String]) -> bool,
) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while !done(seen) {
        if Instant::now() > end {
            return false;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    true
}

/// Waits for a datagram with the line `want`.
fn notified(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str) -> bool {
    recv_until(sock, seen, |s| {
        s.iter().any(|m| m.lines().any(|l| l == want))
    })
}

/// Waits for `n` more watchdog pings.
fn watchdog_pings(sock: &UnixDatagram, seen: &mut Vec<String>, n: usize) -> bool {
    let pings = |s: &[String]| s.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let before = pings(seen);
    recv_until(sock, seen, |s| pings(s) >= before + n)
}

#[test]
fn both_binaries_notify_systemd_ready_watchdog_and_stopping() {
    let dir = test_dir("telemetry-notify");
    let server_sock_path = dir.path().join("server-notify.sock");
    let server_sock = UnixDatagram::bind(&server_sock_path).unwrap();
    let env = vec![
        (
            "NOTIFY_SOCKET".to_string(),
            server_sock_path.display().to_string(),
        ),
        // One second: pings every half second.
        ("WATCHDOG_USEC".to_string(), "1000000".to_string()),
    ];
    let mut server = Server::start_with_env(&dir.path().join("server"), "", &env);
    let mut seen = Vec::new();
    assert!(notified(&server_sock, &mut seen, "READY=1"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m.contains("STATUS=serving agents on")),
        "{seen:?}"
    );
    assert!(
        watchdog_pings(&server_sock, &mut seen, 3),
        "{seen:?}\n{}",
        server.log()
    );

    // The agent, started as systemd would with Type=notify.
    let token = server.token(Some(NODE), None);
    let agent = Agent::configure(&dir.path().join("agent"), &server, "");
    let agent_sock_path = dir.path().join("agent-notify.sock");
    let agent_sock = UnixDatagram::bind(&agent_sock_path).unwrap();
    let log = std::fs::File::create(dir.path().join("agent-notify.log")).unwrap();
    let mut child = Command::new(bin("tessera-agent"))
        .arg("run")
        .arg("--config")
        .arg(&agent.config)
        .env("TESSERA_AGENT_JOIN_TOKEN", &token)
        .env("NOTIFY_SOCKET", &agent_sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent_seen = Vec::new();
    assert!(
        notified(&agent_sock, &mut agent_seen, "READY=1"),
        "{agent_seen:?}"
    );
    let serving = recv_until(&agent_sock, &mut agent_seen, |s| {
        s.iter()
            .any(|m| m.contains("STATUS=serving as spiffe://example.org/spire/agent/join_token/"))
    });
    assert!(serving, "{agent_seen:?}");
    assert!(
        watchdog_pings(&agent_sock, &mut agent_seen, 3),
        "{agent_seen:?}"
    );
    sigterm(child.id());
    assert!(
        notified(&agent_sock, &mut agent_seen, "STOPPING=1"),
        "{agent_seen:?}"
    );
    let _ = child.wait();

    sigterm(server.pid().unwrap());
    assert!(notified(&server_sock, &mut seen, "STOPPING=1"), "{seen:?}");
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn a_taken_telemetry_address_fails_the_start_naming_the_setting() {
    let dir = test_dir("telemetry-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut server = Server::configure(&dir.path().join("server"), &telemetry(Some(&addr), None));
    let status = server.try_start(Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = server.log();
    assert!(
        log.contains("[telemetry] metrics_address") && log.contains(&addr),
        "{log}"
    );
    // And a bad address is a configuration error with its line.
    let mut bad = Server::configure(
        &dir.path().join("bad"),
        "[telemetry]\nmetrics_address = \"localhost\"\n",
    );
    let status = bad.try_start(Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    // The line and column of the bad value, and why.
    assert!(
        bad.log().contains("server.toml:6:") && bad.log().contains("invalid socket address"),
        "{}",
        bad.log()
    );
}

/// The lines of a log written with `log_format = "json"`, each parsed; a line that is
/// not one JSON object fails the test, naming it.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .collect()
}

/// The first line whose message is `message`.
fn line_with<'a>(lines: &'a [serde_json::Value], message: &str) -> Option<&'a serde_json::Value> {
    lines.iter().find(|l| l["message"] == message)
}

#[test]
fn json_logs_name_each_call_s_method_caller_and_agent() {
    let dir = test_dir("telemetry-json-logs");
    let server = Server::start(
        &dir.path().join("server"),
        "log_format = \"json\"\nagent_svid_ttl = \"8s\"\n",
    );
    let token = server.token(Some(NODE), None);
    // An entry for another user: this process is a workload without an identity.
    server.entry(WORKLOAD, NODE, &["unix:uid:4000000"], &[]);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        "log_format = \"json\"\n",
    );
    let agent_id = agent.spiffe_id();

    // The server: the attestation is logged inside the Attest call's span, with the
    // caller's address; after the renewal, a line carries the agent's own ID.
    let renewed = wait_until(Duration::from_secs(40), || {
        line_with(
            &json_lines(&server.log()),
            "agent uses its renewed SVID; the one it replaced is no longer accepted",
        )
        .is_some()
    });
    let lines = json_lines(&server.log());
    assert!(renewed, "no renewal logged:\n{}", server.log());
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "{key} missing: {l}");
        }
    }
    let attested = line_with(&lines, "agent attested").unwrap();
    assert_eq!(attested["level"], "INFO");
    assert_eq!(attested["agent"], agent_id.as_str(), "{attested}");
    assert_eq!(attested["span"]["name"], "rpc");
    assert_eq!(attested["span"]["method"], "/tessera.agent.v1.Node/Attest");
    let caller = attested["span"]["caller"].as_str().unwrap();
    assert!(caller.starts_with("127.0.0.1:"), "{attested}");
    assert!(attested["span"].get("agent_id").is_none(), "{attested}");
    let renewal = line_with(
        &lines,
        "agent uses its renewed SVID; the one it replaced is no longer accepted",
    )
    .unwrap();
    assert_eq!(renewal["span"]["agent_id"], agent_id.as_str(), "{renewal}");

    // The agent: a caller without an identity is logged inside the Workload API call's
    // span, with the caller's pid and uid.
    let denied = fetch_x509(&agent, Duration::from_secs(5));
    assert_eq!(
        denied.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    let lines = json_lines(&agent.log());
    let no_identity = line_with(&lines, "workload has no identity")
        .unwrap_or_else(|| panic!("not logged:\n{}", agent.log()));
    assert_eq!(
        no_identity["span"]["method"],
        "/SpiffeWorkloadAPI/FetchX509SVID"
    );
    assert_eq!(
        no_identity["span"]["caller"],
        format!("pid={} uid={}", std::process::id(), my_uid()).as_str(),
        "{no_identity}"
    );
    assert!(no_identity["selectors"].is_string(), "{no_identity}");
}
