//! Why a datastore operation failed: what the caller can act on (not found, already
//! there, invalid, conflicting, worth retrying) and, for failures underneath, the
//! database driver's or the file system's own error as the `source()`.

pub use tessera_core::failure::Failure;

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

#[cfg(test)]
mod tests {
    use std::error::Error as StdError;

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
