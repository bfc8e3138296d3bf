//! The `tessera-agent` command line: `run`, the `api` commands that act as a workload
//! against the Workload API (like `spire-agent api`), and `healthcheck`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tessera_core::key::{DiskKeyManager, KeyManager, MemoryKeyManager};
use tessera_proto::local::HealthCheckRequest;
use tessera_proto::local::agent_health_client::AgentHealthClient;
use tessera_proto::workload as pb;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::attestor::NodeAttestor;
use crate::attestor::join_token::JoinToken;
use crate::config::{AgentConfig, KeyManagerConfig};
use crate::manager::Agent;

#[derive(Debug, Parser)]
#[command(
    name = "tessera-agent",
    version,
    about = "Tessera agent: serves SPIFFE identities to workloads on this node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args, Clone)]
pub struct SocketArg {
    /// The Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET, then the agent's default).
    #[arg(long)]
    pub socket_path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the agent.
    Run {
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Overrides a configuration value (repeatable), e.g. --set sync_interval=10s.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A join token. Avoid: every local user can read the command line while the
        /// agent runs. Prefer --join-token-file, $TESSERA_AGENT_JOIN_TOKEN, or
        /// [node_attestor.join_token] token_file / token_credential.
        #[arg(long, value_name = "TOKEN")]
        join_token: Option<String>,
        /// A file holding the join token (readable by the agent's user only).
        #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
        join_token_file: Option<PathBuf>,
    },
    /// Acts as a workload against the Workload API.
    #[command(subcommand)]
    Api(ApiCommand),
    /// The TPM: DevID provisioning and what to allow-list.
    #[command(subcommand)]
    Tpm(crate::tpm_cli::TpmCommand),
    /// Checks that the agent is up and has its identity.
    Healthcheck {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetches SVIDs.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validates SVIDs.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Prints every X509-SVID update as the agent pushes it.
    Watch {
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Fetches the caller's X509-SVIDs and bundles.
    X509 {
        #[command(flatten)]
        socket: SocketArg,
        /// Write svid.N.pem, svid.N.key and bundle.N.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Fetches a JWT-SVID.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validates a JWT-SVID through the agent.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        svid: String,
    },
}

/// A CLI failure: the message printed after `Error: `.
#[derive(Debug)]
pub struct CliError(pub String);

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError(format!("{} ({:?})", s.message(), s.code()))
    }
}

impl SocketArg {
    /// The socket to use: the flag, then `SPIFFE_ENDPOINT_SOCKET`, then the default.
    pub fn resolve(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.socket_path {
            return Ok(p.clone());
        }
        match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
            Ok(v) => {
                let p = v.strip_prefix("unix://").ok_or_else(|| {
                    CliError(format!(
                        "SPIFFE_ENDPOINT_SOCKET={v} is not a unix:///absolute/path address"
                    ))
                })?;
                if !p.starts_with('/') {
                    return Err(CliError(format!(
                        "SPIFFE_ENDPOINT_SOCKET={v}: the path must be absolute"
                    )));
                }
                Ok(PathBuf::from(p))
            }
            Err(_) => Ok(PathBuf::from(crate::config::DEFAULT_SOCKET)),
        }
    }
}

type WorkloadClient = SpiffeWorkloadApiClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn add_header(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        tessera_proto::WORKLOAD_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(req)
}

async fn channel(path: &Path) -> Result<Channel, CliError> {
    tessera_proto::unix_channel(path).await.map_err(|e| {
        CliError(format!(
            "cannot reach the Workload API at {}: {e} (is the agent running? set --socket-path)",
            path.display()
        ))
    })
}

async fn workload_client(path: &Path) -> Result<WorkloadClient, CliError> {
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = add_header;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel(path).await?,
        f,
    ))
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Splits concatenated DER certificates (what the agent sent is trusted to parse;
/// anything unparseable is simply not shown).
fn split_ders(data: &[u8]) -> Vec<Vec<u8>> {
    tessera_core::x509::split_concatenated(data).unwrap_or_default()
}

fn print_x509(resp: &pb::X509svidResponse, elapsed: Duration) {
    println!(
        "Received {} svid{} after {:.1?}\n",
        resp.svids.len(),
        if resp.svids.len() == 1 { "" } else { "s" },
        elapsed
    );
    for s in &resp.svids {
        println!("SPIFFE ID:\t\t{}", s.spiffe_id);
        if !s.hint.is_empty() {
            println!("Hint:\t\t\t{}", s.hint);
        }
        if let Some(leaf) = split_ders(&s.x509_svid).first()
            && let Ok(i) = tessera_core::x509::cert_info(leaf)
        {
            println!("SVID Valid After:\t{}", rfc3339(i.not_before));
            println!("SVID Valid Until:\t{}", rfc3339(i.not_after));
        }
        for (n, ca) in split_ders(&s.bundle).iter().enumerate() {
            if let Ok(i) = tessera_core::x509::cert_info(ca) {
                println!("CA #{} Valid After:\t{}", n + 1, rfc3339(i.not_before));
                println!("CA #{} Valid Until:\t{}", n + 1, rfc3339(i.not_after));
            }
        }
        println!();
    }
}

fn pems(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| tessera_core::x509::to_pem("CERTIFICATE", d))
        .collect()
}

