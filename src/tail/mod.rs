//! Tail stage: finds the bot's files, reads their complete lines, parses
//! them, and pushes the rows into the queue.
//!
//! Input: the `[[source]]` globs and the committed offsets. Output:
//! [`Chunk`]s into the [`Queue`], each naming the exact byte range it
//! covers. The tailer owns its readers: one open handle per tracked file,
//! read with positioned reads at exact offsets, so it can resume anywhere
//! and keeps reading a file that was renamed or deleted until its end.
//!
//! Files are tracked by identity (device, inode and a fingerprint of the
//! first bytes), never by path, so that:
//! - a renamed file is the same file (and is not read twice when the glob
//!   also matches its new name); once it no longer matches, it is read to
//!   its end and then released;
//! - a file whose size drops below the read offset, or whose first bytes
//!   changed, was truncated or replaced and is read again from 0;
//! - on start-up, files are matched to their checkpoints by identity, and
//!   files that were rotated away while chtail was down are looked for in
//!   the sources' directories.
//!
//! `notify` only wakes the tailer early; a stat poll every
//! `tail.poll_interval` catches whatever inotify dropped. The tailer runs on
//! its own thread (file reads block) and is the only stage that watches the
//! stop signal: it stops reading, closes the queue, and every later stage
//! drains and ends because its input ended.

pub mod identity;
pub mod lines;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::checkpoint::{Checkpoints, FileId};
use crate::config;
use crate::parse::{self, LineMeta, Reject};
use crate::quarantine::Quarantine;
use crate::queue::{Cancelled, Chunk, Queue, RowMark};
use crate::stats::Stats;
use identity::Identity;
use lines::{LineSplitter, Piece};

/// A chunk is handed to the queue once its encoded rows reach this size, or
/// this many rows (or `batch.max_rows`, if smaller).
const CHUNK_BYTES: usize = 128 << 10;
const CHUNK_ROWS: usize = 4096;
/// A renamed-away file that has not grown for this long, read to its end,
/// is released.
const RELEASE_IDLE: Duration = Duration::from_secs(10);
/// Errors about one path are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
const BOM: &[u8] = b"\xEF\xBB\xBF";
/// How long a new file under a full fingerprint waits, after it was first
/// seen, before it is tracked (a copy being written is complete by then).
const SETTLE_NEW: Duration = Duration::from_millis(200);

/// The stop signal and the wake-ups for the tailer thread.
#[derive(Clone)]
pub struct Control {
    cancel: Arc<AtomicBool>,
    names_changed: Arc<AtomicBool>,
    wake: SyncSender<()>,
}

impl Control {
    /// Tells the tailer to stop reading; it closes the queue when it has.
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }

    fn poke(&self, names: bool) {
        if names {
            self.names_changed.store(true, Ordering::Relaxed);
        }
        let _ = self.wake.try_send(());
    }
}

struct Tracked {
    id: FileId,
    /// The `[[source]]` it belongs to: which encoder and table.
    source: usize,
    path: Arc<Path>,
    file: File,
    identity: Identity,
    splitter: LineSplitter,
    /// No source matches it any more: read it to its end, then release it.
    detached: bool,
    /// Since when reads found nothing new.
    idle_since: Option<Instant>,
    /// A compressed file matched by a glob: never read as text.
    compressed: bool,
    /// A copy of this (live) file: not read until the original is seen
    /// truncated, then read from where the original's reading stopped.
    waiting_for: Option<FileId>,
    /// Where a copy was positioned: until it is written past this offset,
    /// being shorter means "still being copied", not "truncated".
    floor: u64,
    /// When the first bytes were last checked against the fingerprint.
    verified: Option<Instant>,
}

/// How one source's lines become rows, and to which table they go.
#[derive(Clone)]
pub struct SourceRoute {
    /// Glob patterns of the source.
    pub patterns: Vec<String>,
    pub encoder: Arc<parse::Encoder>,
    /// Index of the source's table among the daemon's tables.
    pub route: u16,
}

