//! The `tessera-agent` command line: `run` (the agent itself), the `api` commands
//! that act as a workload against the Workload API (like `spire-agent api`), the
//! `tpm` commands, `healthcheck` and `validate`. One module per command group; each prints
//! through functions that take data and return text, so that the output is tested.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod api;
pub mod api_tpm;
pub mod healthcheck;
pub mod run;
pub mod tpm;
pub mod validate;

/// The command line.
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

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the agent.
    Run(run::RunArgs),
    /// Acts as a workload against the Workload API.
    #[command(subcommand)]
    Api(api::ApiCommand),
    /// The TPM: DevID provisioning and what to allow-list.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
    /// Checks that the agent is up and has its identity.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Checks a configuration file without starting anything.
    Validate(validate::ValidateArgs),
}

/// Where a client command finds the agent.
#[derive(Debug, clap::Args, Clone)]
pub struct SocketArg {
    /// The Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET, then the agent's default).
    #[arg(long)]
    pub socket_path: Option<PathBuf>,
}

impl SocketArg {
    /// The socket to use: the flag, then `SPIFFE_ENDPOINT_SOCKET`, then the default.
    pub fn resolve(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.socket_path {
            return Ok(p.clone());
        }
        match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
            Ok(v) => endpoint_path(&v),
            Err(_) => Ok(PathBuf::from(crate::config::DEFAULT_SOCKET)),
        }
    }
}

/// The socket path in a `SPIFFE_ENDPOINT_SOCKET` value (`unix:///absolute/path`).
fn endpoint_path(v: &str) -> Result<PathBuf, CliError> {
    let p = v
        .strip_prefix("unix://")
        .ok_or_else(|| CliError::EndpointNotUnix(v.to_owned()))?;
    if !p.starts_with('/') {
        return Err(CliError::EndpointRelative(v.to_owned()));
    }
    Ok(PathBuf::from(p))
}

/// Why a command failed: the message printed after `Error: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::InvalidConfig),
    #[error(transparent)]
    Run(#[from] crate::startup::StartupError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("SPIFFE_ENDPOINT_SOCKET={0} is not a unix:///absolute/path address")]
    EndpointNotUnix(String),
    #[error("SPIFFE_ENDPOINT_SOCKET={0}: the path must be absolute")]
    EndpointRelative(String),
    #[error(
        "cannot reach the Workload API at {path}: {message} (is the agent running? set --socket-path)"
    )]
    Unreachable { path: String, message: String },
    /// The agent answered with an error.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    #[error("the agent closed the stream without an answer")]
    NoAnswer,
    #[error("{path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent is unhealthy: {0}")]
    Unhealthy(String),
    #[error(transparent)]
    Tpm(#[from] tessera_tpm::provision::ProvisionError),
    /// A key could not be made or written.
    #[error("{0}")]
    Key(String),
    #[error("cannot encode the output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Logging for the agent's commands. tss-esapi logs its own account of every TPM
/// failure, and ERROR lines about the broken context the agent drops when it
/// reconnects: the agent's messages carry the same facts once. `tss_esapi=...` in
/// `TESSERA_LOG` brings them back.
fn init_logging(level: &str, format: tessera_process::logging::LogFormat) {
    tessera_process::logging::init(level, &["tss_esapi"], format);
}

/// Parses the command line, runs the command, and says how it went.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
pub fn execute(command: Command) -> Result<(), CliError> {
    // SIGPIPE stays ignored (Rust's default): the commands write to sockets, and a
    // peer that goes away is an error to report; closed output pipes are handled by
    // `tessera_process::output::print`.
    let runtime = tessera_process::shutdown::runtime().map_err(CliError::Runtime)?;
    match command {
        Command::Run(args) => run::execute(args, runtime),
        Command::Api(c) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            runtime.block_on(api::execute(c))
        }
        Command::Tpm(c) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            tpm::execute(c)
        }
        Command::Healthcheck(args) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            runtime.block_on(healthcheck::execute(args))
        }
        Command::Validate(args) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            tessera_process::output::print(&validate::execute(&args)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_variable_must_be_an_absolute_unix_address() {
        assert_eq!(
            endpoint_path("unix:///run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        let e = endpoint_path("tcp://127.0.0.1:1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "SPIFFE_ENDPOINT_SOCKET=tcp://127.0.0.1:1 is not a unix:///absolute/path address"
        );
        let e = endpoint_path("unix://run/a.sock").unwrap_err();
        assert!(e.to_string().contains("must be absolute"), "{e}");
        let flag = SocketArg {
            socket_path: Some("/x.sock".into()),
        };
        assert_eq!(flag.resolve().unwrap(), PathBuf::from("/x.sock"));
    }

    #[test]
    fn tpm_commands_take_a_backend_and_refuse_an_unknown_one() {
        for (args, want) in [
            (vec!["tpm", "info"], tessera_tpm::Backend::default()),
            (
                vec!["tpm", "info", "--tpm-backend", "native"],
                tessera_tpm::Backend::Native,
            ),
            (
                vec![
                    "tpm",
                    "create-key",
                    "--tpm-backend",
                    "esapi",
                    "--out",
                    "/k",
                    "--csr",
                    "/c",
                ],
                tessera_tpm::Backend::Esapi,
            ),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("tessera-agent").chain(args.clone())).unwrap();
            let backend = match cli.command {
                Command::Tpm(
                    tpm::TpmCommand::Info { tpm_backend, .. }
                    | tpm::TpmCommand::CreateKey { tpm_backend, .. }
                    | tpm::TpmCommand::ProvisionDevid { tpm_backend, .. },
                ) => tpm_backend,
                _ => panic!("{args:?} is not a tpm command"),
            };
            assert_eq!(backend, want, "{args:?}");
        }
        let e = Cli::try_parse_from(["tessera-agent", "tpm", "info", "--tpm-backend", "tss"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown TPM backend \"tss\""), "{e}");
    }

    #[test]
    fn every_command_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["tessera-agent", "run", "--join-token-file", "/t"]).unwrap();
        assert!(matches!(cli.command, Command::Run(_)));
        let cli = Cli::try_parse_from([
            "tessera-agent",
            "api",
            "fetch",
            "jwt",
            "--audience",
            "a",
            "--socket-path",
            "/s",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Api(_)));
        let e = Cli::try_parse_from([
            "tessera-agent",
            "run",
            "--join-token",
            "t",
            "--join-token-file",
            "/t",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }
}
