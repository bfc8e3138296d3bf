//! Giving memory back once a burst of Workload API connections is over.
//!
//! Every connection has its own HTTP/2 buffers; a thousand workloads connecting at
//! once take tens of MiB, which the C allocator keeps for reuse after they leave. An
//! agent on an appliance should shrink back, so when the last open connection closes
//! and none opens for a moment, the allocator is asked to return its free pages
//! (`malloc_trim`, glibc only; other C libraries have nothing to call).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How long no connection may be open before memory is returned.
const QUIET: Duration = Duration::from_secs(2);
/// At most one release per this interval: a trim walks the whole heap.
const MIN_GAP: Duration = Duration::from_secs(10);

/// Counts open connections and releases memory after the last one closes.
#[derive(Debug, Default)]
pub struct Trimmer {
    open: AtomicUsize,
    idle: Notify,
}

/// Held by one open connection; dropping it closes the connection's count.
#[derive(Debug)]
pub struct ConnGuard(Arc<Trimmer>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit if the releasing task is busy: bursts collapse into one.
            self.0.idle.notify_one();
        }
    }
}

impl Trimmer {
    /// Counts a new connection until the guard is dropped.
    pub fn track(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Releases memory whenever the agent has been without connections for
    /// [`QUIET`], at most once per [`MIN_GAP`]. Runs until the runtime stops.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.idle.notified().await;
            tokio::time::sleep(QUIET).await;
            if self.open() == 0 {
                let released = release_free_memory();
                tracing::debug!(
                    released,
                    "returned free memory after the last Workload API connection"
                );
            }
            tokio::time::sleep(MIN_GAP.saturating_sub(QUIET)).await;
        }
    }
}

/// Asks the C allocator to return free pages to the system; whether it did.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "malloc_trim is a plain libc call")]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes the
    // arena locks itself and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks the C allocator to return free pages to the system; whether it did.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_open_connections() {
        let t = Arc::new(Trimmer::default());
        let a = t.track();
        let b = t.track();
        assert_eq!(t.open(), 2);
        drop(a);
        assert_eq!(t.open(), 1);
        drop(b);
        assert_eq!(t.open(), 0);
    }

    #[tokio::test]
    async fn the_last_close_wakes_the_releaser_once_per_burst() {
        let t = Arc::new(Trimmer::default());
        // Three bursts closing while nobody waits leave one permit, not three.
        for _ in 0..3 {
            drop(t.track());
        }
        tokio::time::timeout(Duration::from_secs(1), t.idle.notified())
            .await
            .expect("the last close notified");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), t.idle.notified())
                .await
                .is_err(),
            "one permit only"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_system() {
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }
        // Many small blocks (below the mmap threshold, so they live in the heap),
        // touched, then all but the last freed: the heap cannot shrink by itself.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|_| vec![1u8; 4000]).collect();
        let keep = blocks.pop();
        drop(blocks);
        let before = rss_kib();
        release_free_memory();
        let after = rss_kib();
        drop(keep);
        assert!(
            after + 40_000 < before,
            "RSS {before} KiB before the release, {after} KiB after"
        );
    }
}
