//! Wall-clock time as the long-running loops see it (CA rotation, SVID rotation,
//! renewal, sync), injected so that their decisions can be unit tested at any
//! instant without waiting.
//!
//! Only the wall clock is injected: it is what certificate lifetimes are measured in.
//! How long a loop sleeps between two looks at the clock stays with tokio's timer,
//! which tests control with `tokio::time::pause`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: fmt::Debug + Send + Sync {
    /// The time now.
    fn now(&self) -> SystemTime;

    /// The time now in whole seconds since the Unix epoch (0 before it).
    fn unix(&self) -> i64 {
        crate::x509::unix_seconds(self.now())
    }
}

/// A clock shared by the parts of one process.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

/// A clock that stands still until it is told to move: for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: SystemTime) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(start),
        })
    }

    /// A clock showing `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: u64) -> Arc<Self> {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += d;
    }

    /// Sets the clock to `t` (backwards too: a clock stepped back is a case to test).
    pub fn set(&self, t: SystemTime) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix(1_000);
        assert_eq!(c.unix(), 1_000);
        assert_eq!(c.unix(), 1_000);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.unix(), 1_090);
        c.set(SystemTime::UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(c.unix(), 10);
    }

    #[test]
    fn the_system_clock_is_now() {
        let before = SystemTime::now();
        let t = SystemClock.now();
        assert!(t >= before);
        assert!(SystemClock.unix() >= crate::x509::unix_seconds(before));
    }
}
