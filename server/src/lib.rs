//! The Tessera server: the CA (keys in memory, on disk or in an HSM), the registration
//! store, node attestation, and the agent and admin APIs.

pub mod api;
pub mod attestor;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod config;
pub mod datastore;
pub mod entries;
pub mod federation;
pub mod https;
pub mod log_level;
pub mod metrics;
pub mod oidc;
pub mod run;
pub mod server_id;
pub mod transport;

/// The upstream authority moved into the CA manager's folder; the old path stays.
pub use ca::upstream;
