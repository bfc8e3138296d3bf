//! `tessera-server run`: locks the data directory, opens the datastore and key manager,
//! starts the CA, and serves the agent API (TLS) and the admin API (Unix socket) until
//! SIGINT or SIGTERM.
//!
//! # Shutdown
//!
//! On SIGTERM or SIGINT the server stops accepting connections and calls, gives the
//! calls in flight [`SHUTDOWN_GRACE`] to finish, then closes whatever is still open
//! (attestation streams waiting on an agent, idle agent connections), removes the
//! admin socket and exits 0. Nothing is half-written: each datastore write is one
//! transaction, committed or not.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::clock::SystemClock;
use tessera_core::key::{Key, KeyError, KeyManager, KeyType, MemoryKeyManager, SoftwareKey};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_process::limits::{ConnLimiter, StreamTrackingLayer};
use tessera_process::socket::{self, Modes, SocketError};
use tessera_proto::admin::admin_server::AdminServer;
use tessera_proto::agent::node_server::NodeServer;
use tessera_telemetry::http::ReadyCheck;
use tessera_telemetry::span::RpcSpanLayer;
use tokio::net::TcpListener;

use crate::api::admin_access::{GuardedAdmin, Listener};
use crate::api::agent::AgentApi;
use crate::api::{NodeCache, ServerState, server_id};
use crate::attestor::NodeAttestor;
use crate::attestor::join_token::JoinToken;
use crate::ca::upstream::UpstreamError;
use crate::ca::{CaError, CaManager, CaSettings};
use crate::config::{DatastoreTarget, InvalidConfig, KeyManagerConfig, ServerConfig};
use crate::datastore::postgres::PostgresDatastore;
use crate::datastore::sqlite::SqliteDatastore;
use crate::datastore::{Datastore, DatastoreError};
use crate::entries::EntryCache;
use crate::metrics::{MeteredDatastore, MeteredKeyManager, ServerMetrics};
use crate::transport::PeerInfo;

/// Why the server could not start or stopped. Each variant keeps its cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A file, directory or socket the server needs cannot be made or used.
    #[error("cannot {doing} {}: {source}", path.display())]
    Io {
        /// What failed, e.g. "create data directory".
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another server holds the data directory.
    #[error(
        "data directory {} is in use by {holder}: two servers on one data directory would share its database; stop the other server, or give this one its own data_dir", dir.display()
    )]
    DataDirInUse { dir: PathBuf, holder: String },
    /// The admin socket cannot be bound (another server answers on it, say).
    #[error("admin socket: {0}")]
    AdminSocket(#[from] SocketError),
    /// The configuration names no usable datastore.
    #[error("{0}")]
    Config(#[from] InvalidConfig),
    /// The key manager cannot be opened.
    #[error("key manager: {0}")]
    KeyManager(#[source] KeyError),
    /// The PKCS#11 token cannot be opened.
    #[error("key manager pkcs11: {0}")]
    Hsm(#[source] tessera_hsm::HsmError),
    /// `[key_manager] type = "tpm"` names a backend this build lacks.
    #[error(
        "key manager tpm: this server was built without the {backend} TPM backend (built in: {built}; setting tpm_backend, cargo feature `tpm`)"
    )]
    NoTpmBackend {
        backend: tessera_tpm::Backend,
        built: String,
    },
    /// The key manager's TPM cannot be opened.
    #[error("key manager tpm: cannot open the TPM at {tcti}: {source}")]
    Tpm {
        tcti: tessera_tpm::Tcti,
        #[source]
        source: tessera_tpm::DeviceError,
    },
    /// The datastore cannot be opened (`at` names it, never the connection string).
    #[error("datastore{at}: {source}")]
    Datastore {
        at: String,
        #[source]
        source: DatastoreError,
    },
    /// The upstream authority cannot be loaded.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The CA cannot start.
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    /// The registration entries cannot be loaded.
    #[error("loading entries: {0}")]
    Entries(#[source] DatastoreError),
    /// A node attestor's configuration is unusable; the message names the setting.
    #[error("{source}")]
    Attestor {
        name: &'static str,
        #[source]
        source: crate::attestor::AttestorConfigError,
    },
    /// The agent API cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The audit file cannot be opened.
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    /// An API server failed while serving.
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// An API server task panicked.
    #[error("serving failed: {0}")]
    ServeTask(#[from] tokio::task::JoinError),
    /// A metrics or health listener could not start (the message names the setting).
    #[error("{0}")]
    Telemetry(#[source] std::io::Error),
    /// The OIDC discovery listener or the bundle endpoint could not start (the
    /// message names the setting).
    #[error("{0}")]
    Https(#[from] crate::https::ListenerError),
}

/// The error for a failed file operation on `path`.
fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_owned();
    move |source| RunError::Io {
        doing,
        path,
        source,
    }
}

/// How long calls in flight get to finish after SIGTERM before the server closes
/// them and exits.
pub const SHUTDOWN_GRACE: Duration = tessera_process::shutdown::GRACE;

/// The lock file in the data directory that one server holds for its whole life.
pub const LOCK_FILE: &str = "server.lock";

/// An exclusive lock on a data directory. The kernel releases it when the process
/// ends, however it ends (a `kill -9` leaves no stale lock behind).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the data directory's lock, or says which process holds it. Two servers on
/// one data directory would share its SQLite file and disk keys.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, RunError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error("open the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("another tessera-server (PID {pid})"),
                Err(_) => "another tessera-server".to_owned(),
            };
            return Err(RunError::DataDirInUse {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(io_error("lock the data directory through", &path)(e));
        }
    }
    // Who holds it, for the message above; the lock is what counts, not this text.
    let pid = format!("{}\n", std::process::id());
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()));
    if let Err(e) = written {
        tracing::warn!("cannot write the PID into {}: {e}", path.display());
    }
    Ok(DataDirLock { _file: file, path })
}

