//! `sync`, two servers sharing PostgreSQL: a private cluster started by
//! `scripts/postgres.sh` (as the end-to-end tests start theirs), two `tessera-server`
//! processes on one database (each its own data directory and in-memory key
//! manager), and simulated agents spread over both syncing every 5 s: sync latency per
//! server and overall, and each server's CPU. Then the time from an entry written
//! through server A to its SVID served by a real agent attached only to server B, which
//! learns of the entry from the datastore's change events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::admin as apb;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_swtpm_tests::faults::PgCluster;
use tessera_swtpm_tests::{Agent, Server};
use tonic::transport::Channel;

use crate::env;
use crate::report::Report;
use crate::sim::{self, SyncState};
use crate::stats;

/// The agents' sync period (the agent's default).
const PERIOD: Duration = Duration::from_secs(5);

/// How often a server reads the change events for other servers' writes: fixed in
/// the server (`server/src/run.rs`, `EntryCache::follow`); its own writes it applies
/// at once.
const SERVER_EVENT_POLL: Duration = Duration::from_secs(1);

/// A cluster in its own directory under the system's temporary directory (a root
/// test run hands it to the `postgres` user, who cannot reach a private temporary
/// directory), removed with its lock file when the benchmark ends.
struct Database {
    cluster: Option<PgCluster>,
    dir: std::path::PathBuf,
}

