//! Crash-safe file writes, shared by the disk key managers and the agent's state
//! directory: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the directory. A reader sees the old file or the new one, never half.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a directory (and parents) and sets its permission bits.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Checks that only this process's user (or root) can change what is in `dir`,
/// before a socket whose file mode guards it is bound there: in a directory others
/// may write, another user could put their own socket or a symlink at the path
/// between the bind and the chmod, or replace it later. Refused: a directory owned
/// by another user than this one or root, and one that group or others may write,
/// unless `group_may_write` (the server's admin directory, 0770 for its group) or
/// the sticky bit keeps others from replacing what is not theirs.
pub fn check_socket_dir(dir: &Path, group_may_write: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
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

    #[test]
    fn socket_directories_others_can_write_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sock");
        fs::create_dir(&dir).unwrap();
        for (mode, group_ok, refused) in [
            (0o755, false, None),
            (0o700, false, None),
            (0o775, false, Some("writable by its group (mode 0775)")),
            (0o770, true, None),
            (0o777, true, Some("writable by every user (mode 0777)")),
            (0o1777, false, None),
        ] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let got = check_socket_dir(&dir, group_ok);
            match refused {
                None => assert_eq!(got, Ok(()), "{mode:o}"),
                Some(says) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(says), "{mode:o}: {e}");
                }
            }
        }
        let e = check_socket_dir(&base.path().join("missing"), false).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

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
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"keep", 0o600).unwrap();
        // Renaming onto a directory fails; the old file must survive.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("x"), b"").unwrap();
        assert!(write_atomic(&sub, b"new", 0o600).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"keep");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
