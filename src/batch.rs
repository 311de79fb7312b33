//! Batch stage: groups chunks into one INSERT's worth of rows.
//!
//! Input: chunks from the [`Queue`]. Output: [`Batch`]es to the inserter over
//! a channel of one, so that at most one batch is being built while one is
//! being inserted: memory stays bounded by the queue plus two batches. A
//! batch closes at `batch.max_rows`, `batch.max_bytes`, or `batch.max_wait`
//! after its first chunk arrived, whichever comes first. Chunks are never
//! split or reordered, so each file's ranges in a batch are contiguous and in
//! order. The stage stops when the queue is closed and drained, and its
//! dropped sender tells the inserter that nothing more will come.

use std::fmt::Write;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use twox_hash::XxHash64;

use crate::checkpoint::FileId;
use crate::config;
use crate::queue::{Chunk, Queue};
use crate::stats::Stats;
use std::sync::atomic::Ordering;

#[derive(Debug, Default)]
pub struct Batch {
    pub chunks: Vec<Chunk>,
    pub rows: usize,
    pub bytes: usize,
}

/// One file's contiguous byte range covered by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub file: FileId,
    pub start: u64,
    pub end: u64,
}

impl Batch {
    pub fn push(&mut self, chunk: Chunk) {
        self.rows += chunk.rows.len();
        self.bytes += chunk.data.len();
        self.chunks.push(chunk);
    }

    fn fits(&self, chunk: &Chunk, limits: &config::Batch) -> bool {
        self.chunks.is_empty()
            || (self.rows + chunk.rows.len() <= limits.max_rows
                && self.bytes + chunk.data.len() <= limits.max_bytes)
    }

    /// The byte ranges this batch covers, one per file, in first-seen order.
    pub fn ranges(&self) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for c in &self.chunks {
            match out.iter_mut().find(|r| r.file == c.file) {
                Some(r) => {
                    r.start = r.start.min(c.start);
                    r.end = r.end.max(c.end);
                }
                None => out.push(Range {
                    file: c.file,
                    start: c.start,
                    end: c.end,
                }),
            }
        }
        out
    }
}

/// A deduplication token named by the bytes the batch covers: each chunk's
/// file identity (device, inode, fingerprint) and byte range, in order. The
/// same bytes give the same token, in this process or the next; different
/// bytes never share one, so the server never drops rows it has not seen.
pub fn token(batch: &Batch) -> String {
    let mut text = String::new();
    for c in &batch.chunks {
        let id = &c.identity;
        let _ = write!(
            text,
            "{}:{}:{:x}/{}@{}-{};",
            id.dev, id.ino, id.fp_hash, id.fp_len, c.start, c.end
        );
    }
    format!("chtail-{:016x}", XxHash64::oneshot(0, text.as_bytes()))
}

/// The most `parts_pressure` stretches `max_wait`: 2^4 = 16 times.
pub const MAX_PRESSURE: u64 = 4;

pub async fn run(
    queue: Arc<Queue>,
    limits: config::Batch,
    stats: Arc<Stats>,
    out: mpsc::Sender<Batch>,
) {
    let mut carry: Option<Chunk> = None;
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match queue.pop().await {
                Some(c) => c,
                None => break,
            },
        };
        let pressure = stats
            .parts_pressure
            .load(Ordering::Relaxed)
            .min(MAX_PRESSURE);
        let deadline = Instant::now() + limits.max_wait * (1 << pressure);
        let mut batch = Batch::default();
        batch.push(first);
        let mut closed = false;
        while batch.rows < limits.max_rows && batch.bytes < limits.max_bytes {
            match timeout_at(deadline, queue.pop()).await {
                Err(_) => break,
                Ok(None) => {
                    closed = true;
                    break;
                }
                Ok(Some(c)) if batch.fits(&c, &limits) => batch.push(c),
                Ok(Some(c)) => {
                    carry = Some(c);
                    break;
                }
            }
        }
        if out.send(batch).await.is_err() || (closed && carry.is_none()) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::RowMark;
    use bytes::Bytes;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn chunk(file: u64, start: u64, end: u64, rows: usize) -> Chunk {
        Chunk {
            file: FileId(file),
            identity: crate::tail::identity::Identity {
                dev: 1,
                ino: file,
                fp_len: 8,
                fp_hash: file * 31,
            },
            path: Arc::from(Path::new("/x")),
            start,
            end,
            rows: (0..rows)
                .map(|i| RowMark {
                    offset: start,
                    end: i as u32 + 1,
                })
                .collect(),
            data: Bytes::from(vec![0u8; rows]),
        }
    }

    fn limits(rows: usize, wait_ms: u64) -> config::Batch {
        config::Batch {
            max_rows: rows,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(wait_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_at_max_rows_and_at_max_wait() {
        let q = Arc::new(Queue::new(1000, 1 << 20, Arc::default()));
        let never = AtomicBool::new(false);
        for i in 0..5 {
            q.push(chunk(1, i * 10, i * 10 + 10, 4), &never).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(1);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(q.clone(), limits(8, 1000), stats.clone(), tx));
        let b = rx.recv().await.unwrap();
        assert_eq!(
            (b.rows, b.ranges()),
            (
                8,
                vec![Range {
                    file: FileId(1),
                    start: 0,
                    end: 20
                }]
            )
        );
        let b = rx.recv().await.unwrap();
        assert_eq!(b.rows, 8);
        // One chunk left: it waits max_wait, then goes alone.
        let t0 = Instant::now();
        let b = rx.recv().await.unwrap();
        assert_eq!(b.rows, 4);
        assert!(Instant::now() - t0 >= Duration::from_millis(1000));
        // Under parts pressure the wait stretches, so batches grow.
        stats
            .parts_pressure
            .store(2, std::sync::atomic::Ordering::Relaxed);
        q.push(chunk(1, 50, 60, 4), &never).unwrap();
        let t0 = Instant::now();
        let b = rx.recv().await.unwrap();
        assert_eq!(b.rows, 4);
        assert!(Instant::now() - t0 >= Duration::from_millis(4000));
        q.close();
        assert!(rx.recv().await.is_none());
        task.await.unwrap();
    }

    #[test]
    fn ranges_and_tokens_depend_only_on_bytes() {
        let mut b = Batch::default();
        b.push(chunk(1, 0, 10, 1));
        b.push(chunk(2, 5, 9, 1));
        b.push(chunk(1, 10, 30, 1));
        let r = b.ranges();
        assert_eq!(
            r,
            vec![
                Range {
                    file: FileId(1),
                    start: 0,
                    end: 30
                },
                Range {
                    file: FileId(2),
                    start: 5,
                    end: 9
                },
            ]
        );
        let same = Batch {
            chunks: b.chunks.clone(),
            ..Batch::default()
        };
        assert_eq!(token(&b), token(&same));
        let mut other_file = b.chunks.clone();
        other_file[1].identity.ino = 77; // same FileId, other file
        let other_file = Batch {
            chunks: other_file,
            ..Batch::default()
        };
        assert_ne!(token(&b), token(&other_file));
        let fewer = Batch {
            chunks: b.chunks[..2].to_vec(),
            ..Batch::default()
        };
        assert_ne!(token(&b), token(&fewer));
    }
}
