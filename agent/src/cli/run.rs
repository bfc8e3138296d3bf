//! `tessera-agent run`: loads the configuration, sets up logging, and runs the agent
//! (`crate::startup`) until a signal stops it.

use std::path::PathBuf;

use super::{CliError, init_logging};
use crate::config::AgentConfig;
use crate::startup::TokenArgs;

/// `run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Overrides a configuration value (repeatable), e.g. --set sync_interval=10s.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A join token. Avoid: every local user can read the command line while the
    /// agent runs. Prefer --join-token-file, $TESSERA_AGENT_JOIN_TOKEN, or
    /// [node_attestor.join_token] token_file / token_credential.
    #[arg(long, value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// A file holding the join token (readable by the agent's user only).
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
}

/// Runs the agent on `runtime`.
pub fn execute(args: RunArgs, runtime: tokio::runtime::Runtime) -> Result<(), CliError> {
    let cfg = AgentConfig::load(&args.config, &args.set)?;
    init_logging(&cfg.log_level, cfg.log_format);
    tessera_process::config::warn_secret_flags(&args.set);
    let token = TokenArgs {
        flag: args.join_token,
        file: args.join_token_file,
    };
    // A TPM or key operation still running on the blocking pool must not hold the
    // exit up.
    let result = tessera_process::shutdown::run_to_exit(runtime, crate::startup::run(cfg, token));
    result.map_err(|e| {
        tracing::error!("{e}");
        CliError::from(e)
    })
}
