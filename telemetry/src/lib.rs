//! What operators watch a Tessera binary through.
//!
//! - [`metrics`]: the registry each binary fills and the Prometheus text encoding of it;
//! - [`rpc`]: a tower layer that counts gRPC calls by method and status and times them;
//! - [`http`]: the HTTP listener for `/metrics`, `/live` and `/ready`;
//! - [`notify`]: systemd's readiness and watchdog protocol (`sd_notify`).
//!
//! The binaries define what they measure (`server::metrics`, `agent::metrics`); this
//! crate holds what both need to expose it.

#![warn(missing_docs)]
pub mod http;
pub mod metrics;
pub mod notify;
pub mod rpc;

pub use prometheus_client;
