//! Fault injection for the end-to-end tests: a TCP proxy the test controls (it can
//! refuse, black-hole, delay or drop what the server answers), signals to processes,
//! a small tmpfs that fills up, a private PostgreSQL cluster that can be stopped and
//! crashed, and an agent API client that presents a given SVID.
//!
//! Everything here is generic: the proxy knows nothing of Tessera beyond where TLS
//! records start and end (the record header is in clear), which is what it takes to
//! lose one answer of a TLS connection without corrupting the ones before it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{repo_root, run_ok};

/// What the proxy does with connections and with the server's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Accepts connections and closes them at once (the server is down, but the
    /// address answers, as behind a load balancer).
    Refuse,
    /// Accepts connections and never answers (a network that swallows packets).
    Blackhole,
    /// Forwards, but holds every chunk the server sends for this long.
    DelayReplies(Duration),
    /// Forwards, but drops the next `count` TLS records of at least `min_len` bytes
    /// the server sends after the client finished its handshake, closing each
    /// connection that lost one (the rest of a TLS stream cannot be read without
    /// it). The server did the work; the client never hears of it. Small records
    /// (HTTP/2 settings, pings, acknowledgements) pass.
    DropReplies { min_len: usize, count: u32 },
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    target: Mutex<SocketAddr>,
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    accepted: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims one record to drop, if the mode still wants one dropped.
    fn claim_drop(&self, len: usize) -> bool {
        let mut mode = self.mode.lock().unwrap_or_else(|p| p.into_inner());
        if let Mode::DropReplies { min_len, count } = *mode
            && count > 0
            && len >= min_len
        {
            *mode = if count == 1 {
                Mode::Pass
            } else {
                Mode::DropReplies {
                    min_len,
                    count: count - 1,
                }
            };
            self.dropped.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        false
    }

    fn close(&self, id: u64) {
        if let Some((a, b)) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy on a free loopback port, forwarding to a target the test may change.
/// Stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy to `target` (`host:port`) in [`Mode::Pass`].
    pub fn start(target: &str) -> Self {
        let target: SocketAddr = target.parse().expect("proxy target host:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            target: Mutex::new(target),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(&listener, &s));
        Self { addr, shared }
    }

    /// `127.0.0.1:<port>`, what clients should dial.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Changes what the proxy does from now on (open connections included).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Points new connections at another address (a restarted server on a new port).
    pub fn set_target(&self, target: &str) {
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) =
            target.parse().expect("proxy target host:port");
    }

    /// Closes every open connection, both ways.
    pub fn reset_all(&self) {
        let ids: Vec<u64> = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for id in ids {
            self.shared.close(id);
        }
    }

    /// How many server records [`Mode::DropReplies`] has dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        self.reset_all();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        match shared.mode() {
            Mode::Refuse => {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            Mode::Blackhole => {
                // Read and forget, so the client's writes do not block; never answer.
                thread::spawn(move || {
                    let mut sink = [0u8; 4096];
                    let mut c = client;
                    while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
                });
                continue;
            }
            _ => {}
        }
        let target = *shared.target.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = server.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (c2, s2));
        let handshake_done = Arc::new(AtomicBool::new(false));
        let (Ok(c_read), Ok(s_write)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        {
            let shared = shared.clone();
            let done = handshake_done.clone();
            thread::spawn(move || client_to_server(c_read, s_write, &done, &shared, id));
        }
        {
            let shared = shared.clone();
            thread::spawn(move || server_to_client(server, client, &handshake_done, &shared, id));
        }
    }
}

/// Reads one TLS record (header and body), or `None` at the end of the stream.
fn read_record(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 5];
    from.read_exact(&mut header).ok()?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut record = vec![0u8; 5 + len];
    record[..5].copy_from_slice(&header);
    from.read_exact(&mut record[5..]).ok()?;
    Some(record)
}

/// Whether the first byte of a stream starts a TLS handshake record.
fn looks_like_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first), Ok(1) if first[0] == 0x16)
}

fn client_to_server(
    mut from: TcpStream,
    mut to: TcpStream,
    handshake_done: &AtomicBool,
    shared: &Shared,
    id: u64,
) {
    if looks_like_tls(&from) {
        // The client's first application-data record (its encrypted Finished in TLS
        // 1.3) ends the handshake as far as the proxy can tell.
        while let Some(record) = read_record(&mut from) {
            if record[0] == 0x17 {
                handshake_done.store(true, Ordering::SeqCst);
            }
            if to.write_all(&record).is_err() {
                break;
            }
        }
    } else {
        let _ = std::io::copy(&mut from, &mut to);
    }
    shared.close(id);
}

