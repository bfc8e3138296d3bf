//! The agent's TPM settings: `[tpm]`, the TPM's owner and endorsement hierarchy
//! passwords, for TPMs whose owner set them, and the TPM node attestors' sections
//! (`[node_attestor.tpm_devid]`, with a factory-provisioned DevID's
//! `devid_key_handle` and `devid_cert_nv_index`, and `[node_attestor.tpm_ek]`).
//!
//! Each password comes from a file (`owner_auth_file`, mode 0600, its contents less
//! trailing line breaks) or from a systemd credential (`owner_auth_credential`: the
//! file of that name in `$CREDENTIALS_DIRECTORY`, from `LoadCredential=` or
//! `LoadCredentialEncrypted=`); the same for `endorsement_auth_*`. The agent uses
//! them wherever it authorises a hierarchy: the SRK (owner), NV reads of EK and
//! DevID certificates (owner), the EK and the PolicySecret of
//! TPM2_ActivateCredential (endorsement), on both TPM backends.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use tessera_process::secret::{SecretError, SecretSource};
use tessera_tpm::device::{Hierarchy, HierarchyAuth};
use zeroize::Zeroizing;

/// `[tpm]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmSettings {
    /// A file holding the owner hierarchy's password.
    #[serde(default)]
    pub owner_auth_file: Option<PathBuf>,
    /// A systemd credential holding the owner hierarchy's password.
    #[serde(default)]
    pub owner_auth_credential: Option<String>,
    /// A file holding the endorsement hierarchy's password.
    #[serde(default)]
    pub endorsement_auth_file: Option<PathBuf>,
    /// A systemd credential holding the endorsement hierarchy's password.
    #[serde(default)]
    pub endorsement_auth_credential: Option<String>,
}

/// `[node_attestor.tpm_devid]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmDevIdConfig {
    /// `device:/dev/tpmrm0` (default), `swtpm:host=..,port=..`, `mssim:...`, `tabrmd`.
    #[serde(default = "crate::config::default_tcti")]
    pub tcti: tessera_tpm::Tcti,
    /// The folder `tpm provision-devid` wrote (DevID key blob and certificate chain).
    /// Without it, the DevID is a factory one: the key at `devid_key_handle` and the
    /// certificates in `devid_cert_nv_index`.
    #[serde(default)]
    pub devid_dir: Option<PathBuf>,
    /// The persistent handle of a factory DevID key (default 0x81020000 when
    /// `devid_dir` is not set); takes the key from there even with `devid_dir`.
    #[serde(default, deserialize_with = "persistent_handle")]
    pub devid_key_handle: Option<u32>,
    /// The NV index of a factory DevID certificate chain (DER; default 0x01C90000
    /// when `devid_dir` is not set); takes the chain from there even with `devid_dir`.
    #[serde(default, deserialize_with = "nv_index")]
    pub devid_cert_nv_index: Option<u32>,
    /// The EK: `rsa-2048`, `ecc-p256`, `ecc-p384` (default: the first with a certificate).
    #[serde(default)]
    pub ek: Option<tessera_tpm::ek::EkKind>,
    /// The fresh AK's algorithm: `ecc-p256` (default) or `rsa-2048`.
    #[serde(default)]
    pub ak: tessera_tpm::ak::AkKind,
}

/// `[node_attestor.tpm_ek]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmEkConfig {
    #[serde(default = "crate::config::default_tcti")]
    pub tcti: tessera_tpm::Tcti,
    #[serde(default)]
    pub ek: Option<tessera_tpm::ek::EkKind>,
    #[serde(default)]
    pub ak: tessera_tpm::ak::AkKind,
}

/// Why a hierarchy password cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmAuthError {
    /// Both a file and a credential are set.
    #[error("[tpm] sets both {0}_auth_file and {0}_auth_credential: set one")]
    Both(Hierarchy),
    /// The source cannot be read.
    #[error("[tpm] {hierarchy} hierarchy password: {source}")]
    Read {
        /// The hierarchy.
        hierarchy: Hierarchy,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// The source is empty.
    #[error("[tpm] {hierarchy} hierarchy password: {what} is empty")]
    Empty {
        /// The hierarchy.
        hierarchy: Hierarchy,
        /// Where it was read from.
        what: String,
    },
    /// Longer than any TPM takes.
    #[error(
        "[tpm] {hierarchy} hierarchy password: {what} holds {len} bytes, and a TPM hierarchy password (a TPM2B_AUTH) has at most {MAX_HIERARCHY_AUTH}: is it the right file?"
    )]
    TooLong {
        /// The hierarchy.
        hierarchy: Hierarchy,
        /// Where it was read from.
        what: String,
        /// Its length.
        len: usize,
    },
}

