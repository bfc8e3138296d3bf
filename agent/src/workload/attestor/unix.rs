//! The `unix` workload attestor: selectors from the calling process's user and groups
//! (as the kernel recorded them when it connected) and, when enabled, the path and
//! SHA-256 of its binary, read through its pinned /proc directory.

use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;

use async_trait::async_trait;
use rustix::fs::{Mode, OFlags};
use tessera_core::Selector;

use super::{Peer, WorkloadAttestError, WorkloadAttestor};
use crate::config::UnixAttestorConfig;

/// Why a process could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("cannot read /proc/{pid}/{what}: {source}")]
    Proc {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the executable of process {0} is not the one it ran when it connected")]
    ExeChanged(i32),
    #[error("selector: {0}")]
    Selector(#[from] tessera_core::selector::SelectorError),
    #[error("hashing the executable failed: {0}")]
    Task(String),
}

fn sel(kind: &str, value: String) -> Result<Selector, UnixError> {
    Ok(Selector::new("unix", &format!("{kind}:{value}"))?)
}

/// How long a user or group name looked up through NSS is reused. Every Workload API
/// call attests its caller, and a lookup reads /etc/passwd or /etc/group (or asks a
/// directory service); a renamed user is seen within this time.
const NAME_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// At most this many names are remembered; past it the cache starts over.
const NAME_CACHE_MAX: usize = 4096;

type NameCache = std::collections::HashMap<(bool, u32), (std::time::Instant, Option<String>)>;

/// A name from NSS, through a small time-bounded cache (`group` tells users from
/// groups).
fn cached_name(group: bool, id: u32, lookup: fn(u32) -> Option<String>) -> Option<String> {
    static CACHE: std::sync::Mutex<Option<NameCache>> = std::sync::Mutex::new(None);
    let now = std::time::Instant::now();
    if let Ok(guard) = CACHE.lock()
        && let Some((at, name)) = guard.as_ref().and_then(|c| c.get(&(group, id)))
        && now.duration_since(*at) < NAME_TTL
    {
        return name.clone();
    }
    let name = lookup(id);
    if let Ok(mut guard) = CACHE.lock() {
        let cache = guard.get_or_insert_with(Default::default);
        if cache.len() >= NAME_CACHE_MAX {
            cache.clear();
        }
        cache.insert((group, id), (now, name.clone()));
    }
    name
}

fn user_name(uid: u32) -> Option<String> {
    cached_name(false, uid, |uid| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

fn group_name(gid: u32) -> Option<String> {
    cached_name(true, gid, |gid| {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    })
}

/// The `unix` attestor (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Unix {
    cfg: UnixAttestorConfig,
}

impl Unix {
    /// The attestor as `[workload_attestors.unix]` configures it.
    pub fn new(cfg: UnixAttestorConfig) -> Self {
        Self { cfg }
    }
}

#[async_trait]
impl WorkloadAttestor for Unix {
    fn name(&self) -> &'static str {
        "unix"
    }

    async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
        attest(peer, &self.cfg)
            .await
            .map_err(WorkloadAttestError::new)
    }
}

/// Attests a pinned caller. The user and groups are the ones the kernel recorded when
/// it connected; the path and the hash are read through the caller's `/proc`
/// directory, and the caller must pass a second check after this returns (an exec in
/// between is then seen).
async fn attest(peer: &Peer<'_>, cfg: &UnixAttestorConfig) -> Result<Vec<Selector>, UnixError> {
    let cred = peer.cred();
    let pid = cred.pid;
    let (uid, gid) = (cred.uid, cred.gid);
    // The names come from a cache: looked up in place.
    let mut out = vec![sel("uid", uid.to_string())?, sel("gid", gid.to_string())?];
    if let Some(u) = user_name(uid) {
        out.push(sel("user", u)?);
    }
    if let Some(g) = group_name(gid) {
        out.push(sel("group", g)?);
    }
    for &g in peer.groups() {
        out.push(sel("supplementary_gid", g.to_string())?);
        if let Some(name) = group_name(g) {
            out.push(sel("supplementary_group", name)?);
        }
    }
    if cfg.discover_workload_path {
        let dir = peer.proc_dir();
        let proc_err = |source: std::io::Error| UnixError::Proc {
            pid,
            what: "exe",
            source,
        };
        // Hash what the process runs (through /proc, so a replaced file on disk does
        // not fool us), and make sure it is the executable pinned at connect.
        let fd = rustix::fs::openat(dir, "exe", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| proc_err(e.into()))?;
        let f = std::fs::File::from(fd);
        let meta = f.metadata().map_err(proc_err)?;
        if peer.mark().exe != Some((meta.dev(), meta.ino())) {
            return Err(UnixError::ExeChanged(pid));
        }
        let exe = rustix::fs::readlinkat(dir, "exe", Vec::new()).map_err(|e| proc_err(e.into()))?;
        let exe = std::path::PathBuf::from(<std::ffi::OsString as OsStringExt>::from_vec(
            exe.into_bytes(),
        ));
        if names_file_here(&exe, (meta.dev(), meta.ino())) {
            out.push(sel("path", exe.to_string_lossy().into_owned())?);
        } else {
            tracing::debug!(
                pid,
                path = %exe.display(),
                "no unix:path: the caller's executable is not at that path as the agent sees it (another mount namespace, or the file was replaced)"
            );
        }
        let len = meta.len();
        if cfg.workload_size_limit == 0 || len <= cfg.workload_size_limit {
            // A binary of any size: read on the blocking pool.
            let hex = tokio::task::spawn_blocking(move || sha256_hex(f))
                .await
                .map_err(|e| UnixError::Task(e.to_string()))?
                .map_err(proc_err)?;
            out.push(sel("sha256", hex)?);
        }
    }
    Ok(out)
}

