//! The `tessera-server` binary: the process set-up the library cannot do, then the
//! command line (`tessera_server::cli`).

use std::process::ExitCode;

use clap::Parser;
use tessera_server::cli::{Cli, Command};

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
    if !matches!(cli.command, Command::Run(_)) {
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
    match tessera_server::cli::execute(cli, runtime) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