/// Opens the configured key manager.
pub fn open_key_manager(config: &ServerConfig) -> Result<Arc<dyn KeyManager>, RunError> {
    Ok(match &config.key_manager {
        KeyManagerConfig::Memory {} => Arc::new(MemoryKeyManager::new()),
        KeyManagerConfig::Disk { dir } => {
            let dir = dir.clone().unwrap_or_else(|| config.data_dir.join("keys"));
            Arc::new(tessera_process::DiskKeyManager::open(&dir).map_err(RunError::KeyManager)?)
        }
        KeyManagerConfig::Pkcs11(p) => {
            Arc::new(tessera_hsm::Pkcs11KeyManager::open(p).map_err(RunError::Hsm)?)
        }
        KeyManagerConfig::Tpm { tcti, dir } => {
            let tpm = open_tpm(tcti, config.tpm_backend)?;
            let dir = dir.clone().unwrap_or_else(|| config.data_dir.join("keys"));
            Arc::new(tessera_tpm::TpmKeyManager::open(tpm, &dir).map_err(RunError::KeyManager)?)
        }
    })
}

/// Opens the key manager's TPM through `backend`, refusing one this build does not
/// contain by name. A TPM that cannot be reached stops the start: the server never
/// replaces its CA because the TPM is away.
fn open_tpm(
    tcti: &tessera_tpm::Tcti,
    backend: tessera_tpm::Backend,
) -> Result<Arc<tessera_tpm::Tpm>, RunError> {
    if !backend.is_built() {
        return Err(RunError::NoTpmBackend {
            backend,
            built: tessera_tpm::Backend::built_names(),
        });
    }
    tessera_tpm::Tpm::open_with(backend, tcti)
        .map(Arc::new)
        .map_err(|source| RunError::Tpm {
            tcti: tcti.clone(),
            source,
        })
}

/// The admin socket's modes: the server's user and group only (0770), in a directory
/// only they can enter when the server creates it.
const ADMIN_SOCKET_MODES: Modes = Modes {
    dir: 0o770,
    socket: 0o770,
};

type ChainAndKey = (Vec<Vec<u8>>, Arc<dyn Key>);

