//! Logging refusals without flooding the log: an attacker refused ten thousand times a
//! second must cost one line, not ten thousand. The first refusal after a quiet spell
//! is reported after a short gathering delay, with the count of the whole burst;
//! refusals that keep coming are summed and reported at most once per interval.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long the first refusals of a burst are gathered before they are reported.
pub const GATHER: Duration = Duration::from_secs(2);
/// At most one report per this interval while refusals keep coming.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// Peers counted by name in one report; the others are summed.
const NAMED_PEERS: usize = 32;
/// Peers named in the log line, the most refused first.
const SHOWN_PEERS: usize = 3;

/// See the module documentation.
#[derive(Debug)]
pub struct RefusalLog {
    /// What is refused, as the log line starts: "agent API connections".
    what: &'static str,
    window: Mutex<Window>,
    reports: AtomicU64,
}

#[derive(Debug, Default)]
struct Window {
    count: u64,
    by_peer: HashMap<String, u64>,
    other_peers: u64,
    reasons: BTreeMap<String, u64>,
    first: Option<Instant>,
    last_report: Option<Instant>,
    flush_scheduled: bool,
}

/// What one report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Refusals in the period.
    pub count: u64,
    /// The most refused peers and their counts, most first.
    pub top: Vec<(String, u64)>,
    /// Distinct peers beyond `top`, and refusals of peers not counted by name.
    pub more_peers: usize,
    /// Each reason and how often it was given, most first.
    pub reasons: Vec<(String, u64)>,
    /// The period the report covers.
    pub over: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused {} in the last {:.0}s",
            self.count,
            self.over.as_secs_f64().max(1.0)
        )?;
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        write!(f, " ({})", reasons.join("; "))?;
        let top: Vec<String> = self.top.iter().map(|(p, n)| format!("{p} {n}×")).collect();
        write!(f, "; from {}", top.join(", "))?;
        if self.more_peers > 0 {
            write!(f, " and {} more peers", self.more_peers)?;
        }
        Ok(())
    }
}

impl RefusalLog {
    /// A log for refusals of `what` (e.g. "agent API connections").
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            what,
            window: Mutex::new(Window::default()),
            reports: AtomicU64::new(0),
        })
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one refusal of `peer` for `reason` and makes sure it will be reported.
    pub fn record(self: &Arc<Self>, peer: &dyn Display, reason: &str) {
        let now = Instant::now();
        let mut w = self.window();
        w.count += 1;
        w.first.get_or_insert(now);
        let key = peer.to_string();
        if let Some(n) = w.by_peer.get_mut(&key) {
            *n += 1;
        } else if w.by_peer.len() < NAMED_PEERS {
            w.by_peer.insert(key, 1);
        } else {
            w.other_peers += 1;
        }
        *w.reasons.entry(reason.to_owned()).or_default() += 1;
        if w.flush_scheduled {
            return;
        }
        w.flush_scheduled = true;
        let at = match w.last_report {
            Some(last) => (now + GATHER).max(last + INTERVAL),
            None => now + GATHER,
        };
        drop(w);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let this = self.clone();
                rt.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    this.flush();
                });
            }
            // No runtime (a command-line tool, a test): report at once.
            Err(_) => self.flush(),
        }
    }

    /// Reports what was gathered, if anything.
    pub fn flush(&self) {
        if let Some(s) = self.take() {
            self.reports.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{}: {s}", self.what);
        }
    }

    /// Takes the gathered refusals as a summary and starts a new window.
    fn take(&self) -> Option<Summary> {
        let now = Instant::now();
        let mut w = self.window();
        w.flush_scheduled = false;
        if w.count == 0 {
            return None;
        }
        let mut peers: Vec<(String, u64)> = w.by_peer.drain().collect();
        peers.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let more_peers = peers.len().saturating_sub(SHOWN_PEERS) + usize::from(w.other_peers > 0);
        peers.truncate(SHOWN_PEERS);
        let s = Summary {
            count: w.count,
            top: peers,
            more_peers,
            reasons: std::mem::take(&mut w.reasons).into_iter().collect(),
            over: w.first.map_or(Duration::ZERO, |f| now.duration_since(f)),
        };
        w.count = 0;
        w.other_peers = 0;
        w.first = None;
        w.last_report = Some(now);
        Some(s)
    }

    /// Reports made so far.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }

    /// Refusals gathered and not yet reported.
    pub fn pending(&self) -> u64 {
        self.window().count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_peers_and_reasons() {
        let log = RefusalLog::new("test");
        // Without a runtime each record reports at once; gather by hand instead.
        for i in 0..40 {
            let mut w = log.window();
            w.count += 1;
            let peer = if i < 30 {
                "a".to_string()
            } else {
                format!("p{i}")
            };
            *w.by_peer.entry(peer).or_default() += 1;
            *w.reasons.entry("share".into()).or_default() += 1;
        }
        let s = log.take().unwrap();
        assert_eq!(s.count, 40);
        assert_eq!(s.top[0], ("a".to_string(), 30));
        assert_eq!(s.top.len(), 3);
        assert_eq!(s.more_peers, 8);
        assert_eq!(s.reasons, vec![("share".to_string(), 40)]);
        assert!(s.to_string().contains("refused 40"), "{s}");
        assert!(log.take().is_none(), "the window starts over");
    }

    #[test]
    fn without_a_runtime_each_refusal_is_reported_at_once() {
        let log = RefusalLog::new("test");
        log.record(&"x", "r");
        log.record(&"x", "r");
        assert_eq!(log.reports(), 2);
        assert_eq!(log.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_report_and_a_siege_one_per_interval() {
        let log = RefusalLog::new("test");
        for _ in 0..10_000 {
            log.record(&"127.0.0.2", "share full");
        }
        assert_eq!(log.reports(), 0, "gathered first");
        tokio::time::sleep(GATHER + Duration::from_millis(10)).await;
        assert_eq!(log.reports(), 1);
        assert_eq!(log.pending(), 0);

        // Refusals every second for two minutes: about one report per interval.
        for _ in 0..120 {
            log.record(&"127.0.0.2", "share full");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(INTERVAL).await;
        let n = log.reports();
        assert!((4..=6).contains(&n), "{n} reports");
        assert_eq!(log.pending(), 0, "the tail is reported too");
    }

    #[test]
    fn peers_beyond_the_named_ones_are_summed() {
        let log = RefusalLog::new("test");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..100 {
                log.record(&format!("10.0.0.{i}"), "share full");
            }
        });
        let s = log.take().unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.more_peers, NAMED_PEERS - SHOWN_PEERS + 1);
    }
}
