//! The in-memory entry index and the authorization rule that decides which entries an
//! agent may hold.
//!
//! The index follows the datastore's change events, so it also sees entries written by
//! other servers sharing the database. An agent is authorized for:
//! entries whose parent is the agent; entries whose parent is a node alias (an entry
//! parented to the server) whose selectors are all among the agent's node selectors;
//! and, recursively, entries whose parent is the SPIFFE ID of an entry already
//! authorized. Results are cached per agent and recomputed only after a change, or
//! once an entry they depend on reaches its expiry time, so that a sync with nothing
//! new costs a hash comparison.
//!
//! Expiry is measured on the injected clock. An entry whose `expires_at` has passed
//! is neither served nor followed to its children; a cached set stops being used the
//! moment the first entry in it (or a node alias it came through) expires, and when
//! the clock is stepped back to before the set was computed.
//!
//! Change events are pruned once every server has read them: each server records in
//! the datastore how far it has read ([`EntryCache::housekeeping`]), and events up to
//! the lowest of those marks are deleted. A server that has not said so for
//! [`READER_ACTIVE`] (down, or cut off from the database) no longer holds pruning
//! back. Event IDs have no gaps, so a server that finds the next event it needs gone
//! knows that it was pruned past and reloads every entry; correctness never depends on
//! the marks or the clocks, only how often a reload happens.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tessera_core::clock::SharedClock;
use tessera_core::entry::revision_digest;
use tessera_core::selector::{self, SelectorSet};
use tessera_core::{RegistrationEntry, SpiffeId};

use crate::datastore::{Datastore, DatastoreError};

/// Above this many pending events, reloading everything is cheaper than one read each.
const RELOAD_THRESHOLD: usize = 512;

/// How often a server records how far it has read the change events and prunes what
/// every server has read.
pub const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A server that has not recorded its read mark for this long (seconds) no longer
/// holds pruning back; when it comes back it reloads.
pub const READER_ACTIVE: i64 = 600;

/// A read mark this old (seconds) is deleted: the server that left it is gone.
const READER_FORGET: i64 = 7 * 24 * 3600;

/// The entries one agent may hold, at one revision of the index.
#[derive(Debug)]
pub struct AuthorizedSet {
    /// The index revision this was computed at.
    pub revision: u64,
    /// Sorted by entry ID.
    pub entries: Vec<Arc<RegistrationEntry>>,
    /// SHA-256 over `id:revision\n` lines in ID order: what the agent compares.
    pub digest: Vec<u8>,
    /// The time (unix seconds) it was computed at.
    computed_at: i64,
    /// The first expiry (unix seconds) among the entries and node aliases it was
    /// computed from: from then on it may hold too much.
    stale_at: Option<i64>,
}

