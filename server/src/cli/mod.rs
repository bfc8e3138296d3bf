//! The `tessera-server` command line: `run`, `ca init` and `validate` (offline), and
//! the admin commands that talk to a running server over its admin socket (or, with
//! `--remote`, over mTLS on its TLS port), one file per command group. Where
//! spire-server has the same command, the output follows it.
//!
//! Each command gathers its data and hands it to a printer that returns the text,
//! so that what the operator sees (table or `--output json`) is tested without a
//! server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::config::DEFAULT_ADMIN_SOCKET;

pub mod agent;
pub mod bundle;
pub mod ca;
pub mod entry;
pub mod entry_file;
mod error;
pub mod federation;
pub mod healthcheck;
pub mod logger;
pub mod mint;
pub mod remote;
pub mod run;
pub mod token;
pub mod validate;

pub use agent::AgentCommand;
pub use bundle::{BundleCommand, BundleFormat};
pub use ca::CaCommand;
pub use entry::{EntryCommand, EntryFields};
pub use error::CliError;
pub use federation::FederationCommand;
pub use logger::LoggerCommand;
pub use mint::{JwtCommand, X509Command};
pub use run::RunArgs;
pub use token::TokenCommand;

#[derive(Debug, Parser)]
#[command(
    name = "tessera-server",
    version,
    about = "Tessera server: a SPIFFE CA whose keys live in hardware"
)]
pub struct Cli {
    /// The admin socket of the running server.
    #[arg(long, global = true, env = "TESSERA_SERVER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket_path: PathBuf,
    /// Call a server's admin API over mTLS on its TLS port (its bind_address) instead
    /// of the admin socket; needs --svid.
    #[arg(
        long,
        global = true,
        env = "TESSERA_SERVER_REMOTE",
        value_name = "HOST:PORT"
    )]
    pub remote: Option<String>,
    /// For --remote: a directory holding an admin's X509-SVID as `tessera-agent api
    /// fetch x509 --write` leaves it (svid.0.pem, svid.0.key, bundle.0.pem).
    #[arg(long, global = true, env = "TESSERA_SERVER_SVID", value_name = "DIR")]
    pub svid: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin commands find the server.
#[derive(Debug, Clone)]
pub enum Target {
    /// The admin socket.
    Socket(PathBuf),
    /// The TLS port at `address`, as the admin whose SVID is in `svid`.
    Remote { address: String, svid: PathBuf },
}

impl Cli {
    /// Where the admin commands go.
    pub fn target(&self) -> Result<Target, CliError> {
        match (&self.remote, &self.svid) {
            (Some(address), Some(svid)) => Ok(Target::Remote {
                address: address.clone(),
                svid: svid.clone(),
            }),
            (Some(_), None) => Err(CliError::RemoteNeedsSvid),
            (None, _) => Ok(Target::Socket(self.socket_path.clone())),
        }
    }
}

/// What `tessera-server` was asked to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server.
    Run(RunArgs),
    /// Commands for a running server, over its admin socket.
    #[command(flatten)]
    Admin(AdminCommand),
    /// The upstream root CA (offline: needs the configuration, not a running server).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Checks a configuration file without starting anything.
    Validate(validate::ValidateArgs),
}

/// The commands that talk to a running server.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Registration entries.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Attested agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Federation relationships: the trust domains whose bundles the server fetches.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// X509-SVIDs minted directly.
    #[command(subcommand)]
    X509(X509Command),
    /// JWT-SVIDs minted directly.
    #[command(subcommand)]
    Jwt(JwtCommand),
    /// Checks that the server is up and can sign.
    Healthcheck {
        /// Print each component's state.
        #[arg(long)]
        verbose: bool,
    },
    /// The running server's log filter.
    #[command(subcommand)]
    Logger(LoggerCommand),
}

/// How admin commands print what they got.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Output {
    /// Text for people, laid out as spire-server does.
    #[default]
    Pretty,
    /// JSON for scripts.
    Json,
}

