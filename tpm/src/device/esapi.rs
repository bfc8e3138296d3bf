//! The tss-esapi backend: [`TpmDevice`] over tpm2-tss's ESAPI (libtss2-esys 3.x),
//! through tss-esapi 7.7. Public areas cross the boundary as marshalled TPMT_PUBLIC
//! bytes, so the templates and checks in the rest of the crate are shared with any
//! other backend.
//!
//! Every operation loads what it needs and flushes it before returning, keeping only
//! the SRK resident: a TPM reached without a resource manager (swtpm over TCP, or
//! /dev/tpm0) holds three transient objects, and Certify or ActivateCredential
//! already need the SRK plus two.

use std::fmt;
use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, SessionHandle,
    TpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, EncryptedSecret, HashScheme, HashcheckTicket, IdObject, Private,
    Public, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use zeroize::Zeroizing;

use super::{CertifyOutput, DeviceError, KeyBlob, SigningScheme, TpmDevice, srk_template};
use crate::credential::CredentialBlob;
use crate::ek::{EkKind, EkTemplate, check_ek_public, matches_template};
use crate::structures::{HashAlg, PublicArea, Signature};
use crate::tcti::Tcti;

const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_ST_HASHCHECK: u16 = 0x8024;
const PERSISTENT_FIRST: u32 = 0x8100_0000;
const NV_FIRST: u32 = 0x0100_0000;

/// A TPM reached through tpm2-tss.
pub struct EsapiDevice {
    ctx: Context,
    tcti: Tcti,
    srk: Option<KeyHandle>,
}

impl fmt::Debug for EsapiDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsapiDevice")
            .field("tcti", &self.tcti.to_string())
            .finish_non_exhaustive()
    }
}

fn command(name: &'static str) -> impl Fn(tss_esapi::Error) -> DeviceError {
    move |e| DeviceError::Command {
        command: name,
        message: e.to_string(),
    }
}

fn is_kind(e: &tss_esapi::Error, kind: Tss2ResponseCodeKind) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(kind))
}

fn to_tss_public(area: &PublicArea) -> Result<Public, DeviceError> {
    Public::unmarshall(&area.marshal())
        .map_err(|e| DeviceError::Malformed(format!("public area refused by tss-esapi: {e}")))
}

fn from_tss_public(public: &Public) -> Result<PublicArea, DeviceError> {
    let bytes = public
        .marshall()
        .map_err(|e| DeviceError::Malformed(format!("cannot marshal a public area: {e}")))?;
    Ok(PublicArea::parse(&bytes)?)
}

