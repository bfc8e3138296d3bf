//! Which implementation of [`TpmDevice`] talks to the TPM. A build contains one or
//! both: `esapi` (tss-esapi over the system's tpm2-tss, glibc builds, the reference)
//! and `native` (pure Rust, what a static binary uses). The setting `tpm_backend`
//! names one; its default is the first one built in, in that order.

use std::fmt;
use std::str::FromStr;

use super::tcti::Tcti;
use super::{DeviceError, TpmDevice};

/// A TPM backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// tss-esapi over tpm2-tss's ESAPI (cargo feature `esapi`).
    Esapi,
    /// The pure-Rust backend (cargo feature `native`).
    Native,
}

impl Backend {
    /// Every backend, built in or not.
    pub const ALL: [Backend; 2] = [Backend::Esapi, Backend::Native];

    /// Whether this build contains the backend.
    pub fn is_built(self) -> bool {
        match self {
            Backend::Esapi => cfg!(feature = "esapi"),
            Backend::Native => cfg!(feature = "native"),
        }
    }

    /// The backends this build contains.
    pub fn built() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_built()).collect()
    }

    /// The backends this build contains, for messages: `esapi, native`, or `none`.
    pub fn built_names() -> String {
        let built = Self::built();
        if built.is_empty() {
            return "none".into();
        }
        built
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Esapi => "esapi",
            Backend::Native => "native",
        }
    }

    /// Opens the TPM named by `tcti` with this backend.
    pub fn open(self, tcti: &Tcti) -> Result<Box<dyn TpmDevice>, DeviceError> {
        match self {
            #[cfg(feature = "esapi")]
            Backend::Esapi => Ok(Box::new(super::esapi::EsapiDevice::open(tcti)?)),
            #[cfg(feature = "native")]
            Backend::Native => Ok(Box::new(super::native::NativeDevice::open(tcti)?)),
            #[allow(
                unreachable_patterns,
                reason = "reached only when a backend is not built in"
            )]
            other => Err(DeviceError::Unsupported(format!(
                "cannot open {tcti}: this build has no {other} TPM backend (built in: {})",
                Self::built_names()
            ))),
        }
    }
}

impl Default for Backend {
    /// `esapi` when built in (the reference), else `native`.
    fn default() -> Self {
        if cfg!(feature = "esapi") {
            Backend::Esapi
        } else {
            Backend::Native
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TPM backend {0:?} (expected \"esapi\" or \"native\")")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

impl serde::Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for b in Backend::ALL {
            assert_eq!(b.as_str().parse::<Backend>().unwrap(), b);
        }
        let e = "tss".parse::<Backend>().unwrap_err();
        assert!(e.to_string().contains("\"tss\""), "{e}");
    }

    #[test]
    fn a_backend_not_built_in_is_refused_by_name() {
        for b in Backend::ALL.into_iter().filter(|b| !b.is_built()) {
            let e = b.open(&Tcti::default_device()).unwrap_err().to_string();
            assert!(e.contains(&format!("no {b} TPM backend")), "{e}");
        }
        assert!(Backend::default().is_built() || Backend::built().is_empty());
    }
}
