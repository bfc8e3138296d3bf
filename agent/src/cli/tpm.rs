//! `tessera-agent tpm ...`: DevID provisioning (for CI and vendors' factories),
//! `tpm create-key` (an x509pop node key in the TPM and its CSR), and `tpm info`,
//! which prints what an operator allow-lists (as a table, or as JSON with `--output
//! json`).

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use tessera_core::key::KeyType;
use tessera_tpm::provision::TpmInfo;
use tessera_tpm::{Backend, Tcti};

use super::CliError;
use crate::startup::open_tpm_at;

#[derive(Debug, Subcommand)]
pub enum TpmCommand {
    /// Creates a DevID key in the TPM and has a vendor CA certify it.
    ProvisionDevid {
        /// The TPM: `device:/dev/tpmrm0`, `swtpm:host=..,port=..`, `mssim:...`, `tabrmd`.
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: Tcti,
        /// The TPM backend: `esapi` or `native` (default: esapi when built in).
        #[arg(long, default_value_t)]
        tpm_backend: Backend,
        /// The vendor CA certificate (PEM).
        #[arg(long)]
        vendor_ca_cert: PathBuf,
        /// The vendor CA key (PEM, PKCS#8).
        #[arg(long)]
        vendor_ca_key: PathBuf,
        /// Where to store the DevID (key blob, CSR, certificate chain).
        #[arg(long)]
        out: PathBuf,
        /// `ec-p256` (default), `ec-p384` or `rsa-2048`.
        #[arg(long, default_value = "ec-p256")]
        key_type: KeyType,
        /// The DevID certificate's subject CN (default: this host's name).
        #[arg(long)]
        common_name: Option<String>,
        #[arg(long, default_value_t = 3650)]
        validity_days: u32,
        #[command(flatten)]
        auth: HierarchyArgs,
    },
    /// Creates a signing key in the TPM for x509pop: writes its blob (the agent's
    /// `tpm_key_path`) and a certificate signing request for the node's CA.
    CreateKey {
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: Tcti,
        /// The TPM backend: `esapi` or `native` (default: esapi when built in).
        #[arg(long, default_value_t)]
        tpm_backend: Backend,
        /// Where to write the key blob (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Where to write the CSR (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// `ec-p256` (default), `ec-p384`, `rsa-2048` or `rsa-3072`.
        #[arg(long, default_value = "ec-p256")]
        key_type: KeyType,
        /// The CSR's subject CN (default: this host's name).
        #[arg(long)]
        common_name: Option<String>,
        #[command(flatten)]
        auth: HierarchyArgs,
    },
    /// Prints the EKs (hash, certificate subject and issuer) and the DevID.
    Info {
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: Tcti,
        /// The TPM backend: `esapi` or `native` (default: esapi when built in).
        #[arg(long, default_value_t)]
        tpm_backend: Backend,
        #[arg(long)]
        devid_dir: Option<PathBuf>,
        /// Show the factory DevID: the key at a persistent handle and its
        /// certificates in NV (`--devid-key-handle`, `--devid-cert-nv-index`).
        #[arg(long, conflicts_with = "devid_dir")]
        factory_devid: bool,
        /// The factory DevID key's persistent handle (hex).
        #[arg(long, default_value = "0x81020000", value_parser = parse_persistent_handle)]
        devid_key_handle: u32,
        /// The factory DevID certificates' NV index (hex).
        #[arg(long, default_value = "0x01C90000", value_parser = parse_nv_index)]
        devid_cert_nv_index: u32,
        #[arg(long, value_enum, default_value_t)]
        output: InfoOutput,
        #[command(flatten)]
        auth: HierarchyArgs,
    },
}

/// The TPM's hierarchy passwords (docs/TPM.md, "Hierarchy passwords").
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HierarchyArgs {
    /// A file holding the owner hierarchy's password.
    #[arg(long)]
    pub owner_auth_file: Option<PathBuf>,
    /// A file holding the endorsement hierarchy's password.
    #[arg(long)]
    pub endorsement_auth_file: Option<PathBuf>,
}

fn parse_handle(s: &str) -> Result<u32, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| format!("{s:?}: write the handle in hex, as 0x81020000"))?;
    u32::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not a 32-bit hex handle"))
}

fn parse_persistent_handle(s: &str) -> Result<u32, String> {
    parse_handle(s).and_then(crate::tpm_settings::check_persistent_handle)
}

fn parse_nv_index(s: &str) -> Result<u32, String> {
    parse_handle(s).and_then(crate::tpm_settings::check_nv_index)
}

/// Opens the TPM and sets the hierarchy passwords given.
fn open(
    tcti: &Tcti,
    backend: Backend,
    auth: &HierarchyArgs,
) -> Result<std::sync::Arc<tessera_tpm::Tpm>, CliError> {
    let tpm = open_tpm_at(tcti, backend)?;
    let settings = crate::tpm_settings::TpmSettings {
        owner_auth_file: auth.owner_auth_file.clone(),
        endorsement_auth_file: auth.endorsement_auth_file.clone(),
        ..Default::default()
    };
    if settings.is_set() {
        let auth = settings
            .hierarchy_auth()
            .map_err(|e| CliError::Key(e.to_string()))?;
        tpm.with(|dev| dev.set_hierarchy_auth(&auth))
            .map_err(|e| CliError::Key(e.to_string()))?;
    }
    Ok(tpm)
}

