//! The quarantine: where lines that cannot be inserted go, so that nothing is
//! dropped silently.
//!
//! Each rejected line becomes one JSON object in `quarantine.jsonl` under
//! `state.dir`: time, file, offset, reason and the line itself (as text when
//! it is UTF-8, base64 otherwise). The file is capped in size and rotated to
//! `quarantine.jsonl.1`. Writing is best effort: a full disk is logged, and
//! the pipeline keeps flowing, because the lines are still in the bot's logs.
//! Logging is rate limited so that a flood of garbage cannot flood journald.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::parse::Reject;
use crate::stats::Stats;

pub const FILE_NAME: &str = "quarantine.jsonl";
const MAX_BYTES: u64 = 64 << 20;
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A quarantine file that cannot be written is logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Quarantine {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    last_log: Option<Instant>,
    unlogged: u64,
    /// Failed writes, and when the last one was logged.
    write_failures: u64,
    last_error: Option<Instant>,
    stats: std::sync::Arc<Stats>,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    file: &'a str,
    offset: u64,
    kind: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl Quarantine {
    pub fn new(state_dir: &Path, stats: std::sync::Arc<Stats>) -> Quarantine {
        Quarantine {
            path: state_dir.join(FILE_NAME),
            file: None,
            size: 0,
            last_log: None,
            unlogged: 0,
            write_failures: 0,
            last_error: None,
            stats,
        }
    }

    /// Records one rejected line. `line` may be only the head of the line
    /// (`truncated`), as for over-long lines. An error means the record was
    /// not written: the caller waits and tries again rather than skip the
    /// line without a record of it (invariant 4); the error is logged here,
    /// at most once a minute.
    pub fn put(
        &mut self,
        file: &Path,
        offset: u64,
        reason: &Reject,
        line: &[u8],
        truncated: bool,
    ) -> std::io::Result<()> {
        let shown = file.to_string_lossy();
        let (text, b64) = match std::str::from_utf8(line) {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(base64(line))),
        };
        let record = Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            file: &shown,
            offset,
            kind: reason.kind().label(),
            reason: reason.to_string(),
            line: text,
            line_base64: b64,
            truncated,
        };
        let mut bytes = serde_json::to_vec(&record).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = self.write(&bytes) {
            self.write_failures += 1;
            let now = Instant::now();
            if self
                .last_error
                .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY)
            {
                self.last_error = Some(now);
                tracing::error!(path = %self.path.display(), error = %e, failures = self.write_failures, "cannot write to the quarantine file; reading waits, and the bad line stays in its log file until its record is written");
            }
            // A half-written record would corrupt the next one.
            self.file = None;
            return Err(e);
        }
        if self.last_error.take().is_some() {
            tracing::info!(path = %self.path.display(), "the quarantine file can be written again");
        }
        self.stats.count_reject(reason.kind());
        self.log(&shown, offset, reason);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_some() && self.size + bytes.len() as u64 > MAX_BYTES {
            self.file = None;
            std::fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
        }
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn log(&mut self, file: &str, offset: u64, reason: &Reject) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            file,
            offset,
            kind = reason.kind().label(),
            suppressed = self.unlogged,
            quarantine = %self.path.display(),
            "line quarantined: {reason}"
        );
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}

/// Standard base64 with padding, for a line that is not UTF-8.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\xff\xfe\x00"), "//4A");
    }

    #[test]
    fn records_name_file_offset_reason_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let stats = std::sync::Arc::new(Stats::default());
        let mut q = Quarantine::new(dir.path(), stats.clone());
        q.put(
            Path::new("/log/a.jsonl"),
            42,
            &Reject::NotAnObject,
            b"[1]",
            false,
        )
        .unwrap();
        q.put(
            Path::new("/log/a.jsonl"),
            46,
            &Reject::InvalidUtf8,
            b"\xff",
            false,
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["file"], "/log/a.jsonl");
        assert_eq!(rows[0]["offset"], 42);
        assert_eq!(rows[0]["kind"], "not_an_object");
        assert_eq!(rows[0]["line"], "[1]");
        assert_eq!(rows[1]["line_base64"], "/w==");
        assert_eq!(stats.quarantined(), 2);
    }
}
