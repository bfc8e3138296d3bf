//! Join-token attestation, server side: the agent presents a token made by
//! `tessera-server token generate`; the token is deleted in the same step that checks
//! it, so it works once, and it expires (600 s by default).

use std::sync::Arc;

use async_trait::async_trait;

use super::{AttestError, Attested, NodeAttestor, Session, Step};
use crate::datastore::Datastore;

/// The agent ID path prefix of join-token agents.
pub const NAME: &str = "join_token";

/// See the module documentation.
#[derive(Debug)]
pub struct JoinToken {
    ds: Arc<dyn Datastore>,
}

impl JoinToken {
    pub fn new(ds: Arc<dyn Datastore>) -> Self {
        Self { ds }
    }
}

struct JoinSession {
    ds: Arc<dyn Datastore>,
    done: bool,
}

#[async_trait]
impl Session for JoinSession {
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError> {
        if self.done {
            return Err(AttestError::Malformed(
                "join_token attestation has no challenge".into(),
            ));
        }
        self.done = true;
        let token = String::from_utf8(input)
            .map_err(|_| AttestError::Malformed("join token is not UTF-8".into()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(AttestError::Malformed("join token is empty".into()));
        }
        if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(AttestError::Malformed(
                "join token may hold only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        let expires_at = self
            .ds
            .take_join_token(token)
            .await
            .map_err(|e| AttestError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                AttestError::Refused("join token does not exist or has already been used".into())
            })?;
        let now = crate::ca::now_unix();
        if expires_at <= now {
            return Err(AttestError::Refused(format!(
                "join token expired {} s ago",
                now - expires_at
            )));
        }
        Ok(Step::Attested(Attested {
            agent_path: format!("{NAME}/{token}"),
            selectors: Vec::new(),
            can_reattest: false,
            tpm: None,
        }))
    }
}

impl NodeAttestor for JoinToken {
    fn name(&self) -> &'static str {
        NAME
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(JoinSession {
            ds: self.ds.clone(),
            done: false,
        })
    }
}
