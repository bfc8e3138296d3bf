//! The datastore conformance suite: what every [`Datastore`] backend must do, written
//! once against the trait so that SQLite and PostgreSQL are held to exactly the same
//! behaviour. A backend's tests call [`run_all`], or each behaviour on its own.
//!
//! Every behaviour works in its own random namespace (trust domain, IDs, tokens), so
//! the suite can run on a database that already holds data, including earlier runs of
//! itself; it asserts only about what it wrote. It panics on the first failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_core::bundle::JwtAuthority;
use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};

use super::{
    AttestedNode, CaKind, CaRecord, CaStatus, Datastore, DatastoreError, EntryFilter, Page, Result,
};

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
            ca_journal,
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

/// Creating gives an ID, a creation time and a revision; getting returns what was
/// stored; explicit IDs and creation times are kept.
pub async fn entry_create_and_get(ds: &dyn Datastore) {
    let ns = Ns::new("entry-create");
    let mut e = ns.entry("/web", "/agent", &["uid:1000", "gid:1000"]);
    e.x509_svid_ttl = 300;
    e.jwt_svid_ttl = 60;
    e.federates_with = vec![TrustDomain::new("other.test").expect("td")];
    e.admin = true;
    e.downstream = true;
    e.dns_names = vec!["web.example.org".into()];
    e.hint = "web".into();
    e.expires_at = 4_000_000_000;
    e.revision_number = 999_999_999;

    let before = now();
    let created = ok(ds.create_entry(e.clone()).await, "create_entry");
    assert!(
        !created.id.is_empty(),
        "an empty ID is replaced by a fresh one"
    );
    assert!(created.created_at >= before, "created_at is set to now");
    assert!(created.revision_number > 0, "revision is set");
    assert_ne!(
        created.revision_number, 999_999_999,
        "revision comes from the event"
    );
    let expected = RegistrationEntry {
        id: created.id.clone(),
        created_at: created.created_at,
        revision_number: created.revision_number,
        ..e.clone()
    };
    assert_eq!(created, expected, "every other field is stored as given");
    assert_eq!(
        ok(ds.get_entry(&created.id).await, "get_entry"),
        Some(created.clone())
    );

    let mut explicit = ns.entry("/db", "/agent", &["uid:1001"]);
    explicit.id = ns.unique("explicit");
    explicit.created_at = 12_345;
    let stored = ok(ds.create_entry(explicit.clone()).await, "create with id");
    assert_eq!(stored.id, explicit.id, "an explicit ID is kept");
    assert_eq!(stored.created_at, 12_345, "a set created_at is kept");
    assert!(stored.revision_number > created.revision_number);
    assert_eq!(
        ok(ds.get_entry(&explicit.id).await, "get_entry"),
        Some(stored)
    );

    let another = ok(
        ds.create_entry(ns.entry("/other", "/agent", &["uid:1000"]))
            .await,
        "create_entry",
    );
    assert_ne!(another.id, created.id, "fresh IDs differ");

    assert_eq!(
        ok(ds.get_entry(&ns.unique("missing")).await, "get missing"),
        None
    );
}

/// The same SPIFFE ID, parent ID and selectors (in any order) is one registration.
pub async fn entry_identity_is_unique(ds: &dyn Datastore) {
    let ns = Ns::new("entry-identity");
    let a = ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a", "b", "c"]))
            .await,
        "create",
    );

    let dup = ns.entry("/web", "/agent", &["c", "a", "b"]);
    match ds.create_entry(dup).await {
        Err(DatastoreError::AlreadyExists(msg)) => {
            assert!(
                msg.contains(&a.spiffe_id.to_string()),
                "the message names the registration: {msg}"
            );
        }
        other => panic!("same selectors in another order: expected AlreadyExists, got {other:?}"),
    }
    let mut dup_with_id = ns.entry("/web", "/agent", &["b", "a", "c"]);
    dup_with_id.id = ns.unique("dup");
    assert_err!(
        ds.create_entry(dup_with_id.clone()).await,
        DatastoreError::AlreadyExists(_),
        "duplicate with a new explicit id"
    );
    assert_eq!(
        ok(ds.get_entry(&dup_with_id.id).await, "get refused"),
        None,
        "a refused entry leaves nothing behind"
    );

    // Any one part different makes a different registration.
    ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a", "b"]))
            .await,
        "fewer selectors",
    );
    ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a", "b", "c", "d"]))
            .await,
        "more selectors",
    );
    ok(
        ds.create_entry(ns.entry("/web", "/agent2", &["a", "b", "c"]))
            .await,
        "other parent",
    );
    ok(
        ds.create_entry(ns.entry("/web2", "/agent", &["a", "b", "c"]))
            .await,
        "other SPIFFE ID",
    );

    let filter = EntryFilter {
        by_spiffe_id: Some(a.spiffe_id.clone()),
        by_parent_id: Some(a.parent_id.clone()),
        ..Default::default()
    };
    assert_eq!(list(ds, &filter).await.len(), 3);
}

