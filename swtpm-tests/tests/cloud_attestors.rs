//! Cloud and certificate node attestation end to end: `aws_iid`, `gcp_iit` and
//! `azure_msi` agents run inside a network namespace whose 169.254.169.254 (and
//! `metadata.google.internal`) is a fake of the provider's metadata service, in the
//! provider's formats, signed by test keys the server is configured to trust;
//! `x509pop` agents hold their key in a file, in swtpm, or in SoftHSM2. Each kind of
//! node serves a py-spiffe workload its SVID, and each refusal the issue lists comes
//! with its reason, in the agent's and the server's logs, and no agent record.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, PublicKeyData, SanType,
};
use tessera_core::attestation::x509pop;
use tessera_core::key::{Key, KeyType, RcgenKey, SoftwareKey};
use tessera_swtpm_tests::cloud::http::{HttpServer, Reply};
use tessera_swtpm_tests::cloud::pki::{DocumentSigner, TlsIdentity, TokenSigner, jwks};
use tessera_swtpm_tests::cloud::{
    Netns, agent_count, agent_in, assert_refused, attest_raw, aws, azure, entries, gcp,
    selectors_of, server_for, start_in, workload_id,
};
use tessera_swtpm_tests::{Agent, Server, SoftHsm, Swtpm, bin, run_ok, test_dir, wait_until};

const ACCOUNT: &str = "123456789012";

