//! Retrying without storming a recovering server: [`Backoff`], the one capped,
//! jittered exponential backoff every retry path of the agent uses (entry sync, SVID
//! signing, agent SVID renewal, JWT-SVID minting, attestation and re-attestation),
//! and [`RepeatLog`], which reports a failure that repeats try after try once, then
//! as a count, instead of once per try.
//!
//! Thousands of agents lose the server at the same moment, so what matters is that
//! their retries spread out and thin out: each wait doubles up to a ceiling, and is
//! drawn at random from its upper half, so agents that failed together do not come
//! back together.

use std::time::{Duration, Instant};

use rand::Rng;

/// The longest wait between two attempts, whatever the sync interval.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The ceiling is this many sync intervals (one minute with the default 5 s).
const CEILING_INTERVALS: u32 = 12;
/// The shortest first wait, so that a tiny sync interval cannot make a busy loop.
const MIN_BASE: Duration = Duration::from_millis(100);
/// How often a repeated failure is reported with its count.
pub const REPORT_WINDOW: Duration = Duration::from_secs(300);

/// Capped exponential backoff with jitter. Not thread-safe by itself: each retry
/// path owns one.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Waits starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = base.max(MIN_BASE);
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The agent's schedule: from the sync interval up to twelve of them, never
    /// more than [`MAX_BACKOFF`].
    pub fn for_interval(sync_interval: Duration) -> Self {
        Self::new(
            sync_interval.min(MAX_BACKOFF),
            sync_interval
                .saturating_mul(CEILING_INTERVALS)
                .min(MAX_BACKOFF),
        )
    }

    /// Records one more failure and returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling();
        ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// The upper bound of the next wait: `base * 2^(failures - 1)`, capped.
    pub fn ceiling(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One retry path's failure log: the first failure of a kind is reported at once;
/// the same failure again is only counted, and reported with its count once per
/// [`REPORT_WINDOW`]. A few kinds are remembered at a time, so that two causes that
/// take turns (a server answering two ways while its HSM is away) are both quiet.
#[derive(Debug, Default)]
pub struct RepeatLog {
    window: Option<Duration>,
    kinds: Vec<Kind>,
    streak: u64,
}

/// How many kinds of failure a [`RepeatLog`] remembers.
const KINDS: usize = 8;

#[derive(Debug)]
struct Kind {
    key: String,
    reported_at: Instant,
    unreported: u64,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl RepeatLog {
    /// A log reporting repeats every `window`.
    pub fn with_window(window: Duration) -> Self {
        Self {
            window: Some(window),
            ..Self::default()
        }
    }

    fn window(&self) -> Duration {
        self.window.unwrap_or(REPORT_WINDOW)
    }

    /// A failure. `key` says which failures are "the same" (an error message without
    /// counts or times in it); `line` is what to report. Returns the line to log, if
    /// any.
    pub fn failure(&mut self, now: Instant, key: &str, line: &str) -> Option<String> {
        let window = self.window();
        self.streak += 1;
        if let Some(k) = self.kinds.iter_mut().find(|k| k.key == key) {
            k.unreported += 1;
            if now.saturating_duration_since(k.reported_at) < window {
                return None;
            }
            let out = format!(
                "{line} (repeated {} times in the last {})",
                k.unreported,
                human(window)
            );
            k.unreported = 0;
            k.reported_at = now;
            return Some(out);
        }
        if self.kinds.len() == KINDS {
            // Forget the kind reported longest ago.
            if let Some(oldest) = self
                .kinds
                .iter()
                .enumerate()
                .min_by_key(|(_, k)| k.reported_at)
                .map(|(i, _)| i)
            {
                self.kinds.swap_remove(oldest);
            }
        }
        self.kinds.push(Kind {
            key: key.to_owned(),
            reported_at: now,
            unreported: 0,
        });
        Some(line.to_owned())
    }

    /// A success: returns how many failures in a row it ends, if any.
    pub fn success(&mut self) -> Option<u64> {
        self.kinds.clear();
        let streak = std::mem::take(&mut self.streak);
        (streak > 0).then_some(streak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling_and_are_jittered_within_it() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let d = b.fail();
            let c = b.ceiling();
            assert!(d <= c && d >= c / 2, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_secs());
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]);
        assert_eq!(b.failures(), 10);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.fail() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_agents_that_failed_together() {
        // A thousand agents failing three times together do not retry together.
        let waits: std::collections::BTreeSet<u128> = (0..1000)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
                b.fail();
                b.fail();
                b.fail().as_millis()
            })
            .collect();
        assert!(waits.len() > 500, "only {} distinct waits", waits.len());
        assert!(waits.iter().all(|w| (10_000..=20_000).contains(w)));
    }

    #[test]
    fn the_agent_schedule_follows_the_sync_interval_and_is_bounded() {
        let mut b = Backoff::for_interval(Duration::from_secs(5));
        for _ in 0..50 {
            assert!(b.fail() <= Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        let mut long = Backoff::for_interval(Duration::from_secs(3600));
        for _ in 0..5 {
            long.fail();
        }
        assert_eq!(long.ceiling(), MAX_BACKOFF);
        // A tiny interval still waits a little, and never overflows.
        let mut tiny = Backoff::for_interval(Duration::ZERO);
        assert!(tiny.fail() >= MIN_BASE / 2);
        for _ in 0..100 {
            tiny.fail();
        }
        assert!(tiny.ceiling() <= MAX_BACKOFF);
    }

    #[test]
    fn a_repeated_failure_is_logged_once_then_with_its_count() {
        let mut log = RepeatLog::with_window(Duration::from_secs(300));
        let t0 = Instant::now();
        let line = "sync failed (will retry): server unreachable";
        assert_eq!(log.failure(t0, "unreachable", line).as_deref(), Some(line));
        // 37 more tries in the next five minutes: silent.
        for i in 1..=37 {
            assert_eq!(
                log.failure(t0 + Duration::from_secs(i * 8), "unreachable", line),
                None
            );
        }
        // The next one after the window carries the count.
        let out = log
            .failure(t0 + Duration::from_secs(301), "unreachable", line)
            .unwrap();
        assert_eq!(
            out,
            "sync failed (will retry): server unreachable (repeated 38 times in the last 5m)"
        );
        // A different failure is reported at once; success ends the streak.
        assert_eq!(
            log.failure(t0 + Duration::from_secs(302), "refused", "refused")
                .as_deref(),
            Some("refused")
        );
        assert_eq!(log.success(), Some(40));
        assert_eq!(log.success(), None);
        // Two causes taking turns are both quiet after their first report.
        let t1 = t0 + Duration::from_secs(400);
        assert!(log.failure(t1, "a", "cause a").is_some());
        assert!(log.failure(t1, "b", "cause b").is_some());
        for i in 1..20 {
            let t = t1 + Duration::from_secs(i);
            assert_eq!(log.failure(t, "a", "cause a"), None);
            assert_eq!(log.failure(t, "b", "cause b"), None);
        }
        // Many kinds: the log stays bounded and keeps working.
        for i in 0..100 {
            log.failure(t1 + Duration::from_secs(30), &format!("k{i}"), "many");
        }
        assert!(log.kinds.len() <= KINDS);
        assert_eq!(log.success(), Some(2 + 38 + 100));
        // After a success the same failure is news again.
        assert!(
            log.failure(t0 + Duration::from_secs(303), "unreachable", line)
                .is_some()
        );
    }
}