/// An explicit ID that is taken is refused, whatever the rest of the entry.
pub async fn entry_explicit_id_collision(ds: &dyn Datastore) {
    let ns = Ns::new("entry-id");
    let mut a = ns.entry("/web", "/agent", &["a"]);
    a.id = ns.unique("id");
    let a = ok(ds.create_entry(a).await, "create");
    let mut b = ns.entry("/db", "/agent", &["b"]);
    b.id = a.id.clone();
    match ds.create_entry(b).await {
        Err(DatastoreError::AlreadyExists(msg)) => {
            assert!(msg.contains(&a.id), "the message names the ID: {msg}");
        }
        other => panic!("taken ID: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        ok(ds.get_entry(&a.id).await, "get"),
        Some(a),
        "the stored entry is untouched"
    );
    assert!(
        list(
            ds,
            &EntryFilter {
                by_spiffe_id: Some(ns.id("/db")),
                ..Default::default()
            }
        )
        .await
        .is_empty(),
        "the refused entry left nothing behind"
    );
}

/// Updates replace the entry with a new revision and keep `created_at`; a missing
/// entry is `NotFound` and a change that duplicates another entry is `AlreadyExists`.
pub async fn entry_update(ds: &dyn Datastore) {
    let ns = Ns::new("entry-update");
    let a = ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a", "b"]))
            .await,
        "create",
    );

    let mut change = a.clone();
    change.selectors = vec![ns.sel("c")];
    change.hint = "changed".into();
    change.x509_svid_ttl = 120;
    change.created_at = 1;
    change.revision_number = 0;
    let updated = ok(ds.update_entry(change.clone()).await, "update");
    assert!(updated.revision_number > a.revision_number, "new revision");
    assert_eq!(updated.created_at, a.created_at, "created_at is kept");
    assert_eq!(
        updated,
        RegistrationEntry {
            created_at: a.created_at,
            revision_number: updated.revision_number,
            ..change
        }
    );
    assert_eq!(ok(ds.get_entry(&a.id).await, "get"), Some(updated.clone()));
    let by_sel = |s: &str| EntryFilter {
        by_selectors: vec![ns.sel(s)],
        ..Default::default()
    };
    assert_eq!(
        ids(&list(ds, &by_sel("c")).await),
        ids(std::slice::from_ref(&updated))
    );
    assert!(
        list(ds, &by_sel("a")).await.is_empty(),
        "old selectors no longer match"
    );

    // Updating without changing the identity is not a collision with itself.
    let again = ok(ds.update_entry(updated.clone()).await, "update unchanged");
    assert!(again.revision_number > updated.revision_number);

    let mut missing = ns.entry("/nobody", "/agent", &["z"]);
    missing.id = ns.unique("missing");
    assert_err!(
        ds.update_entry(missing.clone()).await,
        DatastoreError::NotFound(_),
        "update of a missing entry"
    );
    assert_eq!(
        ok(ds.get_entry(&missing.id).await, "get"),
        None,
        "update never creates"
    );

    let b = ok(
        ds.create_entry(ns.entry("/db", "/agent", &["x", "y"]))
            .await,
        "create b",
    );
    let mut collide = b.clone();
    collide.spiffe_id = again.spiffe_id.clone();
    collide.parent_id = again.parent_id.clone();
    collide.selectors = again.selectors.clone();
    assert_err!(
        ds.update_entry(collide).await,
        DatastoreError::AlreadyExists(_),
        "update onto another entry's identity"
    );
    assert_eq!(
        ok(ds.get_entry(&b.id).await, "get b"),
        Some(b.clone()),
        "a refused update changes nothing"
    );
    assert_eq!(ids(&list(ds, &by_sel("x")).await), ids(&[b]));
}

/// Deleting returns the entry, removes it from every view and frees its identity.
pub async fn entry_delete(ds: &dyn Datastore) {
    let ns = Ns::new("entry-delete");
    let a = ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a"])).await,
        "create",
    );
    let keep = ok(
        ds.create_entry(ns.entry("/db", "/agent", &["a", "b"]))
            .await,
        "create",
    );
    let gone = ok(ds.delete_entry(&a.id).await, "delete");
    assert_eq!(gone, a, "delete returns what was stored");
    assert_eq!(ok(ds.get_entry(&a.id).await, "get"), None);
    let by_a = EntryFilter {
        by_selectors: vec![ns.sel("a")],
        ..Default::default()
    };
    assert_eq!(
        ids(&list(ds, &by_a).await),
        ids(std::slice::from_ref(&keep))
    );
    assert_err!(
        ds.delete_entry(&a.id).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    assert_err!(
        ds.update_entry(a.clone()).await,
        DatastoreError::NotFound(_),
        "update of a deleted entry"
    );
    assert_err!(
        ds.delete_entry(&ns.unique("missing")).await,
        DatastoreError::NotFound(_),
        "delete of a missing entry"
    );
    let again = ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a"])).await,
        "re-create after delete",
    );
    assert_ne!(again.id, a.id);
    assert_eq!(ok(ds.get_entry(&keep.id).await, "get"), Some(keep));
}

