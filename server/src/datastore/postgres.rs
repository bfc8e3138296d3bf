//! The PostgreSQL datastore: one database shared by several servers.
//!
//! # Connections
//!
//! `tokio-postgres` over plain TCP or a Unix socket (`host=/path`); TLS is not
//! supported yet, and a connection string that asks for it (`sslmode=require`,
//! `verify-ca`, `verify-full`) is refused rather than silently sent in clear.
//! `sslmode=prefer` (libpq's default) connects without TLS.
//!
//! A small pool: at most [`POOL_SIZE`] connections, opened on demand and kept while
//! they work; a closed connection is dropped and a new one opened on the next
//! request. [`PostgresDatastore::connect`] opens one connection (so that a wrong
//! address or password shows at start-up) and brings the schema up to date.
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
//! `schema_migrations(version)` records the applied steps of [`MIGRATIONS`]. All
//! missing steps run in one transaction that first takes a transaction-level advisory
//! lock, so two servers starting at once apply each step once. A database whose
//! schema is newer than this binary is refused.
//!
//! The tables mirror the SQLite backend's (entries as JSON with the columns queries
//! need, an identity hash that is unique, selectors in their own table, nodes one
//! column per field, bundles as JWK Set text). Text that is compared or ordered uses
//! the `C` collation, so that order is byte order whatever the database's locale.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tessera_core::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Transaction};

use super::codec::{
    Identity, decode_bundle, decode_entry, decode_error, encode_bundle, encode_entry, from_sql_id,
    now_unix, require_found, to_sql_id, token_label,
};
use super::{
    AttestedNode, CaRecord, Datastore, DatastoreError, EntryEvent, EntryFilter, Page, Result,
};

/// Most connections one server keeps open to the database.
pub const POOL_SIZE: usize = 16;

/// How long a new connection may take when the connection string sets no
/// `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for a free connection before giving up with
/// `Unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The advisory lock key that serializes schema migrations ("tessera" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6573_7365_7261;

/// The schema, version 1.
const SCHEMA_V1: &str = r#"
CREATE TABLE entries (
    id        TEXT COLLATE "C" PRIMARY KEY,
    spiffe_id TEXT COLLATE "C" NOT NULL,
    parent_id TEXT COLLATE "C" NOT NULL,
    identity  TEXT COLLATE "C" NOT NULL,
    revision  BIGINT NOT NULL,
    data      TEXT NOT NULL
);
CREATE UNIQUE INDEX entries_identity ON entries (identity);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
CREATE INDEX entries_parent_id ON entries (parent_id);

CREATE TABLE entry_selectors (
    entry_id TEXT COLLATE "C" NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    selector TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (entry_id, selector)
);
CREATE INDEX entry_selectors_selector ON entry_selectors (selector, entry_id);

CREATE TABLE entry_events (
    id       BIGINT PRIMARY KEY CHECK (id > 0),
    entry_id TEXT COLLATE "C" NOT NULL,
    deleted  BOOLEAN NOT NULL
);

CREATE TABLE entry_event_counter (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    last_id  BIGINT NOT NULL CHECK (last_id >= 0)
);
INSERT INTO entry_event_counter (last_id) VALUES (0);

CREATE TABLE attested_nodes (
    spiffe_id           TEXT COLLATE "C" PRIMARY KEY,
    attestation_type    TEXT NOT NULL,
    cert_serial         TEXT NOT NULL,
    cert_not_after      BIGINT NOT NULL,
    prev_cert_serial    TEXT NOT NULL,
    prev_cert_not_after BIGINT NOT NULL,
    banned              BOOLEAN NOT NULL,
    can_reattest        BOOLEAN NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE node_selectors (
    node_id  TEXT COLLATE "C" NOT NULL REFERENCES attested_nodes (spiffe_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    selector TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (node_id, position)
);
CREATE INDEX node_selectors_selector ON node_selectors (selector);

CREATE TABLE join_tokens (
    token      TEXT COLLATE "C" PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE bundles (
    trust_domain TEXT COLLATE "C" PRIMARY KEY,
    jwks         TEXT NOT NULL,
    jwt_expiries TEXT NOT NULL
);

CREATE TABLE ca_records (
    id         TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL,
    data       TEXT NOT NULL
);
"#;

/// Version 2: a renewed agent SVID is pending (`new_cert_*`) until the agent uses it,
/// instead of replacing the current serial at once (`prev_cert_*`). A node renewed
/// under version 1 may hold either SVID: its previous serial becomes the proven one
/// and its current serial the pending one, so both stay accepted until the agent
/// shows which it has.
const SCHEMA_V2: &str = r#"
ALTER TABLE attested_nodes ADD COLUMN new_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE attested_nodes ADD COLUMN new_cert_not_after BIGINT NOT NULL DEFAULT 0;
UPDATE attested_nodes
   SET new_cert_serial = cert_serial, new_cert_not_after = cert_not_after,
       cert_serial = prev_cert_serial, cert_not_after = prev_cert_not_after
 WHERE prev_cert_serial <> '' AND NOT banned;
ALTER TABLE attested_nodes DROP COLUMN prev_cert_serial;
ALTER TABLE attested_nodes DROP COLUMN prev_cert_not_after;
"#;

/// Schema migrations, oldest first: step `i` takes the database from version `i` to
/// `i + 1`. A released step is never edited; a change is a new step appended here.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// The PostgreSQL implementation of [`Datastore`]. Cloning shares the same pool.
#[derive(Clone)]
pub struct PostgresDatastore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// Where the database is, for messages: never the password.
    target: String,
    idle: StdMutex<Vec<Client>>,
    slots: Arc<Semaphore>,
}

impl fmt::Debug for PostgresDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDatastore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// A connection checked out of the pool; it goes back when dropped, unless closed.
struct PooledClient {
    client: Option<Client>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl PooledClient {
    fn get(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| DatastoreError::Backend("postgres connection already released".into()))
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(client);
        }
    }
}

impl PostgresDatastore {
    /// Connects to the database named by `connection_string` (libpq `key=value` pairs
    /// or a `postgres://` URL) and brings its schema up to date.
    pub async fn connect(connection_string: &str) -> Result<Self> {
        Self::connect_with_migrations(connection_string, MIGRATIONS).await
    }

    async fn connect_with_migrations(connection_string: &str, migrations: &[&str]) -> Result<Self> {
        let config = parse_config(connection_string)?;
        let target = describe_target(&config);
        let ds = Self {
            inner: Arc::new(Inner {
                config,
                target,
                idle: StdMutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(POOL_SIZE)),
            }),
        };
        let mut conn = ds.conn().await?;
        migrate(conn.get()?, &ds.inner.target, migrations).await?;
        Ok(ds)
    }

    /// Where the database is (host, port, database, user), for logs.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// A connection from the pool, opening one when none is idle.
    async fn conn(&self) -> Result<PooledClient> {
        let permit = tokio::time::timeout(POOL_WAIT, self.inner.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                DatastoreError::Unavailable(format!(
                    "{}: all {POOL_SIZE} connections stayed busy for {}s",
                    self.inner.target,
                    POOL_WAIT.as_secs()
                ))
            })?
            .map_err(|_| DatastoreError::Unavailable("the datastore is closed".into()))?;
        let idle = loop {
            let next = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match next {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match idle {
            Some(c) => c,
            None => self.open_connection().await?,
        };
        Ok(PooledClient {
            client: Some(client),
            inner: self.inner.clone(),
            _permit: permit,
        })
    }

    async fn open_connection(&self) -> Result<Client> {
        let target = &self.inner.target;
        let (client, connection) = self
            .inner
            .config
            .connect(NoTls)
            .await
            .map_err(|e| connect_error(target, &e))?;
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(target = %target, error = %describe(&e), "postgres: connection lost");
            }
        });
        Ok(client)
    }
}

