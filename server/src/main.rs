//! The `tessera-server` binary: the process set-up the library cannot do, then the
//! command line (`tessera_server::cli`).

use std::process::ExitCode;

use clap::Parser;
use tessera_server::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGPIPE stays ignored (Rust's default): the commands write to sockets, and a
    // peer that goes away is an error to report; closed output pipes are handled by
    // `tessera_process::output::print`.
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
