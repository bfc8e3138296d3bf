//! The operations of [`NativeDevice`], each run once ([`TpmDevice`] runs them
//! through `recovering`), and the commands they are made of.

use zeroize::Zeroizing;

use super::command::{Auth, Command, Conn, Response, code_error, handle_name};
use super::rc;
use super::session::{self, Session};
use super::{NativeDevice, Srk, srk_template};
use crate::device::{CertifyOutput, DeviceError, Hierarchy, KeyBlob, SigningScheme};
use crate::verifier::credential::CredentialBlob;
use crate::verifier::ek::{EkKind, EkTemplate, check_ek_public, matches_template};
use crate::wire::{HashAlg, PublicArea, Reader, Signature, alg, put_tpm2b, put_u16, put_u32};

const RH_OWNER: u32 = 0x4000_0001;
pub(super) const RH_NULL: u32 = 0x4000_0007;
const RH_ENDORSEMENT: u32 = 0x4000_000b;
pub(super) const ST_HASHCHECK: u16 = 0x8024;

const CC_NV_READ: u32 = 0x14e;
const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
pub(super) const CC_CERTIFY: u32 = 0x148;
const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_STARTUP: u32 = 0x144;
const CC_POLICY_SECRET: u32 = 0x151;
const CC_CREATE: u32 = 0x153;
const CC_LOAD: u32 = 0x157;
pub(super) const CC_SIGN: u32 = 0x15d;
const CC_FLUSH_CONTEXT: u32 = 0x165;
const CC_NV_READ_PUBLIC: u32 = 0x169;
const CC_READ_PUBLIC: u32 = 0x173;
const CC_START_AUTH_SESSION: u32 = 0x176;
const CC_GET_CAPABILITY: u32 = 0x17a;

const SE_HMAC: u8 = 0x00;
const SE_POLICY: u8 = 0x01;
const CAP_TPM_PROPERTIES: u32 = 6;
const PT_NV_BUFFER_MAX: u32 = 0x100 + 44;
/// What NV_Read is asked for at most when the TPM does not say (every TPM takes it).
const NV_CHUNK_FALLBACK: usize = 512;

/// TPM2_Startup(CLEAR); a TPM already started answers TPM_RC_INITIALIZE, which is
/// what was wanted.
pub(super) fn startup(conn: &mut Conn) -> Result<(), DeviceError> {
    let mut params = Vec::new();
    put_u16(&mut params, 0);
    match conn.run(&Command {
        code: CC_STARTUP,
        name: "TPM2_Startup",
        handles: &[],
        auths: &[],
        params,
        response_handles: 0,
    })? {
        Ok(_) => Ok(()),
        Err(code) if code == rc::INITIALIZE => Ok(()),
        Err(code) => Err(code_error("TPM2_Startup", code)),
    }
}

/// TPM2_FlushContext, best effort: the operation's result matters more. When the
/// connection failed, the handle is kept to flush later (on the next session, or
/// on the next connection); a TPM that refuses (the handle is gone) is believed.
pub(super) fn flush(conn: &mut Conn, handle: u32) {
    let mut params = Vec::new();
    put_u32(&mut params, handle);
    let r = conn.run(&Command {
        code: CC_FLUSH_CONTEXT,
        name: "TPM2_FlushContext",
        handles: &[],
        auths: &[],
        params,
        response_handles: 0,
    });
    if r.is_err() {
        conn.stale.push(handle);
    }
}

pub(super) fn parse_err(
    command: &'static str,
) -> impl Fn(crate::wire::StructureError) -> DeviceError {
    move |e| DeviceError::Malformed(format!("{command}: {e}"))
}

/// TPM2B_SENSITIVE_CREATE with the auth value `auth` and no data.
fn sensitive(auth: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut inner = Zeroizing::new(Vec::with_capacity(4 + auth.len()));
    put_tpm2b(&mut inner, auth);
    put_tpm2b(&mut inner, &[]);
    let mut out = Zeroizing::new(Vec::with_capacity(2 + inner.len()));
    put_tpm2b(&mut out, &inner);
    out
}

/// inSensitive (with the auth value `auth`), inPublic, outsideInfo (empty),
/// creationPCR (none).
fn creation_params(template: &PublicArea, auth: &[u8]) -> Vec<u8> {
    let mut p = sensitive(auth).to_vec();
    p.extend_from_slice(&template.marshal_tpm2b());
    put_tpm2b(&mut p, &[]);
    put_u32(&mut p, 0);
    p
}

