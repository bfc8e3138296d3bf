//! Logging to standard error, the same way in both binaries: the filter is
//! `$TESSERA_LOG` when set and valid (tracing's `EnvFilter` syntax, e.g.
//! `info,tessera_server=debug`), the configured level otherwise. The server's filter
//! can be changed while it runs ([`init_reloadable`]).

use tracing_subscriber::EnvFilter;

/// The environment variable that overrides the configured log level.
pub const LOG_ENV: &str = "TESSERA_LOG";

/// Why a filter could not be put in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The filter is not valid `EnvFilter` syntax.
    #[error("{spec:?}: {source}")]
    Invalid {
        /// The filter as given.
        spec: String,
        /// The parser's account.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The subscriber refused the new filter (it is gone, or was never installed).
    #[error("{0}")]
    Reload(#[source] tracing_subscriber::reload::Error),
}

/// Checks `spec` as a filter without putting it in force.
pub fn check_filter(spec: &str) -> Result<(), FilterError> {
    EnvFilter::try_new(spec)
        .map(|_| ())
        .map_err(|source| FilterError::Invalid {
            spec: spec.to_owned(),
            source,
        })
}

/// Sets up logging to standard error (once; later calls do nothing). Targets in
/// `quiet` are turned off unless the filter names them: libraries that log their own
/// account of failures the process reports anyway, or noise at ERROR level.
pub fn init(level: &str, quiet: &[&str]) {
    let spec = launch_spec(level);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(quiet_filter(&spec, level, quiet))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Puts a filter in force.
type Apply = Box<dyn Fn(&str) -> Result<(), FilterError> + Send + Sync>;

/// The way to change the filter of the subscriber [`init_reloadable`] installed.
pub struct Reload {
    launch: String,
    apply: Apply,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("launch", &self.launch)
            .finish_non_exhaustive()
    }
}

impl Reload {
    /// The filter the process started with (`$TESSERA_LOG` or the level), without
    /// the quiet targets.
    pub fn launch(&self) -> &str {
        &self.launch
    }

    /// Puts `spec` in force, the quiet targets turned off unless it names them.
    pub fn apply(&self, spec: &str) -> Result<(), FilterError> {
        (self.apply)(spec)
    }
}

/// [`init`] with a filter that can be changed later; `None` when a subscriber was
/// already installed (then nothing changes, and there is nothing to reload).
pub fn init_reloadable(level: &str, quiet: &[&str]) -> Option<Reload> {
    let spec = launch_spec(level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(quiet_filter(&spec, level, quiet))
        .with_writer(std::io::stderr)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.try_init().ok()?;
    let quiet: Vec<String> = quiet.iter().map(|&q| q.to_owned()).collect();
    Some(Reload {
        launch: spec,
        apply: Box::new(move |s| {
            let quiet: Vec<&str> = quiet.iter().map(String::as_str).collect();
            let filter = EnvFilter::try_new(with_quiet(s, &quiet)).map_err(|source| {
                FilterError::Invalid {
                    spec: s.to_owned(),
                    source,
                }
            })?;
            handle.reload(filter).map_err(FilterError::Reload)
        }),
    })
}

/// `$TESSERA_LOG` when it is set and a valid filter, `level` otherwise.
fn launch_spec(level: &str) -> String {
    std::env::var(LOG_ENV)
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| level.to_owned())
}

/// The filter for `spec` with the quiet targets off; `level`'s if `spec` does not
/// parse, and plain `info` if neither does.
fn quiet_filter(spec: &str, level: &str, quiet: &[&str]) -> EnvFilter {
    EnvFilter::try_new(with_quiet(spec, quiet))
        .or_else(|_| EnvFilter::try_new(with_quiet(level, quiet)))
        .unwrap_or_else(|_| EnvFilter::new(with_quiet("info", quiet)))
}

/// `spec` with `target=off` added for each quiet target it does not mention.
fn with_quiet(spec: &str, quiet: &[&str]) -> String {
    let mut out = spec.to_owned();
    for target in quiet.iter().filter(|t| !spec.contains(**t)) {
        out.push_str(&format!(",{target}=off"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_targets_are_off_unless_named() {
        assert_eq!(with_quiet("info", &["tss_esapi"]), "info,tss_esapi=off");
        assert_eq!(
            with_quiet("info,tss_esapi=debug", &["tss_esapi"]),
            "info,tss_esapi=debug"
        );
        assert_eq!(
            with_quiet("warn", &["cryptoki::mechanism", "tss_esapi"]),
            "warn,cryptoki::mechanism=off,tss_esapi=off"
        );
        for spec in ["info", "info,tss_esapi=debug"] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(with_quiet(spec, &["tss_esapi"])).is_ok()
            );
        }
    }

    #[test]
    fn filters_are_checked() {
        assert!(check_filter("info,tessera_server=debug").is_ok());
        let e = check_filter("info,x=chatty").unwrap_err();
        assert!(matches!(e, FilterError::Invalid { .. }), "{e}");
        assert!(e.to_string().starts_with("\"info,x=chatty\": "), "{e}");
    }

    #[test]
    fn a_bad_filter_falls_back_to_the_level() {
        // The level's filter is in force, not a subscriber that logs nothing.
        let f = quiet_filter("info,x=chatty", "warn", &["tss_esapi"]).to_string();
        assert!(f.contains("warn") && f.contains("tss_esapi=off"), "{f}");
    }
}
