//! The seed corpora: small, real inputs for every target, made here from the
//! fixtures (tokens, CSRs, certificates and attestation payloads made the way
//! Tessera makes them) and from the documentation (configuration files, a
//! request grpcio sent). `cargo test -p tessera-fuzz --test seeds -- --ignored`
//! writes them to `fuzz/seeds/<target>/`; the replay test runs the files, and
//! `seeds_made_now_hold` runs freshly made ones, so the fixtures and the
//! committed files cannot drift apart unnoticed.

use tessera_core::jwt::sign_jwt_svid;
use tessera_core::x509::{build_csr, to_pem};

use crate::fixtures::{self, AUDIENCE, NOW, jwt_keys, tpm, workload_id};
use crate::join_token::{EXPIRED, VALID};

/// A seed: target, file name, contents.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed the fixtures can make.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    config(&mut out);
    csr(&mut out);
    der_pem(&mut out);
    h2(&mut out);
    join_token(&mut out);
    jwt(&mut out);
    selector(&mut out);
    spiffe_id(&mut out);
    tpm_seeds(&mut out);
    tss2_seeds(&mut out);
    out
}

fn add(out: &mut Vec<Seed>, target: &'static str, name: &str, data: impl Into<Vec<u8>>) {
    out.push((target, name.to_owned(), data.into()));
}

fn with_mode(mode: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(data);
    v
}

/// The configuration files the documentation shows (README, docs/TPM.md,
/// docs/HSM.md, scripts/demo.sh, the appliance image), with paths filled in.
const SERVER_DEMO: &str = r#"trust_domain = "example.org"
bind_address = "127.0.0.1:8081"
data_dir = "/var/lib/tessera/server"
admin_socket = "/run/tessera/server/admin.sock"

[key_manager]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "tessera-demo"
pin_file = "/etc/tessera/hsm.pin"

[node_attestors.tpm_devid]
devid_ca_bundle = ["/etc/tessera/vendor-ca.pem"]
ek_ca_bundle = ["/etc/tessera/tpm-manufacturers.pem"]
ek_intermediates = ["/etc/tessera/tpm-intermediates.pem"]
"#;

const SERVER_FULL: &str = r#"trust_domain = "example.org"
bind_address = "0.0.0.0:8081"
ca_ttl = "24h"
x509_svid_ttl = "1h"
jwt_svid_ttl = "5m"
agent_svid_ttl = "1h30m"
ca_key_type = "ec-p384"
jwt_key_type = "rsa-2048"
bundle_refresh_hint = "5m"
default_join_token_ttl = "10m"
log_level = "info"

[datastore]
type = "postgres"
connection_string_file = "/etc/tessera/pg.conn"

