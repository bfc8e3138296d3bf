//! `tessera-server x509 mint` and `jwt mint`: SVIDs minted directly by the server,
//! for workloads outside any agent's reach.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use tessera_core::duration::parse_duration;
use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::x509;
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{CliError, secs};

#[derive(Debug, Subcommand)]
pub enum X509Command {
    /// Mints an X509-SVID (a new key is made locally).
    Mint {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Write svid.pem, key.pem and bundle.pem here instead of printing.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// Mints a JWT-SVID.
    Mint {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
}

/// A minted X509-SVID, PEM: the chain, its private key, and the trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedX509 {
    pub svid_pem: String,
    pub key_pem: String,
    pub bundle_pem: String,
}

impl MintedX509 {
    fn new(chain: &[Vec<u8>], key: &SoftwareKey, roots: &[Vec<u8>]) -> Self {
        let pem = |ders: &[Vec<u8>]| -> String {
            ders.iter()
                .map(|d| x509::to_pem("CERTIFICATE", d))
                .collect()
        };
        Self {
            svid_pem: pem(chain),
            key_pem: x509::to_pem("PRIVATE KEY", key.pkcs8_der()),
            bundle_pem: pem(roots),
        }
    }

    /// The three files `--write` makes: name, content, mode.
    fn files(&self) -> [(&'static str, &str, u32); 3] {
        [
            ("svid.pem", &self.svid_pem, 0o644),
            ("key.pem", &self.key_pem, 0o600),
            ("bundle.pem", &self.bundle_pem, 0o644),
        ]
    }
}

/// `x509 mint` without `--write`: the three PEM blocks, each under a heading.
pub fn minted_x509_text(m: &MintedX509) -> String {
    format!(
        "X509-SVID:\n{}\nPrivate key:\n{}\nRoot CAs:\n{}\n",
        m.svid_pem, m.key_pem, m.bundle_pem
    )
}

/// Writes the files of `m` into `dir` (made if needed; the key readable by its owner
/// only) and says what it wrote.
pub fn write_minted_x509(m: &MintedX509, dir: &Path) -> Result<String, CliError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| CliError::Write { path, source }
    };
    tessera_process::fs::ensure_dir(dir, 0o755).map_err(failed(dir))?;
    let mut out = String::new();
    for (name, data, mode) in m.files() {
        let p = dir.join(name);
        tessera_process::fs::write_atomic(&p, data.as_bytes(), mode).map_err(failed(&p))?;
        out.push_str(&format!("Wrote {}\n", p.display()));
    }
    Ok(out)
}

/// Runs `x509 mint`; returns what to print.
pub(super) async fn execute_x509(
    c: &mut AdminClient<Channel>,
    command: X509Command,
) -> Result<String, CliError> {
    let X509Command::Mint {
        spiffe_id,
        ttl,
        dns_names,
        write,
    } = command;
    let key = Arc::new(SoftwareKey::generate(KeyType::EcP256)?);
    let dyn_key: Arc<dyn Key> = key.clone();
    let csr = x509::build_csr(&dyn_key)?;
    let chain = c
        .mint_x509_svid(pb::MintX509SvidRequest {
            spiffe_id,
            csr,
            ttl_seconds: secs("--ttl", ttl)?,
            dns_names,
        })
        .await?
        .into_inner()
        .cert_chain;
    let bundle = c.get_bundle(pb::GetBundleRequest {}).await?.into_inner();
    let minted = MintedX509::new(&chain, &key, &bundle.x509_authorities);
    match write {
        Some(dir) => write_minted_x509(&minted, &dir),
        None => Ok(minted_x509_text(&minted)),
    }
}

/// Runs `jwt mint`; returns the token, on a line of its own.
pub(super) async fn execute_jwt(
    c: &mut AdminClient<Channel>,
    command: JwtCommand,
) -> Result<String, CliError> {
    let JwtCommand::Mint {
        spiffe_id,
        audience,
        ttl,
    } = command;
    let t = c
        .mint_jwt_svid(pb::MintJwtSvidRequest {
            spiffe_id,
            audience,
            ttl_seconds: secs("--ttl", ttl)?,
        })
        .await?
        .into_inner();
    Ok(format!("{}\n", t.token))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn minted() -> MintedX509 {
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        MintedX509::new(
            &[b"leaf".to_vec(), b"inter".to_vec()],
            &key,
            &[b"root".to_vec()],
        )
    }

    #[test]
    fn a_minted_svid_prints_its_chain_key_and_roots() {
        let m = minted();
        assert_eq!(m.svid_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(m.bundle_pem.matches("BEGIN CERTIFICATE").count(), 1);
        let text = minted_x509_text(&m);
        assert_eq!(
            text,
            format!(
                "X509-SVID:\n{}\nPrivate key:\n{}\nRoot CAs:\n{}\n",
                m.svid_pem, m.key_pem, m.bundle_pem
            )
        );
        let key_at = text
            .find("Private key:\n-----BEGIN PRIVATE KEY-----")
            .unwrap();
        let roots_at = text.find("Root CAs:\n-----BEGIN CERTIFICATE-----").unwrap();
        assert!(text.starts_with("X509-SVID:\n-----BEGIN CERTIFICATE-----"));
        assert!(key_at < roots_at);
    }

    #[test]
    fn a_written_svid_keeps_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("svid");
        let m = minted();
        let said = write_minted_x509(&m, &out).unwrap();
        for name in ["svid.pem", "key.pem", "bundle.pem"] {
            assert!(said.contains(&format!("Wrote {}\n", out.join(name).display())));
        }
        assert_eq!(
            std::fs::read_to_string(out.join("key.pem")).unwrap(),
            m.key_pem
        );
        let mode = |n: &str| std::fs::metadata(out.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(mode("svid.pem"), 0o644);
        // A directory that cannot be made is named.
        let blocked = out.join("key.pem").join("below");
        let err = write_minted_x509(&m, &blocked).unwrap_err();
        assert!(matches!(err, CliError::Write { .. }), "{err:?}");
        assert!(err.to_string().contains("key.pem"), "{err}");
    }
}
