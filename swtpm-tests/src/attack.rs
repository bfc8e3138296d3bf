//! Helpers for the attack tests against the Workload API: gRPC requests written by
//! hand (so that one can be split around a fork), descriptors passed between
//! processes, callers run as another user through `setpriv`, a process started under
//! a chosen PID, and the agent's resident memory.

use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_agent::workload::authority::HeaderDecoder;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The user the attacker runs as (`nobody` on Debian).
pub const NOBODY: u32 = 65_534;

/// The gRPC path of FetchX509SVID.
pub const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    assert!(len < 1 << 24, "frame too large");
    let len = len.to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK string literal (raw, not Huffman-coded; shorter than 127 bytes).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u8::try_from(s.len())
        .ok()
        .filter(|l| *l < 127)
        .expect("short string");
    out.push(len);
    out.extend(s.as_bytes());
}

/// The first bytes of a gRPC call on a new connection: the preface, an empty
/// SETTINGS frame and the request headers on stream 1 (no END_STREAM: the message
/// follows in [`grpc_request_end`]).
pub fn grpc_request_head(path: &str) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ] {
        // Literal header field without indexing, new name.
        block.push(0x00);
        put_str(&mut block, name);
        put_str(&mut block, value);
    }
    out.extend(frame(0x1, 0x4, 1, &block));
    out
}

/// The end of the call: an empty request message with END_STREAM.
pub fn grpc_request_end() -> Vec<u8> {
    frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])
}

