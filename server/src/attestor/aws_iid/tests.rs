//! `aws_iid` against a real document and signature that AWS issued (published as a
//! test vector), verified with AWS's shipped certificate for its region, and against
//! every way to tamper with them.

use std::sync::Arc;

use tessera_core::clock::ManualClock;

use super::*;
use crate::attestor::NodeAttestor;

/// A real instance identity document (ap-southeast-2), exactly as served.
const REAL_DOCUMENT: &str = r#"{
  "accountId" : "189292791360",
  "architecture" : "arm64",
  "availabilityZone" : "ap-southeast-2a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0cbde744623b7506b",
  "instanceId" : "i-0c5541936caf78c12",
  "instanceType" : "t4g.small",
  "kernelId" : null,
  "pendingTime" : "2026-02-16T00:38:27Z",
  "privateIp" : "10.0.1.242",
  "ramdiskId" : null,
  "region" : "ap-southeast-2",
  "version" : "2017-09-30"
}"#;

/// Its `rsa2048` signature, as served (BER, indefinite lengths).
const REAL_RSA2048: &str = "\
MIAGCSqGSIb3DQEHAqCAMIACAQExDTALBglghkgBZQMEAgEwgAYJKoZIhvcNAQcBoIAkgASCAeR7
CiAgImFjY291bnRJZCIgOiAiMTg5MjkyNzkxMzYwIiwKICAiYXJjaGl0ZWN0dXJlIiA6ICJhcm02
NCIsCiAgImF2YWlsYWJpbGl0eVpvbmUiIDogImFwLXNvdXRoZWFzdC0yYSIsCiAgImJpbGxpbmdQ
cm9kdWN0cyIgOiBudWxsLAogICJkZXZwYXlQcm9kdWN0Q29kZXMiIDogbnVsbCwKICAibWFya2V0
cGxhY2VQcm9kdWN0Q29kZXMiIDogbnVsbCwKICAiaW1hZ2VJZCIgOiAiYW1pLTBjYmRlNzQ0NjIz
Yjc1MDZiIiwKICAiaW5zdGFuY2VJZCIgOiAiaS0wYzU1NDE5MzZjYWY3OGMxMiIsCiAgImluc3Rh
bmNlVHlwZSIgOiAidDRnLnNtYWxsIiwKICAia2VybmVsSWQiIDogbnVsbCwKICAicGVuZGluZ1Rp
bWUiIDogIjIwMjYtMDItMTZUMDA6Mzg6MjdaIiwKICAicHJpdmF0ZUlwIiA6ICIxMC4wLjEuMjQy
IiwKICAicmFtZGlza0lkIiA6IG51bGwsCiAgInJlZ2lvbiIgOiAiYXAtc291dGhlYXN0LTIiLAog
ICJ2ZXJzaW9uIiA6ICIyMDE3LTA5LTMwIgp9AAAAAAAAMYICKzCCAicCAQEwaTBcMQswCQYDVQQG
EwJVUzEZMBcGA1UECBMQV2FzaGluZ3RvbiBTdGF0ZTEQMA4GA1UEBxMHU2VhdHRsZTEgMB4GA1UE
ChMXQW1hem9uIFdlYiBTZXJ2aWNlcyBMTEMCCQC9mzoG/navazALBglghkgBZQMEAgGggZYwGAYJ
KoZIhvcNAQkDMQsGCSqGSIb3DQEHATAcBgkqhkiG9w0BCQUxDxcNMjYwMjE2MDAzODI4WjArBgkq
hkiG9w0BCTQxHjAcMAsGCWCGSAFlAwQCAaENBgkqhkiG9w0BAQsFADAvBgkqhkiG9w0BCQQxIgQg
JuBakWdgxV8tjlul+DIT6i+w6b8/C55oWPvN4ZjsikQwDQYJKoZIhvcNAQELBQAEggEAKb9EHZze
cWagTKFctn6wj09JvLDpRx9nxBqT62WIh8lXYERWxCuL9Q6PcTnyaVgydldyZ+R2LSdb6+J7341l
LmKJpwwQCX/YuSlYWEKaQkliG6LSEFBg3sTmQeM4LhZAAiAlZ3U2OekfVqvCuzNRFcqfKbTPzUJU
q07M76Si2G8JcJW8OBYmzNsJYbeDVnhp3L6uet6zHWzlSA1U0Q3MNs8gmt9HWGzW9sDOaj5ZOkK7
WzMXqkdbCuFkesa6EaV2nRtD+Xm2LipxGbOwlmBPumg0WGcgDuPUc62A5DewgctliURC6qzhTLnS
AKOTPvMq3Nro7tmuvFahEjsAdcWoBQAAAAAAAA==";