/// How `tpm info` prints.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum InfoOutput {
    #[default]
    Pretty,
    Json,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tessera-device".into())
}

/// Runs one `tpm` command.
pub fn execute(c: TpmCommand) -> Result<(), CliError> {
    match c {
        TpmCommand::ProvisionDevid {
            tcti,
            tpm_backend,
            vendor_ca_cert,
            vendor_ca_key,
            out,
            key_type,
            common_name,
            validity_days,
            auth,
        } => {
            let tpm = open(&tcti, tpm_backend, &auth)?;
            let ca = tessera_tpm::provision::VendorCa::from_files(&vendor_ca_cert, &vendor_ca_key)?;
            let request = tessera_tpm::provision::DevIdRequest {
                key_type,
                common_name: common_name.unwrap_or_else(hostname),
                validity_days,
            };
            tessera_tpm::provision::provision_devid(&tpm, &request, &ca, &out)?;
            let info = tessera_tpm::provision::info(&tpm, Some(&out))?;
            tessera_process::output::print(&provisioned_text(&out, &info));
            Ok(())
        }
        TpmCommand::CreateKey {
            tcti,
            tpm_backend,
            out,
            csr,
            key_type,
            common_name,
            auth,
        } => {
            let tpm = open(&tcti, tpm_backend, &auth)?;
            let cn = common_name.unwrap_or_else(hostname);
            create_key(tpm, &out, &csr, key_type, &cn)?;
            tessera_process::output::print(&format!(
                "TPM key written to {} (tpm_key_path), its CSR (CN={cn}) to {}\n",
                out.display(),
                csr.display()
            ));
            Ok(())
        }
        TpmCommand::Info {
            tcti,
            tpm_backend,
            devid_dir,
            factory_devid,
            devid_key_handle,
            devid_cert_nv_index,
            output,
            auth,
        } => {
            let tpm = open(&tcti, tpm_backend, &auth)?;
            let info = if factory_devid {
                let id = tessera_tpm::factory::load_factory_devid(
                    &tpm,
                    devid_key_handle,
                    devid_cert_nv_index,
                )
                .map_err(|e| CliError::Key(format!("factory DevID: {e}")))?;
                tessera_tpm::provision::info_for(&tpm, Some(&id))?
            } else {
                tessera_tpm::provision::info(&tpm, devid_dir.as_deref())?
            };
            tessera_process::output::print(&info_text(&info, output)?);
            Ok(())
        }
    }
}

