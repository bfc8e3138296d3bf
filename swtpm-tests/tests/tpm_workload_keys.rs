//! Workload keys born in the TPM (`workload_key = tpm`), refereed by OpenSSL's tpm2
//! provider (Debian's `tpm2-openssl`): two agents, each on its own swtpm, hand a
//! TLS server and a TLS client their SVIDs as TSS2 key files through
//! `tessera-agent api fetch x509 --write`; `openssl s_server` and `openssl
//! s_client` load the keys in their TPMs and complete an mTLS handshake in which
//! each side sees the other's SPIFFE ID. The same key file on the other swtpm is
//! refused; the SPIFFE Workload API refuses such an entry naming Tessera's
//! service; another user gets nothing.
//!
//! A simulator serves one connection at a time and has no resource manager, so
//! each agent is stopped before OpenSSL opens its TPM, and OpenSSL reaches each
//! simulator through tpm2-abrmd (on a private D-Bus session bus): a TLS handshake
//! with tpm2-openssl needs more transient objects than a TPM holds at once, which
//! is why tpm2-openssl asks for a resource manager (a device's /dev/tpmrm0 is one).

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::{Read as _, Write as _};

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tessera_core::key::Key as _;

use tessera_swtpm_tests::attack::{as_user, open_to_others, shared_binary};
use tessera_swtpm_tests::{Agent, Server, Swtpm, free_port, my_uid, py, test_dir, wait_until};

const NOBODY: u32 = 65534;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A private D-Bus session bus and a tpm2-abrmd per simulator on it; stopped on
/// drop.
struct ResourceManagers {
    bus: String,
    children: Vec<Child>,
}

impl ResourceManagers {
    fn start(dir: &Path, tpms: &[&Swtpm]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<busconfig><type>session</type><listen>unix:path={}</listen>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/><allow user=\"*\"/></policy></busconfig>",
                dir.join("bus").display()
            ),
        )
        .unwrap();
        let bus = format!("unix:path={}", dir.join("bus").display());
        let mut children = vec![
            Command::new("dbus-daemon")
                .arg(format!("--config-file={}", config.display()))
                .arg("--nofork")
                .stdout(Stdio::null())
                .spawn()
                .expect("dbus-daemon (package dbus-daemon)"),
        ];
        assert!(
            wait_until(Duration::from_secs(10), || dir.join("bus").exists()),
            "the D-Bus daemon did not start"
        );
        for (i, tpm) in tpms.iter().enumerate() {
            children.push(
                Command::new("tpm2-abrmd")
                    .args(["--session", "--allow-root"])
                    .arg(format!("--tcti={}", tpm.tcti))
                    .arg(format!("--dbus-name=org.tessera.Tabrmd{i}"))
                    .env("DBUS_SESSION_BUS_ADDRESS", &bus)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("tpm2-abrmd (package tpm2-abrmd)"),
            );
        }
        let rm = Self { bus, children };
        for i in 0..tpms.len() {
            let up = wait_until(Duration::from_secs(10), || {
                Command::new("tpm2_getcap")
                    .arg("properties-fixed")
                    .env("TPM2TOOLS_TCTI", rm.tcti(i))
                    .env("DBUS_SESSION_BUS_ADDRESS", &rm.bus)
                    .env("TSS2_LOG", "all+none")
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            assert!(up, "tpm2-abrmd {i} does not answer");
        }
        rm
    }

    /// The TCTI of the `i`th simulator's resource manager.
    fn tcti(&self, i: usize) -> String {
        format!("tabrmd:bus_name=org.tessera.Tabrmd{i},bus_type=session")
    }

    /// `openssl` with the tpm2 provider pointed at the `i`th simulator.
    fn openssl(&self, i: usize) -> Command {
        let mut c = Command::new("openssl");
        c.env("TPM2OPENSSL_TCTI", self.tcti(i))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("TSS2_LOG", "all+none");
        c
    }
}

