//! Pebble, the ACME test server, as a process on this machine (built at a pinned
//! release by `scripts/pebble.sh`): its API on HTTPS with a certificate made here
//! (from a private CA whose PEM [`Pebble::api_roots`] gives), validating
//! tls-alpn-01 challenges on one configured port, without its deliberate nonce
//! rejections and validation delays. [`Pebble::issuer_roots`] fetches the root it
//! issues certificates under.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{env_script_output, free_port, spawn_logged, stop_child, wait_until};

/// The directory holding `pebble` (built once per test process).
fn pebble_bin() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(env_script_output("pebble.sh")))
        .join("pebble")
}

/// A running Pebble; stopped when dropped.
#[derive(Debug)]
pub struct Pebble {
    child: Child,
    dir: PathBuf,
    api_port: u16,
    management_port: u16,
    log: PathBuf,
}

impl Pebble {
    /// Starts Pebble under `dir`, validating tls-alpn-01 on `tls_port`.
    pub fn start(dir: &Path, tls_port: u16) -> Self {
        std::fs::create_dir_all(dir).expect("pebble dir");
        write_api_certificate(dir);
        let (api_port, management_port) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{api_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.join("api.pem"),
                "privateKey": dir.join("api.key"),
                "httpPort": free_port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let path = dir.join("pebble.json");
        std::fs::write(&path, config.to_string()).expect("pebble config");
        let log = dir.join("pebble.log");
        let child = spawn_logged(
            Command::new(pebble_bin())
                .arg("-config")
                .arg(&path)
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            &log,
        );
        let p = Self {
            child,
            dir: dir.to_owned(),
            api_port,
            management_port,
            log,
        };
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", p.api_port)).is_ok()
        });
        assert!(up, "pebble did not start:\n{}", p.log());
        p
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api_port)
    }

    /// The PEM file of the CA that signed Pebble's API certificate.
    pub fn api_roots(&self) -> PathBuf {
        self.dir.join("api-ca.pem")
    }

    /// Fetches the root Pebble issues under (it makes a new one at each start),
    /// writes it to `<dir>/issuer-root.pem` and returns the path.
    pub fn issuer_roots(&self) -> PathBuf {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.api_roots()).expect("API CA") {
            roots
                .add(c.expect("API CA certificate"))
                .expect("API CA root");
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let opts = tessera_process::http::Options {
            tls: Some(std::sync::Arc::new(tls)),
            ..Default::default()
        };
        let got = tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(tessera_process::http::send(
                tessera_process::http::Request::get(&url),
                &opts,
            ))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(got.status, 200, "{url}: {}", got.body_excerpt());
        let out = self.dir.join("issuer-root.pem");
        std::fs::write(&out, &got.body).expect("issuer root");
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A private CA and a certificate for 127.0.0.1 and localhost it signed, for
/// Pebble's API: `api-ca.pem`, `api.pem`, `api.key` under `dir`.
fn write_api_certificate(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(DnType::CommonName, "Pebble API test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    std::fs::write(dir.join("api-ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("api.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("api.key"), key.serialize_pem()).expect("write");
}
