//! `tessera-agent api ...`: a workload's view of the Workload API (fetch and watch
//! X509-SVIDs, fetch and validate JWT-SVIDs), printed as `spire-agent api` prints it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use tessera_proto::workload as pb;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{CliError, SocketArg};

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetches SVIDs.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validates SVIDs.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Prints every X509-SVID update as the agent pushes it.
    Watch {
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Fetches the caller's X509-SVIDs and bundles.
    X509 {
        #[command(flatten)]
        socket: SocketArg,
        /// Write svid.N.pem, svid.N.key and bundle.N.pem into this directory; for
        /// an SVID whose key is in the agent's TPM, svid.N.tss2.key (TSS2 PRIVATE
        /// KEY) and svid.N.auth (its authorization value) instead of svid.N.key.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Fetches a JWT-SVID.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validates a JWT-SVID through the agent.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        svid: String,
    },
}

type WorkloadClient = SpiffeWorkloadApiClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

pub(super) fn add_header(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        tessera_proto::WORKLOAD_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(req)
}

/// A connection to the agent's socket.
pub(super) async fn channel(path: &Path) -> Result<Channel, CliError> {
    tessera_proto::unix_channel(path)
        .await
        .map_err(|e| CliError::Unreachable {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

async fn workload_client(path: &Path) -> Result<WorkloadClient, CliError> {
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = add_header;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel(path).await?,
        f,
    ))
}

/// Runs one `api` command.
pub async fn execute(command: ApiCommand) -> Result<(), CliError> {
    match command {
        ApiCommand::Fetch(FetchCommand::X509 { socket, write }) => {
            let path = socket.resolve()?;
            let mut c = workload_client(&path).await?;
            let start = Instant::now();
            // Software keys from the Workload API; keys in the agent's TPM from
            // Tessera's own service (the Workload API refuses a workload that has
            // only those with FailedPrecondition).
            let resp = match c.fetch_x509svid(pb::X509svidRequest {}).await {
                Ok(stream) => Some(
                    stream
                        .into_inner()
                        .message()
                        .await?
                        .ok_or(CliError::NoAnswer)?,
                ),
                Err(s) if s.code() == tonic::Code::FailedPrecondition => None,
                Err(s) => return Err(s.into()),
            };
            let tpm = super::api_tpm::fetch(&path).await?;
            if resp.is_none() && tpm.is_none() {
                return Err(CliError::NoAnswer);
            }
            let resp = resp.unwrap_or_default();
            match write {
                Some(dir) => {
                    let mut files = x509_files(&resp);
                    if let Some(t) = &tpm {
                        files.extend(super::api_tpm::tpm_files(t, resp.svids.len()));
                    }
                    write_files(files, &dir)?;
                }
                None => {
                    let mut text = x509_text(&resp, start.elapsed());
                    if let Some(t) = &tpm {
                        text.push_str(&super::api_tpm::tpm_text(t));
                    }
                    tessera_process::output::print(&text);
                }
            }
        }
        ApiCommand::Fetch(FetchCommand::Jwt {
            socket,
            audience,
            spiffe_id,
        }) => {
            let path = socket.resolve()?;
            let mut c = workload_client(&path).await?;
            let resp = c
                .fetch_jwtsvid(pb::JwtsvidRequest {
                    audience,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            tessera_process::output::print(&jwt_svids_text(&resp));
            let mut bundles = c
                .fetch_jwt_bundles(pb::JwtBundlesRequest {})
                .await?
                .into_inner();
            if let Some(b) = bundles.message().await? {
                tessera_process::output::print(&jwt_bundles_text(&b));
            }
        }
        ApiCommand::Validate(ValidateCommand::Jwt {
            socket,
            audience,
            svid,
        }) => {
            let mut c = workload_client(&socket.resolve()?).await?;
            let resp = c
                .validate_jwtsvid(pb::ValidateJwtsvidRequest { audience, svid })
                .await?
                .into_inner();
            tessera_process::output::print(&validation_text(resp));
        }
        ApiCommand::Watch { socket } => {
            let mut c = workload_client(&socket.resolve()?).await?;
            let start = Instant::now();
            let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await?.into_inner();
            while let Some(resp) = stream.message().await? {
                tessera_process::output::print(&x509_text(&resp, start.elapsed()));
            }
        }
    }
    Ok(())
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Splits concatenated DER certificates (what the agent sent is trusted to parse;
/// anything unparseable is simply not shown).
fn split_ders(data: &[u8]) -> Vec<Vec<u8>> {
    tessera_core::x509::split_concatenated(data).unwrap_or_default()
}

/// An X509-SVID response as `fetch x509` and `watch` print it, received `elapsed`
/// after asking.
pub fn x509_text(resp: &pb::X509svidResponse, elapsed: Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Received {} svid{} after {:.1?}\n",
        resp.svids.len(),
        if resp.svids.len() == 1 { "" } else { "s" },
        elapsed
    );
    for s in &resp.svids {
        let _ = writeln!(out, "SPIFFE ID:\t\t{}", s.spiffe_id);
        if !s.hint.is_empty() {
            let _ = writeln!(out, "Hint:\t\t\t{}", s.hint);
        }
        if let Some(leaf) = split_ders(&s.x509_svid).first()
            && let Ok(i) = tessera_core::x509::cert_info(leaf)
        {
            let _ = writeln!(out, "SVID Valid After:\t{}", rfc3339(i.not_before));
            let _ = writeln!(out, "SVID Valid Until:\t{}", rfc3339(i.not_after));
        }
        for (n, ca) in split_ders(&s.bundle).iter().enumerate() {
            if let Ok(i) = tessera_core::x509::cert_info(ca) {
                let _ = writeln!(out, "CA #{} Valid After:\t{}", n + 1, rfc3339(i.not_before));
                let _ = writeln!(out, "CA #{} Valid Until:\t{}", n + 1, rfc3339(i.not_after));
            }
        }
        out.push('\n');
    }
    out
}

fn pems(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| tessera_core::x509::to_pem("CERTIFICATE", d))
        .collect()
}

/// One file `fetch x509 --write` writes.
#[derive(Debug, PartialEq, Eq)]
pub struct OutFile {
    pub name: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// The files `fetch x509 --write` writes for `resp`, in order: per SVID its chain,
/// its key (readable by the owner only), its bundle and the federated bundles.
pub fn x509_files(resp: &pb::X509svidResponse) -> Vec<OutFile> {
    let mut files = Vec::new();
    let mut add = |name: String, data: Vec<u8>, mode: u32| {
        files.push(OutFile { name, data, mode });
    };
    for (i, s) in resp.svids.iter().enumerate() {
        add(
            format!("svid.{i}.pem"),
            pems(&split_ders(&s.x509_svid)).into_bytes(),
            0o644,
        );
        add(
            format!("svid.{i}.key"),
            tessera_core::x509::to_pem("PRIVATE KEY", &s.x509_svid_key).into_bytes(),
            0o600,
        );
        add(
            format!("bundle.{i}.pem"),
            pems(&split_ders(&s.bundle)).into_bytes(),
            0o644,
        );
        for (j, (_, fed)) in resp.federated_bundles.iter().enumerate() {
            add(
                format!("federated_bundle.{i}.{j}.pem"),
                pems(&split_ders(fed)).into_bytes(),
                0o644,
            );
        }
    }
    files
}

fn write_files(files: Vec<OutFile>, dir: &Path) -> Result<(), CliError> {
    let failed = |p: &Path| {
        let path = p.display().to_string();
        move |source| CliError::Write { path, source }
    };
    tessera_process::fs::ensure_dir(dir, 0o755).map_err(failed(dir))?;
    for f in files {
        let p = dir.join(&f.name);
        tessera_process::fs::write_atomic(&p, &f.data, f.mode).map_err(failed(&p))?;
        tessera_process::output::print(&format!("Writing {}\n", p.display()));
    }
    Ok(())
}

/// The JWT-SVIDs of a `fetch jwt` answer.
pub fn jwt_svids_text(resp: &pb::JwtsvidResponse) -> String {
    resp.svids
        .iter()
        .map(|s| format!("token({}):\n\t{}\n", s.spiffe_id, s.svid))
        .collect()
}

/// The JWT bundles `fetch jwt` prints after the tokens.
pub fn jwt_bundles_text(b: &pb::JwtBundlesResponse) -> String {
    // Sorted, so that the output does not change from run to run.
    let sorted: std::collections::BTreeMap<_, _> = b.bundles.iter().collect();
    sorted
        .into_iter()
        .map(|(td, jwks)| format!("bundle({td}):\n\t{}\n", String::from_utf8_lossy(jwks)))
        .collect()
}

/// What `validate jwt` prints for a valid token.
pub fn validation_text(resp: pb::ValidateJwtsvidResponse) -> String {
    let mut out = format!("SVID is valid.\nSPIFFE ID : {}\n", resp.spiffe_id);
    if let Some(claims) = resp.claims {
        let map: serde_json::Map<String, serde_json::Value> = claims
            .fields
            .into_iter()
            .map(|(k, v)| (k, struct_value_to_json(v)))
            .collect();
        out.push_str(&format!("Claims    : {}\n", serde_json::Value::Object(map)));
    }
    out
}

fn struct_value_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Value::from(n)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(struct_value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, struct_value_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestPki, id};
    use std::time::SystemTime;
    use tessera_core::key::{Key, KeyType, SoftwareKey};

    const T: u64 = 1_800_000_000;

    /// One SVID for `/web` issued at T for an hour, with its CA and a federated
    /// bundle.
    fn response(hint: &str) -> pb::X509svidResponse {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T);
        let pki = TestPki::new(now);
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let leaf = pki.leaf(
            &id("/web"),
            key.public_key_der(),
            now,
            Duration::from_secs(3600),
        );
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: "spiffe://example.org/web".into(),
                x509_svid: leaf,
                x509_svid_key: key.pkcs8_der().to_vec(),
                bundle: pki.bundle().x509_concatenated(),
                hint: hint.into(),
            }],
            crl: Vec::new(),
            federated_bundles: [(
                "spiffe://a.org".to_string(),
                pki.bundle().x509_concatenated(),
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn x509_svids_print_with_their_validity_and_their_cas() {
        assert_eq!(
            x509_text(&response("internal"), Duration::from_millis(12)),
            "Received 1 svid after 12.0ms\n\
             \n\
             SPIFFE ID:\t\tspiffe://example.org/web\n\
             Hint:\t\t\tinternal\n\
             SVID Valid After:\t2027-01-15T07:59:50Z\n\
             SVID Valid Until:\t2027-01-15T09:00:00Z\n\
             CA #1 Valid After:\t2026-01-15T07:59:50Z\n\
             CA #1 Valid Until:\t2037-01-12T08:00:00Z\n\
             \n"
        );
        let mut two = response("");
        two.svids.push(two.svids[0].clone());
        let text = x509_text(&two, Duration::from_secs(1));
        assert!(text.starts_with("Received 2 svids after 1.0s\n"), "{text}");
        assert!(!text.contains("Hint"), "{text}");
        let none = pb::X509svidResponse::default();
        assert_eq!(
            x509_text(&none, Duration::from_millis(3)),
            "Received 0 svids after 3.0ms\n\n"
        );
    }

    #[test]
    fn written_files_are_pem_and_the_key_is_private() {
        let resp = response("");
        let files = x509_files(&resp);
        let names: Vec<(&str, u32)> = files.iter().map(|f| (f.name.as_str(), f.mode)).collect();
        assert_eq!(
            names,
            [
                ("svid.0.pem", 0o644),
                ("svid.0.key", 0o600),
                ("bundle.0.pem", 0o644),
                ("federated_bundle.0.0.pem", 0o644)
            ]
        );
        let svid = String::from_utf8(files[0].data.clone()).unwrap();
        assert_eq!(
            tessera_core::x509::pem_certs(svid.as_bytes()).unwrap(),
            [resp.svids[0].x509_svid.clone()]
        );
        let key = String::from_utf8(files[1].data.clone()).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{key}");
    }

    #[test]
    fn jwts_print_one_token_and_one_bundle_a_line_pair() {
        let svids = pb::JwtsvidResponse {
            svids: vec![pb::Jwtsvid {
                spiffe_id: "spiffe://example.org/web".into(),
                svid: "aaa.bbb.ccc".into(),
                hint: String::new(),
            }],
        };
        assert_eq!(
            jwt_svids_text(&svids),
            "token(spiffe://example.org/web):\n\taaa.bbb.ccc\n"
        );
        let bundles = pb::JwtBundlesResponse {
            bundles: [
                ("spiffe://z.org".to_string(), b"{\"keys\":[]}".to_vec()),
                (
                    "spiffe://example.org".to_string(),
                    b"{\"keys\":[1]}".to_vec(),
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            jwt_bundles_text(&bundles),
            "bundle(spiffe://example.org):\n\t{\"keys\":[1]}\nbundle(spiffe://z.org):\n\t{\"keys\":[]}\n"
        );
    }

    #[test]
    fn a_validated_token_prints_its_id_and_claims_as_json() {
        let claims = crate::workload::api::json_to_struct(
            serde_json::json!({"sub": "spiffe://example.org/web", "exp": 1800000300, "aud": ["db"]})
                .as_object()
                .unwrap()
                .clone(),
        );
        let text = validation_text(pb::ValidateJwtsvidResponse {
            spiffe_id: "spiffe://example.org/web".into(),
            claims: Some(claims),
        });
        let (head, json) = text.split_once("Claims    : ").unwrap();
        assert_eq!(
            head,
            "SVID is valid.\nSPIFFE ID : spiffe://example.org/web\n"
        );
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        // Whole numbers stay integers, not 1.8e9.
        assert_eq!(
            v,
            serde_json::json!({"sub": "spiffe://example.org/web", "exp": 1800000300, "aud": ["db"]})
        );
        let bare = validation_text(pb::ValidateJwtsvidResponse {
            spiffe_id: "spiffe://example.org/web".into(),
            claims: None,
        });
        assert_eq!(
            bare,
            "SVID is valid.\nSPIFFE ID : spiffe://example.org/web\n"
        );
    }
}
