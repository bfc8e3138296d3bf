//! The SQLite datastore: the embedded default, one database file on the server's disk.
//!
//! # Connections
//!
//! rusqlite connections are blocking, so every operation runs on tokio's blocking
//! pool (`spawn_blocking`) and the runtime's worker threads never wait on SQLite.
//!
//! - **One writer connection** behind an async mutex. SQLite allows one writer at a
//!   time anyway; queueing writers on a fair async lock (instead of letting several
//!   connections fight over the file lock) means a waiting writer costs no thread and
//!   never sees `SQLITE_BUSY` from its own process. The lock is taken *before* the
//!   blocking task is spawned, so only the writer that holds it occupies a thread.
//! - **A small pool of reader connections**. In WAL mode readers never block the
//!   writer nor each other, and each read sees the last committed state, so the
//!   server's hot path (entry sync) scales with cores instead of queueing behind
//!   writes. A semaphore caps concurrent reads at the pool size; idle connections are
//!   kept for reuse (each keeps its prepared-statement cache warm) and a missing one is
//!   opened on demand. Readers set `query_only` so a bug cannot write through them.
//!
//! A caller that is cancelled while its operation runs does not cancel the operation:
//! the blocking task finishes, and a write commits or rolls back as a whole.
//!
//! # Transactions
//!
//! Every write is one `BEGIN IMMEDIATE` transaction (taking the write lock up front,
//! so a transaction never fails halfway for lack of it), committed only when all of
//! it succeeded; on any error the transaction is dropped and rolled back, so nothing
//! is half-written. `create_entries` runs one transaction with a savepoint per entry:
//! an entry refused as a duplicate (or otherwise invalid) rolls back to its savepoint
//! and gets its own error, while a database failure aborts the whole batch.
//!
//! # Schema
//!
//! `PRAGMA user_version` is the schema version; `schema::MIGRATIONS` lists the steps,
//! each applied in its own transaction together with the version bump. A database newer
//! than the code is refused rather than guessed at.
//!
//! - `entries`: the entry as JSON (`data`) plus the columns queries need: `id`
//!   (primary key, the pagination order), `spiffe_id`, `parent_id`, `revision`, and
//!   `identity`, unique: SHA-256 of the SPIFFE ID, the parent ID and the sorted,
//!   deduplicated selectors, which is what makes two entries "the same registration".
//! - `entry_selectors(entry_id, selector)`, indexed by selector, for selector filters.
//! - `entry_events`: one row per create/update/delete, written in the same
//!   transaction. `AUTOINCREMENT` keeps event IDs strictly growing even after pruning
//!   (a plain rowid would reuse the highest ID once it is deleted); an entry's
//!   `revision_number` is the ID of its latest event.
//! - `attested_nodes` (one column per field) and `node_selectors` in their order.
//! - `join_tokens(token, expires_at)`.
//! - `bundles`: the JWK Set text plus the JWT authorities' expiry times, which the
//!   JWK Set form does not carry.
//! - `ca_records`: each record as JSON.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a commit appends to the
//! WAL without an fsync, and the WAL is synced at checkpoints. The database can never
//! be corrupted by a crash, and a crash of the server process loses nothing (the data
//! is in the OS page cache); but a power cut or kernel crash may roll back the last
//! transactions committed before it. Losing a just-created entry is recoverable (the
//! operator sees it missing and registers it again). Some writes are not: losing a
//! renewed serial strands a join-token agent that cannot re-attest, losing a ban or an
//! eviction silently undoes it, a lost token redemption lets the token be used again,
//! a lost CA journal record forgets a key already in use, and a lost bundle change
//! brings back an authority that was removed. Those writes (attested nodes, join-token
//! takes, bundles, the CA journal) switch the connection to `synchronous=FULL` for
//! their own commit (see `connection::Durability`); they are rare enough that the
//! fsync costs nothing noticeable.
//!
//! # Files
//!
//! This file holds the connections and the [`Datastore`] implementation, which
//! delegates to one file per kind of record: `entries`, `events`, `nodes`,
//! `join_tokens`, `bundles`, `ca_journal`. `connection` opens and configures the
//! connections, `schema` holds the migrations, `error` maps SQLite's errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use async_trait::async_trait;
use rusqlite::Connection;
use tessera_core::{Bundle, RegistrationEntry, SpiffeId, TrustDomain};
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use self::connection::{Durability, open_reader, open_writer};
use self::error::Ctx;
use super::{
    AttestedNode, BundleComposer, CaRecord, Datastore, DatastoreError, EntryEvent, EntryFilter,
    EventReader, Failure, Page, Relationship, Result,
};

