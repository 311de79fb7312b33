//! Insert stage: one INSERT per batch, in order, then the checkpoint.
//!
//! Input: [`Batch`]es from the batcher. Output: rows in ClickHouse and
//! committed offsets in the [`Checkpoints`]. A batch is retried until the
//! server acknowledges it (transient faults with capped, jittered backoff;
//! operator faults slowly, loudly); only then do its offsets advance, so a
//! checkpoint never passes an unacknowledged event (invariant 2). A batch
//! the server rejects as bad data is split in halves until the bad rows are
//! isolated; those go to the quarantine and the rest are inserted
//! (invariant 4). The stage stops when its input channel closes. Once the
//! shutdown deadline has passed it starts no new attempt, but it never
//! abandons an insert half-way.
//!
//! The inserter is the one writer of the state on disk, and it never runs
//! ahead of it: no INSERT goes out before its manifest (and the files it
//! names) is written, and no further batch before the checkpoint of the
//! last one is. While the state directory cannot be written (disk full, a
//! permission) it waits, retrying with backoff and saying so; the queue
//! fills behind it and the tailer stops reading, so nothing is lost and
//! memory stays flat.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use twox_hash::XxHash64;

use crate::batch::{self, Batch};
use crate::checkpoint::{self, ChunkRange, Ledger, Manifest, StateHealth};
use crate::clickhouse::{Backoff, Class, Failure, Native, Server};
use crate::config;
use crate::liveness::Liveness;
use crate::parse::Reject;
use crate::quarantine::Quarantine;
use crate::queue::Chunk;
use crate::replay::{Reread, Span};
use crate::stats::Stats;
use crate::tail::SourceRoute;

pub(crate) struct Inserter {
    pub server: Server,
    /// The INSERT statement of each table (RowBinary), by route.
    pub sqls: Vec<String>,
    /// Each table's Native layout, by route, where it has one.
    pub natives: Vec<Option<Arc<Native>>>,
    /// Send `insert_deduplication_token` (the server knows the setting).
    pub dedup_tokens: bool,
    /// Whether each table, by route, is `Distributed` (inserted into
    /// synchronously).
    pub distributed: Vec<bool>,
    /// The server's version: which settings it knows.
    pub version: crate::clickhouse::Version,
    /// The checkpoint map's owner: the tailer's changes are applied and
    /// offsets advanced only here.
    pub ledger: Ledger,
    pub state_dir: PathBuf,
    /// Whether the state can be written, for `/ready` and the status line.
    pub state: Arc<StateHealth>,
    pub quarantine: Arc<Mutex<Quarantine>>,
    pub stats: Arc<Stats>,
    /// The in-flight and last-success beats, and reachability.
    pub liveness: Arc<Liveness>,
    /// Becomes true when the shutdown deadline has passed.
    pub give_up: watch::Receiver<bool>,
    pub retry: (std::time::Duration, std::time::Duration),
    /// TOO_MANY_PARTS pressure, for the batcher.
    pub pressure: Arc<batch::PartsPressure>,
    /// The sources (their encoders) and the reading settings, for the rows
    /// a stream's retry, a crash replay or a split reads again.
    pub sources: Arc<[SourceRoute]>,
    pub tail: config::Tail,
    /// The batches a stream the server rejected is split into.
    pub limits: config::Batch,
}

/// The longest wait between two attempts to write the state.
const PERSIST_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);
/// A state directory that cannot be written is logged at most this often.
const STATE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How the insert stage ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every batch it was given is in ClickHouse and committed.
    Drained,
    /// The shutdown deadline passed; this many rows stay in the log files,
    /// uncommitted, and are sent on the next start.
    GaveUp { rows_left: usize },
    /// The shutdown deadline passed while the state could not be written:
    /// `inserted` rows are in ClickHouse but not committed (they are sent
    /// again on the next start, under the same token), `rows_left` were
    /// not sent.
    Uncommitted {
        inserted: usize,
        rows_left: usize,
        error: String,
    },
}

enum SendError {
    Bad(Failure),
    GaveUp,
}

/// What an attempt's result leads to.
enum Next {
    Done,
    Bad(Failure),
    /// Waited its backoff; try again.
    Retry,
}

/// How a catch-up stream ended.
struct Streamed {
    rows: usize,
    /// Rows in ClickHouse (all of them, or none).
    inserted: usize,
    committed: bool,
}

