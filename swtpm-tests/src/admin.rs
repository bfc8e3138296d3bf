//! Helpers for the admin API's remote side and its audit records: SVID directories for
//! `tessera-server --remote --svid DIR` (from a real agent's Workload API, or an agent's
//! own identity), a client that presents no certificate at all, and the audit file
//! read back as JSON lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use crate::{Agent, Server, bin, run_ok};

/// The files `--svid DIR` reads.
pub const SVID_FILES: [&str; 3] = ["svid.0.pem", "svid.0.key", "bundle.0.pem"];

/// The SPIFFE ID (URI SAN) of the first certificate in a PEM file.
pub fn pem_spiffe_id(pem: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(pem),
    );
    out.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| w.strip_prefix("URI:"))
        .unwrap_or_else(|| panic!("no URI SAN in {}:\n{out}", pem.display()))
        .to_owned()
}

/// Fetches this process's X509-SVIDs from `agent` (as the workload the test process
/// is) and leaves the one for `spiffe_id` in `out` as `svid.0.pem`, `svid.0.key`,
/// `bundle.0.pem`; returns `out`.
pub fn workload_svid_dir(agent: &Agent, spiffe_id: &str, out: &Path) -> PathBuf {
    let all = out.with_extension("all");
    let _ = std::fs::remove_dir_all(&all);
    let o = agent.cli(&[
        "api",
        "fetch",
        "x509",
        "--write",
        &all.display().to_string(),
    ]);
    assert!(
        o.status.success(),
        "api fetch x509 failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::create_dir_all(out).expect("svid dir");
    for i in 0.. {
        let pem = all.join(format!("svid.{i}.pem"));
        assert!(
            pem.exists(),
            "the agent served no SVID for {spiffe_id} (entries synced yet?)"
        );
        if pem_spiffe_id(&pem) == spiffe_id {
            for (from, to) in [
                (format!("svid.{i}.pem"), SVID_FILES[0]),
                (format!("svid.{i}.key"), SVID_FILES[1]),
                (format!("bundle.{i}.pem"), SVID_FILES[2]),
            ] {
                std::fs::copy(all.join(from), out.join(to)).expect("copy SVID file");
            }
            return out.to_owned();
        }
    }
    unreachable!()
}

/// Runs `tessera-server --remote <server's TLS port> --svid <dir> <args>`.
pub fn remote_cli(server: &Server, svid: &Path, args: &[&str]) -> Output {
    Command::new(bin("tessera-server"))
        .arg("--remote")
        .arg(server.address())
        .arg("--svid")
        .arg(svid)
        // The admin socket must play no part: point the flag nowhere.
        .arg("--socket-path")
        .arg("/nonexistent/admin.sock")
        .args(args)
        .output()
        .expect("tessera-server CLI")
}

/// Calls the admin API's `ListEntries` on the server's TLS port without a client
/// certificate (the server itself is authenticated against `bundle_pem`); returns the
/// refusal, panicking if the call succeeded.
pub fn list_entries_without_certificate(server: &Server, bundle_pem: &Path) -> tonic::Status {
    let pem = std::fs::read(bundle_pem).expect("bundle");
    let roots = tessera_core::x509::pem_certs(&pem).expect("bundle PEM");
    let td = tessera_core::TrustDomain::new("example.org").expect("trust domain");
    let bundle = tessera_core::Bundle::with_x509(td.clone(), roots);
    let server_id = td.id("/spire/server").expect("server ID");
    let config = tessera_core::tls::client_config(
        tessera_core::tls::SharedBundle::new(bundle),
        server_id,
        None,
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = server.address();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://tessera-server")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let connector = connector.clone();
                let addr = addr.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let name =
                        rustls::pki_types::ServerName::try_from("tessera-server").expect("name");
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .expect("TLS connection without a client certificate");
        let mut c = tessera_proto::admin::admin_client::AdminClient::new(channel);
        match c
            .list_entries(tessera_proto::admin::ListEntriesRequest::default())
            .await
        {
            Ok(r) => panic!(
                "listed {} entries without a certificate",
                r.get_ref().entries.len()
            ),
            Err(s) => s,
        }
    })
}

/// The records of an audit file, one JSON object per line (every line must be one).
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// The records of one `type`.
pub fn records_of<'a>(
    all: &'a [serde_json::Value],
    kind: &str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    all.iter().filter(move |r| r["type"] == kind)
}
