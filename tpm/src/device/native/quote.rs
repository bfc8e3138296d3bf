//! TPM2_PCR_Read and TPM2_Quote over the SHA-256 bank, on the pure-Rust backend
//! (see [`crate::TpmDevice::quote`]).

use super::NativeDevice;
use super::command::{Auth, Command};
use crate::device::{CertifyOutput, DeviceError, KeyBlob, check_pcr_indices, pcr_selection};
use crate::wire::{Reader, Signature, alg, put_tpm2b, put_u16};

const CC_QUOTE: u32 = 0x158;
const CC_PCR_READ: u32 = 0x17e;

fn malformed(command: &str) -> impl Fn(crate::wire::StructureError) -> DeviceError + '_ {
    move |e| DeviceError::Malformed(format!("{command}: {e}"))
}

impl NativeDevice {
    pub(super) fn pcr_read_once(&mut self, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, DeviceError> {
        check_pcr_indices(pcrs)?;
        let name = "TPM2_PCR_Read";
        // One PCR a call: a TPM returns at most eight digests per TPM2_PCR_Read.
        let mut out = Vec::with_capacity(pcrs.len());
        for &i in pcrs {
            let r = self.conn()?.execute(&Command {
                code: CC_PCR_READ,
                name,
                handles: &[],
                auths: &[],
                params: pcr_selection(&[i]),
                response_handles: 0,
            })?;
            let mut rd = Reader::new(&r.params, "TPM2_PCR_Read response");
            rd.u32().map_err(malformed(name))?; // pcrUpdateCounter
            // pcrSelectionOut: what the TPM had; then the digests.
            let banks = rd.u32().map_err(malformed(name))?;
            for _ in 0..banks {
                rd.u16().map_err(malformed(name))?;
                let n = rd.u8().map_err(malformed(name))?;
                for _ in 0..n {
                    rd.u8().map_err(malformed(name))?;
                }
            }
            let count = rd.u32().map_err(malformed(name))?;
            if count != 1 {
                return Err(DeviceError::Unsupported(format!(
                    "{name}: the TPM has no SHA-256 value for PCR {i}"
                )));
            }
            out.push(rd.tpm2b().map_err(malformed(name))?.to_vec());
            rd.finish().map_err(malformed(name))?;
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
        if qualifying_data.len() > 64 {
            return Err(DeviceError::Unsupported(format!(
                "qualifying data: {} bytes (at most 64)",
                qualifying_data.len()
            )));
        }
        let mut params = Vec::new();
        put_tpm2b(&mut params, qualifying_data);
        put_u16(&mut params, alg::NULL); // the AK's own scheme
        params.extend_from_slice(&pcr_selection(pcrs));
        let ak_name = ak.public.name();
        let name = "TPM2_Quote";
        self.with_loaded(ak, |dev, handle| {
            let r = dev.conn()?.execute(&Command {
                code: CC_QUOTE,
                name,
                handles: &[(handle, &ak_name)],
                auths: &[Auth::Password],
                params,
                response_handles: 0,
            })?;
            let mut rd = Reader::new(&r.params, "TPM2_Quote response");
            let attest = rd.tpm2b().map_err(malformed(name))?.to_vec();
            let signature = rd.rest().to_vec();
            Signature::parse(&signature).map_err(malformed(name))?;
            Ok(CertifyOutput { attest, signature })
        })
    }
}
