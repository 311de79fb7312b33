//! Reading: the new bytes of one tracked file become chunks in the queue.
//!
//! Input: an open file and the offset its lines were handed out to. Output:
//! [`Chunk`]s of encoded rows, each naming the exact byte range it covers,
//! pushed into the bounded queue (which blocks when full: invariant 1).
//! Lines that cannot be rows go to the quarantine with file, offset and
//! reason; their bytes still count as covered (invariant 4). Each chunk's
//! buffers are copied out at their exact length, so a few rows never pin a
//! whole read-sized allocation while they wait in the queue.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::lines::{self, Piece};
use super::paths::{has_compressed_magic, line_body};
use super::{Tracked, lock};
use crate::identity::{FileId, Identity};
use crate::liveness::Beat;
use crate::parse::{self, LineMeta, Reject};
use crate::quarantine::Quarantine;
use crate::queue::{Cancelled, Chunk, Queue, RowMark};
use crate::stats::Stats;

/// A chunk is handed to the queue once its encoded rows reach this size, or
/// this many rows (or `batch.max_rows`, if smaller). Below the allocator's
/// mmap threshold (128 KiB, main.rs) with room for a row: a chunk's copy
/// then comes from the heap, not from fresh zeroed pages (the page faults
/// were a twentieth of chtail's CPU at 128 KiB).
pub(crate) const CHUNK_BYTES: usize = 112 << 10;
pub(crate) const CHUNK_ROWS: usize = 4096;

/// Turns lines into rows, and rejected lines into quarantine records.
pub(crate) struct LineEncoder<'a> {
    enc: &'a parse::Encoder,
    /// The JSON strings of the metadata: host, read time, path.
    host: &'a str,
    now: String,
    path: String,
    /// `None` when re-reading for a replay: those lines were quarantined
    /// the first time.
    quarantine: Option<&'a Mutex<Quarantine>>,
    /// How to wait on the quarantine's disk.
    waiting: Option<Waiting<'a>>,
    stats: &'a Stats,
    max_line: usize,
}

/// What the read loop needs besides the file itself.
pub(super) struct Sink<'a> {
    pub(super) enc: LineEncoder<'a>,
    pub(super) route: u16,
    pub(super) queue: &'a Queue,
    pub(super) waiting: Waiting<'a>,
    pub(super) chunk_rows: usize,
}

/// How the tailer waits, for room in the queue or for the state disk: it
/// beats while it waits (backpressure working is not a stuck tailer) and
/// gives up once told to stop.
#[derive(Clone, Copy)]
pub(crate) struct Waiting<'a> {
    pub(super) cancel: &'a AtomicBool,
    pub(super) beat: &'a Beat,
}

impl Waiting<'_> {
    /// Beats; false once the tailer is told to stop.
    pub(super) fn go_on(self) -> bool {
        self.beat.now();
        !self.cancel.load(Ordering::Relaxed)
    }
}

pub(super) enum ReadError {
    Cancelled,
    Io(std::io::Error),
}

/// Builds one chunk of a file's consecutive lines. One builder is reused
/// for every read: a finished chunk gets copies of its buffers at their
/// exact length, so what waits in the queue is what the queue counts.
pub(crate) struct ChunkBuilder {
    start: u64,
    pub(crate) end: u64,
    rows: Vec<RowMark>,
    data: Vec<u8>,
    times: Vec<i64>,
}

/// Where a chunk's lines come from.
pub(crate) struct Origin<'a> {
    pub(crate) route: u16,
    pub(crate) source: u16,
    pub(crate) file: FileId,
    pub(crate) identity: Identity,
    pub(crate) path: &'a Arc<Path>,
    pub(crate) handle: &'a Arc<File>,
}

impl Origin<'_> {
    /// A chunk of no rows covering `start..end`: it commits the file past
    /// those bytes, in order behind the chunks queued before it.
    pub(crate) fn empty_chunk(&self, start: u64, end: u64) -> Chunk {
        Chunk {
            route: self.route,
            source: self.source,
            file: self.file,
            identity: self.identity,
            path: self.path.clone(),
            handle: self.handle.clone(),
            start,
            end,
            rows: Vec::new(),
            data: Bytes::new(),
            times: Vec::new(),
            held: None,
        }
    }
}

impl Tracked {
    /// The source index as chunks carry it (the sources are a config's,
    /// far fewer than 65,536).
    fn source_index(&self) -> u16 {
        u16::try_from(self.source).unwrap_or(u16::MAX)
    }

    fn origin(&self, route: u16) -> Origin<'_> {
        Origin {
            route,
            source: self.source_index(),
            file: self.id,
            identity: self.identity,
            path: &self.path,
            handle: &self.file,
        }
    }
}

