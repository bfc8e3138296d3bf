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

pub use conn::{ConnCaps, ConnLimiter, ConnPermit, IpPeer, Refused};
pub use idle::{Guarded, StreamTrackingLayer, Tracked};
pub use nofile::{OpenFileLimit, raise_open_file_limit};
pub use refusals::RefusalLog;
