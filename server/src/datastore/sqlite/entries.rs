//! Registration entries in SQLite: the entry as JSON plus the columns queries need,
//! its selectors in `entry_selectors`, and a change event written in the same
//! transaction as every change (see `events`).

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tessera_core::RegistrationEntry;

use super::SqliteDatastore;
use super::connection::{Durability, begin};
use super::error::Ctx;
use super::events::record_event;
use crate::datastore::codec::{
    EntryQuery, Identity, decode_entry, encode_entry, entry_id_taken, entry_not_found,
    fill_new_entry, finish_page, now_unix, to_sql_id,
};
use crate::datastore::{DatastoreError, EntryFilter, Page, Result};

pub(super) async fn create(
    ds: &SqliteDatastore,
    entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    let now = now_unix();
    ds.write(Durability::Normal, move |conn| {
        let tx = begin(conn)?;
        let entry = insert_entry(&tx, entry, now)?;
        tx.commit().ctx(format_args!("entry {}", entry.id))?;
        Ok(entry)
    })
    .await
}

/// One transaction with a savepoint per entry: an entry refused as a duplicate (or
/// otherwise invalid) rolls back to its savepoint and gets its own error, while a
/// database failure aborts the whole batch.
pub(super) async fn create_batch(
    ds: &SqliteDatastore,
    entries: Vec<RegistrationEntry>,
) -> Result<Vec<Result<RegistrationEntry>>> {
    let now = now_unix();
    ds.write(Durability::Normal, move |conn| {
        let mut tx = begin(conn)?;
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let sp = tx.savepoint().ctx("entry batch")?;
            match insert_entry(&sp, entry, now) {
                Ok(stored) => {
                    sp.commit().ctx("entry batch")?;
                    results.push(Ok(stored));
                }
                // Dropping the savepoint rolls this entry back; the batch goes on.
                Err(e) if is_per_entry(&e) => results.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        tx.commit().ctx("entry batch")?;
        Ok(results)
    })
    .await
}

pub(super) async fn get(ds: &SqliteDatastore, id: &str) -> Result<Option<RegistrationEntry>> {
    let id = id.to_owned();
    ds.read(move |conn| load_entry(conn, &id)).await
}

pub(super) async fn list(
    ds: &SqliteDatastore,
    filter: &EntryFilter,
    page: &Page,
) -> Result<(Vec<RegistrationEntry>, String)> {
    let token = page.token.clone();
    let query = EntryQuery::of(filter);
    // One row more than the page tells whether another page follows.
    let limit = if page.size == 0 {
        -1
    } else {
        i64::from(page.size) + 1
    };
    let entries = ds
        .read(move |conn| {
            let selectors = rarest_first(conn, query.selectors)?;
            let mut sql = String::from("SELECT e.id, e.data FROM entries e WHERE 1 = 1");
            let mut args = Vec::new();
            if !token.is_empty() {
                sql.push_str(" AND e.id > ?");
                args.push(SqlValue::Text(token));
            }
            if let Some(id) = query.spiffe_id {
                sql.push_str(" AND e.spiffe_id = ?");
                args.push(SqlValue::Text(id));
            }
            if let Some(id) = query.parent_id {
                sql.push_str(" AND e.parent_id = ?");
                args.push(SqlValue::Text(id));
            }
            if let Some((first, rest)) = selectors.split_first() {
                // Walk the rarest selector's index range and probe the others by
                // primary key: the cost follows the rarest selector, not the
                // commonest (an INTERSECT would build the set of every one).
                sql.push_str(
                    " AND e.id IN (SELECT s0.entry_id FROM entry_selectors s0 \
                     WHERE s0.selector = ?",
                );
                args.push(SqlValue::Text(first.clone()));
                for s in rest {
                    sql.push_str(
                        " AND EXISTS (SELECT 1 FROM entry_selectors s \
                         WHERE s.entry_id = s0.entry_id AND s.selector = ?)",
                    );
                    args.push(SqlValue::Text(s.clone()));
                }
                sql.push(')');
            }
            sql.push_str(" ORDER BY e.id LIMIT ?");
            args.push(SqlValue::Integer(limit));
            query_entries(conn, &sql, args)
        })
        .await?;
    Ok(finish_page(entries, page.size))
}

pub(super) async fn all(ds: &SqliteDatastore) -> Result<Vec<RegistrationEntry>> {
    ds.read(|conn| {
        // Storage (rowid) order reads the table front to back; ORDER BY id would
        // visit it in index order, one random page after another. Sorting here
        // costs far less.
        let mut entries = query_entries(conn, "SELECT id, data FROM entries", Vec::new())?;
        entries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    })
    .await
}

pub(super) async fn update(
    ds: &SqliteDatastore,
    entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    ds.write(Durability::Normal, move |conn| {
        let tx = begin(conn)?;
        let entry = update_tx(&tx, entry)?;
        tx.commit().ctx(format_args!("entry {}", entry.id))?;
        Ok(entry)
    })
    .await
}

pub(super) async fn delete(ds: &SqliteDatastore, id: &str) -> Result<RegistrationEntry> {
    let id = id.to_owned();
    ds.write(Durability::Normal, move |conn| {
        let tx = begin(conn)?;
        let old = delete_tx(&tx, &id)?;
        tx.commit().ctx(format_args!("entry {id}"))?;
        Ok(old)
    })
    .await
}

fn load_entry(conn: &Connection, id: &str) -> Result<Option<RegistrationEntry>> {
    let data: Option<String> = conn
        .prepare_cached("SELECT data FROM entries WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .ctx(format_args!("entry {id}"))?;
    data.map(|d| decode_entry(id, &d)).transpose()
}

/// The entry (other than `except`) that holds this identity.
fn identity_owner(conn: &Connection, identity: &Identity, except: &str) -> Result<Option<String>> {
    conn.prepare_cached("SELECT id FROM entries WHERE identity = ?1 AND id <> ?2")
        .and_then(|mut s| {
            s.query_row(params![identity.hash, except], |r| r.get(0))
                .optional()
        })
        .ctx("entry identity")
}

fn insert_selectors(conn: &Connection, entry_id: &str, selectors: &[String]) -> Result<()> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO entry_selectors (entry_id, selector) VALUES (?1, ?2)")
        .ctx(format_args!("selectors of entry {entry_id}"))?;
    for s in selectors {
        stmt.execute(params![entry_id, s])
            .ctx(format_args!("selectors of entry {entry_id}"))?;
    }
    Ok(())
}

fn insert_entry(
    conn: &Connection,
    mut entry: RegistrationEntry,
    now: i64,
) -> Result<RegistrationEntry> {
    fill_new_entry(&mut entry, now);
    // Checked before writing anything, to name the conflicting entry in the error;
    // the unique indexes stay as the last line of defence.
    let id_taken = conn
        .prepare_cached("SELECT 1 FROM entries WHERE id = ?1")
        .and_then(|mut s| s.exists([&entry.id]))
        .ctx(format_args!("entry {}", entry.id))?;
    if id_taken {
        return Err(entry_id_taken(&entry.id));
    }
    let identity = Identity::of(&entry);
    if let Some(existing) = identity_owner(conn, &identity, &entry.id)? {
        return Err(identity.duplicate_of(&existing));
    }
    entry.revision_number = record_event(conn, &entry.id, false)?;
    let data = encode_entry(&entry)?;
    conn.prepare_cached(
        "INSERT INTO entries (id, spiffe_id, parent_id, identity, revision, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            entry.id,
            identity.spiffe_id,
            identity.parent_id,
            identity.hash,
            to_sql_id(entry.revision_number),
            data
        ])
    })
    .ctx(format_args!("entry with id {}", entry.id))?;
    insert_selectors(conn, &entry.id, &identity.selectors)?;
    Ok(entry)
}

