//! The datastore conformance suite: what every [`Datastore`] backend must do, written
//! once against the trait so that SQLite and PostgreSQL are held to exactly the same
//! behaviour. A backend's tests call [`run_all`], or each behaviour on its own.
//!
//! It is test code: compiled for this crate's tests, and for backends outside it
//! with the `test-support` feature, never into the server binary.
//!
//! Every behaviour works in its own random namespace (trust domain, IDs, tokens), so
//! the suite can run on a database that already holds data, including earlier runs of
//! itself; it asserts only about what it wrote. It panics on the first failure.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

use std::collections::BTreeSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

use super::{Datastore, EntryFilter, Page, Result};

/// Calls `$m!(behaviour, ...)` with the name of every behaviour of the suite, so
/// that [`run_all`] and each backend's tests (one test per behaviour) share this
/// one list.
macro_rules! each_behaviour {
    ($m:ident) => {
        $m!(
            ping_and_name,
            entry_create_and_get,
            entry_identity_is_unique,
            entry_explicit_id_collision,
            entry_update,
            entry_delete,
            entry_events,
            entry_event_readers,
            entry_list_filters,
            entry_list_pagination,
            entry_batch_create,
            entry_batch_large,
            join_tokens,
            join_token_concurrent_take,
            attested_nodes,
            attested_node_svid_and_ban,
            attested_node_lost_renewals,
            attested_node_concurrent_renewals,
            bundles,
            federation_relationships,
            ca_journal,
            bundle_composition,
        );
    };
}
#[cfg(test)]
pub(crate) use each_behaviour;

/// Runs every behaviour in turn.
pub async fn run_all(ds: &dyn Datastore) {
    macro_rules! run {
        ($($name:ident),* $(,)?) => {
            $( $name(ds).await; )*
        };
    }
    each_behaviour!(run);
}

/// Panics unless `$res` is an error matching `$pat`.
macro_rules! assert_err {
    ($res:expr, $pat:pat, $($ctx:tt)+) => {
        match $res {
            Err($pat) => {}
            other => panic!(
                "{}: expected Err({}), got {:?}",
                format!($($ctx)+),
                stringify!($pat),
                other
            ),
        }
    };
}

// The behaviours, one file per kind of record. Declared after `assert_err!` so that
// they can use it.
mod bundles;
mod ca_journal;
mod entries;
mod join_tokens;
mod nodes;
mod relationships;

pub use self::bundles::*;
pub use self::ca_journal::*;
pub use self::entries::*;
pub use self::join_tokens::*;
pub use self::nodes::*;
pub use self::relationships::*;

/// A namespace of its own for one behaviour: a random trust domain.
struct Ns {
    td: TrustDomain,
}

impl Ns {
    fn new(label: &str) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let td = TrustDomain::new(&format!("{label}-{}.test", &tag[..12]))
            .expect("test trust domain is valid");
        Self { td }
    }

    fn id(&self, path: &str) -> SpiffeId {
        self.td.id(path).expect("test SPIFFE ID is valid")
    }

    /// A selector no other namespace holds.
    fn sel(&self, value: &str) -> Selector {
        Selector::new("conformance", &format!("{}:{value}", self.td)).expect("test selector")
    }

    fn entry(&self, path: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
        RegistrationEntry {
            id: String::new(),
            spiffe_id: self.id(path),
            parent_id: self.id(parent),
            selectors: selectors.iter().map(|s| self.sel(s)).collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec![],
            hint: String::new(),
            expires_at: 0,
            revision_number: 0,
            created_at: 0,
            workload_key: Default::default(),
        }
    }

    fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn ok<T>(res: Result<T>, what: impl fmt::Display) -> T {
    match res {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

fn all() -> Page {
    Page::default()
}

/// Lists everything matching `filter` in one page.
async fn list(ds: &dyn Datastore, filter: &EntryFilter) -> Vec<RegistrationEntry> {
    let (entries, next) = ok(ds.list_entries(filter, &all()).await, "list_entries");
    assert!(
        next.is_empty(),
        "a page of size 0 is the last: got token {next:?}"
    );
    assert_sorted_by_id(&entries);
    entries
}

fn ids(entries: &[RegistrationEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

fn assert_sorted_by_id(entries: &[RegistrationEntry]) {
    assert!(
        entries.windows(2).all(|w| w[0].id < w[1].id),
        "entries must be ordered by strictly increasing ID"
    );
}

/// The backend answers and names itself.
pub async fn ping_and_name(ds: &dyn Datastore) {
    ok(ds.ping().await, "ping");
    assert!(!ds.name().is_empty(), "a backend has a name");
}
