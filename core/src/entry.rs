//! Registration entries: which SPIFFE ID a workload (or a node alias) gets, under
//! which parent, when its selectors match.

use serde::{Deserialize, Serialize};

use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};
pub use crate::workload_key::WorkloadKey;

/// The path of the server's own ID; entries parented to it are node aliases.
pub const SERVER_PATH: &str = "/spire/server";
/// Agent IDs are `spiffe://<td>/spire/agent/<attestor>/...`.
pub const AGENT_PATH_PREFIX: &str = "/spire/agent/";

/// Why an ID cannot be given to a workload (as an entry's `spiffe_id`, a join
/// token's alias, or a minted SVID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadIdError {
    /// The ID has no path.
    #[error("{0} has no path: workload and node IDs need one")]
    NoPath(SpiffeId),
    /// The ID is in another trust domain.
    #[error("{id} is not in this server's trust domain {td}")]
    Foreign {
        /// The ID.
        id: SpiffeId,
        /// This server's trust domain.
        td: TrustDomain,
    },
    /// The ID is under `/spire`, which the server and agents use.
    #[error(
        "{0} is in the reserved namespace /spire, which holds the IDs of the server and \
         its agents; choose a path outside /spire"
    )]
    Reserved(SpiffeId),
}

/// The one check every ID a workload may receive goes through: a member of `td`,
/// with a path, outside the reserved namespace (`/spire` and below, where the server
/// is `/spire/server` and agents are `/spire/agent/...`). An SVID with such an ID
/// would let its holder pass for the server or an agent.
pub fn check_workload_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), WorkloadIdError> {
    if !id.is_member_of(td) {
        return Err(WorkloadIdError::Foreign {
            id: id.clone(),
            td: td.clone(),
        });
    }
    if id.is_trust_domain_id() {
        return Err(WorkloadIdError::NoPath(id.clone()));
    }
    if id.is_reserved() {
        return Err(WorkloadIdError::Reserved(id.clone()));
    }
    Ok(())
}

/// Whether `id` is an agent ID of `td` (`/spire/agent/...`).
pub fn is_agent_id(id: &SpiffeId, td: &TrustDomain) -> bool {
    id.is_member_of(td) && id.path().starts_with(AGENT_PATH_PREFIX)
}

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    /// Opaque unique ID chosen by the server.
    pub id: String,
    /// The SPIFFE ID the workload receives.
    pub spiffe_id: SpiffeId,
    /// The agent (or node alias) whose workloads may receive it.
    pub parent_id: SpiffeId,
    /// What a workload must show to match; all of them must match.
    pub selectors: Vec<Selector>,
    /// X509-SVID lifetime in seconds; 0 means the server's default.
    #[serde(default)]
    pub x509_svid_ttl: u32,
    /// JWT-SVID lifetime in seconds; 0 means the server's default.
    #[serde(default)]
    pub jwt_svid_ttl: u32,
    /// Trust domains whose bundles the workload also receives.
    #[serde(default)]
    pub federates_with: Vec<TrustDomain>,
    /// Whether the workload may call the server's admin API.
    #[serde(default)]
    pub admin: bool,
    /// Whether the workload is a downstream CA (may sign for the trust domain).
    #[serde(default)]
    pub downstream: bool,
    /// DNS names put in the X509-SVID beside the SPIFFE ID.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// A free-form hint handed to workloads with the SVID (at most 1024 bytes).
    #[serde(default)]
    pub hint: String,
    /// Unix seconds after which the entry no longer applies; 0 means never.
    #[serde(default)]
    pub expires_at: i64,
    /// Global change counter value of the last change to this entry.
    #[serde(default)]
    pub revision_number: u64,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// Where the X509-SVID's key is born (Tessera's own field; software when absent).
    #[serde(default)]
    pub workload_key: WorkloadKey,
}

