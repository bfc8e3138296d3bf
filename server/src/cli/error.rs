//! Why a `tessera-server` command failed: the message printed after `Error: `, with
//! the error that caused it kept as its source.

use std::path::PathBuf;

use crate::ca::upstream::UpstreamError;
use crate::config::InvalidConfig;
use crate::run::RunError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The admin socket does not answer.
    #[error(
        "cannot reach the server's admin socket {}: {} (is the server running? set --socket-path)",
        path.display(), innermost(source)
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// `--remote`: the server's TLS port does not answer, or the handshake failed.
    #[error(
        "cannot reach the server's admin API at {address} over mTLS: {message} (is the \
         address the server's bind_address? do the --svid files come from this trust domain?)"
    )]
    Remote { address: String, message: String },
    /// `--remote` without `--svid`.
    #[error(
        "--remote needs --svid DIR: the X509-SVID (svid.0.pem, svid.0.key, bundle.0.pem) of an admin workload"
    )]
    RemoteNeedsSvid,
    /// The server refused or failed the call.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Server(#[from] tonic::Status),
    /// The server's answer cannot be read (a server of another version?).
    #[error("the server's answer is unusable: {0}")]
    Reply(String),
    /// A flag the command needs is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// `--node` makes the parent from the entry's SPIFFE ID.
    #[error("--node needs --spiffe-id")]
    NodeNeedsSpiffeId,
    /// A duration does not fit the admin API's seconds.
    #[error("{flag}: {secs} seconds is too long (at most {} seconds)", u32::MAX)]
    DurationTooLong { flag: &'static str, secs: u64 },
    /// A flag's value is not valid.
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    /// An input file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input file does not hold what the command expects.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// An input file is not the PEM the command expects.
    #[error("{}: {source}", path.display())]
    BadPem {
        path: PathBuf,
        #[source]
        source: tessera_core::pem::PemError,
    },
    /// An output file or directory cannot be written.
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The local key for a minted SVID cannot be made.
    #[error("{0}")]
    Key(#[from] tessera_core::key::KeyError),
    /// The certificate request for a minted SVID cannot be made.
    #[error("{0}")]
    Csr(#[from] tessera_core::x509::BuildError),
    /// JSON output cannot be made.
    #[error("JSON output: {0}")]
    Json(#[from] serde_json::Error),
    /// The server answered that it cannot serve.
    #[error("server is unhealthy: {}", .details.join("; "))]
    Unhealthy {
        details: Vec<String>,
        /// What `--verbose` prints on standard output before the error.
        shown: String,
    },
    /// Some items of a batch failed (the others were done).
    #[error("{failed} of {total} {what} failed:\n{details}")]
    Partial {
        what: &'static str,
        failed: usize,
        total: usize,
        /// One line per failure.
        details: String,
        /// What was done, printed on standard output before the error.
        shown: String,
    },
    /// The configuration file is not valid.
    #[error("{0}")]
    Config(#[from] InvalidConfig),
    /// `ca init` failed.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The server could not start, or stopped with an error.
    #[error("{0}")]
    Run(#[from] RunError),
}

/// The deepest cause of `e`: a transport error says only "transport error" itself,
/// while what went wrong (no such file, connection refused) is at the bottom.
pub(super) fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}
