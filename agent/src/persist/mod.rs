//! The persisted SVID cache: the agent's workload X509-SVIDs kept in its state
//! directory, so that after a restart with the server away workloads get the ones
//! still valid at once (the manager's `persisted` module restores and saves them).
//!
//! Files in the state directory:
//!
//! - `svids.cache`: the cache ([`record`]) in its envelope ([`envelope`]): AES-256-GCM
//!   under the cache key, written atomically (temporary file, fsync, rename), mode 0600.
//! - `svids.key.tpm` (with a TPM): the cache key sealed to the TPM
//!   ([`tessera_tpm::device::sealing::SealedSecret`]: a P-256 key held under the
//!   SRK, as a blob, and an ephemeral point). On another TPM the blob does not load:
//!   the cache is discarded, saying so, and the agent goes on with the server.
//! - `svids.key` (without a TPM): the cache key itself, 32 random bytes, mode 0600,
//!   made on first start. It protects the cache file when it travels alone (a backup
//!   or a copy that leaves the key file behind); it does not protect against anyone
//!   who can read the agent's state directory, who reads the key file as well
//!   (docs/RELIABILITY.md).
//!
//! Nothing here stops the agent: a cache or key that cannot be used is logged,
//! discarded, and the agent fetches from the server as it would without one.

pub mod envelope;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use tessera_tpm::DeviceError;
use tessera_tpm::Tpm;
use tessera_tpm::device::sealing::SealedSecret;
use zeroize::Zeroizing;

use self::envelope::KeySource;
use self::record::CacheRecord;

/// The cache file.
pub const CACHE_FILE: &str = "svids.cache";
/// The cache key sealed to the TPM.
pub const SEALED_KEY_FILE: &str = "svids.key.tpm";
/// The cache key, without a TPM.
pub const KEY_FILE: &str = "svids.key";

/// See the module documentation.
pub struct SvidStore {
    dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
    source: KeySource,
}

impl std::fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidStore")
            .field("dir", &self.dir)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The largest cache file read (a cache of thousands of SVIDs is a few MiB).
pub const MAX_CACHE_FILE: u64 = 64 << 20;
/// The largest key file read (either kind is well under a KiB).
const MAX_KEY_FILE: u64 = 64 << 10;

/// Reads the state file `path`: only a regular file of at most `max` bytes, opened
/// without following a symbolic link and without waiting on a FIFO; anything else
/// (a link, a FIFO, a device, a directory, a huge file) is an `InvalidData` error
/// saying what it is, never read.
fn read_state_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let refused = |what: String| Error::new(ErrorKind::InvalidData, what);
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused("a symbolic link, not followed".into()),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused(format!(
            "not a regular file ({:?})",
            meta.file_type()
        )));
    }
    if meta.len() > max {
        return Err(refused(format!(
            "{} bytes, more than the {max} expected",
            meta.len()
        )));
    }
    let mut data = Vec::new();
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(refused(format!("more than the {max} bytes expected")));
    }
    Ok(data)
}

fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    tessera_process::fs::write_atomic(path, data, 0o600)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

impl SvidStore {
    /// The store in `dir` (the state directory), its key sealed to `tpm` when there
    /// is one, else in a key file. `None` (logged) when no key can be had now.
    pub fn open(dir: &Path, tpm: Option<&Arc<Tpm>>) -> Option<Self> {
        let (key, source) = match tpm {
            Some(tpm) => (tpm_key(dir, tpm)?, KeySource::Tpm),
            None => (file_key(dir)?, KeySource::KeyFile),
        };
        Some(Self {
            dir: dir.to_owned(),
            key,
            source,
        })
    }

    fn cache_path(&self) -> PathBuf {
        self.dir.join(CACHE_FILE)
    }

    /// Writes `record` (logged on failure: the next publication tries again).
    pub fn save(&self, record: &CacheRecord) {
        let path = self.cache_path();
        let result = envelope::seal(&self.key, self.source, &record.to_bytes())
            .and_then(|data| write(&path, &data).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!("cannot write the SVID cache {}: {e}", path.display());
        }
    }

    /// The cache as last written; a file that cannot be read, opened or parsed is
    /// logged and removed.
    pub fn load(&self) -> Option<CacheRecord> {
        let path = self.cache_path();
        let data = match read_state_file(&path, MAX_CACHE_FILE) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(
                    "the SVID cache {} is unusable ({e}): discarded; SVIDs come from the server",
                    path.display()
                );
                remove(&path);
                return None;
            }
            Err(e) => {
                tracing::warn!("cannot read the SVID cache {}: {e}", path.display());
                return None;
            }
        };
        let parsed = envelope::open(&self.key, self.source, &data)
            .and_then(|plain| CacheRecord::from_bytes(&plain));
        match parsed {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "the SVID cache {} is unusable ({e}): discarded; SVIDs come from the server",
                    path.display()
                );
                remove(&path);
                None
            }
        }
    }
}

/// A fresh cache key sealed to `tpm`, written to `path`; a cache made under an older
/// key can no longer be opened and goes.
fn new_sealed(dir: &Path, tpm: &Tpm) -> Option<Zeroizing<[u8; 32]>> {
    remove(&dir.join(CACHE_FILE));
    let path = dir.join(SEALED_KEY_FILE);
    match SealedSecret::create(tpm) {
        Ok((sealed, key)) => match write(&path, &sealed.to_bytes()) {
            Ok(()) => Some(key),
            Err(e) => {
                tracing::warn!(
                    "cannot write {}: {e}; SVIDs are not persisted",
                    path.display()
                );
                None
            }
        },
        Err(e) => {
            tracing::warn!(
                "cannot seal an SVID cache key to the TPM ({e}); SVIDs are not persisted"
            );
            None
        }
    }
}