/// Why an entry cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The entry has no selector.
    #[error("an entry needs at least one selector")]
    NoSelectors,
    /// The `spiffe_id` cannot be given to workloads.
    #[error("spiffe_id {0}")]
    SpiffeId(#[from] WorkloadIdError),
    /// The `parent_id` is in another trust domain.
    #[error("parent_id {id} is not in this server's trust domain {td}")]
    ForeignParentId {
        /// The parent ID.
        id: SpiffeId,
        /// This server's trust domain.
        td: TrustDomain,
    },
    /// A DNS name is not valid.
    #[error("dns name {0:?} is not a valid DNS name")]
    BadDnsName(String),
    /// The hint is over 1024 bytes.
    #[error("hint is longer than 1024 bytes")]
    HintTooLong,
    /// A selector is listed twice.
    #[error("selector {0} is listed twice")]
    DuplicateSelector(Selector),
}

impl RegistrationEntry {
    /// Checks the entry against the registration rules for a server of trust domain `td`.
    pub fn validate(&self, td: &TrustDomain) -> Result<(), EntryError> {
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.selectors {
            if !seen.insert(s) {
                return Err(EntryError::DuplicateSelector(s.clone()));
            }
        }
        check_workload_id(&self.spiffe_id, td)?;
        // The parent may be the server (a node alias), an agent, or a workload (a
        // nested entry): reserved parents are how entries are meant to be anchored.
        if !self.parent_id.is_member_of(td) {
            return Err(EntryError::ForeignParentId {
                id: self.parent_id.clone(),
                td: td.clone(),
            });
        }
        for name in &self.dns_names {
            if !is_dns_name(name) {
                return Err(EntryError::BadDnsName(name.clone()));
            }
        }
        if self.hint.len() > 1024 {
            return Err(EntryError::HintTooLong);
        }
        Ok(())
    }

    /// Whether the entry is a node alias: parented to the server, so that it applies to
    /// every agent whose node selectors include its selectors.
    pub fn is_node_alias(&self) -> bool {
        self.parent_id.path() == SERVER_PATH
    }

    /// Whether the entry has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }

    /// The key that makes two entries the same registration: creating a second entry
    /// with the same key is refused.
    pub fn identity_key(&self) -> (String, String, Vec<String>) {
        let mut selectors: Vec<String> = self.selectors.iter().map(|s| s.to_string()).collect();
        selectors.sort();
        (
            self.spiffe_id.to_string(),
            self.parent_id.to_string(),
            selectors,
        )
    }
}

/// The digest an agent and a server compare to learn whether the agent's entries are
/// current: SHA-256 over `id:revision\n` lines, in entry ID order.
pub fn revision_digest<'a>(pairs: impl Iterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (id, rev) in pairs {
        ctx.update(id.as_bytes());
        ctx.update(b":");
        ctx.update(rev.to_string().as_bytes());
        ctx.update(b"\n");
    }
    ctx.finish().as_ref().to_vec()
}

