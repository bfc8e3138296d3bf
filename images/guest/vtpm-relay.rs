//! The aarch64 boot guest's TPM link (images/boot-test.sh builds it with rustc alone).
//!
//! Debian's arm64 kernel has no driver for the TPM QEMU's `virt` machine offers
//! (`tpm-tis-device` needs `CONFIG_TCG_TIS`, which Debian leaves unset on arm64), but
//! it has the kernel's vTPM proxy (`tpm_vtpm_proxy`). This program asks the proxy for
//! a TPM 2.0 device and carries every command the kernel sends it to swtpm on the
//! host (its TCP data port, over QEMU's user network) and the response back. The
//! guest's /dev/tpm0 and /dev/tpmrm0 are then the kernel's own TPM devices, with its
//! resource manager, backed by swtpm.
//!
//!     vtpm-relay HOST:PORT
//!
//! Prints the device's number, then relays until the kernel or swtpm hangs up.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::ExitCode;

/// `struct vtpm_proxy_new_dev` of <linux/vtpm_proxy.h>.
#[repr(C)]
#[derive(Default)]
struct NewDev {
    flags: u32,
    tpm_num: u32,
    fd: u32,
    major: u32,
    minor: u32,
}

/// `_IOWR(0xa1, 0x00, struct vtpm_proxy_new_dev)`.
const VTPM_PROXY_IOC_NEW_DEV: u32 = 0xC014_A100;
/// `VTPM_PROXY_FLAG_TPM2`.
const FLAG_TPM2: u32 = 1;
/// The proxy's own command to change locality; swtpm's TCP channel has no such
/// command, and one locality is all the guest uses, so it is answered here.
const CC_SET_LOCALITY: u32 = 0x2000_1000;
/// The largest command or response the proxy passes (`TPM_BUFSIZE`).
const BUFSIZE: usize = 4096;

unsafe extern "C" {
    fn ioctl(fd: i32, request: i32, ...) -> i32;
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vtpm-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: vtpm-relay HOST:PORT (swtpm's data port)")?;
    let mut tpm =
        TcpStream::connect(&addr).map_err(|e| format!("cannot reach swtpm at {addr}: {e}"))?;
    tpm.set_nodelay(true).map_err(|e| e.to_string())?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vtpmx")
        .map_err(|e| format!("cannot open /dev/vtpmx (is tpm_vtpm_proxy loaded?): {e}"))?;
    let mut new = NewDev {
        flags: FLAG_TPM2,
        ..NewDev::default()
    };
    // SAFETY: the request takes a pointer to a `struct vtpm_proxy_new_dev`, which
    // `NewDev` lays out exactly, and the kernel writes only within it.
    let rc = unsafe {
        ioctl(
            ctl.as_raw_fd(),
            VTPM_PROXY_IOC_NEW_DEV as i32,
            &mut new as *mut NewDev,
        )
    };
    if rc != 0 {
        return Err(format!(
            "VTPM_PROXY_IOC_NEW_DEV failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel handed us this new descriptor; nothing else owns it.
    let mut dev = unsafe { File::from_raw_fd(new.fd as i32) };
    println!(
        "vtpm-relay: /dev/tpm{} relays to swtpm at {addr}",
        new.tpm_num
    );
    let mut buf = vec![0u8; BUFSIZE];
    loop {
        // One read is one whole command.
        let n = dev
            .read(&mut buf)
            .map_err(|e| format!("reading the proxy: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        if n < 10 {
            return Err(format!("a {n}-byte command is shorter than a TPM header"));
        }
        let code = u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]);
        let response = if code == CC_SET_LOCALITY {
            // TPM_ST_NO_SESSIONS, size 10, TPM_RC_SUCCESS.
            vec![0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0]
        } else {
            tpm.write_all(&buf[..n])
                .map_err(|e| format!("sending to swtpm: {e}"))?;
            let mut head = [0u8; 6];
            tpm.read_exact(&mut head)
                .map_err(|e| format!("reading swtpm's response: {e}"))?;
            let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
            if !(10..=BUFSIZE).contains(&size) {
                return Err(format!("swtpm answered with a response of {size} bytes"));
            }
            let mut response = head.to_vec();
            response.resize(size, 0);
            tpm.read_exact(&mut response[6..])
                .map_err(|e| format!("reading swtpm's response: {e}"))?;
            response
        };
        dev.write_all(&response)
            .map_err(|e| format!("writing to the proxy: {e}"))?;
    }
}
