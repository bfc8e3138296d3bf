//! Unit tests with a fake transport: responses cut short, with another tag, with a
//! size that lies, with a response HMAC that does not verify, and hostile socket
//! peers, each giving an error that says what was wrong, never a panic.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use super::command::{Auth, Command, Conn};
use super::session::{self, SESSION_HASH, Session};
use super::transport::{DeviceTransport, SocketTransport, Transport};
use super::*;
use crate::verifier::credential::kdfa;
use crate::wire::{put_tpm2b, put_u16, put_u32};

/// Answers each command with the next scripted response and keeps the commands.
#[derive(Clone, Default)]
struct Fake {
    responses: Arc<Mutex<VecDeque<io::Result<Vec<u8>>>>>,
    commands: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Fake {
    fn push(&self, r: Vec<u8>) {
        self.responses.lock().unwrap().push_back(Ok(r));
    }
}

impl Transport for Fake {
    fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
        self.commands.lock().unwrap().push(command.to_vec());
        self.responses
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::BrokenPipe, "no more")))
    }
}

fn response(tag: u16, rc: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u16(&mut out, tag);
    put_u32(&mut out, (10 + body.len()) as u32);
    put_u32(&mut out, rc);
    out.extend_from_slice(body);
    out
}

fn flush_cmd(handle: u32) -> Command<'static> {
    let mut params = Vec::new();
    put_u32(&mut params, handle);
    Command {
        code: 0x165,
        name: "TPM2_FlushContext",
        handles: &[],
        auths: &[],
        params,
        response_handles: 0,
    }
}

#[test]
fn malformed_plain_responses_are_errors_that_say_what() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x80, 0x01, 0, 0], "truncated"),
        (response(0x8002, 0, &[]), "tag 0x8002"),
        (response(0x1234, 0x101, &[]), "tag 0x1234"),
        (
            {
                let mut r = response(0x8001, 0, &[]);
                r[5] = 40;
                r
            },
            "announces 40 bytes",
        ),
    ];
    for (bytes, want) in cases {
        let fake = Fake::default();
        fake.push(bytes.clone());
        let mut conn = Conn::new(Box::new(fake));
        let e = conn.execute(&flush_cmd(0x8000_0000)).unwrap_err();
        assert!(matches!(e, DeviceError::Malformed(_)), "{bytes:?}: {e}");
        let text = e.to_string();
        assert!(
            text.contains(want) && text.contains("TPM2_FlushContext"),
            "{text}"
        );
    }
}

#[test]
fn error_codes_are_named_and_restarts_told_apart() {
    let fake = Fake::default();
    fake.push(response(0x8001, 0x9f, &[]));
    fake.push(response(0x8001, 0x100, &[]));
    let mut conn = Conn::new(Box::new(fake.clone()));
    let e = conn.execute(&flush_cmd(1)).unwrap_err();
    assert_eq!(
        e,
        DeviceError::Command {
            command: "TPM2_FlushContext",
            message: "TPM_RC_INTEGRITY (0x9f)".into()
        }
    );
    let e = conn.execute(&flush_cmd(1)).unwrap_err();
    assert!(matches!(e, DeviceError::Interrupted { .. }), "{e}");
    let e = conn.execute(&flush_cmd(1)).unwrap_err();
    assert!(
        matches!(&e, DeviceError::Interrupted { reason, .. } if reason.contains("no more")),
        "{e}"
    );
}

/// The TPM's side of a salted session, to answer the commands the fake receives.
#[derive(Clone)]
struct TpmSide {
    key: Zeroizing<Vec<u8>>,
}

fn session_pair() -> (Session, TpmSide) {
    let salt = [7u8; 32];
    let nonce_caller = session::nonce();
    let nonce_tpm = session::nonce();
    let s = Session::new(0x0200_0000, &salt, &nonce_caller, nonce_tpm.clone());
    let key = kdfa(SESSION_HASH, &salt, b"ATH", &nonce_tpm, &nonce_caller, 256);
    (s, TpmSide { key })
}