fn tpm_key(dir: &Path, tpm: &Tpm) -> Option<Zeroizing<[u8; 32]>> {
    let path = dir.join(SEALED_KEY_FILE);
    let data = match read_state_file(&path, MAX_KEY_FILE) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return new_sealed(dir, tpm),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(
                "{} is unusable ({e}): the SVID cache is discarded and a new key sealed",
                path.display()
            );
            return new_sealed(dir, tpm);
        }
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; SVIDs are not persisted",
                path.display()
            );
            return None;
        }
    };
    let sealed = match SealedSecret::from_bytes(&data) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "{} is damaged ({e}): the SVID cache is discarded and a new key sealed",
                path.display()
            );
            return new_sealed(dir, tpm);
        }
    };
    match sealed.unseal(tpm) {
        Ok(key) => Some(key),
        Err(e @ (DeviceError::ForeignKey(_) | DeviceError::Malformed(_))) => {
            tracing::warn!(
                "the SVID cache key in {} does not open on this TPM ({e}): the state directory comes from another machine, or the TPM was cleared; the SVID cache is discarded and SVIDs come from the server",
                path.display()
            );
            new_sealed(dir, tpm)
        }
        Err(e) => {
            tracing::warn!(
                "the TPM cannot open the SVID cache key now ({e}); SVIDs are not persisted this run"
            );
            None
        }
    }
}

fn file_key(dir: &Path) -> Option<Zeroizing<[u8; 32]>> {
    let path = dir.join(KEY_FILE);
    match read_state_file(&path, MAX_KEY_FILE) {
        Ok(d) if d.len() == 32 => {
            tessera_process::secret::warn_if_shared(&path);
            let mut key = Zeroizing::new([0u8; 32]);
            key.copy_from_slice(&d);
            drop(Zeroizing::new(d));
            return Some(key);
        }
        Ok(d) => {
            drop(Zeroizing::new(d));
            tracing::warn!(
                "{} is not a 32-byte key: the SVID cache is discarded and a new key made",
                path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(
                "{} is unusable ({e}): the SVID cache is discarded and a new key made",
                path.display()
            );
        }
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; SVIDs are not persisted",
                path.display()
            );
            return None;
        }
    }
    remove(&dir.join(CACHE_FILE));
    let mut key = Zeroizing::new([0u8; 32]);
    if SystemRandom::new().fill(&mut key[..]).is_err() {
        tracing::warn!("no randomness for an SVID cache key; SVIDs are not persisted");
        return None;
    }
    if let Err(e) = write(&path, &key[..]) {
        tracing::warn!(
            "cannot write {}: {e}; SVIDs are not persisted",
            path.display()
        );
        return None;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_file_store_round_trips_and_discards_what_it_cannot_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SvidStore::open(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.load().is_none());
        let r = record::tests::sample();
        store.save(&r);
        let mode = std::fs::metadata(dir.path().join(CACHE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopened (a restart): the same key, the same cache.
        let again = SvidStore::open(dir.path(), None).unwrap();
        assert_eq!(again.load().unwrap(), r);

        // Garbage in the cache file: discarded, no crash.
        std::fs::write(dir.path().join(CACHE_FILE), b"garbage").unwrap();
        assert!(again.load().is_none());
        assert!(!dir.path().join(CACHE_FILE).exists());
        // Truncated.
        again.save(&r);
        let full = std::fs::read(dir.path().join(CACHE_FILE)).unwrap();
        std::fs::write(dir.path().join(CACHE_FILE), &full[..full.len() - 5]).unwrap();
        assert!(again.load().is_none());

        // Another key file (a cache copied without its key): cannot open.
        again.save(&r);
        let other = tempfile::tempdir().unwrap();
        let stranger = SvidStore::open(other.path(), None).unwrap();
        std::fs::copy(dir.path().join(CACHE_FILE), other.path().join(CACHE_FILE)).unwrap();
        assert!(stranger.load().is_none());
        assert!(!other.path().join(CACHE_FILE).exists());

        // A damaged key file: a new key, and the old cache goes.
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let fresh = SvidStore::open(dir.path(), None).unwrap();
        assert!(fresh.load().is_none());
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap().len(), 32);
    }

    /// `load` on another thread, with a bound: a hostile file must not hang it.
    fn load_within(store: SvidStore) -> Option<CacheRecord> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(store.load()).unwrap());
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("loading the SVID cache hung")
    }

    #[test]
    fn hostile_files_at_the_cache_path_are_neither_followed_nor_read_and_the_good_cache_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);
        let r = record::tests::sample();
        let open = || SvidStore::open(dir.path(), None).unwrap();

        // A symlink to a good cache elsewhere: not followed, the link goes, the
        // target stays untouched.
        let elsewhere = tempfile::tempdir().unwrap();
        open().save(&r);
        let target = elsewhere.path().join("real");
        std::fs::rename(&path, &target).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(load_within(open()).is_none(), "a symlinked cache was read");
        assert!(std::fs::symlink_metadata(&path).is_err(), "the link stays");
        assert!(target.exists());

        // A symlink to an endless device: refused at once.
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(load_within(open()).is_none());
        assert!(std::fs::symlink_metadata(&path).is_err());

        // A FIFO no one writes to: refused at once, not waited on.
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(load_within(open()).is_none());
        assert!(std::fs::symlink_metadata(&path).is_err());

        // A file larger than any cache: refused without reading it all.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_CACHE_FILE + 1)
            .unwrap();
        assert!(load_within(open()).is_none());

        // And a good cache saved after all that is read back.
        open().save(&r);
        assert_eq!(load_within(open()).unwrap(), r);
        // A directory in its place: not removed (it may hold something), no cache.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(load_within(open()).is_none());
        assert!(path.is_dir());
    }
}