/// Turns lines into rows, and rejected lines into quarantine records.
struct Encoder<'a> {
    enc: &'a parse::Encoder,
    /// The JSON strings of the metadata: host, read time, path.
    host: &'a str,
    now: String,
    path: String,
    /// `None` when re-reading for a replay: those lines were quarantined
    /// the first time.
    quarantine: Option<&'a Mutex<Quarantine>>,
    stats: &'a Stats,
    max_line: usize,
}

/// The [`Sink`] for file `i` of a tailer, borrowing only the fields it
/// needs, so that the file itself can be borrowed mutably beside it.
macro_rules! sink {
    ($tailer:ident, $i:expr) => {{
        let t = &$tailer.files[$i];
        let src = &$tailer.sources[t.source];
        Sink {
            enc: Encoder::new(
                &src.encoder,
                &$tailer.host,
                &t.path,
                Some(&$tailer.quarantine),
                &$tailer.stats,
                $tailer.cfg.max_line_bytes,
            ),
            route: src.route,
            queue: &$tailer.queue,
            cancel: &$tailer.control.cancel,
            chunk_rows: $tailer.chunk_rows,
        }
    }};
}

/// What the read loop needs besides the file itself.
struct Sink<'a> {
    enc: Encoder<'a>,
    route: u16,
    queue: &'a Queue,
    cancel: &'a AtomicBool,
    chunk_rows: usize,
}

/// What the tailer shares with the other stages.
pub struct Shared {
    pub queue: Arc<Queue>,
    pub checkpoints: Arc<Mutex<Checkpoints>>,
    pub quarantine: Arc<Mutex<Quarantine>>,
    pub stats: Arc<Stats>,
}