/// A Sign-shaped command authorised through the salted session, with encryption.
fn session_cmd(params: Vec<u8>) -> Command<'static> {
    Command {
        code: 0x15d,
        name: "TPM2_Sign",
        handles: &[(0x8000_0001, &[0, 0xb, 1, 2])],
        auths: &[Auth::Salted {
            decrypt: false,
            encrypt: true,
        }],
        params,
        response_handles: 0,
    }
}

/// A response with one session whose HMAC is right when `good`, and whose first
/// parameter is `secret`, encrypted as the TPM would.
fn session_response(tpm: &TpmSide, command: &[u8], secret: &[u8], good: bool) -> Vec<u8> {
    // The caller's nonce of this command: after the header (10), one handle (4),
    // the auth area size (4) and the session handle (4).
    let n = u16::from_be_bytes([command[22], command[23]]) as usize;
    let nonce_caller = &command[24..24 + n];
    let nonce_tpm = session::nonce();
    let kv = kdfa(
        SESSION_HASH,
        &tpm.key,
        b"CFB",
        &nonce_tpm,
        nonce_caller,
        256,
    );
    let mut enc = secret.to_vec();
    {
        use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
        cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&kv[..16], &kv[16..])
            .unwrap()
            .encrypt(&mut enc);
    }
    let mut params = Vec::new();
    put_tpm2b(&mut params, &enc);
    let rp_hash = SESSION_HASH.digest(&[&[0, 0, 0, 0], &0x15du32.to_be_bytes(), &params]);
    let attrs = 0x41;
    let mut hmac = SESSION_HASH.hmac(&tpm.key, &[&rp_hash, &nonce_tpm, nonce_caller, &[attrs]]);
    if !good {
        hmac[0] ^= 1;
    }
    let mut body = Vec::new();
    put_u32(&mut body, params.len() as u32);
    body.extend_from_slice(&params);
    put_tpm2b(&mut body, &nonce_tpm);
    body.push(attrs);
    put_tpm2b(&mut body, &hmac);
    response(0x8002, 0, &body)
}

/// Sends one session command through `conn`'s session, answering it with `answer`
/// (which sees the command, as the TPM would, to use its nonce).
fn exchange(
    conn: &mut Conn,
    answer: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static,
) -> Result<Vec<u8>, DeviceError> {
    struct Responder<F>(Option<F>);
    impl<F: FnOnce(&[u8]) -> Vec<u8> + Send> Transport for Responder<F> {
        fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
            let f = self.0.take().ok_or(io::ErrorKind::BrokenPipe)?;
            Ok(f(command))
        }
    }
    let session = conn.session.take();
    let mut c = Conn::new(Box::new(Responder(Some(answer))));
    c.session = session;
    let mut params = Vec::new();
    put_tpm2b(&mut params, &[1; 32]);
    let r = c.execute(&session_cmd(params)).map(|r| r.params);
    conn.session = c.session.take();
    conn.stale = std::mem::take(&mut c.stale);
    r
}

#[test]
fn response_hmacs_are_checked_and_parameters_decrypted() {
    let (s, tpm) = session_pair();
    let mut conn = Conn::new(Box::new(Fake::default()));
    conn.session = Some(s);
    let secret = b"the credential's secret".to_vec();
    let (t, x) = (tpm.clone(), secret.clone());
    let params = exchange(&mut conn, move |cmd| session_response(&t, cmd, &x, true)).unwrap();
    assert_eq!(&params[2..], &secret[..], "decrypted");
    // A second exchange uses the TPM's rolled nonce: still verifies.
    let (t, x) = (tpm.clone(), secret.clone());
    exchange(&mut conn, move |cmd| session_response(&t, cmd, &x, true)).unwrap();

    // One bit off in the HMAC: refused, and the session is given up.
    let e = exchange(&mut conn, move |cmd| {
        session_response(&tpm, cmd, &secret, false)
    })
    .unwrap_err();
    assert!(
        matches!(&e, DeviceError::Malformed(m) if m.contains("TPM2_Sign") && m.contains("response HMAC does not verify")),
        "{e}"
    );
    assert!(conn.session.is_none());
    assert_eq!(conn.stale, vec![0x0200_0000]);
}

