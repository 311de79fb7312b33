//! The systemd notification protocol (`sd_notify`) through the `sd-notify`
//! crate. Without `$NOTIFY_SOCKET` (not run by systemd with `Type=notify`)
//! every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub(crate) struct Notifier {
    enabled: bool,
    /// `$WATCHDOG_USEC`, if systemd expects pings (and they are for us).
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads the environment systemd sets up.
    pub(crate) fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled().filter(|w| !w.is_zero()),
        }
    }

    /// How often systemd wants a watchdog ping, if it does.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, state: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }

    pub(crate) fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    pub(crate) fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    pub(crate) fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub(crate) fn stopping(&self, status: &str) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(&one_line(status)),
        ]);
    }

    pub(crate) fn reloading(&self, status: &str) {
        self.send(&[
            NotifyState::Reloading,
            NotifyState::Status(&one_line(status)),
        ]);
    }

    /// Asks systemd to wait `more` beyond its stop (or start) timeout.
    pub(crate) fn extend_timeout(&self, more: Duration) {
        let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }
}

/// A status is one assignment: a newline would start another.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
