//! `azure_msi`: the agent sends the managed identity's access token, in SPIRE's JSON
//! shape.

use serde::{Deserialize, Serialize};

/// The name both halves use.
pub const NAME: &str = "azure_msi";

/// The agent's evidence.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The `access_token` IMDS returned (a JWT).
    pub token: String,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bearer token for the configured resource: never in logs.
        f.write_str("Payload { token: <redacted> }")
    }
}
