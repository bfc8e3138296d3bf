//! What both datastore backends store the same way: the encoding of entries and
//! bundles as text, an entry's identity hash (what makes two entries duplicates),
//! event ID conversions and messages, and the rules for an agent's SVID serials
//! (which renewal and activation apply inside each backend's transaction).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest;
use tessera_core::bundle::JwtAuthority;
use tessera_core::{Bundle, RegistrationEntry, TrustDomain};

use super::{AttestedNode, DatastoreError, Result};

/// Event IDs and revisions are u64 in the API and 64-bit signed integers in SQL.
pub(super) fn to_sql_id(id: u64) -> i64 {
    // Any ID above i64::MAX is beyond every stored one, which is what callers mean.
    i64::try_from(id).unwrap_or(i64::MAX)
}

pub(super) fn from_sql_id(id: i64) -> Result<u64> {
    u64::try_from(id).map_err(|_| DatastoreError::Backend(format!("negative event ID {id}")))
}

pub(super) fn decode_error(what: impl fmt::Display, e: impl fmt::Display) -> DatastoreError {
    DatastoreError::Backend(format!("{what}: stored record cannot be decoded: {e}"))
}

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(super) fn encode_entry(entry: &RegistrationEntry) -> Result<String> {
    serde_json::to_string(entry)
        .map_err(|e| DatastoreError::Invalid(format!("entry {} cannot be encoded: {e}", entry.id)))
}

pub(super) fn decode_entry(id: &str, data: &str) -> Result<RegistrationEntry> {
    serde_json::from_str(data).map_err(|e| decode_error(format_args!("entry {id}"), e))
}

pub(super) fn decode_bundle(td: &TrustDomain, jwks: &str, expiries: &[i64]) -> Result<Bundle> {
    let what = format_args!("bundle of {td}");
    let mut bundle =
        Bundle::from_jwks(td.clone(), jwks.as_bytes()).map_err(|e| decode_error(what, e))?;
    if bundle.jwt_authorities().len() != expiries.len() {
        return Err(decode_error(
            what,
            "JWT authority expiry times do not match its keys",
        ));
    }
    let authorities = bundle
        .jwt_authorities()
        .iter()
        .zip(expiries)
        .map(|(a, &expires_at)| JwtAuthority {
            expires_at,
            ..a.clone()
        })
        .collect();
    bundle.set_jwt_authorities(authorities);
    Ok(bundle)
}

/// The bundle as stored: its JWK Set and its JWT authorities' expiry times, in order.
pub(super) fn encode_bundle(bundle: &Bundle) -> Result<(String, String)> {
    let td = bundle.trust_domain();
    let jwks = bundle.to_jwks();
    let expiries: Vec<i64> = bundle
        .jwt_authorities()
        .iter()
        .map(|a| a.expires_at)
        .collect();
    // The JWK Set form silently drops keys it cannot express (an unsupported key type,
    // a certificate that does not parse): check that what would be read back is what
    // was given, rather than lose an authority.
    let faithful = decode_bundle(td, &jwks, &expiries).is_ok_and(|back| back == *bundle);
    if !faithful {
        return Err(DatastoreError::Invalid(format!(
            "bundle of {td} holds an authority that cannot be stored as a JWK \
             (unsupported key type or malformed certificate)"
        )));
    }
    let expiries = serde_json::to_string(&expiries)
        .map_err(|e| DatastoreError::Invalid(format!("bundle of {td} cannot be encoded: {e}")))?;
    Ok((jwks, expiries))
}

/// Join tokens are secrets until used: name one by a prefix only, so that errors and
/// logs do not carry a usable token.
pub(super) fn token_label(token: &str) -> String {
    let prefix: String = token.chars().take(4).collect();
    format!("join token {prefix}…")
}

/// What makes two entries the same registration.
pub(super) struct Identity {
    pub(super) hash: String,
    pub(super) spiffe_id: String,
    pub(super) parent_id: String,
    /// Sorted and deduplicated.
    pub(super) selectors: Vec<String>,
}

impl Identity {
    pub(super) fn of(entry: &RegistrationEntry) -> Self {
        let (spiffe_id, parent_id, mut selectors) = entry.identity_key();
        selectors.dedup();
        // Length-prefixed parts, so that no two different keys hash the same input.
        // Changing this encoding changes every stored hash: it needs a migration.
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [&spiffe_id, &parent_id].into_iter().chain(&selectors) {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let hash = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            hash,
            spiffe_id,
            parent_id,
            selectors,
        }
    }

    pub(super) fn duplicate_of(&self, existing_id: &str) -> DatastoreError {
        DatastoreError::AlreadyExists(format!(
            "entry {existing_id} with spiffe_id {}, parent_id {} and selectors [{}]",
            self.spiffe_id,
            self.parent_id,
            self.selectors.join(", ")
        ))
    }
}

/// `NotFound(what)` unless the statement changed a row.
pub(super) fn require_found(found: bool, what: &str) -> Result<()> {
    if found {
        Ok(())
    } else {
        Err(DatastoreError::NotFound(what.to_owned()))
    }
}

