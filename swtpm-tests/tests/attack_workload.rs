//! Attacks on the agent's Workload API by a hostile local user, each asserting the
//! refusal and that honest workloads are still served: borrowing an identity through
//! exec, setuid, a reused PID, an inherited or passed socket, a process gone before
//! its request or before the agent accepted it; pinning memory with unfinished
//! header blocks and with JWT-SVIDs for huge or countless audiences;
//! ValidateJWTSVID without an identity; and an expired X509-SVID during a server
//! outage.
//!
//! The tests run as root (they start callers as `nobody` with `setpriv`).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_proto::workload as pb;
use tessera_swtpm_tests::attack::{
    self, Handoff, NOBODY, WorkloadClient, channel_over, euid_of, fork_race, open_to_others,
    spawn_with_pid, vm_rss_kib, workload_client,
};
use tessera_swtpm_tests::{Agent, Server, TestDir, test_dir, wait_until};

const ROOT_ID: &str = "spiffe://example.org/root-workload";
const NOBODY_ID: &str = "spiffe://example.org/nobody-workload";
/// A user with no entry.
const STRANGER: u32 = 65_533;

struct Setup {
    dir: TestDir,
    server: Server,
    agent: Agent,
}

/// A server, an agent, and entries for root (this test process) and nobody.
fn setup(name: &str, agent_extra: &str) -> Setup {
    let dir = test_dir(name);
    open_to_others(dir.path());
    let server = Server::start(&dir.path().join("server"), "");
    let token = server.token(Some("spiffe://example.org/node"), None);
    for (id, uid) in [(ROOT_ID, 0), (NOBODY_ID, NOBODY)] {
        server.entry(
            id,
            "spiffe://example.org/node",
            &[&format!("unix:uid:{uid}")],
            &[],
        );
    }
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        agent_extra,
    );
    std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok = wait_until(Duration::from_secs(20), || {
        agent.cli(&["api", "fetch", "x509"]).status.success()
    });
    assert!(ok, "no SVID for root:\n{}", agent.log());
    Setup { dir, server, agent }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn ids(msg: &pb::X509svidResponse) -> Vec<&str> {
    msg.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The first X509-SVID message on `client`, or the error.
async fn first_x509(client: &mut WorkloadClient) -> Result<pb::X509svidResponse, tonic::Status> {
    let mut s = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await?
        .into_inner();
    s.message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("stream ended without a message"))
}

/// What the root test process and an honest nobody process get now.
fn assert_honest_workloads_served(s: &Setup) {
    let out = s.agent.cli(&["api", "fetch", "x509"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(ROOT_ID),
        "root is not served: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.agent.log()
    );
    let mut honest = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let fd = honest.take_socket();
    runtime().block_on(async {
        let mut c = workload_client(channel_over(fd).await);
        let msg = first_x509(&mut c).await.unwrap();
        assert!(ids(&msg).contains(&NOBODY_ID), "{:?}", ids(&msg));
        assert!(!ids(&msg).contains(&ROOT_ID), "{:?}", ids(&msg));
    });
    honest.exit();
}

/// A setuid-root program that waits on its input when run by an ordinary user.
fn setuid_root_program() -> &'static str {
    use std::os::unix::fs::MetadataExt;
    for p in ["/usr/bin/su", "/bin/su"] {
        if let Ok(m) = std::fs::metadata(p)
            && m.uid() == 0
            && m.mode() & 0o4000 != 0
        {
            return p;
        }
    }
    panic!("no setuid-root su on this machine: the attack needs one");
}

