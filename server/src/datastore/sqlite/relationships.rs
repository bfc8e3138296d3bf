//! Federation relationships in SQLite: each relationship as JSON under its trust
//! domain. Creating or updating one may store the bundle to start from in the same
//! transaction.

use rusqlite::{OptionalExtension, params};
use tessera_core::{Bundle, TrustDomain};

use super::SqliteDatastore;
use super::bundles::BundleRow;
use super::connection::{Durability, begin};
use super::error::Ctx;
use crate::datastore::codec::{decode_relationship, encode_relationship, require_found};
use crate::datastore::{Relationship, Result};

/// Creates (`update` false) or replaces (`update` true) a relationship, with its
/// bundle, in one transaction.
pub(super) async fn put(
    ds: &SqliteDatastore,
    rel: &Relationship,
    bundle: Option<&Bundle>,
    update: bool,
) -> Result<()> {
    let td = rel.trust_domain.name().to_owned();
    let data = encode_relationship(rel)?;
    let bundle = bundle.map(BundleRow::of).transpose()?;
    ds.write(Durability::Full, move |conn| {
        let what = format!("federation relationship {td}");
        let tx = begin(conn)?;
        if update {
            let n = tx
                .prepare_cached(
                    "UPDATE federation_relationships SET data = ?2 WHERE trust_domain = ?1",
                )
                .and_then(|mut s| s.execute(params![td, data]))
                .ctx(&what)?;
            require_found(n != 0, &what)?;
        } else {
            tx.prepare_cached(
                "INSERT INTO federation_relationships (trust_domain, data) VALUES (?1, ?2)",
            )
            .and_then(|mut s| s.execute(params![td, data]))
            .ctx(&what)?;
        }
        if let Some(b) = &bundle {
            b.put(&tx)?;
        }
        tx.commit().ctx(&what)
    })
    .await
}

pub(super) async fn get(ds: &SqliteDatastore, td: &TrustDomain) -> Result<Option<Relationship>> {
    let td = td.name().to_owned();
    ds.read(move |conn| {
        let data: Option<String> = conn
            .prepare_cached("SELECT data FROM federation_relationships WHERE trust_domain = ?1")
            .and_then(|mut s| s.query_row([&td], |r| r.get(0)).optional())
            .ctx(format_args!("federation relationship {td}"))?;
        data.map(|d| decode_relationship(&td, &d)).transpose()
    })
    .await
}

pub(super) async fn list(ds: &SqliteDatastore) -> Result<Vec<Relationship>> {
    ds.read(|conn| {
        let what = "federation relationships";
        let mut stmt = conn
            .prepare_cached(
                "SELECT trust_domain, data FROM federation_relationships ORDER BY trust_domain",
            )
            .ctx(what)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .ctx(what)?;
        let mut out = Vec::new();
        for row in rows {
            let (td, data) = row.ctx(what)?;
            out.push(decode_relationship(&td, &data)?);
        }
        Ok(out)
    })
    .await
}

pub(super) async fn delete(ds: &SqliteDatastore, td: &TrustDomain) -> Result<()> {
    let td = td.name().to_owned();
    ds.write(Durability::Full, move |conn| {
        let what = format!("federation relationship {td}");
        let n = conn
            .prepare_cached("DELETE FROM federation_relationships WHERE trust_domain = ?1")
            .and_then(|mut s| s.execute([&td]))
            .ctx(&what)?;
        require_found(n != 0, &what)
    })
    .await
}
