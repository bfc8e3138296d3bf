//! Helpers for the agent's unit tests: a CA for `example.org`, a fake server that
//! answers the agent API from memory (signing with that CA, by an injected clock),
//! a node attestor without evidence, and an agent wired to them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tessera_core::clock::SharedClock;
use tessera_core::key::{Key, KeyType, MemoryKeyManager, SoftwareKey};
use tessera_core::x509::{self, Issuer, SvidTemplate};
use tessera_core::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use tessera_proto::agent as pb;

use crate::attestor::{AttestError, NodeAttestor, Session};
use crate::client::Trust;
use crate::config::AgentConfig;
use crate::manager::{Agent, Parts};
use crate::protocol::{ServerApi, ServerError};

pub(crate) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub(crate) fn id(path: &str) -> SpiffeId {
    td().id(path).unwrap()
}

/// A root CA for `example.org`, valid for ten years from `now`.
#[derive(Debug)]
pub(crate) struct TestPki {
    issuer: Issuer,
    bundle: Bundle,
}

impl TestPki {
    pub(crate) fn new(now: SystemTime) -> Self {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let year = Duration::from_secs(365 * 86400);
        let root =
            x509::self_signed_ca(&td(), "test root", &key, now - year, now + 10 * year).unwrap();
        let mut bundle = Bundle::with_x509(td(), vec![root.clone()]);
        bundle.set_sequence(1);
        Self {
            issuer: Issuer::new(root, key).unwrap(),
            bundle,
        }
    }

    pub(crate) fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// An X509-SVID for `id` over the public key `spki`, issued at `now`.
    pub(crate) fn leaf(
        &self,
        id: &SpiffeId,
        spki: &[u8],
        now: SystemTime,
        ttl: Duration,
    ) -> Vec<u8> {
        x509::sign_x509_svid(
            &SvidTemplate {
                spiffe_id: id,
                public_key_der: spki,
                dns_names: &[],
                ttl,
                now,
            },
            &self.issuer,
        )
        .unwrap()
    }

    /// A key and its SVID for `id`, issued at `now` for an hour.
    pub(crate) fn identity(&self, id: &SpiffeId, now: SystemTime) -> (Vec<Vec<u8>>, Arc<dyn Key>) {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let leaf = self.leaf(id, key.public_key_der(), now, Duration::from_secs(3600));
        (vec![leaf], key)
    }
}

/// A node attestor whose evidence is a constant (the fake server takes anything).
#[derive(Debug)]
pub(crate) struct TestAttestor {
    pub(crate) reattest: bool,
}

struct TestSession;

#[async_trait]
impl Session for TestSession {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        Ok(b"test".to_vec())
    }
    async fn answer(&mut self, _: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        Err(AttestError::Failed("no challenge expected".into()))
    }
}

impl NodeAttestor for TestAttestor {
    fn name(&self) -> &'static str {
        "test"
    }
    fn can_reattest(&self) -> bool {
        self.reattest
    }
    fn session(&self) -> Box<dyn Session> {
        Box::new(TestSession)
    }
}

/// What the fake server does and what it was asked.
#[derive(Debug)]
pub(crate) struct FakeState {
    /// Every call fails as an unreachable server does.
    pub(crate) down: bool,
    /// Calls on the agent's SVID are refused, as for an evicted agent (attesting
    /// again clears it).
    pub(crate) evicted: bool,
    /// Entries whose SVIDs are refused.
    pub(crate) refuse: BTreeSet<String>,
    pub(crate) entries: BTreeMap<String, RegistrationEntry>,
    pub(crate) revision: u64,
    pub(crate) agent_ttl: Duration,
    pub(crate) svid_ttl: Duration,
    /// Every call, answered or not.
    pub(crate) calls: u32,
    pub(crate) attests: u32,
    pub(crate) syncs: u32,
    /// Entry IDs, one per SVID asked for.
    pub(crate) asked: Vec<String>,
    /// Entry IDs, one per SVID signed.
    pub(crate) signed: Vec<String>,
    pub(crate) renewals: u32,
    pub(crate) jwts: u32,
    /// When the last agent SVID issued expires: a real server's TLS handshake
    /// refuses it from then on, which the agent sees as a broken connection.
    pub(crate) agent_not_after: Option<i64>,
}

