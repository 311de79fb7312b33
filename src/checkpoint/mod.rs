//! Checkpoint stage: what has been committed, per file, kept on disk.
//!
//! Input: the byte ranges of batches that ClickHouse acknowledged, in the
//! order they were inserted. Output: `state.json` in `state.dir`. An offset
//! only ever advances here, after the insert that carried those bytes
//! returned success (README, invariant 2). Files are keyed by a chtail-assigned
//! [`FileId`] and found again by [`Identity`], never by path.
//!
//! Writes are atomic: the new state goes to a temporary file, is fsynced,
//! the current file is kept as `state.json.prev` (a hard link, so there is
//! always a complete `state.json`), the temporary file is renamed over it,
//! and the directory is fsynced. A state file that cannot be read falls back
//! to the previous copy; if that is bad too, chtail refuses to start with an
//! explanation instead of silently starting from zero (README, invariant 6).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identity::FileId;
use crate::identity::Identity;

mod ledger;

pub use ledger::{Ledger, Published, Registry, split};

pub const STATE_FILE: &str = "state.json";
/// The batch being inserted: which bytes, under which token.
pub const MANIFEST_FILE: &str = "inflight.json";
const PREV_FILE: &str = "state.json.prev";
const TMP_FILE: &str = "state.json.tmp";
const VERSION: u32 = 1;
/// Released files whose every byte is committed are forgotten this long
/// after their release, once gone from disk.
const PRUNE_AFTER_SECS: u64 = 3600;
/// How often [`Checkpoints::prune`] looks at the disk.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub id: FileId,
    pub identity: Identity,
    /// Where the file was last seen.
    pub path: PathBuf,
    /// Every byte before this offset is in ClickHouse (or quarantined).
    pub offset: u64,
    /// The file no longer matches any source (rotated away or deleted) and
    /// was read to its end. Unix seconds of when that was noticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<u64>,
}

impl FileState {
    /// The size of this file if it is still at its recorded path: the same
    /// inode with the same first bytes.
    pub fn current_size(&self) -> Option<u64> {
        let file = self.identity.open_at(&self.path)?;
        file.metadata().ok().map(|m| m.len())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    next_id: u64,
    /// Unix seconds of the first start with this state directory: a
    /// rotation written since then that chtail does not know was missed
    /// (while down, or hidden by a fast rotation) and is read. Older state
    /// files lack it; their own time stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watching_since: Option<u64>,
    files: Vec<FileState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state in {dir} is unreadable ({current}; previous copy: {previous}). chtail will not \
         guess where to resume. Inspect the files; to start over deliberately, move state.json* \
         aside (every file is then read from its start again) and restart"
    )]
    Corrupt {
        dir: PathBuf,
        current: String,
        previous: String,
    },
    #[error("cannot use state directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// All checkpoints, in memory. Once the pipeline runs, the [`Ledger`] owns
/// them; the tailer keeps its own index in a [`Registry`].
#[derive(Debug, Default, Clone)]
pub struct Checkpoints {
    next_id: u64,
    files: BTreeMap<FileId, FileState>,
    /// Files were registered since the last snapshot.
    unsaved: bool,
    /// See [`Checkpoints::watching_since`].
    watching_since: u64,
    /// When prune last looked at the disk.
    last_prune: Option<std::time::Instant>,
}

/// How the state was loaded, for the start-up log.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Fresh,
    Current,
    /// `state.json` was bad; this is why, and the previous copy was used.
    Previous(String),
}

