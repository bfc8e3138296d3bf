//! SPIFFE IDs and trust domains, valid by construction.
//!
//! The rules come from the SPIFFE ID standard
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>): the
//! scheme and trust domain are case-insensitive on input and always lower case
//! on output; the path is case-sensitive. A value of these types can only be
//! obtained through parsing, so holding one means it is valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The URI scheme of every SPIFFE ID.
pub const SCHEME: &str = "spiffe";
/// The longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LENGTH: usize = 255;
/// The longest SPIFFE ID accepted, in bytes (the whole URI).
pub const MAX_SPIFFE_ID_LENGTH: usize = 2048;

const PREFIX: &str = "spiffe://";
/// The root of the reserved namespace (see [`SpiffeId::is_reserved`]).
pub const RESERVED_PATH: &str = "/spire";

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("empty SPIFFE ID")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("scheme is missing or is not \"spiffe://\"")]
    WrongScheme,
    /// There is no trust domain.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain is over the length limit.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} bytes")]
    TrustDomainTooLong,
    /// The trust domain has a character SPIFFE does not allow.
    #[error(
        "trust domain contains {0:?}: only lower-case letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// The trust domain has a port.
    #[error("trust domain must not carry a port")]
    PortNotAllowed,
    /// The trust domain has user info (`user@`).
    #[error("trust domain must not carry user info")]
    UserInfoNotAllowed,
    /// The ID has percent-encoding.
    #[error("percent-encoding is not allowed")]
    PercentEncodingNotAllowed,
    /// The ID is over the length limit.
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LENGTH} bytes")]
    TooLong,
    /// The path has an empty segment (`//`).
    #[error("path contains an empty segment")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path has a trailing '/'")]
    TrailingSlash,
    /// The path has a character SPIFFE does not allow.
    #[error("path contains {0:?}: only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    /// The ID has a query.
    #[error("query is not allowed")]
    QueryNotAllowed,
    /// The ID has a fragment.
    #[error("fragment is not allowed")]
    FragmentNotAllowed,
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    PathWithoutSlash,
}

