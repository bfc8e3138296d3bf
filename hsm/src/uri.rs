//! RFC 7512 `pkcs11:` URIs, the convention step-ca, p11-kit, OpenSSL and GnuTLS use to
//! name a token, an object on it, the module and where the PIN is.
//!
//! Rules kept from the RFC (<https://www.rfc-editor.org/rfc/rfc7512>):
//! - the path (before `?`) holds `;`-separated attributes that select the library,
//!   slot, token and object; the query (after `?`) holds `&`-separated attributes that
//!   say how to reach it (`pin-source`, `pin-value`, `module-name`, `module-path`);
//! - values are percent-encoded; `id` is raw bytes, everything else UTF-8 text;
//! - a path attribute may appear only once;
//! - an unrecognised path attribute (vendor `x-...` ones included) means the URI
//!   matches nothing, so it is refused here with an error rather than silently
//!   selecting no token; an unrecognised query attribute is ignored (and reported in
//!   [`Pkcs11Uri::ignored`]).
//!
//! Whitespace is refused rather than stripped: a label with a space in it must be
//! written `%20`, and stripping would silently select a different label.

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

/// Why a PKCS#11 URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The text does not start with `pkcs11:`.
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    Scheme,
    /// An attribute has no `=`.
    #[error("{0:?} has no '=' (attributes are written name=value)")]
    NoEquals(String),
    /// An attribute's percent-encoding is broken.
    #[error("bad percent-encoding in {attr}: {detail}")]
    Encoding {
        /// The attribute.
        attr: String,
        /// What is wrong.
        detail: String,
    },
    /// A character that must be percent-encoded is not.
    #[error("character {ch:?} in {attr} must be percent-encoded (as {encoded})")]
    Unencoded {
        /// The attribute.
        attr: String,
        /// The character.
        ch: char,
        /// How it is written encoded.
        encoded: String,
    },
    /// An attribute is not UTF-8 once decoded.
    #[error("{0} is not valid UTF-8 after percent-decoding")]
    NotUtf8(String),
    /// A path attribute RFC 7512 does not define.
    #[error(
        "unknown path attribute {0:?}: RFC 7512 says a URI with a path attribute the reader does not know matches nothing"
    )]
    UnknownPathAttribute(String),
    /// A query attribute is in the path.
    #[error("{0} is a query attribute: write it after '?' (pkcs11:...?{0}=...)")]
    QueryAttributeInPath(String),
    /// A path attribute is in the query.
    #[error("{0} is a path attribute: write it before '?' (pkcs11:{0}=...)")]
    PathAttributeInQuery(String),
    /// An attribute is given twice.
    #[error("{0} appears more than once")]
    Duplicate(String),
    /// An attribute's value is not valid for it.
    #[error("bad value for {attr}: {detail}")]
    BadValue {
        /// The attribute.
        attr: String,
        /// What is wrong.
        detail: String,
    },
    /// Both `pin-source` and `pin-value` are given.
    #[error("pin-source and pin-value are both set; keep one (pin-source is the safer)")]
    PinSourceAndValue,
    /// The URI has a fragment.
    #[error("a PKCS#11 URI has no fragment ('#' must be written %23)")]
    Fragment,
}

/// The kinds of object a URI's `type` attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectType {
    /// `public`: a public key.
    Public,
    /// `private`: a private key.
    Private,
    /// `cert`: a certificate.
    Cert,
    /// `secret-key`: a secret key.
    SecretKey,
    /// `data`: a data object.
    Data,
}

