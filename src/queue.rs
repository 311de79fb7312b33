//! Queue stage: the bounded hand-over from the tailer to the batcher.
//!
//! Input: [`Chunk`]s, each a run of complete lines of one file, already
//! encoded as RowBinary rows, with the byte range they came from. Output: the
//! same chunks, in order. The queue is bounded in rows and in bytes; when it
//! is full, [`Queue::push`] blocks the tailer, so the bot's log file, not
//! chtail's memory, absorbs a ClickHouse that falls behind (DESIGN.md §2.1).
//! It stops when the tailer closes it; the batcher then drains what is left.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::checkpoint::FileId;
use crate::stats::Stats;
use crate::tail::identity::Identity;

/// A row's place: the file offset of its line and where its encoded bytes
/// end within the chunk's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMark {
    pub offset: u64,
    pub end: u32,
}

/// Complete lines `start..end` of one file, parsed and encoded.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The table the rows go to (an index into the daemon's tables).
    pub route: u16,
    pub file: FileId,
    /// The file's identity when the chunk was read: what names the bytes
    /// beyond this process (FileIds are chtail's own numbering).
    pub identity: Identity,
    pub path: Arc<Path>,
    pub start: u64,
    pub end: u64,
    pub rows: Vec<RowMark>,
    pub data: Bytes,
    /// The events' own times (Unix ms), for the delay metric; rows without
    /// a readable time have none.
    pub times: Vec<i64>,
}

impl Chunk {
    /// What the chunk costs the queue's byte bound.
    pub fn weight(&self) -> usize {
        self.data.len()
            + self.rows.len() * std::mem::size_of::<RowMark>()
            + self.times.len() * std::mem::size_of::<i64>()
    }

    /// Encoded bytes of rows `from..to`.
    pub fn row_bytes(&self, from: usize, to: usize) -> Bytes {
        let start = if from == 0 {
            0
        } else {
            self.rows[from - 1].end as usize
        };
        let end = if to == 0 {
            0
        } else {
            self.rows[to - 1].end as usize
        };
        self.data.slice(start..end)
    }
}

pub struct Queue {
    inner: Mutex<Inner>,
    space: Condvar,
    ready: tokio::sync::Notify,
    max_rows: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Chunk>,
    rows: usize,
    bytes: usize,
    closed: bool,
}

/// The tailer was told to stop while it waited for room.
#[derive(Debug)]
pub struct Cancelled;

impl Queue {
    pub fn new(max_rows: usize, max_bytes: usize, stats: Arc<Stats>) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            space: Condvar::new(),
            ready: tokio::sync::Notify::new(),
            max_rows,
            max_bytes,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge the pipeline: the data is plain.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a chunk, blocking while the queue is full. A chunk bigger than
    /// the whole bound is still accepted into an empty queue, so no line is
    /// ever too big to pass.
    pub fn push(&self, chunk: Chunk, cancel: &AtomicBool) -> Result<(), Cancelled> {
        let rows = chunk.rows.len();
        let weight = chunk.weight();
        let mut inner = self.lock();
        while !inner.items.is_empty()
            && (inner.rows + rows > self.max_rows || inner.bytes + weight > self.max_bytes)
        {
            if cancel.load(Ordering::Relaxed) {
                return Err(Cancelled);
            }
            // Waiting on a full queue is the tailer working as designed.
            Stats::beat(&self.stats.tail_beat_ms);
            inner = self
                .space
                .wait_timeout(inner, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        inner.rows += rows;
        inner.bytes += weight;
        inner.items.push_back(chunk);
        self.publish(&inner);
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// The next chunk; `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<Chunk> {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if let Some(chunk) = inner.items.pop_front() {
                    inner.rows -= chunk.rows.len();
                    inner.bytes -= chunk.weight();
                    self.publish(&inner);
                    drop(inner);
                    self.space.notify_all();
                    return Some(chunk);
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more chunks will come; wakes the consumer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    fn publish(&self, inner: &Inner) {
        self.stats
            .queue_rows
            .store(inner.rows as u64, Ordering::Relaxed);
        self.stats
            .queue_bytes
            .store(inner.bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn chunk(file: u64, start: u64, end: u64, rows: usize) -> Chunk {
        Chunk {
            route: 0,
            file: FileId(file),
            identity: Identity {
                dev: 1,
                ino: file,
                fp_len: 0,
                fp_hash: 0,
            },
            path: Arc::from(Path::new("/x")),
            start,
            end,
            rows: (0..rows)
                .map(|i| RowMark {
                    offset: start + i as u64,
                    end: (i as u32 + 1) * 10,
                })
                .collect(),
            data: Bytes::from(vec![0u8; rows * 10]),
            times: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_producer_until_the_consumer_takes() {
        let q = Arc::new(Queue::new(10, 1 << 20, Arc::default()));
        let cancel = Arc::new(AtomicBool::new(false));
        q.push(chunk(1, 0, 10, 10), &cancel).unwrap();
        let (q2, c2) = (q.clone(), cancel.clone());
        let producer = std::thread::spawn(move || q2.push(chunk(1, 10, 20, 5), &c2));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!producer.is_finished(), "push must wait for room");
        assert_eq!(q.pop().await.unwrap().start, 0);
        producer.join().unwrap().unwrap();
        assert_eq!(q.pop().await.unwrap().start, 10);
        q.close();
        assert!(q.pop().await.is_none());
    }

    #[test]
    fn a_blocked_producer_can_be_cancelled() {
        let q = Queue::new(1, 1 << 20, Arc::default());
        let cancel = AtomicBool::new(false);
        q.push(chunk(1, 0, 1, 1), &cancel).unwrap();
        cancel.store(true, Ordering::Relaxed);
        assert!(q.push(chunk(1, 1, 2, 1), &cancel).is_err());
    }

    #[test]
    fn row_bytes_slices_by_row() {
        let c = chunk(1, 0, 3, 3);
        assert_eq!(c.row_bytes(0, 3).len(), 30);
        assert_eq!(c.row_bytes(1, 2).len(), 10);
        assert_eq!(c.row_bytes(2, 2).len(), 0);
    }
}
