//! How command bytes reach the TPM and response bytes come back: a character device
//! (`/dev/tpmrm0`, `/dev/tpm0`: write one command, read one response), swtpm's TCP
//! command socket, and the Microsoft/IBM simulator (`mssim`). swtpm's command
//! channel and the simulator's speak the same framing: `TPM_SEND_COMMAND` (8), a
//! locality byte, the command's length and bytes; back come the response's length,
//! its bytes and a 32-bit acknowledgement (0). The simulator also has a platform
//! port (command port + 1) that must be told power-on and NV-on before the TPM
//! answers; swtpm's control port speaks another protocol and is not touched.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

/// The largest response accepted: TPMs answer with at most a few KiB (4096 is the
/// usual maximum buffer), so anything larger is a desynchronised or hostile stream.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;
/// The TPM response header: tag, size, response code.
const HEADER: usize = 10;

const TPM_SEND_COMMAND: u32 = 8;
const TPM_SIGNAL_POWER_ON: u32 = 1;
const TPM_SIGNAL_NV_ON: u32 = 11;

/// How long a TPM on a socket may take to answer before the conversation counts as
/// broken, unless told otherwise: RSA key generation on a slow TPM takes tens of
/// seconds. (A device node has the kernel driver's own timeouts.)
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// One command in, one response out.
pub(crate) trait Transport: Send {
    /// Sends `command` and returns the whole response (header included).
    fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>>;
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The size a response header announces, checked against the limits.
fn announced_size(header: &[u8]) -> io::Result<usize> {
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if !(HEADER..=MAX_RESPONSE).contains(&size) {
        return Err(invalid(format!(
            "the response header announces {size} bytes (expected {HEADER} to {MAX_RESPONSE})"
        )));
    }
    Ok(size)
}

/// A character device, or any stream carrying bare commands and responses (swtpm
/// `chardev` on a socket does the same). The response is read until the size its
/// header announces: a device returns it in one read, a stream perhaps in several.
pub(crate) struct DeviceTransport<S> {
    stream: S,
}

impl DeviceTransport<File> {
    /// Opens a device node for reading and writing.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = File::options().read(true).write(true).open(path)?;
        Ok(Self { stream: file })
    }
}

impl<S: Read + Write> DeviceTransport<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self { stream }
    }
}

impl<S: Read + Write + Send> Transport for DeviceTransport<S> {
    fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
        // One write: the kernel driver takes a command only whole.
        let written = self.stream.write(command)?;
        if written != command.len() {
            return Err(invalid(format!(
                "the device took {written} of {} command bytes",
                command.len()
            )));
        }
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        let mut want = HEADER;
        while have < want {
            if have == buf.len() {
                buf.resize((buf.len() * 2).min(MAX_RESPONSE), 0);
            }
            let n = self.stream.read(&mut buf[have..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the response ended after {have} bytes"),
                ));
            }
            have += n;
            if have >= HEADER {
                want = announced_size(&buf[..HEADER])?;
                if buf.len() < want {
                    buf.resize(want, 0);
                }
            }
        }
        if have > want {
            return Err(invalid(format!(
                "the device returned {have} bytes, its header announces {want}"
            )));
        }
        buf.truncate(want);
        Ok(buf)
    }
}

/// swtpm's command socket or the simulator's, in the simulator's framing.
pub(crate) struct SocketTransport {
    stream: TcpStream,
    timeout: Duration,
}

fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => {
                // A command is written in pieces (header, then body); without
                // TCP_NODELAY each exchange waits on delayed acknowledgements.
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

impl SocketTransport {
    /// Connects to a command port.
    pub(crate) fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<Self> {
        Ok(Self {
            stream: connect(host, port, timeout)?,
            timeout,
        })
    }

    /// Over an already connected stream (the tests' hostile servers).
    #[cfg(test)]
    pub(crate) fn over(stream: TcpStream) -> Self {
        Self {
            stream,
            timeout: IO_TIMEOUT,
        }
    }
}

/// Frames `command` as TPM_SEND_COMMAND at locality 0.
pub(crate) fn frame(command: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(command.len() + 9);
    out.extend_from_slice(&TPM_SEND_COMMAND.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&(command.len() as u32).to_be_bytes());
    out.extend_from_slice(command);
    out
}

impl Transport for SocketTransport {
    fn transact(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
        self.exchange(command).map_err(|e| match e.kind() {
            // What a socket timeout looks like on Linux, and elsewhere.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the TPM did not answer within {:?}", self.timeout),
            ),
            _ => e,
        })
    }
}

impl SocketTransport {
    fn exchange(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
        self.stream.write_all(&frame(command))?;
        // One deadline for the whole answer: a TPM (or an interposer) that sends a
        // byte now and then must not keep each read's timeout from firing.
        let mut stream = Timed {
            stream: &mut self.stream,
            deadline: Instant::now() + self.timeout,
        };
        let len = read_u32(&mut stream)? as usize;
        if !(HEADER..=MAX_RESPONSE).contains(&len) {
            return Err(invalid(format!(
                "the simulator announces a {len}-byte response (expected {HEADER} to {MAX_RESPONSE})"
            )));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        let ack = read_u32(&mut stream)?;
        if ack != 0 {
            return Err(invalid(format!(
                "the simulator acknowledged the command with {ack} instead of 0"
            )));
        }
        if announced_size(&body)? != len {
            return Err(invalid(format!(
                "the simulator framed {len} bytes, the response header announces {}",
                announced_size(&body)?
            )));
        }
        Ok(body)
    }
}

/// A socket read against a deadline: each read waits only for what is left of it.
struct Timed<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Powers the simulator on through its platform port (command port + 1): power-on,
/// then NV-on, each acknowledged with 0.
pub(crate) fn mssim_power_on(host: &str, port: u16, timeout: Duration) -> io::Result<()> {
    let platform = port
        .checked_add(1)
        .ok_or_else(|| invalid("the platform port would be past 65535".into()))?;
    let mut s = connect(host, platform, timeout)?;
    for signal in [TPM_SIGNAL_POWER_ON, TPM_SIGNAL_NV_ON] {
        s.write_all(&signal.to_be_bytes())?;
        let ack = read_u32(&mut s)?;
        if ack != 0 {
            return Err(invalid(format!(
                "the simulator's platform port answered signal {signal} with {ack}"
            )));
        }
    }
    Ok(())
}