/// The node after a renewal authenticated with `presented` issued `serial` (see
/// [`super::Datastore::renew_node_svid`]).
pub(super) fn plan_renewal(
    node: &AttestedNode,
    presented: &str,
    serial: &str,
    not_after: i64,
    now: i64,
) -> Result<AttestedNode> {
    let what = format!("attested node {}", node.spiffe_id);
    if node.banned {
        return Err(DatastoreError::Invalid(format!(
            "{what} is banned: its SVID cannot be renewed"
        )));
    }
    if serial.is_empty() {
        return Err(DatastoreError::Invalid(format!(
            "{what}: a renewed SVID needs a serial"
        )));
    }
    let mut next = plan_activation(node, presented, now)?.unwrap_or_else(|| node.clone());
    next.new_cert_serial = serial.to_owned();
    next.new_cert_not_after = not_after;
    next.updated_at = now;
    Ok(next)
}

/// The node after the agent authenticated with `serial`: `None` when that changes
/// nothing (it is the current serial), the node with `serial` promoted when it was
/// the pending one, `Conflict` otherwise (see
/// [`super::Datastore::activate_node_svid`]).
pub(super) fn plan_activation(
    node: &AttestedNode,
    serial: &str,
    now: i64,
) -> Result<Option<AttestedNode>> {
    // A banned node's serials are empty; an empty serial never matches anything.
    if serial.is_empty() || node.banned {
        return Err(stale_serial(node, serial));
    }
    if serial == node.cert_serial {
        return Ok(None);
    }
    if serial != node.new_cert_serial {
        return Err(stale_serial(node, serial));
    }
    let mut next = node.clone();
    next.cert_serial = std::mem::take(&mut next.new_cert_serial);
    next.cert_not_after = std::mem::take(&mut next.new_cert_not_after);
    next.updated_at = now;
    Ok(Some(next))
}

fn stale_serial(node: &AttestedNode, serial: &str) -> DatastoreError {
    DatastoreError::Conflict(format!(
        "agent {} presented an SVID (serial {serial:?}) that is no longer accepted: \
         it was replaced by a renewal the agent used, a re-attestation or a ban",
        node.spiffe_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cert: &str, new: &str) -> AttestedNode {
        AttestedNode {
            spiffe_id: "spiffe://example.org/spire/agent/x".parse().expect("id"),
            attestation_type: "join_token".into(),
            cert_serial: cert.into(),
            cert_not_after: 100,
            new_cert_serial: new.into(),
            new_cert_not_after: if new.is_empty() { 0 } else { 200 },
            banned: false,
            can_reattest: false,
            selectors: vec![],
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn renewals_with_the_proven_svid_replace_only_the_pending_one() {
        // Two renewals whose answers were lost: the agent still presents s0.
        let n = plan_renewal(&node("s0", ""), "s0", "s1", 200, 5).expect("first");
        assert_eq!(
            (n.cert_serial.as_str(), n.new_cert_serial.as_str()),
            ("s0", "s1")
        );
        let n = plan_renewal(&n, "s0", "s2", 300, 6).expect("second");
        assert_eq!(
            (n.cert_serial.as_str(), n.new_cert_serial.as_str()),
            ("s0", "s2")
        );
        assert_eq!(n.new_cert_not_after, 300);
        // The agent got s2 and uses it: s0 goes, nothing else is accepted.
        let n = plan_activation(&n, "s2", 7)
            .expect("activate")
            .expect("changed");
        assert_eq!(
            (n.cert_serial.as_str(), n.new_cert_serial.as_str()),
            ("s2", "")
        );
        assert_eq!(n.cert_not_after, 300);
        for old in ["s0", "s1"] {
            assert!(matches!(
                plan_activation(&n, old, 8),
                Err(DatastoreError::Conflict(_))
            ));
            assert!(matches!(
                plan_renewal(&n, old, "s9", 1, 8),
                Err(DatastoreError::Conflict(_))
            ));
        }
    }

    #[test]
    fn a_renewal_with_the_pending_svid_promotes_it_first() {
        let n = plan_renewal(&node("s0", "s1"), "s1", "s2", 300, 5).expect("renew");
        assert_eq!(
            (n.cert_serial.as_str(), n.new_cert_serial.as_str()),
            ("s1", "s2")
        );
        assert!(matches!(
            plan_activation(&n, "s0", 6),
            Err(DatastoreError::Conflict(_))
        ));
    }

    #[test]
    fn the_current_serial_changes_nothing_and_banned_nodes_match_nothing() {
        assert_eq!(
            plan_activation(&node("s0", "s1"), "s0", 5).expect("ok"),
            None
        );
        let mut banned = node("", "");
        banned.banned = true;
        assert!(matches!(
            plan_activation(&banned, "", 5),
            Err(DatastoreError::Conflict(_))
        ));
        assert!(matches!(
            plan_renewal(&banned, "", "s1", 1, 5),
            Err(DatastoreError::Invalid(_))
        ));
        assert!(matches!(
            plan_activation(&node("s0", ""), "", 5),
            Err(DatastoreError::Conflict(_))
        ));
    }
}