fn tss_hash(h: HashAlg) -> HashingAlgorithm {
    match h {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// An EK made available for one operation: a transient primary to flush, or a
/// persistent one to close.
struct EkHandle {
    handle: ObjectHandle,
    persistent: bool,
    public: PublicArea,
}

impl EsapiDevice {
    /// Connects to the TPM named by `tcti`.
    pub fn open(tcti: &Tcti) -> Result<Self, DeviceError> {
        let unavailable = |reason: String| DeviceError::Unavailable {
            tcti: tcti.to_string(),
            reason,
        };
        let conf = TctiNameConf::from_str(&tcti.to_string())
            .map_err(|e| unavailable(format!("tss-esapi refused the TCTI: {e}")))?;
        let ctx = Context::new(conf).map_err(|e| {
            unavailable(format!(
                "cannot connect ({e}); is the device present and readable, or the simulator running?"
            ))
        })?;
        Ok(Self {
            ctx,
            tcti: tcti.clone(),
            srk: None,
        })
    }

    /// The SRK's handle, creating it on first use. It stays loaded for the life of
    /// the context (the context flushes it when dropped).
    fn srk(&mut self) -> Result<KeyHandle, DeviceError> {
        if let Some(h) = self.srk {
            return Ok(h);
        }
        let template = to_tss_public(&srk_template())?;
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(command("TPM2_CreatePrimary (SRK)"))?;
        self.srk = Some(result.key_handle);
        Ok(result.key_handle)
    }

    fn load(&mut self, blob: &KeyBlob) -> Result<KeyHandle, DeviceError> {
        let srk = self.srk()?;
        let public = to_tss_public(&blob.public)?;
        let private = Private::try_from(blob.private.clone())
            .map_err(|e| DeviceError::Malformed(format!("private part of the key blob: {e}")))?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, private, public)
            })
            .map_err(|e| {
                // The private part is sealed with a key derived from the SRK, so a
                // blob from another TPM fails its integrity check (or, for a
                // different SRK, its unmarshalling).
                if is_kind(&e, Tss2ResponseCodeKind::Integrity)
                    || is_kind(&e, Tss2ResponseCodeKind::Size)
                    || is_kind(&e, Tss2ResponseCodeKind::Value)
                    || is_kind(&e, Tss2ResponseCodeKind::Binding)
                {
                    DeviceError::ForeignKey(format!("TPM2_Load: {e}"))
                } else {
                    command("TPM2_Load")(e)
                }
            })
    }

    fn flush(&mut self, handle: KeyHandle) {
        // A failed flush leaves a slot taken until the context ends; nothing better
        // can be done about it here, and the operation's own result matters more.
        let _ = self.ctx.flush_context(handle.into());
    }

    /// Runs `f` with `blob` loaded, flushing it afterwards whatever happens.
    fn with_loaded<T>(
        &mut self,
        blob: &KeyBlob,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let handle = self.load(blob)?;
        let result = f(self, handle);
        self.flush(handle);
        result
    }

    fn handles(&mut self, first: u32) -> Result<Vec<u32>, DeviceError> {
        let (data, _more) = self
            .ctx
            .get_capability(CapabilityType::Handles, first, 254)
            .map_err(command("TPM2_GetCapability (handles)"))?;
        match data {
            CapabilityData::Handles(list) => Ok(list.iter().map(|h| u32::from(*h)).collect()),
            _ => Err(DeviceError::Malformed(
                "TPM2_GetCapability returned no handle list".into(),
            )),
        }
    }

    fn persistent_ek(&mut self, kind: EkKind) -> Result<Option<EkHandle>, DeviceError> {
        let present = self.handles(PERSISTENT_FIRST)?;
        for &candidate in kind.persistent_handles() {
            if !present.contains(&candidate) {
                continue;
            }
            let tpm_handle = PersistentTpmHandle::new(candidate)
                .map(TpmHandle::Persistent)
                .map_err(command("persistent handle"))?;
            let mut object = self
                .ctx
                .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
                .map_err(command("Esys_TR_FromTPMPublic"))?;
            let public = self
                .ctx
                .read_public(KeyHandle::from(object))
                .map_err(command("TPM2_ReadPublic"))
                .and_then(|(p, _, _)| from_tss_public(&p));
            match public {
                Ok(public) if kind_template_matches(kind, &public) => {
                    return Ok(Some(EkHandle {
                        handle: object,
                        persistent: true,
                        public,
                    }));
                }
                _ => {
                    let _ = self.ctx.tr_close(&mut object);
                }
            }
        }
        Ok(None)
    }

    fn load_ek(&mut self, kind: EkKind) -> Result<EkHandle, DeviceError> {
        if let Some(ek) = self.persistent_ek(kind)? {
            return Ok(ek);
        }
        let template = to_tss_public(&kind.template())?;
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(|e| DeviceError::NoEk(kind, format!("TPM2_CreatePrimary: {e}")))?;
        let public = from_tss_public(&result.out_public)?;
        Ok(EkHandle {
            handle: result.key_handle.into(),
            persistent: false,
            public,
        })
    }

    fn release_ek(&mut self, mut ek: EkHandle) {
        if ek.persistent {
            let _ = self.ctx.tr_close(&mut ek.handle);
        } else {
            let _ = self.ctx.flush_context(ek.handle);
        }
    }

    /// A policy session satisfying PolicySecret(TPM_RH_ENDORSEMENT), the policy of
    /// the low-range EK templates.
    fn endorsement_policy_session(&mut self, hash: HashAlg) -> Result<AuthSession, DeviceError> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                tss_hash(hash),
            )
            .map_err(command("TPM2_StartAuthSession"))?
            .ok_or_else(|| DeviceError::Malformed("TPM returned no session".into()))?;
        let policy = PolicySession::try_from(session).map_err(command("policy session"));
        let result = policy.and_then(|policy| {
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(command("TPM2_PolicySecret (endorsement)"))
        });
        match result {
            Ok(_) => Ok(session),
            Err(e) => {
                self.flush_session(session);
                Err(e)
            }
        }
    }

    fn flush_session(&mut self, session: AuthSession) {
        if let AuthSession::PolicySession(_) | AuthSession::HmacSession(_) = session {
            let _ = self.ctx.flush_context(SessionHandle::from(session).into());
        }
    }
}

