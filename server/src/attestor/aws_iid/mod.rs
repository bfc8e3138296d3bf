//! AWS EC2 instance identity attestation (`aws_iid`), server side. The agent sends
//! the instance identity document and its RSA-2048 PKCS #7 signature as the instance
//! metadata service served them; the server checks the signature with the document
//! region's certificate ([`regions`]; AWS's own, shipped, or the operator's), that the
//! signed content is the document byte for byte ([`pkcs7`]), that the account is
//! allowed, and, when configured, that the document is recent. The agent ID is
//! `aws_iid/<account>/<region>/<instance>` (SPIRE's), and an instance attests once
//! unless re-attestation is allowed: a copied document cannot attest a second node.
//!
//! The older signatures (`signature`, RSA-1024-era keys, and `pkcs7`, DSA) are not
//! verified: the RSA-2048 one covers the same document with a stronger key, and SPIRE
//! prefers it too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;
use tessera_core::attestation::aws_iid::{NAME, Payload};
use tessera_core::clock::SharedClock;

use super::one_shot::{Check, OneShot, selector};
use super::template::PathTemplate;
use super::{AttestError, Attested};

pub mod pkcs7;
pub mod regions;

/// The default agent path, as SPIRE's.
pub const DEFAULT_TEMPLATE: &str =
    "/{{ .PluginName }}/{{ .AccountID }}/{{ .Region }}/{{ .InstanceID }}";

/// The fields `agent_path_template` may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "PluginName",
    "AccountID",
    "Region",
    "InstanceID",
    "AvailabilityZone",
    "ImageID",
    "InstanceType",
];

fn default_true() -> bool {
    true
}

/// `[node_attestors.aws_iid]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIidConfig {
    /// The AWS accounts whose instances may attest (required, not empty).
    pub account_ids: Vec<String>,
    /// Refuse documents whose `pendingTime` (when the instance last started) is
    /// longer ago than this. Unset: no limit.
    #[serde(default, with = "crate::config::opt_duration")]
    pub max_document_age: Option<Duration>,
    /// Let an instance attest again with its document (off: one attestation per
    /// instance, as SPIRE).
    #[serde(default)]
    pub allow_reattestation: bool,
    /// Use the region certificates shipped with Tessera (default true).
    #[serde(default = "default_true")]
    pub builtin_certificates: bool,
    /// Region name -> a PEM file holding the certificate for it; adds regions or
    /// replaces shipped certificates.
    #[serde(default)]
    pub region_certificates: BTreeMap<String, PathBuf>,
    /// The agent ID path (default `/{{ .PluginName }}/{{ .AccountID }}/{{ .Region }}/{{ .InstanceID }}`).
    #[serde(default)]
    pub agent_path_template: Option<String>,
}

/// The fields of the document Tessera uses (AWS documents hold more).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub account_id: String,
    pub region: String,
    pub instance_id: String,
    pub availability_zone: String,
    pub image_id: String,
    pub instance_type: String,
    pub pending_time: String,
}

/// The check behind the `aws_iid` attestor.
#[derive(Debug)]
pub struct AwsIidCheck {
    accounts: Vec<String>,
    max_age: Option<Duration>,
    reattest: bool,
    certs: regions::RegionCerts,
    template: PathTemplate,
    clock: SharedClock,
}

/// See the module documentation.
pub type AwsIid = OneShot<AwsIidCheck>;

impl AwsIid {
    /// Loads the certificates and checks the settings; a bad setting is a start-up
    /// error naming it.
    pub fn from_config(cfg: &AwsIidConfig, clock: SharedClock) -> Result<Self, String> {
        if cfg.account_ids.is_empty() {
            return Err(
                "node_attestors.aws_iid.account_ids is empty: name the AWS accounts whose \
                 instances may attest"
                    .into(),
            );
        }
        if let Some(bad) = cfg
            .account_ids
            .iter()
            .find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "node_attestors.aws_iid.account_ids: {bad:?} is not an AWS account ID (12 digits)"
            ));
        }
        let template = PathTemplate::parse(
            "node_attestors.aws_iid.agent_path_template",
            cfg.agent_path_template
                .as_deref()
                .unwrap_or(DEFAULT_TEMPLATE),
            TEMPLATE_FIELDS,
        )?;
        let certs = regions::RegionCerts::load(cfg.builtin_certificates, &cfg.region_certificates)?;
        Ok(OneShot::new(AwsIidCheck {
            accounts: cfg.account_ids.clone(),
            max_age: cfg.max_document_age,
            reattest: cfg.allow_reattestation,
            certs,
            template,
            clock,
        }))
    }
}