pub struct Tailer {
    patterns: Vec<String>,
    sources: Vec<SourceRoute>,
    /// This machine's name as a JSON string, for the host metadata column.
    host: String,
    cfg: config::Tail,
    /// A chunk never holds more rows than a batch may.
    chunk_rows: usize,
    queue: Arc<Queue>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    quarantine: Arc<Mutex<Quarantine>>,
    stats: Arc<Stats>,
    control: Control,
    wake: Receiver<()>,
    files: Vec<Tracked>,
    buf: Vec<u8>,
    last_discovery: Option<Instant>,
    error_logged: HashMap<PathBuf, Instant>,
    /// Files found truncated in place, by their old id: how far they had
    /// been handed out, so that their rotated copy resumes there.
    ghosts: HashMap<FileId, u64>,
    /// New small files not tracked yet, and when they were first seen.
    unsettled: HashMap<(u64, u64), Instant>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Tailer {
    pub fn new(
        sources: Vec<SourceRoute>,
        cfg: config::Tail,
        batch_rows: usize,
        shared: Shared,
    ) -> Tailer {
        let Shared {
            queue,
            checkpoints,
            quarantine,
            stats,
        } = shared;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let control = Control {
            cancel: Arc::new(AtomicBool::new(false)),
            names_changed: Arc::new(AtomicBool::new(false)),
            wake: tx,
        };
        let patterns: Vec<String> = sources.iter().flat_map(|s| s.patterns.clone()).collect();
        let watcher = watch(&patterns, control.clone());
        Tailer {
            patterns,
            sources,
            host: LineMeta::json(&host_name()),
            chunk_rows: batch_rows.clamp(1, CHUNK_ROWS),
            buf: vec![0; cfg.read_buffer_bytes],
            cfg,
            queue,
            checkpoints,
            quarantine,
            stats,
            control,
            wake: rx,
            files: Vec::new(),
            last_discovery: None,
            error_logged: HashMap::new(),
            ghosts: HashMap::new(),
            unsettled: HashMap::new(),
            _watcher: watcher,
        }
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until stopped; then closes the queue.
    pub fn run(mut self) {
        self.discover(true);
        'outer: while !self.control.cancel.load(Ordering::SeqCst) {
            Stats::beat(&self.stats.tail_beat_ms);
            let names = self.control.names_changed.swap(false, Ordering::Relaxed);
            if names
                || self
                    .last_discovery
                    .is_none_or(|t| t.elapsed() >= self.cfg.poll_interval)
            {
                self.discover(false);
            }
            let mut progress = false;
            for i in 0..self.files.len() {
                match self.read(i) {
                    Ok(p) => progress |= p,
                    Err(Cancelled) => break 'outer,
                }
            }
            if let Err(Cancelled) = self.release_finished() {
                break;
            }
            if !progress {
                match self.wake.recv_timeout(self.cfg.poll_interval) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        tracing::debug!("tailer stopped reading");
        self.queue.close();
    }

    fn log_error(&mut self, path: &Path, what: &str, e: &std::io::Error) {
        let now = Instant::now();
        let due = self
            .error_logged
            .get(path)
            .is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_EVERY);
        if due {
            tracing::warn!(path = %path.display(), error = %e, "{what}; will retry");
            self.error_logged.insert(path.to_owned(), now);
        }
    }

    /// Matches the globs against the filesystem: new files are tracked,
    /// moved files followed, vanished files detached.
    fn discover(&mut self, startup: bool) {
        self.last_discovery = Some(Instant::now());
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut settling = HashMap::new();
        let mut found: Vec<PathBuf> = Vec::new();
        for pattern in &self.patterns {
            match glob::glob(pattern) {
                Ok(paths) => found.extend(paths.flatten()),
                Err(e) => tracing::error!(pattern, error = %e, "bad glob"),
            }
        }
        found.sort();
        found.dedup();
        for path in found {
            if is_compressed_name(&path) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Renamed or deleted between the glob and the stat: the
                // next look finds it under its new name, if it has one.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.log_error(&path, "cannot stat a log file", &e);
                    continue;
                }
            };
            let key = (meta.dev(), meta.ino());
            if !seen.insert(key) {
                continue; // the same file under two matching names
            }
            if let Some(t) = self
                .files
                .iter_mut()
                .find(|t| (t.identity.dev, t.identity.ino) == key)
            {
                if *t.path != *path {
                    tracing::info!(id = t.id.0, from = %t.path.display(), to = %path.display(), "file renamed; following it");
                    t.path = Arc::from(path.as_path());
                    lock(&self.checkpoints).set_path(t.id, &path);
                }
                if t.detached {
                    t.detached = false;
                    lock(&self.checkpoints).set_released(t.id, false);
                }
                continue;
            }
            // A small new file may be a copy still being written
            // (copytruncate): judge its identity a moment after it first
            // appeared, or once it has a full fingerprint. Until then it has
            // little or nothing to ship.
            if meta.len() < identity::FINGERPRINT_MAX {
                let now = Instant::now();
                let first_seen = self.unsettled.get(&key).copied().unwrap_or(now);
                settling.insert(key, first_seen);
                if meta.len() == 0 || now.duration_since(first_seen) < SETTLE_NEW {
                    continue;
                }
            }
            match File::open(&path) {
                Ok(file) => self.track(file, &path, false),
                Err(e) => self.log_error(&path, "cannot open a log file", &e),
            }
        }
        self.unsettled = settling;
        for t in &mut self.files {
            if !t.detached && !seen.contains(&(t.identity.dev, t.identity.ino)) {
                tracing::info!(id = t.id.0, path = %t.path.display(), "file no longer matches a source (rotated or deleted); reading it to its end");
                t.detached = true;
            }
        }
        if startup {
            self.find_moved_while_down();
            self.release_unmatched();
        }
    }

