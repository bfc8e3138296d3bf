//! The HTTP listener operators point Prometheus and load balancers at.
//!
//! - `GET /metrics`: the registry in Prometheus' text format (when metrics are on);
//! - `GET /live`: 200 while the process's runtime answers;
//! - `GET /ready`: 200 when the binary's readiness check passes, 503 with the
//!   reasons otherwise (JSON either way).
//!
//! The listener is small on purpose: HTTP/1.1 only, a header read timeout, a cap on
//! open connections, and nothing but these three paths.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::{CONTENT_TYPE, Shared, encode};

/// What a readiness check answers: `Ok` when ready, else every reason it is not.
pub type Readiness = Result<(), Vec<String>>;

/// The binary's readiness check.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;

/// What the listener serves.
#[derive(Clone, Default)]
pub struct Endpoints {
    /// The metrics registry; `/metrics` is 404 without it.
    pub metrics: Option<Shared>,
    /// The readiness check; `/live` and `/ready` are 404 without it.
    pub health: Option<ReadyCheck>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("metrics", &self.metrics.is_some())
            .field("health", &self.health.is_some())
            .finish()
    }
}

/// Where the listeners are, from a binary's `[telemetry]` configuration section.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `/metrics` on this address; off when absent.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// `/live` and `/ready` on this address; off when absent. It may be the metrics
    /// address: one listener then serves all three.
    #[serde(default)]
    pub health_address: Option<SocketAddr>,
}

/// Binds the listeners `config` asks for and serves them until `shutdown` turns
/// true. Returns the bound addresses (metrics, health), after binding, so that a
/// taken address fails the start with the setting named.
pub async fn start(
    config: &TelemetryConfig,
    metrics: Shared,
    health: ReadyCheck,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), std::io::Error> {
    let mut plan: Vec<(SocketAddr, Endpoints, &str)> = Vec::new();
    if let Some(a) = config.metrics_address {
        plan.push((
            a,
            Endpoints {
                metrics: Some(metrics.clone()),
                health: None,
            },
            "[telemetry] metrics_address",
        ));
    }
    if let Some(a) = config.health_address {
        match plan.iter_mut().find(|(m, _, _)| *m == a) {
            Some((_, e, _)) => e.health = Some(health.clone()),
            None => plan.push((
                a,
                Endpoints {
                    metrics: None,
                    health: Some(health.clone()),
                },
                "[telemetry] health_address",
            )),
        }
    }
    let mut bound = Vec::new();
    for (addr, endpoints, setting) in plan {
        let listener = bind(addr, setting).await?;
        bound.push((listener.local_addr()?, listener, endpoints));
    }
    let (mut metrics_at, mut health_at) = (None, None);
    for (at, listener, endpoints) in bound {
        if endpoints.metrics.is_some() {
            metrics_at = Some(at);
        }
        if endpoints.health.is_some() {
            health_at = Some(at);
        }
        tracing::info!(
            address = %at,
            metrics = endpoints.metrics.is_some(),
            health = endpoints.health.is_some(),
            "telemetry listener up"
        );
        let mut stop = shutdown.clone();
        tokio::spawn(serve(listener, endpoints, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    Ok((metrics_at, health_at))
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Of those, how many one source address may hold: a handful of clients from
/// one address (a scraper, a load balancer, a relying party) never need more, and
/// filling the listener then takes many addresses.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// A client has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing: a client that
/// stops reading its answers (a zero TCP window) would otherwise hold its slot for
/// as long as the kernel keeps the connection, since no header timer runs while an
/// answer waits to be written.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// hyper's read buffer per connection (its smallest allowed is 8 KiB): the
/// requests these listeners answer are a line and a few headers.
const MAX_READ_BUFFER: usize = 16 * 1024;

/// The connections each source address holds, for [`MAX_CONNECTIONS_PER_ADDRESS`].
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerAddress {
    /// Counts a connection from `ip`; `None` when `ip` holds its share already.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

/// One connection's place in [`PerAddress`], given back when dropped.
struct AddressSlot(Arc<PerAddress>, std::net::IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.1);
            }
        }
    }
}
/// A readiness check that takes longer is a failed one.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr`, saying which setting it was for when it cannot.
pub async fn bind(addr: SocketAddr, setting: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({setting}): {e}"),
        )
    })
}

/// Serves `endpoints` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send,
) {
    let endpoints = Arc::new(endpoints);
    let handler: Handler = Arc::new(move |req| {
        let endpoints = endpoints.clone();
        Box::pin(async move { answer(&endpoints, req).await })
    });
    serve_with(listener, None, handler, "health and metrics", shutdown).await;
}

/// A response to one request.
pub type Reply = Response<Full<Bytes>>;

