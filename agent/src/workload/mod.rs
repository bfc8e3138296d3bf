//! The agent's Unix socket: the SPIFFE Workload API and, beside it, Tessera's own
//! local services. Any local user may connect, so connections are capped in total and
//! per UID, and idle ones are closed (see `[limits]` in the configuration).

use std::sync::Arc;

use tessera_process::limits::{ConnLimiter, Guarded, StreamTrackingLayer};
use tessera_proto::local::agent_health_server::{AgentHealth, AgentHealthServer};
use tessera_proto::local::tpm_workload_keys_server::TpmWorkloadKeysServer;
use tessera_proto::local::{HealthCheckRequest, HealthCheckResponse};
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use crate::manager::Agent;

pub mod api;
pub mod authority;
pub mod closing;
pub mod peer;
pub mod tpm_keys;
pub mod trim;

// The seams the Workload API plugs into: who the caller is, and what it may have.
pub mod attestor;
pub mod source;

pub use attestor::unix;

/// The local health service.
#[derive(Debug, Clone)]
pub struct Health {
    agent: Arc<Agent>,
}

/// A successful sync older than this many sync intervals makes the agent not ready.
const SYNC_STALE_INTERVALS: u64 = 3;

/// Whether the agent can serve workloads now, and why not.
pub fn health_of(agent: &Agent) -> (bool, Vec<String>) {
    let st = agent.status();
    let snap = agent.cache.snapshot();
    let mut details = Vec::new();
    let mut ready = true;
    match &st.spiffe_id {
        Some(id) => details.push(format!("agent SVID: {id}")),
        None => {
            ready = false;
            details.push("agent SVID: none (not attested)".into());
        }
    }
    if snap.bundle.is_none() {
        ready = false;
        details.push("bundle: none".into());
    }
    match (&st.last_error, st.last_sync_ok) {
        (Some(e), _) => {
            ready = false;
            details.push(format!("last sync failed: {e}"));
        }
        (None, Some(t)) => {
            details.push(format!("last sync: ok at {t}"));
            // A sync loop that stopped without an error (wedged) shows here.
            let stale = SYNC_STALE_INTERVALS * agent.config().sync_interval.as_secs().max(1);
            let age = agent.clock().unix().saturating_sub(t);
            if age > i64::try_from(stale).unwrap_or(i64::MAX) {
                ready = false;
                details.push(format!(
                    "last successful sync {age}s ago (more than {SYNC_STALE_INTERVALS} sync intervals)"
                ));
            }
        }
        (None, None) => {
            ready = false;
            details.push("no sync yet".into());
        }
    }
    details.push(format!("cached X509-SVIDs: {}", snap.svids.len()));
    // Expired SVIDs are never served (the workloads get Unavailable): say so. The
    // socket is open to every local user, so counts and times, not identities.
    let now = agent.clock().unix();
    let expired: Vec<i64> = (snap.svids.values())
        .filter(|s| !api::servable(s, now))
        .map(|s| s.not_after)
        .collect();
    if let Some(first) = expired.iter().min() {
        ready = false;
        details.push(format!(
            "expired X509-SVIDs, not served until renewed: {} (the first expired at {})",
            expired.len(),
            api::rfc3339(*first)
        ));
    }
    (ready, details)
}

#[tonic::async_trait]
impl AgentHealth for Health {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let (ready, details) = health_of(&self.agent);
        Ok(Response::new(HealthCheckResponse {
            ready,
            spiffe_id: self
                .agent
                .spiffe_id()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            cached_svids: self.agent.cache.snapshot().svids.len() as u32,
            details,
        }))
    }
}

/// The Workload API socket's modes: any local process may connect (0777), callers
/// are identified by the kernel, not by file permissions; a directory the agent
/// creates for it is open to all (0755).
pub const SOCKET_MODES: tessera_process::socket::Modes = tessera_process::socket::Modes {
    dir: 0o755,
    socket: 0o777,
};