    /// Starts tracking an open file, resuming at its checkpoint if one
    /// matches its identity.
    fn track(&mut self, file: File, path: &Path, detached: bool) {
        let identity = match Identity::of(&file) {
            Ok(i) => i,
            Err(e) => return self.log_error(path, "cannot read a log file", &e),
        };
        if self.files.iter().any(|t| t.identity.same_inode(&identity)) {
            return; // already read through another name
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let tracked: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        let mut cp = lock(&self.checkpoints);
        // The same file, seen before: same inode, same first bytes. An
        // entry taken while its file was empty proves nothing (the inode may
        // have been freed and reused since): it only matches if nothing else
        // does, and then the file is read from its start anyway.
        let same_inode: Vec<(FileId, u64, u64)> = cp
            .files()
            .filter(|f| !tracked.contains(&f.id) && f.identity.same_inode(&identity))
            .filter(|f| f.identity.same_content(&file).unwrap_or(false))
            .map(|f| (f.id, f.offset, f.identity.fp_len))
            .collect();
        for (id, _, _) in same_inode.iter().filter(|(_, _, fp)| *fp == 0) {
            cp.forget(*id);
        }
        let known = same_inode
            .iter()
            .filter(|(_, _, fp)| *fp > 0)
            .max_by_key(|(id, _, _)| *id)
            .map(|(id, offset, _)| (*id, *offset));
        // A copy of a known file (copytruncate's rotated copy): another
        // inode starting with the same bytes.
        let copy_of = || {
            cp.files()
                .filter(|f| !f.identity.same_inode(&identity))
                .filter(|f| f.identity.fp_len > 0 && f.identity.fp_len <= size)
                .filter(|f| f.identity.same_content(&file).unwrap_or(false))
                // At least one whole line in common: a line carries its
                // event's time and data, two files do not share one by chance.
                .filter(|f| prefix_has_newline(&file, f.identity.fp_len))
                .max_by_key(|f| f.offset)
                .map(|f| (f.id, f.offset, f.path.clone()))
        };
        let mut waiting_for = None;
        // Where the file was known before: its source is that path's.
        let mut prior: Option<PathBuf> =
            known.and_then(|(id, _)| cp.get(id).map(|f| f.path.clone()));
        let (id, read_from) = match known {
            Some((id, offset)) if offset <= size => {
                cp.set_path(id, path);
                cp.set_released(id, detached);
                (id, offset)
            }
            Some((id, offset)) => {
                tracing::warn!(path = %path.display(), offset, size, "file is shorter than its checkpoint (truncated while chtail was down); reading it from the start");
                cp.forget(id);
                (cp.register(identity, path, 0), 0)
            }
            None => match copy_of() {
                Some((original, committed, original_path)) => {
                    let live = self.files.iter().any(|t| t.id == original);
                    let read_from = match self.ghosts.get(&original) {
                        // The original was truncated: resume where its
                        // reading stopped.
                        Some(&handed_out) => handed_out.max(committed),
                        // The original still holds these bytes and may read
                        // more of them before it is truncated: wait for that.
                        None if live => {
                            waiting_for = Some(original);
                            committed
                        }
                        // Known from the checkpoint only (start-up).
                        None => committed,
                    }
                    .min(size);
                    tracing::info!(path = %path.display(), original = %original_path.display(), offset = read_from, waiting = live, "file is a copy of one already read (copytruncate); reading only what was not read from the original");
                    prior = Some(original_path);
                    // The checkpoint starts at what is committed: a crash
                    // re-sends rather than loses.
                    (
                        cp.register(identity, path, committed.min(read_from)),
                        read_from,
                    )
                }
                None => (cp.register(identity, path, 0), 0),
            },
        };
        // Make sure the fingerprint on record describes what is there now.
        cp.set_identity(id, identity);
        drop(cp);
        if read_from > 0 {
            tracing::info!(id = id.0, path = %path.display(), offset = read_from, size, "resuming file");
        } else {
            tracing::info!(id = id.0, path = %path.display(), size, "tracking new file");
        }
        let source = source_near(&self.sources, prior.as_deref(), path);
        self.files.push(Tracked {
            id,
            source,
            path: Arc::from(path),
            file,
            identity,
            splitter: LineSplitter::new(read_from, self.cfg.max_line_bytes),
            detached,
            idle_since: None,
            compressed: false,
            waiting_for,
            floor: read_from,
            verified: None,
        });
    }

    /// Checkpoint entries that matched no file at start-up belong to files
    /// that are gone: mark them released so they are pruned in time.
    fn release_unmatched(&mut self) {
        let tracked: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        let mut cp = lock(&self.checkpoints);
        let gone: Vec<FileId> = cp
            .files()
            .filter(|f| !tracked.contains(&f.id) && f.released_at.is_none())
            .map(|f| f.id)
            .collect();
        for id in gone {
            cp.set_released(id, true);
        }
    }

    /// Checkpointed files that no glob matched at start-up may have been
    /// rotated to a name outside the globs while chtail was down: look for
    /// them by identity in the sources' directories, and finish them.
    fn find_moved_while_down(&mut self) {
        let missing: Vec<_> = {
            let cp = lock(&self.checkpoints);
            let tracked: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
            cp.files()
                .filter(|f| !tracked.contains(&f.id))
                .map(|f| (f.id, f.identity, f.offset))
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let dirs: HashSet<PathBuf> = self.patterns.iter().map(|p| literal_dir(p)).collect();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() || is_compressed_name(&path) {
                    continue;
                }
                let already = self
                    .files
                    .iter()
                    .any(|t| (t.identity.dev, t.identity.ino) == (meta.dev(), meta.ino()));
                let Some((_, identity, _)) = missing.iter().find(|(_, id, offset)| {
                    id.dev == meta.dev() && id.ino == meta.ino() && *offset < meta.len()
                }) else {
                    continue;
                };
                if already {
                    continue;
                }
                if let Ok(file) = File::open(&path)
                    && identity.same_content(&file).unwrap_or(false)
                {
                    tracing::info!(path = %path.display(), "found a file rotated while chtail was down, with unread lines");
                    self.track(file, &path, true);
                }
            }
        }
    }

