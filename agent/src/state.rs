//! The agent's state directory: what a restarted agent needs to resume without
//! attesting again. The agent SVID, the name of its key and the attestation facts live
//! in one file written atomically, so the certificate and the key it belongs to can
//! never be out of step; the bundle lives beside it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_with::base64::Base64;
use tessera_core::{Bundle, SpiffeId, TrustDomain};

const AGENT_FILE: &str = "agent.json";
const BUNDLE_FILE: &str = "bundle.jwks";

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); remove it to attest again")]
    Corrupt { path: String, reason: String },
}

/// The agent's identity as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedIdentity {
    pub spiffe_id: SpiffeId,
    /// The key's name in the agent's key manager.
    pub key_id: String,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub attestor: String,
    pub can_reattest: bool,
}

#[serde_with::serde_as]
#[derive(Serialize, Deserialize)]
struct AgentFile {
    spiffe_id: String,
    key_id: String,
    /// DER certificates as standard base64.
    #[serde_as(as = "Vec<Base64>")]
    chain: Vec<Vec<u8>>,
    attestor: String,
    can_reattest: bool,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl StateDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        tessera_process::fs::ensure_dir(dir, 0o700).map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved identity, if any.
    pub fn load_identity(&self) -> Result<Option<SavedIdentity>, StateError> {
        let path = self.dir.join(AGENT_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let f: AgentFile = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        let chain = f.chain;
        if chain.is_empty() {
            return Err(corrupt("empty certificate chain".into()));
        }
        Ok(Some(SavedIdentity {
            spiffe_id: SpiffeId::new(&f.spiffe_id)
                .map_err(|e| corrupt(format!("spiffe_id: {e}")))?,
            key_id: f.key_id,
            chain,
            attestor: f.attestor,
            can_reattest: f.can_reattest,
        }))
    }

    /// Saves the identity atomically (mode 0600).
    pub fn save_identity(&self, id: &SavedIdentity) -> Result<(), StateError> {
        let f = AgentFile {
            spiffe_id: id.spiffe_id.to_string(),
            key_id: id.key_id.clone(),
            chain: id.chain.clone(),
            attestor: id.attestor.clone(),
            can_reattest: id.can_reattest,
        };
        let path = self.dir.join(AGENT_FILE);
        let data = serde_json::to_vec_pretty(&f).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        tessera_process::fs::write_atomic(&path, &data, 0o600).map_err(io(&path))
    }

    /// Forgets the identity (after the server refused it for good).
    pub fn clear_identity(&self) -> Result<(), StateError> {
        let path = self.dir.join(AGENT_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The saved bundle, if any.
    pub fn load_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, StateError> {
        let path = self.dir.join(BUNDLE_FILE);
        match std::fs::read(&path) {
            Ok(t) => Bundle::from_jwks(td.clone(), &t)
                .map(Some)
                .map_err(|e| StateError::Corrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Saves the bundle atomically.
    pub fn save_bundle(&self, b: &Bundle) -> Result<(), StateError> {
        let path = self.dir.join(BUNDLE_FILE);
        tessera_process::fs::write_atomic(&path, b.to_jwks().as_bytes(), 0o644).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(&dir.path().join("st")).unwrap();
        assert!(s.load_identity().unwrap().is_none());
        let id = SavedIdentity {
            spiffe_id: "spiffe://e.org/spire/agent/join_token/x".parse().unwrap(),
            key_id: "agent-svid-a".into(),
            chain: vec![vec![1, 2, 3]],
            attestor: "join_token".into(),
            can_reattest: false,
        };
        s.save_identity(&id).unwrap();
        assert_eq!(s.load_identity().unwrap().unwrap(), id);
        // The file format is unchanged: certificates as standard base64 strings.
        let file = dir.path().join("st").join(AGENT_FILE);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(r#""AQID""#), "{text}");
        for bad in ["{not json".to_owned(), text.replace("AQID", "*not base64*")] {
            std::fs::write(&file, bad).unwrap();
            let e = s.load_identity().unwrap_err();
            assert!(e.to_string().contains("damaged"), "{e}");
        }
        s.clear_identity().unwrap();
        assert!(s.load_identity().unwrap().is_none());
    }

    #[test]
    fn bundle_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let td = TrustDomain::new("e.org").unwrap();
        assert!(s.load_bundle(&td).unwrap().is_none());
        let mut b = Bundle::new(td.clone());
        b.set_sequence(4);
        s.save_bundle(&b).unwrap();
        assert_eq!(s.load_bundle(&td).unwrap().unwrap().sequence(), 4);
    }
}
