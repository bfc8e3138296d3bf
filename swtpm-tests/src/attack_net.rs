//! Hostile clients for the attack tests: connections opened and held from a chosen
//! source address (loopback has a whole /8, so 127.0.0.2 and 127.0.0.3 are distinct
//! peers on one machine), a hostile local user holding Workload API connections (as
//! another UID), and raw agent API calls from a chosen address.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::tls::SharedBundle;
use tessera_core::{Bundle, TrustDomain};
use tessera_proto::agent as pb;
use tessera_proto::agent::node_client::NodeClient;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Server, python, repo_root};

/// How long a refused connection may take to be closed by the listener.
const SETTLE: Duration = Duration::from_millis(400);
/// Connections opened before checking which the listener kept.
const BATCH: usize = 16;

/// Connections a hostile peer managed to hold.
#[derive(Debug)]
pub struct Held {
    pub streams: Vec<TcpStream>,
    /// Connections the listener closed at once.
    pub refused: usize,
}

/// A TCP connection from `source` to `target`.
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Whether the listener has closed this connection (it sends nothing before the
/// client speaks, so any readable end means closed).
pub fn is_closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Opens idle connections from `source`, a batch at a time, until a whole batch is
/// closed by the listener or `most` are held.
pub async fn hold_tcp(source: IpAddr, target: SocketAddr, most: usize) -> Held {
    let mut held = Vec::new();
    let mut refused = 0;
    while held.len() < most {
        let mut batch = Vec::new();
        for _ in 0..BATCH.min(most - held.len()) {
            match connect_from(source, target).await {
                Ok(s) => batch.push(s),
                Err(_) => refused += 1,
            }
        }
        tokio::time::sleep(SETTLE).await;
        let before = held.len();
        for s in batch {
            if is_closed(&s) {
                refused += 1;
            } else {
                held.push(s);
            }
        }
        if held.len() == before {
            break;
        }
    }
    Held {
        streams: held,
        refused,
    }
}

/// Waits until the listener closes `s`, at most `limit`; whether it did.
pub async fn closed_within(s: &TcpStream, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if is_closed(s) {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        let _ = tokio::time::timeout_at(end, s.readable()).await;
        if is_closed(s) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's bundle as the trust an agent would bootstrap with.
pub fn server_trust(server: &Server) -> Arc<SharedBundle> {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let pem = server.cli_ok(&["bundle", "show"]);
    let roots = tessera_core::x509::pem_certs(pem.as_bytes()).expect("bundle PEM");
    SharedBundle::new(Bundle::with_x509(td, roots))
}

/// An agent API client whose connection comes from `source`, verifying the server as
/// agents do (no client certificate: what an unattested peer can do).
pub fn node_client_from(
    source: IpAddr,
    server: &Server,
    trust: Arc<SharedBundle>,
) -> NodeClient<Channel> {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let server_id = td.id("/spire/server").expect("server ID");
    let config = Arc::new(tessera_core::tls::client_config(trust, server_id, None));
    let connector = tokio_rustls::TlsConnector::from(config);
    let target: SocketAddr = server.address().parse().expect("server address");
    let ch = Endpoint::from_static("http://tessera-server")
        .timeout(Duration::from_secs(30))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = connect_from(source, target).await?;
                let name = rustls::pki_types::ServerName::try_from("tessera-server")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    NodeClient::new(ch)
}

/// A CSR for a fresh key.
pub fn fresh_csr() -> Vec<u8> {
    let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).expect("key"));
    tessera_core::x509::build_csr(&key).expect("CSR")
}

/// The first attestation message for a join token.
pub fn join_token_params(token: &str) -> pb::AttestRequest {
    pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestationParams {
            attestor: "join_token".into(),
            payload: token.as_bytes().to_vec(),
            csr: fresh_csr(),
        })),
    }
}

/// Attests with a join token; the agent ID on success.
pub async fn attest_join_token(
    client: &mut NodeClient<Channel>,
    token: &str,
) -> Result<String, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(join_token_params(token))
        .await
        .map_err(|_| tonic::Status::internal("channel closed"))?;
    let mut inbound = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(pb::AttestResponse {
            step: Some(pb::attest_response::Step::Result(r)),
        }) => Ok(r.spiffe_id),
        other => Err(tonic::Status::internal(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Whether this process may act as other users (the tests that need a second local
/// user run as root, as the project's test script does).
pub fn can_switch_users() -> bool {
    crate::my_uid() == 0
}

/// A command run as `uid` (and gid `uid`, no supplementary groups) through setpriv.
pub fn as_user(uid: u32, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program);
    cmd
}

/// Runs `tessera-agent <args> --socket-path <socket>` as `uid`.
pub fn agent_cli_as(uid: u32, socket: &Path, args: &[&str]) -> Output {
    as_user(uid, &crate::bin("tessera-agent"))
        .args(args)
        .arg("--socket-path")
        .arg(socket)
        .output()
        .expect("tessera-agent as another user")
}

/// A local user holding as many Workload API connections as the agent lets it keep
/// (`swtpm-tests/py/hold_connections.py` run as `uid`); released on drop.
#[derive(Debug)]
pub struct UnixHog {
    child: Child,
    stdin: Option<ChildStdin>,
    pub held: usize,
    pub refused: usize,
}

impl UnixHog {
    /// Starts the hog and waits until it has held all it can (at most `most`).
    pub fn start(uid: u32, socket: &Path, most: usize) -> Self {
        use std::io::BufRead;
        let script = repo_root()
            .join("swtpm-tests")
            .join("py")
            .join("hold_connections.py");
        let mut child = as_user(uid, &python())
            .arg(&script)
            .arg(socket)
            .arg(most.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hold_connections.py");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("hold_connections.py output");
        let mut words = line.split_whitespace();
        let mut field = |name: &str| -> usize {
            assert_eq!(
                words.next(),
                Some(name),
                "hold_connections.py said {line:?}"
            );
            words
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("hold_connections.py said {line:?}"))
        };
        let held = field("held");
        let refused = field("refused");
        Self {
            child,
            stdin,
            held,
            refused,
        }
    }
}

impl Drop for UnixHog {
    fn drop(&mut self) {
        // Closing stdin ends the script, which closes every connection.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