    /// Reads what is new in file `i`. True if anything was read.
    fn read(&mut self, i: usize) -> Result<bool, Cancelled> {
        let t = &mut self.files[i];
        if t.compressed {
            return Ok(false);
        }
        if let Some(original) = t.waiting_for {
            match self.ghosts.get(&original) {
                Some(&handed_out) => {
                    let from = handed_out.max(t.splitter.emitted_offset());
                    tracing::debug!(
                        id = t.id.0,
                        offset = from,
                        "original truncated; reading its copy"
                    );
                    t.splitter = LineSplitter::new(from, self.cfg.max_line_bytes);
                    t.floor = from;
                    t.waiting_for = None;
                }
                None => return Ok(false),
            }
        }
        // Truncated or replaced in place (copytruncate): start again at 0.
        let size = match t.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                let path = t.path.to_path_buf();
                self.log_error(&path, "cannot stat an open log file", &e);
                return Ok(false);
            }
        };
        let fed = t.splitter.fed_offset();
        let shrunk = size < fed && !(fed == t.floor && size < t.floor);
        // Rewritten in place without shrinking below the offset: the first
        // bytes tell. Checked before every read of new bytes (a file
        // truncated and refilled past the offset must not be read from the
        // middle of a line), and otherwise once per poll interval, so that
        // many idle files cost one fstat each.
        let now = Instant::now();
        let verify = !shrunk
            && fed > 0
            && (size > fed
                || t.verified
                    .is_none_or(|v| now.duration_since(v) >= self.cfg.poll_interval));
        if verify {
            t.verified = Some(now);
        }
        let rewritten = verify && !t.identity.same_content(&t.file).unwrap_or(true);
        if shrunk || rewritten {
            self.restart_truncated(i);
        } else if size <= fed {
            // Nothing new.
            t.idle_since.get_or_insert(now);
            return Ok(false);
        }
        let t = &mut self.files[i];
        if t.identity.fp_len < identity::FINGERPRINT_MAX
            && size > t.identity.fp_len
            && let Ok(Some(longer)) = t.identity.lengthened(&t.file, size)
        {
            t.identity = longer;
            lock(&self.checkpoints).set_identity(t.id, longer);
        }
        let sink = sink!(self, i);
        let t = &mut self.files[i];
        match read_file(t, &sink, &mut self.buf) {
            Ok(progress) => {
                if progress {
                    t.idle_since = None;
                } else if t.idle_since.is_none() {
                    t.idle_since = Some(Instant::now());
                }
                Ok(progress)
            }
            Err(ReadError::Cancelled) => Err(Cancelled),
            Err(ReadError::Io(e)) => {
                let path = t.path.to_path_buf();
                self.log_error(&path, "cannot read a log file", &e);
                Ok(false)
            }
        }
    }

    fn restart_truncated(&mut self, i: usize) {
        let t = &mut self.files[i];
        let Ok(identity) = Identity::of(&t.file) else {
            return;
        };
        tracing::warn!(id = t.id.0, path = %t.path.display(), offset = t.splitter.fed_offset(), "file was truncated or rewritten in place; reading it again from the start");
        // The old entry stays (released) so that the rotated copy, if a
        // source matches it, is recognised and resumed where reading stopped;
        // chunks of the old content still in flight commit to it.
        let mut cp = lock(&self.checkpoints);
        cp.set_released(t.id, true);
        self.ghosts.insert(t.id, t.splitter.emitted_offset());
        t.id = cp.register(identity, &t.path, 0);
        t.identity = identity;
        t.splitter = LineSplitter::new(0, self.cfg.max_line_bytes);
        t.floor = 0;
    }

    /// Releases detached files that were read to their end.
    fn release_finished(&mut self) -> Result<(), Cancelled> {
        let mut i = 0;
        while i < self.files.len() {
            let t = &self.files[i];
            let idle = t.idle_since.map(|s| s.elapsed());
            let deleted = t.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
            let done = t.detached
                && idle.is_some()
                && (deleted || idle >= Some(RELEASE_IDLE) || t.compressed);
            if !done {
                i += 1;
                continue;
            }
            if t.splitter.pending() > 0 && idle >= Some(RELEASE_IDLE) {
                // The writer left a last line without its newline and the
                // file is gone from the sources: it will never complete.
                let sink = sink!(self, i);
                flush_incomplete(&self.files[i], &sink)?;
            } else if t.splitter.pending() > 0 {
                i += 1;
                continue;
            }
            let t = self.files.swap_remove(i);
            tracing::info!(id = t.id.0, path = %t.path.display(), deleted, "finished a rotated file; released it");
            lock(&self.checkpoints).set_released(t.id, true);
        }
        Ok(())
    }
}

