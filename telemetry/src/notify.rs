//! systemd's service notification protocol: `READY=1` once the binary serves,
//! `WATCHDOG=1` at half the unit's `WatchdogSec`, `EXTEND_TIMEOUT_USEC=` while a
//! start takes long on purpose, `STOPPING=1` at shutdown, and a `STATUS=` line saying
//! what it is doing. Without `NOTIFY_SOCKET` (not started by
//! systemd with `Type=notify`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        // systemd will say the unit failed to start (or was killed by its
        // watchdog); this line tells why.
        tracing::warn!(error = %e, "cannot notify systemd ($NOTIFY_SOCKET)");
    }
}

/// Tells systemd the service is ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Asks systemd for `by` more before it gives up on a start that has not reported
/// ready yet (`EXTEND_TIMEOUT_USEC`), saying why in the status line.
pub fn extend_start(by: Duration, status: &str) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Status(status),
    ]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings systemd's watchdog at half its interval from a task on the current
/// runtime, for as long as the runtime runs: a runtime that stops making progress
/// stops the pings, and systemd restarts the service.
pub fn spawn_watchdog() {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let every = interval / 2;
    tracing::info!(
        "systemd watchdog: {} ms, pinging every {} ms",
        interval.as_millis(),
        every.as_millis()
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}
