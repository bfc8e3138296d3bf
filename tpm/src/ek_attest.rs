//! The `tpm` node attestor (EK only, as in bloomberg's spire-tpm-plugin), both
//! halves, plus the allow-list of EK hashes the server may trust instead of, or as
//! well as, the manufacturer's certificate.
//!
//! Agent: [`build_payload`] sends the EK public area, the EK certificate if the TPM
//! has one, and a fresh AK's public area. Server: [`EkVerifier::start`] accepts the
//! EK when its certificate chains to a configured manufacturer CA (and certifies this
//! key), or when the EK's hash is on the allow-list, and challenges with a credential
//! sealed to the EK and bound to the AK's name; only TPM2_ActivateCredential in the
//! TPM holding that EK, with that AK loaded, opens it ([`EkAgentState::answer`]).
//! [`EkPending::finish`] returns the agent ID path `tpm/<hash>` and the selectors
//! `tpm:pub_hash:<hash>` and, from a validated certificate's subject alternative
//! name, `tpm:manufacturer:`, `tpm:model:` and `tpm:version:`.
//!
//! The hash: SHA-256 over the DER SubjectPublicKeyInfo of the EK's public key as
//! [`PublicArea::spki`] writes it (RSA: rsaEncryption, NULL parameters, minimal
//! modulus and exponent INTEGERs; ECC: id-ecPublicKey, the named curve, the
//! uncompressed point), in lower-case hex. It equals
//! `openssl x509 -in ek.crt -noout -pubkey | openssl pkey -pubin -outform der | sha256sum`
//! for the EK's certificate, and Go's `sha256(x509.MarshalPKIXPublicKey(ekPub))`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::ak::check_ak_public;
use crate::attest::{
    AgentOptions, AttestError, NodeAttestation, check_ek, parse_public, random_bytes,
    secrets_equal, select_ek, selector,
};
use crate::chain::CaPool;
use crate::credential::{CredentialBlob, make_credential};
use crate::device::{KeyBlob, Tpm};
use crate::ek::{EkKind, tpm_identity};
use crate::structures::{HashAlg, PublicArea, hex};

/// The selector type.
pub const SELECTOR_TYPE: &str = "tpm";

const SECRET_LEN: usize = 32;

/// The hash that identifies an EK (see the module documentation for what is hashed).
pub fn ek_pub_hash(ek: &PublicArea) -> Result<String, AttestError> {
    let spki = ek
        .spki()
        .map_err(AttestError::malformed("EK public area"))?;
    Ok(hex(&HashAlg::Sha256.digest(&[&spki])))
}

/// The agent's first message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkPayload {
    /// The EK's TPMT_PUBLIC.
    #[serde(with = "crate::b64")]
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER), if the TPM has one in NV.
    #[serde(default, with = "crate::b64::option")]
    pub ek_certificate: Option<Vec<u8>>,
    /// The fresh AK's TPMT_PUBLIC.
    #[serde(with = "crate::b64")]
    pub ak_public: Vec<u8>,
}

/// The server's challenge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkChallenge {
    /// A secret sealed to the EK and bound to the AK's name.
    pub credential: CredentialBlob,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkResponse {
    /// The secret TPM2_ActivateCredential returned.
    #[serde(with = "crate::b64")]
    pub activated_secret: Vec<u8>,
}

/// What the agent keeps between its payload and the challenge.
#[derive(Debug)]
pub struct EkAgentState {
    ak: KeyBlob,
    ek: EkKind,
}

/// Agent: makes a fresh AK and builds the payload.
pub fn build_payload(
    tpm: &Tpm,
    options: &AgentOptions,
) -> Result<(EkPayload, EkAgentState), AttestError> {
    let mut dev = tpm.lock()?;
    let ek = select_ek(dev.as_mut(), options.ek)?;
    let ak = dev.create_key(&options.ak.template())?;
    Ok((
        EkPayload {
            ek_public: ek.public.marshal(),
            ek_certificate: ek.certificate,
            ak_public: ak.public.marshal(),
        },
        EkAgentState { ak, ek: ek.kind },
    ))
}

impl EkAgentState {
    /// Agent: opens the credential in the TPM.
    pub fn answer(self, tpm: &Tpm, challenge: &EkChallenge) -> Result<EkResponse, AttestError> {
        let secret =
            tpm.with(|dev| dev.activate_credential(&self.ak, self.ek, &challenge.credential))?;
        Ok(EkResponse {
            activated_secret: secret.to_vec(),
        })
    }
}

