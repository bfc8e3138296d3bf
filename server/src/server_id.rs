//! The server's ID among the servers sharing one datastore: written on every CA
//! record it makes, so that each server signs with, rotates and prunes only its own
//! authorities. Set with `server_id`, or made once (random) and kept in
//! `<data_dir>/server_id`, so that it survives restarts with the data directory.

use std::io;
use std::path::Path;

/// The file under the data directory that keeps a generated ID.
pub const FILE: &str = "server_id";

/// Checks an ID: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
pub fn check(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '.', '_' and '-' only)"
        ));
    }
    Ok(())
}

/// The configured ID, or the one kept in `data_dir` (made and written atomically
/// the first time). A kept file that does not hold a valid ID is an error naming it,
/// never replaced: another ID would orphan this server's authorities.
pub fn resolve(configured: Option<&str>, data_dir: &Path) -> io::Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            check(id).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a server ID: {e}", path.display()),
                )
            })?;
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = format!("server-{}", uuid::Uuid::new_v4().simple());
            tessera_process::fs::write_atomic(&path, format!("{id}\n").as_bytes(), 0o600)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[test]
    fn an_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = resolve(None, dir.path()).unwrap();
        assert!(check(&first).is_ok(), "{first}");
        assert_eq!(resolve(None, dir.path()).unwrap(), first);
        // The configured one wins, and is not written.
        assert_eq!(resolve(Some("a-1"), dir.path()).unwrap(), "a-1");
        assert_eq!(resolve(None, dir.path()).unwrap(), first);
        // Another data directory, another ID.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(resolve(None, other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not an id!\n").unwrap();
        let e = resolve(None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("does not hold a server ID"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            "not an id!\n"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(check("server-0af3").is_ok());
        assert!(check("").is_err());
        assert!(check(&"a".repeat(65)).is_err());
        assert!(check("a/b").unwrap_err().contains("'/'"));
    }
}
