//! How SQLite's errors become [`DatastoreError`]s: a busy, locked or full database is
//! worth retrying, a uniqueness violation means the record already exists, anything
//! else is a failure. SQLite's own error stays attached as the source.

use std::fmt;

use rusqlite::{ErrorCode, ffi};

use crate::datastore::{DatastoreError, Failure, Result};

/// Maps a SQLite error met on the record described by `what` (a noun: "entry X").
pub(super) fn sql_error(what: impl fmt::Display, e: rusqlite::Error) -> DatastoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &e {
        match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return DatastoreError::Unavailable(Failure::caused_by(format!("{what}: {e}"), e));
            }
            // The disk is full (or the file may not grow): retrying once space is
            // freed works, and nothing was written.
            ErrorCode::DiskFull => {
                return DatastoreError::Unavailable(Failure::caused_by(
                    format!("{what}: {e}: the disk holding the database is full; free space on it"),
                    e,
                ));
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                tracing::error!("{what}: {e}: the database file is damaged");
                return DatastoreError::Backend(Failure::caused_by(
                    format!("{what}: {e}: the database file is damaged; restore it from a backup"),
                    e,
                ));
            }
            // Only uniqueness means "already exists"; a foreign-key, CHECK or NOT NULL
            // violation is a bug here and is reported as such.
            ErrorCode::ConstraintViolation
                if matches!(
                    failure.extended_code,
                    ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE
                ) =>
            {
                return DatastoreError::AlreadyExists(what.to_string());
            }
            _ => {}
        }
    }
    DatastoreError::Backend(Failure::caused_by(format!("{what}: {e}"), e))
}

/// Names the record a SQLite call was about when it fails.
pub(super) trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| sql_error(what, e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn sqlite_errors_map_to_datastore_errors() {
        let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_BUSY)),
            DatastoreError::Unavailable(_)
        ));
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_LOCKED)),
            DatastoreError::Unavailable(_)
        ));
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_FULL)),
            DatastoreError::Unavailable(_)
        ));
        assert_eq!(
            sql_error("entry x", failure(ffi::SQLITE_CONSTRAINT_UNIQUE)),
            DatastoreError::AlreadyExists("entry x".into())
        );
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_CONSTRAINT_FOREIGNKEY)),
            DatastoreError::Backend(_)
        ));
        assert!(matches!(
            sql_error("entry x", failure(ffi::SQLITE_CORRUPT)),
            DatastoreError::Backend(_)
        ));
    }

    #[test]
    fn the_sqlite_error_stays_attached() {
        let err = sql_error(
            "entry x",
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_BUSY), None),
        );
        let cause = err
            .source()
            .and_then(|f| f.source())
            .and_then(|c| c.downcast_ref::<rusqlite::Error>())
            .expect("the rusqlite error is the cause");
        assert_eq!(cause.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
        assert!(
            err.to_string()
                .starts_with("datastore unavailable: entry x: "),
            "{err}"
        );
    }
}
