//! X.509 proof-of-possession attestation (`x509pop`), server side. The agent sends
//! its certificate chain; the server checks it up to a configured CA (signatures,
//! validity at this moment, CA constraints, key usage digitalSignature on the leaf),
//! sends a random nonce, and checks the agent's signature over it (see
//! `tessera_core::attestation::x509pop` for the signed bytes and scheme). The nonce
//! lives in this session only, so an answer can only count for its own challenge.
//!
//! The agent ID is `x509pop/<SHA-1 of the leaf>` (SPIRE's), or an
//! `agent_path_template` over the certificate's fields; the selectors are SPIRE's
//! (`subject:cn`, `ca:fingerprint` for each CA above the leaf, `serialnumber`,
//! `san:<key>:<value>` from URI SANs `x509pop://<trust domain>/<key>/<value>`) plus
//! `issuer:cn`. The node may attest again with the same certificate.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tessera_core::attestation::x509pop::{
    Challenge, NAME, NONCE_LEN, Payload, Response, scheme_for, signed_message,
};
use tessera_core::clock::SharedClock;
use tessera_core::key::KeyType;
use tessera_core::{Selector, TrustDomain};
use tessera_tpm::verifier::chain::{self, CaPool, ChainError, LeafProfile};
use x509_parser::prelude::*;

use super::one_shot::selector;
use super::template::PathTemplate;
use super::{AttestError, Attested, NodeAttestor, Session, Step};

/// The default agent path, as SPIRE's.
pub const DEFAULT_TEMPLATE: &str = "/{{ .PluginName }}/{{ .Fingerprint }}";

/// The fields `agent_path_template` may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "PluginName",
    "TrustDomain",
    "Fingerprint",
    "SerialNumberHex",
    "Subject.CommonName",
    "Subject.SerialNumber",
    "Subject.Organization",
    "Subject.OrganizationalUnit",
    "DNSName",
    "URISanSelectors.",
];

fn default_max_intermediates() -> usize {
    4
}

/// `[node_attestors.x509pop]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopConfig {
    /// PEM file(s) of the CAs that issue node certificates (required).
    pub ca_bundle: Vec<PathBuf>,
    /// PEM file(s) of intermediate CAs, for agents that do not send them.
    #[serde(default)]
    pub intermediates: Vec<PathBuf>,
    /// At most this many intermediates in what an agent sends (default 4).
    #[serde(default = "default_max_intermediates")]
    pub max_intermediates: usize,
    /// The agent ID path (default `/{{ .PluginName }}/{{ .Fingerprint }}`).
    #[serde(default)]
    pub agent_path_template: Option<String>,
}

#[derive(Debug)]
struct Inner {
    cas: CaPool,
    max_intermediates: usize,
    template: PathTemplate,
    trust_domain: TrustDomain,
    clock: SharedClock,
}

/// See the module documentation.
#[derive(Debug)]
pub struct X509Pop {
    inner: Arc<Inner>,
}

impl X509Pop {
    /// Loads the CAs and checks the settings; a bad one is a start-up error naming it.
    pub fn from_config(
        cfg: &X509PopConfig,
        trust_domain: TrustDomain,
        clock: SharedClock,
    ) -> Result<Self, String> {
        if cfg.ca_bundle.is_empty() {
            return Err(
                "node_attestors.x509pop.ca_bundle is empty: name the CA certificates that issue \
                 node certificates"
                    .into(),
            );
        }
        let cas = super::ca_pool(
            "node_attestors.x509pop.ca_bundle",
            &cfg.ca_bundle,
            &cfg.intermediates,
        )
        .map_err(|e| e.to_string())?;
        if cas.is_empty() {
            return Err("node_attestors.x509pop.ca_bundle holds no certificate".into());
        }
        let template = PathTemplate::parse(
            "node_attestors.x509pop.agent_path_template",
            cfg.agent_path_template
                .as_deref()
                .unwrap_or(DEFAULT_TEMPLATE),
            TEMPLATE_FIELDS,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                cas,
                max_intermediates: cfg.max_intermediates,
                template,
                trust_domain,
                clock,
            }),
        })
    }
}

