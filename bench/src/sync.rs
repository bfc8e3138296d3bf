//! `sync`: a server holding many entries and thousands of agents syncing every 5 s as
//! real agents do (simulated agents: real identities and mTLS connections, no agent
//! processes), with sync latency, server CPU and peak memory; and one real agent with
//! thousands of authorized entries, timed from its start until every SVID is cached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_swtpm_tests::{Agent, Server};

use crate::env;
use crate::report::Report;
use crate::sim::{self, SyncState};
use crate::stats;

/// The agents' sync period (the agent's default).
const PERIOD: Duration = Duration::from_secs(5);

/// What one level of agents measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Level {
    pub agents: usize,
    pub entries: usize,
    pub held: usize,
    pub register: Duration,
    pub attest: Duration,
    pub lat: stats::Latency,
    pub cpu_per_sec: f64,
    pub rss: f64,
    pub peak: f64,
}

/// Simulated agents and what each holds between syncs.
pub(crate) struct Fleet {
    bundle: Arc<tessera_core::tls::SharedBundle>,
    sims: Vec<sim::SimAgent>,
    states: Vec<SyncState>,
}

/// Adds agents (join tokens, `per_agent` entries each, attestation) until there
/// are `target`, then lets every one sync every 5 s with jitter for `secs`.
pub(crate) async fn grow_and_sync(
    server: &Server,
    fleet: &mut Fleet,
    target: usize,
    per_agent: usize,
    secs: u64,
) -> Result<Level, String> {
    let mut admin = env::admin(server).await?;
    let t0 = Instant::now();
    let have = fleet.sims.len();
    let tokens = env::tokens(&mut admin, target.saturating_sub(have)).await?;
    // The entries, spread evenly over the agents (parent = the agent's ID).
    let mut list = Vec::with_capacity(tokens.len() * per_agent);
    for (i, t) in tokens.iter().enumerate() {
        let parent = env::agent_id(t);
        for j in 0..per_agent {
            list.push(env::entry(
                format!("spiffe://example.org/sync/{}/{j}", have + i),
                &parent,
                format!("unix:uid:{}", 10_000 + j),
            ));
        }
    }
    env::create_entries(&mut admin, list).await?;
    let register = t0.elapsed();
    let t1 = Instant::now();
    let added = sim::attest_many(&server.address(), fleet.bundle.clone(), tokens, 16).await?;
    let attest = t1.elapsed();
    fleet
        .states
        .extend(added.iter().map(|_| SyncState::default()));
    fleet.sims.extend(added);

    // Every agent syncs (a new agent's first sync carries its entries), then every 5 s.
    let samples = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let pid = server.pid().ok_or("server not running")?;
    let cpu0 = stats::cpu_seconds(pid).unwrap_or(0.0);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(fleet.sims.len());
    let states = std::mem::take(&mut fleet.states);
    for (a, mut st) in fleet.sims.iter().cloned().zip(states) {
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            sim::jitter(PERIOD).await;
            let mut held = st.entries.len();
            while Instant::now() < end {
                let t = Instant::now();
                held = a.sync(&mut st).await?;
                let took = t.elapsed();
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(took);
                tokio::time::sleep(PERIOD.mul_f64(0.9 + 0.2 * rand::random::<f64>())).await;
            }
            Ok::<(usize, SyncState), String>((held, st))
        }));
    }
    let mut held = 0;
    for t in tasks {
        let (h, st) = t.await.map_err(|e| e.to_string())??;
        held += h;
        fleet.states.push(st);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = stats::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Level {
        agents: fleet.sims.len(),
        entries: fleet.sims.len() * per_agent,
        held,
        register,
        attest,
        lat: stats::latency(&mut samples),
        cpu_per_sec: cpu / wall,
        rss: stats::rss_mib(pid),
        peak: stats::peak_rss_mib(pid),
    })
}

