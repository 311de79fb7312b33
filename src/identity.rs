//! File identity: what makes a file the same file, whatever its path.
//!
//! The home of invariant 5 (ARCHITECTURE.md): a file is its device, inode
//! and a fingerprint of its first bytes. [`FileId`] is chtail's own name for
//! one identity in the checkpoints; [`Identity::is`] is the one check "is
//! this open file still that file", used by the tailer, the crash replay,
//! the checkpoints and the quarantine alike.
//!
//! A path says nothing (rotation moves files, a new file takes the old name),
//! and an inode alone is not enough either: once a file is deleted, the
//! filesystem may hand its inode to the next file created. The fingerprint,
//! a hash of the first `len` bytes, tells those apart. It is taken over as
//! many bytes as the file has, up to [`FINGERPRINT_MAX`], and lengthened as
//! a small file grows, so it works for small and still-growing files.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use std::path::Path;

use serde::{Deserialize, Serialize};
use twox_hash::XxHash64;

/// chtail's name for one file (one identity) it tracks. Only meaningful
/// inside one state directory; what names bytes beyond it is the
/// [`Identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileId(pub u64);

/// Bytes covered by a full fingerprint.
pub const FINGERPRINT_MAX: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    /// How many leading bytes `hash` covers.
    pub fp_len: u64,
    pub fp_hash: u64,
}

impl Identity {
    /// The identity of an open file, fingerprinting up to its current size.
    pub fn of(file: &File) -> io::Result<Identity> {
        let meta = file.metadata()?;
        let len = meta.len().min(FINGERPRINT_MAX);
        Ok(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            fp_len: len,
            fp_hash: fingerprint(file, len)?,
        })
    }

    /// Whether `file` (with this dev/inode) still starts with the bytes this
    /// identity was taken from. `Ok(false)` also when it became too short.
    pub fn same_content(&self, file: &File) -> io::Result<bool> {
        if file.metadata()?.len() < self.fp_len {
            return Ok(false);
        }
        Ok(fingerprint(file, self.fp_len)? == self.fp_hash)
    }

    /// A longer fingerprint once the file has grown, if it has.
    pub fn lengthened(&self, file: &File, size: u64) -> io::Result<Option<Identity>> {
        let want = size.min(FINGERPRINT_MAX);
        if want <= self.fp_len {
            return Ok(None);
        }
        Ok(Some(Identity {
            fp_len: want,
            fp_hash: fingerprint(file, want)?,
            ..*self
        }))
    }

    pub fn same_inode(&self, other: &Identity) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Whether the open `file` is this file: the same device and inode,
    /// still starting with the fingerprinted bytes. The one place that
    /// answers "is this still that file".
    pub fn is(&self, file: &File) -> bool {
        file.metadata()
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
            && self.same_content(file).unwrap_or(false)
    }

    /// Opens `path` if it is this file (see [`Identity::is`]).
    pub fn open_at(&self, path: &Path) -> Option<File> {
        let file = File::open(path).ok()?;
        self.is(&file).then_some(file)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{:016x}/{}",
            self.dev, self.ino, self.fp_hash, self.fp_len
        )
    }
}

fn fingerprint(file: &File, len: u64) -> io::Result<u64> {
    // `len` is at most FINGERPRINT_MAX.
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut buf, 0)?;
    Ok(XxHash64::oneshot(0, &buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_growing_file_keeps_its_identity_and_a_rewrite_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut w = File::create(&path).unwrap();
        w.write_all(b"{\"n\":1}\n").unwrap();
        let r = File::open(&path).unwrap();
        let id = Identity::of(&r).unwrap();
        assert_eq!(id.fp_len, 8);
        w.write_all(&[b'x'; 2000]).unwrap();
        assert!(id.same_content(&r).unwrap());
        let longer = id.lengthened(&r, 2008).unwrap().unwrap();
        assert_eq!(longer.fp_len, FINGERPRINT_MAX);
        assert!(longer.same_content(&r).unwrap());

        // Same inode, new content (truncated and rewritten).
        w.set_len(0).unwrap();
        let mut w = File::options().write(true).open(&path).unwrap();
        w.write_all(b"{\"n\":2}\n").unwrap();
        assert!(!id.same_content(&r).unwrap());
        assert!(!longer.same_content(&r).unwrap());
    }
}