/// A server answering the agent API from memory, by `clock`.
#[derive(Debug)]
pub(crate) struct FakeServer {
    pub(crate) pki: TestPki,
    clock: SharedClock,
    state: Mutex<FakeState>,
}

impl FakeServer {
    pub(crate) fn new(clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            pki: TestPki::new(clock.now()),
            clock,
            state: Mutex::new(FakeState {
                down: false,
                evicted: false,
                refuse: BTreeSet::new(),
                entries: BTreeMap::new(),
                revision: 0,
                agent_ttl: Duration::from_secs(3600),
                svid_ttl: Duration::from_secs(3600),
                calls: 0,
                attests: 0,
                syncs: 0,
                asked: Vec::new(),
                signed: Vec::new(),
                renewals: 0,
                jwts: 0,
                agent_not_after: None,
            }),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Registers an entry (a new revision) for `path` with `selectors`.
    pub(crate) fn add_entry(&self, entry_id: &str, path: &str, selectors: &[&str]) {
        self.add_entry_keyed(entry_id, path, selectors, Default::default());
    }

    /// [`Self::add_entry`] whose key is born as `workload_key` says.
    pub(crate) fn add_entry_keyed(
        &self,
        entry_id: &str,
        path: &str,
        selectors: &[&str],
        workload_key: tessera_core::WorkloadKey,
    ) {
        let mut st = self.state();
        st.revision += 1;
        let e = RegistrationEntry {
            id: entry_id.into(),
            spiffe_id: id(path),
            parent_id: id("/spire/agent/test"),
            selectors: selectors
                .iter()
                .map(|s| s.parse::<Selector>().unwrap())
                .collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            dns_names: Vec::new(),
            hint: String::new(),
            expires_at: 0,
            revision_number: st.revision,
            created_at: 0,
            workload_key,
        };
        st.entries.insert(entry_id.into(), e);
    }

    fn check(&self, on_svid: bool) -> Result<MutexGuard<'_, FakeState>, ServerError> {
        let mut st = self.state();
        st.calls += 1;
        if st.down {
            return Err(ServerError::Unavailable(
                "connection refused (Unavailable)".into(),
            ));
        }
        if on_svid && st.agent_not_after.is_some_and(|na| na <= self.clock.unix()) {
            return Err(ServerError::Unavailable(
                "TLS: the client certificate has expired (Unavailable)".into(),
            ));
        }
        if on_svid && st.evicted {
            return Err(ServerError::Rejected("the agent is not attested".into()));
        }
        Ok(st)
    }

    /// An agent SVID for attestation `n`.
    fn agent_svid(&self, n: u32, csr: &[u8], ttl: Duration) -> Vec<u8> {
        let leaf = self.sign(&id(&format!("/spire/agent/test/{n}")), csr, ttl);
        let na = x509::cert_info(&leaf).unwrap().not_after;
        self.state().agent_not_after = Some(na);
        leaf
    }

    fn sign(&self, id: &SpiffeId, csr: &[u8], ttl: Duration) -> Vec<u8> {
        let spki = x509::csr_public_key(csr, None).unwrap();
        self.pki.leaf(id, &spki, self.clock.now(), ttl)
    }
}

