//! The `tessera-agent` binary: the command line in `tessera_agent::cli`.

fn main() -> std::process::ExitCode {
    tessera_agent::cli::main()
}
