//! The `[key_manager.pkcs11]`-style TOML section, and how its settings and an
//! optional RFC 7512 URI combine into one checked plan: which module, which token,
//! where the PIN is, how many sessions.
//!
//! A setting may be given directly or through the URI, but never both with
//! different values: a contradiction is an error at start-up, not a guess.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::HsmError;
use crate::pin::PinSource;
use crate::token::TokenSelector;
use crate::uri::{ObjectType, Pkcs11Uri, redact};

/// Default number of PKCS#11 sessions used for signing.
pub const DEFAULT_SESSIONS: usize = 4;
/// Upper bound on `sessions`: more than this only exhausts the token's session table.
pub const MAX_SESSIONS: usize = 256;
/// Default prefix of the CKA_LABEL of every key Tessera creates.
pub const DEFAULT_KEY_LABEL_PREFIX: &str = "tessera-";

/// Settings of the PKCS#11 key manager, as found in the server's TOML file.
///
/// ```toml
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token_label = "tessera-ca"
/// pin_file = "/etc/tessera/hsm.pin"
/// # or: uri = "pkcs11:token=tessera-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/tessera/hsm.pin"
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library); optional when `uri` carries `module-path`.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// The token's label.
    #[serde(default)]
    pub token_label: Option<String>,
    /// The token's serial number.
    #[serde(default)]
    pub token_serial: Option<String>,
    /// An RFC 7512 URI (`pkcs11:token=...;serial=...?pin-source=...&module-path=...`).
    #[serde(default)]
    pub uri: Option<String>,
    /// A file holding the user PIN (one trailing newline is ignored).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// An environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// A systemd credential holding the user PIN (`$CREDENTIALS_DIRECTORY/<name>`).
    #[serde(default)]
    pub pin_credential: Option<String>,
    /// How many sessions sign at once (each used by one thread at a time).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Prefix of the CKA_LABEL of Tessera's keys; only keys with it are listed.
    #[serde(default = "default_prefix")]
    pub key_label_prefix: String,
}

fn default_sessions() -> usize {
    DEFAULT_SESSIONS
}

fn default_prefix() -> String {
    DEFAULT_KEY_LABEL_PREFIX.to_owned()
}

impl Default for Pkcs11Config {
    fn default() -> Self {
        Self {
            module: None,
            token_label: None,
            token_serial: None,
            uri: None,
            pin_file: None,
            pin_env: None,
            pin_credential: None,
            sessions: DEFAULT_SESSIONS,
            key_label_prefix: default_prefix(),
        }
    }
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("token_serial", &self.token_serial)
            .field("uri", &self.uri.as_deref().map(redact))
            .field("pin_file", &self.pin_file)
            .field("pin_env", &self.pin_env)
            .field("pin_credential", &self.pin_credential)
            .field("sessions", &self.sessions)
            .field("key_label_prefix", &self.key_label_prefix)
            .finish()
    }
}

/// The checked plan `Pkcs11KeyManager::open` follows.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) module: PathBuf,
    pub(crate) token: TokenSelector,
    pub(crate) pin: Option<PinSource>,
    pub(crate) sessions: usize,
    pub(crate) prefix: String,
    /// The object the URI names (CKA_LABEL, CKA_ID), if any.
    pub(crate) uri_object: Option<(Option<String>, Option<Vec<u8>>)>,
}

fn conflict(what: &str, direct: &str, from_uri: &str) -> HsmError {
    HsmError::Config(format!(
        "{what} is {direct:?} in the settings but {from_uri:?} in the URI; keep one"
    ))
}

/// Takes a value given directly or in the URI, refusing two different values.
fn merge(
    what: &str,
    direct: Option<&String>,
    from_uri: Option<&String>,
) -> Result<Option<String>, HsmError> {
    match (direct, from_uri) {
        (Some(a), Some(b)) if a != b => Err(conflict(what, a, b)),
        (Some(a), _) => Ok(Some(a.clone())),
        (None, b) => Ok(b.cloned()),
    }
}

