//! TPM2_Import of a key made outside the TPM, on the tss-esapi backend (see
//! [`crate::TpmDevice::import_key`]).

use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{EncryptedSecret, Private, SymmetricDefinitionObject};

use super::{EsapiDevice, command, to_tss_public};
use crate::device::{DeviceError, KeyBlob};
use crate::wire::{PublicArea, put_tpm2b};

impl EsapiDevice {
    pub(super) fn import_key_once(
        &mut self,
        public: &PublicArea,
        sensitive: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        let srk = self.srk()?;
        let tss_public = to_tss_public(public)?;
        // No inner and no outer wrapper: the duplicate is the TPM2B_SENSITIVE.
        let mut duplicate = Vec::new();
        put_tpm2b(&mut duplicate, sensitive);
        let duplicate = Private::try_from(duplicate)
            .map_err(|e| DeviceError::Unsupported(format!("sensitive area: {e}")))?;
        let seed = EncryptedSecret::try_from(Vec::new())
            .map_err(|e| DeviceError::Malformed(format!("empty seed: {e}")))?;
        let private = self
            .ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.import(
                    srk.into(),
                    None,
                    tss_public,
                    duplicate,
                    seed,
                    SymmetricDefinitionObject::Null,
                )
            })
            .map_err(command("TPM2_Import"))?;
        Ok(KeyBlob {
            public: public.clone(),
            private: private.value().to_vec(),
        })
    }
}
