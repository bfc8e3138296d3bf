//! Measured boot on swtpm: a `tpm_ek` agent with `[measured_boot] pcrs` sends a
//! TPM2_Quote with its attestation and each renewal; the server holds it to a PCR
//! allow-list, gives the node `tpm:pcr:<index>:<sha256>` selectors, and when the
//! PCR is extended (tpm2_pcrextend) refuses the next renewal with the reason, shown
//! by `agent list`; adding the new value to the list (re-read on change) lets the
//! agent renew again, with its selector following the PCR. Hand-made agents on both
//! backends: a quote over a wrong nonce, one by another TPM's AK, values that are
//! not the quoted ones and a missing quote are each refused with their reason and
//! nothing issued. Without an allow-list, a renewal that leaves its quote out leaves
//! the node no PCR selector.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::key::KeyType;
use tessera_swtpm_tests::tpm_agent::{self, Proofs};
use tessera_swtpm_tests::{Agent, Server, Swtpm, test_dir, wait_until};
use tessera_tpm::attestation::key_proof::quote_pcrs;
use tessera_tpm::device::signing_key_template;
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::quote::{attestation_qualifying_data, renewal_qualifying_data};
use tessera_tpm::wire::hex;
use tessera_tpm::{Backend, Tpm};

const PCR: u8 = 16;

fn pcr16(tpm: &Swtpm) -> String {
    let t = Tpm::open(&tpm.tcti.parse().unwrap()).unwrap();
    hex(&t.with(|d| d.pcr_read(&[PCR])).unwrap()[0])
}

fn extend(tpm: &Swtpm) {
    let out = Command::new("tpm2_pcrextend")
        .arg(format!("{PCR}:sha256={}", "ab".repeat(32)))
        .env("TPM2TOOLS_TCTI", &tpm.tcti)
        .output()
        .expect("tpm2_pcrextend (tpm2-tools) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn server(dir: &Path, tpm: &Swtpm, allow: &Path, extra: &str) -> Server {
    Server::start(
        dir,
        &format!(
            "{extra}[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\npcr_allow_list = {:?}\n",
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string(),
            allow.display().to_string(),
        ),
    )
}

fn agents(server: &Server) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn an_extended_pcr_costs_the_agent_its_renewal_until_the_list_allows_it() {
    let dir = test_dir("tpm-measured-boot");
    let tpm = Swtpm::start(&dir.path().join("tpm-a"));
    let before = pcr16(&tpm);
    let allow = dir.path().join("pcr-allow.txt");
    std::fs::write(&allow, format!("# PCR 16 at boot\n{PCR} {before}\n")).unwrap();
    let server = server(
        &dir.path().join("server"),
        &tpm,
        &allow,
        "agent_svid_ttl = \"20s\"\n",
    );
    let mut agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        None,
        &format!(
            "[key_manager]\ntype = \"tpm\"\n[measured_boot]\npcrs = [{PCR}]\n[node_attestor.tpm_ek]\ntcti = \"{}\"\nek = \"rsa-2048\"\n",
            tpm.tcti
        ),
    );
    let a = &agents(&server)[0];
    assert_eq!(a["measured_boot"], "ok", "{a}");
    let selector = format!("tpm:pcr:{PCR}:{before}");
    assert!(
        a["selectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| *s == *selector),
        "{a}"
    );
    let show = server.cli_ok(&["agent", "show", "--spiffe-id", &agent.spiffe_id()]);
    assert!(show.contains("Measured boot     : ok"), "{show}");

    // Renewals carry a quote that matches.
    let first = a["x509_svid_serial"].as_str().unwrap().to_owned();
    assert!(
        wait_until(Duration::from_secs(45), || {
            agents(&server)[0]["x509_svid_serial"].as_str() != Some(first.as_str())
        }),
        "no renewal:\n{}",
        server.log()
    );

    // The measured state changes (the simulator has one client at a time: the
    // agent steps away while tpm2-tools extends the PCR, then resumes).
    agent.stop();
    extend(&tpm);
    let after = pcr16(&tpm);
    assert_ne!(after, before);
    agent.spawn(None);
    let refused = wait_until(Duration::from_secs(60), || {
        agents(&server)[0]["measured_boot"]
            .as_str()
            .is_some_and(|s| s.starts_with("refused: "))
    });
    let a = &agents(&server)[0];
    assert!(refused, "renewal not refused: {a}\n{}", server.log());
    assert_eq!(
        a["measured_boot"],
        format!(
            "refused: PCR {PCR} is {after}, which is not on the allow-list (node_attestors.tpm_ek.pcr_allow_list)"
        )
    );
    assert!(
        server
            .log()
            .contains("agent SVID renewal refused: measured boot: PCR 16"),
        "{}",
        server.log()
    );
    let show = server.cli_ok(&["agent", "show", "--spiffe-id", &agent.spiffe_id()]);
    assert!(
        show.contains("Measured boot     : refused: PCR 16 is"),
        "{show}"
    );
    let refused_serial = a["x509_svid_serial"].as_str().unwrap().to_owned();

    // The operator allows the new value: the list is re-read, the agent renews,
    // and its selector follows the PCR.
    std::fs::write(&allow, format!("{PCR} {before}\n{PCR} {after}\n")).unwrap();
    let back = wait_until(Duration::from_secs(90), || {
        let a = &agents(&server)[0];
        a["measured_boot"] == "ok" && a["x509_svid_serial"].as_str() != Some(&refused_serial)
    });
    let a = &agents(&server)[0];
    assert!(
        back,
        "no renewal after the list changed: {a}\n{}",
        server.log()
    );
    let selectors: Vec<&str> = a["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        selectors.contains(&format!("tpm:pcr:{PCR}:{after}").as_str()),
        "{a}"
    );
    assert!(!selectors.contains(&selector.as_str()), "{a}");
    agent.stop();
}

fn refused<T: std::fmt::Debug>(case: &str, result: Result<T, tonic::Status>, reason: &str) {
    let status = result.expect_err(&format!("{case}: accepted"));
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{case}: {status:?}"
    );
    assert!(
        status.message().contains("measured boot: ")
            && status.message().contains(reason)
            && status.message().contains("no SVID issued"),
        "{case}: refused for another reason: {}",
        status.message()
    );
}

