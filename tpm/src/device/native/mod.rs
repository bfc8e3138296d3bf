//! The pure-Rust backend: [`TpmDevice`] spoken directly to the TPM, with no TSS
//! library, for the static agent. Commands are marshalled by this crate (the public
//! areas, signatures and attestations with [`crate::wire`], the command and response
//! frames in `command`); the sessions' cryptography is ring's and RustCrypto's.
//!
//! - `transport`: `/dev/tpmrm0`, `/dev/tpm0`, swtpm's socket and the simulator's.
//! - `command`: framing, authorization areas, response checks; `rc`: response codes.
//! - `session`: the salted HMAC session with parameter encryption.
//! - `ops`: the operations, each loading what it needs and flushing it afterwards
//!   so that only the SRK stays resident (a TPM without a resource manager holds
//!   three objects), exactly as the tss-esapi backend does; the SRK is made from the
//!   same [`srk_template`], so key blobs are interchangeable between the backends.
//!
//! Every command that authorises a key, a hierarchy or an NV index runs in one
//! HMAC session salted to the SRK (ECDH, KDFe): the commands and responses are
//! integrity-protected by HMACs only this process and the TPM can compute, and the
//! secret parameters (Create's inSensitive and outPrivate, NV_Read's data,
//! ActivateCredential's certInfo) cross the bus AES-128-CFB encrypted.
//! docs/TPM.md says what this protects against and what not.
//!
//! A broken conversation (the connection failed, the TPM restarted and forgot the
//! SRK and the session) is mended as the tss-esapi backend mends it: the operation
//! reconnects and runs once more, and an error that survives that says the TPM is away.

pub(crate) mod command;
pub mod count;
mod factory;
mod import;
mod ops;
mod quote;
pub(crate) mod rc;
pub(crate) mod session;
pub(crate) mod transport;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

use zeroize::Zeroizing;

use self::command::Conn;
use self::transport::{DeviceTransport, SocketTransport, Transport};
use super::tcti::Tcti;
use super::{
    CertifyOutput, DeviceError, HierarchyAuth, KeyBlob, SigningScheme, TpmDevice, srk_template,
};
use crate::verifier::credential::CredentialBlob;
use crate::verifier::ek::EkKind;
use crate::wire::{PublicArea, Signature};

/// Where the connection comes from, to make it again.
enum Target {
    Tcti(Tcti),
    /// A stream handed over already open (no way to reopen it).
    Stream(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcti(t) => write!(f, "{t}"),
            Target::Stream(s) => f.write_str(s),
        }
    }
}

/// The SRK, loaded for the life of the connection.
#[derive(Clone)]
struct Srk {
    handle: u32,
    name: Vec<u8>,
    public: PublicArea,
}

/// A TPM spoken to directly.
pub struct NativeDevice {
    target: Target,
    /// `None` after the conversation broke: the next operation connects again.
    conn: Option<Conn>,
    srk: Option<Srk>,
    /// The name of the first SRK this device made: a later one must be the same.
    srk_seen: Option<Vec<u8>>,
    nv_max: Option<usize>,
    /// How long a socket TPM may take to answer.
    timeout: Duration,
    /// What a broken connection left loaded (the SRK, the session, a key whose
    /// flush failed): a TPM without a resource manager keeps them after the
    /// connection closes, and with three object slots the next connection would
    /// find no room. Flushed as soon as the next connection is made, before it
    /// loads anything (after a TPM restart they are gone and the flush fails
    /// harmlessly).
    orphans: Vec<u32>,
    /// The hierarchy passwords, given to every connection made.
    hierarchy: HierarchyAuth,
}

impl fmt::Debug for NativeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeDevice")
            .field("target", &self.target.to_string())
            .finish_non_exhaustive()
    }
}

fn connect(tcti: &Tcti, timeout: Duration) -> Result<Conn, DeviceError> {
    let unavailable = |reason: String| DeviceError::Unavailable {
        tcti: tcti.to_string(),
        reason,
    };
    let transport: Box<dyn Transport> = match tcti {
        Tcti::Device { path } => Box::new(DeviceTransport::open(path).map_err(|e| {
            unavailable(format!(
                "cannot open {}: {e}; is the device present and readable (the tss group)?",
                path.display()
            ))
        })?),
        Tcti::Swtpm { host, port } => {
            Box::new(SocketTransport::connect(host, *port, timeout).map_err(|e| {
                unavailable(format!("cannot connect: {e}; is the simulator running?"))
            })?)
        }
        Tcti::Mssim { host, port } => {
            transport::mssim_power_on(host, *port, timeout).map_err(|e| {
                unavailable(format!(
                    "cannot power the simulator on through its platform port {}: {e}",
                    u32::from(*port) + 1
                ))
            })?;
            Box::new(SocketTransport::connect(host, *port, timeout).map_err(|e| {
                unavailable(format!("cannot connect: {e}; is the simulator running?"))
            })?)
        }
        Tcti::Tabrmd { .. } => {
            return Err(unavailable(
                "the native TPM backend does not speak D-Bus to tpm2-abrmd; use device:/dev/tpmrm0 (the kernel resource manager) or the esapi backend (tpm_backend = \"esapi\")".into(),
            ));
        }
    };
    let mut conn = Conn::new(transport);
    if let Tcti::Mssim { .. } = tcti {
        ops::startup(&mut conn).map_err(|e| unavailable(e.to_string()))?;
    }
    Ok(conn)
}

impl NativeDevice {
    /// Connects to the TPM named by `tcti`.
    pub fn open(tcti: &Tcti) -> Result<Self, DeviceError> {
        Self::open_with_timeout(tcti, transport::IO_TIMEOUT)
    }