/// Creates a TPM signing key, writes its blob to `out` (never over an existing
/// file: that would lose a key in use) and a CSR with subject CN `cn` to `csr`.
pub fn create_key(
    tpm: std::sync::Arc<tessera_tpm::Tpm>,
    out: &Path,
    csr: &Path,
    key_type: KeyType,
    cn: &str,
) -> Result<(), CliError> {
    use std::sync::Arc;
    use tessera_core::key::Key;
    if out.exists() {
        return Err(CliError::Key(format!(
            "{} exists; remove it first if its key is no longer needed",
            out.display()
        )));
    }
    let key = tessera_tpm::TpmKey::generate(tpm, key_type)
        .map_err(|e| CliError::Key(format!("cannot create the key in the TPM: {e}")))?;
    let blob = key.blob().to_bytes();
    let key: Arc<dyn Key> = Arc::new(key);
    let signer = tessera_core::key::RcgenKey::new(key)
        .map_err(|e| CliError::Key(format!("unusable key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let request = params
        .serialize_request(&signer)
        .map_err(|e| CliError::Key(format!("cannot sign the CSR with the TPM key: {e}")))?;
    let write = |path: &Path, bytes: &[u8], mode| {
        tessera_process::fs::write_atomic(path, bytes, mode).map_err(|source| CliError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    write(out, &blob, 0o600)?;
    write(
        csr,
        tessera_core::x509::to_pem("CERTIFICATE REQUEST", request.der()).as_bytes(),
        0o644,
    )
}

/// What `tpm provision-devid` prints once the DevID is in `out`.
pub fn provisioned_text(out: &Path, info: &TpmInfo) -> String {
    let mut s = format!("DevID provisioned in {}\n", out.display());
    if let Some(d) = &info.devid {
        s.push_str(&format!("Subject          : {}\n", d.certificate.subject));
        s.push_str(&format!("Issuer           : {}\n", d.certificate.issuer));
        s.push_str(&format!(
            "Agent ID path    : /spire/agent/{}\n",
            d.agent_path
        ));
    }
    s
}

/// What `tpm info` prints.
pub fn info_text(info: &TpmInfo, output: InfoOutput) -> Result<String, CliError> {
    Ok(match output {
        InfoOutput::Json => format!("{}\n", serde_json::to_string_pretty(info)?),
        InfoOutput::Pretty => info_pretty(info),
    })
}

fn info_pretty(info: &TpmInfo) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "TPM: {}", info.tpm);
    for ek in &info.endorsement_keys {
        let _ = writeln!(s, "\nEK {:?}", ek.kind);
        if let Some(h) = &ek.pub_hash {
            let _ = writeln!(s, "  pub_hash (tpm_ek allow-list) : {h}");
        }
        if let Some(p) = &ek.agent_path {
            let _ = writeln!(s, "  agent ID path                : /spire/agent/{p}");
        }
        match &ek.certificate {
            Some(c) => {
                let _ = writeln!(s, "  certificate subject          : {}", c.subject);
                let _ = writeln!(s, "  certificate issuer           : {}", c.issuer);
            }
            None => {
                let _ = writeln!(s, "  certificate                  : none in NV");
            }
        }
        if let Some(t) = &ek.tpm {
            let _ = writeln!(
                s,
                "  manufacturer/model/version   : {} / {} / {}",
                t.manufacturer.as_deref().unwrap_or("-"),
                t.model.as_deref().unwrap_or("-"),
                t.version.as_deref().unwrap_or("-")
            );
        }
        if let Some(e) = &ek.error {
            let _ = writeln!(s, "  error                        : {e}");
        }
    }
    if let Some(d) = &info.devid {
        let _ = writeln!(s, "\nDevID");
        let _ = writeln!(s, "  subject       : {}", d.certificate.subject);
        let _ = writeln!(s, "  issuer        : {}", d.certificate.issuer);
        let _ = writeln!(s, "  agent ID path : /spire/agent/{}", d.agent_path);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_tpm::ek::{EkKind, TpmIdentity};
    use tessera_tpm::provision::{CertificateSummary, DevIdInfo, EkInfo};

    fn cert(subject: &str, issuer: &str) -> CertificateSummary {
        CertificateSummary {
            subject: subject.into(),
            issuer: issuer.into(),
            sha256: "ab".repeat(32),
        }
    }

    fn info() -> TpmInfo {
        TpmInfo {
            tpm: "swtpm:host=127.0.0.1,port=2321".into(),
            endorsement_keys: vec![
                EkInfo {
                    kind: EkKind::EccP256,
                    pub_hash: Some("0f".repeat(32)),
                    agent_path: Some(format!("tpm/{}", "0f".repeat(32))),
                    certificate: Some(cert("CN=ek", "CN=swtpm-localca")),
                    tpm: Some(TpmIdentity {
                        manufacturer: Some("id:00001014".into()),
                        model: Some("swtpm".into()),
                        version: None,
                    }),
                    error: None,
                },
                EkInfo {
                    kind: EkKind::EccP384,
                    pub_hash: None,
                    agent_path: None,
                    certificate: None,
                    tpm: None,
                    error: Some("the TPM does not support the template".into()),
                },
            ],
            devid: Some(DevIdInfo {
                certificate: cert("CN=device-1", "CN=Vendor CA"),
                subject_cn: Some("device-1".into()),
                agent_path: "tpm_devid/1234".into(),
            }),
        }
    }

    #[test]
    fn info_as_a_table() {
        let h = "0f".repeat(32);
        assert_eq!(
            info_text(&info(), InfoOutput::Pretty).unwrap(),
            format!(
                "TPM: swtpm:host=127.0.0.1,port=2321\n\
                 \n\
                 EK EccP256\n\
                 \x20 pub_hash (tpm_ek allow-list) : {h}\n\
                 \x20 agent ID path                : /spire/agent/tpm/{h}\n\
                 \x20 certificate subject          : CN=ek\n\
                 \x20 certificate issuer           : CN=swtpm-localca\n\
                 \x20 manufacturer/model/version   : id:00001014 / swtpm / -\n\
                 \n\
                 EK EccP384\n\
                 \x20 certificate                  : none in NV\n\
                 \x20 error                        : the TPM does not support the template\n\
                 \n\
                 DevID\n\
                 \x20 subject       : CN=device-1\n\
                 \x20 issuer        : CN=Vendor CA\n\
                 \x20 agent ID path : /spire/agent/tpm_devid/1234\n"
            )
        );
    }

    #[test]
    fn info_as_json_reads_back_as_the_same_info() {
        let text = info_text(&info(), InfoOutput::Json).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        let back: TpmInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(back, info());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["endorsement_keys"][0]["kind"], "ecc-p256");
        assert_eq!(v["devid"]["agent_path"], "tpm_devid/1234");
    }

    #[test]
    fn provisioning_says_where_and_what() {
        assert_eq!(
            provisioned_text(Path::new("/var/lib/devid"), &info()),
            "DevID provisioned in /var/lib/devid\n\
             Subject          : CN=device-1\n\
             Issuer           : CN=Vendor CA\n\
             Agent ID path    : /spire/agent/tpm_devid/1234\n"
        );
        let mut without = info();
        without.devid = None;
        assert_eq!(
            provisioned_text(Path::new("/d"), &without),
            "DevID provisioned in /d\n"
        );
    }
}
