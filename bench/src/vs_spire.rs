//! `--vs-spire` for the agent-side scenarios: the Workload API, the footprint and
//! the cold start measured on SPIRE's real agent in the same run as Tessera's, with
//! the same client, counts and sizes, added to Tessera's report with the ratios.

use std::time::{Duration, Instant};

use tessera_swtpm_tests::spire::{SpireAgent, SpireKeyManager};

use crate::env;
use crate::report::{Aim, MEMORY_AIM, Report, THROUGHPUT_AIM};
use crate::spire;
use crate::stats;
use crate::workload;

/// The Workload API on SPIRE's agent: this process's own client (the one the
/// Tessera figures come from, with the `workload.spiffe.io` header both want).
pub(crate) async fn workload(
    r: &mut Report,
    dir: &std::path::Path,
    quick: bool,
    levels: &[usize],
) -> Result<(), String> {
    let secs = Duration::from_secs(if quick { 1 } else { 5 });
    let samples = if quick { 200 } else { 2000 };
    let server = spire::server(&dir.join("spire-server"), SpireKeyManager::Disk);
    let token = server.token(None);
    server.entry(
        &server.id("/bench/workload"),
        &spire::agent_id(&server, &token),
        &[&env::my_selector()],
        &[],
    );
    let agent = SpireAgent::start(
        &dir.join("spire-agent"),
        &server,
        &token,
        spire::AGENT_EXTRA,
    );
    env::wait_for_svid(&agent.socket, Duration::from_secs(60)).await?;
    let fetch = workload::latencies(&agent.socket, samples, false).await?;
    r.vs_spire(
        "fetch_first_message_p50_us",
        "FetchX509SVID first message p50 (µs)",
        fetch.p50_us,
        Aim::None,
    );
    r.vs_spire(
        "fetch_first_message_p99_us",
        "FetchX509SVID first message p99 (µs)",
        fetch.p99_us,
        Aim::None,
    );
    for &c in levels {
        let f = workload::throughput(&agent.socket, c, secs, false).await?;
        r.vs_spire(
            &format!("fetches_per_sec_{c}"),
            &format!("fetches/s, {c} clients"),
            f,
            THROUGHPUT_AIM,
        );
    }
    let pid = agent.pid().ok_or("spire-agent not running")?;
    r.vs_spire(
        "agent_rss_mib_after",
        "agent RSS after the run (MiB)",
        stats::rss_mib(pid),
        MEMORY_AIM,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.vs_spire(
        "agent_rss_mib_settled",
        "agent RSS 3 s after the last client left (MiB)",
        stats::rss_mib(pid),
        MEMORY_AIM,
    );
    r.note("SPIRE: spire-agent with the unix workload attestor and its disk key manager, the same client, counts and durations");
    Ok(())
}

/// Binary sizes, idle RSS with the same numbers of cached SVIDs, and the server
/// holding the same number of entries.
pub(crate) async fn footprint(
    r: &mut Report,
    dir: &std::path::Path,
    counts: &[usize],
    entries: usize,
) -> Result<(), String> {
    let bins = spire::bin_dir();
    r.vs_spire(
        "agent_binary_mib",
        "agent binary (MiB)",
        spire::size_mib(&bins.join("spire-agent")),
        Aim::None,
    );
    r.vs_spire(
        "server_binary_mib",
        "server binary (MiB)",
        spire::size_mib(&bins.join("spire-server")),
        Aim::None,
    );
    let server = spire::server(&dir.join("spire-server"), SpireKeyManager::Disk);
    for &n in counts {
        let (agent, rss) = spire::agent_with(dir, &server, n, &format!("idle{n}")).await?;
        r.vs_spire(
            &format!("agent_rss_mib_{n}_svids"),
            &format!("agent RSS idle, {n} SVIDs (MiB)"),
            rss,
            MEMORY_AIM,
        );
        drop(agent);
    }
    let t = Instant::now();
    let mut made = 0;
    while made < entries {
        let chunk = (entries - made).min(5_000);
        let list: Vec<_> = (made..made + chunk)
            .map(|j| {
                (
                    server.id(&format!("/fp/{j}")),
                    server.id("/nobody"),
                    vec![format!("unix:uid:{}", 40_000 + j)],
                )
            })
            .collect();
        made += server.entries(&list);
    }
    let took = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = server.pid().ok_or("spire-server not running")?;
    r.vs_spire(
        &format!("server_rss_mib_{entries}_entries"),
        &format!("server RSS with {entries} entries (MiB)"),
        stats::rss_mib(pid),
        MEMORY_AIM,
    );
    r.add(
        "spire_entries_create_secs",
        &format!("SPIRE: creating {entries} entries (CLI, 5,000 a call) (s)"),
        took,
    );
    r.add(
        "spire_binary_dir",
        "SPIRE binaries measured from",
        bins.display().to_string(),
    );
    r.note("SPIRE: release-style builds (scripts/spire.sh: -s -w, as SPIRE's releases); spire-server with SQLite and its disk key manager");
    Ok(())
}

/// SPIRE agent start to the first SVID on its Workload API socket, join token,
/// a fresh data directory every run.
pub(crate) async fn cold_start(
    r: &mut Report,
    dir: &std::path::Path,
    runs: usize,
) -> Result<(), String> {
    let server = spire::server(&dir.join("spire-server"), SpireKeyManager::Disk);
    // SPIRE's server answers agents from an entry cache it reloads every 5 s (its
    // default): the tokens and entries are registered first and given that long,
    // so that each start measures the agent, not the server's cache catching up.
    let tokens: Vec<String> = (0..runs).map(|_| server.token(None)).collect();
    let list: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                server.id(&format!("/bench/j{i}")),
                spire::agent_id(&server, t),
                vec![env::my_selector()],
            )
        })
        .collect();
    server.entries(&list);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut times = Vec::with_capacity(runs);
    for (i, token) in tokens.iter().enumerate() {
        let mut agent = SpireAgent::configure(
            &dir.join(format!("spire-join-{i}")),
            &server,
            token,
            spire::AGENT_EXTRA,
        );
        let t = Instant::now();
        agent.spawn();
        env::wait_for_svid(&agent.socket, Duration::from_secs(60))
            .await
            .map_err(|e| format!("{e}\n{}", spire::tail(&agent.log(), 20)))?;
        times.push(t.elapsed());
        agent.stop();
    }
    times.sort_unstable();
    let median = times
        .get(times.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    r.vs_spire(
        "join_token_ms",
        "join token: start to first SVID (ms)",
        median,
        Aim::None,
    );
    Ok(())
}
