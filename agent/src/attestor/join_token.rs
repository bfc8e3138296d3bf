//! Join-token attestation, agent side: the evidence is the token itself.

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::{AttestError, NodeAttestor, Session};

/// See the module documentation.
pub struct JoinToken {
    token: Zeroizing<String>,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(..)")
    }
}

impl JoinToken {
    pub fn new(token: Zeroizing<String>) -> Self {
        Self { token }
    }
}

struct JoinSession(Zeroizing<String>);

#[async_trait]
impl Session for JoinSession {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        Ok(self.0.as_bytes().to_vec())
    }

    async fn answer(&mut self, _challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        Err(AttestError::Failed(
            "the server sent a challenge, but join_token attestation has none".into(),
        ))
    }
}

impl NodeAttestor for JoinToken {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn can_reattest(&self) -> bool {
        false
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(JoinSession(self.token.clone()))
    }
}