/// Keeps the server's own TLS SVID (`spiffe://<td>/spire/server`) fresh: renewed at
/// half-life with a new key each time.
async fn server_identity(state: Arc<ServerState>, identity: Arc<SharedIdentity>) {
    let id = state.server_id();
    loop {
        let ca = state.ca.clone();
        let sid = id.clone();
        let ttl = state.config.x509_svid_ttl;
        let made = tokio::task::spawn_blocking(move || -> Result<ChainAndKey, String> {
            let key: Arc<dyn Key> =
                Arc::new(SoftwareKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?);
            let chain = ca
                .sign_x509_svid(&sid, key.public_key_der(), &[], ttl)
                .map_err(|e| e.to_string())?;
            Ok((chain, key))
        })
        .await;
        let wait = match made {
            Ok(Ok((chain, key))) => {
                let life = tessera_core::x509::cert_info(&chain[0])
                    .map(|i| i.not_after - state.clock.unix())
                    .unwrap_or(60);
                identity.set(&chain, key);
                Duration::from_secs((life.max(2) / 2) as u64)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot renew the server's TLS certificate (retrying)");
                Duration::from_secs(2)
            }
            Err(e) => {
                tracing::error!(error = %e, "server identity task failed");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The server is ready when its datastore answers and its CA can sign.
fn readiness(state: Arc<ServerState>) -> ReadyCheck {
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            let mut reasons = Vec::new();
            if let Err(e) = state.ds.ping().await {
                reasons.push(format!("datastore: {e}"));
            }
            let ca = state.ca.clone();
            match tokio::task::spawn_blocking(move || ca.health()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => reasons.push(format!("CA: {e}")),
                Err(e) => reasons.push(format!("CA: the check did not finish: {e}")),
            }
            if reasons.is_empty() {
                Ok(())
            } else {
                Err(reasons)
            }
        })
    })
}

/// Keeps the gauges that describe state (authority expiry, entries, agents) current.
async fn refresh_gauges(state: Arc<ServerState>) {
    loop {
        if let Ok(a) = state.ca.active_x509() {
            state.metrics.authority_expiry(
                "x509_ca",
                tessera_telemetry::metrics::unix_seconds(a.issuer.not_after()),
            );
        }
        if let Ok(j) = state.ca.active_jwt() {
            state.metrics.authority_expiry("jwt_key", j.not_after);
        }
        match state.ds.list_attested_nodes().await {
            Ok(nodes) => state.metrics.sizes(state.entries.len(), nodes.len()),
            Err(e) => tracing::debug!("agent count for the metrics: {e}"),
        }
        tokio::time::sleep(GAUGE_REFRESH).await;
    }
}

/// How often the state gauges are brought up to date.
const GAUGE_REFRESH: Duration = Duration::from_secs(10);

/// Opens the configured datastore (and brings its schema up to date).
async fn open_datastore(config: &ServerConfig) -> Result<Arc<dyn Datastore>, RunError> {
    match config.datastore_target()? {
        DatastoreTarget::Sqlite(path) => Ok(Arc::new(SqliteDatastore::open(&path).map_err(
            |source| RunError::Datastore {
                at: format!(" {}", path.display()),
                source,
            },
        )?)),
        // Errors name the host, port, database and user, never the connection string.
        DatastoreTarget::Postgres(conn) => {
            let ds = PostgresDatastore::connect(&conn.0)
                .await
                .map_err(|source| RunError::Datastore {
                    at: String::new(),
                    source,
                })?;
            tracing::info!(target = %ds.target(), "datastore: postgres");
            Ok(Arc::new(ds))
        }
    }
}

