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

mod lines;
mod park;
mod paths;
mod read;
mod resume;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::Registry;
use crate::config;
use crate::identity::{self, FileId, Identity};
use crate::liveness::Beat;
use crate::parse::{self, LineMeta};
use crate::quarantine::Quarantine;
use crate::queue::{Cancelled, Queue};
use crate::stats::Stats;
pub(crate) use lines::LineSplitter as Splitter;
// Public for the per-line micro-benchmark (`benches/line_path.rs`).
pub use lines::{LineSplitter, Piece};
pub(crate) use paths::literal_dir;
pub use paths::{
    file_names, has_compressed_magic, is_compressed_name, line_body, rotations_of_pattern,
    source_near,
};
pub(crate) use read::{CHUNK_BYTES, CHUNK_ROWS, ChunkBuilder, LineEncoder, Origin, host_name};
use read::{Read, ReadError, Sink, Waiting, commit_past, flush_incomplete, read_file};

/// A renamed-away file that has not grown for this long, read to its end,
/// is released.
const RELEASE_IDLE: Duration = Duration::from_secs(10);
/// How long a file must stay detached before it is released (unless it
/// was deleted).
const DETACH_SETTLE: Duration = Duration::from_secs(2);
/// Errors about one path are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// A new file shorter than a full fingerprint is judged (new file, or a
/// copy of a known one) once its size has held still this long: a copy
/// being written is complete by then. A file being appended to reaches a
/// full fingerprint first, so the wait never starves it.
const SETTLE_NEW: Duration = Duration::from_millis(200);
/// ... and once it holds a whole line, since a copy is recognised by a line
/// in common; a file without one has nothing to read yet. One whose only
/// line stays unfinished this long is judged all the same (to be flushed
/// once released, as any file's unfinished last line).
const SETTLE_LINELESS: Duration = Duration::from_secs(10);
/// At most this many files opened by the watcher wait for the tailer; past
/// it the poll finds the rest.
const FRESH_MAX: usize = 4096;
/// Rotations chtail did not see are looked for every this many polls.
const ROTATION_SCAN_POLLS: u32 = 5;
/// After a round that read every file to its end, the next waits this
/// long: the bot writes a line at a time, and read as they come each line
/// would cost a round (a look at every open file) and a chunk of its own
/// (README, "Rotation").
const GATHER: Duration = Duration::from_millis(10);

/// The stop signal and the wake-ups for the tailer thread.
#[derive(Clone)]
pub struct Control {
    cancel: Arc<AtomicBool>,
    names_changed: Arc<AtomicBool>,
    wake: SyncSender<()>,
    /// Files the watcher opened the moment they appeared under a matching
    /// name (or were renamed away from one), for the tailer to take: held
    /// open, a file renamed before the tailer looks is not lost.
    fresh: Arc<Mutex<Vec<(PathBuf, File)>>>,
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

    fn hand_over(&self, path: PathBuf, file: File) {
        let mut fresh = lock(&self.fresh);
        if fresh.len() < FRESH_MAX {
            fresh.push((path, file));
        }
    }

    fn take_fresh(&self) -> Vec<(PathBuf, File)> {
        std::mem::take(&mut *lock(&self.fresh))
    }
}

/// A new file seen but not judged yet (see [`SETTLE_NEW`]), held open.
struct Unsettled {
    file: File,
    /// Where it was last seen.
    path: PathBuf,
    /// Its size, and since when it has had that size.
    size: u64,
    since: Instant,
}

struct Tracked {
    id: FileId,
    /// The `[[source]]` it belongs to: which encoder and table.
    source: usize,
    path: Arc<Path>,
    file: Arc<File>,
    identity: Identity,
    splitter: LineSplitter,
    /// No source matches it any more: read it to its end, then release it.
    detached: bool,
    /// Since when it has been detached: a listing that missed a file being
    /// renamed at that instant (readdir may) detaches it only for a moment,
    /// so a file is released only once it has stayed detached a while.
    detached_at: Option<Instant>,
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
    /// A copy whose reading begins past its committed offset: the bytes
    /// before this one went out as its original's, and an empty chunk
    /// commits past them in order, so that the copy is never taken for
    /// unread even if it yields no line of its own.
    skip_to: Option<u64>,
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
    /// Matching symlinks are read (their targets, by identity); otherwise
    /// skipped.
    pub follow_symlinks: bool,
    /// Globs of paths not read although `patterns` match them.
    pub exclude: Vec<String>,
    pub start_at: config::StartAt,
}

