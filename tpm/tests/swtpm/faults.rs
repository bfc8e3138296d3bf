//! The native backend against a hostile or broken TPM: an interposer between it and
//! swtpm (a TCP proxy in swtpm's socket framing) that, for one command code, flips a
//! bit in the response, cuts it short, announces a huge length, closes the
//! connection half-way, never answers, answers with another command's response,
//! replays an older one, or substitutes the SRK's public key. Each case must end in
//! an error that says what was wrong (never a panic, never a hang: every operation
//! runs under a 30 s guard), no wrong result used, and the next operation must work
//! once the interposer stops. Then many operations in a row and after failures
//! (no TPM slot leaks: a TPM without a resource manager has three), signs from
//! several threads, damaged key blob files, and a character device that answers in
//! pieces or with too much.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tessera_core::key::KeyType;
use tessera_tpm::device::native::NativeDevice;
use tessera_tpm::device::{DeviceError, KeyBlob, SigningScheme, signing_key_template};
use tessera_tpm::ek::EkKind;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::credential::make_credential;
use tessera_tpm::verifier::signature::verify_signature;
use tessera_tpm::wire::HashAlg;
use tessera_tpm::{Tcti, Tpm};

use crate::common::{Sim, Which, state_copy};

const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_LOAD: u32 = 0x157;
const CC_SIGN: u32 = 0x15d;

/// Runs `f` on its own thread; a test that takes longer than 30 s fails saying so
/// (a hung TPM conversation would otherwise hang the test run).
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after 30 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// What the interposer does to the response to one command code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
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
struct Rule {
    /// The command code, the fault, and how many more times (None: always).
    armed: Option<(u32, Fault, Option<usize>)>,
    /// What is armed once `armed` has fired its last time.
    then: Option<(u32, Fault, Option<usize>)>,
    /// The last response per command code.
    seen: HashMap<u32, Vec<u8>>,
    /// The last response whatever its command, and its code.
    last: Option<(u32, Vec<u8>)>,
}

