//! Registration entries in PostgreSQL: the entry as JSON plus the columns queries
//! need, its selectors in `entry_selectors`. Every writer locks the event counter
//! first (see `events`), so checking an entry's identity and then inserting it cannot
//! race another writer on any server; a batch is checked and inserted set-wise
//! (`unnest`), in a few round trips whatever its size.

use std::collections::{HashMap, HashSet};

use tessera_core::RegistrationEntry;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::PostgresDatastore;
use super::error::Ctx;
use super::events::{lock_events, record_events};
use crate::datastore::codec::{
    EntryQuery, Identity, decode_entry, encode_entry, entry_id_taken, entry_not_found,
    fill_new_entry, finish_page, now_unix, to_sql_id,
};
use crate::datastore::{DatastoreError, EntryFilter, Failure, Page, Result};

pub(super) async fn create(
    ds: &PostgresDatastore,
    entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    let mut results = create_batch(ds, vec![entry]).await?;
    results.pop().unwrap_or_else(|| {
        Err(DatastoreError::Backend(Failure::new(
            "entry batch of one returned no result",
        )))
    })
}

pub(super) async fn create_batch(
    ds: &PostgresDatastore,
    entries: Vec<RegistrationEntry>,
) -> Result<Vec<Result<RegistrationEntry>>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_unix();
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    let results = insert_entries(&tx, entries, now).await?;
    tx.commit().await.ctx("entry batch")?;
    Ok(results)
}

pub(super) async fn get(ds: &PostgresDatastore, id: &str) -> Result<Option<RegistrationEntry>> {
    let mut conn = ds.conn().await?;
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

pub(super) async fn list(
    ds: &PostgresDatastore,
    filter: &EntryFilter,
    page: &Page,
) -> Result<(Vec<RegistrationEntry>, String)> {
    let EntryQuery {
        spiffe_id,
        parent_id,
        selectors,
    } = EntryQuery::of(filter);
    let selector_count = selectors.len() as i64;
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
    if page.size > 0 {
        args.push(&limit);
        sql.push_str(&format!(" LIMIT ${}", args.len()));
    }
    let mut conn = ds.conn().await?;
    let rows = conn.get()?.query(&sql, &args).await.ctx("entries")?;
    Ok(finish_page(entries_from_rows(&rows)?, page.size))
}

pub(super) async fn all(ds: &PostgresDatastore) -> Result<Vec<RegistrationEntry>> {
    let mut conn = ds.conn().await?;
    let rows = conn
        .get()?
        .query("SELECT id, data FROM entries", &[])
        .await
        .ctx("entries")?;
    let mut entries = entries_from_rows(&rows)?;
    entries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(entries)
}

pub(super) async fn update(
    ds: &PostgresDatastore,
    entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    let entry = update_tx(&tx, entry).await?;
    tx.commit().await.ctx(format_args!("entry {}", entry.id))?;
    Ok(entry)
}

pub(super) async fn delete(ds: &PostgresDatastore, id: &str) -> Result<RegistrationEntry> {
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    let old = delete_tx(&tx, id).await?;
    tx.commit().await.ctx(format_args!("entry {id}"))?;
    Ok(old)
}

fn entries_from_rows(rows: &[Row]) -> Result<Vec<RegistrationEntry>> {
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0).ctx("entries")?;
            let data: String = r.try_get(1).ctx("entries")?;
            decode_entry(&id, &data)
        })
        .collect()
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
            fill_new_entry(&mut e, now);
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
            results.push(Err(entry_id_taken(&entry.id)));
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

async fn update_tx(
    tx: &Transaction<'_>,
    mut entry: RegistrationEntry,
) -> Result<RegistrationEntry> {
    let last = lock_events(tx).await?;
    let old = load_entry_for_update(tx, &entry.id)
        .await?
        .ok_or_else(|| entry_not_found(&entry.id))?;
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

async fn delete_tx(tx: &Transaction<'_>, id: &str) -> Result<RegistrationEntry> {
    let last = lock_events(tx).await?;
    let old = load_entry_for_update(tx, id)
        .await?
        .ok_or_else(|| entry_not_found(id))?;
    tx.execute("DELETE FROM entry_selectors WHERE entry_id = $1", &[&id])
        .await
        .ctx(format_args!("selectors of entry {id}"))?;
    tx.execute("DELETE FROM entries WHERE id = $1", &[&id])
        .await
        .ctx(format_args!("entry {id}"))?;
    record_events(tx, last + 1, &[id.to_owned()], true).await?;
    Ok(old)
}