fn write_x509(resp: &pb::X509svidResponse, dir: &Path) -> Result<(), CliError> {
    tessera_core::fsutil::ensure_dir(dir, 0o755)
        .map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    let write = |name: String, data: &[u8], mode: u32| -> Result<(), CliError> {
        let p = dir.join(name);
        tessera_core::fsutil::write_atomic(&p, data, mode)
            .map_err(|e| CliError(format!("{}: {e}", p.display())))?;
        println!("Writing {}", p.display());
        Ok(())
    };
    for (i, s) in resp.svids.iter().enumerate() {
        write(
            format!("svid.{i}.pem"),
            pems(&split_ders(&s.x509_svid)).as_bytes(),
            0o644,
        )?;
        write(
            format!("svid.{i}.key"),
            tessera_core::x509::to_pem("PRIVATE KEY", &s.x509_svid_key).as_bytes(),
            0o600,
        )?;
        write(
            format!("bundle.{i}.pem"),
            pems(&split_ders(&s.bundle)).as_bytes(),
            0o644,
        )?;
        for (j, (_, fed)) in resp.federated_bundles.iter().enumerate() {
            write(
                format!("federated_bundle.{i}.{j}.pem"),
                pems(&split_ders(fed)).as_bytes(),
                0o644,
            )?;
        }
    }
    Ok(())
}

/// Runs one `api` or `healthcheck` command.
pub async fn client_command(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run { .. } => unreachable!("run is handled by main"),
        Command::Tpm(c) => crate::tpm_cli::command(c)?,
        Command::Api(ApiCommand::Fetch(FetchCommand::X509 { socket, write })) => {
            let mut c = workload_client(&socket.resolve()?).await?;
            let start = Instant::now();
            let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await?.into_inner();
            let resp = stream
                .message()
                .await?
                .ok_or_else(|| CliError("the agent closed the stream without an answer".into()))?;
            match write {
                Some(dir) => write_x509(&resp, &dir)?,
                None => print_x509(&resp, start.elapsed()),
            }
        }
        Command::Api(ApiCommand::Fetch(FetchCommand::Jwt {
            socket,
            audience,
            spiffe_id,
        })) => {
            let path = socket.resolve()?;
            let mut c = workload_client(&path).await?;
            let resp = c
                .fetch_jwtsvid(pb::JwtsvidRequest {
                    audience,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            for s in &resp.svids {
                println!("token({}):\n\t{}", s.spiffe_id, s.svid);
            }
            let mut bundles = c
                .fetch_jwt_bundles(pb::JwtBundlesRequest {})
                .await?
                .into_inner();
            if let Some(b) = bundles.message().await? {
                for (td, jwks) in &b.bundles {
                    println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
                }
            }
        }
        Command::Api(ApiCommand::Validate(ValidateCommand::Jwt {
            socket,
            audience,
            svid,
        })) => {
            let mut c = workload_client(&socket.resolve()?).await?;
            let resp = c
                .validate_jwtsvid(pb::ValidateJwtsvidRequest { audience, svid })
                .await?
                .into_inner();
            println!("SVID is valid.");
            println!("SPIFFE ID : {}", resp.spiffe_id);
            if let Some(claims) = resp.claims {
                let map: serde_json::Map<String, serde_json::Value> = claims
                    .fields
                    .into_iter()
                    .map(|(k, v)| (k, struct_value_to_json(v)))
                    .collect();
                println!("Claims    : {}", serde_json::Value::Object(map));
            }
        }
        Command::Api(ApiCommand::Watch { socket }) => {
            let mut c = workload_client(&socket.resolve()?).await?;
            let start = Instant::now();
            let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await?.into_inner();
            while let Some(resp) = stream.message().await? {
                print_x509(&resp, start.elapsed());
            }
        }
        Command::Healthcheck { socket, verbose } => {
            let path = socket.resolve()?;
            let mut c = AgentHealthClient::new(channel(&path).await?);
            let h = c.check(HealthCheckRequest {}).await?.into_inner();
            if verbose {
                for d in &h.details {
                    println!("{d}");
                }
            }
            if h.ready {
                println!("Agent is healthy.");
            } else {
                return Err(CliError(format!(
                    "agent is unhealthy: {}",
                    h.details.join("; ")
                )));
            }
        }
    }
    Ok(())
}

fn struct_value_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Value::from(n)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(struct_value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, struct_value_to_json(v)))
                .collect(),
        ),
    }
}

