//! `edge`: two agent builds side by side in one run (the static musl agent as A and
//! the glibc one as B, by the integrator's choice of paths), with the ratios A/B:
//! stripped binary size; idle memory (VmRSS and Pss) with 0, 100 and 1,000 SVIDs and
//! after a burst of 1,000 Workload API clients; Workload API p50 and throughput for
//! FetchX509SVID and FetchJWTSVID. Then cold start to the first SVID with
//! `tpm_devid` on swtpm, with `tpm_backend = "native"` beside `"esapi"` (same binary,
//! B); a backend the binary lacks is reported as not built in.

use std::path::{Path, PathBuf};

use tessera_swtpm_tests::{Agent, Server};

use crate::report::Report;

mod api;
mod memory;
mod size;
mod tpm;

/// The two agent builds being compared.
#[derive(Debug, Clone)]
pub(crate) struct Builds {
    pub a: PathBuf,
    pub b: PathBuf,
}

impl Builds {
    /// The given paths, or the agent next to `tessera-bench` for either left out;
    /// a path that is not a file is refused by name.
    pub(crate) fn resolve(a: Option<PathBuf>, b: Option<PathBuf>) -> Result<Self, String> {
        let pick = |p: Option<PathBuf>, flag: &str| -> Result<PathBuf, String> {
            let p = p.unwrap_or_else(|| tessera_swtpm_tests::bin_dir().join("tessera-agent"));
            if !p.is_file() {
                return Err(format!("{flag} {}: no such file", p.display()));
            }
            std::fs::canonicalize(&p).map_err(|e| format!("{flag} {}: {e}", p.display()))
        };
        Ok(Self {
            a: pick(a, "--agent-a")?,
            b: pick(b, "--agent-b")?,
        })
    }
}

/// The harness starts `tessera-agent` from its binary directory; this wrapper makes
/// it exec `binary` instead, with the same arguments (so the agent keeps the PID the
/// harness knows).
fn wrapper(binary: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "shift; exec \"$0\" \"$@\"".into(),
        binary.display().to_string(),
    ]
}

/// Configures and starts an agent of build `binary`, waiting until it is healthy.
fn start_agent(
    dir: &Path,
    server: &Server,
    binary: &Path,
    token: Option<&str>,
    extra: &str,
) -> Agent {
    let mut a = Agent::configure(dir, server, extra);
    a.spawn_in(token, &wrapper(binary));
    a.wait_healthy();
    a
}

/// Adds the figures of A and B under `key_a`/`key_b` and their ratio A/B.
fn pair(r: &mut Report, key: &str, label: &str, a: f64, b: f64) {
    r.add(&format!("{key}_a"), &format!("A: {label}"), a);
    r.add(&format!("{key}_b"), &format!("B: {label}"), b);
    r.add(
        &format!("{key}_a_over_b"),
        &format!("ratio A/B: {label}"),
        if b > 0.0 { a / b } else { 0.0 },
    );
}

pub(crate) async fn run(dir: &Path, quick: bool, builds: &Builds) -> Result<Report, String> {
    let mut r = Report::new("edge");
    r.add("agent_a", "agent A", builds.a.display().to_string());
    r.add("agent_b", "agent B", builds.b.display().to_string());
    size::run(&mut r, dir, builds)?;
    memory::run(&mut r, &dir.join("memory"), quick, builds).await?;
    api::run(&mut r, &dir.join("api"), quick, builds).await?;
    tpm::run(&mut r, &dir.join("cold-start"), quick, &builds.b).await?;
    Ok(r)
}