// ---- connection strings ----

/// Parses and checks a connection string; errors never quote it (it may hold a
/// password).
fn parse_config(connection_string: &str) -> Result<Config> {
    if let Some(mode) = requested_sslmode(connection_string) {
        let mode = mode.to_ascii_lowercase();
        if matches!(mode.as_str(), "require" | "verify-ca" | "verify-full") {
            return Err(tls_unsupported(&mode));
        }
    }
    let mut config = Config::from_str(connection_string.trim()).map_err(|e| {
        DatastoreError::Invalid(format!(
            "invalid PostgreSQL connection string: {}",
            describe(&e)
        ))
    })?;
    match config.get_ssl_mode() {
        SslMode::Require => return Err(tls_unsupported("require")),
        // libpq's default: TLS if the server offers it. Without TLS support that is
        // a plain connection; say so explicitly.
        SslMode::Prefer => {
            config.ssl_mode(SslMode::Disable);
        }
        _ => {}
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(DatastoreError::Invalid(
            "the PostgreSQL connection string names no host (host=NAME, host=/socket/dir \
             or postgres://NAME/DATABASE)"
                .into(),
        ));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tessera-server");
    }
    Ok(config)
}

fn tls_unsupported(mode: &str) -> DatastoreError {
    DatastoreError::Invalid(format!(
        "the PostgreSQL connection string asks for sslmode={mode}, but TLS to PostgreSQL \
         is not supported yet; connect over a Unix socket (host=/path/to/socket/dir) or a \
         trusted network with sslmode=disable"
    ))
}

/// The `sslmode` a connection string asks for, if any (the last one wins, as in
/// libpq).
fn requested_sslmode(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    {
        let (_, query) = rest.split_once('?')?;
        return query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "sslmode")
            .map(|(_, v)| v.to_owned())
            .next_back();
    }
    key_values(s)
        .into_iter()
        .filter(|(k, _)| k == "sslmode")
        .map(|(_, v)| v)
        .next_back()
}

/// The `key=value` pairs of a libpq connection string (values may be single-quoted,
/// with backslash escapes). Stops at the first thing that is not a pair; the real
/// parser reports it.
fn key_values(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    out
}

/// "postgres database D as user U at H:P": everything but the password.
fn describe_target(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{} (port {port})", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .map(|a| format!("{a}:{}", ports.first().copied().unwrap_or(5432)))
            .collect()
    } else {
        hosts
    };
    format!(
        "postgres database {} as user {} at {}",
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("(default)"),
        config.get_user().unwrap_or("(none)"),
        hosts.join(", ")
    )
}

// ---- errors ----

/// The error with its causes, on one line.
fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out.replace('\n', "; ")
}

/// Whether the error means the database could not be reached (or is shutting down,
/// overloaded, or asked for a retry): trying again later may work.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::QUERY_CANCELED,
            ]
            .contains(code);
    }
    if e.is_closed() {
        return true;
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    let text = e.to_string();
    text.starts_with("timeout") || text.starts_with("error connecting")
}

/// Maps an error met on the record described by `what` (a noun: "entry X").
fn pg_error(what: impl fmt::Display, e: &tokio_postgres::Error) -> DatastoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return DatastoreError::AlreadyExists(what.to_string());
    }
    if is_unavailable(e) {
        return DatastoreError::Unavailable(format!("{what}: {}", describe(e)));
    }
    DatastoreError::Backend(format!("{what}: {}", describe(e)))
}

/// An error opening a connection: the server could not be reached (`Unavailable`)
/// or refused us (`Backend`: wrong password, no such database).
fn connect_error(target: &str, e: &tokio_postgres::Error) -> DatastoreError {
    let msg = format!("cannot connect to the {target}: {}", describe(e));
    if is_unavailable(e) {
        DatastoreError::Unavailable(msg)
    } else {
        DatastoreError::Backend(msg)
    }
}

trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, tokio_postgres::Error> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| pg_error(what, &e))
    }
}

// ---- migrations ----

/// Brings the schema up to `migrations.len()` in one transaction, under an advisory
/// lock so that servers starting together do not both run a step.
async fn migrate(client: &mut Client, target: &str, migrations: &[&str]) -> Result<()> {
    let supported = migrations.len();
    let failed = |e: tokio_postgres::Error| {
        let msg = format!(
            "{target}: migrating the database schema failed: {}",
            describe(&e)
        );
        if is_unavailable(&e) {
            DatastoreError::Unavailable(msg)
        } else {
            DatastoreError::Backend(msg)
        }
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(failed)?;
    let version: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(failed)?;
    let version = usize::try_from(version).map_err(|_| {
        DatastoreError::Backend(format!(
            "{target}: invalid database schema version {version}"
        ))
    })?;
    if version > supported {
        return Err(DatastoreError::Backend(format!(
            "{target}: database schema version {version} is newer than this server supports \
             ({supported}); upgrade the server"
        )));
    }
    for (i, step) in migrations.iter().enumerate().skip(version) {
        let next = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let step_failed = |e: tokio_postgres::Error| {
            DatastoreError::Backend(format!(
                "{target}: migrating the database schema to version {next} failed: {}",
                describe(&e)
            ))
        };
        tx.batch_execute(step).await.map_err(step_failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&next],
        )
        .await
        .map_err(step_failed)?;
    }
    tx.commit().await.map_err(failed)?;
    if version < supported {
        tracing::info!(target = %target, from = version, to = supported, "postgres: schema migrated");
    }
    Ok(())
}