enum ReadError {
    Cancelled,
    Io(std::io::Error),
}

/// Builds one chunk of a file's consecutive lines.
struct ChunkBuilder {
    start: u64,
    end: u64,
    rows: Vec<RowMark>,
    data: Vec<u8>,
    times: Vec<i64>,
}

impl ChunkBuilder {
    fn new(at: u64) -> Self {
        ChunkBuilder {
            start: at,
            end: at,
            rows: Vec::new(),
            data: Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 2)),
            times: Vec::new(),
        }
    }

    fn take_chunk(
        &mut self,
        route: u16,
        file: FileId,
        identity: Identity,
        path: &Arc<Path>,
    ) -> Option<Chunk> {
        if self.end == self.start {
            return None;
        }
        let next = ChunkBuilder::new(self.end);
        let done = std::mem::replace(self, next);
        Some(Chunk {
            route,
            file,
            identity,
            path: path.clone(),
            start: done.start,
            end: done.end,
            rows: done.rows,
            times: done.times,
            data: Bytes::from(done.data),
        })
    }
}

fn read_file(t: &mut Tracked, sink: &Sink<'_>, buf: &mut [u8]) -> Result<bool, ReadError> {
    let mut builder = ChunkBuilder::new(t.splitter.emitted_offset());
    let mut budget = buf.len() * 8;
    let mut progress = false;
    loop {
        let at = t.splitter.fed_offset();
        let n = t.file.read_at(buf, at).map_err(ReadError::Io)?;
        if n == 0 {
            break;
        }
        if at == 0 && has_compressed_magic(&buf[..n]) {
            tracing::warn!(path = %t.path.display(), "file matched by a source is compressed; skipping it (point the glob at uncompressed files only)");
            t.compressed = true;
            return Ok(false);
        }
        progress = true;
        sink.enc
            .stats
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        t.splitter.feed(&buf[..n]);
        while let Some(piece) = t.splitter.next_piece() {
            let end = piece.end();
            sink.enc.piece(piece, &t.path, &mut builder);
            builder.end = end;
            if (builder.data.len() >= CHUNK_BYTES || builder.rows.len() >= sink.chunk_rows)
                && let Some(c) = builder.take_chunk(sink.route, t.id, t.identity, &t.path)
            {
                sink.queue
                    .push(c, sink.cancel)
                    .map_err(|_| ReadError::Cancelled)?;
            }
        }
        budget = budget.saturating_sub(n);
        if budget == 0 {
            break;
        }
    }
    if let Some(c) = builder.take_chunk(sink.route, t.id, t.identity, &t.path) {
        sink.queue
            .push(c, sink.cancel)
            .map_err(|_| ReadError::Cancelled)?;
    }
    Ok(progress)
}

