//! The workload attestor seam: an attestor turns a Workload API caller (the process
//! pinned when it connected) into selectors of its kind (`unix:uid:1000`). Each lives
//! in its own module; the configuration's `[workload_attestors.<name>]` tables say
//! which run, and a caller's selectors are everything they found.
//!
//! The attestors of one caller run at once, under one deadline. One that fails for a
//! caller (a daemon away, a process in no unit) is logged and the others still count:
//! fewer selectors never match more entries, since an entry needs all of its own. If
//! every attestor fails the caller is refused with their reasons; if one has not
//! answered by the deadline the call is Unavailable, so that a client retries rather
//! than get an identity decided without it.
//!
//! Attestors read the caller between two checks that its process is still the one
//! that connected, unchanged (`super::peer`): what they read through [`Peer`] is that
//! process's, and an exec or a change of credentials in between is refused by the
//! second check.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tessera_core::Selector;

use super::peer::{PeerCred, Pinned, ProcessMark};
use crate::config::WorkloadAttestorsConfig;

pub mod container;
pub mod docker;
pub mod k8s;
pub mod systemd;
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

/// Why a caller got no selectors at all.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// Some attestors had not answered by the deadline (their names).
    #[error(
        "workload attestation did not finish within {}: {} did not answer",
        tessera_core::duration::format_duration(*timeout),
        names.join(", ")
    )]
    TimedOut {
        /// The deadline.
        timeout: Duration,
        /// The attestors still working.
        names: Vec<&'static str>,
    },
    /// Every attestor failed (each with its reason).
    #[error("every workload attestor failed: {}", list(.0))]
    AllFailed(Vec<(&'static str, WorkloadAttestError)>),
}

fn list(failures: &[(&'static str, WorkloadAttestError)]) -> String {
    failures
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The configured workload attestors, in the order their selectors are listed.
#[derive(Debug, Clone)]
pub struct WorkloadAttestors {
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    timeout: Duration,
}

impl WorkloadAttestors {
    /// The attestors the configuration turns on. `unix` is always on (its table only
    /// tunes it), as it has always been.
    pub fn from_config(cfg: &WorkloadAttestorsConfig) -> Self {
        let mut attestors: Vec<Arc<dyn WorkloadAttestor>> =
            vec![Arc::new(unix::Unix::new(cfg.unix.clone()))];
        if let Some(k) = &cfg.k8s {
            attestors.push(Arc::new(k8s::K8s::new(k.clone())));
        }
        if let Some(d) = &cfg.docker {
            attestors.push(Arc::new(docker::Docker::new(d.clone())));
        }
        if let Some(c) = &cfg.systemd {
            attestors.push(Arc::new(systemd::Systemd::new(c.clone())));
        }
        Self::new(attestors).with_timeout(cfg.timeout)
    }

    /// These attestors, in this order, with the default deadline.
    pub fn new(attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self {
            attestors,
            timeout: crate::config::DEFAULT_WORKLOAD_ATTESTATION_TIMEOUT,
        }
    }

    /// The same attestors under another deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Their names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.attestors.iter().map(|a| a.name()).collect()
    }

    /// Every attestor's selectors for `peer`, asked at once (see the module
    /// documentation for what a failure or a missed deadline does).
    pub async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, AttestationError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let answers = futures::future::join_all(
            self.attestors
                .iter()
                .map(|a| tokio::time::timeout_at(deadline, a.attest(peer))),
        )
        .await;
        let mut out = Vec::new();
        let mut answered = 0;
        let mut failed = Vec::new();
        let mut late = Vec::new();
        for (a, answer) in self.attestors.iter().zip(answers) {
            match answer {
                Ok(Ok(selectors)) => {
                    answered += 1;
                    out.extend(selectors);
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        attestor = a.name(),
                        pid = peer.cred().pid,
                        error = %e,
                        "a workload attestor failed for this caller; the others still count"
                    );
                    failed.push((a.name(), e));
                }
                Err(_) => late.push(a.name()),
            }
        }
        if !late.is_empty() {
            return Err(AttestationError::TimedOut {
                timeout: self.timeout,
                names: late,
            });
        }
        if answered == 0 && !failed.is_empty() {
            return Err(AttestationError::AllFailed(failed));
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
        assert_eq!(
            WorkloadAttestors::from_config(&cfg).timeout,
            crate::config::DEFAULT_WORKLOAD_ATTESTATION_TIMEOUT
        );
        let cfg: WorkloadAttestorsConfig = toml::from_str("timeout = \"3s\"\n").unwrap();
        assert_eq!(
            WorkloadAttestors::from_config(&cfg).timeout,
            Duration::from_secs(3)
        );
        let cfg: WorkloadAttestorsConfig =
            toml::from_str("[unix]\ndiscover_workload_path = true\n").unwrap();
        assert!(cfg.unix.discover_workload_path);
        assert_eq!(WorkloadAttestors::from_config(&cfg).names(), ["unix"]);
        let cfg: WorkloadAttestorsConfig = toml::from_str("[systemd]\n").unwrap();
        assert_eq!(
            WorkloadAttestors::from_config(&cfg).names(),
            ["unix", "systemd"]
        );
        let e = toml::from_str::<WorkloadAttestorsConfig>("[systemd]\nbus = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bus`"), "{e}");
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
    async fn every_attestor_adds_its_selectors_and_a_failure_leaves_the_others() {
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
        let one_failing = WorkloadAttestors::new(vec![
            Arc::new(Fixed("a", Err("daemon away"))),
            Arc::new(Fixed("b", Ok("y:2"))),
        ]);
        let sels = one_failing.attest(&peer).await.unwrap();
        assert_eq!(sels, [Selector::new("b", "y:2").unwrap()]);
        let all_failing = WorkloadAttestors::new(vec![
            Arc::new(Fixed("a", Err("daemon away"))),
            Arc::new(Fixed("b", Err("no such unit"))),
        ]);
        let e = all_failing.attest(&peer).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "every workload attestor failed: a: daemon away; b: no such unit"
        );
    }

    /// Never answers.
    #[derive(Debug)]
    struct Stuck;

    #[async_trait]
    impl WorkloadAttestor for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        async fn attest(&self, _: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attestor_that_does_not_answer_makes_the_call_time_out() {
        let (pinned, _sock) = crate::workload::peer::tests::pin_self();
        let dir = pinned.check().unwrap();
        let peer = Peer::new(&pinned, dir.as_fd());
        let attestors =
            WorkloadAttestors::new(vec![Arc::new(Fixed("a", Ok("x:1"))), Arc::new(Stuck)])
                .with_timeout(Duration::from_secs(7));
        let started = tokio::time::Instant::now();
        let e = attestors.attest(&peer).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert!(matches!(e, AttestationError::TimedOut { .. }));
        assert_eq!(
            e.to_string(),
            "workload attestation did not finish within 7s: stuck did not answer"
        );
    }
}