impl ChunkBuilder {
    pub(crate) fn new(at: u64) -> Self {
        ChunkBuilder {
            start: at,
            end: at,
            rows: Vec::new(),
            data: Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 2)),
            times: Vec::new(),
        }
    }

    /// Starts a new chunk at `at`, keeping the buffers (a buffer grown far
    /// past a chunk's size by one long line is given back).
    pub(crate) fn reset(&mut self, at: u64) {
        self.start = at;
        self.end = at;
        self.rows.clear();
        self.times.clear();
        self.data.clear();
        if self.data.capacity() > 4 * CHUNK_BYTES {
            self.data = Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 2));
        }
        if self.rows.capacity() > 4 * CHUNK_ROWS {
            self.rows = Vec::new();
            self.times = Vec::new();
        }
    }

    /// The lines built so far, as a chunk; the builder goes on after them.
    /// Bytes of rows, and rows, taken so far.
    pub(crate) fn data_len(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn rows_len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn take_chunk(&mut self, origin: &Origin<'_>) -> Option<Chunk> {
        if self.end == self.start {
            return None;
        }
        let chunk = Chunk {
            route: origin.route,
            source: origin.source,
            file: origin.file,
            identity: origin.identity,
            path: origin.path.clone(),
            handle: origin.handle.clone(),
            start: self.start,
            end: self.end,
            rows: self.rows.to_vec(),
            times: self.times.to_vec(),
            data: Bytes::copy_from_slice(&self.data),
            held: None,
        };
        self.reset(self.end);
        Some(chunk)
    }
}

/// What a read of one file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Nothing new.
    Nothing,
    /// New lines, read to the file's end.
    ToEnd,
    /// New lines, and the round's share of reading ended before the
    /// file's end: more is waiting.
    More,
}

pub(super) fn read_file(
    t: &mut Tracked,
    sink: &Sink<'_>,
    buf: &mut [u8],
    builder: &mut ChunkBuilder,
) -> Result<Read, ReadError> {
    builder.reset(t.splitter.emitted_offset());
    // Field by field: the splitter is borrowed mutably beside it.
    let origin = Origin {
        route: sink.route,
        source: t.source_index(),
        file: t.id,
        identity: t.identity,
        path: &t.path,
        handle: &t.file,
    };
    let mut budget = buf.len() * 8;
    let mut progress = false;
    let mut more = false;
    loop {
        let at = t.splitter.fed_offset();
        let n = t.file.read_at(buf, at).map_err(ReadError::Io)?;
        if n == 0 {
            // Read to its end: what was read is handed out; only a partial
            // last line stays, so many files read in one round do not each
            // keep a read-sized buffer.
            t.splitter.release_memory();
            break;
        }
        if at == 0 && has_compressed_magic(&buf[..n]) {
            tracing::warn!(path = %t.path.display(), "file matched by a source is compressed; skipping it (point the glob at uncompressed files only)");
            t.compressed = true;
            return Ok(Read::Nothing);
        }
        progress = true;
        sink.enc
            .stats
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        t.splitter.feed(&buf[..n]);
        let (mut lines, mut rows) = (0, 0);
        while let Some(piece) = t.splitter.next_piece() {
            let end = piece.end();
            lines += 1;
            match sink.enc.piece(piece, origin.path, builder) {
                Ok(row) => rows += u64::from(row),
                Err(Cancelled) => {
                    sink.enc.count(lines - 1, rows);
                    return Err(ReadError::Cancelled);
                }
            }
            builder.end = end;
            if (builder.data.len() >= CHUNK_BYTES || builder.rows.len() >= sink.chunk_rows)
                && let Some(c) = builder.take_chunk(&origin)
            {
                // Counted before a push that may wait for room.
                sink.enc.count(lines, rows);
                (lines, rows) = (0, 0);
                sink.queue
                    .push(c, || sink.waiting.go_on())
                    .map_err(|_| ReadError::Cancelled)?;
            }
        }
        sink.enc.count(lines, rows);
        budget = budget.saturating_sub(n);
        if budget == 0 {
            more = true;
            break;
        }
    }
    if let Some(c) = builder.take_chunk(&origin) {
        sink.queue
            .push(c, || sink.waiting.go_on())
            .map_err(|_| ReadError::Cancelled)?;
    }
    Ok(match (progress, more) {
        (false, _) => Read::Nothing,
        (true, false) => Read::ToEnd,
        (true, true) => Read::More,
    })
}