/// Every change records an event; revisions are event IDs and only grow, pruning
/// included.
pub async fn entry_events(ds: &dyn Datastore) {
    let ns = Ns::new("entry-events");
    let before = ok(ds.latest_entry_event().await, "latest");

    let a = ok(
        ds.create_entry(ns.entry("/web", "/agent", &["a"])).await,
        "create",
    );
    assert!(a.revision_number > before);
    assert!(ok(ds.latest_entry_event().await, "latest") >= a.revision_number);
    let mut change = a.clone();
    change.hint = "v2".into();
    let updated = ok(ds.update_entry(change).await, "update");
    ok(ds.delete_entry(&a.id).await, "delete");
    let latest = ok(ds.latest_entry_event().await, "latest");

    let since = ok(ds.entry_events_since(before).await, "events since");
    assert!(
        since.windows(2).all(|w| w[0].event_id < w[1].event_id),
        "events come in strictly increasing order"
    );
    assert!(since.iter().all(|e| e.event_id > before));
    let mine: Vec<_> = since.iter().filter(|e| e.entry_id == a.id).collect();
    assert_eq!(mine.len(), 3, "create, update, delete: {mine:?}");
    assert_eq!(mine[0].event_id, a.revision_number);
    assert!(!mine[0].deleted);
    assert_eq!(mine[1].event_id, updated.revision_number);
    assert!(!mine[1].deleted);
    assert!(mine[2].deleted, "the delete event says so");
    assert!(mine[2].event_id <= latest);

    let after_first = ok(
        ds.entry_events_since(mine[0].event_id).await,
        "events since",
    );
    assert!(after_first.iter().all(|e| e.event_id > mine[0].event_id));
    assert_eq!(after_first.iter().filter(|e| e.entry_id == a.id).count(), 2);
    assert!(
        ok(ds.entry_events_since(latest).await, "events since latest")
            .iter()
            .all(|e| e.event_id > latest)
    );

    // Pruning up to the update removes the first two events and nothing after.
    let pruned = ok(
        ds.prune_entry_events(mine[1].event_id).await,
        "prune events",
    );
    assert!(pruned >= 2, "pruned {pruned}");
    let left: Vec<_> = ok(ds.entry_events_since(0).await, "events")
        .into_iter()
        .filter(|e| e.entry_id == a.id)
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].deleted);

    // Pruning everything never lowers the counter, nor lets an ID be reused.
    ok(ds.prune_entry_events(latest).await, "prune all");
    assert!(ok(ds.latest_entry_event().await, "latest after prune") >= latest);
    let b = ok(
        ds.create_entry(ns.entry("/db", "/agent", &["b"])).await,
        "create after prune",
    );
    assert!(
        b.revision_number > latest,
        "event IDs keep growing after a prune"
    );
    assert_eq!(
        ok(ds.prune_entry_events(0).await, "prune nothing"),
        0,
        "there is no event 0"
    );
}

/// Filters by SPIFFE ID, parent ID and selector subset, alone and together.
pub async fn entry_list_filters(ds: &dyn Datastore) {
    let ns = Ns::new("entry-filters");
    let e1 = ok(
        ds.create_entry(ns.entry("/web", "/agent/1", &["uid:1", "gid:1"]))
            .await,
        "e1",
    );
    let e2 = ok(
        ds.create_entry(ns.entry("/web", "/agent/2", &["uid:1"]))
            .await,
        "e2",
    );
    let e3 = ok(
        ds.create_entry(ns.entry("/db", "/agent/1", &["uid:2", "gid:1"]))
            .await,
        "e3",
    );
    let e4 = ok(
        ds.create_entry(ns.entry("/db", "/agent/2", &["uid:3"]))
            .await,
        "e4",
    );
    let set = |es: &[&RegistrationEntry]| -> BTreeSet<String> {
        es.iter().map(|e| e.id.clone()).collect()
    };
    let filter = |spiffe: Option<&str>, parent: Option<&str>, sels: &[&str]| EntryFilter {
        by_spiffe_id: spiffe.map(|p| ns.id(p)),
        by_parent_id: parent.map(|p| ns.id(p)),
        by_selectors: sels.iter().map(|s| ns.sel(s)).collect(),
    };
    let cases: Vec<(EntryFilter, BTreeSet<String>, &str)> = vec![
        (
            filter(Some("/web"), None, &[]),
            set(&[&e1, &e2]),
            "spiffe id",
        ),
        (
            filter(None, Some("/agent/1"), &[]),
            set(&[&e1, &e3]),
            "parent id",
        ),
        (
            filter(Some("/web"), Some("/agent/1"), &[]),
            set(&[&e1]),
            "spiffe and parent id",
        ),
        (
            filter(None, None, &["uid:1"]),
            set(&[&e1, &e2]),
            "one selector, entries that hold more match too",
        ),
        (
            filter(None, None, &["gid:1"]),
            set(&[&e1, &e3]),
            "one selector",
        ),
        (
            filter(None, None, &["uid:1", "gid:1"]),
            set(&[&e1]),
            "two selectors",
        ),
        (
            filter(None, None, &["gid:1", "uid:1", "gid:1"]),
            set(&[&e1]),
            "selector order and repeats do not matter",
        ),
        (
            filter(None, None, &["uid:1", "uid:2"]),
            set(&[]),
            "no entry holds both",
        ),
        (
            filter(None, None, &["nobody"]),
            set(&[]),
            "a selector nobody holds",
        ),
        (
            filter(None, Some("/agent/2"), &["uid:1"]),
            set(&[&e2]),
            "parent id and selector",
        ),
        (
            filter(Some("/db"), Some("/agent/2"), &["uid:3"]),
            set(&[&e4]),
            "all three",
        ),
        (
            filter(Some("/nobody"), None, &[]),
            set(&[]),
            "unknown spiffe id",
        ),
    ];
    for (f, want, what) in cases {
        let got = list(ds, &f).await;
        assert_eq!(ids(&got), want, "filter: {what}");
        for e in &got {
            assert_eq!(
                ok(ds.get_entry(&e.id).await, "get").as_ref(),
                Some(e),
                "listed entries are whole"
            );
        }
    }
    let everything = ids(&list(ds, &EntryFilter::default()).await);
    assert!(
        set(&[&e1, &e2, &e3, &e4]).is_subset(&everything),
        "an empty filter matches everything"
    );
}

