//! `issuance`: X509-SVIDs per second through the agent API's BatchNewX509Svid (attested
//! agents over mTLS), with one and with several agents at once, beside the raw
//! signing rate of the same kind of key measured in the same run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_swtpm_tests::{Server, SoftHsm};

use crate::env;
use crate::report::Report;
use crate::sim::{self, SimAgent};

/// The bytes a CA signs for one SVID are about this long (a TBSCertificate).
const TBS_LEN: usize = 420;
const BATCH: usize = 100;

/// Which key manager the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeyManagerKind {
    Memory,
    /// PKCS#8 files under the server's data directory (Tessera's default).
    Disk,
    Pkcs11,
}

async fn issue_for(
    agents: &[SimAgent],
    work: &[Vec<(String, Vec<u8>)>],
    secs: Duration,
) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + secs;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (a, w) in agents.iter().zip(work) {
        let (a, w, count) = (a.clone(), w.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let n = a.sign(&w).await?;
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// How many times per second `threads` threads together can run `op` (which
/// reports success), for `secs`.
fn rate_on_threads(threads: usize, secs: Duration, op: Arc<dyn Fn() -> bool + Send + Sync>) -> f64 {
    let end = Instant::now() + secs;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let op = op.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < end {
                    if op() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// Software signing rate of a P-256 key on `threads` threads.
fn raw_software_rate(threads: usize, secs: Duration) -> f64 {
    let key = match SoftwareKey::generate(KeyType::EcP256) {
        Ok(k) => Arc::new(k),
        Err(_) => return 0.0,
    };
    let msg = vec![0x5a_u8; TBS_LEN];
    rate_on_threads(
        threads,
        secs,
        Arc::new(move || key.sign_default(&msg).is_ok()),
    )
}

/// The rate at which the server's CSR check (parse and signature verification)
/// runs on `threads` threads: work every issued SVID needs besides its signature.
fn csr_check_rate(threads: usize, secs: Duration, csr: Vec<u8>) -> f64 {
    rate_on_threads(
        threads,
        secs,
        Arc::new(move || tessera_core::x509::csr_public_key(&csr, None).is_ok()),
    )
}

/// Raw C_Sign rate of the token, measured in a child process (SoftHSM2 is found
/// through SOFTHSM2_CONF, which only a new process can be given safely).
fn raw_pkcs11_rate(hsm: &SoftHsm, threads: usize, secs: Duration) -> Result<f64, String> {
    let out = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("raw-pkcs11-sign")
        .arg("--module")
        .arg(&hsm.module)
        .arg("--token-label")
        .arg(&hsm.label)
        .arg("--pin-file")
        .arg(&hsm.pin_file)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--secs")
        .arg(secs.as_secs_f64().to_string())
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("raw-pkcs11-sign printed no rate: {e}"))
}

/// The child process of [`raw_pkcs11_rate`].
pub(crate) fn raw_pkcs11_child(
    module: &Path,
    label: &str,
    pin_file: &Path,
    threads: usize,
    secs: f64,
) -> Result<f64, String> {
    let cfg = tessera_hsm::Pkcs11Config {
        module: Some(module.to_owned()),
        token_label: Some(label.to_owned()),
        pin_file: Some(pin_file.to_owned()),
        sessions: threads.max(1),
        ..Default::default()
    };
    let m = tessera_hsm::Pkcs11KeyManager::open(&cfg).map_err(|e| e.to_string())?;
    m.create_key("bench-raw", KeyType::EcP256)
        .map_err(|e| e.to_string())?;
    // Rounds of a few hundred signatures per thread until the time is up.
    let (mut signatures, mut elapsed) = (0usize, Duration::ZERO);
    while elapsed.as_secs_f64() < secs {
        let r = m
            .raw_sign_rate("bench-raw", threads, 200)
            .map_err(|e| e.to_string())?;
        signatures += r.signatures;
        elapsed += r.elapsed;
    }
    let _ = m.destroy_key("bench-raw");
    Ok(signatures as f64 / elapsed.as_secs_f64())
}

/// Attests `many` simulated agents to `server`, each with [`BATCH`] entries and a
/// CSR for each.
async fn prepare(
    server: &Server,
    many: usize,
) -> Result<(Vec<SimAgent>, Vec<Vec<(String, Vec<u8>)>>), String> {
    let mut admin = env::admin(server).await?;
    let tokens = env::tokens(&mut admin, many).await?;
    let mut work = Vec::new();
    for t in &tokens {
        let parent = env::agent_id(t);
        let entries = (0..BATCH)
            .map(|i| {
                env::entry(
                    format!("spiffe://example.org/bench/{t}/{i}"),
                    &parent,
                    format!("unix:uid:{}", 100_000 + i),
                )
            })
            .collect();
        let ids = env::create_entries(&mut admin, entries).await?;
        work.push(
            ids.into_iter()
                .map(|id| (id, sim::csr()))
                .collect::<Vec<_>>(),
        );
    }
    let bundle = sim::bootstrap(&server.cli_ok(&["bundle", "show"]))?;
    let agents = sim::attest_many(&server.address(), bundle, tokens, 4).await?;
    Ok((agents, work))
}

/// Issuance with metrics on (`[telemetry] metrics_address`, scraped every second)
/// against the same with metrics off, on two servers alternating in one run: SVIDs
/// per second with `many` agents, (on, off).
pub(crate) async fn metrics_overhead(dir: &Path, quick: bool) -> Result<(f64, f64), String> {
    let secs = Duration::from_secs(if quick { 1 } else { 5 });
    let many = if quick { 2 } else { 4 };
    let metrics_at = format!("127.0.0.1:{}", tessera_swtpm_tests::free_port());
    let off = Server::start(
        &dir.join("off"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let on = Server::start(
        &dir.join("on"),
        &format!(
            "[key_manager]\ntype = \"memory\"\n{}\n[telemetry]\nmetrics_address = \"{metrics_at}\"\n",
            env::SERVER_LIMITS
        ),
    );
    let scraper = env::scrape_every_second(metrics_at);
    let (off_agents, off_work) = prepare(&off, many).await?;
    let (on_agents, on_work) = prepare(&on, many).await?;
    issue_for(&off_agents[..1], &off_work[..1], Duration::from_millis(300)).await?;
    issue_for(&on_agents[..1], &on_work[..1], Duration::from_millis(300)).await?;
    // Alternating rounds, so that a noisy neighbour hurts both sides alike.
    let (mut sum_on, mut sum_off) = (0.0, 0.0);
    for _ in 0..3 {
        sum_off += issue_for(&off_agents, &off_work, secs).await?;
        sum_on += issue_for(&on_agents, &on_work, secs).await?;
    }
    scraper.abort();
    Ok((sum_on / 3.0, sum_off / 3.0))
}

pub(crate) async fn run(dir: &Path, quick: bool, km: KeyManagerKind) -> Result<Report, String> {
    let secs = Duration::from_secs(if quick { 2 } else { 10 });
    let many = if quick { 2 } else { 4 };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (server, hsm) = match km {
        KeyManagerKind::Memory => (
            Server::start(
                &dir.join("server"),
                &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
            ),
            None,
        ),
        KeyManagerKind::Disk => (
            Server::start(
                &dir.join("server"),
                &format!("[key_manager]\ntype = \"disk\"\n{}", env::SERVER_LIMITS),
            ),
            None,
        ),
        KeyManagerKind::Pkcs11 => {
            let hsm = SoftHsm::init(&dir.join("hsm"), "bench", "1234");
            let s = Server::start_with_env(
                &dir.join("server"),
                &format!(
                    "[key_manager]\ntype = \"pkcs11\"\nsessions = {}\n{}{}",
                    workers.max(2),
                    hsm.section(),
                    env::SERVER_LIMITS
                ),
                &hsm.env(),
            );
            (s, Some(hsm))
        }
    };
    let (agents, work) = prepare(&server, many).await?;
    // Warm up connections and caches.
    issue_for(&agents[..1], &work[..1], Duration::from_millis(300)).await?;

    let one = issue_for(&agents[..1], &work[..1], secs).await?;
    let cpu_before = server.pid().and_then(crate::stats::cpu_seconds);
    let run_start = Instant::now();
    let several = issue_for(&agents, &work, secs).await?;
    let issued = several * run_start.elapsed().as_secs_f64();
    let server_cpu_us = match (cpu_before, server.pid().and_then(crate::stats::cpu_seconds)) {
        (Some(a), Some(b)) if issued > 0.0 => (b - a) * 1e6 / issued,
        _ => 0.0,
    };
    let raw = match (&km, &hsm) {
        (KeyManagerKind::Pkcs11, Some(h)) => raw_pkcs11_rate(h, workers.max(2), secs)?,
        _ => tokio::task::spawn_blocking(move || raw_software_rate(workers, secs))
            .await
            .map_err(|e| e.to_string())?,
    };
    let csr = work[0][0].1.clone();
    let verify = tokio::task::spawn_blocking(move || csr_check_rate(workers, secs / 2, csr))
        .await
        .map_err(|e| e.to_string())?;
    let name = match km {
        KeyManagerKind::Memory => "memory",
        KeyManagerKind::Disk => "disk",
        KeyManagerKind::Pkcs11 => "pkcs11",
    };
    let mut r = Report::new(&format!("issuance ({name} key manager)"));
    r.add("key_manager", "key manager", name);
    r.add("batch_size", "SVIDs per BatchNewX509Svid", BATCH as u64);
    r.add("svids_per_sec_1_agent", "SVIDs/s, 1 agent", one);
    r.add("agents", "agents at once", many as u64);
    r.add("svids_per_sec_n_agents", "SVIDs/s, N agents", several);
    r.add("raw_sign_per_sec", "raw signatures/s, same key type", raw);
    r.add("ratio_1_agent", "ratio (1 agent / raw)", one / raw);
    r.add("ratio_n_agents", "ratio (N agents / raw)", several / raw);
    // CPU time per operation, from rates measured on all cores at once.
    let per_op_us = |rate: f64| {
        if rate > 0.0 {
            workers as f64 * 1e6 / rate
        } else {
            0.0
        }
    };
    r.add(
        "server_cpu_us_per_svid",
        "server CPU µs per SVID (N agents)",
        server_cpu_us,
    );
    r.add(
        "raw_sign_cpu_us",
        "CPU µs per raw signature",
        per_op_us(raw),
    );
    r.add("csr_check_per_sec", "CSR checks/s (parse + verify)", verify);
    if km == KeyManagerKind::Memory {
        let (on, off) = metrics_overhead(&dir.join("metrics"), quick).await?;
        r.add(
            "metrics_on_svids_per_sec",
            "SVIDs/s, N agents, metrics on and scraped",
            on,
        );
        r.add(
            "metrics_off_svids_per_sec",
            "SVIDs/s, N agents, metrics off",
            off,
        );
        r.add("metrics_on_over_off", "ratio (metrics on / off)", on / off);
    }
    r.add(
        "csr_check_cpu_us",
        "CPU µs per CSR check",
        per_op_us(verify),
    );
    r.note(&format!(
        "the server, its agents' TLS and this client share {workers} cores; raw signing runs alone"
    ));
    Ok(r)
}
