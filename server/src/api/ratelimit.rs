//! The attestation rate limit: each source address (an IPv4 address, an IPv6 /64) may
//! start `rate` attestations per second, in bursts of up to `burst`. Past it the
//! server answers `ResourceExhausted` at once, before reading any evidence, so that
//! guessing join tokens or replaying TPM evidence costs the guesser time and the
//! server nothing.
//!
//! SPIRE allows one attestation per second per address and makes the excess wait.
//! Tessera refuses instead of queueing (a queue is something to fill), allows a small
//! burst, and gives a successful attestation its allowance back: what the limit
//! meters is failed attempts, so agents booting together behind one NAT are not
//! turned away for each other's success, while every guess costs its guesser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_process::limits::{IpPeer, RefusalLog};
use tokio::time::Instant;

/// Sources tracked at once. Past it, sources whose bucket has refilled are
/// forgotten; if none has, new sources are refused until one does.
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct AttestationLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpPeer, Bucket>>,
    refusals: Arc<RefusalLog>,
}

/// Why an attestation may not start now.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Limited {
    #[error(
        "too many attestations from {peer}: at most {rate} per second, in bursts of {burst}; \
         try again in {} ms",
        retry_after.as_millis()
    )]
    Rate {
        peer: IpPeer,
        rate: f64,
        burst: u32,
        retry_after: Duration,
    },
    #[error("too many sources are attesting at once; try again in a few seconds")]
    Sources,
}

impl From<Limited> for tonic::Status {
    fn from(l: Limited) -> Self {
        tonic::Status::resource_exhausted(l.to_string())
    }
}

impl AttestationLimit {
    /// The limit, or `None` when `rate` is 0 (no limit).
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        Self::named(rate, burst, "attestations refused by the rate limit")
    }

    /// The same limit for something else that fails (`what` starts its log lines).
    pub fn named(rate: f64, burst: u32, what: &'static str) -> Option<Self> {
        (rate > 0.0).then(|| Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            refusals: RefusalLog::new(what),
        })
    }

    fn full(&self, b: &Bucket, now: Instant) -> bool {
        b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate >= self.burst
    }

    /// Takes one attestation from `peer`'s allowance, or says when to come back.
    /// Give the allowance back with [`Admitted::succeeded`] when the attestation
    /// succeeds.
    pub fn check(self: &Arc<Self>, peer: IpPeer) -> Result<Admitted, Limited> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&peer) && buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, b| !self.full(b, now));
            if buckets.len() >= MAX_SOURCES {
                drop(buckets);
                self.refusals.record(&peer, "too many sources");
                return Err(Limited::Sources);
            }
        }
        let b = buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(Admitted {
                limit: self.clone(),
                peer,
            });
        }
        let retry_after = Duration::from_secs_f64((1.0 - b.tokens) / self.rate);
        drop(buckets);
        self.refusals.record(&peer, "over the rate");
        Err(Limited::Rate {
            peer,
            rate: self.rate,
            burst: self.burst as u32,
            retry_after,
        })
    }

    /// Refusals logged so far and still to be logged (for tests).
    pub fn refusals(&self) -> &Arc<RefusalLog> {
        &self.refusals
    }

    fn refund(&self, peer: IpPeer) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(&peer) {
            b.tokens = (b.tokens + 1.0).min(self.burst);
        }
    }
}

/// One attestation let through.
#[derive(Debug)]
pub struct Admitted {
    limit: Arc<AttestationLimit>,
    peer: IpPeer,
}

impl Admitted {
    /// The attestation succeeded: it does not count against its source.
    pub fn succeeded(self) {
        self.limit.refund(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ip(last: u8) -> IpPeer {
        IpPeer::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(AttestationLimit::new(0.0, 10).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let l = Arc::new(AttestationLimit::new(1.0, 3).unwrap());
        for _ in 0..3 {
            l.check(ip(1)).unwrap();
        }
        let e = l.check(ip(1)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("10.0.0.1") && text.contains("1 per second"),
            "{text}"
        );
        assert!(
            matches!(e, Limited::Rate { retry_after, .. } if retry_after <= Duration::from_secs(1))
        );
        // Another source is not affected.
        l.check(ip(2)).unwrap();
        // One per second after the burst.
        tokio::time::advance(Duration::from_millis(1010)).await;
        l.check(ip(1)).unwrap();
        assert!(l.check(ip(1)).is_err());
        // A quiet spell refills the burst, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            l.check(ip(1)).unwrap();
        }
        assert!(l.check(ip(1)).is_err());
        let status: tonic::Status = l.check(ip(1)).unwrap_err().into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_give_their_allowance_back() {
        let l = Arc::new(AttestationLimit::new(1.0, 2).unwrap());
        // A hundred agents behind one address, one after the other, all succeed.
        for _ in 0..100 {
            l.check(ip(1)).unwrap().succeeded();
        }
        // Failures are what is metered.
        drop(l.check(ip(1)).unwrap());
        drop(l.check(ip(1)).unwrap());
        assert!(l.check(ip(1)).is_err());
        // A refund never raises the allowance above the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        l.check(ip(1)).unwrap().succeeded();
        l.check(ip(1)).unwrap();
        l.check(ip(1)).unwrap();
        assert!(l.check(ip(1)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_of_sources_is_bounded() {
        let l = Arc::new(AttestationLimit::new(1.0, 1).unwrap());
        for i in 0..MAX_SOURCES as u32 {
            let peer = IpPeer::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
            l.check(peer).unwrap();
        }
        // Every bucket is empty: a new source must wait.
        let newcomer = IpPeer::from(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)));
        assert_eq!(l.check(newcomer).unwrap_err(), Limited::Sources);
        // Once they have refilled they are forgotten and room is made.
        tokio::time::advance(Duration::from_secs(2)).await;
        l.check(newcomer).unwrap();
        assert!(l.buckets.lock().unwrap().len() < 10);
    }
}
