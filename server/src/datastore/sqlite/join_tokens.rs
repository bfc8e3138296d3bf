//! Join tokens in SQLite: the token and its expiry. Taking one is a single
//! `DELETE ... RETURNING`, so of several takers (even in other processes) exactly
//! one gets it, and the take is durable so a token is never accepted twice.

use rusqlite::{OptionalExtension, params};

use super::SqliteDatastore;
use super::connection::Durability;
use super::error::Ctx;
use crate::datastore::Result;
use crate::datastore::codec::token_label;

pub(super) async fn create(ds: &SqliteDatastore, token: &str, expires_at: i64) -> Result<()> {
    let token = token.to_owned();
    ds.write(Durability::Normal, move |conn| {
        conn.prepare_cached("INSERT INTO join_tokens (token, expires_at) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![token, expires_at]))
            .ctx(token_label(&token))?;
        Ok(())
    })
    .await
}

pub(super) async fn take(ds: &SqliteDatastore, token: &str) -> Result<Option<i64>> {
    let token = token.to_owned();
    ds.write(Durability::Full, move |conn| {
        // One statement, so finding and deleting cannot be split by another taker
        // (even one in another process).
        conn.prepare_cached("DELETE FROM join_tokens WHERE token = ?1 RETURNING expires_at")
            .and_then(|mut s| s.query_row([&token], |r| r.get(0)).optional())
            .ctx(token_label(&token))
    })
    .await
}

pub(super) async fn prune(ds: &SqliteDatastore, now: i64) -> Result<u64> {
    ds.write(Durability::Normal, move |conn| {
        let n = conn
            .prepare_cached("DELETE FROM join_tokens WHERE expires_at < ?1")
            .and_then(|mut s| s.execute([now]))
            .ctx("join tokens")?;
        Ok(n as u64)
    })
    .await
}