fn forged_quotes(backend: Backend) {
    let dir = test_dir(&format!("tpm-quote-forgery-{backend}"));
    let a = Swtpm::start(&dir.path().join("tpm-a"));
    let b = Swtpm::start(&dir.path().join("tpm-b"));
    let allow = dir.path().join("pcr-allow.txt");
    std::fs::write(&allow, format!("{PCR} {}\n", pcr16(&a))).unwrap();
    let server = server(&dir.path().join("server"), &a, &allow, "");
    let ta = Arc::new(Tpm::open_with(backend, &a.tcti.parse().unwrap()).unwrap());
    let tb = Arc::new(Tpm::open_with(backend, &b.tcti.parse().unwrap()).unwrap());
    let key = ta
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    let quote =
        |t: &Tpm, ak: &tessera_tpm::KeyBlob, q: &[u8]| quote_pcrs(t, ak, &[PCR], q).unwrap();
    let with_quote = |q| Proofs {
        key_certify: None,
        pcr_quote: Some(q),
    };

    refused(
        "no quote",
        tpm_agent::attest(&server, &ta, &key, |_| Proofs::default()),
        "the agent sent no PCR quote, and node_attestors.tpm_ek.pcr_allow_list requires one",
    );
    refused(
        "quote over a wrong nonce",
        tpm_agent::attest(&server, &ta, &key, |at| {
            let wrong = attestation_qualifying_data(b"not the server's nonce", &at.csr);
            with_quote(quote(&ta, at.ak.as_ref().unwrap(), &wrong))
        }),
        "the PCR quote's qualifying data is not this request's (wrong nonce, or replayed)",
    );
    refused(
        "quote by another TPM",
        tpm_agent::attest(&server, &ta, &key, |at| {
            let ak_b = tb
                .with(|d| d.create_key(&AkKind::EccP256.template()))
                .unwrap();
            let q = attestation_qualifying_data(&at.nonce, &at.csr);
            with_quote(quote(&tb, &ak_b, &q))
        }),
        "the PCR quote is not signed by this agent's attested AK",
    );
    refused(
        "values that are not the quoted ones",
        tpm_agent::attest(&server, &ta, &key, |at| {
            let q = attestation_qualifying_data(&at.nonce, &at.csr);
            let mut pq = quote(&ta, at.ak.as_ref().unwrap(), &q);
            pq.values[0][0] ^= 1;
            with_quote(pq)
        }),
        "the PCR values sent do not hash to the quoted PCR digest",
    );
    refused(
        "a PCR the selection cannot name (index 99) beside the quoted one",
        tpm_agent::attest(&server, &ta, &key, |at| {
            let q = attestation_qualifying_data(&at.nonce, &at.csr);
            let mut pq = quote(&ta, at.ak.as_ref().unwrap(), &q);
            pq.pcrs.push(99);
            pq.values.push(pq.values[0].clone());
            with_quote(pq)
        }),
        "the PCR quote covers other PCRs than the values sent",
    );
    refused(
        "more values than PCRs",
        tpm_agent::attest(&server, &ta, &key, |at| {
            let q = attestation_qualifying_data(&at.nonce, &at.csr);
            let mut pq = quote(&ta, at.ak.as_ref().unwrap(), &q);
            pq.values.push(pq.values[0].clone());
            with_quote(pq)
        }),
        "the PCR quote covers other PCRs than the values sent",
    );
    assert!(agents(&server).is_empty(), "a refused agent was recorded");

    // The genuine quote.
    let mut kept = None;
    let chain = tpm_agent::attest(&server, &ta, &key, |at| {
        let ak = at.ak.clone().unwrap();
        let q = attestation_qualifying_data(&at.nonce, &at.csr);
        kept = Some(ak.clone());
        with_quote(quote(&ta, &ak, &q))
    })
    .expect("the genuine agent attests");
    let ak = kept.unwrap();
    assert_eq!(agents(&server)[0]["measured_boot"], "ok");

    // At renewal: a quote bound to another renewal is refused, nothing issued.
    let key2 = ta
        .with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
        .unwrap();
    let serial = agents(&server)[0]["x509_svid_serial"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(
        "renewal quote over another serial",
        tpm_agent::renew(&server, &ta, &chain, &key, &key2, |at| {
            with_quote(quote(&ta, &ak, &renewal_qualifying_data("00", &at.csr)))
        }),
        "wrong nonce, or replayed",
    );
    assert_eq!(
        agents(&server)[0]["x509_svid_serial"].as_str(),
        Some(serial.as_str())
    );
    tpm_agent::renew(&server, &ta, &chain, &key, &key2, |at| {
        with_quote(quote(
            &ta,
            &ak,
            &renewal_qualifying_data(&at.serial, &at.csr),
        ))
    })
    .expect("a renewal with a proper quote");
}

#[test]
fn forged_quotes_are_refused_with_a_reason_and_nothing_issued_esapi() {
    forged_quotes(Backend::Esapi);
}

#[test]
fn forged_quotes_are_refused_with_a_reason_and_nothing_issued_native() {
    forged_quotes(Backend::Native);
}

fn pcr_selectors(server: &Server) -> Vec<String> {
    agents(server)[0]["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .filter(|s| s.starts_with("tpm:pcr:"))
        .map(str::to_owned)
        .collect()
}

/// Without an allow-list, the PCR selectors are what the last renewal's quote
/// showed: an agent whose PCR changed cannot keep the old selector (and the entries
/// that depend on it) by leaving the quote out of its renewal.
#[test]
fn a_renewal_without_a_quote_drops_the_pcr_selectors() {
    let dir = test_dir("tpm-quote-dropped");
    let a = Swtpm::start(&dir.path().join("tpm-a"));
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            a.ek_ca_root.display().to_string(),
            a.ek_ca_intermediate.display().to_string(),
        ),
    );
    let ta = Arc::new(Tpm::open_with(Backend::Native, &a.tcti.parse().unwrap()).unwrap());
    let new_key = || {
        ta.with(|d| d.create_key(&signing_key_template(KeyType::EcP256)))
            .unwrap()
    };
    let key = new_key();
    let mut kept = None;
    let chain = tpm_agent::attest(&server, &ta, &key, |at| {
        let ak = at.ak.clone().unwrap();
        let q = attestation_qualifying_data(&at.nonce, &at.csr);
        let quote = quote_pcrs(&ta, &ak, &[PCR], &q).unwrap();
        kept = Some(ak);
        Proofs {
            key_certify: None,
            pcr_quote: Some(quote),
        }
    })
    .expect("the agent attests with its quote");
    let ak = kept.unwrap();
    // Read through the same connection: the simulator serves one client at a time.
    let value = hex(&ta.with(|d| d.pcr_read(&[PCR])).unwrap()[0]);
    let before = format!("tpm:pcr:{PCR}:{value}");
    assert_eq!(pcr_selectors(&server), std::slice::from_ref(&before));

    // A renewal with a quote keeps the selector up to date.
    let key2 = new_key();
    let chain2 = tpm_agent::renew(&server, &ta, &chain, &key, &key2, |at| Proofs {
        key_certify: None,
        pcr_quote: Some(
            quote_pcrs(
                &ta,
                &ak,
                &[PCR],
                &renewal_qualifying_data(&at.serial, &at.csr),
            )
            .unwrap(),
        ),
    })
    .expect("a renewal with a quote");
    assert_eq!(pcr_selectors(&server), [before]);

    // The agent renews without a quote (as one whose PCR moved on would, to keep
    // the old value's selector): no PCR selector is left.
    let key3 = new_key();
    tpm_agent::renew(&server, &ta, &chain2, &key2, &key3, |_| Proofs::default())
        .expect("without an allow-list a renewal needs no quote");
    assert_eq!(
        pcr_selectors(&server),
        Vec::<String>::new(),
        "the PCR selector of an unproven measured state stayed"
    );
}