mod bundles;
mod ca_journal;
mod connection;
mod entries;
mod error;
mod events;
mod join_tokens;
mod nodes;
mod relationships;
mod schema;
#[cfg(test)]
mod tests;

/// The SQLite implementation of [`Datastore`]. Cloning shares the same connections.
#[derive(Clone)]
pub struct SqliteDatastore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Arc<AsyncMutex<Connection>>,
    idle_readers: StdMutex<Vec<Connection>>,
    read_slots: Arc<Semaphore>,
}

impl fmt::Debug for SqliteDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDatastore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteDatastore {
    /// Opens (creating it if missing, mode 0600, with its parent directory) the
    /// database at `path` and brings its schema up to date.
    ///
    /// This blocks (file I/O, migrations): call it at start-up, or from
    /// `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_migrations(path, schema::MIGRATIONS)
    }

    fn open_with_migrations(path: &Path, migrations: &[&str]) -> Result<Self> {
        let mut writer = open_writer(path)?;
        schema::migrate(&mut writer, path, migrations)?;
        // Open one reader now so that a problem with read connections shows at start-up
        // rather than on the first request.
        let first_reader = open_reader(path)?;
        let slots = reader_slots();
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Arc::new(AsyncMutex::new(writer)),
                idle_readers: StdMutex::new(vec![first_reader]),
                read_slots: Arc::new(Semaphore::new(slots)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DatastoreError::Unavailable(Failure::new("the datastore is closed")))?;
        let inner = self.inner.clone();
        run_blocking(move || {
            let _permit = permit;
            let mut conn = inner.checkout_reader()?;
            let out = f(&mut conn);
            inner.checkin_reader(conn);
            out
        })
        .await
    }

    /// Runs `f` on the writer connection on the blocking pool, once the writer is free.
    async fn write<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let mut conn = self.inner.writer.clone().lock_owned().await;
        run_blocking(move || {
            if durability == Durability::Full {
                conn.pragma_update(None, "synchronous", "FULL")
                    .ctx("switching to synchronous=FULL")?;
            }
            let out = f(&mut conn);
            if durability == Durability::Full
                && let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL")
            {
                // Staying at FULL is only slower, never less safe.
                tracing::warn!(error = %e, "sqlite: could not restore synchronous=NORMAL");
            }
            out
        })
        .await
    }
}

impl Inner {
    fn checkout_reader(&self) -> Result<Connection> {
        let idle = self
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path),
        }
    }

    fn checkin_reader(&self, conn: Connection) {
        self.idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

/// How many reads may run at once. Reads are mostly CPU work on cached pages; a few
/// more connections than cores lets a short read pass a long one (`all_entries`).
fn reader_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(4, 16)
}

async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        DatastoreError::Backend(Failure::caused_by(format!("sqlite task failed: {e}"), e))
    })?
}

