//! The agent side of every TPM attestor: one generic session over a
//! `tessera_tpm` [`Prover`] that runs the TPM commands off the async threads,
//! sends the payload as JSON, and answers the one challenge with the state the
//! payload left. `tpm_devid` and `tpm_ek` differ only in their prover.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tessera_tpm::Tpm;
use tessera_tpm::attestation::key_proof::{WithKeyCertify, WithKeyNonce};
use tessera_tpm::attestation::{AgentState, Prover};

use super::key_proof::{KeyBinding, KeyProver};
use super::{AttestError, NodeAttestor, Session};

/// A node attestor made of a TPM and a prover; TPM agents may attest again with
/// the same evidence.
#[derive(Debug)]
pub struct ChallengeAttestor<P> {
    tpm: Arc<Tpm>,
    prover: Arc<P>,
    /// Certifies the agent's SVID keys (when they are TPM keys).
    keys: Option<Arc<KeyProver>>,
    /// The key the next attestation's SVID is for.
    binding: Mutex<Option<KeyBinding>>,
}

impl<P: Prover> ChallengeAttestor<P> {
    /// Attests with `prover` on `tpm`.
    pub fn with_prover(tpm: Arc<Tpm>, prover: P) -> Self {
        Self {
            tpm,
            prover: Arc::new(prover),
            keys: None,
            binding: Mutex::new(None),
        }
    }

    /// Proves the agent's SVID keys, which live in this TPM, with the AK.
    pub fn with_key_prover(mut self, keys: Arc<KeyProver>) -> Self {
        self.keys = Some(keys);
        self
    }
}

impl<P: Prover> NodeAttestor for ChallengeAttestor<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn can_reattest(&self) -> bool {
        true
    }

    fn session(&self) -> Box<dyn Session> {
        let binding = self
            .binding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Box::new(ChallengeSession::<P> {
            tpm: self.tpm.clone(),
            prover: self.prover.clone(),
            state: None,
            key: self.keys.clone().zip(binding),
        })
    }

    fn bind_key(&self, binding: KeyBinding) {
        *self.binding.lock().unwrap_or_else(|p| p.into_inner()) = Some(binding);
    }

    fn renewal_proof(
        &self,
        slot: &str,
        serial_hex: &str,
        csr: &[u8],
    ) -> (
        Option<tessera_proto::agent::TpmKeyCertify>,
        Option<tessera_proto::agent::PcrQuote>,
    ) {
        match &self.keys {
            Some(keys) => keys.prove_at_renewal(slot, serial_hex, csr),
            None => (None, None),
        }
    }
}

struct ChallengeSession<P: Prover> {
    tpm: Arc<Tpm>,
    prover: Arc<P>,
    state: Option<P::State>,
    key: Option<(Arc<KeyProver>, KeyBinding)>,
}

fn join(e: tokio::task::JoinError) -> AttestError {
    AttestError::Failed(format!("TPM task failed: {e}"))
}

