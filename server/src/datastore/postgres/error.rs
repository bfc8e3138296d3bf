//! How PostgreSQL's errors become [`DatastoreError`]s: a uniqueness violation means
//! the record already exists; a server that cannot be reached, is shutting down, is
//! overloaded or asks for a retry is worth retrying; anything else is a failure. The
//! driver's error stays attached as the source, and messages spell out its whole
//! chain on one line (the driver's own text is often just "db error").

use std::error::Error as StdError;
use std::fmt;

use tokio_postgres::error::SqlState;

use crate::datastore::{DatastoreError, Failure, Result};

/// The error with its causes, on one line.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out.replace('\n', "; ")
}

/// Whether the error means the database could not be reached (or is shutting down,
/// overloaded, or asked for a retry): trying again later may work.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::QUERY_CANCELED,
            ]
            .contains(code);
    }
    if e.is_closed() {
        return true;
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    let text = e.to_string();
    text.starts_with("timeout") || text.starts_with("error connecting")
}

/// `Unavailable` or `Backend` (as [`is_unavailable`] tells) with `context`, the
/// driver's error chain, and the driver's error as the cause.
pub(super) fn failure(context: impl fmt::Display, e: tokio_postgres::Error) -> DatastoreError {
    let unavailable = is_unavailable(&e);
    let failure = Failure::caused_by(format!("{context}: {}", describe(&e)), e);
    if unavailable {
        DatastoreError::Unavailable(failure)
    } else {
        DatastoreError::Backend(failure)
    }
}

/// Maps an error met on the record described by `what` (a noun: "entry X").
pub(super) fn pg_error(what: impl fmt::Display, e: tokio_postgres::Error) -> DatastoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return DatastoreError::AlreadyExists(what.to_string());
    }
    failure(what, e)
}

/// An error opening a connection: the server could not be reached (`Unavailable`)
/// or refused us (`Backend`: wrong password, no such database).
pub(super) fn connect_error(target: &str, e: tokio_postgres::Error) -> DatastoreError {
    failure(format_args!("cannot connect to the {target}"), e)
}

/// Names the record a PostgreSQL call was about when it fails.
pub(super) trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, tokio_postgres::Error> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| pg_error(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::postgres::tests::TestDb;

    #[tokio::test]
    async fn errors_keep_the_driver_error_and_its_sqlstate() {
        let db = TestDb::new().await;
        let raw = db.raw().await;
        raw.batch_execute("CREATE TABLE t (x INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
            .await
            .expect("table");
        let dup = raw
            .batch_execute("INSERT INTO t VALUES (1)")
            .await
            .expect_err("duplicate key");
        assert_eq!(
            pg_error("row 1", dup),
            DatastoreError::AlreadyExists("row 1".into())
        );

        let missing = raw
            .batch_execute("SELECT * FROM no_such_table")
            .await
            .expect_err("no such table");
        let err = pg_error("things", missing);
        assert!(matches!(err, DatastoreError::Backend(_)), "{err:?}");
        // The message spells out the server's own words, not just "db error".
        assert!(err.to_string().contains("no_such_table"), "{err}");
        let cause = err
            .source()
            .and_then(StdError::source)
            .and_then(|c| c.downcast_ref::<tokio_postgres::Error>())
            .expect("the driver's error is the cause");
        assert_eq!(cause.code(), Some(&SqlState::UNDEFINED_TABLE));
        drop(raw);
        db.finish().await;
    }
}
