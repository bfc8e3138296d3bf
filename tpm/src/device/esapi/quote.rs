//! TPM2_PCR_Read and TPM2_Quote over the SHA-256 bank, on the tss-esapi backend
//! (see [`crate::TpmDevice::quote`]).

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Data, PcrSelectionList, PcrSlot, SignatureScheme};
use tss_esapi::traits::Marshall;

use super::{EsapiDevice, command};
use crate::device::{CertifyOutput, DeviceError, KeyBlob, check_pcr_indices};

fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, DeviceError> {
    let slots = pcrs
        .iter()
        .map(|&i| {
            PcrSlot::try_from(1u32 << i)
                .map_err(|e| DeviceError::Unsupported(format!("PCR {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|e| DeviceError::Unsupported(format!("PCR selection: {e}")))
}

impl EsapiDevice {
    pub(super) fn pcr_read_once(&mut self, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, DeviceError> {
        check_pcr_indices(pcrs)?;
        // One PCR a call: a TPM returns at most eight digests per TPM2_PCR_Read.
        let mut out = Vec::with_capacity(pcrs.len());
        for &i in pcrs {
            let select = selection(&[i])?;
            let (_, _, digests) = self
                .ctx()?
                .execute_without_session(|ctx| ctx.pcr_read(select))
                .map_err(command("TPM2_PCR_Read"))?;
            let value = digests.value().first().ok_or_else(|| {
                DeviceError::Unsupported(format!(
                    "TPM2_PCR_Read: the TPM has no SHA-256 value for PCR {i}"
                ))
            })?;
            out.push(value.value().to_vec());
        }
        Ok(out)
    }

    pub(super) fn quote_once(
        &mut self,
        ak: &KeyBlob,
        pcrs: &[u8],
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        check_pcr_indices(pcrs)?;
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| DeviceError::Unsupported(format!("qualifying data: {e}")))?;
        let select = selection(pcrs)?;
        self.with_loaded(ak, |dev, ak| {
            let (attest, signature) = dev
                .ctx()?
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.quote(ak, data, SignatureScheme::Null, select)
                })
                .map_err(command("TPM2_Quote"))?;
            Ok(CertifyOutput {
                attest: attest
                    .marshall()
                    .map_err(|e| DeviceError::Malformed(format!("quote: {e}")))?,
                signature: signature
                    .marshall()
                    .map_err(|e| DeviceError::Malformed(format!("signature: {e}")))?,
            })
        })
    }
}