fn one_handle(command: &'static str, r: &Response) -> Result<u32, DeviceError> {
    r.handles
        .first()
        .copied()
        .ok_or_else(|| DeviceError::Malformed(format!("{command}: no handle returned")))
}

/// An EK made available for one operation.
struct Ek {
    handle: u32,
    persistent: bool,
    public: PublicArea,
}

fn kind_template(kind: EkKind) -> EkTemplate {
    match kind {
        EkKind::Rsa2048 => EkTemplate::L1,
        EkKind::EccP256 => EkTemplate::L2,
        EkKind::EccP384 => EkTemplate::H3,
    }
}

impl NativeDevice {
    /// TPM2_CreatePrimary under `hierarchy`: the handle and the public area.
    fn create_primary(
        &mut self,
        hierarchy: u32,
        template: &PublicArea,
        auth: Auth<'_>,
        name: &'static str,
    ) -> Result<Result<(u32, PublicArea), u32>, DeviceError> {
        let hname = handle_name(hierarchy);
        let r = self.conn()?.run(&Command {
            code: CC_CREATE_PRIMARY,
            name,
            handles: &[(hierarchy, &hname)],
            auths: &[auth],
            params: creation_params(template, &[]),
            response_handles: 1,
        })?;
        let r = match r {
            Ok(r) => r,
            Err(code) => return Ok(Err(code)),
        };
        let handle = one_handle(name, &r)?;
        let mut rd = Reader::new(&r.params, "TPM2_CreatePrimary response");
        let public = rd
            .tpm2b()
            .and_then(PublicArea::parse)
            .map_err(parse_err(name));
        match public {
            Ok(p) => Ok(Ok((handle, p))),
            Err(e) => {
                flush(self.conn()?, handle);
                Err(e)
            }
        }
    }

    /// The SRK, made on first use and kept for the life of the connection.
    pub(super) fn srk(&mut self) -> Result<Srk, DeviceError> {
        if let Some(s) = &self.srk {
            return Ok(s.clone());
        }
        // Nothing secret crosses here (the SRK's sensitive part is empty and stays
        // in the TPM), and the salted session needs the SRK first.
        let name = "TPM2_CreatePrimary (SRK)";
        let (handle, public) = self
            .create_primary(RH_OWNER, &srk_template(), Auth::Password, name)?
            .map_err(|code| self.hierarchy_error(Hierarchy::Owner, name, code))?;
        let srk = Srk {
            handle,
            name: public.name(),
            public,
        };
        // The SRK is the same for the life of the owner hierarchy: another one after
        // a reconnection is an interposer's key (the session would be salted to it),
        // or the TPM was cleared under a running agent. Either way, refused.
        if let Some(seen) = &self.srk_seen
            && *seen != srk.name
        {
            flush(self.conn()?, handle);
            return Err(DeviceError::Malformed(format!(
                "{name}: the SRK the TPM reports now is not the one it reported first (an interposer substituting its own key, or the TPM was cleared): refused"
            )));
        }
        self.srk_seen = Some(srk.name.clone());
        self.srk = Some(srk.clone());
        Ok(srk)
    }

    /// Makes sure the salted session is open (and the SRK, its salt key, loaded).
    pub(super) fn session(&mut self) -> Result<(), DeviceError> {
        let srk = self.srk()?;
        let conn = self.conn()?;
        for stale in std::mem::take(&mut conn.stale) {
            flush(conn, stale);
        }
        if conn.session.is_some() {
            return Ok(());
        }
        let name = "TPM2_StartAuthSession (salted)";
        let (salt, secret) = session::ecc_salt(&srk.public)
            .map_err(|e| DeviceError::Malformed(format!("{name}: {e}")))?;
        let nonce_caller = session::nonce();
        let mut params = Vec::new();
        put_tpm2b(&mut params, &nonce_caller);
        put_tpm2b(&mut params, &secret);
        params.push(SE_HMAC);
        put_u16(&mut params, alg::AES);
        put_u16(&mut params, 128);
        put_u16(&mut params, alg::CFB);
        put_u16(&mut params, session::SESSION_HASH.id());
        let null = handle_name(RH_NULL);
        let r = conn.execute(&Command {
            code: CC_START_AUTH_SESSION,
            name,
            handles: &[(srk.handle, &srk.name), (RH_NULL, &null)],
            auths: &[],
            params,
            response_handles: 1,
        })?;
        let handle = one_handle(name, &r)?;
        let mut rd = Reader::new(&r.params, "TPM2_StartAuthSession response");
        let nonce_tpm = rd.tpm2b().map_err(parse_err(name))?.to_vec();
        if rd.finish().is_err() || nonce_tpm.len() != nonce_caller.len() {
            flush(conn, handle);
            return Err(DeviceError::Malformed(format!(
                "{name}: the TPM's nonce is malformed"
            )));
        }
        conn.session = Some(Session::new(handle, &salt, &nonce_caller, nonce_tpm));
        Ok(())
    }

