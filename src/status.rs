//! `chtail status`: per tracked file, where it is, what it is, and how far
//! behind. Reads the state on disk, so it works whether or not the daemon
//! runs.

use std::fmt;

use serde::Serialize;

use crate::checkpoint::{Checkpoints, FileState};
use crate::config::Config;

#[derive(Debug, Serialize)]
pub struct FileStatus {
    pub id: u64,
    pub path: String,
    pub identity: String,
    /// Current size, if the file is still at its recorded path.
    pub size: Option<u64>,
    pub committed: u64,
    pub lag_bytes: Option<u64>,
    pub state: Phase,
}

/// Where a file is in its life, as `chtail status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// At its recorded path, being read.
    Active,
    /// Not at its recorded path (rotated away, or deleted), not released yet.
    Moved,
    /// Rotated away and read to its end.
    Released,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Phase::Active => "active",
            Phase::Moved => "moved",
            Phase::Released => "released",
        })
    }
}

pub fn collect(config: &Config) -> Result<Vec<FileStatus>, String> {
    let files = Checkpoints::read_only(&config.state.dir)?;
    Ok(files.iter().map(status_of).collect())
}

/// The status of every file the ledger has published.
pub(crate) fn of(files: &[FileState]) -> Vec<FileStatus> {
    files.iter().map(status_of).collect()
}

/// Whether a chtail holds the state directory's lock right now.
pub fn daemon_running(config: &Config) -> bool {
    std::fs::File::open(config.state.dir.join("lock"))
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

fn status_of(f: &FileState) -> FileStatus {
    let size = f.current_size();
    FileStatus {
        id: f.id.0,
        path: f.path.display().to_string(),
        identity: f.identity.to_string(),
        size,
        committed: f.offset,
        lag_bytes: size.map(|s| s.saturating_sub(f.offset)),
        state: match (f.released_at, size) {
            (Some(_), _) => Phase::Released,
            (None, Some(_)) => Phase::Active,
            (None, None) => Phase::Moved,
        },
    }
}

/// Prints, per source pattern, the files it treats as rotations of its
/// live files (README, "Rotation").
pub fn print_rotations(config: &Config) {
    for pattern in config.sources.iter().flat_map(|s| &s.paths) {
        for (live, rotations) in crate::tail::rotations_of_pattern(pattern) {
            if rotations.is_empty() {
                continue;
            }
            let names = crate::tail::file_names(rotations.iter());
            crate::out!("rotations of {}: {}", live.display(), names.join(" "));
        }
    }
}

pub fn print_table(rows: &[FileStatus]) {
    if rows.is_empty() {
        crate::out!("no files tracked yet");
        return;
    }
    let width = rows.iter().map(|r| r.path.len()).max().unwrap_or(4).max(4);
    crate::out!(
        "{:<width$}  {:<8}  {:>12}  {:>12}  {:>12}  IDENTITY",
        "PATH",
        "STATE",
        "SIZE",
        "COMMITTED",
        "LAG"
    );
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for r in rows {
        crate::out!(
            "{:<width$}  {:<8}  {:>12}  {:>12}  {:>12}  {}",
            r.path,
            r.state,
            opt(r.size),
            r.committed,
            opt(r.lag_bytes),
            r.identity
        );
    }
}
