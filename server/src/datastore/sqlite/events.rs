//! Entry change events in SQLite: one row per create, update or delete, written in
//! the entry's own transaction. `AUTOINCREMENT` keeps event IDs strictly growing
//! even after pruning (a plain rowid would reuse the highest ID once it is deleted);
//! an entry's `revision_number` is the ID of its latest event.

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteDatastore;
use super::connection::Durability;
use super::error::Ctx;
use crate::datastore::codec::{from_sql_id, to_sql_id};
use crate::datastore::{EntryEvent, EventReader, Result};

/// Records a change of `entry_id` in the caller's transaction; returns its event ID.
pub(super) fn record_event(conn: &Connection, entry_id: &str, deleted: bool) -> Result<u64> {
    conn.prepare_cached("INSERT INTO entry_events (entry_id, deleted) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![entry_id, deleted]))
        .ctx(format_args!("change event of entry {entry_id}"))?;
    from_sql_id(conn.last_insert_rowid())
}

pub(super) async fn since(ds: &SqliteDatastore, after: u64) -> Result<Vec<EntryEvent>> {
    ds.read(move |conn| {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, entry_id, deleted FROM entry_events WHERE id > ?1 ORDER BY id",
            )
            .ctx("entry events")?;
        let rows = stmt
            .query_map([to_sql_id(after)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?))
            })
            .ctx("entry events")?;
        let mut events = Vec::new();
        for row in rows {
            let (event_id, entry_id, deleted) = row.ctx("entry events")?;
            events.push(EntryEvent {
                event_id: from_sql_id(event_id)?,
                entry_id,
                deleted,
            });
        }
        Ok(events)
    })
    .await
}

pub(super) async fn latest(ds: &SqliteDatastore) -> Result<u64> {
    ds.read(|conn| {
        // sqlite_sequence keeps AUTOINCREMENT's high-water mark, which pruning
        // does not lower (MAX(id) would drop to 0 once every event is pruned).
        let seq: Option<i64> = conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'entry_events'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
            .ctx("entry events")?;
        from_sql_id(seq.unwrap_or(0))
    })
    .await
}

pub(super) async fn prune(ds: &SqliteDatastore, up_to: u64) -> Result<u64> {
    ds.write(Durability::Normal, move |conn| {
        let n = conn
            .prepare_cached("DELETE FROM entry_events WHERE id <= ?1")
            .and_then(|mut s| s.execute([to_sql_id(up_to)]))
            .ctx("entry events")?;
        Ok(n as u64)
    })
    .await
}

pub(super) async fn record_reader(
    ds: &SqliteDatastore,
    reader: &str,
    read_up_to: u64,
    now: i64,
) -> Result<()> {
    let reader = reader.to_owned();
    let read_up_to = to_sql_id(read_up_to);
    ds.write(Durability::Normal, move |conn| {
        conn.prepare_cached(
            "INSERT INTO entry_event_readers (reader, read_up_to, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (reader) DO UPDATE SET read_up_to = excluded.read_up_to,
                                                seen_at = excluded.seen_at",
        )
        .and_then(|mut s| s.execute(params![reader, read_up_to, now]))
        .ctx("entry event readers")?;
        Ok(())
    })
    .await
}

pub(super) async fn readers(ds: &SqliteDatastore) -> Result<Vec<EventReader>> {
    ds.read(|conn| {
        let mut stmt = conn
            .prepare_cached(
                "SELECT reader, read_up_to, seen_at FROM entry_event_readers ORDER BY reader",
            )
            .ctx("entry event readers")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
            })
            .ctx("entry event readers")?;
        let mut out = Vec::new();
        for row in rows {
            let (reader, read_up_to, seen_at) = row.ctx("entry event readers")?;
            out.push(EventReader {
                reader,
                read_up_to: from_sql_id(read_up_to)?,
                seen_at,
            });
        }
        Ok(out)
    })
    .await
}

pub(super) async fn forget_readers(ds: &SqliteDatastore, seen_before: i64) -> Result<u64> {
    ds.write(Durability::Normal, move |conn| {
        let n = conn
            .prepare_cached("DELETE FROM entry_event_readers WHERE seen_at < ?1")
            .and_then(|mut s| s.execute([seen_before]))
            .ctx("entry event readers")?;
        Ok(n as u64)
    })
    .await
}