impl<'a> LineEncoder<'a> {
    pub(crate) fn new(
        enc: &'a parse::Encoder,
        host: &'a str,
        path: &Path,
        quarantine: Option<(&'a Mutex<Quarantine>, Waiting<'a>)>,
        stats: &'a Stats,
        max_line: usize,
    ) -> LineEncoder<'a> {
        // The metadata's JSON text, made once per read, and only if a
        // column takes it.
        let (now, path) = if enc.uses_metadata() {
            let now = parse::time::format_utc(parse::time::now());
            (
                LineMeta::json(&now),
                LineMeta::json(&path.to_string_lossy()),
            )
        } else {
            (String::new(), String::new())
        };
        LineEncoder {
            enc,
            host,
            now,
            path,
            quarantine: quarantine.map(|(q, _)| q),
            waiting: quarantine.map(|(_, w)| w),
            stats,
            max_line,
        }
    }

    /// Turns one piece into a row in `b` (`Ok(true)`), or into a
    /// quarantine record or nothing (`Ok(false)`); the caller counts both
    /// with [`LineEncoder::count`], once per read rather than per line.
    /// `Err` only when told to stop while the quarantine could not be
    /// written: the line was then not dealt with, and nothing past it may
    /// be handed out.
    pub(crate) fn piece(
        &self,
        piece: Piece<'_>,
        path: &Path,
        b: &mut ChunkBuilder,
    ) -> Result<bool, Cancelled> {
        match piece {
            Piece::Line { start, line } => {
                let Some(line) = line_body(line, start) else {
                    return Ok(false);
                };
                let meta = LineMeta {
                    path: &self.path,
                    offset: start,
                    host: self.host,
                    ingest_time: &self.now,
                };
                match self.enc.encode_line(line, &meta, &mut b.data) {
                    Ok(done) => {
                        if done.ignored > 0 {
                            self.stats
                                .keys_ignored
                                .fetch_add(u64::from(done.ignored), Ordering::Relaxed);
                        }
                        b.times.extend(done.time_ms);
                        b.rows.push(RowMark {
                            offset: start,
                            // A chunk is cut at CHUNK_BYTES and a row's
                            // line is at most MAX_LINE_LIMIT: far below 4 GiB.
                            end: u32::try_from(b.data.len()).expect("a chunk under 4 GiB"),
                        });
                        Ok(true)
                    }
                    Err(reject) => self
                        .reject(path, start, &reject, line, false)
                        .map(|()| false),
                }
            }
            Piece::TooLong { start, len, head } => {
                let reject = Reject::TooLong {
                    len,
                    max: self.max_line,
                };
                self.reject(path, start, &reject, head, true)
                    .map(|()| false)
            }
        }
    }

    /// Adds what [`LineEncoder::piece`] did to the metrics: `lines`
    /// pieces, `rows` of them rows.
    pub(crate) fn count(&self, lines: u64, rows: u64) {
        self.stats.lines_read.fetch_add(lines, Ordering::Relaxed);
        self.stats.rows_parsed.fetch_add(rows, Ordering::Relaxed);
    }

    /// Writes a quarantine record, waiting while the quarantine file cannot
    /// be written (its error is logged, rate limited, by the quarantine):
    /// a bad line is skipped only once its record exists. `Err` when told
    /// to stop meanwhile.
    pub(super) fn reject(
        &self,
        path: &Path,
        offset: u64,
        reason: &Reject,
        line: &[u8],
        truncated: bool,
    ) -> Result<(), Cancelled> {
        let Some(q) = self.quarantine else {
            return Ok(());
        };
        loop {
            if lock(q).put(path, offset, reason, line, truncated).is_ok() {
                return Ok(());
            }
            for _ in 0..10 {
                if !self.waiting.is_none_or(Waiting::go_on) {
                    return Err(Cancelled);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Quarantines the unterminated last line of a released file and commits
/// past it through an empty chunk, so its offset still advances in order.
pub(super) fn flush_incomplete(t: &Tracked, sink: &Sink<'_>) -> Result<(), Cancelled> {
    let start = t.splitter.emitted_offset();
    let end = t.splitter.fed_offset();
    let len =
        usize::try_from(end - start).map_or(lines::TOO_LONG_HEAD, |n| n.min(lines::TOO_LONG_HEAD));
    let mut head = vec![0u8; len];
    let n = t.file.read_at(&mut head, start).unwrap_or(0);
    head.truncate(n);
    let reject = Reject::InvalidJson("incomplete last line (no newline) in a rotated file".into());
    sink.enc
        .reject(&t.path, start, &reject, &head, n as u64 != end - start)?;
    sink.queue
        .push(t.origin(sink.route).empty_chunk(start, end), || {
            sink.waiting.go_on()
        })
}

/// Commits a file past `end` without rows of its own, in order behind the
/// chunks already queued (a copy whose first bytes went out as its
/// original's).
pub(super) fn commit_past(t: &Tracked, sink: &Sink<'_>, end: u64) -> Result<(), Cancelled> {
    sink.queue
        .push(t.origin(sink.route).empty_chunk(end, end), || {
            sink.waiting.go_on()
        })
}

/// This machine's host name, for the host metadata column.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