fn server_to_client(
    mut from: TcpStream,
    mut to: TcpStream,
    handshake_done: &AtomicBool,
    shared: &Shared,
    id: u64,
) {
    let tls = looks_like_tls_reply(&from);
    loop {
        let chunk = if tls {
            match read_record(&mut from) {
                Some(r) => r,
                None => break,
            }
        } else {
            let mut buf = vec![0u8; 16 * 1024];
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    buf
                }
            }
        };
        match shared.mode() {
            Mode::DelayReplies(d) => thread::sleep(d),
            Mode::DropReplies { .. }
                if tls
                    && handshake_done.load(Ordering::SeqCst)
                    && shared.claim_drop(chunk.len()) =>
            {
                break;
            }
            _ => {}
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    shared.close(id);
}

/// Whether the server's first byte starts a TLS handshake record (waits for it).
fn looks_like_tls_reply(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first), Ok(1) if first[0] == 0x16)
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`, ...) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Whether the current user may mount file systems (the tmpfs cases need it).
pub fn can_mount() -> bool {
    let probe = tempfile::tempdir().expect("temp dir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(probe.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        let _ = Command::new("umount").arg(probe.path()).status();
    }
    ok
}

/// A tmpfs of a fixed size mounted on a directory, unmounted on drop: a disk that
/// really fills up (writes fail with ENOSPC).
#[derive(Debug)]
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`mount` syntax: `2m`, `512k`) on `dir` (created).
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir),
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Fills the file system with a ballast file (`fill`) until writes fail; returns
    /// the ballast's path. Removing it frees the space again.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("ballast");
        let mut f = std::fs::File::create(&path).expect("ballast");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A private PostgreSQL cluster, owned by one test, that may be stopped, crashed
/// (kill -9 of the postmaster) and started again; stopped when dropped.
#[derive(Debug)]
pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl PgCluster {
    /// Creates and starts a cluster in `dir` (with `scripts/postgres.sh`).
    pub fn start(dir: &Path) -> Self {
        let env = postgres_sh("start", dir);
        Self {
            dir: dir.to_owned(),
            port: env_port(&env, "PGPORT"),
        }
    }

    /// A libpq connection string for database `db`.
    pub fn connection_string(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=tessera dbname={db} connect_timeout=3",
            self.port
        )
    }

    /// A psql URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://tessera@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Runs a query with psql and returns its unaligned output.
    pub fn psql(&self, db: &str, query: &str) -> String {
        run_ok(
            Command::new("psql")
                .arg(self.url(db))
                .args(["-Atq", "-c", query]),
        )
        .trim()
        .to_owned()
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// The postmaster's PID (first line of `postmaster.pid`), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// A clean, fast shutdown (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        postgres_sh("stop", &self.dir);
    }

    /// kill -9 of the postmaster and every backend: a crash. The next start
    /// recovers from the WAL.
    pub fn crash(&self) {
        let pid = self.postmaster_pid().expect("the cluster is running");
        // The backends are the postmaster's children; kill them too, as a machine
        // crash would, or they would linger holding the shared memory.
        let children = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        signal(pid, "KILL");
        for child in children
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(child.to_string())
                .status();
        }
        crate::wait_until(Duration::from_secs(10), || {
            Command::new("kill")
                .args(["-0", &pid.to_string()])
                .output()
                .is_ok_and(|o| !o.status.success())
        });
    }

    /// Starts the cluster again on the same port.
    pub fn restart(&self) {
        let bindir = pg_bindir();
        let log = self.dir.join("server.log");
        let mut cmd = Command::new(bindir.join("pg_ctl"));
        cmd.arg("start")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "-l"])
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off -c max_connections=200",
                self.port,
                self.dir.display()
            ));
        let mut cmd = as_cluster_owner(cmd);
        run_ok(&mut cmd);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// Runs `scripts/postgres.sh COMMAND DIR`; returns what it printed.
fn postgres_sh(command: &str, dir: &Path) -> String {
    run_ok(
        Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg(command)
            .arg(dir),
    )
}

/// A port from the `export NAME='PORT'` lines `scripts/postgres.sh` prints.
fn env_port(env: &str, name: &str) -> u16 {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .map(|v| v.trim_matches('\'').to_owned())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} from scripts/postgres.sh:\n{env}"))
}

/// A PostgreSQL primary and its synchronous streaming-replication standby
/// (`scripts/postgres.sh start-ha`): commits wait for the standby. Both stopped when
/// dropped.
#[derive(Debug)]
pub struct PgHaPair {
    pub dir: PathBuf,
    pub primary: PgCluster,
    pub standby: PgCluster,
    /// The test CA both servers' certificates (for `localhost`) come from.
    pub ca_file: PathBuf,
}

impl PgHaPair {
    /// Creates and starts the pair in `dir` (which must not hold one yet).
    pub fn start(dir: &Path) -> Self {
        let env = postgres_sh("start-ha", dir);
        Self {
            dir: dir.to_owned(),
            primary: PgCluster {
                dir: dir.join("primary"),
                port: env_port(&env, "TESSERA_PG_PRIMARY_PORT"),
            },
            standby: PgCluster {
                dir: dir.join("standby"),
                port: env_port(&env, "TESSERA_PG_STANDBY_PORT"),
            },
            ca_file: dir.join("primary").join("tls").join("ca.crt"),
        }
    }

    /// Promotes the standby (`pg_ctl promote`); returns once it takes writes.
    pub fn promote_standby(&self) {
        postgres_sh("promote", &self.dir);
    }
}

/// Where pg_ctl is (as `scripts/postgres.sh` finds it).
fn pg_bindir() -> PathBuf {
    if let Ok(d) = std::env::var("POSTGRES_BINDIR") {
        return PathBuf::from(d);
    }
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output()
        && o.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if d.join("pg_ctl").exists() {
            return d;
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().expect("PostgreSQL's bin directory")
}

/// PostgreSQL refuses to run as root: run `cmd` as the `postgres` user then, as
/// `scripts/postgres.sh` does.
fn as_cluster_owner(cmd: Command) -> Command {
    if crate::my_uid() != 0 {
        return cmd;
    }
    let mut wrapped = Command::new("runuser");
    wrapped
        .args(["-u", "postgres", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

/// An SVID chain (leaf first) with its private key: what an agent presents.
pub type Identity = (Vec<Vec<u8>>, Arc<dyn tessera_core::key::Key>);

/// An agent API client to `address` that trusts `roots` (DER) for the server and,
/// with `identity`, authenticates with that SVID chain and key: what an agent holding
/// them would send, including SVIDs the real agent has since replaced. Call it
/// inside a tokio runtime.
pub fn node_client(
    address: &str,
    roots: Vec<Vec<u8>>,
    identity: Option<Identity>,
) -> tessera_proto::agent::node_client::NodeClient<tonic::transport::Channel> {
    use tessera_core::tls::{SharedBundle, SharedIdentity};
    let td = tessera_core::TrustDomain::new("example.org").expect("trust domain");
    let bundle = SharedBundle::new(tessera_core::Bundle::with_x509(td.clone(), roots));
    let shared = identity.map(|(chain, key)| {
        let id = SharedIdentity::new();
        id.set(&chain, key);
        id
    });
    tessera_agent::client::node_client(tessera_agent::client::channel(
        vec![address.to_owned()],
        td.id("/spire/server").expect("server ID"),
        tessera_agent::client::Trust::Bundle(bundle),
        shared,
    ))
}

/// Attests with a join token as an agent would, with a fresh key; returns the agent
/// SVID chain and its key.
pub async fn attest_with_join_token(
    address: &str,
    roots: Vec<Vec<u8>>,
    token: &str,
) -> Result<Identity, tonic::Status> {
    use tessera_proto::agent as pb;
    let key: Arc<dyn tessera_core::key::Key> = Arc::new(
        tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::EcP256).expect("key"),
    );
    let csr = tessera_core::x509::build_csr(&key).expect("CSR");
    let first = pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestationParams {
            attestor: "join_token".into(),
            payload: token.as_bytes().to_vec(),
            csr,
        })),
    };
    let mut client = node_client(address, roots, None);
    let mut stream = client
        .attest(tokio_stream::iter(vec![first]))
        .await?
        .into_inner();
    while let Some(msg) = stream.message().await? {
        if let Some(pb::attest_response::Step::Result(r)) = msg.step {
            return Ok((r.svid_chain, key));
        }
    }
    Err(tonic::Status::unknown(
        "the attestation ended without a result",
    ))
}

/// Renews an agent SVID with a fresh key, authenticating with `identity`; returns the
/// new chain and key.
pub async fn renew_agent(
    address: &str,
    roots: Vec<Vec<u8>>,
    identity: Identity,
) -> Result<Identity, tonic::Status> {
    let key: Arc<dyn tessera_core::key::Key> = Arc::new(
        tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::EcP256).expect("key"),
    );
    let csr = tessera_core::x509::build_csr(&key).expect("CSR");
    let resp = node_client(address, roots, Some(identity))
        .renew_agent(tessera_proto::agent::RenewAgentRequest {
            csr,
            key_certify: None,
            pcr_quote: None,
        })
        .await?
        .into_inner();
    Ok((resp.svid_chain, key))
}

/// One authenticated call (an entry sync) with `identity`: `Ok` when the server
/// accepts that SVID.
pub async fn sync_as(
    address: &str,
    roots: Vec<Vec<u8>>,
    identity: Identity,
) -> Result<(), tonic::Status> {
    node_client(address, roots, Some(identity))
        .sync_entries(tessera_proto::agent::SyncRequest::default())
        .await
        .map(|_| ())
}
