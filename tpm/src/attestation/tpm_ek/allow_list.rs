//! The allow-list of EK hashes the `tpm_ek` verifier may trust instead of, or
//! as well as, the manufacturer's certificate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::attestation::AttestError;

/// EK hashes the operator trusts, read from a file or from every file in a folder:
/// one lower-case or upper-case hex SHA-256 per line, `#` starts a comment, blank
/// lines are ignored, files whose name starts with `.` are skipped. The files are
/// checked on every use and re-read when a modification time, a size or the set of
/// files changed, so adding or revoking an EK needs no restart. A list that no
/// longer parses makes attestation fail (rather than keep trusting a revoked EK).
#[derive(Debug)]
pub struct EkAllowList {
    source: Source,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
enum Source {
    Path(PathBuf),
    Fixed,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
    hashes: BTreeSet<String>,
}

impl EkAllowList {
    /// Reads the allow-list at `path` (a file or a folder).
    pub fn open(path: &Path) -> Result<Self, AttestError> {
        let list = Self {
            source: Source::Path(path.to_owned()),
            state: Mutex::new(Loaded::default()),
        };
        list.refresh()?;
        Ok(list)
    }

    /// A fixed list (configuration given inline, or tests).
    pub fn from_hashes<I: IntoIterator<Item = S>, S: AsRef<str>>(
        hashes: I,
    ) -> Result<Self, AttestError> {
        let mut set = BTreeSet::new();
        for (i, h) in hashes.into_iter().enumerate() {
            set.insert(parse_hash(h.as_ref()).ok_or_else(|| {
                AttestError::AllowList(format!(
                    "entry {} is not a SHA-256 hex string: {:?}",
                    i + 1,
                    h.as_ref()
                ))
            })?);
        }
        Ok(Self {
            source: Source::Fixed,
            state: Mutex::new(Loaded {
                stamp: Vec::new(),
                hashes: set,
            }),
        })
    }

    /// Whether `pub_hash` is listed, re-reading the files if they changed.
    pub fn contains(&self, pub_hash: &str) -> Result<bool, AttestError> {
        self.refresh()?;
        let state = self
            .state
            .lock()
            .map_err(|_| AttestError::AllowList("lock poisoned".into()))?;
        Ok(state.hashes.contains(&pub_hash.to_ascii_lowercase()))
    }

    /// How many hashes are listed now.
    pub fn len(&self) -> Result<usize, AttestError> {
        self.refresh()?;
        let state = self
            .state
            .lock()
            .map_err(|_| AttestError::AllowList("lock poisoned".into()))?;
        Ok(state.hashes.len())
    }

    /// Whether the list is empty now.
    pub fn is_empty(&self) -> Result<bool, AttestError> {
        Ok(self.len()? == 0)
    }

    fn refresh(&self) -> Result<(), AttestError> {
        let Source::Path(path) = &self.source else {
            return Ok(());
        };
        let files = list_files(path)?;
        let stamp: Vec<_> = files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok();
                (
                    f.clone(),
                    meta.as_ref().and_then(|m| m.modified().ok()),
                    meta.map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        let mut state = self
            .state
            .lock()
            .map_err(|_| AttestError::AllowList("lock poisoned".into()))?;
        if !state.stamp.is_empty() && state.stamp == stamp {
            return Ok(());
        }
        let mut hashes = BTreeSet::new();
        for f in &files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| AttestError::AllowList(format!("cannot read {}: {e}", f.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let h = parse_hash(line).ok_or_else(|| {
                    AttestError::AllowList(format!(
                        "{}:{}: not a SHA-256 hex string: {line:?}",
                        f.display(),
                        n + 1
                    ))
                })?;
                hashes.insert(h);
            }
        }
        *state = Loaded { stamp, hashes };
        Ok(())
    }
}

fn parse_hash(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn list_files(path: &Path) -> Result<Vec<PathBuf>, AttestError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| AttestError::AllowList(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let rd = std::fs::read_dir(path)
        .map_err(|e| AttestError::AllowList(format!("cannot list {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn file_allow_list_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eks.txt");
        std::fs::write(&file, format!("# trusted EKs\n{H1}  # lab TPM\n\n")).unwrap();
        let list = EkAllowList::open(&file).unwrap();
        assert!(list.contains(H1).unwrap());
        assert!(list.contains(&H1.to_uppercase()).unwrap());
        assert!(!list.contains(H2).unwrap());
        // A change in size is seen even within the file system's time granularity.
        std::fs::write(&file, format!("{H2}\n")).unwrap();
        assert!(!list.contains(H1).unwrap());
        assert!(list.contains(H2).unwrap());
        std::fs::write(&file, "not-a-hash\n").unwrap();
        let err = list.contains(H2).unwrap_err();
        assert!(err.to_string().contains("eks.txt:1"), "{err}");
    }

    #[test]
    fn folder_allow_list_reads_every_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), format!("{H1}\n")).unwrap();
        std::fs::write(dir.path().join(".hidden"), "garbage\n").unwrap();
        let list = EkAllowList::open(dir.path()).unwrap();
        assert_eq!(list.len().unwrap(), 1);
        std::fs::write(dir.path().join("b"), format!("{H2}\n")).unwrap();
        assert!(list.contains(H2).unwrap());
        std::fs::remove_file(dir.path().join("a")).unwrap();
        assert!(!list.contains(H1).unwrap());
        assert!(EkAllowList::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn fixed_lists_validate_entries() {
        assert!(
            EkAllowList::from_hashes([H1])
                .unwrap()
                .contains(H1)
                .unwrap()
        );
        assert!(EkAllowList::from_hashes(["abc"]).is_err());
    }
}