/// The longest hierarchy password a TPM can hold: a TPM2B_AUTH is at most the size of
/// the largest digest (SHA-512's 64 bytes, on TPMs that have it).
pub const MAX_HIERARCHY_AUTH: usize = 64;

impl TpmSettings {
    fn source(&self, h: Hierarchy) -> Result<Option<SecretSource>, TpmAuthError> {
        let (file, credential) = match h {
            Hierarchy::Owner => (&self.owner_auth_file, &self.owner_auth_credential),
            Hierarchy::Endorsement => (
                &self.endorsement_auth_file,
                &self.endorsement_auth_credential,
            ),
        };
        if file.is_some() && credential.is_some() {
            return Err(TpmAuthError::Both(h));
        }
        SecretSource::first_of(file.as_deref(), None, credential.as_deref()).map_err(|source| {
            TpmAuthError::Read {
                hierarchy: h,
                source,
            }
        })
    }

    /// Whether any password is configured.
    pub fn is_set(&self) -> bool {
        self.owner_auth_file.is_some()
            || self.owner_auth_credential.is_some()
            || self.endorsement_auth_file.is_some()
            || self.endorsement_auth_credential.is_some()
    }

    /// Reads the configured passwords.
    pub fn hierarchy_auth(&self) -> Result<HierarchyAuth, TpmAuthError> {
        let mut auth = HierarchyAuth::default();
        for h in [Hierarchy::Owner, Hierarchy::Endorsement] {
            let Some(source) = self.source(h)? else {
                continue;
            };
            let text = source.read_text().map_err(|e| TpmAuthError::Read {
                hierarchy: h,
                source: e,
            })?;
            if text.is_empty() {
                return Err(TpmAuthError::Empty {
                    hierarchy: h,
                    what: source.describe(),
                });
            }
            if text.len() > MAX_HIERARCHY_AUTH {
                return Err(TpmAuthError::TooLong {
                    hierarchy: h,
                    what: source.describe(),
                    len: text.len(),
                });
            }
            let value = Some(Zeroizing::new(text.as_bytes().to_vec()));
            match h {
                Hierarchy::Owner => auth.owner = value,
                Hierarchy::Endorsement => auth.endorsement = value,
            }
        }
        Ok(auth)
    }
}

/// A TPM handle or NV index: an integer, or a string in hex (`"0x81020000"`).
pub fn handle<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u32),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Int(v)) => Ok(Some(v)),
        Some(Raw::Text(t)) => {
            let hex = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{t:?} is not a handle: write it in hex, as \"0x81020000\""
                    ))
                })?;
            u32::from_str_radix(hex, 16)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a 32-bit hex handle")))
        }
    }
}

/// Checks that `h` is a persistent handle (0x81000000 to 0x81FFFFFF); the error
/// says what kind of handle it is instead.
pub fn check_persistent_handle(h: u32) -> Result<u32, String> {
    if h >> 24 == 0x81 {
        return Ok(h);
    }
    Err(format!(
        "{h:#010x} is {}, not a persistent handle (0x81000000 to 0x81ffffff)",
        handle_kind(h)
    ))
}

/// Checks that `h` is an NV index (0x01000000 to 0x01FFFFFF); the error says what
/// kind of handle it is instead.
pub fn check_nv_index(h: u32) -> Result<u32, String> {
    if h >> 24 == 0x01 {
        return Ok(h);
    }
    Err(format!(
        "{h:#010x} is {}, not an NV index (0x01000000 to 0x01ffffff)",
        handle_kind(h)
    ))
}

/// What the top octet of a handle says it is (TPM 2.0 Part 2, TPM_HT).
fn handle_kind(h: u32) -> &'static str {
    match h >> 24 {
        0x01 => "an NV index",
        0x02 | 0x03 => "a session handle",
        0x40 => "a permanent handle (a hierarchy)",
        0x80 => "a transient handle (it does not survive a restart)",
        0x81 => "a persistent handle",
        _ => "no kind of TPM handle",
    }
}

fn persistent_handle<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    handle(d)?
        .map(check_persistent_handle)
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("devid_key_handle: {e}")))
}

