//! The PostgreSQL datastore: one database shared by several servers.
//!
//! # Connections
//!
//! `tokio-postgres` over TCP or a Unix socket (`host=/path`), with TLS through
//! rustls (`tls`) as libpq's `sslmode` and `sslrootcert` say: `disable`, `prefer`
//! (libpq's default: TLS when the server offers it), `require` (encrypted; the
//! chain is checked only when `sslrootcert` is given), `verify-ca` (the chain up to
//! `sslrootcert`), `verify-full` (the chain and the host name). tokio-postgres reads
//! neither setting, so `connection` takes them out of the string before it parses
//! the rest.
//!
//! Several hosts (`host=a,b`) are tried in order; with
//! `target_session_attrs=read-write` a server that takes no writes (a standby) is
//! skipped. That is how a server follows a PostgreSQL failover: connections to the
//! lost primary break and are dropped, and new ones reach the promoted standby.
//!
//! The pool is deadpool-postgres: at most [`POOL_SIZE`] connections, opened on
//! demand; a request that finds them all busy for 30 s fails with `Unavailable`. An
//! idle connection is checked with a round trip before it is handed out again
//! (with `read-write`, a statement a read-only server refuses), and dropped when
//! the check fails. [`PostgresDatastore::connect`] opens one connection (so that a
//! wrong address, password or certificate shows at start-up) and brings the schema
//! up to date.
//!
//! The connection string is never logged nor put in an error: messages name the
//! host, port, database and user only.
//!
//! # Transactions and several servers
//!
//! Every write that touches more than one row is one transaction (READ COMMITTED),
//! committed only when all of it succeeded; on error it is rolled back.
//!
//! Entry writers (create, batch create, update, delete) first lock the single row of
//! `entry_event_counter` (`SELECT ... FOR UPDATE`), which holds the highest event ID
//! ever given. That row lock does for every server sharing the database what SQLite's
//! single writer does: entry writes run one at a time, so checking a registration's
//! identity and then inserting it cannot race another writer, and event IDs are given
//! out in commit order, without gaps. A reader that saw event N therefore never sees
//! a smaller ID appear later (the entry cache depends on that). The counter is
//! transactional, so a rolled-back write gives no ID away, and pruning events never
//! lowers it. Readers are never blocked by it.
//!
//! Node renewals and activations lock the node's row (`FOR UPDATE`) so that a
//! renewal racing a ban cannot give a banned node a serial back, and two renewals of
//! one node (on two servers) apply one after the other; a join token is taken with a single
//! `DELETE ... RETURNING`, which exactly one of several concurrent takers wins.
//!
//! # Schema
//!
//! `schema_migrations(version)` records the applied steps of `schema::MIGRATIONS`. All
//! missing steps run in one transaction that first takes a transaction-level advisory
//! lock, so two servers starting at once apply each step once. A database whose
//! schema is newer than this binary is refused.
//!
//! The tables mirror the SQLite backend's (entries as JSON with the columns queries
//! need, an identity hash that is unique, selectors in their own table, nodes one
//! column per field, bundles as JWK Set text). Text that is compared or ordered uses
//! the `C` collation, so that order is byte order whatever the database's locale.
//!
//! # Files
//!
//! This file holds the datastore and the [`Datastore`] implementation, which
//! delegates to one file per kind of record: `entries`, `events`, `nodes`,
//! `join_tokens`, `bundles`, `ca_journal`. `connection` parses connection strings and
//! builds the pool, `tls` makes the rustls sessions, `schema` holds the migrations,
//! `error` maps PostgreSQL's errors.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tessera_core::{Bundle, RegistrationEntry, SpiffeId, TrustDomain};

use self::connection::{POOL_WAIT, PoolLimits, parse_config, pool};
use self::error::Ctx;
use super::{
    AttestedNode, BundleComposer, CaRecord, Datastore, EntryEvent, EntryFilter, EventReader, Page,
    Relationship, Result,
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
mod tls;

/// Most connections one server keeps open to the database.
pub const POOL_SIZE: usize = 16;

const DEFAULT_LIMITS: PoolLimits = PoolLimits {
    size: POOL_SIZE,
    wait: POOL_WAIT,
};

/// The PostgreSQL implementation of [`Datastore`]. Cloning shares the same pool.
#[derive(Clone)]
pub struct PostgresDatastore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    limits: PoolLimits,
    /// Where the database is, for messages: never the password.
    target: String,
}

impl fmt::Debug for PostgresDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDatastore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl PostgresDatastore {
    /// Connects to the database named by `connection_string` (libpq `key=value` pairs
    /// or a `postgres://` URL) and brings its schema up to date.
    pub async fn connect(connection_string: &str) -> Result<Self> {
        Self::connect_with(connection_string, schema::MIGRATIONS, DEFAULT_LIMITS).await
    }

    #[cfg(test)]
    async fn connect_with_migrations(connection_string: &str, migrations: &[&str]) -> Result<Self> {
        Self::connect_with(connection_string, migrations, DEFAULT_LIMITS).await
    }

    async fn connect_with(
        connection_string: &str,
        migrations: &[&str],
        limits: PoolLimits,
    ) -> Result<Self> {
        let settings = parse_config(connection_string)?;
        let target = settings.target.clone();
        let ds = Self {
            inner: Arc::new(Inner {
                pool: pool(settings, limits)?,
                limits,
                target,
            }),
        };
        let mut conn = ds.conn().await?;
        schema::migrate(conn.get()?, &ds.inner.target, migrations).await?;
        Ok(ds)
    }

    /// Where the database is (host, port, database, user), for logs.
    pub fn target(&self) -> &str {
        &self.inner.target
    }
}

#[async_trait]
impl Datastore for PostgresDatastore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.get()?
            .simple_query("SELECT 1")
            .await
            .ctx(format_args!("ping of the {}", self.inner.target))?;
        Ok(())
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
