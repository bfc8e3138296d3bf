//! Fault injection for the agent's end-to-end tests: [`FaultProxy`], a TCP proxy the
//! test puts between an agent and its server and steers while it runs (forward,
//! refuse as a dead server would, lose the server's answers, delay them), counting
//! the connections it is asked for; a Workload API client that reports what a
//! workload sees, error codes included; and the `api watch` client as a process.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Agent, Swtpm, bin, repo_root, run_ok};

/// What [`FaultProxy`] does with traffic, switchable at any time; a switch also
/// applies to connections already open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Pass everything both ways.
    Forward,
    /// Accept and close at once, and cut open connections: a server that is down
    /// (yet every attempt is counted).
    Refuse,
    /// Pass the requests on, but when the server answers, drop the answer and cut
    /// the connection: the server did the work, the agent never hears of it.
    LoseAnswers,
    /// Hold each piece of the server's answers this long before passing it on.
    DelayAnswers(Duration),
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<ProxyMode>,
    accepted: AtomicU64,
    lost_answers: AtomicU64,
    stop: AtomicBool,
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A loopback TCP proxy in front of `upstream`; see [`ProxyMode`].
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(ProxyMode::Forward),
            accepted: AtomicU64::new(0),
            lost_answers: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let upstream = upstream.to_owned();
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                s.accepted.fetch_add(1, Ordering::SeqCst);
                if s.mode() == ProxyMode::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c), Ok(sv)) = (client.try_clone(), server.try_clone()) {
                    let mut open = s.open.lock().unwrap_or_else(|p| p.into_inner());
                    open.retain(|(c, _)| c.peer_addr().is_ok());
                    open.push((c, sv));
                }
                pump(client, server, s.clone());
            }
        });
        Self { port, shared }
    }

    /// `127.0.0.1:<port>`: what the agent is to be pointed at.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switches the mode; [`ProxyMode::Refuse`] also cuts the connections open now.
    pub fn set(&self, mode: ProxyMode) {
        *self.shared.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        if mode == ProxyMode::Refuse {
            self.cut();
        }
    }

    /// Cuts every open connection (both ways), as a network failure would.
    pub fn cut(&self) {
        let open = std::mem::take(&mut *self.shared.open.lock().unwrap_or_else(|p| p.into_inner()));
        for (c, s) in open {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far (each a connection attempt by the agent).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Server answers dropped in [`ProxyMode::LoseAnswers`] so far.
    pub fn lost_answers(&self) -> u64 {
        self.shared.lost_answers.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Either side ending ends both: shutting the sockets down wakes the other pump.
    let ends = Arc::new((client.try_clone().ok(), server.try_clone().ok()));
    let cut = move |ends: &(Option<TcpStream>, Option<TcpStream>)| {
        for s in [&ends.0, &ends.1].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    };
    let ends2 = ends.clone();
    let s2 = shared.clone();
    // Requests: always passed on (unless refusing).
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if s2.mode() == ProxyMode::Refuse || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        cut(&ends2);
    });
    // Answers: per the mode at the moment each piece arrives.
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match shared.mode() {
                ProxyMode::Forward => {}
                ProxyMode::Refuse => break,
                ProxyMode::LoseAnswers => {
                    shared.lost_answers.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                ProxyMode::DelayAnswers(d) => std::thread::sleep(d),
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        cut(&ends);
    });
}

