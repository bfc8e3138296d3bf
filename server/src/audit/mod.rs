//! Audit records: what the server decided and for whom, one JSON object per line.
//!
//! Three kinds of record, each with an RFC 3339 `time` and a `type`:
//!
//! - `attestation`: every node attestation that got past the rate limit (attestor,
//!   agent ID when known, result, reason, source address). Attempts the rate limit
//!   turns away before reading any evidence are counted in the log's summaries
//!   instead, so that a flood of them cannot fill the disk.
//! - `admin`: every admin API call (caller, method, arguments, result). The caller is
//!   the uid and pid the kernel reports for the admin socket's peer, or the SPIFFE ID
//!   of the X509-SVID presented on the TLS port.
//! - `svid`: every SVID issued to an agent, for itself or for its workloads (agent ID,
//!   SPIFFE ID, serial, expiry).
//!
//! No record holds a secret: join tokens, keys, CSRs, certificates and JWTs are never
//! written; arguments are listed field by field ([`records`]), never copied whole.
//!
//! Records go to a file (`[audit] path`: created with mode 0600, appended to, each
//! record written whole under a lock so lines never interleave; a file moved away by
//! log rotation is followed by a new one at the same path) and/or to the log (`[audit]
//! log = true`: INFO events with the target `audit`). A record that cannot be written
//! is reported loudly in the log and the request it describes goes ahead: auditing
//! never turns a working server into a failing one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub mod records;

pub use records::{Admin, Attestation, Caller, Outcome, Svid};

/// `[audit]` in the server configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file records are appended to (created with mode 0600).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Also (or only) write records to the log, at INFO with the target `audit`.
    #[serde(default)]
    pub log: bool,
}

/// Why the audit file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the audit file {}: {source} (the directory must exist and the server's \
     user must be able to write there; or remove [audit] path)",
    path.display()
)]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// How often a lasting write failure is logged again (the first is logged at once).
const FAILURE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Where records go. See the module documentation.
#[derive(Debug)]
pub struct Audit {
    file: Option<AuditFile>,
    log: bool,
}

#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    /// The open file and the (device, inode) it was opened as; `None` after a failure
    /// to reopen.
    file: Option<(File, (u64, u64))>,
    /// Records lost since the last report, and when that report was made.
    lost: u64,
    reported_at: Option<Instant>,
}

/// One line: the common fields, then the record's own.
#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// A record of one kind (its `type` field).
pub trait Record: Serialize {
    /// The `type` written in the record.
    const TYPE: &'static str;
}

fn open_append(path: &Path) -> std::io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

/// `t` as RFC 3339 in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{}", tessera_core::x509::unix_seconds(t)))
}

impl Audit {
    /// No records anywhere.
    pub fn disabled() -> Self {
        Self {
            file: None,
            log: false,
        }
    }

    /// Opens what `config` names. The file is opened now, so that a path the server
    /// cannot write stops it at start rather than losing every record.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let file = match &config.path {
            None => None,
            Some(path) => {
                let (file, id) = open_append(path).map_err(|source| AuditError {
                    path: path.clone(),
                    source,
                })?;
                if let Ok(meta) = file.metadata() {
                    let mode = meta.permissions().mode() & 0o7777;
                    if mode & 0o077 != 0 {
                        tracing::warn!(
                            "audit file {} has mode {mode:04o}: users other than the \
                             server's can read it; make it 0600",
                            path.display()
                        );
                    }
                }
                Some(AuditFile {
                    path: path.clone(),
                    state: Mutex::new(FileState {
                        file: Some((file, id)),
                        lost: 0,
                        reported_at: None,
                    }),
                })
            }
        };
        Ok(Self {
            file,
            log: config.log,
        })
    }

    /// Whether records go anywhere (callers skip building them when not).
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.log
    }

    /// Writes one record, stamped with the current time.
    pub fn record<R: Record>(&self, record: &R) {
        if !self.enabled() {
            return;
        }
        let line = Line {
            time: rfc3339(SystemTime::now()),
            kind: R::TYPE,
            body: record,
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot encode an audit record ({}): {e}", R::TYPE);
                return;
            }
        };
        if self.log {
            tracing::info!(target: "audit", "{text}");
        }
        if let Some(f) = &self.file {
            text.push('\n');
            f.write(text.as_bytes());
        }
    }
}

impl AuditFile {
    fn write(&self, line: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.write_locked(&mut st, line);
        match result {
            Ok(()) => {
                if st.lost > 0 {
                    tracing::warn!(
                        "audit file {} is writable again; {} records were lost",
                        self.path.display(),
                        st.lost
                    );
                    st.lost = 0;
                    st.reported_at = None;
                }
            }
            Err(e) => {
                st.lost += 1;
                let due = st
                    .reported_at
                    .is_none_or(|t| t.elapsed() >= FAILURE_REPORT_EVERY);
                if due {
                    tracing::error!(
                        "AUDIT RECORD LOST: cannot write to the audit file {}: {e} ({} \
                         records lost so far); requests are still served",
                        self.path.display(),
                        st.lost
                    );
                    st.reported_at = Some(Instant::now());
                }
            }
        }
    }

    /// Appends `line` to the file at `path`, reopening it first when it was moved
    /// away (log rotation) or removed.
    fn write_locked(&self, st: &mut FileState, line: &[u8]) -> std::io::Result<()> {
        let current = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let stale = match (&st.file, current) {
            (Some((_, id)), Some(now)) => *id != now,
            _ => true,
        };
        if stale {
            st.file = None;
            st.file = Some(open_append(&self.path)?);
        }
        let Some((file, _)) = st.file.as_mut() else {
            return Err(std::io::Error::other("the audit file is not open"));
        };
        // One buffer, written under the lock with O_APPEND: a record is never split
        // by another, in this process or (for records this short) any other.
        file.write_all(line)
    }
}

#[cfg(test)]
mod tests;