impl Pkcs11Config {
    /// Checks the settings and combines them with the URI.
    pub(crate) fn plan(&self) -> Result<Plan, HsmError> {
        let uri = match &self.uri {
            Some(u) => Pkcs11Uri::parse(u)?,
            None => Pkcs11Uri::default(),
        };
        if !uri.ignored.is_empty() {
            tracing::warn!(
                attributes = ?uri.ignored,
                "ignoring unknown query attributes in the PKCS#11 URI"
            );
        }

        let module = match (&self.module, &uri.module_path) {
            (Some(a), Some(b)) if a != b => {
                return Err(conflict(
                    "the module",
                    &a.display().to_string(),
                    &b.display().to_string(),
                ));
            }
            (Some(a), _) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => {
                let hint = if uri.module_name.is_some() {
                    " (module-name alone is not looked up)"
                } else {
                    ""
                };
                return Err(HsmError::Config(format!(
                    "no PKCS#11 module: set `module` to the token's library (for SoftHSM2: libsofthsm2.so, see scripts/softhsm.sh module) or module-path in the URI{hint}"
                )));
            }
        };
        if module.as_os_str().is_empty() {
            return Err(HsmError::Config("`module` is empty".into()));
        }

        let token = TokenSelector {
            label: merge(
                "the token label",
                self.token_label.as_ref(),
                uri.token.as_ref(),
            )?,
            serial: merge(
                "the token serial",
                self.token_serial.as_ref(),
                uri.serial.as_ref(),
            )?,
            manufacturer: uri.manufacturer.clone(),
            model: uri.model.clone(),
            slot_id: uri.slot_id,
            slot_description: uri.slot_description.clone(),
            slot_manufacturer: uri.slot_manufacturer.clone(),
            library_manufacturer: uri.library_manufacturer.clone(),
            library_description: uri.library_description.clone(),
            library_version: uri.library_version,
        };
        if token.label.is_none() && token.serial.is_none() && token.slot_id.is_none() {
            return Err(HsmError::Config(
                "say which token to use: token_label, token_serial, or token=/serial=/slot-id= in the URI".into(),
            ));
        }

        let mut sources: Vec<(&str, PinSource)> = Vec::new();
        if let Some(p) = &self.pin_file {
            sources.push(("pin_file", PinSource::file(p.clone())));
        }
        if let Some(v) = &self.pin_env {
            if v.is_empty() {
                return Err(HsmError::Config("pin_env is empty".into()));
            }
            sources.push(("pin_env", PinSource::env(v.clone())));
        }
        if let Some(c) = &self.pin_credential {
            sources.push(("pin_credential", PinSource::credential(c)?));
        }
        if let Some(s) = &uri.pin_source {
            sources.push(("pin-source", PinSource::from_uri_source(s)?));
        }
        if let Some(v) = uri.pin_value() {
            tracing::warn!(
                "the PKCS#11 URI carries pin-value: the PIN is in the configuration; prefer pin-source, pin_file or pin_credential"
            );
            sources.push(("pin-value", PinSource::Value(v.clone())));
        }
        if sources.len() > 1 {
            let names: Vec<&str> = sources.iter().map(|(n, _)| *n).collect();
            return Err(HsmError::Config(format!(
                "the PIN is given more than once ({}); keep one",
                names.join(", ")
            )));
        }
        let pin = sources.pop().map(|(_, s)| s);

        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return Err(HsmError::Config(format!(
                "sessions is {}; use 1 to {MAX_SESSIONS}",
                self.sessions
            )));
        }
        if self.key_label_prefix.chars().any(char::is_control) {
            return Err(HsmError::Config(
                "key_label_prefix must not contain control characters".into(),
            ));
        }