    pub(super) fn load(&mut self, blob: &KeyBlob) -> Result<u32, DeviceError> {
        self.session()?;
        let srk = self.srk()?;
        let mut params = Vec::new();
        put_tpm2b(&mut params, &blob.private);
        params.extend_from_slice(&blob.public.marshal_tpm2b());
        let name = "TPM2_Load";
        let r = self.conn()?.run(&Command {
            code: CC_LOAD,
            name,
            handles: &[(srk.handle, &srk.name)],
            auths: &[Auth::HMAC],
            params,
            response_handles: 1,
        })?;
        match r {
            Ok(r) => one_handle(name, &r),
            // The private part is sealed with a key derived from the SRK, so a blob
            // from another TPM fails its integrity check (or its unmarshalling).
            Err(code)
                if rc::fault(code).is_none()
                    && matches!(rc::format_one_code(code), Some(0x04 | 0x15 | 0x1f | 0x25)) =>
            {
                Err(DeviceError::ForeignKey(format!(
                    "{name}: {}",
                    rc::describe(code)
                )))
            }
            Err(code) => Err(code_error(name, code)),
        }
    }

    /// Runs `f` with `blob` loaded, flushing it afterwards whatever happens.
    pub(super) fn with_loaded<T>(
        &mut self,
        blob: &KeyBlob,
        f: impl FnOnce(&mut Self, u32) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let handle = self.load(blob)?;
        let result = f(self, handle);
        if let Some(conn) = self.conn.as_mut() {
            flush(conn, handle);
        }
        result
    }

    /// TPM2_Create under the SRK; `auth` (sent encrypted to the TPM) becomes the
    /// key's authorization value.
    pub(super) fn create_key_once(
        &mut self,
        template: &PublicArea,
        auth: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        self.session()?;
        let srk = self.srk()?;
        let name = "TPM2_Create";
        let r = self.conn()?.execute(&Command {
            code: CC_CREATE,
            name,
            handles: &[(srk.handle, &srk.name)],
            auths: &[Auth::Salted {
                decrypt: true,
                encrypt: true,
            }],
            params: creation_params(template, auth),
            response_handles: 0,
        })?;
        let mut rd = Reader::new(&r.params, "TPM2_Create response");
        let private = rd.tpm2b().map_err(parse_err(name))?.to_vec();
        let public = rd
            .tpm2b()
            .and_then(PublicArea::parse)
            .map_err(parse_err(name))?;
        if private.is_empty() {
            return Err(DeviceError::Malformed(format!(
                "{name}: empty private part"
            )));
        }
        Ok(KeyBlob { public, private })
    }

    /// TPM2_Sign with `key`, whose authorization value is `auth` (empty for the
    /// agent's own keys).
    pub(super) fn sign_once(
        &mut self,
        key: &KeyBlob,
        auth: &[u8],
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        let params = sign_params(digest, scheme)?;
        let key_name = key.public.name();
        let name = "TPM2_Sign";
        self.with_loaded(key, |dev, handle| {
            let r = dev.conn()?.execute(&Command {
                code: CC_SIGN,
                name,
                handles: &[(handle, &key_name)],
                auths: &[Auth::Keyed(auth)],
                params,
                response_handles: 0,
            })?;
            Signature::parse(&r.params).map_err(parse_err(name))
        })
    }

    pub(super) fn certify_once(
        &mut self,
        object: &KeyBlob,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        check_qualifying_data(qualifying_data)?;
        let (object_name, signer_name) = (object.public.name(), signer.public.name());
        self.with_loaded(object, |dev, object| {
            dev.with_loaded(signer, |dev, signer| {
                dev.certify_handles(
                    (object, &object_name),
                    (signer, &signer_name),
                    qualifying_data,
                )
            })
        })
    }

