//! Selectors: `type:value` facts about a node or a workload, and the subset rule that
//! matches them against registration entries.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest selector value accepted, in bytes.
pub const MAX_SELECTOR_LENGTH: usize = 4096;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// There is no `:` between type and value.
    #[error(
        "selector {0:?} has no ':' between type and value (expected type:value, e.g. unix:uid:1000)"
    )]
    MissingColon(String),
    /// The type is empty.
    #[error("selector {0:?} has an empty type")]
    EmptyType(String),
    /// The value is empty.
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    /// The type has a character other than letters, digits, `_` and `-`.
    #[error("selector type {0:?} may hold only letters, digits, '_' and '-'")]
    BadType(String),
    /// The selector is over the length limit.
    #[error("selector is longer than {MAX_SELECTOR_LENGTH} bytes")]
    TooLong,
}

/// One selector, such as `unix:uid:1000` (type `unix`, value `uid:1000`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its type and value.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let whole = format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(whole));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(whole));
        }
        if whole.len() > MAX_SELECTOR_LENGTH {
            return Err(SelectorError::TooLong);
        }
        if !kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The attestor that produces this selector (`unix`, `tpm_devid`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Everything after the first `:`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingColon(s.to_owned()))?;
        Self::new(kind, value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An ordered set of selectors.
pub type SelectorSet = BTreeSet<Selector>;

/// The matching rule of SPIFFE registration: an entry applies when every one of its
/// selectors is among the selectors observed. An entry with no selectors never matches.
pub fn matches(entry_selectors: &[Selector], observed: &SelectorSet) -> bool {
    !entry_selectors.is_empty() && entry_selectors.iter().all(|s| observed.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    #[test]
    fn parse_keeps_colons_in_value() {
        let s = sel("k8s:pod-label:app:web");
        assert_eq!(s.kind(), "k8s");
        assert_eq!(s.value(), "pod-label:app:web");
        assert_eq!(s.to_string(), "k8s:pod-label:app:web");
    }

    #[test]
    fn rejects() {
        assert!(matches!(
            "unix".parse::<Selector>(),
            Err(SelectorError::MissingColon(_))
        ));
        assert!(matches!(
            ":x".parse::<Selector>(),
            Err(SelectorError::EmptyType(_))
        ));
        assert!(matches!(
            "unix:".parse::<Selector>(),
            Err(SelectorError::EmptyValue(_))
        ));
        assert!(matches!(
            "un ix:uid:1".parse::<Selector>(),
            Err(SelectorError::BadType(_))
        ));
        let long = format!("unix:{}", "x".repeat(MAX_SELECTOR_LENGTH));
        assert_eq!(long.parse::<Selector>(), Err(SelectorError::TooLong));
    }

    #[test]
    fn subset_rule() {
        let observed: SelectorSet = [
            sel("unix:uid:1000"),
            sel("unix:gid:1000"),
            sel("unix:user:me"),
        ]
        .into_iter()
        .collect();
        assert!(matches(&[sel("unix:uid:1000")], &observed));
        assert!(matches(
            &[sel("unix:uid:1000"), sel("unix:gid:1000")],
            &observed
        ));
        assert!(!matches(
            &[sel("unix:uid:1000"), sel("unix:gid:0")],
            &observed
        ));
        assert!(!matches(&[], &observed));
    }
}
