//! Command framing (TPM 2.0 Part 1, 18): the header, the handle area, the
//! authorization area with password, policy and salted HMAC sessions, and the
//! parameters; the response's header, handles, parameters and authorizations,
//! every length checked. A response that is not what was asked for (cut short,
//! another tag, a size that disagrees with the bytes, a response HMAC that does
//! not verify) is an error naming what was wrong, never a panic.

use std::io;

use super::rc;
use super::session::{DECRYPT, ENCRYPT, SESSION_HASH, Session, Use};
use super::transport::Transport;
use crate::device::{DeviceError, HierarchyAuth};
use crate::wire::{Reader, put_tpm2b, put_u16, put_u32};

/// TPM_ST_NO_SESSIONS.
const ST_NO_SESSIONS: u16 = 0x8001;
/// TPM_ST_SESSIONS.
const ST_SESSIONS: u16 = 0x8002;
/// TPM_ST_RSP_COMMAND: what a TPM answers a command with a TPM 1.2 tag.
const ST_RSP_COMMAND: u16 = 0x00c4;
/// TPM_RS_PW: the password "session".
const RS_PW: u32 = 0x4000_0009;
/// Where a response's handles start: after the tag, size and response code.
const HANDLES: usize = 10;

/// How a handle is authorised.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth<'a> {
    /// The password: the hierarchy's for a hierarchy handle, else empty.
    Password,
    /// The salted HMAC session, with parameter encryption as asked.
    Salted {
        /// Encrypt the command's first parameter.
        decrypt: bool,
        /// Have the TPM encrypt the response's first parameter.
        encrypt: bool,
    },
    /// A policy session that has been satisfied.
    Policy(u32),
    /// The salted HMAC session (integrity only) for an object whose authorization
    /// value is this: the HMACs are keyed with the session key and the value, which
    /// never crosses the bus.
    Keyed(&'a [u8]),
}

impl std::fmt::Debug for Auth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password => f.write_str("Password"),
            Auth::Salted { decrypt, encrypt } => f
                .debug_struct("Salted")
                .field("decrypt", decrypt)
                .field("encrypt", encrypt)
                .finish(),
            Auth::Policy(h) => write!(f, "Policy({h:#x})"),
            Auth::Keyed(_) => f.write_str("Keyed(..)"),
        }
    }
}

impl Auth<'_> {
    /// The salted session, for integrity only.
    pub(crate) const HMAC: Auth<'static> = Auth::Salted {
        decrypt: false,
        encrypt: false,
    };
}

/// A command to run.
pub(crate) struct Command<'a> {
    /// TPM_CC.
    pub(crate) code: u32,
    /// Its name, for messages.
    pub(crate) name: &'static str,
    /// The handles with their names (for cpHash).
    pub(crate) handles: &'a [(u32, &'a [u8])],
    /// How the first `auths.len()` handles are authorised.
    pub(crate) auths: &'a [Auth<'a>],
    /// The marshalled parameters.
    pub(crate) params: Vec<u8>,
    /// How many handles the response carries.
    pub(crate) response_handles: usize,
}

/// A successful response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) handles: Vec<u32>,
    pub(crate) params: Vec<u8>,
}

/// The name of a permanent handle or a session: the handle itself.
pub(crate) fn handle_name(handle: u32) -> [u8; 4] {
    handle.to_be_bytes()
}

/// A connection to the TPM: the transport and the salted session started on it.
pub(crate) struct Conn {
    transport: Box<dyn Transport>,
    pub(crate) session: Option<Session>,
    /// Sessions given up on and objects whose response was refused, to flush.
    pub(crate) stale: Vec<u32>,
    /// Why the byte stream is out of step (an exchange failed half-way: a timeout,
    /// a cut connection, a length that was refused): a late answer to that command
    /// would be taken for the next command's, so the connection is not used again.
    broken: Option<String>,
    /// The hierarchy passwords, for commands that authorise a hierarchy handle.
    pub(crate) hierarchy: HierarchyAuth,
}