    /// TPM2_Certify of the loaded or persistent `object` by the loaded `signer`
    /// (each a handle with its name).
    pub(super) fn certify_handles(
        &mut self,
        object: (u32, &[u8]),
        signer: (u32, &[u8]),
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        let mut params = Vec::new();
        put_tpm2b(&mut params, qualifying_data);
        put_u16(&mut params, alg::NULL);
        let name = "TPM2_Certify";
        let r = self.conn()?.execute(&Command {
            code: CC_CERTIFY,
            name,
            handles: &[object, signer],
            auths: &[Auth::HMAC, Auth::Password],
            params,
            response_handles: 0,
        })?;
        let mut rd = Reader::new(&r.params, "TPM2_Certify response");
        let attest = rd.tpm2b().map_err(parse_err(name))?.to_vec();
        let signature = rd.rest().to_vec();
        Signature::parse(&signature).map_err(parse_err(name))?;
        Ok(CertifyOutput { attest, signature })
    }

    /// The most NV_Read returns at once (TPM_PT_NV_BUFFER_MAX).
    fn nv_max(&mut self) -> Result<usize, DeviceError> {
        if let Some(n) = self.nv_max {
            return Ok(n);
        }
        let mut params = Vec::new();
        put_u32(&mut params, CAP_TPM_PROPERTIES);
        put_u32(&mut params, PT_NV_BUFFER_MAX);
        put_u32(&mut params, 1);
        let name = "TPM2_GetCapability (NV buffer size)";
        let r = self.conn()?.execute(&Command {
            code: CC_GET_CAPABILITY,
            name,
            handles: &[],
            auths: &[],
            params,
            response_handles: 0,
        })?;
        let mut rd = Reader::new(&r.params, "TPM2_GetCapability response");
        let read = |rd: &mut Reader<'_>| -> Result<Option<u32>, crate::wire::StructureError> {
            let _more = rd.u8()?;
            let _cap = rd.u32()?;
            let count = rd.u32()?;
            if count == 0 {
                return Ok(None);
            }
            let property = rd.u32()?;
            let value = rd.u32()?;
            Ok((property == PT_NV_BUFFER_MAX).then_some(value))
        };
        let n = match read(&mut rd).map_err(parse_err(name))? {
            Some(v) if v >= 64 => (v as usize).min(4096),
            _ => NV_CHUNK_FALLBACK,
        };
        self.nv_max = Some(n);
        Ok(n)
    }

    pub(super) fn nv_read_once(&mut self, index: u32) -> Result<Option<Vec<u8>>, DeviceError> {
        let name = "TPM2_NV_ReadPublic";
        let hname = handle_name(index);
        let r = self.conn()?.run(&Command {
            code: CC_NV_READ_PUBLIC,
            name,
            handles: &[(index, &hname)],
            auths: &[],
            params: Vec::new(),
            response_handles: 0,
        })?;
        let r = match r {
            Ok(r) => r,
            Err(code) if rc::is_handle_error(code, rc::HANDLE) => return Ok(None),
            Err(code) => return Err(code_error(name, code)),
        };
        let mut rd = Reader::new(&r.params, "TPM2_NV_ReadPublic response");
        let (size, nv_name) = (|| {
            let mut public = Reader::new(rd.tpm2b()?, "TPMS_NV_PUBLIC");
            let _index = public.u32()?;
            let _name_alg = public.u16()?;
            let _attributes = public.u32()?;
            let _policy = public.tpm2b()?;
            let size = public.u16()? as usize;
            public.finish()?;
            Ok((size, rd.tpm2b()?.to_vec()))
        })()
        .map_err(parse_err(name))?;
        let chunk = self.nv_max()?;
        self.session()?;
        let owner = handle_name(RH_OWNER);
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            let want = chunk.min(size - data.len());
            let mut params = Vec::new();
            put_u16(&mut params, want as u16);
            put_u16(&mut params, data.len() as u16);
            let name = "TPM2_NV_Read";
            let r = self
                .conn()?
                .run(&Command {
                    code: CC_NV_READ,
                    name,
                    handles: &[(RH_OWNER, &owner), (index, &nv_name)],
                    auths: &[Auth::Salted {
                        decrypt: false,
                        encrypt: true,
                    }],
                    params,
                    response_handles: 0,
                })?
                .map_err(|code| self.hierarchy_error(Hierarchy::Owner, name, code))?;
            let mut rd = Reader::new(&r.params, "TPM2_NV_Read response");
            let part = rd.tpm2b().map_err(parse_err(name))?;
            if part.len() != want {
                return Err(DeviceError::Malformed(format!(
                    "{name}: {} bytes returned, {want} asked for",
                    part.len()
                )));
            }
            data.extend_from_slice(part);
        }
        Ok(Some(data))
    }

    /// TPM2_ReadPublic of a persistent handle; `None` if nothing is there.
    pub(super) fn read_public(&mut self, handle: u32) -> Result<Option<PublicArea>, DeviceError> {
        let name = "TPM2_ReadPublic";
        let hname = handle_name(handle);
        let r = self.conn()?.run(&Command {
            code: CC_READ_PUBLIC,
            name,
            handles: &[(handle, &hname)],
            auths: &[],
            params: Vec::new(),
            response_handles: 0,
        })?;
        match r {
            Ok(r) => {
                let mut rd = Reader::new(&r.params, "TPM2_ReadPublic response");
                let public = rd
                    .tpm2b()
                    .and_then(PublicArea::parse)
                    .map_err(parse_err(name))?;
                // The name the TPM reports must be the name of the area it reports.
                let reported = rd.tpm2b().map_err(parse_err(name))?;
                if reported != public.name().as_slice() {
                    return Err(DeviceError::Malformed(format!(
                        "{name}: the name of {handle:#x} does not match its public area"
                    )));
                }
                Ok(Some(public))
            }
            Err(code) if rc::is_handle_error(code, rc::HANDLE) => Ok(None),
            Err(code) => Err(code_error(name, code)),
        }
    }

    fn load_ek(&mut self, kind: EkKind) -> Result<Ek, DeviceError> {
        for &candidate in kind.persistent_handles() {
            if let Some(public) = self.read_public(candidate)?
                && matches_template(kind_template(kind), &public)
            {
                return Ok(Ek {
                    handle: candidate,
                    persistent: true,
                    public,
                });
            }
        }
        self.session()?;
        let name = "TPM2_CreatePrimary (EK)";
        match self.create_primary(RH_ENDORSEMENT, &kind.template(), Auth::HMAC, name)? {
            Ok((handle, public)) => Ok(Ek {
                handle,
                persistent: false,
                public,
            }),
            Err(code) => match self.hierarchy_error(Hierarchy::Endorsement, name, code) {
                e @ (DeviceError::Interrupted { .. } | DeviceError::HierarchyAuth { .. }) => Err(e),
                _ => Err(DeviceError::NoEk(
                    kind,
                    format!("TPM2_CreatePrimary: {}", rc::describe(code)),
                )),
            },
        }
    }

    fn release_ek(&mut self, ek: &Ek) {
        if !ek.persistent
            && let Some(conn) = self.conn.as_mut()
        {
            flush(conn, ek.handle);
        }
    }

    pub(super) fn ek_public_once(&mut self, kind: EkKind) -> Result<PublicArea, DeviceError> {
        let ek = self.load_ek(kind)?;
        self.release_ek(&ek);
        Ok(ek.public)
    }

    /// A policy session satisfying PolicySecret(TPM_RH_ENDORSEMENT), the policy of
    /// the low-range EK templates.
    fn endorsement_policy_session(&mut self, hash: HashAlg) -> Result<u32, DeviceError> {
        let mut params = Vec::new();
        put_tpm2b(&mut params, &session::nonce());
        put_tpm2b(&mut params, &[]);
        params.push(SE_POLICY);
        put_u16(&mut params, alg::NULL);
        put_u16(&mut params, hash.id());
        let null = handle_name(RH_NULL);
        let name = "TPM2_StartAuthSession (policy)";
        let r = self.conn()?.execute(&Command {
            code: CC_START_AUTH_SESSION,
            name,
            handles: &[(RH_NULL, &null), (RH_NULL, &null)],
            auths: &[],
            params,
            response_handles: 1,
        })?;
        let policy = one_handle(name, &r)?;
        let mut params = Vec::new();
        put_tpm2b(&mut params, &[]); // nonceTPM
        put_tpm2b(&mut params, &[]); // cpHashA
        put_tpm2b(&mut params, &[]); // policyRef
        put_u32(&mut params, 0); // expiration
        let (endorsement, pname) = (handle_name(RH_ENDORSEMENT), handle_name(policy));
        let name = "TPM2_PolicySecret (endorsement)";
        let result = self
            .conn()?
            .run(&Command {
                code: CC_POLICY_SECRET,
                name,
                handles: &[(RH_ENDORSEMENT, &endorsement), (policy, &pname)],
                auths: &[Auth::HMAC],
                params,
                response_handles: 0,
            })
            .and_then(|r| {
                r.map_err(|code| self.hierarchy_error(Hierarchy::Endorsement, name, code))
            });
        match result {
            Ok(_) => Ok(policy),
            Err(e) => {
                if let Some(conn) = self.conn.as_mut() {
                    flush(conn, policy);
                }
                Err(e)
            }
        }
    }

    pub(super) fn activate_credential_once(
        &mut self,
        object: &KeyBlob,
        ek_kind: EkKind,
        credential: &CredentialBlob,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        let mut params = Vec::new();
        put_tpm2b(&mut params, &credential.id_object);
        put_tpm2b(&mut params, &credential.encrypted_secret);
        let object_name = object.public.name();
        let name = "TPM2_ActivateCredential";
        self.with_loaded(object, |dev, object| {
            let ek = dev.load_ek(ek_kind)?;
            let template =
                check_ek_public(&ek.public).map_err(|e| DeviceError::NoEk(ek_kind, e.to_string()));
            let policy = template.and_then(|t| {
                if t.needs_policy_session() {
                    dev.endorsement_policy_session(ek.public.name_alg).map(Some)
                } else {
                    Ok(None)
                }
            });
            let result = policy.and_then(|policy| {
                let ek_auth = policy.map_or(Auth::Password, Auth::Policy);
                let ek_name = ek.public.name();
                let r = dev.conn()?.execute(&Command {
                    code: CC_ACTIVATE_CREDENTIAL,
                    name,
                    handles: &[(object, &object_name), (ek.handle, &ek_name)],
                    auths: &[
                        Auth::Salted {
                            decrypt: false,
                            encrypt: true,
                        },
                        ek_auth,
                    ],
                    params,
                    response_handles: 0,
                });
                // The policy session ends with a successful command (continueSession
                // is clear); after a failure it is still there.
                if r.is_err()
                    && let (Some(p), Some(conn)) = (policy, dev.conn.as_mut())
                {
                    flush(conn, p);
                }
                let r = r?;
                let mut rd = Reader::new(&r.params, "TPM2_ActivateCredential response");
                let secret = Zeroizing::new(rd.tpm2b().map_err(parse_err(name))?.to_vec());
                rd.finish().map_err(parse_err(name))?;
                Ok(secret)
            });
            dev.release_ek(&ek);
            result
        })
    }
}