/// Walks all pages of `filter` at `size`, checking the paging rules.
async fn walk_pages(
    ds: &dyn Datastore,
    filter: &EntryFilter,
    size: u32,
) -> (Vec<RegistrationEntry>, usize) {
    let mut out: Vec<RegistrationEntry> = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 10_000, "pagination does not end");
        let page = Page {
            size,
            token: token.clone(),
        };
        let (entries, next) = ok(ds.list_entries(filter, &page).await, "list page");
        assert!(entries.len() <= size as usize, "a page holds at most size");
        if !next.is_empty() {
            assert_eq!(entries.len(), size as usize, "only the last page is short");
        }
        out.extend(entries);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_sorted_by_id(&out);
    (out, pages)
}

/// Pages cover the result exactly once, in ID order, and the last page says so.
pub async fn entry_list_pagination(ds: &dyn Datastore) {
    let ns = Ns::new("entry-pages");
    let total = 23;
    let batch: Vec<_> = (0..total)
        .map(|i| {
            let mut e = ns.entry(&format!("/w/{i}"), "/agent", &["shared"]);
            e.selectors.push(ns.sel(&format!("own:{i}")));
            e
        })
        .collect();
    let created: Vec<_> = ok(ds.create_entries(batch).await, "create batch")
        .into_iter()
        .map(|r| ok(r, "batch entry"))
        .collect();
    let want = ids(&created);
    let by_parent = EntryFilter {
        by_parent_id: Some(ns.id("/agent")),
        ..Default::default()
    };
    let by_selector = EntryFilter {
        by_selectors: vec![ns.sel("shared")],
        ..Default::default()
    };

    // 23 in pages of 23: a full last page is still the last (no empty page after it).
    for (size, pages) in [(5, 5), (1, total), (23, 1), (100, 1), (4, 6)] {
        let (got, n) = walk_pages(ds, &by_parent, size).await;
        assert_eq!(got.len(), want.len(), "size {size}: no duplicates");
        assert_eq!(ids(&got), want, "size {size}: no omissions");
        assert_eq!(n, pages, "size {size}: number of pages");
        let (got, _) = walk_pages(ds, &by_selector, size).await;
        assert_eq!(ids(&got), want, "size {size}, selector filter");
    }
    let (first, next) = ok(
        ds.list_entries(
            &by_parent,
            &Page {
                size: 10,
                token: String::new(),
            },
        )
        .await,
        "first page",
    );
    assert_eq!(first.len(), 10);
    assert_eq!(next, first[9].id, "the token follows the last entry");
    let unlimited = list(ds, &by_parent).await;
    assert_eq!(ids(&unlimited), want, "size 0: everything in one page");
}