impl<'a> Encoder<'a> {
    fn new(
        enc: &'a parse::Encoder,
        host: &'a str,
        path: &Path,
        quarantine: Option<&'a Mutex<Quarantine>>,
        stats: &'a Stats,
        max_line: usize,
    ) -> Encoder<'a> {
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
        Encoder {
            enc,
            host,
            now,
            path,
            quarantine,
            stats,
            max_line,
        }
    }

    fn piece(&self, piece: Piece<'_>, path: &Path, b: &mut ChunkBuilder) {
        self.stats.lines_read.fetch_add(1, Ordering::Relaxed);
        match piece {
            Piece::Line { start, line } => {
                let Some(line) = line_body(line, start) else {
                    return;
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
                            end: b.data.len() as u32,
                        });
                        self.stats.rows_parsed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(reject) => self.reject(path, start, &reject, line, false),
                }
            }
            Piece::TooLong { start, len, head } => {
                let reject = Reject::TooLong {
                    len,
                    max: self.max_line,
                };
                self.reject(path, start, &reject, head, true);
            }
        }
    }

    fn reject(&self, path: &Path, offset: u64, reason: &Reject, line: &[u8], truncated: bool) {
        if let Some(q) = self.quarantine {
            lock(q).put(path, offset, reason, line, truncated);
        }
    }
}

/// Reads bytes `start..end` of `file` again, exactly as they were read the
/// first time, into one chunk: the same bytes always give the same rows.
/// `end` must be a line end. Used to replay a batch after a crash.
pub fn reread(
    file: &File,
    (id, identity): (FileId, Identity),
    path: &Path,
    (start, end): (u64, u64),
    source: &SourceRoute,
    cfg: &config::Tail,
    stats: &Stats,
) -> std::io::Result<Chunk> {
    let host = LineMeta::json(&host_name());
    let enc = Encoder::new(
        &source.encoder,
        &host,
        path,
        None,
        stats,
        cfg.max_line_bytes,
    );
    let mut splitter = LineSplitter::new(start, cfg.max_line_bytes);
    let mut builder = ChunkBuilder::new(start);
    let mut buf = vec![0u8; cfg.read_buffer_bytes];
    while splitter.fed_offset() < end {
        let want = ((end - splitter.fed_offset()) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], splitter.fed_offset())?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} ends before offset {end}", path.display()),
            ));
        }
        splitter.feed(&buf[..n]);
        while let Some(piece) = splitter.next_piece() {
            let piece_end = piece.end();
            enc.piece(piece, path, &mut builder);
            builder.end = piece_end;
        }
    }
    let path: Arc<Path> = Arc::from(path);
    Ok(builder
        .take_chunk(source.route, id, identity, &path)
        .unwrap_or(Chunk {
            route: source.route,
            file: id,
            identity,
            path,
            start,
            end,
            rows: Vec::new(),
            data: Bytes::new(),
            times: Vec::new(),
        }))
}

/// Finds a checkpointed file again: at its recorded path, or by identity
/// in the directories of `patterns` (it may have been rotated since).
pub fn locate(
    entry: &crate::checkpoint::FileState,
    patterns: &[String],
) -> Option<(PathBuf, File)> {
    let is_it = |path: &Path| -> Option<File> {
        let file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let same = meta.dev() == entry.identity.dev
            && meta.ino() == entry.identity.ino
            && entry.identity.same_content(&file).unwrap_or(false);
        same.then_some(file)
    };
    if let Some(f) = is_it(&entry.path) {
        return Some((entry.path.clone(), f));
    }
    let dirs: HashSet<PathBuf> = patterns.iter().map(|p| literal_dir(p)).collect();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            if let Some(f) = is_it(&e.path()) {
                return Some((e.path(), f));
            }
        }
    }
    None
}

