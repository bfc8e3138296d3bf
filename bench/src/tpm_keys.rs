//! `tpm-workload-keys`: workload keys born in the TPM (`workload_key = tpm`), on
//! swtpm with a `tpm_ek` agent:
//!
//! - cold start: the agent process's start to the first TPM-held X509-SVID on
//!   `tessera.local.v1.TpmWorkloadKeys` (attestation, a TPM key for the workload,
//!   its CSR signed in the TPM, the server's signature);
//! - rotation: an entry change (which re-signs like a rotation: a new key and SVID)
//!   to the new SVID on the open stream, which includes waiting for the agent's next
//!   sync (`sync_interval`, 500 ms here);
//! - the TPM's share of a rotation: creating the key and signing its CSR in the
//!   TPM, per backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_proto::local as lpb;
use tessera_proto::local::tpm_workload_keys_client::TpmWorkloadKeysClient;
use tessera_swtpm_tests::{Agent, Swtpm, TestCa};

use crate::env;
use crate::report::Report;

type Stream = tonic::Streaming<lpb::TpmX509svidResponse>;

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Opens the stream and waits for a message with an SVID; the first chain.
async fn first_svid(
    socket: &std::path::Path,
    limit: Duration,
) -> Result<(Stream, Vec<u8>), String> {
    let start = Instant::now();
    loop {
        if let Ok(ch) = tessera_proto::unix_channel(socket).await {
            let mut c = TpmWorkloadKeysClient::new(ch);
            let mut r = tonic::Request::new(lpb::TpmX509svidRequest {});
            r.metadata_mut().insert(
                tessera_proto::WORKLOAD_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
            if let Ok(s) = c.fetch_tpm_x509svid(r).await {
                let mut s = s.into_inner();
                while let Ok(Some(m)) = s.message().await {
                    if let Some(svid) = m.svids.first() {
                        return Ok((s, svid.x509_svid.clone()));
                    }
                }
            }
        }
        if start.elapsed() > limit {
            return Err(format!("no TPM-held SVID within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn run(dir: &std::path::Path, quick: bool) -> Result<Report, String> {
    let runs = if quick { 2 } else { 7 };
    let tpm = Swtpm::start(&dir.join("swtpm"));
    let vendor = TestCa::new(&dir.join("ca"), "Bench Vendor CA");
    let server = crate::coldstart::tpm_server(&dir.join("server"), &tpm, &vendor, true);
    let mut admin = env::admin(&server).await?;
    let mut workload = env::entry(
        "spiffe://example.org/bench/tpm-key".into(),
        "spiffe://example.org/bench/tpm-nodes",
        env::my_selector(),
    );
    workload.workload_key = "tpm".into();
    let ids = env::create_entries(
        &mut admin,
        vec![
            tessera_proto::types::Entry {
                spiffe_id: "spiffe://example.org/bench/tpm-nodes".into(),
                parent_id: "spiffe://example.org/spire/server".into(),
                selectors: vec!["tpm:model:swtpm".into()],
                ..Default::default()
            },
            workload,
        ],
    )
    .await?;
    let entry_id = ids[1].clone();
    let config = format!(
        "[key_manager]\ntype = \"tpm\"\n[node_attestor.tpm_ek]\ntcti = \"{}\"\n",
        tpm.tcti
    );

    let mut cold = Vec::new();
    let mut rotate = Vec::new();
    for i in 0..runs {
        let mut a = Agent::configure(&dir.join(format!("agent-{i}")), &server, &config);
        let t = Instant::now();
        a.spawn(None);
        let (mut stream, mut chain) = first_svid(&a.socket, Duration::from_secs(60)).await?;
        cold.push(t.elapsed());
        // Rotation: the entry changes, the agent makes a new TPM key and SVID.
        for k in 0..if quick { 2 } else { 5 } {
            let t = Instant::now();
            server.cli_ok(&[
                "entry",
                "update",
                "--entry-id",
                &entry_id,
                "--hint",
                &format!("r{i}-{k}"),
            ]);
            loop {
                let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .map_err(|_| "no rotated SVID within 30 s".to_owned())?
                    .map_err(|e| format!("stream: {e}"))?
                    .ok_or("the stream ended")?;
                if let Some(s) = m.svids.first()
                    && s.x509_svid != chain
                {
                    chain = s.x509_svid.clone();
                    break;
                }
            }
            rotate.push(t.elapsed());
        }
        drop(stream);
        a.stop();
    }

    // The TPM's share, per backend (the agent is stopped: one connection at a time).
    let mut r = Report::new("tpm-workload-keys");
    r.add("runs", "agent starts (median reported)", runs as u64);
    r.add(
        "cold_start_ms",
        "tpm_ek agent start to first TPM-held SVID (ms)",
        median_ms(cold),
    );
    r.add(
        "rotate_ms",
        "entry change to the new TPM-held SVID on the stream, sync_interval 500 ms (ms)",
        median_ms(rotate),
    );
    for backend in [tessera_tpm::Backend::Native, tessera_tpm::Backend::Esapi] {
        let Ok(t) = tessera_tpm::Tpm::open_with(
            backend,
            &tpm.tcti.parse().map_err(|e| format!("tcti: {e}"))?,
        ) else {
            continue;
        };
        let t = Arc::new(t);
        let mut made = Vec::new();
        for _ in 0..if quick { 3 } else { 10 } {
            let s = Instant::now();
            let key = tessera_tpm::TpmWorkloadKey::generate(
                t.clone(),
                tessera_core::key::KeyType::EcP256,
            )
            .map_err(|e| e.to_string())?;
            let key: Arc<dyn tessera_core::key::Key> = Arc::new(key);
            tessera_core::x509::build_csr(&key).map_err(|e| e.to_string())?;
            made.push(s.elapsed());
        }
        r.add(
            &format!("key_and_csr_{backend}_ms"),
            &format!("TPM key with its auth value + CSR signed in the TPM, {backend} backend (ms)"),
            median_ms(made),
        );
    }
    r.note("the TPM is swtpm on loopback TCP; a discrete TPM takes tens to hundreds of milliseconds to create a key");
    Ok(r)
}