/// A batch stores its good entries and refuses the duplicates, each with its own
/// result, in order.
pub async fn entry_batch_create(ds: &dyn Datastore) {
    let ns = Ns::new("entry-batch");
    let with_id = |mut e: RegistrationEntry, id: &str| {
        e.id = id.to_owned();
        e
    };
    let existing = ok(
        ds.create_entry(ns.entry("/old", "/agent", &["a", "b"]))
            .await,
        "create",
    );
    let bad_dup_existing = ns.unique("bad");
    let bad_dup_batch = ns.unique("bad");
    let explicit = ns.unique("good");
    let before = ok(ds.latest_entry_event().await, "latest");
    let batch = vec![
        ns.entry("/good/1", "/agent", &["g1"]),
        with_id(ns.entry("/old", "/agent", &["b", "a"]), &bad_dup_existing),
        ns.entry("/good/2", "/agent", &["g2", "x"]),
        with_id(ns.entry("/good/2", "/agent", &["x", "g2"]), &bad_dup_batch),
        with_id(ns.entry("/other", "/agent", &["o"]), &existing.id),
        with_id(ns.entry("/good/3", "/agent", &["g3"]), &explicit),
        with_id(ns.entry("/good/4", "/agent", &["g4"]), &explicit),
        ns.entry("/good/5", "/agent", &["g5"]),
    ];
    let results = ok(ds.create_entries(batch.clone()).await, "create_entries");
    assert_eq!(results.len(), batch.len(), "one result per entry");
    let expect_ok = [true, false, true, false, false, true, false, true];
    let mut stored = Vec::new();
    for (i, (res, want_ok)) in results.into_iter().zip(expect_ok).enumerate() {
        if want_ok {
            let e = ok(res, format_args!("batch entry {i}"));
            assert_eq!(e.spiffe_id, batch[i].spiffe_id, "result {i} is in order");
            stored.push(e);
        } else {
            assert_err!(res, DatastoreError::AlreadyExists(_), "batch entry {i}");
        }
    }
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].revision_number < w[1].revision_number),
        "revisions follow the batch order"
    );
    assert!(stored.iter().all(|e| e.revision_number > before));
    assert_eq!(stored[2].id, explicit);
    for e in &stored {
        assert_eq!(ok(ds.get_entry(&e.id).await, "get").as_ref(), Some(e));
    }
    for id in [&bad_dup_existing, &bad_dup_batch] {
        assert_eq!(ok(ds.get_entry(id).await, "get refused"), None);
    }
    assert_eq!(
        ok(ds.get_entry(&existing.id).await, "get existing"),
        Some(existing.clone()),
        "a refused explicit ID leaves the holder untouched"
    );
    let listed = list(
        ds,
        &EntryFilter {
            by_parent_id: Some(ns.id("/agent")),
            ..Default::default()
        },
    )
    .await;
    let mut want = ids(&stored);
    want.insert(existing.id.clone());
    assert_eq!(ids(&listed), want, "exactly the good entries were added");

    let events = ok(ds.entry_events_since(before).await, "events");
    for id in [&bad_dup_existing, &bad_dup_batch, &existing.id] {
        assert!(
            events.iter().all(|e| &e.entry_id != id),
            "no event for refused entry {id}"
        );
    }
    for e in &stored {
        assert!(
            events
                .iter()
                .any(|ev| ev.entry_id == e.id && ev.event_id == e.revision_number && !ev.deleted),
            "an event for {}",
            e.id
        );
    }

    assert!(
        ok(ds.create_entries(Vec::new()).await, "empty batch").is_empty(),
        "an empty batch is fine"
    );
}

/// Ten thousand entries in one batch, all back from `all_entries`.
pub async fn entry_batch_large(ds: &dyn Datastore) {
    let ns = Ns::new("entry-large");
    let n = 10_000;
    let batch: Vec<_> = (0..n)
        .map(|i| ns.entry(&format!("/w/{i}"), "/agent", &[&format!("uid:{i}")]))
        .collect();
    let created: BTreeMap<String, RegistrationEntry> =
        ok(ds.create_entries(batch).await, "create_entries")
            .into_iter()
            .map(|r| {
                let e = ok(r, "batch entry");
                (e.id.clone(), e)
            })
            .collect();
    assert_eq!(created.len(), n, "every entry got its own ID");

    let everything = ok(ds.all_entries().await, "all_entries");
    let mine: Vec<_> = everything
        .iter()
        .filter(|e| created.contains_key(&e.id))
        .collect();
    assert_eq!(mine.len(), n, "all_entries returns every entry once");
    for e in mine {
        assert_eq!(
            Some(e),
            created.get(&e.id),
            "all_entries returns whole entries"
        );
    }
    let by_parent = EntryFilter {
        by_parent_id: Some(ns.id("/agent")),
        ..Default::default()
    };
    assert_eq!(list(ds, &by_parent).await.len(), n);
}

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

fn node(ns: &Ns, name: &str, selectors: &[&str]) -> AttestedNode {
    AttestedNode {
        spiffe_id: ns.id(&format!("/spire/agent/join_token/{name}")),
        attestation_type: "join_token".into(),
        cert_serial: "0a1b".into(),
        cert_not_after: 2_000,
        new_cert_serial: String::new(),
        new_cert_not_after: 0,
        banned: false,
        can_reattest: false,
        selectors: selectors.iter().map(|s| ns.sel(s)).collect(),
        created_at: 100,
        updated_at: 100,
    }
}

fn find_node<'a>(nodes: &'a [AttestedNode], id: &SpiffeId) -> Vec<&'a AttestedNode> {
    nodes.iter().filter(|n| &n.spiffe_id == id).collect()
}

/// Nodes are stored whole, replaced by ID, listed and deleted.
pub async fn attested_nodes(ds: &dyn Datastore) {
    let ns = Ns::new("nodes");
    let n1 = node(&ns, "one", &["b", "a", "c"]);
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get missing"),
        None
    );
    ok(ds.upsert_attested_node(n1.clone()).await, "upsert");
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get"),
        Some(n1.clone()),
        "stored whole, selectors in their order"
    );

    let mut again = node(&ns, "one", &["d"]);
    again.attestation_type = "tpm_devid".into();
    again.cert_serial = "ffee".into();
    again.cert_not_after = 9_000;
    again.new_cert_serial = "0a1b".into();
    again.new_cert_not_after = 2_000;
    again.can_reattest = true;
    again.created_at = 200;
    again.updated_at = 300;
    ok(ds.upsert_attested_node(again.clone()).await, "re-attest");
    assert_eq!(
        ok(ds.get_attested_node(&n1.spiffe_id).await, "get"),
        Some(again.clone()),
        "upsert replaces the record"
    );

    let n2 = node(&ns, "two", &[]);
    ok(ds.upsert_attested_node(n2.clone()).await, "upsert n2");
    let listed = ok(ds.list_attested_nodes().await, "list");
    assert_eq!(
        find_node(&listed, &n1.spiffe_id),
        vec![&again],
        "listed once"
    );
    assert_eq!(find_node(&listed, &n2.spiffe_id), vec![&n2]);

    ok(ds.delete_attested_node(&n2.spiffe_id).await, "delete");
    assert_eq!(
        ok(ds.get_attested_node(&n2.spiffe_id).await, "get deleted"),
        None
    );
    assert!(find_node(&ok(ds.list_attested_nodes().await, "list"), &n2.spiffe_id).is_empty());
    assert_err!(
        ds.delete_attested_node(&n2.spiffe_id).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    // Evicted: it may attest again.
    ok(ds.upsert_attested_node(n2.clone()).await, "attest again");
    assert_eq!(
        ok(ds.get_attested_node(&n2.spiffe_id).await, "get"),
        Some(n2)
    );
}

