//! The agent manager against a fake server (`crate::testing`), by a fake wall clock
//! and tokio's paused timer: rotation at half-life, backoff, re-attestation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::clock::{Clock, ManualClock, SharedClock};
use tessera_core::key::MemoryKeyManager;
use tokio::time::Instant;

use super::run::RunLoop;
use super::*;
use crate::testing::{self, FakeServer};

const START: u64 = 1_800_000_000;

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    server: Arc<FakeServer>,
    agent: Arc<Agent>,
}

fn world(reattest: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(START));
    let shared: SharedClock = clock.clone();
    let server = FakeServer::new(shared.clone());
    let agent = testing::agent(dir.path(), &server, &shared, reattest);
    World {
        _dir: dir,
        clock,
        server,
        agent,
    }
}

impl World {
    /// Moves the wall clock and tokio's (paused) clock forward together.
    async fn pass(&self, d: Duration) {
        self.clock.advance(d);
        tokio::time::advance(d).await;
    }

    fn now(&self) -> i64 {
        self.clock.unix()
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn workload_svids_rotate_at_half_life() {
    let w = world(true);
    w.server.add_entry("e1", "/web", &["unix:uid:1000"]);
    w.agent.establish().await.unwrap();
    w.agent.sync_once().await.unwrap();
    w.agent.sign_due().await;
    assert_eq!(w.server.state().signed, ["e1"]);
    let first = w.agent.cache.snapshot().svids["e1"].clone();
    let issued = w.now();
    assert_eq!(first.not_after, issued + 3600);
    // Between 40% and 60% of the real lifetime (NotBefore is backdated).
    assert!(
        (issued + 1440..=issued + 2160).contains(&first.rotate_at),
        "rotation at {} for an SVID issued at {issued}",
        first.rotate_at
    );
    let t = Instant::now();
    assert_eq!(
        w.agent.next_signing().await,
        Some(t + Duration::from_secs((first.rotate_at - issued) as u64))
    );
    // A second before: nothing to do.
    w.clock
        .advance(Duration::from_secs((first.rotate_at - issued - 1) as u64));
    w.agent.sign_due().await;
    assert_eq!(w.server.state().signed.len(), 1);
    // At the rotation time: a new SVID, published.
    w.clock.advance(Duration::from_secs(1));
    w.agent.sign_due().await;
    assert_eq!(w.server.state().signed, ["e1", "e1"]);
    let second = w.agent.cache.snapshot().svids["e1"].clone();
    assert_eq!(second.not_after, first.rotate_at + 3600);
    assert_ne!(second.chain, first.chain);
    assert!(second.rotate_at > first.rotate_at);
}

#[tokio::test(start_paused = true)]
async fn the_agent_svid_is_renewed_at_half_life() {
    let w = world(true);
    w.agent.establish().await.unwrap();
    let first = w.agent.agent_svid_times().unwrap();
    let mut run = RunLoop::new(&w.agent);
    let renew_at = run.renew_at.unwrap();
    let after = renew_at - Instant::now();
    assert!(
        (1440.0..=2160.0).contains(&secs(after)),
        "renewal {after:?} into a one-hour SVID"
    );
    run.step(&w.agent).await;
    assert_eq!(w.server.state().renewals, 0);
    w.pass(after - Duration::from_secs(1)).await;
    run.step(&w.agent).await;
    assert_eq!(w.server.state().renewals, 0, "renewed early");
    w.pass(Duration::from_secs(1)).await;
    run.step(&w.agent).await;
    assert_eq!(w.server.state().renewals, 1);
    let second = w.agent.agent_svid_times().unwrap();
    assert_eq!(second.1, w.now() + 3600);
    assert!(second.1 > first.1);
    // The next renewal is half-way through the new SVID.
    let next = run.renew_at.unwrap() - Instant::now();
    assert!((1440.0..=2160.0).contains(&secs(next)), "{next:?}");
}

/// Steps the run loop while the server is down; the waits it chose.
async fn outage_waits(w: &World, run: &mut RunLoop, steps: usize) -> Vec<Duration> {
    let mut waits = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let wake = run.step(&w.agent).await;
        waits.push(wake - t);
        tokio::time::sleep_until(wake).await;
    }
    waits
}

fn assert_backoff(waits: &[Duration], ceilings: &[u64]) {
    assert_eq!(waits.len(), ceilings.len());
    for (wait, c) in waits.iter().zip(ceilings) {
        let c = *c as f64;
        assert!(
            (c / 2.0..=c).contains(&secs(*wait)),
            "waits {waits:?} against ceilings {ceilings:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn syncs_back_off_while_the_server_is_down_and_recover_at_the_interval() {
    let w = world(true);
    w.server.add_entry("e1", "/web", &["unix:uid:1000"]);
    w.agent.establish().await.unwrap();
    let mut run = RunLoop::new(&w.agent);
    w.server.state().down = true;
    let waits = outage_waits(&w, &mut run, 7).await;
    // From the sync interval (1 s), doubling, at most twelve intervals.
    assert_backoff(&waits, &[1, 2, 4, 8, 12, 12, 12]);
    // Only the sync knocked: no signing, no renewal while away.
    let seen = {
        let st = w.server.state();
        (st.calls, st.signed.len(), st.renewals)
    };
    assert_eq!(seen, (1 + 7, 0, 0));
    let error = w.agent.status().last_error.unwrap();
    assert!(error.contains("unreachable"), "{error}");

    w.server.state().down = false;
    let t = Instant::now();
    let wake = run.step(&w.agent).await;
    assert!(run.reachable);
    assert_eq!(w.server.state().signed, ["e1"], "signing resumed");
    assert!(w.agent.status().last_error.is_none());
    // Back to the sync interval, ±10% (the SVID is not due for half an hour).
    assert!((0.9..=1.1).contains(&secs(wake - t)), "{:?}", wake - t);
    tokio::time::sleep_until(wake).await;
    // The next outage starts from the bottom again.
    w.server.state().down = true;
    let waits = outage_waits(&w, &mut run, 2).await;
    assert_backoff(&waits, &[1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_entry_backs_off_alone() {
    let w = world(true);
    w.server.add_entry("good", "/good", &["unix:uid:1000"]);
    w.server.add_entry("bad", "/bad", &["unix:uid:1001"]);
    w.server.state().refuse.insert("bad".into());
    w.agent.establish().await.unwrap();
    w.agent.sync_once().await.unwrap();
    w.agent.sign_due().await;
    assert_eq!(w.server.state().signed, ["good"]);
    assert_eq!(w.server.state().asked, ["bad", "good"]);
    // Asked again only after its backoff (up to one interval), alone.
    w.agent.sign_due().await;
    assert_eq!(w.server.state().asked.len(), 2);
    let retry = w.agent.next_signing().await.unwrap() - Instant::now();
    assert!((0.5..=1.0).contains(&secs(retry)), "{retry:?}");
    tokio::time::advance(retry).await;
    w.agent.sign_due().await;
    assert_eq!(w.server.state().asked, ["bad", "good", "bad"]);
    // Refused again: the wait doubles.
    let retry = w.agent.next_signing().await.unwrap() - Instant::now();
    assert!((1.0..=2.0).contains(&secs(retry)), "{retry:?}");
    // Once the server signs it, it is served like the others.
    w.server.state().refuse.clear();
    tokio::time::advance(retry).await;
    w.agent.sign_due().await;
    let snap = w.agent.cache.snapshot();
    assert!(snap.svids.contains_key("bad") && snap.svids.contains_key("good"));
}

/// An entry that asks for a key in the TPM, on an agent without a TPM: nothing is
/// asked of the server for it and nothing is issued; the other entries are served.
#[tokio::test(start_paused = true)]
async fn a_tpm_key_entry_without_a_tpm_fails_alone() {
    let w = world(true);
    w.server.add_entry("good", "/good", &["unix:uid:1000"]);
    w.server.add_entry_keyed(
        "in-tpm",
        "/in-tpm",
        &["unix:uid:1001"],
        tessera_core::WorkloadKey::Tpm,
    );
    w.agent.establish().await.unwrap();
    w.agent.sync_once().await.unwrap();
    w.agent.sign_due().await;
    assert_eq!(w.server.state().asked, ["good"]);
    assert_eq!(w.server.state().signed, ["good"]);
    let snap = w.agent.cache.snapshot();
    assert!(snap.svids.contains_key("good") && !snap.svids.contains_key("in-tpm"));
    // It is retried with backoff, like any entry that could not be signed.
    assert!(w.agent.next_signing().await.is_some());
}

#[tokio::test(start_paused = true)]
async fn an_evicted_agent_attests_again() {
    let w = world(true);
    w.agent.establish().await.unwrap();
    assert_eq!(w.agent.spiffe_id().unwrap().path(), "/spire/agent/test/1");
    let mut run = RunLoop::new(&w.agent);
    let wake = run.step(&w.agent).await;
    tokio::time::sleep_until(wake).await;
    w.server.state().evicted = true;
    let wake = run.step(&w.agent).await;
    // Refused, so attested again at once, and synced right after.
    assert_eq!(w.server.state().attests, 2);
    assert_eq!(w.agent.spiffe_id().unwrap().path(), "/spire/agent/test/2");
    assert_eq!(wake, Instant::now());
    let syncs = w.server.state().syncs;
    run.step(&w.agent).await;
    assert_eq!(w.server.state().syncs, syncs + 1);
    assert!(run.reachable && w.agent.status().last_error.is_none());
    // The new identity is the one a restart resumes.
    let saved = w.agent.state_dir.load_identity().unwrap().unwrap();
    assert_eq!(saved.spiffe_id.path(), "/spire/agent/test/2");
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_cannot_reattest_reports_the_refusal_and_keeps_its_identity() {
    let w = world(false);
    w.agent.establish().await.unwrap();
    let mut run = RunLoop::new(&w.agent);
    run.step(&w.agent).await;
    w.server.state().evicted = true;
    tokio::time::sleep_until(run.next_sync).await;
    let t = Instant::now();
    let wake = run.step(&w.agent).await;
    assert_eq!(w.server.state().attests, 1);
    assert_eq!(w.agent.spiffe_id().unwrap().path(), "/spire/agent/test/1");
    let error = w.agent.status().last_error.unwrap();
    assert!(error.contains("the agent is not attested"), "{error}");
    assert!(secs(wake - t) >= 0.5, "retried at once");
}

#[tokio::test(start_paused = true)]
async fn an_agent_svid_that_expired_in_an_outage_leads_to_attesting_again() {
    let w = world(true);
    w.agent.establish().await.unwrap();
    let mut run = RunLoop::new(&w.agent);
    run.step(&w.agent).await;
    // The server is away for longer than the agent SVID lives.
    w.server.state().down = true;
    w.clock.advance(Duration::from_secs(3601));
    tokio::time::sleep_until(run.next_sync).await;
    run.step(&w.agent).await;
    let error = w.agent.status().last_error.unwrap();
    assert!(error.contains("the agent SVID expired at"), "{error}");
    // Attesting needs the server too: it failed, and is tried again with the sync.
    assert_eq!(w.server.state().attests, 1);
    w.server.state().down = false;
    tokio::time::sleep_until(run.next_sync).await;
    let wake = run.step(&w.agent).await;
    assert_eq!(w.server.state().attests, 2);
    assert_eq!(wake, Instant::now());
    run.step(&w.agent).await;
    assert!(run.reachable && w.agent.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_expired_join_token_agent_is_told_to_get_a_new_token() {
    let w = world(false);
    w.agent.establish().await.unwrap();
    let mut run = RunLoop::new(&w.agent);
    run.step(&w.agent).await;
    w.clock.advance(Duration::from_secs(3601));
    tokio::time::sleep_until(run.next_sync).await;
    run.step(&w.agent).await;
    assert_eq!(w.server.state().attests, 1);
    let error = w.agent.status().last_error.unwrap();
    assert!(error.contains("give it a new join token"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn start_up_waits_for_the_server_with_backoff() {
    let w = world(true);
    w.server.state().down = true;
    let agent = w.agent.clone();
    let start = tokio::spawn(async move { agent.establish().await });
    // A minute of outage: tries at 0, then after waits of up to 1, 2, 4, 8, 12,
    // 12, 12 s (at least half of each).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = w.server.state().calls;
    assert!((8..=13).contains(&calls), "{calls} attempts in a minute");
    assert!(w.agent.status().last_error.is_some());
    w.server.state().down = false;
    start.await.unwrap().unwrap();
    assert_eq!(w.server.state().attests, 1);
    assert!(w.agent.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn jwt_requests_fail_fast_while_the_server_backs_off() {
    let w = world(true);
    w.server.add_entry("e1", "/web", &["unix:uid:1000"]);
    w.agent.establish().await.unwrap();
    w.agent.sync_once().await.unwrap();
    let entry = w.agent.cache.snapshot().entries[0].clone();
    let aud = vec!["db".to_string()];
    w.server.state().down = true;
    let calls = w.server.state().calls;
    assert!(w.agent.jwt_svid(&entry, &aud).await.is_err());
    let e = w.agent.jwt_svid(&entry, &aud).await.unwrap_err();
    assert!(e.to_string().contains("asks the server again in"), "{e}");
    assert_eq!(
        w.server.state().calls,
        calls + 1,
        "the second did not knock"
    );
    w.server.state().down = false;
    tokio::time::advance(Duration::from_secs(1)).await;
    let jwt = w.agent.jwt_svid(&entry, &aud).await.unwrap();
    assert_eq!(jwt.token, "jwt-e1-1");
    // Cached for the first half of its life, by the agent's clock.
    w.clock.advance(Duration::from_secs(149));
    assert_eq!(
        w.agent.jwt_svid(&entry, &aud).await.unwrap().token,
        "jwt-e1-1"
    );
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(
        w.agent.jwt_svid(&entry, &aud).await.unwrap().token,
        "jwt-e1-2"
    );
}

#[tokio::test]
async fn a_restarted_agent_resumes_until_its_saved_svid_expires() {
    let w = world(true);
    let km: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::new());
    let shared: SharedClock = w.clock.clone();
    let start = || {
        let agent = Agent::with_parts(
            testing::config(w._dir.path(), "1s"),
            Parts {
                km: km.clone(),
                attestor: Some(Arc::new(testing::TestAttestor { reattest: true })),
                clock: shared.clone(),
                server: Some(w.server.clone()),
            },
        )
        .unwrap();
        async move {
            agent.establish().await.unwrap();
            agent.spiffe_id().unwrap()
        }
    };
    let first = start().await;
    assert_eq!(w.server.state().attests, 1);
    // Restarted: the saved SVID and key are used, the server is not asked.
    w.server.state().down = true;
    assert_eq!(start().await, first);
    assert_eq!(w.server.state().calls, 1);
    // Restarted after the saved SVID expired: attests again.
    w.server.state().down = false;
    w.clock.advance(Duration::from_secs(3600));
    let again = start().await;
    assert_eq!(w.server.state().attests, 2);
    assert_ne!(again, first);
}

/// Evidence that cannot be had while `down` is set (a metadata service away).
#[derive(Debug)]
struct FlakyEvidence {
    down: Arc<std::sync::atomic::AtomicBool>,
    asked: Arc<std::sync::atomic::AtomicU32>,
}

struct FlakySession(
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicU32>,
);

#[async_trait::async_trait]
impl crate::attestor::Session for FlakySession {
    async fn payload(&mut self) -> Result<Vec<u8>, crate::attestor::AttestError> {
        use std::sync::atomic::Ordering;
        self.1.fetch_add(1, Ordering::SeqCst);
        if self.0.load(Ordering::SeqCst) {
            return Err(crate::attestor::AttestError::Unavailable(
                "aws_iid: the instance metadata service cannot be reached".into(),
            ));
        }
        Ok(b"test".to_vec())
    }
    async fn answer(&mut self, _: Vec<u8>) -> Result<Vec<u8>, crate::attestor::AttestError> {
        Err(crate::attestor::AttestError::Failed("no challenge".into()))
    }
}

impl NodeAttestor for FlakyEvidence {
    fn name(&self) -> &'static str {
        "test"
    }
    fn can_reattest(&self) -> bool {
        false
    }
    fn session(&self) -> Box<dyn crate::attestor::Session> {
        Box::new(FlakySession(self.down.clone(), self.asked.clone()))
    }
}

#[tokio::test(start_paused = true)]
async fn start_up_waits_with_backoff_while_the_evidence_cannot_be_had() {
    use std::sync::atomic::Ordering;
    let w = world(false);
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let agent = Agent::with_parts(
        testing::config(w._dir.path(), "1s"),
        Parts {
            km: Arc::new(MemoryKeyManager::new()),
            attestor: Some(Arc::new(FlakyEvidence {
                down: down.clone(),
                asked: asked.clone(),
            })),
            clock: w.clock.clone(),
            server: Some(w.server.clone()),
        },
    )
    .unwrap();
    let a = agent.clone();
    let start = tokio::spawn(async move { a.establish().await });
    // Tries at 0, then after waits of up to 1, 2, 4, 8, 12, ... s: a handful in a
    // minute, not a busy loop, and the server is never asked meanwhile.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let n = asked.load(Ordering::SeqCst);
    assert!((8..=13).contains(&n), "{n} attempts in a minute");
    assert_eq!(w.server.state().attests, 0);
    let last = agent.status().last_error.unwrap();
    assert!(
        last.contains("the node attestor cannot get its evidence yet: aws_iid: the instance metadata service cannot be reached"),
        "{last}"
    );
    down.store(false, Ordering::SeqCst);
    start.await.unwrap().unwrap();
    assert_eq!(w.server.state().attests, 1);
}

#[test]
fn only_outages_are_retried_as_transient() {
    use crate::protocol::from_status;
    assert!(AgentError::Unavailable("x".into()).is_transient());
    assert!(AgentError::Key(KeyError::Unavailable("tpm".into())).is_transient());
    assert!(!AgentError::Rejected("used token".into()).is_transient());
    assert!(!AgentError::Attestation("bad".into()).is_transient());
    assert!(!AgentError::Config("x".into()).is_transient());
    assert!(AgentError::EvidenceUnavailable("imds".into()).is_transient());
    let t = |s| AgentError::from(from_status(s)).is_transient();
    assert!(t(tonic::Status::unavailable("down")));
    assert!(t(tonic::Status::deadline_exceeded("slow")));
    assert!(!t(tonic::Status::permission_denied("no")));
}
