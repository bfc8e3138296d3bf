//! Binding the Unix sockets the binaries serve on (the agent's Workload API, the
//! server's admin API), the same way: the parent directory created with the mode
//! asked for if it is missing, a live socket at the path refused (another process
//! serves there: stealing its path would cut its clients off), a stale one (left by
//! a process that died) replaced, and the socket's mode set. At exit the socket is
//! removed only if it is still this process's: a successor may have bound the path
//! since.
//!
//! A socket is bound only in a directory no other user can change: owned by this
//! process's user or root, and not writable by others (nor by the group, unless the
//! binary's own directory mode lets its group write), unless the sticky bit keeps
//! others from replacing what is not theirs. In a directory others may write,
//! another user could put their own socket or a symlink at the path between the
//! bind and the chmod, or replace it later, and take the callers meant for it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// A process answers on the socket already.
    #[error("socket {} is in use by a running process: is another one running? Stop it, or choose another path", .0.display())]
    InUse(PathBuf),
    /// The directory could be changed by another user (see the module documentation).
    #[error("refusing to bind {}: {reason}", path.display())]
    UnsafeDirectory {
        /// The socket.
        path: PathBuf,
        /// Who could change its directory, and what to make it.
        reason: String,
    },
    /// A file system step failed.
    #[error("cannot {doing} {}: {source}", path.display())]
    Io {
        /// What failed, e.g. "bind".
        doing: &'static str,
        /// The socket or its directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io {
        doing,
        path,
        source,
    }
}

/// The permission bits of a socket and of its directory when it has to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// The directory's, applied only when this process creates it. When it lets the
    /// group write (the server's admin directory, 0770), an existing directory its
    /// group may write is accepted too.
    pub dir: u32,
    /// The socket's: who may connect.
    pub socket: u32,
}

/// A socket this process bound; see [`BoundSocket::remove`].
#[derive(Debug, Clone)]
pub struct BoundSocket {
    path: PathBuf,
    identity: Option<Identity>,
}

/// What tells one socket file from a later one at the same path: an inode number
/// alone can be reused at once, its change time (to the nanosecond) with it hardly.
type Identity = (u64, u64, i64, i64);

impl BoundSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this process bound, so that new
    /// clients fail at once ("no such file") instead of waiting on a process that is
    /// going away. Safe to call more than once.
    pub fn remove(&self) {
        if self.identity.is_some() && identity(&self.path) == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Binds a Unix socket at `path` (see the module documentation). Needs a tokio
/// runtime (the listener registers with it).
pub fn bind(path: &Path, modes: Modes) -> Result<(UnixListener, BoundSocket), SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(modes.dir))
            .map_err(io("set the mode of", dir))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir, modes.dir & 0o020 != 0).map_err(|reason| SocketError::UnsafeDirectory {
            path: path.to_owned(),
            reason,
        })?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        // On a Unix socket, connect() answers at once: accepted (into the backlog) by
        // a live process, refused for a socket nobody serves.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io("remove the stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(modes.socket))
        .map_err(io("set the mode of", path))?;
    let bound = BoundSocket {
        path: path.to_owned(),
        identity: identity(path),
    };
    Ok((listener, bound))
}

/// Checks that only this process's user (or root) can change what is in `dir`
/// (see the module documentation); the error says who could, and what to make it.
pub fn check_dir(dir: &Path, group_may_write: bool) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to this process's user (uid {me}) or root: another \
             user could replace the socket in it",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let writable = if group_may_write {
        mode & 0o002 != 0
    } else {
        mode & 0o022 != 0
    };
    if writable && !sticky {
        return Err(format!(
            "{} is writable by {} (mode {mode:04o}): another user could replace the socket \
             in it; make it {}",
            dir.display(),
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            if group_may_write {
                "0770 or 0750"
            } else {
                "0755"
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: Modes = Modes {
        dir: 0o750,
        socket: 0o770,
    };

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn binds_with_modes_and_refuses_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("api.sock");
        let (_listener, bound) = bind(&path, MODES).unwrap();
        assert_eq!(bound.path(), path);
        assert_eq!(mode(&path), 0o770);
        assert_eq!(mode(path.parent().unwrap()), 0o750);
        // A second process on the same path stops here, and the first keeps its socket.
        let err = bind(&path, MODES).unwrap_err();
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_an_existing_directory_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let path = dir.path().join("api.sock");
        // A socket whose process is gone: the file is there, nobody accepts.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (listener, _bound) = bind(&path, MODES).unwrap();
        assert_eq!(
            mode(dir.path()),
            0o711,
            "an existing directory keeps its mode"
        );
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
    }

    #[test]
    fn socket_directories_others_can_write_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sock");
        std::fs::create_dir(&dir).unwrap();
        for (mode, group_ok, refused) in [
            (0o755, false, None),
            (0o700, false, None),
            (0o775, false, Some("writable by its group (mode 0775)")),
            (0o770, true, None),
            (0o777, true, Some("writable by every user (mode 0777)")),
            (0o1777, false, None),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = check_dir(&dir, group_ok);
            match refused {
                None => assert_eq!(got, Ok(()), "{mode:o}"),
                Some(says) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(says), "{mode:o}: {e}");
                }
            }
        }
        let e = check_dir(&base.path().join("missing"), false).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[tokio::test]
    async fn bind_refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("api.sock");
        let err = bind(&path, MODES).unwrap_err();
        assert!(matches!(err, SocketError::UnsafeDirectory { .. }), "{err}");
        assert!(err.to_string().contains("writable by every user"), "{err}");
        assert!(!path.exists(), "nothing bound");
    }

    #[tokio::test]
    async fn removal_leaves_a_successors_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (first, bound) = bind(&path, MODES).unwrap();
        bound.remove();
        assert!(!path.exists());
        drop(first);
        // A successor binds the path; the first process's late clean-up must not
        // take the successor's socket away.
        let (_second, _bound2) = bind(&path, MODES).unwrap();
        bound.remove();
        assert!(path.exists());
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
    }
}
