//! Loading TOML configuration files with overrides, shared by the server and the agent.
//!
//! Every value in a file can be overridden by a `--set key.path=value` flag or by an
//! environment variable `<PREFIX><KEY>` where nested keys are joined with `__`
//! (`TESSERA_SERVER_DATASTORE__PATH=/x` sets `datastore.path`). Errors in the file are
//! reported with the file name, line and column.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a configuration could not be loaded. The parser's own error is kept as the
/// `source()`; the message says where the mistake is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value in it does not fit its setting.
    #[error("{path}:{line}:{column}: {}", .source.message().trim())]
    File {
        /// The file.
        path: String,
        /// Where the mistake starts (1-based).
        line: usize,
        /// The column in that line (1-based).
        column: usize,
        /// The parser's account.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The file as a whole does not fit (no position is known).
    #[error("{path}: {}", .source.message().trim())]
    Whole {
        /// The file.
        path: String,
        /// The parser's account.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A `--set` flag or an environment variable cannot be applied.
    #[error("override {name}: {message}")]
    Override {
        /// The flag or variable as given.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file with the overrides applied does not fit.
    #[error("configuration (after overrides): {}", .0.message().trim())]
    Merged(#[source] Box<toml::de::Error>),
}

/// Configuration keys whose values are secrets.
const SECRET_KEYS: &[&str] = &["token", "pin", "pin_value", "password", "connection_string"];

/// Warns once for each `--set` flag that puts a secret on the command line.
pub fn warn_secret_flags(flags: &[String]) {
    for f in flags {
        if let Ok(o) = Override::from_flag(f)
            && o.is_secret()
        {
            tracing::warn!(
                "--set {} puts a secret on the command line, where every local user can read \
                 it (/proc/<pid>/cmdline) while the process runs; use the matching *_file, \
                 *_env or *_credential setting instead",
                o.key.join(".")
            );
        }
    }
}

/// One override: a dotted key path and its value as written (TOML literal or bare text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, for error messages (`--set x=y`, `$TESSERA_X`).
    pub origin: String,
    /// The key path, outermost table first (`datastore.path` is `["datastore", "path"]`).
    pub key: Vec<String>,
    /// The value as written.
    pub value: String,
}

impl Override {
    /// Parses `a.b.c=value` from a `--set` flag.
    pub fn from_flag(text: &str) -> Result<Self, ConfigError> {
        let (key, value) = text.split_once('=').ok_or_else(|| ConfigError::Override {
            name: format!("--set {text}"),
            message: "expected key=value (e.g. --set datastore.path=/var/lib/x.db)".into(),
        })?;
        let key: Vec<String> = key.trim().split('.').map(|s| s.trim().to_owned()).collect();
        if key.iter().any(String::is_empty) {
            return Err(ConfigError::Override {
                name: format!("--set {text}"),
                message: "empty key segment".into(),
            });
        }
        Ok(Self {
            origin: format!("--set {text}"),
            key,
            value: value.to_owned(),
        })
    }

    /// Whether this override carries a secret (a join token, a PIN, a password or a
    /// connection string). On the command line (`--set`) a secret is readable by
    /// every local user in `/proc/<pid>/cmdline` for as long as the process runs.
    pub fn is_secret(&self) -> bool {
        let last = self.key.last().map(String::as_str).unwrap_or_default();
        SECRET_KEYS.contains(&last)
            || self.value.contains("pin-value=")
            || self.value.contains("password=")
            || self.value.contains("password:")
    }

    /// Collects `<prefix>KEY__SUB=value` environment variables.
    pub fn from_env(prefix: &str) -> Vec<Self> {
        let mut out: Vec<Self> = std::env::vars()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(prefix)?;
                if rest.is_empty() {
                    return None;
                }
                let key = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                Some(Self {
                    origin: format!("${name}"),
                    key,
                    value,
                })
            })
            .collect();
        out.sort_by(|a, b| a.origin.cmp(&b.origin));
        out
    }
}

fn file_error(path: &str, text: &str, source: toml::de::Error) -> ConfigError {
    let source = Box::new(source);
    match source.span() {
        Some(span) => {
            let (line, column) = crate::config_key::line_col(text, span.start);
            ConfigError::File {
                path: path.to_owned(),
                line,
                column,
                source,
            }
        }
        None => ConfigError::Whole {
            path: path.to_owned(),
            source,
        },
    }
}