impl Drop for ResourceManagers {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const PROVIDERS: [&str; 4] = ["-provider", "tpm2", "-provider", "base"];
/// TLS needs the default provider's ciphers too; the tpm2 provider is preferred,
/// so that it decodes the TSS2 key file and its key signs in the TPM.
const TLS_PROVIDERS: [&str; 6] = [
    "-provider",
    "tpm2",
    "-provider",
    "default",
    "-propquery",
    "?provider=tpm2",
];

/// The SPIFFE ID (the URI SAN, checked as an X509-SVID leaf) of the first
/// certificate in PEM `text`, in a one-element list.
fn uri_sans_of_first_pem(text: &str) -> Vec<String> {
    let certs = tessera_core::x509::pem_certs(text.as_bytes()).expect("a certificate");
    let id = tessera_core::x509::validate_leaf(&certs[0]).expect("an X509-SVID leaf");
    vec![id.to_string()]
}

/// An agent on `tpm`, attested with tpm_ek; its SPIFFE ID.
fn agent_on(dir: &Path, server: &Server, tpm: &Swtpm) -> (Agent, String) {
    let hash = tpm.info(None)["endorsement_keys"][0]["pub_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut agent = Agent::start(
        dir,
        server,
        None,
        &format!(
            "[node_attestor.tpm_ek]\ntcti = \"{}\"\nek = \"rsa-2048\"\n",
            tpm.tcti
        ),
    );
    let id = format!("spiffe://example.org/spire/agent/tpm/{hash}");
    assert_eq!(agent.spiffe_id(), id);
    agent.wait_healthy();
    (agent, id)
}

/// `api fetch x509 --write out` until the TPM-held SVID is there.
fn fetch_written(agent: &Agent, out: &Path) {
    let ok = wait_until(Duration::from_secs(30), || {
        let o = agent.cli(&["api", "fetch", "x509", "--write", out.to_str().unwrap()]);
        o.status.success() && out.join("svid.0.tss2.key").exists()
    });
    assert!(ok, "no TPM-held SVID written:\n{}", agent.log());
}

/// `openssl s_server` on the first resource manager's TPM with the TLS server's
/// TPM-held SVID, requiring a client SVID, for one connection.
struct SServer {
    child: Child,
    collected: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl SServer {
    fn start(rm: &ResourceManagers, port: u16, out: &Path) -> Self {
        let file = |f: &str| out.join(f).display().to_string();
        let mut child = rm
            .openssl(0)
            .arg("s_server")
            .args(TLS_PROVIDERS)
            .args(["-accept", &port.to_string(), "-naccept", "1"])
            .args(["-cert", &file("svid.0.pem")])
            .args(["-key", &file("svid.0.tss2.key")])
            .args(["-pass", &format!("file:{}", file("svid.0.auth"))])
            .args(["-CAfile", &file("bundle.0.pem")])
            .args(["-Verify", "2", "-verify_return_error"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its output, read as it comes: "ACCEPT" says it listens.
        let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|mut r| {
            let c = collected.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    c.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        })
        .collect();
        let mut server = Self {
            child,
            collected,
            readers,
        };
        let listening = wait_until(Duration::from_secs(30), || {
            server.collected.lock().unwrap().contains("ACCEPT")
        });
        if !listening {
            let _ = server.child.kill();
            panic!(
                "s_server did not listen:\n{}",
                server.collected.lock().unwrap()
            );
        }
        server
    }

    /// What it printed so far.
    fn output(&self) -> String {
        self.collected.lock().unwrap().clone()
    }

    /// Waits for the server to end after its one connection; what it printed.
    fn finish(mut self) -> String {
        let _ = self.child.stdin.take();
        let ended = wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.collected.lock().unwrap().clone()
    }
}

#[test]
fn openssl_tpm2_provider_does_mtls_with_tpm_held_svids_and_nothing_else_gets_them() {
    let dir = test_dir("tpm-workload-keys");
    open_to_others(dir.path());
    let tpm_a = Swtpm::start(&dir.path().join("tpm-a"));
    let tpm_b = Swtpm::start(&dir.path().join("tpm-b"));
    let quoted = |ps: [&std::path::PathBuf; 2]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{}]\nek_intermediates = [{}]\n",
            quoted([&tpm_a.ek_ca_root, &tpm_b.ek_ca_root]),
            quoted([&tpm_a.ek_ca_intermediate, &tpm_b.ek_ca_intermediate]),
        ),
    );
    let (mut agent_a, id_a) = agent_on(&dir.path().join("agent-a"), &server, &tpm_a);
    let (mut agent_b, id_b) = agent_on(&dir.path().join("agent-b"), &server, &tpm_b);
    let me = format!("unix:uid:{}", my_uid());
    let tpm_key = ["--workload-key", "tpm"];
    server.entry("spiffe://example.org/tls-server", &id_a, &[&me], &tpm_key);
    server.entry("spiffe://example.org/tls-client", &id_b, &[&me], &tpm_key);
    // Nobody's entry on agent A is a software one: it keeps working as before.
    server.entry(
        "spiffe://example.org/nobody",
        &id_a,
        &[&format!("unix:uid:{NOBODY}")],
        &[],
    );
    let show = server.cli_ok(&[
        "entry",
        "show",
        "--spiffe-id",
        "spiffe://example.org/tls-server",
    ]);
    assert!(show.contains("Workload key     : tpm"), "{show}");

