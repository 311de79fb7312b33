//! Signals: what SIGTERM, SIGINT and SIGHUP ask of the daemon.
//!
//! Installed once per process (through `tokio::signal`, which sits on
//! signal-hook's registry) and read only by the daemon's checklist: the
//! first stop signal starts the drain, a second one exits at once; SIGHUP
//! asks for the config file to be read again.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    /// SIGTERM or SIGINT: drain and exit.
    Stop(&'static str),
    /// SIGHUP: read the config again.
    Reload,
}

/// The signals the daemon acts on.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    pub(crate) async fn recv(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Stop("SIGTERM"),
            _ = self.int.recv() => Sig::Stop("SIGINT"),
            _ = self.hup.recv() => Sig::Reload,
        }
    }

    /// The next stop signal; a SIGHUP in between is logged and ignored.
    pub(crate) async fn stop(&mut self) -> &'static str {
        loop {
            match self.recv().await {
                Sig::Stop(name) => return name,
                Sig::Reload => tracing::info!("SIGHUP ignored: chtail is stopping or reloading"),
            }
        }
    }
}
