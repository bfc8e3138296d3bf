//! Logging to standard error, the same way in both binaries: the filter is
//! `$TESSERA_LOG` when set and valid (tracing's `EnvFilter` syntax, e.g.
//! `info,tessera_server=debug`), the configured level otherwise. The server's filter
//! can be changed while it runs ([`init_reloadable`]), whatever the format.
//!
//! Two formats ([`LogFormat`], `log_format` in either configuration): text for
//! people, or JSON for a log pipeline, one object per line with `timestamp`,
//! `level`, `target`, `message`, the event's own fields at the top level (errors
//! among them, as `error`), and `span`/`spans` with the fields of the `rpc` span a
//! call runs in (`tessera_telemetry::span`: `method`, `caller`, `agent_id`).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

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

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people: time, level, spans, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log_format {other:?} is not a format (use \"text\" or \"json\")"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The formatting layer for `format`, writing to `writer`.
fn format_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
    }
}

/// Sets up logging to standard error in `format` (once; later calls do nothing).
/// Targets in `quiet` are turned off unless the filter names them: libraries that
/// log their own account of failures the process reports anyway, or noise at ERROR
/// level.
pub fn init(level: &str, quiet: &[&str], format: LogFormat) {
    let _ = init_reloadable(level, quiet, format);
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
pub fn init_reloadable(level: &str, quiet: &[&str], format: LogFormat) -> Option<Reload> {
    let spec = launch_spec(level);
    let (filter, handle) = reload::Layer::new(quiet_filter(&spec, level, quiet));
    tracing_subscriber::registry()
        .with(filter)
        .with(format_layer(format, std::io::stderr))
        .try_init()
        .ok()?;
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
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn formats_are_named_text_and_json() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" Text ".parse::<LogFormat>(), Ok(LogFormat::Text));
        let e = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("\"yaml\" is not a format"), "{e}");
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn json_lines_carry_level_target_message_fields_and_the_call_s_span() {
        let out = Buffer::default();
        let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(format_layer(LogFormat::Json, out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                method = "/SpiffeWorkloadAPI/FetchX509SVID",
                caller = "pid=7 uid=1000"
            );
            let _in = span.enter();
            let error = std::io::Error::other("the token is away");
            tracing::warn!(error = %error, attempts = 3, "signing failed");
            tracing::debug!("not shown at info");
            handle
                .reload(EnvFilter::new("debug"))
                .expect("the filter reloads");
            tracing::debug!("shown after the reload");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "signing failed");
        assert_eq!(first["error"], "the token is away");
        assert_eq!(first["attempts"], 3);
        assert_eq!(first["target"], module_path!());
        assert!(first["timestamp"].is_string(), "{first}");
        assert_eq!(first["span"]["name"], "rpc");
        assert_eq!(first["span"]["method"], "/SpiffeWorkloadAPI/FetchX509SVID");
        assert_eq!(first["spans"][0]["caller"], "pid=7 uid=1000");
        assert_eq!(lines[1]["message"], "shown after the reload");
        assert_eq!(lines[1]["level"], "DEBUG");
    }

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