    let out_a = dir.path().join("svid-a");
    let out_b = dir.path().join("svid-b");
    fetch_written(&agent_a, &out_a);
    fetch_written(&agent_b, &out_b);
    for out in [&out_a, &out_b] {
        for (f, mode) in [("svid.0.tss2.key", 0o600), ("svid.0.auth", 0o600)] {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(out.join(f)).unwrap().permissions().mode();
            assert_eq!(m & 0o777, mode, "{f}");
        }
        let key = std::fs::read_to_string(out.join("svid.0.tss2.key")).unwrap();
        assert!(key.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"), "{key}");
        assert!(
            !out.join("svid.0.key").exists(),
            "no PKCS#8 key for a TPM key"
        );
    }

    // The SPIFFE Workload API (py-spiffe, a real client library) refuses the entry
    // and names the service to use.
    let o = py(
        &agent_a,
        "workload.py",
        &["x509", dir.path().join("py").to_str().unwrap()],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("tessera.local.v1.TpmWorkloadKeys"),
        "{}",
        text(&o)
    );

    // Another user: its own (software) SVID, never the TPM-held one.
    std::fs::set_permissions(
        &agent_a.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cli = shared_binary(dir.path(), "tessera-agent");
    let nobody_out = dir.path().join("nobody-out");
    std::fs::create_dir(&nobody_out).unwrap();
    std::os::unix::fs::chown(&nobody_out, Some(NOBODY), Some(NOBODY)).unwrap();
    let o = as_user(NOBODY, NOBODY, &cli)
        .args(["api", "fetch", "x509", "--socket-path"])
        .arg(&agent_a.socket)
        .arg("--write")
        .arg(&nobody_out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = std::fs::read_dir(&nobody_out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"svid.0.key".to_owned()), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("tss2") || n.contains("auth")),
        "{names:?}"
    );
    let nobody_cert = std::fs::read_to_string(nobody_out.join("svid.0.pem")).unwrap();
    assert_eq!(
        uri_sans_of_first_pem(&nobody_cert),
        ["spiffe://example.org/nobody"]
    );

    // One connection per simulator: the agents let go of their TPMs, OpenSSL
    // reaches them through resource managers.
    agent_a.stop();
    agent_b.stop();
    let rm = ResourceManagers::start(dir.path(), &[&tpm_a, &tpm_b]);

    // The key file loads in its own TPM (and is the certificate's key)...
    let pkey = |i: usize| {
        rm.openssl(i)
            .arg("pkey")
            .args(PROVIDERS)
            .arg("-in")
            .arg(out_a.join("svid.0.tss2.key"))
            .arg("-passin")
            .arg(format!("file:{}", out_a.join("svid.0.auth").display()))
            .arg("-pubout")
            .output()
            .unwrap()
    };
    let o = pkey(0);
    assert!(o.status.success(), "{}", text(&o));
    let cert_pub = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(out_a.join("svid.0.pem"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&cert_pub.stdout)
    );
    // ... and is refused on the other TPM.
    let o = rm
        .openssl(1)
        .arg("pkey")
        .args(PROVIDERS)
        .arg("-in")
        .arg(out_a.join("svid.0.tss2.key"))
        .arg("-passin")
        .arg(format!("file:{}", out_a.join("svid.0.auth").display()))
        .arg("-pubout")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "loaded on the wrong TPM:\n{}",
        text(&o)
    );

