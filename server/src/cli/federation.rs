//! `tessera-server federation`: the trust domains whose bundles the server fetches,
//! managed as with `spire-server federation` (create, list, show, update, delete,
//! refresh). SPIRE's flag names are accepted beside ours (`--trustDomain` for
//! `--trust-domain`), and `--data` reads the JSON file `spire-server federation
//! create -data` reads.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;
use tessera_core::{SpiffeId, TrustDomain};
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::bundle::{BundleFormat, parse_bundle};
use super::{CliError, Output, json_text};

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Creates a federation relationship (or those of a --data file).
    Create(RelationshipFields),
    /// Lists the federation relationships: the configured and the created ones.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Shows one federation relationship.
    Show {
        /// The federated trust domain.
        #[arg(long, alias = "trustDomain", visible_alias = "id")]
        trust_domain: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Replaces a federation relationship created earlier (or those of a --data
    /// file); every field is given again, as for create.
    Update(RelationshipFields),
    /// Deletes a federation relationship; the bundle fetched last stays until
    /// `bundle delete`.
    Delete {
        /// The federated trust domain.
        #[arg(long, visible_alias = "trust-domain")]
        id: String,
    },
    /// Fetches a relationship's bundle now.
    Refresh {
        /// The federated trust domain.
        #[arg(long, visible_alias = "trust-domain")]
        id: String,
    },
}

/// The fields of a relationship, for create and update.
#[derive(Debug, Args)]
pub struct RelationshipFields {
    /// The trust domain to federate with.
    #[arg(long, alias = "trustDomain")]
    trust_domain: Option<String>,
    /// Its bundle endpoint (https://...).
    #[arg(long, alias = "bundleEndpointURL")]
    bundle_endpoint_url: Option<String>,
    /// How the endpoint proves who it is.
    #[arg(long, alias = "bundleEndpointProfile", value_parser = ["https_spiffe", "https_web"])]
    bundle_endpoint_profile: Option<String>,
    /// https_spiffe: the SPIFFE ID the endpoint presents (SPIRE's server is
    /// spiffe://<td>/spire/server).
    #[arg(long, alias = "endpointSpiffeID")]
    endpoint_spiffe_id: Option<String>,
    /// https_web: the roots (PEM) to check the endpoint's certificate with, stored
    /// with the relationship; the server's system roots otherwise.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// The bundle to start from (https_spiffe: of the endpoint SPIFFE ID's trust
    /// domain, needed to check the endpoint's first answer).
    #[arg(long, alias = "trustDomainBundlePath")]
    trust_domain_bundle_path: Option<PathBuf>,
    /// The format of --trust-domain-bundle-path.
    #[arg(long, alias = "trustDomainBundleFormat", value_enum, default_value_t)]
    trust_domain_bundle_format: BundleFormat,
    /// A JSON file of relationships, as `spire-server federation create -data`
    /// reads it (`-`: standard input), instead of the flags.
    #[arg(long, conflicts_with_all = ["trust_domain", "bundle_endpoint_url",
        "bundle_endpoint_profile", "endpoint_spiffe_id", "ca_bundle",
        "trust_domain_bundle_path"])]
    data: Option<PathBuf>,
}

