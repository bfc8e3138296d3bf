//! What a Tessera process needs from the operating system, written once for the
//! server and the agent: configuration files with `--set` and environment overrides
//! ([`config`]), secrets from files, variables and systemd credentials ([`secret`]),
//! crash-safe file writes ([`fs`]) and the disk key manager on top of them
//! ([`keys`]), the Unix sockets they serve on ([`socket`]), logging ([`logging`]),
//! signals and shutdown ([`shutdown`]), command output that ends quietly on a
//! closed pipe ([`output`]), and the limits that keep one client from
//! starving the others ([`limits`]).
//!
//! `tessera-core` stays free of I/O: it holds the types and rules, this crate the
//! plumbing.

#![warn(missing_docs)]
pub mod config;
pub mod fs;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod output;
pub mod secret;
pub mod shutdown;
pub mod socket;

pub use keys::DiskKeyManager;
