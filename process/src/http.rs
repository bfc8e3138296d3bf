//! A small HTTP/1.1 client for the few one-shot requests attestation makes: the agent
//! asks a cloud's instance metadata service (plain HTTP on a link-local address, with
//! the provider's headers), a kubelet (HTTPS) or a container engine (HTTP over its
//! Unix socket, [`send_unix`]), and the server fetches key sets and asks a Kubernetes
//! API server (HTTPS, checked against the roots it is given, with a client
//! certificate when the rustls configuration in [`Options::tls`] carries one). One
//! request per connection, a deadline over the whole exchange, and a cap on the body:
//! a slow or oversized answer is an error, never a stall or a memory spike.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL cannot be requested.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No TCP connection could be made (nothing listens, no route, name unknown).
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// The host and port.
        authority: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (an untrusted certificate, a wrong name).
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        /// The host and port.
        authority: String,
        /// The handshake's error (rustls's, inside).
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke off or the answer is not HTTP.
    #[error("request to {url} failed: {source}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The whole exchange took longer than allowed.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL requested.
        url: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The body is larger than allowed.
    #[error("the answer from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The largest body accepted.
        limit: usize,
    },
}

impl HttpError {
    /// Whether the other side could not be reached at all or did not answer in time
    /// (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Protocol { .. }
        )
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The whole URL, `http` or `https`.
    pub url: String,
    /// Headers besides `Host`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body, empty for none.
    pub body: Vec<u8>,
}

impl Request {
    /// A GET of `url`.
    pub fn get(url: &str) -> Self {
        Self {
            method: Method::GET,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A PUT of `url` with an empty body.
    pub fn put(url: &str) -> Self {
        Self {
            method: Method::PUT,
            ..Self::get(url)
        }
    }

    /// A POST of `body` to `url`, with `content_type`.
    pub fn post(url: &str, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            method: Method::POST,
            body,
            ..Self::get(url)
        }
        .header("content-type", content_type)
    }

    /// Adds a header; a value that cannot be a header value is left out (callers
    /// pass constants or values they made).
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, for error messages: at most 200 characters, lossy.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text.to_owned(),
        }
    }
}

/// Limits and trust for one exchange.
#[derive(Debug, Clone)]
pub struct Options {
    /// The deadline over connecting, sending and reading the whole answer.
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_body: usize,
    /// Roots for `https` URLs (and the client certificate, if any); an `https` URL
    /// without them is refused.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_body: 1 << 20,
            tls: None,
        }
    }
}

/// Sends `req` and reads the whole answer, within `opts`.
pub async fn send(req: Request, opts: &Options) -> Result<Response, HttpError> {
    let url = req.url.clone();
    within(url, opts.timeout, exchange(req, opts)).await
}

/// Sends `req` over the Unix stream socket at `socket` (a container engine's API) and
/// reads the whole answer, within `opts` (`tls` is not used). `req.url` is the path
/// and query, `/containers/x/json`; the request names `localhost` as its host.
pub async fn send_unix(socket: &Path, req: Request, opts: &Options) -> Result<Response, HttpError> {
    let url = format!("unix:{}:{}", socket.display(), req.url);
    let exchange = async {
        if !req.url.starts_with('/') {
            return Err(HttpError::BadUrl {
                url: req.url.clone(),
                reason: "over a Unix socket the URL is a path starting with /".into(),
            });
        }
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| HttpError::Connect {
                authority: socket.display().to_string(),
                source,
            })?;
        let request = http_request(&req, &req.url, "localhost")?;
        round_trip(stream, request, &url, opts.max_body).await
    };
    within(url.clone(), opts.timeout, exchange).await
}

/// `exchange`, or a timeout once `timeout` has passed.
async fn within(
    url: String,
    timeout: Duration,
    exchange: impl Future<Output = Result<Response, HttpError>>,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { url, timeout }),
    }
}

/// The request to send: `req` with `path` as its target and `host` as its `Host`.
fn http_request(
    req: &Request,
    path: &str,
    host: &str,
) -> Result<http::Request<Full<Bytes>>, HttpError> {
    let mut builder = http::Request::builder()
        .method(req.method.clone())
        .uri(path)
        .header(http::header::HOST, host);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| HttpError::BadUrl {
            url: req.url.clone(),
            reason: e.to_string(),
        })
}