/// A renewal leaves the proven serial in place and adds a pending one, which the
/// first call made with it promotes; a ban clears both, keeps the record and blocks
/// renewal.
pub async fn attested_node_svid_and_ban(ds: &dyn Datastore) {
    let ns = Ns::new("node-svid");
    let n = node(&ns, "agent", &["a", "b"]);
    let id = n.spiffe_id.clone();
    ok(ds.upsert_attested_node(n.clone()).await, "upsert");

    let renewed = ok(
        ds.renew_node_svid(&id, "0a1b", "0b2c", 3_000).await,
        "renew",
    );
    let got = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert_eq!(got, renewed, "the returned node is the stored one");
    assert_eq!(
        (got.cert_serial.as_str(), got.cert_not_after),
        ("0a1b", 2_000),
        "the proven serial stays until the agent uses the new one"
    );
    assert_eq!(
        (got.new_cert_serial.as_str(), got.new_cert_not_after),
        ("0b2c", 3_000)
    );
    assert_eq!(got.selectors, n.selectors);
    assert_eq!(got.attestation_type, n.attestation_type);
    assert_eq!(got.created_at, n.created_at);
    assert!(!got.banned);

    // The agent uses its new SVID: it becomes current and the old one is dropped.
    let active = ok(ds.activate_node_svid(&id, "0b2c").await, "activate");
    assert_eq!(
        (active.cert_serial.as_str(), active.cert_not_after),
        ("0b2c", 3_000)
    );
    assert_eq!(
        (active.new_cert_serial.as_str(), active.new_cert_not_after),
        ("", 0)
    );
    assert_eq!(
        ok(ds.get_attested_node(&id).await, "get"),
        Some(active.clone())
    );
    assert_eq!(
        ok(ds.activate_node_svid(&id, "0b2c").await, "activate again"),
        active,
        "the current serial changes nothing"
    );
    assert_err!(
        ds.activate_node_svid(&id, "0a1b").await,
        DatastoreError::Conflict(_),
        "the replaced serial"
    );
    assert_err!(
        ds.renew_node_svid(&id, "0a1b", "0c3d", 4_000).await,
        DatastoreError::Conflict(_),
        "a renewal with the replaced serial"
    );
    assert_eq!(
        ok(ds.get_attested_node(&id).await, "get"),
        Some(active),
        "a refused renewal changes nothing"
    );

    let missing = ns.id("/spire/agent/join_token/missing");
    assert_err!(
        ds.renew_node_svid(&missing, "01", "02", 1).await,
        DatastoreError::NotFound(_),
        "renew a missing node"
    );
    assert_err!(
        ds.activate_node_svid(&missing, "01").await,
        DatastoreError::NotFound(_),
        "activate on a missing node"
    );
    assert_eq!(
        ok(ds.get_attested_node(&missing).await, "get"),
        None,
        "renewal never creates"
    );

    ok(
        ds.renew_node_svid(&id, "0b2c", "0c3d", 4_000).await,
        "renew",
    );
    ok(ds.ban_attested_node(&id).await, "ban");
    let banned = ok(ds.get_attested_node(&id).await, "get").expect("a ban keeps the record");
    assert!(banned.banned);
    assert!(banned.cert_serial.is_empty() && banned.new_cert_serial.is_empty());
    assert_eq!(banned.selectors, n.selectors);
    assert_err!(
        ds.renew_node_svid(&id, "0c3d", "0d4e", 5_000).await,
        DatastoreError::Invalid(_),
        "renew a banned node"
    );
    assert_err!(
        ds.activate_node_svid(&id, "0c3d").await,
        DatastoreError::Conflict(_),
        "activate on a banned node"
    );
    let still = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert!(
        still.banned && still.cert_serial.is_empty() && still.new_cert_serial.is_empty(),
        "the ban holds"
    );
    ok(ds.ban_attested_node(&id).await, "banning twice is fine");
    assert_err!(
        ds.ban_attested_node(&missing).await,
        DatastoreError::NotFound(_),
        "ban a missing node"
    );

    ok(ds.delete_attested_node(&id).await, "delete lifts the ban");
    assert_eq!(ok(ds.get_attested_node(&id).await, "get"), None);
}

