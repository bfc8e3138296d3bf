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

mod device;
mod interposer;
mod load;
mod proxy;

use std::sync::{Arc, mpsc};
use std::time::Duration;

use tessera_core::key::KeyType;
use tessera_tpm::device::native::NativeDevice;
use tessera_tpm::device::{DeviceError, KeyBlob, SigningScheme, signing_key_template};
use tessera_tpm::verifier::signature::verify_signature;
use tessera_tpm::wire::HashAlg;
use tessera_tpm::{Tcti, Tpm};

use self::proxy::{Fault, Proxy};
use crate::common::{Sim, Which};

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