/// Opens the TPM the configuration names, once: the node attestor and the key manager
/// share it (one TPM context; the device serialises commands).
pub fn open_tpm(cfg: &AgentConfig) -> Result<Option<Arc<tessera_tpm::Tpm>>, String> {
    let Some(tcti) = cfg.tpm_tcti() else {
        return Ok(None);
    };
    let attestor_tcti = cfg
        .node_attestor
        .tpm_devid
        .as_ref()
        .map(|c| &c.tcti)
        .or_else(|| cfg.node_attestor.tpm_ek.as_ref().map(|c| &c.tcti));
    if let Some(a) = attestor_tcti
        && a != &tcti
    {
        return Err(format!(
            "the key manager's TPM ({tcti}) and the node attestor's ({a}) differ: the agent uses one TPM"
        ));
    }
    crate::tpm_cli::open(&tcti).map(Some)
}

/// Opens the configured key manager for the agent's own key.
pub fn open_key_manager(
    cfg: &AgentConfig,
    tpm: Option<Arc<tessera_tpm::Tpm>>,
) -> Result<Arc<dyn KeyManager>, String> {
    Ok(match cfg.key_manager {
        KeyManagerConfig::Memory => Arc::new(MemoryKeyManager::new()),
        KeyManagerConfig::Disk => Arc::new(
            DiskKeyManager::open(&cfg.data_dir.join("keys"))
                .map_err(|e| format!("key manager: {e}"))?,
        ),
        KeyManagerConfig::Tpm { .. } => {
            let tpm = tpm.ok_or("the tpm key manager needs a TPM (tcti)")?;
            Arc::new(
                tessera_tpm::TpmKeyManager::open(tpm, &cfg.data_dir.join("keys"))
                    .map_err(|e| format!("key manager tpm: {e}"))?,
            )
        }
    })
}

/// The environment variable that may hold the join token.
pub const JOIN_TOKEN_ENV: &str = "TESSERA_AGENT_JOIN_TOKEN";

/// Where `run` was told to find a join token on its command line or environment.
#[derive(Debug, Default)]
pub struct TokenArgs {
    /// `--join-token`: on the command line, readable by every local user.
    pub flag: Option<String>,
    /// `--join-token-file`.
    pub file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token these arguments or `$TESSERA_AGENT_JOIN_TOKEN` give, if any.
    fn resolve(self) -> Result<Option<zeroize::Zeroizing<String>>, String> {
        if let Some(t) = self.flag.filter(|t| !t.is_empty()) {
            tracing::warn!(
                "SECURITY: the join token was given with --join-token, on the command line: \
                 every local user can read it in /proc/{}/cmdline while the agent runs, and \
                 could attest with it before this agent does. Pass it in a file \
                 (--join-token-file or token_file), in ${JOIN_TOKEN_ENV}, or as a systemd \
                 credential (token_credential). The command line cannot be scrubbed \
                 afterwards: the kernel shows it from the moment the process starts.",
                std::process::id()
            );
            return Ok(Some(zeroize::Zeroizing::new(t)));
        }
        if let Some(f) = &self.file {
            return tessera_core::config::read_secret(Some(f), None, None)
                .map_err(|e| format!("--join-token-file: {e}"));
        }
        match std::env::var(JOIN_TOKEN_ENV) {
            Ok(t) if !t.is_empty() => Ok(Some(zeroize::Zeroizing::new(t))),
            _ => Ok(None),
        }
    }
}

