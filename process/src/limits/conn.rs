//! Connection caps for a listener: at most `max_total` connections open at once, and
//! at most `max_per_peer` of them from one peer, so that one client (one source
//! address, one local user) holding all it may leaves room for the others. A
//! connection past either cap is closed at once by the caller, never queued.

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::refusals::RefusalLog;

/// The two caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnCaps {
    /// Connections open at once on the listener.
    pub max_total: usize,
    /// Connections open at once from one peer.
    pub max_per_peer: usize,
}

impl ConnCaps {
    /// The defaults for a listener under an open-file limit of `limit` whose
    /// connections each hold `fds_per_connection` descriptors: the connection budget
    /// (the limit less what the process keeps for itself, divided among the
    /// descriptors each connection holds) capped at `ceiling`, and a peer share of
    /// `1/share_divisor` of it.
    pub fn derived(
        limit: u64,
        fds_per_connection: u64,
        ceiling: usize,
        share_divisor: usize,
    ) -> Self {
        let budget =
            usize::try_from(super::nofile::connection_budget(limit) / fds_per_connection.max(1))
                .unwrap_or(usize::MAX);
        let max_total = budget.min(ceiling).max(1);
        Self {
            max_total,
            max_per_peer: (max_total / share_divisor.max(1)).max(1),
        }
    }

