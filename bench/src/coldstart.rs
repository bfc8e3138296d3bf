//! `cold-start`: from the agent process's start to the first SVID served over the
//! Workload API, with a join token and with TPM attestation (`tpm_devid`, `tpm_ek`)
//! on swtpm, measured in the same run. Every start is a fresh agent (empty state
//! directory), so every one attests.

use std::time::{Duration, Instant};

use tessera_swtpm_tests::{Agent, Server, Swtpm, TestCa};

use crate::env;
use crate::report::Report;

async fn start_to_svid(agent: &mut Agent, token: Option<&str>) -> Result<Duration, String> {
    let t = Instant::now();
    agent.spawn(token);
    env::wait_for_svid(&agent.socket, Duration::from_secs(60)).await?;
    let took = t.elapsed();
    agent.stop();
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A server (memory keys) in `dir` that attests `tpm_devid` agents of `vendor`'s
/// DevIDs on `tpm`, and with `tpm_ek` also `tpm_ek` agents of that TPM's maker.
pub(crate) fn tpm_server(
    dir: &std::path::Path,
    tpm: &Swtpm,
    vendor: &TestCa,
    tpm_ek: bool,
) -> Server {
    let (root, issuer) = (
        tpm.ek_ca_root.display().to_string(),
        tpm.ek_ca_intermediate.display().to_string(),
    );
    let mut config = format!(
        "[key_manager]\ntype = \"memory\"\n[node_attestors.tpm_devid]\ndevid_ca_bundle = [{:?}]\nek_ca_bundle = [{root:?}]\nek_intermediates = [{issuer:?}]\n",
        vendor.cert.display().to_string(),
    );
    if tpm_ek {
        config += &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{root:?}]\nek_intermediates = [{issuer:?}]\n"
        );
    }
    config += env::SERVER_LIMITS;
    Server::start(dir, &config)
}

pub(crate) async fn run(
    dir: &std::path::Path,
    quick: bool,
    vs_spire: bool,
) -> Result<Report, String> {
    let runs = if quick { 2 } else { 7 };
    let tpm = Swtpm::start(&dir.join("swtpm"));
    let vendor = TestCa::new(&dir.join("ca"), "Bench Vendor CA");
    let devid = dir.join("devid");
    tpm.provision_devid(&vendor, &devid, "bench-device");
    let server = tpm_server(&dir.join("server"), &tpm, &vendor, true);
    let mut admin = env::admin(&server).await?;
    // Workload entries for this process under every agent the TPM attestors make.
    env::create_entries(
        &mut admin,
        vec![
            tessera_proto::types::Entry {
                spiffe_id: "spiffe://example.org/bench/tpm-nodes".into(),
                parent_id: "spiffe://example.org/spire/server".into(),
                selectors: vec!["tpm:model:swtpm".into()],
                ..Default::default()
            },
            tessera_proto::types::Entry {
                spiffe_id: "spiffe://example.org/bench/devid-nodes".into(),
                parent_id: "spiffe://example.org/spire/server".into(),
                selectors: vec!["tpm_devid:subject:cn:bench-device".into()],
                ..Default::default()
            },
            env::entry(
                "spiffe://example.org/bench/w1".into(),
                "spiffe://example.org/bench/tpm-nodes",
                env::my_selector(),
            ),
            env::entry(
                "spiffe://example.org/bench/w2".into(),
                "spiffe://example.org/bench/devid-nodes",
                env::my_selector(),
            ),
        ],
    )
    .await?;

    let mut join = Vec::new();
    let mut devid_t = Vec::new();
    let mut ek_t = Vec::new();
    for i in 0..runs {
        // Join token: a token and an entry for the agent it makes.
        let token = env::tokens(&mut admin, 1).await?.remove(0);
        env::create_entries(
            &mut admin,
            vec![env::entry(
                format!("spiffe://example.org/bench/j{i}"),
                &env::agent_id(&token),
                env::my_selector(),
            )],
        )
        .await?;
        let mut a = Agent::configure(
            &dir.join(format!("join-{i}")),
            &server,
            "[key_manager]\ntype = \"memory\"\n",
        );
        join.push(start_to_svid(&mut a, Some(&token)).await?);

        let mut a = Agent::configure(
            &dir.join(format!("devid-{i}")),
            &server,
            &format!(
                "[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_devid]\ntcti = \"{}\"\ndevid_dir = \"{}\"\n",
                tpm.tcti,
                devid.display()
            ),
        );
        devid_t.push(start_to_svid(&mut a, None).await?);

        let mut a = Agent::configure(
            &dir.join(format!("ek-{i}")),
            &server,
            &format!(
                "[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_ek]\ntcti = \"{}\"\n",
                tpm.tcti
            ),
        );
        ek_t.push(start_to_svid(&mut a, None).await?);
    }
    let (j, d, e) = (median(join), median(devid_t), median(ek_t));
    let mut r = Report::new("cold-start");
    r.add("runs", "runs (median reported)", runs as u64);
    r.add("join_token_ms", "join token: start to first SVID (ms)", j);
    r.add(
        "tpm_devid_ms",
        "tpm_devid (key in the TPM): start to first SVID (ms)",
        d,
    );
    r.add(
        "tpm_ek_ms",
        "tpm_ek (key in the TPM): start to first SVID (ms)",
        e,
    );
    r.add("tpm_devid_over_join", "ratio tpm_devid / join token", d / j);
    r.add("tpm_ek_over_join", "ratio tpm_ek / join token", e / j);
    r.note("the TPM is swtpm on loopback TCP; a discrete TPM is slower, key creation alone taking tens to hundreds of milliseconds");
    if vs_spire {
        drop(server);
        crate::vs_spire::cold_start(&mut r, dir, runs).await?;
    }
    Ok(r)
}
