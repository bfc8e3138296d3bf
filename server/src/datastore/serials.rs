//! The rules for an agent's SVID serials, which both backends apply inside their own
//! transaction: a renewal keeps the serial the agent last proved it holds and makes
//! the new one pending; the agent's first use of the pending one promotes it (see
//! [`super::Datastore::renew_node_svid`] and [`super::Datastore::activate_node_svid`]).

use super::{AttestedNode, DatastoreError, Result};

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
        return Err(DatastoreError::Invalid(
            format!("{what} is banned: its SVID cannot be renewed").into(),
        ));
    }
    if serial.is_empty() {
        return Err(DatastoreError::Invalid(
            format!("{what}: a renewed SVID needs a serial").into(),
        ));
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
            key_in_tpm: false,
            ak_public: vec![],
            measured_boot: String::new(),
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
