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

/// `chtail status --json`: the files, and what a script watching chtail
/// needs besides.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether a chtail holds the state directory.
    pub running: bool,
    pub files: Vec<FileStatus>,
    /// The files' lag, summed.
    pub lag_bytes: u64,
    /// Records in the quarantine (`quarantine.jsonl` and its `.1`).
    pub quarantined: u64,
    /// The running daemon's counters and gauges without labels
    /// (`rows_inserted_total`, `quarantined_total`, …), read from its
    /// metrics endpoint; `None` when it does not run or has no endpoint.
    pub counters: Option<std::collections::BTreeMap<String, f64>>,
}

pub fn report(config: &Config) -> Result<Report, String> {
    let files = collect(config)?;
    let running = daemon_running(config);
    let quarantined = ["quarantine.jsonl", "quarantine.jsonl.1"]
        .iter()
        .filter_map(|f| std::fs::read(config.state.dir.join(f)).ok())
        .map(|b| memchr::memchr_iter(b'\n', &b).count() as u64)
        .sum();
    Ok(Report {
        running,
        lag_bytes: files.iter().filter_map(|f| f.lag_bytes).sum(),
        files,
        quarantined,
        counters: if running {
            config.metrics.listen.and_then(counters)
        } else {
            None
        },
    })
}

/// The unlabelled samples of the daemon's `/metrics`, without the `chtail_`
/// prefix.
fn counters(addr: std::net::SocketAddr) -> Option<std::collections::BTreeMap<String, f64>> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: chtail\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (_, body) = body.split_once("\r\n\r\n")?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.split_once(' ')?;
                let name = name.strip_prefix("chtail_")?;
                (!name.contains('{'))
                    .then(|| Some((name.to_string(), value.trim().parse().ok()?)))?
            })
            .collect(),
    )
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
