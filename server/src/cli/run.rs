//! `tessera-server run`: loads the configuration, sets up logging and runs the
//! server until SIGINT or SIGTERM.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, init_logging};
use crate::config::ServerConfig;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Overrides a configuration value (repeatable), e.g. --set ca_ttl=2h.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Runs the server on `runtime` until a shutdown signal.
pub fn serve(args: RunArgs, runtime: tokio::runtime::Runtime) -> Result<(), CliError> {
    let cfg = ServerConfig::load(&args.config, &args.set)?;
    init_logging(&cfg.log_level, cfg.log_format);
    tessera_process::config::warn_secret_flags(&args.set);
    // Blocking work still running (a signature waiting on a slow token, a write)
    // must not hold the exit: each write is one transaction, so stopping it midway
    // loses nothing that was acknowledged.
    let result = tessera_process::shutdown::run_to_exit(runtime, crate::run::run(cfg));
    result.map_err(|e| {
        tracing::error!("{e}");
        CliError::Run(e)
    })
}