    /// These caps with the values an operator set, the share never above the total.
    pub fn with(self, max_total: Option<usize>, max_per_peer: Option<usize>) -> Self {
        let max_total = max_total.unwrap_or(self.max_total).max(1);
        let max_per_peer = max_per_peer
            .unwrap_or(if max_total == self.max_total {
                self.max_per_peer
            } else {
                // A total set by hand keeps the default proportion.
                (max_total * self.max_per_peer / self.max_total.max(1)).max(1)
            })
            .clamp(1, max_total);
        Self {
            max_total,
            max_per_peer,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every connection of the listener is in use.
    #[error("the listener's {0} connections are all in use")]
    Total(usize),
    /// The peer holds its share of connections.
    #[error("this peer's share of {0} connections is in use")]
    PeerShare(usize),
}

#[derive(Debug)]
struct Counts<K> {
    total: usize,
    /// Connections open per peer, and the peer's stream budget.
    per_peer: HashMap<K, (usize, Arc<StreamBudget>)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ConnLimiter<K> {
    caps: ConnCaps,
    max_streams_per_peer: usize,
    counts: Mutex<Counts<K>>,
    refusals: Arc<RefusalLog>,
}

/// The requests (HTTP/2 streams) one peer has open across all its connections,
/// against a budget: the per-connection stream limit alone would let a peer with
/// many connections hold many times more, each pinning memory while unfinished.
#[derive(Debug)]
pub struct StreamBudget {
    open: AtomicUsize,
    max: usize,
    peer: String,
    refusals: Arc<RefusalLog>,
}

/// One open stream's place in its peer's budget; dropping it frees the place.
#[derive(Debug)]
pub struct StreamPlace(Arc<StreamBudget>);

impl StreamBudget {
    /// Takes a place for one more stream, or `None` when the budget is spent (the
    /// refusal is counted for the log).
    pub fn try_begin(self: &Arc<Self>) -> Option<StreamPlace> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            Some(StreamPlace(self.clone()))
        } else {
            self.refusals.record(
                &self.peer,
                &format!("the peer's {} open requests in use", self.max),
            );
            None
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnPermit<K: Eq + Hash> {
    limiter: Arc<ConnLimiter<K>>,
    peer: K,
    budget: Arc<StreamBudget>,
}

impl<K: Eq + Hash> ConnPermit<K> {
    /// The stream budget this connection's peer shares across its connections.
    pub fn stream_budget(&self) -> Arc<StreamBudget> {
        self.budget.clone()
    }
}

impl<K: Eq + Hash + Clone + Display> ConnLimiter<K> {
    /// A limiter whose refusals are logged as "`what`: refused N ...".
    pub fn new(what: &'static str, caps: ConnCaps) -> Arc<Self> {
        Self::with_stream_budget(what, caps, usize::MAX)
    }

    /// Like [`Self::new`], with a budget of `max_streams_per_peer` requests open at
    /// once across each peer's connections (see [`ConnPermit::stream_budget`]).
    pub fn with_stream_budget(
        what: &'static str,
        caps: ConnCaps,
        max_streams_per_peer: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            caps,
            max_streams_per_peer: max_streams_per_peer.max(1),
            counts: Mutex::new(Counts {
                total: 0,
                per_peer: HashMap::new(),
            }),
            refusals: RefusalLog::new(what),
        })
    }

    /// The caps this limiter enforces.
    pub fn caps(&self) -> ConnCaps {
        self.caps
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts<K>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `peer`, or says why there is none (and
    /// counts the refusal for the log).
    pub fn try_acquire(self: &Arc<Self>, peer: K) -> Result<ConnPermit<K>, Refused> {
        let refused = {
            let mut c = self.counts();
            let held = c.per_peer.get(&peer).map_or(0, |(n, _)| *n);
            if held >= self.caps.max_per_peer {
                Refused::PeerShare(self.caps.max_per_peer)
            } else if c.total >= self.caps.max_total {
                Refused::Total(self.caps.max_total)
            } else {
                c.total += 1;
                let (n, budget) = c.per_peer.entry(peer.clone()).or_insert_with(|| {
                    (
                        0,
                        Arc::new(StreamBudget {
                            open: AtomicUsize::new(0),
                            max: self.max_streams_per_peer,
                            peer: peer.to_string(),
                            refusals: self.refusals.clone(),
                        }),
                    )
                });
                *n += 1;
                let budget = budget.clone();
                return Ok(ConnPermit {
                    limiter: self.clone(),
                    peer,
                    budget,
                });
            }
        };
        let reason = match refused {
            Refused::Total(n) => format!("all {n} connections in use"),
            Refused::PeerShare(n) => format!("the peer's share of {n} in use"),
        };
        self.refusals.record(&peer, &reason);
        Err(refused)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Connections open now from `peer`.
    pub fn open_for(&self, peer: &K) -> usize {
        self.counts().per_peer.get(peer).map_or(0, |(n, _)| *n)
    }

    /// The log of refusals (for tests and health details).
    pub fn refusals(&self) -> &Arc<RefusalLog> {
        &self.refusals
    }
}

impl<K: Eq + Hash> Drop for ConnPermit<K> {
    fn drop(&mut self) {
        let mut c = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some((n, _)) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A network peer as limits count it: an IPv4 address, or the /64 network of an IPv6
/// address (one host commonly holds a whole /64, so counting single IPv6 addresses
/// would give it billions of shares). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpPeer {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The /64 network of an IPv6 address.
    V6Net(Ipv6Addr),
}

impl From<IpAddr> for IpPeer {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpPeer::V4(v4),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpPeer::V6Net(Ipv6Addr::from(bits))
            }
        }
    }
}

impl Display for IpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpPeer::V4(a) => write!(f, "{a}"),
            IpPeer::V6Net(a) => write!(f, "{a}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(t: usize, p: usize) -> ConnCaps {
        ConnCaps {
            max_total: t,
            max_per_peer: p,
        }
    }

    #[test]
    fn a_peer_gets_its_share_and_others_still_get_theirs() {
        let l = ConnLimiter::new("test", caps(10, 4));
        let a: Vec<_> = (0..4).map(|_| l.try_acquire("a").unwrap()).collect();
        assert_eq!(l.try_acquire("a").unwrap_err(), Refused::PeerShare(4));
        let b: Vec<_> = (0..4).map(|_| l.try_acquire("b").unwrap()).collect();
        let c: Vec<_> = (0..2).map(|_| l.try_acquire("c").unwrap()).collect();
        assert_eq!(l.try_acquire("d").unwrap_err(), Refused::Total(10));
        assert_eq!(l.open(), 10);
        assert_eq!(l.open_for(&"a"), 4);
        drop(a);
        assert_eq!(l.open(), 6);
        assert_eq!(l.open_for(&"a"), 0);
        let _d = l.try_acquire("d").unwrap();
        drop((b, c));
        assert_eq!(l.open(), 1);
        assert_eq!(l.refusals().pending() + l.refusals().reports(), 2);
    }

    #[test]
    fn defaults_follow_the_open_file_limit() {
        // 1024: 768 for connections, a quarter per peer.
        assert_eq!(ConnCaps::derived(1024, 1, 16384, 4), caps(768, 192));
        // Two descriptors per connection: half the connections.
        assert_eq!(ConnCaps::derived(1024, 2, 16384, 4), caps(384, 96));
        // A generous limit is capped by the ceiling.
        assert_eq!(ConnCaps::derived(1 << 20, 1, 65536, 8), caps(65536, 8192));
        assert_eq!(ConnCaps::derived(20_000, 1, 65536, 8), caps(18_976, 2372));
        // A tiny one still allows a connection.
        assert_eq!(ConnCaps::derived(0, 1, 10, 8), caps(1, 1));
    }

    #[test]
    fn operator_values_win_and_the_share_never_exceeds_the_total() {
        let d = caps(768, 192);
        assert_eq!(d.with(None, None), d);
        assert_eq!(d.with(Some(100), None), caps(100, 25));
        assert_eq!(d.with(None, Some(10)), caps(768, 10));
        assert_eq!(d.with(Some(50), Some(500)), caps(50, 50));
        assert_eq!(d.with(Some(0), Some(0)), caps(1, 1));
    }

    #[test]
    fn ipv6_peers_count_by_64_and_mapped_v4_as_v4() {
        let a: IpPeer = "2001:db8:1:2:aaaa::1".parse::<IpAddr>().unwrap().into();
        let b: IpPeer = "2001:db8:1:2:bbbb::9".parse::<IpAddr>().unwrap().into();
        let c: IpPeer = "2001:db8:1:3::1".parse::<IpAddr>().unwrap().into();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let m: IpPeer = "::ffff:127.0.0.2".parse::<IpAddr>().unwrap().into();
        assert_eq!(m, IpPeer::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(m.to_string(), "127.0.0.2");
    }

    #[test]
    fn a_peer_shares_one_stream_budget_across_its_connections() {
        let l = ConnLimiter::with_stream_budget("test", caps(10, 10), 3);
        let a = l.try_acquire(1u32).unwrap();
        let b = l.try_acquire(1u32).unwrap();
        let other = l.try_acquire(2u32).unwrap();
        let (ba, bb) = (a.stream_budget(), b.stream_budget());
        let s1 = ba.try_begin().unwrap();
        let _s2 = bb.try_begin().unwrap();
        let _s3 = ba.try_begin().unwrap();
        assert!(
            bb.try_begin().is_none(),
            "the budget is per peer, not per connection"
        );
        assert!(
            other.stream_budget().try_begin().is_some(),
            "another peer has its own"
        );
        drop(s1);
        assert!(bb.try_begin().is_some());
        // Outside a runtime the refusal is reported at once.
        assert_eq!(l.refusals().reports(), 1);
    }
}
