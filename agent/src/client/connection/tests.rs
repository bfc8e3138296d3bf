//! The agent's connection against real servers on loopback: falling over, staying,
//! and returning to the preferred server.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_proto::agent::SyncRequest;

use super::*;
use crate::protocol::{GrpcServer, ServerApi, ServerError};
use crate::testing::{TestPki, id, net};

fn grpc(pki: &TestPki, servers: Vec<String>, failover: Failover) -> Arc<GrpcServer> {
    Arc::new(
        GrpcServer::new(
            servers,
            id("/spire/server"),
            SharedBundle::new(pki.bundle().clone()),
            SharedIdentity::new(),
        )
        .with_failover(failover),
    )
}

fn failover(return_after: Duration) -> Failover {
    Failover {
        step_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_secs(10),
        return_after,
        return_after_max: return_after,
    }
}

/// A sync answered after `ms` milliseconds; the answer is the server's revision,
/// which tells the servers apart.
async fn sync_taking(server: &GrpcServer, ms: u64) -> Result<u64, ServerError> {
    server
        .sync_entries(SyncRequest {
            known_revision: ms,
            ..Default::default()
        })
        .await
        .map(|r| r.revision)
}

async fn sync(server: &GrpcServer) -> Result<u64, ServerError> {
    sync_taking(server, 0).await
}

/// A sync right after a server died: the first try may still find its broken
/// connection, the retry must reach the next server.
async fn sync_within_one_retry(server: &GrpcServer) -> u64 {
    match sync(server).await {
        Ok(r) => r,
        Err(e) => {
            assert!(e.is_transient(), "{e}");
            sync(server).await.unwrap()
        }
    }
}

fn link(server: &GrpcServer) -> Link {
    server.connection().link().unwrap()
}

const ANY: &str = "127.0.0.1:0";

#[tokio::test]
async fn the_agent_calls_the_next_server_when_the_first_is_down() {
    let pki = TestPki::new(SystemTime::now());
    let first = net::node_server(&pki, &id("/spire/server"), 1).await;
    let second = net::node_server(&pki, &id("/spire/server"), 2).await;
    let f = Failover::default();
    let s = grpc(&pki, vec![first.clone(), second.clone()], f);
    assert_eq!(sync(&s).await, Ok(1));
    assert!(!link(&s).is_fallback());
    let s = grpc(&pki, vec![net::refused(), second.clone()], f);
    assert_eq!(sync(&s).await, Ok(2));
    assert_eq!((link(&s).server, link(&s).passed_over), (second.clone(), 1));
    let s = grpc(&pki, vec![net::closes().await, net::refused(), second], f);
    assert_eq!(sync(&s).await, Ok(2));
    let e = sync(&grpc(&pki, vec![net::refused()], f))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn a_blackholed_first_server_costs_one_step_timeout() {
    let pki = TestPki::new(SystemTime::now());
    let hole = net::Blackhole::new().await;
    let second = net::node_server(&pki, &id("/spire/server"), 2).await;
    // The whole dial is not bounded by one connect timeout: the second address is
    // reached after the first has used its own.
    let s = grpc(
        &pki,
        vec![hole.addr.to_string(), second],
        failover(Duration::from_secs(3600)),
    );
    let start = Instant::now();
    assert_eq!(sync(&s).await, Ok(2));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let first = link(&s).first_failure.unwrap();
    assert!(first.contains("connect timed out"), "{first}");
}

#[tokio::test]
async fn a_fallback_is_left_for_the_first_server_once_it_is_back() {
    let pki = TestPki::new(SystemTime::now());
    let mut s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 1, ANY);
    let s2 = net::node_server(&pki, &id("/spire/server"), 2).await;
    let return_after = Duration::from_millis(300);
    let s = grpc(
        &pki,
        vec![s1.addr.clone(), s2.clone()],
        failover(return_after),
    );
    assert_eq!(sync(&s).await, Ok(1));

    // The first server dies: the next call (or its one retry) goes to the second.
    s1.kill();
    assert_eq!(sync_within_one_retry(&s).await, 2);
    assert!(link(&s).is_fallback());
    assert_eq!(link(&s).server, s2);
    // While the first stays away, dialling again after the age limit lands on the
    // second again.
    tokio::time::sleep(return_after + Duration::from_millis(100)).await;
    assert_eq!(sync(&s).await, Ok(2));

    // It comes back on its address: after the age limit calls go to it again.
    let s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 3, &s1.addr);
    tokio::time::sleep(return_after + Duration::from_millis(100)).await;
    assert_eq!(sync(&s).await, Ok(3));
    assert!(!link(&s).is_fallback());
    assert_eq!(link(&s).server, s1.addr);
    // And stays there: the preferred server has no age limit.
    tokio::time::sleep(return_after + Duration::from_millis(100)).await;
    assert_eq!(sync(&s).await, Ok(3));
}

