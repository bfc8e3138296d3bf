//! The native backend's half of factory provisioning: hierarchy password failures
//! told apart from other errors, and keys at persistent handles, authorised
//! (empty auth value) through the salted session like the keys under the SRK.

use super::NativeDevice;
use super::command::{Auth, Command, code_error};
use super::ops::{CC_SIGN, check_qualifying_data, parse_err, sign_params};
use super::rc;
use crate::device::{CertifyOutput, DeviceError, Hierarchy, KeyBlob, SigningScheme};
use crate::wire::{PublicArea, Reader, Signature, put_tpm2b};

fn check_persistent(handle: u32) -> Result<(), DeviceError> {
    if (0x8100_0000..=0x81ff_ffff).contains(&handle) {
        Ok(())
    } else {
        Err(DeviceError::Unsupported(format!(
            "{handle:#010x} is not a persistent handle (0x81000000 to 0x81ffffff)"
        )))
    }
}

impl NativeDevice {
    /// The error for response `code` of a command that authorised `hierarchy`.
    pub(super) fn hierarchy_error(
        &self,
        hierarchy: Hierarchy,
        command: &'static str,
        code: u32,
    ) -> DeviceError {
        if matches!(rc::format_one_code(code), Some(0x22 | 0x0e)) && code & 0x800 != 0 {
            return self.hierarchy.refused(hierarchy, command);
        }
        code_error(command, code)
    }

    pub(super) fn persistent_public_once(
        &mut self,
        handle: u32,
    ) -> Result<Option<PublicArea>, DeviceError> {
        check_persistent(handle)?;
        self.read_public(handle)
    }

    /// The name of the key at `handle`, or an error saying nothing is there.
    fn persistent_name(&mut self, handle: u32) -> Result<Vec<u8>, DeviceError> {
        check_persistent(handle)?;
        self.read_public(handle)?.map(|p| p.name()).ok_or_else(|| {
            DeviceError::Unsupported(format!("no key at persistent handle {handle:#010x}"))
        })
    }

    pub(super) fn certify_persistent_once(
        &mut self,
        handle: u32,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        check_qualifying_data(qualifying_data)?;
        let object_name = self.persistent_name(handle)?;
        let signer_name = signer.public.name();
        self.with_loaded(signer, |dev, signer| {
            dev.certify_handles(
                (handle, &object_name),
                (signer, &signer_name),
                qualifying_data,
            )
        })
    }

    pub(super) fn sign_persistent_once(
        &mut self,
        handle: u32,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        let params = sign_params(digest, scheme)?;
        let key_name = self.persistent_name(handle)?;
        self.session()?;
        let name = "TPM2_Sign";
        let r = self.conn()?.execute(&Command {
            code: CC_SIGN,
            name,
            handles: &[(handle, &key_name)],
            auths: &[Auth::HMAC],
            params,
            response_handles: 0,
        })?;
        Signature::parse(&r.params).map_err(parse_err(name))
    }
}

impl NativeDevice {
    /// TPM2_ECDH_ZGen, the result encrypted on its way back by the salted session.
    pub(super) fn ecdh_zgen_once(
        &mut self,
        key: &KeyBlob,
        point: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, DeviceError> {
        let (x, y) = crate::device::sealing::split_point(point)?;
        let mut inner = Vec::new();
        put_tpm2b(&mut inner, x);
        put_tpm2b(&mut inner, y);
        let mut params = Vec::new();
        put_tpm2b(&mut params, &inner);
        let key_name = key.public.name();
        let name = "TPM2_ECDH_ZGen";
        self.with_loaded(key, |dev, handle| {
            let r = dev.conn()?.execute(&Command {
                code: CC_ECDH_ZGEN,
                name,
                handles: &[(handle, &key_name)],
                auths: &[Auth::Salted {
                    decrypt: false,
                    encrypt: true,
                }],
                params,
                response_handles: 0,
            })?;
            let z = (|| {
                let mut rd = Reader::new(&r.params, "TPM2_ECDH_ZGen response");
                let mut p = Reader::new(rd.tpm2b()?, "TPMS_ECC_POINT");
                let x = p.tpm2b()?.to_vec();
                let _y = p.tpm2b()?;
                p.finish()?;
                rd.finish()?;
                Ok(x)
            })()
            .map_err(parse_err(name))?;
            Ok(zeroize::Zeroizing::new(z))
        })
    }
}

/// TPM_CC_ECDH_ZGen.
const CC_ECDH_ZGEN: u32 = 0x154;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_persistent_handles_are_taken() {
        assert!(check_persistent(0x8102_0000).is_ok());
        for h in [0x8000_0001, 0x0100_0000, 0x4000_0001, 0x8200_0000] {
            let e = check_persistent(h).unwrap_err().to_string();
            assert!(e.contains("not a persistent handle"), "{e}");
        }
    }
}
