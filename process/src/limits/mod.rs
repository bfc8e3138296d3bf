//! Limits that keep one client from starving the others: the open-file limit raised at
//! start, connection caps with a share per peer, idle and handshake timeouts, and the
//! once-per-interval log of what was refused.
//!
//! The server's agent API (TCP) and the agent's Workload API (Unix socket) both use
//! them; the peer is a source address there and a UID here. See `docs/SECURITY.md`
//! for the values and why.

pub mod conn;
pub mod idle;
pub mod nofile;
pub mod refusals;

pub use conn::{ConnCaps, ConnLimiter, ConnPermit, IpPeer, Refused, StreamBudget, StreamPlace};
pub use idle::{Guarded, StreamTrackingLayer, Tracked};
pub use nofile::{OpenFileLimit, raise_open_file_limit};
pub use refusals::RefusalLog;

/// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS),
/// on the agent API, the admin API and the Workload API. A client past it waits
/// for one of its streams to end (gRPC clients queue the call); without it tonic
/// announces no limit, and one connection could open tens of thousands of streams
/// whose requests never finish, each held in memory (about 9 KiB apiece).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
