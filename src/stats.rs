//! Counters shared by the stages, read by logs, `/metrics` and the systemd
//! status line. They only count: signals a stage acts on are typed handles
//! (`liveness`, `batch::PartsPressure`).
//!
//! Plain atomics: every stage bumps its own counters; nothing here carries a
//! per-event value, so nothing can grow with the data. Labels are fixed
//! sets (reject kinds, failure classes), never a value from an event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::clickhouse::Class;
use crate::parse::RejectKind;

#[derive(Debug, Default)]
pub struct Stats {
    pub lines_read: AtomicU64,
    /// Errors listing, opening, reading or stat-ing a source's files.
    pub file_errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub rows_parsed: AtomicU64,
    /// JSON keys no column took (and no catch-all column kept).
    pub keys_ignored: AtomicU64,
    /// Quarantined lines, by [`RejectKind`] (its position in `ALL`).
    rejected: [AtomicU64; RejectKind::ALL.len()],
    pub batches_inserted: AtomicU64,
    pub rows_inserted: AtomicU64,
    /// Failed insert attempts, by class (its position in `Class::ALL`).
    failures_by_class: [AtomicU64; Class::ALL.len()],
    /// Attempts after the first, for any insert.
    pub insert_retries: AtomicU64,
    pub queue_rows: AtomicU64,
    pub queue_bytes: AtomicU64,
    /// From an event's own time (`ts`) to ClickHouse acknowledging it.
    pub delay: Histogram,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Lines quarantined, whatever the reason.
    pub fn quarantined(&self) -> u64 {
        self.rejected.iter().map(Self::get).sum()
    }

    /// Failed INSERT attempts, whatever the class.
    pub fn insert_failures(&self) -> u64 {
        self.failures_by_class.iter().map(Self::get).sum()
    }

    pub fn count_reject(&self, kind: RejectKind) {
        self.rejected[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Lines quarantined for one reason.
    pub fn rejected(&self, kind: RejectKind) -> u64 {
        Self::get(&self.rejected[kind as usize])
    }

    pub(crate) fn count_failure(&self, class: Class) {
        self.failures_by_class[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failures(&self, class: Class) -> u64 {
        Self::get(&self.failures_by_class[class as usize])
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Upper bounds of the delay histogram's buckets, in seconds.
pub const DELAY_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// [`DELAY_BUCKETS`] in milliseconds.
const BUCKET_MS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
    21_600_000, 86_400_000,
];

/// A Prometheus histogram of fixed buckets, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; 15],
    count: AtomicU64,
    /// Sum in milliseconds.
    sum_ms: AtomicU64,
}

impl Histogram {
    /// Records one observation of `ms` milliseconds (negative: clock skew,
    /// counted as 0).
    pub fn observe_ms(&self, ms: i64) {
        self.observe_all_ms(std::iter::once(ms));
    }

    /// Records many observations with one update per bucket.
    pub fn observe_all_ms(&self, values: impl IntoIterator<Item = i64>) {
        let mut local = [0u64; 15];
        let (mut count, mut sum) = (0u64, 0u64);
        for ms in values {
            let ms = u64::try_from(ms).unwrap_or(0);
            let i = BUCKET_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(BUCKET_MS.len());
            local[i] += 1;
            count += 1;
            sum += ms;
        }
        if count == 0 {
            return;
        }
        for (b, n) in self.buckets.iter().zip(local) {
            if n > 0 {
                b.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(count, Ordering::Relaxed);
        self.sum_ms.fetch_add(sum, Ordering::Relaxed);
    }

    /// Each bucket's own count (the last is above every bound: +Inf), the
    /// count, and the sum in seconds. The exposition makes them cumulative.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let own = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        (
            own,
            self.count.load(Ordering::Relaxed),
            self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_its_own_counter() {
        // The counters are indexed by discriminant; `ALL` must list the
        // variants in that order.
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{}", k.label());
        }
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.label());
        }
        let stats = Stats::default();
        stats.count_reject(RejectKind::TooLong);
        stats.count_failure(Class::Operator);
        assert_eq!(stats.rejected(RejectKind::TooLong), 1);
        assert_eq!(stats.quarantined(), 1);
        assert_eq!(stats.failures(Class::Operator), 1);
        assert_eq!(stats.insert_failures(), 1);
    }

    #[test]
    fn histogram_buckets_count_their_own_range() {
        let h = Histogram::default();
        for ms in [50, 100, 900, 4000, 10_000_000, -5] {
            h.observe_ms(ms);
        }
        let (b, count, sum) = h.snapshot();
        assert_eq!(count, 6);
        assert_eq!(b[0], 3); // 50, 100, and -5 as 0
        assert_eq!(b[3], 1); // (0.5 s, 1 s]
        assert_eq!(b[5], 1); // (2.5 s, 5 s]
        assert_eq!(b[12], 1); // (1 h, 6 h]
        assert_eq!(b[14], 0); // above a day
        assert_eq!(b.iter().sum::<u64>(), 6);
        assert!((sum - 10_005.05).abs() < 1e-6, "{sum}");
    }
}
