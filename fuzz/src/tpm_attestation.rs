//! `tpm_attestation`: `tpm_devid` and `tpm_ek` attestation as the server runs
//! it (`tessera_server::attestor::challenge` over the `tessera_tpm`
//! verifiers), with the fuzzer's bytes as the agent's messages. The first byte
//! picks the attestor; the rest is the payload (JSON), then, after a 0xff byte
//! (which JSON text never holds), the answer to the challenge.
//!
//! The verifiers trust the fabricated TPM of [`crate::fixtures`]: its EK CA, its
//! DevID vendor CA, and by allow-list one other EK. Checked:
//!
//! - A payload that is not the attestor's JSON is refused as malformed.
//! - A payload the server answers with a challenge is one it should: every
//!   check is made again here, without the verifier (certificate signatures
//!   with x509-parser against the fixture CAs, key comparisons, the Certify
//!   signature with ring), and must hold.
//! - No answer the fuzzer writes attests: the challenge seals a fresh random
//!   secret, so a made-up answer must be refused.

use tessera_server::attestor::challenge::ChallengeAttestor;
use tessera_server::attestor::{AttestError, NodeAttestor, Step};
use tessera_tpm::attestation::public_matches_spki;
use tessera_tpm::attestation::tpm_devid::DevIdPayload;
use tessera_tpm::attestation::tpm_ek::{EkPayload, ek_pub_hash};
use tessera_tpm::wire::{Attest, Attested, PublicArea};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fixtures::{self, block_on};

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = crate::split_mode(data) else {
        return;
    };
    let (payload, answer) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if mode & 1 == 0 {
        devid(payload, answer);
    } else {
        ek(payload, answer);
    }
}

fn attestors() -> &'static (
    ChallengeAttestor<tessera_tpm::attestation::tpm_devid::DevIdVerifier>,
    ChallengeAttestor<tessera_tpm::attestation::tpm_ek::EkVerifier>,
) {
    static ATTESTORS: std::sync::OnceLock<(
        ChallengeAttestor<tessera_tpm::attestation::tpm_devid::DevIdVerifier>,
        ChallengeAttestor<tessera_tpm::attestation::tpm_ek::EkVerifier>,
    )> = std::sync::OnceLock::new();
    ATTESTORS.get_or_init(|| {
        let tpm = fixtures::tpm();
        (
            ChallengeAttestor::with_verifier(tpm.devid_verifier()),
            ChallengeAttestor::with_verifier(tpm.ek_verifier()),
        )
    })
}

/// Runs one attestation: the payload, then the answer if the server challenged.
fn attest(attestor: &dyn NodeAttestor, payload: &[u8], answer: Option<&[u8]>) -> bool {
    block_on(async {
        let mut session = attestor.session();
        match session.step(payload.to_vec()).await {
            Ok(Step::Challenge(_)) => {}
            Ok(Step::Attested(a)) => panic!("attested without a challenge: {a:?}"),
            Err(_) => return false,
        }
        let answer = answer.unwrap_or_default().to_vec();
        match session.step(answer).await {
            Ok(step) => panic!("a made-up answer attested: {step:?}"),
            Err(AttestError::Refused(_) | AttestError::Malformed(_)) => {}
            Err(other) => panic!("a made-up answer failed as the server's fault: {other}"),
        }
        true
    })
}

/// Whether `cert` (DER) is signed by the CA certificate `ca` (DER).
fn signed_by(cert: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(ca),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn spki(cert: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(cert).expect("a certificate the server accepted");
    cert.public_key().raw.to_vec()
}

fn devid(payload: &[u8], answer: Option<&[u8]>) {
    let parsed = serde_json::from_slice::<DevIdPayload>(payload);
    if !attest(&attestors().0, payload, answer) {
        return;
    }
    let p = parsed.expect("the server challenged a payload that is not tpm_devid JSON");
    let tpm = fixtures::tpm();
    let leaf = p
        .devid_chain
        .first()
        .expect("an empty DevID chain was accepted");
    assert!(
        signed_by(leaf, &tpm.vendor_ca)
            || p.devid_chain[1..]
                .iter()
                .any(|mid| signed_by(leaf, mid) && signed_by(mid, &tpm.vendor_ca)),
        "a DevID certificate the vendor CA did not issue was accepted"
    );
    let devid_public = PublicArea::parse(&p.devid_public).expect("accepted DevID public area");
    assert!(public_matches_spki(&devid_public, &spki(leaf)));
    let ek_cert = p
        .ek_certificate
        .as_deref()
        .expect("tpm_devid accepted an EK without certificate");
    assert!(
        signed_by(ek_cert, &tpm.ek_ca),
        "an EK certificate the EK CA did not issue was accepted"
    );
    let ek_public = PublicArea::parse(&p.ek_public).expect("accepted EK public area");
    assert!(public_matches_spki(&ek_public, &spki(ek_cert)));
    let ak_public = PublicArea::parse(&p.ak_public).expect("accepted AK public area");
    let attest = Attest::parse(&p.certify_info).expect("accepted certify_info");
    assert!(
        matches!(&attest.attested, Attested::Certify { name, .. } if *name == devid_public.name()),
        "a Certify of another key was accepted"
    );
    let sig = tessera_tpm::wire::Signature::parse(&p.certify_signature)
        .expect("accepted certify signature");
    tessera_tpm::verifier::signature::verify_signature(&ak_public, &p.certify_info, &sig)
        .expect("accepted certify signature does not verify");
}

fn ek(payload: &[u8], answer: Option<&[u8]>) {
    let parsed = serde_json::from_slice::<EkPayload>(payload);
    if !attest(&attestors().1, payload, answer) {
        return;
    }
    let p = parsed.expect("the server challenged a payload that is not tpm_ek JSON");
    let tpm = fixtures::tpm();
    let ek_public = PublicArea::parse(&p.ek_public).expect("accepted EK public area");
    let by_certificate = p.ek_certificate.as_deref().is_some_and(|cert| {
        signed_by(cert, &tpm.ek_ca) && public_matches_spki(&ek_public, &spki(cert))
    });
    let allowed = ek_pub_hash(&ek_public).expect("accepted EK hash")
        == ek_pub_hash(&tpm.allow_listed_ek.public).expect("fixture EK hash");
    assert!(
        by_certificate || allowed,
        "an EK neither certified nor allow-listed was accepted"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture payloads reach the challenge, so the target's checks of an
    /// accepted payload run on real inputs; a tampered one does not.
    #[test]
    fn fixture_payloads_are_challenged_and_tampered_ones_refused() {
        let tpm = fixtures::tpm();
        let json = |v: &dyn erased_json::Json| v.json();
        assert!(attest(&attestors().0, &json(&tpm.devid_payload()), None));
        assert!(attest(&attestors().1, &json(&tpm.ek_payload()), None));
        assert!(attest(
            &attestors().1,
            &json(&tpm.allow_listed_payload()),
            None
        ));
        let mut p = tpm.devid_payload();
        p.certify_info[40] ^= 1;
        assert!(!attest(&attestors().0, &json(&p), None));
        let mut p = tpm.ek_payload();
        p.ek_certificate = None;
        assert!(!attest(&attestors().1, &json(&p), None));
        assert!(!attest(&attestors().1, b"{", None));
    }

    mod erased_json {
        pub(super) trait Json {
            fn json(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> Vec<u8> {
                serde_json::to_vec(self).unwrap()
            }
        }
    }
}