#[test]
fn aws_iid_nodes_attest_with_imdsv2_and_forgeries_are_refused() {
    let dir = test_dir("cloud-aws");
    let ns = Netns::new();
    let aws_ca = DocumentSigner::new(&dir.path().join("pki"), "Amazon Web Services LLC");
    let rogue = DocumentSigner::new(&dir.path().join("pki"), "Rogue Web Services");
    let server = server_for(
        &ns,
        &dir.path().join("server"),
        &format!(
            "[node_attestors.aws_iid]\naccount_ids = [\"{ACCOUNT}\"]\nmax_document_age = \"1h\"\n\
             builtin_certificates = false\nregion_certificates = {{ \"test-region-1\" = {:?} }}\n",
            aws_ca.cert.display().to_string()
        ),
    );
    entries(
        &server,
        "spiffe://example.org/nodes/aws",
        &format!("aws_iid:account_id:{ACCOUNT}"),
    );
    let cfg = "[node_attestor.aws_iid]\n";

    // The metadata service is not up yet: the agent says so and keeps trying.
    let mut agent = agent_in(&ns, &dir.path().join("agent"), &server, cfg);
    agent.spawn_in(None, &ns.wrapper());
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("the instance metadata service cannot be reached")),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("will retry"), "{}", agent.log());
    assert!(agent.exited().is_none(), "{}", agent.log());
    let node = aws::Instance::new(ACCOUNT, "i-0a1b2c3d4e5f60001");
    let imds = aws::Imds::start(&ns, aws::Evidence::signed(&node, &aws_ca));
    agent.wait_healthy();
    let id = format!(
        "spiffe://example.org/spire/agent/aws_iid/{ACCOUNT}/test-region-1/{}",
        node.instance_id
    );
    assert_eq!(agent.spiffe_id(), id);
    assert_eq!(workload_id(&agent, dir.path()), "spiffe://example.org/app");
    let sel = selectors_of(&server, &id);
    for want in [
        format!("aws_iid:account_id:{ACCOUNT}"),
        "aws_iid:region:test-region-1".into(),
        "aws_iid:az:test-region-1a".into(),
        "aws_iid:image:id:ami-0abcdef1234567890".into(),
        format!("aws_iid:instance:id:{}", node.instance_id),
        "aws_iid:instance:type:t3.micro".into(),
    ] {
        assert!(sel.contains(&want), "{want} not in {sel:?}");
    }
    // IMDSv2: a session token first, then every read with it.
    let reqs = imds.requests();
    let put = reqs
        .iter()
        .find(|r| r.method == "PUT")
        .expect("a token request");
    assert_eq!(put.path(), "/latest/api/token");
    let ttl: u32 = put
        .header("x-aws-ec2-metadata-token-ttl-seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=21600).contains(&ttl));
    let reads: Vec<_> = reqs.iter().filter(|r| r.method == "GET").collect();
    assert!(reads.len() >= 2);
    assert!(
        reads
            .iter()
            .all(|r| r.header("x-aws-ec2-metadata-token").is_some())
    );

    let refuse = |name: &str, reason: &str| {
        let mut a = agent_in(&ns, &dir.path().join(name), &server, cfg);
        assert_refused(&ns.wrapper(), &server, &mut a, reason);
    };
    // The same instance's document again, from another node.
    refuse("replay", "does not allow re-attestation");
    // A document signed by a key the server does not trust.
    imds.set_evidence(aws::Evidence::signed(
        &aws::Instance::new(ACCOUNT, "i-0a1b2c3d4e5f60002"),
        &rogue,
    ));
    refuse(
        "untrusted",
        "names a signer other than the region's certificate",
    );
    // A document edited after signing.
    let mut forged =
        aws::Evidence::signed(&aws::Instance::new(ACCOUNT, "i-0a1b2c3d4e5f60003"), &aws_ca);
    forged.document = forged
        .document
        .replace("i-0a1b2c3d4e5f60003", "i-0a1b2c3d4e5f60004");
    imds.set_evidence(forged);
    refuse("modified", "not the one its signature covers");
    // An account that is not allowed.
    imds.set_evidence(aws::Evidence::signed(
        &aws::Instance::new("210987654321", "i-0a1b2c3d4e5f60005"),
        &aws_ca,
    ));
    refuse(
        "account",
        "account 210987654321 is not in node_attestors.aws_iid.account_ids",
    );
    // A document from an instance that started too long ago.
    let mut old = aws::Instance::new(ACCOUNT, "i-0a1b2c3d4e5f60006");
    old.pending_time = "2020-01-01T00:00:00Z".into();
    imds.set_evidence(aws::Evidence::signed(&old, &aws_ca));
    refuse("old", "older than max_document_age");

    // A metadata service without IMDSv2: not used unless allowed.
    imds.set_imdsv2(false);
    let v1 = aws::Instance::new(ACCOUNT, "i-0a1b2c3d4e5f60007");
    imds.set_evidence(aws::Evidence::signed(&v1, &aws_ca));
    let before = agent_count(&server);
    let mut strict = agent_in(&ns, &dir.path().join("strict"), &server, cfg);
    strict.spawn_in(None, &ns.wrapper());
    let status = strict
        .wait_exit(Duration::from_secs(30))
        .expect("the agent stops");
    assert!(!status.success());
    assert!(
        strict
            .log()
            .contains("answered 404 to http://169.254.169.254/latest/api/token"),
        "{}",
        strict.log()
    );
    assert_eq!(agent_count(&server), before);
    let mut lax = agent_in(
        &ns,
        &dir.path().join("lax"),
        &server,
        "[node_attestor.aws_iid]\nallow_imdsv1 = true\n",
    );
    start_in(&ns, &mut lax);
    assert!(lax.spiffe_id().ends_with(&v1.instance_id));
    assert!(lax.log().contains("IMDSv1"), "{}", lax.log());
}