#[async_trait]
impl ServerApi for FakeServer {
    async fn attest(
        &self,
        _trust: Trust,
        attestor: &dyn NodeAttestor,
        csr: Vec<u8>,
    ) -> Result<pb::AttestResult, ServerError> {
        drop(self.check(false)?);
        let payload = attestor
            .session()
            .payload()
            .await
            .map_err(crate::protocol::from_attestor)?;
        assert_eq!(payload, b"test");
        let (n, ttl) = {
            let mut st = self.state();
            st.attests += 1;
            st.evicted = false;
            (st.attests, st.agent_ttl)
        };
        Ok(pb::AttestResult {
            spiffe_id: id(&format!("/spire/agent/test/{n}")).to_string(),
            svid_chain: vec![self.agent_svid(n, &csr, ttl)],
            bundle: Some(tessera_proto::convert::bundle_to_proto(self.pki.bundle())),
            can_reattest: attestor.can_reattest(),
        })
    }

    async fn sync_entries(&self, req: pb::SyncRequest) -> Result<pb::SyncResponse, ServerError> {
        let mut st = self.check(true)?;
        st.syncs += 1;
        let all: Vec<&RegistrationEntry> = st.entries.values().collect();
        let digest = tessera_core::entry::revision_digest(
            all.iter().map(|e| (e.id.as_str(), e.revision_number)),
        );
        let full_list = digest != req.known_digest;
        let entries = all
            .iter()
            .filter(|e| e.revision_number > req.known_revision || req.want_ids.contains(&e.id))
            .map(|e| tessera_proto::convert::entry_to_proto(e))
            .collect();
        let authorized = if full_list {
            all.iter()
                .map(|e| pb::EntryRevision {
                    id: e.id.clone(),
                    revision_number: e.revision_number,
                })
                .collect()
        } else {
            Vec::new()
        };
        let bundle = (req.bundle_sequence != self.pki.bundle().sequence())
            .then(|| tessera_proto::convert::bundle_to_proto(self.pki.bundle()));
        Ok(pb::SyncResponse {
            revision: st.revision,
            entries,
            full_list,
            authorized,
            bundle,
            federated_bundles: Vec::new(),
        })
    }

    async fn batch_new_x509_svid(
        &self,
        requests: Vec<pb::SvidRequest>,
    ) -> Result<Vec<pb::SvidResult>, ServerError> {
        let ttl = self.check(true)?.svid_ttl;
        let mut out = Vec::new();
        for r in requests {
            let (entry, refused) = {
                let mut st = self.state();
                st.asked.push(r.entry_id.clone());
                (
                    st.entries.get(&r.entry_id).cloned(),
                    st.refuse.contains(&r.entry_id),
                )
            };
            let Some(entry) = entry.filter(|_| !refused) else {
                out.push(pb::SvidResult {
                    entry_id: r.entry_id,
                    status: Some(tessera_proto::types::Status {
                        code: 7,
                        message: "not authorized".into(),
                    }),
                    cert_chain: Vec::new(),
                    expires_at: 0,
                });
                continue;
            };
            let leaf = self.sign(&entry.spiffe_id, &r.csr, ttl);
            self.state().signed.push(entry.id.clone());
            out.push(pb::SvidResult {
                entry_id: r.entry_id,
                status: None,
                cert_chain: vec![leaf],
                expires_at: 0,
            });
        }
        Ok(out)
    }

    async fn renew_agent(&self, csr: Vec<u8>) -> Result<Vec<Vec<u8>>, ServerError> {
        let (n, ttl) = {
            let mut st = self.check(true)?;
            st.renewals += 1;
            (st.attests, st.agent_ttl)
        };
        Ok(vec![self.agent_svid(n, &csr, ttl)])
    }

    async fn new_jwt_svid(
        &self,
        entry_id: String,
        _audience: Vec<String>,
    ) -> Result<pb::NewJwtSvidResponse, ServerError> {
        let mut st = self.check(true)?;
        st.jwts += 1;
        let now = self.clock.unix();
        Ok(pb::NewJwtSvidResponse {
            token: format!("jwt-{entry_id}-{}", st.jwts),
            issued_at: now,
            expires_at: now + 300,
        })
    }

    fn reconnect(&self) {}
}