impl Checkpoints {
    /// Loads the state of `dir`, creating the directory if needed.
    pub fn load(dir: &Path) -> Result<(Checkpoints, Loaded), StateError> {
        let io_err = |source| StateError::Io {
            dir: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(io_err)?;
        let current = read_state(&dir.join(STATE_FILE));
        let previous = || read_state(&dir.join(PREV_FILE));
        let (state, loaded) = match current {
            Ok(Some(s)) => (s, Loaded::Current),
            Ok(None) => match previous() {
                // A crash between link and rename cannot lose state.json, so
                // only `prev` existing means someone removed state.json.
                Ok(Some(s)) => (s, Loaded::Previous("state.json is missing".into())),
                Ok(None) => return Ok((Checkpoints::default(), Loaded::Fresh)),
                Err(p) => {
                    return Err(StateError::Corrupt {
                        dir: dir.to_owned(),
                        current: "missing".into(),
                        previous: p,
                    });
                }
            },
            Err(c) => match previous() {
                Ok(Some(s)) => (s, Loaded::Previous(c)),
                Ok(None) => {
                    return Err(StateError::Corrupt {
                        dir: dir.to_owned(),
                        current: c,
                        previous: "missing".into(),
                    });
                }
                Err(p) => {
                    return Err(StateError::Corrupt {
                        dir: dir.to_owned(),
                        current: c,
                        previous: p,
                    });
                }
            },
        };
        let files = state.files.into_iter().map(|f| (f.id, f)).collect();
        let saved_at = [STATE_FILE, PREV_FILE]
            .iter()
            .filter_map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
            .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .min();
        Ok((
            Checkpoints {
                next_id: state.next_id,
                files,
                unsaved: false,
                watching_since: state.watching_since.or(saved_at).unwrap_or_else(now_unix),
                last_prune: None,
            },
            loaded,
        ))
    }

    /// Reads the state for display only (`chtail status`): no fallback
    /// chosen silently, no directory created.
    pub fn read_only(dir: &Path) -> Result<Vec<FileState>, String> {
        match read_state(&dir.join(STATE_FILE)) {
            Ok(Some(s)) => Ok(s.files),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Since when chtail has watched with this state: rotations written
    /// since then that it does not know are read (README, "Rotation").
    pub fn watching_since(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.watching_since)
    }

    pub fn files(&self) -> impl Iterator<Item = &FileState> {
        self.files.values()
    }

    pub fn get(&self, id: FileId) -> Option<&FileState> {
        self.files.get(&id)
    }

    /// The one place where a change to which files exist takes effect, in
    /// the tailer's index and in the ledger alike.
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Register(state) => {
                self.next_id = self.next_id.max(state.id.0 + 1);
                self.unsaved = true;
                self.files.insert(state.id, state.clone());
            }
            Change::Forget(id) => {
                self.files.remove(id);
            }
            Change::Path(id, path) => {
                if let Some(f) = self.files.get_mut(id) {
                    f.path.clone_from(path);
                }
            }
            Change::Identity(id, identity) => {
                if let Some(f) = self.files.get_mut(id) {
                    f.identity = *identity;
                }
            }
            Change::Released(id, at) => {
                if let Some(f) = self.files.get_mut(id) {
                    f.released_at = *at;
                }
            }
        }
    }

    /// Records that every byte before `end` of `id` is committed. Offsets
    /// never move back; a range of a file that was since forgotten (it was
    /// truncated and is tracked anew) is ignored.
    fn advance(&mut self, id: FileId, end: u64) {
        if let Some(f) = self.files.get_mut(&id) {
            f.offset = f.offset.max(end);
        }
    }

    /// Drops entries of files released more than `older_than_secs` ago
    /// that are gone from disk: they can no longer be needed to resume, nor
    /// to know the file as read. A released file still on disk keeps its
    /// entry, so that it is never taken for an unread rotation. Looks at the
    /// disk at most every [`PRUNE_EVERY`].
    fn prune(&mut self, older_than_secs: u64) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(std::time::Instant::now());
        let now = now_unix();
        let old: Vec<FileId> = self
            .files
            .values()
            .filter(|f| {
                f.released_at
                    .is_some_and(|t| now.saturating_sub(t) >= older_than_secs)
            })
            .map(|f| f.id)
            .collect();
        let mut listed: std::collections::HashMap<PathBuf, Vec<PathBuf>> = Default::default();
        for id in old {
            let Some(f) = self.files.get(&id) else {
                continue;
            };
            let on_disk = f.current_size().is_some() || {
                let dir = f.path.parent().map(Path::to_owned).unwrap_or_default();
                let names = listed.entry(dir.clone()).or_insert_with(|| {
                    fs::read_dir(&dir)
                        .map(|d| d.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default()
                });
                names.iter().any(|p| f.identity.open_at(p).is_some())
            };
            if !on_disk {
                self.files.remove(&id);
            }
        }
    }

    /// Registrations must still be written (a snapshot carrying them could
    /// not be).
    fn mark_unsaved(&mut self) {
        self.unsaved = true;
    }

