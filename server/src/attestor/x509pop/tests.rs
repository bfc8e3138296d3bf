//! `x509pop` with certificates made here: the whole exchange for EC and RSA node
//! keys, and each way it must fail.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, SanType};
use tessera_core::clock::ManualClock;
use tessera_core::key::{Key, KeyType, RcgenKey, SoftwareKey};

use super::*;

const NOW: u64 = 1_800_000_000;

fn key(kt: KeyType) -> Arc<dyn Key> {
    Arc::new(SoftwareKey::generate(kt).unwrap())
}

fn at(offset: i64) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::from_unix_timestamp(NOW as i64 + offset).unwrap()
}

struct Ca {
    der: Vec<u8>,
    params: CertificateParams,
    key: Arc<dyn Key>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = key(KeyType::EcP256);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = at(-86_400);
        params.not_after = at(86_400 * 30);
        let der = params
            .self_signed(&RcgenKey::new(key.clone()).unwrap())
            .unwrap()
            .der()
            .to_vec();
        Self { der, params, key }
    }

    fn sub_ca(&self, name: &str) -> Ca {
        let key = key(KeyType::EcP256);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = at(-86_400);
        params.not_after = at(86_400 * 30);
        let der = self.sign(&params, &key);
        Ca { der, params, key }
    }

    fn sign(&self, params: &CertificateParams, subject: &Arc<dyn Key>) -> Vec<u8> {
        let signer = RcgenKey::new(self.key.clone()).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &signer);
        params
            .signed_by(&RcgenKey::new(subject.clone()).unwrap(), &issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    fn leaf(&self, key: &Arc<dyn Key>, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "node-1.example");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = at(-3600);
        params.not_after = at(86_400);
        params.subject_alt_names = vec![
            SanType::DnsName("node-1.example".try_into().unwrap()),
            SanType::URI("x509pop://example.org/rack/r12".try_into().unwrap()),
            SanType::URI("x509pop://other.org/rack/r99".try_into().unwrap()),
        ];
        params.serial_number = Some(vec![0x01, 0x2a].into());
        edit(&mut params);
        self.sign(&params, key)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    attestor: X509Pop,
}

fn setup(cas: &[&Ca], edit: impl FnOnce(&mut X509PopConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("cas.pem");
    let pem: String = cas
        .iter()
        .map(|c| tessera_core::x509::to_pem("CERTIFICATE", &c.der))
        .collect();
    std::fs::write(&bundle, pem).unwrap();
    let mut cfg = X509PopConfig {
        ca_bundle: vec![bundle],
        intermediates: Vec::new(),
        max_intermediates: 4,
        agent_path_template: None,
    };
    edit(&mut cfg);
    let attestor = X509Pop::from_config(
        &cfg,
        TrustDomain::new("example.org").unwrap(),
        ManualClock::at_unix(NOW),
    )
    .unwrap();
    Setup {
        _dir: dir,
        attestor,
    }
}

fn payload(chain: &[&Vec<u8>]) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        certificates: chain.iter().map(|c| (*c).clone()).collect(),
    })
    .unwrap()
}

/// The agent's half: signs the challenge with `key`.
fn answer(key: &Arc<dyn Key>, challenge: &[u8]) -> Vec<u8> {
    let c: Challenge = serde_json::from_slice(challenge).unwrap();
    let nonce = vec![7u8; NONCE_LEN];
    let signature = key
        .sign(
            scheme_for(key.key_type()),
            &signed_message(&c.nonce, &nonce),
        )
        .unwrap();
    serde_json::to_vec(&Response { nonce, signature }).unwrap()
}

async fn run(s: &Setup, chain: &[&Vec<u8>], key: &Arc<dyn Key>) -> Result<Attested, AttestError> {
    let mut session = s.attestor.session();
    let Step::Challenge(c) = session.step(payload(chain)).await? else {
        panic!("no challenge")
    };
    match session.step(answer(key, &c)).await? {
        Step::Attested(a) => Ok(a),
        Step::Challenge(_) => panic!("a second challenge"),
    }
}

fn refusal(r: Result<Attested, AttestError>) -> String {
    match r {
        Err(AttestError::Refused(m)) => m,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn ec_and_rsa_nodes_prove_their_keys() {
    let root = Ca::new("Node Root");
    let mid = root.sub_ca("Node Issuing");
    let s = setup(&[&root], |_| {});
    for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let k = key(kt);
        let leaf = mid.leaf(&k, |_| {});
        let done = run(&s, &[&leaf, &mid.der], &k).await.unwrap();
        assert_eq!(done.agent_path, format!("x509pop/{}", sha1_hex(&leaf)));
        assert!(done.can_reattest);
        let sel: Vec<String> = done.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            sel,
            [
                "x509pop:subject:cn:node-1.example".to_owned(),
                "x509pop:issuer:cn:Node Issuing".to_owned(),
                format!("x509pop:ca:fingerprint:{}", sha1_hex(&mid.der)),
                format!("x509pop:ca:fingerprint:{}", sha1_hex(&root.der)),
                "x509pop:serialnumber:012a".to_owned(),
                "x509pop:san:rack:r12".to_owned(),
            ],
            "{kt:?}"
        );
    }
}

