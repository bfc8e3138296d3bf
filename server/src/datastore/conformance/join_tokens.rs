//! Conformance: join tokens.

use super::{Ns, now, ok};
use crate::datastore::{Datastore, DatastoreError};

/// Join tokens are stored once, taken once, and pruned when expired.
pub async fn join_tokens(ds: &dyn Datastore) {
    let ns = Ns::new("join-tokens");
    let now = now();
    let token = ns.unique("tok");
    ok(ds.create_join_token(&token, now + 600).await, "create");
    assert_err!(
        ds.create_join_token(&token, now + 900).await,
        DatastoreError::AlreadyExists(_),
        "same token twice"
    );
    assert_eq!(
        ok(ds.take_join_token(&token).await, "take"),
        Some(now + 600),
        "take returns the first expiry"
    );
    assert_eq!(
        ok(ds.take_join_token(&token).await, "take again"),
        None,
        "a token is used once"
    );
    assert_eq!(
        ok(
            ds.take_join_token(&ns.unique("unknown")).await,
            "take unknown"
        ),
        None
    );
    // Taking returns expired tokens too: the caller judges the expiry.
    let old = ns.unique("old");
    ok(ds.create_join_token(&old, 1000).await, "create expired");
    assert_eq!(
        ok(ds.take_join_token(&old).await, "take expired"),
        Some(1000)
    );

    let expired_a = ns.unique("exp");
    let expired_b = ns.unique("exp");
    let at_now = ns.unique("now");
    let fresh = ns.unique("fresh");
    ok(ds.create_join_token(&expired_a, now - 10).await, "create");
    ok(ds.create_join_token(&expired_b, now - 1000).await, "create");
    ok(ds.create_join_token(&at_now, now).await, "create");
    ok(ds.create_join_token(&fresh, now + 600).await, "create");
    let pruned = ok(ds.prune_join_tokens(now).await, "prune");
    assert!(pruned >= 2, "pruned {pruned}");
    assert_eq!(ok(ds.take_join_token(&expired_a).await, "take"), None);
    assert_eq!(ok(ds.take_join_token(&expired_b).await, "take"), None);
    assert_eq!(
        ok(ds.take_join_token(&at_now).await, "take"),
        Some(now),
        "a token expiring at `now` did not expire before it"
    );
    assert_eq!(
        ok(ds.take_join_token(&fresh).await, "take"),
        Some(now + 600)
    );
}

/// Of many concurrent takers of one token, exactly one gets it.
pub async fn join_token_concurrent_take(ds: &dyn Datastore) {
    let ns = Ns::new("join-race");
    for round in 0..5 {
        let token = ns.unique("tok");
        ok(ds.create_join_token(&token, 4_000_000_000).await, "create");
        let takers = (0..16).map(|_| ds.take_join_token(&token));
        let results = futures::future::join_all(takers).await;
        let winners = results
            .into_iter()
            .map(|r| ok(r, "concurrent take"))
            .filter(Option::is_some)
            .count();
        assert_eq!(winners, 1, "round {round}: exactly one taker wins");
    }
}