fn parse_value(text: &str) -> toml::Value {
    // A TOML literal when it parses as one (numbers, booleans, arrays, quoted strings),
    // the bare text otherwise.
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn apply(table: &mut toml::Table, o: &Override) -> Result<(), ConfigError> {
    let mut cur = table;
    for (i, seg) in o.key.iter().enumerate() {
        if i + 1 == o.key.len() {
            cur.insert(seg.clone(), parse_value(&o.value));
            return Ok(());
        }
        let next = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = next.as_table_mut().ok_or_else(|| ConfigError::Override {
            name: o.origin.clone(),
            message: format!("{seg} is not a table"),
        })?;
    }
    Ok(())
}

/// Parses configuration text (named `path` in errors) and applies `overrides` in order.
pub fn parse<T: DeserializeOwned>(
    path: &str,
    text: &str,
    overrides: &[Override],
) -> Result<T, ConfigError> {
    // First the file alone, so that its mistakes are reported with a line number. A
    // missing field may be supplied by an override, so that one case waits.
    match toml::from_str::<T>(text) {
        Ok(v) if overrides.is_empty() => return Ok(v),
        Ok(_) => {}
        Err(e) if overrides.is_empty() || !e.message().starts_with("missing field") => {
            return Err(file_error(path, text, e));
        }
        Err(_) => {}
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| file_error(path, text, e))?;
    for o in overrides {
        apply(&mut table, o)?;
    }
    T::deserialize(table).map_err(|e| ConfigError::Merged(Box::new(e)))
}

/// The overrides a process applies to its file, in order: `<env_prefix>*` environment
/// variables (sorted by name), then the `--set` flags as given, so that a flag wins.
/// Variables whose key is in `not_config` carry something else (a join token) and are
/// left out.
pub fn overrides(
    env_prefix: &str,
    flags: &[String],
    not_config: &[&str],
) -> Result<Vec<Override>, ConfigError> {
    let mut out: Vec<Override> = Override::from_env(env_prefix)
        .into_iter()
        .filter(|o| !(o.key.len() == 1 && not_config.contains(&o.key[0].as_str())))
        .collect();
    for f in flags {
        out.push(Override::from_flag(f)?);
    }
    Ok(out)
}

/// Reads a configuration file and applies overrides. A missing file is an error.
pub fn load<T: DeserializeOwned>(path: &Path, overrides: &[Override]) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text, overrides)
}