fn interrupted(command: &'static str, e: &io::Error) -> DeviceError {
    DeviceError::Interrupted {
        command,
        reason: e.to_string(),
    }
}

fn malformed(command: &'static str, what: impl std::fmt::Display) -> DeviceError {
    DeviceError::Malformed(format!("{command}: {what}"))
}

/// The start of a TPM2B parameter's contents within `params`, if it is one.
fn first_tpm2b(params: &[u8]) -> Option<std::ops::Range<usize>> {
    let n = u16::from_be_bytes([*params.first()?, *params.get(1)?]) as usize;
    (params.len() >= 2 + n).then_some(2..2 + n)
}

impl Conn {
    pub(crate) fn new(transport: Box<dyn Transport>) -> Self {
        Self {
            transport,
            session: None,
            stale: Vec::new(),
            broken: None,
            hierarchy: HierarchyAuth::default(),
        }
    }

    /// Runs `cmd`; `Ok(Err(rc))` when the TPM answered with an error code. A TPM
    /// that asks for the command again (busy, testing) gets it again.
    pub(crate) fn run(&mut self, cmd: &Command<'_>) -> Result<Result<Response, u32>, DeviceError> {
        let mut tries = 0;
        loop {
            let r = self.run_once(cmd)?;
            match r {
                Err(code) if rc::is_retry(code) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return Ok(other),
            }
        }
    }

    /// Runs `cmd`; an error code becomes [`DeviceError::Command`], or
    /// [`DeviceError::Interrupted`] when it says the TPM restarted.
    pub(crate) fn execute(&mut self, cmd: &Command<'_>) -> Result<Response, DeviceError> {
        self.run(cmd)?.map_err(|code| code_error(cmd.name, code))
    }