/// The attack, as it was done: as nobody, connect and send the request's
/// headers, fork, and let the connecting process execute setuid-root `su` (which
/// waits for a password) while the child finishes the request on the inherited
/// socket. The agent must not answer with root's identity, nor with nobody's: the
/// process that connected is no longer what it was.
#[test]
fn setuid_exec_after_connect_lends_no_identity() {
    let s = setup("attack-setuid", "");
    let su = setuid_root_program();
    let (mut connector, answer) =
        fork_race(s.dir.path(), &s.agent.socket, NOBODY, NOBODY, &[su, "root"]);
    // The attack happened as designed: the connecting process runs as root now.
    let euid = euid_of(connector.id());
    let _ = connector.kill();
    let _ = connector.wait();
    assert_eq!(euid, Some(0), "su did not become root");
    assert!(
        !contains(&answer.data, ROOT_ID) && !contains(&answer.data, NOBODY_ID),
        "an SVID was served: {answer:?}"
    );
    assert_eq!(answer.status.as_deref(), Some("7"), "{answer:?}");
    assert!(
        answer
            .message
            .contains("changed its credentials since it connected"),
        "{answer:?}"
    );

    // The control: the same bytes, the same fork, no exec: served, as nobody.
    let (mut connector, answer) = fork_race(s.dir.path(), &s.agent.socket, NOBODY, NOBODY, &["-"]);
    drop(connector.stdin.take());
    let _ = connector.wait();
    assert!(contains(&answer.data, NOBODY_ID), "{answer:?}");
    assert!(!contains(&answer.data, ROOT_ID), "{answer:?}");

    assert_honest_workloads_served(&s);
}

/// The same with an ordinary program: the caller's executable is part of who it is.
#[test]
fn exec_of_another_program_after_connect_is_refused() {
    let s = setup(
        "attack-exec",
        "[workload_attestors.unix]\ndiscover_workload_path = true\n",
    );
    let (mut connector, answer) = fork_race(
        s.dir.path(),
        &s.agent.socket,
        NOBODY,
        NOBODY,
        &["/bin/sleep", "600"],
    );
    let _ = connector.kill();
    let _ = connector.wait();
    assert!(!contains(&answer.data, NOBODY_ID), "{answer:?}");
    assert_eq!(answer.status.as_deref(), Some("7"), "{answer:?}");
    assert!(
        answer.message.contains("executed another program"),
        "{answer:?}"
    );
    assert_honest_workloads_served(&s);
}

/// `unix:path` is the path of the caller's executable as the kernel writes it, which
/// is the path in the caller's own mount namespace. In a private user and mount
/// namespace (which any user may create) nobody bind-mounts a program of its own over
/// a root-only program's path and runs it there: the agent must not take that path
/// for the root-only program. Root running the real program is served.
#[test]
fn a_program_mounted_over_a_path_in_a_private_namespace_does_not_get_that_path() {
    let s = setup(
        "attack-mountns",
        "[workload_attestors.unix]\ndiscover_workload_path = true\n",
    );
    // The attack needs unprivileged user namespaces; where the kernel refuses them,
    // nobody cannot make one and there is nothing to test.
    let probe = attack::as_user(NOBODY, NOBODY, Path::new("/usr/bin/unshare"))
        .args(["-rm", "true"])
        .output()
        .unwrap();
    if !probe.status.success() {
        eprintln!(
            "skipped: unprivileged user namespaces are off here ({})",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    const APP_ID: &str = "spiffe://example.org/root-only-app";
    let private = s.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = private.join("app");
    std::fs::copy(tessera_swtpm_tests::bin("tessera-agent"), &app).unwrap();
    // Only root may even run it.
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o700)).unwrap();
    s.server.entry(
        APP_ID,
        "spiffe://example.org/node",
        &[&format!("unix:path:{}", app.display())],
        &[],
    );
    let socket = s.agent.socket.display().to_string();
    let served = wait_until(Duration::from_secs(20), || {
        let out = Command::new(&app)
            .args(["api", "fetch", "x509", "--socket-path", &socket])
            .output()
            .unwrap();
        contains(&out.stdout, APP_ID)
    });
    assert!(
        served,
        "root running the app is not served:\n{}",
        s.agent.log()
    );

    let own = attack::shared_binary(s.dir.path(), "tessera-agent");
    let script = format!(
        "mount --bind {own} {app} && exec {app} api fetch x509 --socket-path {socket}",
        own = own.display(),
        app = app.display(),
    );
    let out = attack::as_user(NOBODY, NOBODY, Path::new("/usr/bin/unshare"))
        .args(["-rm", "sh", "-c", &script])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The attack ran: nobody's own program was served, as nobody.
    assert!(contains(&out.stdout, NOBODY_ID), "{said}");
    assert!(
        !contains(&out.stdout, APP_ID),
        "the path was borrowed: {said}"
    );
    assert_honest_workloads_served(&s);
}