/// Why a configuration is unusable even though it parsed (the server's and the
/// agent's rules alike).
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// The file could not be read or parsed, or an override is malformed.
    #[error("{0}")]
    Load(#[from] ConfigError),
    /// A rule across settings is broken (no one setting to point at).
    #[error("invalid configuration: {0}")]
    Rule(String),
    /// A secret the configuration names cannot be read; `key` is its dotted name.
    #[error("{setting}: {source}")]
    Secret {
        /// The setting's dotted name, to find its line.
        key: &'static str,
        /// The setting as the message names it.
        setting: &'static str,
        /// Why the secret cannot be read.
        #[source]
        source: crate::secret::SecretError,
    },
    /// A setting breaks a rule; `key` is its dotted name (`limits.idle_timeout`).
    #[error("invalid configuration: {message}")]
    Setting {
        /// The setting's dotted name.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A broken rule or an unreadable secret, with the file and (when the file sets
    /// the key) where.
    #[error("{place}: {fault}")]
    InFile {
        /// `path` or `path:line:column`.
        place: String,
        /// The fault itself.
        #[source]
        fault: Box<InvalidConfig>,
    },
}

impl InvalidConfig {
    /// Says where in the file `path` (whose text is `text`) the fault is: the line of
    /// the setting when the file sets it, the file otherwise.
    pub fn in_file(self, path: &str, text: &str) -> Self {
        let key = match &self {
            InvalidConfig::Setting { key, .. } | InvalidConfig::Secret { key, .. } => Some(*key),
            InvalidConfig::Rule(_) => None,
            _ => return self,
        };
        let place = match key.and_then(|k| crate::config_key::locate(text, k)) {
            Some((line, column)) => format!("{path}:{line}:{column}"),
            None => path.to_owned(),
        };
        InvalidConfig::InFile {
            place,
            fault: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        path: String,
    }

    #[test]
    fn errors_carry_file_and_line() {
        let text = "name = \"a\"\n\nprot = 3\n";
        let err = parse::<Conf>("x.toml", text, &[]).unwrap_err();
        match &err {
            ConfigError::File { line, source, .. } => {
                assert_eq!(*line, 3);
                assert!(source.message().contains("prot"), "{source}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().starts_with("x.toml:3:"));
        let err = parse::<Conf>("x.toml", "name = \"a\"\nport = \"no\"\n", &[]).unwrap_err();
        assert!(err.to_string().starts_with("x.toml:2:"), "{err}");
        let err = parse::<Conf>("x.toml", "name = [\n", &[]).unwrap_err();
        assert!(err.to_string().starts_with("x.toml:"), "{err}");
    }

    #[test]
    fn overrides_apply_and_can_fill_missing_fields() {
        let o = vec![
            Override::from_flag("port=8081").unwrap(),
            Override::from_flag("inner.path=/var/x").unwrap(),
            Override::from_flag("name=b").unwrap(),
        ];
        let c: Conf = parse("x.toml", "", &o).unwrap();
        assert_eq!(c.port, 8081);
        assert_eq!(c.inner.path, "/var/x");
        assert_eq!(c.name, "b");
        let bad = vec![Override::from_flag("port=notanumber").unwrap()];
        assert!(matches!(
            parse::<Conf>("x.toml", "name = \"a\"", &bad),
            Err(ConfigError::Merged(_))
        ));
        assert!(Override::from_flag("novalue").is_err());
        assert!(Override::from_flag("a..b=1").is_err());
    }

    #[test]
    fn env_overrides_use_double_underscore_for_nesting() {
        // SAFETY of the test: the variable name is unique to this test.
        unsafe_env_set("TESSERA_CFGTEST_INNER__PATH", "/p");
        let o = Override::from_env("TESSERA_CFGTEST_");
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].key, vec!["inner".to_string(), "path".to_string()]);
    }

    #[expect(
        unsafe_code,
        reason = "set_var is unsafe since edition 2024; tests set unique names"
    )]
    fn unsafe_env_set(k: &str, v: &str) {
        unsafe { std::env::set_var(k, v) };
    }

    #[test]
    fn secret_overrides_are_recognised() {
        for secret in [
            "node_attestor.join_token.token=abc",
            "key_manager.pin=1234",
            "datastore.connection_string=host=db",
            "key_manager.uri=pkcs11:token=x?pin-value=1234",
            "datastore.connection_string_file=/x password=y",
        ] {
            assert!(Override::from_flag(secret).unwrap().is_secret(), "{secret}");
        }
        for plain in [
            "node_attestor.join_token.token_file=/etc/tessera/join-token",
            "key_manager.pin_file=/etc/pin",
            "sync_interval=5s",
        ] {
            assert!(!Override::from_flag(plain).unwrap().is_secret(), "{plain}");
        }
    }

    #[test]
    fn flags_come_after_variables_and_non_config_variables_are_left_out() {
        unsafe_env_set("TESSERA_CFGORDER_PORT", "1");
        unsafe_env_set("TESSERA_CFGORDER_JOIN_TOKEN", "not-a-setting");
        let o = overrides("TESSERA_CFGORDER_", &["port=2".to_owned()], &["join_token"]).unwrap();
        let keys: Vec<_> = o
            .iter()
            .map(|o| (o.key.join("."), o.value.as_str()))
            .collect();
        assert_eq!(keys, [("port".to_owned(), "1"), ("port".to_owned(), "2")]);
        let c: Conf = parse("x.toml", "name = \"a\"", &o).unwrap();
        assert_eq!(c.port, 2, "the flag wins over the variable");
        assert!(matches!(
            overrides("TESSERA_CFGORDER_", &["novalue".to_owned()], &[]),
            Err(ConfigError::Override { .. })
        ));
    }

    #[test]
    fn errors_keep_the_parser_error_as_their_source() {
        use std::error::Error as _;
        let kept = |err: &ConfigError| {
            err.source()
                .and_then(|s| s.downcast_ref::<Box<toml::de::Error>>())
                .map(|e| e.message().to_owned())
        };
        let err = parse::<Conf>("x.toml", "name = 1\n", &[]).unwrap_err();
        assert!(kept(&err).is_some_and(|m| m.contains("string")), "{err}");
        let bad = vec![Override::from_flag("port=notanumber").unwrap()];
        let err = parse::<Conf>("x.toml", "name = \"a\"", &bad).unwrap_err();
        assert!(kept(&err).is_some(), "{err}");
        assert!(
            err.to_string()
                .starts_with("configuration (after overrides): "),
            "{err}"
        );
    }
}
