//! Dialling the servers: each configured `host:port` in order, its name resolved and
//! each address it resolves to tried in turn, until one completes a TLS handshake as
//! the server. Every step (resolving a name, the TCP connect to one address, the TLS
//! handshake with it) has its own timeout, so that a blackholed address costs that
//! timeout and not the time of the addresses after it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where a dial ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The configured server (`host:port`).
    pub server: String,
    /// The address it resolved to that answered.
    pub addr: SocketAddr,
    /// How many addresses before this one failed: 0 when the agent talks to the first
    /// server in its order, its preferred one.
    pub passed_over: usize,
    /// Why the first address failed, when one did.
    pub first_failure: Option<String>,
}

impl Link {
    /// Whether the agent fell over to a later address because an earlier one failed.
    pub fn is_fallback(&self) -> bool {
        self.passed_over > 0
    }

    /// `host:port (address)`, or the address alone when the server was given as one.
    pub fn describe(&self) -> String {
        label(&self.server, self.addr)
    }
}

fn label(server: &str, addr: SocketAddr) -> String {
    if server == addr.to_string() {
        server.to_owned()
    } else {
        format!("{server} ({addr})")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The failures of one dial so far.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    first: Option<String>,
    count: usize,
    last: Option<io::Error>,
}

impl Failures {
    fn add(&mut self, e: io::Error) {
        if self.first.is_none() {
            self.first = Some(e.to_string());
        }
        self.count += 1;
        self.last = Some(e);
    }

    /// The dial's error: the last failure (naming its address and what failed), and
    /// the first when there were more.
    fn into_error(self) -> io::Error {
        match (self.last, self.first) {
            (None, _) => io::Error::other("no server address configured"),
            (Some(last), Some(first)) if self.count > 1 => io::Error::new(
                last.kind(),
                format!(
                    "{last} (after {} failed, the first {first})",
                    plural(self.count - 1, "earlier address", "earlier addresses")
                ),
            ),
            (Some(last), _) => last,
        }
    }
}

/// Connects to the first of `servers` that completes the TLS handshake (so presents
/// the server's SVID, when the connector checks it). Each `host:port` is resolved when
/// its turn comes and every address it resolves to is tried, in the resolver's order;
/// a name that does not resolve, an address that is down, slow or not the server is
/// skipped. Resolving, connecting and the handshake each get `timeout`, per address.
/// The error names the last address tried and what failed there.
pub async fn dial(
    servers: &[String],
    connector: &TlsConnector,
    timeout: Duration,
) -> io::Result<(TlsStream<TcpStream>, Link)> {
    let mut failures = Failures::default();
    for server in servers {
        let addrs = match resolve(server, timeout).await {
            Ok(a) => a,
            Err(e) => {
                failures.add(e);
                continue;
            }
        };
        if let Some(found) = connect_each(server, &addrs, connector, timeout, &mut failures).await {
            return Ok(found);
        }
    }
    Err(failures.into_error())
}

/// The addresses `server` (`host:port`) resolves to.
async fn resolve(server: &str, timeout: Duration) -> io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host(server)).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{server}: the name resolves to no address"),
                ))
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("{server}: cannot resolve the name: {e}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{server}: resolving the name timed out after {timeout:?}"),
        )),
    }
}

/// Tries each of `addrs` (what `server` resolved to) in turn; the first that completes
/// the handshake is the link, counted after the failures before it.
pub(crate) async fn connect_each(
    server: &str,
    addrs: &[SocketAddr],
    connector: &TlsConnector,
    timeout: Duration,
    failures: &mut Failures,
) -> Option<(TlsStream<TcpStream>, Link)> {
    for &addr in addrs {
        match connect_one(server, addr, connector, timeout).await {
            Ok(tls) => {
                let link = Link {
                    server: server.to_owned(),
                    addr,
                    passed_over: failures.count,
                    first_failure: failures.first.clone(),
                };
                return Some((tls, link));
            }
            Err(e) => failures.add(e),
        }
    }
    None
}

async fn connect_one(
    server: &str,
    addr: SocketAddr,
    connector: &TlsConnector,
    timeout: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    let at = label(server, addr);
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("{at}: {e}"))),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{at}: connect timed out after {timeout:?}"),
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(timeout, connector.connect(server_name(server), tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{at}: TLS: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{at}: TLS handshake timed out after {timeout:?}"),
        )),
    }
}

