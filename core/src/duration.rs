//! Human durations in configuration files and flags: `90s`, `5m`, `1h30m`, `2d`
//! (humantime's forms, which also take `250ms`, `1h 30m` or `2days`), and a bare
//! number, which is seconds.

use std::time::Duration;

/// Parses a duration such as `24h`, `1h30m`, `45s` or `500ms`. A bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{input:?} is not a duration (expected e.g. 90s, 5m, 1h30m, 2d): {e}"))
}

/// Formats a duration for people (`1h 30m`, `2m`, `200ms`); [`parse_duration`]
/// reads it back.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde support for `Duration` fields written as human durations (or bare seconds).
pub mod serde_human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// What a configuration file may hold: a number of seconds, or a human duration.
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a duration such as 90s, 5m, 1h30m or 2d, or seconds"
    )]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    /// Reads a duration written as a number of seconds or as text (`90s`, `1h30m`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(s) => super::parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }

    /// Writes a duration as humantime text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms_and_bare_seconds() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(3650 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "h", "5x", "5m3", "-5s", "1.5.2h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        for secs in [5400, 86400, 120, 10] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn configuration_values_are_seconds_or_text() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct C {
            #[serde(with = "serde_human")]
            d: Duration,
        }
        let c: C = serde_json::from_str(r#"{"d": 90}"#).unwrap();
        assert_eq!(c.d, Duration::from_secs(90));
        let c: C = serde_json::from_str(r#"{"d": "1h30m"}"#).unwrap();
        assert_eq!(c.d, Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"d":"1h 30m"}"#);
        let e = serde_json::from_str::<C>(r#"{"d": "soon"}"#).err().unwrap();
        assert!(e.to_string().contains("is not a duration"), "{e}");
        assert!(serde_json::from_str::<C>(r#"{"d": -1}"#).is_err());
    }
}
