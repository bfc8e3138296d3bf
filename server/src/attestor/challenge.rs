//! The server side of every TPM attestor: one generic session over a
//! `tessera_tpm` [`Verifier`] that decodes the agent's JSON payload, runs the
//! verifier off the async threads, sends its challenge, and checks the one answer
//! against the pending state this session alone holds, so an answer can never be
//! checked against another attempt. `tpm_devid` and `tpm_ek` differ only in their
//! configuration and their verifier.

use std::sync::Arc;

use async_trait::async_trait;
use tessera_tpm::attestation::{Pending, Verifier};

use super::{AttestError, Attested, NodeAttestor, Session, Step};

/// A node attestor made of a TPM verifier; TPM agents may attest again with the
/// same evidence.
#[derive(Debug)]
pub struct ChallengeAttestor<V> {
    verifier: Arc<V>,
}

impl<V: Verifier> ChallengeAttestor<V> {
    /// Serves attestations with `verifier`.
    pub fn with_verifier(verifier: V) -> Self {
        Self {
            verifier: Arc::new(verifier),
        }
    }
}

impl<V: Verifier> NodeAttestor for ChallengeAttestor<V> {
    fn name(&self) -> &'static str {
        V::NAME
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(ChallengeSession::<V> {
            verifier: self.verifier.clone(),
            pending: None,
            started: false,
        })
    }
}

struct ChallengeSession<V: Verifier> {
    verifier: Arc<V>,
    pending: Option<V::Pending>,
    started: bool,
}

#[async_trait]
impl<V: Verifier> Session for ChallengeSession<V> {
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError> {
        let name = V::NAME;
        if !self.started {
            self.started = true;
            let payload: V::Payload = serde_json::from_slice(&input)
                .map_err(|e| AttestError::Malformed(format!("{name} payload: {e}")))?;
            let verifier = self.verifier.clone();
            // Certificate paths and RSA encryption: keep them off the async threads.
            let (challenge, pending) =
                tokio::task::spawn_blocking(move || verifier.start(&payload))
                    .await
                    .map_err(|e| AttestError::Unavailable(e.to_string()))?
                    .map_err(from_tpm)?;
            self.pending = Some(pending);
            return serde_json::to_vec(&challenge)
                .map(Step::Challenge)
                .map_err(|e| AttestError::Unavailable(e.to_string()));
        }
        let pending = self.pending.take().ok_or_else(|| {
            AttestError::Malformed(format!("{name} takes exactly one challenge response"))
        })?;
        let response: <V::Pending as Pending>::Response = serde_json::from_slice(&input)
            .map_err(|e| AttestError::Malformed(format!("{name} response: {e}")))?;
        let done = pending.finish(&response).map_err(from_tpm)?;
        Ok(Step::Attested(Attested {
            agent_path: done.agent_path,
            selectors: done.selectors,
            can_reattest: true,
        }))
    }
}

/// Maps the TPM crate's verdicts: malformed evidence, a server-side failure, or a
/// refusal with the precise reason.
fn from_tpm(e: tessera_tpm::AttestError) -> AttestError {
    use tessera_tpm::AttestError as T;
    match e {
        T::Malformed { .. } => AttestError::Malformed(e.to_string()),
        T::Random | T::Config(_) | T::AllowList(_) => AttestError::Unavailable(e.to_string()),
        other => AttestError::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use tessera_tpm::NodeAttestation;

    use super::*;

    /// A verifier whose challenge is a number the answer must double.
    #[derive(Debug)]
    struct Doubling;

    #[derive(Serialize, Deserialize)]
    struct Number(u32);

    struct Expect(u32);

    impl Verifier for Doubling {
        const NAME: &'static str = "doubling";
        type Payload = Number;
        type Challenge = Number;
        type Pending = Expect;

        fn start(&self, payload: &Number) -> Result<(Number, Expect), tessera_tpm::AttestError> {
            if payload.0 == 0 {
                return Err(tessera_tpm::AttestError::Malformed {
                    field: "number",
                    reason: "zero".into(),
                });
            }
            Ok((Number(payload.0 + 1), Expect(2 * (payload.0 + 1))))
        }
    }

    impl Pending for Expect {
        type Response = Number;

        fn finish(self, response: &Number) -> Result<NodeAttestation, tessera_tpm::AttestError> {
            if response.0 != self.0 {
                return Err(tessera_tpm::AttestError::ActivationFailed);
            }
            Ok(NodeAttestation {
                agent_path: format!("doubling/{}", self.0),
                selectors: Vec::new(),
            })
        }
    }

    fn json<T: Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[tokio::test]
    async fn one_challenge_answered_once_against_its_own_attempt() {
        let attestor = ChallengeAttestor::with_verifier(Doubling);
        assert_eq!(attestor.name(), "doubling");
        let mut a = attestor.session();
        let mut b = attestor.session();
        let Step::Challenge(ca) = a.step(json(&Number(4))).await.unwrap() else {
            panic!("no challenge");
        };
        let Step::Challenge(_) = b.step(json(&Number(9))).await.unwrap() else {
            panic!("no challenge");
        };
        let Number(ca) = serde_json::from_slice(&ca).unwrap();
        // A's answer is wrong for B's attempt.
        let err = b.step(json(&Number(2 * ca))).await.unwrap_err();
        assert!(matches!(err, AttestError::Refused(_)), "{err}");
        let Step::Attested(done) = a.step(json(&Number(2 * ca))).await.unwrap() else {
            panic!("not attested");
        };
        assert_eq!(done.agent_path, "doubling/10");
        assert!(done.can_reattest);
        // Each attempt is answered once.
        let err = a.step(json(&Number(2 * ca))).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed attestation data: doubling takes exactly one challenge response"
        );
    }

    #[tokio::test]
    async fn bad_payloads_and_answers_say_which_attestor_and_what() {
        let attestor = ChallengeAttestor::with_verifier(Doubling);
        let err = attestor.session().step(b"{".to_vec()).await.unwrap_err();
        assert!(matches!(err, AttestError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("doubling payload: "), "{err}");
        let err = attestor.session().step(json(&Number(0))).await.unwrap_err();
        assert!(matches!(err, AttestError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("number: zero"), "{err}");
        let mut s = attestor.session();
        s.step(json(&Number(1))).await.unwrap();
        let err = s.step(b"\"two\"".to_vec()).await.unwrap_err();
        assert!(err.to_string().contains("doubling response: "), "{err}");
    }
}
