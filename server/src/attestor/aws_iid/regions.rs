//! Which certificate verifies the documents of each AWS region: the RSA-2048
//! certificates AWS publishes, shipped with Tessera (`rsa2048-certificates.pem`),
//! plus or instead of the operator's (`region_certificates`, `builtin_certificates`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::pkcs7::Signer;

/// The shipped certificates: a region name, then its PEM certificate.
const BUILTIN: &str = include_str!("rsa2048-certificates.pem");

/// Region name -> the certificate that verifies its documents.
#[derive(Debug, Clone, Default)]
pub struct RegionCerts {
    certs: BTreeMap<String, Signer>,
}

/// Reads `region\n-----BEGIN CERTIFICATE-----...` pairs ('#' starts a comment).
fn parse_builtin(text: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut region: Option<String> = None;
    let mut pem = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pem.is_empty() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("-----BEGIN CERTIFICATE-----") {
                pem.push_str(line);
                pem.push('\n');
            } else {
                region = Some(line.to_owned());
            }
            continue;
        }
        pem.push_str(line);
        pem.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            let name = region.take().ok_or("a certificate without a region")?;
            let ders = tessera_core::x509::pem_certs(pem.as_bytes())
                .map_err(|e| format!("{name}: {e}"))?;
            let der = ders
                .into_iter()
                .next()
                .ok_or(format!("{name}: no certificate"))?;
            out.insert(name, der);
            pem.clear();
        }
    }
    Ok(out)
}

impl RegionCerts {
    /// The shipped certificates (when `builtin`) with `extra` added over them; each
    /// extra file holds one PEM certificate.
    pub fn load(builtin: bool, extra: &BTreeMap<String, PathBuf>) -> Result<Self, String> {
        let mut certs = BTreeMap::new();
        if builtin {
            for (region, der) in parse_builtin(BUILTIN)? {
                let signer = Signer::from_certificate(&der)
                    .map_err(|e| format!("shipped certificate for {region}: {e}"))?;
                certs.insert(region, signer);
            }
        }
        for (region, path) in extra {
            let setting = format!("node_attestors.aws_iid.region_certificates.{region}");
            let text =
                std::fs::read(path).map_err(|e| format!("{setting}: {}: {e}", path.display()))?;
            let ders = tessera_core::x509::pem_certs(&text)
                .map_err(|e| format!("{setting}: {}: {e}", path.display()))?;
            let [der] = &ders[..] else {
                return Err(format!(
                    "{setting}: {} must hold exactly one certificate (it holds {})",
                    path.display(),
                    ders.len()
                ));
            };
            let signer = Signer::from_certificate(der)
                .map_err(|e| format!("{setting}: {}: {e}", path.display()))?;
            certs.insert(region.clone(), signer);
        }
        if certs.is_empty() {
            return Err(
                "node_attestors.aws_iid: no region certificates (builtin_certificates is off and \
                 region_certificates is empty)"
                    .into(),
            );
        }
        Ok(Self { certs })
    }

    /// The certificate for `region`.
    pub fn get(&self, region: &str) -> Option<&Signer> {
        self.certs.get(region)
    }

    /// How many regions are covered.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether no region is.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_certificate_parses_and_names_a_region() {
        let map = parse_builtin(BUILTIN).unwrap();
        assert!(map.len() >= 39, "{}", map.len());
        for region in [
            "us-east-1",
            "eu-west-1",
            "ap-southeast-2",
            "us-gov-west-1",
            "cn-north-1",
        ] {
            assert!(map.contains_key(region), "{region}");
        }
        let certs = RegionCerts::load(true, &BTreeMap::new()).unwrap();
        assert_eq!(certs.len(), map.len());
    }

    #[test]
    fn operator_certificates_add_or_replace_and_must_be_single() {
        let dir = tempfile::tempdir().unwrap();
        let key: std::sync::Arc<dyn tessera_core::key::Key> = std::sync::Arc::new(
            tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::Rsa2048).unwrap(),
        );
        let signer = tessera_core::key::RcgenKey::new(key).unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&signer)
            .unwrap();
        let one = dir.path().join("one.pem");
        std::fs::write(&one, cert.pem()).unwrap();
        let extra: BTreeMap<String, PathBuf> = [("test-region-1".to_owned(), one.clone())].into();
        let only = RegionCerts::load(false, &extra).unwrap();
        assert_eq!(only.len(), 1);
        assert!(only.get("us-east-1").is_none());
        let both = RegionCerts::load(true, &extra).unwrap();
        assert!(both.get("test-region-1").is_some() && both.get("us-east-1").is_some());

        let two = dir.path().join("two.pem");
        std::fs::write(&two, format!("{}{}", cert.pem(), cert.pem())).unwrap();
        let e = RegionCerts::load(true, &[("x".to_owned(), two)].into()).unwrap_err();
        assert!(e.contains("exactly one certificate (it holds 2)"), "{e}");
        let e = RegionCerts::load(false, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("no region certificates"), "{e}");
        let e = RegionCerts::load(true, &[("x".to_owned(), dir.path().join("nope"))].into())
            .unwrap_err();
        assert!(e.contains("region_certificates.x"), "{e}");
    }
}