/// An agent configuration for tests, its state in `dir`.
pub(crate) fn config(dir: &Path, sync_interval: &str) -> AgentConfig {
    AgentConfig::parse(&format!(
        "trust_domain = \"example.org\"\nserver_address = \"127.0.0.1\"\ninsecure_bootstrap = true\n\
         data_dir = \"{}\"\nsync_interval = \"{sync_interval}\"\n",
        dir.display()
    ))
    .unwrap()
}

/// An agent of `server`, on `clock`, its state in `dir`.
pub(crate) fn agent(
    dir: &Path,
    server: &Arc<FakeServer>,
    clock: &SharedClock,
    reattest: bool,
) -> Arc<Agent> {
    Agent::with_parts(
        config(dir, "1s"),
        Parts {
            km: Arc::new(MemoryKeyManager::new()),
            attestor: Some(Arc::new(TestAttestor { reattest })),
            clock: clock.clone(),
            server: Some(server.clone()),
        },
    )
    .unwrap()
}

/// Real servers on loopback, for the client's address selection.
pub(crate) mod net {
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tessera_core::SpiffeId;
    use tessera_core::tls::{SharedBundle, SharedIdentity};
    use tessera_proto::agent as pb;
    use tessera_proto::agent::node_server::{Node, NodeServer};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;
    use tonic::transport::server::Connected;
    use tonic::{Request, Response, Status, Streaming};

    use super::TestPki;

    /// An address nothing listens on.
    pub(crate) fn refused() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    /// An address whose connects hang, as at a host behind a firewall that drops
    /// packets: a listener whose accept queue is full, so that the kernel drops
    /// further SYNs. Lives as long as the value.
    pub(crate) struct Blackhole {
        pub(crate) addr: SocketAddr,
        _listener: TcpListener,
        _queued: Vec<TcpStream>,
    }

    impl Blackhole {
        pub(crate) async fn new() -> Self {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let listener = socket.listen(0).unwrap();
            let addr = listener.local_addr().unwrap();
            let mut queued = Vec::new();
            for _ in 0..16 {
                let probe = TcpStream::connect(addr);
                match tokio::time::timeout(Duration::from_millis(200), probe).await {
                    Ok(Ok(s)) => queued.push(s),
                    Ok(Err(e)) => panic!("filling the accept queue of {addr}: {e}"),
                    Err(_) => {
                        return Self {
                            addr,
                            _listener: listener,
                            _queued: queued,
                        };
                    }
                }
            }
            panic!("the accept queue of {addr} never filled");
        }
    }