/// Renewals whose answers never reach the agent: the agent keeps presenting the SVID
/// it has, each renewal replaces only the pending serial, and the agent is never
/// locked out; once it uses the SVID it finally got, every older one is refused.
pub async fn attested_node_lost_renewals(ds: &dyn Datastore) {
    let ns = Ns::new("node-lost");
    let n = node(&ns, "agent", &[]);
    let id = n.spiffe_id.clone();
    ok(ds.upsert_attested_node(n).await, "upsert");
    for (i, serial) in ["01", "02", "03"].into_iter().enumerate() {
        let got = ok(
            ds.renew_node_svid(&id, "0a1b", serial, 3_000 + i as i64)
                .await,
            "renewal with the proven SVID",
        );
        assert_eq!(
            got.cert_serial, "0a1b",
            "renewal {i} dropped the proven SVID"
        );
        assert_eq!(got.new_cert_serial, serial);
        assert_eq!(
            ok(ds.activate_node_svid(&id, "0a1b").await, "a call with it").cert_serial,
            "0a1b"
        );
    }
    // Lost answers: 01 and 02 were never received; they are not accepted.
    for lost in ["01", "02"] {
        assert_err!(
            ds.activate_node_svid(&id, lost).await,
            DatastoreError::Conflict(_),
            "an answer that was replaced"
        );
    }
    // The agent renews with the SVID it finally received: it is promoted first.
    let got = ok(
        ds.renew_node_svid(&id, "03", "04", 5_000).await,
        "renew with 03",
    );
    assert_eq!(
        (got.cert_serial.as_str(), got.new_cert_serial.as_str()),
        ("03", "04")
    );
    assert_err!(
        ds.activate_node_svid(&id, "0a1b").await,
        DatastoreError::Conflict(_),
        "the superseded SVID"
    );
    ok(ds.delete_attested_node(&id).await, "delete");
}

/// Concurrent renewals of one node with the same proven SVID: each is applied whole,
/// one after the other; the proven serial survives and exactly one pending serial is
/// left, one of those issued.
pub async fn attested_node_concurrent_renewals(ds: &dyn Datastore) {
    let ns = Ns::new("node-race");
    let n = node(&ns, "agent", &["a"]);
    let id = n.spiffe_id.clone();
    ok(ds.upsert_attested_node(n).await, "upsert");
    let serials: Vec<String> = (0..12).map(|i| format!("{:04x}", 0x100 + i)).collect();
    let renewals = serials
        .iter()
        .map(|s| ds.renew_node_svid(&id, "0a1b", s, 9_000));
    for r in futures::future::join_all(renewals).await {
        ok(r, "concurrent renewal");
    }
    let got = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert_eq!(got.cert_serial, "0a1b");
    assert!(serials.contains(&got.new_cert_serial), "{got:?}");
    // Activation racing renewals with the pending serial: whichever wins, the node
    // ends with a proven serial among those issued, and never with the original one
    // beside a serial it did not issue.
    let pending = got.new_cert_serial.clone();
    let more: Vec<String> = (0..6).map(|i| format!("{:04x}", 0x200 + i)).collect();
    let activation = ds.activate_node_svid(&id, &pending);
    let renewals = more
        .iter()
        .map(|s| ds.renew_node_svid(&id, &pending, s, 9_500));
    let (act, ren) = futures::join!(activation, futures::future::join_all(renewals));
    ok(act, "activation");
    for r in ren {
        ok(r, "renewal with the pending serial");
    }
    let got = ok(ds.get_attested_node(&id).await, "get").expect("node exists");
    assert_eq!(got.cert_serial, pending, "{got:?}");
    assert!(more.contains(&got.new_cert_serial), "{got:?}");
    ok(ds.delete_attested_node(&id).await, "delete");
}

fn sample_bundle(td: &TrustDomain, sequence: u64) -> Bundle {
    let ca_key: Arc<dyn Key> =
        Arc::new(SoftwareKey::generate(KeyType::EcP256).expect("generate CA key"));
    let start = SystemTime::now();
    let cert = tessera_core::x509::self_signed_ca(
        td,
        "conformance",
        &ca_key,
        start,
        start + Duration::from_secs(3600),
    )
    .expect("self-signed CA");
    let jwt_key = SoftwareKey::generate(KeyType::EcP256).expect("generate JWT key");
    let mut bundle = Bundle::with_x509(td.clone(), vec![cert]);
    bundle.set_jwt_authorities(vec![JwtAuthority {
        key_id: format!("kid-{sequence}"),
        public_key_der: jwt_key.public_key_der().to_vec(),
        expires_at: 1_234 + i64::try_from(sequence).unwrap_or(0),
    }]);
    bundle.set_sequence(sequence);
    bundle.set_refresh_hint(60);
    bundle
}

fn find_bundle<'a>(bundles: &'a [Bundle], td: &TrustDomain) -> Vec<&'a Bundle> {
    bundles.iter().filter(|b| b.trust_domain() == td).collect()
}

