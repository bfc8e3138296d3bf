//! Generated gRPC code for Tessera's three APIs.
//!
//! - [`workload`]: the SPIFFE Workload API, wire-exact (no proto package, so the
//!   method paths are `/SpiffeWorkloadAPI/...`).
//! - [`agent`]: the agent <-> server API (`tessera.agent.v1`).
//! - [`admin`]: the server's admin API (`tessera.admin.v1`).
//! - [`local`]: services beside the Workload API on the agent's socket.

#![allow(
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]

pub mod convert;

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

/// A client channel over a Unix socket (the admin socket, the Workload API socket).
///
/// The URI is a placeholder: every connection goes to `path`. The `:authority` sent is
/// `localhost`, which every HTTP/2 server accepts.
pub async fn unix_channel(
    path: &std::path::Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
