//! Who is calling, pinned at connect time.
//!
//! The caller of the Workload API is the process that connected to the socket, with
//! the credentials the kernel recorded at `connect()` (SO_PEERCRED: PID, UID, GID;
//! SO_PEERGROUPS: supplementary groups). Whoever writes to the socket later (a forked
//! child, a process it was passed to) acts for that process and can obtain nothing
//! more than that process could.
//!
//! When a connection is accepted the connecting process is pinned:
//!
//! - a pidfd for it: from the socket itself (SO_PEERPIDFD, Linux 6.5), which names
//!   exactly the process that connected; else `pidfd_open` on the reported PID (Linux
//!   5.3), or, on older kernels, an open `/proc/<pid>` directory. A pidfd or an open
//!   `/proc/<pid>` directory stays bound to that one process, so a later read can
//!   never land on a reused PID;
//! - a [`ProcessMark`] of it: start time, the executable's device and inode, the
//!   address-space layout chosen at exec, and the real, effective, saved and
//!   filesystem UIDs and GIDs and the supplementary groups.
//!
//! The effective UID and GID at pinning must be the ones the kernel reported for the
//! connect, and the groups the same set. At every request (and before every stream
//! update) [`Pinned::check`] reads the mark again through the pinned handle and
//! refuses when the process has exited, when any credential differs (a setuid or
//! setgid exec, `setresuid`), or when it executed another program. Attestation reads
//! between two checks, so nothing read belongs to a different program or user.
//!
//! What happens between `connect()` and the agent's `accept()` is seen only through
//! the credentials: a program executed in that window is taken as the caller's (its
//! user and groups are still the connect-time ones; a setuid or setgid program has
//! other effective IDs and is refused), and on kernels without SO_PEERPIDFD a PID
//! reused in that window is accepted only if the new process runs with the same
//! effective UID and GID as the one that connected.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use tessera_h2_authority::{AuthorityFix, fix_authority};

/// The caller's credentials as the kernel recorded them at `connect()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// 0 when the caller is in another PID namespace (the kernel cannot name it).
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Why a caller is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    #[error("the kernel gave no peer credentials for the connection: {0}")]
    NoCredentials(String),
    #[error(
        "the caller's PID is not visible from the agent's PID namespace; run the agent in the workloads' PID namespace"
    )]
    NotVisible,
    #[error(
        "the process that connected (PID {pid}) has exited; a socket outlives the process that opened it but not its identity: connect again from the live process"
    )]
    Gone { pid: i32 },
    #[error(
        "the process that connected (PID {pid}) changed its credentials since it connected ({what}: {then} at connect, {now} now), by a setuid or setgid program or a change of user; connect again after changing credentials"
    )]
    CredentialsChanged {
        pid: i32,
        what: &'static str,
        then: String,
        now: String,
    },
    #[error(
        "the process that connected (PID {pid}) executed another program since it connected ({what} changed); connect again from the new program"
    )]
    Executed { pid: i32, what: &'static str },
    #[error("PID {pid} now belongs to another process than the one that connected")]
    Reused { pid: i32 },
    #[error("cannot pin the process that connected: {0}")]
    Pin(String),
    #[error("cannot read /proc/{pid}/{file}: {error}")]
    Proc {
        pid: i32,
        file: &'static str,
        error: String,
    },
}

/// What identifies a process's program and credentials at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMark {
    /// Clock ticks since boot (field 22 of `stat`): another process that reuses the
    /// PID has another one.
    pub start_time: u64,
    /// State letter (field 3 of `stat`).
    pub state: char,
    /// Start and end of the code, start of the stack (fields 26-28 of `stat`): chosen
    /// at exec and randomised for each, so an exec of the same file shows too. Zero
    /// when the kernel hides them from the agent (no ptrace access).
    pub layout: [u64; 3],
    /// Device and inode of the executable; `None` when it cannot be read (a kernel
    /// thread, an exiting process, or no ptrace access).
    pub exe: Option<(u64, u64)>,
    /// Real, effective, saved and filesystem UIDs.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem GIDs.
    pub gids: [u32; 4],
    /// Supplementary groups, sorted.
    pub groups: Vec<u32>,
}

