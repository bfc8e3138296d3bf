//! `join_token`: the fuzzer's bytes as the payload of a `join_token`
//! attestation, run by the server's attestor
//! (`tessera_server::attestor::join_token`) against a real SQLite datastore
//! that holds one valid token and one expired token.
//!
//! Checked: only the valid token attests (as sent, or with the surrounding
//! whitespace the server trims), and then as `join_token/<token>` with no
//! selectors and no re-attestation, giving an agent ID that is a valid SPIFFE
//! ID in the agent namespace; the same bytes attest only once; the expired
//! token never attests; no payload is taken for the server's own failure.

use std::sync::{Arc, OnceLock};

use tessera_server::attestor::join_token::JoinToken;
use tessera_server::attestor::{AttestError, NodeAttestor, Step};
use tessera_server::datastore::Datastore;
use tessera_server::datastore::sqlite::SqliteDatastore;

use crate::fixtures::{self, block_on};

/// The token every run may attest with.
pub const VALID: &str = "3c0a5a8e-5d8f-4bb8-a3a1-6e1d2b7f9c10";
/// A token that expired long ago.
pub const EXPIRED: &str = "expired-token.1";

struct Store {
    ds: Arc<dyn Datastore>,
    attestor: JoinToken,
    // Holds the database's directory for as long as the process runs.
    _dir: tempfile::TempDir,
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ds: Arc<dyn Datastore> = Arc::new(
            SqliteDatastore::open(&dir.path().join("datastore.sqlite3")).expect("SQLite datastore"),
        );
        let attestor = JoinToken::new(ds.clone());
        Store {
            ds,
            attestor,
            _dir: dir,
        }
    })
}

/// Puts back whichever of the two tokens a run used.
async fn restock(ds: &dyn Datastore) {
    for (token, expires_at) in [(VALID, i64::MAX / 2), (EXPIRED, 1)] {
        // AlreadyExists when it was not used: fine.
        let _ = ds.create_join_token(token, expires_at).await;
    }
}

async fn attest(payload: &[u8]) -> Result<Step, AttestError> {
    store().attestor.session().step(payload.to_vec()).await
}

pub fn run(data: &[u8]) {
    let store = store();
    block_on(async {
        restock(store.ds.as_ref()).await;
        let first = attest(data).await;
        let sent = std::str::from_utf8(data).map(str::trim);
        match first {
            Ok(Step::Attested(a)) => {
                assert_eq!(sent, Ok(VALID), "attested with a token that is not stored");
                assert_eq!(a.agent_path, format!("join_token/{VALID}"));
                assert!(a.selectors.is_empty());
                assert!(!a.can_reattest, "a join token may be used once");
                let id = fixtures::trust_domain()
                    .id(&format!("/spire/agent/{}", a.agent_path))
                    .expect("the agent ID is a SPIFFE ID");
                assert!(id.is_reserved(), "an agent ID outside the agent namespace");
                match attest(data).await {
                    Err(AttestError::Refused(_)) => {}
                    other => panic!("a join token attested twice: {other:?}"),
                }
            }
            Ok(Step::Challenge(_)) => panic!("join_token answered with a challenge"),
            Err(AttestError::Unavailable(e)) => {
                panic!("a join token payload failed as the server's fault: {e}")
            }
            Err(e) => {
                assert_ne!(sent, Ok(VALID), "the valid token was refused: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored token attests once per run, so the target's checks of an
    /// attested token run; the expired one does not.
    #[test]
    fn the_valid_token_attests_once_per_restock() {
        for _ in 0..2 {
            let attested = block_on(async {
                restock(store().ds.as_ref()).await;
                let first = attest(VALID.as_bytes()).await;
                let again = attest(VALID.as_bytes()).await;
                (matches!(first, Ok(Step::Attested(_))), again.is_err())
            });
            assert_eq!(attested, (true, true));
        }
        let expired = block_on(async {
            restock(store().ds.as_ref()).await;
            attest(EXPIRED.as_bytes()).await
        });
        assert!(
            matches!(expired, Err(AttestError::Refused(_))),
            "{expired:?}"
        );
    }
}
