//! What every benchmark sets up: servers and agents as real processes (through the
//! end-to-end harness), the admin API to register tokens and entries in bulk, and the
//! Workload API as a workload (this process) calls it.

use std::time::{Duration, Instant};

use tessera_proto::admin as apb;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_proto::types as tpb;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_swtpm_tests::Server;
use tonic::transport::Channel;

/// Server settings every benchmark adds. All simulated agents come from one loopback
/// address, which the per-address limits would treat as one client holding
/// thousands of connections and attesting thousands of times a second: those limits
/// are lifted here (a benchmark measures capacity, not the defences).
pub(crate) const SERVER_LIMITS: &str =
    "\n[limits]\nmax_connections_per_ip = 65536\nattestation_rate = 0\n";

/// Agent settings for benchmarks that open many Workload API connections from this
/// process (one UID).
pub(crate) const AGENT_LIMITS: &str = "\n[limits]\nmax_connections_per_uid = 16384\n";

/// The admin API of a running server.
pub(crate) async fn admin(server: &Server) -> Result<AdminClient<Channel>, String> {
    let ch = tessera_proto::unix_channel(&server.admin)
        .await
        .map_err(|e| format!("admin socket: {e}"))?;
    Ok(AdminClient::new(ch).max_decoding_message_size(256 << 20))
}

/// `n` join tokens valid for a day.
pub(crate) async fn tokens(
    admin: &mut AdminClient<Channel>,
    n: usize,
) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = admin
            .create_join_token(apb::CreateJoinTokenRequest {
                ttl_seconds: 86_400,
                spiffe_id: String::new(),
                token: String::new(),
            })
            .await
            .map_err(|e| format!("token: {}", e.message()))?
            .into_inner();
        out.push(t.token);
    }
    Ok(out)
}

/// The agent ID a join token gives.
pub(crate) fn agent_id(token: &str) -> String {
    format!("spiffe://example.org/spire/agent/join_token/{token}")
}

/// An entry for `parent` with one selector.
pub(crate) fn entry(spiffe_id: String, parent: &str, selector: String) -> tpb::Entry {
    tpb::Entry {
        spiffe_id,
        parent_id: parent.to_owned(),
        selectors: vec![selector],
        ..Default::default()
    }
}

/// Creates entries in batches; returns their IDs in order.
pub(crate) async fn create_entries(
    admin: &mut AdminClient<Channel>,
    entries: Vec<tpb::Entry>,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(entries.len());
    let mut it = entries.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<tpb::Entry> = it.by_ref().take(5000).collect();
        let resp = admin
            .batch_create_entries(apb::BatchCreateEntriesRequest { entries: chunk })
            .await
            .map_err(|e| format!("batch create: {}", e.message()))?
            .into_inner();
        for r in resp.results {
            match (r.status, r.entry) {
                (Some(s), _) if s.code != 0 => return Err(format!("entry refused: {}", s.message)),
                (_, Some(e)) => ids.push(e.id),
                _ => return Err("batch create answered nothing for an entry".into()),
            }
        }
    }
    Ok(ids)
}

pub(crate) type Workload = SpiffeWorkloadApiClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn header(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(r)
}

/// A Workload API client on its own connection to `socket`.
pub(crate) async fn workload(socket: &std::path::Path) -> Result<Workload, String> {
    let ch = tessera_proto::unix_channel(socket)
        .await
        .map_err(|e| format!("workload socket {}: {e}", socket.display()))?;
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = header;
    Ok(SpiffeWorkloadApiClient::with_interceptor(ch, f))
}

/// One FetchX509SVID: open the stream, take the first message, close it.
pub(crate) async fn fetch_once(c: &mut Workload) -> Result<usize, tonic::Status> {
    let mut s = c
        .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
        .await?
        .into_inner();
    let m = s
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("stream ended"))?;
    Ok(m.svids.len())
}

/// Waits until this process gets an SVID from the agent at `socket`; returns how long.
pub(crate) async fn wait_for_svid(
    socket: &std::path::Path,
    limit: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = workload(socket).await
            && matches!(fetch_once(&mut c).await, Ok(n) if n > 0)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "no SVID from {} within {limit:?}",
                socket.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The agent's count of cached SVIDs (its local health service).
pub(crate) async fn cached_svids(socket: &std::path::Path) -> Option<u32> {
    let ch = tessera_proto::unix_channel(socket).await.ok()?;
    let mut c = tessera_proto::local::agent_health_client::AgentHealthClient::new(ch);
    c.check(tessera_proto::local::HealthCheckRequest {})
        .await
        .ok()
        .map(|r| r.into_inner().cached_svids)
}

/// The unix selector of this process (the workload in the benchmarks).
pub(crate) fn my_selector() -> String {
    format!("unix:uid:{}", tessera_swtpm_tests::my_uid())
}

/// Fetches `http://ADDRESS/metrics` every second until aborted, as Prometheus would,
/// so that a "metrics on" figure includes being scraped.
pub(crate) fn scrape_every_second(address: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&address).await {
                let req = format!(
                    "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_ok() {
                    let mut page = Vec::new();
                    let _ = s.read_to_end(&mut page).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