/// The TLS server name for `host:port` (only sent as SNI: the server is authenticated
/// by its SPIFFE ID, not by name).
fn server_name(addr: &str) -> rustls::pki_types::ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .unwrap_or_else(|_| {
            rustls::pki_types::ServerName::try_from("tessera-server")
                .unwrap_or_else(|_| unreachable!("a literal DNS name"))
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Instant, SystemTime};

    use tessera_core::tls::SharedBundle;

    use super::*;
    use crate::testing::{TestPki, id, net};

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn connector(pki: &TestPki) -> TlsConnector {
        TlsConnector::from(Arc::new(tessera_core::tls::client_config(
            SharedBundle::new(pki.bundle().clone()),
            id("/spire/server"),
            None,
        )))
    }

    fn peer(tls: &TlsStream<TcpStream>) -> String {
        tls.get_ref().0.peer_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn servers_that_are_down_or_not_the_server_are_skipped_in_order() {
        let pki = TestPki::new(SystemTime::now());
        let down = net::refused();
        let not_tls = net::closes().await;
        let impostor = net::node_server(&pki, &id("/not-the-server"), 1).await;
        let good = net::node_server(&pki, &id("/spire/server"), 2).await;
        let later = net::node_server(&pki, &id("/spire/server"), 3).await;
        let servers = [down.clone(), not_tls, impostor, good.clone(), later];
        let (tls, link) = dial(&servers, &connector(&pki), TIMEOUT).await.unwrap();
        // The first that proved to be the server, not a later one.
        assert_eq!(peer(&tls), good);
        assert_eq!((link.server.as_str(), link.passed_over), (good.as_str(), 3));
        assert!(link.is_fallback());
        assert!(
            link.first_failure
                .as_deref()
                .is_some_and(|f| f.starts_with(&format!("{down}: "))),
            "{link:?}"
        );
        // The first works: not a fallback.
        let (_, link) = dial(&servers[3..], &connector(&pki), TIMEOUT)
            .await
            .unwrap();
        assert_eq!((link.passed_over, link.first_failure.as_deref()), (0, None));
        assert!(!link.is_fallback());
        // None works: the error names the last address tried.
        let e = dial(std::slice::from_ref(&down), &connector(&pki), TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with(&format!("{down}: ")), "{e}");
        let e = dial(&[], &connector(&pki), TIMEOUT).await.unwrap_err();
        assert_eq!(e.to_string(), "no server address configured");
    }

    #[tokio::test]
    async fn every_address_of_a_name_is_tried_each_with_its_own_timeout() {
        let pki = TestPki::new(SystemTime::now());
        let good: SocketAddr = net::node_server(&pki, &id("/spire/server"), 1)
            .await
            .parse()
            .unwrap();
        let refused: SocketAddr = net::refused().parse().unwrap();
        let hole = net::Blackhole::new().await;
        let impostor: SocketAddr = net::node_server(&pki, &id("/not-the-server"), 2)
            .await
            .parse()
            .unwrap();
        // A name that resolved to four addresses, the server last: the blackholed one
        // costs its own timeout, and the others are still tried.
        let timeout = Duration::from_millis(500);
        let name = "servers.example.org:8081";
        let start = Instant::now();
        let mut failures = Failures::default();
        let (tls, link) = connect_each(
            name,
            &[refused, hole.addr, impostor, good],
            &connector(&pki),
            timeout,
            &mut failures,
        )
        .await
        .unwrap();
        assert_eq!(peer(&tls), good.to_string());
        assert!(start.elapsed() < 4 * timeout, "{:?}", start.elapsed());
        assert_eq!(link.addr, good);
        assert_eq!(link.passed_over, 3);
        assert_eq!(link.describe(), format!("{name} ({good})"));
        assert!(
            link.first_failure
                .as_deref()
                .is_some_and(|f| f.starts_with(&format!("{name} ({refused}): "))),
            "{link:?}"
        );
        // All fail: the error is the last, naming the name and the address; the
        // blackhole says it timed out.
        let mut failures = Failures::default();
        assert!(
            connect_each(
                name,
                &[hole.addr, refused],
                &connector(&pki),
                timeout,
                &mut failures
            )
            .await
            .is_none()
        );
        let e = failures.into_error().to_string();
        assert!(e.starts_with(&format!("{name} ({refused}): ")), "{e}");
        assert!(
            e.contains(&format!(
                "the first {name} ({}): connect timed out",
                hole.addr
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_skipped() {
        let pki = TestPki::new(SystemTime::now());
        let good = net::node_server(&pki, &id("/spire/server"), 1).await;
        let port = good.rsplit_once(':').unwrap().1;
        let by_name = format!("localhost:{port}");
        let servers = ["no-such-server.invalid:8081".to_owned(), by_name.clone()];
        let (tls, link) = dial(&servers, &connector(&pki), TIMEOUT).await.unwrap();
        assert_eq!(peer(&tls), good);
        assert_eq!(link.server, by_name);
        // Where `localhost` also resolves to ::1 (before 127.0.0.1), that address is
        // passed over too.
        assert!(link.passed_over >= 1, "{link:?}");
        // What failed is named; how depends on the resolver (no such name, or no
        // answer within the step timeout).
        let first = link.first_failure.unwrap();
        assert!(
            first.starts_with("no-such-server.invalid:8081: ") && first.contains("resol"),
            "{first}"
        );
        let e = dial(&servers[..1], &connector(&pki), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with("no-such-server.invalid:8081: "),
            "{e}"
        );
    }
}
