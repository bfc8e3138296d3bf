//! Bundles in PostgreSQL: each trust domain's JWK Set, with its JWT authorities'
//! expiry times (which the JWK Set form does not carry) beside it.

use tessera_core::{Bundle, TrustDomain};
use tokio_postgres::{GenericClient, Row};

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::codec::{decode_bundle_columns, encode_bundle, require_found};
use crate::datastore::{BundleComposer, Result};

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
    let mut conn = ds.conn().await?;
    get_in(conn.get()?, td.name()).await
}

/// The bundle of `td`, through `client` (a connection, or a transaction).
async fn get_in(client: &impl GenericClient, td: &str) -> Result<Option<Bundle>> {
    let row = client
        .query_opt(
            "SELECT trust_domain, jwks, jwt_expiries FROM bundles WHERE trust_domain = $1",
            &[&td],
        )
        .await
        .ctx(format_args!("bundle of {td}"))?;
    row.as_ref().map(bundle_from_row).transpose()
}

/// The transaction-level advisory lock every bundle composition takes first, so
/// that compositions from several servers run one after the other (an advisory
/// lock rather than a row lock: the bundle row may not exist yet). The number is
/// arbitrary, only unique among the locks this schema uses.
const COMPOSE_LOCK: i64 = 0x7465_7373_6272_646c;

/// [`crate::datastore::Datastore::compose_bundle`]: one transaction holding
/// [`COMPOSE_LOCK`]. Reads after the lock see every record committed before it was
/// granted, so the last composition always knows every record written before it.
pub(super) async fn compose(
    ds: &PostgresDatastore,
    td: &TrustDomain,
    compose: BundleComposer,
) -> Result<Option<Bundle>> {
    let name = td.name();
    let what = format!("bundle of {name}");
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMPOSE_LOCK])
        .await
        .ctx(&what)?;
    let records = super::ca_journal::list_in(&tx).await?;
    let current = get_in(&tx, name).await?;
    let stored = match compose(&records, current.as_ref()) {
        Some(next) => {
            put(&tx, &next).await?;
            Some(next)
        }
        None => current,
    };
    tx.commit().await.ctx(&what)?;
    Ok(stored)
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
