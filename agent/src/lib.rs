//! The Tessera agent: attests its node, keeps the SVIDs of the entries it is authorized
//! for fresh, and serves them to workloads over the SPIFFE Workload API.

pub mod attestor;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod manager;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod retry;
pub mod startup;
pub mod state;
pub mod tpm_settings;
pub mod workload;

#[cfg(test)]
mod testing;

/// The `tpm` commands, where they were before the command line became a folder.
pub use cli::tpm as tpm_cli;
