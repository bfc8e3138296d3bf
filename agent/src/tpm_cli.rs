//! `tessera-agent tpm ...`: DevID provisioning (for CI and vendors' factories) and
//! `tpm info`, which prints what an operator allow-lists. Also the one place that
//! opens a TPM, so that an agent built without TPM support says so clearly.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Subcommand, ValueEnum};
use tessera_core::key::KeyType;
use tessera_tpm::{Tcti, Tpm};

use crate::cli::CliError;

#[derive(Debug, Subcommand)]
pub enum TpmCommand {
    /// Creates a DevID key in the TPM and has a vendor CA certify it.
    ProvisionDevid {
        /// The TPM: `device:/dev/tpmrm0`, `swtpm:host=..,port=..`, `mssim:...`, `tabrmd`.
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: Tcti,
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
    },
    /// Prints the EKs (hash, certificate subject and issuer) and the DevID.
    Info {
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: Tcti,
        #[arg(long)]
        devid_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: InfoOutput,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum InfoOutput {
    #[default]
    Pretty,
    Json,
}

/// Opens a TPM through the tss-esapi backend.
#[cfg(feature = "tpm")]
pub fn open(tcti: &Tcti) -> Result<Arc<Tpm>, String> {
    Tpm::open(tcti)
        .map(Arc::new)
        .map_err(|e| format!("cannot open the TPM at {tcti}: {e}"))
}

/// Without the `tpm` feature there is no backend to open a TPM with.
#[cfg(not(feature = "tpm"))]
pub fn open(tcti: &Tcti) -> Result<Arc<Tpm>, String> {
    Err(format!(
        "a TPM is configured ({tcti}) but this agent was built without TPM support (cargo feature `tpm`)"
    ))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tessera-device".into())
}

/// Runs one `tpm` command.
pub fn command(c: TpmCommand) -> Result<(), CliError> {
    match c {
        TpmCommand::ProvisionDevid {
            tcti,
            vendor_ca_cert,
            vendor_ca_key,
            out,
            key_type,
            common_name,
            validity_days,
        } => {
            let tpm = open(&tcti).map_err(CliError)?;
            let ca = tessera_tpm::provision::VendorCa::from_files(&vendor_ca_cert, &vendor_ca_key)
                .map_err(|e| CliError(e.to_string()))?;
            let request = tessera_tpm::provision::DevIdRequest {
                key_type,
                common_name: common_name.unwrap_or_else(hostname),
                validity_days,
            };
            tessera_tpm::provision::provision_devid(&tpm, &request, &ca, &out)
                .map_err(|e| CliError(e.to_string()))?;
            let info = tessera_tpm::provision::info(&tpm, Some(&out))
                .map_err(|e| CliError(e.to_string()))?;
            println!("DevID provisioned in {}", out.display());
            if let Some(d) = info.devid {
                println!("Subject          : {}", d.certificate.subject);
                println!("Issuer           : {}", d.certificate.issuer);
                println!("Agent ID path    : /spire/agent/{}", d.agent_path);
            }
            Ok(())
        }
        TpmCommand::Info {
            tcti,
            devid_dir,
            output,
        } => {
            let tpm = open(&tcti).map_err(CliError)?;
            let info = tessera_tpm::provision::info(&tpm, devid_dir.as_deref())
                .map_err(|e| CliError(e.to_string()))?;
            match output {
                InfoOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&info).map_err(|e| CliError(e.to_string()))?
                ),
                InfoOutput::Pretty => {
                    println!("TPM: {}", info.tpm);
                    for ek in &info.endorsement_keys {
                        println!("\nEK {:?}", ek.kind);
                        if let Some(h) = &ek.pub_hash {
                            println!("  pub_hash (tpm_ek allow-list) : {h}");
                        }
                        if let Some(p) = &ek.agent_path {
                            println!("  agent ID path                : /spire/agent/{p}");
                        }
                        match &ek.certificate {
                            Some(c) => {
                                println!("  certificate subject          : {}", c.subject);
                                println!("  certificate issuer           : {}", c.issuer);
                            }
                            None => println!("  certificate                  : none in NV"),
                        }
                        if let Some(t) = &ek.tpm {
                            println!(
                                "  manufacturer/model/version   : {} / {} / {}",
                                t.manufacturer.as_deref().unwrap_or("-"),
                                t.model.as_deref().unwrap_or("-"),
                                t.version.as_deref().unwrap_or("-")
                            );
                        }
                        if let Some(e) = &ek.error {
                            println!("  error                        : {e}");
                        }
                    }
                    if let Some(d) = &info.devid {
                        println!("\nDevID");
                        println!("  subject       : {}", d.certificate.subject);
                        println!("  issuer        : {}", d.certificate.issuer);
                        println!("  agent ID path : /spire/agent/{}", d.agent_path);
                    }
                }
            }
            Ok(())
        }
    }
}