    /// Connects to the TPM named by `tcti`; a TPM on a socket that takes longer than
    /// `timeout` to take a command or answer it is taken as gone (the operation
    /// fails with [`DeviceError::Interrupted`] after one reconnection and retry,
    /// instead of holding the device lock for ever). [`NativeDevice::open`] waits
    /// two minutes, which RSA key generation on a slow TPM needs. A device node
    /// has the kernel driver's own timeouts.
    pub fn open_with_timeout(tcti: &Tcti, timeout: Duration) -> Result<Self, DeviceError> {
        let conn = connect(tcti, timeout)?;
        Ok(Self {
            target: Target::Tcti(tcti.clone()),
            conn: Some(conn),
            srk: None,
            srk_seen: None,
            nv_max: None,
            timeout,
            orphans: Vec::new(),
            hierarchy: HierarchyAuth::default(),
        })
    }

    /// Speaks to a TPM over a stream already open that carries bare commands and
    /// responses as a TPM device node does: a `/dev/tpm*` file handed over by a
    /// supervisor, or a socket to `swtpm chardev`. `what` names it in messages. The
    /// stream cannot be reopened, so a broken conversation stays broken. Reads wait
    /// as long as the stream lets them: give a socket a read timeout first.
    pub fn from_stream<S: Read + Write + Send + 'static>(stream: S, what: &str) -> Self {
        Self::with_transport(Box::new(DeviceTransport::new(stream)), what)
    }

    pub(crate) fn with_transport(transport: Box<dyn Transport>, what: &str) -> Self {
        Self {
            target: Target::Stream(what.to_owned()),
            conn: Some(Conn::new(transport)),
            srk: None,
            srk_seen: None,
            nv_max: None,
            timeout: transport::IO_TIMEOUT,
            orphans: Vec::new(),
            hierarchy: HierarchyAuth::default(),
        }
    }

    /// The connection, made again if the last one broke.
    fn conn(&mut self) -> Result<&mut Conn, DeviceError> {
        if self.conn.is_none() {
            self.srk = None;
            self.nv_max = None;
            let conn = match &self.target {
                Target::Tcti(t) => {
                    let mut conn = connect(t, self.timeout)?;
                    for handle in std::mem::take(&mut self.orphans) {
                        ops::flush(&mut conn, handle);
                    }
                    // What failed to flush now waits for the next session.
                    conn.hierarchy = self.hierarchy.clone();
                    conn
                }
                Target::Stream(s) => {
                    return Err(DeviceError::Unavailable {
                        tcti: s.clone(),
                        reason:
                            "the conversation broke and a stream handed over cannot be reopened"
                                .into(),
                    });
                }
            };
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| DeviceError::Malformed("no TPM connection".into()))
    }

    fn drop_conn(&mut self) {
        if let Some(srk) = self.srk.take() {
            self.orphans.push(srk.handle);
        }
        if let Some(mut conn) = self.conn.take() {
            self.orphans.extend(conn.session.take().map(|s| s.handle));
            self.orphans.append(&mut conn.stale);
        }
        self.nv_max = None;
    }

    /// Runs `op`; when the conversation with the TPM broke, reconnects and runs it
    /// once more (see the module documentation).
    fn recovering<T>(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        match op(self) {
            Err(DeviceError::Interrupted { command, reason }) => {
                self.drop_conn();
                // A TPM that cannot be reached again: say what broke first.
                self.conn().map_err(|e| match e {
                    DeviceError::Unavailable { tcti, reason: why } => DeviceError::Unavailable {
                        tcti,
                        reason: format!("{why} (after {command} was interrupted: {reason})"),
                    },
                    other => other,
                })?;
                let again = op(self);
                if let Err(DeviceError::Interrupted { .. }) = &again {
                    self.drop_conn();
                }
                again
            }
            other => other,
        }
    }
}

impl Drop for NativeDevice {
    /// Flushes the session and the SRK: without a resource manager they would stay
    /// loaded after this process, taking slots of the TPM's few.
    fn drop(&mut self) {
        let srk = self.srk.take();
        if let Some(conn) = self.conn.as_mut() {
            if let Some(s) = conn.session.take() {
                ops::flush(conn, s.handle);
            }
            if let Some(srk) = srk {
                ops::flush(conn, srk.handle);
            }
        }
    }
}

impl TpmDevice for NativeDevice {
    fn describe(&self) -> String {
        format!("TPM at {} (native)", self.target)
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
    ) -> Result<crate::device::CertifyOutput, DeviceError> {
        self.recovering(|dev| dev.quote_once(ak, pcrs, qualifying_data))
    }

    fn create_key(&mut self, template: &PublicArea) -> Result<KeyBlob, DeviceError> {
        self.recovering(|dev| dev.create_key_once(template, &[]))
    }

    fn check_key(&mut self, key: &KeyBlob) -> Result<(), DeviceError> {
        self.recovering(|dev| dev.with_loaded(key, |_, _| Ok(())))
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
        ek: EkKind,
        credential: &CredentialBlob,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        self.recovering(|dev| dev.activate_credential_once(object, ek, credential))
    }

    fn sign(
        &mut self,
        key: &KeyBlob,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        self.recovering(|dev| dev.sign_once(key, &[], digest, scheme))
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

    fn set_hierarchy_auth(&mut self, auth: &HierarchyAuth) -> Result<(), DeviceError> {
        self.hierarchy = auth.clone();
        if let Some(conn) = self.conn.as_mut() {
            conn.hierarchy = auth.clone();
        }
        Ok(())
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
}
