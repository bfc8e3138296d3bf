//! `[limits]` of the agent configuration.

use std::time::Duration;

use serde::Deserialize;
use tessera_core::duration::serde_human;

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// `[limits]`: connection caps and the idle timeout of the Workload API socket. See
/// docs/SECURITY.md for why these values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Workload API connections open at once (default: from the open-file limit, at
    /// most 16384).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Of those, how many the processes of one UID may hold (default: a quarter of
    /// `max_connections`).
    #[serde(default)]
    pub max_connections_per_uid: Option<usize>,
    /// Requests (streams included) the processes of one UID may have open at once
    /// across all their connections; past it a request is refused with
    /// RESOURCE_EXHAUSTED. An unfinished request holds memory in the agent.
    #[serde(default = "default_max_requests_per_uid")]
    pub max_requests_per_uid: usize,
    /// A connection with no call or stream open for this long is closed (`0s`:
    /// never). Streams (FetchX509SVID and the others) keep their connection open for
    /// as long as they last.
    #[serde(default = "default_idle_timeout", with = "serde_human")]
    pub idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_uid: None,
            max_requests_per_uid: default_max_requests_per_uid(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_requests_per_uid() -> usize {
    DEFAULT_MAX_REQUESTS_PER_UID
}

/// Requests one UID may have open at once by default: far above what the workloads
/// of one user hold (a watching stream or two each), far below what pins memory
/// (about 10 KiB per unfinished request).
pub const DEFAULT_MAX_REQUESTS_PER_UID: usize = 2048;

/// The Workload API's connection cap when the configuration sets none: the
/// descriptors the process can spare, at most this many.
pub const DEFAULT_MAX_CONNECTIONS_CEILING: usize = 16384;
/// One UID may hold this fraction of the connections by default.
pub const DEFAULT_PER_UID_SHARE: usize = 4;

impl LimitsConfig {
    /// The caps in force under the open-file limit `nofile`.
    pub fn connection_caps(&self, nofile: u64) -> tessera_process::limits::ConnCaps {
        tessera_process::limits::ConnCaps::derived(
            nofile,
            // The socket and the pidfd that pins the caller.
            2,
            DEFAULT_MAX_CONNECTIONS_CEILING,
            DEFAULT_PER_UID_SHARE,
        )
        .with(self.max_connections, self.max_connections_per_uid)
    }

    /// The idle timeout, `None` when turned off.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}
