//! The server side of every TPM attestor: one generic session over a
//! `tessera_tpm` [`Verifier`] that decodes the agent's JSON payload, runs the
//! verifier off the async threads, sends its challenge, and checks the one answer
//! against the pending state this session alone holds, so an answer can never be
//! checked against another attempt. `tpm_devid` and `tpm_ek` differ only in their
//! configuration and their verifier.

use std::sync::Arc;

use async_trait::async_trait;
use tessera_tpm::attestation::key_proof::{KEY_NONCE_LEN, WithKeyCertify, WithKeyNonce};
use tessera_tpm::attestation::{Pending, Verifier};

use super::pcr_policy::PcrPolicy;
use super::{AttestError, Attested, NodeAttestor, Session, Step, TpmKeyEvidence};

/// A node attestor made of a TPM verifier; TPM agents may attest again with the
/// same evidence.
#[derive(Debug)]
pub struct ChallengeAttestor<V> {
    verifier: Arc<V>,
    policy: Option<Arc<PcrPolicy>>,
}

/// `attestor` held to the PCR allow-list at `path`, if any (a start-up error when
/// the file is unusable).
pub fn with_policy<V: Verifier>(
    mut attestor: ChallengeAttestor<V>,
    path: Option<&std::path::Path>,
    name: &str,
) -> Result<ChallengeAttestor<V>, super::AttestorConfigError> {
    if let Some(p) = path {
        let setting = format!("node_attestors.{name}.pcr_allow_list");
        let policy = PcrPolicy::open(p, &setting).map_err(super::AttestorConfigError::Setting)?;
        attestor.policy = Some(Arc::new(policy));
    }
    Ok(attestor)
}

impl<V: Verifier> ChallengeAttestor<V> {
    /// Serves attestations with `verifier`.
    pub fn with_verifier(verifier: V) -> Self {
        Self {
            verifier: Arc::new(verifier),
            policy: None,
        }
    }
}

impl<V: Verifier> NodeAttestor for ChallengeAttestor<V> {
    fn name(&self) -> &'static str {
        V::NAME
    }

    fn pcr_policy(&self) -> Option<Arc<PcrPolicy>> {
        self.policy.clone()
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(ChallengeSession::<V> {
            verifier: self.verifier.clone(),
            pending: None,
            key_nonce: Vec::new(),
            started: false,
        })
    }
}

struct ChallengeSession<V: Verifier> {
    verifier: Arc<V>,
    pending: Option<V::Pending>,
    /// The nonce the agent's key certify must carry (see
    /// `tessera_tpm::verifier::key_proof`).
    key_nonce: Vec<u8>,
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
            let mut nonce = vec![0u8; KEY_NONCE_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
                .map_err(|_| AttestError::Unavailable("random generator failed".into()))?;
            self.key_nonce = nonce.clone();
            let challenge = WithKeyNonce {
                challenge,
                key_nonce: Some(nonce),
            };
            return serde_json::to_vec(&challenge)
                .map(Step::Challenge)
                .map_err(|e| AttestError::Unavailable(e.to_string()));
        }
        let pending = self.pending.take().ok_or_else(|| {
            AttestError::Malformed(format!("{name} takes exactly one challenge response"))
        })?;
        let response: WithKeyCertify<<V::Pending as Pending>::Response> =
            serde_json::from_slice(&input)
                .map_err(|e| AttestError::Malformed(format!("{name} response: {e}")))?;
        let ak_public = pending.ak_public().marshal();
        let done = pending.finish(&response.response).map_err(from_tpm)?;
        Ok(Step::Attested(Attested {
            agent_path: done.agent_path,
            selectors: done.selectors,
            can_reattest: true,
            tpm: Some(Box::new(TpmKeyEvidence {
                ak_public,
                key_nonce: std::mem::take(&mut self.key_nonce),
                key_certify: response.key_certify,
                pcr_quote: response.pcr_quote,
            })),
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

    /// A struct, as every TPM attestor's messages are (the key nonce and certify
    /// sit beside its fields).
    #[derive(Serialize, Deserialize)]
    struct Number {
        n: u32,
    }

    fn num(n: u32) -> Number {
        Number { n }
    }

    struct Expect(u32, tessera_tpm::wire::PublicArea);

    impl Verifier for Doubling {
        const NAME: &'static str = "doubling";
        type Payload = Number;
        type Challenge = Number;
        type Pending = Expect;

        fn start(&self, payload: &Number) -> Result<(Number, Expect), tessera_tpm::AttestError> {
            if payload.n == 0 {
                return Err(tessera_tpm::AttestError::Malformed {
                    field: "number",
                    reason: "zero".into(),
                });
            }
            let ak = tessera_tpm::ak::AkKind::EccP256.template();
            Ok((num(payload.n + 1), Expect(2 * (payload.n + 1), ak)))
        }
    }

    impl Pending for Expect {
        type Response = Number;

        fn finish(self, response: &Number) -> Result<NodeAttestation, tessera_tpm::AttestError> {
            if response.n != self.0 {
                return Err(tessera_tpm::AttestError::ActivationFailed);
            }
            Ok(NodeAttestation {
                agent_path: format!("doubling/{}", self.0),
                selectors: Vec::new(),
            })
        }

        fn ak_public(&self) -> &tessera_tpm::wire::PublicArea {
            &self.1
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
        let Step::Challenge(ca) = a.step(json(&num(4))).await.unwrap() else {
            panic!("no challenge");
        };
        let Step::Challenge(_) = b.step(json(&num(9))).await.unwrap() else {
            panic!("no challenge");
        };
        let challenge: serde_json::Value = serde_json::from_slice(&ca).unwrap();
        // The key nonce sits beside the attestor's own challenge.
        assert_eq!(
            challenge["key_nonce"].as_str().unwrap().len(),
            44,
            "{challenge}"
        );
        let Number { n: ca } = serde_json::from_slice(&ca).unwrap();
        // A's answer is wrong for B's attempt.
        let err = b.step(json(&num(2 * ca))).await.unwrap_err();
        assert!(matches!(err, AttestError::Refused(_)), "{err}");
        let Step::Attested(done) = a.step(json(&num(2 * ca))).await.unwrap() else {
            panic!("not attested");
        };
        assert_eq!(done.agent_path, "doubling/10");
        assert!(done.can_reattest);
        // No certify was sent: the evidence says so, with the AK kept.
        let tpm = done.tpm.unwrap();
        assert_eq!(tpm.key_certify, None);
        assert_eq!(tpm.key_nonce.len(), 32);
        assert_eq!(
            tpm.ak_public,
            tessera_tpm::ak::AkKind::EccP256.template().marshal()
        );
        // Each attempt is answered once.
        let err = a.step(json(&num(2 * ca))).await.unwrap_err();
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
        let err = attestor.session().step(json(&num(0))).await.unwrap_err();
        assert!(matches!(err, AttestError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("number: zero"), "{err}");
        let mut s = attestor.session();
        s.step(json(&num(1))).await.unwrap();
        let err = s.step(b"\"two\"".to_vec()).await.unwrap_err();
        assert!(err.to_string().contains("doubling response: "), "{err}");
    }
}
