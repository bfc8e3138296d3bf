//! gRPC calls counted by method and status, and timed, as a tower layer in front of
//! a tonic server.
//!
//! - `tessera_rpc_calls_total{service, method, code}`: calls by how they ended. The
//!   status comes from the response headers (a Trailers-Only error) or the trailers;
//!   a call whose response is dropped before its trailers (a client that cancelled
//!   a stream, a connection that went away) counts as `Cancelled`.
//! - `tessera_rpc_duration_seconds{service, method}`: the time to the response
//!   headers, that is the handler's time for a unary call and the time to open a
//!   stream for a streaming one.
//! - `tessera_rpc_in_flight{service, method}`: calls not yet ended (for streaming
//!   methods, the open streams).
//!
//! Labels come only from methods the service implements: a path it answers with
//! `Unimplemented` is counted as service and method `unknown`, so a client cannot
//! grow the label sets with made-up paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::latency_histogram;

/// Which method a call was.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The gRPC service, with its package (`SpiffeWorkloadAPI`, `tessera.agent.v1.Node`).
    pub service: String,
    /// The method.
    pub method: String,
}

/// Which method a call was and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The gRPC service.
    pub service: String,
    /// The method.
    pub method: String,
    /// The gRPC status code's name (`OK`, `PermissionDenied`, ...).
    pub code: String,
}

/// Builds latency histograms for a family.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyHistograms;

impl MetricConstructor<Histogram> for LatencyHistograms {
    fn new_metric(&self) -> Histogram {
        latency_histogram()
    }
}

/// The call metrics of one gRPC listener (or several: the families are shared).
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<MethodLabels, Histogram, LatencyHistograms>,
    in_flight: Family<MethodLabels, Gauge>,
}

impl RpcMetrics {
    /// New families, registered in `registry` (under its prefix, `rpc_...`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = RpcMetrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(LatencyHistograms),
            in_flight: Family::default(),
        };
        registry.register(
            "rpc_calls",
            "gRPC calls by service, method and status code",
            m.calls.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time from a gRPC call's arrival to its response headers",
            m.duration.clone(),
        );
        registry.register(
            "rpc_in_flight",
            "gRPC calls (streams included) not yet ended",
            m.in_flight.clone(),
        );
        m
    }

    /// The layer that records into these families.
    pub fn layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer(Some(self.clone()))
    }

    /// The layer when `on`, else one that passes calls through untouched (metrics
    /// that nobody can read are not kept).
    pub fn layer_if(&self, on: bool) -> RpcMetricsLayer {
        RpcMetricsLayer(on.then(|| self.clone()))
    }

    /// Calls counted for `service`/`method` with `code` so far.
    pub fn calls(&self, service: &str, method: &str, code: &str) -> u64 {
        self.calls
            .get(&CallLabels {
                service: service.into(),
                method: method.into(),
                code: code.into(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

/// The name of a gRPC status code as `tonic::Code` spells it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

const UNIMPLEMENTED: i32 = 12;

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `/package.Service/Method` split in two; anything else is `unknown`.
fn split_path(path: &str) -> MethodLabels {
    let mut parts = path.strip_prefix('/').unwrap_or("").splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => MethodLabels {
            service: s.into(),
            method: m.into(),
        },
        _ => unknown(),
    }
}

fn unknown() -> MethodLabels {
    MethodLabels {
        service: "unknown".into(),
        method: "unknown".into(),
    }
}

/// The layer [`RpcMetrics::layer`] makes.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(Option<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
}

type BoxFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                Ok(fut.await?.map(|body| MeteredBody {
                    inner: Box::pin(body),
                    call: None,
                }))
            });
        };
        let start = Instant::now();
        let labels = split_path(req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(resp) => resp,
                Err(e) => {
                    // The transport failed the call before any response: counted,
                    // with its method unverified.
                    let mut call = Call::new(metrics, unknown());
                    call.end(1);
                    return Err(e);
                }
            };
            let header_status = status_of(resp.headers());
            let labels = if header_status == Some(UNIMPLEMENTED) {
                unknown()
            } else {
                labels
            };
            metrics
                .duration
                .get_or_create(&labels)
                .observe(start.elapsed().as_secs_f64());
            let mut call = Call::new(metrics, labels);
            if let Some(code) = header_status {
                call.end(code);
            }
            Ok(resp.map(|body| MeteredBody {
                inner: Box::pin(body),
                call: Some(call),
            }))
        })
    }
}

/// One call until it ends: counted in flight, then by its status.
#[derive(Debug)]
struct Call {
    metrics: RpcMetrics,
    labels: MethodLabels,
    ended: bool,
}

impl Call {
    fn new(metrics: RpcMetrics, labels: MethodLabels) -> Self {
        metrics.in_flight.get_or_create(&labels).inc();
        Call {
            metrics,
            labels,
            ended: false,
        }
    }

    fn end(&mut self, code: i32) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.metrics.in_flight.get_or_create(&self.labels).dec();
        self.metrics
            .calls
            .get_or_create(&CallLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code: code_name(code).into(),
            })
            .inc();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its status was seen: the client or the connection went.
        self.end(1);
    }
}

/// A response body that records its call's status when the trailers pass.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    call: Option<Call>,
}

