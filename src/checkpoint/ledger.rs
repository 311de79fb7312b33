//! One owner of the checkpoint map: the [`Ledger`], held by the inserter.
//!
//! The tailer decides which files exist: it registers a file found on disk,
//! follows a rename, lengthens a fingerprint, releases a file read to its
//! end, forgets a stale entry. It keeps those facts in its own index, the
//! [`Registry`], and sends each change to the ledger, which applies them in
//! order before it records or commits a batch: a file always reaches the
//! state on disk before a batch naming it does. Only the ledger advances
//! offsets (after an acknowledged insert, invariant 2), prunes entries and
//! writes `state.json`. What it has committed is [`Published`] for the
//! tailer, whose choice of where a known file resumes depends on it, and for
//! `/metrics` and `/ready`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{Change, Checkpoints, FileState, PRUNE_AFTER_SECS, now_unix};
use crate::identity::{FileId, Identity};

/// Hands the loaded checkpoints to their owner, the ledger, and gives the
/// tailer its index of the same files.
pub fn split(map: Checkpoints) -> (Ledger, Registry) {
    // Unbounded, and still small: one message per file event (found,
    // renamed, released), never per line.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let published = Arc::new(Published::default());
    let ledger = Ledger {
        map: map.clone(),
        changes: rx,
        published: published.clone(),
    };
    ledger.publish();
    let registry = Registry {
        map,
        changes: tx,
        published,
        seen: 0,
        handed_out: std::collections::HashMap::new(),
    };
    (ledger, registry)
}

/// The checkpoint map's owner.
#[derive(Debug)]
pub struct Ledger {
    map: Checkpoints,
    changes: UnboundedReceiver<Change>,
    published: Arc<Published>,
}

impl Ledger {
    /// Applies the tailer's changes so far. True if the map changed since
    /// the state was last written: a file registered must be written before
    /// a batch naming it is recorded.
    pub fn take_changes(&mut self) -> bool {
        let mut any = false;
        while let Ok(change) = self.changes.try_recv() {
            self.map.apply(&change);
            any = true;
        }
        if any {
            self.publish();
        }
        self.map.take_unsaved() || any
    }

    /// A registration could not be written: write it with the next state.
    pub fn mark_unsaved(&mut self) {
        self.map.mark_unsaved();
    }

    /// The state file's bytes as the map is now.
    pub fn snapshot(&self) -> Vec<u8> {
        self.map.snapshot()
    }

    /// The commit of an acknowledged batch (invariant 2): every file's
    /// offset advances to the end of its range, released files long gone
    /// are pruned, and the state to write is returned; the inserter writes
    /// it before it sends anything more.
    pub fn commit(&mut self, ends: impl IntoIterator<Item = (FileId, u64)>) -> Vec<u8> {
        // A batch never names a file the map does not know yet.
        self.take_changes();
        for (id, end) in ends {
            self.map.advance(id, end);
        }
        self.map.prune(PRUNE_AFTER_SECS);
        self.publish();
        self.map.snapshot()
    }

    pub fn get(&self, id: FileId) -> Option<&FileState> {
        self.map.get(id)
    }

    /// What it has committed, for `/metrics` and `/ready`.
    pub fn published(&self) -> Arc<Published> {
        self.published.clone()
    }

    fn publish(&self) {
        let files: Vec<FileState> = self.map.files().cloned().collect();
        *self
            .published
            .files
            .write()
            .unwrap_or_else(|e| e.into_inner()) = files;
        self.published
            .through
            .store(self.map.next_id, Ordering::Release);
        self.published.version.fetch_add(1, Ordering::Release);
    }
}

/// What the ledger has committed, as of its last commit.
#[derive(Debug, Default)]
pub struct Published {
    files: RwLock<Vec<FileState>>,
    /// Every id below this was applied by the ledger: one it no longer has
    /// was pruned or forgotten.
    through: AtomicU64,
    version: AtomicU64,
}

