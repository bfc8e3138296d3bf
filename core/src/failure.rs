//! A failure reported by a backend (a database driver, a PKCS#11 token, a TPM, a
//! crypto library): a message that says what was being done and what went wrong,
//! with the error underneath kept whole as `source()`. The datastore's and the key
//! seam's errors carry it instead of a `String`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The error a failure came from: kept whole (not turned into text), shared so that
/// the error holding it stays cheap to clone.
type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// A failure underneath an operation: a message saying what was being done and what
/// went wrong, and the error that reported it, when there is one (the SQLite or
/// PostgreSQL driver's, the file system's, the token's, a decoder's), as `source()`.
///
/// The message already carries the cause's text: errors are printed with `{}`
/// (logs, gRPC statuses, start-up errors), which must say what went wrong on their
/// own. Code that needs more (a SQLite result code, a SQLSTATE, a PKCS#11 return
/// value) downcasts `source()` to the error type underneath.
#[derive(Debug, Clone)]
pub struct Failure {
    message: String,
    cause: Option<Cause>,
}

impl Failure {
    /// A failure with no error underneath (a rule of the backend itself).
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
    fn the_cause_is_the_source_and_survives_a_clone() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let failure = Failure::caused_by("writing x: no space left", io);
        assert_eq!(failure.to_string(), "writing x: no space left");
        let copy = failure.clone();
        for f in [&failure, &copy] {
            let cause = f.source().expect("the cause is kept");
            let io = cause
                .downcast_ref::<std::io::Error>()
                .expect("and keeps its type");
            assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        }
        assert_eq!(copy, failure);
        let plain = Failure::from("lock poisoned");
        assert!(plain.source().is_none());
        assert_eq!(plain.message(), "lock poisoned");
    }
}