fn update_tx(conn: &Connection, mut entry: RegistrationEntry) -> Result<RegistrationEntry> {
    let old = load_entry(conn, &entry.id)?.ok_or_else(|| entry_not_found(&entry.id))?;
    entry.created_at = old.created_at;
    let identity = Identity::of(&entry);
    if let Some(existing) = identity_owner(conn, &identity, &entry.id)? {
        return Err(identity.duplicate_of(&existing));
    }
    entry.revision_number = record_event(conn, &entry.id, false)?;
    let data = encode_entry(&entry)?;
    conn.prepare_cached(
        "UPDATE entries SET spiffe_id = ?2, parent_id = ?3, identity = ?4, revision = ?5,
         data = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            entry.id,
            identity.spiffe_id,
            identity.parent_id,
            identity.hash,
            to_sql_id(entry.revision_number),
            data
        ])
    })
    .ctx(format_args!("entry {}", entry.id))?;
    conn.prepare_cached("DELETE FROM entry_selectors WHERE entry_id = ?1")
        .and_then(|mut s| s.execute([&entry.id]))
        .ctx(format_args!("selectors of entry {}", entry.id))?;
    insert_selectors(conn, &entry.id, &identity.selectors)?;
    Ok(entry)
}

fn delete_tx(conn: &Connection, id: &str) -> Result<RegistrationEntry> {
    let old = load_entry(conn, id)?.ok_or_else(|| entry_not_found(id))?;
    // The foreign key cascades too; deleting explicitly does not depend on it being on.
    conn.prepare_cached("DELETE FROM entry_selectors WHERE entry_id = ?1")
        .and_then(|mut s| s.execute([id]))
        .ctx(format_args!("selectors of entry {id}"))?;
    conn.prepare_cached("DELETE FROM entries WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .ctx(format_args!("entry {id}"))?;
    record_event(conn, id, true)?;
    Ok(old)
}

/// Errors that belong to one entry of a batch; anything else aborts the batch.
fn is_per_entry(e: &DatastoreError) -> bool {
    matches!(
        e,
        DatastoreError::AlreadyExists(_) | DatastoreError::Invalid(_) | DatastoreError::NotFound(_)
    )
}

/// Orders selectors from the rarest to the commonest, counting each up to a cap so that
/// a selector every entry holds costs no more than a rare one.
fn rarest_first(conn: &Connection, selectors: Vec<String>) -> Result<Vec<String>> {
    if selectors.len() < 2 {
        return Ok(selectors);
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT count(*) FROM \
             (SELECT 1 FROM entry_selectors WHERE selector = ?1 LIMIT 1000)",
        )
        .ctx("entry selectors")?;
    let mut counted = Vec::with_capacity(selectors.len());
    for s in selectors {
        let n: i64 = stmt.query_row([&s], |r| r.get(0)).ctx("entry selectors")?;
        counted.push((n, s));
    }
    counted.sort();
    Ok(counted.into_iter().map(|(_, s)| s).collect())
}

fn query_entries(
    conn: &Connection,
    sql: &str,
    args: Vec<SqlValue>,
) -> Result<Vec<RegistrationEntry>> {
    let mut stmt = conn.prepare_cached(sql).ctx("entries")?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .ctx("entries")?;
    let mut out = Vec::new();
    for row in rows {
        let (id, data) = row.ctx("entries")?;
        out.push(decode_entry(&id, &data)?);
    }
    Ok(out)
}