    // mTLS: s_server on TPM A, s_client on TPM B.
    let port = free_port();
    let file = |out: &Path, f: &str| out.join(f).display().to_string();
    let s_server = SServer::start(&rm, port, &out_a);
    let mut s_client = rm
        .openssl(1)
        .arg("s_client")
        .args(TLS_PROVIDERS)
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-cert", &file(&out_b, "svid.0.pem")])
        .args(["-key", &file(&out_b, "svid.0.tss2.key")])
        .args(["-pass", &format!("file:{}", file(&out_b, "svid.0.auth"))])
        .args(["-CAfile", &file(&out_b, "bundle.0.pem")])
        .args(["-verify_return_error", "-showcerts"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    s_client
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from the client\n")
        .unwrap();
    let client = s_client.wait_with_output().unwrap();
    let server_text = s_server.finish();
    let client_text = text(&client);
    assert!(
        client_text.contains("Verify return code: 0 (ok)")
            && client_text.contains("Cipher is TLS_"),
        "client:\n{client_text}\nserver:\n{server_text}"
    );
    // The client saw the server's SPIFFE ID (the first certificate it shows).
    let shown = client_text
        .split("Certificate chain")
        .nth(1)
        .unwrap_or_else(|| panic!("no certificate chain shown:\n{client_text}"));
    assert_eq!(
        uri_sans_of_first_pem(shown),
        ["spiffe://example.org/tls-server"],
        "{client_text}"
    );
    // The server saw the client's (s_server prints the client certificate).
    let client_cert = server_text
        .split("Client certificate")
        .nth(1)
        .unwrap_or_else(|| panic!("no client certificate:\n{server_text}"));
    assert_eq!(
        uri_sans_of_first_pem(client_cert),
        ["spiffe://example.org/tls-client"],
        "{server_text}"
    );
    assert!(
        server_text.contains("hello from the client"),
        "{server_text}"
    );

    // The Rust crate: a rustls client signing in TPM B (pure-Rust backend, straight
    // to the simulator) against s_server on TPM A.
    drop(rm);
    let rm = ResourceManagers::start(&dir.path().join("rm-rust"), &[&tpm_a]);
    let port = free_port();
    let s_server = SServer::start(&rm, port, &out_a);
    let key = tessera_tpm_rustls::TpmSigningKey::open(
        &tpm_b.tcti,
        &out_b.join("svid.0.tss2.key"),
        &out_b.join("svid.0.auth"),
    )
    .expect("the TSS2 key file loads in TPM B");
    let chain = tessera_tpm_rustls::certificates(&std::fs::read(out_b.join("svid.0.pem")).unwrap())
        .unwrap();
    let td = tessera_core::TrustDomain::new("example.org").unwrap();
    let roots =
        tessera_core::x509::pem_certs(&std::fs::read(out_b.join("bundle.0.pem")).unwrap()).unwrap();
    let verifier = tessera_core::tls::SpiffeServerVerifier::new(
        tessera_core::tls::SharedBundle::new(tessera_core::Bundle::with_x509(td, roots)),
        "spiffe://example.org/tls-server".parse().unwrap(),
    );
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_client_cert_resolver(std::sync::Arc::new(tessera_tpm_rustls::FixedIdentity::new(
        key.certified_key(chain),
    )));
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        rustls::pki_types::ServerName::try_from("tls-server").unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"hello from rustls\n").unwrap();
    tls.flush().unwrap();
    let peer = tls
        .conn
        .peer_certificates()
        .expect("the server's chain")
        .to_vec();
    assert_eq!(
        tessera_core::tls::peer_spiffe_id(&peer).map(|i| i.to_string()),
        Some("spiffe://example.org/tls-server".to_owned())
    );
    // Let the server print the line before the connection closes under it.
    let printed = wait_until(Duration::from_secs(10), || {
        s_server.output().contains("hello from rustls")
    });
    assert!(printed, "{}", s_server.output());
    tls.conn.send_close_notify();
    let _ = tls.flush();
    drop(tls);
    let server_text = s_server.finish();
    let client_cert = server_text
        .split("Client certificate")
        .nth(1)
        .unwrap_or_else(|| panic!("no client certificate:\n{server_text}"));
    assert_eq!(
        uri_sans_of_first_pem(client_cert),
        ["spiffe://example.org/tls-client"],
        "{server_text}"
    );
    assert!(server_text.contains("hello from rustls"), "{server_text}");
}

/// The service's stream: the header rule, then a rotation at half-life that brings
/// a new TPM key, a new authorization value and a new certificate on the same
/// stream, each key signing in the TPM only with its own value.
#[test]
fn tpm_held_svids_rotate_with_a_new_key_on_the_stream() {
    use tessera_proto::local as lpb;
    use tessera_proto::local::tpm_workload_keys_client::TpmWorkloadKeysClient;

    let dir = test_dir("tpm-workload-rotation");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string()
        ),
    );
    let (agent, id) = agent_on(&dir.path().join("agent"), &server, &tpm);
    let me = format!("unix:uid:{}", my_uid());
    server.entry(
        "spiffe://example.org/rotating",
        &id,
        &[&me],
        &["--workload-key", "tpm", "--x509-svid-ttl", "20s"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (first, second) = rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket).await.unwrap();
        let mut c = TpmWorkloadKeysClient::new(ch);
        // Without the header: refused, as the Workload API refuses it.
        let err = c
            .fetch_tpm_x509svid(lpb::TpmX509svidRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("workload.spiffe.io"), "{err}");
        let request = || {
            let mut r = tonic::Request::new(lpb::TpmX509svidRequest {});
            r.metadata_mut().insert(
                tessera_proto::WORKLOAD_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
            r
        };
        // The entry may not be synced yet: retry until the stream opens.
        let mut stream = None;
        for _ in 0..60 {
            match c.fetch_tpm_x509svid(request()).await {
                Ok(s) => {
                    stream = Some(s.into_inner());
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let mut stream = stream.expect("the TPM-held SVID");
        let mut first = stream.message().await.unwrap().expect("a first message");
        while first.svids.is_empty() {
            first = stream.message().await.unwrap().expect("a message");
        }
        let second = tokio::time::timeout(Duration::from_secs(40), async {
            loop {
                let m = stream.message().await.unwrap().expect("the stream goes on");
                if !m.svids.is_empty() && m.svids[0].x509_svid != first.svids[0].x509_svid {
                    return m;
                }
            }
        })
        .await
        .expect("a rotated SVID within 40 s (TTL 20 s)");
        (first, second)
    });
    let (a, b) = (&first.svids[0], &second.svids[0]);
    assert_eq!(a.spiffe_id, "spiffe://example.org/rotating");
    assert_eq!(b.spiffe_id, a.spiffe_id);
    assert_ne!(a.tss2_private_key, b.tss2_private_key, "a new key");
    assert_ne!(a.key_auth, b.key_auth, "a new authorization value");
    assert_eq!(b.key_auth.len(), 32);
    // The agent lets go of the TPM; each key signs only with its own value.
    let mut agent = agent;
    agent.stop();
    let tpm_handle = std::sync::Arc::new(
        tessera_tpm::Tpm::open_with(tessera_tpm::Backend::Native, &tpm.tcti.parse().unwrap())
            .unwrap(),
    );
    for (svid, other) in [(a, b), (b, a)] {
        let own = tessera_tpm::TpmWorkloadKey::from_tss2_pem(
            tpm_handle.clone(),
            svid.tss2_private_key.as_bytes(),
            zeroize::Zeroizing::new(svid.key_auth.clone()),
        )
        .unwrap();
        own.sign_default(b"mine").expect("signs with its own value");
        let crossed = tessera_tpm::TpmWorkloadKey::from_tss2_pem(
            tpm_handle.clone(),
            svid.tss2_private_key.as_bytes(),
            zeroize::Zeroizing::new(other.key_auth.clone()),
        )
        .unwrap();
        let err = crossed.sign_default(b"not mine").unwrap_err();
        assert!(err.to_string().contains("TPM2_Sign"), "{err}");
        // The leaf is for this key.
        let leaf = tessera_core::x509::split_concatenated(&svid.x509_svid).unwrap();
        let info = tessera_core::x509::cert_info(&leaf[0]).unwrap();
        assert_eq!(info.public_key_der, own.public_key_der());
    }
}

/// The first non-empty answer of `TpmWorkloadKeys/FetchTpmX509SVID`, within 30 s.
fn first_tpm_svids(agent: &Agent) -> tessera_proto::local::TpmX509svidResponse {
    use tessera_proto::local as lpb;
    use tessera_proto::local::tpm_workload_keys_client::TpmWorkloadKeysClient;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ch = tessera_proto::unix_channel(&agent.socket).await;
            if let Ok(ch) = ch {
                let mut r = tonic::Request::new(lpb::TpmX509svidRequest {});
                r.metadata_mut().insert(
                    tessera_proto::WORKLOAD_HEADER,
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                if let Ok(s) = TpmWorkloadKeysClient::new(ch).fetch_tpm_x509svid(r).await {
                    let mut s = s.into_inner();
                    if let Ok(Some(m)) = s.message().await
                        && !m.svids.is_empty()
                    {
                        return m;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no TPM-held SVID in 30 s:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// A TPM-held SVID survives a restart with the server away: the persisted cache
/// keeps its key file and authorization value (encrypted under a key only this TPM
/// can recompute), and the restarted agent serves the same SVID, key and value at
/// once, which still sign in the TPM.
#[test]
fn tpm_held_svids_are_served_from_the_cache_after_an_offline_restart() {
    let dir = test_dir("tpm-workload-cache");
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let mut server = Server::start(
        &dir.path().join("server"),
        &format!(
            "[node_attestors.tpm_ek]\nek_ca_bundle = [{:?}]\nek_intermediates = [{:?}]\n",
            tpm.ek_ca_root.display().to_string(),
            tpm.ek_ca_intermediate.display().to_string()
        ),
    );
    let (mut agent, id) = agent_on(&dir.path().join("agent"), &server, &tpm);
    server.entry(
        "spiffe://example.org/cached-tpm-app",
        &id,
        &[&format!("unix:uid:{}", my_uid())],
        &["--workload-key", "tpm"],
    );
    let first = first_tpm_svids(&agent).svids.remove(0);
    let cache = agent.dir.join("data/svids.cache");
    assert!(
        wait_until(Duration::from_secs(10), || cache.exists()),
        "no SVID cache written"
    );
    let on_disk = std::fs::read(&cache).unwrap();
    assert!(
        !on_disk
            .windows(first.key_auth.len())
            .any(|w| w == first.key_auth.as_slice()),
        "the authorization value is in the cache in clear"
    );

    agent.stop();
    server.stop();
    agent.spawn(None);
    let again = first_tpm_svids(&agent).svids.remove(0);
    assert_eq!(again.spiffe_id, first.spiffe_id);
    assert_eq!(again.x509_svid, first.x509_svid, "not the cached SVID");
    assert_eq!(again.tss2_private_key, first.tss2_private_key);
    assert_eq!(again.key_auth, first.key_auth);
    let log = agent.log();
    assert!(
        log.contains("restored workload SVIDs from the SVID cache"),
        "{log}"
    );
    agent.stop();
    // The restored key still signs in the TPM with its value.
    let tpm_handle = std::sync::Arc::new(
        tessera_tpm::Tpm::open_with(tessera_tpm::Backend::Native, &tpm.tcti.parse().unwrap())
            .unwrap(),
    );
    let key = tessera_tpm::TpmWorkloadKey::from_tss2_pem(
        tpm_handle,
        again.tss2_private_key.as_bytes(),
        zeroize::Zeroizing::new(again.key_auth.clone()),
    )
    .unwrap();
    key.sign_default(b"restored")
        .expect("the restored key signs");
}
