//! `gcp_iit`: the agent sends the identity token as the metadata server issued it
//! (the raw JWT); only its name and default audience are shared.

/// The name both halves use.
pub const NAME: &str = "gcp_iit";

/// The token audience when none is configured, on both sides.
pub const DEFAULT_AUDIENCE: &str = "tessera-gcp-node-attestor";
