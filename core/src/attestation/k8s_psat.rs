//! `k8s_psat`: the agent sends its projected service account token and the name of
//! its cluster, in SPIRE's JSON shape (`{"cluster": ..., "token": ...}`).

use serde::{Deserialize, Serialize};

/// The name both halves use.
pub const NAME: &str = "k8s_psat";

/// Where the agent reads its token when no path is configured (SPIRE's default: a
/// projected volume named `spire-agent`).
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// The token audience the server expects when none is configured (SPIRE's).
pub const DEFAULT_AUDIENCE: &str = "spire-server";

/// The agent's evidence.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The cluster name, as the server's `clusters` table knows it.
    pub cluster: String,
    /// The projected service account token (a JWT).
    pub token: String,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bearer token the cluster's API server accepts: never in logs.
        f.debug_struct("Payload")
            .field("cluster", &self.cluster)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_spires_json_and_its_token_stays_out_of_logs() {
        let p = Payload {
            cluster: "prod".into(),
            token: "eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(),
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cluster": "prod", "token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})
        );
        assert_eq!(serde_json::from_value::<Payload>(json).unwrap(), p);
        assert!(!format!("{p:?}").contains("eyJ"));
    }
}
