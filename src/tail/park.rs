//! Parking: while many files are tracked (a wide glob over hundreds of
//! rotations), one read to its end and idle for a while gives its
//! descriptor back. A parked file is watched by path, through the stat the
//! discovery makes anyway, and reopened by identity when it changes size or
//! is handed over again by the watcher; one no source matches any more is
//! looked for by identity in its directory, and released once read.
//! Descriptors then stay near [`PARK_ABOVE`] however many files match.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lines::LineSplitter;
use super::{DETACH_SETTLE, Tailer, Tracked, current_path};
use crate::identity::{FileId, Identity};

/// Files are parked only while more than this many are open.
pub(super) const PARK_ABOVE: usize = 128;
/// How long a file must have been idle, and read to its end, to be parked.
const PARK_IDLE: Duration = Duration::from_secs(30);

/// A tracked file without its descriptor.
pub(super) struct Parked {
    id: FileId,
    source: usize,
    path: Arc<Path>,
    identity: Identity,
    /// Everything before it was read (and handed to the queue).
    offset: u64,
    floor: u64,
    /// Since when no listing has found it under a matching name.
    unseen_since: Option<Instant>,
}

impl Tailer {
    /// Parks idle files while more than [`PARK_ABOVE`] are open.
    pub(super) fn park_idle(&mut self) {
        if self.files.len() <= PARK_ABOVE {
            return;
        }
        // Originals a copy waits on stay open (collected once: the loop
        // below runs over every open file).
        let waited_on: std::collections::HashSet<FileId> =
            self.files.iter().filter_map(|t| t.waiting_for).collect();
        let mut i = 0;
        while self.files.len() > PARK_ABOVE && i < self.files.len() {
            let t = &self.files[i];
            let waited_on = waited_on.contains(&t.id);
            let park = !t.detached
                && !t.compressed
                && t.waiting_for.is_none()
                && t.skip_to.is_none()
                && !waited_on
                && !self.ghosts.contains_key(&t.id)
                && t.splitter.pending() == 0
                && t.idle_since.is_some_and(|s| s.elapsed() >= PARK_IDLE);
            if !park {
                i += 1;
                continue;
            }
            let t = self.files.swap_remove(i);
            tracing::debug!(id = t.id.0, path = %t.path.display(), "idle: closing the file until it changes");
            self.parked.insert(
                (t.identity.dev, t.identity.ino),
                Parked {
                    id: t.id,
                    source: t.source,
                    path: t.path,
                    identity: t.identity,
                    offset: t.splitter.fed_offset(),
                    floor: t.floor,
                    unseen_since: None,
                },
            );
        }
    }

    /// Parked file `key` was found at `path`, `size` bytes long, by a
    /// listing or handed over by the watcher (`file`): follows a rename,
    /// and tracks it again only if its size changed. A rename alone (a
    /// rollover renames every rotated file) keeps it closed.
    pub(super) fn seen_parked(
        &mut self,
        key: (u64, u64),
        path: &Path,
        size: u64,
        file: Option<File>,
    ) {
        let Some(p) = self.parked.get_mut(&key) else {
            return;
        };
        p.unseen_since = None;
        if *p.path != *path {
            // A rollover renames every rotated file: thousands of lines at
            // INFO for an idle file's new name would bury the log.
            tracing::debug!(id = p.id.0, from = %p.path.display(), to = %path.display(), "idle file renamed; following it");
            p.path = Arc::from(path);
            self.registry.set_path(p.id, path);
        }
        if size == p.offset {
            return;
        }
        if let Some(file) = file {
            return self.unpark(key, file, path, false);
        }
        match File::open(path) {
            Ok(file) => self.unpark(key, file, path, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.log_error(path, "cannot open a log file", &e),
        }
    }

    /// Tracks parked file `key` again through `file`, open at `path`.
    pub(super) fn unpark(&mut self, key: (u64, u64), file: File, path: &Path, detached: bool) {
        let Some(p) = self.parked.remove(&key) else {
            return;
        };
        if *p.path != *path {
            self.registry.set_path(p.id, path);
        }
        tracing::debug!(id = p.id.0, path = %path.display(), offset = p.offset, "reopened an idle file");
        self.files.push(Tracked {
            id: p.id,
            source: p.source,
            path: Arc::from(path),
            file: Arc::new(file),
            identity: p.identity,
            splitter: LineSplitter::new(p.offset, self.cfg.max_line_bytes),
            detached,
            detached_at: detached.then(Instant::now),
            idle_since: None,
            compressed: false,
            waiting_for: None,
            floor: p.floor,
            skip_to: None,
            verified: None,
        });
    }

    /// After a complete listing: a parked file no source matches any more
    /// (for [`DETACH_SETTLE`]) is looked for by identity in its directory;
    /// grown, it is read to its end like any rotated file, else released.
    pub(super) fn parked_unseen(&mut self, seen: &std::collections::HashSet<(u64, u64)>) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (key, p) in &mut self.parked {
            if seen.contains(key) {
                continue;
            }
            let since = *p.unseen_since.get_or_insert(now);
            if now.duration_since(since) >= DETACH_SETTLE {
                gone.push(*key);
            }
        }
        for key in gone {
            let Some(p) = self.parked.get(&key) else {
                continue;
            };
            let grown = current_path(&p.path, key).and_then(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                (meta.len() != p.offset && (meta.dev(), meta.ino()) == key).then_some(path)
            });
            if let Some(path) = grown
                && let Ok(file) = File::open(&path)
            {
                tracing::info!(id = p.id.0, path = %path.display(), "file no longer matches a source (rotated or deleted); reading it to its end");
                self.unpark(key, file, &path, true);
                continue;
            }
            let Some(p) = self.parked.remove(&key) else {
                continue;
            };
            tracing::info!(id = p.id.0, path = %p.path.display(), "finished a rotated file; released it");
            self.registry.release(p.id, p.offset);
        }
    }

    pub(super) fn is_parked(&self, key: (u64, u64)) -> bool {
        self.parked.contains_key(&key)
    }
}
