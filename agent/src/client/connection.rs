//! The agent's connection to its servers, and how it returns to the preferred one.
//!
//! There is one gRPC channel at a time. It connects on its first call to the first
//! server in the configured order that answers ([`dial`]), and again, from the first,
//! when its connection breaks. That alone never brings an agent back: a connection to
//! a fallback server that keeps working would be kept for ever. So a connection that
//! [`dial`] made to a later address than the first (a fallback) gets an age limit, and
//! the first call after it replaces the channel with a new one, which dials from the
//! first address again. Calls in flight hold a clone of the old channel and finish on
//! it; its connection closes when the last of them is done.
//!
//! The age limit is a [`Backoff`]: from half to all of [`Failover::return_after`]
//! the first time, doubling each time the dial passes over the preferred server again,
//! up to [`Failover::return_after_max`], and back to the start once the agent talks to
//! the preferred server. Agents that fell over together thus try to return at
//! different moments, and a preferred server that stays away is knocked on less and
//! less often.
//!
//! A call that fails without an answer from a server (the connection broke, the call
//! timed out, no server could be dialled) also replaces the channel, so that the retry
//! dials afresh instead of waiting on a connection to a server that may be gone.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tonic::transport::Channel;

use super::Failover;
use super::dial::{Link, dial};
use crate::retry::Backoff;

/// What outlives one channel: the last link (to notice a switch), why the channel
/// was last replaced (to say why the agent moved), and how long the next connection
/// to a fallback is kept.
#[derive(Debug)]
struct Memory {
    last: Option<Link>,
    replaced: Option<&'static str>,
    keep_fallback: Backoff,
}

/// The current channel.
#[derive(Debug)]
struct Current {
    channel: Channel,
    /// Counts the channels made, so that a failure replaces only the channel it
    /// happened on.
    generation: u64,
    /// When the channel's connection, made to a fallback, is to be given up; set by
    /// its connector, `None` while it is connected to the preferred server.
    give_up_at: Arc<Mutex<Option<Instant>>>,
}

/// A channel to use for one call, and which one it was.
#[derive(Debug, Clone)]
pub struct Lease {
    pub channel: Channel,
    generation: u64,
}

