//! The CA journal in SQLite: each signing authority's record as JSON, listed in the
//! order they were made.

use rusqlite::{Connection, params};

use super::SqliteDatastore;
use super::connection::Durability;
use super::error::Ctx;
use crate::datastore::codec::{decode_ca_record, encode_ca_record, require_found};
use crate::datastore::{CaRecord, Result};

pub(super) async fn put(ds: &SqliteDatastore, record: &CaRecord) -> Result<()> {
    let id = record.id.clone();
    let created_at = record.created_at;
    let data = encode_ca_record(record)?;
    ds.write(Durability::Full, move |conn| {
        conn.prepare_cached(
            "INSERT INTO ca_records (id, created_at, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET
                created_at = excluded.created_at, data = excluded.data",
        )
        .and_then(|mut s| s.execute(params![id, created_at, data]))
        .ctx(format_args!("CA record {id}"))?;
        Ok(())
    })
    .await
}

pub(super) async fn list(ds: &SqliteDatastore) -> Result<Vec<CaRecord>> {
    ds.read(|conn| list_in(conn)).await
}

/// Every record, through `conn` (a connection, or a transaction with other reads).
pub(super) fn list_in(conn: &Connection) -> Result<Vec<CaRecord>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, data FROM ca_records ORDER BY created_at, id")
        .ctx("CA records")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .ctx("CA records")?;
    let mut records = Vec::new();
    for row in rows {
        let (id, data) = row.ctx("CA records")?;
        records.push(decode_ca_record(&id, &data)?);
    }
    Ok(records)
}

pub(super) async fn delete(ds: &SqliteDatastore, id: &str) -> Result<()> {
    let id = id.to_owned();
    ds.write(Durability::Full, move |conn| {
        let what = format!("CA record {id}");
        let n = conn
            .prepare_cached("DELETE FROM ca_records WHERE id = ?1")
            .and_then(|mut s| s.execute([&id]))
            .ctx(&what)?;
        require_found(n != 0, &what)
    })
    .await
}
