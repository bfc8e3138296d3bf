//! Idle memory of A and B with 0, 100 and 1,000 cached SVIDs (VmRSS and Pss), and
//! with 1,000 SVIDs again right after 1,000 Workload API clients fetched at once and
//! once that has settled (12 s later).

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::{Agent, Server};

use super::{Builds, pair, start_agent};
use crate::report::Report;
use crate::{env, stats};

/// How long after a burst memory is read again.
const SETTLE: Duration = Duration::from_secs(12);

/// An agent of `binary` whose node has `n` entries (the first one for this process,
/// so that it can call the Workload API), once it caches all of them.
async fn agent_with(
    dir: &Path,
    server: &Server,
    binary: &Path,
    n: usize,
    tag: &str,
) -> Result<Agent, String> {
    let mut admin = env::admin(server).await?;
    let token = env::tokens(&mut admin, 1).await?.remove(0);
    let parent = env::agent_id(&token);
    let list = (0..n)
        .map(|j| {
            let selector = if j == 0 {
                env::my_selector()
            } else {
                format!("unix:uid:{}", 30_000 + j)
            };
            env::entry(format!("spiffe://example.org/{tag}/{j}"), &parent, selector)
        })
        .collect();
    env::create_entries(&mut admin, list).await?;
    let agent = start_agent(
        &dir.join(tag),
        server,
        binary,
        Some(&token),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::AGENT_LIMITS),
    );
    let start = Instant::now();
    while env::cached_svids(&agent.socket).await.unwrap_or(0) < n as u32 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("agent {tag} did not cache {n} SVIDs"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(agent)
}

fn memory(agent: &Agent) -> (f64, f64) {
    agent
        .pid()
        .map_or((0.0, 0.0), |p| (stats::rss_mib(p), stats::pss_mib(p)))
}

pub(super) async fn run(
    r: &mut Report,
    dir: &Path,
    quick: bool,
    builds: &Builds,
) -> Result<(), String> {
    let counts: &[usize] = if quick { &[0, 5, 20] } else { &[0, 100, 1000] };
    let clients = if quick { 20 } else { 1000 };
    let server = Server::start(
        &dir.join("server"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let mut last = None;
    for &n in counts {
        // Only the two agents being measured run: Pss divides the pages processes
        // share among them.
        drop(last.take());
        let a = agent_with(dir, &server, &builds.a, n, &format!("a-{n}")).await?;
        let b = agent_with(dir, &server, &builds.b, n, &format!("b-{n}")).await?;
        // Idle: let the sync loops settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (ma, mb) = (memory(&a), memory(&b));
        pair(
            r,
            &format!("rss_mib_{n}_svids"),
            &format!("VmRSS idle, {n} SVIDs (MiB)"),
            ma.0,
            mb.0,
        );
        pair(
            r,
            &format!("pss_mib_{n}_svids"),
            &format!("Pss idle, {n} SVIDs (MiB)"),
            ma.1,
            mb.1,
        );
        last = Some((n, a, b));
    }
    let Some((n, a, b)) = last else {
        return Ok(());
    };
    // The burst: `clients` clients at once on each agent (A and B together), each
    // on its own connection, fetching for 2 s; memory right after, and once settled:
    // a glibc agent returns free memory 2 s after its last connection closed, at most
    // once every 10 s, so 12 s covers a release that had just happened before.
    let burst = Duration::from_secs(2);
    let (ba, bb) = tokio::join!(
        crate::workload::throughput(&a.socket, clients, burst, false),
        crate::workload::throughput(&b.socket, clients, burst, false),
    );
    ba?;
    bb?;
    let at_once = (memory(&a), memory(&b));
    tokio::time::sleep(SETTLE).await;
    let settled = (memory(&a), memory(&b));
    let (ra, rb) = ((at_once.0, settled.0), (at_once.1, settled.1));
    let what = format!("{n} SVIDs, after {clients} clients");
    pair(
        r,
        "rss_mib_burst",
        &format!("VmRSS {what}, at once (MiB)"),
        ra.0.0,
        rb.0.0,
    );
    pair(
        r,
        "pss_mib_burst",
        &format!("Pss {what}, at once (MiB)"),
        ra.0.1,
        rb.0.1,
    );
    pair(
        r,
        "rss_mib_settled",
        &format!("VmRSS {what}, 12 s later (MiB)"),
        ra.1.0,
        rb.1.0,
    );
    pair(
        r,
        "pss_mib_settled",
        &format!("Pss {what}, 12 s later (MiB)"),
        ra.1.1,
        rb.1.1,
    );
    r.add("burst_clients", "clients in the burst", clients as u64);
    if builds.a == builds.b {
        r.note("A and B are the same file: they share its pages, which Pss divides between them");
    }
    Ok(())
}
