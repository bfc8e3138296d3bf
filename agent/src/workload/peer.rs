//! Who is calling: the peer credentials the kernel gives for a Unix socket
//! (SO_PEERCRED: PID, UID, GID), and the process start time that guards against a PID
//! being reused by another process while the caller is being attested.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::authority::{AuthorityFix, fix_authority};

/// The caller's credentials, read when the connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// 0 when the caller is in another PID namespace (the kernel cannot name it).
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// An accepted Workload API connection.
#[derive(Debug)]
pub struct WorkloadConn {
    io: AuthorityFix<UnixStream>,
    cred: Option<PeerCred>,
    /// Counts the connection as open while it lives.
    _open: Option<super::trim::ConnGuard>,
}

impl WorkloadConn {
    /// Wraps a freshly accepted stream.
    pub fn new(stream: UnixStream) -> Self {
        let cred = stream.peer_cred().ok().map(|c| PeerCred {
            pid: c.pid().unwrap_or(0),
            uid: c.uid(),
            gid: c.gid(),
        });
        Self {
            io: fix_authority(stream),
            cred,
            _open: None,
        }
    }

    /// Counts this connection as open until it is dropped.
    pub fn tracked_by(mut self, guard: super::trim::ConnGuard) -> Self {
        self._open = Some(guard);
        self
    }
}

impl Connected for WorkloadConn {
    type ConnectInfo = Option<PeerCred>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.cred
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

/// The start time of a process (clock ticks since boot, field 22 of /proc/<pid>/stat),
/// which changes if the PID is reused by another process.
pub fn start_time(pid: i32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| std::io::Error::other("malformed /proc stat"))?;
    // `after` starts at field 3 (state); start time is field 22.
    after
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed /proc stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable() {
        let pid = std::process::id() as i32;
        let a = start_time(pid).unwrap();
        assert!(a > 0);
        assert_eq!(start_time(pid).unwrap(), a);
        assert!(start_time(i32::MAX).is_err());
    }

    #[test]
    fn a_new_process_with_a_reused_pid_would_differ() {
        // Two different processes started at different times have different start
        // times; a child started now is younger than this test process.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let child_start = start_time(child.id() as i32).unwrap();
        let own = start_time(std::process::id() as i32).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(child_start >= own);
        assert!(start_time(child.id() as i32).is_err());
    }

    #[tokio::test]
    async fn peer_credentials_are_read_from_the_kernel() {
        let (a, _b) = UnixStream::pair().unwrap();
        let conn = WorkloadConn::new(a);
        let cred = conn.connect_info().unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        // SAFETY-free: compare with what /proc says about ourselves.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let euid: u32 = uid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(cred.uid, euid);
    }
}