/// What reading a file hands its lines to: the sources' encoders, the
/// queue, the quarantine and the counters. Kept apart from the tracked
/// files so that one file can be read while these are borrowed.
struct Output {
    sources: Vec<SourceRoute>,
    /// This machine's name as a JSON string, for the host metadata column.
    host: String,
    /// A chunk never holds more rows than a batch may.
    chunk_rows: usize,
    max_line: usize,
    queue: Arc<Queue>,
    quarantine: Arc<Mutex<Quarantine>>,
    stats: Arc<Stats>,
    cancel: Arc<AtomicBool>,
    beat: Arc<Beat>,
}

impl Output {
    fn waiting(&self) -> Waiting<'_> {
        Waiting {
            cancel: &self.cancel,
            beat: &self.beat,
        }
    }

    /// Where the lines of `t` go.
    fn sink<'a>(&'a self, t: &Tracked) -> Sink<'a> {
        let src = &self.sources[t.source];
        Sink {
            enc: LineEncoder::new(
                &src.encoder,
                &self.host,
                &t.path,
                Some((&self.quarantine, self.waiting())),
                &self.stats,
                self.max_line,
            ),
            route: src.route,
            queue: &self.queue,
            waiting: self.waiting(),
            chunk_rows: self.chunk_rows,
        }
    }
}

/// What the tailer shares with the other stages.
pub struct Shared {
    pub queue: Arc<Queue>,
    /// The tailer's index of the files it knows; changes go to the ledger.
    pub registry: Registry,
    pub quarantine: Arc<Mutex<Quarantine>>,
    pub stats: Arc<Stats>,
    /// The tailer's liveness beat, for the watchdog.
    pub beat: Arc<Beat>,
}