// ---- entries ----

fn entries_from_rows(rows: &[Row]) -> Result<Vec<RegistrationEntry>> {
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0).ctx("entries")?;
            let data: String = r.try_get(1).ctx("entries")?;
            decode_entry(&id, &data)
        })
        .collect()
}

/// Locks the event counter (see the module documentation) and returns the highest
/// event ID given so far.
async fn lock_events(tx: &Transaction<'_>) -> Result<u64> {
    let last: i64 = tx
        .query_one("SELECT last_id FROM entry_event_counter FOR UPDATE", &[])
        .await
        .and_then(|r| r.try_get(0))
        .ctx("entry event counter")?;
    from_sql_id(last)
}

/// Records events for `entry_ids` with the IDs `first..`, in order, and moves the
/// counter past them.
async fn record_events(
    tx: &Transaction<'_>,
    first: u64,
    entry_ids: &[String],
    deleted: bool,
) -> Result<()> {
    if entry_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = (0..entry_ids.len() as u64)
        .map(|i| to_sql_id(first + i))
        .collect();
    let last = ids.last().copied().unwrap_or_default();
    tx.execute(
        "INSERT INTO entry_events (id, entry_id, deleted)
         SELECT id, entry_id, $3 FROM unnest($1::BIGINT[], $2::TEXT[]) AS e (id, entry_id)",
        &[&ids, &entry_ids, &deleted],
    )
    .await
    .ctx("entry change events")?;
    tx.execute("UPDATE entry_event_counter SET last_id = $1", &[&last])
        .await
        .ctx("entry event counter")?;
    Ok(())
}

async fn insert_selectors(
    tx: &Transaction<'_>,
    entry_ids: &[String],
    selectors: &[String],
) -> Result<()> {
    if selectors.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO entry_selectors (entry_id, selector)
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[])",
        &[&entry_ids, &selectors],
    )
    .await
    .ctx("entry selectors")?;
    Ok(())
}

/// Stores a batch in the open transaction: each entry is checked against what is
/// stored and what came before it in the batch; the good ones are inserted together.
async fn insert_entries(
    tx: &Transaction<'_>,
    entries: Vec<RegistrationEntry>,
    now: i64,
) -> Result<Vec<Result<RegistrationEntry>>> {
    let mut last = lock_events(tx).await?;
    let prepared: Vec<(RegistrationEntry, Identity)> = entries
        .into_iter()
        .map(|mut e| {
            if e.id.is_empty() {
                e.id = uuid::Uuid::new_v4().to_string();
            }
            if e.created_at == 0 {
                e.created_at = now;
            }
            let identity = Identity::of(&e);
            (e, identity)
        })
        .collect();
    let ids: Vec<&str> = prepared.iter().map(|(e, _)| e.id.as_str()).collect();
    let hashes: Vec<&str> = prepared.iter().map(|(_, i)| i.hash.as_str()).collect();
    // The counter lock keeps other writers out until commit, so what this sees stays
    // true; the unique indexes stay as the last line of defence.
    let rows = tx
        .query(
            "SELECT id, identity FROM entries WHERE id = ANY($1) OR identity = ANY($2)",
            &[&ids, &hashes],
        )
        .await
        .ctx("entries")?;
    let mut taken_ids = HashSet::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    for row in rows {
        let id: String = row.try_get(0).ctx("entries")?;
        let hash: String = row.try_get(1).ctx("entries")?;
        taken_ids.insert(id.clone());
        owners.insert(hash, id);
    }

    let first_event = last + 1;
    let mut results = Vec::with_capacity(prepared.len());
    let mut cols = EntryColumns::default();
    for (mut entry, identity) in prepared {
        if taken_ids.contains(&entry.id) {
            results.push(Err(DatastoreError::AlreadyExists(format!(
                "entry with id {}",
                entry.id
            ))));
            continue;
        }
        if let Some(owner) = owners.get(&identity.hash) {
            results.push(Err(identity.duplicate_of(owner)));
            continue;
        }
        last += 1;
        entry.revision_number = last;
        let data = match encode_entry(&entry) {
            Ok(d) => d,
            Err(e) => {
                last -= 1;
                results.push(Err(e));
                continue;
            }
        };
        taken_ids.insert(entry.id.clone());
        owners.insert(identity.hash.clone(), entry.id.clone());
        cols.push(&entry, identity, data);
        results.push(Ok(entry));
    }
    if cols.ids.is_empty() {
        return Ok(results);
    }
    record_events(tx, first_event, &cols.ids, false).await?;
    tx.execute(
        "INSERT INTO entries (id, spiffe_id, parent_id, identity, revision, data)
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[],
                              $6::TEXT[])",
        &[
            &cols.ids,
            &cols.spiffe_ids,
            &cols.parent_ids,
            &cols.hashes,
            &cols.revisions,
            &cols.data,
        ],
    )
    .await
    .ctx(format_args!("entries {}", cols.ids.join(", ")))?;
    insert_selectors(tx, &cols.selector_entries, &cols.selectors).await?;
    Ok(results)
}

/// Entries to insert, column by column (for `unnest`).
#[derive(Default)]
struct EntryColumns {
    ids: Vec<String>,
    spiffe_ids: Vec<String>,
    parent_ids: Vec<String>,
    hashes: Vec<String>,
    revisions: Vec<i64>,
    data: Vec<String>,
    selector_entries: Vec<String>,
    selectors: Vec<String>,
}

impl EntryColumns {
    fn push(&mut self, entry: &RegistrationEntry, identity: Identity, data: String) {
        self.ids.push(entry.id.clone());
        self.spiffe_ids.push(identity.spiffe_id);
        self.parent_ids.push(identity.parent_id);
        self.hashes.push(identity.hash);
        self.revisions.push(to_sql_id(entry.revision_number));
        self.data.push(data);
        for s in identity.selectors {
            self.selector_entries.push(entry.id.clone());
            self.selectors.push(s);
        }
    }
}