/// The server's trust configuration for `tpm`: manufacturer CAs, an allow-list, or both.
#[derive(Debug)]
pub struct EkVerifier {
    ek_cas: CaPool,
    allow_list: Option<EkAllowList>,
}

/// What the server keeps between challenge and response (see
/// [`crate::devid::DevIdPending`] for why it is consumed).
pub struct EkPending {
    secret: Zeroizing<Vec<u8>>,
    result: NodeAttestation,
}

impl std::fmt::Debug for EkPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EkPending")
            .field("agent_path", &self.result.agent_path)
            .finish_non_exhaustive()
    }
}

impl EkVerifier {
    /// `ek_cas` may be empty (trust by allow-list only); `allow_list` may be None
    /// (trust by certificate only). With neither, nothing is trusted.
    pub fn new(ek_cas: CaPool, allow_list: Option<EkAllowList>) -> Self {
        Self { ek_cas, allow_list }
    }

    /// Server: decides whether the EK is trusted and issues the challenge.
    pub fn start(&self, payload: &EkPayload) -> Result<(EkChallenge, EkPending), AttestError> {
        let ek_public = parse_public(&payload.ek_public, "EK public area")?;
        let ak_public = parse_public(&payload.ak_public, "AK public area")?;
        let pub_hash = ek_pub_hash(&ek_public)?;

        // A certificate that certifies another key is refused outright; one from an
        // unknown CA only means the EK must be allow-listed instead.
        let cert = payload.ek_certificate.as_deref();
        let by_certificate = match check_ek(&ek_public, cert, &self.ek_cas) {
            Ok(verified) => verified.map(|_| ()).ok_or_else(|| {
                if cert.is_none() {
                    "no EK certificate was presented".to_owned()
                } else {
                    "no manufacturer CA is configured".to_owned()
                }
            }),
            Err(AttestError::EkCertificate(e)) => Err(format!("its certificate was refused ({e})")),
            Err(other) => return Err(other),
        };
        let allowed = match &self.allow_list {
            Some(list) => list.contains(&pub_hash)?,
            None => false,
        };
        if let Err(cert_reason) = &by_certificate
            && !allowed
        {
            let list = if self.allow_list.is_some() {
                "it is not on the allow-list"
            } else {
                "no allow-list is configured"
            };
            return Err(AttestError::EkNotTrusted {
                pub_hash,
                reason: format!("{list}, and {cert_reason}"),
            });
        }
        check_ak_public(&ak_public)?;

        let mut selectors = vec![selector(SELECTOR_TYPE, format!("pub_hash:{pub_hash}"))?];
        if by_certificate.is_ok()
            && let Some(cert) = cert
        {
            let id = tpm_identity(cert)?;
            for (name, value) in [
                ("manufacturer", id.manufacturer),
                ("model", id.model),
                ("version", id.version),
            ] {
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    selectors.push(selector(SELECTOR_TYPE, format!("{name}:{v}"))?);
                }
            }
        }

        let secret = random_bytes(SECRET_LEN)?;
        let credential = make_credential(&ek_public, &ak_public.name(), &secret)?;
        Ok((
            EkChallenge { credential },
            EkPending {
                secret,
                result: NodeAttestation {
                    agent_path: format!("tpm/{pub_hash}"),
                    selectors,
                },
            },
        ))
    }
}

impl EkPending {
    /// Server: checks the answer against this attempt, and only this one.
    pub fn finish(self, response: &EkResponse) -> Result<NodeAttestation, AttestError> {
        if !secrets_equal(&response.activated_secret, &self.secret) {
            return Err(AttestError::ActivationFailed);
        }
        Ok(self.result)
    }

    /// The agent ID path the attempt will give if the answer holds.
    pub fn agent_path(&self) -> &str {
        &self.result.agent_path
    }
}

/// EK hashes the operator trusts, read from a file or from every file in a folder:
/// one lower-case or upper-case hex SHA-256 per line, `#` starts a comment, blank
/// lines are ignored, files whose name starts with `.` are skipped. The files are
/// checked on every use and re-read when a modification time, a size or the set of
/// files changed, so adding or revoking an EK needs no restart. A list that no
/// longer parses makes attestation fail (rather than keep trusting a revoked EK).
#[derive(Debug)]
pub struct EkAllowList {
    source: Source,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
enum Source {
    Path(PathBuf),
    Fixed,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
    hashes: BTreeSet<String>,
}

impl EkAllowList {
    /// Reads the allow-list at `path` (a file or a folder).
    pub fn open(path: &Path) -> Result<Self, AttestError> {
        let list = Self {
            source: Source::Path(path.to_owned()),
            state: Mutex::new(Loaded::default()),
        };
        list.refresh()?;
        Ok(list)
    }