        if let Some(t) = uri.object_type
            && t != ObjectType::Private
        {
            return Err(HsmError::Config(format!(
                "the URI names an object of type {t:?}; a signing key is type=private"
            )));
        }
        let uri_object = uri
            .names_object()
            .then(|| (uri.object.clone(), uri.id.clone()));

        Ok(Plan {
            module,
            token,
            pin,
            sessions: self.sessions,
            prefix: self.key_label_prefix.clone(),
            uri_object,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_process::secret::SecretSource;

    fn parse(s: &str) -> Pkcs11Config {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn toml_defaults() {
        let c = parse(
            "module = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"ca\"\npin_env = \"HSM_PIN\"\n",
        );
        assert_eq!(c.sessions, DEFAULT_SESSIONS);
        assert_eq!(c.key_label_prefix, "tessera-");
        let plan = c.plan().unwrap();
        assert_eq!(plan.token.label.as_deref(), Some("ca"));
        assert!(
            matches!(plan.pin, Some(PinSource::Stored(SecretSource::Env(ref v))) if v == "HSM_PIN")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<Pkcs11Config>("module = \"/x\"\npin = \"1234\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn uri_supplies_module_token_and_pin() {
        let c = parse(
            "uri = \"pkcs11:token=ca;serial=abc;object=root;id=%01%02?module-path=/usr/lib/x.so&pin-source=file:/run/pin\"",
        );
        let plan = c.plan().unwrap();
        assert_eq!(plan.module, PathBuf::from("/usr/lib/x.so"));
        assert_eq!(plan.token.label.as_deref(), Some("ca"));
        assert_eq!(plan.token.serial.as_deref(), Some("abc"));
        assert!(
            matches!(plan.pin, Some(PinSource::Stored(SecretSource::File(ref p))) if p == &PathBuf::from("/run/pin"))
        );
        assert_eq!(
            plan.uri_object,
            Some((Some("root".to_string()), Some(vec![1, 2])))
        );
    }

    #[test]
    fn contradictions_are_errors() {
        let c = parse("module = \"/a.so\"\nuri = \"pkcs11:token=ca?module-path=/b.so\"");
        assert!(c.plan().unwrap_err().to_string().contains("keep one"));
        let c = parse("module = \"/a.so\"\ntoken_label = \"x\"\nuri = \"pkcs11:token=ca\"");
        assert!(c.plan().unwrap_err().to_string().contains("token label"));
        let c =
            parse("module = \"/a.so\"\ntoken_label = \"ca\"\npin_file = \"/p\"\npin_env = \"P\"");
        let err = c.plan().unwrap_err().to_string();
        assert!(err.contains("pin_file, pin_env"), "{err}");
        // The same value twice is not a contradiction.
        let c = parse(
            "module = \"/a.so\"\ntoken_label = \"ca\"\nuri = \"pkcs11:token=ca?module-path=/a.so\"",
        );
        assert!(c.plan().is_ok());
    }

    #[test]
    fn missing_pieces_are_named() {
        let err = parse("token_label = \"ca\"")
            .plan()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PKCS#11 module"), "{err}");
        let err = parse("module = \"/a.so\"").plan().unwrap_err().to_string();
        assert!(err.contains("which token"), "{err}");
        let err = parse("module = \"/a.so\"\ntoken_label = \"a\"\nsessions = 0")
            .plan()
            .unwrap_err()
            .to_string();
        assert!(err.contains("sessions"), "{err}");
        let err = parse("module = \"/a.so\"\nuri = \"pkcs11:token=a;type=cert\"")
            .plan()
            .unwrap_err()
            .to_string();
        assert!(err.contains("type=private"), "{err}");
    }

    #[test]
    fn debug_hides_pin_value() {
        let c = parse("uri = \"pkcs11:token=a?pin-value=s3cret&module-path=/a.so\"");
        assert!(!format!("{c:?}").contains("s3cret"));
        let plan = c.plan().unwrap();
        assert!(!format!("{plan:?}").contains("s3cret"));
    }
}
