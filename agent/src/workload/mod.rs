//! The agent's Unix socket: the SPIFFE Workload API and, beside it, Tessera's own
//! local services.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tessera_proto::local::agent_health_server::{AgentHealth, AgentHealthServer};
use tessera_proto::local::{HealthCheckRequest, HealthCheckResponse};
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use crate::manager::Agent;

pub mod api;
pub mod authority;
pub mod peer;
pub mod trim;
pub mod unix;

/// The local health service.
#[derive(Debug, Clone)]
pub struct Health {
    agent: Arc<Agent>,
}

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
        (None, Some(t)) => details.push(format!("last sync: ok at {t}")),
        (None, None) => {
            ready = false;
            details.push("no sync yet".into());
        }
    }
    details.push(format!("cached X509-SVIDs: {}", snap.svids.len()));
    // Expired SVIDs are never served (the workloads get Unavailable): say so. The
    // socket is open to every local user, so counts and times, not identities.
    let now = tessera_core::x509::unix_seconds(std::time::SystemTime::now());
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

/// Binds the Workload API socket. Any local process may connect (mode 0777): callers
/// are identified by the kernel, not by file permissions.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot set mode of {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "socket {} is in use: is another agent running?",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("cannot set mode of {}: {e}", path.display()))?;
    Ok(l)
}

/// Serves the socket until `shutdown` resolves.
pub async fn serve(
    agent: Arc<Agent>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let trimmer = Arc::new(trim::Trimmer::default());
    tokio::spawn(trimmer.clone().run());
    let incoming = async_stream_of(listener, trimmer);
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::with_interceptor(
            api::WorkloadApi::new(agent.clone()),
            api::check_security_header,
        ))
        .add_service(AgentHealthServer::new(Health { agent }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| e.to_string())
}

fn async_stream_of(
    listener: UnixListener,
    trimmer: Arc<trim::Trimmer>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<peer::WorkloadConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let conn = peer::WorkloadConn::new(s).tracked_by(trimmer.track());
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("Workload API accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
