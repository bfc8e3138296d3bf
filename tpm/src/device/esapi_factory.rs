//! The tss-esapi backend's half of factory provisioning: hierarchy passwords (set
//! on every context with Esys_TR_SetAuth, so password and policy sessions use
//! them) and keys at persistent handles (Esys_TR_FromTPMPublic, closed after each
//! operation; a persistent key is never flushed).

use tss_esapi::Context;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy as TssHierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Data, Digest, HashScheme, HashcheckTicket, SignatureScheme};
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::{
    EsapiDevice, PERSISTENT_FIRST, TPM_RH_NULL, TPM_ST_HASHCHECK, command, from_tss_public,
    is_kind, tss_hash,
};
use crate::device::{CertifyOutput, DeviceError, Hierarchy, HierarchyAuth, KeyBlob, SigningScheme};
use crate::wire::{PublicArea, Signature};

/// Sets the hierarchy passwords on `ctx` (an empty one for a hierarchy not set).
pub(super) fn apply(ctx: &mut Context, auth: &HierarchyAuth) -> Result<(), DeviceError> {
    for (h, tss) in [
        (Hierarchy::Owner, TssHierarchy::Owner),
        (Hierarchy::Endorsement, TssHierarchy::Endorsement),
    ] {
        let value = Auth::try_from(auth.value(h).to_vec())
            .map_err(|e| DeviceError::Unsupported(format!("the {h} hierarchy password: {e}")))?;
        ctx.tr_set_auth(tss.into(), value)
            .map_err(command("Esys_TR_SetAuth"))?;
    }
    Ok(())
}

/// The error for a failed command that authorised `hierarchy`: the hierarchy's own
/// when the TPM refused its password, else the ordinary one.
pub(super) fn refused<'a>(
    auth: &'a HierarchyAuth,
    hierarchy: Hierarchy,
    name: &'static str,
) -> impl Fn(tss_esapi::Error) -> DeviceError + 'a {
    move |e| {
        if is_kind(&e, Tss2ResponseCodeKind::AuthFail) || is_kind(&e, Tss2ResponseCodeKind::BadAuth)
        {
            auth.refused(hierarchy, name)
        } else {
            command(name)(e)
        }
    }
}

impl EsapiDevice {
    pub(super) fn set_hierarchy_auth_once(
        &mut self,
        auth: &HierarchyAuth,
    ) -> Result<(), DeviceError> {
        self.hierarchy = auth.clone();
        if let Some(ctx) = self.ctx.as_mut() {
            apply(ctx, auth)?;
        }
        Ok(())
    }

    /// An ESYS handle for the key at `handle`; `None` when nothing is there.
    fn open_persistent(&mut self, handle: u32) -> Result<Option<ObjectHandle>, DeviceError> {
        if !(PERSISTENT_FIRST..=0x81ff_ffff).contains(&handle) {
            return Err(DeviceError::Unsupported(format!(
                "{handle:#010x} is not a persistent handle (0x81000000 to 0x81ffffff)"
            )));
        }
        if !self.handles(PERSISTENT_FIRST)?.contains(&handle) {
            return Ok(None);
        }
        let tpm_handle = PersistentTpmHandle::new(handle)
            .map(TpmHandle::Persistent)
            .map_err(command("persistent handle"))?;
        self.ctx()?
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
            .map(Some)
            .map_err(command("Esys_TR_FromTPMPublic"))
    }

    fn close(&mut self, mut object: ObjectHandle) {
        if let Some(ctx) = self.ctx.as_mut() {
            let _ = ctx.tr_close(&mut object);
        }
    }

    /// Runs `f` with the key at `handle` open, closing it afterwards.
    fn with_persistent<T>(
        &mut self,
        handle: u32,
        f: impl FnOnce(&mut Self, ObjectHandle) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let object = self.open_persistent(handle)?.ok_or_else(|| {
            DeviceError::Unsupported(format!("no key at persistent handle {handle:#010x}"))
        })?;
        let result = f(self, object);
        self.close(object);
        result
    }

    pub(super) fn persistent_public_once(
        &mut self,
        handle: u32,
    ) -> Result<Option<PublicArea>, DeviceError> {
        let Some(object) = self.open_persistent(handle)? else {
            return Ok(None);
        };
        let public = self
            .ctx()
            .and_then(|ctx| {
                ctx.read_public(KeyHandle::from(object))
                    .map_err(command("TPM2_ReadPublic"))
            })
            .and_then(|(p, _, _)| from_tss_public(&p));
        self.close(object);
        public.map(Some)
    }

    pub(super) fn certify_persistent_once(
        &mut self,
        handle: u32,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| DeviceError::Unsupported(format!("qualifying data: {e}")))?;
        self.with_persistent(handle, |dev, object| {
            dev.with_loaded(signer, |dev, signer| {
                let (attest, signature) = dev
                    .ctx()?
                    .execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::Password),
                            None,
                        ),
                        |ctx| ctx.certify(object, signer, data, SignatureScheme::Null),
                    )
                    .map_err(command("TPM2_Certify"))?;
                Ok(CertifyOutput {
                    attest: attest
                        .marshall()
                        .map_err(|e| DeviceError::Malformed(format!("attestation: {e}")))?,
                    signature: signature
                        .marshall()
                        .map_err(|e| DeviceError::Malformed(format!("signature: {e}")))?,
                })
            })
        })
    }

    pub(super) fn sign_persistent_once(
        &mut self,
        handle: u32,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        let hash_scheme = HashScheme::new(tss_hash(scheme.hash()));
        let tss_scheme = match scheme {
            SigningScheme::RsaSsa(_) => SignatureScheme::RsaSsa { hash_scheme },
            SigningScheme::RsaPss(_) => SignatureScheme::RsaPss { hash_scheme },
            SigningScheme::Ecdsa(_) => SignatureScheme::EcDsa { hash_scheme },
        };
        let digest = Digest::try_from(digest.to_vec())
            .map_err(|e| DeviceError::Unsupported(format!("digest: {e}")))?;
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM_ST_HASHCHECK,
            hierarchy: TPM_RH_NULL,
            digest: Default::default(),
        })
        .map_err(|e| DeviceError::Malformed(format!("hashcheck ticket: {e}")))?;
        let signature = self.with_persistent(handle, |dev, object| {
            dev.ctx()?
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.sign(KeyHandle::from(object), digest, tss_scheme, ticket)
                })
                .map_err(command("TPM2_Sign"))
        })?;
        let bytes = signature
            .marshall()
            .map_err(|e| DeviceError::Malformed(format!("signature: {e}")))?;
        Ok(Signature::parse(&bytes)?)
    }
}

impl EsapiDevice {
    pub(super) fn ecdh_zgen_once(
        &mut self,
        key: &KeyBlob,
        point: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, DeviceError> {
        use tss_esapi::structures::{EccParameter, EccPoint};
        let (x, y) = crate::device::sealing::split_point(point)?;
        let bad = |e: tss_esapi::Error| DeviceError::Unsupported(format!("ECDH point: {e}"));
        let in_point = EccPoint::new(
            EccParameter::try_from(x.to_vec()).map_err(bad)?,
            EccParameter::try_from(y.to_vec()).map_err(bad)?,
        );
        self.with_loaded(key, |dev, handle| {
            let out = dev
                .ctx()?
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.ecdh_z_gen(handle, in_point)
                })
                .map_err(command("TPM2_ECDH_ZGen"))?;
            Ok(zeroize::Zeroizing::new(out.x().value().to_vec()))
        })
    }
}