/// A parsed `pkcs11:` URI. Fields hold decoded values; absent attributes are `None`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Pkcs11Uri {
    /// `token`: the token label.
    pub token: Option<String>,
    /// `manufacturer`: the token manufacturer ID.
    pub manufacturer: Option<String>,
    /// `model`: the token model.
    pub model: Option<String>,
    /// `serial`: the token serial number.
    pub serial: Option<String>,
    /// `object`: the object label (CKA_LABEL).
    pub object: Option<String>,
    /// `id`: the object ID (CKA_ID), raw bytes.
    pub id: Option<Vec<u8>>,
    /// `type`: the object class.
    pub object_type: Option<ObjectType>,
    /// `slot-id`: the slot number.
    pub slot_id: Option<u64>,
    /// `slot-description`.
    pub slot_description: Option<String>,
    /// `slot-manufacturer`.
    pub slot_manufacturer: Option<String>,
    /// `library-manufacturer`.
    pub library_manufacturer: Option<String>,
    /// `library-description`.
    pub library_description: Option<String>,
    /// `library-version`, as (major, minor).
    pub library_version: Option<(u8, u8)>,
    /// `pin-source` (query): where to read the PIN, a `file:` URI or a path.
    pub pin_source: Option<String>,
    /// `module-name` (query): the module's name without path or suffix.
    pub module_name: Option<String>,
    /// `module-path` (query): the module file.
    pub module_path: Option<PathBuf>,
    /// Query attributes that were not recognised and so were ignored.
    pub ignored: Vec<String>,
    pin_value: Option<SecretString>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Uri")
            .field("token", &self.token)
            .field("manufacturer", &self.manufacturer)
            .field("model", &self.model)
            .field("serial", &self.serial)
            .field("object", &self.object)
            .field("id", &self.id)
            .field("object_type", &self.object_type)
            .field("slot_id", &self.slot_id)
            .field("pin_source", &self.pin_source)
            .field("pin_value", &self.pin_value.as_ref().map(|_| "<redacted>"))
            .field("module_path", &self.module_path)
            .finish_non_exhaustive()
    }
}

const PATH_ATTRS: &[&str] = &[
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "object",
    "type",
    "id",
    "slot-manufacturer",
    "slot-description",
    "slot-id",
];
const QUERY_ATTRS: &[&str] = &["pin-source", "pin-value", "module-name", "module-path"];

/// RFC 3986 unreserved characters.
fn unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// `pk11-path-res-avail`: reserved characters a path value may carry unencoded.
fn path_char(c: char) -> bool {
    unreserved(c)
        || matches!(
            c,
            ':' | '[' | ']' | '@' | '!' | '$' | '\'' | '(' | ')' | '*' | '+' | ',' | '=' | '&'
        )
}

/// `pk11-query-res-avail`: reserved characters a query value may carry unencoded.
fn query_char(c: char) -> bool {
    unreserved(c)
        || matches!(
            c,
            ':' | '['
                | ']'
                | '@'
                | '!'
                | '$'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | '='
                | '/'
                | '?'
                | '|'
        )
}

/// Percent-decodes `raw`, refusing characters that the component must encode.
fn decode(attr: &str, raw: &str, allowed: fn(char) -> bool) -> Result<Vec<u8>, UriError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '%' {
            let hex = raw.get(i + 1..i + 3).ok_or_else(|| UriError::Encoding {
                attr: attr.to_owned(),
                detail: format!("'%' at offset {i} is not followed by two hex digits"),
            })?;
            let byte = u8::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.chars().all(|h| h.is_ascii_hexdigit()))
                .ok_or_else(|| UriError::Encoding {
                    attr: attr.to_owned(),
                    detail: format!("%{hex} is not a hex byte"),
                })?;
            out.push(byte);
            chars.next();
            chars.next();
        } else if allowed(c) {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        } else {
            let mut buf = [0u8; 4];
            let encoded = c
                .encode_utf8(&mut buf)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect();
            return Err(UriError::Unencoded {
                attr: attr.to_owned(),
                ch: c,
                encoded,
            });
        }
    }
    Ok(out)
}

fn text(attr: &str, bytes: Vec<u8>) -> Result<String, UriError> {
    String::from_utf8(bytes).map_err(|_| UriError::NotUtf8(attr.to_owned()))
}

