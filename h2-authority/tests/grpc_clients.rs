//! Real gRPC clients against a tonic SPIFFE Workload API server on a Unix
//! socket, served once as the socket comes and once through
//! [`fix_authority`].
//!
//! Python's grpcio sends the percent-encoded socket path as `:authority`,
//! which h2 (under tonic) refuses with RST_STREAM(PROTOCOL_ERROR). These tests
//! pin that trap down with the grpcio version `scripts/python-env.sh` installs
//! and show that through the adapter grpcio, py-spiffe and tonic's own client
//! all get their JWT-SVID. They need Python 3 and the Python package index
//! (the script builds a virtualenv under target/ on first use).

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tessera_h2_authority::{AuthorityFix, fix_authority};
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tessera_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::transport::{Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

const AUDIENCE: &str = "tessera-authority-test";
const SPIFFE_ID: &str = "spiffe://example.org/python-workload";

/// A Workload API that only mints one fixed JWT-SVID.
struct FixedJwt {
    response: JwtsvidResponse,
}

type Empty<T> = tokio_stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for FixedJwt {
    type FetchX509SVIDStream = Empty<X509svidResponse>;
    type FetchX509BundlesStream = Empty<X509BundlesResponse>;
    type FetchJWTBundlesStream = Empty<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        if request
            .metadata()
            .get("workload.spiffe.io")
            .is_none_or(|v| v != "true")
        {
            return Err(Status::invalid_argument(
                "missing the workload.spiffe.io: true metadata",
            ));
        }
        if request.get_ref().audience != [AUDIENCE] {
            return Err(Status::invalid_argument(format!(
                "unexpected audience {:?}",
                request.get_ref().audience
            )));
        }
        Ok(Response::new(self.response.clone()))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A well-formed but unsigned-for-real JWT-SVID: py-spiffe parses the token
/// (alg, kid, sub, aud, exp) without checking the signature.
fn expected_response() -> JwtsvidResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let header = serde_json::json!({"alg": "ES256", "kid": "test-key", "typ": "JWT"});
    let claims = serde_json::json!({
        "sub": SPIFFE_ID,
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
    });
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 64]),
    );
    JwtsvidResponse {
        svids: vec![Jwtsvid {
            spiffe_id: SPIFFE_ID.into(),
            svid: token,
            hint: "test".into(),
        }],
    }
}

/// The accepted socket behind the adapter, as tonic's server wants it: with
/// the Unix socket's peer information still reachable.
struct FixedConn(AuthorityFix<UnixStream>);

impl Connected for FixedConn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for FixedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for FixedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    // hyper batches frames into vectored writes when the IO says it can.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serves the fixed Workload API on `path`, through the adapter or not.
fn serve(path: &Path, with_adapter: bool, response: JwtsvidResponse) {
    let listener = UnixListener::bind(path).expect("bind the test socket");
    let service = SpiffeWorkloadApiServer::new(FixedJwt { response });
    let incoming = UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let router = Server::builder().add_service(service);
        if with_adapter {
            let incoming = incoming.map(|conn| conn.map(|s| FixedConn(fix_authority(s))));
            router
                .serve_with_incoming(incoming)
                .await
                .expect("serve through the adapter");
        } else {
            router
                .serve_with_incoming(incoming)
                .await
                .expect("serve the plain socket");
        }
    });
}

/// The virtualenv's python, from scripts/python-env.sh (run once per test
/// binary).
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-env.sh");
            let out = Command::new("bash")
                .arg(&script)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed ({}), so the Python interoperability tests cannot run; \
                 it needs python3 with venv and access to the Python package index:\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(
                String::from_utf8(out.stdout)
                    .expect("python-env.sh prints a UTF-8 path")
                    .trim(),
            )
        })
        .clone()
}