async fn exchange(req: Request, opts: &Options) -> Result<Response, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl {
        url: req.url.clone(),
        reason: reason.to_owned(),
    };
    let uri: Uri = req.url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `[v6]` in a URL; the bare address for connecting and for TLS.
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let tls = if https {
        Some(
            opts.tls
                .clone()
                .ok_or_else(|| bad("https needs trusted roots, and none were given"))?,
        )
    } else {
        None
    };
    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|source| HttpError::Connect {
            authority: authority.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let request = http_request(&req, &path, &authority)?;
    if let Some(tls) = tls {
        let name = rustls::pki_types::ServerName::try_from(bare_host.clone())
            .map_err(|_| bad("the host is not a valid TLS server name"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| HttpError::Tls {
                authority: authority.clone(),
                source,
            })?;
        round_trip(stream, request, &req.url, opts.max_body).await
    } else {
        round_trip(tcp, request, &req.url, opts.max_body).await
    }
}

async fn round_trip<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
    url: &str,
    max_body: usize,
) -> Result<Response, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |source: hyper::Error| HttpError::Protocol {
        url: url.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(protocol)?;
    // The connection task ends with the exchange (one request per connection), or
    // when the caller's deadline drops this future and with it the sender.
    let conn = tokio::spawn(conn);
    let result = async {
        let response = sender.send_request(request).await.map_err(protocol)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(protocol)?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > max_body {
                    return Err(HttpError::TooLarge {
                        url: url.to_owned(),
                        limit: max_body,
                    });
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            headers,
            body: out,
        })
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads a request: its head (up to the blank line, or the end of the stream) and
    /// the body its Content-Length announces, so that closing does not reset the
    /// connection.
    async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return head;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let start = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        while head.len() < start + len {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        head
    }

    /// Serves one connection with `reply` after reading the request, and hands the
    /// request (head and body) back.
    async fn one_shot(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let head = read_head(&mut s).await;
            s.write_all(&reply).await.unwrap();
            let _ = s.shutdown().await;
            String::from_utf8_lossy(&head).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn sends_method_path_and_headers_and_reads_the_body() {
        let (base, task) =
            one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()).await;
        let r = send(
            Request::put(&format!("{base}/latest/api/token?x=1"))
                .header("x-aws-ec2-metadata-token-ttl-seconds", "21600"),
            &Options::default(),
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let head = task.await.unwrap();
        assert!(
            head.starts_with("PUT /latest/api/token?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_post_carries_its_body_and_content_type() {
        let (base, task) =
            one_shot(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}".to_vec()).await;
        let body = br#"{"kind":"TokenReview"}"#.to_vec();
        let r = send(
            Request::post(&format!("{base}/apis"), "application/json", body.clone()),
            &Options::default(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201);
        let head = task.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /apis http/1.1\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(
            head.ends_with("\r\n\r\n{\"kind\":\"tokenreview\"}"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn chunked_answers_and_error_statuses_are_read() {
        let (base, _task) = one_shot(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n found\r\n0\r\n\r\n"
                .to_vec(),
        )
        .await;
        let r = send(Request::get(&base), &Options::default())
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body_excerpt(), "not found");
    }

    #[tokio::test]
    async fn oversized_slow_and_absent_servers_are_errors() {
        let (base, _task) =
            one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec()).await;
        let opts = Options {
            max_body: 4,
            ..Options::default()
        };
        let e = send(Request::get(&base), &opts).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 4, .. }), "{e}");

        // Accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let opts = Options {
            timeout: Duration::from_millis(200),
            ..Options::default()
        };
        let e = send(Request::get(&url), &opts).await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        assert!(e.is_unreachable());
        drop(listener);

        let e = send(Request::get(&url), &Options::default())
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
        assert!(
            e.to_string().contains("cannot connect to 127.0.0.1:"),
            "{e}"
        );

        let e = send(Request::get("ftp://x/"), &Options::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("http or https"), "{e}");
        let e = send(Request::get("https://127.0.0.1:1/"), &Options::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("trusted roots"), "{e}");
    }

    #[tokio::test]
    async fn unix_sockets_carry_requests_with_the_same_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (tx, mut heads) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            for reply in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"[..],
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"[..],
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let head = read_head(&mut s).await;
                s.write_all(reply).await.unwrap();
                let _ = s.shutdown().await;
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            }
            // Accepts and never answers.
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let r = send_unix(
            &path,
            Request::get("/v1.41/containers/abc/json"),
            &Options::default(),
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("GET /v1.41/containers/abc/json HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("host: localhost\r\n"),
            "{head}"
        );
        let opts = Options {
            max_body: 4,
            timeout: Duration::from_millis(300),
            ..Options::default()
        };
        let e = send_unix(&path, Request::get("/x"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 4, .. }), "{e}");
        let e = send_unix(&path, Request::get("/slow"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("engine.sock"), "{e}");
        server.abort();

        let e = send_unix(&dir.path().join("absent.sock"), Request::get("/x"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("absent.sock"), "{e}");
        let e = send_unix(&path, Request::get("http://x/"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::BadUrl { .. }), "{e}");
    }
}
