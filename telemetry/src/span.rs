//! A tracing span around each gRPC call, so that every log line a handler writes
//! carries the call's method and who made it (in JSON logs as the span's fields, in
//! text logs as the `rpc{...}` prefix).
//!
//! The span is named `rpc` and has the fields `method` (the request path,
//! `/SpiffeWorkloadAPI/FetchX509SVID`), `caller` (how the listener knows the peer:
//! an address, or a local process's pid and uid) and `agent_id` (the SPIFFE ID the
//! peer authenticated with, when it presented one). What `caller` and `agent_id`
//! say is up to the listener: it passes a function that reads them from the
//! request's extensions (where tonic puts the connection's details).

use std::task::{Context, Poll};

use tracing::Instrument;

/// Who made a call, as a listener describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerFields {
    /// The peer: an address, or `pid=N uid=N` for a local process.
    pub caller: Option<String>,
    /// The SPIFFE ID the peer authenticated with.
    pub agent_id: Option<String>,
}

/// Reads the caller of a request from its extensions.
pub type DescribeCaller = fn(&http::Extensions) -> CallerFields;

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct RpcSpanLayer {
    describe: DescribeCaller,
}

impl RpcSpanLayer {
    /// A layer whose spans describe the caller with `describe`.
    pub fn new(describe: DescribeCaller) -> Self {
        RpcSpanLayer { describe }
    }
}

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan {
            inner,
            describe: self.describe,
        }
    }
}

/// The service [`RpcSpanLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
    describe: DescribeCaller,
}

impl<S, B> tower::Service<http::Request<B>> for RpcSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let who = (self.describe)(req.extensions());
        let span = tracing::info_span!(
            "rpc",
            method = req.uri().path(),
            caller = who.caller.as_deref(),
            agent_id = who.agent_id.as_deref(),
        );
        let _entered = span.enter();
        // The handler's future is created inside the span as well as polled in it:
        // tonic runs some of a handler's code when the future is made.
        let fut = self.inner.call(req);
        drop(_entered);
        fut.instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tower::{Layer, Service, ServiceExt};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;

    /// A subscriber that keeps each span's fields and, for each event, the fields of
    /// the span it happened in.
    /// A span's or event's fields, by name.
    type FieldList = Vec<(String, String)>;
    /// Each event's message and the span it happened in.
    type EventList = Vec<(String, Option<u64>)>;

    #[derive(Default, Clone)]
    struct Recorder {
        spans: Arc<Mutex<Vec<FieldList>>>,
        current: Arc<Mutex<Option<u64>>>,
        events: Arc<Mutex<EventList>>,
    }

    struct Fields<'a>(&'a mut Vec<(String, String)>);
    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, attrs: &Attributes<'_>) -> Id {
            let mut fields = Vec::new();
            attrs.record(&mut Fields(&mut fields));
            let mut spans = self.spans.lock().unwrap();
            spans.push(fields);
            Id::from_u64(spans.len() as u64)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Vec::new();
            event.record(&mut Fields(&mut fields));
            let message = fields
                .into_iter()
                .find(|(k, _)| k == "message")
                .map(|(_, v)| v)
                .unwrap_or_default();
            let span = *self.current.lock().unwrap();
            self.events.lock().unwrap().push((message, span));
        }
        fn enter(&self, span: &Id) {
            *self.current.lock().unwrap() = Some(span.into_u64());
        }
        fn exit(&self, _: &Id) {
            *self.current.lock().unwrap() = None;
        }
    }

    fn describe(ext: &http::Extensions) -> CallerFields {
        CallerFields {
            caller: ext.get::<&'static str>().map(|s| (*s).to_owned()),
            agent_id: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_handler_s_log_lines_are_in_a_span_naming_the_method_and_caller() {
        let rec = Recorder::default();
        let _default = tracing::subscriber::set_default(rec.clone());
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            tracing::info!("handled");
            Ok::<_, std::convert::Infallible>(())
        });
        let mut svc = RpcSpanLayer::new(describe).layer(inner);
        let mut req = http::Request::new(());
        *req.uri_mut() = "/SpiffeWorkloadAPI/FetchX509SVID".parse().unwrap();
        req.extensions_mut().insert("pid=42 uid=1000");
        svc.ready().await.unwrap().call(req).await.unwrap();

        let spans = rec.spans.lock().unwrap().clone();
        assert_eq!(
            spans,
            vec![vec![
                (
                    "method".to_owned(),
                    "/SpiffeWorkloadAPI/FetchX509SVID".to_owned()
                ),
                ("caller".to_owned(), "pid=42 uid=1000".to_owned()),
            ]],
            "agent_id is left out when the caller presented none"
        );
        let events = rec.events.lock().unwrap().clone();
        assert_eq!(events, vec![("handled".to_owned(), Some(1))]);
    }
}