pub(crate) async fn run(
    dir: &std::path::Path,
    quick: bool,
    vs_spire: bool,
) -> Result<Report, String> {
    let (entries, agents, secs, big) = if quick {
        (2_000usize, 100usize, 8u64, 300usize)
    } else {
        (100_000, 5_000, 30, 10_000)
    };
    let per_agent = entries / agents;
    let server = Server::start(
        &dir.join("server"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let mut admin = env::admin(&server).await?;
    let mut fleet = Fleet {
        bundle: sim::bootstrap(&server.cli_ok(&["bundle", "show"]))?,
        sims: Vec::new(),
        states: Vec::new(),
    };
    let main = grow_and_sync(&server, &mut fleet, agents, per_agent, secs).await?;
    let (lat, server_rss, server_peak) = (main.lat, main.rss, main.peak);

    // One real agent with `big` entries: start to every SVID cached.
    let token = env::tokens(&mut admin, 1).await?.remove(0);
    let parent = env::agent_id(&token);
    let many = (0..big)
        .map(|j| {
            env::entry(
                format!("spiffe://example.org/big/{j}"),
                &parent,
                format!("unix:uid:{}", 20_000 + j),
            )
        })
        .collect();
    env::create_entries(&mut admin, many).await?;
    let mut agent = Agent::configure(
        &dir.join("big-agent"),
        &server,
        "sync_interval = \"5s\"\n[key_manager]\ntype = \"memory\"\n",
    );
    let t2 = Instant::now();
    agent.spawn(Some(&token));
    let limit = Duration::from_secs(if quick { 60 } else { 300 });
    loop {
        // The node alias-free layout: every entry is the agent's own.
        if env::cached_svids(&agent.socket)
            .await
            .is_some_and(|n| n as usize >= big)
        {
            break;
        }
        if t2.elapsed() > limit {
            return Err(format!(
                "the agent cached fewer than {big} SVIDs within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let big_time = t2.elapsed();
    let agent_rss = agent.pid().map(stats::rss_mib).unwrap_or(0.0);

    let mut r = Report::new("sync");
    r.add("entries", "entries on the server", main.entries as u64);
    r.add(
        "agents",
        "simulated agents (each its own mTLS connection)",
        agents as u64,
    );
    r.add("entries_per_agent", "entries per agent", per_agent as u64);
    r.add(
        "entries_held_total",
        "entries held by the agents at the end",
        main.held as u64,
    );
    r.add(
        "register_secs",
        "registering tokens and entries (s)",
        main.register.as_secs_f64(),
    );
    r.add(
        "attest_secs",
        "attesting the agents (s)",
        main.attest.as_secs_f64(),
    );
    r.add("syncs", "syncs measured", lat.count as u64);
    r.add("sync_p50_ms", "sync latency p50 (ms)", lat.p50_us / 1000.0);
    r.add("sync_p99_ms", "sync latency p99 (ms)", lat.p99_us / 1000.0);
    r.add("sync_max_ms", "sync latency max (ms)", lat.max_us / 1000.0);
    r.add(
        "server_cpu_per_sec",
        "server CPU seconds per second",
        main.cpu_per_sec,
    );
    r.add("server_rss_mib", "server RSS at the end (MiB)", server_rss);
    r.add("server_peak_rss_mib", "server peak RSS (MiB)", server_peak);
    r.add(
        "big_agent_entries",
        "one agent: authorized entries",
        big as u64,
    );
    r.add(
        "big_agent_all_cached_secs",
        "one agent: start until every SVID is cached (s)",
        big_time.as_secs_f64(),
    );
    r.add("big_agent_rss_mib", "one agent: RSS then (MiB)", agent_rss);
    r.note("the simulated agents run in this process, on the same cores as the server");
    if vs_spire {
        drop(agent);
        let mut levels = vec![main];
        for &n in crate::vs_spire_server::tessera_levels(quick) {
            let l = grow_and_sync(&server, &mut fleet, n, per_agent, secs).await?;
            levels.push(l);
            if l.lat.p99_us > crate::vs_spire_server::P99_LIMIT_MS * 1000.0 {
                break;
            }
        }
        drop(fleet);
        drop(server);
        crate::vs_spire_server::sync(&mut r, dir, quick, &levels, per_agent, secs).await?;
    }
    Ok(r)
}
