//! Federation relationships in PostgreSQL: each relationship as JSON under its trust
//! domain. Creating or updating one may store the bundle to start from in the same
//! transaction.

use tessera_core::{Bundle, TrustDomain};

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::codec::{decode_relationship, encode_relationship, require_found};
use crate::datastore::{Relationship, Result};

/// Creates (`update` false) or replaces (`update` true) a relationship, with its
/// bundle, in one transaction.
pub(super) async fn put(
    ds: &PostgresDatastore,
    rel: &Relationship,
    bundle: Option<&Bundle>,
    update: bool,
) -> Result<()> {
    let td = rel.trust_domain.name();
    let data = encode_relationship(rel)?;
    let what = format!("federation relationship {td}");
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    if update {
        let n = tx
            .execute(
                "UPDATE federation_relationships SET data = $2 WHERE trust_domain = $1",
                &[&td, &data],
            )
            .await
            .ctx(&what)?;
        require_found(n != 0, &what)?;
    } else {
        tx.execute(
            "INSERT INTO federation_relationships (trust_domain, data) VALUES ($1, $2)",
            &[&td, &data],
        )
        .await
        .ctx(&what)?;
    }
    if let Some(b) = bundle {
        super::bundles::put(&tx, b).await?;
    }
    tx.commit().await.ctx(&what)
}

pub(super) async fn get(ds: &PostgresDatastore, td: &TrustDomain) -> Result<Option<Relationship>> {
    let name = td.name();
    let what = format!("federation relationship {name}");
    let mut conn = ds.conn().await?;
    let row = conn
        .get()?
        .query_opt(
            "SELECT data FROM federation_relationships WHERE trust_domain = $1",
            &[&name],
        )
        .await
        .ctx(&what)?;
    row.map(|r| {
        let data: String = r.try_get(0).ctx(&what)?;
        decode_relationship(name, &data)
    })
    .transpose()
}

pub(super) async fn list(ds: &PostgresDatastore) -> Result<Vec<Relationship>> {
    let what = "federation relationships";
    let mut conn = ds.conn().await?;
    let rows = conn
        .get()?
        .query(
            "SELECT trust_domain, data FROM federation_relationships ORDER BY trust_domain",
            &[],
        )
        .await
        .ctx(what)?;
    rows.iter()
        .map(|r| {
            let td: String = r.try_get(0).ctx(what)?;
            let data: String = r.try_get(1).ctx(what)?;
            decode_relationship(&td, &data)
        })
        .collect()
}

pub(super) async fn delete(ds: &PostgresDatastore, td: &TrustDomain) -> Result<()> {
    let name = td.name();
    let what = format!("federation relationship {name}");
    let mut conn = ds.conn().await?;
    let n = conn
        .get()?
        .execute(
            "DELETE FROM federation_relationships WHERE trust_domain = $1",
            &[&name],
        )
        .await
        .ctx(&what)?;
    require_found(n != 0, &what)
}
