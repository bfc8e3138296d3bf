//! Why the CA manager could not do what was asked, and which of those failures a
//! retry may cure. Every variant keeps the error that caused it as its source (boxed
//! where it is large, so that a `Result` carrying one stays small).

use tessera_core::jwt::JwtError;
use tessera_core::key::KeyError;
use tessera_core::spiffe_id::SpiffeIdError;
use tessera_core::x509::{BuildError, SvidError};

use crate::datastore::DatastoreError;

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The key manager failed: the key store is down, or cannot make that key type.
    #[error("CA key: {0}")]
    Key(#[from] KeyError),
    /// A certificate could not be made (its signature failed, or its issuer expired).
    #[error("CA certificate: {0}")]
    Build(#[from] BuildError),
    /// The CA journal or the bundle could not be read or written.
    #[error("CA journal: {0}")]
    Datastore(#[from] DatastoreError),
    /// A JWT-SVID could not be signed.
    #[error("JWT signing: {0}")]
    Jwt(#[from] JwtError),
    /// No authority of that kind can sign right now.
    #[error("no active {0} authority (the key manager may be unavailable)")]
    NoActive(&'static str),
    /// The key of the authority that was signing is gone; the authority is being
    /// retired and replaced.
    #[error(
        "the key {key} of the {kind} authority {authority} is gone ({source}); the server is replacing the authority: retry shortly"
    )]
    KeyLost {
        kind: &'static str,
        authority: String,
        key: String,
        #[source]
        source: Box<KeyError>,
    },
    /// The journal's signing authorities were made with another key manager than the
    /// one configured.
    #[error(
        "the {kind} authority {authority} was made with key manager {was:?}, but the server is configured with {now:?}, which cannot reach its key: set [key_manager] back to {was:?}; to change key managers deliberately, see docs/RELIABILITY.md (the CA is then replaced and agents need the new bundle)"
    )]
    KeyManagerChanged {
        kind: &'static str,
        authority: String,
        was: String,
        now: &'static str,
    },
    /// A new authority's chain does not verify; it was not stored.
    #[error("the new {kind} authority {authority} is unusable: {source}")]
    ChainCheck {
        kind: &'static str,
        authority: String,
        #[source]
        source: Box<ChainProblem>,
    },
    /// A CA certificate in the journal cannot be read.
    #[error(
        "the certificate of CA record {authority} is unreadable: {source}; restore the database from a backup"
    )]
    Record {
        authority: String,
        #[source]
        source: Box<SvidError>,
    },
    /// The trust domain gives no SPIFFE ID for the chain probe (a bug).
    #[error("internal: the probe SPIFFE ID: {0}")]
    ProbeId(#[from] SpiffeIdError),
    /// A blocking task (a key manager call, a certificate) panicked or was cancelled.
    #[error("internal: a CA task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An authority was dropped from memory while it was being changed (a bug).
    #[error("internal: authority {0} vanished")]
    Vanished(String),
}

/// Why a new authority's chain is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainProblem {
    /// An X509-SVID it signed does not verify through the verifier agents use.
    #[error("an X509-SVID it signs does not verify against the bundle: {0}")]
    Verify(#[source] SvidError),
    /// A CA in the chain allows fewer CAs below it than there are.
    #[error(
        "{subject} has pathLenConstraint {max} but {below} CA certificate(s) sit below it in the chain; OpenSSL, Go and Java reject such chains"
    )]
    PathLength {
        subject: String,
        max: u32,
        below: u32,
    },
    /// A certificate of the chain cannot be parsed.
    #[error("certificate: {0}")]
    Unreadable(String),
    /// A JWT-SVID it signed does not validate against its own public key.
    #[error("a JWT-SVID it signs does not validate: {0}")]
    Jwt(#[source] JwtError),
}

impl CaError {
    /// Whether retrying later may succeed (the key store is down, the database busy).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CaError::Key(KeyError::Unavailable(_))
                | CaError::NoActive(_)
                | CaError::KeyLost { .. }
                | CaError::Build(BuildError::Key(KeyError::Unavailable(_)))
                | CaError::Jwt(JwtError::Key(KeyError::Unavailable(_)))
                | CaError::Datastore(DatastoreError::Unavailable(_))
        )
    }

    /// The key error behind a failed signature when it says the key object is gone
    /// (as opposed to the key store being unavailable); the error itself otherwise.
    pub(super) fn into_gone_key(self) -> Result<KeyError, CaError> {
        let gone = |k: &KeyError| matches!(k, KeyError::NotFound(_) | KeyError::Corrupt { .. });
        match self {
            CaError::Key(k)
            | CaError::Build(BuildError::Key(k))
            | CaError::Jwt(JwtError::Key(k))
                if gone(&k) =>
            {
                Ok(k)
            }
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_lost_key_keeps_its_cause_and_is_worth_a_retry() {
        let e = CaError::Build(BuildError::Key(KeyError::NotFound("x509-ca-1".into())));
        let k = e
            .into_gone_key()
            .expect("a missing key object is a lost key");
        let lost = CaError::KeyLost {
            kind: "X.509",
            authority: "x509-ca-1".into(),
            key: "x509-ca-1".into(),
            source: Box::new(k),
        };
        assert!(lost.is_unavailable());
        let cause = lost.source().expect("the cause is kept");
        assert_eq!(cause.to_string(), "key \"x509-ca-1\" not found");
    }

    #[test]
    fn an_outage_is_not_a_lost_key() {
        let e = CaError::Key(KeyError::Unavailable("token removed".into()));
        let e = e.into_gone_key().expect_err("an outage retires nothing");
        assert!(e.is_unavailable());
        assert!(e.source().is_some());
    }
}
