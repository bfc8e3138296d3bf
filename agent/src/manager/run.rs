//! The run loop: the one task that does the agent's timed work, so there is a single
//! writer of its state. It wakes for the next sync (every `sync_interval`, jittered),
//! for the earliest SVID rotation and for the agent SVID's renewal; a failed sync
//! backs off, and a sync the server refuses (the agent was evicted, or its SVID
//! expired during an outage) leads to attesting again when the node attestor can.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{Agent, AgentError, Op};
use crate::retry::Backoff;

/// The shortest pause before signing again, in case the server hands out SVIDs that
/// are due for rotation as soon as they are issued.
const MIN_SIGN_GAP: Duration = Duration::from_millis(200);

/// `d` ±10%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// The run loop's schedule between two wake-ups.
#[derive(Debug)]
pub(super) struct RunLoop {
    pub(super) sync_backoff: Backoff,
    pub(super) renew_backoff: Backoff,
    pub(super) next_sync: Instant,
    /// Whether the last sync got through: signing and renewal wait for one, so that
    /// while the server is away only the sync knocks, once per backoff step.
    pub(super) reachable: bool,
    pub(super) renew_at: Option<Instant>,
}

impl RunLoop {
    /// A schedule that syncs at once.
    pub(super) fn new(agent: &Agent) -> Self {
        let interval = agent.cfg.sync_interval;
        Self {
            sync_backoff: Backoff::for_interval(interval),
            renew_backoff: Backoff::for_interval(interval),
            next_sync: Instant::now(),
            reachable: false,
            renew_at: agent.agent_renewal_time(),
        }
    }

    /// Does what is due now, and returns when to wake up next.
    pub(super) async fn step(&mut self, agent: &Agent) -> Instant {
        if Instant::now() >= self.next_sync {
            self.sync(agent).await;
        }
        if self.reachable {
            if agent
                .next_signing()
                .await
                .is_some_and(|t| t <= Instant::now())
            {
                agent.sign_due().await;
            }
            if self.renew_at.is_some_and(|t| t <= Instant::now()) {
                self.renew(agent).await;
            }
        }
        // Sleep until the next sync or, while the server answers, the next SVID due
        // for signing or the agent renewal.
        let mut wake = self.next_sync;
        if self.reachable {
            if let Some(t) = agent.next_signing().await {
                wake = wake.min(t.max(Instant::now() + MIN_SIGN_GAP));
            }
            if let Some(t) = self.renew_at {
                wake = wake.min(t);
            }
        }
        wake
    }

    async fn sync(&mut self, agent: &Agent) {
        let e = match agent.sync_once().await {
            Ok(()) => {
                self.reachable = true;
                self.sync_backoff.reset();
                agent.succeeded(Op::Sync);
                self.next_sync = Instant::now() + jitter(agent.cfg.sync_interval);
                return;
            }
            Err(e) => e,
        };
        self.reachable = false;
        let mut wait = self.sync_backoff.fail();
        // An agent SVID that expired (an outage outlived it) is refused in the TLS
        // handshake, which the agent sees as a broken connection, not as a refusal:
        // check the clock.
        let expired_at = agent.agent_svid_expired_at();
        let mut error = e.to_string();
        if let Some(na) = expired_at {
            error = format!(
                "the agent SVID expired at {na}, so the server no longer accepts this agent ({e})"
            );
        }
        if matches!(e, AgentError::Rejected(_)) || expired_at.is_some() {
            if agent.can_reattest() {
                agent.failed(
                    Op::Sync,
                    tracing::Level::ERROR,
                    &error,
                    &format!("sync refused, attesting again: {error}"),
                );
                match agent.attest().await {
                    Ok(()) => {
                        agent.succeeded(Op::Attest);
                        self.renew_at = agent.agent_renewal_time();
                        self.renew_backoff.reset();
                        self.sync_backoff.reset();
                        wait = Duration::ZERO;
                    }
                    Err(e) => agent.failed(
                        Op::Attest,
                        tracing::Level::ERROR,
                        &e.to_string(),
                        &format!("re-attestation failed (will retry): {e}"),
                    ),
                }
            } else {
                if expired_at.is_some() {
                    error = format!(
                        "{error}; this agent cannot attest again by itself: give it a new join token (tessera-server token generate) and restart it with that token"
                    );
                }
                agent.failed(
                    Op::Sync,
                    tracing::Level::ERROR,
                    &error,
                    &format!("sync refused: {error}"),
                );
            }
        } else {
            agent.failed(
                Op::Sync,
                tracing::Level::WARN,
                &error,
                &format!("sync failed (will retry): {error}"),
            );
        }
        agent.status_mut().last_error = Some(error);
        tracing::debug!(?wait, "next sync attempt");
        self.next_sync = Instant::now() + wait;
    }

    async fn renew(&mut self, agent: &Agent) {
        match agent.renew().await {
            Ok(()) => {
                agent.succeeded(Op::Renew);
                self.renew_backoff.reset();
                self.renew_at = agent.agent_renewal_time();
            }
            Err(e) => {
                agent.status_mut().last_error = Some(e.to_string());
                agent.failed(
                    Op::Renew,
                    tracing::Level::WARN,
                    &e.to_string(),
                    &format!("agent SVID renewal failed (will retry): {e}"),
                );
                self.renew_at = Some(Instant::now() + self.renew_backoff.fail());
            }
        }
    }
}

impl Agent {
    /// Runs the timed work until the process stops. Call after [`Agent::establish`].
    pub async fn run(self: Arc<Self>) {
        let mut schedule = RunLoop::new(&self);
        loop {
            let wake = schedule.step(&self).await;
            tokio::time::sleep_until(wake).await;
        }
    }
}
