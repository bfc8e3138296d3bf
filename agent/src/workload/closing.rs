//! Ending open streams when the agent shuts down. A watching workload's
//! FetchX509SVID stream never ends by itself, so a shutdown that waits for every
//! connection to drain would wait for ever. Every response body the socket serves
//! is wrapped: once shutdown begins, a body still open ends at once with the gRPC
//! status UNAVAILABLE ("the agent is shutting down"), which SPIFFE clients take as
//! "reconnect and retry", and its connection can close.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};

type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Begins the shutdown of every body made through the paired [`ClosingLayer`].
#[derive(Debug)]
pub struct Closer(watch::Sender<bool>);

impl Closer {
    /// Ends every open stream.
    pub fn close(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once [`Closer::close`] was called.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        until_closed(self.0.subscribe())
    }
}

async fn until_closed(mut rx: watch::Receiver<bool>) {
    // A dropped sender means the server is gone: closed too.
    let _ = rx.wait_for(|closed| *closed).await;
}

/// A closer and the layer whose bodies it ends.
pub fn pair() -> (Closer, ClosingLayer) {
    let (tx, rx) = watch::channel(false);
    (Closer(tx), ClosingLayer(rx))
}

/// Wraps a service's response bodies in [`ClosingBody`].
#[derive(Debug, Clone)]
pub struct ClosingLayer(watch::Receiver<bool>);

impl<S> tower::Layer<S> for ClosingLayer {
    type Service = ClosingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClosingService {
            inner,
            rx: self.0.clone(),
        }
    }
}

/// See [`ClosingLayer`].
#[derive(Debug, Clone)]
pub struct ClosingService<S> {
    inner: S,
    rx: watch::Receiver<bool>,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for ClosingService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ClosingBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(req);
        let rx = self.rx.clone();
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| ClosingBody {
                inner: Box::pin(body),
                rx,
                stop: None,
                done: false,
            }))
        })
    }
}

/// A response body that ends with UNAVAILABLE when shutdown begins while it waits
/// for its next message.
pub struct ClosingBody<B> {
    inner: Pin<Box<B>>,
    rx: watch::Receiver<bool>,
    /// Made the first time the body waits: most bodies (unary answers) never do.
    stop: Option<Stop>,
    done: bool,
}

impl<B> std::fmt::Debug for ClosingBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosingBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The trailers of a stream ended by the shutdown.
fn shutdown_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    // 14 = UNAVAILABLE.
    t.insert("grpc-status", HeaderValue::from_static("14"));
    t.insert(
        "grpc-message",
        HeaderValue::from_static("the agent is shutting down"),
    );
    t
}

impl<B> Body for ClosingBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if frame.is_none() {
                this.done = true;
            }
            return Poll::Ready(frame);
        }
        // The body waits for its next message (a stream between updates): end it
        // here if the agent is shutting down. Frames carry whole gRPC messages, so
        // nothing is cut in half.
        let rx = &this.rx;
        let stop = this
            .stop
            .get_or_insert_with(|| Box::pin(until_closed(rx.clone())));
        if stop.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(shutdown_trailers()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that sends one frame, then waits for ever (a watching stream).
    struct Watching {
        sent: bool,
    }

    impl Body for Watching {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent {
                Poll::Pending
            } else {
                self.sent = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"update")))))
            }
        }
    }

    async fn next<B: Body<Data = Bytes> + Unpin>(b: &mut B) -> Option<Frame<Bytes>>
    where
        B::Error: std::fmt::Debug,
    {
        std::future::poll_fn(|cx| Pin::new(&mut *b).poll_frame(cx))
            .await
            .map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn a_waiting_stream_ends_with_unavailable_at_shutdown() {
        let (closer, layer) = pair();
        let mut body = ClosingBody {
            inner: Box::pin(Watching { sent: false }),
            rx: layer.0.clone(),
            stop: None,
            done: false,
        };
        let first = next(&mut body).await.unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"update"));
        // Waiting for the next update...
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), next(&mut body));
        assert!(waiting.await.is_err(), "the stream ended by itself");
        // ...until shutdown: trailers with UNAVAILABLE, then the end.
        closer.close();
        let last = next(&mut body).await.unwrap();
        let trailers = last.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "the agent is shutting down");
        assert!(next(&mut body).await.is_none());
        assert!(body.is_end_stream());
        closer.closed().await;
    }

    #[tokio::test]
    async fn a_body_with_data_ready_is_not_cut() {
        let (closer, layer) = pair();
        closer.close();
        let mut body = ClosingBody {
            inner: Box::pin(one_frame(b"answer")),
            rx: layer.0.clone(),
            stop: None,
            done: false,
        };
        // A unary answer already made goes out whole even after shutdown began.
        assert_eq!(
            next(&mut body).await.unwrap().into_data().unwrap(),
            Bytes::from_static(b"answer")
        );
    }

    /// A body of one data frame.
    fn one_frame(data: &'static [u8]) -> Once {
        Once(Some(Bytes::from_static(data)))
    }

    struct Once(Option<Bytes>);

    impl Body for Once {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
    }
}
