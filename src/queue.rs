//! Queue stage: the bounded hand-over from the tailer to the batcher.
//!
//! Input: [`Chunk`]s, each a run of complete lines of one file, already
//! encoded as RowBinary rows, with the byte range they came from. Output: the
//! same chunks, in order. The home of invariant 1 (ARCHITECTURE.md): the
//! bound in rows and bytes covers every chunk from the moment it is pushed
//! until it is dropped, that is until its batch was inserted and committed,
//! so the batch being built and the batch in flight count too. When the
//! bound is reached, [`Queue::push`] blocks the tailer, and the bot's log
//! file, not chtail's memory, absorbs a ClickHouse that falls behind. It
//! stops when the tailer closes it; the batcher then drains what is left.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::identity::FileId;
use crate::identity::Identity;
use crate::stats::Stats;

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
    /// The source whose encoder made the rows (an index into the
    /// daemon's sources): a re-read encodes them the same way.
    pub source: u16,
    pub file: FileId,
    /// The file's identity when the chunk was read: what names the bytes
    /// beyond this process (FileIds are chtail's own numbering).
    pub identity: Identity,
    pub path: Arc<Path>,
    /// The file itself, open: a rejected row's line is read back from it
    /// for the quarantine, never from whatever file now has the path.
    pub handle: Arc<File>,
    pub start: u64,
    pub end: u64,
    pub rows: Vec<RowMark>,
    pub data: Bytes,
    /// The events' own times (Unix ms), for the delay metric; rows without
    /// a readable time have none.
    pub times: Vec<i64>,
    /// The chunk's share of the queue's bound, given back when the last
    /// copy of the chunk is dropped. `None` until it is pushed.
    pub held: Option<Arc<Held>>,
}

/// A share of the queue's bound, returned on drop.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    rows: usize,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.rows, self.bytes);
    }
}

/// What is held of the bound, and the condition the tailer waits on.
#[derive(Debug)]
struct Budget {
    held: Mutex<(usize, usize)>,
    space: Condvar,
    stats: Arc<Stats>,
}

impl Budget {
    fn lock(&self) -> MutexGuard<'_, (usize, usize)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, rows: usize, bytes: usize) {
        let mut held = self.lock();
        held.0 -= rows;
        held.1 -= bytes;
        self.publish(&held);
        drop(held);
        self.space.notify_all();
    }

    fn publish(&self, held: &(usize, usize)) {
        self.stats
            .queue_rows
            .store(held.0 as u64, Ordering::Relaxed);
        self.stats
            .queue_bytes
            .store(held.1 as u64, Ordering::Relaxed);
    }
}

impl Chunk {
    /// What the chunk costs the queue's byte bound: the memory it holds
    /// (allocated capacity, not length), its own struct included.
    pub fn weight(&self) -> usize {
        size_of::<Chunk>()
            + self.data.len()
            + self.rows.capacity() * size_of::<RowMark>()
            + self.times.capacity() * size_of::<i64>()
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
    budget: Arc<Budget>,
    ready: tokio::sync::Notify,
    max_rows: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Chunk>,
    closed: bool,
}

/// The tailer was told to stop while it waited for room.
#[derive(Debug)]
pub struct Cancelled;

impl Queue {
    pub fn new(max_rows: usize, max_bytes: usize, stats: Arc<Stats>) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            budget: Arc::new(Budget {
                held: Mutex::new((0, 0)),
                space: Condvar::new(),
                stats,
            }),
            ready: tokio::sync::Notify::new(),
            max_rows,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge the pipeline: the data is plain.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a chunk, blocking while the bound is reached. A chunk bigger
    /// than the whole bound is still accepted when nothing else is held, so
    /// no line is ever too big to pass. While it waits, `go_on` is asked
    /// every 100 ms whether to keep waiting.
    pub fn push(&self, mut chunk: Chunk, mut go_on: impl FnMut() -> bool) -> Result<(), Cancelled> {
        let rows = chunk.rows.len();
        let bytes = chunk.weight();
        let budget = &self.budget;
        let mut held = budget.lock();
        while held.1 > 0 && (held.0 + rows > self.max_rows || held.1 + bytes > self.max_bytes) {
            if !go_on() {
                return Err(Cancelled);
            }
            held = budget
                .space
                .wait_timeout(held, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        held.0 += rows;
        held.1 += bytes;
        budget.publish(&held);
        drop(held);
        chunk.held = Some(Arc::new(Held {
            budget: budget.clone(),
            rows,
            bytes,
        }));
        self.lock().items.push_back(chunk);
        self.ready.notify_one();
        Ok(())
    }

    /// The next chunk; `None` once the queue is closed and empty. The chunk
    /// keeps its share of the bound until it is dropped.
    pub async fn pop(&self) -> Option<Chunk> {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if let Some(chunk) = inner.items.pop_front() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn chunk(file: u64, start: u64, end: u64, rows: usize) -> Chunk {
        Chunk {
            route: 0,
            source: 0,
            file: FileId(file),
            identity: Identity {
                dev: 1,
                ino: file,
                fp_len: 0,
                fp_hash: 0,
            },
            path: Arc::from(Path::new("/x")),
            handle: Arc::new(File::open("/dev/null").unwrap()),
            start,
            end,
            rows: (0..rows)
                .map(|i| RowMark {
                    offset: start + i as u64,
                    end: (u32::try_from(i).unwrap() + 1) * 10,
                })
                .collect(),
            data: Bytes::from(vec![0u8; rows * 10]),
            times: Vec::new(),
            held: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_producer_until_the_consumer_takes() {
        let q = Arc::new(Queue::new(10, 1 << 20, Arc::default()));
        q.push(chunk(1, 0, 10, 10), || true).unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (q2, a2) = (q.clone(), asked.clone());
        let producer = std::thread::spawn(move || {
            q2.push(chunk(1, 10, 20, 5), || {
                a2.fetch_add(1, Ordering::Relaxed);
                true
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!producer.is_finished(), "push must wait for room");
        assert!(
            asked.load(Ordering::Relaxed) >= 2,
            "a waiting producer is asked whether to go on (and beats)"
        );
        let first = q.pop().await.unwrap();
        assert_eq!(first.start, 0);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !producer.is_finished(),
            "a popped chunk still holds its share until it is dropped"
        );
        drop(first);
        producer.join().unwrap().unwrap();
        assert_eq!(q.pop().await.unwrap().start, 10);
        q.close();
        assert!(q.pop().await.is_none());
    }

    #[test]
    fn a_blocked_producer_can_be_cancelled() {
        let q = Queue::new(1, 1 << 20, Arc::default());
        q.push(chunk(1, 0, 1, 1), || true).unwrap();
        assert!(q.push(chunk(1, 1, 2, 1), || false).is_err());
    }

    #[test]
    fn row_bytes_slices_by_row() {
        let c = chunk(1, 0, 3, 3);
        assert_eq!(c.row_bytes(0, 3).len(), 30);
        assert_eq!(c.row_bytes(1, 2).len(), 10);
        assert_eq!(c.row_bytes(2, 2).len(), 0);
    }
}
