//! A hand-made TPM agent for the tests of the server's TPM proofs: it runs the
//! `tpm_ek` attestation and the agent renewal itself, with the tessera-tpm agent
//! functions on a simulator, and lets the test choose (or forge) the proofs it
//! sends beside them: the certify of its SVID key and the PCR quote.

use std::sync::Arc;

use tessera_agent::client::{Trust, channel, node_client};
use tessera_core::key::Key;
use tessera_core::tls::SharedBundle;
use tessera_core::{Bundle, TrustDomain};
use tessera_proto::agent as pb;
use tessera_tpm::attestation::key_proof::{WithKeyCertify, WithKeyNonce};
use tessera_tpm::attestation::tpm_ek::{EkChallenge, EkProver};
use tessera_tpm::attestation::{AgentState as _, Prover as _};
use tessera_tpm::ek::EkKind;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::key_proof::KeyCertify;
use tessera_tpm::verifier::quote::PcrQuote;
use tessera_tpm::{AgentOptions, KeyBlob, Tpm, TpmKey};

use crate::Server;

/// What the agent has when it answers the challenge, or makes a renewal.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// This attestation's AK (at renewal: none, the test holds the kept one).
    pub ak: Option<KeyBlob>,
    /// The server's key nonce (attestation), or the serial of the SVID the
    /// renewal authenticates with, as bytes of its hex.
    pub nonce: Vec<u8>,
    /// The serial (renewal only).
    pub serial: String,
    /// The CSR sent.
    pub csr: Vec<u8>,
}

/// The proofs sent beside the attestor's own answer or the renewal's CSR.
#[derive(Debug, Clone, Default)]
pub struct Proofs {
    /// The certify of the SVID key.
    pub key_certify: Option<KeyCertify>,
    /// The PCR quote.
    pub pcr_quote: Option<PcrQuote>,
}

fn roots(server: &Server) -> Vec<Vec<u8>> {
    tessera_core::x509::pem_certs(server.cli_ok(&["bundle", "show"]).as_bytes())
        .expect("the server's bundle")
}

/// Attests with `tpm_ek` (RSA EK, P-256 AK) on `tpm`, for an SVID of `svid_key`,
/// sending the proofs `forge` makes; returns the SVID chain the server issued.
pub fn attest(
    server: &Server,
    tpm: &Arc<Tpm>,
    svid_key: &KeyBlob,
    forge: impl FnOnce(&Attempt) -> Proofs,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let roots = roots(server);
    let key: Arc<dyn Key> =
        Arc::new(TpmKey::from_blob(tpm.clone(), svid_key.clone()).expect("SVID key"));
    let csr = tessera_core::x509::build_csr(&key).expect("CSR");
    let prover = EkProver {
        options: AgentOptions {
            ek: Some(EkKind::Rsa2048),
            ak: AkKind::EccP256,
        },
    };
    let (payload, state) = prover.payload(tpm).expect("tpm_ek payload");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let mut client = node_client(channel(
            vec![server.address()],
            td.id("/spire/server").expect("server ID"),
            Trust::Bundle(SharedBundle::new(Bundle::with_x509(td.clone(), roots))),
            None,
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = pb::AttestRequest {
            step: Some(pb::attest_request::Step::Params(pb::AttestationParams {
                attestor: "tpm_ek".into(),
                payload: serde_json::to_vec(&payload).expect("payload"),
                csr: csr.clone(),
            })),
        };
        tx.send(first).await.expect("send");
        let mut inbound = client
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut state = Some(state);
        let mut forge = Some(forge);
        loop {
            match inbound.message().await?.and_then(|m| m.step) {
                Some(pb::attest_response::Step::Challenge(c)) => {
                    let c: WithKeyNonce<EkChallenge> =
                        serde_json::from_slice(&c).expect("challenge");
                    let state = state.take().expect("one challenge");
                    let ak = state.ak().clone();
                    let response = state.answer(tpm, &c.challenge).expect("answer");
                    let attempt = Attempt {
                        ak: Some(ak),
                        nonce: c.key_nonce.expect("the server sends a key nonce"),
                        serial: String::new(),
                        csr: csr.clone(),
                    };
                    let proofs = forge.take().expect("one challenge")(&attempt);
                    let answer = WithKeyCertify {
                        response,
                        key_certify: proofs.key_certify,
                        pcr_quote: proofs.pcr_quote,
                    };
                    let msg = pb::AttestRequest {
                        step: Some(pb::attest_request::Step::ChallengeResponse(
                            serde_json::to_vec(&answer).expect("answer"),
                        )),
                    };
                    tx.send(msg).await.expect("send");
                }
                Some(pb::attest_response::Step::Result(r)) => return Ok(r.svid_chain),
                None => panic!("stream ended without a verdict"),
            }
        }
    })
}

/// Renews with the SVID `chain` (key `key`) for the new key `new_key`, sending the
/// proofs `forge` makes.
pub fn renew(
    server: &Server,
    tpm: &Arc<Tpm>,
    chain: &[Vec<u8>],
    key: &KeyBlob,
    new_key: &KeyBlob,
    forge: impl FnOnce(&Attempt) -> Proofs,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let roots = roots(server);
    let current: Arc<dyn Key> =
        Arc::new(TpmKey::from_blob(tpm.clone(), key.clone()).expect("SVID key"));
    let next: Arc<dyn Key> =
        Arc::new(TpmKey::from_blob(tpm.clone(), new_key.clone()).expect("new key"));
    let csr = tessera_core::x509::build_csr(&next).expect("CSR");
    let serial = tessera_core::x509::cert_info(&chain[0])
        .expect("SVID")
        .serial_hex;
    let proofs = forge(&Attempt {
        ak: None,
        nonce: serial.as_bytes().to_vec(),
        serial,
        csr: csr.clone(),
    });
    let key_certify = proofs.key_certify.map(|c| pb::TpmKeyCertify {
        public: c.public,
        attest: c.attest,
        signature: c.signature,
    });
    let pcr_quote = proofs.pcr_quote.map(|q| pb::PcrQuote {
        pcrs: q.pcrs.iter().map(|&i| u32::from(i)).collect(),
        values: q.values,
        attest: q.attest,
        signature: q.signature,
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let resp =
            crate::faults::node_client(&server.address(), roots, Some((chain.to_vec(), current)))
                .renew_agent(pb::RenewAgentRequest {
                    csr,
                    key_certify,
                    pcr_quote,
                })
                .await?;
        Ok(resp.into_inner().svid_chain)
    })
}