#[tokio::test]
async fn templates_read_subject_and_san_fields() {
    let root = Ca::new("Node Root");
    let s = setup(&[&root], |c| {
        c.agent_path_template =
            Some("/{{ .PluginName }}/{{ .URISanSelectors.rack }}/{{ .Subject.CommonName }}".into());
    });
    let k = key(KeyType::EcP256);
    let leaf = root.leaf(&k, |_| {});
    let done = run(&s, &[&leaf], &k).await.unwrap();
    assert_eq!(done.agent_path, "x509pop/r12/node-1.example");
    // A certificate without the field is refused, not given a partial ID.
    let leaf = root.leaf(&k, |p| p.subject_alt_names.clear());
    let m = refusal(run(&s, &[&leaf], &k).await);
    assert!(
        m.contains(".URISanSelectors.rack, which this node does not have"),
        "{m}"
    );
}

#[tokio::test]
async fn an_untrusted_chain_is_refused() {
    let root = Ca::new("Node Root");
    let rogue = Ca::new("Node Root");
    let s = setup(&[&root], |_| {});
    let k = key(KeyType::EcP256);
    let leaf = rogue.leaf(&k, |_| {});
    let m = refusal(run(&s, &[&leaf, &rogue.der], &k).await);
    assert!(m.contains("does not chain to a trusted CA"), "{m}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let root = Ca::new("Node Root");
    let s = setup(&[&root], |_| {});
    let k = key(KeyType::EcP256);
    let expired = root.leaf(&k, |p| {
        p.not_before = at(-86_400 * 2);
        p.not_after = at(-60);
    });
    let m = refusal(run(&s, &[&expired], &k).await);
    assert!(m.contains("is expired or not yet valid"), "{m}");
    let early = root.leaf(&k, |p| p.not_before = at(3600));
    let m = refusal(run(&s, &[&early], &k).await);
    assert!(m.contains("is expired or not yet valid"), "{m}");
}

#[tokio::test]
async fn a_signature_over_another_nonce_or_by_another_key_is_refused() {
    let root = Ca::new("Node Root");
    let s = setup(&[&root], |_| {});
    let k = key(KeyType::EcP256);
    let leaf = root.leaf(&k, |_| {});

    // Answer session B's challenge with the signature made for session A's.
    let mut a = s.attestor.session();
    let mut b = s.attestor.session();
    let Step::Challenge(ca) = a.step(payload(&[&leaf])).await.unwrap() else {
        panic!()
    };
    let Step::Challenge(_) = b.step(payload(&[&leaf])).await.unwrap() else {
        panic!()
    };
    let m = refusal(b.step(answer(&k, &ca)).await.map(|_| unreachable()));
    assert!(
        m.contains("does not verify with the certificate's key"),
        "{m}"
    );
    // And the session is spent.
    let e = b.step(answer(&k, &ca)).await.unwrap_err();
    assert!(
        e.to_string().contains("exactly one challenge response"),
        "{e}"
    );

    // Someone else's key, with this node's certificate.
    let other = key(KeyType::EcP256);
    let m = refusal(run(&s, &[&leaf], &other).await);
    assert!(m.contains("does not verify"), "{m}");

    // A short agent nonce.
    let mut c = s.attestor.session();
    c.step(payload(&[&leaf])).await.unwrap();
    let short = serde_json::to_vec(&Response {
        nonce: vec![1; 8],
        signature: vec![0; 64],
    })
    .unwrap();
    let e = c.step(short).await.unwrap_err();
    assert!(e.to_string().contains("8 bytes, not 32"), "{e}");
}

fn unreachable() -> Attested {
    panic!("attested with a signature over another nonce")
}

#[tokio::test]
async fn certificates_not_for_signing_and_long_chains_are_refused() {
    let root = Ca::new("Node Root");
    let s = setup(&[&root], |c| c.max_intermediates = 1);
    let k = key(KeyType::EcP256);
    let no_ku = root.leaf(&k, |p| p.key_usages.clear());
    let m = refusal(run(&s, &[&no_ku], &k).await);
    assert!(m.contains("no key usage digitalSignature"), "{m}");
    let wrong_ku = root.leaf(&k, |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
    });
    let m = refusal(run(&s, &[&wrong_ku], &k).await);
    assert!(m.contains("digital"), "{m}");
    let leaf = root.leaf(&k, |_| {});
    let m = refusal(run(&s, &[&leaf, &root.der, &root.der], &k).await);
    assert!(m.contains("at most 1 are accepted"), "{m}");
    let e = s.attestor.session().step(payload(&[])).await.unwrap_err();
    assert!(e.to_string().contains("no certificate was sent"), "{e}");
}

#[test]
fn settings_are_checked_at_start_up() {
    let td = TrustDomain::new("example.org").unwrap();
    let cfg = |bundle: Vec<PathBuf>, t: Option<&str>| X509PopConfig {
        ca_bundle: bundle,
        intermediates: Vec::new(),
        max_intermediates: 4,
        agent_path_template: t.map(str::to_owned),
    };
    let e = X509Pop::from_config(&cfg(vec![], None), td.clone(), ManualClock::at_unix(NOW))
        .unwrap_err();
    assert!(e.contains("ca_bundle is empty"), "{e}");
    let e = X509Pop::from_config(
        &cfg(vec!["/nonexistent.pem".into()], None),
        td.clone(),
        ManualClock::at_unix(NOW),
    )
    .unwrap_err();
    assert!(e.contains("/nonexistent.pem"), "{e}");
    let root = Ca::new("r");
    let s = setup(&[&root], |_| {});
    drop(s);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ca.pem");
    std::fs::write(&p, tessera_core::x509::to_pem("CERTIFICATE", &root.der)).unwrap();
    let e = X509Pop::from_config(
        &cfg(vec![p], Some("/{{ .Subject.Email }}")),
        td,
        ManualClock::at_unix(NOW),
    )
    .unwrap_err();
    assert!(e.contains("unknown field .Subject.Email"), "{e}");
    let _ = Duration::from_secs(0);
}