/// Quarantines the unterminated last line of a released file and commits
/// past it through an empty chunk, so its offset still advances in order.
fn flush_incomplete(t: &Tracked, sink: &Sink<'_>) -> Result<(), Cancelled> {
    let start = t.splitter.emitted_offset();
    let end = t.splitter.fed_offset();
    let mut head = vec![0u8; (end - start).min(lines::TOO_LONG_HEAD as u64) as usize];
    let n = t.file.read_at(&mut head, start).unwrap_or(0);
    head.truncate(n);
    let reject = Reject::InvalidJson("incomplete last line (no newline) in a rotated file".into());
    sink.enc
        .reject(&t.path, start, &reject, &head, n as u64 != end - start);
    let chunk = Chunk {
        route: sink.route,
        file: t.id,
        identity: t.identity,
        path: t.path.clone(),
        start,
        end,
        rows: Vec::new(),
        data: Bytes::new(),
        times: Vec::new(),
    };
    sink.queue.push(chunk, sink.cancel)
}

/// This machine's host name, for the host metadata column.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The source a path belongs to: the first whose globs match it.
pub fn source_of(sources: &[SourceRoute], path: &Path) -> Option<usize> {
    sources.iter().position(|s| {
        s.patterns.iter().any(|p| {
            glob::Pattern::new(p)
                .map(|g| g.matches_path(path))
                .unwrap_or(false)
        })
    })
}

/// The source of a file found outside the globs (a rotated name): the one
/// its last known path belongs to, else the first source watching its
/// directory.
pub fn source_near(sources: &[SourceRoute], known: Option<&Path>, path: &Path) -> usize {
    known
        .and_then(|k| source_of(sources, k))
        .or_else(|| source_of(sources, path))
        .or_else(|| {
            let dir = path.parent()?;
            sources
                .iter()
                .position(|s| s.patterns.iter().any(|p| literal_dir(p) == dir))
        })
        .unwrap_or(0)
}

fn prefix_has_newline(file: &File, len: u64) -> bool {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0).is_ok() && buf.contains(&b'\n')
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn is_compressed_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("gz" | "bz2" | "xz" | "zst" | "zip" | "lz4" | "Z")
    )
}

/// What of a line (without its `\n`) at offset `start` is parsed: CR and,
/// at the start of a file, a UTF-8 BOM stripped. `None` for a blank line,
/// which is skipped silently.
pub fn line_body(line: &[u8], start: u64) -> Option<&[u8]> {
    let mut line = line.strip_suffix(b"\r").unwrap_or(line);
    if start == 0 {
        line = line.strip_prefix(BOM).unwrap_or(line);
    }
    (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
}

/// gzip, bzip2, xz or zstd.
pub fn has_compressed_magic(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
        || b.starts_with(b"BZh")
        || b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// The directory part of a glob before its first wildcard.
fn literal_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    for comp in Path::new(pattern).components() {
        let s = comp.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            break;
        }
        dir.push(comp);
    }
    if dir.as_os_str() == pattern {
        dir.pop();
    }
    dir
}

/// Watches the sources' directories so that appends and new files wake the
/// tailer at once. Best effort: without it, the poll still finds everything.
fn watch(patterns: &[String], control: Control) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let names = matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            control.poke(names);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for file changes; polling only");
            return None;
        }
    };
    let dirs: HashSet<PathBuf> = patterns.iter().map(|p| literal_dir(p)).collect();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory; polling it");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_dirs() {
        assert_eq!(
            literal_dir("/var/log/argus/events*.jsonl"),
            PathBuf::from("/var/log/argus")
        );
        assert_eq!(
            literal_dir("/var/log/*/events.jsonl"),
            PathBuf::from("/var/log")
        );
        assert_eq!(
            literal_dir("/var/log/argus/events.jsonl"),
            PathBuf::from("/var/log/argus")
        );
    }

    #[test]
    fn compressed_files_are_recognised() {
        assert!(is_compressed_name(Path::new("/l/events.jsonl.2.gz")));
        assert!(!is_compressed_name(Path::new("/l/events.jsonl.1")));
        assert!(has_compressed_magic(&[0x1f, 0x8b, 8]));
        assert!(!has_compressed_magic(b"{\"a\":1}"));
    }
}