impl Database {
    fn start() -> (Self, String) {
        let dir = std::env::temp_dir().join(format!("tessera-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Like the harness's servers, a cluster that cannot start ends the run with
        // what the script said.
        let cluster = PgCluster::start(&dir);
        cluster.create_db("bench");
        let conn = cluster.connection_string("bench");
        (
            Self {
                cluster: Some(cluster),
                dir,
            },
            conn,
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.cluster.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        // scripts/postgres.sh serialises its callers on DIR.lock, beside DIR.
        let _ = std::fs::remove_file(self.dir.with_extension("lock"));
    }
}

/// Both servers share the trust domain: the second publishes its first CA and signs
/// once the agents (syncing every 5 s at most here) can have learnt it, which the
/// short refresh hint keeps to 6 s.
fn server_config(conn: &str) -> String {
    format!(
        "bundle_refresh_hint = \"1s\"\nagent_sync_interval = \"5s\"\n\
         [key_manager]\ntype = \"memory\"\n[datastore]\ntype = \"postgres\"\nconnection_string = \"{conn}\"\n{}",
        env::SERVER_LIMITS
    )
}

/// What the sync window measured.
struct Window {
    /// Entries held by all the agents at the end.
    held: usize,
    /// Servers A and B.
    per_server: [PerServer; 2],
    overall: stats::Latency,
    register_secs: f64,
    attest_secs: f64,
}

/// What one server's agents measured in the sync window.
struct PerServer {
    lat: stats::Latency,
    cpu_per_sec: f64,
    rss: f64,
}

/// Registers `agents` join tokens and `per_agent` entries each through server A,
/// attests the agents alternately to A and B, and lets each sync every 5 s (with
/// jitter) for `secs`.
async fn sync_window(
    servers: [&Server; 2],
    agents: usize,
    per_agent: usize,
    secs: u64,
) -> Result<Window, String> {
    let mut admin = env::admin(servers[0]).await?;
    let t0 = Instant::now();
    let tokens = env::tokens(&mut admin, agents).await?;
    let mut list = Vec::with_capacity(agents * per_agent);
    for (i, t) in tokens.iter().enumerate() {
        let parent = env::agent_id(t);
        for j in 0..per_agent {
            list.push(env::entry(
                format!("spiffe://example.org/shared/{i}/{j}"),
                &parent,
                format!("unix:uid:{}", 10_000 + j),
            ));
        }
    }
    env::create_entries(&mut admin, list).await?;
    let register = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut sims = Vec::with_capacity(agents);
    for (k, server) in servers.iter().enumerate() {
        let bundle = sim::bootstrap(&server.cli_ok(&["bundle", "show"]))?;
        let mine: Vec<String> = tokens.iter().skip(k).step_by(2).cloned().collect();
        let added = sim::attest_many(&server.address(), bundle, mine, 16).await?;
        sims.extend(added.into_iter().map(|a| (k, a)));
    }
    let attest = t1.elapsed().as_secs_f64();

    let samples = Arc::new(Mutex::new(Vec::<(usize, Duration)>::new()));
    let pids = [
        servers[0].pid().ok_or("server A not running")?,
        servers[1].pid().ok_or("server B not running")?,
    ];
    let cpu0 = pids.map(|p| stats::cpu_seconds(p).unwrap_or(0.0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(sims.len());
    for (k, a) in sims {
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = SyncState::default();
            sim::jitter(PERIOD).await;
            let mut held = 0;
            while Instant::now() < end {
                let t = Instant::now();
                held = a.sync(&mut st).await?;
                let took = t.elapsed();
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((k, took));
                tokio::time::sleep(PERIOD.mul_f64(0.9 + 0.2 * rand::random::<f64>())).await;
            }
            Ok::<usize, String>(held)
        }));
    }
    let mut held = 0;
    for t in tasks {
        held += t.await.map_err(|e| e.to_string())??;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = pids.map(|p| stats::cpu_seconds(p).unwrap_or(0.0));
    let all = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    let per = |k: usize| {
        let mut s: Vec<Duration> = all.iter().filter(|(i, _)| *i == k).map(|x| x.1).collect();
        PerServer {
            lat: stats::latency(&mut s),
            cpu_per_sec: (cpu1[k] - cpu0[k]) / wall,
            rss: stats::rss_mib(pids[k]),
        }
    };
    let mut overall: Vec<Duration> = all.iter().map(|x| x.1).collect();
    Ok(Window {
        held,
        per_server: [per(0), per(1)],
        overall: stats::latency(&mut overall),
        register_secs: register,
        attest_secs: attest,
    })
}

/// How often B's entry index is asked whether it holds a new entry yet.
const INDEX_PROBE: Duration = Duration::from_millis(10);

/// The number of entries in a server's entry index, from the admin API's health
/// check (its `entries: N cached at revision R` line).
async fn indexed_entries(admin: &mut AdminClient<Channel>) -> Result<u64, String> {
    let details = admin
        .health(apb::HealthRequest {})
        .await
        .map_err(|e| format!("health: {}", e.message()))?
        .into_inner()
        .details;
    details
        .iter()
        .find_map(|d| d.strip_prefix("entries: ")?.split(' ').next()?.parse().ok())
        .ok_or_else(|| format!("no entry count in the health check: {details:?}"))
}

/// One entry's timings, each from the acknowledgement of its creation on A.
struct Timed {
    /// The create call on A, until acknowledged.
    ack: Duration,
    /// Until B's entry index holds it (probed every [`INDEX_PROBE`]).
    indexed: Duration,
    /// Until the workload's FetchX509SVID stream on the agent attached to B
    /// delivers its SVID.
    served: Duration,
}

/// Creates `n` entries one at a time through A for an agent attached only to B,
/// whose sync interval is `interval`, and times each.
async fn write_to_served(
    dir: &std::path::Path,
    a: &Server,
    b: &Server,
    interval: &str,
    n: usize,
) -> Result<Vec<Timed>, String> {
    let mut admin = env::admin(a).await?;
    let mut admin_b = env::admin(b).await?;
    let token = env::tokens(&mut admin, 1).await?.remove(0);
    let parent = env::agent_id(&token);
    let base = format!("spiffe://example.org/w2s/{interval}/base");
    env::create_entries(
        &mut admin,
        vec![env::entry(base, &parent, env::my_selector())],
    )
    .await?;
    // Attached to B only: its configuration names B's address and nothing else.
    let agent = Agent::start(
        &dir.join(format!("agent-{interval}")),
        b,
        Some(&token),
        // Top-level keys before the first table, or TOML puts them in that table.
        &format!("sync_interval = \"{interval}\"\n[key_manager]\ntype = \"memory\"\n"),
    );
    env::wait_for_svid(&agent.socket, Duration::from_secs(60)).await?;
    let mut client = env::workload(&agent.socket).await?;
    let mut stream = client
        .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
        .await
        .map_err(|e| format!("FetchX509SVID: {e}"))?
        .into_inner();
    let period = parse_interval(interval)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // A random pause, so that writes land at any point of the agent's sync
        // period and of B's event poll (a write right after a delivery would always
        // wait a whole sync period).
        let pause = (period + SERVER_EVENT_POLL).mul_f64(rand::random::<f64>());
        tokio::time::sleep(pause).await;
        let target = indexed_entries(&mut admin_b).await? + 1;
        let id = format!("spiffe://example.org/w2s/{interval}/{i}");
        let t = Instant::now();
        env::create_entries(
            &mut admin,
            vec![env::entry(id.clone(), &parent, env::my_selector())],
        )
        .await?;
        let acked = Instant::now();
        let limit = acked + Duration::from_secs(60);
        let indexed = async {
            while indexed_entries(&mut admin_b).await? < target {
                if Instant::now() > limit {
                    return Err(format!("{id} not in B's entry index within 60 s"));
                }
                tokio::time::sleep(INDEX_PROBE).await;
            }
            Ok::<Duration, String>(acked.elapsed())
        };
        let served = async {
            loop {
                let msg = tokio::time::timeout_at(limit.into(), stream.message())
                    .await
                    .map_err(|_| format!("{id} not served by the agent on B within 60 s"))?
                    .map_err(|e| format!("FetchX509SVID stream: {e}"))?
                    .ok_or("the FetchX509SVID stream ended")?;
                if msg
                    .svids
                    .iter()
                    .any(|s| s.spiffe_id == id && !s.x509_svid.is_empty())
                {
                    return Ok::<Duration, String>(acked.elapsed());
                }
            }
        };
        let (indexed, served) = tokio::join!(indexed, served);
        out.push(Timed {
            ack: acked - t,
            indexed: indexed?,
            served: served?,
        });
    }
    Ok(out)
}

/// `500ms`, `1s`, `5s` as a duration.
fn parse_interval(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|e| e.to_string());
    }
    s.strip_suffix('s')
        .and_then(|x| x.parse().ok())
        .map(Duration::from_secs)
        .ok_or_else(|| format!("not an interval: {s}"))
}

