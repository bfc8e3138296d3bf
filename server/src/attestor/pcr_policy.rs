//! The measured-boot policy of a TPM attestor: an allow-list of PCR values
//! (SHA-256 bank) that agents' quotes must match, at attestation and at every
//! renewal.
//!
//! The file, one entry per line, `#` starts a comment, blank lines are ignored:
//!
//! ```text
//! # PCR  allowed SHA-256 value (hex); several lines for one PCR allow any of them
//! 0      3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969
//! 7      b5710bf57d25623e4019027da116821fa99f5c81e9e38b87671cc574f9281439
//! ```
//!
//! Every PCR the list names must be in the agent's quote, with one of its values;
//! PCRs the agent quotes that the list does not name are not checked. The file is
//! checked on every use and re-read when it changes (another file renamed over it,
//! or its size, modification or change time moves); a
//! file that no longer parses (or cannot be read) is reported in the log with the
//! line and what is wrong, and the previous list stays in force. At start-up an
//! unusable file stops the server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tessera_tpm::device::MAX_PCR;
use tessera_tpm::verifier::quote::PcrQuote;
use tessera_tpm::wire::hex;

/// The largest allow-list read (24 PCRs with thousands of values each fit).
const MAX_FILE: u64 = 4 << 20;

/// PCR index to its allowed values (lower-case hex).
type Allowed = BTreeMap<u8, BTreeSet<String>>;

/// See the module documentation.
#[derive(Debug)]
pub struct PcrPolicy {
    path: PathBuf,
    /// The setting that names the file, for messages.
    setting: String,
    state: Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<Stamp>,
    allowed: Allowed,
}

/// What tells one version of the file from another without reading it: the
/// modification time and size alone miss a same-size edit whose time was kept
/// (`cp -p`, `rsync -t`) or fell in the same clock tick; a rename brings another
/// inode, and any write or time change moves the change time, which no one sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Parses the allow-list text; the error names the line and what is wrong.
pub fn parse(text: &str) -> Result<BTreeMap<u8, BTreeSet<String>>, String> {
    let mut allowed = Allowed::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |what: String| format!("line {}: {what}", n + 1);
        let mut parts = line.split_whitespace();
        let (Some(index), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(at(format!("{line:?} is not \"<PCR index> <SHA-256 hex>\"")));
        };
        let index: u8 = index
            .parse()
            .ok()
            .filter(|i| *i <= MAX_PCR)
            .ok_or_else(|| {
                at(format!(
                    "PCR index {index:?} is not a number from 0 to {MAX_PCR}"
                ))
            })?;
        if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(at(format!(
                "{value:?} is not a SHA-256 value (64 hex digits)"
            )));
        }
        allowed
            .entry(index)
            .or_default()
            .insert(value.to_ascii_lowercase());
    }
    if allowed.is_empty() {
        return Err("no PCR value is listed (an empty list would refuse nothing)".into());
    }
    Ok(allowed)
}

impl PcrPolicy {
    /// Reads the list at `path`; `setting` names it in messages.
    pub fn open(path: &Path, setting: &str) -> Result<Self, String> {
        let policy = Self {
            path: path.to_owned(),
            setting: setting.to_owned(),
            state: Mutex::new(Loaded::default()),
        };
        policy.refresh()?;
        Ok(policy)
    }

