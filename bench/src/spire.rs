//! SPIRE on this machine, for `--vs-spire`: its real `spire-server` and
//! `spire-agent` (built at a pinned release by `scripts/spire.sh`, started by the
//! end-to-end harness in `tessera_swtpm_tests::spire`) and the project's driver of
//! SPIRE's published API (`bench/spire-driver`, built by `scripts/spire-driver.sh`),
//! which plays SPIRE's agents towards the server for the issuance and sync
//! scenarios and reads a SPIRE agent's cache.
//!
//! Both systems get the same settings where they have one: trust domain
//! `example.org`, P-256 keys (SPIRE's defaults for its CA and X509-SVIDs, and
//! Tessera's), log level info, the per-address rate limits lifted (as
//! [`crate::env::SERVER_LIMITS`] does for Tessera), agents syncing every 500 ms
//! (the harness's Tessera agents) except where a scenario says otherwise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_swtpm_tests::spire::{SpireAgent, SpireKeyManager, SpireServer, SpireServerOptions};
use tokio::io::AsyncBufReadExt;

use crate::stats;

/// SPIRE's agent block lines the benchmarks use: Tessera's harness settings.
pub(crate) const AGENT_EXTRA: &str =
    "log_level = \"INFO\"\n  experimental {\n    sync_interval = \"500ms\"\n  }";

/// Runs `scripts/<name>`, which prints a path on its last line of output.
fn script_path(name: &str, what: &str) -> Result<PathBuf, String> {
    let path = tessera_swtpm_tests::repo_root().join("scripts").join(name);
    let out = std::process::Command::new("bash")
        .arg(&path)
        .output()
        .map_err(|e| format!("{what}: cannot run {}: {e}", path.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{what}: scripts/{name} failed ({}):\n{stderr}",
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    if last.is_empty() || !Path::new(last).exists() {
        return Err(format!(
            "{what}: scripts/{name} printed no existing path:\n{stdout}{stderr}"
        ));
    }
    Ok(PathBuf::from(last))
}

static DRIVER: OnceLock<PathBuf> = OnceLock::new();

/// Builds (or finds) SPIRE and the driver; the first thing `--vs-spire` does, so
/// that a machine that cannot build them fails at once, saying which step failed.
pub(crate) fn prepare() -> Result<(), String> {
    let bins = script_path("spire.sh", "building SPIRE's server and agent")?;
    for name in ["spire-server", "spire-agent"] {
        if !bins.join(name).exists() {
            return Err(format!(
                "scripts/spire.sh finished but {} is missing",
                bins.join(name).display()
            ));
        }
    }
    let driver = script_path(
        "spire-driver.sh",
        "building the SPIRE driver (bench/spire-driver)",
    )?;
    let _ = DRIVER.set(driver);
    Ok(())
}

fn driver() -> Result<PathBuf, String> {
    DRIVER
        .get()
        .cloned()
        .ok_or_else(|| "the SPIRE driver was not built (prepare not called)".into())
}

/// The directory of `spire-server` and `spire-agent`.
pub(crate) fn bin_dir() -> PathBuf {
    tessera_swtpm_tests::spire::spire_bin_dir()
}

/// A SPIRE server: trust domain `example.org`, key manager `km`, rate limits off.
pub(crate) fn server(dir: &Path, km: SpireKeyManager) -> SpireServer {
    SpireServer::start(
        dir,
        &SpireServerOptions {
            trust_domain: "example.org".into(),
            key_manager: km,
            server_extra: "ratelimit {\n    attestation = false\n    signing = false\n  }".into(),
            log_level: "INFO".into(),
            ..SpireServerOptions::default()
        },
    )
}

/// `spiffe://example.org/spire/agent/join_token/<token>`: the agent a token makes.
pub(crate) fn agent_id(server: &SpireServer, token: &str) -> String {
    server.id(&format!("/spire/agent/join_token/{token}"))
}

/// Runs the driver with `args` against `server`, calling `on_event` with every
/// JSON line it prints as it prints it; returns every line.
pub(crate) async fn drive(
    server: &SpireServer,
    command: &str,
    args: &[String],
    mut on_event: impl FnMut(&Value),
) -> Result<Vec<Value>, String> {
    let mut cmd = tokio::process::Command::new(driver()?);
    cmd.arg(command)
        .arg("-api-socket")
        .arg(&server.socket)
        .arg("-server")
        .arg(server.address())
        .arg("-trust-domain")
        .arg(&server.trust_domain)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the SPIRE driver: {e}"))?;
    let stdout = child.stdout.take().ok_or("driver: no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut events = Vec::new();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("driver output: {e}"))?
    {
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("driver printed a line that is not JSON ({e}): {line}"))?;
        on_event(&v);
        events.push(v);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("driver: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the SPIRE driver's {command} failed ({}): {}\nspire-server log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail(&server.log(), 20)
        ));
    }
    Ok(events)
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The number of X509-SVIDs a SPIRE agent has cached (its debug API).
pub(crate) async fn cached_svids(agent: &SpireAgent) -> Result<u64, String> {
    let out = tokio::process::Command::new(driver()?)
        .arg("agent-info")
        .arg("-socket")
        .arg(&agent.admin_socket)
        .output()
        .await
        .map_err(|e| format!("cannot start the SPIRE driver: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("agent-info printed no JSON: {e}"))?;
    Ok(v["cached_x509_svids"].as_u64().unwrap_or(0))
}

/// A SPIRE agent with `n` entries of its own (unix UIDs nobody runs as, so
/// that they are cached and not served), idle once every SVID is cached;
/// returns it and its RSS then (MiB).
pub(crate) async fn agent_with(
    dir: &Path,
    server: &SpireServer,
    n: usize,
    tag: &str,
) -> Result<(SpireAgent, f64), String> {
    let token = server.token(None);
    let parent = agent_id(server, &token);
    if n > 0 {
        let list: Vec<_> = (0..n)
            .map(|j| {
                (
                    server.id(&format!("/{tag}/{j}")),
                    parent.clone(),
                    vec![format!("unix:uid:{}", 30_000 + j)],
                )
            })
            .collect();
        server.entries(&list);
    }
    let agent = SpireAgent::start(
        &dir.join(format!("spire-agent-{tag}")),
        server,
        &token,
        AGENT_EXTRA,
    );
    let start = Instant::now();
    while cached_svids(&agent).await.unwrap_or(0) < n as u64 {
        if start.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "spire-agent {tag} did not cache {n} SVIDs in 180 s:\n{}",
                tail(&agent.log(), 20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = agent.pid().map(stats::rss_mib).unwrap_or(0.0);
    Ok((agent, rss))
}

/// A file's size in MiB (0 when missing).
pub(crate) fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}