/// 2026-02-16T01:00:00Z, twenty minutes after the instance started.
const SOON_AFTER: u64 = 1_771_203_600;

fn config() -> AwsIidConfig {
    AwsIidConfig {
        account_ids: vec!["189292791360".into()],
        max_document_age: None,
        allow_reattestation: false,
        builtin_certificates: true,
        region_certificates: BTreeMap::new(),
        agent_path_template: None,
    }
}

fn payload(document: &str, rsa2048: &str) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        document: document.to_owned(),
        signature: String::new(),
        rsa2048: rsa2048.to_owned(),
    })
    .unwrap()
}

async fn attest(cfg: &AwsIidConfig, input: Vec<u8>) -> Result<Attested, AttestError> {
    let a = AwsIid::from_config(cfg, ManualClock::at_unix(SOON_AFTER)).unwrap();
    match a.session().step(input).await? {
        crate::attestor::Step::Attested(done) => Ok(done),
        crate::attestor::Step::Challenge(_) => panic!("aws_iid has no challenge"),
    }
}

fn refusal(r: Result<Attested, AttestError>) -> String {
    match r {
        Err(AttestError::Refused(m)) => m,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_real_aws_document_verifies_with_the_shipped_certificate() {
    let done = attest(&config(), payload(REAL_DOCUMENT, REAL_RSA2048))
        .await
        .unwrap();
    assert_eq!(
        done.agent_path,
        "aws_iid/189292791360/ap-southeast-2/i-0c5541936caf78c12"
    );
    let sel: Vec<String> = done.selectors.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        sel,
        [
            "aws_iid:account_id:189292791360",
            "aws_iid:region:ap-southeast-2",
            "aws_iid:az:ap-southeast-2a",
            "aws_iid:image:id:ami-0cbde744623b7506b",
            "aws_iid:instance:id:i-0c5541936caf78c12",
            "aws_iid:instance:type:t4g.small",
        ]
    );
    assert!(!done.can_reattest);
}

#[tokio::test]
async fn a_modified_document_is_refused() {
    let forged = REAL_DOCUMENT.replace("189292791360", "111111111111");
    let mut cfg = config();
    cfg.account_ids.push("111111111111".into());
    let m = refusal(attest(&cfg, payload(&forged, REAL_RSA2048)).await);
    assert!(m.contains("not the one its signature covers"), "{m}");
    // Even one byte of whitespace.
    let m = refusal(attest(&cfg, payload(&format!("{REAL_DOCUMENT}\n"), REAL_RSA2048)).await);
    assert!(m.contains("not the one its signature covers"), "{m}");
}

/// The signature with one bit flipped at `offset` from its end.
fn flipped(offset: usize) -> String {
    use base64::engine::general_purpose::STANDARD;
    let compact: String = REAL_RSA2048.split_whitespace().collect();
    let mut der = STANDARD.decode(compact).unwrap();
    let i = der.len() - offset;
    der[i] ^= 1;
    STANDARD.encode(der)
}

#[tokio::test]
async fn a_tampered_signature_or_embedded_content_is_refused() {
    // The RSA signature value ends 9 bytes before the end (the end-of-contents octets).
    let m = refusal(attest(&config(), payload(REAL_DOCUMENT, &flipped(20))).await);
    assert!(
        m.contains("does not verify with the region's certificate"),
        "{m}"
    );
    // A byte of the embedded document (its digest no longer matches).
    let compact: String = REAL_RSA2048.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .unwrap();
    let at = der.windows(9).position(|w| w == b"accountId").unwrap();
    let m = refusal(attest(&config(), payload(REAL_DOCUMENT, &flipped(der.len() - at))).await);
    assert!(m.contains("does not match its signed digest"), "{m}");
}

#[tokio::test]
async fn a_signer_the_server_does_not_trust_for_the_region_is_refused() {
    // The operator replaced ap-southeast-2's certificate: AWS's signature no longer
    // counts for that region.
    let dir = tempfile::tempdir().unwrap();
    let key: Arc<dyn tessera_core::key::Key> = Arc::new(
        tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::Rsa2048).unwrap(),
    );
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&tessera_core::key::RcgenKey::new(key).unwrap())
        .unwrap();
    let path = dir.path().join("mine.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    let mut cfg = config();
    cfg.region_certificates
        .insert("ap-southeast-2".into(), path.clone());
    let m = refusal(attest(&cfg, payload(REAL_DOCUMENT, REAL_RSA2048)).await);
    assert!(
        m.contains("names a signer other than the region's certificate"),
        "{m}"
    );

    // Only the operator's certificates: the region is unknown.
    let mut cfg = config();
    cfg.builtin_certificates = false;
    cfg.region_certificates.insert("us-east-1".into(), path);
    let m = refusal(attest(&cfg, payload(REAL_DOCUMENT, REAL_RSA2048)).await);
    assert!(
        m.contains("no RSA-2048 certificate for region \"ap-southeast-2\""),
        "{m}"
    );
}