/// A socket passed to another process (here root, the test) carries the identity
/// of the process that connected, never that of its user; once the connector is
/// gone the socket carries nothing, and an open stream ends at its next update.
#[test]
fn a_passed_socket_carries_the_connector_identity_until_it_is_gone() {
    let s = setup("attack-passed", "");
    let mut h = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let fd = h.take_socket();
    runtime().block_on(async {
        let mut c = workload_client(channel_over(fd).await);
        let mut stream = c
            .fetch_x509svid(pb::X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let msg = stream.message().await.unwrap().unwrap();
        assert_eq!(ids(&msg), [NOBODY_ID], "root used nobody's socket");
        let jwt = c
            .fetch_jwtsvid(pb::JwtsvidRequest {
                audience: vec!["db".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let claims = tessera_core::jwt::peek_claims(&jwt.svids[0].svid).unwrap();
        assert_eq!(claims["sub"], NOBODY_ID);

        h.exit();
        let err = first_x509(&mut c).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("has exited"), "{}", err.message());
        let err = c
            .fetch_jwtsvid(pb::JwtsvidRequest {
                audience: vec!["db".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

        // A change for nobody: the open stream would send it, and ends instead.
        s.server.entry(
            "spiffe://example.org/nobody-second",
            "spiffe://example.org/node",
            &[&format!("unix:uid:{NOBODY}")],
            &[],
        );
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the stream neither updated nor ended");
        let err = next.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    });
    assert_honest_workloads_served(&s);
}

/// The connecting process exits and its PID goes to another process of the same
/// user: the socket still carries nothing (the agent holds the process itself, not
/// its number).
#[test]
fn a_reused_pid_is_not_the_caller() {
    let s = setup("attack-pid-reuse", "");
    let mut h = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let pid = h.pid();
    let fd = h.take_socket();
    h.exit();
    let sleep = Path::new("/bin/sleep");
    let mut squatter = spawn_with_pid(pid, || {
        let mut c = attack::as_user(NOBODY, NOBODY, sleep);
        c.arg("600");
        c
    });
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let err = runtime().block_on(async {
        let mut c = workload_client(channel_over(fd).await);
        first_x509(&mut c).await.unwrap_err()
    });
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("has exited"), "{}", err.message());
    assert_honest_workloads_served(&s);
}

/// Stops the agent process until dropped, so that connections wait in the backlog.
struct Frozen<'a>(&'a Agent);

impl<'a> Frozen<'a> {
    fn new(agent: &'a Agent) -> Self {
        signal(agent, "-STOP");
        Frozen(agent)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(agent: &Agent, sig: &str) {
    let pid = agent.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// What happens between `connect()` and the agent's `accept()` counts too: a
/// caller that exits, executes setuid `su`, or exits and has its PID taken, before
/// the agent gets to the connection, is refused.
#[test]
fn a_caller_gone_or_changed_before_accept_is_refused() {
    let s = setup("attack-before-accept", "");
    let su = setuid_root_program();
    let frozen = Frozen::new(&s.agent);
    let mut gone = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let gone_fd = gone.take_socket();
    gone.exit();

    let mut setuid = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let setuid_fd = setuid.take_socket();
    setuid.command(&format!("exec {su} root"));
    let pid = setuid.pid();
    assert!(
        wait_until(Duration::from_secs(10), || euid_of(pid) == Some(0)),
        "su did not start"
    );

    let mut reused = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let reused_pid = reused.pid();
    let reused_fd = reused.take_socket();
    reused.exit();
    let sleep = Path::new("/bin/sleep");
    let mut squatter = spawn_with_pid(reused_pid, || {
        let mut c = attack::as_user(NOBODY, NOBODY, sleep);
        c.arg("600");
        c
    });
    drop(frozen);

    runtime().block_on(async {
        for (fd, why) in [
            (gone_fd, "has exited"),
            (setuid_fd, "changed its credentials"),
            (reused_fd, "has exited"),
        ] {
            let mut c = workload_client(channel_over(fd).await);
            let err = first_x509(&mut c).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{why}: {err:?}");
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
    });
    let _ = squatter.kill();
    let _ = squatter.wait();
    drop(setuid);
    assert_honest_workloads_served(&s);
}

/// ValidateJWTSVID follows `allow_unauthenticated_verifiers` like the bundle calls:
/// a caller without an identity is refused unless it is set.
#[test]
fn validate_jwtsvid_needs_an_identity_unless_allowed() {
    let s = setup("attack-validate", "");
    let token = {
        let out = s.agent.cli(&["api", "fetch", "jwt", "--audience", "db"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        lines
            .find(|l| l.starts_with("token("))
            .and_then(|_| lines.next())
            .unwrap_or_else(|| panic!("no token in {text}"))
            .trim()
            .to_owned()
    };
    let validate = |agent: &Agent| {
        let mut h = Handoff::start(s.dir.path(), &agent.socket, STRANGER, STRANGER);
        let fd = h.take_socket();
        runtime().block_on(async {
            let mut c = workload_client(channel_over(fd).await);
            c.validate_jwtsvid(pb::ValidateJwtsvidRequest {
                audience: "db".into(),
                svid: token.clone(),
            })
            .await
        })
    };
    let err = validate(&s.agent).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("no identity issued"), "{err:?}");

    // With verifiers allowed, the same caller validates.
    let token2 = s.server.token(Some("spiffe://example.org/node-2"), None);
    let open = Agent::start(
        &s.dir.path().join("agent-open"),
        &s.server,
        Some(&token2),
        "allow_unauthenticated_verifiers = true\n",
    );
    std::fs::set_permissions(&open.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok = validate(&open).unwrap().into_inner();
    assert_eq!(ok.spiffe_id, ROOT_ID);
    assert_honest_workloads_served(&s);
}

/// Audiences are bounded (count and size, InvalidArgument naming the limit), and
/// JWT-SVIDs for thousands of distinct audience sets do not make the agent grow
/// without bound.
#[test]
fn audiences_are_bounded_and_so_is_the_jwt_cache() {
    let s = setup("attack-audiences", "");
    let pid = s.agent.pid().unwrap();
    runtime().block_on(async {
        let ch = tessera_proto::unix_channel(&s.agent.socket).await.unwrap();
        let c = workload_client(ch);
        let fetch = |audience: Vec<String>| {
            let mut c = c.clone();
            async move {
                c.fetch_jwtsvid(pb::JwtsvidRequest {
                    audience,
                    spiffe_id: String::new(),
                })
                .await
            }
        };
        let err = fetch(vec!["x".repeat(1 << 20)]).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("at most 1024 bytes"),
            "{}",
            err.message()
        );
        let err = fetch((0..17).map(|i| format!("aud-{i}")).collect())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("at most 16"), "{}", err.message());

        // As large as allowed, all different: without a bound on the cache,
        // 4,000 such tokens (about 22 KiB each) would hold over 80 MiB.
        let before = vm_rss_kib(pid);
        let mut peak = before;
        let calls = 4_000;
        let mut done = 0;
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..calls {
            let audience: Vec<String> = (0..16)
                .map(|j| format!("{i:08}-{j:02}-{}", "a".repeat(1012)))
                .collect();
            pending.spawn(fetch(audience));
            while pending.len() >= 16 {
                let svid = pending.join_next().await.unwrap().unwrap().unwrap();
                assert_eq!(svid.into_inner().svids.len(), 1);
                done += 1;
                if done % 200 == 0 {
                    peak = peak.max(vm_rss_kib(pid));
                }
            }
        }
        while let Some(r) = pending.join_next().await {
            r.unwrap().unwrap();
        }
        peak = peak.max(vm_rss_kib(pid));
        eprintln!("agent VmRSS: {before} KiB before, {peak} KiB at most during {calls} calls");
        assert!(
            peak < before + 64 * 1024,
            "the agent grew from {before} KiB to {peak} KiB"
        );
    });
    assert_honest_workloads_served(&s);
}

/// Header blocks started and never finished: a block past 64 KiB is refused at
/// once, one under it is dropped after 5 s; either way the agent's memory stays
/// bounded and honest workloads are served meanwhile.
#[test]
fn unfinished_header_blocks_do_not_pin_memory() {
    let s = setup("attack-headers", "");
    let pid = s.agent.pid().unwrap();
    let before = vm_rss_kib(pid);
    // Just under 1 MiB (what a 1 MiB buffer would hold), and just under 64 KiB.
    for (per_conn, closed_at_once) in [(1_000_000, true), (60 * 1024, false)] {
        let conns = 200;
        let mut h = Handoff::start_many(s.dir.path(), &s.agent.socket, NOBODY, NOBODY, conns);
        let mut socks: Vec<std::os::unix::net::UnixStream> = h
            .sockets
            .drain(..)
            .map(std::os::unix::net::UnixStream::from)
            .collect();
        let started = Instant::now();
        let mut head = attack::grpc_request_head(attack::FETCH_X509_SVID);
        // Keep the preface and SETTINGS; replace the request's HEADERS frame.
        head.truncate(24 + 9);
        for sock in &mut socks {
            sock.set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = sock.write_all(&head);
            let mut sent = 0;
            let mut kind = 0x1;
            while sent < per_conn {
                let n = (per_conn - sent).min(16_000);
                let mut f = vec![0, (n >> 8) as u8, n as u8, kind, 0, 0, 0, 0, 1];
                f[0] = (n >> 16) as u8;
                f.extend(std::iter::repeat_n(0x82u8, n));
                if sock.write_all(&f).is_err() {
                    break;
                }
                sent += n;
                kind = 0x9;
            }
        }
        let held = vm_rss_kib(pid);
        eprintln!(
            "agent VmRSS: {before} KiB before, {held} KiB with {conns} connections holding {per_conn}-byte blocks"
        );
        assert!(
            held < before + 64 * 1024,
            "{per_conn}-byte blocks: the agent grew from {before} KiB to {held} KiB"
        );
        assert_honest_workloads_served(&s);
        // Every connection is closed by the agent.
        for sock in &mut socks {
            let left = Duration::from_secs(30).saturating_sub(started.elapsed());
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(sock, &mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        panic!("a connection holding a partial header block stayed open")
                    }
                    Err(_) => break,
                }
            }
        }
        let took = started.elapsed();
        if !closed_at_once {
            // Not before the allowance ran out.
            assert!(took >= Duration::from_secs(4), "closed after {took:?}");
        }
        h.exit();
    }
    assert_honest_workloads_served(&s);
}

/// An X509-SVID that outlives a server outage is never served: the workload's
/// stream ends with Unavailable naming the expiry, a new call is Unavailable, the
/// health check says why, and when the server is back the workload is served
/// again.
#[test]
fn an_expired_svid_is_never_served() {
    let dir = test_dir("attack-expiry");
    let mut server = Server::start(&dir.path().join("server"), "");
    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        ROOT_ID,
        "spiffe://example.org/node",
        &["unix:uid:0"],
        &["--x509-svid-ttl", "20s"],
    );
    let agent = Agent::start(&dir.path().join("agent"), &server, Some(&token), "");
    let rt = runtime();
    let (seen, end) = rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket).await.unwrap();
        let mut c = workload_client(ch);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match c.fetch_x509svid(pb::X509svidRequest {}).await {
                Ok(s) => break s.into_inner(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let first = stream.message().await.unwrap().unwrap();
        let mut seen = vec![(std::time::SystemTime::now(), first)];
        server.stop();
        // Everything the stream sends until it ends.
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
                Ok(Ok(Some(m))) => seen.push((std::time::SystemTime::now(), m)),
                Ok(Ok(None)) => panic!("the stream ended without a status"),
                Ok(Err(status)) => break status,
                Err(_) => panic!("the stream neither ended nor updated in 60 s"),
            }
        };
        (seen, end)
    });
    for (at, msg) in &seen {
        let chain = tessera_core::x509::split_concatenated(&msg.svids[0].x509_svid).unwrap();
        let info = tessera_core::x509::cert_info(&chain[0]).unwrap();
        assert!(
            info.not_after > tessera_core::x509::unix_seconds(*at),
            "an expired SVID was sent"
        );
    }
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(end.message().contains("expired at"), "{}", end.message());

    let out = agent.cli(&["api", "fetch", "x509"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let health = agent.cli(&["healthcheck", "--verbose"]);
    assert!(!health.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(
        text.contains("expired X509-SVIDs, not served until renewed: 1"),
        "{text}"
    );

    // The server is back: served again, with a valid SVID.
    server.start_again();
    let ok = wait_until(Duration::from_secs(90), || {
        agent.cli(&["api", "fetch", "x509"]).status.success()
    });
    assert!(
        ok,
        "not served after the server came back:\n{}",
        agent.log()
    );
    let fresh = rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket).await.unwrap();
        first_x509(&mut workload_client(ch)).await.unwrap()
    });
    let chain = tessera_core::x509::split_concatenated(&fresh.svids[0].x509_svid).unwrap();
    let info = tessera_core::x509::cert_info(&chain[0]).unwrap();
    assert!(info.not_after > tessera_core::x509::unix_seconds(std::time::SystemTime::now()));
}

/// One local user cannot pin the agent's memory with unfinished requests spread over
/// many connections: its requests share one budget (`max_requests_per_uid`); past it
/// it is refused with RESOURCE_EXHAUSTED, while other users are served.
#[test]
fn one_user_s_unfinished_requests_share_one_budget() {
    use tessera_swtpm_tests::attack::vm_rss_kib;
    use tessera_swtpm_tests::attack_h2::{send_and_hold, unfinished_requests};
    let s = setup(
        "attack-request-budget",
        "[limits]\nmax_requests_per_uid = 400\n",
    );
    let pid = s.agent.pid().unwrap();
    let before = vm_rss_kib(pid);
    let rt = runtime();
    let mut held = Vec::new();
    rt.block_on(async {
        // 100 connections of 100 streams each: 10,000 unfinished requests, about
        // 100 MiB if each were kept.
        for _ in 0..100 {
            let unix = tokio::net::UnixStream::connect(&s.agent.socket)
                .await
                .unwrap();
            let bytes = unfinished_requests("/SpiffeWorkloadAPI/FetchX509SVID", 100);
            held.push(send_and_hold(unix, bytes));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let after = vm_rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "the agent grew from {before} KiB to {after} KiB"
    );
    assert!(
        held.iter().any(|h| !h.is_finished()),
        "the siege was cut off"
    );
    // Root, whose budget the siege spent, is told why; nobody is served.
    let out = s.agent.cli(&["api", "fetch", "x509"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("too many requests open from this peer"),
        "{err}"
    );
    let mut honest = Handoff::start(s.dir.path(), &s.agent.socket, NOBODY, NOBODY);
    let fd = honest.take_socket();
    rt.block_on(async {
        let mut c = workload_client(channel_over(fd).await);
        let msg = first_x509(&mut c).await.unwrap();
        assert!(ids(&msg).contains(&NOBODY_ID), "{:?}", ids(&msg));
    });
    honest.exit();
    assert!(
        s.agent.log().contains("open requests in use"),
        "{}",
        s.agent.log()
    );
    // Once the siege ends, root is served again.
    for h in held {
        h.abort();
    }
    let ok = wait_until(Duration::from_secs(15), || {
        s.agent.cli(&["api", "fetch", "x509"]).status.success()
    });
    assert!(ok, "root not served after the siege:\n{}", s.agent.log());
}

/// A socket is bound only in a directory no other user can change: in one others may
/// write, another user could put their own socket or a symlink at the path between
/// the bind and its chmod, or replace it later, and take the callers meant for it.
#[test]
fn sockets_are_not_bound_in_directories_other_users_can_write() {
    let dir = test_dir("attack-socket-dir");
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));

    // The server's admin socket: its directory (the server's own) made 0777.
    let server_dir = dir.path().join("server");
    let mut server = Server::configure(&server_dir, "");
    mode(&server_dir, 0o777).unwrap();
    let status = server.try_start(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server started:\n{}",
        server.log()
    );
    assert!(
        server.log().contains("writable by every user (mode 0777)"),
        "{}",
        server.log()
    );
    assert!(!server.admin.exists(), "a socket was left behind");
    mode(&server_dir, 0o750).unwrap();
    server.start_again();
    let token = server.token(Some("spiffe://example.org/node"), None);

    // The agent's Workload API socket: its directory writable by the group.
    let agent_dir = dir.path().join("agent");
    let mut agent = Agent::configure(&agent_dir, &server, "");
    mode(&agent_dir, 0o775).unwrap();
    agent.spawn(Some(&token));
    assert!(
        wait_until(Duration::from_secs(20), || agent.exited().is_some()),
        "the agent kept running:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("writable by its group (mode 0775)"),
        "{}",
        agent.log()
    );
    assert!(!agent.socket.exists(), "a socket was left behind");
    mode(&agent_dir, 0o755).unwrap();
    agent.spawn(Some(&token));
    agent.wait_healthy();
}