[upstream_authority]
type = "pkcs11"
[upstream_authority.pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "tessera-root"
pin_file = "/etc/tessera/root.pin"

[node_attestors.join_token]
enabled = true

[node_attestors.tpm_ek]
ek_ca_bundle = ["/etc/tessera/tpm-manufacturers.pem"]
ek_hash_allow_list = "/etc/tessera/ek-allow.d"

[limits]
max_connections = 4096
max_connections_per_ip = 512
handshake_timeout = "10s"
idle_timeout = "2m"
attestation_rate = 1
attestation_burst = 10
"#;

const AGENT_IMAGE: &str = r#"# Tessera agent, appliance defaults.
trust_domain = "example.org"
server_address = "tessera-server.example.org"
trust_bundle_path = "/etc/tessera/bootstrap-bundle.pem"
data_dir = "/var/lib/tessera/agent"
socket_path = "/run/tessera/agent/public/api.sock"

[key_manager]
type = "disk"
"#;

const AGENT_TPM: &str = r#"trust_domain = "example.org"
server_address = "127.0.0.1:8081"
server_addresses = ["[::1]", "backup.example.org:9000"]
data_dir = "/var/lib/tessera/agent"
socket_path = "/run/tessera/agent/api.sock"
trust_bundle_path = "/etc/tessera/bundle.pem"
sync_interval = "5s"
workload_key_type = "ec-p256"

[key_manager]
type = "tpm"

[node_attestor.tpm_devid]
tcti = "device:/dev/tpmrm0"
devid_dir = "/var/lib/tessera/devid"
ek = "ecc-p256"
ak = "ecc-p256"

[workload_attestors.unix]
discover_workload_path = true
workload_size_limit = 1048576

[limits]
max_connections = 1024
max_connections_per_uid = 256
idle_timeout = "5m"
"#;

const AGENT_JOIN: &str = r#"trust_domain = "example.org"
server_address = "tessera-server.example.org"
insecure_bootstrap = true

[node_attestor.join_token]
token_file = "/etc/tessera/join-token"
"#;

fn config(out: &mut Vec<Seed>) {
    add(out, "config", "server-demo.toml", SERVER_DEMO);
    add(out, "config", "server-full.toml", SERVER_FULL);
    add(out, "config", "agent-image.toml", AGENT_IMAGE);
    add(out, "config", "agent-tpm.toml", AGENT_TPM);
    add(out, "config", "agent-join-token.toml", AGENT_JOIN);
    add(
        out,
        "config",
        "agent-with-flags.txt",
        format!(
            "{AGENT_JOIN}\n%%\nsync_interval=1h30m\nlimits.idle_timeout=250ms\nserver_port=9000"
        ),
    );
}

fn csr(out: &mut Vec<Seed>) {
    for (kid, key) in &jwt_keys().keys {
        let der = build_csr(key).expect("a CSR for a fixture key");
        add(out, "csr", &format!("agent-{kid}.der"), der);
    }
    // A CSR naming a SPIFFE ID in a URI SAN, as other SPIFFE implementations send.
    for (name, id) in [
        ("uri-san-same.der", workload_id().to_string()),
        ("uri-san-other.der", "spiffe://example.org/other".to_owned()),
    ] {
        let key = fixtures::p256_key_pair();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CSR parameters");
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("an IA5 URI"))];
        let der = p.serialize_request(&key).expect("a CSR").der().to_vec();
        add(out, "csr", name, der);
    }
}

fn der_pem(out: &mut Vec<Seed>) {
    let t = tpm();
    add(out, "der_pem", "ca.der", t.ek_ca.clone());
    add(out, "der_pem", "ca.pem", to_pem("CERTIFICATE", &t.ek_ca));
    add(
        out,
        "der_pem",
        "two-certs.der",
        [t.ek_ca.clone(), t.ek_certificate.clone()].concat(),
    );
    add(
        out,
        "der_pem",
        "two-certs.pem",
        format!(
            "{}{}",
            to_pem("CERTIFICATE", &t.vendor_ca),
            to_pem("CERTIFICATE", &t.devid_certificate)
        ),
    );
    let key = &jwt_keys().keys[0].1;
    add(
        out,
        "der_pem",
        "spki-p256.der",
        key.public_key_der().to_vec(),
    );
    let sig = key.sign_default(b"seed").expect("ECDSA signing");
    add(out, "der_pem", "ecdsa-p256.der", sig);
    let rsa = &jwt_keys().keys[2].1;
    add(
        out,
        "der_pem",
        "spki-rsa2048.der",
        rsa.public_key_der().to_vec(),
    );
}

/// The header block grpcio 1.85.1 sent on a Unix socket (`:authority` is the
/// percent-encoded socket path), captured from the socket.
const GRPCIO_BLOCK: &str = "40053a706174681f2f537069666665576f726b6c6f61644150492f4665746368\
    4a575453564944400a3a617574686f7269747915746d70253246636170253246736f636b2e736f636b838640\
    0c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c65727340\
    14677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a69\
    70400c677270632d74696d656f7574023353400a757365722d6167656e7430677270632d707974686f6e2f31\
    2e38352e3120677270632d632f35382e302e3020286c696e75783b20636874747032290012776f726b6c6f61\
    642e7370696666652e696f0474727565";