impl Inserter {
    pub(crate) async fn run(mut self, mut input: mpsc::Receiver<Batch>) -> Outcome {
        while let Some(mut batch) = input.recv().await {
            let token = batch::token(&batch);
            tracing::debug!(token, rows = batch.rows, ranges = ?batch.ranges(), streamed = batch.more.is_some(), "sending batch");
            let done = match batch.more.take() {
                Some(more) => self.stream(batch, more, &token).await,
                None => {
                    let sent =
                        self.record(&batch, &token).await && self.deliver(&batch, &token).await;
                    let inserted = if sent { batch.rows } else { 0 };
                    Streamed {
                        rows: batch.rows,
                        inserted,
                        committed: sent && self.commit(&batch).await,
                    }
                }
            };
            if !done.committed {
                let inserted = done.inserted;
                let mut rows_left = done.rows - inserted;
                input.close();
                while let Some(b) = input.recv().await {
                    rows_left += b.rows;
                }
                return match self.state.problem() {
                    Some(error) => Outcome::Uncommitted {
                        inserted,
                        rows_left,
                        error,
                    },
                    None => Outcome::GaveUp { rows_left },
                };
            }
        }
        // What the tailer learned after the last commit (a file released or
        // renamed) is kept too.
        if self.ledger.take_changes() {
            let dir = self.state_dir.clone();
            let snapshot = Arc::new(self.ledger.snapshot());
            self.persist("the checkpoint", move || checkpoint::save(&dir, &snapshot))
                .await;
        }
        Outcome::Drained
    }