async fn load_entry_for_update(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<Option<RegistrationEntry>> {
    let row = tx
        .query_opt("SELECT data FROM entries WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .ctx(format_args!("entry {id}"))?;
    row.map(|r| {
        let data: String = r.try_get(0).ctx(format_args!("entry {id}"))?;
        decode_entry(id, &data)
    })
    .transpose()
}

async fn update_entry_tx(
    tx: &Transaction<'_>,
    mut entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    let last = lock_events(tx).await?;
    let old = load_entry_for_update(tx, &entry.id)
        .await?
        .ok_or_else(|| DatastoreError::NotFound(format!("entry {:?}", entry.id)))?;
    entry.created_at = old.created_at;
    let identity = Identity::of(&entry);
    let owner = tx
        .query_opt(
            "SELECT id FROM entries WHERE identity = $1 AND id <> $2",
            &[&identity.hash, &entry.id],
        )
        .await
        .ctx("entry identity")?;
    if let Some(row) = owner {
        let existing: String = row.try_get(0).ctx("entry identity")?;
        return Err(identity.duplicate_of(&existing));
    }
    entry.revision_number = last + 1;
    let data = encode_entry(&entry)?;
    record_events(tx, last + 1, std::slice::from_ref(&entry.id), false).await?;
    let what = format!("entry {}", entry.id);
    tx.execute(
        "UPDATE entries SET spiffe_id = $2, parent_id = $3, identity = $4, revision = $5,
            data = $6
         WHERE id = $1",
        &[
            &entry.id,
            &identity.spiffe_id,
            &identity.parent_id,
            &identity.hash,
            &to_sql_id(entry.revision_number),
            &data,
        ],
    )
    .await
    .ctx(&what)?;
    tx.execute(
        "DELETE FROM entry_selectors WHERE entry_id = $1",
        &[&entry.id],
    )
    .await
    .ctx(format_args!("selectors of {what}"))?;
    let owners = vec![entry.id.clone(); identity.selectors.len()];
    insert_selectors(tx, &owners, &identity.selectors).await?;
    Ok(entry)
}

async fn delete_entry_tx(tx: &Transaction<'_>, id: &str) -> Result<RegistrationEntry> {
    let last = lock_events(tx).await?;
    let old = load_entry_for_update(tx, id)
        .await?
        .ok_or_else(|| DatastoreError::NotFound(format!("entry {id:?}")))?;
    tx.execute("DELETE FROM entry_selectors WHERE entry_id = $1", &[&id])
        .await
        .ctx(format_args!("selectors of entry {id}"))?;
    tx.execute("DELETE FROM entries WHERE id = $1", &[&id])
        .await
        .ctx(format_args!("entry {id}"))?;
    record_events(tx, last + 1, &[id.to_owned()], true).await?;
    Ok(old)
}

// ---- attested nodes ----

const NODE_QUERY: &str = "SELECT n.spiffe_id, n.attestation_type, n.cert_serial, n.cert_not_after,
        n.new_cert_serial, n.new_cert_not_after, n.banned, n.can_reattest, n.created_at,
        n.updated_at,
        COALESCE((SELECT array_agg(s.selector ORDER BY s.position) FROM node_selectors s
                  WHERE s.node_id = n.spiffe_id), '{}'::TEXT[])
     FROM attested_nodes n";

fn node_from_row(r: &Row) -> Result<AttestedNode> {
    let id: String = r.try_get(0).ctx("attested node")?;
    let what = format!("attested node {id}");
    let spiffe_id = SpiffeId::new(&id).map_err(|e| decode_error(&what, e))?;
    let selectors: Vec<String> = r.try_get(10).ctx(&what)?;
    let selectors = selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| decode_error(&what, e))?;
    Ok(AttestedNode {
        spiffe_id,
        attestation_type: r.try_get(1).ctx(&what)?,
        cert_serial: r.try_get(2).ctx(&what)?,
        cert_not_after: r.try_get(3).ctx(&what)?,
        new_cert_serial: r.try_get(4).ctx(&what)?,
        new_cert_not_after: r.try_get(5).ctx(&what)?,
        banned: r.try_get(6).ctx(&what)?,
        can_reattest: r.try_get(7).ctx(&what)?,
        selectors,
        created_at: r.try_get(8).ctx(&what)?,
        updated_at: r.try_get(9).ctx(&what)?,
    })
}

/// The node `id`, its row locked until the transaction ends; `NotFound` if absent.
async fn load_node_for_update(tx: &Transaction<'_>, id: &str) -> Result<AttestedNode> {
    let what = format!("attested node {id}");
    tx.execute(
        "SELECT 1 FROM attested_nodes WHERE spiffe_id = $1 FOR UPDATE",
        &[&id],
    )
    .await
    .ctx(&what)?;
    let row = tx
        .query_opt(&format!("{NODE_QUERY} WHERE n.spiffe_id = $1"), &[&id])
        .await
        .ctx(&what)?
        .ok_or_else(|| DatastoreError::NotFound(what.clone()))?;
    node_from_row(&row)
}

/// Writes a node's serials (as a renewal or an activation planned them).
async fn store_node_svids(tx: &Transaction<'_>, id: &str, node: &AttestedNode) -> Result<()> {
    tx.execute(
        "UPDATE attested_nodes SET
            cert_serial = $2, cert_not_after = $3,
            new_cert_serial = $4, new_cert_not_after = $5, updated_at = $6
         WHERE spiffe_id = $1",
        &[
            &id,
            &node.cert_serial,
            &node.cert_not_after,
            &node.new_cert_serial,
            &node.new_cert_not_after,
            &node.updated_at,
        ],
    )
    .await
    .ctx(format_args!("attested node {id}"))?;
    Ok(())
}

// ---- bundles ----

fn bundle_from_row(r: &Row) -> Result<Bundle> {
    let td: String = r.try_get(0).ctx("bundle")?;
    let what = format!("bundle of {td}");
    let jwks: String = r.try_get(1).ctx(&what)?;
    let expiries: String = r.try_get(2).ctx(&what)?;
    let td = TrustDomain::new(&td).map_err(|e| decode_error(&what, e))?;
    let expiries: Vec<i64> = serde_json::from_str(&expiries).map_err(|e| decode_error(&what, e))?;
    decode_bundle(&td, &jwks, &expiries)
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
        let mut results = self.create_entries(vec![entry]).await?;
        results.pop().unwrap_or_else(|| {
            Err(DatastoreError::Backend(
                "entry batch of one returned no result".into(),
            ))
        })
    }

    async fn create_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<Result<RegistrationEntry>>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_unix();
        let mut conn = self.conn().await?;
        let tx = conn.get()?.transaction().await.ctx("write transaction")?;
        let results = insert_entries(&tx, entries, now).await?;
        tx.commit().await.ctx("entry batch")?;
        Ok(results)
    }

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>> {
        let mut conn = self.conn().await?;
        let row = conn
            .get()?
            .query_opt("SELECT data FROM entries WHERE id = $1", &[&id])
            .await
            .ctx(format_args!("entry {id}"))?;
        row.map(|r| {
            let data: String = r.try_get(0).ctx(format_args!("entry {id}"))?;
            decode_entry(id, &data)
        })
        .transpose()
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &Page,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        let spiffe_id = filter.by_spiffe_id.as_ref().map(SpiffeId::to_string);
        let parent_id = filter.by_parent_id.as_ref().map(SpiffeId::to_string);
        let selectors: Vec<String> = filter
            .by_selectors
            .iter()
            .map(Selector::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let selector_count = selectors.len() as i64;
        let size = usize::try_from(page.size).unwrap_or(usize::MAX);
        // One row more than the page tells whether another page follows.
        let limit = i64::from(page.size) + 1;

        let mut sql = String::from("SELECT e.id, e.data FROM entries e WHERE TRUE");
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if !page.token.is_empty() {
            args.push(&page.token);
            sql.push_str(&format!(" AND e.id > ${}", args.len()));
        }
        if let Some(id) = &spiffe_id {
            args.push(id);
            sql.push_str(&format!(" AND e.spiffe_id = ${}", args.len()));
        }
        if let Some(id) = &parent_id {
            args.push(id);
            sql.push_str(&format!(" AND e.parent_id = ${}", args.len()));
        }
        if !selectors.is_empty() {
            // Entries holding every selector: each (entry, selector) pair is unique,
            // so holding all of them means matching as many rows as were asked for.
            args.push(&selectors);
            args.push(&selector_count);
            let n = args.len();
            sql.push_str(&format!(
                " AND e.id IN (SELECT entry_id FROM entry_selectors \
                 WHERE selector = ANY(${}) GROUP BY entry_id HAVING count(*) = ${n})",
                n - 1
            ));
        }
        sql.push_str(" ORDER BY e.id");
        if size > 0 {
            args.push(&limit);
            sql.push_str(&format!(" LIMIT ${}", args.len()));
        }
        let mut conn = self.conn().await?;
        let rows = conn.get()?.query(&sql, &args).await.ctx("entries")?;
        let mut entries = entries_from_rows(&rows)?;
        let mut next = String::new();
        if size > 0 && entries.len() > size {
            entries.truncate(size);
            next = entries.last().map(|e| e.id.clone()).unwrap_or_default();
        }
        Ok((entries, next))
    }

    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .get()?
            .query("SELECT id, data FROM entries", &[])
            .await
            .ctx("entries")?;
        let mut entries = entries_from_rows(&rows)?;
        entries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    async fn update_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        let mut conn = self.conn().await?;
        let tx = conn.get()?.transaction().await.ctx("write transaction")?;
        let entry = update_entry_tx(&tx, entry).await?;
        tx.commit().await.ctx(format_args!("entry {}", entry.id))?;
        Ok(entry)
    }

    async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry> {
        let mut conn = self.conn().await?;
        let tx = conn.get()?.transaction().await.ctx("write transaction")?;
        let old = delete_entry_tx(&tx, id).await?;
        tx.commit().await.ctx(format_args!("entry {id}"))?;
        Ok(old)
    }

    async fn entry_events_since(&self, after: u64) -> Result<Vec<EntryEvent>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .get()?
            .query(
                "SELECT id, entry_id, deleted FROM entry_events WHERE id > $1 ORDER BY id",
                &[&to_sql_id(after)],
            )
            .await
            .ctx("entry events")?;
        rows.iter()
            .map(|r| {
                Ok(EntryEvent {
                    event_id: from_sql_id(r.try_get(0).ctx("entry events")?)?,
                    entry_id: r.try_get(1).ctx("entry events")?,
                    deleted: r.try_get(2).ctx("entry events")?,
                })
            })
            .collect()
    }

    async fn latest_entry_event(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        // The counter, not MAX(id): pruning never lowers it, and it moves only at
        // commit, so a reader never sees an ID whose event is not visible yet.
        let last: i64 = conn
            .get()?
            .query_one("SELECT last_id FROM entry_event_counter", &[])
            .await
            .and_then(|r| r.try_get(0))
            .ctx("entry event counter")?;
        from_sql_id(last)
    }

    async fn prune_entry_events(&self, up_to: u64) -> Result<u64> {
        let mut conn = self.conn().await?;
        conn.get()?
            .execute(
                "DELETE FROM entry_events WHERE id <= $1",
                &[&to_sql_id(up_to)],
            )
            .await
            .ctx("entry events")
    }

    // ---- attested nodes ----

    async fn upsert_attested_node(&self, node: AttestedNode) -> Result<()> {
        let id = node.spiffe_id.to_string();
        let what = format!("attested node {id}");
        let positions: Vec<i32> = (0..node.selectors.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        let selectors: Vec<String> = node.selectors.iter().map(Selector::to_string).collect();
        let mut conn = self.conn().await?;
        let tx = conn.get()?.transaction().await.ctx("write transaction")?;
        tx.execute(
            "INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial,
                cert_not_after, new_cert_serial, new_cert_not_after, banned, can_reattest,
                created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (spiffe_id) DO UPDATE SET
                attestation_type = excluded.attestation_type,
                cert_serial = excluded.cert_serial,
                cert_not_after = excluded.cert_not_after,
                new_cert_serial = excluded.new_cert_serial,
                new_cert_not_after = excluded.new_cert_not_after,
                banned = excluded.banned,
                can_reattest = excluded.can_reattest,
                created_at = excluded.created_at,
                updated_at = excluded.updated_at",
            &[
                &id,
                &node.attestation_type,
                &node.cert_serial,
                &node.cert_not_after,
                &node.new_cert_serial,
                &node.new_cert_not_after,
                &node.banned,
                &node.can_reattest,
                &node.created_at,
                &node.updated_at,
            ],
        )
        .await
        .ctx(&what)?;
        tx.execute("DELETE FROM node_selectors WHERE node_id = $1", &[&id])
            .await
            .ctx(&what)?;
        if !selectors.is_empty() {
            tx.execute(
                "INSERT INTO node_selectors (node_id, position, selector)
                 SELECT $1, p, s FROM unnest($2::INTEGER[], $3::TEXT[]) AS x (p, s)",
                &[&id, &positions, &selectors],
            )
            .await
            .ctx(&what)?;
        }
        tx.commit().await.ctx(&what)
    }

    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>> {
        let id = id.to_string();
        let mut conn = self.conn().await?;
        // One statement: the node and its selectors from the same snapshot.
        let row = conn
            .get()?
            .query_opt(&format!("{NODE_QUERY} WHERE n.spiffe_id = $1"), &[&id])
            .await
            .ctx(format_args!("attested node {id}"))?;
        row.as_ref().map(node_from_row).transpose()
    }

    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .get()?
            .query(&format!("{NODE_QUERY} ORDER BY n.spiffe_id"), &[])
            .await
            .ctx("attested nodes")?;
        rows.iter().map(node_from_row).collect()
    }

    async fn renew_node_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<AttestedNode> {
        let id = id.to_string();
        let what = format!("attested node {id}");
        let now = now_unix();
        let mut conn = self.conn().await?;
        let tx = conn.get()?.transaction().await.ctx("write transaction")?;
        // The row lock makes a ban or another renewal wait for this one, or this one
        // see theirs: the serials are read and written as one step.
        let node = load_node_for_update(&tx, &id).await?;
        let next = super::codec::plan_renewal(&node, presented, serial, not_after, now)?;
        store_node_svids(&tx, &id, &next).await?;
        tx.commit().await.ctx(&what)?;
        Ok(next)
    }

    async fn activate_node_svid(&self, id: &SpiffeId, serial: &str) -> Result<AttestedNode> {
        let id = id.to_string();
        let what = format!("attested node {id}");
        let now = now_unix();
        let mut conn = self.conn().await?;
        let tx = conn.get()?.transaction().await.ctx("write transaction")?;
        let node = load_node_for_update(&tx, &id).await?;
        let Some(next) = super::codec::plan_activation(&node, serial, now)? else {
            return Ok(node);
        };
        store_node_svids(&tx, &id, &next).await?;
        tx.commit().await.ctx(&what)?;
        Ok(next)
    }

    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<()> {
        let id = id.to_string();
        let what = format!("attested node {id}");
        let mut conn = self.conn().await?;
        // Its selectors go with it (ON DELETE CASCADE), in the same statement.
        let n = conn
            .get()?
            .execute("DELETE FROM attested_nodes WHERE spiffe_id = $1", &[&id])
            .await
            .ctx(&what)?;
        require_found(n != 0, &what)
    }

    async fn ban_attested_node(&self, id: &SpiffeId) -> Result<()> {
        let id = id.to_string();
        let what = format!("attested node {id}");
        let now = now_unix();
        let mut conn = self.conn().await?;
        let n = conn
            .get()?
            .execute(
                "UPDATE attested_nodes SET banned = TRUE,
                    cert_serial = '', cert_not_after = 0,
                    new_cert_serial = '', new_cert_not_after = 0,
                    updated_at = $2
                 WHERE spiffe_id = $1",
                &[&id, &now],
            )
            .await
            .ctx(&what)?;
        require_found(n != 0, &what)
    }

    // ---- join tokens ----

    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.get()?
            .execute(
                "INSERT INTO join_tokens (token, expires_at) VALUES ($1, $2)",
                &[&token, &expires_at],
            )
            .await
            .ctx(token_label(token))?;
        Ok(())
    }

    async fn take_join_token(&self, token: &str) -> Result<Option<i64>> {
        let mut conn = self.conn().await?;
        // One statement: of concurrent takers, the others wait on the row lock and
        // then find it deleted.
        conn.get()?
            .query_opt(
                "DELETE FROM join_tokens WHERE token = $1 RETURNING expires_at",
                &[&token],
            )
            .await
            .ctx(token_label(token))?
            .map(|r| r.try_get(0))
            .transpose()
            .ctx(token_label(token))
    }

    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        let mut conn = self.conn().await?;
        conn.get()?
            .execute("DELETE FROM join_tokens WHERE expires_at < $1", &[&now])
            .await
            .ctx("join tokens")
    }

    // ---- bundles ----

    async fn set_bundle(&self, bundle: &Bundle) -> Result<()> {
        let td = bundle.trust_domain().name().to_owned();
        let (jwks, expiries) = encode_bundle(bundle)?;
        let mut conn = self.conn().await?;
        conn.get()?
            .execute(
                "INSERT INTO bundles (trust_domain, jwks, jwt_expiries) VALUES ($1, $2, $3)
                 ON CONFLICT (trust_domain) DO UPDATE SET
                    jwks = excluded.jwks, jwt_expiries = excluded.jwt_expiries",
                &[&td, &jwks, &expiries],
            )
            .await
            .ctx(format_args!("bundle of {td}"))?;
        Ok(())
    }

    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
        let name = td.name();
        let mut conn = self.conn().await?;
        let row = conn
            .get()?
            .query_opt(
                "SELECT trust_domain, jwks, jwt_expiries FROM bundles WHERE trust_domain = $1",
                &[&name],
            )
            .await
            .ctx(format_args!("bundle of {name}"))?;
        row.as_ref().map(bundle_from_row).transpose()
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .get()?
            .query(
                "SELECT trust_domain, jwks, jwt_expiries FROM bundles ORDER BY trust_domain",
                &[],
            )
            .await
            .ctx("bundles")?;
        rows.iter().map(bundle_from_row).collect()
    }

    async fn delete_bundle(&self, td: &TrustDomain) -> Result<()> {
        let name = td.name();
        let what = format!("bundle of {name}");
        let mut conn = self.conn().await?;
        let n = conn
            .get()?
            .execute("DELETE FROM bundles WHERE trust_domain = $1", &[&name])
            .await
            .ctx(&what)?;
        require_found(n != 0, &what)
    }

    // ---- CA journal ----

    async fn put_ca_record(&self, record: &CaRecord) -> Result<()> {
        let id = &record.id;
        let data = serde_json::to_string(record).map_err(|e| {
            DatastoreError::Invalid(format!("CA record {id} cannot be encoded: {e}"))
        })?;
        let mut conn = self.conn().await?;
        conn.get()?
            .execute(
                "INSERT INTO ca_records (id, created_at, data) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET
                    created_at = excluded.created_at, data = excluded.data",
                &[id, &record.created_at, &data],
            )
            .await
            .ctx(format_args!("CA record {id}"))?;
        Ok(())
    }

    async fn list_ca_records(&self) -> Result<Vec<CaRecord>> {
        let mut conn = self.conn().await?;
        let rows = conn
            .get()?
            .query(
                "SELECT id, data FROM ca_records ORDER BY created_at, id",
                &[],
            )
            .await
            .ctx("CA records")?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0).ctx("CA records")?;
                let data: String = r.try_get(1).ctx(format_args!("CA record {id}"))?;
                serde_json::from_str(&data)
                    .map_err(|e| decode_error(format_args!("CA record {id}"), e))
            })
            .collect()
    }

    async fn delete_ca_record(&self, id: &str) -> Result<()> {
        let what = format!("CA record {id}");
        let mut conn = self.conn().await?;
        let n = conn
            .get()?
            .execute("DELETE FROM ca_records WHERE id = $1", &[&id])
            .await
            .ctx(&what)?;
        require_found(n != 0, &what)
    }
}