/// RFC 7541 C.4: three requests sharing the dynamic table, Huffman-coded.
const RFC_7541_C4: [&str; 3] = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
];

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("00"), 16).unwrap_or(0))
        .collect()
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn h2(out: &mut Vec<Seed>) {
    let preface = crate::h2_authority::PREFACE.to_vec();
    // SETTINGS: HEADER_TABLE_SIZE 4096, ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB.
    let settings = frame(0x4, 0, 0, &hex("000100001000 000200000000 000400400000"));
    let grpc_message = hex("0000000000");
    let mut grpcio = [preface.clone(), settings.clone()].concat();
    grpcio.extend(frame(0x8, 0, 0, &hex("003f0001")));
    grpcio.extend(frame(0x1, 0x4, 1, &hex(GRPCIO_BLOCK)));
    grpcio.extend(frame(0x0, 0x1, 1, &grpc_message));
    grpcio.extend(frame(0x6, 0, 0, &[0; 8]));
    add(out, "h2_authority", "grpcio-fetch-jwt-svid.bin", grpcio);

    let mut rfc = [preface.clone(), settings.clone()].concat();
    for (i, block) in RFC_7541_C4.iter().enumerate() {
        rfc.extend(frame(0x1, 0x5, 1 + 2 * i as u32, &hex(block)));
    }
    add(out, "h2_authority", "rfc7541-c4.bin", rfc);

    // The grpcio block in a padded, prioritised HEADERS and two CONTINUATIONs.
    let block = hex(GRPCIO_BLOCK);
    let mut split = [preface.clone(), settings].concat();
    let mut first = vec![3u8];
    first.extend_from_slice(&[0, 0, 0, 0, 15]);
    first.extend_from_slice(&block[..40]);
    first.extend_from_slice(&[0, 0, 0]);
    split.extend(frame(0x1, 0x8 | 0x20, 1, &first));
    split.extend(frame(0x9, 0, 1, &block[40..100]));
    split.extend(frame(0x9, 0x4, 1, &block[100..]));
    split.extend(frame(0x0, 0x1, 1, &grpc_message));
    add(out, "h2_authority", "grpcio-continuation.bin", split);
    add(out, "h2_authority", "preface-only.bin", preface);

    // Scripts for the structured target: any bytes make requests; these make
    // a few grpc-like ones with the authorities real clients send.
    add(
        out,
        "h2_requests",
        "short.bin",
        vec![1, 0, 0, 7, 0, 0, 5, 0x11, 3],
    );
    add(
        out,
        "h2_requests",
        "three-requests.bin",
        (0u8..=255).map(|b| b.wrapping_mul(37)).collect::<Vec<u8>>(),
    );
    add(
        out,
        "h2_requests",
        "grpcio-like.bin",
        [
            2u8, 1, 0, 1, 0, 0, 2, 0, 4, 3, 0, 0x1f, 1, 0x10, 5, 2, 7, 3, 0x18, 9, 9,
        ]
        .repeat(3),
    );
}

fn join_token(out: &mut Vec<Seed>) {
    add(out, "join_token", "valid.txt", VALID);
    add(out, "join_token", "valid-newline.txt", format!("{VALID}\n"));
    add(out, "join_token", "expired.txt", EXPIRED);
    add(
        out,
        "join_token",
        "unknown.txt",
        "2f1d6f8e-0000-4000-8000-000000000000",
    );
    add(out, "join_token", "dots.txt", "..");
}

fn jwt(out: &mut Vec<Seed>) {
    for (kid, key) in &jwt_keys().keys {
        let token = sign_jwt_svid(
            &workload_id(),
            &[AUDIENCE.to_owned(), "other".to_owned()],
            NOW,
            NOW + 3600,
            kid,
            key.as_ref(),
        )
        .expect("a fixture token")
        .token;
        add(
            out,
            "jwt_svid",
            &format!("{kid}.jwt"),
            with_mode(0, token.as_bytes()),
        );
    }
    // alg none, with the claims of a real token.
    let claims = "eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93b3JrbG9hZCIsImF1ZCI6ImZ1enotYXVkaWVuY2UiLCJleHAiOjQxMDI0NDQ4MDB9";
    add(
        out,
        "jwt_svid",
        "alg-none.jwt",
        with_mode(
            0,
            format!("eyJhbGciOiJub25lIiwia2lkIjoicDI1NiJ9.{claims}.").as_bytes(),
        ),
    );
    add(
        out,
        "jwt_svid",
        "mint.txt",
        with_mode(1, b"\x05/workload\nfuzz-audience\nsecond"),
    );
    let b = &jwt_keys().bundle;
    add(out, "jwks_bundle", "jwt-keys.json", b.to_jwks());
    let mut with_x509 = b.clone();
    with_x509.set_x509_authorities(vec![tpm().ek_ca.clone()]);
    with_x509.set_sequence(7);
    with_x509.set_refresh_hint(300);
    add(out, "jwks_bundle", "full.json", with_x509.to_jwks());
}

