//! Join tokens in PostgreSQL: the token and its expiry. Taking one is a single
//! `DELETE ... RETURNING`: of several takers, on any server, exactly one gets it.

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::Result;
use crate::datastore::codec::token_label;

pub(super) async fn create(ds: &PostgresDatastore, token: &str, expires_at: i64) -> Result<()> {
    let mut conn = ds.conn().await?;
    conn.get()?
        .execute(
            "INSERT INTO join_tokens (token, expires_at) VALUES ($1, $2)",
            &[&token, &expires_at],
        )
        .await
        .ctx(token_label(token))?;
    Ok(())
}

pub(super) async fn take(ds: &PostgresDatastore, token: &str) -> Result<Option<i64>> {
    let mut conn = ds.conn().await?;
    // One statement: of concurrent takers, the others wait on the row lock and
    // then find it deleted.
    conn.get()?
        .query_opt(
            "DELETE FROM join_tokens WHERE token = $1 RETURNING expires_at",
            &[&token],
        )
        .await
        .ctx(token_label(token))?
        .map(|r| r.try_get(0))
        .transpose()
        .ctx(token_label(token))
}

pub(super) async fn prune(ds: &PostgresDatastore, now: i64) -> Result<u64> {
    let mut conn = ds.conn().await?;
    conn.get()?
        .execute("DELETE FROM join_tokens WHERE expires_at < $1", &[&now])
        .await
        .ctx("join tokens")
}