    /// Re-sends the batch a crash interrupted, read again from `spans`,
    /// under its recorded token, and commits it. False if the shutdown
    /// deadline stopped it first.
    pub(crate) async fn replay(&mut self, spans: &[Span], token: &str) -> bool {
        let Some(first) = spans.first() else {
            return true;
        };
        let route = self.sources[first.source].route;
        if !self.version.refuses_cut_bodies() {
            // Such a server commits what arrived of a body cut short, and a
            // body cut at a block's end looks whole to it: the batch (at
            // most `batch.max_rows` there, no streams) is read whole first,
            // so that its blocks go out back to back, as the first time.
            let (sources, tail, stats) =
                (self.sources.clone(), self.tail.clone(), self.stats.clone());
            let mut batch = Batch::default();
            for chunk in Reread::new(spans, &sources, &tail, &stats) {
                match chunk {
                    Ok(c) => batch.push(c),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read rows of the interrupted batch again; they are not re-sent")
                    }
                }
            }
            if batch.chunks.is_empty() {
                return true;
            }
            return self.deliver(&batch, token).await && self.commit_ranges(spans, &[]).await;
        }
        let mut backoff = Backoff::new(self.retry.0, self.retry.1);
        match self.resend(route, spans, token, &mut backoff).await {
            Ok(()) => self.commit_ranges(spans, &[]).await,
            Err(SendError::GaveUp) => false,
            Err(SendError::Bad(f)) => {
                tracing::warn!(
                    code = f.code,
                    "ClickHouse rejected the re-sent batch as bad data; sending it again as batches to isolate the bad rows: {}",
                    f.message
                );
                self.split(spans).await
            }
        }
    }

    /// A catch-up stream (README, "Catch-up"): the batch's rows, then each
    /// chunk `more` brings, in one INSERT under the batch's token. Each
    /// chunk is dropped once sent, giving its share of the queue back; a
    /// retry, a crash replay or a split reads the rows again from the
    /// files. The manifest, naming every range, is written before the
    /// body's end, the only moment the server commits anything of it.
    async fn stream(
        &mut self,
        head: Batch,
        mut more: mpsc::Receiver<Chunk>,
        token: &str,
    ) -> Streamed {
        let route = head.route;
        let r = usize::from(route);
        let (sql, native) = (self.sqls[r].clone(), self.natives[r].clone());
        let sent_token = self.dedup_tokens.then_some(token);
        let mut open = Some(
            self.server
                .stream(&sql, native.as_deref(), sent_token, self.version),
        );
        let mut failure: Option<Failure> = None;
        let mut spans: Vec<Span> = Vec::new();
        // Each chunk's event times as (sum, count), for the delay metric.
        let mut times: Vec<(i64, usize)> = Vec::new();
        let mut rows = 0;
        let mut head = head.chunks.into_iter();
        let mut give_up = self.give_up.clone();
        self.liveness.insert_started.now();
        loop {
            let chunk = match head.next() {
                Some(c) => c,
                None => tokio::select! {
                    c = more.recv() => match c {
                        Some(c) => c,
                        None => break,
                    },
                    _ = give_up.wait_for(|g| *g) => {
                        // Dropped before its end: the server commits none
                        // of it, and the rows stay in the files.
                        self.liveness.insert_started.clear();
                        return Streamed { rows, inserted: 0, committed: false };
                    }
                },
            };
            rows += chunk.rows.len();
            if !chunk.times.is_empty() {
                times.push((chunk.times.iter().sum(), chunk.times.len()));
            }
            Span::extend(&mut spans, Span::of(&chunk));
            if let (Some(stream), None) = (open.as_mut(), &failure) {
                match stream.rows(&chunk.data).await {
                    // A stream that moves is not stuck, however long it
                    // lasts (the watchdog's grace is per exchange).
                    Ok(()) => self.liveness.insert_started.now(),
                    Err(f) => {
                        // The rest still comes through `more`, to be re-sent.
                        failure = Some(f);
                        open = None;
                    }
                }
            }
        }
        let ranges: Vec<ChunkRange> = spans.iter().map(|s| s.range).collect();
        let result = match (open, failure) {
            (Some(stream), None) => {
                if !self.record_ranges(&ranges, token).await {
                    self.liveness.insert_started.clear();
                    return Streamed {
                        rows,
                        inserted: 0,
                        committed: false,
                    };
                }
                stream.end().await
            }
            (_, Some(f)) => Err(f),
            (None, None) => unreachable!("a stream is dropped only on a failure"),
        };
        let mut backoff = Backoff::new(self.retry.0, self.retry.1);
        let sent = match self.after(result, &mut backoff, rows).await {
            Next::Done => Ok(()),
            Next::Bad(f) => Err(SendError::Bad(f)),
            // The manifest may not be written yet (a stream cut short).
            Next::Retry => {
                if self.record_ranges(&ranges, token).await {
                    self.resend(route, &spans, token, &mut backoff).await
                } else {
                    Err(SendError::GaveUp)
                }
            }
        };
        let committed = match sent {
            Ok(()) => {
                tracing::info!(
                    rows,
                    ranges = spans.len(),
                    "catch-up stream inserted: {rows} rows in one INSERT"
                );
                return Streamed {
                    rows,
                    inserted: rows,
                    committed: self.commit_ranges(&spans, &times).await,
                };
            }
            Err(SendError::GaveUp) => false,
            Err(SendError::Bad(f)) => {
                tracing::warn!(
                    rows,
                    code = f.code,
                    "ClickHouse rejected a catch-up stream as bad data; sending it again as batches to isolate the bad rows: {}",
                    f.message
                );
                self.split(&spans).await
            }
        };
        Streamed {
            rows,
            inserted: if committed { rows } else { 0 },
            committed,
        }
    }

    /// One INSERT of the rows of `spans`, read again from the files,
    /// retried until it succeeds, fails as bad data, or the shutdown
    /// deadline passes between attempts. The manifest is on disk already.
    async fn resend(
        &mut self,
        route: u16,
        spans: &[Span],
        token: &str,
        backoff: &mut Backoff,
    ) -> Result<(), SendError> {
        loop {
            if *self.give_up.borrow() {
                return Err(SendError::GaveUp);
            }
            if backoff.attempts() > 0 {
                self.stats.insert_retries.fetch_add(1, Ordering::Relaxed);
            }
            self.liveness.insert_started.now();
            let (result, rows) = self.resend_once(route, spans, token).await;
            match self.after(result, backoff, rows).await {
                Next::Done => return Ok(()),
                Next::Bad(f) => return Err(SendError::Bad(f)),
                Next::Retry => {}
            }
        }
    }

    /// One attempt of [`Inserter::resend`]: the result, and the rows read.
    async fn resend_once(
        &self,
        route: u16,
        spans: &[Span],
        token: &str,
    ) -> (Result<(), Failure>, usize) {
        let r = usize::from(route);
        let mut stream = self.server.stream(
            &self.sqls[r],
            self.natives[r].as_deref(),
            self.dedup_tokens.then_some(token),
            self.version,
        );
        let mut rows = 0;
        for chunk in Reread::new(spans, &self.sources, &self.tail, &self.stats) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let failure = Failure {
                        class: Class::Transient,
                        code: None,
                        message: format!("cannot read the rows to re-send again: {e}"),
                    };
                    return (Err(failure), rows);
                }
            };
            rows += chunk.rows.len();
            if let Err(f) = stream.rows(&chunk.data).await {
                return (Err(f), rows);
            }
            self.liveness.insert_started.now();
        }
        (stream.end().await, rows)
    }

    /// The rows of `spans`, which the server rejected as bad data in one
    /// INSERT, sent again as batches of `batch.max_rows`, each recorded,
    /// sent (split further until the bad rows stand alone) and committed
    /// in turn: a crash meanwhile re-sends only the batch in flight. False
    /// if the shutdown deadline stopped it first.
    async fn split(&mut self, spans: &[Span]) -> bool {
        let (sources, tail, stats) = (self.sources.clone(), self.tail.clone(), self.stats.clone());
        let mut reread = Reread::new(spans, &sources, &tail, &stats);
        let mut batch = Batch::default();
        loop {
            let next = reread.next();
            let full = match &next {
                Some(Ok(c)) => {
                    batch.rows + c.rows.len() > self.limits.max_rows
                        || batch.bytes + c.data.len() > self.limits.max_bytes
                }
                _ => true,
            };
            if full && !batch.chunks.is_empty() {
                let b = std::mem::take(&mut batch);
                let token = batch::token(&b);
                let done = self.record(&b, &token).await
                    && self.deliver(&b, &token).await
                    && self.commit(&b).await;
                if !done {
                    return false;
                }
            }
            match next {
                None => return true,
                Some(Ok(c)) => batch.push(c),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot read rows of a rejected batch again; they are not sent");
                }
            }
        }
    }

    /// Writes to the state directory with `write` until it succeeds. While
    /// it fails, the error is logged once a minute (ERROR: nothing is
    /// shipped until it is fixed), counted, and shown by `/ready` and the
    /// status line. False if the shutdown deadline passed first.
    async fn persist<F>(&self, what: &'static str, write: F) -> bool
    where
        F: Fn() -> std::io::Result<()> + Clone + Send + 'static,
    {
        let mut backoff = Backoff::new(self.retry.0, self.retry.1.min(PERSIST_MAX_BACKOFF));
        let mut logged: Option<std::time::Instant> = None;
        loop {
            let attempt = write.clone();
            let result = match tokio::task::spawn_blocking(attempt).await {
                Ok(r) => r,
                Err(e) => Err(std::io::Error::other(e)),
            };
            match result {
                Ok(()) => {
                    if self.state.succeeded() {
                        tracing::info!(dir = %self.state_dir.display(), "the state directory can be written again; shipping resumes");
                    }
                    return true;
                }
                Err(e) => {
                    let first = self.state.failed(&format!("cannot write {what}: {e}"));
                    if first || logged.is_none_or(|t| t.elapsed() >= STATE_LOG_EVERY) {
                        logged = Some(std::time::Instant::now());
                        tracing::error!(dir = %self.state_dir.display(), error = %e, "cannot write {what}; nothing more is sent until it can be written (retrying)");
                    }
                }
            }
            if *self.give_up.borrow() {
                return false;
            }
            let delay = backoff.next_delay();
            let mut give_up = self.give_up.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = give_up.wait_for(|g| *g) => {}
            }
        }
    }

    /// Records the batch's manifest before it is sent (invariant 3), and,
    /// first, any file first seen since the last checkpoint: a manifest
    /// must never name a file the state on disk does not know. False (and
    /// nothing sent) if the shutdown deadline passed while the state
    /// directory could not be written.
    async fn record(&mut self, batch: &Batch, token: &str) -> bool {
        let ranges = ChunkRange::runs(batch.chunks.iter().map(|c| ChunkRange {
            file: c.file,
            start: c.start,
            end: c.end,
        }));
        self.record_ranges(&ranges, token).await
    }

    /// [`Inserter::record`] for the ranges of a batch or a stream.
    async fn record_ranges(&mut self, ranges: &[ChunkRange], token: &str) -> bool {
        let unsaved = self.ledger.take_changes().then(|| self.ledger.snapshot());
        if let Some(snapshot) = unsaved {
            let dir = self.state_dir.clone();
            let snapshot = Arc::new(snapshot);
            let saved = self
                .persist("the checkpoint", move || checkpoint::save(&dir, &snapshot))
                .await;
            if !saved {
                // Registrations stay to be written with the next snapshot.
                self.ledger.mark_unsaved();
                return false;
            }
        }
        let manifest = Manifest {
            token: token.to_string(),
            chunks: ranges.to_vec(),
        };
        let dir = self.state_dir.clone();
        let manifest = Arc::new(manifest);
        self.persist("the batch's manifest (inflight.json)", move || {
            manifest.save(&dir)
        })
        .await
    }

    /// Inserts every row of `batch` or quarantines it; false if the
    /// shutdown deadline stopped it first.
    async fn deliver(&mut self, batch: &Batch, token: &str) -> bool {
        let token = self.dedup_tokens.then_some(token);
        let parts = batch.chunks.iter().map(|c| c.data.clone()).collect();
        match self.send(batch.route, parts, token, batch.rows).await {
            Ok(()) => true,
            Err(SendError::GaveUp) => false,
            Err(SendError::Bad(f)) => {
                tracing::warn!(
                    rows = batch.rows,
                    code = f.code,
                    "ClickHouse rejected a batch as bad data; splitting it to isolate the bad rows: {}",
                    f.message
                );
                self.bisect(batch, token).await
            }
        }
    }

    /// Splits the batch's rows in halves until each bad row stands alone.
    async fn bisect(&mut self, batch: &Batch, token: Option<&str>) -> bool {
        let index: Vec<(usize, usize)> = batch
            .chunks
            .iter()
            .enumerate()
            .flat_map(|(c, chunk)| (0..chunk.rows.len()).map(move |r| (c, r)))
            .collect();
        let mut todo = vec![(0, index.len())];
        while let Some((a, b)) = todo.pop() {
            let parts = slice_parts(batch, &index[a..b]);
            let sub_token = token.map(|t| {
                let h = XxHash64::oneshot(0, format!("{t}/{a}-{b}").as_bytes());
                format!("{t}-{h:016x}")
            });
            match self
                .send(batch.route, parts, sub_token.as_deref(), b - a)
                .await
            {
                Ok(()) => {}
                Err(SendError::GaveUp) => return false,
                Err(SendError::Bad(f)) if b - a == 1 => {
                    let (c, r) = index[a];
                    let chunk = &batch.chunks[c];
                    let offset = chunk.rows[r].offset;
                    let line = read_line_at(&chunk.handle, offset);
                    let reason = Reject::Server(f.message);
                    // The row is skipped only once its record is written.
                    loop {
                        let put = self
                            .quarantine
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(&chunk.path, offset, &reason, &line, false);
                        if put.is_ok() {
                            break;
                        }
                        if *self.give_up.borrow() {
                            return false;
                        }
                        let mut give_up = self.give_up.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            _ = give_up.wait_for(|g| *g) => {}
                        }
                    }
                }
                Err(SendError::Bad(_)) => {
                    let mid = a + (b - a) / 2;
                    todo.push((mid, b));
                    todo.push((a, mid));
                }
            }
        }
        true
    }

    /// One INSERT, retried until it succeeds, fails as bad data, or the
    /// shutdown deadline passes between attempts.
    async fn send(
        &mut self,
        route: u16,
        parts: Vec<bytes::Bytes>,
        token: Option<&str>,
        rows: usize,
    ) -> Result<(), SendError> {
        let mut backoff = Backoff::new(self.retry.0, self.retry.1);
        loop {
            if *self.give_up.borrow() {
                return Err(SendError::GaveUp);
            }
            let sql = &self.sqls[usize::from(route)];
            let native = self.natives[usize::from(route)].as_deref();
            if backoff.attempts() > 0 {
                self.stats.insert_retries.fetch_add(1, Ordering::Relaxed);
            }
            self.liveness.insert_started.now();
            let result = self
                .server
                .insert(
                    sql,
                    native,
                    &parts,
                    token,
                    self.version,
                    self.distributed[usize::from(route)],
                )
                .await;
            match self.after(result, &mut backoff, rows).await {
                Next::Done => return Ok(()),
                Next::Bad(f) => return Err(SendError::Bad(f)),
                Next::Retry => {}
            }
        }
    }

    /// After an attempt to insert `rows`: counted, logged and reported to
    /// the liveness; on a failure to retry, the backoff's wait (cut short
    /// by the shutdown deadline).
    async fn after(
        &mut self,
        result: Result<(), Failure>,
        backoff: &mut Backoff,
        rows: usize,
    ) -> Next {
        self.liveness.insert_started.clear();
        self.liveness.set_reachable(match &result {
            Ok(()) => true,
            Err(f) => f.class == Class::BadData,
        });
        let failure = match result {
            Ok(()) => {
                self.liveness.last_insert.now();
                self.pressure.calm_insert();
                if backoff.attempts() > 0 {
                    tracing::info!(
                        attempts = backoff.attempts() + 1,
                        "ClickHouse accepts inserts again"
                    );
                }
                self.stats.batches_inserted.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rows_inserted
                    .fetch_add(rows as u64, Ordering::Relaxed);
                return Next::Done;
            }
            Err(f) => f,
        };
        self.stats.count_failure(failure.class);
        if failure.class == Class::BadData {
            return Next::Bad(failure);
        }
        if failure.is_parts_pressure() {
            // Fewer, bigger inserts give the server's merges time.
            self.pressure.raise();
        }
        if failure.class == Class::Operator {
            // Skip the quick retries: nothing changes until someone acts.
            while backoff.attempts() < 16 {
                backoff.next_delay();
            }
        }
        // Another replica may take it; the same token goes with it.
        self.server.fail_over();
        let delay = backoff.next_delay();
        match failure.class {
            Class::Operator => tracing::error!(
                code = failure.code,
                retry_in = ?delay,
                rows,
                "ClickHouse refuses the insert; {}: {}",
                failure.advice(),
                failure.message
            ),
            _ => tracing::warn!(
                code = failure.code,
                retry_in = ?delay,
                attempt = backoff.attempts(),
                rows,
                "insert failed, will retry: {}{}",
                failure.message,
                failure.meaning().map(|m| format!(" ({m})")).unwrap_or_default()
            ),
        }
        let mut give_up = self.give_up.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = give_up.wait_for(|g| *g) => {}
        }
        Next::Retry
    }

    /// Advances and persists the offsets the batch covered. False if the
    /// shutdown deadline passed while the state could not be written.
    async fn commit(&mut self, batch: &Batch) -> bool {
        // The delay from each event's own time to its acknowledgement.
        let now = i64::try_from(crate::stats::now_ms()).unwrap_or(i64::MAX);
        self.stats.delay.observe_all_ms(
            batch
                .chunks
                .iter()
                .flat_map(|c| c.times.iter().map(move |t| now - t)),
        );
        let ends: Vec<(crate::identity::FileId, u64)> =
            batch.ranges().iter().map(|r| (r.file, r.end)).collect();
        self.persist_commit(ends).await
    }

    /// [`Inserter::commit`] for a stream or a replay: its spans, and its
    /// chunks' event times as (sum, count), each chunk's events taken at
    /// their mean time (a chunk is a few hundred consecutive lines).
    async fn commit_ranges(&mut self, spans: &[Span], times: &[(i64, usize)]) -> bool {
        let now = i64::try_from(crate::stats::now_ms()).unwrap_or(i64::MAX);
        self.stats
            .delay
            .observe_all_ms(times.iter().flat_map(|&(sum, n)| {
                let mean = sum / i64::try_from(n).unwrap_or(i64::MAX).max(1);
                std::iter::repeat_n(now - mean, n)
            }));
        let ends: Vec<(crate::identity::FileId, u64)> =
            spans.iter().map(|s| (s.range.file, s.range.end)).collect();
        self.persist_commit(ends).await
    }

    async fn persist_commit(&mut self, ends: Vec<(crate::identity::FileId, u64)>) -> bool {
        let snapshot = self.ledger.commit(ends);
        let dir = self.state_dir.clone();
        let snapshot = Arc::new(snapshot);
        self.persist("the checkpoint", move || checkpoint::save(&dir, &snapshot))
            .await
    }
}

/// The encoded bytes of the given rows, as contiguous slices per chunk.
fn slice_parts(batch: &Batch, rows: &[(usize, usize)]) -> Vec<bytes::Bytes> {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let (c, first) = rows[i];
        let mut last = first;
        while i + 1 < rows.len() && rows[i + 1].0 == c {
            i += 1;
            last = rows[i].1;
        }
        parts.push(batch.chunks[c].row_bytes(first, last + 1));
        i += 1;
    }
    parts
}

/// Best effort: the line at `offset` of the chunk's own file (read through
/// the handle it was read from, whatever has its path now), for the
/// quarantine record.
fn read_line_at(file: &std::fs::File, offset: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 64 << 10];
    let n = file.read_at(&mut buf, offset).unwrap_or(0);
    buf.truncate(n);
    if let Some(end) = memchr::memchr(b'\n', &buf) {
        buf.truncate(end);
    }
    buf
}