impl ProcessMark {
    /// Reads the mark of the process whose `/proc/<pid>` directory is `dir`.
    pub fn read(dir: BorrowedFd<'_>, pid: i32) -> Result<Self, CallerError> {
        let stat = read_proc(dir, pid, "stat")?;
        let status = read_proc(dir, pid, "status")?;
        let st = parse_stat(&stat).ok_or_else(|| malformed(pid, "stat"))?;
        let uids = id_line(&status, "Uid:").ok_or_else(|| malformed(pid, "status"))?;
        let gids = id_line(&status, "Gid:").ok_or_else(|| malformed(pid, "status"))?;
        let mut groups = groups_line(&status).ok_or_else(|| malformed(pid, "status"))?;
        groups.sort_unstable();
        groups.dedup();
        let exe = rustix::fs::statat(dir, "exe", AtFlags::empty())
            .ok()
            .map(|s| (s.st_dev, s.st_ino));
        Ok(ProcessMark {
            start_time: st.start_time,
            state: st.state,
            layout: st.layout,
            exe,
            uids,
            gids,
            groups,
        })
    }

    /// How `now` differs from `self` (the mark at connect time), if at all.
    pub fn compare(&self, now: &ProcessMark, pid: i32) -> Result<(), CallerError> {
        if now.start_time != self.start_time {
            return Err(CallerError::Reused { pid });
        }
        let changed = |what, then: String, now: String| CallerError::CredentialsChanged {
            pid,
            what,
            then,
            now,
        };
        if now.uids != self.uids {
            return Err(changed("uids", ids(&self.uids), ids(&now.uids)));
        }
        if now.gids != self.gids {
            return Err(changed("gids", ids(&self.gids), ids(&now.gids)));
        }
        if now.groups != self.groups {
            return Err(changed("groups", ids(&self.groups), ids(&now.groups)));
        }
        if now.exe != self.exe {
            return Err(CallerError::Executed {
                pid,
                what: "executable file",
            });
        }
        if now.layout != self.layout {
            return Err(CallerError::Executed {
                pid,
                what: "address-space layout",
            });
        }
        Ok(())
    }
}

fn ids(v: &[u32]) -> String {
    let s: Vec<String> = v.iter().map(u32::to_string).collect();
    format!("[{}]", s.join(" "))
}

fn malformed(pid: i32, file: &'static str) -> CallerError {
    CallerError::Proc {
        pid,
        file,
        error: "unexpected format".into(),
    }
}

/// Reads `/proc/<pid>/<file>` through the open directory; a process that is gone
/// (ESRCH, ENOENT) is [`CallerError::Gone`].
fn read_proc(dir: BorrowedFd<'_>, pid: i32, file: &'static str) -> Result<String, CallerError> {
    let gone_or = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ESRCH | libc::ENOENT) => CallerError::Gone { pid },
        _ => CallerError::Proc {
            pid,
            file,
            error: e.to_string(),
        },
    };
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| gone_or(e.into()))?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .map_err(gone_or)?;
    Ok(text)
}

struct Stat {
    state: char,
    start_time: u64,
    layout: [u64; 3],
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// itself hold spaces or ')', so fields are counted after the last ')'.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |n: usize| fields.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: num(22)?,
        layout: [num(26)?, num(27)?, num(28)?],
    })
}

/// The four IDs of a `Uid:` or `Gid:` line of `/proc/<pid>/status`.
fn id_line(status: &str, key: &str) -> Option<[u32; 4]> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let v: Vec<u32> = line[key.len()..]
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

/// The supplementary groups of `/proc/<pid>/status` (an empty line is no groups).
fn groups_line(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    line["Groups:".len()..]
        .split_whitespace()
        .map(|s| s.parse().ok())
        .collect()
}

/// How the connecting process is held.
#[derive(Debug)]
enum Handle {
    /// A pidfd (see [`PidfdSource`]); `/proc/<pid>` is opened for each check and the
    /// pidfd tells afterwards whether the PID still named the same process.
    Pidfd(OwnedFd, PidfdSource),
    /// The kernel has no pidfds: the `/proc/<pid>` directory, opened at accept.
    ProcDir(OwnedFd),
}

/// Where the pidfd came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfdSource {
    /// SO_PEERPIDFD: the process that called `connect()`, exactly.
    Socket,
    /// `pidfd_open` of the PID SO_PEERCRED reported, at accept.
    Opened,
}

