//! What the persisted SVID cache holds, before encryption: one record per X509-SVID
//! (its entry, chain, key, validity, rotation time and entry revision) and the
//! bundles, as JSON with bytes in base64. The key carries a kind tag:
//!
//! - `software`: the PKCS#8 private key;
//! - `tpm`: a TPM-held key as its TSS2 PRIVATE KEY PEM (stored as is: the TPM's
//!   own blob, useless on another TPM) and its authorization value.
//!
//! The whole document is encrypted (see [`super::envelope`]), so the PKCS#8 keys
//! and the authorization values never reach the disk in clear.

use serde::{Deserialize, Serialize};
use serde_with::base64::Base64;
use tessera_core::RegistrationEntry;
use zeroize::Zeroizing;

/// The document's version.
pub const VERSION: u32 = 1;

/// A persisted SVID key.
#[serde_with::serde_as]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyRecord {
    /// A software key.
    Software {
        /// PKCS#8 DER.
        #[serde_as(as = "Base64")]
        pkcs8: Vec<u8>,
    },
    /// A TPM-held key.
    Tpm {
        /// The TSS2 PRIVATE KEY PEM, as the workload gets it.
        #[serde_as(as = "Base64")]
        tss2_pem: Vec<u8>,
        /// The key's authorization value.
        #[serde_as(as = "Base64")]
        auth: Vec<u8>,
    },
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRecord::Software { .. } => f.write_str("KeyRecord::Software"),
            KeyRecord::Tpm { .. } => f.write_str("KeyRecord::Tpm"),
        }
    }
}

impl Drop for KeyRecord {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        match self {
            KeyRecord::Software { pkcs8 } => pkcs8.zeroize(),
            KeyRecord::Tpm { auth, .. } => auth.zeroize(),
        }
    }
}

/// One X509-SVID.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRecord {
    /// The entry it was signed for.
    pub entry: RegistrationEntry,
    /// DER certificates, leaf first.
    #[serde_as(as = "Vec<Base64>")]
    pub chain: Vec<Vec<u8>>,
    /// Its key.
    pub key: KeyRecord,
    pub not_before: i64,
    pub not_after: i64,
    pub rotate_at: i64,
    /// The entry revision it was signed for.
    pub revision: u64,
}

/// The whole cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRecord {
    /// [`VERSION`].
    pub version: u32,
    /// When it was written (Unix seconds).
    pub written_at: i64,
    /// The trust domain's bundle (JWKS), when known.
    pub bundle: Option<String>,
    /// Federated bundles: trust domain name, JWKS.
    pub federated: Vec<(String, String)>,
    pub svids: Vec<SvidRecord>,
}

impl CacheRecord {
    /// The JSON document (wiped when dropped).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // Serialising plain data cannot fail.
        Zeroizing::new(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses [`CacheRecord::to_bytes`] output.
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        let r: Self = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if r.version != VERSION {
            return Err(format!(
                "version {} (this agent reads {VERSION})",
                r.version
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    pub(crate) fn entry(id: &str) -> RegistrationEntry {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "spiffe_id": "spiffe://example.org/app",
            "parent_id": "spiffe://example.org/spire/agent/x",
            "selectors": [],
        }))
        .unwrap_or_else(|e| panic!("entry JSON: {e}"))
    }

    pub(crate) fn sample() -> CacheRecord {
        CacheRecord {
            version: VERSION,
            written_at: 1_800_000_000,
            bundle: Some("{\"keys\":[]}".into()),
            federated: vec![],
            svids: vec![
                SvidRecord {
                    entry: entry("e1"),
                    chain: vec![vec![0x30, 1, 2]],
                    key: KeyRecord::Software {
                        pkcs8: vec![1, 2, 3],
                    },
                    not_before: 1,
                    not_after: 2,
                    rotate_at: 3,
                    revision: 4,
                },
                SvidRecord {
                    entry: entry("e2"),
                    chain: vec![vec![0x30, 4, 5]],
                    key: KeyRecord::Tpm {
                        tss2_pem: b"-----BEGIN TSS2 PRIVATE KEY-----\nMAo=\n-----END TSS2 PRIVATE KEY-----\n".to_vec(),
                        auth: vec![9; 32],
                    },
                    not_before: 1,
                    not_after: 2,
                    rotate_at: 3,
                    revision: 5,
                },
            ],
        }
    }

    #[test]
    fn records_round_trip_with_their_key_kind() {
        let r = sample();
        let bytes = r.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"kind\":\"software\""), "{text}");
        assert!(text.contains("\"kind\":\"tpm\""), "{text}");
        let back = CacheRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        let KeyRecord::Tpm { tss2_pem, auth } = &back.svids[1].key else {
            panic!("the tpm record came back as another kind");
        };
        assert!(tss2_pem.starts_with(b"-----BEGIN TSS2 PRIVATE KEY-----"));
        assert_eq!(auth, &vec![9; 32]);
        assert!(!format!("{:?}", back.svids[0].key).contains('1'));
    }

    #[test]
    fn other_versions_kinds_and_garbage_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 2.into();
        let e = CacheRecord::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["svids"][0]["key"]["kind"] = "hsm".into();
        assert!(CacheRecord::from_bytes(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(CacheRecord::from_bytes(b"\x00garbage").is_err());
        let bytes = sample().to_bytes();
        assert!(CacheRecord::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }
}