struct Proxy {
    port: u16,
    rule: Arc<Mutex<Rule>>,
    fired: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on a loopback port and relays each connection to swtpm's `upstream`.
    fn start(upstream: u16) -> Proxy {
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

    fn tcti(&self) -> Tcti {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
            .parse()
            .unwrap()
    }

    fn arm(&self, code: u32, fault: Fault, times: Option<usize>) {
        self.rule.lock().unwrap().armed = Some((code, fault, times));
        self.fired.store(0, Ordering::SeqCst);
    }

    fn disarm(&self) -> usize {
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

/// The simulator behind an interposer, with the native backend on the interposer
/// (a short timeout: a stalled TPM is given up on after 2 s, twice with the retry).
struct Rig {
    _sim: Sim,
    proxy: Proxy,
    tpm: Arc<Tpm>,
    key: KeyBlob,
}

fn upstream(sim: &Sim) -> u16 {
    let Tcti::Swtpm { port, .. } = sim.tcti() else {
        panic!("the harness starts swtpm over TCP");
    };
    port
}

fn rig() -> Rig {
    let sim = Sim::start(Which::A);
    let proxy = Proxy::start(upstream(&sim));
    let device = NativeDevice::open_with_timeout(&proxy.tcti(), Duration::from_secs(2)).unwrap();
    let tpm = Arc::new(Tpm::new(Box::new(device)));
    let key = tpm
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    Rig {
        _sim: sim,
        proxy,
        tpm,
        key,
    }
}

fn digest(msg: &[u8]) -> Vec<u8> {
    HashAlg::Sha256.digest(&[msg])
}

/// Signs `msg` with `key` and checks the signature in software.
fn sign_checked(tpm: &Tpm, key: &KeyBlob, msg: &[u8]) -> Result<(), DeviceError> {
    let sig = tpm.with(|d| d.sign(key, &digest(msg), SigningScheme::Ecdsa(HashAlg::Sha256)))?;
    verify_signature(&key.public, msg, &sig)
        .unwrap_or_else(|e| panic!("a signature the backend returned does not verify: {e}"));
    Ok(())
}

/// Arms `fault` on `code`, runs one sign, and returns its error; then disarms and
/// checks that signing works again.
fn sign_under(rig: &Rig, code: u32, fault: Fault, times: Option<usize>) -> DeviceError {
    rig.proxy.arm(code, fault, times);
    let (tpm, key) = (rig.tpm.clone(), rig.key.clone());
    let r = guarded(&format!("sign under {fault:?}"), move || {
        sign_checked(&tpm, &key, b"under attack")
    });
    let fired = rig.proxy.disarm();
    assert!(fired > 0, "{fault:?} on {code:#x} never fired");
    let err = r.expect_err(&format!("{fault:?} on {code:#x}: the sign succeeded"));
    let (tpm, key) = (rig.tpm.clone(), rig.key.clone());
    guarded("sign after the fault", move || {
        for i in 0..5 {
            sign_checked(&tpm, &key, format!("after {i}").as_bytes())
                .unwrap_or_else(|e| panic!("after {fault:?} on {code:#x}: {e}"));
        }
    });
    err
}

fn message(e: &DeviceError) -> String {
    e.to_string()
}

#[test]
fn a_flipped_response_bit_is_caught_by_the_response_hmac() {
    let rig = rig();
    for code in [CC_SIGN, CC_LOAD] {
        let e = sign_under(&rig, code, Fault::FlipParam, Some(1));
        assert!(
            matches!(&e, DeviceError::Malformed(m) if m.contains("response HMAC does not verify")),
            "{code:#x}: {e}"
        );
    }
    // Refused Load responses leave no object behind: many in a row, and the TPM
    // still has room (three slots, one the SRK's).
    for _ in 0..6 {
        sign_under(&rig, CC_LOAD, Fault::FlipParam, Some(1));
    }
}

#[test]
fn a_replayed_or_misdirected_response_is_refused() {
    let rig = rig();
    sign_checked(&rig.tpm, &rig.key, b"one sign to replay").unwrap();
    let e = sign_under(&rig, CC_SIGN, Fault::Replay, Some(1));
    assert!(
        matches!(&e, DeviceError::Malformed(m) if m.contains("response HMAC does not verify")),
        "replay: {e}"
    );
    // Sign answered with the response to the Load before it.
    let e = sign_under(&rig, CC_SIGN, Fault::Other, Some(1));
    assert!(
        matches!(&e, DeviceError::Malformed(m) if m.contains("TPM2_Sign") && m.contains("malformed response")),
        "another command's response: {e}"
    );
}

#[test]
fn cut_huge_and_closed_responses_are_clear_errors() {
    let rig = rig();
    // Always: the retry on a new connection meets the same fault.
    let e = sign_under(&rig, CC_SIGN, Fault::Truncate, None);
    assert!(
        matches!(&e, DeviceError::Interrupted { reason, .. } if reason.contains("the response header announces")),
        "truncated: {e}"
    );
    let e = sign_under(&rig, CC_SIGN, Fault::HugeLength, None);
    assert!(
        matches!(&e, DeviceError::Interrupted { reason, .. } if reason.contains("announces a 4294967280-byte response")),
        "huge length: {e}"
    );
    let e = sign_under(&rig, CC_SIGN, Fault::CloseMid, None);
    assert!(
        matches!(
            &e,
            DeviceError::Interrupted {
                command: "TPM2_Sign",
                ..
            }
        ),
        "closed half-way: {e}"
    );
    // Once only: the backend reconnects, and the retry succeeds, with the slots the
    // broken connection left flushed.
    for fault in [Fault::HugeLength, Fault::CloseMid] {
        rig.proxy.arm(CC_SIGN, fault, Some(1));
        for i in 0..3 {
            sign_checked(&rig.tpm, &rig.key, format!("{i}").as_bytes())
                .unwrap_or_else(|e| panic!("{fault:?} once, sign {i}: {e}"));
        }
        assert_eq!(rig.proxy.disarm(), 1);
    }
}

#[test]
fn a_tpm_that_never_answers_times_out() {
    let rig = rig();
    let started = Instant::now();
    let e = sign_under(&rig, CC_SIGN, Fault::Stall, None);
    assert!(
        matches!(&e, DeviceError::Interrupted { command: "TPM2_Sign", reason } if reason.contains("did not answer within 2s")),
        "stall: {e}"
    );
    // Two waits of 2 s (the first try and the retry), then five signs.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A byte every 300 ms: each read would be in time, the answer is not.
    let e = sign_under(&rig, CC_SIGN, Fault::Trickle, None);
    assert!(
        matches!(&e, DeviceError::Interrupted { command: "TPM2_Sign", reason } if reason.contains("did not answer within 2s")),
        "trickle: {e}"
    );
}

#[test]
fn a_substituted_srk_is_an_error_never_a_result() {
    let rig = rig();
    // The SRK made at this connection's start was the TPM's; a reconnection whose
    // CreatePrimary carries another key is refused. The sign's connection is cut
    // once; the retry's CreatePrimary (on the new connection) is substituted.
    rig.proxy.arm(CC_SIGN, Fault::CloseMid, Some(1));
    let (tpm, key) = (rig.tpm.clone(), rig.key.clone());
    rig.proxy.rule.lock().unwrap().then = Some((CC_CREATE_PRIMARY, Fault::SubstituteSrk, None));
    let e = guarded("sign with a substituted SRK", move || {
        sign_checked(&tpm, &key, b"to the attacker's key")
    })
    .expect_err("a sign through a substituted SRK succeeded");
    assert!(
        matches!(&e, DeviceError::Malformed(m) if m.contains("SRK the TPM reports now is not the one it reported first")),
        "{e}"
    );
    rig.proxy.disarm();
    sign_checked(&rig.tpm, &rig.key, b"the real SRK again").unwrap();

    // Substituted from the very first CreatePrimary (the known gap, docs/TPM.md):
    // the session is salted to the attacker's key. An interposer that does not also
    // run the session's cryptography gets a failed authorization, never a result.
    let sim = Sim::start(Which::A);
    let proxy = Proxy::start(upstream(&sim));
    proxy.arm(CC_CREATE_PRIMARY, Fault::SubstituteSrk, None);
    let tcti = proxy.tcti();
    let e = guarded("create under a substituted SRK", move || {
        let device = NativeDevice::open_with_timeout(&tcti, Duration::from_secs(2)).unwrap();
        let tpm = Tpm::new(Box::new(device));
        tpm.with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
    })
    .expect_err("a key was made under a substituted SRK");
    assert!(
        matches!(&e, DeviceError::Command { command: "TPM2_Create", message } if message.contains("TPM_RC_BAD_AUTH")),
        "{e}"
    );
}

/// The transient objects loaded in the simulator, read with tpm2-tools (the
/// backend's own connection must be closed: swtpm serves one at a time).
fn transient_handles(sim: &Sim) -> usize {
    let out = Command::new("tpm2_getcap")
        .args(["-T", &sim.env["TPM_TCTI"], "handles-transient"])
        .output()
        .expect("tpm2-tools must be installed (apt-get install tpm2-tools)");
    assert!(
        out.status.success(),
        "tpm2_getcap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("0x80"))
        .count()
}

#[test]
fn two_hundred_operations_and_failures_leave_no_object_loaded() {
    let sim = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let foreign = b
        .tpm_with(tessera_tpm::Backend::Native)
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    drop(b);
    let tcti = sim.tcti();
    guarded("200 operations", move || {
        let tpm = Tpm::new(Box::new(NativeDevice::open(&tcti).unwrap()));
        let ak = tpm
            .with(|d| d.create_key(&AkKind::EccP256.template()))
            .unwrap();
        let other_ak = tpm
            .with(|d| d.create_key(&AkKind::EccP256.template()))
            .unwrap();
        let key = tpm
            .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
            .unwrap();
        let ek = tpm.with(|d| d.ek_public(EkKind::EccP256)).unwrap();
        for i in 0..200 {
            let what = format!("operation {i}");
            match i % 5 {
                0 => sign_checked(&tpm, &key, what.as_bytes()).unwrap(),
                1 => {
                    tpm.with(|d| d.certify(&key, &ak, b"nonce")).unwrap();
                }
                2 if i % 20 == 2 => {
                    let blob = make_credential(&ek, &ak.public.name(), b"secret").unwrap();
                    let s = tpm
                        .with(|d| d.activate_credential(&ak, EkKind::EccP256, &blob))
                        .unwrap();
                    assert_eq!(s.as_slice(), b"secret");
                }
                2 => {
                    // A credential for another AK: refused by the TPM.
                    let blob = make_credential(&ek, &other_ak.public.name(), b"x").unwrap();
                    let e = tpm
                        .with(|d| d.activate_credential(&ak, EkKind::EccP256, &blob))
                        .unwrap_err();
                    assert!(message(&e).contains("TPM2_ActivateCredential"), "{e}");
                }
                3 => {
                    let e = tpm
                        .with(|d| {
                            d.sign(
                                &foreign,
                                &digest(b"x"),
                                SigningScheme::Ecdsa(HashAlg::Sha256),
                            )
                        })
                        .unwrap_err();
                    assert!(matches!(e, DeviceError::ForeignKey(_)), "{what}: {e}");
                }
                _ => {
                    let e = tpm
                        .with(|d| d.certify(&ak, &foreign, b"nonce"))
                        .unwrap_err();
                    assert!(matches!(e, DeviceError::ForeignKey(_)), "{what}: {e}");
                }
            }
        }
    });
    assert_eq!(transient_handles(&sim), 0, "objects left loaded");
}

#[test]
fn four_threads_sign_through_one_tpm() {
    let sim = Sim::start(Which::A);
    let tpm = Arc::new(Tpm::new(Box::new(NativeDevice::open(&sim.tcti()).unwrap())));
    let key = tpm
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    guarded("4 threads x 50 signs", move || {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (tpm, key) = (tpm.clone(), key.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        sign_checked(&tpm, &key, format!("thread {t} sign {i}").as_bytes())
                            .unwrap_or_else(|e| panic!("thread {t} sign {i}: {e}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a signing thread panicked");
        }
    });
}

#[test]
fn damaged_key_blobs_are_refused_clearly() {
    let sim = Sim::start(Which::A);
    let tpm = Arc::new(Tpm::new(Box::new(NativeDevice::open(&sim.tcti()).unwrap())));
    let (a, b) = tpm
        .with(|d| {
            let t = signing_key_template(KeyType::EcP256);
            Ok((d.create_key(&t)?, d.create_key(&t)?))
        })
        .unwrap();
    let bytes = a.to_bytes();
    for cut in [0, 1, 2, bytes.len() / 2, bytes.len() - 1] {
        let e = KeyBlob::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(e.to_string().contains("key blob"), "cut at {cut}: {e}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let e = KeyBlob::from_bytes(&longer).unwrap_err();
    assert!(e.to_string().contains("key blob"), "trailing byte: {e}");
    // a's public area with b's private part: the TPM's integrity check refuses it.
    let swapped = KeyBlob {
        public: a.public.clone(),
        private: b.private.clone(),
    };
    let t = tpm.clone();
    let e = guarded("load a swapped blob", move || {
        t.with(|d| {
            d.sign(
                &swapped,
                &digest(b"x"),
                SigningScheme::Ecdsa(HashAlg::Sha256),
            )
        })
    })
    .unwrap_err();
    assert!(
        matches!(e, DeviceError::ForeignKey(_)),
        "swapped private: {e}"
    );
    // One bit of the private part flipped: the same.
    let mut flipped = a.clone();
    let n = flipped.private.len();
    flipped.private[n - 1] ^= 1;
    let e = guarded("load a damaged blob", move || {
        tpm.with(|d| d.check_key(&flipped))
    })
    .unwrap_err();
    assert!(
        matches!(e, DeviceError::ForeignKey(_)),
        "flipped private: {e}"
    );
}

/// Starts `swtpm chardev` on one end of a socket pair; returns the other end.
fn chardev(state: &std::path::Path) -> (UnixStream, std::process::Child) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(r#"exec swtpm chardev --tpm2 --fd 3 --tpmstate "dir=$1" --flags not-need-init,startup-clear 3<&0 </dev/null"#)
        .arg("swtpm")
        .arg(state)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()
        .expect("swtpm must be installed (apt-get install swtpm)");
    (ours, child)
}

/// Relays commands from `agent` to `tpm` unchanged and passes each response
/// through `reshape`, which returns the writes to make.
fn device_relay(
    mut agent: UnixStream,
    mut tpm: UnixStream,
    reshape: impl Fn(usize, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        for n in 0.. {
            let Ok(k) = agent.read(&mut buf) else { return };
            if k == 0 || tpm.write_all(&buf[..k]).is_err() {
                return;
            }
            let Ok(k) = tpm.read(&mut buf) else { return };
            for part in reshape(n, buf[..k].to_vec()) {
                if agent.write_all(&part).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
}

#[test]
fn a_device_answering_in_pieces_or_with_too_much() {
    let state = state_copy(Which::A);
    let (to_tpm, mut child) = chardev(&state.path().join("state"));
    let (agent, relay_end) = UnixStream::pair().unwrap();
    // Every response in three writes: 1 byte, the rest of the header, the body.
    device_relay(relay_end, to_tpm, |_, r| {
        let cut = r.len().min(10);
        vec![r[..1].to_vec(), r[1..cut].to_vec(), r[cut..].to_vec()]
    });
    let tpm = Arc::new(Tpm::new(Box::new(NativeDevice::from_stream(
        agent,
        "split device",
    ))));
    let t = tpm.clone();
    guarded("a device answering in pieces", move || {
        let key = t
            .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
            .unwrap();
        for i in 0..5 {
            sign_checked(&t, &key, format!("{i}").as_bytes()).unwrap();
        }
    });
    drop(tpm);
    child.wait().unwrap();

    // Four bytes more than the header announces, on the second response
    // (StartAuthSession's).
    let state = state_copy(Which::A);
    let (to_tpm, mut child) = chardev(&state.path().join("state"));
    let (agent, relay_end) = UnixStream::pair().unwrap();
    device_relay(relay_end, to_tpm, |n, mut r| {
        if n == 1 {
            r.extend_from_slice(&[0; 4]);
        }
        vec![r]
    });
    let tpm = Tpm::new(Box::new(NativeDevice::from_stream(agent, "long device")));
    let e = guarded("a device answering with too much", move || {
        let r = tpm.with(|d| d.create_key(&signing_key_template(KeyType::EcP256)));
        drop(tpm);
        r
    })
    .expect_err("a response longer than announced was accepted");
    assert!(
        matches!(&e, DeviceError::Unavailable { reason, .. } if reason.contains("its header announces")),
        "{e}"
    );
    child.wait().unwrap();
}
