//! TPM2_PCR_Read and TPM2_Quote made by swtpm, checked by the verifier half: a
//! quote verifies with the AK, its PCR values hash to its digest, and a PCR
//! extended with tpm2_pcrextend changes the values read and quoted; a quote over
//! another nonce, one made by another TPM's AK, and values that are not the quoted
//! ones are refused.

use std::process::Command;

use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::quote::{
    PcrQuote, QuoteError, attestation_qualifying_data, verify_quote,
};

use crate::common::{Sim, Which};

const PCRS: [u8; 3] = [0, 7, 16];

fn quote(sim: &Sim, ak: &tessera_tpm::KeyBlob, q: &[u8]) -> PcrQuote {
    let tpm = sim.tpm();
    tpm.with(|d| {
        let values = d.pcr_read(&PCRS)?;
        let out = d.quote(ak, &PCRS, q)?;
        Ok(PcrQuote {
            pcrs: PCRS.to_vec(),
            values,
            attest: out.attest,
            signature: out.signature,
        })
    })
    .unwrap()
}

fn quotes_verify_and_follow_an_extended_pcr() {
    let a = Sim::start(Which::A);
    let b = Sim::start(Which::B);
    let ak = {
        let tpm = a.tpm();
        tpm.with(|d| d.create_key(&AkKind::EccP256.template()))
            .unwrap()
    };
    let q = attestation_qualifying_data(b"nonce", b"csr");
    let first = quote(&a, &ak, &q);
    assert!(first.values.iter().all(|v| v.len() == 32));
    verify_quote(&ak.public, &first, &q).unwrap();

    // A wrong nonce, values that are not the quoted ones, another selection.
    let other_q = attestation_qualifying_data(b"other nonce", b"csr");
    assert_eq!(
        verify_quote(&ak.public, &first, &other_q),
        Err(QuoteError::WrongNonce)
    );
    let mut lying = first.clone();
    lying.values[2][0] ^= 1;
    assert_eq!(
        verify_quote(&ak.public, &lying, &q),
        Err(QuoteError::Digest)
    );
    let mut fewer = first.clone();
    fewer.pcrs.pop();
    fewer.values.pop();
    assert_eq!(
        verify_quote(&ak.public, &fewer, &q),
        Err(QuoteError::Selection)
    );

    // Another TPM's quote, checked against this agent's AK.
    let ak_b = b
        .tpm()
        .with(|d| d.create_key(&AkKind::EccP256.template()))
        .unwrap();
    let foreign = quote(&b, &ak_b, &q);
    assert!(matches!(
        verify_quote(&ak.public, &foreign, &q),
        Err(QuoteError::Signature(_))
    ));

    // Extend PCR 16 with tpm2-tools: the values read and quoted follow.
    // (No connection of ours is open: each `quote` opened and dropped its own.)
    let out = Command::new("tpm2_pcrextend")
        .arg(format!("16:sha256={}", "ab".repeat(32)))
        .env("TPM2TOOLS_TCTI", &a.env["TPM2TOOLS_TCTI"])
        .output()
        .expect("tpm2_pcrextend (tpm2-tools) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = quote(&a, &ak, &q);
    verify_quote(&ak.public, &second, &q).unwrap();
    assert_eq!(second.values[..2], first.values[..2]);
    assert_ne!(second.values[2], first.values[2]);
    // The old values no longer hash to what the TPM quotes now.
    let stale = PcrQuote {
        values: first.values.clone(),
        ..second
    };
    assert_eq!(
        verify_quote(&ak.public, &stale, &q),
        Err(QuoteError::Digest)
    );
}

crate::common::per_backend!(quotes_verify_and_follow_an_extended_pcr);