/// A SPIFFE trust domain name, such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name, or a SPIFFE ID with no path (`spiffe://example.org`).
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if let Some(rest) = strip_scheme(input)? {
            let id = SpiffeId::parse_after_scheme(input, rest)?;
            if !id.path.is_empty() {
                return Err(SpiffeIdError::BadTrustDomainChar('/'));
            }
            return Ok(id.trust_domain);
        }
        parse_trust_domain(input)
    }

    /// The name, always lower case.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>`: the URI SAN of its CA certificates
    /// and the key of federated bundle maps.
    pub fn id_string(&self) -> String {
        format!("{PREFIX}{}", self.0)
    }

    /// A SPIFFE ID in this trust domain with the given path (which must start with `/`).
    pub fn id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        if !path.starts_with('/') {
            return Err(SpiffeIdError::PathWithoutSlash);
        }
        validate_path(path)?;
        let id = SpiffeId {
            trust_domain: self.clone(),
            path: path.to_owned(),
        };
        if id.len() > MAX_SPIFFE_ID_LENGTH {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust-domain><path>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg/seg...`.
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    pub fn new(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = strip_scheme(input)?.ok_or(SpiffeIdError::WrongScheme)?;
        Self::parse_after_scheme(input, rest)
    }

    fn parse_after_scheme(whole: &str, rest: &str) -> Result<Self, SpiffeIdError> {
        if whole.len() > MAX_SPIFFE_ID_LENGTH {
            return Err(SpiffeIdError::TooLong);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::QueryNotAllowed);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::FragmentNotAllowed);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let trust_domain = parse_trust_domain(authority)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this is a trust domain's own ID (no path), as CA certificates carry.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }

    /// Whether this ID is in the given trust domain.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        &self.trust_domain == td
    }

    /// Whether the path is in the namespace the server and agents keep for their own
    /// IDs: `/spire` itself or anything under `/spire/` (SPIRE's rule; the match is
    /// case-sensitive, as paths are). Workloads never get such an ID: see
    /// [`crate::entry::check_workload_id`].
    pub fn is_reserved(&self) -> bool {
        self.path == RESERVED_PATH
            || self
                .path
                .strip_prefix(RESERVED_PATH)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    fn len(&self) -> usize {
        PREFIX.len() + self.trust_domain.0.len() + self.path.len()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}{}", self.trust_domain.0, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Returns the text after `spiffe://` (scheme matched case-insensitively), `None` when
/// the input has no scheme at all, and an error for any other scheme.
fn strip_scheme(input: &str) -> Result<Option<&str>, SpiffeIdError> {
    match input.find("://") {
        None => {
            if input.contains(':') && !input.contains('/') && !input.contains('@') {
                // "example.org:8080" is a trust domain with a port, reported below.
                return Ok(None);
            }
            if input.contains(':') {
                return Err(SpiffeIdError::WrongScheme);
            }
            Ok(None)
        }
        Some(i) => {
            if input[..i].eq_ignore_ascii_case(SCHEME) {
                Ok(Some(&input[i + 3..]))
            } else {
                Err(SpiffeIdError::WrongScheme)
            }
        }
    }
}

fn parse_trust_domain(authority: &str) -> Result<TrustDomain, SpiffeIdError> {
    if authority.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if authority.contains('@') {
        return Err(SpiffeIdError::UserInfoNotAllowed);
    }
    if authority.contains(':') {
        return Err(SpiffeIdError::PortNotAllowed);
    }
    if authority.contains('%') {
        return Err(SpiffeIdError::PercentEncodingNotAllowed);
    }
    if authority.len() > MAX_TRUST_DOMAIN_LENGTH {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    let lower = authority.to_ascii_lowercase();
    if let Some(c) = lower
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::BadTrustDomainChar(c));
    }
    Ok(TrustDomain(lower))
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.contains('%') {
        return Err(SpiffeIdError::PercentEncodingNotAllowed);
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_namespace_is_spire_and_below() {
        for reserved in [
            "spiffe://td/spire",
            "spiffe://td/spire/server",
            "spiffe://td/spire/agent/join_token/x",
            "spiffe://td/spire/anything/else",
            "spiffe://TD/spire/server",
        ] {
            assert!(SpiffeId::new(reserved).unwrap().is_reserved(), "{reserved}");
        }
        for free in [
            "spiffe://td",
            "spiffe://td/spire-server",
            "spiffe://td/spires/x",
            "spiffe://td/SPIRE/server",
            "spiffe://td/web/spire/server",
            "spiffe://td/spire.x",
        ] {
            assert!(!SpiffeId::new(free).unwrap().is_reserved(), "{free}");
        }
    }

    fn err(s: &str) -> SpiffeIdError {
        SpiffeId::new(s).expect_err(s)
    }

    #[test]
    fn accepts_and_normalises() {
        let id = SpiffeId::new("SPIFFE://Example.ORG/Web/Front-end_1.v2").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/Web/Front-end_1.v2");
        assert_eq!(id.trust_domain().name(), "example.org");
        assert_eq!(id.path(), "/Web/Front-end_1.v2");
        assert!(!id.is_trust_domain_id());
        let td = SpiffeId::new("spiffe://example.org").unwrap();
        assert!(td.is_trust_domain_id());
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(err(""), SpiffeIdError::Empty);
        assert_eq!(err("https://example.org/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("example.org/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:/example.org/a"), SpiffeIdError::WrongScheme);
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(err("spiffe:///a"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(
            err("spiffe://example.org:8080/a"),
            SpiffeIdError::PortNotAllowed
        );
        assert_eq!(
            err("spiffe://user@example.org/a"),
            SpiffeIdError::UserInfoNotAllowed
        );
        assert_eq!(
            err("spiffe://exa%41mple.org/a"),
            SpiffeIdError::PercentEncodingNotAllowed
        );
        assert_eq!(
            err("spiffe://exa mple.org/a"),
            SpiffeIdError::BadTrustDomainChar(' ')
        );
        assert_eq!(
            err("spiffe://exa+mple.org/a"),
            SpiffeIdError::BadTrustDomainChar('+')
        );
        let long = "a".repeat(256);
        assert_eq!(
            err(&format!("spiffe://{long}/a")),
            SpiffeIdError::TrustDomainTooLong
        );
        let max = "a".repeat(255);
        assert!(SpiffeId::new(&format!("spiffe://{max}/a")).is_ok());
        assert!(SpiffeId::new("spiffe://a-b_c.9/x").is_ok());
    }

    #[test]
    fn path_rules() {
        assert_eq!(err("spiffe://example.org/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://example.org/a/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://example.org//a"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://example.org/a/./b"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://example.org/a/.."), SpiffeIdError::DotSegment);
        assert_eq!(
            err("spiffe://example.org/a?x=1"),
            SpiffeIdError::QueryNotAllowed
        );
        assert_eq!(
            err("spiffe://example.org/a#f"),
            SpiffeIdError::FragmentNotAllowed
        );
        assert_eq!(
            err("spiffe://example.org/a%20b"),
            SpiffeIdError::PercentEncodingNotAllowed
        );
        assert_eq!(
            err("spiffe://example.org/a b"),
            SpiffeIdError::BadPathChar(' ')
        );
        assert_eq!(
            err("spiffe://example.org/a:b"),
            SpiffeIdError::BadPathChar(':')
        );
        // Dots inside a segment are fine.
        assert!(SpiffeId::new("spiffe://example.org/.a/b..c/...").is_ok());
    }

    #[test]
    fn length_limit() {
        let prefix = "spiffe://example.org/";
        let ok = format!(
            "{prefix}{}",
            "a".repeat(MAX_SPIFFE_ID_LENGTH - prefix.len())
        );
        assert_eq!(ok.len(), MAX_SPIFFE_ID_LENGTH);
        assert!(SpiffeId::new(&ok).is_ok());
        let too_long = format!("{ok}b");
        assert_eq!(err(&too_long), SpiffeIdError::TooLong);
    }

    #[test]
    fn trust_domain_parsing() {
        assert_eq!(
            TrustDomain::new("Example.Org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().name(),
            "example.org"
        );
        assert!(TrustDomain::new("spiffe://example.org/path").is_err());
        assert_eq!(TrustDomain::new(""), Err(SpiffeIdError::MissingTrustDomain));
        assert_eq!(
            TrustDomain::new("example.org:1"),
            Err(SpiffeIdError::PortNotAllowed)
        );
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(
            td.id("/x/y").unwrap().to_string(),
            "spiffe://example.org/x/y"
        );
        assert_eq!(td.id("x"), Err(SpiffeIdError::PathWithoutSlash));
    }

    #[test]
    fn serde_round_trip() {
        let id = SpiffeId::new("spiffe://example.org/a").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/a\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/\"").is_err());
    }
}