fn nv_index<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    handle(d)?
        .map(check_nv_index)
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("devid_cert_nv_index: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[derive(Deserialize)]
    struct H {
        #[serde(default, deserialize_with = "handle")]
        h: Option<u32>,
    }

    #[test]
    fn handles_parse_in_hex_or_as_integers() {
        let p = |t: &str| toml::from_str::<H>(t).map(|h| h.h);
        assert_eq!(p("h = \"0x81020000\"").unwrap(), Some(0x8102_0000));
        assert_eq!(p("h = 0x01C90000").unwrap(), Some(0x01C9_0000));
        assert_eq!(p("").unwrap(), None);
        assert!(
            p("h = \"81020000\"")
                .unwrap_err()
                .to_string()
                .contains("in hex")
        );
        assert!(
            p("h = \"0xZZ\"")
                .unwrap_err()
                .to_string()
                .contains("32-bit")
        );
    }

    #[test]
    fn devid_handles_of_the_wrong_kind_are_refused_with_what_they_are() {
        let section = |extra: &str| {
            toml::from_str::<TpmDevIdConfig>(&format!("tcti = \"swtpm:port=2321\"\n{extra}"))
                .map(|c| (c.devid_key_handle, c.devid_cert_nv_index))
        };
        assert_eq!(
            section("devid_key_handle = \"0x81020001\"\ndevid_cert_nv_index = \"0x01C90001\"")
                .unwrap(),
            (Some(0x8102_0001), Some(0x01C9_0001))
        );
        for (bad, says) in [
            // The two swapped: a common slip.
            (
                "devid_cert_nv_index = \"0x81020000\"",
                "devid_cert_nv_index: 0x81020000 is a persistent handle, not an NV index",
            ),
            (
                "devid_key_handle = \"0x01C90000\"",
                "devid_key_handle: 0x01c90000 is an NV index, not a persistent handle",
            ),
            (
                "devid_key_handle = \"0x80000001\"",
                "is a transient handle (it does not survive a restart), not a persistent handle",
            ),
            (
                "devid_key_handle = \"0x40000001\"",
                "is a permanent handle (a hierarchy)",
            ),
            (
                "devid_cert_nv_index = 0",
                "devid_cert_nv_index: 0x00000000 is no kind of TPM handle, not an NV index",
            ),
            (
                "devid_cert_nv_index = \"0xFFFFFFFF\"",
                "0xffffffff is no kind of TPM handle",
            ),
        ] {
            let e = section(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn passwords_come_from_files_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("owner");
        std::fs::write(&f, "owner-pw\n").unwrap();
        let s = TpmSettings {
            owner_auth_file: Some(f.clone()),
            ..Default::default()
        };
        let auth = s.hierarchy_auth().unwrap();
        assert_eq!(auth.value(Hierarchy::Owner), b"owner-pw");
        assert!(!auth.is_set(Hierarchy::Endorsement));

        let both = TpmSettings {
            owner_auth_file: Some(f),
            owner_auth_credential: Some("tpm-owner".into()),
            ..Default::default()
        };
        let e = both.hierarchy_auth().unwrap_err().to_string();
        assert!(
            e.contains("both owner_auth_file and owner_auth_credential"),
            "{e}"
        );

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let s = TpmSettings {
            endorsement_auth_file: Some(empty),
            ..Default::default()
        };
        let e = s.hierarchy_auth().unwrap_err().to_string();
        assert!(
            e.contains("endorsement hierarchy password") && e.contains("empty"),
            "{e}"
        );

        // A PEM file or a key named by mistake: longer than any TPM takes.
        let long = dir.path().join("long");
        std::fs::write(&long, format!("{}\n", "p".repeat(65))).unwrap();
        let s = TpmSettings {
            owner_auth_file: Some(long.clone()),
            ..Default::default()
        };
        let e = s.hierarchy_auth().unwrap_err().to_string();
        assert!(
            e.contains("owner hierarchy password") && e.contains("holds 65 bytes"),
            "{e}"
        );
        std::fs::write(&long, "p".repeat(64)).unwrap();
        assert_eq!(
            s.hierarchy_auth().unwrap().value(Hierarchy::Owner).len(),
            64
        );
        // A directory.
        let s = TpmSettings {
            owner_auth_file: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let e = s.hierarchy_auth().unwrap_err().to_string();
        assert!(e.contains("owner hierarchy password"), "{e}");

        let s = TpmSettings {
            endorsement_auth_file: Some(dir.path().join("missing")),
            ..Default::default()
        };
        let e = s.hierarchy_auth().unwrap_err().to_string();
        assert!(e.contains("endorsement hierarchy password"), "{e}");
    }
}
