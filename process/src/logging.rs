//! Logging to standard error, the same way in both binaries: the filter is
//! `$TESSERA_LOG` when set (tracing's `EnvFilter` syntax, e.g. `info,tessera_server=debug`),
//! the configured level otherwise.

/// The environment variable that overrides the configured log level.
pub const LOG_ENV: &str = "TESSERA_LOG";

/// Sets up logging to standard error (once; later calls do nothing). Targets in
/// `quiet` are turned off unless the filter names them: libraries that log their own
/// account of failures the process reports anyway, or noise at ERROR level.
pub fn init(level: &str, quiet: &[&str]) {
    let spec = std::env::var(LOG_ENV).unwrap_or_else(|_| level.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(with_quiet(&spec, quiet))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(with_quiet(level, quiet)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
}