    /// Whether files were registered since the last call: the state on disk
    /// must learn of them before a batch naming them is sent.
    fn take_unsaved(&mut self) -> bool {
        std::mem::take(&mut self.unsaved)
    }

    /// The bytes of the state file as it is now.
    pub fn snapshot(&self) -> Vec<u8> {
        let state = StateFile {
            version: VERSION,
            next_id: self.next_id,
            watching_since: Some(self.watching_since),
            files: self.files.values().cloned().collect(),
        };
        let mut out = serde_json::to_vec_pretty(&state).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `Ok(None)` when there is no such file.
fn read_state(path: &Path) -> Result<Option<StateFile>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let state: StateFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
    if state.version != VERSION {
        return Err(format!(
            "{} has version {}, this chtail reads version {VERSION}",
            path.display(),
            state.version
        ));
    }
    Ok(Some(state))
}

/// Writes `bytes` as the new state of `dir`, atomically and durably.
pub fn save(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let current = dir.join(STATE_FILE);
    let prev = dir.join(PREV_FILE);
    write_atomic(dir, TMP_FILE, STATE_FILE, bytes, || {
        if current.exists() {
            let _ = fs::remove_file(&prev);
            fs::hard_link(&current, &prev)?;
        }
        Ok(())
    })
}

/// Creates `dir` (and its parents) as 0700, whatever the umask: it holds
/// raw log lines (the quarantine) and offsets. An existing directory keeps
/// its mode (the package and systemd's `StateDirectory=` set theirs).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) a file readable by chtail's user alone, 0600
/// whatever the umask.
pub fn private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Temporary file, fsync, `before_rename`, rename over `name`, fsync of
/// the directory.
fn write_atomic(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
    before_rename: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let tmp = dir.join(tmp_name);
    {
        let mut f = private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    before_rename()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Whether chtail can write its state, for `/ready`, the status line and
/// `chtail_state_write_failures_total`. Written by the inserter, the one
/// writer of the state on disk.
#[derive(Debug, Default)]
pub struct StateHealth {
    failures: std::sync::atomic::AtomicU64,
    /// The last error, while writes fail.
    failing: std::sync::Mutex<Option<String>>,
}

impl StateHealth {
    /// A write failed; true if this is the first failure of a run of them.
    pub fn failed(&self, error: &str) -> bool {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().replace(error.to_string()).is_none()
    }

    /// A write succeeded; true if writes had been failing.
    pub fn succeeded(&self) -> bool {
        self.lock().take().is_some()
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The error while the state cannot be written.
    pub fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A change to which files exist: made by the tailer, applied by the
/// tailer's [`Registry`] and, in the same order, by the [`Ledger`].
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Register(FileState),
    Forget(FileId),
    Path(FileId, PathBuf),
    Identity(FileId, Identity),
    /// Unix seconds of the release; `None`: tracked again.
    Released(FileId, Option<u64>),
}

/// One chunk of a batch: bytes `start..end` of `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    pub file: FileId,
    pub start: u64,
    pub end: u64,
}

impl ChunkRange {
    /// `ranges` with each run of adjacent ranges of one file made one: the
    /// same bytes give the same rows however they are cut (ARCHITECTURE.md,
    /// invariant 3). The live file read as the bot writes it comes a line
    /// or two per chunk; its runs keep the manifest small and let a replay
    /// read each run at once.
    pub fn runs(ranges: impl IntoIterator<Item = ChunkRange>) -> Vec<ChunkRange> {
        let mut runs: Vec<ChunkRange> = Vec::new();
        for r in ranges {
            match runs.last_mut() {
                Some(last) if last.file == r.file && last.end == r.start => last.end = r.end,
                _ => runs.push(r),
            }
        }
        runs
    }
}

/// The batch being inserted, recorded before it is sent, so that after a
/// crash the very same rows go out again under the same token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub token: String,
    /// In the order their rows were sent.
    pub chunks: Vec<ChunkRange>,
}

impl Manifest {
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(dir, "inflight.json.tmp", MANIFEST_FILE, &bytes, || Ok(()))
    }

    /// The manifest of the last batch sent, if any. A manifest that cannot
    /// be read was being written when chtail stopped, so its batch was
    /// never sent: there is nothing to replay.
    pub fn load(dir: &Path) -> Option<Manifest> {
        let bytes = fs::read(dir.join(MANIFEST_FILE)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable inflight.json (its batch was never sent)");
                None
            }
        }
    }

