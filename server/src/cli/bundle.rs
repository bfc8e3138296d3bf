//! `tessera-server bundle`: the server's trust bundle, and federated ones.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use tessera_core::{Bundle, TrustDomain};
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_proto::types as tpb;
use tonic::transport::Channel;

use super::{CliError, json_text};

/// How a bundle is written or read.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum BundleFormat {
    /// The X.509 authorities, PEM.
    #[default]
    Pem,
    /// A JWK Set, as SPIFFE bundle endpoints serve it (`spiffe`, SPIRE's name for
    /// it, is accepted too).
    #[value(alias = "spiffe")]
    Jwks,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Prints the server's trust bundle.
    Show {
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Stores a federated trust domain's bundle.
    Set {
        /// The federated trust domain (or its spiffe:// ID).
        #[arg(long)]
        id: String,
        /// The bundle file.
        #[arg(long)]
        path: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Lists federated bundles.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
    /// Deletes a federated bundle.
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Counts the bundles the server holds: its own and the federated ones.
    Count {
        #[arg(long, value_enum, default_value_t)]
        output: super::Output,
    },
}

/// Runs one `bundle` command; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    command: BundleCommand,
) -> Result<String, CliError> {
    match command {
        BundleCommand::Show { format } => {
            let b = c.get_bundle(pb::GetBundleRequest {}).await?.into_inner();
            bundle_text(&b, format)
        }
        BundleCommand::Set { id, path, format } => {
            let bundle = read_bundle(&id, &path, format)?;
            c.set_federated_bundle(pb::SetFederatedBundleRequest {
                bundle: Some(crate::api::convert::bundle_to_proto(&bundle)),
            })
            .await?;
            Ok("Bundle set.\n".to_owned())
        }
        BundleCommand::List { format } => {
            let bundles = c
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await?
                .into_inner()
                .bundles;
            bundles_text(&bundles, format)
        }
        BundleCommand::Delete { id } => {
            c.delete_federated_bundle(pb::DeleteFederatedBundleRequest { trust_domain: id })
                .await?;
            Ok("Bundle deleted.\n".to_owned())
        }
        BundleCommand::Count { output } => {
            let n = c
                .count_bundles(pb::CountBundlesRequest {})
                .await?
                .into_inner()
                .count;
            super::entry::count_text(n, "bundle", "bundles", output)
        }
    }
}

/// The bundle of trust domain `id` in the file at `path`.
fn read_bundle(id: &str, path: &std::path::Path, format: BundleFormat) -> Result<Bundle, CliError> {
    let td = TrustDomain::new(id).map_err(|e| CliError::Invalid {
        flag: "--id",
        reason: e.to_string(),
    })?;
    let text = std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_bundle(td, &text, format, path)
}

/// The bundle of `td` in `text`, in `format`; `origin` names where it came from.
pub(super) fn parse_bundle(
    td: TrustDomain,
    text: &[u8],
    format: BundleFormat,
    origin: &std::path::Path,
) -> Result<Bundle, CliError> {
    Ok(match format {
        BundleFormat::Pem => {
            let certs = tessera_core::x509::pem_certs(text).map_err(|source| CliError::BadPem {
                path: origin.to_owned(),
                source,
            })?;
            Bundle::with_x509(td, certs)
        }
        BundleFormat::Jwks => Bundle::from_jwks(td, text).map_err(|e| CliError::BadFile {
            path: origin.to_owned(),
            reason: e.to_string(),
        })?,
    })
}

/// A bundle as PEM certificates or as a JWK Set.
pub fn bundle_text(b: &tpb::Bundle, format: BundleFormat) -> Result<String, CliError> {
    let core = tessera_proto::convert::bundle_from_proto(b.clone()).map_err(CliError::Reply)?;
    match format {
        BundleFormat::Pem => Ok(core.x509_pem()),
        BundleFormat::Jwks => {
            let v: serde_json::Value = serde_json::from_str(&core.to_jwks())?;
            json_text(&v)
        }
    }
}

/// `bundle list`: each federated bundle under a banner naming its trust domain.
pub fn bundles_text(bundles: &[tpb::Bundle], format: BundleFormat) -> Result<String, CliError> {
    const RULE: &str = "****************************************";
    let mut out = String::new();
    for b in bundles {
        out.push_str(&format!("{RULE}\n* {}\n{RULE}\n", b.trust_domain));
        out.push_str(&bundle_text(b, format)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use tessera_core::JwtAuthority;
    use tessera_core::key::{Key, KeyType, SoftwareKey};

    use super::*;

    fn bundle(td: &str) -> (Bundle, Vec<u8>) {
        let td = TrustDomain::new(td).unwrap();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let now = SystemTime::now();
        let ca = tessera_core::x509::self_signed_ca(
            &td,
            "test CA",
            &key,
            now,
            now + Duration::from_secs(3600),
        )
        .unwrap();
        let mut b = Bundle::with_x509(td, vec![ca.clone()]);
        b.set_jwt_authorities(vec![JwtAuthority {
            key_id: "kid-1".into(),
            public_key_der: key.public_key_der().to_vec(),
            expires_at: 0,
        }]);
        (b, ca)
    }

    #[test]
    fn a_bundle_prints_as_pem_or_jwks() {
        let (b, ca) = bundle("example.org");
        let proto = crate::api::convert::bundle_to_proto(&b);
        let pem = bundle_text(&proto, BundleFormat::Pem).unwrap();
        assert_eq!(
            tessera_core::x509::pem_certs(pem.as_bytes()).unwrap(),
            vec![ca]
        );
        let jwks = bundle_text(&proto, BundleFormat::Jwks).unwrap();
        assert!(jwks.ends_with("}\n"), "{jwks}");
        let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        let uses: Vec<&str> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["use"].as_str().unwrap())
            .collect();
        assert_eq!(uses, vec!["x509-svid", "jwt-svid"]);
        // What `bundle set` reads back is the same bundle.
        let back =
            Bundle::from_jwks(TrustDomain::new("example.org").unwrap(), jwks.as_bytes()).unwrap();
        assert_eq!(back.x509_authorities(), b.x509_authorities());
    }

    #[test]
    fn bundle_list_names_each_trust_domain() {
        assert_eq!(bundles_text(&[], BundleFormat::Pem).unwrap(), "");
        let protos: Vec<tpb::Bundle> = ["one.org", "two.org"]
            .iter()
            .map(|td| crate::api::convert::bundle_to_proto(&bundle(td).0))
            .collect();
        let text = bundles_text(&protos, BundleFormat::Pem).unwrap();
        let rule = "****************************************";
        assert!(
            text.starts_with(&format!(
                "{rule}\n* one.org\n{rule}\n-----BEGIN CERTIFICATE-----"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("{rule}\n* two.org\n{rule}\n")),
            "{text}"
        );
    }

    #[test]
    fn a_bundle_file_that_is_not_one_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.pem");
        std::fs::write(&path, "not pem").unwrap();
        let err = read_bundle("example.org", &path, BundleFormat::Jwks).unwrap_err();
        assert!(matches!(err, CliError::BadFile { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let err = read_bundle("not a domain!", &path, BundleFormat::Pem).unwrap_err();
        assert!(err.to_string().starts_with("--id: "), "{err}");
        let missing = dir.path().join("none.pem");
        let err = read_bundle("example.org", &missing, BundleFormat::Pem).unwrap_err();
        assert!(matches!(err, CliError::Read { .. }), "{err:?}");
    }
}
