//! The tss-esapi backend: [`TpmDevice`] over tpm2-tss's ESAPI (libtss2-esys 3.x),
//! through tss-esapi 7.7. Public areas cross the boundary as marshalled TPMT_PUBLIC
//! bytes, so the templates and checks in the rest of the crate are shared with any
//! other backend.
//!
//! Every operation loads what it needs and flushes it before returning, keeping only
//! the SRK resident: a TPM reached without a resource manager (swtpm over TCP, or
//! /dev/tpm0) holds three transient objects, and Certify or ActivateCredential
//! already need the SRK plus two.
//!
//! The conversation with the TPM can break under a running agent: swtpm or a
//! resource manager restarts, the device is reset. tpm2-tss then answers every later
//! call with "Esys called in bad sequence", or the TPM no longer knows the SRK handle
//! the context holds. Every operation therefore runs through `EsapiDevice::recovering`:
//! a transport error (TCTI or resource-manager layer, a broken ESAPI sequence) or a
//! sign that the TPM forgot its loaded objects drops the context, opens a new one
//! (the SRK is made again from its template, so every key blob loads as before) and
//! runs the operation once more. When that fails too the TPM is away: the error says
//! so, and the next operation tries to reconnect first.

mod import;
mod quote;

use std::fmt;
use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, SessionHandle,
    TpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{Hierarchy as TssHierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, EncryptedSecret, HashScheme, HashcheckTicket, IdObject, Private,
    Public, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use zeroize::Zeroizing;

use super::{
    CertifyOutput, DeviceError, Hierarchy, HierarchyAuth, KeyBlob, SigningScheme, TpmDevice,
    srk_template,
};
use crate::device::tcti::Tcti;
use crate::verifier::credential::CredentialBlob;
use crate::verifier::ek::{EkKind, EkTemplate, check_ek_public, matches_template};
use crate::wire::{HashAlg, PublicArea, Signature};

const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_ST_HASHCHECK: u16 = 0x8024;
const PERSISTENT_FIRST: u32 = 0x8100_0000;
const NV_FIRST: u32 = 0x0100_0000;

#[path = "esapi_factory.rs"]
mod factory;

/// A TPM reached through tpm2-tss.
pub struct EsapiDevice {
    /// `None` after the conversation broke and reconnecting failed: the next
    /// operation connects again.
    ctx: Option<Context>,
    tcti: Tcti,
    srk: Option<KeyHandle>,
    /// Set on every context made.
    hierarchy: HierarchyAuth,
}

impl fmt::Debug for EsapiDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsapiDevice")
            .field("tcti", &self.tcti.to_string())
            .finish_non_exhaustive()
    }
}

fn command(name: &'static str) -> impl Fn(tss_esapi::Error) -> DeviceError {
    move |e| match fault(&e) {
        Some(reason) => DeviceError::Interrupted {
            command: name,
            reason,
        },
        None => DeviceError::Command {
            command: name,
            message: e.to_string(),
        },
    }
}

/// The raw TSS2_RC of an error. tss-esapi keeps the number private and prints it
/// only through the response code's `Display` ("Response code value: 0x...").
fn raw_code(e: &tss_esapi::Error) -> Option<u32> {
    let tss_esapi::Error::Tss2Error(rc) = e else {
        return None;
    };
    let text = match rc {
        Tss2ResponseCode::Success => return None,
        Tss2ResponseCode::FormatZero(c) => c.to_string(),
        Tss2ResponseCode::FormatOne(c) => c.to_string(),
    };
    parse_code(&text)
}