    /// The chunks whose bytes are not committed yet.
    pub fn pending(&self, checkpoints: &Checkpoints) -> Vec<ChunkRange> {
        self.chunks
            .iter()
            .filter(|c| checkpoints.get(c.file).is_some_and(|f| f.offset < c.end))
            .copied()
            .collect()
    }
}

#[cfg(test)]
impl Checkpoints {
    /// A file entry, as the ledger would apply its registration.
    pub(crate) fn register(&mut self, identity: Identity, path: &Path, offset: u64) -> FileId {
        let id = FileId(self.next_id);
        self.apply(&Change::Register(FileState {
            id,
            identity,
            path: path.to_owned(),
            offset,
            released_at: None,
        }));
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Identity {
        Identity {
            dev: 1,
            ino: n,
            fp_len: 10,
            fp_hash: n * 7,
        }
    }

    #[test]
    fn state_round_trips_and_keeps_a_previous_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, loaded) = Checkpoints::load(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Fresh);
        let a = c.register(id(1), Path::new("/log/a"), 0);
        c.advance(a, 100);
        save(dir.path(), &c.snapshot()).unwrap();
        c.advance(a, 200);
        c.advance(a, 150); // never backwards
        save(dir.path(), &c.snapshot()).unwrap();

        let (c2, loaded) = Checkpoints::load(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Current);
        assert_eq!(c2.get(a).unwrap().offset, 200);
        let prev = Checkpoints::read_only_path(&dir.path().join(PREV_FILE));
        assert_eq!(prev[0].offset, 100);
    }

    #[test]
    fn a_corrupt_state_falls_back_to_the_previous_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Checkpoints::load(dir.path()).unwrap();
        let a = c.register(id(1), Path::new("/log/a"), 0);
        c.advance(a, 100);
        save(dir.path(), &c.snapshot()).unwrap();
        c.advance(a, 200);
        save(dir.path(), &c.snapshot()).unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{\"version\":1,\"next_").unwrap();
        let (c2, loaded) = Checkpoints::load(dir.path()).unwrap();
        assert!(matches!(loaded, Loaded::Previous(_)), "{loaded:?}");
        assert_eq!(c2.get(a).unwrap().offset, 100);
    }

    #[test]
    fn with_no_good_copy_it_refuses_rather_than_starting_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"\0\0garbage").unwrap();
        let err = Checkpoints::load(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains("will not guess"));
    }

    #[test]
    fn released_entries_are_pruned_once_gone_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            fs::write(&p, text).unwrap();
            (p.clone(), Identity::of(&File::open(&p).unwrap()).unwrap())
        };
        let (done_path, done_id) = write("done.log", "{\"a\":1}\n");
        let (moved_path, moved_id) = write("moved.log", "{\"a\":1}\n{\"a\":2}\n");
        let (deleted_path, deleted_id) = write("deleted.log", "{\"a\":4}\n");
        let (live_path, live_id) = write("live.log", "{\"a\":3}\n");
        let mut c = Checkpoints::default();
        let done = c.register(done_id, &done_path, 8);
        let gone = c.register(id(99), Path::new("/nonexistent/gone.log"), 5);
        let moved = c.register(moved_id, &moved_path, 16);
        let deleted = c.register(deleted_id, &deleted_path, 8);
        let live = c.register(live_id, &live_path, 0);
        for f in [done, gone, moved, deleted] {
            c.set_released(f, true);
        }
        fs::rename(&moved_path, dir.path().join("moved.log.1")).unwrap();
        fs::remove_file(&deleted_path).unwrap();
        c.prune(3600);
        assert_eq!(c.files().count(), 5, "nothing is pruned before its time");
        c.last_prune = None;
        c.prune(0);
        let left: Vec<FileId> = c.files().map(|f| f.id).collect();
        // A read file still on disk, under any name, stays known: it must
        // never be taken for an unread rotation.
        assert_eq!(left, vec![done, moved, live]);
    }

    impl Checkpoints {
        fn read_only_path(path: &Path) -> Vec<FileState> {
            read_state(path).unwrap().unwrap().files
        }

        fn set_released(&mut self, id: FileId, released: bool) {
            self.apply(&Change::Released(id, released.then(now_unix)));
        }
    }
}
