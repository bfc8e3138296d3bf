//! What the agent measures, for Prometheus (`[telemetry] metrics_address`, off by
//! default), and the standard gRPC health service on the Workload API socket.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tessera_rpc_calls_total`, `tessera_rpc_duration_seconds`, `tessera_rpc_in_flight` | service, method (code) | Workload API calls; `in_flight` of the streaming methods is the open streams ([`tessera_telemetry::rpc`]) |
//! | `tessera_agent_workload_connections` | | open Workload API connections |
//! | `tessera_agent_svids_cached` | | workload X509-SVIDs held |
//! | `tessera_agent_jwt_svids_minted_total` | | JWT-SVIDs fetched from the server |
//! | `tessera_agent_svid_expiry_seconds` | | when the agent's own SVID expires, Unix seconds |
//! | `tessera_agent_last_sync_timestamp_seconds` | | the last successful sync, Unix seconds |
//! | `tessera_agent_sync_lag_seconds` | | seconds since the last successful sync |
//! | `tessera_agent_ready` | | 1 when the agent can serve workloads (as `/ready` and `grpc.health.v1` say) |

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_telemetry::http::{Readiness, ReadyCheck};
use tessera_telemetry::rpc::RpcMetrics;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::manager::Agent;

/// Every metric the agent keeps (kept always; exposed only when configured).
#[derive(Debug)]
pub struct AgentMetrics {
    /// The filled registry.
    pub registry: Arc<Registry>,
    /// Workload API calls.
    pub rpc: RpcMetrics,
    connections: Gauge,
    svids: Gauge,
    jwts: Counter,
    expiry: Gauge,
    last_sync: Gauge,
    lag: Gauge,
    ready: Gauge,
}

impl AgentMetrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut r = tessera_telemetry::metrics::registry();
        let rpc = RpcMetrics::register(&mut r);
        let mut m = AgentMetrics {
            registry: Arc::new(Registry::default()),
            rpc,
            connections: Gauge::default(),
            svids: Gauge::default(),
            jwts: Counter::default(),
            expiry: Gauge::default(),
            last_sync: Gauge::default(),
            lag: Gauge::default(),
            ready: Gauge::default(),
        };
        let s = r.sub_registry_with_prefix("agent");
        s.register(
            "workload_connections",
            "Open Workload API connections",
            m.connections.clone(),
        );
        s.register("svids_cached", "Workload X509-SVIDs held", m.svids.clone());
        s.register(
            "jwt_svids_minted",
            "JWT-SVIDs fetched from the server",
            m.jwts.clone(),
        );
        s.register(
            "svid_expiry_seconds",
            "Expiry of the agent's own SVID, Unix seconds",
            m.expiry.clone(),
        );
        s.register(
            "last_sync_timestamp_seconds",
            "The last successful sync with the server, Unix seconds",
            m.last_sync.clone(),
        );
        s.register(
            "sync_lag_seconds",
            "Seconds since the last successful sync",
            m.lag.clone(),
        );
        s.register(
            "ready",
            "1 when the agent can serve workloads",
            m.ready.clone(),
        );
        m.registry = Arc::new(r);
        Arc::new(m)
    }

    /// Counts a JWT-SVID fetched from the server.
    pub fn jwt_minted(&self) {
        self.jwts.inc();
    }

    /// Brings the state gauges up to date; `connections` is the open Workload API
    /// connections.
    pub fn refresh(&self, agent: &Agent, connections: usize) -> bool {
        let now = agent.clock().unix();
        let st = agent.status();
        self.connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        self.svids
            .set(i64::try_from(agent.cache.snapshot().svids.len()).unwrap_or(i64::MAX));
        self.expiry.set(agent.agent_svid_not_after().unwrap_or(0));
        if let Some(t) = st.last_sync_ok {
            self.last_sync.set(t);
            self.lag.set(now.saturating_sub(t).max(0));
        }
        let ready = readiness(agent).is_ok();
        self.ready.set(i64::from(ready));
        ready
    }
}

/// Whether the agent can serve workloads now: its SVID, a bundle, a recent
/// successful sync, no expired workload SVID (as `tessera-agent healthcheck` says).
pub fn readiness(agent: &Agent) -> Readiness {
    let (ready, details) = crate::workload::health_of(agent);
    if ready { Ok(()) } else { Err(details) }
}

/// [`readiness`] for the HTTP listener.
pub fn ready_check(agent: Arc<Agent>) -> ReadyCheck {
    Arc::new(move || {
        let r = readiness(&agent);
        Box::pin(async move { r })
    })
}

/// Keeps the gauges and the `grpc.health.v1` statuses (the whole server, `""`, and
/// `SpiffeWorkloadAPI`) current, every `every`.
pub async fn follow(
    agent: Arc<Agent>,
    reporter: HealthReporter,
    connections: impl Fn() -> usize + Send + 'static,
    every: std::time::Duration,
) {
    let mut last = None;
    loop {
        let ready = agent.metrics().refresh(&agent, connections());
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("SpiffeWorkloadAPI", status)
                .await;
            last = Some(ready);
        }
        tokio::time::sleep(every).await;
    }
}