fn selector(out: &mut Vec<Seed>) {
    add(out, "selector", "unix.txt", "unix:uid:1000");
    add(
        out,
        "selector",
        "entry-and-node.txt",
        "unix:uid:0\nunix:user:root\nunix:uid:0\nunix:user:root\nunix:gid:0",
    );
    add(
        out,
        "selector",
        "tpm.txt",
        "tpm:pub_hash:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\ntpm_devid:subject:cn:device-0001",
    );
    add(out, "selector", "k8s.txt", "k8s:pod-label:app:web");
}

fn spiffe_id(out: &mut Vec<Seed>) {
    for (name, id) in [
        ("workload.txt", "spiffe://example.org/workload"),
        (
            "mixed-case.txt",
            "SPIFFE://Example.ORG/Path/To-Service_1.v2",
        ),
        ("trust-domain.txt", "example.org"),
        ("td-id.txt", "spiffe://example.org"),
        (
            "agent.txt",
            "spiffe://example.org/spire/agent/join_token/3c0a5a8e-5d8f-4bb8-a3a1-6e1d2b7f9c10",
        ),
        ("port.txt", "spiffe://example.org:8080/a"),
        ("dots.txt", "spiffe://example.org/a/../b"),
    ] {
        add(out, "spiffe_id", name, id);
    }
}

fn tpm_seeds(out: &mut Vec<Seed>) {
    let t = tpm();
    add(
        out,
        "tpm_wire",
        "ek-public.bin",
        with_mode(0, &t.ek.public.marshal()),
    );
    add(
        out,
        "tpm_wire",
        "ak-public.bin",
        with_mode(0, &t.ak.public.marshal()),
    );
    add(
        out,
        "tpm_wire",
        "devid-public.bin",
        with_mode(0, &t.devid.public.marshal()),
    );
    add(
        out,
        "tpm_wire",
        "rsa-ek-template.bin",
        with_mode(
            0,
            &tessera_tpm::verifier::ek::EkKind::Rsa2048
                .template()
                .marshal(),
        ),
    );
    let info = t.certify_info();
    add(out, "tpm_wire", "certify-info.bin", with_mode(1, &info));
    add(
        out,
        "tpm_wire",
        "certify-signature.bin",
        with_mode(2, &t.ak.sign(&info)),
    );
    add(
        out,
        "tpm_wire",
        "certify-signed-here.bin",
        with_mode(3, &[[0u8].as_slice(), &info].concat()),
    );
    add(
        out,
        "tpm_wire",
        "ek-public-tpm2b.bin",
        with_mode(4, &t.ek.public.marshal_tpm2b()),
    );

    let devid = json(&t.devid_payload());
    add(out, "tpm_attestation", "devid.json", with_mode(0, &devid));
    let mut with_answer = with_mode(0, &devid);
    with_answer.push(0xff);
    with_answer.extend_from_slice(br#"{"nonce_signature":"AAA=","activated_secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#);
    add(out, "tpm_attestation", "devid-with-answer.bin", with_answer);
    add(
        out,
        "tpm_attestation",
        "ek.json",
        with_mode(1, &json(&t.ek_payload())),
    );
    add(
        out,
        "tpm_attestation",
        "ek-allow-listed.json",
        with_mode(1, &json(&t.allow_listed_payload())),
    );
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("a payload serialises")
}

/// A TSS2 key file as the agent writes them (the DevID fixture's public area, a
/// made-up private part), as DER and as PEM, with and without an auth value.
fn tss2_seeds(out: &mut Vec<Seed>) {
    let t = tpm();
    let blob = tessera_tpm::KeyBlob {
        public: t.devid.public.clone(),
        private: (0u8..=199).collect(),
    };
    for (name, has_auth) in [("auth", true), ("no-auth", false)] {
        let key = tessera_tpm::tss2::Tss2Key::under_owner(blob.clone(), has_auth);
        add(
            out,
            "tss2_key",
            &format!("{name}.der"),
            with_mode(0, &key.to_der()),
        );
        add(
            out,
            "tss2_key",
            &format!("{name}.pem"),
            with_mode(1, key.to_pem().as_bytes()),
        );
    }
}
