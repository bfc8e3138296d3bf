//! The `tessera-agent` binary.

use std::process::ExitCode;

use clap::Parser;
use tessera_agent::cli::{Cli, Command, TokenArgs, client_command, run};
use tessera_agent::config::AgentConfig;

fn init_logging(level: &str) {
    let spec = std::env::var("TESSERA_LOG").unwrap_or_else(|_| level.to_owned());
    // tss-esapi logs its own account of every TPM failure, and ERROR lines about the
    // broken context the agent drops when it reconnects: the agent's messages carry
    // the same facts once. `tss_esapi=...` in TESSERA_LOG brings them back.
    let spec = if spec.contains("tss_esapi") {
        spec
    } else {
        format!("{spec},tss_esapi=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Command-line tools die quietly when their output pipe closes (`| head`), instead
/// of panicking on the failed write.
#[expect(
    unsafe_code,
    reason = "restoring the default SIGPIPE action needs libc::signal"
)]
fn default_sigpipe() {
    // SAFETY: called once at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        default_sigpipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run {
            config,
            set,
            join_token,
            join_token_file,
        } => {
            let cfg = match AgentConfig::load(&config, &set) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&cfg.log_level);
            tessera_core::config::warn_secret_flags(&set);
            let token = TokenArgs {
                flag: join_token,
                file: join_token_file,
            };
            let result = runtime.block_on(run(cfg, token));
            // A TPM or key operation still running on the blocking pool must not hold
            // the exit up.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("Error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            init_logging("warn");
            match runtime.block_on(client_command(command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {}", e.0);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