#[test]
fn every_cut_of_a_session_response_is_an_error() {
    let (s, tpm) = session_pair();
    let mut conn = Conn::new(Box::new(Fake::default()));
    conn.session = Some(s);
    let full = Arc::new(Mutex::new(Vec::new()));
    let f = full.clone();
    exchange(&mut conn, move |cmd| {
        let r = session_response(&tpm, cmd, b"x", true);
        *f.lock().unwrap() = r.clone();
        r
    })
    .unwrap();
    let len = full.lock().unwrap().len();
    for cut in 0..len {
        // Cut short with the header still claiming the full size, and with the
        // header's size fixed to match the cut: both refused.
        for fix_size in [false, true] {
            let (s, tpm2) = session_pair();
            conn.session = Some(s);
            let e = exchange(&mut conn, move |cmd| {
                let mut r = session_response(&tpm2, cmd, b"x", true);
                r.truncate(cut);
                if fix_size && cut >= 6 {
                    let n = (cut as u32).to_be_bytes();
                    r[2..6].copy_from_slice(&n);
                }
                r
            });
            assert!(e.is_err(), "cut at {cut} (size fixed: {fix_size}) accepted");
        }
    }
}

/// A stream that returns scripted bytes in small pieces.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    piece: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.piece.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_device_stream_is_read_to_the_announced_size_and_no_further() {
    let good = response(0x8001, 0, &[1, 2, 3, 4, 5]);
    for piece in [1, 3, 4096] {
        let mut t = DeviceTransport::new(Trickle {
            data: good.clone(),
            pos: 0,
            piece,
        });
        assert_eq!(t.transact(&[0; 10]).unwrap(), good);
    }
    let mut long = good.clone();
    long.extend_from_slice(&[9, 9]);
    let mut t = DeviceTransport::new(Trickle {
        data: long,
        pos: 0,
        piece: 4096,
    });
    let e = t.transact(&[0; 10]).unwrap_err().to_string();
    assert!(e.contains("header announces"), "{e}");
    let mut t = DeviceTransport::new(Trickle {
        data: good[..12].to_vec(),
        pos: 0,
        piece: 4096,
    });
    let e = t.transact(&[0; 10]).unwrap_err().to_string();
    assert!(e.contains("ended after 12 bytes"), "{e}");
    let mut huge = good.clone();
    huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut t = DeviceTransport::new(Trickle {
        data: huge,
        pos: 0,
        piece: 4096,
    });
    let e = t.transact(&[0; 10]).unwrap_err().to_string();
    assert!(e.contains("announces 4294967295 bytes"), "{e}");
}

/// A simulator-framed peer that reads one command and answers with `answer`.
fn hostile_peer(answer: Vec<u8>) -> SocketTransport {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let n = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let mut cmd = vec![0u8; n];
        s.read_exact(&mut cmd).unwrap();
        let _ = s.write_all(&answer);
    });
    SocketTransport::over(std::net::TcpStream::connect(addr).unwrap())
}

#[test]
fn hostile_simulator_framing_is_refused() {
    let body = response(0x8001, 0, &[]);
    let framed = |len: u32, body: &[u8], ack: u32| {
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out.extend_from_slice(&ack.to_be_bytes());
        out
    };
    let good = framed(10, &body, 0);
    assert_eq!(hostile_peer(good).transact(&body).unwrap(), body);
    for (answer, want) in [
        (framed(10, &body, 1), "acknowledged the command with 1"),
        (
            framed(1 << 30, &[], 0),
            "announces a 1073741824-byte response",
        ),
        (
            framed(12, &[0x80, 1, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0], 0),
            "header announces 10",
        ),
        (
            framed(10, &body[..4], 0)[..8].to_vec(),
            "failed to fill whole buffer",
        ),
    ] {
        let e = hostile_peer(answer)
            .transact(&body)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e} (expected {want})");
    }
}