fn refused(m: String) -> AttestError {
    AttestError::Refused(format!("{NAME}: {m}"))
}

fn malformed(m: String) -> AttestError {
    AttestError::Malformed(format!("{NAME}: {m}"))
}

impl AwsIidCheck {
    /// The signed document, once its signature checks out.
    fn verified_document(&self, payload: &Payload) -> Result<Document, AttestError> {
        if payload.rsa2048.trim().is_empty() {
            return Err(refused(
                "the agent sent no rsa2048 signature; Tessera verifies instance identity \
                 documents by their RSA-2048 PKCS #7 signature"
                    .into(),
            ));
        }
        // Parsed before the signature is checked only to know the region's certificate;
        // nothing else is read until the signature covers these very bytes.
        let doc: Document = serde_json::from_str(&payload.document)
            .map_err(|e| malformed(format!("the instance identity document: {e}")))?;
        let signer = self.certs.get(&doc.region).ok_or_else(|| {
            refused(format!(
                "no RSA-2048 certificate for region {:?} (add one with \
                 node_attestors.aws_iid.region_certificates)",
                doc.region
            ))
        })?;
        let compact: String = payload
            .rsa2048
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| malformed("the rsa2048 signature is not base64".into()))?;
        let content = pkcs7::verify(&der, signer).map_err(|e| {
            let m = format!("{e} (region {})", doc.region);
            match e {
                pkcs7::Pkcs7Error::Malformed(_) => malformed(m),
                _ => refused(m),
            }
        })?;
        if content != payload.document.as_bytes() {
            return Err(refused(
                "the instance identity document is not the one its signature covers".into(),
            ));
        }
        Ok(doc)
    }

    fn check_age(&self, doc: &Document) -> Result<(), AttestError> {
        let Some(max) = self.max_age else {
            return Ok(());
        };
        let pending = time::OffsetDateTime::parse(
            &doc.pending_time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| {
            malformed(format!(
                "pendingTime {:?} is not an RFC 3339 time",
                doc.pending_time
            ))
        })?
        .unix_timestamp();
        let age = self.clock.unix() - pending;
        if age > max.as_secs() as i64 {
            return Err(refused(format!(
                "the instance identity document is from {} ({} s ago), older than \
                 max_document_age ({} s)",
                doc.pending_time,
                age,
                max.as_secs()
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Check for AwsIidCheck {
    const NAME: &'static str = NAME;

    async fn check(&self, payload: Vec<u8>) -> Result<Attested, AttestError> {
        let payload: Payload =
            serde_json::from_slice(&payload).map_err(|e| malformed(format!("payload: {e}")))?;
        let doc = self.verified_document(&payload)?;
        if !self.accounts.contains(&doc.account_id) {
            return Err(refused(format!(
                "account {} is not in node_attestors.aws_iid.account_ids",
                doc.account_id
            )));
        }
        self.check_age(&doc)?;
        let agent_path = self.template.render(NAME, &|f| {
            Some(match f {
                "PluginName" => NAME.to_owned(),
                "AccountID" => doc.account_id.clone(),
                "Region" => doc.region.clone(),
                "InstanceID" => doc.instance_id.clone(),
                "AvailabilityZone" => doc.availability_zone.clone(),
                "ImageID" => doc.image_id.clone(),
                "InstanceType" => doc.instance_type.clone(),
                _ => return None,
            })
        })?;
        let selectors = [
            format!("account_id:{}", doc.account_id),
            format!("region:{}", doc.region),
            format!("az:{}", doc.availability_zone),
            format!("image:id:{}", doc.image_id),
            format!("instance:id:{}", doc.instance_id),
            format!("instance:type:{}", doc.instance_type),
        ]
        .into_iter()
        .map(|v| selector(NAME, v))
        .collect::<Result<_, _>>()?;
        Ok(Attested {
            agent_path,
            selectors,
            can_reattest: self.reattest,
            tpm: None,
        })
    }
}

#[cfg(test)]
mod tests;