/// A DNS name as X.509 SANs accept it: labels of letters, digits and '-', an optional
/// leading `*.` wildcard label, at most 253 bytes.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RegistrationEntry {
        RegistrationEntry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/web".parse().unwrap(),
            parent_id: "spiffe://example.org/spire/agent/x".parse().unwrap(),
            selectors: vec!["unix:uid:1000".parse().unwrap()],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec!["web.example.org".into()],
            hint: String::new(),
            expires_at: 0,
            revision_number: 0,
            created_at: 0,
            workload_key: WorkloadKey::Software,
        }
    }

    #[test]
    fn validation() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(entry().validate(&td), Ok(()));
        let mut e = entry();
        e.selectors.clear();
        assert_eq!(e.validate(&td), Err(EntryError::NoSelectors));
        let mut e = entry();
        e.selectors.push(e.selectors[0].clone());
        assert!(matches!(
            e.validate(&td),
            Err(EntryError::DuplicateSelector(_))
        ));
        let mut e = entry();
        e.spiffe_id = "spiffe://example.org".parse().unwrap();
        assert!(matches!(
            e.validate(&td),
            Err(EntryError::SpiffeId(WorkloadIdError::NoPath(_)))
        ));
        let mut e = entry();
        e.spiffe_id = "spiffe://other.org/web".parse().unwrap();
        assert!(matches!(
            e.validate(&td),
            Err(EntryError::SpiffeId(WorkloadIdError::Foreign { .. }))
        ));
        let mut e = entry();
        e.dns_names = vec!["bad_name".into()];
        assert!(matches!(e.validate(&td), Err(EntryError::BadDnsName(_))));
    }

    #[test]
    fn reserved_ids_are_refused_as_spiffe_id_but_fine_as_parent() {
        let td = TrustDomain::new("example.org").unwrap();
        for reserved in [
            "spiffe://example.org/spire/server",
            "spiffe://example.org/spire/agent/join_token/abc",
            "spiffe://example.org/spire",
            "spiffe://example.org/spire/x",
        ] {
            let mut e = entry();
            e.spiffe_id = reserved.parse().unwrap();
            let err = e.validate(&td).unwrap_err();
            assert!(
                matches!(err, EntryError::SpiffeId(WorkloadIdError::Reserved(_))),
                "{reserved}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(reserved) && text.contains("reserved"),
                "{text}"
            );
        }
        // Parents under /spire stay legal: node aliases, agents, and anything else
        // SPIRE accepts as a parent.
        for parent in [
            "spiffe://example.org/spire/server",
            "spiffe://example.org/spire/agent/join_token/abc",
            "spiffe://example.org/spire/agent/tpm_devid/x/y",
            "spiffe://example.org/other-workload",
        ] {
            let mut e = entry();
            e.parent_id = parent.parse().unwrap();
            assert_eq!(e.validate(&td), Ok(()), "{parent}");
        }
        // Look-alikes outside the namespace are ordinary workload IDs.
        for free in [
            "spiffe://example.org/spire-server",
            "spiffe://example.org/SPIRE/server",
        ] {
            let mut e = entry();
            e.spiffe_id = free.parse().unwrap();
            assert_eq!(e.validate(&td), Ok(()), "{free}");
        }
    }

    #[test]
    fn the_workload_id_check_names_what_is_wrong() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = |s: &str| SpiffeId::new(s).unwrap();
        assert_eq!(
            check_workload_id(&id("spiffe://example.org/web"), &td),
            Ok(())
        );
        assert!(matches!(
            check_workload_id(&id("spiffe://example.org/spire/server"), &td),
            Err(WorkloadIdError::Reserved(_))
        ));
        assert!(matches!(
            check_workload_id(&id("spiffe://example.org"), &td),
            Err(WorkloadIdError::NoPath(_))
        ));
        assert!(matches!(
            check_workload_id(&id("spiffe://other.org/spire/server"), &td),
            Err(WorkloadIdError::Foreign { .. })
        ));
        assert!(is_agent_id(&id("spiffe://example.org/spire/agent/x"), &td));
        assert!(!is_agent_id(&id("spiffe://example.org/spire/server"), &td));
        assert!(!is_agent_id(&id("spiffe://other.org/spire/agent/x"), &td));
    }

    #[test]
    fn digest_depends_on_ids_and_revisions() {
        let a = revision_digest([("a", 1), ("b", 2)].into_iter());
        assert_eq!(a, revision_digest([("a", 1), ("b", 2)].into_iter()));
        assert_ne!(a, revision_digest([("a", 1), ("b", 3)].into_iter()));
        assert_ne!(a, revision_digest([("a", 1)].into_iter()));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("a.example.org"));
        assert!(is_dns_name("*.example.org"));
        assert!(!is_dns_name("-a.example.org"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn node_alias_and_expiry() {
        let mut e = entry();
        assert!(!e.is_node_alias());
        e.parent_id = "spiffe://example.org/spire/server".parse().unwrap();
        assert!(e.is_node_alias());
        assert!(!e.is_expired(100));
        e.expires_at = 100;
        assert!(e.is_expired(100));
        assert!(!e.is_expired(99));
    }
}
