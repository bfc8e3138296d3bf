//! What only the native backend has, and the two backends against each other: a
//! key blob made by one loads and signs in the other (both directions); the
//! character-device transport, on `swtpm chardev` over a socket (the bare
//! command/response stream a /dev/tpm* node carries; no TPM device node exists
//! here, and the QEMU boot tests use a real /dev/tpmrm0); the mssim transport, on a
//! stand-in for the Microsoft simulator's two ports (the simulator itself is not
//! installable here, and swtpm's control port speaks another protocol): its command
//! port relays to swtpm, its platform port records the power-on and NV-on signals.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tessera_core::key::{KeyManager, KeyType, SignatureScheme, verify_signature};
use tessera_tpm::device::native::NativeDevice;
use tessera_tpm::ek::EkKind;
use tessera_tpm::{Backend, Tcti, Tpm, TpmKeyManager};

use crate::common::{Sim, Which, state_copy};

fn sign_and_verify(manager: &TpmKeyManager, id: &str, scheme: SignatureScheme, who: &str) {
    let key = manager
        .get_key(id)
        .unwrap()
        .unwrap_or_else(|| panic!("{who}: no key {id}"));
    let msg = format!("{id} signed by {who}");
    let sig = key
        .sign(scheme, msg.as_bytes())
        .unwrap_or_else(|e| panic!("{who} cannot sign with {id}: {e}"));
    assert!(
        verify_signature(key.public_key_der(), scheme, msg.as_bytes(), &sig),
        "{who}: the signature with {id} does not verify"
    );
}

#[test]
fn key_blobs_cross_between_the_backends_both_ways() {
    let sim = Sim::start(Which::A);
    let dir = sim.path().join("keys");
    let keys = [
        ("ec", KeyType::EcP256, SignatureScheme::EcdsaP256Sha256),
        ("rsa", KeyType::Rsa2048, SignatureScheme::RsaPssSha256),
    ];
    for (made_by, used_by) in [
        (Backend::Esapi, Backend::Native),
        (Backend::Native, Backend::Esapi),
    ] {
        let ids: Vec<String> = keys
            .iter()
            .map(|(n, ..)| format!("{n}-{made_by}"))
            .collect();
        {
            let manager = TpmKeyManager::open(sim.tpm_with(made_by), &dir).unwrap();
            for ((_, kt, _), id) in keys.iter().zip(&ids) {
                manager.generate_key(id, *kt).unwrap();
            }
        }
        // The first backend's connection is closed before the other opens: swtpm
        // serves one client at a time.
        let manager = TpmKeyManager::open(sim.tpm_with(used_by), &dir).unwrap();
        for ((_, _, scheme), id) in keys.iter().zip(&ids) {
            sign_and_verify(
                &manager,
                id,
                *scheme,
                &format!("{used_by} (made by {made_by})"),
            );
        }
    }
}

/// Runs the device operations the agent uses over `tpm`.
fn exercise(tpm: Arc<Tpm>, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let manager = TpmKeyManager::open(tpm.clone(), dir.path()).unwrap();
    manager.generate_key("k", KeyType::EcP256).unwrap();
    sign_and_verify(&manager, "k", SignatureScheme::EcdsaP256Sha256, what);
    let ek = tpm
        .with(|d| d.ek_public(EkKind::Rsa2048))
        .unwrap_or_else(|e| panic!("{what}: EK: {e}"));
    let cert = tpm
        .with(|d| d.nv_read(EkKind::Rsa2048.cert_nv_index()))
        .unwrap_or_else(|e| panic!("{what}: EK certificate: {e}"))
        .unwrap_or_else(|| panic!("{what}: no EK certificate"));
    let parsed = x509_parser::parse_x509_certificate(&cert).unwrap().1;
    assert_eq!(
        parsed.public_key().raw,
        ek.spki().unwrap().as_slice(),
        "{what}: the EK certificate is not the EK's"
    );
}

#[test]
fn the_character_device_transport_speaks_to_swtpm_chardev() {
    let state = state_copy(Which::A);
    let (ours, theirs) = UnixStream::pair().unwrap();
    // swtpm takes no descriptor below 3: bash moves the socket from stdin to 3.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"exec swtpm chardev --tpm2 --fd 3 --tpmstate "dir=$1" --flags not-need-init,startup-clear 3<&0 </dev/null"#)
        .arg("swtpm")
        .arg(state.path().join("state"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()
        .expect("swtpm must be installed (apt-get install swtpm)");
    {
        let device = NativeDevice::from_stream(ours, "swtpm chardev");
        exercise(Arc::new(Tpm::new(Box::new(device))), "chardev");
    }
    // Our end is closed: swtpm sees the end of its stream and exits.
    child.wait().unwrap();
}

/// Two listening ports, P and P+1, both free.
fn port_pair() -> (TcpListener, TcpListener) {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX
            && let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1))
        {
            return (a, b);
        }
    }
    panic!("no free pair of adjacent loopback ports");
}

#[test]
fn the_mssim_transport_powers_on_and_frames_commands() {
    let sim = Sim::start(Which::A);
    let Tcti::Swtpm {
        port: swtpm_port, ..
    } = sim.tcti()
    else {
        panic!("the harness starts swtpm over TCP");
    };
    let (command, platform) = port_pair();
    let port = command.local_addr().unwrap().port();
    let signals = Arc::new(Mutex::new(Vec::<u32>::new()));
    let seen = signals.clone();
    std::thread::spawn(move || {
        for conn in platform.incoming() {
            let Ok(mut s) = conn else { return };
            let mut b = [0u8; 4];
            while s.read_exact(&mut b).is_ok() {
                seen.lock().unwrap().push(u32::from_be_bytes(b));
                if s.write_all(&[0; 4]).is_err() {
                    break;
                }
            }
        }
    });
    // The command port relays the simulator framing to swtpm's, which speaks it.
    std::thread::spawn(move || {
        for conn in command.incoming() {
            let Ok(client) = conn else { return };
            let upstream = TcpStream::connect(("127.0.0.1", swtpm_port)).unwrap();
            let (mut c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c2, &mut u2.try_clone().unwrap()));
            let (mut c, mut u) = (client, upstream);
            let _ = std::io::copy(&mut u, &mut c);
        }
    });
    let tcti: Tcti = format!("mssim:host=127.0.0.1,port={port}").parse().unwrap();
    let tpm = Arc::new(Tpm::open_with(Backend::Native, &tcti).unwrap());
    assert_eq!(
        *signals.lock().unwrap(),
        vec![1, 11],
        "power-on, then NV-on"
    );
    exercise(tpm, "mssim");
}
