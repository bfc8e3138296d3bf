//! `workload-api`: FetchX509SVID as a workload sees it (time to the first message,
//! fetches per second with 1, 100 and 1,000 clients, each on its own connection),
//! beside a bare unary gRPC round trip over the same socket in the same run: the
//! agent's local health check, which crosses the same connection handling and
//! :authority fix but does no attestation and no matching.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_swtpm_tests::{Agent, Server};

use crate::env;
use crate::report::Report;
use crate::stats;

async fn bare_once(
    c: &mut tessera_proto::local::agent_health_client::AgentHealthClient<tonic::transport::Channel>,
) -> Result<(), tonic::Status> {
    c.check(tessera_proto::local::HealthCheckRequest {})
        .await
        .map(|_| ())
}

/// Time per call for one client, sequentially.
pub(crate) async fn latencies(
    socket: &std::path::Path,
    n: usize,
    bare: bool,
) -> Result<stats::Latency, String> {
    let mut samples = Vec::with_capacity(n);
    if bare {
        let ch = tessera_proto::unix_channel(socket)
            .await
            .map_err(|e| e.to_string())?;
        let mut c = tessera_proto::local::agent_health_client::AgentHealthClient::new(ch);
        for _ in 0..n {
            let t = Instant::now();
            bare_once(&mut c).await.map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
        }
    } else {
        let mut c = env::workload(socket).await?;
        for _ in 0..n {
            let t = Instant::now();
            env::fetch_once(&mut c).await.map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
        }
    }
    Ok(stats::latency(&mut samples))
}

/// Calls per second with `clients` clients, each on its own connection.
pub(crate) async fn throughput(
    socket: &std::path::Path,
    clients: usize,
    secs: Duration,
    bare: bool,
) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start_at = Instant::now() + Duration::from_millis(200);
    let end = start_at + secs;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (socket, count, errors) = (socket.to_owned(), count.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // One connection per client, of the kind being measured.
            let mut health = if bare {
                let ch = tessera_proto::unix_channel(&socket)
                    .await
                    .map_err(|e| e.to_string())?;
                Some(tessera_proto::local::agent_health_client::AgentHealthClient::new(ch))
            } else {
                None
            };
            let mut w = if bare {
                None
            } else {
                Some(env::workload(&socket).await?)
            };
            tokio::time::sleep_until(start_at.into()).await;
            while Instant::now() < end {
                let ok = match (&mut health, &mut w) {
                    (Some(h), _) => bare_once(h).await.is_ok(),
                    (_, Some(w)) => env::fetch_once(w).await.is_ok(),
                    _ => false,
                };
                if ok {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let failed = errors.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} calls failed with {clients} clients"));
    }
    Ok(count.load(Ordering::Relaxed) as f64 / secs.as_secs_f64())
}