#[async_trait]
impl Datastore for SqliteDatastore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).ctx("ping"))
            .await
    }

    // ---- registration entries ----

    async fn create_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        entries::create(self, entry).await
    }

    async fn create_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<Result<RegistrationEntry>>> {
        entries::create_batch(self, entries).await
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>> {
        entries::get(self, id).await
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &Page,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        entries::list(self, filter, page).await
    }

    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>> {
        entries::all(self).await
    }

    async fn update_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        entries::update(self, entry).await
    }

    async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry> {
        entries::delete(self, id).await
    }

    async fn entry_events_since(&self, after: u64) -> Result<Vec<EntryEvent>> {
        events::since(self, after).await
    }

    async fn latest_entry_event(&self) -> Result<u64> {
        events::latest(self).await
    }

    async fn prune_entry_events(&self, up_to: u64) -> Result<u64> {
        events::prune(self, up_to).await
    }

    async fn record_entry_event_reader(
        &self,
        reader: &str,
        read_up_to: u64,
        now: i64,
    ) -> Result<()> {
        events::record_reader(self, reader, read_up_to, now).await
    }

    async fn entry_event_readers(&self) -> Result<Vec<EventReader>> {
        events::readers(self).await
    }

    async fn forget_entry_event_readers(&self, seen_before: i64) -> Result<u64> {
        events::forget_readers(self, seen_before).await
    }

    // ---- attested nodes ----

    async fn upsert_attested_node(&self, node: AttestedNode) -> Result<()> {
        nodes::upsert(self, node).await
    }

    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>> {
        nodes::get(self, id).await
    }

    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>> {
        nodes::list(self).await
    }

    async fn renew_node_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<AttestedNode> {
        nodes::renew_svid(self, id, presented, serial, not_after).await
    }

    async fn activate_node_svid(&self, id: &SpiffeId, serial: &str) -> Result<AttestedNode> {
        nodes::activate_svid(self, id, serial).await
    }

    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<()> {
        nodes::delete(self, id).await
    }

    async fn ban_attested_node(&self, id: &SpiffeId) -> Result<()> {
        nodes::ban(self, id).await
    }

    async fn set_node_tpm_state(
        &self,
        id: &SpiffeId,
        key_in_tpm: bool,
        measured_boot: &str,
    ) -> Result<()> {
        nodes::set_tpm_state(self, id, key_in_tpm, measured_boot).await
    }

    // ---- join tokens ----

    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()> {
        join_tokens::create(self, token, expires_at).await
    }

    async fn take_join_token(&self, token: &str) -> Result<Option<i64>> {
        join_tokens::take(self, token).await
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        join_tokens::prune(self, now).await
    }

    // ---- bundles ----

    async fn set_bundle(&self, bundle: &Bundle) -> Result<()> {
        bundles::set(self, bundle).await
    }

    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
        bundles::get(self, td).await
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        bundles::list(self).await
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<()> {
        bundles::delete(self, td).await
    }

    // ---- federation relationships ----

    async fn create_federation_relationship(
        &self,
        rel: &Relationship,
        bundle: Option<&Bundle>,
    ) -> Result<()> {
        relationships::put(self, rel, bundle, false).await
    }

    async fn get_federation_relationship(&self, td: &TrustDomain) -> Result<Option<Relationship>> {
        relationships::get(self, td).await
    }

    async fn list_federation_relationships(&self) -> Result<Vec<Relationship>> {
        relationships::list(self).await
    }

    async fn update_federation_relationship(
        &self,
        rel: &Relationship,
        bundle: Option<&Bundle>,
    ) -> Result<()> {
        relationships::put(self, rel, bundle, true).await
    }

    async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<()> {
        relationships::delete(self, td).await
    }

    // ---- CA journal ----

    async fn put_ca_record(&self, record: &CaRecord) -> Result<()> {
        ca_journal::put(self, record).await
    }

    async fn list_ca_records(&self) -> Result<Vec<CaRecord>> {
        ca_journal::list(self).await
    }

    async fn delete_ca_record(&self, id: &str) -> Result<()> {
        ca_journal::delete(self, id).await
    }

    async fn compose_bundle(
        &self,
        td: &TrustDomain,
        compose: BundleComposer,
    ) -> Result<Option<Bundle>> {
        bundles::compose(self, td, compose).await
    }
}