/// What answers the requests of [`serve_with`].
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// Serves `handler` on `listener`, over TLS when `tls` is given, until `shutdown`
/// completes: HTTP/1.1, at most a fixed number of connections at once (more wait in
/// the kernel's backlog) and a few per source address (more are closed at once),
/// the TLS handshake and the request headers each within a few seconds, and every
/// connection closed after a fixed time whatever it is doing. `what` names the
/// listener in log lines.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::warn!(error = %e, listener = what, "cannot accept");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = per_address.admit(peer.ip()) else {
            tracing::debug!(listener = what, peer = %peer.ip(), "too many connections from one address");
            continue;
        };
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_READ_BUFFER)
                .keep_alive(true)
                .clone();
            let served = async {
                match tls {
                    None => http.serve_connection(TokioIo::new(stream), svc).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                http.serve_connection(TokioIo::new(stream), svc).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, listener = what, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(listener = what, "TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                }
            };
            match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
                Ok(Err(e)) => tracing::debug!(error = %e, listener = what, "connection ended"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!(listener = what, "connection closed at its deadline"),
            }
        });
    }
}

/// A response with `status`, a `Content-Type` and `body`.
pub fn reply(status: StatusCode, content_type: &str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: serde_json::Value) -> Reply {
    reply(status, "application/json", format!("{value}\n"))
}

async fn answer(endpoints: &Endpoints, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match (req.uri().path(), &endpoints.metrics, &endpoints.health) {
        ("/metrics", Some(registry), _) => reply(StatusCode::OK, CONTENT_TYPE, encode(registry)),
        ("/live", _, Some(_)) => json(StatusCode::OK, serde_json::json!({ "live": true })),
        ("/ready", _, Some(check)) => {
            let verdict = match tokio::time::timeout(READY_TIMEOUT, check()).await {
                Ok(v) => v,
                Err(_) => Err(vec![format!(
                    "the readiness check took longer than {} s",
                    READY_TIMEOUT.as_secs()
                )]),
            };
            match verdict {
                Ok(()) => json(StatusCode::OK, serde_json::json!({ "ready": true })),
                Err(reasons) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "ready": false, "reasons": reasons }),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn req(method: &str, path: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn serves_metrics_live_and_ready_and_nothing_else() {
        let mut registry = crate::metrics::registry();
        let c: prometheus_client::metrics::counter::Counter = Default::default();
        registry.register("probe", "A probe", c.clone());
        c.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let check: ReadyCheck = Arc::new(move || {
            let ok = r.load(Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err(vec!["datastore: down".to_string()])
                }
            })
        });
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Endpoints {
                metrics: Some(Arc::new(registry)),
                health: Some(check),
            },
            async {
                let _ = rx.await;
            },
        ));

        let m = get(addr, &req("GET", "/metrics")).await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("tessera_probe_total 1"), "{m}");
        let live = get(addr, &req("GET", "/live")).await;
        assert!(
            live.starts_with("HTTP/1.1 200") && live.contains("\"live\":true"),
            "{live}"
        );
        let not_ready = get(addr, &req("GET", "/ready")).await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("datastore: down"), "{not_ready}");
        ready.store(true, Ordering::SeqCst);
        let now_ready = get(addr, &req("GET", "/ready")).await;
        assert!(now_ready.starts_with("HTTP/1.1 200"), "{now_ready}");
        assert!(
            get(addr, &req("GET", "/other"))
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, &req("POST", "/ready"))
                .await
                .starts_with("HTTP/1.1 405")
        );
        let garbage = get(addr, "NOT HTTP\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );

        let _ = tx.send(());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_metrics_or_health_those_paths_are_not_found() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(
            listener,
            Endpoints::default(),
            std::future::pending(),
        ));
        for p in ["/metrics", "/live", "/ready"] {
            assert!(
                get(addr, &req("GET", p)).await.starts_with("HTTP/1.1 404"),
                "{p}"
            );
        }
        task.abort();
    }

    #[tokio::test]
    async fn one_address_holds_a_few_connections_and_the_rest_are_closed_at_once() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(
            listener,
            Endpoints::default(),
            std::future::pending(),
        ));
        // Idle connections up to the share, then one more.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_ADDRESS {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("the connection over the share is closed at once, not held")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The ones within the share are served, and one closing frees its place.
        let first = held.first_mut().unwrap();
        first
            .write_all(req("GET", "/metrics").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        first.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        drop(held.remove(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            get(addr, &req("GET", "/live"))
                .await
                .starts_with("HTTP/1.1 404")
        );
        task.abort();
    }

    #[test]
    fn address_shares_are_given_back() {
        let shares = Arc::new(PerAddress::default());
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let slots: Vec<_> = (0..MAX_CONNECTIONS_PER_ADDRESS)
            .map(|_| shares.admit(ip).unwrap())
            .collect();
        assert!(shares.admit(ip).is_none());
        assert!(shares.admit("192.0.2.8".parse().unwrap()).is_some());
        drop(slots);
        assert!(
            shares.0.lock().unwrap().get(&ip).is_none(),
            "no entry left behind"
        );
        assert!(shares.admit(ip).is_some());
    }

    #[tokio::test]
    async fn a_taken_address_is_named_in_the_error() {
        let first = bind("127.0.0.1:0".parse().unwrap(), "test").await.unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr, "[health] address").await.unwrap_err();
        assert!(err.to_string().contains("[health] address"), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
