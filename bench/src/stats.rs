//! Figures: percentiles of latency samples, and what /proc says about a process (CPU
//! time, resident memory), read the same way for the server and the agent.

use std::time::Duration;

/// Latency samples, summarised.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Latency {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Summarises samples (empty samples give zeros).
pub(crate) fn latency(samples: &mut [Duration]) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    Latency {
        count: samples.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: field 3 is index 0, so utime (14) and stime (15) are 11, 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture Tessera targets.
    100.0
}

/// A `/proc/<pid>/status` value in kB (VmRSS, VmHWM).
pub(crate) fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident memory now, MiB.
pub(crate) fn rss_mib(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0
}

/// Proportional set size now (`Pss` of `/proc/<pid>/smaps_rollup`: shared pages
/// divided among the processes that map them), MiB.
pub(crate) fn pss_mib(pid: u32) -> f64 {
    let kb = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Pss:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        });
    kb.unwrap_or(0) as f64 / 1024.0
}

/// Peak resident memory, MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
}

/// Raises this process's open-file limit to its hard limit (thousands of connections
/// need thousands of descriptors; children inherit the limit).
pub(crate) fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            hard
        }
        Err(_) => 0,
    }
}

/// MemTotal in kB.
pub(crate) fn status_kb_meminfo() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = latency(&mut s);
        assert_eq!(l.count, 100);
        assert!((l.p50_us - 50.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99_us - 99.0).abs() <= 1.0, "{l:?}");
        assert_eq!(l.max_us, 100.0);
        assert_eq!(latency(&mut []).count, 0);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_mib(pid) > 0.0);
        assert!(pss_mib(pid) > 0.0);
        assert!(peak_rss_mib(pid) >= rss_mib(pid) - 1.0);
    }
}