    fn run_once(&mut self, cmd: &Command<'_>) -> Result<Result<Response, u32>, DeviceError> {
        super::count::record(cmd.name);
        let mut params = cmd.params.clone();
        // One use of the salted session per command (a session may appear once).
        let mut uses: Vec<Option<Use>> = Vec::with_capacity(cmd.auths.len());
        let auth_value = |i: usize| -> &[u8] {
            cmd.handles
                .get(i)
                .and_then(|(h, _)| self.hierarchy.for_handle(*h))
                .unwrap_or(&[])
        };
        for (i, auth) in cmd.auths.iter().enumerate() {
            uses.push(match auth {
                Auth::Salted { decrypt, encrypt } => {
                    let session = self.session.as_ref().ok_or_else(|| {
                        malformed(cmd.name, "no salted session is open (internal error)")
                    })?;
                    let mut attrs = 0;
                    if *decrypt {
                        attrs |= DECRYPT;
                    }
                    if *encrypt {
                        attrs |= ENCRYPT;
                    }
                    let u = session.begin(attrs, auth_value(i));
                    if *decrypt {
                        let range = first_tpm2b(&params).ok_or_else(|| {
                            malformed(cmd.name, "the first parameter is not a TPM2B to encrypt")
                        })?;
                        session.encrypt_parameter(&u, &mut params[range]);
                    }
                    Some(u)
                }
                Auth::Keyed(value) => {
                    let session = self.session.as_ref().ok_or_else(|| {
                        malformed(cmd.name, "no salted session is open (internal error)")
                    })?;
                    Some(session.begin(0, value))
                }
                _ => None,
            });
        }
        let cp_hash = {
            let names: Vec<&[u8]> = cmd.handles.iter().map(|(_, n)| *n).collect();
            let mut parts: Vec<&[u8]> = Vec::with_capacity(names.len() + 2);
            let code = cmd.code.to_be_bytes();
            parts.push(&code);
            parts.extend(names);
            parts.push(&params);
            SESSION_HASH.digest(&parts)
        };

        let mut out = Vec::with_capacity(64 + params.len());
        let tag = if cmd.auths.is_empty() {
            ST_NO_SESSIONS
        } else {
            ST_SESSIONS
        };
        put_u16(&mut out, tag);
        put_u32(&mut out, 0);
        put_u32(&mut out, cmd.code);
        for (h, _) in cmd.handles {
            put_u32(&mut out, *h);
        }
        if !cmd.auths.is_empty() {
            let mut area = Vec::new();
            for (i, (auth, u)) in cmd.auths.iter().zip(&uses).enumerate() {
                match (auth, u) {
                    (Auth::Salted { .. } | Auth::Keyed(_), Some(u)) => {
                        let session = self.session.as_ref().ok_or_else(|| {
                            malformed(cmd.name, "no salted session is open (internal error)")
                        })?;
                        put_u32(&mut area, session.handle);
                        put_tpm2b(&mut area, &u.nonce_caller);
                        area.push(u.attributes);
                        put_tpm2b(&mut area, &session.command_hmac(u, &cp_hash));
                    }
                    (Auth::Policy(handle), _) => {
                        // An unsalted, unbound policy session whose policy asks for
                        // no auth value: the TPM checks no HMAC.
                        put_u32(&mut area, *handle);
                        put_tpm2b(&mut area, &super::session::nonce());
                        area.push(0);
                        put_tpm2b(&mut area, &[]);
                    }
                    _ => {
                        put_u32(&mut area, RS_PW);
                        put_tpm2b(&mut area, &[]);
                        area.push(0);
                        let password = cmd
                            .handles
                            .get(i)
                            .and_then(|(h, _)| self.hierarchy.for_handle(*h))
                            .unwrap_or(&[]);
                        put_tpm2b(&mut area, password);
                    }
                }
            }
            put_u32(&mut out, area.len() as u32);
            out.extend_from_slice(&area);
        }
        out.extend_from_slice(&params);
        let size = out.len() as u32;
        out[2..6].copy_from_slice(&size.to_be_bytes());

        if let Some(why) = &self.broken {
            return Err(DeviceError::Interrupted {
                command: cmd.name,
                reason: format!("the connection is out of step since: {why}"),
            });
        }
        let response = match self.transport.transact(&out) {
            Ok(r) => r,
            Err(e) => {
                self.broken = Some(format!("{}: {e}", cmd.name));
                return Err(interrupted(cmd.name, &e));
            }
        };
        let parsed = self.parse(cmd, &uses, &response);
        match &parsed {
            Err(_) => self.give_up(cmd, &uses, &response),
            // The TPM computes another session key or nonce than this side (its
            // StartAuthSession answer was altered, or the two fell out of step):
            // the session is useless, the next command starts a new one.
            Ok(Err(code)) if rc::is_session_auth_failure(*code) => {
                self.give_up(cmd, &uses, &response);
            }
            Ok(_) => {}
        }
        parsed
    }

    /// After a successful response that was refused (it did not verify, or did not
    /// parse): the TPM ran the command, so the objects or sessions it created are
    /// flushed before the next session command (they would take the TPM's few
    /// slots for good), and the salted
    /// session, whose nonce the TPM has rolled on and this side has not, is
    /// given up for a new one (commands in it would fail their HMAC at the TPM, each
    /// failure counting toward the dictionary-attack lockout).
    fn give_up(&mut self, cmd: &Command<'_>, uses: &[Option<Use>], response: &[u8]) {
        if uses.iter().any(Option::is_some)
            && let Some(s) = self.session.take()
        {
            self.stale.push(s.handle);
        }
        let succeeded = response.len() >= HANDLES && response[6..HANDLES] == [0; 4];
        if !succeeded {
            return;
        }
        let handles = response[HANDLES..]
            .chunks_exact(4)
            .take(cmd.response_handles)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .filter(|h| matches!(h >> 24, 0x02 | 0x03 | 0x80));
        self.stale.extend(handles);
    }

