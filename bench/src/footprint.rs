//! `footprint`: binary sizes, the agent's resident memory idle with 0, 100 and 1,000
//! cached SVIDs, and the server's with many entries.

use std::time::{Duration, Instant};

use tessera_swtpm_tests::{Agent, Server, bin};

use crate::env;
use crate::report::Report;
use crate::stats;

async fn agent_with(
    dir: &std::path::Path,
    server: &Server,
    n: usize,
    tag: &str,
) -> Result<(Agent, f64), String> {
    let mut admin = env::admin(server).await?;
    let token = env::tokens(&mut admin, 1).await?.remove(0);
    let parent = env::agent_id(&token);
    let list = (0..n)
        .map(|j| {
            env::entry(
                format!("spiffe://example.org/{tag}/{j}"),
                &parent,
                format!("unix:uid:{}", 30_000 + j),
            )
        })
        .collect();
    env::create_entries(&mut admin, list).await?;
    let agent = Agent::start(
        &dir.join(format!("agent-{tag}")),
        server,
        Some(&token),
        "[key_manager]\ntype = \"memory\"\n",
    );
    let start = Instant::now();
    while env::cached_svids(&agent.socket).await.unwrap_or(0) < n as u32 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("agent {tag} did not cache {n} SVIDs"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle: let the sync loop settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = agent.pid().map(stats::rss_mib).unwrap_or(0.0);
    Ok((agent, rss))
}

/// How many entries SPIRE's server is measured with.
pub(crate) fn spire_entries(quick: bool) -> usize {
    if quick { 2_000 } else { 20_000 }
}

pub(crate) async fn run(
    dir: &std::path::Path,
    quick: bool,
    vs_spire: bool,
) -> Result<Report, String> {
    let mut r = Report::new("footprint");
    let size = |name: &str| {
        std::fs::metadata(bin(name))
            .map(|m| m.len() as f64 / (1024.0 * 1024.0))
            .unwrap_or(0.0)
    };
    r.add(
        "agent_binary_mib",
        "tessera-agent binary (MiB)",
        size("tessera-agent"),
    );
    r.add(
        "server_binary_mib",
        "tessera-server binary (MiB)",
        size("tessera-server"),
    );
    r.add(
        "binary_dir",
        "binaries measured from",
        tessera_swtpm_tests::bin_dir().display().to_string(),
    );

    let server = Server::start(
        &dir.join("server"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let counts: &[usize] = if quick {
        &[0, 10, 100]
    } else {
        &[0, 100, 1000]
    };
    for &n in counts {
        let (agent, rss) = agent_with(dir, &server, n, &format!("idle{n}")).await?;
        r.add(
            &format!("agent_rss_mib_{n}_svids"),
            &format!("agent RSS idle, {n} SVIDs (MiB)"),
            rss,
        );
        drop(agent);
    }
    let entries = if quick { 2_000 } else { 100_000 };
    // With --vs-spire, the server's RSS is also read at the size SPIRE is
    // measured at: creating entries through SPIRE's API slows as its table grows
    // (about 100 a second past 50,000 here), too slow for 100,000 in one run.
    let compared = spire_entries(quick);
    let mut admin = env::admin(&server).await?;
    let pid = server.pid().ok_or("server not running")?;
    let mut made = 0;
    for upto in [compared.min(entries), entries] {
        let list = (made..upto)
            .map(|j| {
                env::entry(
                    format!("spiffe://example.org/fp/{j}"),
                    "spiffe://example.org/nobody",
                    format!("unix:uid:{}", 40_000 + j),
                )
            })
            .collect();
        env::create_entries(&mut admin, list).await?;
        made = upto;
        if vs_spire && upto == compared {
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.add(
                &format!("server_rss_mib_{compared}_entries"),
                &format!("server RSS with {compared} entries (MiB)"),
                stats::rss_mib(pid),
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.add("server_entries", "server entries", entries as u64);
    r.add(
        "server_rss_mib",
        "server RSS with those entries (MiB)",
        stats::rss_mib(pid),
    );
    r.add(
        "server_peak_rss_mib",
        "server peak RSS (MiB)",
        stats::peak_rss_mib(pid),
    );
    if vs_spire {
        drop(server);
        crate::vs_spire::footprint(&mut r, dir, counts, compared).await?;
    }
    Ok(r)
}