/// The node attestor: a configured TPM attestor first (the device proves itself, and
/// can do so again), else a join token from the command line, the environment or the
/// configuration.
pub fn node_attestor(
    cfg: &AgentConfig,
    args: TokenArgs,
    tpm: Option<Arc<tessera_tpm::Tpm>>,
) -> Result<Option<Arc<dyn NodeAttestor>>, String> {
    let tpm_attestor: Option<Arc<dyn NodeAttestor>> = if let Some(c) = &cfg.node_attestor.tpm_devid
    {
        let tpm = tpm.clone().ok_or("tpm_devid needs a TPM")?;
        let identity = tessera_tpm::provision::load_devid(&c.devid_dir)
            .map_err(|e| format!("node_attestor.tpm_devid: {e} (provision it with `tessera-agent tpm provision-devid`)"))?;
        Some(Arc::new(crate::attestor::tpm_devid::TpmDevId::new(
            tpm,
            identity,
            tessera_tpm::AgentOptions { ek: c.ek, ak: c.ak },
        )))
    } else if let Some(c) = &cfg.node_attestor.tpm_ek {
        let tpm = tpm.clone().ok_or("tpm_ek needs a TPM")?;
        Some(Arc::new(crate::attestor::tpm_ek::TpmEk::new(
            tpm,
            tessera_tpm::AgentOptions { ek: c.ek, ak: c.ak },
        )))
    } else {
        None
    };
    let given = args.resolve()?;
    if let Some(a) = tpm_attestor {
        if given.is_some() {
            tracing::warn!(
                "a join token was given but {} attestation is configured: the token is ignored",
                a.name()
            );
        }
        return Ok(Some(a));
    }
    if let Some(t) = given {
        return Ok(Some(Arc::new(JoinToken::new(t))));
    }
    if let Some(jt) = &cfg.node_attestor.join_token {
        if let Some(t) = &jt.token {
            tracing::warn!(
                "the join token is written inline in the configuration ([node_attestor.join_token] \
                 token); anyone who can read the file can attest with it: prefer token_file, \
                 token_env or token_credential"
            );
            return Ok(Some(Arc::new(JoinToken::new(zeroize::Zeroizing::new(
                t.clone(),
            )))));
        }
        let secret = tessera_core::config::read_secret(
            jt.token_file.as_deref(),
            jt.token_env.as_deref(),
            jt.token_credential.as_deref(),
        )
        .map_err(|e| format!("join token: {e}"))?;
        if let Some(t) = secret {
            return Ok(Some(Arc::new(JoinToken::new(t))));
        }
    }
    Ok(None)
}

/// `tessera-agent run`: serves the socket at once (workloads get UNAVAILABLE until
/// the agent has its identity and a first sync), gets the identity (waiting out a
/// server, HSM or TPM that is away), then keeps everything fresh until SIGTERM or
/// SIGINT, which ends open streams and exits within [`crate::workload::SHUTDOWN_GRACE`].
pub async fn run(cfg: AgentConfig, token: TokenArgs) -> Result<(), String> {
    // Before anything opens a descriptor: every Workload API connection is one.
    tessera_core::limits::nofile::raise_and_log();
    let tpm = open_tpm(&cfg)?;
    let km = open_key_manager(&cfg, tpm.clone())?;
    let attestor = node_attestor(&cfg, token, tpm)?;
    // Bind first: a second agent on the same socket fails before touching any state.
    let listener = crate::workload::bind(&cfg.socket_path)?;
    let socket = BoundSocket::new(&cfg.socket_path);
    let agent = match Agent::new(cfg, km, attestor) {
        Ok(a) => a,
        Err(e) => {
            socket.remove();
            return Err(e.to_string());
        }
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = tokio::spawn(crate::workload::serve(
        agent.clone(),
        listener,
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    let work = {
        let agent = agent.clone();
        let socket_path = socket.path.clone();
        async move {
            agent.establish().await?;
            tracing::info!(socket = %socket_path.display(), spiffe_id = ?agent.spiffe_id().map(|i| i.to_string()), "Tessera agent is up");
            agent.run().await;
            Ok::<(), crate::manager::AgentError>(())
        }
    };
    let result = tokio::select! {
        r = work => r.map_err(|e| e.to_string()),
        r = &mut serving => {
            socket.remove();
            let why = match r {
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
                Ok(Ok(())) => "no reason given".to_owned(),
            };
            return Err(format!("the Workload API stopped: {why}"));
        }
        () = shutdown_signal() => Ok(()),
    };
    // New clients stop finding the socket at once; open streams end next.
    socket.remove();
    let _ = stop_tx.send(true);
    match serving.await {
        Ok(Err(e)) => tracing::warn!("Workload API shutdown: {e}"),
        Err(e) => tracing::warn!("Workload API shutdown: {e}"),
        Ok(Ok(())) => {}
    }
    tracing::info!("stopped");
    result
}

/// The Workload API socket this process bound, removed at exit only if it is still
/// this process's (a successor may have bound the path since).
struct BoundSocket {
    path: PathBuf,
    inode: Option<u64>,
}

impl BoundSocket {
    fn new(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            path: path.to_owned(),
            inode: std::fs::symlink_metadata(path).ok().map(|m| m.ino()),
        }
    }

    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::symlink_metadata(&self.path).ok().map(|m| m.ino());
        if current.is_some() && current == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