fn kind_template_matches(kind: EkKind, public: &PublicArea) -> bool {
    let template = match kind {
        EkKind::Rsa2048 => EkTemplate::L1,
        EkKind::EccP256 => EkTemplate::L2,
        EkKind::EccP384 => EkTemplate::H3,
    };
    matches_template(template, public)
}

impl TpmDevice for EsapiDevice {
    fn describe(&self) -> String {
        format!("TPM at {} (tss-esapi)", self.tcti)
    }

    fn nv_read(&mut self, index: u32) -> Result<Option<Vec<u8>>, DeviceError> {
        if !self.handles(NV_FIRST)?.contains(&index) {
            return Ok(None);
        }
        let nv = NvIndexTpmHandle::new(index).map_err(command("NV index handle"))?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                tss_esapi::abstraction::nv::read_full(ctx, NvAuth::Owner, nv)
            })
            .map(Some)
            .map_err(command("TPM2_NV_Read"))
    }

    fn ek_public(&mut self, kind: EkKind) -> Result<PublicArea, DeviceError> {
        let ek = self.load_ek(kind)?;
        let public = ek.public.clone();
        self.release_ek(ek);
        Ok(public)
    }

    fn create_key(&mut self, template: &PublicArea) -> Result<KeyBlob, DeviceError> {
        let srk = self.srk()?;
        let public = to_tss_public(template)?;
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(srk, public, None, None, None, None)
            })
            .map_err(command("TPM2_Create"))?;
        Ok(KeyBlob {
            public: from_tss_public(&result.out_public)?,
            private: result.out_private.value().to_vec(),
        })
    }

    fn check_key(&mut self, key: &KeyBlob) -> Result<(), DeviceError> {
        self.with_loaded(key, |_, _| Ok(()))
    }

    fn certify(
        &mut self,
        object: &KeyBlob,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| DeviceError::Unsupported(format!("qualifying data: {e}")))?;
        self.with_loaded(object, |dev, object| {
            dev.with_loaded(signer, |dev, signer| {
                let (attest, signature) = dev
                    .ctx
                    .execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::Password),
                            None,
                        ),
                        |ctx| ctx.certify(object.into(), signer, data, SignatureScheme::Null),
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

    fn activate_credential(
        &mut self,
        object: &KeyBlob,
        ek_kind: EkKind,
        credential: &CredentialBlob,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        let id_object = IdObject::try_from(credential.id_object.clone())
            .map_err(|e| DeviceError::Malformed(format!("credential blob: {e}")))?;
        let secret = EncryptedSecret::try_from(credential.encrypted_secret.clone())
            .map_err(|e| DeviceError::Malformed(format!("credential secret: {e}")))?;
        self.with_loaded(object, |dev, object| {
            let ek = dev.load_ek(ek_kind)?;
            let template =
                check_ek_public(&ek.public).map_err(|e| DeviceError::NoEk(ek_kind, e.to_string()));
            let session = template.and_then(|t| {
                if t.needs_policy_session() {
                    dev.endorsement_policy_session(ek.public.name_alg)
                } else {
                    Ok(AuthSession::Password)
                }
            });
            let result = session.and_then(|session| {
                let key_handle = KeyHandle::from(ek.handle);
                let r = dev
                    .ctx
                    .execute_with_sessions(
                        (Some(AuthSession::Password), Some(session), None),
                        |ctx| ctx.activate_credential(object, key_handle, id_object, secret),
                    )
                    .map_err(command("TPM2_ActivateCredential"));
                dev.flush_session(session);
                r
            });
            dev.release_ek(ek);
            result.map(|digest: Digest| Zeroizing::new(digest.value().to_vec()))
        })
    }

    fn sign(
        &mut self,
        key: &KeyBlob,
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
        // A NULL ticket: the key is unrestricted, so the TPM needs no proof that it
        // hashed the message itself.
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM_ST_HASHCHECK,
            hierarchy: TPM_RH_NULL,
            digest: Default::default(),
        })
        .map_err(|e| DeviceError::Malformed(format!("hashcheck ticket: {e}")))?;
        let signature = self.with_loaded(key, |dev, handle| {
            dev.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.sign(handle, digest, tss_scheme, ticket)
                })
                .map_err(command("TPM2_Sign"))
        })?;
        let bytes = signature
            .marshall()
            .map_err(|e| DeviceError::Malformed(format!("signature: {e}")))?;
        Ok(Signature::parse(&bytes)?)
    }
}
