//! The interposer: a TCP proxy in swtpm's socket framing (TPM_SEND_COMMAND, a
//! locality byte, the command's length and bytes; back the response's length, its
//! bytes and an acknowledgement) that damages the response to one command code.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_tpm::Tcti;

use super::{CC_CREATE_PRIMARY, CC_LOAD};

/// What the interposer does to the response to one command code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// One bit of the last parameter byte flipped.
    FlipParam,
    /// Framed consistently, but 4 bytes shorter than the TPM header says.
    Truncate,
    /// A response length of almost 4 GiB announced, nothing sent.
    HugeLength,
    /// The length and half the response, then the connection closed.
    CloseMid,
    /// No answer at all (the connection stays open).
    Stall,
    /// The answer one byte every 300 ms.
    Trickle,
    /// The last response to another command instead.
    Other,
    /// The last earlier response to the same command instead.
    Replay,
    /// CreatePrimary's public area with another P-256 point.
    SubstituteSrk,
}

#[derive(Default)]
pub(super) struct Rule {
    /// The command code, the fault, and how many more times (None: always).
    pub(super) armed: Option<(u32, Fault, Option<usize>)>,
    /// What is armed once `armed` has fired its last time.
    pub(super) then: Option<(u32, Fault, Option<usize>)>,
    /// The last response per command code.
    seen: HashMap<u32, Vec<u8>>,
    /// The last response whatever its command, and its code.
    last: Option<(u32, Vec<u8>)>,
}

pub(super) struct Proxy {
    port: u16,
    pub(super) rule: Arc<Mutex<Rule>>,
    fired: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on a loopback port and relays each connection to swtpm's `upstream`.
    pub(super) fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rule = Arc::new(Mutex::new(Rule::default()));
        let fired = Arc::new(AtomicUsize::new(0));
        let (r, f) = (rule.clone(), fired.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                // swtpm serves one connection at a time: the next client is served
                // after the last one has gone.
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (r, f) = (r.clone(), f.clone());
                std::thread::spawn(move || relay(client, up, &r, &f));
            }
        });
        Proxy { port, rule, fired }
    }

    pub(super) fn tcti(&self) -> Tcti {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
            .parse()
            .unwrap()
    }

    pub(super) fn arm(&self, code: u32, fault: Fault, times: Option<usize>) {
        self.rule.lock().unwrap().armed = Some((code, fault, times));
        self.fired.store(0, Ordering::SeqCst);
    }

    pub(super) fn disarm(&self) -> usize {
        let mut r = self.rule.lock().unwrap();
        r.armed = None;
        r.then = None;
        self.fired.load(Ordering::SeqCst)
    }
}

fn read_u32(s: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).ok()?;
    Some(u32::from_be_bytes(b))
}

/// The number of handles a response to `code` carries.
fn response_handles(code: u32) -> usize {
    match code {
        CC_CREATE_PRIMARY | CC_LOAD | 0x176 => 1,
        _ => 0,
    }
}

fn relay(mut client: TcpStream, mut up: TcpStream, rule: &Mutex<Rule>, fired: &AtomicUsize) {
    loop {
        let mut head = [0u8; 9];
        if client.read_exact(&mut head).is_err() {
            return;
        }
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let mut cmd = vec![0u8; len];
        if client.read_exact(&mut cmd).is_err() || len < 10 {
            return;
        }
        let code = u32::from_be_bytes([cmd[6], cmd[7], cmd[8], cmd[9]]);
        if up
            .write_all(&head)
            .and_then(|()| up.write_all(&cmd))
            .is_err()
        {
            return;
        }
        let Some(rlen) = read_u32(&mut up) else {
            return;
        };
        let mut body = vec![0u8; rlen as usize];
        if up.read_exact(&mut body).is_err() || read_u32(&mut up).is_none() {
            return;
        }
        let fault = {
            let mut r = rule.lock().unwrap();
            let fault = match &mut r.armed {
                Some((c, f, times)) if *c == code && *times != Some(0) => {
                    if let Some(n) = times {
                        *n -= 1;
                    }
                    Some(*f)
                }
                _ => None,
            };
            if matches!(r.armed, Some((_, _, Some(0)))) && r.then.is_some() {
                r.armed = r.then.take();
            }
            let earlier = r.seen.insert(code, body.clone());
            let other = r.last.replace((code, body.clone()));
            fault.map(|f| (f, earlier, other))
        };
        let mut out = body.clone();
        if let Some((fault, earlier, other)) = fault {
            fired.fetch_add(1, Ordering::SeqCst);
            match fault {
                Fault::FlipParam => {
                    // The parameter area ends where the authorizations begin; with
                    // no session the parameters run to the end.
                    let h = 10 + 4 * response_handles(code);
                    let end = if u16::from_be_bytes([out[0], out[1]]) == 0x8002 {
                        let n = u32::from_be_bytes([out[h], out[h + 1], out[h + 2], out[h + 3]]);
                        h + 4 + n as usize
                    } else {
                        out.len()
                    };
                    out[end - 1] ^= 0x01;
                }
                Fault::Truncate => out.truncate(out.len() - 4),
                Fault::HugeLength => {
                    let _ = client.write_all(&0xffff_fff0u32.to_be_bytes());
                    return;
                }
                Fault::CloseMid => {
                    let _ = client.write_all(&rlen.to_be_bytes());
                    let _ = client.write_all(&out[..out.len() / 2]);
                    return;
                }
                Fault::Stall => {
                    // Holds the connection until the client gives up on it.
                    let mut sink = [0u8; 64];
                    while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
                    return;
                }
                Fault::Trickle => {
                    let mut frame = rlen.to_be_bytes().to_vec();
                    frame.extend_from_slice(&out);
                    frame.extend_from_slice(&[0; 4]);
                    for b in frame {
                        std::thread::sleep(Duration::from_millis(300));
                        if client.write_all(&[b]).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Fault::Other => {
                    out = other
                        .filter(|(c, _)| *c != code)
                        .expect("an earlier response to another command")
                        .1;
                }
                Fault::Replay => out = earlier.expect("an earlier response to replay"),
                Fault::SubstituteSrk => substitute_point(&mut out),
            }
        }
        let mut frame = (out.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&out);
        frame.extend_from_slice(&[0; 4]);
        if client.write_all(&frame).is_err() {
            return;
        }
    }
}

/// Replaces the ECC point at the end of CreatePrimary's outPublic (after one
/// handle and the parameter size) with a fresh P-256 point: a valid key that is
/// not the TPM's.
fn substitute_point(resp: &mut [u8]) {
    let start = 10 + 4 + 4;
    let size = u16::from_be_bytes([resp[start], resp[start + 1]]) as usize;
    let end = start + 2 + size;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65);
    // ... x (u16 32, 32 bytes), y (u16 32, 32 bytes) end the public area.
    resp[end - 32..end].copy_from_slice(&raw[33..65]);
    resp[end - 66..end - 34].copy_from_slice(&raw[1..33]);
}