fn set<T>(slot: &mut Option<T>, attr: &str, value: T) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError::Duplicate(attr.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

fn bad(attr: &str, detail: impl Into<String>) -> UriError {
    UriError::BadValue {
        attr: attr.to_owned(),
        detail: detail.into(),
    }
}

fn split_attr(part: &str) -> Result<(&str, &str), UriError> {
    part.split_once('=')
        .ok_or_else(|| UriError::NoEquals(part.to_owned()))
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    pub fn parse(input: &str) -> Result<Self, UriError> {
        let rest = input
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &input[7..])
            .ok_or(UriError::Scheme)?;
        if rest.contains('#') {
            return Err(UriError::Fragment);
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        for part in path.split(';').filter(|p| !p.is_empty()) {
            let (name, raw) = split_attr(part)?;
            uri.path_attr(name, raw)?;
        }
        if let Some(query) = query {
            for part in query.split('&').filter(|p| !p.is_empty()) {
                let (name, raw) = split_attr(part)?;
                uri.query_attr(name, raw)?;
            }
        }
        if uri.pin_source.is_some() && uri.pin_value.is_some() {
            return Err(UriError::PinSourceAndValue);
        }
        Ok(uri)
    }

    fn path_attr(&mut self, name: &str, raw: &str) -> Result<(), UriError> {
        if QUERY_ATTRS.contains(&name) {
            return Err(UriError::QueryAttributeInPath(name.to_owned()));
        }
        if !PATH_ATTRS.contains(&name) {
            return Err(UriError::UnknownPathAttribute(name.to_owned()));
        }
        let bytes = decode(name, raw, path_char)?;
        match name {
            "id" => return set(&mut self.id, name, bytes),
            "slot-id" => {
                let t = text(name, bytes)?;
                let v = t
                    .parse::<u64>()
                    .ok()
                    .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad(name, format!("{t:?} is not a decimal slot number")))?;
                return set(&mut self.slot_id, name, v);
            }
            "library-version" => {
                let t = text(name, bytes)?;
                let v = parse_version(&t).ok_or_else(|| {
                    bad(name, format!("{t:?} is not MAJOR or MAJOR.MINOR (0-255)"))
                })?;
                return set(&mut self.library_version, name, v);
            }
            "type" => {
                let t = text(name, bytes)?;
                let v = match t.as_str() {
                    "public" => ObjectType::Public,
                    "private" => ObjectType::Private,
                    "cert" => ObjectType::Cert,
                    "secret-key" => ObjectType::SecretKey,
                    "data" => ObjectType::Data,
                    _ => {
                        return Err(bad(
                            name,
                            format!("{t:?} is not public, private, cert, secret-key or data"),
                        ));
                    }
                };
                return set(&mut self.object_type, name, v);
            }
            _ => {}
        }
        let value = text(name, bytes)?;
        let slot = match name {
            "token" => &mut self.token,
            "manufacturer" => &mut self.manufacturer,
            "serial" => &mut self.serial,
            "model" => &mut self.model,
            "object" => &mut self.object,
            "library-manufacturer" => &mut self.library_manufacturer,
            "library-description" => &mut self.library_description,
            "slot-manufacturer" => &mut self.slot_manufacturer,
            _ => &mut self.slot_description,
        };
        set(slot, name, value)
    }

    fn query_attr(&mut self, name: &str, raw: &str) -> Result<(), UriError> {
        if PATH_ATTRS.contains(&name) {
            return Err(UriError::PathAttributeInQuery(name.to_owned()));
        }
        if !QUERY_ATTRS.contains(&name) {
            self.ignored.push(name.to_owned());
            return Ok(());
        }
        let value = text(name, decode(name, raw, query_char)?)?;
        match name {
            "pin-source" => set(&mut self.pin_source, name, value),
            "pin-value" => {
                if self.pin_value.is_some() {
                    return Err(UriError::Duplicate(name.to_owned()));
                }
                self.pin_value = Some(SecretString::from(value));
                Ok(())
            }
            "module-name" => set(&mut self.module_name, name, value),
            _ => {
                let path = PathBuf::from(value);
                if !path.is_absolute() {
                    return Err(bad(name, "the module path must be absolute"));
                }
                set(&mut self.module_path, name, path)
            }
        }
    }

    /// The `pin-value` attribute. Putting the PIN in the URI puts it in the
    /// configuration file; prefer `pin-source`.
    pub fn pin_value(&self) -> Option<&SecretString> {
        self.pin_value.as_ref()
    }

    /// Whether the URI names an object (by `object` or `id`).
    pub fn names_object(&self) -> bool {
        self.object.is_some() || self.id.is_some()
    }
}

