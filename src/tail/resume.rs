//! Resuming: which checkpoint, if any, a file found on disk continues.
//!
//! A file is matched to its checkpoint by identity (invariant 5): the same
//! inode with the same first bytes resumes where its reading stopped (its
//! committed offset, or, released with rows still on their way, what was
//! handed out: `Registry::read_offset`); a copy
//! of a known file (copytruncate) resumes where reading of the original
//! stopped; anything else is new and read from 0. At start-up, checkpointed
//! files that were rotated out of the globs while chtail was down are found
//! again by identity in the sources' directories.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lines::LineSplitter;
use super::paths::{
    has_compressed_magic, is_compressed_name, is_rotation_of, literal_dir, live_names_of,
    source_near,
};
use super::{Tailer, Tracked};
use crate::config;
use crate::identity::{FileId, Identity};

impl Tailer {
    /// Starts tracking an open file, resuming at its checkpoint if one
    /// matches its identity.
    pub(super) fn track(&mut self, file: File, path: &Path, detached: bool) {
        let identity = match Identity::of(&file) {
            Ok(i) => i,
            Err(e) => return self.log_error(path, "cannot read a log file", &e),
        };
        if self.files.iter().any(|t| t.identity.same_inode(&identity)) {
            return; // already read through another name
        }
        if self.is_parked((identity.dev, identity.ino)) {
            // Idle and closed, handed over again: reopened if it changed.
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            return self.seen_parked((identity.dev, identity.ino), path, size, Some(file));
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let tracked: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        let cp = &mut self.registry;
        // The same file, seen before: same inode, same first bytes. An
        // entry taken while its file was empty proves nothing (the inode may
        // have been freed and reused since): it only matches if nothing else
        // does, and then the file is read from its start anyway.
        let same_inode: Vec<(FileId, u64, u64)> = cp
            .files()
            .filter(|f| !tracked.contains(&f.id) && f.identity.same_inode(&identity))
            .filter(|f| f.identity.same_content(&file).unwrap_or(false))
            .map(|f| (f.id, cp.read_offset(f), f.identity.fp_len))
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
        let files = &self.files;
        let copy_of = || {
            let whole = cp
                .files()
                .filter(|f| !f.identity.same_inode(&identity))
                .filter(|f| f.identity.fp_len > 0 && f.identity.fp_len <= size)
                .filter(|f| f.identity.same_content(&file).unwrap_or(false))
                // At least one whole line in common: a line carries its
                // event's time and data, two files do not share one by chance.
                .filter(|f| prefix_has_newline(&file, f.identity.fp_len))
                .max_by_key(|f| f.offset)
                .map(|f| (f.id, f.offset, f.path.clone()));
            // Shorter than the original's fingerprint: a copy part-way
            // (its size held still a moment). The original is truncated
            // only once the copy is whole, so it is still open here and
            // holds those bytes: compared byte for byte.
            whole.or_else(|| {
                files
                    .iter()
                    .filter(|t| !t.identity.same_inode(&identity))
                    .filter(|t| size > 0 && t.identity.fp_len > size)
                    .filter(|t| same_prefix(&file, &t.file, size))
                    .find(|_| prefix_has_newline(&file, size))
                    .and_then(|t| cp.get(t.id))
                    .map(|f| (f.id, f.offset, f.path.clone()))
            })
        };
        let mut waiting_for = None;
        let mut skip_to = None;
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
                    if read_from > committed {
                        skip_to = Some(read_from);
                    }
                    // The checkpoint starts at what is committed: a crash
                    // re-sends rather than loses.
                    (
                        cp.register(identity, path, committed.min(read_from)),
                        read_from,
                    )
                }
                None => {
                    // A file never seen: from its start, or on the very
                    // first look with `start_at = "end"`, after its last
                    // complete line (the checkpoint covers what is skipped).
                    let source = &self.out.sources[source_near(&self.out.sources, None, path)];
                    let from = if self.attaching && source.start_at == config::StartAt::End {
                        let end = last_line_end(&file, size);
                        tracing::info!(path = %path.display(), skipped = end, "start_at = \"end\": reading only what is written from now on");
                        end
                    } else {
                        0
                    };
                    (cp.register(identity, path, from), from)
                }
            },
        };
        // Make sure the fingerprint on record describes what is there now.
        cp.set_identity(id, identity);
        if read_from > 0 {
            tracing::info!(id = id.0, path = %path.display(), offset = read_from, size, "resuming file");
        } else {
            tracing::info!(id = id.0, path = %path.display(), size, "tracking new file");
        }
        let source = source_near(&self.out.sources, prior.as_deref(), path);
        self.files.push(Tracked {
            id,
            source,
            path: Arc::from(path),
            file: Arc::new(file),
            identity,
            splitter: LineSplitter::new(read_from, self.cfg.max_line_bytes),
            detached,
            detached_at: detached.then(std::time::Instant::now),
            idle_since: None,
            compressed: false,
            waiting_for,
            floor: read_from,
            skip_to,
            verified: None,
        });
    }

    /// Checkpoint entries that matched no file at start-up belong to files
    /// that are gone: mark them released so they are pruned in time.
    pub(super) fn release_unmatched(&mut self) {
        let tracked: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        let cp = &mut self.registry;
        let gone: Vec<FileId> = cp
            .files()
            .filter(|f| !tracked.contains(&f.id) && f.released_at.is_none())
            .map(|f| f.id)
            .collect();
        for id in gone {
            cp.set_released(id, true);
        }
    }

    /// Rotations of a live file that chtail does not know: files in a live
    /// file's directory named as its rotations ([`is_rotation_of`]), not
    /// tracked, written since chtail first watched with this state, and
    /// either unknown to the checkpoints by identity or known with unread
    /// bytes. At start-up these are the files rotated while chtail was down,
    /// including ones born then; while running, files a rotation hid from
    /// both the watcher and the poll. A file chtail has read stays known
    /// while it is on disk (`Checkpoints::prune`), so nothing is read twice.
    /// They are read to their end, oldest first, then released.
    pub(super) fn find_unseen_rotations(&mut self) {
        let since = self.rotations_since;
        // The live names by directory. A directory can hold thousands of
        // files, all of them tracked or parked: each name is looked up by
        // the live names it could be a rotation of, never compared with
        // every live file (README, "Rotation").
        let mut lives: HashMap<PathBuf, HashSet<String>> = HashMap::new();
        for t in self.files.iter().filter(|t| !t.detached) {
            if let (Some(dir), Some(name)) = (t.path.parent(), t.path.file_name()) {
                lives
                    .entry(dir.to_owned())
                    .or_default()
                    .insert(name.to_string_lossy().into_owned());
            }
        }
        for p in &self.patterns {
            let p = Path::new(p);
            if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
                let name = name.to_string_lossy();
                if !name.contains(['*', '?', '['])
                    && !dir.to_string_lossy().contains(['*', '?', '['])
                {
                    lives
                        .entry(dir.to_owned())
                        .or_default()
                        .insert(name.into_owned());
                }
            }
        }
        let tracked: HashSet<(u64, u64)> = self
            .files
            .iter()
            .map(|t| (t.identity.dev, t.identity.ino))
            .collect();
        let mut known: HashMap<(u64, u64), Vec<(u64, Identity)>> = HashMap::new();
        for f in self.registry.files() {
            known
                .entry((f.identity.dev, f.identity.ino))
                .or_default()
                .push((self.registry.read_offset(f), f.identity));
        }
        let mut found: Vec<(std::time::SystemTime, u64, PathBuf, File)> = Vec::new();
        let mut dirs: Vec<(&PathBuf, &HashSet<String>)> = lives.iter().collect();
        dirs.sort_by(|a, b| a.0.cmp(b.0));
        for (dir, names) in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) => {
                    let dir = dir.clone();
                    self.log_error(&dir, "cannot list a source directory", &e);
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let rotation = live_names_of(&name)
                    .any(|live| names.contains(&live) && is_rotation_of(&live, &name));
                if !rotation {
                    continue;
                }
                let path = entry.path();
                // Never a symlink: a rotation is a file the bot wrote.
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                // One handle for every question about this name: the bot
                // renames its backups one by one (`.2` to `.3`, then `.1`
                // to `.2`, …), so two opens of one name can be two files,
                // and a read file could be taken for an unread one.
                let Ok(file) = File::open(&path) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                if written < since
                    || self.unsettled.contains_key(&key)
                    || self.is_parked(key)
                    || tracked.contains(&key)
                {
                    continue;
                }
                // Known to the checkpoints and read to its end: the usual
                // case for a released rotation, told by inode and then
                // confirmed by content, through the same handle.
                let read = known.get(&key).is_some_and(|records| {
                    records
                        .iter()
                        .any(|(offset, identity)| *offset >= meta.len() && identity.is(&file))
                });
                if !read {
                    found.push((written, meta.len(), path, file));
                }
            }
        }
        found.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        for (_, size, path, file) in found {
            if self.matches(&path) {
                continue;
            }
            // Compressed without a telling name: never text, and never to
            // be picked up again on every scan.
            let mut head = [0u8; 6];
            let n = file.read_at(&mut head, 0).unwrap_or(0);
            if has_compressed_magic(&head[..n]) {
                continue;
            }
            // Short of a whole fingerprint, it may still be being written
            // (copytruncate's copy, part-way), and judged empty or
            // half-copied, a copy of a file already read would be taken
            // for a new one and read again from its start: it is judged
            // as any new file is, once its size has held still.
            if size < crate::identity::FINGERPRINT_MAX {
                tracing::debug!(path = %path.display(), size, "a rotated file chtail had not read is still being written; judging it once it settles");
                self.unsettle(file, path);
                continue;
            }
            tracing::info!(path = %path.display(), "found a rotated file chtail had not read; reading it");
            self.track(file, &path, true);
        }
    }

    /// Checkpointed files that no glob matched at start-up may have been
    /// rotated to a name outside the globs while chtail was down: look for
    /// them by identity in the sources' directories, and finish them.
    pub(super) fn find_moved_while_down(&mut self) {
        let missing: Vec<_> = {
            let cp = &self.registry;
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
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
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
                // `is`, not only the content: the name may hold another
                // file by now if the bot is renaming its backups.
                if let Ok(file) = File::open(&path)
                    && identity.is(&file)
                {
                    tracing::info!(path = %path.display(), "found a file rotated while chtail was down, with unread lines");
                    self.track(file, &path, true);
                }
            }
        }
    }
}