#[test]
fn gcp_iit_nodes_attest_with_full_tokens_and_forgeries_are_refused() {
    let dir = test_dir("cloud-gcp");
    let ns = Netns::new();
    let google = TokenSigner::new("0e72da1df501ca6f756bf103fd7c720294772fce");
    // The same key ID, another key.
    let forger = TokenSigner::new("0e72da1df501ca6f756bf103fd7c720294772fce");
    let keys = dir.path().join("google-keys.json");
    std::fs::write(&keys, jwks(&[&google]).to_string()).unwrap();
    let server = server_for(
        &ns,
        &dir.path().join("server"),
        &format!(
            "[node_attestors.gcp_iit]\nprojectid_allow_list = [\"edge-prod\"]\njwks_file = {:?}\n",
            keys.display().to_string()
        ),
    );
    entries(
        &server,
        "spiffe://example.org/nodes/gcp",
        "gcp_iit:project-id:edge-prod",
    );
    let vm = gcp::Vm::new("edge-prod", "5379382828327395821");
    let metadata = gcp::Metadata::start(&ns, vm.clone(), google.clone());
    let cfg = "[node_attestor.gcp_iit]\n";
    let mut agent = agent_in(&ns, &dir.path().join("agent"), &server, cfg);
    start_in(&ns, &mut agent);
    let id = format!(
        "spiffe://example.org/spire/agent/gcp_iit/edge-prod/{}",
        vm.instance_id
    );
    assert_eq!(agent.spiffe_id(), id);
    assert_eq!(workload_id(&agent, dir.path()), "spiffe://example.org/app");
    let sel = selectors_of(&server, &id);
    for want in [
        "gcp_iit:project-id:edge-prod".to_owned(),
        "gcp_iit:zone:europe-west4-a".into(),
        format!("gcp_iit:instance-name:{}", vm.instance_name),
        format!("gcp_iit:sa:{}", vm.email),
    ] {
        assert!(sel.contains(&want), "{want} not in {sel:?}");
    }
    let req = &metadata.requests()[0];
    assert_eq!(
        req.path(),
        "/computeMetadata/v1/instance/service-accounts/default/identity"
    );
    assert_eq!(req.header("metadata-flavor"), Some("Google"));
    assert_eq!(req.query("format").as_deref(), Some("full"));
    assert_eq!(
        req.query("audience").as_deref(),
        Some("tessera-gcp-node-attestor")
    );

    let refuse = |name: &str, cfg: &str, reason: &str| {
        let mut a = agent_in(&ns, &dir.path().join(name), &server, cfg);
        assert_refused(&ns.wrapper(), &server, &mut a, reason);
    };
    refuse("replay", cfg, "does not allow re-attestation");
    let vm2 = gcp::Vm::new("edge-prod", "5379382828327395822");
    metadata.set(vm2.clone(), google.clone(), 3600);
    refuse(
        "audience",
        "[node_attestor.gcp_iit]\naudience = \"someone-else\"\n",
        "for audience [\"someone-else\"], not [\"tessera-gcp-node-attestor\"]",
    );
    metadata.set(gcp::Vm::new("other-project", "1"), google.clone(), 3600);
    refuse(
        "project",
        cfg,
        "project \"other-project\" is not in node_attestors.gcp_iit.projectid_allow_list",
    );
    metadata.set(vm2.clone(), google.clone(), -600);
    refuse("expired", cfg, "the identity token expired at");
    metadata.set(vm2, forger, 3600);
    refuse("forged", cfg, "signature does not verify");
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

#[test]
fn azure_msi_nodes_attest_with_keys_fetched_over_https_and_forgeries_are_refused() {
    let dir = test_dir("cloud-azure");
    let ns = Netns::new();
    let entra = TokenSigner::new("kWbkaa6qs8wsTnBwiiNYOhHbnAw");
    let forger = TokenSigner::new("kWbkaa6qs8wsTnBwiiNYOhHbnAw");
    // Entra ID's key set, over HTTPS from a CA the server is told to trust.
    let tls = TlsIdentity::new(&dir.path().join("tls"), "127.0.0.1");
    let set = jwks(&[&entra]);
    let key_server = HttpServer::serve(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(move |r| {
            if r.path() == "/common/discovery/keys" {
                Reply::json(200, &set)
            } else {
                Reply::text(404, "Not Found")
            }
        }),
        Some(tls.server_config()),
    );
    let server = server_for(
        &ns,
        &dir.path().join("server"),
        &format!(
            "[node_attestors.azure_msi]\njwks_url = \"https://{}/common/discovery/keys\"\njwks_ca_bundle = {:?}\n\
             [node_attestors.azure_msi.tenants.\"{TENANT}\"]\nresource_id = \"api://tessera-node\"\n",
            key_server.addr,
            tls.ca.display().to_string()
        ),
    );
    assert!(
        key_server
            .requests()
            .iter()
            .any(|r| r.path() == "/common/discovery/keys"),
        "the server did not fetch the key set at start-up"
    );
    let vm = azure::VmIdentity::new(TENANT, "9ff2d1f9-5bd4-4e3e-a5c1-8d0e5c7a0f11");
    entries(
        &server,
        "spiffe://example.org/nodes/azure",
        &format!("azure_msi:vm-name:{}:{}", vm.group, vm.vm),
    );
    let imds = azure::Imds::start(&ns, vm.clone(), entra.clone());
    let cfg = "[node_attestor.azure_msi]\nresource_id = \"api://tessera-node\"\n";
    let mut agent = agent_in(&ns, &dir.path().join("agent"), &server, cfg);
    start_in(&ns, &mut agent);
    let id = format!(
        "spiffe://example.org/spire/agent/azure_msi/{TENANT}/{}",
        vm.principal
    );
    assert_eq!(agent.spiffe_id(), id);
    assert_eq!(workload_id(&agent, dir.path()), "spiffe://example.org/app");
    let sel = selectors_of(&server, &id);
    for want in [
        format!("azure_msi:subscription-id:{}", vm.subscription),
        format!("azure_msi:vm-name:{}:{}", vm.group, vm.vm),
        format!("azure_msi:resource-group:{}", vm.group),
    ] {
        assert!(sel.contains(&want), "{want} not in {sel:?}");
    }
    let req = &imds.requests()[0];
    assert_eq!(req.header("metadata"), Some("true"));
    assert_eq!(req.query("api-version").as_deref(), Some("2018-02-01"));
    assert_eq!(req.query("resource").as_deref(), Some("api://tessera-node"));

    let refuse = |name: &str, cfg: &str, reason: &str| {
        let mut a = agent_in(&ns, &dir.path().join(name), &server, cfg);
        assert_refused(&ns.wrapper(), &server, &mut a, reason);
    };
    refuse("replay", cfg, "does not allow re-attestation");
    let other = azure::VmIdentity::new(TENANT, "0c4b7e52-8d1a-4f0e-9a3b-2e6f1d9c7b44");
    refuse(
        "audience",
        "[node_attestor.azure_msi]\n",
        "for audience [\"https://management.azure.com/\"], not [\"api://tessera-node\"]",
    );
    let stranger = "11111111-2222-3333-4444-555555555555";
    imds.set(
        azure::VmIdentity::new(stranger, "0c4b7e52-8d1a-4f0e-9a3b-2e6f1d9c7b45"),
        entra.clone(),
        3600,
    );
    refuse(
        "tenant",
        cfg,
        &format!("tenant \"{stranger}\" is not in node_attestors.azure_msi.tenants"),
    );
    imds.set(other.clone(), entra.clone(), -600);
    refuse("expired", cfg, "the identity token expired at");
    imds.set(other, forger, 3600);
    refuse("forged", cfg, "signature does not verify");
}

/// A CA for node certificates, made with rcgen.
struct NodeCa {
    params: CertificateParams,
    key: Arc<dyn Key>,
    pem: String,
}

impl NodeCa {
    fn new(name: &str) -> Self {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params
            .self_signed(&RcgenKey::new(key.clone()).unwrap())
            .unwrap();
        Self {
            params,
            key,
            pem: cert.pem(),
        }
    }

    /// A node certificate (PEM) for the public key `spki` (DER).
    fn issue(&self, spki: &[u8], cn: &str, rack: &str, expired: bool) -> String {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.subject_alt_names = vec![SanType::URI(
            format!("x509pop://example.org/rack/{rack}")
                .try_into()
                .unwrap(),
        )];
        let now = time::OffsetDateTime::now_utc();
        if expired {
            p.not_before = now - time::Duration::days(10);
            p.not_after = now - time::Duration::days(1);
        } else {
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + time::Duration::days(1);
        }
        let signer = RcgenKey::new(self.key.clone()).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &signer);
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki).unwrap();
        p.signed_by(&public, &issuer).unwrap().pem()
    }
}

