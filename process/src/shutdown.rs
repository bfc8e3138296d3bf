//! Stopping, the same way in both binaries: SIGTERM or SIGINT begins a graceful
//! shutdown (no new connections or calls; those in flight get [`GRACE`]), and the
//! runtime then gives blocking work still running [`EXIT_GRACE`] before the process
//! exits. SIGPIPE stays ignored everywhere (Rust's default); [`crate::output`]
//! handles a closed output pipe.

use std::future::Future;
use std::time::Duration;

/// How long calls in flight get to finish once shutdown has begun.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long blocking work still running at exit (a signature waiting on a slow
/// token, a TPM command) may hold the exit up. Each datastore write is one
/// transaction, so stopping midway loses nothing that was acknowledged.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Runs `work` (a daemon's whole life) on `runtime`, then shuts the runtime down,
/// waiting at most [`EXIT_GRACE`] for blocking work.
pub fn run_to_exit<T>(runtime: tokio::runtime::Runtime, work: impl Future<Output = T>) -> T {
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

/// The multi-threaded runtime both binaries run on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_work_does_not_hold_the_exit() {
        let rt = runtime().unwrap();
        let started = std::time::Instant::now();
        let answer = run_to_exit(rt, async {
            // A signature stuck on a token that never answers.
            drop(tokio::task::spawn_blocking(|| {
                std::thread::sleep(Duration::from_secs(120))
            }));
            42
        });
        assert_eq!(answer, 42);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the exit waited for the stuck blocking task"
        );
    }
}
