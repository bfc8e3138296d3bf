//! The open-file limit. Every connection is a descriptor; the usual soft limit (1024)
//! is far below what a server with thousands of agents, or a node with many
//! workloads, needs, while the hard limit is usually generous. Both binaries raise the
//! soft limit to the hard one at start (Tessera never uses `select()`, the reason the
//! soft limit is kept low), and derive their default connection caps from the result.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The open-file limit after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit in force now.
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise to).
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NofileError {
    /// `getrlimit` failed.
    #[error("cannot read the open-file limit (RLIMIT_NOFILE): {0}")]
    Read(#[source] nix::Error),
    /// `setrlimit` failed.
    #[error("cannot raise the open-file limit from {soft} to {hard}: {source}")]
    Raise {
        /// The soft limit before.
        soft: u64,
        /// The hard limit it was to be raised to.
        hard: u64,
        /// The system's error.
        #[source]
        source: nix::Error,
    },
}

/// Raises the soft open-file limit to the hard limit and returns what is in force.
pub fn raise_open_file_limit() -> Result<OpenFileLimit, NofileError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(NofileError::Read)?;
    if soft >= hard {
        return Ok(OpenFileLimit {
            soft,
            hard,
            raised_from: None,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| NofileError::Raise {
        soft,
        hard,
        source,
    })?;
    Ok(OpenFileLimit {
        soft: hard,
        hard,
        raised_from: Some(soft),
    })
}

/// The soft open-file limit in force now (1024 if it cannot be read).
pub fn current_open_file_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Raises the limit and logs the outcome once; returns the soft limit in force. The
/// process goes on with its current limit when raising fails.
pub fn raise_and_log() -> u64 {
    match raise_open_file_limit() {
        Ok(l) => {
            match l.raised_from {
                Some(before) => tracing::info!(
                    "open-file limit raised from {before} to {} (the hard limit)",
                    l.soft
                ),
                None => tracing::debug!(soft = l.soft, hard = l.hard, "open-file limit"),
            }
            l.soft
        }
        Err(e) => {
            let soft = current_open_file_limit();
            tracing::warn!("{e}; going on with {soft}");
            soft
        }
    }
}

/// Descriptors kept back from client connections, for everything else a process
/// opens (database, key files, HSM or TPM sessions, outgoing connections, logs): a
/// quarter of the limit, between 32 and 1024.
pub fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 4).clamp(32, 1024)
}

/// Descriptors left for client connections under `limit`.
pub fn connection_budget(limit: u64) -> u64 {
    limit.saturating_sub(reserved_descriptors(limit)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_is_idempotent() {
        let l = raise_open_file_limit().unwrap();
        assert_eq!(l.soft, l.hard);
        assert_eq!(current_open_file_limit(), l.hard);
        let again = raise_open_file_limit().unwrap();
        assert_eq!(again.raised_from, None);
        assert_eq!(again.soft, l.soft);
    }

    #[test]
    fn the_budget_leaves_room_for_the_process() {
        assert_eq!(reserved_descriptors(1024), 256);
        assert_eq!(connection_budget(1024), 768);
        assert_eq!(reserved_descriptors(100), 32);
        assert_eq!(connection_budget(100), 68);
        assert_eq!(reserved_descriptors(1 << 20), 1024);
        assert_eq!(connection_budget(1 << 20), (1 << 20) - 1024);
        assert_eq!(connection_budget(0), 1);
    }
}