    fn parse(
        &mut self,
        cmd: &Command<'_>,
        uses: &[Option<Use>],
        data: &[u8],
    ) -> Result<Result<Response, u32>, DeviceError> {
        let bad = |what: String| malformed(cmd.name, format!("malformed response: {what}"));
        let mut r = Reader::new(data, "TPM response");
        let tag = r.u16().map_err(|e| bad(e.to_string()))?;
        let size = r.u32().map_err(|e| bad(e.to_string()))? as usize;
        let code = r.u32().map_err(|e| bad(e.to_string()))?;
        if size != data.len() {
            return Err(bad(format!(
                "the header announces {size} bytes, {} arrived",
                data.len()
            )));
        }
        if code != 0 {
            if !matches!(tag, ST_NO_SESSIONS | ST_RSP_COMMAND) {
                return Err(bad(format!("tag {tag:#06x} on an error response")));
            }
            return Ok(Err(code));
        }
        let sessions = !cmd.auths.is_empty();
        let expected = if sessions {
            ST_SESSIONS
        } else {
            ST_NO_SESSIONS
        };
        if tag != expected {
            return Err(bad(format!("tag {tag:#06x}, expected {expected:#06x}")));
        }
        let mut handles = Vec::with_capacity(cmd.response_handles);
        for _ in 0..cmd.response_handles {
            handles.push(r.u32().map_err(|e| bad(e.to_string()))?);
        }
        let mut params = if sessions {
            let n = r.u32().map_err(|e| bad(e.to_string()))? as usize;
            r.take(n)
                .map_err(|_| bad(format!("the parameter area of {n} bytes is cut short")))?
                .to_vec()
        } else {
            r.rest().to_vec()
        };
        if sessions {
            let rp_hash =
                SESSION_HASH.digest(&[&0u32.to_be_bytes(), &cmd.code.to_be_bytes(), &params]);
            let mut decrypt_with: Option<(usize, Vec<u8>)> = None;
            for (i, (auth, u)) in cmd.auths.iter().zip(uses).enumerate() {
                let nonce = r.tpm2b().map_err(|e| bad(e.to_string()))?;
                let attrs = r.u8().map_err(|e| bad(e.to_string()))?;
                let hmac = r.tpm2b().map_err(|e| bad(e.to_string()))?;
                let encrypt = matches!(auth, Auth::Salted { encrypt: true, .. });
                if let (Auth::Salted { .. } | Auth::Keyed(_), Some(u)) = (auth, u) {
                    let session = self.session.as_mut().ok_or_else(|| {
                        malformed(cmd.name, "no salted session is open (internal error)")
                    })?;
                    if let Err(why) = session.check_response(u, &rp_hash, nonce, attrs, hmac) {
                        // The session's nonces can no longer be trusted: `give_up`
                        // starts afresh.
                        return Err(malformed(cmd.name, why));
                    }
                    if encrypt {
                        decrypt_with = Some((i, nonce.to_vec()));
                    }
                }
            }
            r.finish().map_err(|e| bad(e.to_string()))?;
            if let Some((i, nonce_tpm)) = decrypt_with
                && let (Some(session), Some(Some(u))) = (self.session.as_ref(), uses.get(i))
            {
                let range = first_tpm2b(&params)
                    .ok_or_else(|| bad("the encrypted first parameter is cut short".into()))?;
                session.decrypt_parameter(u, &nonce_tpm, &mut params[range]);
            }
        }
        Ok(Ok(Response { handles, params }))
    }
}

/// The error for a response code.
pub(crate) fn code_error(command: &'static str, code: u32) -> DeviceError {
    match rc::fault(code) {
        Some(why) => DeviceError::Interrupted {
            command,
            reason: format!("{why}: {}", rc::describe(code)),
        },
        None => DeviceError::Command {
            command,
            message: rc::describe(code),
        },
    }
}