/// Bundles are stored whole (authorities, sequence, refresh hint, JWT expiries),
/// replaced per trust domain, listed and deleted.
pub async fn bundles(ds: &dyn Datastore) {
    let ns = Ns::new("bundles");
    let td = ns.td.clone();
    let other = Ns::new("bundles-fed").td;
    assert_eq!(ok(ds.get_bundle(&td).await, "get missing"), None);

    let b1 = sample_bundle(&td, 3);
    ok(ds.set_bundle(&b1).await, "set");
    assert_eq!(
        ok(ds.get_bundle(&td).await, "get"),
        Some(b1.clone()),
        "stored whole"
    );

    let mut b2 = sample_bundle(&td, 4);
    b2.set_refresh_hint(0);
    ok(ds.set_bundle(&b2).await, "replace");
    let got = ok(ds.get_bundle(&td).await, "get").expect("bundle exists");
    assert_eq!(got, b2, "set replaces the trust domain's bundle");
    assert_eq!(got.sequence(), 4, "the sequence is kept");

    let mut fed = Bundle::new(other.clone());
    fed.set_sequence(1);
    ok(ds.set_bundle(&fed).await, "set federated");
    let listed = ok(ds.list_bundles().await, "list");
    assert_eq!(find_bundle(&listed, &td), vec![&b2]);
    assert_eq!(
        find_bundle(&listed, &other),
        vec![&fed],
        "an empty bundle is a bundle"
    );

    ok(ds.delete_bundle(&td).await, "delete");
    assert_eq!(ok(ds.get_bundle(&td).await, "get deleted"), None);
    assert!(find_bundle(&ok(ds.list_bundles().await, "list"), &td).is_empty());
    assert_err!(
        ds.delete_bundle(&td).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    assert_eq!(
        ok(ds.get_bundle(&other).await, "get other"),
        Some(fed.clone())
    );

    // A key the backend cannot keep must be refused, never silently dropped.
    let mut odd = fed.clone();
    odd.set_sequence(2);
    odd.set_jwt_authorities(vec![JwtAuthority {
        key_id: "odd".into(),
        public_key_der: vec![1, 2, 3],
        expires_at: 0,
    }]);
    match ds.set_bundle(&odd).await {
        Err(DatastoreError::Invalid(_)) => {
            assert_eq!(
                ok(ds.get_bundle(&other).await, "get"),
                Some(fed),
                "a refused bundle changes nothing"
            );
        }
        Ok(()) => assert_eq!(
            ok(ds.get_bundle(&other).await, "get"),
            Some(odd),
            "a stored bundle comes back whole"
        ),
        Err(e) => panic!("unstorable bundle: expected Invalid or success, got {e:?}"),
    }
    ok(ds.delete_bundle(&other).await, "delete other");
}

fn ca_record(ns: &Ns, kind: CaKind, status: CaStatus, created_at: i64) -> CaRecord {
    let x509 = kind == CaKind::X509;
    CaRecord {
        id: ns.unique("ca"),
        kind,
        key_id: ns.unique("key"),
        key_manager: "memory".into(),
        cert_der: if x509 {
            vec![0x30, 0x82, 1, 2, 3]
        } else {
            vec![]
        },
        upstream_chain: if x509 {
            vec![vec![4, 5], vec![6]]
        } else {
            vec![]
        },
        upstream_roots: if x509 { vec![vec![7, 8, 9]] } else { vec![] },
        public_key_der: if x509 { vec![] } else { vec![0x30, 0x59, 10] },
        jwt_kid: if x509 { String::new() } else { "kid".into() },
        not_before: created_at,
        not_after: created_at + 86_400,
        status,
        created_at,
    }
}

fn find_ca<'a>(records: &'a [CaRecord], id: &str) -> Vec<&'a CaRecord> {
    records.iter().filter(|r| r.id == id).collect()
}

/// CA journal records are stored whole, replaced by ID, listed and deleted.
pub async fn ca_journal(ds: &dyn Datastore) {
    let ns = Ns::new("ca-journal");
    let x509 = ca_record(&ns, CaKind::X509, CaStatus::Active, 100);
    let jwt = ca_record(&ns, CaKind::Jwt, CaStatus::Prepared, 200);
    ok(ds.put_ca_record(&x509).await, "put x509");
    ok(ds.put_ca_record(&jwt).await, "put jwt");
    let listed = ok(ds.list_ca_records().await, "list");
    assert_eq!(find_ca(&listed, &x509.id), vec![&x509]);
    assert_eq!(find_ca(&listed, &jwt.id), vec![&jwt]);

    let old = CaRecord {
        status: CaStatus::Old,
        ..x509.clone()
    };
    ok(ds.put_ca_record(&old).await, "replace");
    let listed = ok(ds.list_ca_records().await, "list");
    assert_eq!(find_ca(&listed, &x509.id), vec![&old], "put replaces by ID");

    ok(ds.delete_ca_record(&x509.id).await, "delete");
    let listed = ok(ds.list_ca_records().await, "list");
    assert!(find_ca(&listed, &x509.id).is_empty());
    assert_eq!(
        find_ca(&listed, &jwt.id),
        vec![&jwt],
        "others are untouched"
    );
    assert_err!(
        ds.delete_ca_record(&x509.id).await,
        DatastoreError::NotFound(_),
        "second delete"
    );
    ok(ds.delete_ca_record(&jwt.id).await, "delete jwt");
}
