//! Bundles in SQLite: each trust domain's JWK Set, with its JWT authorities' expiry
//! times (which the JWK Set form does not carry) beside it.

use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::{Bundle, TrustDomain};

use super::SqliteDatastore;
use super::connection::{Durability, begin};
use super::error::Ctx;
use crate::datastore::codec::{decode_bundle_columns, encode_bundle, require_found};
use crate::datastore::{BundleComposer, Result};

pub(super) async fn set(ds: &SqliteDatastore, bundle: &Bundle) -> Result<()> {
    let row = BundleRow::of(bundle)?;
    ds.write(Durability::Full, move |conn| row.put(conn)).await
}

/// A bundle encoded for its row, ready to be written (alone, or in a transaction
/// with other records).
pub(super) struct BundleRow {
    td: String,
    jwks: String,
    expiries: String,
}

impl BundleRow {
    pub(super) fn of(bundle: &Bundle) -> Result<Self> {
        let (jwks, expiries) = encode_bundle(bundle)?;
        Ok(Self {
            td: bundle.trust_domain().name().to_owned(),
            jwks,
            expiries,
        })
    }

    /// Stores it, replacing the bundle of its trust domain.
    pub(super) fn put(&self, conn: &Connection) -> Result<()> {
        let Self { td, jwks, expiries } = self;
        conn.prepare_cached(
            "INSERT INTO bundles (trust_domain, jwks, jwt_expiries) VALUES (?1, ?2, ?3)
             ON CONFLICT (trust_domain) DO UPDATE SET
                jwks = excluded.jwks, jwt_expiries = excluded.jwt_expiries",
        )
        .and_then(|mut s| s.execute(params![td, jwks, expiries]))
        .ctx(format_args!("bundle of {td}"))?;
        Ok(())
    }
}

pub(super) async fn get(ds: &SqliteDatastore, td: &TrustDomain) -> Result<Option<Bundle>> {
    let td = td.name().to_owned();
    ds.read(move |conn| get_in(conn, &td)).await
}

/// The bundle of `td`, through `conn` (a connection, or a transaction).
fn get_in(conn: &Connection, td: &str) -> Result<Option<Bundle>> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT jwks, jwt_expiries FROM bundles WHERE trust_domain = ?1")
        .and_then(|mut s| s.query_row([td], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .ctx(format_args!("bundle of {td}"))?;
    row.map(|(jwks, expiries)| decode_bundle_columns(td, &jwks, &expiries))
        .transpose()
}

/// [`crate::datastore::Datastore::compose_bundle`]: one write transaction (the
/// write lock taken up front, so no other process's composition can interleave).
pub(super) async fn compose(
    ds: &SqliteDatastore,
    td: &TrustDomain,
    compose: BundleComposer,
) -> Result<Option<Bundle>> {
    let td = td.name().to_owned();
    ds.write(Durability::Full, move |conn| {
        let tx = begin(conn)?;
        let records = super::ca_journal::list_in(&tx)?;
        let current = get_in(&tx, &td)?;
        let stored = match compose(&records, current.as_ref()) {
            Some(next) => {
                BundleRow::of(&next)?.put(&tx)?;
                Some(next)
            }
            None => current,
        };
        tx.commit().ctx(format_args!("bundle of {td}"))?;
        Ok(stored)
    })
    .await
}

pub(super) async fn list(ds: &SqliteDatastore) -> Result<Vec<Bundle>> {
    ds.read(|conn| {
        let mut stmt = conn
            .prepare_cached(
                "SELECT trust_domain, jwks, jwt_expiries FROM bundles ORDER BY trust_domain",
            )
            .ctx("bundles")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .ctx("bundles")?;
        let mut bundles = Vec::new();
        for row in rows {
            let (td, jwks, expiries) = row.ctx("bundles")?;
            bundles.push(decode_bundle_columns(&td, &jwks, &expiries)?);
        }
        Ok(bundles)
    })
    .await
}

pub(super) async fn delete(ds: &SqliteDatastore, td: &TrustDomain) -> Result<()> {
    let td = td.name().to_owned();
    ds.write(Durability::Full, move |conn| {
        let what = format!("bundle of {td}");
        let n = conn
            .prepare_cached("DELETE FROM bundles WHERE trust_domain = ?1")
            .and_then(|mut s| s.execute([&td]))
            .ctx(&what)?;
        require_found(n != 0, &what)
    })
    .await
}