pub struct Tailer {
    patterns: Vec<String>,
    cfg: config::Tail,
    out: Output,
    registry: Registry,
    control: Control,
    wake: Receiver<()>,
    files: Vec<Tracked>,
    buf: Vec<u8>,
    /// Reused for every read (see [`ChunkBuilder`]).
    builder: ChunkBuilder,
    last_discovery: Option<Instant>,
    error_logged: HashMap<PathBuf, Instant>,
    /// Symlinks skipped (each noted once).
    symlinks_noted: HashSet<PathBuf>,
    /// Files found truncated in place, by their old id: how far they had
    /// been handed out, so that their rotated copy resumes there.
    ghosts: HashMap<FileId, u64>,
    /// New small files not judged yet, by device and inode.
    unsettled: HashMap<(u64, u64), Unsettled>,
    /// Idle files without their descriptor, by (device, inode) (`park`).
    parked: HashMap<(u64, u64), park::Parked>,
    /// Rotations written after this time (the first start with this state)
    /// that chtail does not know are read (`resume::find_unseen_rotations`).
    rotations_since: std::time::SystemTime,
    last_rotation_scan: Option<Instant>,
    /// The first look at the files with an empty state: where a source's
    /// `start_at` applies.
    attaching: bool,
    /// Whether a read this round stopped before its file's end.
    behind: bool,
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
            registry,
            quarantine,
            stats,
            beat,
        } = shared;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let control = Control {
            cancel: Arc::new(AtomicBool::new(false)),
            names_changed: Arc::new(AtomicBool::new(false)),
            wake: tx,
            fresh: Arc::default(),
        };
        let patterns: Vec<String> = sources.iter().flat_map(|s| s.patterns.clone()).collect();
        let rotations_since = registry.watching_since();
        let attaching = registry.files().next().is_none();
        let watcher = paths::watch(&patterns, control.clone());
        Tailer {
            patterns,
            out: Output {
                sources,
                host: LineMeta::json(&host_name()),
                chunk_rows: batch_rows.clamp(1, CHUNK_ROWS),
                max_line: cfg.max_line_bytes,
                queue,
                quarantine,
                stats,
                cancel: control.cancel.clone(),
                beat,
            },
            buf: vec![0; cfg.read_buffer_bytes],
            builder: ChunkBuilder::new(0),
            cfg,
            registry,
            control,
            wake: rx,
            files: Vec::new(),
            last_discovery: None,
            error_logged: HashMap::new(),
            symlinks_noted: HashSet::new(),
            ghosts: HashMap::new(),
            unsettled: HashMap::new(),
            parked: HashMap::new(),
            rotations_since,
            last_rotation_scan: None,
            attaching,
            behind: false,
            _watcher: watcher,
        }
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until stopped; then closes the queue.
    pub fn run(mut self) {
        // The crash replay may have committed since the registry was made.
        self.registry.refresh();
        self.discover(true);
        self.attaching = false;
        'outer: while !self.control.cancel.load(Ordering::SeqCst) {
            self.out.beat.now();
            // What the ledger committed and pruned since the last round.
            self.registry.refresh();
            let names = self.control.names_changed.swap(false, Ordering::Relaxed);
            if names
                || self
                    .last_discovery
                    .is_none_or(|t| t.elapsed() >= self.cfg.poll_interval)
            {
                self.discover(false);
            }
            self.settle();
            let mut progress = false;
            self.behind = false;
            for i in 0..self.files.len() {
                match self.read(i) {
                    Ok(p) => progress |= p,
                    Err(Cancelled) => break 'outer,
                }
            }
            if let Err(Cancelled) = self.release_finished() {
                break;
            }
            self.park_idle();
            if !progress {
                match self.wake.recv_timeout(self.cfg.poll_interval) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if !self.behind {
                std::thread::sleep(GATHER);
            }
        }
        tracing::debug!("tailer stopped reading");
        self.out.queue.close();
    }

    /// An error about a source's file or directory (a permission, no
    /// descriptors left, ...): never taken for "the file is gone". Counted
    /// (`chtail_file_errors_total`) and logged as an ERROR, at most once a
    /// minute per path; the next round tries again, so a fix is picked up
    /// without a restart.
    fn log_error(&mut self, path: &Path, what: &str, e: &std::io::Error) {
        self.out.stats.file_errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let due = self
            .error_logged
            .get(path)
            .is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_EVERY);
        if due {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    " (chtail's user needs read access: add it to the files' group, e.g. SupplementaryGroups= in a drop-in)"
                }
                _ if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) => {
                    " (out of file descriptors: raise LimitNOFILE=)"
                }
                _ => "",
            };
            tracing::error!(path = %path.display(), error = %e, "{what}{hint}; retrying");
            self.error_logged.insert(path.to_owned(), now);
        }
    }

    /// Matches the globs against the filesystem: new files are opened at
    /// once (and judged by [`Tailer::settle`]), moved files followed,
    /// vanished files detached.
    fn discover(&mut self, startup: bool) {
        self.last_discovery = Some(Instant::now());
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<PathBuf> = Vec::new();
        let mut unlistable = Vec::new();
        // A directory chtail may not read hides its files from the glob
        // without an error: look at each source's directory first.
        let mut dirs: Vec<PathBuf> = self.patterns.iter().map(|p| literal_dir(p)).collect();
        dirs.sort();
        dirs.dedup();
        let mut complete = true;
        for dir in dirs {
            match std::fs::read_dir(&dir) {
                Ok(_) => {}
                // Not there yet (the bot has not started): nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    complete = false;
                    self.log_error(&dir, "cannot list a source directory", &e);
                }
            }
        }
        for pattern in &self.patterns {
            match glob::glob(pattern) {
                Ok(paths) => {
                    for p in paths {
                        match p {
                            Ok(p) => found.push(p),
                            Err(e) => unlistable.push(e),
                        }
                    }
                }
                Err(e) => tracing::error!(pattern, error = %e, "bad glob"),
            }
        }
        // A directory that could not be listed says nothing about its
        // files: none of them is taken for rotated away this round.
        let complete = complete && unlistable.is_empty();
        for e in unlistable {
            self.log_error(e.path(), "cannot list a source directory", e.error());
        }
        found.sort();
        found.dedup();
        // What a source's `exclude` globs take out.
        found.retain(|p| self.matches(p));
        // Tracked files by identity: thousands of rotated files may match.
        let mut tracked: HashMap<(u64, u64), usize> = HashMap::new();
        for (i, t) in self.files.iter().enumerate() {
            tracked.entry((t.identity.dev, t.identity.ino)).or_insert(i);
        }
        for path in found {
            if is_compressed_name(&path) {
                continue;
            }
            // One stat for a plain file, the usual case: thousands of
            // rotated files may match.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_symlink() => {
                    if !paths::source_of(&self.out.sources, &path)
                        .is_some_and(|i| self.out.sources[i].follow_symlinks)
                    {
                        if self.symlinks_noted.insert(path.clone()) {
                            tracing::warn!(path = %path.display(), "skipping a symlink that matches a source (set follow_symlinks = true in its [[source]] to read its target)");
                        }
                        continue;
                    }
                    std::fs::metadata(&path)
                }
                other => other,
            };
            let meta = match meta {
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
            if let Some(t) = tracked.get(&key).map(|&i| &mut self.files[i]) {
                if *t.path != *path {
                    tracing::info!(id = t.id.0, from = %t.path.display(), to = %path.display(), "file renamed; following it");
                    t.path = Arc::from(path.as_path());
                    self.registry.set_path(t.id, &path);
                }
                if t.detached {
                    t.detached = false;
                    t.detached_at = None;
                    self.registry.set_released(t.id, false);
                }
                continue;
            }
            if self.is_parked(key) {
                self.seen_parked(key, &path, meta.len(), None);
                continue;
            }
            if let Some(u) = self.unsettled.get_mut(&key) {
                u.path = path;
                continue;
            }
            match File::open(&path) {
                Ok(file) => self.unsettle(file, path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.log_error(&path, "cannot open a log file", &e),
            }
        }
        for t in self.files.iter_mut().filter(|_| complete) {
            if !t.detached && !seen.contains(&(t.identity.dev, t.identity.ino)) {
                tracing::info!(id = t.id.0, path = %t.path.display(), "file no longer matches a source (rotated or deleted); reading it to its end");
                t.detached = true;
                t.detached_at = Some(Instant::now());
            }
        }
        if complete {
            self.parked_unseen(&seen);
        }
        if startup {
            self.settle();
            self.find_moved_while_down();
            self.release_unmatched();
        }
        let due = self
            .last_rotation_scan
            .is_none_or(|t| t.elapsed() >= self.cfg.poll_interval * ROTATION_SCAN_POLLS);
        if due {
            self.last_rotation_scan = Some(Instant::now());
            self.find_unseen_rotations();
        }
    }

    /// Holds a new file open until it can be judged.
    fn unsettle(&mut self, file: File, path: PathBuf) {
        let Ok(meta) = file.metadata() else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        if self.is_parked(key) {
            return self.seen_parked(key, &path, meta.len(), Some(file));
        }
        if self.unsettled.contains_key(&key)
            || self
                .files
                .iter()
                .any(|t| (t.identity.dev, t.identity.ino) == key)
        {
            return;
        }
        self.unsettled.insert(
            key,
            Unsettled {
                file,
                path,
                size: meta.len(),
                since: Instant::now(),
            },
        );
    }

    /// Judges the new files that can be judged: those with a full
    /// fingerprint, and those whose size has held still for
    /// [`SETTLE_NEW`]. Runs every round, so that a file is tracked within
    /// moments of appearing, however soon it is renamed.
    fn settle(&mut self) {
        for (path, file) in self.control.take_fresh() {
            self.unsettle(file, path);
        }
        if self.unsettled.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut ready = Vec::new();
        for (key, u) in &mut self.unsettled {
            let meta = match u.file.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if meta.len() != u.size {
                u.size = meta.len();
                u.since = now;
            }
            let still = now.duration_since(u.since);
            let judged = u.size >= identity::FINGERPRINT_MAX
                || (u.size > 0
                    && still >= SETTLE_NEW
                    && (still >= SETTLE_LINELESS || resume::prefix_has_newline(&u.file, u.size)));
            // An empty file that was deleted will never hold anything.
            let gone = u.size == 0 && meta.nlink() == 0;
            if judged || gone {
                ready.push((*key, gone));
            }
        }
        for (key, gone) in ready {
            let Some(u) = self.unsettled.remove(&key) else {
                continue;
            };
            if gone {
                continue;
            }
            let path = current_path(&u.path, key).unwrap_or(u.path);
            let detached = !self.matches(&path);
            self.track(u.file, &path, detached);
        }
    }

    /// Whether a source's globs match `path`.
    fn matches(&self, path: &Path) -> bool {
        paths::source_of(&self.out.sources, path).is_some()
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
                    t.skip_to = Some(from);
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
        if let Some(to) = t.skip_to.take() {
            commit_past(t, &self.out.sink(t), to.min(size))?;
        }
        let t = &mut self.files[i];
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
            // Nothing new: keep no read-sized buffer for an idle file.
            if t.idle_since.is_none() {
                t.idle_since = Some(now);
                t.splitter.release_memory();
            }
            return Ok(false);
        }
        let t = &mut self.files[i];
        if t.identity.fp_len < identity::FINGERPRINT_MAX
            && size > t.identity.fp_len
            && let Ok(Some(longer)) = t.identity.lengthened(&t.file, size)
        {
            t.identity = longer;
            self.registry.set_identity(t.id, longer);
        }
        let t = &mut self.files[i];
        let sink = self.out.sink(t);
        match read_file(t, &sink, &mut self.buf, &mut self.builder) {
            Ok(read) => {
                if read != Read::Nothing {
                    t.idle_since = None;
                } else if t.idle_since.is_none() {
                    t.idle_since = Some(Instant::now());
                }
                self.behind |= read == Read::More;
                Ok(read != Read::Nothing)
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
        let cp = &mut self.registry;
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
            if !t.detached {
                i += 1;
                continue;
            }
            let idle = t.idle_since.map(|s| s.elapsed());
            let deleted = t.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
            let settled = t.detached_at.is_some_and(|d| d.elapsed() >= DETACH_SETTLE);
            let done = idle.is_some()
                && (deleted || (settled && (idle >= Some(RELEASE_IDLE) || t.compressed)));
            if !done {
                i += 1;
                continue;
            }
            if t.splitter.pending() > 0 && idle >= Some(RELEASE_IDLE) {
                // The writer left a last line without its newline and the
                // file is gone from the sources: it will never complete.
                flush_incomplete(t, &self.out.sink(t))?;
            } else if t.splitter.pending() > 0 {
                i += 1;
                continue;
            }
            let t = self.files.swap_remove(i);
            tracing::info!(id = t.id.0, path = %t.path.display(), deleted, "finished a rotated file; released it");
            self.registry.release(t.id, t.splitter.fed_offset());
        }
        Ok(())
    }
}

/// Where the file `key` (device, inode) is now: at `last` still, or under
/// another name in the same directory (renamed since).
fn current_path(last: &Path, key: (u64, u64)) -> Option<PathBuf> {
    use std::os::unix::fs::DirEntryExt;
    if let Ok(m) = std::fs::metadata(last)
        && (m.dev(), m.ino()) == key
    {
        return Some(last.to_owned());
    }
    let dir = std::fs::read_dir(last.parent()?).ok()?;
    dir.flatten()
        .filter(|e| e.ino() == key.1)
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == key))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