/// The Workload API with metrics on (`[telemetry] metrics_address`, scraped every
/// second) against two agents of one server, one with and one without, alternating
/// in one run: (p50 µs, fetches/s with 10 clients) for (on, off).
async fn metrics_overhead(
    dir: &std::path::Path,
    quick: bool,
) -> Result<((f64, f64), (f64, f64)), String> {
    let secs = Duration::from_secs(if quick { 1 } else { 3 });
    let samples = if quick { 200 } else { 1000 };
    let server = Server::start(
        &dir.join("server"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let mut admin = env::admin(&server).await?;
    let tokens = env::tokens(&mut admin, 2).await?;
    for t in &tokens {
        env::create_entries(
            &mut admin,
            vec![env::entry(
                format!("spiffe://example.org/bench/metrics/{t}"),
                &env::agent_id(t),
                env::my_selector(),
            )],
        )
        .await?;
    }
    let metrics_at = format!("127.0.0.1:{}", tessera_swtpm_tests::free_port());
    let base = format!("[key_manager]\ntype = \"memory\"\n{}", env::AGENT_LIMITS);
    let off = Agent::start(&dir.join("off"), &server, Some(&tokens[0]), &base);
    let on = Agent::start(
        &dir.join("on"),
        &server,
        Some(&tokens[1]),
        &format!("{base}\n[telemetry]\nmetrics_address = \"{metrics_at}\"\n"),
    );
    env::wait_for_svid(&off.socket, Duration::from_secs(30)).await?;
    env::wait_for_svid(&on.socket, Duration::from_secs(30)).await?;
    let scraper = env::scrape_every_second(metrics_at);
    let (mut on_p50, mut off_p50, mut on_rate, mut off_rate) = (0.0, 0.0, 0.0, 0.0);
    // Alternating rounds, so that a noisy neighbour hurts both sides alike.
    for _ in 0..3 {
        off_p50 += latencies(&off.socket, samples, false).await?.p50_us;
        on_p50 += latencies(&on.socket, samples, false).await?.p50_us;
        off_rate += throughput(&off.socket, 10, secs, false).await?;
        on_rate += throughput(&on.socket, 10, secs, false).await?;
    }
    scraper.abort();
    Ok((
        (on_p50 / 3.0, on_rate / 3.0),
        (off_p50 / 3.0, off_rate / 3.0),
    ))
}

pub(crate) async fn run(
    dir: &std::path::Path,
    quick: bool,
    vs_spire: bool,
) -> Result<Report, String> {
    let secs = Duration::from_secs(if quick { 1 } else { 5 });
    let samples = if quick { 200 } else { 2000 };
    let levels: &[usize] = if quick { &[1, 10, 50] } else { &[1, 100, 1000] };
    let server = Server::start(
        &dir.join("server"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let mut admin = env::admin(&server).await?;
    let token = env::tokens(&mut admin, 1).await?.remove(0);
    env::create_entries(
        &mut admin,
        vec![env::entry(
            "spiffe://example.org/bench/workload".into(),
            &env::agent_id(&token),
            env::my_selector(),
        )],
    )
    .await?;
    let agent = Agent::start(
        &dir.join("agent"),
        &server,
        Some(&token),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::AGENT_LIMITS),
    );
    env::wait_for_svid(&agent.socket, Duration::from_secs(30)).await?;

    let fetch = latencies(&agent.socket, samples, false).await?;
    let bare = latencies(&agent.socket, samples, true).await?;
    let mut r = Report::new("workload-api");
    r.add(
        "fetch_first_message_p50_us",
        "FetchX509SVID first message p50 (µs)",
        fetch.p50_us,
    );
    r.add(
        "fetch_first_message_p99_us",
        "FetchX509SVID first message p99 (µs)",
        fetch.p99_us,
    );
    r.add(
        "bare_unary_p50_us",
        "bare unary round trip p50 (µs)",
        bare.p50_us,
    );
    r.add(
        "bare_unary_p99_us",
        "bare unary round trip p99 (µs)",
        bare.p99_us,
    );
    r.add(
        "latency_ratio_p50",
        "ratio p50 (fetch / bare)",
        fetch.p50_us / bare.p50_us,
    );
    let mut levels_json = Vec::new();
    for &c in levels {
        let f = throughput(&agent.socket, c, secs, false).await?;
        let b = throughput(&agent.socket, c, secs, true).await?;
        r.add(
            &format!("fetches_per_sec_{c}"),
            &format!("fetches/s, {c} clients"),
            f,
        );
        r.add(
            &format!("bare_per_sec_{c}"),
            &format!("bare calls/s, {c} clients"),
            b,
        );
        r.add(
            &format!("throughput_ratio_{c}"),
            &format!("ratio (bare / fetch), {c} clients"),
            b / f,
        );
        levels_json.push(c as u64);
    }
    if let Some(pid) = agent.pid() {
        r.add(
            "agent_rss_mib_after",
            "agent RSS after the run (MiB)",
            stats::rss_mib(pid),
        );
        // Rounds more, with the most connections and then with few connections and
        // many streams each: memory that a load leaks grows round after round,
        // memory the allocator keeps for reuse levels off.
        let most = levels.last().copied().unwrap_or(1);
        for (clients, key) in [(most, "agent_rss_mib_again"), (10, "agent_rss_mib_streams")] {
            let mut rounds = Vec::new();
            for _ in 0..3 {
                throughput(&agent.socket, clients, secs, false).await?;
                rounds.push((stats::rss_mib(pid) * 10.0).round() / 10.0);
            }
            r.add(
                key,
                &format!("agent RSS after 3 rounds more of {clients} clients (MiB)"),
                rounds,
            );
        }
        // The agent returns free memory once no connection has been open for 2 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.add(
            "agent_rss_mib_settled",
            "agent RSS 3 s after the last client left (MiB)",
            stats::rss_mib(pid),
        );
    }
    let (on, off) = metrics_overhead(&dir.join("metrics"), quick).await?;
    r.add(
        "metrics_on_fetch_p50_us",
        "FetchX509SVID p50, metrics on and scraped (µs)",
        on.0,
    );
    r.add(
        "metrics_off_fetch_p50_us",
        "FetchX509SVID p50, metrics off (µs)",
        off.0,
    );
    r.add(
        "metrics_on_over_off_p50",
        "ratio p50 (metrics on / off)",
        on.0 / off.0,
    );
    r.add(
        "metrics_on_fetches_per_sec",
        "fetches/s, 10 clients, metrics on",
        on.1,
    );
    r.add(
        "metrics_off_fetches_per_sec",
        "fetches/s, 10 clients, metrics off",
        off.1,
    );
    r.add(
        "metrics_on_over_off_throughput",
        "ratio fetches/s (metrics on / off)",
        on.1 / off.1,
    );
    r.note("each fetch is a new stream: the agent attests the caller (reads /proc) every time, as it must");
    if vs_spire {
        drop(agent);
        drop(server);
        crate::vs_spire::workload(&mut r, dir, quick, levels).await?;
    }
    Ok(r)
}