fn sha1_fingerprint(cert_pem: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(cert_pem),
    );
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// A node key in a PKCS#8 file and its certificate, in `dir`.
fn file_node(
    dir: &Path,
    ca: &NodeCa,
    cn: &str,
    expired: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
    let key_path = dir.join("node.key");
    std::fs::write(
        &key_path,
        tessera_core::x509::to_pem("PRIVATE KEY", key.pkcs8_der()),
    )
    .unwrap();
    let cert_path = dir.join("node.pem");
    std::fs::write(
        &cert_path,
        ca.issue(key.public_key_der(), cn, "r1", expired),
    )
    .unwrap();
    (cert_path, key_path)
}

#[test]
fn x509pop_nodes_prove_keys_in_a_file_the_tpm_and_a_pkcs11_token() {
    let dir = test_dir("x509pop");
    let ca = NodeCa::new("Node CA");
    let rogue = NodeCa::new("Node CA");
    let ca_path = dir.path().join("node-ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.x509pop]\nca_bundle = [{:?}]\n",
            ca_path.display().to_string()
        ),
    );
    entries(
        &server,
        "spiffe://example.org/nodes/rack-r1",
        "x509pop:san:rack:r1",
    );

    // The key in a file.
    let (cert, key) = file_node(&dir.path().join("file"), &ca, "node-file", false);
    let mut agent = Agent::start(
        &dir.path().join("agent-file"),
        &server,
        None,
        &format!(
            "[node_attestor.x509pop]\ncertificate_path = {:?}\nprivate_key_path = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let id = format!(
        "spiffe://example.org/spire/agent/x509pop/{}",
        sha1_fingerprint(&cert)
    );
    assert_eq!(agent.spiffe_id(), id);
    assert_eq!(workload_id(&agent, dir.path()), "spiffe://example.org/app");
    let sel = selectors_of(&server, &id);
    for want in [
        "x509pop:subject:cn:node-file",
        "x509pop:issuer:cn:Node CA",
        "x509pop:san:rack:r1",
    ] {
        assert!(sel.iter().any(|s| s == want), "{want} not in {sel:?}");
    }
    assert!(sel.iter().any(|s| s.starts_with("x509pop:ca:fingerprint:")));
    assert!(sel.iter().any(|s| s.starts_with("x509pop:serialnumber:")));
    // The same node attests again (x509pop allows it): evicted, it comes back.
    server.cli_ok(&["agent", "evict", "--spiffe-id", &id]);
    assert!(
        wait_until(Duration::from_secs(20), || agent_count(&server) == 1
            && server.log().matches("agent attested").count() >= 2),
        "{}",
        agent.log()
    );
    agent.stop();

    // The key in the TPM, made with `tpm create-key`, its CSR signed by the CA.
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let tdir = dir.path().join("tpm-node");
    std::fs::create_dir_all(&tdir).unwrap();
    run_ok(
        Command::new(bin("tessera-agent"))
            .args([
                "tpm",
                "create-key",
                "--tcti",
                &tpm.tcti,
                "--common-name",
                "node-tpm",
            ])
            .arg("--out")
            .arg(tdir.join("node.tpmkey"))
            .arg("--csr")
            .arg(tdir.join("node.csr")),
    );
    let csr = std::fs::read_to_string(tdir.join("node.csr")).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
    let tpm_cert = tdir.join("node.pem");
    std::fs::write(
        &tpm_cert,
        ca.issue(
            &csr.public_key.subject_public_key_info(),
            "node-tpm",
            "r1",
            false,
        ),
    )
    .unwrap();
    let mut agent = Agent::start(
        &dir.path().join("agent-tpm"),
        &server,
        None,
        &format!(
            "[node_attestor.x509pop]\ncertificate_path = {:?}\ntpm_key_path = {:?}\ntcti = {:?}\n",
            tpm_cert.display().to_string(),
            tdir.join("node.tpmkey").display().to_string(),
            tpm.tcti
        ),
    );
    assert!(agent.spiffe_id().ends_with(&sha1_fingerprint(&tpm_cert)));
    assert_eq!(workload_id(&agent, dir.path()), "spiffe://example.org/app");
    agent.stop();

    // The key in a PKCS#11 token.
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "node-token", "1234");
    let out = hsm.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "node-key",
        "--id",
        "4e4f4445",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = dir.path().join("node-pub.der");
    let out = hsm.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "node-key",
        "--output-file",
        pubkey.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hsm_cert = dir.path().join("hsm-node.pem");
    std::fs::write(
        &hsm_cert,
        ca.issue(&std::fs::read(&pubkey).unwrap(), "node-hsm", "r1", false),
    )
    .unwrap();
    let mut agent = Agent::configure(
        &dir.path().join("agent-hsm"),
        &server,
        &format!(
            "[node_attestor.x509pop]\ncertificate_path = {:?}\n[node_attestor.x509pop.pkcs11]\n{}uri = \"pkcs11:object=node-key\"\n",
            hsm_cert.display().to_string(),
            hsm.section()
        ),
    );
    agent.spawn_in(
        None,
        &[
            "env".into(),
            format!("SOFTHSM2_CONF={}", hsm.conf.display()),
        ],
    );
    agent.wait_healthy();
    assert!(agent.spiffe_id().ends_with(&sha1_fingerprint(&hsm_cert)));
    assert_eq!(workload_id(&agent, dir.path()), "spiffe://example.org/app");
    agent.stop();

    // Refusals: a chain to another CA, an expired certificate.
    let refuse = |name: &str, ca: &NodeCa, expired: bool, reason: &str| {
        let (cert, key) = file_node(&dir.path().join(name), ca, name, expired);
        let mut a = Agent::configure(
            &dir.path().join(format!("agent-{name}")),
            &server,
            &format!(
                "[node_attestor.x509pop]\ncertificate_path = {:?}\nprivate_key_path = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        );
        assert_refused(&[], &server, &mut a, reason);
    };
    refuse("rogue", &rogue, false, "does not chain to a trusted CA");
    refuse("expired", &ca, true, "is expired or not yet valid");

    // A signature over another nonce than the server's.
    let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
    let leaf = ca.issue(key.public_key_der(), "node-replay", "r1", false);
    let leaf = tessera_core::x509::pem_certs(leaf.as_bytes()).unwrap();
    let before = agent_count(&server);
    let payload = serde_json::to_vec(&x509pop::Payload { certificates: leaf }).unwrap();
    let verdict = attest_raw(&server, "x509pop", payload, |challenge| {
        let c: x509pop::Challenge = serde_json::from_slice(&challenge).unwrap();
        let mut other = c.nonce.clone();
        other[0] ^= 0xff;
        let nonce = vec![5u8; x509pop::NONCE_LEN];
        let signature = key
            .sign(
                x509pop::scheme_for(KeyType::EcP256),
                &x509pop::signed_message(&other, &nonce),
            )
            .unwrap();
        serde_json::to_vec(&x509pop::Response { nonce, signature }).unwrap()
    });
    let status = verdict.expect_err("a signature over another nonce was accepted");
    assert!(
        status
            .message()
            .contains("does not verify with the certificate's key"),
        "{}",
        status.message()
    );
    assert_eq!(agent_count(&server), before);
}
