//! Refuses, as soon as its headers arrive, a call on the agent API that needs an
//! agent SVID from a connection that presented none. Every call but `Attest` needs
//! one, and tonic reads a unary call's whole request message before the handler can
//! look at the caller: without this, anyone who can reach the port could open
//! streams, never send their message, and have the server hold each one.
//!
//! The admin API served on the same port gets the same treatment: a call from a
//! connection without a client certificate is refused here with PermissionDenied
//! (the admin guard's own answer to such a caller), before any argument is read. It
//! leaves no audit record: it carries no identity, and recording each would let
//! anyone fill the disk.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::transport::PeerInfo;

/// The one call a connection without an SVID may make.
pub const ATTEST_PATH: &str = "/tessera.agent.v1.Node/Attest";

/// The admin API's paths.
const ADMIN_PREFIX: &str = "/tessera.admin.v1.Admin/";

/// Whether a request may go on to the services: `Attest` always, every other call
/// only from a connection that presented an agent or server SVID.
fn admitted(path: &str, peer: Option<&PeerInfo>) -> bool {
    path == ATTEST_PATH || peer.is_some_and(|p| p.spiffe_id.is_some())
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CredentialsFirstLayer;

impl<S> tower::Layer<S> for CredentialsFirstLayer {
    type Service = CredentialsFirst<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CredentialsFirst { inner }
    }
}

/// The service [`CredentialsFirstLayer`] makes.
#[derive(Debug, Clone)]
pub struct CredentialsFirst<S> {
    inner: S,
}

type BoxFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for CredentialsFirst<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if admitted(req.uri().path(), req.extensions().get::<PeerInfo>()) {
            return Box::pin(self.inner.call(req));
        }
        let status = if req.uri().path().starts_with(ADMIN_PREFIX) {
            tonic::Status::permission_denied(super::admin_access::NO_CLIENT_CERTIFICATE)
        } else {
            tonic::Status::unauthenticated("this call needs the agent's SVID (mTLS); attest first")
        };
        Box::pin(async move { Ok(status.into_http()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: Option<&str>) -> PeerInfo {
        PeerInfo {
            addr: None,
            spiffe_id: id.map(|i| i.parse().unwrap()),
            serial: String::new(),
        }
    }

    #[test]
    fn only_attest_goes_through_without_an_svid() {
        let none = peer(None);
        assert!(admitted(ATTEST_PATH, Some(&none)));
        assert!(admitted(ATTEST_PATH, None));
        for path in [
            "/tessera.agent.v1.Node/SyncEntries",
            "/tessera.agent.v1.Node/BatchNewX509Svid",
            "/tessera.agent.v1.Node/RenewAgent",
            "/tessera.agent.v1.Node/NewJwtSvid",
            "/tessera.agent.v1.Node/Attest/",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(!admitted(path, Some(&none)), "{path}");
            assert!(!admitted(path, None), "{path}");
        }
        let agent = peer(Some("spiffe://example.org/spire/agent/x"));
        assert!(admitted("/tessera.agent.v1.Node/SyncEntries", Some(&agent)));
    }

    #[tokio::test]
    async fn a_refused_call_is_answered_without_reading_its_body() {
        use tower::{Layer, Service, ServiceExt};
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("served")))
        });
        let mut svc = CredentialsFirstLayer.layer(inner);
        let mut req = http::Request::new(());
        *req.uri_mut() = "/tessera.agent.v1.Node/SyncEntries".parse().unwrap();
        req.extensions_mut().insert(peer(None));
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.body(), "");
        assert_eq!(
            resp.headers().get("grpc-status").unwrap(),
            &(tonic::Code::Unauthenticated as i32).to_string()
        );
        let mut req = http::Request::new(());
        *req.uri_mut() = ATTEST_PATH.parse().unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.body(), "served");
        // The admin API: refused as its guard would, saying what is missing.
        let mut req = http::Request::new(());
        *req.uri_mut() = "/tessera.admin.v1.Admin/ListEntries".parse().unwrap();
        req.extensions_mut().insert(peer(None));
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.body(), "");
        assert_eq!(
            resp.headers().get("grpc-status").unwrap(),
            &(tonic::Code::PermissionDenied as i32).to_string()
        );
    }
}
