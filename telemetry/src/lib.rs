//! What operators watch a Tessera binary through.
//!
//! - [`metrics`]: the registry each binary fills and the Prometheus text encoding of it;
//! - [`rpc`]: a tower layer that counts gRPC calls by method and status and times them;
//! - [`http`]: the HTTP listener for `/metrics`, `/live` and `/ready`;
//! - [`span`]: a tower layer that runs each gRPC call in a span naming its method and caller;
//! - [`notify`]: systemd's readiness and watchdog protocol (`sd_notify`).
//!
//! The binaries define what they measure (`server::metrics`, `agent::metrics`); this
//! crate holds what both need to expose it. Setting up the log output (text or JSON
//! lines, the reloadable filter) is the process crate's `logging`.

#![warn(missing_docs)]
pub mod http;
pub mod metrics;
pub mod notify;
pub mod rpc;
pub mod span;

pub use prometheus_client;
