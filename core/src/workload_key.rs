//! Where a workload's X509-SVID key is born: in software (the SPIFFE default, a
//! PKCS#8 key handed to the workload) or in the agent's TPM (a key under the SRK,
//! handed over as a TSS2 key file plus its own authorization value). An entry field
//! of Tessera's own; SPIRE's entry fields are untouched.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of key a workload's X509-SVID is issued for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKey {
    /// A software key, served through the SPIFFE Workload API as PKCS#8.
    #[default]
    Software,
    /// A key created in the agent's TPM, served only through Tessera's
    /// `tessera.local.v1.TpmWorkloadKeys` service as a TSS2 PRIVATE KEY.
    Tpm,
}

/// The words [`WorkloadKey`] is spelled with.
pub const WORKLOAD_KEY_VALUES: &str = "software, tpm";

/// A `workload_key` value that is none of [`WORKLOAD_KEY_VALUES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload_key {0:?} is not one of: {WORKLOAD_KEY_VALUES}")]
pub struct BadWorkloadKey(pub String);

impl WorkloadKey {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKey::Software => "software",
            WorkloadKey::Tpm => "tpm",
        }
    }

    /// Whether this is the default (software).
    pub fn is_software(&self) -> bool {
        *self == WorkloadKey::Software
    }

    /// Parses the wire form, where the empty string (a message from before the
    /// field existed) means software.
    pub fn from_wire(s: &str) -> Result<Self, BadWorkloadKey> {
        if s.is_empty() {
            Ok(WorkloadKey::Software)
        } else {
            s.parse()
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkloadKey {
    type Err = BadWorkloadKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "software" => Ok(WorkloadKey::Software),
            "tpm" => Ok(WorkloadKey::Tpm),
            other => Err(BadWorkloadKey(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_words_and_names_bad_ones() {
        assert_eq!("tpm".parse(), Ok(WorkloadKey::Tpm));
        assert_eq!("software".parse(), Ok(WorkloadKey::Software));
        assert_eq!(WorkloadKey::from_wire(""), Ok(WorkloadKey::Software));
        let err = "TPM2".parse::<WorkloadKey>().unwrap_err().to_string();
        assert!(
            err.contains("\"TPM2\"") && err.contains("software, tpm"),
            "{err}"
        );
        assert!(WorkloadKey::from_wire("hsm").is_err());
        for k in [WorkloadKey::Software, WorkloadKey::Tpm] {
            assert_eq!(k.to_string().parse(), Ok(k));
        }
    }

    #[test]
    fn json_form_is_the_word_and_defaults_to_software() {
        #[derive(Deserialize)]
        struct E {
            #[serde(default)]
            k: WorkloadKey,
        }
        assert_eq!(serde_json::to_string(&WorkloadKey::Tpm).unwrap(), "\"tpm\"");
        let e: E = serde_json::from_str("{}").unwrap();
        assert_eq!(e.k, WorkloadKey::Software);
        assert!(serde_json::from_str::<E>(r#"{"k":"hsm"}"#).is_err());
    }
}
