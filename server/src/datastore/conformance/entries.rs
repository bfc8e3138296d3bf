//! Conformance: registration entries and their change events.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::{RegistrationEntry, TrustDomain};

use super::{Ns, assert_sorted_by_id, ids, list, now, ok};
use crate::datastore::{Datastore, DatastoreError, EntryFilter, Page};

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
    e.workload_key = tessera_core::WorkloadKey::Tpm;

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

/// What each server has read of the events: recorded, replaced, listed, forgotten by
/// age.
pub async fn entry_event_readers(ds: &dyn Datastore) {
    let ns = Ns::new("event-readers");
    let (a, b) = (ns.unique("server-a"), ns.unique("server-b"));
    // Times far in the past, below any real server's: forgetting by age then touches
    // only these rows.
    ok(ds.record_entry_event_reader(&a, 5, 1_000).await, "record a");
    ok(ds.record_entry_event_reader(&b, 9, 2_000).await, "record b");
    ok(
        ds.record_entry_event_reader(&a, 7, 1_500).await,
        "record a again",
    );
    let mine = |all: Vec<crate::datastore::EventReader>| -> Vec<(String, u64, i64)> {
        all.into_iter()
            .filter(|r| r.reader == a || r.reader == b)
            .map(|r| (r.reader, r.read_up_to, r.seen_at))
            .collect()
    };
    let mut got = mine(ok(ds.entry_event_readers().await, "readers"));
    got.sort();
    assert_eq!(got, [(a.clone(), 7, 1_500), (b.clone(), 9, 2_000)]);
    assert!(ok(ds.forget_entry_event_readers(1_600).await, "forget") >= 1);
    assert_eq!(
        mine(ok(ds.entry_event_readers().await, "readers")),
        [(b.clone(), 9, 2_000)]
    );
    ok(
        ds.forget_entry_event_readers(2_001).await,
        "forget all mine",
    );
    assert!(mine(ok(ds.entry_event_readers().await, "readers")).is_empty());
}
