//! Closing idle connections. A connection is idle while it has no HTTP/2 stream open:
//! no request in flight and no response still streaming. Long-lived calls (the
//! Workload API's streams, an agent's attestation) keep their connection busy for as
//! long as they last; a connection that carries nothing for the idle timeout is
//! closed, and with it the descriptor and the place under the connection caps.
//!
//! Two halves cooperate. [`Guarded`] wraps the connection's I/O: it holds the
//! connection's place ([`super::ConnPermit`]) and ends the connection (end of input
//! to the HTTP/2 server) once it has been idle long enough. [`StreamTrackingLayer`]
//! sits in front of the gRPC services and counts every request, from its arrival
//! until its response body is finished or dropped, on the connection it came on.
//! The layer finds the connection through the connect info, which [`Guarded`] wraps
//! in [`Tracked`] and the layer unwraps again, so the handlers see the connect info
//! they always saw.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::conn::{StreamBudget, StreamPlace};

/// The streams open on one connection, and since when none has been.
#[derive(Debug)]
pub struct Activity {
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// The peer's budget of open streams across its connections, if it has one.
    budget: Option<Arc<StreamBudget>>,
}

impl Activity {
    fn new(budget: Option<Arc<StreamBudget>>) -> Arc<Self> {
        Arc::new(Self {
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            budget,
        })
    }

    /// Counts a stream as open until the guard is dropped; `Err(budget)` when the
    /// peer's stream budget is spent.
    fn begin(self: &Arc<Self>) -> Result<StreamGuard, usize> {
        let place = match &self.budget {
            Some(b) => Some(b.try_begin().ok_or(b.max())?),
            None => None,
        };
        self.streams.fetch_add(1, Ordering::AcqRel);
        Ok(StreamGuard(self.clone(), place))
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// When the connection will have been idle for `timeout`, if nothing opens.
    fn deadline(&self, timeout: Duration, now: Instant) -> Instant {
        if self.streams() > 0 {
            now + timeout
        } else {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + timeout
        }
    }
}

/// One open stream.
#[derive(Debug)]
struct StreamGuard(
    Arc<Activity>,
    #[allow(
        dead_code,
        reason = "held for its Drop: the place in the peer's budget"
    )]
    Option<StreamPlace>,
);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Set the time before the count reaches zero, so that a reader seeing zero
        // streams sees the new time.
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that holds its place under the caps and ends itself when idle.
pub struct Guarded<IO> {
    io: IO,
    activity: Arc<Activity>,
    idle_timeout: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    /// The connection's place under the caps, freed when the connection goes.
    _permit: Box<dyn std::any::Any + Send + Sync>,
}

impl<IO: std::fmt::Debug> std::fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("io", &self.io)
            .field("streams", &self.activity.streams())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<IO> Guarded<IO> {
    /// Wraps `io`, holding `permit` for the life of the connection. With
    /// `idle_timeout` of `None` the connection is never closed for idleness.
    pub fn new(
        io: IO,
        permit: impl std::any::Any + Send + Sync,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            io,
            activity: Activity::new(None),
            idle_timeout,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            _permit: Box::new(permit),
        }
    }

    /// Makes this connection's requests count against `budget`, which its peer's
    /// other connections share: past it a request is refused at its headers with
    /// `RESOURCE_EXHAUSTED`. Call before serving the connection.
    pub fn with_stream_budget(mut self, budget: Arc<StreamBudget>) -> Self {
        self.activity = Activity::new(Some(budget));
        self
    }

    /// The inner connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// This connection's stream count.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Whether the connection has now been idle for its timeout; arms the timer
    /// to wake the reader when it will have been otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        loop {
            let now = Instant::now();
            let deadline = self.activity.deadline(timeout, now);
            if deadline <= now {
                return true;
            }
            // While streams are open the deadline moves with the clock: re-arm only
            // when the timer has fired, is late, or would fire early by more than half
            // the timeout (it then wakes once more and re-arms).
            let armed = self.timer.deadline();
            if armed <= now || armed > deadline || deadline.duration_since(armed) > timeout / 2 {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => return ready,
        }
        if this.idle_expired(cx) {
            tracing::debug!("closing a connection idle for {:?}", this.idle_timeout);
            // End of input: the HTTP/2 server closes the connection, which has no
            // stream to lose.
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connect info of a [`Guarded`] connection: the inner connection's, and the
/// stream count [`StreamTrackingLayer`] keeps.
#[derive(Debug, Clone)]
pub struct Tracked<T> {
    /// The inner connection's connect info.
    pub info: T,
    activity: Arc<Activity>,
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = Tracked<IO::ConnectInfo>;
    fn connect_info(&self) -> Self::ConnectInfo {
        Tracked {
            info: self.io.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

/// Counts requests as open streams of their connection (see the module
/// documentation); `T` is the inner connection's connect info type.
#[derive(Debug)]
pub struct StreamTrackingLayer<T>(std::marker::PhantomData<fn() -> T>);

impl<T> StreamTrackingLayer<T> {
    /// The layer.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> Default for StreamTrackingLayer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for StreamTrackingLayer<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<S, T> tower::Layer<S> for StreamTrackingLayer<T> {
    type Service = StreamTracking<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        StreamTracking {
            inner,
            _info: std::marker::PhantomData,
        }
    }
}

/// The service [`StreamTrackingLayer`] makes.
#[derive(Debug)]
pub struct StreamTracking<S, T> {
    inner: S,
    _info: std::marker::PhantomData<fn() -> T>,
}

impl<S: Clone, T> Clone for StreamTracking<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _info: std::marker::PhantomData,
        }
    }
}

type BoxFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, T, B, RB> tower::Service<http::Request<B>> for StreamTracking<S, T>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let guard = match req.extensions_mut().remove::<Tracked<T>>() {
            Some(t) => {
                let begun = t.activity.begin();
                req.extensions_mut().insert(t.info);
                match begun {
                    Ok(g) => Some(g),
                    Err(max) => return Box::pin(async move { Ok(over_budget(max)) }),
                }
            }
            None => None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody {
                inner: Some(Box::pin(body)),
                _guard: guard,
            }))
        })
    }
}

/// The gRPC answer (Trailers-Only) to a request past its peer's stream budget: the
/// handler never sees it, nothing of it is kept.
fn over_budget<RB>(max: usize) -> http::Response<TrackedBody<RB>> {
    let mut r = http::Response::new(TrackedBody {
        inner: None,
        _guard: None,
    });
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    // RESOURCE_EXHAUSTED
    h.insert("grpc-status", http::HeaderValue::from_static("8"));
    if let Ok(v) = http::HeaderValue::from_str(&format!(
        "too many requests open from this peer (at most {max} at once across its connections); finish some first"
    )) {
        h.insert("grpc-message", v);
    }
    r
}

/// A response body that keeps its stream counted as open until it is finished or
/// dropped.
pub struct TrackedBody<B> {
    inner: Option<Pin<Box<B>>>,
    _guard: Option<StreamGuard>,
}

impl<B> std::fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(b) => b.as_mut().poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::{Layer, Service};

    #[derive(Debug, Clone, PartialEq)]
    struct Info(u32);

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_after_the_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = Guarded::new(a, (), Some(Duration::from_secs(10)));
        let start = Instant::now();
        let mut buf = [0u8; 8];
        // Data keeps arriving, but with no stream open that is not activity.
        b.write_all(b"x").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        let n = g.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "end of input");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_the_connection_and_its_end_restarts_the_clock() {
        let (a, _b) = tokio::io::duplex(64);
        let mut g = Guarded::new(a, (), Some(Duration::from_secs(10)));
        let stream = g.activity().begin();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(60), g.read(&mut buf)).await;
        assert!(r.is_err(), "still open after a minute with a stream");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(stream);
        let closed_at = Instant::now();
        assert_eq!(g.read(&mut buf).await.unwrap(), 0);
        let after = closed_at.elapsed();
        assert!(
            after >= Duration::from_secs(10) && after < Duration::from_secs(11),
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_nothing_is_closed() {
        let (a, _b) = tokio::io::duplex(64);
        let mut g = Guarded::new(a, (), None);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(3600), g.read(&mut buf)).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn the_permit_goes_with_the_connection() {
        let limiter = super::super::ConnLimiter::new(
            "test",
            super::super::ConnCaps {
                max_total: 1,
                max_per_peer: 1,
            },
        );
        let (a, _b) = tokio::io::duplex(64);
        let g = Guarded::new(a, limiter.try_acquire(1u32).unwrap(), None);
        assert!(limiter.try_acquire(1u32).is_err());
        drop(g);
        assert!(limiter.try_acquire(1u32).is_ok());
    }

    #[derive(Clone)]
    struct Echo;

    impl tower::Service<http::Request<()>> for Echo {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            // The handler sees the inner connect info, as without the layer.
            let info = req.extensions().get::<Info>().cloned();
            let wrapped = req.extensions().get::<Tracked<Info>>().is_some();
            std::future::ready(Ok(http::Response::new(format!("{info:?} {wrapped}"))))
        }
    }

    #[tokio::test]
    async fn the_layer_counts_a_request_until_its_body_goes() {
        let activity = Activity::new(None);
        let mut svc = StreamTrackingLayer::<Info>::new().layer(Echo);
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Tracked {
            info: Info(7),
            activity: activity.clone(),
        });
        let resp = svc.call(req).await.unwrap();
        assert_eq!(activity.streams(), 1, "the body is still to be sent");
        let body = http_body::Body::size_hint(resp.body());
        assert_eq!(body.exact(), Some(19), "the size hint passes through");
        let mut b = resp.into_body();
        let frame =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut b), cx)).await;
        let data = frame.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "Some(Info(7)) false");
        assert_eq!(activity.streams(), 1, "counted until the body goes");
        drop(b);
        assert_eq!(activity.streams(), 0);
    }

    #[tokio::test]
    async fn past_the_peer_budget_a_request_is_refused_at_its_headers() {
        let limiter = super::super::ConnLimiter::with_stream_budget(
            "test",
            super::super::ConnCaps {
                max_total: 4,
                max_per_peer: 4,
            },
            1,
        );
        let permit = limiter.try_acquire(1u32).unwrap();
        let activity = Activity::new(Some(permit.stream_budget()));
        let mut svc = StreamTrackingLayer::<Info>::new().layer(Echo);
        let call = |svc: &mut StreamTracking<Echo, Info>| {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(Tracked {
                info: Info(1),
                activity: activity.clone(),
            });
            svc.call(req)
        };
        let first = call(&mut svc).await.unwrap();
        assert!(first.headers().get("grpc-status").is_none());
        let second = call(&mut svc).await.unwrap();
        assert_eq!(second.headers()["grpc-status"], "8");
        assert!(http_body::Body::is_end_stream(second.body()));
        assert_eq!(activity.streams(), 1, "the refused request is not counted");
        drop(first);
        let third = call(&mut svc).await.unwrap();
        assert!(
            third.headers().get("grpc-status").is_none(),
            "the place was freed"
        );
    }
}