/// Points an agent configured by [`Agent::configure`] at another server address.
pub fn point_agent_at(agent: &Agent, address: &str) {
    let text = std::fs::read_to_string(&agent.config).expect("agent config");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("server_address") {
                format!("server_address = \"{address}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&agent.config, text).expect("agent config");
}

/// What one FetchX509SVID call gave a workload.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub spiffe_ids: Vec<String>,
    /// The serial of each SVID, in the order of `spiffe_ids`.
    pub serials: Vec<String>,
    /// Of the first SVID.
    pub serial: String,
    pub not_after: i64,
    /// Whether every SVID verified against the bundle sent with it, at receipt.
    pub verified: Result<(), String>,
}

impl Fetched {
    /// The serial of the SVID for `spiffe_id`, if one was served.
    pub fn serial_of(&self, spiffe_id: &str) -> Option<&str> {
        self.spiffe_ids
            .iter()
            .position(|i| i == spiffe_id)
            .map(|n| self.serials[n].as_str())
    }
}

/// One FetchX509SVID call (first message of the stream) as this process, within
/// `timeout`: the SVIDs, each checked against the bundle sent with it at the time of
/// receipt, or the gRPC status the agent answered.
pub fn fetch_x509(agent: &Agent, timeout: Duration) -> Result<Fetched, tonic::Status> {
    use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let call = async {
            let ch = tessera_proto::unix_channel(&agent.socket)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("socket: {e}")))?;
            let mut client =
                SpiffeWorkloadApiClient::with_interceptor(ch, |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert(
                        "workload.spiffe.io",
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    Ok(r)
                });
            let mut stream = client
                .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
                .await?
                .into_inner();
            stream
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unknown("the stream ended without a message"))
        };
        let msg = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer in time"))??;
        let td = tessera_core::TrustDomain::new("example.org").expect("trust domain");
        let mut ids = Vec::new();
        let mut serials = Vec::new();
        let mut first = None;
        let mut verified = Ok(());
        for s in &msg.svids {
            let chain = tessera_core::x509::split_concatenated(&s.x509_svid).expect("SVID chain");
            let roots = tessera_core::x509::split_concatenated(&s.bundle).expect("bundle");
            let bundle = tessera_core::Bundle::with_x509(td.clone(), roots);
            match tessera_core::x509::verify_svid_chain(
                &chain,
                &bundle,
                std::time::SystemTime::now(),
            ) {
                Ok(id) => assert_eq!(
                    id.to_string(),
                    s.spiffe_id,
                    "SVID and its claimed ID differ"
                ),
                Err(e) => verified = Err(format!("{}: {e}", s.spiffe_id)),
            }
            ids.push(s.spiffe_id.clone());
            let info = tessera_core::x509::cert_info(&chain[0]).expect("leaf");
            serials.push(info.serial_hex.clone());
            if first.is_none() {
                first = Some(info);
            }
        }
        let info = first.ok_or_else(|| tonic::Status::unknown("a message without SVIDs"))?;
        Ok(Fetched {
            spiffe_ids: ids,
            serials,
            serial: info.serial_hex,
            not_after: info.not_after,
            verified,
        })
    })
}

/// `tessera-agent api watch` as a separate process holding a FetchX509SVID stream.
#[derive(Debug)]
pub struct Watcher {
    child: Child,
    out: std::path::PathBuf,
}

impl Watcher {
    /// Starts watching; its output goes to `<dir>/watch.out`.
    pub fn start(agent: &Agent, dir: &Path) -> Self {
        let out = dir.join("watch.out");
        let f = std::fs::File::create(&out).expect("watch output");
        let f2 = f.try_clone().expect("watch output");
        let child = Command::new(bin("tessera-agent"))
            .args(["api", "watch", "--socket-path"])
            .arg(&agent.socket)
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .expect("tessera-agent api watch");
        Self { child, out }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Its exit status, if it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scripts/swtpm.sh <command>` on a simulator's folder (`stop`, `start`,
/// `restart`) and checks it came back where the agent expects it.
pub fn swtpm(tpm: &Swtpm, command: &str) {
    run_ok(
        Command::new("bash")
            .arg(repo_root().join("scripts").join("swtpm.sh"))
            .arg(command)
            .arg(&tpm.dir),
    );
    if command != "stop" {
        let env = std::fs::read_to_string(tpm.dir.join("env")).expect("swtpm env file");
        assert!(
            env.contains(&format!("'{}'", tpm.tcti)),
            "swtpm came back elsewhere than {}:\n{env}",
            tpm.tcti
        );
    }
}

/// Sends SIGTERM to a process of the test's own.
pub fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}
