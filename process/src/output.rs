//! Command output on standard output. Command-line tools keep Rust's default of
//! ignoring SIGPIPE, because they also write to sockets (the Workload API, the admin
//! socket) and a peer that goes away must be an error they can report, not a signal
//! that kills them silently; a reader of their output that goes away (`| head`) is
//! handled here instead: the command ends quietly, as if killed by SIGPIPE.

use std::io::Write;

/// The exit status of a command whose output reader went away: what a shell reports
/// for a process killed by SIGPIPE (128 + 13).
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes `text` to standard output, whole. A closed pipe ends the process with
/// [`BROKEN_PIPE_EXIT`]; any other failure is reported on standard error and ends it
/// with status 1.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_EXIT)
        }
        Err(e) => {
            eprintln!("Error: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}
