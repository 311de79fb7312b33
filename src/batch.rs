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
//!
//! A batch that fills before `batch.max_wait` means a backlog is being
//! read: with `stream_rows` above zero it goes to the inserter as the head
//! of a catch-up stream (README, "Catch-up"), and the chunks that follow
//! go after it, a few at a time, into the same INSERT, until the backlog is
//! read, the stream is full, or a chunk is for another table.

use std::fmt::Write;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use twox_hash::XxHash64;

use crate::config;
use crate::identity::FileId;
use crate::queue::{Chunk, Queue};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The table all its rows go to.
    pub route: u16,
    pub chunks: Vec<Chunk>,
    pub rows: usize,
    pub bytes: usize,
    /// A catch-up stream: the chunks that follow these in the same INSERT,
    /// until the sender is dropped (README, "Catch-up").
    pub more: Option<mpsc::Receiver<Chunk>>,
}

/// One file's contiguous byte range covered by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub file: FileId,
    pub start: u64,
    pub end: u64,
}

impl Batch {
    pub(crate) fn push(&mut self, chunk: Chunk) {
        if self.chunks.is_empty() {
            self.route = chunk.route;
        }
        debug_assert_eq!(self.route, chunk.route);
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
    pub(crate) fn ranges(&self) -> Vec<Range> {
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
pub(crate) fn token(batch: &Batch) -> String {
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

/// The most parts pressure stretches `max_wait`: 2^4 = 16 times.
const MAX_PRESSURE: u64 = 4;
/// Successful inserts in a row that ease the pressure one step.
const CALM_INSERTS: u64 = 8;

/// The control signal from the inserter to the batcher: TOO_MANY_PARTS
/// means the server's merges fall behind, and fewer, bigger inserts give
/// them time. Raised by a TOO_MANY_PARTS failure, eased one step per
/// [`CALM_INSERTS`] successful inserts in a row; the batcher waits up to
/// 2^level times `batch.max_wait` for a batch to fill.
#[derive(Debug, Default)]
pub(crate) struct PartsPressure {
    level: AtomicU64,
    calm: AtomicU64,
}

impl PartsPressure {
    pub(crate) fn raise(&self) {
        let _ = self
            .level
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v < MAX_PRESSURE).then_some(v + 1)
            });
        self.calm.store(0, Ordering::Relaxed);
    }

    pub(crate) fn calm_insert(&self) {
        if self.calm.fetch_add(1, Ordering::Relaxed) + 1 >= CALM_INSERTS {
            self.calm.store(0, Ordering::Relaxed);
            let _ = self
                .level
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// How many times `max_wait` a batch may wait now.
    fn stretch(&self) -> u32 {
        1 << self.level.load(Ordering::Relaxed).min(MAX_PRESSURE)
    }
}

/// How many chunks a stream holds between the batcher and the INSERT.
const STREAM_DEPTH: usize = 4;
/// The most encoded bytes one stream carries: well under the 256 MiB at
/// which the server cuts an INSERT into blocks it commits one by one.
pub(crate) const STREAM_BYTES: usize = 96 << 20;
/// A stream ends when no chunk came for this long: the backlog is read.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// `stream_rows`: the most rows of a catch-up stream, 0 for none (the
/// server commits a cut body, or the config says so).
pub(crate) async fn run(
    queue: Arc<Queue>,
    limits: config::Batch,
    stream_rows: usize,
    pressure: Arc<PartsPressure>,
    out: mpsc::Sender<Batch>,
) {
    // One batch open per table, each with its own deadline.
    let mut open: Vec<(Batch, Instant)> = Vec::new();
    let mut closed = false;
    let deadline = || Instant::now() + limits.max_wait * pressure.stretch();
    while !closed || !open.is_empty() {
        let next = open.iter().map(|(_, d)| *d).min();
        let popped = if closed {
            Err(())
        } else {
            match next {
                Some(deadline) => timeout_at(deadline, queue.pop()).await.map_err(|_| ()),
                None => Ok(queue.pop().await),
            }
        };
        let mut due = Vec::new();
        // A batch that filled before its wait was up (a backlog is being
        // read), with the chunk that did not fit in it, if any: its INSERT
        // goes on as a stream, while no other table waits (the inserter
        // takes one INSERT at a time).
        let mut filled: Option<(Batch, Option<Chunk>)> = None;
        match popped {
            // A deadline passed, or the queue is closed and drained.
            Err(()) => {
                let now = Instant::now();
                let mut i = 0;
                while i < open.len() {
                    if closed || open[i].1 <= now {
                        due.push(open.remove(i).0);
                    } else {
                        i += 1;
                    }
                }
            }
            Ok(None) => closed = true,
            Ok(Some(chunk)) => match open.iter().position(|(b, _)| b.route == chunk.route) {
                Some(i) if open[i].0.fits(&chunk, &limits) => {
                    let batch = &mut open[i].0;
                    batch.push(chunk);
                    if batch.rows >= limits.max_rows || batch.bytes >= limits.max_bytes {
                        filled = Some((open.remove(i).0, None));
                    }
                }
                Some(i) => filled = Some((open.remove(i).0, Some(chunk))),
                None => {
                    let mut batch = Batch::default();
                    batch.push(chunk);
                    if batch.rows >= limits.max_rows || batch.bytes >= limits.max_bytes {
                        filled = Some((batch, None));
                    } else {
                        open.push((batch, deadline()));
                    }
                }
            },
        }
        for batch in due {
            if out.send(batch).await.is_err() {
                return;
            }
        }
        let Some((batch, first)) = filled else {
            continue;
        };
        let streams = open.is_empty()
            && stream_rows >= batch.rows + first.as_ref().map_or(1, |c| c.rows.len());
        if !streams {
            if out.send(batch).await.is_err() {
                return;
            }
            if let Some(chunk) = first {
                let mut next = Batch::default();
                next.push(chunk);
                if next.rows >= limits.max_rows || next.bytes >= limits.max_bytes {
                    if out.send(next).await.is_err() {
                        return;
                    }
                } else {
                    open.push((next, deadline()));
                }
            }
            continue;
        }
        match stream(&queue, &out, batch, first, stream_rows, &limits).await {
            Fed::Ended(None) => {}
            // The chunk that did not fit starts the next batch.
            Fed::Ended(Some(chunk)) => {
                let mut next = Batch::default();
                next.push(chunk);
                open.push((next, deadline()));
            }
            Fed::QueueClosed => closed = true,
            Fed::InserterGone => return,
        }
    }
}

enum Fed {
    /// The stream is over; a chunk that did not fit, if any.
    Ended(Option<Chunk>),
    QueueClosed,
    InserterGone,
}

/// Sends `batch` as the head of a stream, then feeds the stream `first`
/// and the chunks that follow, in queue order, while they keep coming, are
/// for its table, and fit in it.
///
/// The backlog counts as read, and the stream ends, when no chunk came for
/// [`STREAM_IDLE`], or when a `batch.max_wait` of the batcher's own waiting
/// brought fewer than `batch.max_rows` rows: the pace that started the
/// stream is gone, and the bot's own pace is left. Without the second rule
/// a bot writing steadily keeps a stream open until it is full, and its
/// rows wait that long to be committed. Time spent waiting for the INSERT
/// to take a chunk does not count: a slow server is not a read backlog.
async fn stream(
    queue: &Queue,
    out: &mpsc::Sender<Batch>,
    mut batch: Batch,
    first: Option<Chunk>,
    stream_rows: usize,
    limits: &config::Batch,
) -> Fed {
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    batch.more = Some(rx);
    let (route, mut rows, mut bytes) = (batch.route, batch.rows, batch.bytes);
    if out.send(batch).await.is_err() {
        return Fed::InserterGone;
    }
    let mut pace = Pace::new();
    let mut next = first;
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => match tokio::time::timeout(STREAM_IDLE, queue.pop()).await {
                Err(_) => return Fed::Ended(None),
                Ok(None) => return Fed::QueueClosed,
                Ok(Some(c)) => c,
            },
        };
        if chunk.route != route
            || rows + chunk.rows.len() > stream_rows
            || bytes + chunk.data.len() > STREAM_BYTES
            || pace.slowed(limits)
        {
            return Fed::Ended(Some(chunk));
        }
        rows += chunk.rows.len();
        bytes += chunk.data.len();
        pace.rows += chunk.rows.len();
        pace.bytes += chunk.data.len();
        let sending = Instant::now();
        if tx.send(chunk).await.is_err() {
            return Fed::InserterGone;
        }
        pace.blocked += sending.elapsed();
    }
}

/// A stream's intake over its current window (see [`stream`]).
struct Pace {
    since: Instant,
    /// Time in the window spent waiting for the INSERT, not for chunks.
    blocked: std::time::Duration,
    rows: usize,
    bytes: usize,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            since: Instant::now(),
            blocked: std::time::Duration::ZERO,
            rows: 0,
            bytes: 0,
        }
    }

    /// Whether the window just over brought less than a batch (fewer than
    /// `max_rows` rows and `max_bytes` bytes); a full one starts the next.
    fn slowed(&mut self, limits: &config::Batch) -> bool {
        let waited = self.since.elapsed().saturating_sub(self.blocked);
        if waited < limits.max_wait {
            return false;
        }
        if self.rows < limits.max_rows && self.bytes < limits.max_bytes {
            return true;
        }
        *self = Pace::new();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::RowMark;
    use bytes::Bytes;
    use std::path::Path;
    use std::time::Duration;

    fn chunk(file: u64, start: u64, end: u64, rows: usize) -> Chunk {
        Chunk {
            route: 0,
            source: 0,
            file: FileId(file),
            identity: crate::identity::Identity {
                dev: 1,
                ino: file,
                fp_len: 8,
                fp_hash: file * 31,
            },
            path: Arc::from(Path::new("/x")),
            handle: Arc::new(std::fs::File::open("/dev/null").unwrap()),
            start,
            end,
            rows: (0..rows)
                .map(|i| RowMark {
                    offset: start,
                    end: u32::try_from(i).unwrap() + 1,
                })
                .collect(),
            data: Bytes::from(vec![0u8; rows]),
            times: Vec::new(),
            held: None,
        }
    }

    /// A queue holding `n` chunks of 4 rows of file 1, 10 bytes each.
    fn backlog(n: u64) -> Arc<Queue> {
        let q = Arc::new(Queue::new(1000, 1 << 20, Arc::default()));
        for i in 0..n {
            q.push(chunk(1, i * 10, i * 10 + 10, 4), || true).unwrap();
        }
        q
    }

    fn limits(rows: usize, wait_ms: u64) -> config::Batch {
        config::Batch {
            max_rows: rows,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(wait_ms),
            catch_up_rows: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_at_max_rows_and_at_max_wait() {
        let q = Arc::new(Queue::new(1000, 1 << 20, Arc::default()));
        for i in 0..5 {
            q.push(chunk(1, i * 10, i * 10 + 10, 4), || true).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(1);
        let pressure = Arc::new(PartsPressure::default());
        let task = tokio::spawn(run(q.clone(), limits(8, 1000), 0, pressure.clone(), tx));
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
        pressure.raise();
        pressure.raise();
        q.push(chunk(1, 50, 60, 4), || true).unwrap();
        let t0 = Instant::now();
        let b = rx.recv().await.unwrap();
        assert_eq!(b.rows, 4);
        assert!(Instant::now() - t0 >= Duration::from_millis(4000));
        // Eight calm inserts ease it one step.
        for _ in 0..8 {
            pressure.calm_insert();
        }
        assert_eq!(pressure.stretch(), 2);
        q.close();
        assert!(rx.recv().await.is_none());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_fills_goes_on_as_a_stream_while_the_backlog_lasts() {
        let q = backlog(10);
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(run(q.clone(), limits(8, 1000), 28, Arc::default(), tx));
        let drain = |mut more: mpsc::Receiver<Chunk>, mut end: u64| async move {
            let mut rows = 0;
            while let Some(c) = more.recv().await {
                assert_eq!(c.start, end, "in order, nothing skipped");
                end = c.end;
                rows += c.rows.len();
            }
            (rows, end)
        };
        // Filled before max_wait: the stream goes on up to 28 rows.
        let mut b = rx.recv().await.unwrap();
        assert_eq!((b.rows, b.ranges()[0].end), (8, 20));
        let (rows, end) = drain(b.more.take().expect("a stream"), 20).await;
        assert_eq!((8 + rows, end), (28, 70));
        // The chunk that did not fit starts the next batch, which fills and
        // streams the rest; the stream ends when no chunk comes.
        let mut b = rx.recv().await.unwrap();
        assert_eq!((b.rows, b.ranges()[0].start), (8, 70));
        let t0 = Instant::now();
        assert_eq!(drain(b.more.take().expect("a stream"), 90).await, (4, 100));
        assert!(Instant::now() - t0 >= STREAM_IDLE);
        // A batch closed by max_wait is not a stream; a chunk of another
        // table ends a stream and starts its own batch.
        q.push(chunk(1, 100, 110, 4), || true).unwrap();
        let b = rx.recv().await.unwrap();
        assert!(b.more.is_none());
        for i in 11..14 {
            q.push(chunk(1, i * 10, i * 10 + 10, 4), || true).unwrap();
        }
        let mut other = chunk(2, 0, 10, 4);
        other.route = 1;
        q.push(other, || true).unwrap();
        q.push(chunk(1, 140, 150, 4), || true).unwrap();
        let mut b = rx.recv().await.unwrap();
        assert_eq!(drain(b.more.take().unwrap(), 130).await, (4, 140));
        let b = rx.recv().await.unwrap();
        assert_eq!((b.route, b.rows), (1, 4));
        let b = rx.recv().await.unwrap();
        assert_eq!((b.route, b.ranges()[0].start), (0, 140));
        q.close();
        assert!(rx.recv().await.is_none());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_the_chunks_come_at_less_than_a_batch_per_max_wait() {
        let q = backlog(2);
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(run(q.clone(), limits(8, 1000), 1000, Arc::default(), tx));
        // A backlog's pace, 4 rows every 100 ms (40 a second, a batch is 8),
        // for 3 s, then the bot's, a row every 150 ms (under 8 a second).
        let feeder = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut at = 20;
                for i in 0..60 {
                    let (rows, pause) = if i < 30 { (4, 100) } else { (1, 150) };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    q.push(chunk(1, at, at + 10, rows), || true).unwrap();
                    at += 10;
                }
            })
        };
        let t0 = Instant::now();
        let mut b = rx.recv().await.unwrap();
        assert_eq!(b.rows, 8);
        let mut more = b.more.take().expect("a stream");
        let mut rows = 0;
        while let Some(c) = more.recv().await {
            rows += c.rows.len();
        }
        // The backlog's 30 chunks and at most two windows of the slow ones
        // (the window the backlog ended in may still be full).
        let took = Instant::now() - t0;
        assert!((120..120 + 16).contains(&rows), "{rows} rows streamed");
        assert!(took <= Duration::from_millis(3000 + 2000 + 200), "{took:?}");
        // What follows goes in batches closed by max_wait.
        let b = rx.recv().await.unwrap();
        assert!(b.more.is_none());
        feeder.await.unwrap();
        q.close();
        while let Some(b) = rx.recv().await {
            assert!(b.more.is_none());
        }
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn each_table_gets_its_own_batches() {
        let q = Arc::new(Queue::new(1000, 1 << 20, Arc::default()));
        // Files 1 and 2 go to different tables, interleaved.
        for i in 0..4 {
            q.push(chunk(1, i * 10, i * 10 + 10, 2), || true).unwrap();
            let mut other = chunk(2, i * 10, i * 10 + 10, 3);
            other.route = 1;
            q.push(other, || true).unwrap();
        }
        q.close();
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(run(q, limits(100, 1000), 0, Arc::default(), tx));
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            assert!(b.chunks.iter().all(|c| c.route == b.route));
            got.push((b.route, b.rows, b.ranges()));
        }
        task.await.unwrap();
        got.sort_by_key(|g| g.0);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (0, 8));
        assert_eq!((got[1].0, got[1].1), (1, 12));
        assert_eq!(got[1].2[0].end, 40);
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
