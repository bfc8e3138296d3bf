//! The Tessera agent: attests its node, keeps the SVIDs of the entries it is authorized
//! for fresh, and serves them to workloads over the SPIFFE Workload API.

pub mod attestor;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod manager;
pub mod retry;
pub mod state;
pub mod tpm_cli;
pub mod workload;