/// A connecting process, pinned at accept (see the module documentation).
#[derive(Debug)]
pub struct Pinned {
    cred: PeerCred,
    groups: Vec<u32>,
    handle: Handle,
    mark: ProcessMark,
}

/// A `/proc/<pid>` directory of a pinned process, valid for one check.
#[derive(Debug)]
pub enum ProcDir<'a> {
    Owned(OwnedFd),
    Borrowed(BorrowedFd<'a>),
}

impl AsFd for ProcDir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ProcDir::Owned(fd) => fd.as_fd(),
            ProcDir::Borrowed(fd) => *fd,
        }
    }
}

impl Pinned {
    /// Pins the process at the other end of `sock` (a freshly accepted connection)
    /// whose SO_PEERCRED credentials are `cred`.
    pub fn pin(sock: BorrowedFd<'_>, cred: PeerCred) -> Result<Pinned, CallerError> {
        let groups = match peer_groups(sock) {
            Ok(g) => Some(g),
            // Older than Linux 4.13: the groups are taken from the pinned process.
            Err(Errno::NOPROTOOPT | Errno::INVAL) => None,
            Err(e) => return Err(CallerError::NoCredentials(format!("SO_PEERGROUPS: {e}"))),
        };
        Self::pin_cred(cred, groups, || peer_pidfd(sock), pidfd_open)
    }

    /// Pins process `cred.pid`; `socket_pidfd` gives the socket's own pidfd when the
    /// kernel has one, `open_pidfd` opens one by PID.
    fn pin_cred(
        cred: PeerCred,
        groups: Option<Vec<u32>>,
        socket_pidfd: impl FnOnce() -> Result<OwnedFd, Errno>,
        open_pidfd: impl FnOnce(i32) -> Result<OwnedFd, Errno>,
    ) -> Result<Pinned, CallerError> {
        let pid = cred.pid;
        if pid <= 0 {
            return Err(CallerError::NotVisible);
        }
        let gone = CallerError::Gone { pid };
        let cannot = |what: &str, e: Errno| CallerError::Pin(format!("{what}: {e}"));
        let handle = match socket_pidfd() {
            Ok(fd) => Handle::Pidfd(fd, PidfdSource::Socket),
            // The kernel knows the option but the process that connected has no
            // task left: it is gone, whatever now runs under its PID.
            Err(Errno::SRCH | Errno::INVAL) => return Err(gone),
            // Older than Linux 6.5 (or no peer PID recorded): by PID.
            Err(Errno::NOPROTOOPT | Errno::NODATA) => match open_pidfd(pid) {
                Ok(fd) => Handle::Pidfd(fd, PidfdSource::Opened),
                Err(Errno::SRCH) => return Err(gone),
                // Older than Linux 5.3: an open /proc/<pid> directory.
                Err(e @ Errno::NOSYS) => {
                    pidfd_fallback_notice(e);
                    Handle::ProcDir(open_proc_dir(pid)?)
                }
                Err(e) => return Err(cannot("pidfd_open", e)),
            },
            Err(e) => return Err(cannot("SO_PEERPIDFD", e)),
        };
        let mut pinned = Pinned {
            cred,
            groups: Vec::new(),
            handle,
            mark: ProcessMark {
                start_time: 0,
                state: '?',
                layout: [0; 3],
                exe: None,
                uids: [0; 4],
                gids: [0; 4],
                groups: Vec::new(),
            },
        };
        let (_, mark) = pinned.observe()?;
        // The kernel's connect-time credentials must still be the process's.
        let changed = |what, then: u32, now: u32| CallerError::CredentialsChanged {
            pid,
            what,
            then: then.to_string(),
            now: now.to_string(),
        };
        if mark.uids[1] != cred.uid {
            return Err(changed("effective uid", cred.uid, mark.uids[1]));
        }
        if mark.gids[1] != cred.gid {
            return Err(changed("effective gid", cred.gid, mark.gids[1]));
        }
        let groups = match groups {
            Some(mut g) => {
                g.sort_unstable();
                g.dedup();
                if g != mark.groups {
                    return Err(CallerError::CredentialsChanged {
                        pid,
                        what: "groups",
                        then: ids(&g),
                        now: ids(&mark.groups),
                    });
                }
                g
            }
            None => mark.groups.clone(),
        };
        pinned.groups = groups;
        pinned.mark = mark;
        Ok(pinned)
    }

