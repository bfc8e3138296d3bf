//! TPM2_Import of a key made outside the TPM, on the pure-Rust backend (see
//! [`crate::TpmDevice::import_key`]).

use super::NativeDevice;
use super::command::{Auth, Command, code_error};
use crate::device::{DeviceError, KeyBlob};
use crate::wire::{PublicArea, Reader, alg, put_tpm2b, put_u16};

const CC_IMPORT: u32 = 0x156;

impl NativeDevice {
    pub(super) fn import_key_once(
        &mut self,
        public: &PublicArea,
        sensitive: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        self.session()?;
        let srk = self.srk()?;
        // No inner and no outer wrapper: the duplicate is the TPM2B_SENSITIVE.
        let mut duplicate = Vec::new();
        put_tpm2b(&mut duplicate, sensitive);
        let mut params = Vec::new();
        put_tpm2b(&mut params, &[]); // encryptionKey: no inner wrapper
        params.extend_from_slice(&public.marshal_tpm2b());
        put_tpm2b(&mut params, &duplicate);
        put_tpm2b(&mut params, &[]); // inSymSeed: no outer wrapper
        put_u16(&mut params, alg::NULL); // symmetricAlg
        let name = "TPM2_Import";
        let r = self
            .conn()?
            .run(&Command {
                code: CC_IMPORT,
                name,
                handles: &[(srk.handle, &srk.name)],
                auths: &[Auth::HMAC],
                params,
                response_handles: 0,
            })?
            .map_err(|code| code_error(name, code))?;
        let mut rd = Reader::new(&r.params, "TPM2_Import response");
        let private = rd
            .tpm2b()
            .map_err(|e| DeviceError::Malformed(format!("{name}: {e}")))?
            .to_vec();
        Ok(KeyBlob {
            public: public.clone(),
            private,
        })
    }
}