/// Whether `path`, resolved in the agent's own mount namespace, is the file
/// `(dev, ino)`. The kernel writes a process's executable path as seen from that
/// process's mount namespace: a user who bind-mounts a program of their own over
/// `/opt/app/bin` in a private namespace (unprivileged user namespaces allow it), or a
/// container image with its own `/opt/app/bin`, shows that path without running the
/// file there. `unix:path` names the file the agent can see at that path, so it is
/// given only when that file is the one the caller runs.
fn names_file_here(path: &std::path::Path, (dev, ino): (u64, u64)) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The SHA-256 of what `f` holds, in lowercase hex.
fn sha256_hex(mut f: std::fs::File) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::peer::tests::pin_self;
    use std::os::fd::AsFd;

    async fn attest_self(cfg: &UnixAttestorConfig) -> Result<Vec<Selector>, UnixError> {
        let (pinned, _sock) = pin_self();
        let dir = pinned.check().unwrap();
        let out = attest(&Peer::new(&pinned, dir.as_fd()), cfg).await;
        pinned.check().unwrap();
        out
    }

    #[tokio::test]
    async fn attests_this_process() {
        let cfg = UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: 0,
        };
        let sels: Vec<String> = attest_self(&cfg)
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap();
        assert!(sels.contains(&format!("unix:uid:{euid}")), "{sels:?}");
        assert!(sels.iter().any(|s| s.starts_with("unix:gid:")));
        let exe = std::env::current_exe().unwrap();
        assert!(
            sels.contains(&format!("unix:path:{}", exe.display())),
            "{sels:?}"
        );
        let bytes = std::fs::read(&exe).unwrap();
        let want: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(sels.contains(&format!("unix:sha256:{want}")));
        if euid == "0" {
            assert!(sels.contains(&"unix:user:root".to_string()), "{sels:?}");
        }
    }

    #[test]
    fn a_path_names_the_executable_only_when_the_file_there_is_it() {
        let exe = std::env::current_exe().unwrap();
        let m = std::fs::metadata(&exe).unwrap();
        let id = (m.dev(), m.ino());
        assert!(names_file_here(&exe, id));
        // Another file at the path (what a private mount namespace shows): no.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("app");
        std::fs::write(&other, b"not the caller").unwrap();
        assert!(!names_file_here(&other, id));
        // Nothing at the path (a container's own file system, a deleted file): no.
        assert!(!names_file_here(&dir.path().join("gone"), id));
        assert!(!names_file_here(
            std::path::Path::new(&format!("{} (deleted)", exe.display())),
            id
        ));
    }

    #[tokio::test]
    async fn size_limit_skips_the_hash_and_path_is_off_by_default() {
        let sels = attest_self(&UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: 1,
        })
        .await
        .unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("sha256:")));
        let sels = attest_self(&UnixAttestorConfig::default()).await.unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("path:")));
    }

    #[tokio::test]
    async fn groups_are_the_connect_time_ones() {
        let sels: Vec<String> = attest_self(&UnixAttestorConfig::default())
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        for g in groups["Groups:".len()..].split_whitespace() {
            assert!(
                sels.contains(&format!("unix:supplementary_gid:{g}")),
                "{sels:?}"
            );
        }
    }

    #[test]
    fn names_are_looked_up_once_per_ttl_and_users_and_groups_apart() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn lookup(id: u32) -> Option<String> {
            CALLS.fetch_add(1, Ordering::SeqCst);
            Some(format!("name-{id}"))
        }
        // An ID no other test uses, so the shared cache holds nothing for it yet.
        let id = 4_000_000_123;
        assert_eq!(
            cached_name(false, id, lookup).as_deref(),
            Some("name-4000000123")
        );
        assert_eq!(
            cached_name(false, id, lookup).as_deref(),
            Some("name-4000000123")
        );
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            1,
            "the second call hit the cache"
        );
        // A group with the same number is another name.
        cached_name(true, id, lookup);
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    }
}
