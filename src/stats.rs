//! Counters shared by the stages, read by logs and `chtail status`.
//!
//! Plain atomics: every stage bumps its own counters; nothing here carries a
//! per-event value, so nothing can grow with the data.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub rows_parsed: AtomicU64,
    /// JSON keys no column took (and no catch-all column kept).
    pub keys_ignored: AtomicU64,
    pub quarantined: AtomicU64,
    pub batches_inserted: AtomicU64,
    pub rows_inserted: AtomicU64,
    pub insert_failures: AtomicU64,
    pub queue_rows: AtomicU64,
    pub queue_bytes: AtomicU64,
    /// 0 normally; raised by TOO_MANY_PARTS, which makes the batcher wait
    /// up to 2^n times `batch.max_wait`, so batches grow and inserts thin out.
    pub parts_pressure: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
