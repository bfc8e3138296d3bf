//! `--vs-spire` for the server-side scenarios: issuance through SPIRE's
//! `SVIDService.BatchNewX509SVID` and simulated agents syncing on SPIRE's sync path
//! (`EntryService.SyncAuthorizedEntries` and `BundleService.GetBundle`), both driven
//! by the project's driver of SPIRE's published API (`bench/spire-driver`), at the
//! same sizes as Tessera's; and, for both systems, how many agents a server holds
//! with the p99 sync latency under 100 ms on this machine.

use std::time::Instant;

use serde_json::{Value, json};
use tessera_swtpm_tests::spire::SpireKeyManager;

use crate::report::{Aim, MEMORY_AIM, Report, THROUGHPUT_AIM};
use crate::spire;
use crate::stats;
use crate::sync::Level;

/// The p99 sync latency a server must stay under to "hold" its agents.
pub(crate) const P99_LIMIT_MS: f64 = 100.0;

/// Agent counts Tessera steps up to after the main level (5,000, or 100 with
/// `--quick`). The machine's open-file limit (20,000 here, hard) caps them:
/// every simulated agent is one connection in this process and one in the server.
pub(crate) fn tessera_levels(quick: bool) -> &'static [usize] {
    if quick { &[200] } else { &[10_000, 15_000] }
}

/// Agent counts SPIRE steps through: below the main level (a finer answer if it
/// does not hold it), then the main level. Not beyond it in the full run:
/// registering through SPIRE's entry API slows as the table grows (about 100
/// entries a second past 50,000 here), so the 5,000 more agents and 100,000
/// more entries of the next level would take over a quarter of an hour.
fn spire_levels(quick: bool) -> &'static str {
    if quick { "50,100,200" } else { "1000,5000" }
}

