//! The workload attestor seam: an attestor turns a Workload API caller (the process
//! pinned when it connected) into selectors of its kind (`unix:uid:1000`). Each lives
//! in its own module; the configuration's `[workload_attestors.<name>]` tables say
//! which run, and a caller's selectors are everything they found.
//!
//! Attestors read the caller between two checks that its process is still the one
//! that connected, unchanged (`super::peer`): what they read through [`Peer`] is that
//! process's, and an exec or a change of credentials in between is refused by the
//! second check.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use async_trait::async_trait;
use tessera_core::Selector;

use super::peer::{PeerCred, Pinned, ProcessMark};
use crate::config::WorkloadAttestorsConfig;

pub mod container;
pub mod docker;
pub mod k8s;
pub mod unix;

/// Why an attestor could not attest a caller.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct WorkloadAttestError(Box<dyn std::error::Error + Send + Sync>);

impl WorkloadAttestError {
    /// Wraps an attestor's own error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

/// A caller being attested: the process pinned at connect, and its `/proc` directory
/// as opened by the check that precedes the attestors.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pinned: &'a Pinned,
    proc_dir: BorrowedFd<'a>,
}

impl<'a> Peer<'a> {
    /// `proc_dir` must come from `pinned.check()`, and be confirmed by another check
    /// once the attestors are done.
    pub fn new(pinned: &'a Pinned, proc_dir: BorrowedFd<'a>) -> Self {
        Self { pinned, proc_dir }
    }

    /// The credentials the kernel recorded at `connect()`.
    pub fn cred(&self) -> PeerCred {
        self.pinned.cred()
    }

    /// The supplementary groups at `connect()`, sorted.
    pub fn groups(&self) -> &'a [u32] {
        self.pinned.groups()
    }

    /// What identified the process when it connected (its executable among others).
    pub fn mark(&self) -> &'a ProcessMark {
        self.pinned.mark()
    }

    /// The process's `/proc/<pid>` directory: read files relative to it, never by
    /// path, so that a reused PID cannot redirect the reads.
    pub fn proc_dir(&self) -> BorrowedFd<'a> {
        self.proc_dir
    }
}

/// A workload attestor.
#[async_trait]
pub trait WorkloadAttestor: Send + Sync + std::fmt::Debug {
    /// Its name, which is also its selectors' type and its configuration table's.
    fn name(&self) -> &'static str;

    /// The caller's selectors. Work that blocks (hashing a binary, asking a daemon)
    /// must not hold up the async threads.
    async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError>;
}

/// The configured workload attestors, in the order they run.
#[derive(Debug, Clone)]
pub struct WorkloadAttestors(Vec<Arc<dyn WorkloadAttestor>>);

impl WorkloadAttestors {
    /// The attestors the configuration turns on. `unix` is always on (its table only
    /// tunes it), as it has always been.
    pub fn from_config(cfg: &WorkloadAttestorsConfig) -> Self {
        let mut all: Vec<Arc<dyn WorkloadAttestor>> =
            vec![Arc::new(unix::Unix::new(cfg.unix.clone()))];
        if let Some(k) = &cfg.k8s {
            all.push(Arc::new(k8s::K8s::new(k.clone())));
        }
        if let Some(d) = &cfg.docker {
            all.push(Arc::new(docker::Docker::new(d.clone())));
        }
        Self(all)
    }

    /// These attestors, in this order.
    pub fn new(attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self(attestors)
    }

    /// Their names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|a| a.name()).collect()
    }

    /// Every attestor's selectors for `peer`; the first failure fails the whole, so
    /// that a caller never gets an identity on part of what it is.
    pub async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
        let mut out = Vec::new();
        for a in &self.0 {
            out.extend(a.attest(peer).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn unix_is_on_by_default_and_named_as_its_selectors() {
        let cfg: WorkloadAttestorsConfig = toml::from_str("").unwrap();
        assert_eq!(WorkloadAttestors::from_config(&cfg).names(), ["unix"]);
        let cfg: WorkloadAttestorsConfig =
            toml::from_str("[unix]\ndiscover_workload_path = true\n").unwrap();
        assert!(cfg.unix.discover_workload_path);
        assert_eq!(WorkloadAttestors::from_config(&cfg).names(), ["unix"]);
    }

    #[derive(Debug)]
    struct Fixed(&'static str, Result<&'static str, &'static str>);

    #[async_trait]
    impl WorkloadAttestor for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn attest(&self, _: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
            match self.1 {
                Ok(v) => Ok(vec![Selector::new(self.0, v).unwrap()]),
                Err(e) => Err(WorkloadAttestError::new(std::io::Error::other(e))),
            }
        }
    }

    #[tokio::test]
    async fn every_attestor_adds_its_selectors_and_one_failure_fails_all() {
        let (pinned, _sock) = crate::workload::peer::tests::pin_self();
        let dir = pinned.check().unwrap();
        let peer = Peer::new(&pinned, dir.as_fd());
        let both = WorkloadAttestors::new(vec![
            Arc::new(Fixed("a", Ok("x:1"))),
            Arc::new(Fixed("b", Ok("y:2"))),
        ]);
        let sels: Vec<String> = both
            .attest(&peer)
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(sels, ["a:x:1", "b:y:2"]);
        let failing = WorkloadAttestors::new(vec![
            Arc::new(Fixed("a", Ok("x:1"))),
            Arc::new(Fixed("b", Err("daemon away"))),
        ]);
        let e = failing.attest(&peer).await.unwrap_err();
        assert_eq!(e.to_string(), "daemon away");
    }
}