/// Sends `fd` over `to` (SCM_RIGHTS).
pub fn send_fd(to: &UnixStream, fd: BorrowedFd<'_>) -> Result<(), String> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("no room for the descriptor".into());
    }
    sendmsg(to, &[IoSlice::new(b"F")], &mut cmsg, SendFlags::empty())
        .map_err(|e| format!("sendmsg: {e}"))?;
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`].
pub fn recv_fd(from: &UnixStream) -> Result<OwnedFd, String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    recvmsg(
        from,
        &mut [IoSliceMut::new(&mut byte)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err("no descriptor received".into())
}

/// A gRPC answer read off a connection by hand.
#[derive(Debug, Default)]
pub struct RawAnswer {
    /// `grpc-status`, if the agent sent one.
    pub status: Option<String>,
    /// `grpc-message`, percent-decoded.
    pub message: String,
    /// The payload of every DATA frame on stream 1.
    pub data: Vec<u8>,
    /// How the exchange ended, for messages.
    pub end: String,
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `data` starts with a whole length-prefixed gRPC message.
fn grpc_message_complete(data: &[u8]) -> bool {
    data.len() >= 5
        && data.len() - 5 >= u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize
}

/// Reads the agent's answer to a call on stream 1 of `sock`: until the stream ends,
/// the connection is closed or `timeout` passes.
pub fn read_answer(sock: &mut UnixStream, timeout: Duration) -> RawAnswer {
    let end = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut answer = RawAnswer::default();
    let mut hpack = HeaderDecoder::default();
    let mut block: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Every complete frame in the buffer.
        while buf.len() >= pos + 9 {
            let h = &buf[pos..pos + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if buf.len() < pos + 9 + len {
                break;
            }
            let payload = buf[pos + 9..pos + 9 + len].to_vec();
            pos += 9 + len;
            match kind {
                0x0 if stream == 1 => {
                    let body = if flags & 0x8 != 0 {
                        &payload[1..payload.len() - usize::from(payload[0])]
                    } else {
                        &payload[..]
                    };
                    answer.data.extend_from_slice(body);
                    // A stream stays open after its first message: that is enough.
                    if grpc_message_complete(&answer.data) {
                        answer.end = "a message".into();
                        return answer;
                    }
                    if flags & 0x1 != 0 {
                        answer.end = "end of stream".into();
                        return answer;
                    }
                }
                0x1 | 0x9 => {
                    let mut frag = payload.as_slice();
                    if kind == 0x1 {
                        let mut pad = 0;
                        if flags & 0x8 != 0 {
                            pad = usize::from(frag[0]);
                            frag = &frag[1..];
                        }
                        if flags & 0x20 != 0 {
                            frag = &frag[5..];
                        }
                        frag = &frag[..frag.len() - pad];
                    }
                    block.extend_from_slice(frag);
                    if flags & 0x4 != 0 {
                        let fields = hpack.decode(&block).expect("the agent's HPACK decodes");
                        block.clear();
                        for (name, value) in fields {
                            match name.as_slice() {
                                b"grpc-status" => {
                                    answer.status = Some(String::from_utf8_lossy(&value).into())
                                }
                                b"grpc-message" => answer.message = percent_decode(&value),
                                _ => {}
                            }
                        }
                    }
                    if stream == 1 && flags & 0x1 != 0 {
                        answer.end = "end of stream".into();
                        return answer;
                    }
                }
                0x3 if stream == 1 => {
                    answer.end = format!("RST_STREAM {payload:?}");
                    return answer;
                }
                0x7 => {
                    answer.end = format!("GOAWAY {payload:?}");
                    return answer;
                }
                _ => {}
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            answer.end = "timeout".into();
            return answer;
        }
        sock.set_read_timeout(Some(left)).expect("read timeout");
        match sock.read(&mut chunk) {
            Ok(0) => {
                answer.end = "connection closed".into();
                return answer;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                answer.end = format!("read error: {e}");
                return answer;
            }
        }
    }
}

/// A tonic channel over an already connected socket (one connection; it is not
/// reopened).
pub async fn channel_over(fd: OwnedFd) -> Channel {
    let std = UnixStream::from(fd);
    std.set_nonblocking(true).expect("non-blocking");
    let slot = std::sync::Mutex::new(Some(
        tokio::net::UnixStream::from_std(std).expect("tokio stream"),
    ));
    let slot = std::sync::Arc::new(slot);
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let s = slot.lock().expect("slot").take();
            async move {
                s.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the passed socket was used already"))
            }
        }))
        .await
        .expect("channel over the passed socket")
}

type HeaderFn = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// A Workload API client that adds the security header.
pub type WorkloadClient = SpiffeWorkloadApiClient<InterceptedService<Channel, HeaderFn>>;

fn security_header(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(r)
}

/// Wraps a channel in a Workload API client.
pub fn workload_client(ch: Channel) -> WorkloadClient {
    SpiffeWorkloadApiClient::with_interceptor(ch, security_header as HeaderFn)
}

/// Lets other users reach `dir` (test directories are private by default) and
/// panics unless this process is root (only root can start callers as others).
pub fn open_to_others(dir: &Path) {
    assert_eq!(
        crate::my_uid(),
        0,
        "the attack tests start callers as other users with setpriv and must run as root"
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A copy of project binary `name` in `dir`, which other users can run whatever
/// the permissions of the build directory.
pub fn shared_binary(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    if !to.exists() {
        std::fs::copy(crate::bin(name), &to).expect("copy binary");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    to
}

/// `setpriv` running a command as `uid`/`gid` with no supplementary groups.
pub fn as_user(uid: u32, gid: u32, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    cmd
}

/// A listening socket in `dir` that any user may connect to, for descriptors
/// handed back by callers.
fn handoff_listener(dir: &Path) -> (UnixListener, PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = dir.join(format!("handoff-{n}.sock"));
    let l = UnixListener::bind(&path).expect("bind handoff socket");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    l.set_nonblocking(true).expect("non-blocking");
    (l, path)
}

/// Where a caller's messages go: `dir/<name>.log`, shown when it fails.
fn log_file(dir: &Path, name: &str) -> (PathBuf, std::fs::File) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = dir.join(format!("{name}-{n}.log"));
    let f = std::fs::File::create(&path).expect("log file");
    (path, f)
}

/// Accepts one connection on `l` and receives `count` descriptors sent on it;
/// panics after 20 s, with what `child` said (in `log`).
fn receive(l: &UnixListener, child: &mut Child, log: &Path, count: usize) -> Vec<OwnedFd> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                return (0..count)
                    .map(|_| recv_fd(&s).expect("descriptor"))
                    .collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the caller exited ({status}) without handing over its socket: {said}");
        }
        assert!(
            Instant::now() < end,
            "the caller did not hand over its socket in 20 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A caller that connected to the agent as another user and handed its connected
/// sockets to the test; it waits for commands.
#[derive(Debug)]
pub struct Handoff {
    pub child: Child,
    /// The caller's connected sockets, as the test holds them.
    pub sockets: Vec<OwnedFd>,
}

impl Handoff {
    /// Starts `attack-caller handoff` as `uid`/`gid` against `agent_socket`.
    pub fn start(dir: &Path, agent_socket: &Path, uid: u32, gid: u32) -> Self {
        Self::start_many(dir, agent_socket, uid, gid, 1)
    }

    /// Like [`Handoff::start`], with `count` connections.
    pub fn start_many(dir: &Path, agent_socket: &Path, uid: u32, gid: u32, count: usize) -> Self {
        let helper = shared_binary(dir, "attack-caller");
        let (l, path) = handoff_listener(dir);
        let (log, f) = log_file(dir, "handoff");
        let mut child = as_user(uid, gid, &helper)
            .arg("handoff")
            .arg(agent_socket)
            .arg(&path)
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("setpriv attack-caller");
        let sockets = receive(&l, &mut child, &log, count);
        Handoff { child, sockets }
    }

    /// The caller's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line (`exit`, `exec PROGRAM ARGS...`).
    pub fn command(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("command");
        stdin.flush().expect("flush");
    }

    /// Tells the caller to exit and reaps it: its PID is free afterwards.
    pub fn exit(&mut self) {
        self.command("exit");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "attack-caller: {status}");
    }

    /// Takes the first connected socket.
    pub fn take_socket(&mut self) -> OwnedFd {
        assert!(!self.sockets.is_empty(), "no socket left");
        self.sockets.remove(0)
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the fork attack: as `uid`/`gid`, connects to the agent, sends the headers
/// of a FetchX509SVID request, starts a child holding the socket and executes
/// `program` (`-`: nothing) while the child finishes the request. Returns the
/// connecting process (still running `program`; the test kills it) and the answer
/// the child's request got.
pub fn fork_race(
    dir: &Path,
    agent_socket: &Path,
    uid: u32,
    gid: u32,
    program: &[&str],
) -> (Child, RawAnswer) {
    let helper = shared_binary(dir, "attack-caller");
    let (l, path) = handoff_listener(dir);
    let (log, f) = log_file(dir, "race");
    let mut child = as_user(uid, gid, &helper)
        .arg("race")
        .arg(agent_socket)
        .arg(&path)
        .args(program)
        // Kept open and never written: a program that reads its input waits.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("setpriv attack-caller");
    let fd = receive(&l, &mut child, &log, 1).pop().expect("one socket");
    let mut sock = UnixStream::from(fd);
    let answer = read_answer(&mut sock, Duration::from_secs(15));
    (child, answer)
}

/// The effective UID of process `pid` now.
pub fn euid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The resident memory of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Starts `make()` so that it runs as PID `pid` (which must be free): through
/// `/proc/sys/kernel/ns_last_pid` when it is writable, otherwise by cycling
/// through PIDs when the PID space is small enough. Retries when another process
/// on the machine takes the PID first.
pub fn spawn_with_pid(pid: u32, mut make: impl FnMut() -> Command) -> Child {
    let last_pid = Path::new("/proc/sys/kernel/ns_last_pid");
    for _ in 0..500 {
        if std::fs::write(last_pid, (pid - 1).to_string()).is_err() {
            break;
        }
        let mut child = make().spawn().expect("spawn");
        if child.id() == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX);
    assert!(
        pid_max <= 1 << 17,
        "cannot start a process under a chosen PID here: ns_last_pid is not writable and pid_max is {pid_max}"
    );
    for _ in 0..20 * pid_max {
        let mut filler = Command::new("true").spawn().expect("spawn true");
        let got = filler.id();
        let _ = filler.wait();
        if got + 1 == pid {
            let mut child = make().spawn().expect("spawn");
            if child.id() == pid {
                return child;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    panic!("could not start a process as PID {pid}");
}
