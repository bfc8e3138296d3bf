//! Attacks on the server's agent API and the agent's Workload API, made as a hostile
//! network peer or local user would make them, each checked for its refusal and for
//! the honest agent or workload still being served: connections held until the
//! listener is full, idle and half-open connections, join-token guessing, reserved
//! SPIFFE IDs at every entry point, and secrets on the command line, in logs and in
//! files.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::workload as wpb;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_swtpm_tests::attack_net::{
    UnixHog, agent_cli_as, as_user, attest_join_token, can_switch_users, closed_within,
    connect_from, hold_tcp, is_closed, join_token_params, node_client_from, server_trust,
};
use tessera_swtpm_tests::{Agent, Server, SoftHsm, bin, my_uid, test_dir, wait_until};
use tokio::io::AsyncReadExt;

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// The counts of the refusal summaries `what` logged ("<what>: refused N ...").
fn refusal_reports(log: &str, what: &str) -> Vec<u64> {
    let marker = format!("{what}: refused ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Waits until the summaries of `what` in `log()` add up to at least `expected` (a
/// burst is reported a few seconds after it, a longer siege at most every 30 s), and
/// returns the counts reported.
fn wait_for_reports(log: impl Fn() -> String, what: &str, expected: u64) -> Vec<u64> {
    let ok = wait_until(Duration::from_secs(45), || {
        refusal_reports(&log(), what).iter().sum::<u64>() >= expected
    });
    let reports = refusal_reports(&log(), what);
    assert!(
        ok,
        "expected {expected} refusals reported as \"{what}\", got {reports:?}:\n{}",
        log()
    );
    reports
}

/// A token and an entry for `uid` under the agent that will use it.
fn token_with_entry(server: &Server, path: &str, uid: u32) -> String {
    let token = server.token(None, None);
    server.entry(
        &format!("spiffe://example.org/{path}"),
        &format!("spiffe://example.org/spire/agent/join_token/{token}"),
        &[&format!("unix:uid:{uid}")],
        &[],
    );
    token
}

fn fetch_ok(agent: &Agent) -> String {
    let o = agent.cli(&["api", "fetch", "x509"]);
    assert!(
        o.status.success(),
        "fetch failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---- connection exhaustion: the agent API ----

#[test]
fn one_address_cannot_take_every_agent_api_connection() {
    let dir = test_dir("attack-tcp");
    // A long handshake deadline, so that the attacker's half-open connections stay
    // held for the whole test; a small share, so that the test is quick.
    let server = Server::start(
        &dir.path().join("server"),
        "[limits]\nmax_connections_per_ip = 40\nhandshake_timeout = \"2m\"\n",
    );
    let target: SocketAddr = server.address().parse().unwrap();
    let rt = rt();
    // Two hostile addresses at once, each taking all it may.
    let (a, b) = rt.block_on(async {
        tokio::join!(
            hold_tcp(loopback(2), target, 500),
            hold_tcp(loopback(3), target, 500)
        )
    });
    assert_eq!(a.streams.len(), 40, "127.0.0.2 holds its share, no more");
    assert_eq!(b.streams.len(), 40, "127.0.0.3 holds its own share");
    assert!(a.refused > 0 && b.refused > 0);
    assert!(
        a.streams.iter().chain(&b.streams).all(|s| !is_closed(s)),
        "what was admitted stays open"
    );

    // An honest agent (from 127.0.0.1) attests, and its workload gets an SVID.
    let token = token_with_entry(&server, "honest", my_uid());
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert!(fetch_ok(&agent).contains("spiffe://example.org/honest"));

    // The refusals are reported in a summary with their count, not a line each.
    let refused = (a.refused + b.refused) as u64;
    let reports = wait_for_reports(|| server.log(), "agent API connections", refused);
    assert_eq!(reports.iter().sum::<u64>(), refused, "{reports:?}");
    assert!(reports.len() <= 2, "{reports:?} for {refused} refusals");
    assert!(server.log().contains("127.0.0.2") && server.log().contains("127.0.0.3"));

    // Once the attacker lets go, its address is served again.
    drop(a);
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = hold_tcp(loopback(2), target, 5).await;
        assert_eq!(again.streams.len(), 5);
    });
}

#[test]
fn half_open_and_idle_agent_api_connections_are_closed_and_long_calls_are_not() {
    let dir = test_dir("attack-idle-tcp");
    let server = Server::start(
        &dir.path().join("server"),
        "[limits]\nhandshake_timeout = \"2s\"\nidle_timeout = \"3s\"\n",
    );
    let target: SocketAddr = server.address().parse().unwrap();
    let token = server.token(None, None);
    let trust = server_trust(&server);
    rt().block_on(async {
        // No ClientHello: dropped at the handshake deadline.
        let silent = connect_from(loopback(4), target).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!is_closed(&silent), "not refused: it is within the caps");
        assert!(closed_within(&silent, Duration::from_secs(15)).await);

        // A finished handshake, then nothing: closed once idle.
        let tcp = connect_from(loopback(4), target).await.unwrap();
        let config = Arc::new(tessera_core::tls::insecure_client_config());
        let name = rustls::pki_types::ServerName::try_from("tessera-server").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            let mut buf = [0u8; 256];
            // The server's HTTP/2 settings may come first; then the end.
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an idle TLS connection was not closed");

        // An attestation stream held open and silent for twice the idle timeout
        // keeps its connection, and completes on it.
        let mut client = node_client_from(loopback(5), &server, trust);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut inbound = client
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tokio::time::sleep(Duration::from_secs(6)).await;
        tx.send(join_token_params(&token)).await.unwrap();
        let answer = inbound.message().await;
        assert!(
            matches!(
                answer,
                Ok(Some(tessera_proto::agent::AttestResponse {
                    step: Some(tessera_proto::agent::attest_response::Step::Result(_))
                }))
            ),
            "{answer:?}\n{}",
            server.log()
        );
    });
}

// ---- connection exhaustion: the Workload API ----

const HOG_UID: u32 = 4202;
const HONEST_UID: u32 = 4201;

/// Lets other users reach the agent's socket inside the (private) test directory.
fn open_to_all(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn one_local_user_cannot_take_every_workload_api_connection() {
    assert!(
        can_switch_users(),
        "this test acts as several local users: run it as root (as scripts/test.sh does)"
    );
    let dir = test_dir("attack-unix");
    open_to_all(dir.path());
    let server = Server::start(&dir.path().join("server"), "");
    let token = token_with_entry(&server, "honest-workload", HONEST_UID);
    // The agent's default limits: what an installation gets.
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let share: usize = agent
        .log()
        .lines()
        .find_map(|l| l.split("Workload API limits: ").nth(1))
        .and_then(|v| v.split(" per uid").next())
        .and_then(|v| v.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the agent logs its limits:\n{}", agent.log()));

    let hog = UnixHog::start(HOG_UID, &agent.socket, share * 4);
    assert_eq!(hog.held, share, "uid {HOG_UID} holds its share, no more");
    assert!(hog.refused > 0);

    // Another user's workload gets its SVID, and the agent answers its own health
    // check, while the hog holds everything it may.
    let o = agent_cli_as(HONEST_UID, &agent.socket, &["api", "fetch", "x509"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        agent.log()
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("spiffe://example.org/honest-workload"));
    assert!(agent.cli(&["healthcheck"]).status.success());

    // The hog's next connection is refused at once...
    let o = agent_cli_as(HOG_UID, &agent.socket, &["healthcheck"]);
    assert!(!o.status.success(), "the hog's share is full");
    let refused = hog.refused + 1;

    // ...the refusals are one summary with their count...
    // (The refused client may try once more on its own, hence "at least".)
    let reports = wait_for_reports(|| agent.log(), "Workload API connections", refused as u64);
    assert!(reports.len() <= 2, "{reports:?} for {refused} refusals");
    assert!(agent.log().contains(&format!("uid {HOG_UID}")));

    // ...and once the hog lets go, its user is served again.
    drop(hog);
    let ok = wait_until(Duration::from_secs(10), || {
        agent_cli_as(HOG_UID, &agent.socket, &["healthcheck"])
            .status
            .success()
    });
    assert!(ok, "{}", agent.log());
}

#[test]
fn idle_workload_api_connections_are_closed_and_streams_are_not() {
    let dir = test_dir("attack-idle-unix");
    let server = Server::start(&dir.path().join("server"), "");
    let token = token_with_entry(&server, "streamer", my_uid());
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        "[limits]\nidle_timeout = \"2s\"\n",
    );
    assert!(fetch_ok(&agent).contains("spiffe://example.org/streamer"));
    rt().block_on(async {
        // Connected, never a request: closed after the idle timeout.
        let mut raw = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            let mut buf = [0u8; 256];
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an idle Workload API connection stayed open");

        // A FetchX509SVID stream lasts three times the idle timeout, unbroken.
        let ch = tessera_proto::unix_channel(&agent.socket).await.unwrap();
        let mut client =
            SpiffeWorkloadApiClient::with_interceptor(ch, |mut r: tonic::Request<()>| {
                r.metadata_mut().insert(
                    "workload.spiffe.io",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                Ok(r)
            });
        let mut stream = client
            .fetch_x509svid(wpb::X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/streamer");
        let next = tokio::time::timeout(Duration::from_secs(6), stream.message()).await;
        match next {
            Err(_) => {}
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("the stream ended: {other:?}\n{}", agent.log()),
        }
        // The connection is still usable for another call.
        let jwt = client
            .fetch_jwtsvid(wpb::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            })
            .await;
        assert!(jwt.is_ok(), "{jwt:?}");
    });
}

// ---- stream exhaustion: requests that never finish ----

/// How much a siege of unfinished requests may add to a process's resident memory.
/// Before the stream limit, the 100,000 streams below took each process from about
/// 20 MiB to about 950 MiB.
const SIEGE_GROWTH_KIB: u64 = 64 * 1024;

/// A peer with no SVID opens five connections and on each 20,000 streams whose
/// request message never comes; a local process does the same on the Workload API.
/// Neither pins memory (the server refuses every call but `Attest` from such a peer
/// at its headers, and every listener allows 100 streams per connection), and the
/// honest agent and workload are still served throughout.
#[test]
fn unfinished_requests_on_many_streams_do_not_pin_memory() {
    use tessera_swtpm_tests::attack::vm_rss_kib;
    use tessera_swtpm_tests::attack_h2::{send_and_hold, tls_from, unfinished_requests};
    let dir = test_dir("attack-streams");
    let server = Server::start(&dir.path().join("server"), "");
    let token = token_with_entry(&server, "streams", 0);
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert!(fetch_ok(&agent).contains("spiffe://example.org/streams"));
    let (server_pid, agent_pid) = (server.pid().unwrap(), agent.pid().unwrap());
    let (server_before, agent_before) = (vm_rss_kib(server_pid), vm_rss_kib(agent_pid));

    let rt = rt();
    let trust = server_trust(&server);
    let target: SocketAddr = server.address().parse().unwrap();
    let mut held = Vec::new();
    rt.block_on(async {
        for _ in 0..5 {
            let tls = tls_from(loopback(2), target, trust.clone()).await.unwrap();
            let bytes = unfinished_requests("/tessera.agent.v1.Node/SyncEntries", 20_000);
            held.push(send_and_hold(tls, bytes));
            let unix = tokio::net::UnixStream::connect(&agent.socket)
                .await
                .unwrap();
            let bytes = unfinished_requests("/SpiffeWorkloadAPI/FetchX509SVID", 20_000);
            held.push(send_and_hold(unix, bytes));
        }
        // Long enough for both processes to have read and handled every frame.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (server_after, agent_after) = (vm_rss_kib(server_pid), vm_rss_kib(agent_pid));
    assert!(
        server_after < server_before + SIEGE_GROWTH_KIB,
        "the server grew from {server_before} KiB to {server_after} KiB"
    );
    assert!(
        agent_after < agent_before + SIEGE_GROWTH_KIB,
        "the agent grew from {agent_before} KiB to {agent_after} KiB"
    );
    // The siege still holds its connections, and the honest are served.
    assert!(held.iter().any(|h| !h.is_finished()));
    assert!(fetch_ok(&agent).contains("spiffe://example.org/streams"));
    let token2 = token_with_entry(&server, "streams-2", 0);
    let agent2 = Agent::start(&dir.path().join("agent-2"), &server, Some(&token2), "");
    assert!(fetch_ok(&agent2).contains("spiffe://example.org/streams-2"));
    for h in held {
        h.abort();
    }
}

// ---- attestation guessing ----

#[test]
fn join_token_guessing_is_throttled_per_address() {
    let dir = test_dir("attack-guess");
    // The defaults: one attestation per second per address, bursts of ten.
    let server = Server::start(&dir.path().join("server"), "");
    let trust = server_trust(&server);
    let (denied, throttled) = rt().block_on(async {
        let mut c = node_client_from(loopback(6), &server, trust);
        let (mut denied, mut throttled) = (0u64, 0u64);
        for i in 0..40 {
            match attest_join_token(&mut c, &format!("guess-{i:02}-x7q")).await {
                Err(s) if s.code() == tonic::Code::PermissionDenied => denied += 1,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    assert!(
                        s.message().contains("too many attestations from 127.0.0.6")
                            && s.message().contains("per second"),
                        "{}",
                        s.message()
                    );
                    throttled += 1;
                }
                other => panic!("guess {i}: {other:?}"),
            }
        }
        (denied, throttled)
    });
    assert!(
        (10..20).contains(&denied),
        "{denied} guesses were checked before the limit"
    );
    assert_eq!(denied + throttled, 40);

    // Honest agents behind one address attest one after the other, more than a
    // burst of them: success does not count against the address.
    let tokens: Vec<String> = (0..15).map(|_| server.token(None, None)).collect();
    let trust = server_trust(&server);
    rt().block_on(async {
        let mut c = node_client_from(loopback(7), &server, trust);
        for t in &tokens {
            let id = attest_join_token(&mut c, t).await.unwrap();
            assert!(id.ends_with(t.as_str()), "{id}");
        }
    });

    // An honest agent from another address attests at once.
    let token = token_with_entry(&server, "after-guessing", my_uid());
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    assert!(fetch_ok(&agent).contains("spiffe://example.org/after-guessing"));

    // Refusals are logged as such, summed, and never with the guesses.
    let reports = wait_for_reports(
        || server.log(),
        "attestations refused by the rate limit",
        throttled,
    );
    assert_eq!(reports.iter().sum::<u64>(), throttled, "{reports:?}");
    assert!(reports.len() <= 2, "{reports:?} for {throttled} refusals");
    assert!(
        !server.log().contains("x7q"),
        "a guessed token was logged:\n{}",
        server.log()
    );
}

// ---- reserved IDs ----

fn refused_as_reserved(server: &Server, args: &[&str], id: &str) {
    let o = server.cli(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} was accepted");
    assert!(
        err.contains("reserved namespace /spire") && err.contains(id),
        "{args:?}: {err}"
    );
}

#[test]
fn reserved_ids_are_refused_at_every_entry_point() {
    let dir = test_dir("attack-reserved");
    let server = Server::start(&dir.path().join("server"), "");
    let agent_parent = "spiffe://example.org/spire/agent/join_token/parent";
    for id in [
        "spiffe://example.org/spire/server",
        "spiffe://example.org/spire/agent/join_token/stolen",
        "spiffe://example.org/spire",
        "spiffe://example.org/spire/anything",
    ] {
        refused_as_reserved(
            &server,
            &[
                "entry",
                "create",
                "--spiffe-id",
                id,
                "--parent-id",
                agent_parent,
                "--selector",
                "unix:uid:1",
            ],
            id,
        );
        refused_as_reserved(
            &server,
            &[
                "entry",
                "create",
                "--node",
                "--spiffe-id",
                id,
                "--selector",
                "tpm_devid:subject:cn:x",
            ],
            id,
        );
        refused_as_reserved(&server, &["token", "generate", "--spiffe-id", id], id);
        refused_as_reserved(&server, &["x509", "mint", "--spiffe-id", id], id);
        refused_as_reserved(
            &server,
            &["jwt", "mint", "--spiffe-id", id, "--audience", "a"],
            id,
        );
    }
    // Nothing of the refused calls was stored.
    let all = server.cli_ok(&["entry", "show", "--output", "json"]);
    assert!(
        !all.contains("/spire/server") && !all.contains("stolen"),
        "{all}"
    );

    // An update to a reserved ID is refused and leaves the entry as it was.
    let id = server.entry(
        "spiffe://example.org/web",
        agent_parent,
        &["unix:uid:1"],
        &[],
    );
    refused_as_reserved(
        &server,
        &[
            "entry",
            "update",
            "--entry-id",
            &id,
            "--spiffe-id",
            "spiffe://example.org/spire/server",
            "--parent-id",
            agent_parent,
            "--selector",
            "unix:uid:1",
        ],
        "spiffe://example.org/spire/server",
    );
    let shown = server.cli_ok(&["entry", "show", "--entry-id", &id]);
    assert!(shown.contains("spiffe://example.org/web"), "{shown}");

    // The batch call refuses the reserved entry alone.
    rt().block_on(async {
        let ch = tessera_proto::unix_channel(&server.admin).await.unwrap();
        let mut admin = tessera_proto::admin::admin_client::AdminClient::new(ch);
        let entry = |spiffe_id: &str| tessera_proto::types::Entry {
            spiffe_id: spiffe_id.into(),
            parent_id: agent_parent.into(),
            selectors: vec!["unix:uid:2".into()],
            ..Default::default()
        };
        let resp = admin
            .batch_create_entries(tessera_proto::admin::BatchCreateEntriesRequest {
                entries: vec![
                    entry("spiffe://example.org/spire/server"),
                    entry("spiffe://example.org/batch-ok"),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        let codes: Vec<i32> = resp
            .results
            .iter()
            .map(|r| r.status.as_ref().unwrap().code)
            .collect();
        assert_eq!(
            codes,
            vec![tonic::Code::InvalidArgument as i32, tonic::Code::Ok as i32]
        );
        assert!(
            resp.results[0]
                .status
                .as_ref()
                .unwrap()
                .message
                .contains("reserved")
        );
    });

    // Parents in the reserved namespace stay legal: agents, and the server for node
    // aliases.
    server.entry(
        "spiffe://example.org/under-agent",
        "spiffe://example.org/spire/agent/tpm_devid/abc/def",
        &["unix:uid:3"],
        &[],
    );
    server.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/racks/r1",
        "--selector",
        "tpm_devid:subject:cn:x",
    ]);
    server.token(Some("spiffe://example.org/nodes/n1"), None);
    server.cli_ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/spire-ish",
    ]);
}

#[test]
fn a_stored_entry_with_a_reserved_id_is_never_served() {
    // An entry written before the rule (here: edited into the database while the
    // server is down) stays visible to the operator but is never given to an agent.
    let dir = test_dir("attack-legacy");
    let mut server = Server::start(&dir.path().join("server"), "");
    let token = token_with_entry(&server, "kept", my_uid());
    let parent = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let legacy = server.entry(
        "spiffe://example.org/legacy",
        &parent,
        &[&format!("unix:uid:{}", my_uid())],
        &["--hint", "legacy"],
    );
    server.stop();
    let db = dir
        .path()
        .join("server")
        .join("data")
        .join("datastore.sqlite3");
    let sql = format!(
        "UPDATE entries SET spiffe_id = 'spiffe://example.org/spire/server', \
         data = replace(data, 'spiffe://example.org/legacy', 'spiffe://example.org/spire/server') \
         WHERE id = '{legacy}';"
    );
    let o = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(&sql)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    server.start_again();
    assert!(
        server.log().contains("reserved namespace"),
        "the server says why it ignores the entry:\n{}",
        server.log()
    );
    let shown = server.cli_ok(&["entry", "show", "--entry-id", &legacy]);
    assert!(
        shown.contains("spiffe://example.org/spire/server"),
        "kept: {shown}"
    );

    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let got = fetch_ok(&agent);
    assert!(got.contains("spiffe://example.org/kept"), "{got}");
    assert!(!got.contains("/spire/server"), "{got}");
}

// ---- secrets ----

/// Every file under `dir`, with its mode.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push((e.path(), meta.permissions().mode() & 0o7777));
        }
    }
    out
}

fn occurrences(hay: &[u8], needle: &str) -> usize {
    hay.windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

#[test]
fn secrets_stay_out_of_argv_logs_and_readable_files() {
    assert!(
        can_switch_users(),
        "this test reads /proc as another user: run it as root (as scripts/test.sh does)"
    );
    let dir = test_dir("attack-secrets");
    let pin = "Kx93-pin-7Qz";
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "secrets", pin);
    let server = Server::start_with_env(
        &dir.path().join("server"),
        &format!("[key_manager]\ntype = \"pkcs11\"\n{}", hsm.section()),
        &hsm.env(),
    );
    let used = token_with_entry(&server, "joined", my_uid());
    let unused = server.token(None, None);

    // The recommended way: the token in a file only root can read.
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, &used).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent_dir = dir.path().join("agent");
    let mut agent = Agent::configure(
        &agent_dir,
        &server,
        &format!(
            "[node_attestor.join_token]\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    );
    agent.spawn(None);
    agent.wait_healthy();
    assert!(fetch_ok(&agent).contains("spiffe://example.org/joined"));
    let pid = agent.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(occurrences(&cmdline, &used), 0);

    // Through the environment: another user cannot read it there.
    let env_token = token_with_entry(&server, "env-joined", my_uid());
    let env_agent = Agent::start(&dir.path().join("env-agent"), &server, Some(&env_token), "");
    let env_pid = env_agent.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{env_pid}/cmdline")).unwrap();
    assert_eq!(occurrences(&cmdline, &env_token), 0);
    let environ = std::fs::read(format!("/proc/{env_pid}/environ")).unwrap();
    assert_eq!(occurrences(&environ, &env_token), 1, "root can read it");
    let o = as_user(65534, Path::new("/bin/cat"))
        .arg(format!("/proc/{env_pid}/environ"))
        .output()
        .unwrap();
    assert!(
        !o.status.success() && occurrences(&o.stdout, &env_token) == 0,
        "another user read the agent's environment"
    );

    // On the command line it still works, with a loud warning that does not repeat it.
    let flag_token = "flag-token-3vq9";
    let flag_dir = dir.path().join("flag-agent");
    let flagged = Agent::configure(&flag_dir, &server, "");
    let o = std::process::Command::new(bin("tessera-agent"))
        .args(["run", "--config"])
        .arg(&flagged.config)
        .args(["--join-token", flag_token])
        .env_remove("TESSERA_AGENT_JOIN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the made-up token was refused");
    assert!(
        err.contains("SECURITY") && err.contains("cmdline") && err.contains("--join-token-file"),
        "{err}"
    );
    assert_eq!(occurrences(err.as_bytes(), flag_token), 0, "{err}");

    // Logs: the used token only inside the agent's ID (it is spent), the unused one,
    // the made-up one and the PIN nowhere.
    for (what, log) in [
        ("server", server.log()),
        ("agent", agent.log()),
        ("env agent", env_agent.log()),
    ] {
        let bytes = log.as_bytes();
        assert_eq!(
            occurrences(bytes, &used),
            occurrences(bytes, &format!("join_token/{used}")),
            "{what} log shows the token outside the agent ID:\n{log}"
        );
        for secret in [unused.as_str(), flag_token, pin] {
            assert_eq!(occurrences(bytes, secret), 0, "{what} log shows {secret}");
        }
    }

    // State: directories only their owner can enter; key material and the datastore
    // readable by their owner alone; outside the datastore (which keeps tokens not yet
    // used, as it must), no secret.
    let server_data = dir.path().join("server").join("data");
    for d in [&server_data, &agent_dir.join("data")] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for (path, mode) in files(d) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("datastore") || path.components().any(|c| c.as_os_str() == "keys") {
                assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
            }
            if name.starts_with("datastore") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                occurrences(&bytes, &used),
                occurrences(&bytes, &format!("join_token/{used}")),
                "{} holds the token outside the agent ID",
                path.display()
            );
            for secret in [unused.as_str(), pin] {
                assert_eq!(
                    occurrences(&bytes, secret),
                    0,
                    "{} holds {secret}",
                    path.display()
                );
            }
        }
    }
}

