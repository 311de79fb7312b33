//! Paths: which files a source names, and which bytes of them are lines.
//!
//! Pure helpers of the tail stage, plus the inotify watch that only wakes
//! it: the literal directory of a glob, which source a path belongs to,
//! compressed files (never read as text) told apart by name and by magic
//! bytes, and the body of a line (CR and a leading BOM stripped).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Control, SourceRoute};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The source a path belongs to: the first whose globs match it and whose
/// `exclude` globs do not.
pub(super) fn source_of(sources: &[SourceRoute], path: &Path) -> Option<usize> {
    let matches = |p: &String| {
        glob::Pattern::new(p)
            .map(|g| g.matches_path(path))
            .unwrap_or(false)
    };
    sources
        .iter()
        .position(|s| s.patterns.iter().any(matches) && !s.exclude.iter().any(matches))
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

/// Whether `name` is a rotation of the live file `live` (both file names
/// in one directory): the live name followed by a separator and a suffix
/// (`events.jsonl.1`, `events.jsonl.2026-12-01_10-00-01`,
/// `events.jsonl-20261201`), or a suffix set between the live name's stem
/// and its extension (`events.1.jsonl`, `events.2026-12-01.jsonl`).
/// Compressed rotations are never read as text.
pub(super) fn is_rotation_of(live: &str, name: &str) -> bool {
    if name == live {
        return false;
    }
    let after_live = name
        .strip_prefix(live)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with(['.', '-', '_']));
    let inside = live.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && name
                .strip_prefix(stem)
                .and_then(|rest| rest.strip_suffix(ext))
                .and_then(|mid| mid.strip_suffix('.'))
                .is_some_and(|mid| mid.len() > 1 && mid.starts_with(['.', '-', '_']))
    });
    (after_live || inside) && !is_compressed_name(Path::new(name))
}

/// Every live name `name` could be a rotation of (see [`is_rotation_of`],
/// which decides): the name cut before each separator, and that with the
/// name's extension put back. A handful of candidates, found in a set,
/// instead of a comparison with every live file.
pub(super) fn live_names_of(name: &str) -> impl Iterator<Item = String> + '_ {
    let ext = name.rsplit_once('.').map(|(_, ext)| ext);
    name.char_indices()
        .filter(|&(i, c)| i > 0 && matches!(c, '.' | '-' | '_'))
        .flat_map(move |(i, _)| {
            let stem = &name[..i];
            std::iter::once(stem.to_owned()).chain(ext.map(|ext| format!("{stem}.{ext}")))
        })
}

/// The files a glob pattern treats as rotations of its live files (see
/// [`is_rotation_of`]), by live file, newest rotation last; for `check`
/// and `status`. The live files are those the pattern matches, or the
/// pattern itself when it has no wildcard.
pub fn rotations_of_pattern(pattern: &str) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let mut lives: Vec<PathBuf> = glob::glob(pattern)
        .map(|paths| paths.flatten().filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    if !pattern.contains(['*', '?', '[']) {
        lives.push(PathBuf::from(pattern));
    }
    lives.sort();
    lives.dedup();
    // A file the glob matches is read as a source of its own, not as a
    // rotation of another.
    let matched: HashSet<PathBuf> = lives.iter().cloned().collect();
    let mut out = Vec::new();
    for live in lives {
        let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy();
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut rotations: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| is_rotation_of(&name, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .filter(|p| !matched.contains(p))
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok().filter(|m| m.is_file())?;
                Some((m.modified().unwrap_or(std::time::UNIX_EPOCH), p))
            })
            .collect();
        rotations.sort();
        out.push((live, rotations.into_iter().map(|(_, p)| p).collect()));
    }
    out
}

