//! What a Tessera process needs from the operating system, written once for the
//! server and the agent: configuration files with `--set` and environment overrides
//! ([`config`]; where a file sets a key, for errors at their line: [`config_key`]),
//! secrets from files, variables and systemd credentials ([`secret`]),
//! crash-safe file writes ([`fs`]) and the disk key manager on top of them
//! ([`keys`]), the Unix sockets they serve on ([`socket`]), logging ([`logging`]),
//! signals and shutdown ([`shutdown`]), command output that ends quietly on a
//! closed pipe ([`output`]), the limits that keep one client from
//! starving the others ([`limits`]), and the one-shot HTTP client the node
//! attestors use for metadata services and key sets ([`http`]).
//!
//! `tessera-core` stays free of I/O: it holds the types and rules, this crate the
//! plumbing.

#![warn(missing_docs)]
pub mod config;
pub mod config_key;
pub mod fs;
pub mod http;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod output;
pub mod secret;
pub mod shutdown;
pub mod socket;

pub use keys::DiskKeyManager;