    /// An address that accepts connections and closes them at once (a port that is
    /// not a TLS server).
    pub(crate) async fn closes() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        addr
    }

    struct Tls(TlsStream<TcpStream>);

    impl Connected for Tls {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    impl AsyncRead for Tls {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Tls {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    /// Answers `SyncEntries` with its revision; nothing else. A sync saying it knows
    /// revision N is answered after N milliseconds, so that a test can hold a call in
    /// flight.
    #[derive(Debug)]
    struct SyncOnly(u64);

    type AttestStream =
        Pin<Box<dyn futures::Stream<Item = Result<pb::AttestResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl Node for SyncOnly {
        type AttestStream = AttestStream;
        async fn attest(
            &self,
            _: Request<Streaming<pb::AttestRequest>>,
        ) -> Result<Response<AttestStream>, Status> {
            Err(Status::unimplemented("attest"))
        }
        async fn renew_agent(
            &self,
            _: Request<pb::RenewAgentRequest>,
        ) -> Result<Response<pb::RenewAgentResponse>, Status> {
            Err(Status::unimplemented("renew"))
        }
        async fn sync_entries(
            &self,
            req: Request<pb::SyncRequest>,
        ) -> Result<Response<pb::SyncResponse>, Status> {
            tokio::time::sleep(Duration::from_millis(req.get_ref().known_revision)).await;
            Ok(Response::new(pb::SyncResponse {
                revision: self.0,
                ..Default::default()
            }))
        }
        async fn batch_new_x509_svid(
            &self,
            _: Request<pb::BatchNewX509SvidRequest>,
        ) -> Result<Response<pb::BatchNewX509SvidResponse>, Status> {
            Err(Status::unimplemented("sign"))
        }
        async fn new_jwt_svid(
            &self,
            _: Request<pb::NewJwtSvidRequest>,
        ) -> Result<Response<pb::NewJwtSvidResponse>, Status> {
            Err(Status::unimplemented("jwt"))
        }
    }

    /// TLS as a server presenting an SVID for `id` from `pki`.
    fn acceptor(pki: &TestPki, id: &SpiffeId) -> TlsAcceptor {
        let (chain, key) = pki.identity(id, std::time::SystemTime::now());
        let identity = SharedIdentity::new();
        identity.set(&chain, key);
        let bundle = SharedBundle::new(pki.bundle().clone());
        TlsAcceptor::from(Arc::new(tessera_core::tls::server_config(identity, bundle)))
    }

    /// Serves the agent API (as [`SyncOnly`]) on `l` until dropped.
    async fn serve(l: TcpListener, acceptor: TlsAcceptor, node: SyncOnly) {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Tls>>(8);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        let _ = tx.send(Ok(Tls(tls))).await;
                    }
                });
            }
        });
        let _ = tonic::transport::Server::builder()
            .add_service(NodeServer::new(node))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
    }

    /// An agent API server on loopback presenting an SVID for `id` from `pki`, whose
    /// syncs answer with `revision` (so that a test can tell servers apart).
    pub(crate) async fn node_server(pki: &TestPki, id: &SpiffeId, revision: u64) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(serve(l, acceptor(pki, id), SyncOnly(revision)));
        addr
    }

    /// A [`node_server`] in a runtime of its own, on a thread of its own, so that it
    /// can be killed as its process would die (the listener and every connection
    /// closed at once, whatever they were doing) and started again on its address.
    pub(crate) struct NodeProcess {
        pub(crate) addr: String,
        stop: Option<tokio::sync::mpsc::UnboundedSender<Signal>>,
        /// Held while the server is frozen; dropped to thaw it.
        thaw: Option<std::sync::mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    enum Signal {
        Freeze(std::sync::mpsc::Receiver<()>),
        Kill,
    }

    impl NodeProcess {
        /// Starts on `addr` (`127.0.0.1:0` for any port).
        pub(crate) fn start(pki: &TestPki, id: &SpiffeId, revision: u64, addr: &str) -> Self {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let acceptor = acceptor(pki, id);
            let (stop, mut signals) = tokio::sync::mpsc::unbounded_channel::<Signal>();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let l = TcpListener::from_std(listener).unwrap();
                    tokio::spawn(serve(l, acceptor, SyncOnly(revision)));
                    while let Some(Signal::Freeze(thaw)) = signals.recv().await {
                        // Blocks the runtime's one thread: nothing is answered, and
                        // the kernel still accepts connections and keeps them open.
                        let _ = thaw.recv();
                    }
                });
                // Dropping the runtime drops all its tasks, and with them the
                // listener and every connection.
                drop(rt);
            });
            Self {
                addr,
                stop: Some(stop),
                thaw: None,
                thread: Some(thread),
            }
        }

        /// Hangs it, as a process that stopped answering (or a host that vanished
        /// behind a live connection): until killed, it answers nothing, not even a
        /// TLS handshake.
        pub(crate) fn freeze(&mut self) {
            let (thaw, frozen) = std::sync::mpsc::channel();
            if let Some(stop) = &self.stop {
                let _ = stop.send(Signal::Freeze(frozen));
            }
            self.thaw = Some(thaw);
        }

        /// Stops it as a killed process stops.
        pub(crate) fn kill(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(Signal::Kill);
            }
            self.thaw = None;
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    impl Drop for NodeProcess {
        fn drop(&mut self) {
            self.kill();
        }
    }
}