/// Sets up logging to standard error in `format`: `TESSERA_LOG` if set, `level`
/// otherwise. The filter can be changed later through [`crate::log_level`]
/// (`logger set`).
/// cryptoki logs every mechanism a token lists that it has no name for, at ERROR;
/// that is noise, not a fault, and stays off unless the filter names it.
pub fn init_logging(level: &str, format: tessera_process::logging::LogFormat) {
    if let Some(reload) =
        tessera_process::logging::init_reloadable(level, &["cryptoki::mechanism"], format)
    {
        let launch = reload.launch().to_owned();
        crate::log_level::install(&launch, move |s| reload.apply(s).map_err(|e| e.to_string()));
    }
}

/// Runs what the command line asks for; the error is printed after `Error: `.
pub fn execute(cli: Cli, runtime: tokio::runtime::Runtime) -> Result<(), CliError> {
    // Only the admin commands need a target: `run` must not trip over a stray
    // TESSERA_SERVER_REMOTE.
    let target = cli.target();
    match cli.command {
        Command::Run(args) => run::serve(args, runtime),
        Command::Ca(command) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            tessera_process::output::print(&ca::execute(command)?);
            Ok(())
        }
        Command::Validate(args) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            tessera_process::output::print(&validate::execute(&args)?);
            Ok(())
        }
        Command::Admin(command) => {
            init_logging("warn", tessera_process::logging::LogFormat::Text);
            match runtime.block_on(admin_command(&target?, command)) {
                Ok(text) => {
                    tessera_process::output::print(&text);
                    Ok(())
                }
                Err(e) => {
                    if let CliError::Unhealthy { shown, .. } | CliError::Partial { shown, .. } = &e
                    {
                        tessera_process::output::print(shown);
                    }
                    Err(e)
                }
            }
        }
    }
}

/// Runs one admin command against the server at `target`; returns what to print.
pub async fn admin_command(target: &Target, command: AdminCommand) -> Result<String, CliError> {
    let mut c = match target {
        Target::Socket(socket) => connect(socket).await?,
        Target::Remote { address, svid } => {
            remote::connect(address, remote::AdminSvid::load(svid)?).await?
        }
    };
    match command {
        AdminCommand::Entry(e) => entry::execute(&mut c, e).await,
        AdminCommand::Token(t) => token::execute(&mut c, t).await,
        AdminCommand::Agent(a) => agent::execute(&mut c, a).await,
        AdminCommand::Bundle(b) => bundle::execute(&mut c, b).await,
        AdminCommand::Federation(f) => federation::execute(&mut c, f).await,
        AdminCommand::X509(x) => mint::execute_x509(&mut c, x).await,
        AdminCommand::Jwt(j) => mint::execute_jwt(&mut c, j).await,
        AdminCommand::Healthcheck { verbose } => healthcheck::execute(&mut c, verbose).await,
        AdminCommand::Logger(l) => logger::execute(&mut c, l).await,
    }
}

async fn connect(path: &Path) -> Result<AdminClient<Channel>, CliError> {
    let ch = tessera_proto::unix_channel(path)
        .await
        .map_err(|source| CliError::Connect {
            path: path.to_owned(),
            source,
        })?;
    Ok(AdminClient::new(ch))
}

/// A duration flag in whole seconds, as the admin API takes it (0: the default).
fn secs(flag: &'static str, d: Option<Duration>) -> Result<u32, CliError> {
    d.map_or(Ok(0), |d| {
        u32::try_from(d.as_secs()).map_err(|_| CliError::DurationTooLong {
            flag,
            secs: d.as_secs(),
        })
    })
}