    /// The setting naming the file.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// Re-reads the file if it changed. An error leaves the previous list in force
    /// (and is returned, for start-up and for the log).
    fn refresh(&self) -> Result<(), String> {
        let fail = |e: String| format!("{} {}: {e}", self.setting, self.path.display());
        let meta = std::fs::metadata(&self.path).map_err(|e| fail(e.to_string()))?;
        let stamp = Stamp::of(&meta);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.stamp == Some(stamp) {
            return Ok(());
        }
        // Not a FIFO (reading it would hold every TPM attestation and renewal until
        // someone writes to it) nor a device, and not more than any list needs.
        if !meta.is_file() {
            state.stamp = Some(stamp);
            return Err(fail(format!("not a regular file ({:?})", meta.file_type())));
        }
        if meta.len() > MAX_FILE {
            state.stamp = Some(stamp);
            return Err(fail(format!(
                "{} bytes, more than the {MAX_FILE} a PCR allow-list may have",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| fail(e.to_string()))?;
        // Remember the stamp even when the text is bad: the error is reported once
        // per change, not on every check.
        state.stamp = Some(stamp);
        let allowed = parse(&text).map_err(fail)?;
        tracing::info!(
            file = %self.path.display(),
            pcrs = allowed.len(),
            "PCR allow-list loaded"
        );
        state.allowed = allowed;
        Ok(())
    }

    /// Checks `quote`'s values (already verified against the AK) against the list.
    pub fn check(&self, quote: &PcrQuote) -> Result<(), String> {
        if let Err(e) = self.refresh() {
            tracing::error!("{e}; the previous PCR allow-list stays in force");
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (index, values) in &state.allowed {
            let Some(at) = quote.pcrs.iter().position(|p| p == index) else {
                return Err(format!(
                    "PCR {index} is on the allow-list ({}) but not in the agent's quote",
                    self.setting
                ));
            };
            let value = hex(&quote.values[at]);
            if !values.contains(&value) {
                return Err(format!(
                    "PCR {index} is {value}, which is not on the allow-list ({})",
                    self.setting
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(pcrs: &[u8], fill: &[u8]) -> PcrQuote {
        PcrQuote {
            pcrs: pcrs.to_vec(),
            values: fill.iter().map(|b| vec![*b; 32]).collect(),
            attest: vec![],
            signature: vec![],
        }
    }

    #[test]
    fn the_file_format_and_its_errors() {
        let a = "aa".repeat(32);
        let text = format!(
            "# boot\n0 {a}\n0 {}  # update\n\n7 {}\n",
            "bb".repeat(32),
            "CC".repeat(32)
        );
        let allowed = parse(&text).unwrap();
        assert_eq!(allowed[&0].len(), 2);
        assert!(allowed[&7].contains(&"cc".repeat(32)));
        for (bad, says) in [
            (format!("24 {a}"), "line 1: PCR index \"24\""),
            (format!("x {a}"), "line 1: PCR index \"x\""),
            ("0 abc".to_owned(), "line 1: \"abc\" is not a SHA-256 value"),
            (format!("\n0 {a} extra"), "line 2: "),
            ("# nothing\n".to_owned(), "no PCR value is listed"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.starts_with(says) || e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn quotes_must_cover_and_match_every_listed_pcr_and_bad_edits_keep_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pcrs.txt");
        std::fs::write(
            &path,
            format!("0 {}\n7 {}\n", "01".repeat(32), "07".repeat(32)),
        )
        .unwrap();
        let p = PcrPolicy::open(&path, "node_attestors.tpm_ek.pcr_allow_list").unwrap();
        p.check(&quote(&[0, 7, 16], &[1, 7, 9])).unwrap();
        let e = p.check(&quote(&[0, 7], &[1, 8])).unwrap_err();
        assert!(e.starts_with("PCR 7 is 0808"), "{e}");
        let e = p.check(&quote(&[0], &[1])).unwrap_err();
        assert!(e.contains("PCR 7 is on the allow-list"), "{e}");
        // A broken edit: reported, the previous list kept.
        std::fs::write(&path, "0 nonsense\n").unwrap();
        p.check(&quote(&[0, 7], &[1, 7])).unwrap();
        // A good edit takes effect.
        std::fs::write(&path, format!("7 {}\n", "08".repeat(32))).unwrap();
        p.check(&quote(&[0, 7], &[5, 8])).unwrap();
        // Unreadable at start-up: an error naming the setting and the file.
        let e = PcrPolicy::open(&dir.path().join("none"), "x.pcr_allow_list").unwrap_err();
        assert!(e.starts_with("x.pcr_allow_list "), "{e}");
    }

    /// Hostile files at the list's path: refused with a reason, not waited on, and
    /// the list in force stays.
    #[test]
    fn fifos_devices_and_huge_files_are_refused_and_the_list_in_force_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pcrs.txt");
        let setting = "node_attestors.tpm_ek.pcr_allow_list";
        // At start-up: each stops the server with a reason.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        let e = PcrPolicy::open(&path, setting).unwrap_err();
        assert!(e.contains("more than the"), "{e}");
        let e = PcrPolicy::open(Path::new("/dev/zero"), setting).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");

        // While running: a FIFO renamed over the list is not read (which would
        // wait for a writer forever); the list in force stays.
        std::fs::write(&path, format!("0 {}\n", "01".repeat(32))).unwrap();
        let p = std::sync::Arc::new(PcrPolicy::open(&path, setting).unwrap());
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::rename(&fifo, &path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let checking = p.clone();
        std::thread::spawn(move || {
            tx.send((
                checking.check(&quote(&[0], &[1])),
                checking.check(&quote(&[0], &[2])),
            ))
            .unwrap();
        });
        let (good, bad) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("checking a quote waited on a FIFO");
        good.unwrap();
        assert!(bad.unwrap_err().starts_with("PCR 0 is 0202"));
    }

    /// An edit that keeps the file's size and modification time (one SHA-256 value
    /// replaced by another, the file copied with its time kept, as `cp -p`,
    /// `install -p` or `rsync -t` do, or two writes within one tick of the
    /// file system's clock) is still seen, replaced atomically or in place.
    #[test]
    fn same_size_edits_with_the_old_modification_time_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pcrs.txt");
        std::fs::write(&path, format!("0 {}\n", "01".repeat(32))).unwrap();
        let old = std::fs::metadata(&path).unwrap().modified().unwrap();
        let p = PcrPolicy::open(&path, "node_attestors.tpm_ek.pcr_allow_list").unwrap();
        p.check(&quote(&[0], &[1])).unwrap();

        // Replaced by rename: the value 01.. withdrawn, 02.. allowed.
        let staged = dir.path().join("pcrs.new");
        std::fs::write(&staged, format!("0 {}\n", "02".repeat(32))).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&staged)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let e = p.check(&quote(&[0], &[1])).unwrap_err();
        assert!(e.starts_with("PCR 0 is 0101"), "{e}");
        p.check(&quote(&[0], &[2])).unwrap();

        // Rewritten in place, the time set back.
        std::fs::write(&path, format!("0 {}\n", "03".repeat(32))).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let e = p.check(&quote(&[0], &[2])).unwrap_err();
        assert!(e.starts_with("PCR 0 is 0202"), "{e}");
        p.check(&quote(&[0], &[3])).unwrap();
    }
}