    /// The connect-time credentials.
    pub fn cred(&self) -> PeerCred {
        self.cred
    }

    /// The connect-time supplementary groups, sorted.
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// The mark taken at accept.
    pub fn mark(&self) -> &ProcessMark {
        &self.mark
    }

    /// How the process is held: the pidfd's source, or `None` for an open
    /// `/proc/<pid>` directory (no pidfds in this kernel).
    pub fn pidfd_source(&self) -> Option<PidfdSource> {
        match &self.handle {
            Handle::Pidfd(_, s) => Some(*s),
            Handle::ProcDir(_) => None,
        }
    }

    /// Opens the pinned process's `/proc` directory and reads its mark, making sure
    /// both belong to the pinned process.
    fn observe(&self) -> Result<(ProcDir<'_>, ProcessMark), CallerError> {
        let pid = self.cred.pid;
        match &self.handle {
            Handle::Pidfd(pidfd, _) => {
                let dir = open_proc_dir(pid)?;
                let mark = ProcessMark::read(dir.as_fd(), pid)?;
                // Checked after the reads: if the pinned process is still there, the
                // PID was not reused, so the directory and the mark were its own.
                if exited(pidfd.as_fd()) {
                    return Err(CallerError::Gone { pid });
                }
                Ok((ProcDir::Owned(dir), mark))
            }
            Handle::ProcDir(dir) => {
                let mark = ProcessMark::read(dir.as_fd(), pid)?;
                if matches!(mark.state, 'Z' | 'X') {
                    return Err(CallerError::Gone { pid });
                }
                Ok((ProcDir::Borrowed(dir.as_fd()), mark))
            }
        }
    }

    /// Refuses unless the pinned process is alive, runs the program it ran at accept
    /// and has the credentials it had then; gives its `/proc` directory for reads
    /// that a second `check` must confirm.
    pub fn check(&self) -> Result<ProcDir<'_>, CallerError> {
        let (dir, now) = self.observe()?;
        self.mark.compare(&now, self.cred.pid)?;
        Ok(dir)
    }
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    let p = rustix::process::Pid::from_raw(pid).ok_or(Errno::SRCH)?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
}

fn open_proc_dir(pid: i32) -> Result<OwnedFd, CallerError> {
    rustix::fs::openat(
        CWD,
        format!("/proc/{pid}"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT | Errno::SRCH => CallerError::Gone { pid },
        e => CallerError::Proc {
            pid,
            file: "",
            error: e.to_string(),
        },
    })
}

/// Whether the process of `pidfd` has exited: a pidfd polls readable then.
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(n) => n > 0,
        // Cannot tell: count it as gone rather than trust a reused PID.
        Err(_) => true,
    }
}

/// Says once per process that this kernel has no pidfds.
fn pidfd_fallback_notice(e: Errno) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "pidfd_open failed ({e}): this kernel has no pidfds (Linux 5.3 and later have them); Workload API callers are pinned by an open /proc/<pid> directory instead"
        );
    });
}

/// `getsockopt(SOL_SOCKET, opt)` into `buf`; the length the kernel wrote.
#[expect(
    unsafe_code,
    reason = "getsockopt into a byte buffer: no safe binding has SO_PEERPIDFD or SO_PEERGROUPS"
)]
fn sockopt_into(sock: BorrowedFd<'_>, opt: libc::c_int, buf: &mut [u8]) -> Result<usize, Errno> {
    use std::os::fd::AsRawFd;
    let mut len = libc::socklen_t::try_from(buf.len()).map_err(|_| Errno::INVAL)?;
    // SAFETY: `buf` is valid for writes of `len` bytes and outlives the call; the
    // kernel writes at most `len` bytes and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let raw = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(Errno::from_raw_os_error(raw));
    }
    Ok(len as usize)
}

/// SO_PEERPIDFD (Linux 6.5): a pidfd for the process that connected.
#[expect(
    unsafe_code,
    reason = "taking ownership of the descriptor getsockopt(SO_PEERPIDFD) created"
)]
fn peer_pidfd(sock: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4];
    let n = sockopt_into(sock, libc::SO_PEERPIDFD, &mut buf)?;
    let fd = libc::c_int::from_ne_bytes(buf);
    if n != buf.len() || fd < 0 {
        return Err(Errno::INVAL);
    }
    // SAFETY: getsockopt(SO_PEERPIDFD) succeeded, so `fd` is a new descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SO_PEERGROUPS (Linux 4.13): the supplementary groups at connect.