/// TPMT_SIG_SCHEME and a NULL TPMT_TK_HASHCHECK after the digest (TPM2_Sign's
/// parameters).
pub(super) fn sign_params(digest: &[u8], scheme: SigningScheme) -> Result<Vec<u8>, DeviceError> {
    if digest.len() != scheme.hash().size() {
        return Err(DeviceError::Unsupported(format!(
            "digest: {} bytes for {:?}, which makes {}",
            digest.len(),
            scheme.hash(),
            scheme.hash().size()
        )));
    }
    let scheme_alg = match scheme {
        SigningScheme::RsaSsa(_) => alg::RSASSA,
        SigningScheme::RsaPss(_) => alg::RSAPSS,
        SigningScheme::Ecdsa(_) => alg::ECDSA,
    };
    let mut params = Vec::new();
    put_tpm2b(&mut params, digest);
    put_u16(&mut params, scheme_alg);
    put_u16(&mut params, scheme.hash().id());
    // A NULL ticket: the key is unrestricted, so the TPM needs no proof that it
    // hashed the message itself.
    put_u16(&mut params, ST_HASHCHECK);
    put_u32(&mut params, RH_NULL);
    put_tpm2b(&mut params, &[]);
    Ok(params)
}

/// TPM2_Certify's qualifying data fits a TPM2B_DATA (64 bytes).
pub(super) fn check_qualifying_data(qualifying_data: &[u8]) -> Result<(), DeviceError> {
    if qualifying_data.len() > 64 {
        return Err(DeviceError::Unsupported(format!(
            "qualifying data: {} bytes (at most 64)",
            qualifying_data.len()
        )));
    }
    Ok(())
}