/// SPIRE's issuance, with its `disk` key manager: one agent, then `many` at once,
/// batches of 100 CSRs (P-256 keys), as Tessera's.
pub(crate) async fn issuance(dir: &std::path::Path, quick: bool) -> Result<Report, String> {
    let secs = if quick { 2 } else { 10 };
    let many = if quick { 2 } else { 4 };
    let server = spire::server(&dir.join("spire-server"), SpireKeyManager::Disk);
    let pid = server.pid().ok_or("spire-server not running")?;
    let mut cpu0 = 0.0;
    let mut cpu_us_per_svid = 0.0;
    let args: Vec<String> = [
        "-agents",
        &many.to_string(),
        "-batch",
        "100",
        "-secs",
        &secs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let events = spire::drive(&server, "issuance", &args, |e| {
        if e["phase"] != "n" {
            return;
        }
        let cpu = stats::cpu_seconds(pid).unwrap_or(0.0);
        if e["event"] == "start" {
            cpu0 = cpu;
        } else if let Some(n) = e["svids"].as_f64().filter(|n| *n > 0.0) {
            cpu_us_per_svid = (cpu - cpu0) * 1e6 / n;
        }
    })
    .await?;
    let result = events
        .iter()
        .find(|e| e["event"] == "result")
        .ok_or("the SPIRE driver printed no issuance result")?;
    let mut r = Report::new("issuance (SPIRE, disk key manager)");
    r.add("key_manager", "key manager", "SPIRE disk");
    r.add("batch_size", "SVIDs per BatchNewX509SVID", 100u64);
    for (key, label) in [
        ("svids_per_sec_1_agent", "SVIDs/s, 1 agent"),
        ("svids_per_sec_n_agents", "SVIDs/s, N agents"),
    ] {
        r.add(key, label, result[key].as_f64().unwrap_or(0.0));
    }
    r.add("agents", "agents at once", many as u64);
    r.add(
        "server_cpu_us_per_svid",
        "server CPU µs per SVID (N agents)",
        cpu_us_per_svid,
    );
    r.note("driven by bench/spire-driver over SPIRE's agent API (mTLS with the agents' own SVIDs); the driver shares the cores");
    Ok(r)
}

/// SPIRE's issuance figures beside a Tessera issuance report, with the ratios.
pub(crate) fn compare_issuance(r: &mut Report, spire: &Report) {
    for (key, label, aim) in [
        ("svids_per_sec_1_agent", "SVIDs/s, 1 agent", THROUGHPUT_AIM),
        (
            "svids_per_sec_n_agents",
            "SVIDs/s, N agents",
            THROUGHPUT_AIM,
        ),
        (
            "server_cpu_us_per_svid",
            "server CPU µs per SVID (N agents)",
            Aim::None,
        ),
    ] {
        r.vs_spire(key, label, spire.get(key).unwrap_or(0.0), aim);
    }
}

/// The most agents held with the p99 under the limit, and whether a level past it
/// was reached (otherwise the search stopped at its last level: "at least").
fn held(levels: &[(usize, f64, bool)]) -> (usize, bool) {
    let mut best = 0;
    for &(agents, p99, ok) in levels {
        if ok && p99 <= P99_LIMIT_MS {
            best = best.max(agents);
        } else {
            return (best, true);
        }
    }
    (best, false)
}

/// SPIRE syncing at the sizes Tessera's `levels[0]` measured (the same agents,
/// entries per agent, period and duration), then stepping up; the comparison
/// and both capacity searches go into `r`.
pub(crate) async fn sync(
    r: &mut Report,
    dir: &std::path::Path,
    quick: bool,
    levels: &[Level],
    per_agent: usize,
    secs: u64,
) -> Result<(), String> {
    let main_agents = levels.first().map_or(0, |l| l.agents);
    let server = spire::server(&dir.join("spire-server"), SpireKeyManager::Disk);
    let pid = server.pid().ok_or("spire-server not running")?;
    let args: Vec<String> = vec![
        "-levels".into(),
        spire_levels(quick).into(),
        "-entries-per-agent".into(),
        per_agent.to_string(),
        "-secs".into(),
        secs.to_string(),
        "-stop-p99-ms".into(),
        P99_LIMIT_MS.to_string(),
        "-stop-after".into(),
        main_agents.to_string(),
    ];
    let mut at_start = (0.0, Instant::now());
    let mut spire_levels: Vec<Value> = Vec::new();
    spire::drive(&server, "sync", &args, |e| {
        if e["event"] == "start" {
            at_start = (stats::cpu_seconds(pid).unwrap_or(0.0), Instant::now());
        } else if e["event"] == "end" {
            let cpu = stats::cpu_seconds(pid).unwrap_or(0.0) - at_start.0;
            let mut l = e.clone();
            l["server_cpu_per_sec"] = json!(cpu / at_start.1.elapsed().as_secs_f64());
            l["server_rss_mib"] = json!(stats::rss_mib(pid));
            l["server_peak_rss_mib"] = json!(stats::peak_rss_mib(pid));
            spire_levels.push(l);
        }
    })
    .await?;
    let main = spire_levels
        .iter()
        .find(|l| l["agents"].as_u64() == Some(main_agents as u64))
        .ok_or_else(|| format!("the SPIRE driver did not reach {main_agents} agents"))?;
    let f = |k: &str| main[k].as_f64().unwrap_or(0.0);
    r.add(
        "spire_entries_held_total",
        "SPIRE: entries held by the agents at the end",
        f("entries_held"),
    );
    r.add("spire_syncs", "SPIRE: syncs measured", f("syncs"));
    r.add("spire_sync_errors", "SPIRE: syncs that failed", f("errors"));
    r.add(
        "spire_register_secs",
        "SPIRE: registering tokens and entries (s)",
        f("register_secs"),
    );
    r.add(
        "spire_attest_secs",
        "SPIRE: attesting the agents (s)",
        f("attest_secs"),
    );
    for (key, spire_key, label, aim) in [
        ("sync_p50_ms", "p50_ms", "sync latency p50 (ms)", Aim::None),
        ("sync_p99_ms", "p99_ms", "sync latency p99 (ms)", Aim::None),
        ("sync_max_ms", "max_ms", "sync latency max (ms)", Aim::None),
        (
            "server_cpu_per_sec",
            "server_cpu_per_sec",
            "server CPU seconds per second",
            Aim::None,
        ),
        (
            "server_rss_mib",
            "server_rss_mib",
            "server RSS at the end (MiB)",
            MEMORY_AIM,
        ),
        (
            "server_peak_rss_mib",
            "server_peak_rss_mib",
            "server peak RSS (MiB)",
            MEMORY_AIM,
        ),
    ] {
        r.vs_spire(key, label, f(spire_key), aim);
    }

    // How many agents each holds under the limit.
    let ours: Vec<(usize, f64, bool)> = levels
        .iter()
        .map(|l| (l.agents, l.lat.p99_us / 1000.0, l.held == l.entries))
        .collect();
    let theirs: Vec<(usize, f64, bool)> = spire_levels
        .iter()
        .map(|l| {
            (
                l["agents"].as_u64().unwrap_or(0) as usize,
                l["p99_ms"].as_f64().unwrap_or(f64::MAX),
                l["errors"].as_u64() == Some(0),
            )
        })
        .collect();
    let (cap_ours, passed_ours) = held(&ours);
    let (cap_theirs, passed_theirs) = held(&theirs);
    r.add(
        "capacity_levels",
        "Tessera levels (agents, p99 ms)",
        ours.iter()
            .map(|(a, p, _)| json!([a, (p * 10.0).round() / 10.0]))
            .collect::<Vec<_>>(),
    );
    r.add(
        "spire_capacity_levels",
        "SPIRE levels (agents, p99 ms, failed syncs)",
        spire_levels
            .iter()
            .map(|l| {
                json!([
                    l["agents"],
                    (l["p99_ms"].as_f64().unwrap_or(0.0) * 10.0).round() / 10.0,
                    l["errors"]
                ])
            })
            .collect::<Vec<_>>(),
    );
    r.add(
        "spire_capacity_detail",
        "SPIRE levels in full",
        Value::Array(spire_levels.clone()),
    );
    r.add(
        "capacity_agents",
        &format!(
            "agents held under p99 {P99_LIMIT_MS} ms{}",
            if passed_ours {
                ""
            } else {
                " (at least: the search ended)"
            }
        ),
        cap_ours as u64,
    );
    r.vs_spire(
        "capacity_agents",
        &format!(
            "agents held under p99 {P99_LIMIT_MS} ms{}",
            if passed_theirs {
                ""
            } else {
                " (at least: the search ended)"
            }
        ),
        cap_theirs as f64,
        THROUGHPUT_AIM,
    );
    r.note("SPIRE: simulated agents in bench/spire-driver (a separate process, on the same cores), each its own attested identity and mTLS connection, syncing as spire-agent does (SyncAuthorizedEntries, then GetBundle); spire-server with SQLite and its disk key manager");
    Ok(())
}