fn parse_version(t: &str) -> Option<(u8, u8)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match t.split_once('.') {
        Some((major, minor)) if digits(major) && digits(minor) => {
            Some((major.parse().ok()?, minor.parse().ok()?))
        }
        None if digits(t) => Some((t.parse().ok()?, 0)),
        _ => None,
    }
}

/// `input` with the value of any `pin-value` attribute replaced, for logs and `Debug`.
pub fn redact(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find("pin-value=") {
        let start = at + "pin-value=".len();
        out.push_str(&rest[..start]);
        out.push_str("<redacted>");
        let tail = &rest[start..];
        let end = tail.find(['&', ';', '?']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn rfc_examples_parse() {
        let u = Pkcs11Uri::parse("pkcs11:").unwrap();
        assert!(u.token.is_none() && !u.names_object());

        let u = Pkcs11Uri::parse("pkcs11:object=my-pubkey;type=public").unwrap();
        assert_eq!(u.object.as_deref(), Some("my-pubkey"));
        assert_eq!(u.object_type, Some(ObjectType::Public));

        let u = Pkcs11Uri::parse("pkcs11:object=my-key;type=private?pin-source=file:/etc/token")
            .unwrap();
        assert_eq!(u.pin_source.as_deref(), Some("file:/etc/token"));

        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.model.as_deref(), Some("1.0"));
        assert_eq!(
            u.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.serial.as_deref(), Some(""));

        let u = Pkcs11Uri::parse(
            "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
        )
        .unwrap();
        assert_eq!(u.pin_value().unwrap().expose_secret(), "the-pin");

        let u = Pkcs11Uri::parse("pkcs11:slot-description=Sun%20Metaslot").unwrap();
        assert_eq!(u.slot_description.as_deref(), Some("Sun Metaslot"));

        let u = Pkcs11Uri::parse(
            "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
        )
        .unwrap();
        assert_eq!(u.library_version, Some((1, 23)));

        let u = Pkcs11Uri::parse(
            "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("A name with a substring %;"));

        let u = Pkcs11Uri::parse(
            "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
        )
        .unwrap();
        assert_eq!(
            u.token.as_deref(),
            Some("Name with a small A with acute: \u{e1}")
        );

        let u = Pkcs11Uri::parse(
            "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
        );
        // vendor-aaa is an unknown path attribute: the URI can match nothing.
        assert_eq!(
            u.unwrap_err(),
            UriError::UnknownPathAttribute("vendor-aaa".into())
        );

        let u = Pkcs11Uri::parse(
            "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11&module-path=/mnt/libmypkcs11.so.1",
        )
        .unwrap();
        assert_eq!(u.module_name.as_deref(), Some("mypkcs11"));
        assert_eq!(
            u.module_path.as_deref(),
            Some(std::path::Path::new("/mnt/libmypkcs11.so.1"))
        );
    }

    #[test]
    fn unknown_query_attributes_are_ignored() {
        let u = Pkcs11Uri::parse("pkcs11:token=t?x-vendor=1&pin-source=/run/pin&future=2").unwrap();
        assert_eq!(
            u.ignored,
            vec!["x-vendor".to_string(), "future".to_string()]
        );
        assert_eq!(u.pin_source.as_deref(), Some("/run/pin"));
    }

    #[test]
    fn vendor_path_attributes_are_refused() {
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=t;x-slot=3").unwrap_err(),
            UriError::UnknownPathAttribute("x-slot".into())
        );
    }

    #[test]
    fn attributes_must_be_in_their_component() {
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=t;pin-source=/x").unwrap_err(),
            UriError::QueryAttributeInPath("pin-source".into())
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:?token=t").unwrap_err(),
            UriError::PathAttributeInQuery("token".into())
        );
    }

    #[test]
    fn percent_decoding() {
        let u = Pkcs11Uri::parse("pkcs11:id=%00%ff%7F;object=a%2Fb").unwrap();
        assert_eq!(u.id.as_deref(), Some(&[0x00, 0xff, 0x7f][..]));
        assert_eq!(u.object.as_deref(), Some("a/b"));
        // Letters and digits are allowed as themselves in an id too.
        let u = Pkcs11Uri::parse("pkcs11:id=ab").unwrap();
        assert_eq!(u.id.as_deref(), Some(&b"ab"[..]));
        for bad in [
            "pkcs11:id=%0",
            "pkcs11:id=%zz",
            "pkcs11:token=%",
            "pkcs11:id=%+1",
        ] {
            assert!(
                matches!(Pkcs11Uri::parse(bad), Err(UriError::Encoding { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=%C3%28"),
            Err(UriError::NotUtf8(_))
        ));
    }

    #[test]
    fn unencoded_characters_are_refused_with_a_hint() {
        let err = Pkcs11Uri::parse("pkcs11:token=my token").unwrap_err();
        assert_eq!(
            err,
            UriError::Unencoded {
                attr: "token".into(),
                ch: ' ',
                encoded: "%20".into()
            }
        );
        assert!(err.to_string().contains("%20"));
        // '/' is fine in the query but not in the path.
        assert!(Pkcs11Uri::parse("pkcs11:object=a/b").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:?module-path=/usr/lib/x.so").is_ok());
    }

    #[test]
    fn duplicates_and_conflicts() {
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a;token=b").unwrap_err(),
            UriError::Duplicate("token".into())
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:?pin-source=/a&pin-source=/b").unwrap_err(),
            UriError::Duplicate("pin-source".into())
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:?pin-source=/a&pin-value=1234").unwrap_err(),
            UriError::PinSourceAndValue
        );
    }

    #[test]
    fn scheme_and_shape() {
        assert_eq!(
            Pkcs11Uri::parse("pkcs12:token=a").unwrap_err(),
            UriError::Scheme
        );
        assert_eq!(Pkcs11Uri::parse("pkcs").unwrap_err(), UriError::Scheme);
        assert!(Pkcs11Uri::parse("PKCS11:token=a").is_ok());
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token").unwrap_err(),
            UriError::NoEquals("token".into())
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a#frag").unwrap_err(),
            UriError::Fragment
        );
        // Trailing separators are tolerated.
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a;")
                .unwrap()
                .token
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn typed_values_are_checked() {
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:slot-id=42").unwrap().slot_id,
            Some(42)
        );
        assert!(Pkcs11Uri::parse("pkcs11:slot-id=-1").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:slot-id=0x10").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:type=secret").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:library-version=1.x").is_err());
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:library-version=7")
                .unwrap()
                .library_version,
            Some((7, 0))
        );
        assert!(Pkcs11Uri::parse("pkcs11:?module-path=libsofthsm2.so").is_err());
    }

    #[test]
    fn pin_value_never_shows() {
        let u = Pkcs11Uri::parse("pkcs11:token=a?pin-value=s3cret").unwrap();
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(
            redact("pkcs11:token=a?pin-value=s3cret&module-path=/x"),
            "pkcs11:token=a?pin-value=<redacted>&module-path=/x"
        );
        assert_eq!(
            redact("pkcs11:token=a?pin-value=s3cret"),
            "pkcs11:token=a?pin-value=<redacted>"
        );
        assert_eq!(redact("pkcs11:token=a"), "pkcs11:token=a");
    }
}