    /// A fixed list (configuration given inline, or tests).
    pub fn from_hashes<I: IntoIterator<Item = S>, S: AsRef<str>>(
        hashes: I,
    ) -> Result<Self, AttestError> {
        let mut set = BTreeSet::new();
        for (i, h) in hashes.into_iter().enumerate() {
            set.insert(parse_hash(h.as_ref()).ok_or_else(|| {
                AttestError::AllowList(format!(
                    "entry {} is not a SHA-256 hex string: {:?}",
                    i + 1,
                    h.as_ref()
                ))
            })?);
        }
        Ok(Self {
            source: Source::Fixed,
            state: Mutex::new(Loaded {
                stamp: Vec::new(),
                hashes: set,
            }),
        })
    }

    /// Whether `pub_hash` is listed, re-reading the files if they changed.
    pub fn contains(&self, pub_hash: &str) -> Result<bool, AttestError> {
        self.refresh()?;
        let state = self
            .state
            .lock()
            .map_err(|_| AttestError::AllowList("lock poisoned".into()))?;
        Ok(state.hashes.contains(&pub_hash.to_ascii_lowercase()))
    }

    /// How many hashes are listed now.
    pub fn len(&self) -> Result<usize, AttestError> {
        self.refresh()?;
        let state = self
            .state
            .lock()
            .map_err(|_| AttestError::AllowList("lock poisoned".into()))?;
        Ok(state.hashes.len())
    }

    /// Whether the list is empty now.
    pub fn is_empty(&self) -> Result<bool, AttestError> {
        Ok(self.len()? == 0)
    }

    fn refresh(&self) -> Result<(), AttestError> {
        let Source::Path(path) = &self.source else {
            return Ok(());
        };
        let files = list_files(path)?;
        let stamp: Vec<_> = files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok();
                (
                    f.clone(),
                    meta.as_ref().and_then(|m| m.modified().ok()),
                    meta.map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        let mut state = self
            .state
            .lock()
            .map_err(|_| AttestError::AllowList("lock poisoned".into()))?;
        if !state.stamp.is_empty() && state.stamp == stamp {
            return Ok(());
        }
        let mut hashes = BTreeSet::new();
        for f in &files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| AttestError::AllowList(format!("cannot read {}: {e}", f.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let h = parse_hash(line).ok_or_else(|| {
                    AttestError::AllowList(format!(
                        "{}:{}: not a SHA-256 hex string: {line:?}",
                        f.display(),
                        n + 1
                    ))
                })?;
                hashes.insert(h);
            }
        }
        *state = Loaded { stamp, hashes };
        Ok(())
    }
}

fn parse_hash(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn list_files(path: &Path) -> Result<Vec<PathBuf>, AttestError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| AttestError::AllowList(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let rd = std::fs::read_dir(path)
        .map_err(|e| AttestError::AllowList(format!("cannot list {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn file_allow_list_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eks.txt");
        std::fs::write(&file, format!("# trusted EKs\n{H1}  # lab TPM\n\n")).unwrap();
        let list = EkAllowList::open(&file).unwrap();
        assert!(list.contains(H1).unwrap());
        assert!(list.contains(&H1.to_uppercase()).unwrap());
        assert!(!list.contains(H2).unwrap());
        // A change in size is seen even within the file system's time granularity.
        std::fs::write(&file, format!("{H2}\n")).unwrap();
        assert!(!list.contains(H1).unwrap());
        assert!(list.contains(H2).unwrap());
        std::fs::write(&file, "not-a-hash\n").unwrap();
        let err = list.contains(H2).unwrap_err();
        assert!(err.to_string().contains("eks.txt:1"), "{err}");
    }

    #[test]
    fn folder_allow_list_reads_every_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), format!("{H1}\n")).unwrap();
        std::fs::write(dir.path().join(".hidden"), "garbage\n").unwrap();
        let list = EkAllowList::open(dir.path()).unwrap();
        assert_eq!(list.len().unwrap(), 1);
        std::fs::write(dir.path().join("b"), format!("{H2}\n")).unwrap();
        assert!(list.contains(H2).unwrap());
        std::fs::remove_file(dir.path().join("a")).unwrap();
        assert!(!list.contains(H1).unwrap());
        assert!(EkAllowList::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn fixed_lists_validate_entries() {
        assert!(
            EkAllowList::from_hashes([H1])
                .unwrap()
                .contains(H1)
                .unwrap()
        );
        assert!(EkAllowList::from_hashes(["abc"]).is_err());
    }
}
