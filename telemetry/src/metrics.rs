//! The metrics registry a binary fills at start and the HTTP listener encodes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`encode`] writes (Prometheus' text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of the project is named `tessera_<binary>_...` or `tessera_...`.
pub const PREFIX: &str = "tessera";

/// A registry under the project's prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// The registry in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a
    // metric's labels, and a partial page is still better than none.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

/// Buckets for latencies from 100 µs to about 26 s (each twice the last): local
/// calls, HSM and TPM signatures, and remote calls all fall inside.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 19)
}

/// A histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Observes the time since `start` in seconds.
pub fn observe_since(h: &Histogram, start: std::time::Instant) {
    h.observe(start.elapsed().as_secs_f64());
}

/// Seconds since the Unix epoch of `t`, for gauges that hold a point in time (an
/// expiry, the last successful sync): Prometheus compares them with `time()`.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A gauge that holds a point in time (seconds since the epoch; 0 until set).
#[derive(Debug, Clone, Default)]
pub struct Timestamp(Gauge);

impl Timestamp {
    /// Sets the gauge to `t`.
    pub fn set(&self, t: SystemTime) {
        self.0.set(unix_seconds(t));
    }

    /// Sets the gauge to `secs` seconds since the epoch.
    pub fn set_unix(&self, secs: i64) {
        self.0.set(secs);
    }

    /// The gauge, to register it.
    pub fn gauge(&self) -> Gauge {
        self.0.clone()
    }
}

/// The registry once filled: shared by the HTTP listener.
pub type Shared = Arc<Registry>;

/// A duration in seconds as a float, for gauges of intervals.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn encodes_in_prometheus_text_format_under_the_prefix() {
        let mut r = registry();
        let c: Counter = Counter::default();
        r.register("things", "Things done", c.clone());
        let h = latency_histogram();
        r.register("wait_seconds", "Time waited", h.clone());
        c.inc();
        h.observe(0.003);
        let text = encode(&r);
        assert!(
            text.contains("# TYPE tessera_things_total counter"),
            "{text}"
        );
        assert!(text.contains("tessera_things_total 1\n"), "{text}");
        assert!(text.contains("tessera_wait_seconds_count 1\n"), "{text}");
        assert!(
            text.contains("tessera_wait_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF"),
            "OpenMetrics' trailer in a text page: {text}"
        );
    }

    #[test]
    fn timestamps_are_unix_seconds() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(unix_seconds(t), 1_700_000_000);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), -5);
        let ts = Timestamp::default();
        ts.set(t);
        assert_eq!(ts.gauge().get(), 1_700_000_000);
    }
}