#[tokio::test]
async fn a_fallback_is_kept_until_its_age_limit() {
    let pki = TestPki::new(SystemTime::now());
    let mut s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 1, ANY);
    let s2 = net::node_server(&pki, &id("/spire/server"), 2).await;
    let s = grpc(
        &pki,
        vec![s1.addr.clone(), s2],
        failover(Duration::from_secs(3600)),
    );
    assert_eq!(sync(&s).await, Ok(1));
    s1.kill();
    assert_eq!(sync_within_one_retry(&s).await, 2);
    let _s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 3, &s1.addr);
    // The first is back, but the connection to the second is young: calls do not
    // dial again, one by one.
    for _ in 0..5 {
        assert_eq!(sync(&s).await, Ok(2));
    }
    // A new connection (as after the agent SVID is renewed) dials from the first.
    s.reconnect();
    assert_eq!(sync(&s).await, Ok(3));
}

#[tokio::test]
async fn a_call_in_flight_is_not_failed_by_the_return() {
    let pki = TestPki::new(SystemTime::now());
    let mut s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 1, ANY);
    let s2 = net::node_server(&pki, &id("/spire/server"), 2).await;
    let return_after = Duration::from_millis(600);
    let s = grpc(&pki, vec![s1.addr.clone(), s2], failover(return_after));
    assert_eq!(sync(&s).await, Ok(1));
    s1.kill();
    assert_eq!(sync_within_one_retry(&s).await, 2);
    let fell_over = Instant::now();

    // A call that takes two seconds, on the connection to the second server.
    let slow = tokio::spawn({
        let s = s.clone();
        async move { sync_taking(&s, 2000).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 3, &s1.addr);
    tokio::time::sleep(
        (return_after + Duration::from_millis(100)).saturating_sub(fell_over.elapsed()),
    )
    .await;
    // The next call returns to the first server while the slow one is still running...
    assert_eq!(sync(&s).await, Ok(3));
    assert!(!slow.is_finished());
    // ...which ends on the second, as it started.
    assert_eq!(slow.await.unwrap(), Ok(2));
}

#[tokio::test]
async fn a_call_that_times_out_on_a_hung_server_is_retried_on_the_next() {
    let pki = TestPki::new(SystemTime::now());
    let mut s1 = net::NodeProcess::start(&pki, &id("/spire/server"), 1, ANY);
    let s2 = net::node_server(&pki, &id("/spire/server"), 2).await;
    let f = Failover {
        call_timeout: Duration::from_millis(500),
        ..failover(Duration::from_secs(3600))
    };
    let s = grpc(&pki, vec![s1.addr.clone(), s2], f);
    assert_eq!(sync(&s).await, Ok(1));
    // The first server hangs with the connection open: the call times out (the
    // client's own failure, not a refusal)...
    s1.freeze();
    let e = sync(&s).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    // ...and the retry does not wait on that connection: it dials again, the hung
    // server's TLS handshake times out, and the second answers.
    assert_eq!(sync(&s).await, Ok(2));
    let first = link(&s).first_failure.unwrap();
    assert!(first.contains("TLS handshake timed out"), "{first}");
}

#[tokio::test]
async fn only_a_failure_without_an_answer_drops_the_connection() {
    let pki = TestPki::new(SystemTime::now());
    let good = net::node_server(&pki, &id("/spire/server"), 1).await;
    let s = grpc(&pki, vec![good], Failover::default());
    let generation = |s: &GrpcServer| s.connection().lease().generation;
    assert_eq!(sync(&s).await, Ok(1));
    let g = generation(&s);
    // The test server answers renewals with Unimplemented: an answer, the connection
    // stays.
    let e = s.renew_agent(Vec::new()).await.unwrap_err();
    assert!(e.to_string().contains("renew"), "{e}");
    assert_eq!(generation(&s), g);
    // No server reachable: the client's own failure; the next call dials again.
    let down = grpc(&pki, vec![net::refused()], Failover::default());
    let g = generation(&down);
    assert!(sync(&down).await.is_err());
    assert_eq!(generation(&down), g + 1);
    // A failure on a channel already replaced does not replace the new one.
    let lease = s.connection().lease();
    s.reconnect();
    let g = generation(&s);
    let local = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
    s.connection().call_failed(&lease, &local);
    assert_eq!(generation(&s), g);
}

fn at(server: &str, addr: &str, passed_over: usize, first_failure: Option<&str>) -> Link {
    Link {
        server: server.into(),
        addr: addr.parse().unwrap(),
        passed_over,
        first_failure: first_failure.map(str::to_owned),
    }
}

#[test]
fn a_switch_is_noted_once() {
    let a = at("a.example:8081", "10.0.0.1:8081", 0, None);
    let b = at(
        "b.example:8081",
        "10.0.0.2:8081",
        1,
        Some("a.example:8081 (10.0.0.1:8081): Connection refused"),
    );
    let keep = Some(Duration::from_secs(20));
    // Starting on the preferred server is not a switch; starting on a fallback is.
    assert_eq!(switch_note(None, &a, None, None), None);
    let line = switch_note(None, &b, keep, None).unwrap();
    assert_eq!(
        line,
        "switched server: now talking to b.example:8081 (10.0.0.2:8081), because 1 earlier \
         address failed (the first: a.example:8081 (10.0.0.1:8081): Connection refused); \
         the preferred server is tried again in 20s"
    );
    // Leaving the preferred server, and coming back to it.
    let line = switch_note(Some(&a), &b, keep, None).unwrap();
    assert!(
        line.contains(
            "now talking to b.example:8081 (10.0.0.2:8081) (was a.example:8081 (10.0.0.1:8081))"
        ),
        "{line}"
    );
    assert_eq!(
        switch_note(
            Some(&b),
            &a,
            None,
            Some("the connection to the fallback reached its age limit")
        )
        .unwrap(),
        "switched server: now talking to a.example:8081 (10.0.0.1:8081), the first in order, \
         again (was b.example:8081 (10.0.0.2:8081): the connection to the fallback reached \
         its age limit)"
    );
    // The same address again (a reconnection, or the preferred server still away when
    // the age limit came): nothing to say.
    assert_eq!(switch_note(Some(&a), &a, None, Some("a call failed")), None);
    assert_eq!(switch_note(Some(&b), &b, keep, None), None);
}

#[test]
fn the_agent_returns_after_a_few_sync_intervals_and_less_often_while_the_first_is_away() {
    let f = Failover::for_interval(Duration::from_secs(5));
    assert_eq!(f.return_after, Duration::from_secs(30));
    assert_eq!(f.return_after_max, Duration::from_secs(300));
    assert_eq!(f.step_timeout, Duration::from_secs(5));
    assert_eq!(f.call_timeout, Duration::from_secs(30));
    assert_eq!(
        Failover::for_interval(Duration::from_millis(100)).return_after,
        Duration::from_secs(10)
    );
    assert_eq!(
        Failover::for_interval(Duration::from_secs(3600)).return_after,
        Duration::from_secs(300)
    );
    // Each connection to a fallback is kept longer, up to the ceiling; the preferred
    // server resets it.
    let memory = Mutex::new(Memory {
        last: None,
        replaced: None,
        keep_fallback: Backoff::new(f.return_after, f.return_after_max),
    });
    let b = at("b:1", "10.0.0.2:1", 1, Some("a:1: refused"));
    let keeps: Vec<Duration> = (0..6)
        .map(|_| connected(&memory, b.clone()).unwrap())
        .collect();
    for (k, ceiling) in keeps.iter().zip([30, 60, 120, 240, 300, 300]) {
        let ceiling = Duration::from_secs(ceiling);
        assert!(*k <= ceiling && *k >= ceiling / 2, "{keeps:?}");
    }
    assert_eq!(connected(&memory, at("a:1", "10.0.0.1:1", 0, None)), None);
    assert!(connected(&memory, b).unwrap() <= Duration::from_secs(30));
}