/// Builds the shared state: datastore, key manager, CA, entry cache, attestors.
pub async fn build_state(config: ServerConfig) -> Result<Arc<ServerState>, RunError> {
    tessera_process::fs::ensure_dir(&config.data_dir, 0o700)
        .map_err(io_error("create data directory", &config.data_dir))?;
    let audit = crate::audit::Audit::open(&config.audit)?;
    let metrics = ServerMetrics::new();
    // Timed only when someone can read the figures.
    let metered = config.telemetry.metrics_address.is_some();
    let mut ds = open_datastore(&config).await?;
    let mut km = open_key_manager(&config)?;
    if metered {
        ds = MeteredDatastore::wrap(ds, metrics.clone());
        km = MeteredKeyManager::wrap(km, metrics.clone());
    }
    let clock = SystemClock::shared();
    let server_id = crate::server_id::resolve(config.server_id.as_deref(), &config.data_dir)
        .map_err(io_error("read the server ID in", &config.data_dir))?;
    let ca = CaManager::start(
        CaSettings {
            trust_domain: config.trust_domain.clone(),
            ca_ttl: config.ca_ttl,
            ca_key_type: config.ca_key_type,
            jwt_key_type: config.jwt_key_type,
            refresh_hint: config.bundle_refresh_hint,
            upstream: crate::upstream::load(&config, clock.now())?,
            jwt_issuer: config.jwt_issuer.clone(),
            server_id,
            propagation: config.ca_propagation(),
        },
        km.clone(),
        ds.clone(),
        clock.clone(),
    )
    .await?;
    let entries = EntryCache::load(ds.clone(), clock.clone())
        .await
        .map_err(RunError::Entries)?;
    let mut attestors: HashMap<&'static str, Arc<dyn NodeAttestor>> = HashMap::new();
    if config.node_attestors.join_token.enabled {
        let a = Arc::new(JoinToken::new(ds.clone()));
        attestors.insert(a.name(), a);
    }
    if let Some(c) = &config.node_attestors.tpm_devid {
        let a = Arc::new(
            crate::attestor::tpm_devid::TpmDevId::new(c).map_err(|source| RunError::Attestor {
                name: "tpm_devid",
                source,
            })?,
        );
        attestors.insert(a.name(), a);
    }
    if let Some(c) = &config.node_attestors.tpm_ek {
        let a = Arc::new(crate::attestor::tpm_ek::TpmEk::new(c).map_err(|source| {
            RunError::Attestor {
                name: "tpm_ek",
                source,
            }
        })?);
        attestors.insert(a.name(), a);
    }
    let more = crate::attestor::cloud_and_certificate(
        &config.node_attestors,
        &config.trust_domain,
        &clock,
    )
    .await
    .map_err(|(name, source)| RunError::Attestor { name, source })?;
    for a in more {
        attestors.insert(a.name(), a);
    }
    // The relationships of the configuration, with the files they name read.
    let configured =
        crate::federation::check_files(&config.federation).map_err(|(key, message)| {
            RunError::Config(crate::config::InvalidConfig::Setting { key, message })
        })?;
    let federation = crate::federation::relationships::Relationships::new(ds.clone(), configured);
    Ok(Arc::new(ServerState {
        config,
        federation,
        ds,
        ca,
        entries,
        attestors,
        nodes: NodeCache::default(),
        key_manager: km,
        clock,
        audit,
        metrics,
    }))
}

