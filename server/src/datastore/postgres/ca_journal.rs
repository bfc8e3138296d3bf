//! The CA journal in PostgreSQL: each signing authority's record as JSON, listed in
//! the order they were made.

use tokio_postgres::GenericClient;

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::codec::{decode_ca_record, encode_ca_record, require_found};
use crate::datastore::{CaRecord, Result};

pub(super) async fn put(ds: &PostgresDatastore, record: &CaRecord) -> Result<()> {
    let id = &record.id;
    let data = encode_ca_record(record)?;
    let mut conn = ds.conn().await?;
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

pub(super) async fn list(ds: &PostgresDatastore) -> Result<Vec<CaRecord>> {
    let mut conn = ds.conn().await?;
    list_in(conn.get()?).await
}

/// Every record, through `client` (a connection, or a transaction with other reads).
pub(super) async fn list_in(client: &impl GenericClient) -> Result<Vec<CaRecord>> {
    let rows = client
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
            decode_ca_record(&id, &data)
        })
        .collect()
}

pub(super) async fn delete(ds: &PostgresDatastore, id: &str) -> Result<()> {
    let what = format!("CA record {id}");
    let mut conn = ds.conn().await?;
    let n = conn
        .get()?
        .execute("DELETE FROM ca_records WHERE id = $1", &[&id])
        .await
        .ctx(&what)?;
    require_found(n != 0, &what)
}