/// The file names of `paths`, for listing rotations.
pub fn file_names<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Vec<String> {
    paths
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The directory part of a glob before its first wildcard.
pub(crate) fn literal_dir(pattern: &str) -> PathBuf {
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

/// The watcher pauses this long in a run of write events for one file (see
/// [`watch`]), at most once per [`WATCH_RUN`] of handling events.
const WATCH_PAUSE: Duration = Duration::from_millis(5);
const WATCH_RUN: Duration = Duration::from_micros(500);

/// Watches the sources' directories so that appends and new files wake the
/// tailer at once. A file created under a matching name, or renamed away
/// from one, is opened right here, on the watcher's thread, and handed to
/// the tailer: a bot that rotates faster than the tailer looks (or while
/// the tailer waits on a full queue) cannot hide a file from it. Best
/// effort: without inotify, the poll still finds every file that stays
/// under a matching name for a poll interval, and the rotation scan finds
/// the rest.
pub(super) fn watch(patterns: &[String], control: Control) -> Option<notify::RecommendedWatcher> {
    use notify::event::{ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let globs: Vec<glob::Pattern> = patterns
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    let matching =
        move |p: &Path| globs.iter().any(|g| g.matches_path(p)) && !is_compressed_name(p);
    // The file of the last write event, and when the watcher last paused.
    let mut last_write: Option<PathBuf> = None;
    let mut paused = Instant::now();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else {
            // Lost events (a queue overflow): the poll looks at everything.
            control.poke(true);
            return;
        };
        let opened = match (&ev.kind, ev.paths.as_slice()) {
            (EventKind::Create(_), [path]) if matching(path) => Some(path),
            // Renamed out of the globs: the listing will not find it. A
            // rename within them (a rollover renames every rotated file)
            // is the listing's to follow.
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), [from, to])
                if matching(from) && !matching(to) =>
            {
                Some(to)
            }
            _ => None,
        };
        // Only regular files: a symlink is for the tailer to judge
        // (`follow_symlinks`).
        if let Some(path) = opened
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
            && let Ok(file) = std::fs::File::open(path)
        {
            control.hand_over(path.clone(), file);
        }
        let names = matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        );
        control.poke(names);
        // The bot writes a line at a time, and each write is an event:
        // read as they come, this thread would wake for every line. In a
        // run of writes to one file it pauses, and the kernel merges that
        // file's writes meanwhile into one event. Writes to several files
        // alternate and never pause it, so the queue never backs up.
        if let (EventKind::Modify(ModifyKind::Data(_)), [path]) = (&ev.kind, ev.paths.as_slice()) {
            if last_write.as_ref() == Some(path) && paused.elapsed() >= WATCH_RUN {
                std::thread::sleep(WATCH_PAUSE);
                paused = Instant::now();
            }
            last_write = Some(path.clone());
        } else {
            last_write = None;
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
    fn rotations_are_named_after_the_live_file() {
        for name in [
            "events.jsonl.1",
            "events.jsonl.2026-12-01_10-00-01",
            "events.jsonl-20261201",
            "events.1.jsonl",
            "events.2026-12-01.jsonl",
        ] {
            assert!(is_rotation_of("events.jsonl", name), "{name}");
        }
        for name in [
            "events.jsonl",
            "events.jsonl.2.gz",
            "events.jsonl.",
            "other.jsonl.1",
            "events.jsonlx",
            "events..jsonl",
            "events.jsonl.1.zst",
        ] {
            assert!(!is_rotation_of("events.jsonl", name), "{name}");
        }
        assert!(is_rotation_of("bot.log", "bot.log.3"));
        assert!(!is_rotation_of("bot", "bot"));
        assert!(is_rotation_of("bot", "bot.1"));
    }

    /// Every live name a file is a rotation of is among the candidates
    /// the rotation scan looks up.
    #[test]
    fn rotations_are_found_by_their_candidate_live_names() {
        use proptest::prelude::*;
        proptest!(|(live in "[ab][ab._-]{0,6}", name in "[ab][ab._-]{0,9}")| {
            if is_rotation_of(&live, &name) {
                prop_assert!(live_names_of(&name).any(|l| l == live), "{} of {}", name, live);
            }
        });
        for (live, name) in [
            ("events.jsonl", "events.jsonl.1"),
            ("events.jsonl", "events.2026-12-01.jsonl"),
            ("events.jsonl", "events.jsonl-20261201"),
            ("bot", "bot.1"),
        ] {
            assert!(live_names_of(name).any(|l| l == live), "{name} of {live}");
        }
    }

    #[test]
    fn compressed_files_are_recognised() {
        assert!(is_compressed_name(Path::new("/l/events.jsonl.2.gz")));
        assert!(!is_compressed_name(Path::new("/l/events.jsonl.1")));
        assert!(has_compressed_magic(&[0x1f, 0x8b, 8]));
        assert!(!has_compressed_magic(b"{\"a\":1}"));
    }
}
