//! Crash-safe file writes, shared by the disk key managers, the agent's state
//! directory and the commands that write certificates: write a temporary file beside
//! the target, fsync it, rename it over the target, fsync the directory. A reader sees
//! the old file or the new one, never half.
//!
//! The temporary file is made by `tempfile` (a random name, opened with `O_EXCL`), so
//! two threads of one process writing the same target at once each have their own
//! temporary file; the last rename wins, whole.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `data` to `path` atomically with the given Unix permission bits.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A leading dot: directory listings (key managers, the state directory) skip
    // temporary files left by a crash.
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    // Dropped (and so removed) on every error path below.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // The mode given at creation is filtered by the umask; set it exactly.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) and sets its permission bits.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"keep", 0o600).unwrap();
        // Renaming onto a non-empty directory fails; the old file must survive.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("x"), b"").unwrap();
        assert!(write_atomic(&sub, b"new", 0o600).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"keep");
        // And the temporary file is gone.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn threads_writing_one_file_at_once_never_mix() {
        // Every writer's content is distinct and long enough that a torn or shared
        // temporary file would show: the file must always be one writer's whole.
        const WRITERS: usize = 16;
        const ROUNDS: usize = 20;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let content = |w: usize, r: usize| format!("writer {w} round {r} ").repeat(2000);
        let barrier = std::sync::Barrier::new(WRITERS);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (p, barrier) = (&p, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for r in 0..ROUNDS {
                        write_atomic(p, content(w, r).as_bytes(), 0o600)
                            .unwrap_or_else(|e| panic!("writer {w} round {r}: {e}"));
                        let seen = fs::read_to_string(p).unwrap();
                        let whole =
                            (0..WRITERS).any(|w2| (0..ROUNDS).any(|r2| seen == content(w2, r2)));
                        assert!(whole, "a reader saw a mixed or partial file");
                    }
                });
            }
        });
        let last = fs::read_to_string(&p).unwrap();
        assert!((0..WRITERS).any(|w| last == content(w, ROUNDS - 1)));
        // Only the target is left: every temporary file was renamed or removed.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