/// Runs tests/py/fetch_jwt_svid.py against `socket` and returns its JSON.
async fn python_fetch(socket: &Path, mode: &'static str) -> serde_json::Value {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/fetch_jwt_svid.py");
        let out = Command::new(python())
            .arg(&script)
            .arg(&socket)
            .arg(AUDIENCE)
            .arg(mode)
            .output()
            .expect("run the virtualenv's python");
        assert!(
            out.status.success(),
            "{} {mode} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{mode}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    })
    .await
    .expect("the Python client's thread")
}

/// Connects tonic's client to a Unix socket.
#[derive(Clone)]
struct UdsConnector(PathBuf);

impl tower::Service<Uri> for UdsConnector {
    type Response = TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}

async fn rust_fetch(socket: &Path) -> Result<JwtsvidResponse, Status> {
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(UdsConnector(socket.to_owned()))
        .await
        .expect("connect to the test socket");
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut request = Request::new(JwtsvidRequest {
        audience: vec![AUDIENCE.into()],
        spiffe_id: String::new(),
    });
    request.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request.set_timeout(Duration::from_secs(10));
    client
        .fetch_jwtsvid(request)
        .await
        .map(Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_is_reset_by_tonic_without_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plain.sock");
    serve(&socket, false, expected_response());

    let raw = python_fetch(&socket, "raw").await;
    println!("grpcio without the adapter: {raw}");
    assert_eq!(
        raw["ok"], false,
        "grpcio got through without the adapter: {raw}"
    );
    assert_eq!(raw["code"], "INTERNAL", "{raw}");
    let details = raw["details"].as_str().unwrap();
    assert!(
        details.contains("RST_STREAM") && details.contains("error code 1"),
        "expected h2's RST_STREAM(PROTOCOL_ERROR), got: {raw}"
    );

    let spiffe = python_fetch(&socket, "spiffe").await;
    println!("py-spiffe without the adapter: {spiffe}");
    assert_eq!(spiffe["ok"], false, "py-spiffe got through: {spiffe}");
    assert!(
        spiffe["details"].as_str().unwrap().contains("RST_STREAM"),
        "{spiffe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_and_py_spiffe_are_served_through_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fixed.sock");
    let expected = expected_response();
    serve(&socket, true, expected.clone());

    let raw = python_fetch(&socket, "raw").await;
    assert_eq!(raw["ok"], true, "grpcio failed through the adapter: {raw}");
    let bytes: Vec<u8> = raw["response_hex"]
        .as_str()
        .unwrap()
        .as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect();
    assert_eq!(JwtsvidResponse::decode(bytes.as_slice()).unwrap(), expected);

    let spiffe = python_fetch(&socket, "spiffe").await;
    assert_eq!(
        spiffe["ok"], true,
        "py-spiffe failed through the adapter: {spiffe}"
    );
    assert_eq!(spiffe["spiffe_id"], SPIFFE_ID);
    assert_eq!(spiffe["token"], expected.svids[0].svid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_is_served_with_and_without_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let expected = expected_response();
    for with_adapter in [false, true] {
        let socket = dir.path().join(format!("rust-{with_adapter}.sock"));
        serve(&socket, with_adapter, expected.clone());
        assert_eq!(rust_fetch(&socket).await.unwrap(), expected);
        // Several requests on one connection: after the first, tonic's
        // encoder refers to its HPACK dynamic table.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(UdsConnector(socket.clone()))
            .await
            .unwrap();
        let mut client = SpiffeWorkloadApiClient::new(channel);
        for _ in 0..3 {
            let mut request = Request::new(JwtsvidRequest {
                audience: vec![AUDIENCE.into()],
                spiffe_id: String::new(),
            });
            request
                .metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
            let response = client.fetch_jwtsvid(request).await.unwrap();
            assert_eq!(response.into_inner(), expected);
        }
        // Without the metadata the service itself answers, so the request
        // did reach it.
        let status = client
            .fetch_jwtsvid(Request::new(JwtsvidRequest {
                audience: vec![AUDIENCE.into()],
                spiffe_id: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