/// Adds p50, p99 and max of `samples` in milliseconds as `<key>_p50_ms` and so on.
fn add_latency(r: &mut Report, key: &str, label: &str, samples: &mut [Duration]) {
    let l = stats::latency(samples);
    for (q, v) in [("p50", l.p50_us), ("p99", l.p99_us), ("max", l.max_us)] {
        r.add(
            &format!("{key}_{q}_ms"),
            &format!("{label}, {q} (ms)"),
            v / 1000.0,
        );
    }
}

pub(crate) async fn run(dir: &std::path::Path, quick: bool) -> Result<Report, String> {
    let (agents, per_agent, secs) = if quick {
        (100usize, 20usize, 8u64)
    } else {
        (2_000, 20, 30)
    };
    // Agent sync intervals for the write-to-served part, and entries timed at each.
    let intervals: &[(&str, usize)] = if quick {
        &[("500ms", 3)]
    } else {
        &[("5s", 12), ("1s", 50), ("500ms", 50)]
    };
    let (db, conn) = Database::start();
    let a = Server::start(&dir.join("server-a"), &server_config(&conn));
    let b = Server::start(&dir.join("server-b"), &server_config(&conn));

    let w = sync_window([&a, &b], agents, per_agent, secs).await?;
    let (held, per, overall) = (w.held, &w.per_server, w.overall);
    let mut r = Report::new("sync-two-servers");
    r.add(
        "agents",
        "simulated agents, half on each server",
        agents as u64,
    );
    r.add(
        "entries",
        "entries (all written through server A)",
        (agents * per_agent) as u64,
    );
    r.add(
        "entries_held_total",
        "entries held by the agents at the end",
        held as u64,
    );
    r.add(
        "register_secs",
        "registering tokens and entries through A (s)",
        w.register_secs,
    );
    r.add("attest_secs", "attesting the agents (s)", w.attest_secs);
    r.add("syncs", "syncs measured", overall.count as u64);
    r.add(
        "sync_p50_ms",
        "sync latency p50, both servers (ms)",
        overall.p50_us / 1000.0,
    );
    r.add(
        "sync_p99_ms",
        "sync latency p99, both servers (ms)",
        overall.p99_us / 1000.0,
    );
    r.add(
        "sync_max_ms",
        "sync latency max, both servers (ms)",
        overall.max_us / 1000.0,
    );
    for (name, p) in ["a", "b"].iter().zip(per) {
        let up = name.to_uppercase();
        r.add(
            &format!("server_{name}_syncs"),
            &format!("server {up}: syncs measured"),
            p.lat.count as u64,
        );
        r.add(
            &format!("server_{name}_sync_p50_ms"),
            &format!("server {up}: sync latency p50 (ms)"),
            p.lat.p50_us / 1000.0,
        );
        r.add(
            &format!("server_{name}_sync_p99_ms"),
            &format!("server {up}: sync latency p99 (ms)"),
            p.lat.p99_us / 1000.0,
        );
        r.add(
            &format!("server_{name}_sync_max_ms"),
            &format!("server {up}: sync latency max (ms)"),
            p.lat.max_us / 1000.0,
        );
        r.add(
            &format!("server_{name}_cpu_per_sec"),
            &format!("server {up}: CPU seconds per second"),
            p.cpu_per_sec,
        );
        r.add(
            &format!("server_{name}_rss_mib"),
            &format!("server {up}: RSS at the end (MiB)"),
            p.rss,
        );
    }

    r.add(
        "server_event_poll_ms",
        "servers: change events read every (ms)",
        SERVER_EVENT_POLL.as_millis() as u64,
    );
    let (mut acks, mut indexed) = (Vec::new(), Vec::new());
    for &(interval, n) in intervals {
        let timed = write_to_served(dir, &a, &b, interval, n).await?;
        let what = format!("agent sync_interval {interval}");
        let mut served: Vec<Duration> = timed.iter().map(|t| t.served).collect();
        r.add(
            &format!("write_to_served_sync_{interval}_count"),
            &format!("{what}: entries timed"),
            served.len() as u64,
        );
        add_latency(
            &mut r,
            &format!("write_to_served_sync_{interval}"),
            &format!("{what}: write on A to SVID served via B"),
            &mut served,
        );
        let mut rest: Vec<Duration> = timed
            .iter()
            .map(|t| t.served.saturating_sub(t.indexed))
            .collect();
        add_latency(
            &mut r,
            &format!("index_to_served_sync_{interval}"),
            &format!("{what}: in B's index to SVID served"),
            &mut rest,
        );
        acks.extend(timed.iter().map(|t| t.ack));
        indexed.extend(timed.iter().map(|t| t.indexed));
    }
    add_latency(
        &mut r,
        "write_to_index_b",
        "every run: write on A to B's entry index",
        &mut indexed,
    );
    add_latency(
        &mut r,
        "create_ack",
        "every run: create on A until acknowledged",
        &mut acks,
    );
    r.note("both servers use one PostgreSQL database (scripts/postgres.sh: a local cluster, fsync off), each its own data_dir and in-memory key manager");
    r.note("write-to-served: timed from the admin API's answer to server A's CreateEntry until the FetchX509SVID stream of a workload of the agent attached to B delivers that entry's SVID; a random pause before each write spreads writes over the agent's sync period and B's event poll");
    r.note("B's entry index: the entry count in B's admin health check, asked every 10 ms from the acknowledgement on");
    r.note("with fewer than 100 entries timed, p99 is the largest of them (the nearest rank)");
    r.note("the simulated agents and the workload client run in this process, on the same cores as both servers and PostgreSQL");
    drop(b);
    drop(a);
    drop(db);
    Ok(r)
}