#[async_trait]
impl<P: Prover> Session for ChallengeSession<P> {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        let (tpm, prover) = (self.tpm.clone(), self.prover.clone());
        // TPM commands block: run them off the async threads.
        let (payload, state) = tokio::task::spawn_blocking(move || prover.payload(&tpm))
            .await
            .map_err(join)?
            .map_err(|e| AttestError::Failed(format!("{}: {e}", P::NAME)))?;
        self.state = Some(state);
        serde_json::to_vec(&payload).map_err(|e| AttestError::Failed(e.to_string()))
    }

    async fn answer(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let name = P::NAME;
        let state = self.state.take().ok_or_else(|| {
            AttestError::Failed(format!("{name}: a second challenge was not expected"))
        })?;
        let challenge: WithKeyNonce<<P::State as AgentState>::Challenge> =
            serde_json::from_slice(&challenge)
                .map_err(|e| AttestError::Failed(format!("{name} challenge: {e}")))?;
        let tpm = self.tpm.clone();
        let key = self.key.take();
        let response = tokio::task::spawn_blocking(move || {
            let ak = state.ak().clone();
            let response = state.answer(&tpm, &challenge.challenge)?;
            // The proofs: one that cannot be made is left out (the server then
            // records it, or refuses the agent if its policy requires the proof).
            let (key_certify, pcr_quote) = match (key, &challenge.key_nonce) {
                (Some((keys, binding)), Some(nonce)) => {
                    keys.prove_at_attestation(&binding, &ak, nonce)
                }
                _ => (None, None),
            };
            Ok(WithKeyCertify {
                response,
                key_certify,
                pcr_quote,
            })
        })
        .await
        .map_err(join)?
        .map_err(|e: tessera_tpm::AttestError| AttestError::Failed(format!("{name}: {e}")))?;
        serde_json::to_vec(&response).map_err(|e| AttestError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use tessera_tpm::device::{CertifyOutput, DeviceError, KeyBlob, SigningScheme, TpmDevice};
    use tessera_tpm::ek::EkKind;
    use tessera_tpm::verifier::credential::CredentialBlob;
    use tessera_tpm::wire::{PublicArea, Signature};
    use zeroize::Zeroizing;

    use super::*;

    /// A TPM these tests never reach: the prover below answers by itself.
    #[derive(Debug)]
    struct NoTpm;

    fn none<T>() -> Result<T, DeviceError> {
        Err(DeviceError::Unsupported("no TPM in this test".into()))
    }

    impl TpmDevice for NoTpm {
        fn describe(&self) -> String {
            "none".into()
        }
        fn nv_read(&mut self, _: u32) -> Result<Option<Vec<u8>>, DeviceError> {
            none()
        }
        fn ek_public(&mut self, _: EkKind) -> Result<PublicArea, DeviceError> {
            none()
        }
        fn create_key(&mut self, _: &PublicArea) -> Result<KeyBlob, DeviceError> {
            none()
        }
        fn check_key(&mut self, _: &KeyBlob) -> Result<(), DeviceError> {
            none()
        }
        fn certify(
            &mut self,
            _: &KeyBlob,
            _: &KeyBlob,
            _: &[u8],
        ) -> Result<CertifyOutput, DeviceError> {
            none()
        }
        fn activate_credential(
            &mut self,
            _: &KeyBlob,
            _: EkKind,
            _: &CredentialBlob,
        ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
            none()
        }
        fn sign(
            &mut self,
            _: &KeyBlob,
            _: &[u8],
            _: SigningScheme,
        ) -> Result<Signature, DeviceError> {
            none()
        }
    }

    /// Sends a number; answers a challenge by doubling it, or fails on 13.
    #[derive(Debug)]
    struct Doubling(u32);

    /// A struct, as every TPM attestor's messages are (the key nonce and certify
    /// sit beside its fields).
    #[derive(Serialize, Deserialize)]
    struct Number {
        n: u32,
    }

    struct Ready(KeyBlob);

    impl Prover for Doubling {
        const NAME: &'static str = "doubling";
        type Payload = Number;
        type State = Ready;

        fn payload(&self, _: &Tpm) -> Result<(Number, Ready), tessera_tpm::AttestError> {
            let ak = KeyBlob {
                public: tessera_tpm::ak::AkKind::EccP256.template(),
                private: vec![1],
            };
            Ok((Number { n: self.0 }, Ready(ak)))
        }
    }

    impl AgentState for Ready {
        type Challenge = Number;
        type Response = Number;

        fn answer(self, _: &Tpm, c: &Number) -> Result<Number, tessera_tpm::AttestError> {
            if c.n == 13 {
                return Err(tessera_tpm::AttestError::Config("unlucky"));
            }
            Ok(Number { n: 2 * c.n })
        }

        fn ak(&self) -> &KeyBlob {
            &self.0
        }
    }

    fn n(v: u32) -> Vec<u8> {
        format!(r#"{{"n":{v}}}"#).into_bytes()
    }

    #[tokio::test]
    async fn payload_then_one_answer() {
        let attestor =
            ChallengeAttestor::with_prover(Arc::new(Tpm::new(Box::new(NoTpm))), Doubling(7));
        assert_eq!(attestor.name(), "doubling");
        assert!(attestor.can_reattest());
        // No key prover: nothing to prove renewals with.
        assert_eq!(attestor.renewal_proof("slot", "0a", b"csr"), (None, None));
        let mut s = attestor.session();
        // No payload yet: no state to answer with.
        let err = s.answer(n(1)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "doubling: a second challenge was not expected"
        );
        assert_eq!(s.payload().await.unwrap(), n(7));
        let err = s.answer(b"x".to_vec()).await.unwrap_err();
        assert!(err.to_string().starts_with("doubling challenge: "), "{err}");
        // The bad challenge used the state up.
        let err = s.answer(n(5)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "doubling: a second challenge was not expected"
        );

        let mut s = attestor.session();
        s.payload().await.unwrap();
        // A key nonce from the server, and no key to prove: the answer is the
        // attestor's own.
        let with_nonce = br#"{"n":5,"key_nonce":"AAEC"}"#.to_vec();
        assert_eq!(s.answer(with_nonce).await.unwrap(), n(10));
        let err = s.answer(n(5)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "doubling: a second challenge was not expected"
        );

        let mut s = attestor.session();
        s.payload().await.unwrap();
        let err = s.answer(n(13)).await.unwrap_err();
        assert_eq!(err.to_string(), "doubling: attestor misconfigured: unlucky");
    }
}