impl AuthorizedSet {
    /// Whether the entry with this ID is in the set.
    pub fn get(&self, id: &str) -> Option<&Arc<RegistrationEntry>> {
        self.entries
            .binary_search_by(|e| e.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Whether the set still holds at index revision `revision` and time `now`.
    fn holds_at(&self, revision: u64, now: i64) -> bool {
        self.revision == revision
            && now >= self.computed_at
            && self.stale_at.is_none_or(|t| now < t)
    }
}

/// The earlier of two optional expiry times.
fn earlier(a: Option<i64>, e: &RegistrationEntry) -> Option<i64> {
    if e.expires_at == 0 {
        return a;
    }
    Some(a.map_or(e.expires_at, |a| a.min(e.expires_at)))
}

#[derive(Debug, Default)]
struct Index {
    revision: u64,
    entries: HashMap<String, Arc<RegistrationEntry>>,
    by_parent: HashMap<SpiffeId, Vec<String>>,
    aliases: Vec<String>,
}

impl Index {
    fn insert(&mut self, e: RegistrationEntry) {
        self.remove(&e.id.clone());
        // The admin API refuses these; one stored before that rule, or written to the
        // database by other means, is kept there (so an operator can see and delete
        // it) but never served: its SVID would pass for the server or an agent.
        if e.spiffe_id.is_reserved() {
            tracing::error!(
                entry = %e.id,
                spiffe_id = %e.spiffe_id,
                "entry ignored: its SPIFFE ID is in the reserved namespace /spire; delete it"
            );
            return;
        }
        let id = e.id.clone();
        self.by_parent
            .entry(e.parent_id.clone())
            .or_default()
            .push(id.clone());
        if e.is_node_alias() {
            self.aliases.push(id.clone());
        }
        self.entries.insert(id, Arc::new(e));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            if let Some(v) = self.by_parent.get_mut(&old.parent_id) {
                v.retain(|x| x != id);
                if v.is_empty() {
                    self.by_parent.remove(&old.parent_id);
                }
            }
            self.aliases.retain(|x| x != id);
        }
    }

    fn authorized(
        &self,
        agent: &SpiffeId,
        node_selectors: &SelectorSet,
        now: i64,
    ) -> AuthorizedSet {
        let mut out: Vec<Arc<RegistrationEntry>> = Vec::new();
        let mut seen_ids: HashSet<&SpiffeId> = HashSet::new();
        let mut seen_entries: HashSet<&str> = HashSet::new();
        let mut queue: Vec<&SpiffeId> = vec![agent];
        let mut stale_at = None;
        seen_ids.insert(agent);
        for alias_id in &self.aliases {
            if let Some(alias) = self.entries.get(alias_id)
                && !alias.is_expired(now)
                && selector::matches(&alias.selectors, node_selectors)
            {
                stale_at = earlier(stale_at, alias);
                if seen_ids.insert(&alias.spiffe_id) {
                    queue.push(&alias.spiffe_id);
                }
            }
        }
        while let Some(parent) = queue.pop() {
            let Some(children) = self.by_parent.get(parent) else {
                continue;
            };
            for cid in children {
                let Some(e) = self.entries.get(cid) else {
                    continue;
                };
                if e.is_expired(now) || !seen_entries.insert(cid.as_str()) {
                    continue;
                }
                stale_at = earlier(stale_at, e);
                out.push(e.clone());
                if seen_ids.insert(&e.spiffe_id) {
                    queue.push(&e.spiffe_id);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let digest = revision_digest(out.iter().map(|e| (e.id.as_str(), e.revision_number)));
        AuthorizedSet {
            revision: self.revision,
            entries: out,
            digest,
            computed_at: now,
            stale_at,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct EntryCache {
    ds: Arc<dyn Datastore>,
    clock: SharedClock,
    index: RwLock<Index>,
    per_agent: RwLock<HashMap<SpiffeId, Arc<AuthorizedSet>>>,
    /// Serialises catch-up so two callers do not apply the same events twice.
    catch_up: tokio::sync::Mutex<()>,
    /// Wakes the follower after a local write.
    pub changed: tokio::sync::Notify,
    /// This server's name among the event readers (new at every start: a server
    /// that starts loads every entry and needs no earlier event).
    reader: String,
}

impl EntryCache {
    /// Loads every entry; expiry is judged on `clock`.
    pub async fn load(
        ds: Arc<dyn Datastore>,
        clock: SharedClock,
    ) -> Result<Arc<Self>, DatastoreError> {
        let cache = Arc::new(Self {
            ds,
            clock,
            index: RwLock::new(Index::default()),
            per_agent: RwLock::new(HashMap::new()),
            catch_up: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            reader: format!("server-{}", uuid::Uuid::new_v4().simple()),
        });
        cache.reload().await?;
        Ok(cache)
    }

    async fn reload(&self) -> Result<(), DatastoreError> {
        // The revision is read first: events after it are applied again later, which
        // is harmless, while events between would be lost if read after.
        let revision = self.ds.latest_entry_event().await?;
        let all = self.ds.all_entries().await?;
        let mut idx = Index {
            revision,
            ..Index::default()
        };
        for e in all {
            idx.insert(e);
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = idx;
        self.per_agent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Applies the datastore's change events since the last call.
    pub async fn catch_up(&self) -> Result<(), DatastoreError> {
        self.catch_up_from_events(false).await
    }

    /// `catch_up`, and with `check_latest` also when no event is left at all after
    /// this server's revision though the counter moved past it (every event it
    /// needed was pruned, and nothing was written since).
    async fn catch_up_from_events(&self, check_latest: bool) -> Result<(), DatastoreError> {
        let _g = self.catch_up.lock().await;
        let from = self.revision();
        let events = self.ds.entry_events_since(from).await?;
        let pruned_past = match events.first() {
            // Event IDs have no gaps: a missing next one was pruned.
            Some(first) => first.event_id > from + 1,
            None => check_latest && self.ds.latest_entry_event().await? > from,
        };
        if pruned_past {
            tracing::info!(
                revision = from,
                "entry events this server had not read were pruned; reloading every entry"
            );
            return self.reload().await;
        }
        if events.is_empty() {
            return Ok(());
        }
        if events.len() > RELOAD_THRESHOLD {
            return self.reload().await;
        }
        let mut changes = Vec::with_capacity(events.len());
        let mut last = from;
        for ev in &events {
            last = last.max(ev.event_id);
            if ev.deleted {
                changes.push((ev.entry_id.clone(), None));
            } else {
                changes.push((ev.entry_id.clone(), self.ds.get_entry(&ev.entry_id).await?));
            }
        }
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            for (id, e) in changes {
                match e {
                    Some(e) => idx.insert(e),
                    None => idx.remove(&id),
                }
            }
            idx.revision = last;
        }
        self.per_agent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Follows the datastore until the process stops: promptly after local writes,
    /// and every `interval` for writes by other servers.
    pub async fn follow(self: Arc<Self>, interval: std::time::Duration) {
        loop {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "entry cache could not catch up (will retry)");
            }
        }
    }

    /// Records how far this server has read the change events, forgets the marks of
    /// servers long gone, and prunes the events every active server has read; returns
    /// how many were pruned.
    pub async fn prune_read_events(&self) -> Result<u64, DatastoreError> {
        self.catch_up_from_events(true).await?;
        let now = self.clock.unix();
        self.ds
            .record_entry_event_reader(&self.reader, self.revision(), now)
            .await?;
        self.ds
            .forget_entry_event_readers(now - READER_FORGET)
            .await?;
        let readers = self.ds.entry_event_readers().await?;
        let Some(up_to) = readers
            .iter()
            .filter(|r| r.seen_at >= now - READER_ACTIVE)
            .map(|r| r.read_up_to)
            .min()
        else {
            return Ok(0);
        };
        let pruned = self.ds.prune_entry_events(up_to).await?;
        if pruned > 0 {
            tracing::debug!(pruned, up_to, "entry change events pruned");
        }
        Ok(pruned)
    }

    /// Runs [`Self::prune_read_events`] every `interval` until the process stops.
    pub async fn housekeeping(self: Arc<Self>, interval: std::time::Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.prune_read_events().await {
                tracing::warn!(error = %e, "entry events could not be pruned (will retry)");
            }
        }
    }

    /// The index revision (the last change event applied).
    pub fn revision(&self) -> u64 {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revision
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries `agent` may hold given its node selectors.
    pub fn authorized(&self, agent: &SpiffeId, node_selectors: &SelectorSet) -> Arc<AuthorizedSet> {
        let now = self.clock.unix();
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = self
            .per_agent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            && s.holds_at(idx.revision, now)
        {
            return s.clone();
        }
        let set = Arc::new(idx.authorized(agent, node_selectors, now));
        drop(idx);
        self.per_agent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.clone(), set.clone());
        set
    }

    /// Forgets an agent's cached set (its node selectors changed, or it left).
    pub fn forget_agent(&self, agent: &SpiffeId) {
        self.per_agent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use tessera_core::clock::ManualClock;

    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;

    fn e(id: &str, spiffe: &str, parent: &str, sels: &[&str]) -> RegistrationEntry {
        RegistrationEntry {
            id: id.into(),
            spiffe_id: spiffe.parse().unwrap(),
            parent_id: parent.parse().unwrap(),
            selectors: sels.iter().map(|s| s.parse().unwrap()).collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            dns_names: vec![],
            hint: String::new(),
            expires_at: 0,
            revision_number: 1,
            created_at: 0,
            workload_key: Default::default(),
        }
    }

    fn ids(s: &AuthorizedSet) -> Vec<&str> {
        s.entries.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn authorization_rule() {
        let agent: SpiffeId = "spiffe://td/spire/agent/join_token/t1".parse().unwrap();
        let other: SpiffeId = "spiffe://td/spire/agent/join_token/t2".parse().unwrap();
        let mut idx = Index::default();
        // Parent is the agent.
        idx.insert(e(
            "a",
            "spiffe://td/w1",
            agent.to_string().as_str(),
            &["unix:uid:1"],
        ));
        // Node alias matching the agent's node selectors, and a child of it.
        idx.insert(e(
            "alias",
            "spiffe://td/nodes/rack1",
            "spiffe://td/spire/server",
            &["tpm:pub_hash:aa"],
        ));
        idx.insert(e(
            "b",
            "spiffe://td/w2",
            "spiffe://td/nodes/rack1",
            &["unix:uid:2"],
        ));
        // Alias that does not match, and its child.
        idx.insert(e(
            "alias2",
            "spiffe://td/nodes/rack2",
            "spiffe://td/spire/server",
            &["tpm:pub_hash:bb"],
        ));
        idx.insert(e(
            "c",
            "spiffe://td/w3",
            "spiffe://td/nodes/rack2",
            &["unix:uid:3"],
        ));
        // Recursion: child of an authorized workload entry.
        idx.insert(e("d", "spiffe://td/w4", "spiffe://td/w1", &["unix:uid:4"]));
        // Another agent's entry.
        idx.insert(e(
            "x",
            "spiffe://td/w5",
            other.to_string().as_str(),
            &["unix:uid:5"],
        ));
        // An expired entry under the agent.
        let mut old = e(
            "z",
            "spiffe://td/w6",
            agent.to_string().as_str(),
            &["unix:uid:6"],
        );
        old.expires_at = 1;
        idx.insert(old);
        // A cycle must not loop forever.
        idx.insert(e(
            "cyc",
            "spiffe://td/w1",
            "spiffe://td/w4",
            &["unix:uid:7"],
        ));
        // An entry with a reserved ID (stored before the admin API refused them) is
        // never served, and nothing hangs from it.
        idx.insert(e(
            "srv",
            "spiffe://td/spire/server",
            agent.to_string().as_str(),
            &["unix:uid:8"],
        ));
        idx.insert(e(
            "under-srv",
            "spiffe://td/w9",
            "spiffe://td/spire/agent/join_token/t1/x",
            &["unix:uid:9"],
        ));
        idx.insert(e(
            "fake-agent",
            "spiffe://td/spire/agent/join_token/t1/x",
            agent.to_string().as_str(),
            &["unix:uid:9"],
        ));
        assert!(!idx.entries.contains_key("srv"));

        let node: SelectorSet = ["tpm:pub_hash:aa".parse().unwrap()].into_iter().collect();
        let s = idx.authorized(&agent, &node, 100);
        assert_eq!(ids(&s), vec!["a", "b", "cyc", "d"]);
        let s_none = idx.authorized(&agent, &SelectorSet::new(), 100);
        assert_eq!(ids(&s_none), vec!["a", "cyc", "d"]);
        assert_ne!(s.digest, s_none.digest);
        assert!(s.get("b").is_some() && s.get("c").is_none());
        let s_other = idx.authorized(&other, &SelectorSet::new(), 100);
        assert_eq!(ids(&s_other), vec!["x"]);

        idx.remove("alias");
        let s = idx.authorized(&agent, &node, 100);
        assert_eq!(ids(&s), vec!["a", "cyc", "d"]);
    }

    const T0: u64 = 1_700_000_000;

    fn expiring(mut e: RegistrationEntry, at: u64) -> RegistrationEntry {
        e.expires_at = at as i64;
        e
    }

    #[tokio::test]
    async fn entries_leave_the_cached_set_when_they_expire_with_nothing_else_changing() {
        let dir = tempfile::tempdir().unwrap();
        let ds: Arc<dyn Datastore> =
            Arc::new(SqliteDatastore::open(&dir.path().join("ds.sqlite3")).unwrap());
        let agent: SpiffeId = "spiffe://td/spire/agent/join_token/t1".parse().unwrap();
        let a = agent.to_string();
        for entry in [
            e("keep", "spiffe://td/keep", &a, &["unix:uid:1"]),
            expiring(e("soon", "spiffe://td/soon", &a, &["unix:uid:2"]), T0 + 100),
            // A child of the expiring entry goes with it.
            e(
                "child",
                "spiffe://td/child",
                "spiffe://td/soon",
                &["unix:uid:3"],
            ),
            // A node alias that expires later, and an entry under it.
            expiring(
                e(
                    "alias",
                    "spiffe://td/nodes/rack1",
                    "spiffe://td/spire/server",
                    &["tpm:pub_hash:aa"],
                ),
                T0 + 200,
            ),
            e(
                "racked",
                "spiffe://td/racked",
                "spiffe://td/nodes/rack1",
                &["unix:uid:4"],
            ),
        ] {
            ds.create_entry(entry).await.unwrap();
        }
        let clock = ManualClock::at_unix(T0);
        let cache = EntryCache::load(ds, clock.clone()).await.unwrap();
        let node: SelectorSet = ["tpm:pub_hash:aa".parse().unwrap()].into_iter().collect();
        let at = |secs: u64| {
            clock.set(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
            cache.authorized(&agent, &node)
        };

        let first = at(T0);
        assert_eq!(ids(&first), vec!["child", "keep", "racked", "soon"]);
        // Nothing changed and nothing expired: the cached set, as it was.
        assert!(Arc::ptr_eq(&first, &at(T0 + 99)));

        let s = at(T0 + 100);
        assert_eq!(ids(&s), vec!["keep", "racked"]);
        assert_ne!(s.digest, first.digest, "the agent would not notice");
        assert_eq!(ids(&at(T0 + 199)), vec!["keep", "racked"]);
        assert_eq!(ids(&at(T0 + 200)), vec!["keep"]);
        assert_eq!(ids(&at(T0 + 10_000)), vec!["keep"]);

        // A clock stepped back judges by the time it shows, not by a set computed
        // at a later time.
        assert_eq!(ids(&at(T0 + 150)), vec!["keep", "racked"]);
        assert_eq!(ids(&at(T0)), vec!["child", "keep", "racked", "soon"]);
    }

    /// The entries a cache holds, by ID, with their revisions.
    fn held(c: &EntryCache) -> Vec<(String, u64)> {
        let idx = c.index.read().unwrap();
        let mut v: Vec<_> = idx
            .entries
            .values()
            .map(|e| (e.id.clone(), e.revision_number))
            .collect();
        v.sort();
        v
    }

    /// Two servers on one database (two handles on one SQLite file): see
    /// [`two_servers_prune_and_reload`]; the PostgreSQL backend's tests run the same.
    #[tokio::test]
    async fn events_are_pruned_once_every_server_read_them_and_a_server_pruned_past_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.sqlite3");
        two_servers_prune_and_reload(
            Arc::new(SqliteDatastore::open(&path).unwrap()),
            Arc::new(SqliteDatastore::open(&path).unwrap()),
        )
        .await;
    }

    /// Two servers on one empty database: events are pruned only as far as both have
    /// read, a server that is gone stops holding pruning back, and a server pruned past
    /// reloads and holds exactly what the database holds.
    pub(crate) async fn two_servers_prune_and_reload(
        ds_a: Arc<dyn Datastore>,
        ds_b: Arc<dyn Datastore>,
    ) {
        let clock = ManualClock::at_unix(T0);
        let agent = "spiffe://td/spire/agent/join_token/t1";
        let mut created = Vec::new();
        for i in 0..4 {
            let entry = e(
                &format!("e{i}"),
                &format!("spiffe://td/w{i}"),
                agent,
                &["unix:uid:1"],
            );
            created.push(ds_a.create_entry(entry).await.unwrap());
        }
        let a = EntryCache::load(ds_a.clone(), clock.clone()).await.unwrap();
        let b = EntryCache::load(ds_b.clone(), clock.clone()).await.unwrap();
        let events = |ds: Arc<dyn Datastore>| async move {
            ds.entry_events_since(0)
                .await
                .unwrap()
                .iter()
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
        };

        // Both have read everything so far: whichever prunes first prunes it all.
        assert_eq!(b.prune_read_events().await.unwrap(), 4);
        assert_eq!(a.prune_read_events().await.unwrap(), 0);
        assert!(events(ds_a.clone()).await.is_empty());

        // Changes that B has not read yet: A reads them, but B's mark holds them.
        let mut changed = created[1].clone();
        changed.hint = "v2".into();
        ds_a.update_entry(changed).await.unwrap();
        ds_a.delete_entry("e2").await.unwrap();
        a.catch_up().await.unwrap();
        assert_eq!(a.prune_read_events().await.unwrap(), 0);
        assert_eq!(events(ds_a.clone()).await.len(), 2);
        // B reads them and says so: then they go.
        b.catch_up().await.unwrap();
        assert_eq!(held(&a), held(&b));
        assert_eq!(b.prune_read_events().await.unwrap(), 2);

        // B goes quiet (down, or cut off) with changes unread: its mark holds them
        // until it is older than READER_ACTIVE, then A prunes past it.
        ds_a.delete_entry("e0").await.unwrap();
        ds_a.create_entry(e("e9", "spiffe://td/w9", agent, &["unix:uid:9"]))
            .await
            .unwrap();
        a.catch_up().await.unwrap();
        assert_eq!(a.prune_read_events().await.unwrap(), 0);
        clock.set(
            std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(T0 + READER_ACTIVE as u64 + 1),
        );
        assert_eq!(a.prune_read_events().await.unwrap(), 2);
        assert!(events(ds_a.clone()).await.is_empty());

        // B comes back with nothing new written: its housekeeping sees the counter
        // past its revision with no event left, and reloads.
        assert_ne!(held(&a), held(&b));
        b.prune_read_events().await.unwrap();
        assert_eq!(held(&a), held(&b));

        // Pruned past again, and then a new write: the gap before the first event
        // it finds makes B reload on its ordinary catch-up.
        ds_a.delete_entry("e3").await.unwrap();
        a.catch_up().await.unwrap();
        clock.set(
            std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(T0 + 2 * READER_ACTIVE as u64 + 2),
        );
        a.prune_read_events().await.unwrap();
        ds_a.create_entry(e("e10", "spiffe://td/w10", agent, &["unix:uid:10"]))
            .await
            .unwrap();
        b.catch_up().await.unwrap();
        a.catch_up().await.unwrap();
        assert_eq!(held(&a), held(&b));
        let want: Vec<String> = ds_a
            .all_entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            held(&b).into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
            want
        );
        assert_eq!(want, ["e1", "e10", "e9"]);

        // Marks of servers long gone are forgotten.
        clock.set(
            std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(T0 + READER_FORGET as u64 + 3 * 600),
        );
        a.prune_read_events().await.unwrap();
        let readers = ds_a.entry_event_readers().await.unwrap();
        assert_eq!(readers.len(), 1, "{readers:?}");
        assert_eq!(readers[0].reader, a.reader);
    }
}