/// The offset just past the last `\n` in the first `size` bytes of
/// `file` (0 if there is none: the file is one unfinished line).
fn last_line_end(file: &File, size: u64) -> u64 {
    let mut buf = vec![0u8; 64 << 10];
    let mut end = size;
    while end > 0 {
        let len = usize::try_from(end).map_or(buf.len(), |e| e.min(buf.len()));
        let start = end - len as u64;
        if file.read_exact_at(&mut buf[..len], start).is_err() {
            return 0;
        }
        if let Some(i) = memchr::memrchr(b'\n', &buf[..len]) {
            return start + i as u64 + 1;
        }
        end = start;
    }
    0
}

/// Whether `a` and `b` hold the same first `len` bytes (`len` is below a
/// fingerprint's, at most FINGERPRINT_MAX).
fn same_prefix(a: &File, b: &File, len: u64) -> bool {
    let len = usize::try_from(len).unwrap_or(0);
    let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
    a.read_exact_at(&mut x, 0).is_ok() && b.read_exact_at(&mut y, 0).is_ok() && x == y
}

/// Whether the first `len` bytes of `file` (at most FINGERPRINT_MAX) hold
/// a whole line.
pub(super) fn prefix_has_newline(file: &File, len: u64) -> bool {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut buf, 0).is_ok() && buf.contains(&b'\n')
}
