//! Bundles in PostgreSQL: each trust domain's JWK Set, with its JWT authorities'
//! expiry times (which the JWK Set form does not carry) beside it.

use tessera_core::{Bundle, TrustDomain};
use tokio_postgres::{GenericClient, Row};

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::Result;
use crate::datastore::codec::{decode_bundle_columns, encode_bundle, require_found};

pub(super) async fn set(ds: &PostgresDatastore, bundle: &Bundle) -> Result<()> {
    let mut conn = ds.conn().await?;
    put(conn.get()?, bundle).await
}

/// Stores `bundle` through `client` (a connection, or a transaction with other
/// records), replacing the bundle of its trust domain.
pub(super) async fn put(client: &impl GenericClient, bundle: &Bundle) -> Result<()> {
    let td = bundle.trust_domain().name().to_owned();
    let (jwks, expiries) = encode_bundle(bundle)?;
    client
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

pub(super) async fn get(ds: &PostgresDatastore, td: &TrustDomain) -> Result<Option<Bundle>> {
    let name = td.name();
    let mut conn = ds.conn().await?;
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

pub(super) async fn list(ds: &PostgresDatastore) -> Result<Vec<Bundle>> {
    let mut conn = ds.conn().await?;
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

pub(super) async fn delete(ds: &PostgresDatastore, td: &TrustDomain) -> Result<()> {
    let name = td.name();
    let what = format!("bundle of {name}");
    let mut conn = ds.conn().await?;
    let n = conn
        .get()?
        .execute("DELETE FROM bundles WHERE trust_domain = $1", &[&name])
        .await
        .ctx(&what)?;
    require_found(n != 0, &what)
}

fn bundle_from_row(r: &Row) -> Result<Bundle> {
    let td: String = r.try_get(0).ctx("bundle")?;
    let what = format!("bundle of {td}");
    let jwks: String = r.try_get(1).ctx(&what)?;
    let expiries: String = r.try_get(2).ctx(&what)?;
    decode_bundle_columns(&td, &jwks, &expiries)
}