fn peer_groups(sock: BorrowedFd<'_>) -> Result<Vec<u32>, Errno> {
    // NGROUPS_MAX is 65536; start small and grow to what the kernel asks for.
    let mut buf = vec![0u8; 64 * 4];
    loop {
        let cap = buf.len();
        match sockopt_into(sock, libc::SO_PEERGROUPS, &mut buf) {
            Ok(n) => {
                return Ok(buf[..n]
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect());
            }
            Err(Errno::RANGE) if cap < 65_536 * 4 => buf.resize(cap * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Who is calling on a connection: the pinned process, or why there is none.
#[derive(Debug, Clone)]
pub struct Caller(Arc<CallerState>);

#[derive(Debug)]
struct CallerState {
    pinned: Result<Pinned, CallerError>,
    /// Whether a refusal on this connection was logged already: a connection whose
    /// caller is gone can be refused any number of times, and logged once.
    refusal_logged: std::sync::atomic::AtomicBool,
}

impl Caller {
    pub(crate) fn new(pinned: Result<Pinned, CallerError>) -> Self {
        Caller(Arc::new(CallerState {
            pinned,
            refusal_logged: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The pinned process, or why the caller cannot be identified.
    pub fn pinned(&self) -> Result<&Pinned, CallerError> {
        self.0.pinned.as_ref().map_err(Clone::clone)
    }

    /// The caller as the log's `rpc` span names it: `pid=N uid=N`, or why there is
    /// no caller.
    pub fn describe(
        ext: &tonic::codegen::http::Extensions,
    ) -> tessera_telemetry::span::CallerFields {
        let caller = ext.get::<Caller>().map(|c| match c.pinned() {
            Ok(p) => {
                let cred = p.cred();
                format!("pid={} uid={}", cred.pid, cred.uid)
            }
            Err(e) => format!("unidentified ({e})"),
        });
        tessera_telemetry::span::CallerFields {
            caller,
            agent_id: None,
        }
    }

    /// True the first time it is asked on this connection.
    pub fn first_refusal(&self) -> bool {
        !self
            .0
            .refusal_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// An accepted Workload API connection.
#[derive(Debug)]
pub struct WorkloadConn {
    io: AuthorityFix<UnixStream>,
    caller: Caller,
    /// Counts the connection as open while it lives.
    _open: Option<super::trim::ConnGuard>,
}

impl WorkloadConn {
    /// Wraps a freshly accepted stream and pins the process that connected.
    pub fn new(stream: UnixStream) -> Self {
        let pinned = match stream.peer_cred() {
            Ok(c) => Pinned::pin(
                stream.as_fd(),
                PeerCred {
                    pid: c.pid().unwrap_or(0),
                    uid: c.uid(),
                    gid: c.gid(),
                },
            ),
            Err(e) => Err(CallerError::NoCredentials(e.to_string())),
        };
        if let Err(e) = &pinned {
            tracing::debug!("Workload API connection without a usable caller: {e}");
        }
        Self {
            io: fix_authority(stream),
            caller: Caller::new(pinned),
            _open: None,
        }
    }

    /// The connect-time credentials, when the caller could be pinned.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.caller.pinned().ok().map(Pinned::cred)
    }

    /// Counts this connection as open until it is dropped.
    pub fn tracked_by(mut self, guard: super::trim::ConnGuard) -> Self {
        self._open = Some(guard);
        self
    }
}

impl Connected for WorkloadConn {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.caller.clone()
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    fn own_cred(pid: i32) -> PeerCred {
        PeerCred {
            pid,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// This process, pinned through a socket pair as the Workload API pins a
    /// caller. The socket is returned so that it lives as long as the pin.
    pub(crate) fn pin_self() -> (Pinned, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let pinned = Pinned::pin(a.as_fd(), own_cred(std::process::id() as i32)).unwrap();
        (pinned, b)
    }

    fn no_socket_pidfd() -> Result<OwnedFd, Errno> {
        Err(Errno::NOPROTOOPT)
    }

    fn no_pidfds(_: i32) -> Result<OwnedFd, Errno> {
        Err(Errno::NOSYS)
    }

    /// Pins `child` by PID, with or without pidfds.
    pub(crate) fn pin_child(child: &Child, pidfds: bool) -> Result<Pinned, CallerError> {
        let cred = own_cred(child.id() as i32);
        if pidfds {
            Pinned::pin_cred(cred, None, no_socket_pidfd, pidfd_open)
        } else {
            Pinned::pin_cred(cred, None, no_socket_pidfd, no_pidfds)
        }
    }

    /// `sh -c script`, once it waits for its input: a process that could connect
    /// (its exec is complete; a spawn may return before the kernel has finished
    /// mapping the new program).
    pub(crate) fn sh(script: &str) -> Child {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for("the child to wait for input", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") S ") || s.contains(") Z "))
        });
        child
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exe_of(pid: u32) -> Option<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }

    #[test]
    fn this_process_pinned_through_a_socket_checks_out() {
        let (pinned, _sock) = pin_self();
        assert_eq!(pinned.cred().pid, std::process::id() as i32);
        assert!(pinned.mark().start_time > 0);
        assert!(pinned.mark().exe.is_some());
        assert_eq!(pinned.mark().uids[1], nix::unistd::geteuid().as_raw());
        // Linux 5.3 and later have pidfds one way or the other.
        assert!(pinned.pidfd_source().is_some());
        for _ in 0..3 {
            pinned.check().unwrap();
        }
    }

    #[test]
    fn a_process_that_exits_is_gone_with_or_without_pidfds() {
        for pidfds in [true, false] {
            let mut child = sh("read x");
            let pinned = pin_child(&child, pidfds).unwrap();
            assert_eq!(pinned.pidfd_source().is_some(), pidfds);
            pinned.check().unwrap();
            child.kill().unwrap();
            // Exited but not reaped (a zombie): already gone.
            wait_for("the child to exit", || {
                std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                    .is_ok_and(|s| s.contains(") Z"))
            });
            let pid = child.id() as i32;
            assert_eq!(pinned.check().unwrap_err(), CallerError::Gone { pid });
            // Reaped: the PID is free for another process; still gone.
            child.wait().unwrap();
            assert_eq!(pinned.check().unwrap_err(), CallerError::Gone { pid });
        }
    }

    #[test]
    fn pinning_a_process_that_is_gone_fails() {
        for pidfds in [true, false] {
            let mut child = Command::new("true").spawn().unwrap();
            child.wait().unwrap();
            let err = pin_child(&child, pidfds).unwrap_err();
            assert_eq!(
                err,
                CallerError::Gone {
                    pid: child.id() as i32
                }
            );
        }
    }

    #[test]
    fn an_exec_after_connect_is_refused() {
        for pidfds in [true, false] {
            let mut child = sh("read x; exec sleep 30");
            let pinned = pin_child(&child, pidfds).unwrap();
            let before = exe_of(child.id());
            pinned.check().unwrap();
            child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
            wait_for("the exec", || exe_of(child.id()) != before);
            let err = pinned.check().unwrap_err();
            assert!(
                matches!(err, CallerError::Executed { .. }),
                "{err:?} ({pidfds})"
            );
            assert!(err.to_string().contains("executed another program"));
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn an_exec_of_the_same_program_is_refused_when_layouts_are_randomised() {
        let aslr = std::fs::read_to_string("/proc/sys/kernel/randomize_va_space")
            .is_ok_and(|s| s.trim() != "0");
        // The child runs /bin/sh, then execs /bin/sh again: the same file.
        let mut child = sh("read x; exec sh -c 'read y'");
        let pinned = pin_child(&child, true).unwrap();
        let layout = pinned.mark().layout;
        assert_ne!(layout, [0; 3], "a child's layout is readable");
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let pid = child.id() as i32;
        let dir = open_proc_dir(pid).unwrap();
        wait_for("the exec", || {
            ProcessMark::read(dir.as_fd(), pid).is_ok_and(|m| m.layout != layout) || !aslr
        });
        if aslr {
            assert_eq!(
                pinned.check().unwrap_err(),
                CallerError::Executed {
                    pid,
                    what: "address-space layout"
                }
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn credentials_other_than_the_kernels_are_refused_at_pinning() {
        let mut child = sh("read x");
        let mut cred = own_cred(child.id() as i32);
        cred.uid = cred.uid.wrapping_add(1);
        let err = Pinned::pin_cred(cred, None, no_socket_pidfd, pidfd_open).unwrap_err();
        assert!(
            matches!(
                err,
                CallerError::CredentialsChanged {
                    what: "effective uid",
                    ..
                }
            ),
            "{err:?}"
        );
        let cred = own_cred(child.id() as i32);
        let err = Pinned::pin_cred(cred, Some(vec![4_000_000_001]), no_socket_pidfd, pidfd_open)
            .unwrap_err();
        assert!(
            matches!(err, CallerError::CredentialsChanged { what: "groups", .. }),
            "{err:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_pid_the_kernel_cannot_name_is_refused() {
        let cred = PeerCred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            Pinned::pin_cred(cred, None, no_socket_pidfd, pidfd_open).unwrap_err(),
            CallerError::NotVisible
        );
    }

    fn mark() -> ProcessMark {
        ProcessMark {
            start_time: 100,
            state: 'S',
            layout: [1, 2, 3],
            exe: Some((8, 9)),
            uids: [1000; 4],
            gids: [1000; 4],
            groups: vec![4, 24],
        }
    }

    #[test]
    fn marks_compare_field_by_field() {
        let then = mark();
        then.compare(&mark(), 7).unwrap();
        let mut now = mark();
        now.state = 'R';
        then.compare(&now, 7).unwrap();

        let mut setuid = mark();
        setuid.uids = [1000, 0, 0, 0];
        let err = then.compare(&setuid, 7).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the process that connected (PID 7) changed its credentials since it connected (uids: [1000 1000 1000 1000] at connect, [1000 0 0 0] now), by a setuid or setgid program or a change of user; connect again after changing credentials"
        );
        let mut setgid = mark();
        setgid.gids[1] = 0;
        assert!(matches!(
            then.compare(&setgid, 7),
            Err(CallerError::CredentialsChanged { what: "gids", .. })
        ));
        let mut groups = mark();
        groups.groups.push(0);
        assert!(matches!(
            then.compare(&groups, 7),
            Err(CallerError::CredentialsChanged { what: "groups", .. })
        ));
        let mut exe = mark();
        exe.exe = Some((8, 10));
        assert_eq!(
            then.compare(&exe, 7).unwrap_err(),
            CallerError::Executed {
                pid: 7,
                what: "executable file"
            }
        );
        let mut layout = mark();
        layout.layout[2] = 4;
        assert!(matches!(
            then.compare(&layout, 7),
            Err(CallerError::Executed { .. })
        ));
        let mut reused = mark();
        reused.start_time = 101;
        assert_eq!(
            then.compare(&reused, 7).unwrap_err(),
            CallerError::Reused { pid: 7 }
        );
    }

    #[test]
    fn stat_and_status_are_parsed() {
        // A command name with spaces and parentheses.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let stat = format!("42 (a) b (c)) {}\n", fields.join(" "));
        let st = parse_stat(&stat).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.start_time, 22);
        assert_eq!(st.layout, [26, 27, 28]);
        assert!(parse_stat("42 (x) S 1 2").is_none());
        assert!(parse_stat("no parenthesis").is_none());

        let status = "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \n";
        assert_eq!(id_line(status, "Uid:"), Some([1, 2, 3, 4]));
        assert_eq!(id_line(status, "Gid:"), Some([5, 6, 7, 8]));
        assert_eq!(groups_line(status), Some(vec![10, 20]));
        assert_eq!(groups_line("Groups:\t\n"), Some(vec![]));
        assert_eq!(id_line("Uid:\t1\t2\n", "Uid:"), None);
        assert_eq!(groups_line("Groups:\tx\n"), None);
    }

    #[tokio::test]
    async fn accepted_connections_carry_the_pinned_caller() {
        let (a, _b) = UnixStream::pair().unwrap();
        let conn = WorkloadConn::new(a);
        let cred = conn.peer_cred().unwrap();
        assert_eq!(cred, own_cred(std::process::id() as i32));
        let caller = conn.connect_info();
        let pinned = caller.pinned().unwrap();
        pinned.check().unwrap();
        // SO_PEERGROUPS agrees with what /proc says.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(
            Some(pinned.groups().to_vec()),
            groups_line(&status).map(|mut g| {
                g.sort_unstable();
                g
            })
        );
    }
}
