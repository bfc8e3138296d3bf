//! Cold start to the first SVID with `tpm_devid` on swtpm (the agent key in the TPM
//! too), `tpm_backend = "native"` beside `"esapi"`, the same binary, runs
//! alternating, each a fresh agent (empty state directory), so every one attests. A
//! backend the binary does not contain is reported as such, not measured.

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_swtpm_tests::{Agent, Swtpm, TestCa};

use super::wrapper;
use crate::env;
use crate::report::Report;

/// What came of one start.
enum Start {
    Served(Duration),
    /// The agent refused the backend: this build lacks it.
    NotBuilt,
}

async fn start_to_svid(agent: &mut Agent, binary: &Path) -> Result<Start, String> {
    let t = Instant::now();
    agent.spawn_in(None, &wrapper(binary));
    loop {
        if let Ok(mut c) = env::workload(&agent.socket).await
            && matches!(env::fetch_once(&mut c).await, Ok(n) if n > 0)
        {
            let took = t.elapsed();
            agent.stop();
            return Ok(Start::Served(took));
        }
        if let Some(status) = agent.exited() {
            let log = agent.log();
            if log.contains("TPM backend (built in:") {
                return Ok(Start::NotBuilt);
            }
            return Err(format!("the agent exited ({status}):\n{log}"));
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("no SVID within 60 s:\n{}", agent.log()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn median_ms(mut v: Vec<Duration>) -> Option<f64> {
    v.sort_unstable();
    v.get(v.len() / 2).map(|d| d.as_secs_f64() * 1000.0)
}

pub(super) async fn run(
    r: &mut Report,
    dir: &Path,
    quick: bool,
    binary: &Path,
) -> Result<(), String> {
    let runs = if quick { 1 } else { 7 };
    let tpm = Swtpm::start(&dir.join("swtpm"));
    let vendor = TestCa::new(&dir.join("ca"), "Bench Vendor CA");
    let devid = dir.join("devid");
    tpm.provision_devid(&vendor, &devid, "edge-device");
    let server = crate::coldstart::tpm_server(&dir.join("server"), &tpm, &vendor, false);
    let mut admin = env::admin(&server).await?;
    env::create_entries(
        &mut admin,
        vec![
            tessera_proto::types::Entry {
                spiffe_id: "spiffe://example.org/bench/edge-nodes".into(),
                parent_id: "spiffe://example.org/spire/server".into(),
                selectors: vec!["tpm_devid:subject:cn:edge-device".into()],
                ..Default::default()
            },
            env::entry(
                "spiffe://example.org/bench/edge-workload".into(),
                "spiffe://example.org/bench/edge-nodes",
                env::my_selector(),
            ),
        ],
    )
    .await?;
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut built = [true, true];
    let backends = ["esapi", "native"];
    for i in 0..runs {
        for (k, backend) in backends.iter().enumerate() {
            if !built[k] {
                continue;
            }
            let mut a = Agent::configure(
                &dir.join(format!("{backend}-{i}")),
                &server,
                &format!(
                    "tpm_backend = \"{backend}\"\n[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_devid]\ntcti = \"{}\"\ndevid_dir = \"{}\"\n",
                    tpm.tcti,
                    devid.display()
                ),
            );
            match start_to_svid(&mut a, binary).await? {
                Start::Served(d) => times[k].push(d),
                Start::NotBuilt => built[k] = false,
            }
        }
    }
    r.add(
        "cold_start_runs",
        "cold-start runs per backend (median reported)",
        runs as u64,
    );
    r.add(
        "cold_start_agent",
        "cold start: agent binary",
        binary.display().to_string(),
    );
    let [esapi, native] = times;
    let mut medians = [None, None];
    for (k, (backend, t)) in backends.iter().zip([esapi, native]).enumerate() {
        let key = format!("cold_start_{backend}_ms");
        let label = format!("tpm_devid, tpm_backend {backend}: start to first SVID (ms)");
        match median_ms(t) {
            Some(ms) if built[k] => {
                medians[k] = Some(ms);
                r.add(&key, &label, ms);
            }
            _ => r.add(&key, &label, format!("{backend}: not built in")),
        }
    }
    match medians {
        [Some(e), Some(n)] => r.add(
            "cold_start_native_over_esapi",
            "ratio native/esapi: start to first SVID",
            n / e,
        ),
        _ => r.note("no native/esapi ratio: the binary lacks one of the backends"),
    }
    r.note("the TPM is swtpm on loopback TCP; a discrete TPM is slower, key creation alone taking tens to hundreds of milliseconds");
    Ok(())
}
