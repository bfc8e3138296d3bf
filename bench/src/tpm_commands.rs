//! TPM commands per agent renewal, counted at the pure-Rust backend's transport
//! (every command it sends the TPM): what the agent's renewal asks of its TPM
//! (swtpm here), without and with the agent-key proof and the measured-boot quote.
//!
//! One renewal, as the agent does it with `[key_manager] type = "tpm"`: a new key
//! (TPM2_Create under the SRK), the CSR's signature (load, TPM2_Sign, flush), then
//! with the proof the certify of the key by the kept AK (two loads, TPM2_Certify,
//! two flushes), with measured boot the quote (load, TPM2_Quote, flush) and one
//! TPM2_PCR_Read per PCR, and last the signature of the TLS handshake that presents
//! the new SVID (load, TPM2_Sign, flush). The connection's SRK and salted session
//! are made before counting, as a running agent has them.

use std::path::Path;
use std::sync::Arc;

use tessera_agent::attestor::key_proof::{AK_FILE, KeyProver};
use tessera_core::key::{Key, KeyManager, KeyType};
use tessera_swtpm_tests::Swtpm;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::{Backend, Tpm, TpmKeyManager};

use crate::report::Report;

/// The PCRs the measured-boot variant quotes (firmware and Secure Boot policy).
const PCRS: [u8; 2] = [0, 7];

fn total(counts: &std::collections::BTreeMap<&'static str, u64>) -> u64 {
    counts.values().sum()
}

fn diff(
    after: &std::collections::BTreeMap<&'static str, u64>,
    before: &std::collections::BTreeMap<&'static str, u64>,
) -> std::collections::BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Runs `renewals` renewals with `certify` and `pcrs`; the commands of one.
fn measure(
    dir: &Path,
    tpm: &Arc<Tpm>,
    certify: bool,
    pcrs: &[u8],
    renewals: u64,
) -> Result<std::collections::BTreeMap<&'static str, u64>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let km = TpmKeyManager::open(tpm.clone(), &dir.join("keys")).map_err(|e| fail(&e))?;
    let ak = tpm
        .with(|d| d.create_key(&AkKind::EccP256.template()))
        .map_err(|e| fail(&e))?;
    std::fs::write(dir.join(AK_FILE), ak.to_bytes()).map_err(|e| fail(&e))?;
    let prover = KeyProver::open(tpm.clone(), dir, certify, pcrs.to_vec());
    let renew = |slot: &str| -> Result<(), String> {
        let key: Arc<dyn Key> = km
            .generate_key(slot, KeyType::EcP256)
            .map_err(|e| fail(&e))?;
        let csr = tessera_core::x509::build_csr(&key).map_err(|e| fail(&e))?;
        let (c, q) = prover.prove_at_renewal(slot, "0a1b2c", &csr);
        if certify != c.is_some() || pcrs.is_empty() == q.is_some() {
            return Err("a proof that should have been made was not (see the log)".into());
        }
        // The handshake that presents the new SVID.
        key.sign_default(b"TLS 1.3 CertificateVerify")
            .map_err(|e| fail(&e))?;
        Ok(())
    };
    // Warm-up: the SRK and the salted session, as a running agent has them.
    renew("warm-up")?;
    let before = tessera_tpm::device::native::count::sent();
    for i in 0..renewals {
        renew(if i % 2 == 0 {
            "agent-svid-a"
        } else {
            "agent-svid-b"
        })?;
    }
    let after = tessera_tpm::device::native::count::sent();
    Ok(diff(&after, &before)
        .into_iter()
        .map(|(k, v)| (k, v / renewals))
        .collect())
}

pub(crate) async fn run(dir: &Path, quick: bool) -> Result<Report, String> {
    let swtpm = Swtpm::start(&dir.join("swtpm"));
    let tcti = swtpm.tcti.parse().map_err(|e| format!("{e}"))?;
    let tpm = Arc::new(Tpm::open_with(Backend::Native, &tcti).map_err(|e| e.to_string())?);
    let renewals = if quick { 2 } else { 10 };
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut r = Report::new("tpm-commands");
        for (key, label, certify, pcrs) in [
            ("plain", "without proofs", false, &[][..]),
            ("certify", "with the agent-key certify", true, &[][..]),
            (
                "certify_quote",
                "with the certify and a quote of PCRs 0 and 7",
                true,
                &PCRS[..],
            ),
        ] {
            let counts = measure(&dir.join(key), &tpm, certify, pcrs, renewals)?;
            r.add(key, &format!("commands, {label}"), total(&counts));
            let detail: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            r.add(
                &format!("{key}_by_command"),
                &format!("  by command, {label}"),
                detail.join(", "),
            );
        }
        r.add("renewals_counted", "renewals counted (each)", renewals);
        Ok(r)
    })
    .await
    .map_err(|e| e.to_string())?
}