impl Published {
    /// Every file the ledger knows, with its committed offset.
    pub fn files(&self) -> Vec<FileState> {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The tailer's index of the files it knows. Each change is applied here
/// and sent to the ledger; committed offsets and pruned entries come back
/// from the ledger through [`Registry::refresh`].
#[derive(Debug)]
pub struct Registry {
    map: Checkpoints,
    changes: UnboundedSender<Change>,
    published: Arc<Published>,
    /// The published version last taken in.
    seen: u64,
    /// Files released with rows still on their way: how far each was
    /// handed to the queue. Until the ledger commits that far, this, not
    /// the committed offset, says how much of the file was read.
    handed_out: std::collections::HashMap<FileId, u64>,
}

impl Registry {
    fn change(&mut self, change: Change) {
        self.map.apply(&change);
        // The ledger is gone only once the pipeline stopped, when nothing
        // it would have written could matter any more.
        let _ = self.changes.send(change);
    }

    /// Takes in what the ledger committed and pruned since the last call.
    pub fn refresh(&mut self) {
        let version = self.published.version.load(Ordering::Acquire);
        if version == self.seen {
            return;
        }
        self.seen = version;
        let through = self.published.through.load(Ordering::Acquire);
        let committed: std::collections::HashMap<FileId, u64> = self
            .published
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|f| (f.id, f.offset))
            .collect();
        let ids: Vec<FileId> = self.map.files().map(|f| f.id).collect();
        for id in ids {
            match committed.get(&id) {
                Some(&offset) => self.map.advance(id, offset),
                None if id.0 < through => self.map.apply(&Change::Forget(id)),
                None => {} // not applied by the ledger yet
            }
        }
        let map = &self.map;
        self.handed_out
            .retain(|id, to| map.get(*id).is_some_and(|f| f.offset < *to));
    }

    /// How much of a file was read: what the ledger committed, or, for a
    /// file released with rows still on their way, what was handed out.
    /// Where a known file resumes, and whether a rotation was read.
    pub fn read_offset(&self, f: &FileState) -> u64 {
        f.offset
            .max(self.handed_out.get(&f.id).copied().unwrap_or(0))
    }

    /// A file read to its end and no longer followed: `handed_out`, its
    /// offset when the last of its rows went to the queue.
    pub fn release(&mut self, id: FileId, handed_out: u64) {
        self.set_released(id, true);
        if self.map.get(id).is_some_and(|f| f.offset < handed_out) {
            self.handed_out.insert(id, handed_out);
        }
    }

    /// Since when chtail has watched with this state (README, "Rotation").
    pub fn watching_since(&self) -> SystemTime {
        self.map.watching_since()
    }

    pub fn files(&self) -> impl Iterator<Item = &FileState> {
        self.map.files()
    }

    pub fn get(&self, id: FileId) -> Option<&FileState> {
        self.map.get(id)
    }

    /// Starts tracking a file at `offset`.
    pub fn register(&mut self, identity: Identity, path: &std::path::Path, offset: u64) -> FileId {
        let id = FileId(self.map.next_id);
        self.change(Change::Register(FileState {
            id,
            identity,
            path: path.to_owned(),
            offset,
            released_at: None,
        }));
        id
    }

    pub fn forget(&mut self, id: FileId) {
        self.handed_out.remove(&id);
        self.change(Change::Forget(id));
    }

    pub fn set_path(&mut self, id: FileId, path: &std::path::Path) {
        if self.map.get(id).is_some_and(|f| f.path != path) {
            self.change(Change::Path(id, path.to_owned()));
        }
    }

    pub fn set_identity(&mut self, id: FileId, identity: Identity) {
        if self.map.get(id).is_some_and(|f| f.identity != identity) {
            self.change(Change::Identity(id, identity));
        }
    }

    pub fn set_released(&mut self, id: FileId, released: bool) {
        self.change(Change::Released(id, released.then(now_unix)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: u64) -> Identity {
        Identity {
            dev: 1,
            ino: n,
            fp_len: 0,
            fp_hash: 0,
        }
    }

    #[test]
    fn the_ledger_applies_the_tailers_changes_in_order_and_publishes_commits() {
        let (mut ledger, mut registry) = split(Checkpoints::default());
        let a = registry.register(identity(1), std::path::Path::new("/logs/a"), 0);
        let b = registry.register(identity(2), std::path::Path::new("/logs/b"), 10);
        registry.set_path(a, std::path::Path::new("/logs/a.1"));
        registry.set_released(a, true);
        assert_eq!(
            ledger.get(a),
            None,
            "nothing applied before the ledger looks"
        );
        assert!(
            ledger.take_changes(),
            "new files: write before a batch names them"
        );
        assert!(!ledger.take_changes(), "written once");
        let f = ledger.get(a).expect("registered");
        assert_eq!(f.path, std::path::Path::new("/logs/a.1"));
        assert!(f.released_at.is_some());

        ledger.commit([(a, 100), (b, 50)]);
        registry.refresh();
        assert_eq!(registry.get(a).map(|f| f.offset), Some(100));
        assert_eq!(registry.get(b).map(|f| f.offset), Some(50));

        // An entry the ledger dropped leaves the tailer's index; one it has
        // not seen yet stays.
        registry.forget(b);
        let c = registry.register(identity(3), std::path::Path::new("/logs/c"), 0);
        ledger.take_changes();
        let d = registry.register(identity(4), std::path::Path::new("/logs/d"), 0);
        ledger.commit([]);
        assert_eq!(ledger.get(d), registry.get(d), "applied by the commit");
        let e = registry.register(identity(5), std::path::Path::new("/logs/e"), 0);
        registry.refresh();
        let ids: Vec<FileId> = registry.files().map(|f| f.id).collect();
        assert_eq!(ids, vec![a, c, d, e]);
    }

    #[test]
    fn a_file_released_with_rows_on_their_way_counts_as_read_that_far() {
        let (mut ledger, mut registry) = split(Checkpoints::default());
        let a = registry.register(identity(1), std::path::Path::new("/logs/a.1"), 0);
        ledger.commit([(a, 100)]);
        registry.refresh();
        registry.release(a, 500);
        let read = |r: &Registry| r.read_offset(r.get(a).unwrap());
        assert_eq!(read(&registry), 500, "handed out, not yet committed");
        ledger.commit([(a, 300)]);
        registry.refresh();
        assert_eq!(read(&registry), 500);
        ledger.commit([(a, 500)]);
        registry.refresh();
        assert_eq!(read(&registry), 500);
        assert!(
            registry.handed_out.is_empty(),
            "committed: nothing left to remember"
        );
    }
}