#[tokio::test]
async fn accounts_and_document_age_are_enforced() {
    let mut cfg = config();
    cfg.account_ids = vec!["222222222222".into()];
    let m = refusal(attest(&cfg, payload(REAL_DOCUMENT, REAL_RSA2048)).await);
    assert_eq!(
        m,
        "aws_iid: account 189292791360 is not in node_attestors.aws_iid.account_ids"
    );

    let mut cfg = config();
    cfg.max_document_age = Some(Duration::from_secs(3600));
    attest(&cfg, payload(REAL_DOCUMENT, REAL_RSA2048))
        .await
        .unwrap();
    cfg.max_document_age = Some(Duration::from_secs(600));
    let m = refusal(attest(&cfg, payload(REAL_DOCUMENT, REAL_RSA2048)).await);
    assert!(m.contains("older than max_document_age (600 s)"), "{m}");
}

#[tokio::test]
async fn missing_or_garbled_evidence_says_what_is_wrong() {
    let m = refusal(attest(&config(), payload(REAL_DOCUMENT, "")).await);
    assert!(m.contains("no rsa2048 signature"), "{m}");
    for (input, want) in [
        (b"{".to_vec(), "payload"),
        (
            payload("not json", REAL_RSA2048),
            "instance identity document",
        ),
        (payload(REAL_DOCUMENT, "***"), "not base64"),
        (payload(REAL_DOCUMENT, "AAAA"), "malformed"),
    ] {
        match attest(&config(), input).await {
            Err(AttestError::Malformed(m)) => assert!(m.contains(want), "{want}: {m}"),
            other => panic!("{want}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn templates_and_reattestation_follow_the_settings() {
    let mut cfg = config();
    cfg.agent_path_template = Some("/{{ .PluginName }}/{{ .Region }}/{{ .InstanceType }}".into());
    cfg.allow_reattestation = true;
    let done = attest(&cfg, payload(REAL_DOCUMENT, REAL_RSA2048))
        .await
        .unwrap();
    assert_eq!(done.agent_path, "aws_iid/ap-southeast-2/t4g.small");
    assert!(done.can_reattest);
    for (bad, want) in [
        (
            AwsIidConfig {
                account_ids: vec![],
                ..config()
            },
            "account_ids is empty",
        ),
        (
            AwsIidConfig {
                account_ids: vec!["12".into()],
                ..config()
            },
            "not an AWS account ID",
        ),
        (
            AwsIidConfig {
                agent_path_template: Some("/{{ .Tags }}".into()),
                ..config()
            },
            "unknown field .Tags",
        ),
    ] {
        let e = AwsIid::from_config(&bad, ManualClock::at_unix(SOON_AFTER)).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
}