impl NodeAttestor for X509Pop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(PopSession {
            inner: self.inner.clone(),
            state: State::Start,
        })
    }
}

/// A chain that checked out, waiting for the proof.
struct Pending {
    nonce: Vec<u8>,
    leaf: Vec<u8>,
    spki: Vec<u8>,
    key_type: KeyType,
    cas: Vec<Vec<u8>>,
}

enum State {
    Start,
    Challenged(Box<Pending>),
    Done,
}

struct PopSession {
    inner: Arc<Inner>,
    state: State,
}

fn refused(m: String) -> AttestError {
    AttestError::Refused(format!("{NAME}: {m}"))
}

fn malformed(m: String) -> AttestError {
    AttestError::Malformed(format!("{NAME}: {m}"))
}

impl Inner {
    fn start(&self, input: &[u8]) -> Result<Pending, AttestError> {
        let payload: Payload =
            serde_json::from_slice(input).map_err(|e| malformed(format!("payload: {e}")))?;
        let Some((leaf, presented)) = payload.certificates.split_first() else {
            return Err(malformed("no certificate was sent".into()));
        };
        if presented.len() > self.max_intermediates {
            return Err(refused(format!(
                "{} intermediate certificates were sent; at most {} are accepted \
                 (node_attestors.x509pop.max_intermediates)",
                presented.len(),
                self.max_intermediates
            )));
        }
        let at = ASN1Time::from_timestamp(self.clock.unix())
            .map_err(|e| AttestError::Unavailable(e.to_string()))?;
        let verified = chain::verify_chain_at(leaf, presented, &self.cas, LeafProfile::DevId, at)
            .map_err(|e| match e {
            ChainError::Malformed { .. } | ChainError::Empty => malformed(e.to_string()),
            other => refused(other.to_string()),
        })?;
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| malformed(format!("certificate: {e}")))?;
        // SPIRE's rule: the certificate must say it is for signatures.
        match cert.key_usage() {
            Ok(Some(ku)) if ku.value.digital_signature() => {}
            _ => {
                return Err(refused(
                    "the certificate has no key usage digitalSignature, so it may not prove \
                     possession by signing"
                        .into(),
                ));
            }
        }
        let spki = cert.public_key().raw.to_vec();
        let key_type = tessera_core::key::key_type_of_spki(&spki).ok_or_else(|| {
            refused(
                "the certificate's key is not one Tessera checks signatures of (EC P-256, \
                 P-384, RSA 2048, 3072 or 4096)"
                    .into(),
            )
        })?;
        let mut nonce = vec![0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| AttestError::Unavailable("no randomness for the nonce".into()))?;
        Ok(Pending {
            nonce,
            leaf: leaf.clone(),
            spki,
            key_type,
            cas: verified.cas,
        })
    }

    fn finish(&self, p: &Pending, input: &[u8]) -> Result<Attested, AttestError> {
        let r: Response =
            serde_json::from_slice(input).map_err(|e| malformed(format!("response: {e}")))?;
        if r.nonce.len() != NONCE_LEN {
            return Err(malformed(format!(
                "the agent's nonce has {} bytes, not {NONCE_LEN}",
                r.nonce.len()
            )));
        }
        let message = signed_message(&p.nonce, &r.nonce);
        if !tessera_core::key::verify_signature(
            &p.spki,
            scheme_for(p.key_type),
            &message,
            &r.signature,
        ) {
            return Err(refused(
                "the signature over the challenge does not verify with the certificate's key"
                    .into(),
            ));
        }
        self.attested(p)
    }

    fn attested(&self, p: &Pending) -> Result<Attested, AttestError> {
        let (_, cert) = X509Certificate::from_der(&p.leaf)
            .map_err(|e| malformed(format!("certificate: {e}")))?;
        let facts = Facts::of(&cert, &p.leaf, &self.trust_domain);
        let agent_path = self
            .template
            .render(NAME, &|f| facts.field(f, &self.trust_domain))?;
        let mut selectors: Vec<Selector> = Vec::new();
        if let Some(cn) = &facts.common_name {
            selectors.push(selector(NAME, format!("subject:cn:{cn}"))?);
        }
        if let Some(cn) = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
        {
            selectors.push(selector(NAME, format!("issuer:cn:{cn}"))?);
        }
        for ca in &p.cas {
            let s = selector(NAME, format!("ca:fingerprint:{}", sha1_hex(ca)))?;
            if !selectors.contains(&s) {
                selectors.push(s);
            }
        }
        selectors.push(selector(
            NAME,
            format!("serialnumber:{}", facts.serial_hex),
        )?);
        for (k, v) in &facts.uri_sans {
            selectors.push(selector(NAME, format!("san:{k}:{v}"))?);
        }
        Ok(Attested {
            agent_path,
            selectors,
            can_reattest: true,
            tpm: None,
        })
    }
}