/// Runs `tessera-agent run` for `agent`'s configuration with extra environment until
/// it is healthy; returns the process (stopped by the caller).
fn run_agent_with_env(agent: &Agent, env: &[(&str, &str)]) -> std::process::Child {
    let log = std::fs::File::create(agent.dir.join("agent.env.log")).unwrap();
    let mut child = std::process::Command::new(bin("tessera-agent"))
        .args(["run", "--config"])
        .arg(&agent.config)
        .env_remove("TESSERA_AGENT_JOIN_TOKEN")
        .envs(env.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ok = wait_until(Duration::from_secs(30), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "agent exited:\n{}",
            std::fs::read_to_string(agent.dir.join("agent.env.log")).unwrap_or_default()
        );
        agent.cli(&["healthcheck"]).status.success()
    });
    assert!(ok, "agent did not become healthy");
    child
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn join_tokens_come_from_a_variable_a_credential_or_the_file_without_the_command_line() {
    let dir = test_dir("attack-token-sources");
    let server = Server::start(&dir.path().join("server"), "");

    // token_env: a variable named in the configuration.
    let t = token_with_entry(&server, "from-env", my_uid());
    let a = Agent::configure(
        &dir.path().join("env"),
        &server,
        "[node_attestor.join_token]\ntoken_env = \"NODE_JOIN_SECRET\"\n",
    );
    let child = run_agent_with_env(&a, &[("NODE_JOIN_SECRET", &t)]);
    assert!(fetch_ok(&a).contains("spiffe://example.org/from-env"));
    stop(child);

    // token_credential: a systemd credential.
    let t = token_with_entry(&server, "from-credential", my_uid());
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("join-token"), format!("{t}\n")).unwrap();
    std::fs::set_permissions(
        creds.join("join-token"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let a = Agent::configure(
        &dir.path().join("credential"),
        &server,
        "[node_attestor.join_token]\ntoken_credential = \"join-token\"\n",
    );
    let child = run_agent_with_env(&a, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    assert!(fetch_ok(&a).contains("spiffe://example.org/from-credential"));
    stop(child);

    // --join-token-file, with a file others can read: it works, and says so.
    let t = token_with_entry(&server, "from-file", my_uid());
    let file = dir.path().join("token");
    std::fs::write(&file, &t).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut a = Agent::configure(&dir.path().join("file"), &server, "");
    let log = std::fs::File::create(a.dir.join("agent.file.log")).unwrap();
    let mut child = std::process::Command::new(bin("tessera-agent"))
        .args(["run", "--config"])
        .arg(&a.config)
        .arg("--join-token-file")
        .arg(&file)
        .env_remove("TESSERA_AGENT_JOIN_TOKEN")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ok = wait_until(Duration::from_secs(30), || {
        a.cli(&["healthcheck"]).status.success()
    });
    let _ = child.kill();
    let _ = child.wait();
    a.stop();
    let text = std::fs::read_to_string(a.dir.join("agent.file.log")).unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("mode 0644") && text.contains(&file.display().to_string()),
        "{text}"
    );
    assert_eq!(
        occurrences(text.as_bytes(), &t),
        occurrences(text.as_bytes(), &format!("join_token/{t}"))
    );

    // Inline in the configuration: works, with a warning.
    let t = token_with_entry(&server, "inline", my_uid());
    let mut a = Agent::start(
        &dir.path().join("inline"),
        &server,
        None,
        &format!("[node_attestor.join_token]\ntoken = \"{t}\"\n"),
    );
    assert!(fetch_ok(&a).contains("spiffe://example.org/inline"));
    assert!(
        a.log().contains("inline in the configuration"),
        "{}",
        a.log()
    );
    a.stop();
}
