//! The agent's proof that its SVID key is in its TPM (see
//! `tessera_tpm::verifier::key_proof`): the AK of the last TPM attestation is kept
//! as a blob (`agent-ak.tpmkey` in the data directory, mode 0600, useless off this
//! TPM), and certifies each new SVID key, at attestation over the server's nonce
//! and the CSR, at renewal over the serial of the SVID the agent authenticates with
//! and the CSR. The SVID keys are the TPM key manager's blobs in `keys/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tessera_proto::agent as pb;
use tessera_tpm::attestation::key_proof::{certify_key, quote_pcrs};
use tessera_tpm::verifier::key_proof::{
    KeyCertify, attestation_qualifying_data, renewal_qualifying_data,
};
use tessera_tpm::verifier::quote::{self, PcrQuote};
use tessera_tpm::{KeyBlob, Tpm};

/// The file the AK blob is kept in, in the data directory.
pub const AK_FILE: &str = "agent-ak.tpmkey";

/// Certifies the agent's SVID keys with its attested AK.
#[derive(Debug)]
pub struct KeyProver {
    tpm: Arc<Tpm>,
    /// Whether the SVID keys are TPM keys to certify (`[key_manager] type = "tpm"`).
    certify_keys: bool,
    /// The PCRs to quote (`[measured_boot] pcrs`), ascending.
    pcrs: Vec<u8>,
    keys_dir: PathBuf,
    ak_path: PathBuf,
    ak: Mutex<Option<KeyBlob>>,
}

/// The key the next attestation proves: its slot in the key manager and the CSR.
#[derive(Debug, Clone)]
pub struct KeyBinding {
    /// The key manager's name for the key.
    pub slot: String,
    /// The CSR sent with the attestation.
    pub csr: Vec<u8>,
}

impl KeyProver {
    /// The prover for keys in `data_dir/keys` (the TPM key manager's folder); loads
    /// the AK kept by an earlier attestation, if any.
    pub fn open(tpm: Arc<Tpm>, data_dir: &Path, certify_keys: bool, pcrs: Vec<u8>) -> Self {
        let ak_path = data_dir.join(AK_FILE);
        let ak = std::fs::read(&ak_path)
            .ok()
            .and_then(|b| KeyBlob::from_bytes(&b).ok());
        Self {
            tpm,
            certify_keys,
            pcrs,
            keys_dir: data_dir.join("keys"),
            ak_path,
            ak: Mutex::new(ak),
        }
    }

    fn key_blob(&self, slot: &str) -> Result<KeyBlob, String> {
        let path = self.keys_dir.join(format!("{slot}.tpmkey"));
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read the SVID key blob {}: {e}", path.display()))?;
        KeyBlob::from_bytes(&bytes).map_err(|e| format!("SVID key blob {}: {e}", path.display()))
    }

    /// Attestation: certifies the key of `binding` with this attestation's `ak`
    /// over the server's `nonce` (when the keys are TPM keys), quotes the PCRs
    /// (when configured), and keeps `ak` for the renewals to come. A proof that
    /// cannot be made is left out (and logged): the server decides.
    pub fn prove_at_attestation(
        &self,
        binding: &KeyBinding,
        ak: &KeyBlob,
        nonce: &[u8],
    ) -> (Option<KeyCertify>, Option<PcrQuote>) {
        let certify = self.certify_keys.then(|| {
            let key = self.key_blob(&binding.slot)?;
            let qualifying = attestation_qualifying_data(nonce, &binding.csr);
            certify_key(&self.tpm, &key, ak, &qualifying)
                .map_err(|e| format!("TPM2_Certify of the SVID key: {e}"))
        });
        let quote = (!self.pcrs.is_empty()).then(|| {
            let qualifying = quote::attestation_qualifying_data(nonce, &binding.csr);
            quote_pcrs(&self.tpm, ak, &self.pcrs, &qualifying)
                .map_err(|e| format!("TPM2_Quote of PCRs {:?}: {e}", self.pcrs))
        });
        if let Err(e) = tessera_process::fs::write_atomic(&self.ak_path, &ak.to_bytes(), 0o600) {
            tracing::warn!("cannot keep the AK in {}: {e}", self.ak_path.display());
        }
        *self.ak.lock().unwrap_or_else(|p| p.into_inner()) = Some(ak.clone());
        (logged(certify), logged(quote))
    }

    /// Renewal: certifies the key in `slot` with the kept AK, and quotes the PCRs,
    /// for the renewal authenticated with the SVID of serial `serial_hex`. A proof
    /// that cannot be made is left out (and logged).
    pub fn prove_at_renewal(
        &self,
        slot: &str,
        serial_hex: &str,
        csr: &[u8],
    ) -> (Option<pb::TpmKeyCertify>, Option<pb::PcrQuote>) {
        let Some(ak) = self.ak.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            tracing::warn!(
                "no AK kept in {}: the renewal carries no TPM proof",
                self.ak_path.display()
            );
            return (None, None);
        };
        let certify = self.certify_keys.then(|| {
            let key = self.key_blob(slot)?;
            let qualifying = renewal_qualifying_data(serial_hex, csr);
            certify_key(&self.tpm, &key, &ak, &qualifying)
                .map(|c| pb::TpmKeyCertify {
                    public: c.public,
                    attest: c.attest,
                    signature: c.signature,
                })
                .map_err(|e| format!("TPM2_Certify of the SVID key: {e}"))
        });
        let quote = (!self.pcrs.is_empty()).then(|| {
            let qualifying = quote::renewal_qualifying_data(serial_hex, csr);
            quote_pcrs(&self.tpm, &ak, &self.pcrs, &qualifying)
                .map(|q| pb::PcrQuote {
                    pcrs: q.pcrs.iter().map(|&i| u32::from(i)).collect(),
                    values: q.values,
                    attest: q.attest,
                    signature: q.signature,
                })
                .map_err(|e| format!("TPM2_Quote of PCRs {:?}: {e}", self.pcrs))
        });
        (logged(certify), logged(quote))
    }
}

/// A proof, or `None` with the reason logged.
fn logged<T>(proof: Option<Result<T, String>>) -> Option<T> {
    match proof? {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("cannot make a TPM proof: {e}");
            None
        }
    }
}