/// These tests run against a real PostgreSQL: one cluster in
/// `<temporary folder>/tessera-postgres-<uid>`,
/// started by `scripts/postgres.sh start` (which is cheap and waits on a lock when the
/// cluster already runs, so every test process may call it) and left running; each
/// test makes its own database in it and drops it when it passes. If PostgreSQL cannot
/// start, the tests fail with the script's message.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::conformance;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    struct Cluster {
        socket_dir: String,
        port: u16,
        url: String,
    }

    fn cluster() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            // Under the temporary folder, not target/: when the tests run as root the
            // cluster runs as the postgres user, which must reach its folder, and a
            // checkout under a private home folder is out of its reach.
            let uid = std::os::unix::fs::MetadataExt::uid(
                &std::fs::metadata("/proc/self").expect("/proc/self"),
            );
            let dir: PathBuf = std::env::temp_dir().join(format!("tessera-postgres-{uid}"));
            let out = Command::new("bash")
                .arg(root.join("scripts/postgres.sh"))
                .arg("start")
                .arg(&dir)
                .output()
                .expect("run scripts/postgres.sh");
            assert!(
                out.status.success(),
                "scripts/postgres.sh start {} failed:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let var = |name: &str| -> String {
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                    .map(|v| v.trim_matches('\'').to_owned())
                    .unwrap_or_else(|| panic!("{name} missing from the script's output:\n{stdout}"))
            };
            Cluster {
                socket_dir: var("PGHOST"),
                port: var("PGPORT").parse().expect("PGPORT is a port"),
                url: var("TESSERA_PG_URL"),
            }
        })
    }

    async fn admin() -> Client {
        let (client, connection) = tokio_postgres::connect(&cluster().url, NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(connection);
        client
    }

    /// A fresh, empty database in the test cluster.
    struct TestDb {
        name: String,
    }

    impl TestDb {
        async fn new() -> Self {
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            admin()
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
            Self { name }
        }

        fn tcp(&self) -> String {
            format!(
                "host=127.0.0.1 port={} user=tessera dbname={}",
                cluster().port,
                self.name
            )
        }

        fn unix(&self) -> String {
            format!(
                "host={} port={} user=tessera dbname={}",
                cluster().socket_dir,
                cluster().port,
                self.name
            )
        }

        async fn open(&self) -> PostgresDatastore {
            PostgresDatastore::connect(&self.tcp())
                .await
                .expect("connect")
        }

        async fn raw(&self) -> Client {
            let (client, connection) = tokio_postgres::connect(&self.tcp(), NoTls)
                .await
                .expect("raw connect");
            tokio::spawn(connection);
            client
        }

        /// Drops the database (left behind when a test fails, to look at).
        async fn finish(self) {
            admin()
                .await
                .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                .await
                .expect("drop the test database");
        }
    }

    /// One test per behaviour of the conformance suite, each on a fresh database.
    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = TestDb::new().await;
                    let ds = db.open().await;
                    conformance::$name(&ds).await;
                    drop(ds);
                    db.finish().await;
                }
            )*
        };
    }

    conformance::each_behaviour!(conformance_tests);

    /// The whole suite twice on one database: the behaviours must not depend on
    /// starting from an empty store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_run_all_on_one_database() {
        let db = TestDb::new().await;
        let ds = db.open().await;
        conformance::run_all(&ds).await;
        conformance::run_all(&ds).await;
        assert_eq!(ds.name(), "postgres");
        drop(ds);
        db.finish().await;
    }

    fn sample_entry(name: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: String::new(),
            spiffe_id: format!("spiffe://example.org/{name}").parse().expect("id"),
            parent_id: "spiffe://example.org/spire/agent/a".parse().expect("id"),
            selectors: vec!["unix:uid:1000".parse().expect("selector")],
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

    async fn schema_versions(client: &Client) -> Vec<i32> {
        client
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("schema_migrations")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[tokio::test]
    async fn unix_socket_connection() {
        let db = TestDb::new().await;
        let ds = PostgresDatastore::connect(&db.unix())
            .await
            .expect("connect over the Unix socket");
        ds.ping().await.expect("ping");
        let e = ds.create_entry(sample_entry("web")).await.expect("create");
        assert_eq!(ds.get_entry(&e.id).await.expect("get"), Some(e));
        assert!(
            ds.target().contains(&cluster().socket_dir),
            "{}",
            ds.target()
        );
        drop(ds);
        db.finish().await;
    }

    #[tokio::test]
    async fn url_connection_string() {
        let db = TestDb::new().await;
        let url = format!(
            "postgres://tessera:not-a-secret@127.0.0.1:{}/{}?sslmode=prefer",
            cluster().port,
            db.name
        );
        let ds = PostgresDatastore::connect(&url)
            .await
            .expect("connect by URL");
        ds.ping().await.expect("ping");
        assert!(!format!("{ds:?}").contains("not-a-secret"), "{ds:?}");
        drop(ds);
        db.finish().await;
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let err = PostgresDatastore::connect(&format!(
            "host=127.0.0.1 port={port} user=tessera password=hunter2 dbname=tessera"
        ))
        .await
        .expect_err("nothing listens there");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[tokio::test]
    async fn tls_is_refused_clearly() {
        for s in [
            "host=127.0.0.1 user=tessera password=hunter2 sslmode=require",
            "host=127.0.0.1 user=tessera sslmode = 'verify-full'",
            "host=127.0.0.1 sslmode=disable sslmode=verify-ca",
            "postgres://tessera:hunter2@127.0.0.1/tessera?sslmode=require",
            "postgresql://127.0.0.1/tessera?connect_timeout=5&sslmode=verify-full",
        ] {
            let err = PostgresDatastore::connect(s).await.expect_err(s);
            assert!(matches!(err, DatastoreError::Invalid(_)), "{s}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("TLS to PostgreSQL is not supported yet"),
                "{s}: {msg}"
            );
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        let err = PostgresDatastore::connect("host=127.0.0.1 password=hunter2 bogus_option=1")
            .await
            .expect_err("unknown option");
        assert!(matches!(err, DatastoreError::Invalid(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PostgresDatastore::connect("user=tessera dbname=tessera")
            .await
            .expect_err("no host");
        assert!(err.to_string().contains("names no host"), "{err}");
    }

    fn all_versions() -> Vec<i32> {
        (1..=i32::try_from(MIGRATIONS.len()).expect("small")).collect()
    }

    /// A node renewed under schema version 1 (current and previous serial) keeps both
    /// accepted after the upgrade: the previous as proven, the current as pending.
    #[tokio::test]
    async fn version_1_nodes_keep_both_serials_accepted() {
        let db = TestDb::new().await;
        drop(
            PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1])
                .await
                .expect("open v1"),
        );
        let raw = db.raw().await;
        raw.batch_execute(
            "INSERT INTO attested_nodes VALUES
                ('spiffe://example.org/spire/agent/join_token/a', 'join_token', 'bb', 200,
                 'aa', 100, FALSE, FALSE, 1, 2),
                ('spiffe://example.org/spire/agent/join_token/b', 'join_token', 'cc', 300,
                 '', 0, FALSE, FALSE, 1, 2),
                ('spiffe://example.org/spire/agent/join_token/c', 'join_token', '', 0,
                 '', 0, TRUE, FALSE, 1, 2)",
        )
        .await
        .expect("v1 rows");
        let ds = db.open().await;
        let get = |name: &'static str| {
            let ds = ds.clone();
            async move {
                let id: SpiffeId = format!("spiffe://example.org/spire/agent/join_token/{name}")
                    .parse()
                    .expect("id");
                ds.get_attested_node(&id).await.expect("get").expect("node")
            }
        };
        let a = get("a").await;
        assert_eq!((a.cert_serial.as_str(), a.cert_not_after), ("aa", 100));
        assert_eq!(
            (a.new_cert_serial.as_str(), a.new_cert_not_after),
            ("bb", 200)
        );
        let b = get("b").await;
        assert_eq!(
            (b.cert_serial.as_str(), b.new_cert_serial.as_str()),
            ("cc", "")
        );
        let c = get("c").await;
        assert!(c.banned && c.cert_serial.is_empty() && c.new_cert_serial.is_empty());
        drop((ds, raw));
        db.finish().await;
    }

    #[tokio::test]
    async fn opening_twice_is_idempotent() {
        let db = TestDb::new().await;
        let ds = db.open().await;
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        let latest = ds.latest_entry_event().await.expect("latest");
        drop(ds);
        let ds = db.open().await;
        assert_eq!(ds.get_entry(&entry.id).await.expect("get"), Some(entry));
        assert_eq!(ds.latest_entry_event().await.expect("latest"), latest);
        let raw = db.raw().await;
        assert_eq!(schema_versions(&raw).await, all_versions());
        drop((ds, raw));
        db.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn servers_starting_together_migrate_once() {
        let db = TestDb::new().await;
        let url = db.tcp();
        let opens = (0..6).map(|_| PostgresDatastore::connect(&url));
        let stores: Vec<_> = futures::future::join_all(opens)
            .await
            .into_iter()
            .map(|r| r.expect("concurrent open"))
            .collect();
        assert_eq!(schema_versions(&db.raw().await).await, all_versions());
        drop(stores);
        db.finish().await;
    }

    #[tokio::test]
    async fn later_migration_steps_apply_once() {
        let db = TestDb::new().await;
        let ds = PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1])
            .await
            .expect("open v1");
        let entry = ds.create_entry(sample_entry("web")).await.expect("create");
        drop(ds);
        let v2 = "CREATE TABLE v2_marker (x INTEGER NOT NULL); INSERT INTO v2_marker VALUES (2);";
        let ds = PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1, v2])
            .await
            .expect("open v2");
        assert_eq!(ds.get_entry(&entry.id).await.expect("get"), Some(entry));
        drop(ds);
        PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1, v2])
            .await
            .expect("open again");
        let raw = db.raw().await;
        assert_eq!(schema_versions(&raw).await, vec![1, 2]);
        let n: i64 = raw
            .query_one("SELECT count(*) FROM v2_marker", &[])
            .await
            .expect("marker")
            .get(0);
        assert_eq!(n, 1, "the step ran once");

        let broken = "CREATE TABLE half_done (x INTEGER); SELECT * FROM no_such_table;";
        let err = PostgresDatastore::connect_with_migrations(&db.tcp(), &[SCHEMA_V1, v2, broken])
            .await
            .expect_err("broken step must fail");
        assert!(
            err.to_string()
                .contains("migrating the database schema to version 3"),
            "{err}"
        );
        assert_eq!(schema_versions(&raw).await, vec![1, 2]);
        drop(raw);
        db.finish().await;
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let db = TestDb::new().await;
        drop(db.open().await);
        let too_new = i32::try_from(MIGRATIONS.len() + 1).expect("small");
        let raw = db.raw().await;
        raw.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&too_new],
        )
        .await
        .expect("pretend a newer server ran");
        let err = PostgresDatastore::connect(&db.tcp())
            .await
            .expect_err("newer schema must be refused");
        let want = format!(
            "database schema version {too_new} is newer than this server supports ({}); \
             upgrade the server",
            MIGRATIONS.len()
        );
        assert!(matches!(err, DatastoreError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains(&want), "{err}");
        assert!(err.to_string().contains(&db.name), "{err}");
        drop(raw);
        db.finish().await;
    }

    /// Two servers writing entries at once: event IDs come out in commit order with
    /// no gaps, and each entry's revision is its event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_servers_share_one_event_sequence() {
        let db = TestDb::new().await;
        let a = db.open().await;
        let b = db.open().await;
        let write = |ds: PostgresDatastore, tag: &'static str| async move {
            let mut out = Vec::new();
            for i in 0..40 {
                let e = ds
                    .create_entry(sample_entry(&format!("{tag}/{i}")))
                    .await
                    .expect("create");
                out.push(e);
            }
            out
        };
        let (ea, eb) = tokio::join!(
            tokio::spawn(write(a.clone(), "a")),
            tokio::spawn(write(b.clone(), "b"))
        );
        let created: Vec<_> = ea
            .expect("task")
            .into_iter()
            .chain(eb.expect("task"))
            .collect();
        let events = a.entry_events_since(0).await.expect("events");
        let ids: Vec<u64> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, (1..=80).collect::<Vec<_>>(), "no gaps, in order");
        for e in &created {
            assert!(
                events
                    .iter()
                    .any(|ev| ev.entry_id == e.id && ev.event_id == e.revision_number)
            );
        }
        assert_eq!(b.latest_entry_event().await.expect("latest"), 80);
        drop((a, b));
        db.finish().await;
    }

    #[test]
    fn connection_string_parsing() {
        assert_eq!(
            key_values("host=/tmp port = 5 password='a b\\'c' x=\\ y"),
            vec![
                ("host".into(), "/tmp".into()),
                ("port".into(), "5".into()),
                ("password".into(), "a b'c".into()),
                ("x".into(), " y".into()),
            ]
        );
        assert_eq!(requested_sslmode("host=a"), None);
        assert_eq!(
            requested_sslmode("postgres://h/db?sslmode=disable").as_deref(),
            Some("disable")
        );
        let config =
            parse_config("host=db.internal port=6543 user=u password=p dbname=d").expect("parse");
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        let target = describe_target(&config);
        assert_eq!(target, "postgres database d as user u at db.internal:6543");
    }
}