/// The agent's connection to its servers (see the module documentation).
pub struct ServerConnection {
    servers: Arc<Vec<String>>,
    tls: TlsConnector,
    failover: Failover,
    memory: Arc<Mutex<Memory>>,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("servers", &self.servers)
            .field("failover", &self.failover)
            .field("link", &lock(&self.memory).last)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerConnection {
    /// A connection (made on the first call) to the first of `servers` that answers
    /// and passes `tls`'s checks.
    pub fn new(servers: Vec<String>, tls: TlsConnector, failover: Failover) -> Self {
        let memory = Arc::new(Mutex::new(Memory {
            last: None,
            replaced: None,
            keep_fallback: Backoff::new(failover.return_after, failover.return_after_max),
        }));
        let servers = Arc::new(servers);
        let current = Mutex::new(open(&servers, &tls, failover, &memory, 0));
        Self {
            servers,
            tls,
            failover,
            memory,
            current,
        }
    }

    /// The same servers with `failover`'s timeouts and age limits (before any call).
    pub fn with_failover(self, failover: Failover) -> Self {
        Self::new(Arc::unwrap_or_clone(self.servers), self.tls, failover)
    }

    /// The addresses tried, in order.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The channel for the next call: the current one, or a new one dialling from the
    /// first address when the current one's connection to a fallback is past its age.
    pub fn lease(&self) -> Lease {
        let mut cur = lock(&self.current);
        let due = lock(&cur.give_up_at).is_some_and(|t| Instant::now() >= t);
        if due {
            tracing::debug!(
                "the connection to a fallback server has reached its age limit; the next call tries the preferred server first"
            );
            self.replace(
                &mut cur,
                "the connection to the fallback reached its age limit",
            );
        }
        Lease {
            channel: cur.channel.clone(),
            generation: cur.generation,
        }
    }

    /// A call on `lease` failed with `status`. When no server gave that answer (it is
    /// the client's: a broken connection, a timeout, no server reachable), the
    /// channel is replaced so that the next call dials afresh from the first address.
    pub fn call_failed(&self, lease: &Lease, status: &tonic::Status) {
        if !super::is_local(status) {
            return;
        }
        let mut cur = lock(&self.current);
        if cur.generation == lease.generation {
            tracing::debug!(
                "a call failed without an answer from the server ({}); the next call dials again",
                status.message()
            );
            self.replace(&mut cur, "a call failed without an answer");
        }
    }

    /// Later calls go over a new connection (a new TLS handshake, presenting the
    /// agent's current SVID), dialled from the first address.
    pub fn reconnect(&self) {
        let mut cur = lock(&self.current);
        self.replace(&mut cur, "a new connection was asked for");
    }

    /// Where the last connection went, if one was made.
    pub fn link(&self) -> Option<Link> {
        lock(&self.memory).last.clone()
    }

    fn replace(&self, cur: &mut Current, why: &'static str) {
        lock(&self.memory).replaced = Some(why);
        *cur = open(
            &self.servers,
            &self.tls,
            self.failover,
            &self.memory,
            cur.generation + 1,
        );
    }
}

/// A lazy channel whose connections [`dial`] makes and [`connected`] records.
fn open(
    servers: &Arc<Vec<String>>,
    tls: &TlsConnector,
    failover: Failover,
    memory: &Arc<Mutex<Memory>>,
    generation: u64,
) -> Current {
    let give_up_at = Arc::new(Mutex::new(None));
    let (servers, tls, memory, slot) = (
        servers.clone(),
        tls.clone(),
        memory.clone(),
        give_up_at.clone(),
    );
    let channel = super::lazy_channel(failover.call_timeout, move || {
        let (servers, tls, memory, slot) =
            (servers.clone(), tls.clone(), memory.clone(), slot.clone());
        async move {
            let (stream, link) = dial(&servers, &tls, failover.step_timeout).await?;
            let keep = connected(&memory, link);
            *lock(&slot) = keep.map(|d| Instant::now() + d);
            Ok(stream)
        }
    });
    Current {
        channel,
        generation,
        give_up_at,
    }
}

/// Records a new connection: logs a switch of server, and returns how long to keep
/// the connection when it went to a fallback.
fn connected(memory: &Mutex<Memory>, link: Link) -> Option<Duration> {
    let mut m = lock(memory);
    let keep = if link.is_fallback() {
        Some(m.keep_fallback.fail())
    } else {
        m.keep_fallback.reset();
        None
    };
    let why = m.replaced.take();
    match switch_note(m.last.as_ref(), &link, keep, why) {
        Some(line) => tracing::info!(server = %link.server, address = %link.addr, "{line}"),
        None => {
            tracing::debug!(server = %link.server, address = %link.addr, "connected to the server")
        }
    }
    m.last = Some(link);
    keep
}

/// What to log when the agent connects over `link` after `last`: a line when it
/// changes server (or starts on a fallback), `None` when it is the same address again
/// or the first connection goes to the preferred server. `replaced` is why the
/// agent's channel was last replaced (nothing: its connection closed).
fn switch_note(
    last: Option<&Link>,
    link: &Link,
    keep: Option<Duration>,
    replaced: Option<&str>,
) -> Option<String> {
    if last.is_some_and(|l| l.addr == link.addr) {
        return None;
    }
    let was = last.map_or(String::new(), |l| format!(" (was {})", l.describe()));
    if !link.is_fallback() {
        let why = replaced.unwrap_or("the connection closed");
        return last.map(|l| {
            format!(
                "switched server: now talking to {}, the first in order, again (was {}: {why})",
                link.describe(),
                l.describe()
            )
        });
    }
    let why = link.first_failure.as_deref().unwrap_or("unknown");
    let earlier = if link.passed_over == 1 {
        "1 earlier address".to_owned()
    } else {
        format!("{} earlier addresses", link.passed_over)
    };
    let back = keep.map_or(String::new(), |d| {
        format!(
            "; the preferred server is tried again in {}s",
            d.as_secs_f64().ceil()
        )
    });
    Some(format!(
        "switched server: now talking to {}{was}, because {earlier} failed (the first: {why}){back}",
        link.describe()
    ))
}

#[cfg(test)]
mod tests;
