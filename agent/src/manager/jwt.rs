//! JWT-SVIDs, minted by the server when a workload asks and cached while in the
//! first half of their life. While the server fails, a gate fails requests at once
//! instead of letting each reach for it.

use std::time::Duration;

use tessera_core::RegistrationEntry;
use tokio::time::Instant;

use super::{Agent, AgentError, Op};
use crate::cache::CachedJwt;
use crate::retry::Backoff;

/// JWT-SVIDs are minted when a workload asks, so their backoff is a gate: while it
/// is closed, requests fail at once with the last error instead of each reaching
/// for an unreachable server.
#[derive(Debug)]
pub(super) struct JwtGate {
    backoff: Backoff,
    closed_until: Option<Instant>,
    last_error: String,
}

impl JwtGate {
    pub(super) fn new(sync_interval: Duration) -> Self {
        Self {
            backoff: Backoff::for_interval(sync_interval),
            closed_until: None,
            last_error: String::new(),
        }
    }
}

impl Agent {
    /// A JWT-SVID for `entry` and `audience`, from the cache or freshly minted. After
    /// the server failed, requests fail at once until the gate's backoff has passed.
    pub async fn jwt_svid(
        &self,
        entry: &RegistrationEntry,
        audience: &[String],
    ) -> Result<CachedJwt, AgentError> {
        if let Some(j) = self.cache.jwt(&entry.id, audience, self.now()) {
            return Ok(j);
        }
        {
            let gate = self.jwt_gate.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = gate.closed_until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    return Err(AgentError::Unavailable(format!(
                        "{} (the agent asks the server again in {}s)",
                        gate.last_error,
                        left.as_secs() + 1
                    )));
                }
            }
        }
        let result = self
            .server
            .new_jwt_svid(entry.id.clone(), audience.to_vec())
            .await
            .map_err(AgentError::from);
        let resp = match result {
            Ok(r) => {
                self.metrics.jwt_minted();
                r
            }
            Err(e) => {
                if e.is_transient() {
                    let mut gate = self.jwt_gate.lock().unwrap_or_else(|p| p.into_inner());
                    let wait = gate.backoff.fail();
                    gate.closed_until = Some(Instant::now() + wait);
                    gate.last_error = match &e {
                        AgentError::Unavailable(m) => m.clone(),
                        other => other.to_string(),
                    };
                    drop(gate);
                    self.failed(
                        Op::Jwt,
                        tracing::Level::WARN,
                        &e.to_string(),
                        &format!("JWT-SVID minting failed (requests fail fast, then retry with backoff): {e}"),
                    );
                }
                return Err(e);
            }
        };
        {
            let mut gate = self.jwt_gate.lock().unwrap_or_else(|p| p.into_inner());
            gate.backoff.reset();
            gate.closed_until = None;
        }
        self.succeeded(Op::Jwt);
        let jwt = CachedJwt {
            token: resp.token,
            issued_at: resp.issued_at,
            expires_at: resp.expires_at,
        };
        self.cache.put_jwt(&entry.id, audience, jwt.clone());
        Ok(jwt)
    }
}
