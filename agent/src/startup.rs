//! Starting the agent (`tessera-agent run`): the TPM, the key manager and the node
//! attestor its configuration names, the Workload API socket, the agent manager, and
//! the run until SIGTERM or SIGINT. Also the one place that opens a TPM, so that an
//! agent built without TPM support says so clearly.

use std::path::PathBuf;
use std::sync::Arc;

use tessera_core::key::{KeyError, KeyManager, MemoryKeyManager};
use tessera_process::DiskKeyManager;
use tessera_process::secret::{SecretError, SecretSource, read_secret};
use tessera_process::socket::{self, SocketError};
use tessera_tpm::{Tcti, Tpm};

use crate::attestor::NodeAttestor;
use crate::attestor::join_token::JoinToken;
use crate::config::{AgentConfig, KeyManagerConfig};
use crate::manager::{Agent, AgentError};

/// The environment variable that may hold the join token.
pub const JOIN_TOKEN_ENV: &str = "TESSERA_AGENT_JOIN_TOKEN";

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    #[error(
        "the key manager's TPM ({key_manager}) and the node attestor's ({attestor}) differ: the agent uses one TPM"
    )]
    TpmMismatch { key_manager: Tcti, attestor: Tcti },
    #[error("cannot open the TPM at {tcti}: {source}")]
    OpenTpm {
        tcti: Tcti,
        #[source]
        source: tessera_tpm::DeviceError,
    },
    #[error(
        "a TPM is configured ({tcti}) but this agent was built without the {backend} TPM backend (built in: {built}; setting tpm_backend, cargo features `tpm` (both backends) and `tpm-native`)"
    )]
    NoTpmSupport {
        tcti: Tcti,
        backend: tessera_tpm::Backend,
        built: String,
    },
    /// What needs the TPM that is not configured.
    #[error("{0} needs a TPM")]
    NeedsTpm(&'static str),
    #[error("key manager: {0}")]
    KeyManager(#[source] KeyError),
    #[error("key manager tpm: {0}")]
    TpmKeyManager(#[source] KeyError),
    #[error("node_attestor.tpm_devid: {0} (provision it with `tessera-agent tpm provision-devid`)")]
    DevId(#[source] tessera_tpm::provision::ProvisionError),
    /// The factory DevID (persistent key, certificate in NV) cannot be used.
    #[error("node_attestor.tpm_devid: factory DevID: {0}")]
    FactoryDevId(#[source] tessera_tpm::factory::FactoryError),
    /// A TPM setting cannot be used (a hierarchy password that cannot be read or
    /// set, DevID settings that contradict each other).
    #[error("{0}")]
    TpmAuth(String),
    /// The x509pop settings cannot work as given.
    #[error("node_attestor.x509pop: {0}")]
    X509Pop(String),
    /// The x509pop node key cannot be read or opened; `what` names the setting.
    #[error("node_attestor.x509pop: {what}: {source}")]
    X509PopKey {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("--join-token-file: {0}")]
    JoinTokenFile(#[source] SecretError),
    #[error("join token: {0}")]
    JoinToken(#[source] SecretError),
    /// The Workload API socket could not be bound.
    #[error("Workload API: {0}")]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The Workload API server failed while serving.
    #[error("the Workload API stopped: {0}")]
    WorkloadApiFailed(#[source] tonic::transport::Error),
    /// The Workload API task panicked or was cancelled.
    #[error("the Workload API stopped: {0}")]
    WorkloadApiTask(#[source] tokio::task::JoinError),
    /// The Workload API server ended by itself, without an error.
    #[error("the Workload API stopped: no reason given")]
    WorkloadApiStopped,
    /// A metrics or health listener could not start (the message names the setting).
    #[error("{0}")]
    Telemetry(#[source] std::io::Error),
}

/// Opens a TPM through `backend`, refusing one this build does not contain.
pub fn open_tpm_at(tcti: &Tcti, backend: tessera_tpm::Backend) -> Result<Arc<Tpm>, StartupError> {
    if !backend.is_built() {
        return Err(StartupError::NoTpmSupport {
            tcti: tcti.clone(),
            backend,
            built: tessera_tpm::Backend::built_names(),
        });
    }
    Tpm::open_with(backend, tcti)
        .map(Arc::new)
        .map_err(|source| StartupError::OpenTpm {
            tcti: tcti.clone(),
            source,
        })
}

/// Opens the TPM the configuration names, once: the node attestor and the key manager
/// share it (one TPM context; the device serialises commands).
pub fn open_tpm(cfg: &AgentConfig) -> Result<Option<Arc<Tpm>>, StartupError> {
    let Some(tcti) = cfg.tpm_tcti() else {
        return Ok(None);
    };
    if let Some(a) = cfg.node_attestor.tpm_tcti()
        && a != tcti
    {
        return Err(StartupError::TpmMismatch {
            key_manager: tcti,
            attestor: a,
        });
    }
    let tpm = open_tpm_at(&tcti, cfg.tpm_backend)?;
    if cfg.tpm.is_set() {
        let auth = cfg
            .tpm
            .hierarchy_auth()
            .map_err(|e| StartupError::TpmAuth(e.to_string()))?;
        tpm.with(|dev| dev.set_hierarchy_auth(&auth))
            .map_err(|e| StartupError::TpmAuth(format!("[tpm]: {e}")))?;
    }
    Ok(Some(tpm))
}

/// Opens the configured key manager for the agent's own key.
pub fn open_key_manager(
    cfg: &AgentConfig,
    tpm: Option<Arc<Tpm>>,
) -> Result<Arc<dyn KeyManager>, StartupError> {
    Ok(match cfg.key_manager {
        KeyManagerConfig::Memory {} => Arc::new(MemoryKeyManager::new()),
        KeyManagerConfig::Disk {} => Arc::new(
            DiskKeyManager::open(&cfg.data_dir.join("keys")).map_err(StartupError::KeyManager)?,
        ),
        KeyManagerConfig::Tpm { .. } => {
            let tpm = tpm.ok_or(StartupError::NeedsTpm("the tpm key manager"))?;
            Arc::new(
                tessera_tpm::TpmKeyManager::open(tpm, &cfg.data_dir.join("keys"))
                    .map_err(StartupError::TpmKeyManager)?,
            )
        }
    })
}

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
    fn resolve(self) -> Result<Option<zeroize::Zeroizing<String>>, StartupError> {
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
            return SecretSource::File(f.clone())
                .read_text()
                .map(Some)
                .map_err(StartupError::JoinTokenFile);
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
    tpm: Option<Arc<Tpm>>,
) -> Result<Option<Arc<dyn NodeAttestor>>, StartupError> {
    // With the agent's own key in the TPM, the TPM attestors prove it is there;
    // with measured boot configured, they quote the PCRs.
    let key_prover = |tpm: &Arc<Tpm>| {
        let certify = matches!(cfg.key_manager, KeyManagerConfig::Tpm { .. });
        let pcrs = cfg.measured_boot.sorted();
        (certify || !pcrs.is_empty()).then(|| {
            Arc::new(crate::attestor::key_proof::KeyProver::open(
                tpm.clone(),
                &cfg.data_dir,
                certify,
                pcrs,
            ))
        })
    };
    let tpm_attestor: Option<Arc<dyn NodeAttestor>> = if let Some(c) = &cfg.node_attestor.tpm_devid
    {
        let tpm = tpm.clone().ok_or(StartupError::NeedsTpm("tpm_devid"))?;
        let identity = devid_identity(c, &tpm)?;
        let keys = key_prover(&tpm);
        let mut a = crate::attestor::tpm_devid::TpmDevId::new(
            tpm,
            identity,
            tessera_tpm::AgentOptions { ek: c.ek, ak: c.ak },
        );
        if let Some(k) = keys {
            a = a.with_key_prover(k);
        }
        Some(Arc::new(a))
    } else if let Some(c) = &cfg.node_attestor.tpm_ek {
        let tpm = tpm.clone().ok_or(StartupError::NeedsTpm("tpm_ek"))?;
        let keys = key_prover(&tpm);
        let mut a = crate::attestor::tpm_ek::TpmEk::new(
            tpm,
            tessera_tpm::AgentOptions { ek: c.ek, ak: c.ak },
        );
        if let Some(k) = keys {
            a = a.with_key_prover(k);
        }
        Some(Arc::new(a))
    } else {
        cloud_or_certificate_attestor(cfg, tpm.clone())?
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
        let secret = read_secret(
            jt.token_file.as_deref(),
            jt.token_env.as_deref(),
            jt.token_credential.as_deref(),
        )
        .map_err(StartupError::JoinToken)?;
        if let Some(t) = secret {
            return Ok(Some(Arc::new(JoinToken::new(t))));
        }
    }
    Ok(None)
}

/// The cloud or certificate node attestor the configuration names, if any.
fn cloud_or_certificate_attestor(
    cfg: &AgentConfig,
    tpm: Option<Arc<Tpm>>,
) -> Result<Option<Arc<dyn NodeAttestor>>, StartupError> {
    use crate::attestor::{aws_iid, azure_msi, gcp_iit, k8s_psat, x509pop};
    let n = &cfg.node_attestor;
    if let Some(c) = &n.k8s_psat {
        return Ok(Some(Arc::new(k8s_psat::K8sPsat::new(
            &c.cluster,
            c.token_path.clone(),
        ))));
    }
    if let Some(c) = &n.aws_iid {
        return Ok(Some(Arc::new(aws_iid::AwsIid::new(
            &c.endpoint,
            c.allow_imdsv1,
            c.timeout,
        ))));
    }
    if let Some(c) = &n.gcp_iit {
        return Ok(Some(Arc::new(gcp_iit::GcpIit::new(
            &c.host,
            &c.service_account,
            &c.audience,
            c.timeout,
        ))));
    }
    if let Some(c) = &n.azure_msi {
        let identity = azure_msi::Identity {
            client_id: c.client_id.clone(),
            object_id: c.object_id.clone(),
            msi_res_id: c.msi_res_id.clone(),
        };
        return Ok(Some(Arc::new(azure_msi::AzureMsi::new(
            &c.endpoint,
            &c.resource_id,
            &identity,
            c.timeout,
        ))));
    }
    let Some(c) = &n.x509pop else {
        return Ok(None);
    };
    let key = if let Some(p) = &c.private_key_path {
        // Read at each attestation; checked once now so a typo stops the start.
        x509pop::read_key_file(p).map_err(StartupError::X509Pop)?;
        x509pop::NodeKey::File(p.clone())
    } else if let Some(p) = &c.tpm_key_path {
        let tpm = tpm.ok_or(StartupError::NeedsTpm("x509pop with tpm_key_path"))?;
        let fault = |source: Box<dyn std::error::Error + Send + Sync>| StartupError::X509PopKey {
            what: format!("tpm_key_path {}", p.display()),
            source,
        };
        let bytes = std::fs::read(p).map_err(|e| fault(e.into()))?;
        let blob = tessera_tpm::KeyBlob::from_bytes(&bytes).map_err(|e| fault(e.into()))?;
        let key = tessera_tpm::TpmKey::from_blob(tpm, blob).map_err(|e| fault(e.into()))?;
        x509pop::NodeKey::Held(Arc::new(key))
    } else if let Some(p) = &c.pkcs11 {
        let fault = |source: Box<dyn std::error::Error + Send + Sync>| StartupError::X509PopKey {
            what: "pkcs11".into(),
            source,
        };
        let km = tessera_hsm::Pkcs11KeyManager::open(p).map_err(|e| fault(e.into()))?;
        let key = km.uri_key().map_err(|e| fault(e.into()))?.ok_or_else(|| {
            StartupError::X509Pop(
                "pkcs11: the uri must name the node key (object= and/or id=)".into(),
            )
        })?;
        x509pop::NodeKey::Held(key)
    } else {
        return Err(StartupError::X509Pop(
            "no key: set private_key_path, tpm_key_path or [node_attestor.x509pop.pkcs11]".into(),
        ));
    };
    let attestor = x509pop::X509Pop::new(c.certificate_path.clone(), key);
    // The same check every attestation makes, once now: a wrong pairing is a
    // configuration error, not something to retry.
    attestor
        .load()
        .map_err(|e| StartupError::X509Pop(e.to_string()))?;
    Ok(Some(Arc::new(attestor)))
}

/// Runs the agent: serves the socket at once (workloads get UNAVAILABLE until the
/// agent has its identity and a first sync), gets the identity (waiting out a server,
/// HSM or TPM that is away), then keeps everything fresh until SIGTERM or SIGINT,
/// which ends open streams and exits within [`crate::workload::SHUTDOWN_GRACE`].
pub async fn run(cfg: AgentConfig, token: TokenArgs) -> Result<(), StartupError> {
    // Before anything opens a descriptor: every Workload API connection is one.
    tessera_process::limits::nofile::raise_and_log();
    let tpm = open_tpm(&cfg)?;
    let km = open_key_manager(&cfg, tpm.clone())?;
    let attestor = node_attestor(&cfg, token, tpm.clone())?;
    // Bind first: a second agent on the same socket fails before touching any state.
    let (listener, socket) = socket::bind(&cfg.socket_path, crate::workload::SOCKET_MODES)?;
    let data_dir = cfg.data_dir.clone();
    let agent = match Agent::new(cfg, km, attestor) {
        Ok(a) => a,
        Err(e) => {
            socket.remove();
            return Err(e.into());
        }
    };
    // Workload keys in the TPM (entries with `workload_key = tpm`); set before the
    // persisted cache, whose TPM-held keys load through it.
    if let Some(tpm) = tpm.clone() {
        agent.set_workload_tpm(tpm);
    }
    // The state directory exists now (Agent::new made it).
    if let Some(store) = crate::persist::SvidStore::open(&data_dir, tpm.as_ref()) {
        agent.set_svid_store(store);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = tokio::spawn(crate::workload::serve(
        agent.clone(),
        listener,
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    let telemetry = tessera_telemetry::http::start(
        &agent.config().telemetry,
        agent.metrics().registry.clone(),
        crate::metrics::ready_check(agent.clone()),
        stop_tx.subscribe(),
    )
    .await;
    if let Err(e) = telemetry {
        socket.remove();
        return Err(StartupError::Telemetry(e));
    }
    // The socket answers from here on (workloads get Unavailable until the agent
    // has its identity): systemd may start what depends on it.
    tessera_telemetry::notify::ready("attesting or resuming its identity");
    tessera_telemetry::notify::spawn_watchdog();
    let work = {
        let agent = agent.clone();
        let socket_path = socket.path().to_owned();
        async move {
            agent.establish().await?;
            tracing::info!(socket = %socket_path.display(), spiffe_id = ?agent.spiffe_id().map(|i| i.to_string()), "Tessera agent is up");
            tessera_telemetry::notify::status(&format!(
                "serving as {}",
                agent
                    .spiffe_id()
                    .map_or_else(String::new, |i| i.to_string())
            ));
            agent.run().await;
            Ok::<(), AgentError>(())
        }
    };
    let result = tokio::select! {
        r = work => r.map_err(StartupError::from),
        r = &mut serving => {
            socket.remove();
            return Err(match r {
                Ok(Err(e)) => StartupError::WorkloadApiFailed(e),
                Err(e) => StartupError::WorkloadApiTask(e),
                Ok(Ok(())) => StartupError::WorkloadApiStopped,
            });
        }
        () = tessera_process::shutdown::signal() => Ok(()),
    };
    tessera_telemetry::notify::stopping();
    // New clients stop finding the socket at once; open streams end next.
    socket.remove();
    let _ = stop_tx.send(true);
    match serving.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "Workload API shutdown"),
        Err(e) => tracing::warn!(error = %e, "Workload API shutdown"),
        Ok(Ok(())) => {}
    }
    tracing::info!("stopped");
    result
}

/// The DevID `[node_attestor.tpm_devid]` names: from `devid_dir`, or else the
/// factory one (the key at `devid_key_handle`, the chain in `devid_cert_nv_index`,
/// each defaulting to the TCG guidance's value).
fn devid_identity(
    c: &crate::config::TpmDevIdConfig,
    tpm: &Arc<Tpm>,
) -> Result<tessera_tpm::attestation::tpm_devid::DevIdIdentity, StartupError> {
    use tessera_tpm::factory::{IDEVID_CERT_NV_INDEX, IDEVID_KEY_HANDLE, load_factory_devid};
    if let Some(dir) = &c.devid_dir {
        if c.devid_key_handle.is_some() || c.devid_cert_nv_index.is_some() {
            return Err(StartupError::TpmAuth(
                "node_attestor.tpm_devid: devid_dir (a DevID folder) and devid_key_handle or devid_cert_nv_index (a factory DevID) are both set: set one".into(),
            ));
        }
        return tessera_tpm::provision::load_devid(dir).map_err(StartupError::DevId);
    }
    let handle = c.devid_key_handle.unwrap_or(IDEVID_KEY_HANDLE);
    let index = c.devid_cert_nv_index.unwrap_or(IDEVID_CERT_NV_INDEX);
    tracing::info!(
        "tpm_devid: the factory DevID: key at persistent handle {handle:#010x}, certificates in NV index {index:#010x}"
    );
    load_factory_devid(tpm, handle, index).map_err(StartupError::FactoryDevId)
}
