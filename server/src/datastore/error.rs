//! Why a datastore operation failed: what the caller can act on (not found, already
//! there, invalid, conflicting, worth retrying) and, for failures underneath, the
//! database driver's or the file system's own error as the `source()`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// Why a datastore operation failed. The API layer maps each kind to one gRPC code
/// (`server::api`).
///
/// `NotFound`, `AlreadyExists` and `Conflict` are the datastore's own verdicts about
/// a record, named by the message (a uniqueness violation reported by the database
/// is such a verdict: it says no more than that). The other kinds may come from an
/// error underneath, which their [`Failure`] keeps as `source()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// The record asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A record with the same identity already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is inconsistent with what is stored, or cannot be stored (a
    /// connection string the driver refuses, a record that cannot be encoded).
    #[error("{0}")]
    Invalid(#[source] Failure),
    /// The database cannot be reached, is locked or full; retrying may work.
    #[error("datastore unavailable: {0}")]
    Unavailable(#[source] Failure),
    /// The stored record no longer matches what the request was based on (another
    /// request changed it first); retrying with fresh data may work.
    #[error("{0}")]
    Conflict(String),
    /// Stored data could not be decoded, or the database failed.
    #[error("datastore error: {0}")]
    Backend(#[source] Failure),
}

pub type Result<T> = std::result::Result<T, DatastoreError>;

/// The error a failure came from: kept whole (not turned into text), shared so that
/// a [`DatastoreError`] stays cheap to clone.
type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// A failure underneath a datastore operation: a message saying what was being done
/// and what went wrong, and the error that reported it, when there is one (the
/// SQLite or PostgreSQL driver's, the file system's, a decoder's), as `source()`.
///
/// The message already carries the cause's text: the server prints errors with
/// `{}` (logs, gRPC statuses, start-up errors), which must say what went wrong on
/// their own. Code that needs more (a SQLite result code, a SQLSTATE) downcasts
/// `source()` to the driver's error type.
#[derive(Debug, Clone)]
pub struct Failure {
    message: String,
    cause: Option<Cause>,
}

impl Failure {
    /// A failure with no error underneath (a rule of the datastore itself).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cause: None,
        }
    }

    /// A failure reported by `cause`; `message` says what was being done and
    /// includes the cause's text.
    pub fn caused_by(
        message: impl Into<String>,
        cause: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The message, without the kind of failure in front of it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        // The cause itself (not the `Arc` around it), so that it can be downcast.
        self.cause
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

/// Failures compare by message: an error value has no equality of its own, and
/// the message already says what it reported.
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Failure {}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_the_source_and_can_be_downcast() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let err = DatastoreError::Unavailable(Failure::caused_by(
            "entry x: no space left; free space on the disk",
            io,
        ));
        assert_eq!(
            err.to_string(),
            "datastore unavailable: entry x: no space left; free space on the disk"
        );
        let failure = err.source().expect("the failure is the source");
        let cause = failure.source().expect("the I/O error is kept");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("the cause keeps its type");
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        // Cloning shares the cause rather than losing it.
        let copy = err.clone();
        assert!(
            copy.source()
                .and_then(StdError::source)
                .is_some_and(|c| c.is::<std::io::Error>())
        );
        assert_eq!(copy, err);
    }

    #[test]
    fn a_failure_without_a_cause_has_no_source() {
        let err = DatastoreError::Backend("negative event ID -1".into());
        assert_eq!(err.to_string(), "datastore error: negative event ID -1");
        assert!(err.source().and_then(StdError::source).is_none());
        assert!(
            DatastoreError::NotFound("entry x".into())
                .source()
                .is_none()
        );
    }
}