/// Pretty JSON, with the newline a terminal wants.
fn json_text(v: &serde_json::Value) -> Result<String, CliError> {
    Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_parses_to_its_group() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("tessera-server").chain(args.iter().copied()))
                .unwrap()
                .command
        };
        assert!(matches!(parse(&["run"]), Command::Run(_)));
        assert!(matches!(parse(&["ca", "init"]), Command::Ca(_)));
        assert!(matches!(
            parse(&["entry", "show"]),
            Command::Admin(AdminCommand::Entry(EntryCommand::Show { .. }))
        ));
        assert!(matches!(
            parse(&["healthcheck", "--verbose"]),
            Command::Admin(AdminCommand::Healthcheck { verbose: true })
        ));
        assert!(matches!(
            parse(&[
                "jwt",
                "mint",
                "--spiffe-id",
                "spiffe://td/w",
                "--audience",
                "a"
            ]),
            Command::Admin(AdminCommand::Jwt(_))
        ));
    }

    #[test]
    fn the_spire_verbs_parse_and_remote_needs_an_svid() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("tessera-server").chain(args.iter().copied()))
                .unwrap()
        };
        assert!(matches!(
            cli(&["entry", "count", "--selector", "unix:uid:1"]).command,
            Command::Admin(AdminCommand::Entry(EntryCommand::Count { .. }))
        ));
        assert!(matches!(
            cli(&["entry", "create", "--data", "-"]).command,
            Command::Admin(AdminCommand::Entry(EntryCommand::Create {
                data: Some(_),
                ..
            }))
        ));
        assert!(matches!(
            cli(&["agent", "show", "--spiffe-id", "spiffe://td/spire/agent/x"]).command,
            Command::Admin(AdminCommand::Agent(AgentCommand::Show { .. }))
        ));
        assert!(matches!(
            cli(&["bundle", "count"]).command,
            Command::Admin(AdminCommand::Bundle(BundleCommand::Count { .. }))
        ));
        assert!(matches!(
            cli(&[
                "federation",
                "create",
                "--trustDomain",
                "spire.test",
                "--bundleEndpointURL",
                "https://spire.test:8443",
                "--bundleEndpointProfile",
                "https_spiffe",
                "--endpointSpiffeID",
                "spiffe://spire.test/spire/server",
                "--trustDomainBundlePath",
                "b.pem"
            ])
            .command,
            Command::Admin(AdminCommand::Federation(FederationCommand::Create(_)))
        ));
        assert!(
            Cli::try_parse_from([
                "tessera-server",
                "federation",
                "create",
                "--data",
                "f.json",
                "--trust-domain",
                "a.test"
            ])
            .is_err(),
            "--data takes no other relationship flag"
        );
        assert!(matches!(
            cli(&["logger", "set", "--level", "debug"]).command,
            Command::Admin(AdminCommand::Logger(LoggerCommand::Set { .. }))
        ));
        assert!(matches!(
            cli(&["validate", "-c", "/etc/x.toml"]).command,
            Command::Validate(_)
        ));
        assert!(matches!(
            cli(&["entry", "count"]).target().unwrap(),
            Target::Socket(_)
        ));
        assert!(matches!(
            cli(&["--remote", "h:8081", "--svid", "/d", "entry", "count"])
                .target()
                .unwrap(),
            Target::Remote { .. }
        ));
        let err = cli(&["entry", "count", "--remote", "h:8081"])
            .target()
            .unwrap_err();
        assert!(matches!(err, CliError::RemoteNeedsSvid), "{err:?}");
    }

    #[tokio::test]
    async fn an_absent_server_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let err = admin_command(
            &Target::Socket(path.clone()),
            AdminCommand::Healthcheck { verbose: false },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CliError::Connect { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
        assert!(msg.contains("is the server running?"), "{msg}");
    }

    #[test]
    fn a_duration_too_long_for_the_api_is_refused_naming_the_flag() {
        assert_eq!(secs("--ttl", None).unwrap(), 0);
        assert_eq!(secs("--ttl", Some(Duration::from_secs(90))).unwrap(), 90);
        let err = secs("--ttl", Some(Duration::from_secs(u64::from(u32::MAX) + 1))).unwrap_err();
        assert!(err.to_string().contains("--ttl"), "{err}");
    }
}
