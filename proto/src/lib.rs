//! Generated gRPC code for Tessera's three APIs.
//!
//! - [`workload`]: the SPIFFE Workload API, wire-exact (no proto package, so the
//!   method paths are `/SpiffeWorkloadAPI/...`).
//! - [`agent`]: the agent <-> server API (`tessera.agent.v1`).
//! - [`admin`]: the server's admin API (`tessera.admin.v1`).
//! - [`local`]: services beside the Workload API on the agent's socket.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// The SPIFFE Workload API.
pub mod workload {
    tonic::include_proto!("_");
}

/// Tessera's own packages, nested as the proto packages are.
pub mod tessera {
    pub mod types {
        pub mod v1 {
            tonic::include_proto!("tessera.types.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("tessera.agent.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("tessera.admin.v1");
        }
    }
    pub mod local {
        pub mod v1 {
            tonic::include_proto!("tessera.local.v1");
        }
    }
}

pub use tessera::admin::v1 as admin;
pub use tessera::agent::v1 as agent;
pub use tessera::local::v1 as local;
pub use tessera::types::v1 as types;

/// The metadata key every Workload API request must carry with the value `true`.
pub const WORKLOAD_HEADER: &str = "workload.spiffe.io";
