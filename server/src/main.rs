//! The `tessera-server` binary: the process set-up the library cannot do, then the
//! command line (`tessera_server::cli`).

use std::process::ExitCode;

use clap::Parser;
use tessera_server::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        tessera_process::shutdown::default_sigpipe();
    }
    let runtime = match tessera_process::shutdown::runtime() {
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
