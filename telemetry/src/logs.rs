//! The log format both binaries write to standard error: text for people, or JSON
//! for a log pipeline (`log_format = "json"`): one object per line with
//! `timestamp`, `level`, `target`, `message`, the event's own fields at the top
//! level (errors among them, as `error`), and `span`/`spans` with the fields of the
//! `rpc` span a call runs in ([`crate::span`]: `method`, `caller`, `agent_id`).
//!
//! The filter is reloadable whatever the format, so a running server's level can be
//! changed (`tessera-server logger set`).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

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

/// Changes the filter of the logging [`init`] set up.
#[derive(Debug, Clone)]
pub struct Reload(reload::Handle<EnvFilter, Registry>);

impl Reload {
    /// Puts `filter` in force.
    pub fn set(&self, filter: EnvFilter) -> Result<(), String> {
        self.0.reload(filter).map_err(|e| e.to_string())
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

/// Sets up logging to standard error with `filter` in `format`, unless this
/// process has set up logging already (then `None`).
pub fn init(filter: EnvFilter, format: LogFormat) -> Option<Reload> {
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(format_layer(format, std::io::stderr))
        .try_init()
        .ok()
        .map(|()| Reload(handle))
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
}