fn sha1_hex(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The first value of a name attribute, as text.
fn first<'a>(mut it: impl Iterator<Item = &'a AttributeTypeAndValue<'a>>) -> Option<String> {
    it.next().and_then(|a| a.as_str().ok().map(str::to_owned))
}

/// What the template and the selectors read from the leaf.
struct Facts {
    fingerprint: String,
    serial_hex: String,
    common_name: Option<String>,
    subject_serial: Option<String>,
    organization: Option<String>,
    unit: Option<String>,
    dns_name: Option<String>,
    uri_sans: Vec<(String, String)>,
}

impl Facts {
    fn of(cert: &X509Certificate<'_>, der: &[u8], td: &TrustDomain) -> Self {
        let subject = cert.subject();
        let serial = tessera_core::der::trim_leading_zeros(cert.raw_serial());
        let mut serial_hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        if serial_hex.is_empty() {
            serial_hex = "00".into();
        }
        let mut dns_name = None;
        let mut uri_sans = Vec::new();
        let prefix = format!("x509pop://{}/", td.name());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) if dns_name.is_none() => {
                        dns_name = Some((*d).to_owned());
                    }
                    GeneralName::URI(u) => {
                        if let Some((k, v)) = u
                            .strip_prefix(&prefix)
                            .and_then(|rest| rest.trim_matches('/').split_once('/'))
                            && !k.is_empty()
                            && !v.is_empty()
                        {
                            uri_sans.push((k.to_owned(), v.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
        }
        Self {
            fingerprint: sha1_hex(der),
            serial_hex,
            common_name: first(subject.iter_common_name()),
            subject_serial: first(
                subject.iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER),
            ),
            organization: first(subject.iter_organization()),
            unit: first(subject.iter_organizational_unit()),
            dns_name,
            uri_sans,
        }
    }

    fn field(&self, f: &str, td: &TrustDomain) -> Option<String> {
        if let Some(key) = f.strip_prefix("URISanSelectors.") {
            return self
                .uri_sans
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone());
        }
        match f {
            "PluginName" => Some(NAME.to_owned()),
            "TrustDomain" => Some(td.name().to_owned()),
            "Fingerprint" => Some(self.fingerprint.clone()),
            "SerialNumberHex" => Some(self.serial_hex.clone()),
            "Subject.CommonName" => self.common_name.clone(),
            "Subject.SerialNumber" => self.subject_serial.clone(),
            "Subject.Organization" => self.organization.clone(),
            "Subject.OrganizationalUnit" => self.unit.clone(),
            "DNSName" => self.dns_name.clone(),
            _ => None,
        }
    }
}

#[async_trait]
impl Session for PopSession {
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => {
                let inner = self.inner.clone();
                // Path building verifies signatures: off the async threads.
                let pending = tokio::task::spawn_blocking(move || inner.start(&input))
                    .await
                    .map_err(|e| AttestError::Unavailable(e.to_string()))??;
                let challenge = serde_json::to_vec(&Challenge {
                    nonce: pending.nonce.clone(),
                })
                .map_err(|e| AttestError::Unavailable(e.to_string()))?;
                self.state = State::Challenged(Box::new(pending));
                Ok(Step::Challenge(challenge))
            }
            State::Challenged(p) => self.inner.finish(&p, &input).map(Step::Attested),
            State::Done => Err(malformed("takes exactly one challenge response".into())),
        }
    }
}

#[cfg(test)]
mod tests;
