//! The character-device transport against a device that answers in pieces or
//! with more than its header announces (a relay in front of `swtpm chardev`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use super::*;
use crate::common::state_copy;

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
