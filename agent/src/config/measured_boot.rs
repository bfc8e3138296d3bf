//! `[measured_boot]` of the agent configuration.

use serde::Deserialize;

/// `[measured_boot]`: with a TPM node attestor, the agent sends a TPM2_Quote by its
/// AK over these PCRs of the SHA-256 bank, with their values, at attestation and at
/// every renewal (off when empty, the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredBootConfig {
    /// PCR indices, 0 to 23.
    #[serde(default)]
    pub pcrs: Vec<u8>,
}

impl MeasuredBootConfig {
    /// The PCRs, ascending and each once.
    pub fn sorted(&self) -> Vec<u8> {
        let mut p = self.pcrs.clone();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Checks the PCR list; `tpm_attestor`: whether a TPM node attestor is
    /// configured (the quote is signed by its AK).
    pub fn validate(&self, tpm_attestor: bool) -> Result<(), String> {
        if self.pcrs.is_empty() {
            return Ok(());
        }
        if let Err(e) = tessera_tpm::device::check_pcr_indices(&self.sorted()) {
            return Err(format!("measured_boot.pcrs: {e}"));
        }
        if !tpm_attestor {
            return Err(
                "measured_boot.pcrs needs a TPM node attestor ([node_attestor.tpm_devid] \
                 or [node_attestor.tpm_ek]): the quote is signed by its AK"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_lists_are_checked() {
        let c = |pcrs: &[u8]| MeasuredBootConfig {
            pcrs: pcrs.to_vec(),
        };
        assert_eq!(c(&[7, 0, 7]).sorted(), vec![0, 7]);
        c(&[]).validate(false).unwrap();
        c(&[0, 7]).validate(true).unwrap();
        let e = c(&[24]).validate(true).unwrap_err();
        assert!(e.contains("PCR 24: indices go from 0 to 23"), "{e}");
        let e = c(&[7]).validate(false).unwrap_err();
        assert!(e.contains("needs a TPM node attestor"), "{e}");
    }
}
