//! The log filter of a running server, changed through the admin API
//! (`tessera-server logger get|set|reset`, as `spire-server logger`). The logging
//! set-up builds its subscriber with a reloadable filter and hands the reload here;
//! without one (a library user's own subscriber) the calls say so.

use std::sync::{Mutex, OnceLock};

/// Applies a filter (already checked by [`check`]) to the subscriber.
type Apply = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Control {
    launch: String,
    current: Mutex<String>,
    apply: Apply,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Why the filter was not changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogLevelError {
    /// The logging set-up kept no way to change its filter.
    #[error("this process's logging cannot be changed while it runs")]
    NotReloadable,
    /// The filter is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The subscriber refused the new filter.
    #[error("the log filter could not be changed: {0}")]
    Failed(String),
}

/// The levels a directive may name.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a filter: comma-separated directives, each a level or `target=level`. A
/// bare word that is no level is refused: the tracing syntax would read it as a
/// target to log at every level, silencing everything else.
pub fn check(filter: &str) -> Result<(), LogLevelError> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err(LogLevelError::Invalid("the log filter is empty".into()));
    }
    for d in filter.split(',').map(str::trim) {
        let level = match d.rsplit_once('=') {
            Some((target, level)) => {
                if target.trim().is_empty() {
                    return Err(LogLevelError::Invalid(format!(
                        "{d:?}: a target is missing before '='"
                    )));
                }
                level
            }
            None => d,
        };
        if !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            let whose = if d == level {
                String::new()
            } else {
                format!("{d:?}: ")
            };
            return Err(LogLevelError::Invalid(format!(
                "{whose}{level:?} is not a level (use one of {}, or target=level)",
                LEVELS.join(", ")
            )));
        }
    }
    tessera_process::logging::check_filter(filter)
        .map_err(|e| LogLevelError::Invalid(e.to_string()))
}

/// Keeps the way to change the filter the process started with (`launch`). The first
/// call wins; later ones are ignored.
pub fn install(launch: &str, apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    let _ = CONTROL.set(Control {
        launch: launch.to_owned(),
        current: Mutex::new(launch.to_owned()),
        apply: Box::new(apply),
    });
}

/// The filter in force and the one the process started with.
pub fn get() -> Result<(String, String), LogLevelError> {
    let c = CONTROL.get().ok_or(LogLevelError::NotReloadable)?;
    let current = c.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((current, c.launch.clone()))
}

/// Sets the filter (`None`: back to the launch filter); returns what [`get`] would.
pub fn set(filter: Option<&str>) -> Result<(String, String), LogLevelError> {
    let c = CONTROL.get().ok_or(LogLevelError::NotReloadable)?;
    let new = match filter {
        Some(f) => {
            check(f)?;
            f.trim().to_owned()
        }
        None => c.launch.clone(),
    };
    let mut current = c.current.lock().unwrap_or_else(|p| p.into_inner());
    (c.apply)(&new).map_err(LogLevelError::Failed)?;
    *current = new;
    Ok((current.clone(), c.launch.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_target_levels() {
        for good in [
            "debug",
            "INFO",
            "warn,tessera_server=debug",
            "off",
            "a::b=trace, info",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("loud", "\"loud\" is not a level"),
            ("info,tessera_server=chatty", "\"chatty\" is not a level"),
            ("=debug", "target is missing"),
        ] {
            let e = check(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_filter_is_changed_and_reset_through_the_installed_reload() {
        use std::sync::Arc;
        let applied = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = applied.clone();
        // The only test in this crate that installs: the control is process-wide.
        install("info", move |f| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(f.to_owned());
            if f == "error" {
                Err("refused".into())
            } else {
                Ok(())
            }
        });
        let pair = |a: &str, b: &str| Ok((a.to_owned(), b.to_owned()));
        assert_eq!(get(), pair("info", "info"));
        assert_eq!(set(Some(" debug ")), pair("debug", "info"));
        assert!(matches!(set(Some("loud")), Err(LogLevelError::Invalid(_))));
        assert_eq!(
            set(Some("error")),
            Err(LogLevelError::Failed("refused".into()))
        );
        assert_eq!(
            get(),
            pair("debug", "info"),
            "a refused filter changes nothing"
        );
        assert_eq!(set(None), pair("info", "info"));
        assert_eq!(
            *applied.lock().unwrap_or_else(|p| p.into_inner()),
            ["debug", "error", "info"]
        );
    }
}