impl<B> std::fmt::Debug for MeteredBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody").finish_non_exhaustive()
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        let Some(call) = this.call.as_mut() else {
            return polled;
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    call.end(code);
                }
            }
            // A body that fails mid-way: the stream is reset.
            Poll::Ready(Some(Err(_))) => call.end(2),
            // The end without trailers: gRPC always sends them, so this is a
            // response of something else; nothing to add.
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reference-counted metrics, for code that keeps them in shared state.
pub type SharedRpcMetrics = Arc<RpcMetrics>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use tower::{Layer, Service};

    /// A response body of data frames, then trailers.
    struct Frames(VecDeque<http_body::Frame<&'static [u8]>>);

    impl http_body::Body for Frames {
        type Data = &'static [u8];
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn response(in_headers: Option<&str>, trailer: Option<&str>) -> http::Response<Frames> {
        let mut b = http::Response::builder();
        if let Some(s) = in_headers {
            b = b.header("grpc-status", s);
        }
        let mut frames = VecDeque::new();
        if let Some(s) = trailer {
            frames.push_back(http_body::Frame::data(&b"message"[..]));
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_str(s).unwrap());
            frames.push_back(http_body::Frame::trailers(t));
        }
        b.body(Frames(frames)).unwrap()
    }

    /// A service that answers its one call with the response it holds.
    struct Answer(Option<http::Response<Frames>>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<Frames>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(self.0.take().unwrap()))
        }
    }

    /// Calls `path` on a service answering with `resp`, drains the body unless
    /// `drop_early`, and gives the metrics.
    fn call(m: &RpcMetrics, path: &str, resp: http::Response<Frames>, drop_early: bool) {
        let mut svc = m.layer().layer(Answer(Some(resp)));
        let req = http::Request::builder().uri(path).body(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = svc.call(req).await.unwrap();
            let mut body = resp.into_body();
            if !drop_early {
                while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                    .await
                    .is_some()
                {}
            } else {
                assert_eq!(in_flight(m, "SpiffeWorkloadAPI", "FetchX509SVID"), 1);
            }
        });
    }

    fn in_flight(m: &RpcMetrics, s: &str, me: &str) -> i64 {
        m.in_flight
            .get(&MethodLabels {
                service: s.into(),
                method: me.into(),
            })
            .map(|g| g.get())
            .unwrap_or(0)
    }

    #[test]
    fn status_from_trailers_or_headers_and_cancelled_when_dropped() {
        let m = RpcMetrics::register(&mut crate::metrics::registry());
        call(
            &m,
            "/SpiffeWorkloadAPI/FetchJWTSVID",
            response(None, Some("0")),
            false,
        );
        call(
            &m,
            "/SpiffeWorkloadAPI/FetchJWTSVID",
            response(Some("7"), None),
            false,
        );
        call(
            &m,
            "/SpiffeWorkloadAPI/FetchX509SVID",
            response(None, Some("0")),
            true,
        );
        assert_eq!(m.calls("SpiffeWorkloadAPI", "FetchJWTSVID", "OK"), 1);
        assert_eq!(
            m.calls("SpiffeWorkloadAPI", "FetchJWTSVID", "PermissionDenied"),
            1
        );
        assert_eq!(
            m.calls("SpiffeWorkloadAPI", "FetchX509SVID", "Cancelled"),
            1
        );
        assert_eq!(m.calls("SpiffeWorkloadAPI", "FetchX509SVID", "OK"), 0);
        assert_eq!(in_flight(&m, "SpiffeWorkloadAPI", "FetchX509SVID"), 0);
        assert_eq!(in_flight(&m, "SpiffeWorkloadAPI", "FetchJWTSVID"), 0);
    }

    #[test]
    fn made_up_paths_do_not_make_labels() {
        let mut registry = crate::metrics::registry();
        let m = RpcMetrics::register(&mut registry);
        for i in 0..50 {
            let path = format!("/SpiffeWorkloadAPI/Made{i}");
            call(&m, &path, response(Some("12"), None), false);
        }
        call(&m, "no-slash", response(Some("12"), None), false);
        assert_eq!(m.calls("unknown", "unknown", "Unimplemented"), 51);
        let text = crate::metrics::encode(&registry);
        let sets = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(sets("tessera_rpc_calls_total{"), 1, "{text}");
        assert_eq!(sets("tessera_rpc_duration_seconds_count{"), 1, "{text}");
    }

    #[test]
    fn a_layer_that_is_off_counts_nothing() {
        let m = RpcMetrics::register(&mut crate::metrics::registry());
        let mut svc = m
            .layer_if(false)
            .layer(Answer(Some(response(None, Some("0")))));
        let req = http::Request::builder().uri("/S/M").body(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut body = svc.call(req).await.unwrap().into_body();
            while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_some()
            {}
        });
        assert_eq!(m.calls("S", "M", "OK"), 0);
    }

    #[test]
    fn paths_split_into_service_and_method() {
        let l = split_path("/tessera.agent.v1.Node/Attest");
        assert_eq!(
            (l.service.as_str(), l.method.as_str()),
            ("tessera.agent.v1.Node", "Attest")
        );
        for bad in ["", "/", "//x", "/a/", "/a/b/c", "a/b"] {
            assert_eq!(split_path(bad), unknown(), "{bad:?}");
        }
        assert_eq!(code_name(7), "PermissionDenied");
        assert_eq!(code_name(99), "Unknown");
    }
}