fn parse_code(text: &str) -> Option<u32> {
    let (_, hex) = text.rsplit_once("0x")?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// Why an error means the conversation with the TPM broke (and reopening the
/// context may mend it), or `None` for an ordinary command failure.
fn fault(e: &tss_esapi::Error) -> Option<String> {
    let rc = raw_code(e)?;
    classify(rc).map(|what| format!("{what} ({rc:#x})"))
}

const LAYER_TPM: u32 = 0;
const LAYER_ESAPI: u32 = 7;
const LAYER_SYS: u32 = 8;
const LAYER_TCTI: u32 = 10;
const LAYER_RESMGR: u32 = 11;
const LAYER_RESMGR_TPM: u32 = 12;

/// See [`fault`]; `rc` is a TSS2_RC (layer in bits 16-23).
fn classify(rc: u32) -> Option<&'static str> {
    let layer = (rc >> 16) & 0xff;
    let code = rc & 0xffff;
    match layer {
        LAYER_TCTI => Some("the connection to the TPM failed"),
        LAYER_RESMGR => Some("the TPM resource manager failed"),
        LAYER_ESAPI | LAYER_SYS => match code {
            // BAD_SEQUENCE: an earlier command broke off half-way (what tpm2-tss
            // answers for ever after a lost connection); NO_CONNECTION, TRY_AGAIN,
            // IO_ERROR, MALFORMED_RESPONSE, INSUFFICIENT_RESPONSE,
            // BAD_TCTI_STRUCTURE: the transport below failed.
            7 => Some("the TPM software stack is out of step after a failed command"),
            8 | 9 | 10 | 17 | 19 | 22 => Some("the connection to the TPM failed"),
            _ => None,
        },
        LAYER_TPM | LAYER_RESMGR_TPM => {
            let format_one = code & 0x80 != 0;
            if format_one {
                // TPM_RC_HANDLE for a handle (not a parameter): a handle this
                // context made is unknown to the TPM.
                (code & 0x3f == 0x0b && code & 0x40 == 0).then_some(
                    "the TPM no longer knows an object this context loaded (it restarted?)",
                )
            } else {
                match code {
                    // TPM_RC_REFERENCE_H0..H6, _S0..S6: a handle or session that is
                    // not loaded.
                    0x910..=0x916 | 0x918..=0x91e => Some(
                        "the TPM no longer knows an object this context loaded (it restarted?)",
                    ),
                    // TPM_RC_INITIALIZE, TPM_RC_REBOOT: the TPM was reset.
                    0x100 | 0x130 => Some("the TPM was reset"),
                    _ => None,
                }
            }
        }
        _ => None,
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

fn connect(tcti: &Tcti) -> Result<Context, DeviceError> {
    let unavailable = |reason: String| DeviceError::Unavailable {
        tcti: tcti.to_string(),
        reason,
    };
    let conf = TctiNameConf::from_str(&tcti.to_string())
        .map_err(|e| unavailable(format!("tss-esapi refused the TCTI: {e}")))?;
    Context::new(conf).map_err(|e| {
        let why = fault(&e).unwrap_or_else(|| e.to_string());
        unavailable(format!(
            "cannot connect ({why}); is the device present and readable, or the simulator running?"
        ))
    })
}

impl EsapiDevice {
    /// Connects to the TPM named by `tcti`.
    pub fn open(tcti: &Tcti) -> Result<Self, DeviceError> {
        Ok(Self {
            ctx: Some(connect(tcti)?),
            tcti: tcti.clone(),
            srk: None,
            hierarchy: HierarchyAuth::default(),
        })
    }

    /// The context, connecting first if the last one was dropped.
    fn ctx(&mut self) -> Result<&mut Context, DeviceError> {
        if self.ctx.is_none() {
            self.srk = None;
            let mut ctx = connect(&self.tcti)?;
            factory::apply(&mut ctx, &self.hierarchy)?;
            self.ctx = Some(ctx);
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| DeviceError::Malformed("no TPM context".into()))
    }

    /// Forgets the context and everything loaded through it. Dropped before a new
    /// one is opened: a TPM device node admits one open file at a time.
    fn drop_context(&mut self) {
        self.srk = None;
        self.ctx = None;
    }

    /// Runs `op`; when the conversation with the TPM broke, reconnects and runs it
    /// once more (see the module documentation).
    fn recovering<T>(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        match op(self) {
            Err(DeviceError::Interrupted { .. }) => {
                self.drop_context();
                self.ctx()?;
                let again = op(self);
                if let Err(DeviceError::Interrupted { .. }) = &again {
                    self.drop_context();
                }
                again
            }
            other => other,
        }
    }

    /// The SRK's handle, creating it on first use. It stays loaded for the life of
    /// the context (the context flushes it when dropped).
    fn srk(&mut self) -> Result<KeyHandle, DeviceError> {
        if let Some(h) = self.srk {
            return Ok(h);
        }
        let template = to_tss_public(&srk_template())?;
        let result = self
            .ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(TssHierarchy::Owner, template, None, None, None, None)
            });
        let result = result.map_err(factory::refused(
            &self.hierarchy,
            Hierarchy::Owner,
            "TPM2_CreatePrimary (SRK)",
        ))?;
        self.srk = Some(result.key_handle);
        Ok(result.key_handle)
    }

    fn load(&mut self, blob: &KeyBlob) -> Result<KeyHandle, DeviceError> {
        let srk = self.srk()?;
        let public = to_tss_public(&blob.public)?;
        let private = Private::try_from(blob.private.clone())
            .map_err(|e| DeviceError::Malformed(format!("private part of the key blob: {e}")))?;
        self.ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, private, public)
            })
            .map_err(|e| {
                if let Some(reason) = fault(&e) {
                    return DeviceError::Interrupted {
                        command: "TPM2_Load",
                        reason,
                    };
                }
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
        if let Some(ctx) = self.ctx.as_mut() {
            let _ = ctx.flush_context(handle.into());
        }
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
            .ctx()?
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
                .ctx()?
                .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
                .map_err(command("Esys_TR_FromTPMPublic"))?;
            let public = self
                .ctx()?
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
                    if let Some(ctx) = self.ctx.as_mut() {
                        let _ = ctx.tr_close(&mut object);
                    }
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
            .ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(TssHierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(|e| match fault(&e) {
                Some(reason) => DeviceError::Interrupted {
                    command: "TPM2_CreatePrimary (EK)",
                    reason,
                },
                None => match factory::refused(
                    &self.hierarchy,
                    Hierarchy::Endorsement,
                    "TPM2_CreatePrimary (EK)",
                )(e)
                {
                    e @ DeviceError::HierarchyAuth { .. } => e,
                    e => DeviceError::NoEk(kind, format!("TPM2_CreatePrimary: {e}")),
                },
            })?;
        let public = from_tss_public(&result.out_public)?;
        Ok(EkHandle {
            handle: result.key_handle.into(),
            persistent: false,
            public,
        })
    }

    fn release_ek(&mut self, mut ek: EkHandle) {
        let Some(ctx) = self.ctx.as_mut() else {
            return;
        };
        if ek.persistent {
            let _ = ctx.tr_close(&mut ek.handle);
        } else {
            let _ = ctx.flush_context(ek.handle);
        }
    }

    /// A policy session satisfying PolicySecret(TPM_RH_ENDORSEMENT), the policy of
    /// the low-range EK templates.
    fn endorsement_policy_session(&mut self, hash: HashAlg) -> Result<AuthSession, DeviceError> {
        let session = self
            .ctx()?
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
            let r = self
                .ctx()?
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                });
            r.map_err(factory::refused(
                &self.hierarchy,
                Hierarchy::Endorsement,
                "TPM2_PolicySecret (endorsement)",
            ))
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
        if let AuthSession::PolicySession(_) | AuthSession::HmacSession(_) = session
            && let Some(ctx) = self.ctx.as_mut()
        {
            let _ = ctx.flush_context(SessionHandle::from(session).into());
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

/// The operations, each run once; [`TpmDevice`] runs them through
/// [`EsapiDevice::recovering`].
impl EsapiDevice {
    fn nv_read_once(&mut self, index: u32) -> Result<Option<Vec<u8>>, DeviceError> {
        if !self.handles(NV_FIRST)?.contains(&index) {
            return Ok(None);
        }
        let nv = NvIndexTpmHandle::new(index).map_err(command("NV index handle"))?;
        let r = self
            .ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                tss_esapi::abstraction::nv::read_full(ctx, NvAuth::Owner, nv)
            });
        r.map(Some).map_err(factory::refused(
            &self.hierarchy,
            Hierarchy::Owner,
            "TPM2_NV_Read",
        ))
    }

    fn ek_public_once(&mut self, kind: EkKind) -> Result<PublicArea, DeviceError> {
        let ek = self.load_ek(kind)?;
        let public = ek.public.clone();
        self.release_ek(ek);
        Ok(public)
    }

    fn create_key_once(
        &mut self,
        template: &PublicArea,
        auth: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        let srk = self.srk()?;
        let public = to_tss_public(template)?;
        let auth = tss_auth(auth)?;
        let result = self
            .ctx()?
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create(srk, public, auth, None, None, None)
            })
            .map_err(command("TPM2_Create"))?;
        Ok(KeyBlob {
            public: from_tss_public(&result.out_public)?,
            private: result.out_private.value().to_vec(),
        })
    }

    fn check_key_once(&mut self, key: &KeyBlob) -> Result<(), DeviceError> {
        self.with_loaded(key, |_, _| Ok(()))
    }

    fn certify_once(
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
                    .ctx()?
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

    fn activate_credential_once(
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
                    .ctx()?
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

    fn sign_once(
        &mut self,
        key: &KeyBlob,
        auth: &[u8],
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        let auth = tss_auth(auth)?;
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
            if let Some(auth) = auth {
                dev.ctx()?
                    .tr_set_auth(handle.into(), auth)
                    .map_err(command("Esys_TR_SetAuth"))?;
            }
            dev.ctx()?
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

impl TpmDevice for EsapiDevice {
    fn describe(&self) -> String {
        format!("TPM at {} (tss-esapi)", self.tcti)
    }

    fn nv_read(&mut self, index: u32) -> Result<Option<Vec<u8>>, DeviceError> {
        self.recovering(|dev| dev.nv_read_once(index))
    }

    fn ek_public(&mut self, kind: EkKind) -> Result<PublicArea, DeviceError> {
        self.recovering(|dev| dev.ek_public_once(kind))
    }

    fn import_key(
        &mut self,
        public: &PublicArea,
        sensitive: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        self.recovering(|dev| dev.import_key_once(public, sensitive))
    }

    fn pcr_read(&mut self, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, DeviceError> {
        self.recovering(|dev| dev.pcr_read_once(pcrs))
    }

    fn quote(
        &mut self,
        ak: &KeyBlob,
        pcrs: &[u8],
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        self.recovering(|dev| dev.quote_once(ak, pcrs, qualifying_data))
    }

    fn create_key(&mut self, template: &PublicArea) -> Result<KeyBlob, DeviceError> {
        self.recovering(|dev| dev.create_key_once(template, &[]))
    }

    fn check_key(&mut self, key: &KeyBlob) -> Result<(), DeviceError> {
        self.recovering(|dev| dev.check_key_once(key))
    }

    fn certify(
        &mut self,
        object: &KeyBlob,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        self.recovering(|dev| dev.certify_once(object, signer, qualifying_data))
    }

    fn activate_credential(
        &mut self,
        object: &KeyBlob,
        ek_kind: EkKind,
        credential: &CredentialBlob,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        self.recovering(|dev| dev.activate_credential_once(object, ek_kind, credential))
    }

    fn sign(
        &mut self,
        key: &KeyBlob,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        self.recovering(|dev| dev.sign_once(key, &[], digest, scheme))
    }

    fn set_hierarchy_auth(&mut self, auth: &HierarchyAuth) -> Result<(), DeviceError> {
        self.set_hierarchy_auth_once(auth)
    }

    fn persistent_public(&mut self, handle: u32) -> Result<Option<PublicArea>, DeviceError> {
        self.recovering(|dev| dev.persistent_public_once(handle))
    }

    fn ecdh_zgen(
        &mut self,
        key: &KeyBlob,
        point: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        self.recovering(|dev| dev.ecdh_zgen_once(key, point))
    }

    fn certify_persistent(
        &mut self,
        handle: u32,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        self.recovering(|dev| dev.certify_persistent_once(handle, signer, qualifying_data))
    }

    fn sign_persistent(
        &mut self,
        handle: u32,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        self.recovering(|dev| dev.sign_persistent_once(handle, digest, scheme))
    }

    fn create_key_with_auth(
        &mut self,
        template: &PublicArea,
        auth: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        crate::device::check_auth_value(auth)?;
        self.recovering(|dev| dev.create_key_once(template, auth))
    }

    fn sign_with_auth(
        &mut self,
        key: &KeyBlob,
        auth: &[u8],
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        self.recovering(|dev| dev.sign_once(key, auth, digest, scheme))
    }
}

/// An authorization value as tss-esapi takes it; `None` for the empty one.
fn tss_auth(auth: &[u8]) -> Result<Option<tss_esapi::structures::Auth>, DeviceError> {
    if auth.is_empty() {
        return Ok(None);
    }
    tss_esapi::structures::Auth::try_from(auth.to_vec())
        .map(Some)
        .map_err(|e| DeviceError::Unsupported(format!("authorization value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_parse_from_their_display() {
        assert_eq!(parse_code("Response code value: 0x70007"), Some(0x70007));
        assert_eq!(parse_code("Response code value: 0xa000a"), Some(0xa000a));
        assert_eq!(parse_code("response code not recognized"), None);
    }

    #[test]
    fn transport_and_reset_faults_are_told_from_command_failures() {
        // What tpm2-tss answered in the tests when swtpm went away and came back.
        assert!(classify(0x000a_000a).is_some(), "TCTI IO error");
        assert!(classify(0x0007_0007).is_some(), "ESAPI bad sequence");
        assert!(classify(0x0000_0910).is_some(), "SRK handle not loaded");
        assert!(classify(0x0000_018b).is_some(), "TPM_RC_HANDLE, handle 1");
        assert!(classify(0x0000_0100).is_some(), "TPM_RC_INITIALIZE");
        assert!(classify(0x000b_0001).is_some(), "resource manager");
        assert!(classify(0x000c_0910).is_some(), "via the resource manager");
        // Ordinary failures are not retried.
        assert!(
            classify(0x0000_009f).is_none(),
            "TPM_RC_INTEGRITY (a foreign blob)"
        );
        assert!(classify(0x0000_01c4).is_none(), "TPM_RC_VALUE, parameter 1");
        assert!(
            classify(0x0000_01cb).is_none(),
            "TPM_RC_HANDLE of a parameter"
        );
        assert!(classify(0x0000_0101).is_none(), "TPM_RC_FAILURE");
        assert!(classify(0x0007_000b).is_none(), "ESAPI bad value");
        assert!(classify(0x0009_0003).is_none(), "marshalling");
    }
}