/// Runs the server until a shutdown signal.
pub async fn run(config: ServerConfig) -> Result<(), RunError> {
    // Files the relationships name, before anything is bound or opened.
    crate::federation::check_files(&config.federation).map_err(|(key, message)| {
        RunError::Config(crate::config::InvalidConfig::Setting { key, message })
    })?;
    // Before anything opens a descriptor: every agent connection is one.
    let nofile = tessera_process::limits::nofile::raise_and_log();
    let bind = config.bind_address;
    let admin_path = config.admin_socket.clone();
    tessera_process::fs::ensure_dir(&config.data_dir, 0o700)
        .map_err(io_error("create data directory", &config.data_dir))?;
    // Before anything opens the database: a second server stops here.
    let lock = lock_data_dir(&config.data_dir)?;
    tracing::debug!(lock = %lock.path().display(), "data directory locked");
    let state = build_state(config).await?;

    // A server joining a trust domain where others sign waits until agents can know
    // its first authorities before it serves anything signed by them; systemd is
    // told, so that its start timeout does not end the wait.
    if state.ca.active_x509().is_err() || state.ca.active_jwt().is_err() {
        let extend = tokio::spawn(async {
            loop {
                tessera_telemetry::notify::extend_start(
                    Duration::from_secs(30),
                    "waiting until agents can have learnt this server's first CA",
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
        state.ca.until_signing().await;
        extend.abort();
    }
    tokio::spawn(state.ca.clone().run());
    tokio::spawn(state.entries.clone().follow(Duration::from_secs(1)));
    tokio::spawn(
        state
            .entries
            .clone()
            .housekeeping(crate::entries::HOUSEKEEPING_INTERVAL),
    );
    {
        let (ds, clock) = (state.ds.clone(), state.clock.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                match ds.prune_join_tokens(clock.unix()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("{n} expired join tokens removed"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune join tokens"),
                }
            }
        });
    }

    let bundle = SharedBundle::new((*state.ca.bundle()).clone());
    {
        let bundle = bundle.clone();
        let mut rx = state.ca.subscribe();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let b = (**rx.borrow_and_update()).clone();
                bundle.set(b);
            }
        });
    }
    let identity = SharedIdentity::new();
    tokio::spawn(server_identity(state.clone(), identity.clone()));
    // The first handshake must find a certificate.
    for _ in 0..100 {
        if identity.get().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tls = Arc::new(tessera_core::tls::server_config(identity.clone(), bundle));
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| RunError::Listen { addr: bind, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| RunError::Listen { addr: bind, source })?;
    let (admin_listener, admin_socket) = socket::bind(&admin_path, ADMIN_SOCKET_MODES)?;

    let caps = state.config.limits.connection_caps(nofile);
    let limits = crate::transport::ListenerLimits {
        limiter: ConnLimiter::new("agent API connections", caps),
        handshake_timeout: state.config.limits.handshake_timeout,
        idle_timeout: state.config.limits.idle(),
    };
    tracing::info!(
        "agent API limits: {} connections, {} per address, TLS handshake timeout {}, \
         idle timeout {}",
        caps.max_total,
        caps.max_per_peer,
        tessera_core::duration::format_duration(limits.handshake_timeout),
        limits
            .idle_timeout
            .map_or("off".into(), tessera_core::duration::format_duration)
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metered = state.config.telemetry.metrics_address.is_some();
    let agent_api = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // tonic's builder would otherwise lift hyper's bound: unlimited streams on
        // one connection, each held by the server while its request is incomplete.
        .max_concurrent_streams(tessera_process::limits::MAX_CONCURRENT_STREAMS)
        .layer(StreamTrackingLayer::<PeerInfo>::new())
        .layer(state.metrics.rpc.layer_if(metered))
        // Log lines written for a call name its method, caller and agent ID.
        .layer(RpcSpanLayer::new(PeerInfo::describe))
        .layer(crate::api::preauth::CredentialsFirstLayer)
        .add_service(NodeServer::new(AgentApi::new(state.clone())))
        // Remote administration: only admin SVIDs get past the guard.
        .add_service(AdminServer::new(GuardedAdmin::new(
            state.clone(),
            Listener::Tls,
        )))
        .serve_with_incoming_shutdown(crate::transport::incoming(listener, tls, limits), {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.changed().await;
            }
        });
    let admin_api = tonic::transport::Server::builder()
        .layer(state.metrics.rpc.layer_if(metered))
        .layer(RpcSpanLayer::new(crate::transport::describe_local))
        .max_concurrent_streams(tessera_process::limits::MAX_CONCURRENT_STREAMS)
        .add_service(AdminServer::new(GuardedAdmin::new(
            state.clone(),
            Listener::Socket,
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(admin_listener),
            {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.changed().await;
                }
            },
        );
    tracing::info!(
        trust_domain = %state.trust_domain(),
        agent_api = %local,
        admin_socket = %admin_path.display(),
        server_id = %server_id(state.trust_domain()),
        "Tessera server is up"
    );
    let (metrics_at, health_at) = tessera_telemetry::http::start(
        &state.config.telemetry,
        state.metrics.registry.clone(),
        readiness(state.clone()),
        stop_rx.clone(),
    )
    .await
    .map_err(RunError::Telemetry)?;
    if let (Some(d), Some(issuer)) = (&state.config.oidc_discovery, &state.config.jwt_issuer) {
        crate::oidc::start(issuer, d, state.ca.subscribe(), stop_rx.clone()).await?;
    }
    if let Some(e) = &state.config.federation.bundle_endpoint {
        crate::federation::endpoint::start(
            e,
            identity,
            &state.config.data_dir,
            state.ca.subscribe(),
            stop_rx.clone(),
        )
        .await?;
    }
    state.federation.start(stop_rx.clone());
    tokio::spawn(refresh_gauges(state.clone()));
    let agent_task = tokio::spawn(agent_api);
    let admin_task = tokio::spawn(admin_api);
    let aborts = [agent_task.abort_handle(), admin_task.abort_handle()];
    tessera_telemetry::notify::ready(&format!(
        "serving agents on {local}{}{}",
        metrics_at.map_or(String::new(), |a| format!(", metrics on {a}")),
        health_at.map_or(String::new(), |a| format!(", health on {a}")),
    ));
    tessera_telemetry::notify::spawn_watchdog();
    tessera_process::shutdown::signal().await;
    tessera_telemetry::notify::stopping();
    tracing::info!(
        grace = ?SHUTDOWN_GRACE,
        "no new connections or calls; calls in flight may finish"
    );
    let _ = stop_tx.send(true);
    // New admin commands fail at once ("no such file") instead of waiting on a
    // server that is going away.
    admin_socket.remove();
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        tokio::join!(agent_task, admin_task)
    })
    .await;
    let result = match finished {
        Ok((a, b)) => [a, b].into_iter().try_for_each(|r| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Serve(e)),
            Err(e) => Err(RunError::ServeTask(e)),
        }),
        Err(_) => {
            // Streams that would not end by themselves (an attestation waiting on its
            // agent, a client that ignores GOAWAY): close them.
            tracing::warn!("calls still open after {SHUTDOWN_GRACE:?}: closing them");
            for h in &aborts {
                h.abort();
            }
            Ok(())
        }
    };
    admin_socket.remove();
    tracing::info!("Tessera server stopped");
    drop(lock);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_per_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_data_dir(dir.path()).expect("first lock");
        let err = lock_data_dir(dir.path()).expect_err("second lock");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "the holder is not named: {msg}"
        );
        assert!(msg.contains("is in use by another tessera-server"), "{msg}");
        drop(first);
        // Released with the holder (the kernel does the same when a process dies).
        let again = lock_data_dir(dir.path()).expect("lock after release");
        assert_eq!(
            std::fs::read_to_string(again.path()).expect("lock file"),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn a_tpm_backend_not_built_in_or_a_tpm_not_there_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |backend: tessera_tpm::Backend| {
            ServerConfig::parse(&format!(
                "trust_domain = \"e.org\"\ndata_dir = \"{}\"\ntpm_backend = \"{backend}\"\n\
                 [key_manager]\ntype = \"tpm\"\ntcti = \"device:{}\"\n",
                dir.path().display(),
                dir.path().join("no-tpm").display()
            ))
            .expect("config")
        };
        for backend in tessera_tpm::Backend::ALL {
            let e = open_key_manager(&config(backend))
                .expect_err("no TPM there")
                .to_string();
            if backend.is_built() {
                assert!(
                    e.contains("key manager tpm: cannot open the TPM at device:"),
                    "{e}"
                );
            } else {
                assert!(
                    e.contains(&format!("built without the {backend} TPM backend")),
                    "{e}"
                );
            }
            // Nothing made: no key directory for a key manager that did not open.
            assert!(!dir.path().join("keys").exists(), "{e}");
        }
    }

    #[test]
    fn startup_errors_keep_their_cause() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-dir");
        let err = lock_data_dir(&missing).expect_err("no directory, no lock");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot open the lock file {}", missing.display())),
            "{err}"
        );
        let cause = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the I/O error is kept");
        assert_eq!(cause.kind(), std::io::ErrorKind::NotFound);

        let ca = RunError::from(CaError::NoActive("X.509"));
        assert!(ca.to_string().starts_with("CA: no active X.509"), "{ca}");
        assert!(ca.source().is_some_and(|s| s.is::<CaError>()));
    }
}