#[test]
fn the_device_reports_a_hostile_tpm_clearly() {
    // CreatePrimary (the SRK) answered with a response cut inside its public area.
    let fake = Fake::default();
    let mut body = Vec::new();
    put_u32(&mut body, 0x8000_0000);
    put_u32(&mut body, 20);
    body.extend_from_slice(&[0, 30, 0, 0x23, 0, 0xb]);
    body.extend_from_slice(&[0; 14]);
    body.extend_from_slice(&[0; 6]); // password session area
    fake.push(response(0x8002, 0, &body));
    let mut dev = NativeDevice::with_transport(Box::new(fake.clone()), "a fake TPM");
    let e = dev.create_key(&srk_template()).unwrap_err();
    assert!(
        matches!(&e, DeviceError::Malformed(m) if m.contains("TPM2_CreatePrimary (SRK)")),
        "{e}"
    );
    // A stream handed over cannot be reopened: the error says so.
    let e = dev.create_key(&srk_template()).unwrap_err();
    assert!(e.to_string().contains("cannot be reopened"), "{e}");
}

#[test]
fn an_absent_nv_index_is_none_and_tabrmd_is_refused_by_name() {
    let fake = Fake::default();
    fake.push(response(0x8001, 0x18b, &[]));
    let mut dev = NativeDevice::with_transport(Box::new(fake.clone()), "a fake TPM");
    assert_eq!(dev.nv_read(0x01c0_0002).unwrap(), None);
    let e = NativeDevice::open(&"tabrmd".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("esapi") && e.contains("D-Bus"), "{e}");
}

#[test]
fn a_failed_exchange_leaves_the_connection_unused() {
    let fake = Fake::default();
    fake.responses.lock().unwrap().push_back(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the TPM did not answer within 2s",
    )));
    fake.push(response(0x8001, 0, &[]));
    let mut conn = Conn::new(Box::new(fake.clone()));
    let e = conn.execute(&flush_cmd(1)).unwrap_err();
    assert!(
        matches!(&e, DeviceError::Interrupted { reason, .. } if reason.contains("did not answer")),
        "{e}"
    );
    // The late answer (still queued) is never taken for the next command's.
    let e = conn.execute(&flush_cmd(2)).unwrap_err();
    assert!(
        matches!(&e, DeviceError::Interrupted { reason, .. } if reason.contains("out of step since: TPM2_FlushContext")),
        "{e}"
    );
    assert_eq!(fake.commands.lock().unwrap().len(), 1, "nothing more sent");
}

#[test]
fn a_refused_response_gives_up_the_session_and_the_object_made() {
    let (s, _) = session_pair();
    // A Load-shaped success: one handle, the parameters, a session whose HMAC is wrong.
    let mut body = Vec::new();
    put_u32(&mut body, 0x8000_0002);
    put_u32(&mut body, 4);
    put_tpm2b(&mut body, &[1, 2]);
    put_tpm2b(&mut body, &session::nonce());
    body.push(1);
    put_tpm2b(&mut body, &[0; 32]);
    let fake = Fake::default();
    fake.push(response(0x8002, 0, &body));
    let mut conn = Conn::new(Box::new(fake));
    conn.session = Some(s);
    let cmd = Command {
        code: 0x157,
        name: "TPM2_Load",
        handles: &[(0x8100_0001, &[0, 0xb, 1])],
        auths: &[Auth::HMAC],
        params: vec![0, 0],
        response_handles: 1,
    };
    let e = conn.execute(&cmd).unwrap_err();
    assert!(
        matches!(&e, DeviceError::Malformed(m) if m.contains("TPM2_Load") && m.contains("response HMAC does not verify")),
        "{e}"
    );
    assert!(conn.session.is_none(), "the session is given up");
    assert_eq!(conn.stale, vec![0x0200_0000, 0x8000_0002], "both to flush");
}
