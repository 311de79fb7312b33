//! Control signals: what the stages show of themselves that something acts
//! on. The watchdog, `/health`, `/ready` and the status line read them;
//! `stats` only counts.
//!
//! - the tailer's beat: it went round its loop, or is waiting for room in
//!   the queue or for the state disk (backpressure working, not stuck);
//! - the inserter's: when the INSERT in flight started, when one last
//!   succeeded, and whether ClickHouse answered the last exchange (also set
//!   by start-up and by the idle probe in `health`).
//!
//! Parts pressure, the third signal between stages, is
//! `batch::PartsPressure`: the inserter sets it, the batcher reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::stats::now_ms;

/// When a stage last showed life, in Unix milliseconds (0: not set).
#[derive(Debug, Default)]
pub struct Beat(AtomicU64);

impl Beat {
    pub fn now(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Unix milliseconds, 0 if not set.
    pub(crate) fn unix_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Milliseconds since the beat, `None` if not set.
    pub(crate) fn age_ms(&self) -> Option<u64> {
        match self.unix_ms() {
            0 => None,
            ms => Some(now_ms().saturating_sub(ms)),
        }
    }
}

/// The liveness of the pipeline; one per daemon, kept across reloads.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    pub(crate) tail: Arc<Beat>,
    /// Set while an INSERT is in flight.
    pub(crate) insert_started: Beat,
    pub(crate) last_insert: Beat,
    reachable: AtomicBool,
}

/// How long each stage may show no sign of life before it counts as stuck.
#[derive(Clone, Copy)]
pub(crate) struct Grace {
    tail: Duration,
    insert: Duration,
}

impl Grace {
    pub(crate) fn of(config: &Config) -> Grace {
        Grace {
            tail: (config.tail.poll_interval * 10).max(Duration::from_secs(20)),
            insert: config.clickhouse.request_timeout * 2 + Duration::from_secs(30),
        }
    }
}

impl Liveness {
    /// Whether the last exchange with ClickHouse succeeded.
    pub(crate) fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_reachable(&self, ok: bool) {
        self.reachable.store(ok, Ordering::Relaxed);
    }

    /// The stage that showed no life for longer than its grace, and how
    /// long; `None` while every stage moves (or waits as designed).
    pub(crate) fn stuck_stage(&self, grace: Grace) -> Option<String> {
        let over =
            |age: Option<u64>, limit: Duration| age.filter(|a| u128::from(*a) > limit.as_millis());
        if let Some(age) = over(self.tail.age_ms(), grace.tail) {
            return Some(format!("the tailer has not run for {} s", age / 1000));
        }
        if let Some(age) = over(self.insert_started.age_ms(), grace.insert) {
            return Some(format!("an insert has been in flight for {} s", age / 1000));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_stuck_only_past_its_grace() {
        let live = Liveness::default();
        let grace = Grace {
            tail: Duration::from_secs(20),
            insert: Duration::from_secs(90),
        };
        assert_eq!(live.stuck_stage(grace), None, "nothing started yet");
        live.tail.now();
        live.insert_started.now();
        assert_eq!(live.stuck_stage(grace), None);
        live.tail.0.store(now_ms() - 25_000, Ordering::Relaxed);
        let why = live.stuck_stage(grace).expect("the tailer is stuck");
        assert!(why.contains("tailer has not run for 25 s"), "{why}");
        live.tail.now();
        live.insert_started
            .0
            .store(now_ms() - 100_000, Ordering::Relaxed);
        let why = live.stuck_stage(grace).expect("the insert is stuck");
        assert!(why.contains("in flight for 100 s"), "{why}");
        live.insert_started.clear();
        assert_eq!(live.stuck_stage(grace), None);
    }
}
