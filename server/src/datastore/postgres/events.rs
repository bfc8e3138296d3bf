//! Entry change events in PostgreSQL. Event IDs come from the single row of
//! `entry_event_counter`, which every entry writer locks first: IDs are given in
//! commit order and without gaps, whichever server writes, and pruning events never
//! lowers the counter.

use tokio_postgres::Transaction;

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::codec::{from_sql_id, to_sql_id};
use crate::datastore::{EntryEvent, EventReader, Result};

/// Locks the event counter (see "Transactions and several servers" in the backend's
/// documentation) and returns the highest event ID given so far.
pub(super) async fn lock_events(tx: &Transaction<'_>) -> Result<u64> {
    let last: i64 = tx
        .query_one("SELECT last_id FROM entry_event_counter FOR UPDATE", &[])
        .await
        .and_then(|r| r.try_get(0))
        .ctx("entry event counter")?;
    from_sql_id(last)
}

/// Records events for `entry_ids` with the IDs `first..`, in order, and moves the
/// counter past them.
pub(super) async fn record_events(
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

pub(super) async fn since(ds: &PostgresDatastore, after: u64) -> Result<Vec<EntryEvent>> {
    let mut conn = ds.conn().await?;
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

pub(super) async fn latest(ds: &PostgresDatastore) -> Result<u64> {
    let mut conn = ds.conn().await?;
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

pub(super) async fn prune(ds: &PostgresDatastore, up_to: u64) -> Result<u64> {
    let mut conn = ds.conn().await?;
    conn.get()?
        .execute(
            "DELETE FROM entry_events WHERE id <= $1",
            &[&to_sql_id(up_to)],
        )
        .await
        .ctx("entry events")
}

pub(super) async fn record_reader(
    ds: &PostgresDatastore,
    reader: &str,
    read_up_to: u64,
    now: i64,
) -> Result<()> {
    let mut conn = ds.conn().await?;
    conn.get()?
        .execute(
            "INSERT INTO entry_event_readers (reader, read_up_to, seen_at) VALUES ($1, $2, $3)
             ON CONFLICT (reader) DO UPDATE SET read_up_to = excluded.read_up_to,
                                                seen_at = excluded.seen_at",
            &[&reader, &to_sql_id(read_up_to), &now],
        )
        .await
        .ctx("entry event readers")?;
    Ok(())
}

pub(super) async fn readers(ds: &PostgresDatastore) -> Result<Vec<EventReader>> {
    let mut conn = ds.conn().await?;
    let rows = conn
        .get()?
        .query(
            "SELECT reader, read_up_to, seen_at FROM entry_event_readers ORDER BY reader",
            &[],
        )
        .await
        .ctx("entry event readers")?;
    rows.iter()
        .map(|r| {
            Ok(EventReader {
                reader: r.try_get(0).ctx("entry event readers")?,
                read_up_to: from_sql_id(r.try_get(1).ctx("entry event readers")?)?,
                seen_at: r.try_get(2).ctx("entry event readers")?,
            })
        })
        .collect()
}

pub(super) async fn forget_readers(ds: &PostgresDatastore, seen_before: i64) -> Result<u64> {
    let mut conn = ds.conn().await?;
    conn.get()?
        .execute(
            "DELETE FROM entry_event_readers WHERE seen_at < $1",
            &[&seen_before],
        )
        .await
        .ctx("entry event readers")
}

#[cfg(test)]
mod tests {
    use crate::datastore::Datastore;
    use crate::datastore::postgres::PostgresDatastore;
    use crate::datastore::postgres::tests::{TestDb, sample_entry};

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
}