/// Runs one `federation` command; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    command: FederationCommand,
) -> Result<String, CliError> {
    match command {
        FederationCommand::Create(fields) => write(c, fields, Verb::Create).await,
        FederationCommand::Update(fields) => write(c, fields, Verb::Update).await,
        FederationCommand::List { output } => {
            let all = c
                .list_federation_relationships(pb::ListFederationRelationshipsRequest {})
                .await?
                .into_inner()
                .relationships;
            list_text(&all, output)
        }
        FederationCommand::Show {
            trust_domain,
            output,
        } => {
            let r = c
                .get_federation_relationship(pb::GetFederationRelationshipRequest { trust_domain })
                .await?
                .into_inner();
            match output {
                Output::Pretty => Ok(relationship_text(&r)),
                Output::Json => json_text(&relationship_json(&r)),
            }
        }
        FederationCommand::Delete { id } => {
            c.delete_federation_relationship(pb::GetFederationRelationshipRequest {
                trust_domain: id,
            })
            .await?;
            Ok("Federation relationship deleted.\n".to_owned())
        }
        FederationCommand::Refresh { id } => {
            let b = c
                .refresh_federation_relationship(pb::GetFederationRelationshipRequest {
                    trust_domain: id.clone(),
                })
                .await?
                .into_inner();
            Ok(format!(
                "Bundle of {id} refreshed: sequence {}, {} X.509 authorities, {} JWT keys.\n",
                b.sequence,
                b.x509_authorities.len(),
                b.jwt_authorities.len()
            ))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Update,
}

/// Creates or updates the relationships the flags or the `--data` file give.
async fn write(
    c: &mut AdminClient<Channel>,
    fields: RelationshipFields,
    verb: Verb,
) -> Result<String, CliError> {
    let requests = match &fields.data {
        Some(path) => from_data(path)?,
        None => vec![from_flags(&fields)?],
    };
    let total = requests.len();
    let mut shown = String::new();
    let mut failures = Vec::new();
    for req in requests {
        let td = req
            .relationship
            .as_ref()
            .map_or(String::new(), |r| r.trust_domain.clone());
        let answer = match verb {
            Verb::Create => c.create_federation_relationship(req).await,
            Verb::Update => c.update_federation_relationship(req).await,
        };
        // One relationship from the flags: the server's refusal is the error.
        let answer = if fields.data.is_none() {
            Ok(answer?)
        } else {
            answer
        };
        match answer {
            Ok(r) => {
                let done = match verb {
                    Verb::Create => "created",
                    Verb::Update => "updated",
                };
                shown.push_str(&format!(
                    "Federation relationship {done}.\n\n{}\n",
                    relationship_text(&r.into_inner())
                ));
            }
            Err(status) => failures.push(format!(
                "  {td}: {} ({:?})",
                status.message(),
                status.code()
            )),
        }
    }
    if failures.is_empty() {
        return Ok(shown);
    }
    Err(CliError::Partial {
        what: "federation relationships",
        failed: failures.len(),
        total,
        details: failures.join("\n"),
        shown,
    })
}

/// The request the flags make.
fn from_flags(f: &RelationshipFields) -> Result<pb::FederationRelationshipRequest, CliError> {
    let td = f
        .trust_domain
        .as_deref()
        .ok_or(CliError::Missing("--trust-domain"))?;
    let url = f
        .bundle_endpoint_url
        .as_deref()
        .ok_or(CliError::Missing("--bundle-endpoint-url"))?;
    let profile = f
        .bundle_endpoint_profile
        .as_deref()
        .ok_or(CliError::Missing("--bundle-endpoint-profile"))?;
    let ca_bundle_pem = match &f.ca_bundle {
        None => String::new(),
        Some(path) => std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?,
    };
    let relationship = pb::FederationRelationship {
        trust_domain: td.to_owned(),
        bundle_endpoint_url: url.to_owned(),
        bundle_endpoint_profile: profile.to_owned(),
        endpoint_spiffe_id: f.endpoint_spiffe_id.clone().unwrap_or_default(),
        ca_bundle_pem,
        source: String::new(),
    };
    let trust_domain_bundle = match &f.trust_domain_bundle_path {
        None => None,
        Some(path) => {
            let owner = bundle_owner(&relationship, "--trust-domain", "--endpoint-spiffe-id")?;
            let text = std::fs::read(path).map_err(|source| CliError::Read {
                path: path.clone(),
                source,
            })?;
            let b = parse_bundle(owner, &text, f.trust_domain_bundle_format, path)?;
            Some(crate::api::convert::bundle_to_proto(&b))
        }
    };
    Ok(pb::FederationRelationshipRequest {
        relationship: Some(relationship),
        trust_domain_bundle,
    })
}

/// The trust domain whose bundle checks the endpoint: the endpoint SPIFFE ID's
/// when given, the relationship's otherwise.
fn bundle_owner(
    r: &pb::FederationRelationship,
    td_flag: &'static str,
    id_flag: &'static str,
) -> Result<TrustDomain, CliError> {
    if !r.endpoint_spiffe_id.is_empty() {
        let id = SpiffeId::new(&r.endpoint_spiffe_id).map_err(|e| CliError::Invalid {
            flag: id_flag,
            reason: e.to_string(),
        })?;
        return Ok(id.trust_domain().clone());
    }
    TrustDomain::new(&r.trust_domain).map_err(|e| CliError::Invalid {
        flag: td_flag,
        reason: e.to_string(),
    })
}

/// `spire-server federation create -data`: `{"federationRelationships": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DataFile {
    federation_relationships: Vec<DataRelationship>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataRelationship {
    #[serde(rename = "trustDomain", default)]
    trust_domain: String,
    #[serde(rename = "bundleEndpointURL", default)]
    bundle_endpoint_url: String,
    #[serde(rename = "bundleEndpointProfile", default)]
    bundle_endpoint_profile: String,
    #[serde(rename = "endpointSPIFFEID", default)]
    endpoint_spiffe_id: String,
    /// A PEM string (`pem`, the default) or a JWK Set (`spiffe`).
    #[serde(rename = "trustDomainBundle", default)]
    trust_domain_bundle: Option<serde_json::Value>,
    #[serde(rename = "trustDomainBundleFormat", default)]
    trust_domain_bundle_format: Option<String>,
}

/// The requests a `--data` file makes; an item that cannot be made fails the whole
/// command before anything is sent.
fn from_data(path: &Path) -> Result<Vec<pb::FederationRelationshipRequest>, CliError> {
    let text = super::entry_file::read_input(path)?;
    let bad = |reason: String| CliError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let file: DataFile = serde_json::from_slice(&text).map_err(|e| {
        bad(format!(
            "not a federation relationship file ({{\"federationRelationships\": [...]}}, as \
             spire-server federation create -data reads it): {e}"
        ))
    })?;
    let mut out = Vec::new();
    for (i, d) in file.federation_relationships.into_iter().enumerate() {
        let at = |m: String| bad(format!("federationRelationships[{i}]: {m}"));
        for (value, name) in [
            (&d.trust_domain, "trustDomain"),
            (&d.bundle_endpoint_url, "bundleEndpointURL"),
            (&d.bundle_endpoint_profile, "bundleEndpointProfile"),
        ] {
            if value.is_empty() {
                return Err(at(format!("{name} is required")));
            }
        }
        let relationship = pb::FederationRelationship {
            trust_domain: d.trust_domain,
            bundle_endpoint_url: d.bundle_endpoint_url,
            bundle_endpoint_profile: d.bundle_endpoint_profile,
            endpoint_spiffe_id: d.endpoint_spiffe_id,
            ca_bundle_pem: String::new(),
            source: String::new(),
        };
        let trust_domain_bundle = match d.trust_domain_bundle {
            None => None,
            Some(raw) => {
                let owner = bundle_owner(&relationship, "trustDomain", "endpointSPIFFEID")
                    .map_err(|e| at(e.to_string()))?;
                let (format, bytes) = match (d.trust_domain_bundle_format.as_deref(), &raw) {
                    (None | Some("pem"), serde_json::Value::String(pem)) => {
                        (BundleFormat::Pem, pem.clone().into_bytes())
                    }
                    (Some("spiffe" | "jwks"), v @ serde_json::Value::Object(_)) => {
                        (BundleFormat::Jwks, v.to_string().into_bytes())
                    }
                    (f, _) => {
                        return Err(at(format!(
                            "trustDomainBundle does not match trustDomainBundleFormat {:?}: \
                             \"pem\" takes a PEM string, \"spiffe\" a JWK Set object",
                            f.unwrap_or("pem")
                        )));
                    }
                };
                let b = parse_bundle(owner, &bytes, format, path)
                    .map_err(|e| at(format!("trustDomainBundle: {e}")))?;
                Some(crate::api::convert::bundle_to_proto(&b))
            }
        };
        out.push(pb::FederationRelationshipRequest {
            relationship: Some(relationship),
            trust_domain_bundle,
        });
    }
    if out.is_empty() {
        return Err(bad("federationRelationships is empty".into()));
    }
    Ok(out)
}

/// One relationship, laid out as spire-server prints one.
pub fn relationship_text(r: &pb::FederationRelationship) -> String {
    let mut out = format!(
        "Trust domain              : {}\nBundle endpoint URL       : {}\n\
         Bundle endpoint profile   : {}\n",
        r.trust_domain, r.bundle_endpoint_url, r.bundle_endpoint_profile
    );
    if !r.endpoint_spiffe_id.is_empty() {
        out.push_str(&format!(
            "Endpoint SPIFFE ID        : {}\n",
            r.endpoint_spiffe_id
        ));
    }
    if !r.ca_bundle_pem.is_empty() {
        out.push_str("CA bundle                 : given (PEM)\n");
    }
    if !r.source.is_empty() {
        out.push_str(&format!("Source                    : {}\n", r.source));
    }
    out
}

fn relationship_json(r: &pb::FederationRelationship) -> serde_json::Value {
    json!({
        "trust_domain": r.trust_domain,
        "bundle_endpoint_url": r.bundle_endpoint_url,
        "bundle_endpoint_profile": r.bundle_endpoint_profile,
        "endpoint_spiffe_id": r.endpoint_spiffe_id,
        "ca_bundle_pem": r.ca_bundle_pem,
        "source": r.source,
    })
}

/// `federation list`.
pub fn list_text(all: &[pb::FederationRelationship], output: Output) -> Result<String, CliError> {
    match output {
        Output::Json => json_text(&json!({
            "federation_relationships": all.iter().map(relationship_json).collect::<Vec<_>>(),
        })),
        Output::Pretty => {
            let mut out = match all.len() {
                0 => return Ok("No federation relationships found\n".to_owned()),
                1 => "Found 1 federation relationship\n".to_owned(),
                n => format!("Found {n} federation relationships\n"),
            };
            for r in all {
                out.push('\n');
                out.push_str(&relationship_text(r));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn rel(td: &str, source: &str) -> pb::FederationRelationship {
        pb::FederationRelationship {
            trust_domain: td.into(),
            bundle_endpoint_url: format!("https://{td}:8443"),
            bundle_endpoint_profile: "https_spiffe".into(),
            endpoint_spiffe_id: format!("spiffe://{td}/spire/server"),
            ca_bundle_pem: String::new(),
            source: source.into(),
        }
    }

    #[test]
    fn relationships_print_as_spire_server_prints_them() {
        assert_eq!(
            list_text(&[], Output::Pretty).unwrap(),
            "No federation relationships found\n"
        );
        let text = list_text(
            &[rel("a.test", "config"), rel("b.test", "datastore")],
            Output::Pretty,
        )
        .unwrap();
        assert!(
            text.starts_with("Found 2 federation relationships\n\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "Trust domain              : b.test\n\
                 Bundle endpoint URL       : https://b.test:8443\n\
                 Bundle endpoint profile   : https_spiffe\n\
                 Endpoint SPIFFE ID        : spiffe://b.test/spire/server\n\
                 Source                    : datastore\n"
            ),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&list_text(&[rel("a.test", "config")], Output::Json).unwrap())
                .unwrap();
        assert_eq!(v["federation_relationships"][0]["source"], "config");
    }

    fn data(text: &str) -> Result<Vec<pb::FederationRelationshipRequest>, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rel.json");
        std::fs::write(&path, text).unwrap();
        from_data(&path)
    }

    #[test]
    fn spire_data_files_are_read_and_bad_ones_refused_with_the_item() {
        let reqs = data(
            r#"{"federationRelationships": [
                {"trustDomain": "spire.test", "bundleEndpointURL": "https://spire.test:8443",
                 "bundleEndpointProfile": "https_spiffe",
                 "endpointSPIFFEID": "spiffe://spire.test/spire/server"},
                {"trustDomain": "web.test", "bundleEndpointURL": "https://web.test/b",
                 "bundleEndpointProfile": "https_web"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(reqs.len(), 2);
        let r = reqs[0].relationship.as_ref().unwrap();
        assert_eq!(r.endpoint_spiffe_id, "spiffe://spire.test/spire/server");
        assert!(reqs[1].trust_domain_bundle.is_none());

        for (text, says) in [
            ("{}", "not a federation relationship file"),
            (r#"{"federationRelationships": []}"#, "is empty"),
            (
                r#"{"federationRelationships": [{"trustDomain": "a.test", "bundleEndpointProfile": "https_web"}]}"#,
                "federationRelationships[0]: bundleEndpointURL is required",
            ),
            (
                r#"{"federationRelationships": [{"trustDomain": "a.test", "bundleEndpointURL": "https://a", "bundleEndpointProfile": "https_web", "trustDomainBundle": {"keys": []}}]}"#,
                "does not match trustDomainBundleFormat \"pem\"",
            ),
            (
                r#"{"federationRelationships": [{"trustDomain": "a.test", "bundleEndpointURL": "https://a", "bundleEndpointProfile": "https_web", "trustDomainBundle": "not pem"}]}"#,
                "federationRelationships[0]: trustDomainBundle",
            ),
            (
                r#"{"federationRelationships": [{"trustDomain": "a.test", "bundleEndpointURL": "https://a", "bundleEndpointProfile": "https_web", "colour": "blue"}]}"#,
                "unknown field",
            ),
        ] {
            let e = data(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}\n{e}");
        }
    }
}