/// How long requests still in flight get once shutdown has begun (open streams end
/// at once); what is left after that is dropped with the process.
pub const SHUTDOWN_GRACE: std::time::Duration = tessera_process::shutdown::GRACE;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the socket until `shutdown` resolves, then ends every open stream with
/// UNAVAILABLE, stops accepting, and returns once the connections have closed or
/// [`SHUTDOWN_GRACE`] has passed.
pub async fn serve(
    agent: Arc<Agent>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let trimmer = Arc::new(trim::Trimmer::default());
    tokio::spawn(trimmer.clone().run());
    // The standard gRPC health service, kept current with the agent's readiness.
    let (reporter, grpc_health) = tonic_health::server::health_reporter();
    let follower = tokio::spawn({
        let trimmer = trimmer.clone();
        crate::metrics::follow(
            agent.clone(),
            reporter,
            move || trimmer.open(),
            std::time::Duration::from_secs(2),
        )
    });
    let _stop_following = AbortOnDrop(follower);
    let limits = &agent.config().limits;
    let caps = limits.connection_caps(tessera_process::limits::nofile::current_open_file_limit());
    tracing::info!(
        "Workload API limits: {} connections, {} per uid, {} open requests per uid, idle timeout {}",
        caps.max_total,
        caps.max_per_peer,
        limits.max_requests_per_uid,
        limits
            .idle()
            .map_or("off".into(), tessera_core::duration::format_duration)
    );
    let limiter = ConnLimiter::with_stream_budget(
        "Workload API connections",
        caps,
        limits.max_requests_per_uid,
    );
    let incoming = async_stream_of(listener, trimmer, limiter, limits.idle());
    let (closer, closing) = closing::pair();
    // Outermost first: a request counts as an open stream (for the idle timeout) until
    // its body ends, and at shutdown the closing layer ends the bodies still waiting.
    let server = tonic::transport::Server::builder()
        // tonic's builder would otherwise lift hyper's bound: unlimited streams on
        // one connection, each held by the agent while its request is incomplete.
        .max_concurrent_streams(tessera_process::limits::MAX_CONCURRENT_STREAMS)
        .layer(StreamTrackingLayer::<
            <peer::WorkloadConn as tonic::transport::server::Connected>::ConnectInfo,
        >::new())
        .layer(
            agent
                .metrics()
                .rpc
                .layer_if(agent.config().telemetry.metrics_address.is_some()),
        )
        // Log lines written for a call name its method and caller.
        .layer(tessera_telemetry::span::RpcSpanLayer::new(
            peer::Caller::describe,
        ))
        .layer(closing)
        .add_service(SpiffeWorkloadApiServer::with_interceptor(
            api::WorkloadApi::for_agent(agent.clone()),
            api::check_security_header,
        ))
        .add_service(TpmWorkloadKeysServer::with_interceptor(
            tpm_keys::TpmKeysApi::new(api::WorkloadApi::for_agent(agent.clone())),
            api::check_security_header,
        ))
        .add_service(AgentHealthServer::new(Health { agent }))
        .add_service(grpc_health)
        .serve_with_incoming_shutdown(incoming, closer.closed());
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        () = shutdown => {}
    }
    closer.close();
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                "Workload API requests still in flight after {SHUTDOWN_GRACE:?}; closing their connections"
            );
            Ok(())
        }
    }
}

/// The peer the Workload API's connection caps count: the caller's UID as the
/// kernel reported it at connect time (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UidPeer(Option<u32>);

impl std::fmt::Display for UidPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(uid) => write!(f, "uid {uid}"),
            None => f.write_str("a caller of unknown uid"),
        }
    }
}

/// Accepts connections under the caps: past the total, or past the caller's UID's
/// share, a connection is closed at once (and counted for the refusal log).
fn async_stream_of(
    listener: UnixListener,
    trimmer: Arc<trim::Trimmer>,
    limiter: Arc<ConnLimiter<UidPeer>>,
    idle_timeout: Option<std::time::Duration>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Guarded<peer::WorkloadConn>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let uid = UidPeer(s.peer_cred().ok().map(|c| c.uid()));
                    let Ok(permit) = limiter.try_acquire(uid) else {
                        drop(s);
                        continue;
                    };
                    let conn = peer::WorkloadConn::new(s).tracked_by(trimmer.track());
                    let budget = permit.stream_budget();
                    if tx
                        .send(Ok(
                            Guarded::new(conn, permit, idle_timeout).with_stream_budget(budget)
                        ))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
