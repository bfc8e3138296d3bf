//! The `tessera-server` binary.

use std::process::ExitCode;

use clap::Parser;
use tessera_server::cli::{Cli, Command, admin_command, ca_command};
use tessera_server::config::ServerConfig;

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| {
        // cryptoki logs every mechanism a token lists that it has no name for, at
        // ERROR; that is noise, not a fault.
        tracing_subscriber::EnvFilter::new(format!("{level},cryptoki::mechanism=off"))
    });
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
        Command::Run { config, set } => {
            let cfg = match ServerConfig::load(&config, &set) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&cfg.log_level);
            tessera_core::config::warn_secret_flags(&set);
            let result = runtime.block_on(tessera_server::run::run(cfg));
            // Blocking work still running (a signature waiting on a slow token, a
            // write) must not hold the exit: each write is one transaction, so
            // stopping it midway loses nothing that was acknowledged.
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
        Command::Ca(c) => {
            init_logging("warn");
            match ca_command(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {}", e.0);
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            init_logging("warn");
            match runtime.block_on(admin_command(&cli.socket_path, command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {}", e.0);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
