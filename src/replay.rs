//! Crash recovery: the batch a crash interrupted goes out again, byte for
//! byte, before tailing resumes.
//!
//! The home of invariant 3 after a crash (ARCHITECTURE.md). Before a batch
//! is sent, the inserter records its manifest: each chunk's file and byte
//! range, and the batch's deduplication token. On start-up, the ranges of
//! that manifest that the checkpoints do not cover yet are found again by
//! file identity (wherever the files were rotated to), read and encoded
//! again (the rows depend only on the bytes and the config), and re-sent
//! under the recorded token, so the server drops them if it had them.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::Batch;
use crate::checkpoint::{Checkpoints, ChunkRange, FileState, Manifest};
use crate::config::{self, Config};
use crate::identity::{FileId, Identity};
use crate::parse::LineMeta;
use crate::queue::Chunk;
use crate::stats::Stats;
use crate::tail::{
    ChunkBuilder, LineEncoder, Origin, SourceRoute, Splitter, host_name, literal_dir, source_near,
};

/// Rebuilds the batch of `manifest` that is not committed yet from the log
/// files: the same bytes, read and encoded again, in the same order.
pub(crate) fn interrupted_batch(
    manifest: &Manifest,
    checkpoints: &Checkpoints,
    config: &Config,
    sources: &[SourceRoute],
    stats: &Stats,
) -> Option<Batch> {
    let pending = manifest.pending(checkpoints);
    if pending.is_empty() {
        return None;
    }
    let patterns: Vec<String> = config
        .sources
        .iter()
        .flat_map(|s| s.paths.clone())
        .collect();
    let mut batch = Batch::default();
    // Each file is looked for and opened once, and its chunks share that
    // one descriptor: a batch can hold thousands of one-line chunks of a
    // file (the live file read as the bot writes it), and one descriptor
    // per chunk ran out of descriptors (EMFILE) while the file was there.
    let mut found: HashMap<FileId, Option<(PathBuf, Arc<File>)>> = HashMap::new();
    for range in ChunkRange::runs(pending) {
        let entry = checkpoints.get(range.file).cloned()?;
        let located = found
            .entry(range.file)
            .or_insert_with(|| locate(&entry, &patterns).map(|(p, f)| (p, Arc::new(f))))
            .clone();
        let chunk = match located {
            None => Err(missing(&entry, &patterns)),
            Some((path, file)) => {
                let source = source_near(sources, Some(&entry.path), &path);
                if batch
                    .chunks
                    .first()
                    .is_some_and(|c| c.route != sources[source].route)
                {
                    Err("its source goes to another table".to_string()) // a batch goes to one table
                } else {
                    reread(
                        file,
                        (range.file, entry.identity),
                        &path,
                        (range.start, range.end),
                        &sources[source],
                        &config.tail,
                        stats,
                    )
                    .map_err(|e| e.to_string())
                }
            }
        };
        match chunk {
            Ok(c) => batch.push(c),
            Err(why) => {
                tracing::warn!(path = %entry.path.display(), identity = %entry.identity, start = range.start, end = range.end, "cannot find the bytes of the interrupted batch any more ({why}); they cannot be re-sent")
            }
        }
    }
    (!batch.chunks.is_empty()).then_some(batch)
}

/// Reads bytes `start..end` of `file` again, exactly as they were read the
/// first time, into one chunk: the same bytes always give the same rows.
/// `end` must be a line end. Used to replay a batch after a crash.
fn reread(
    file: Arc<File>,
    (id, identity): (FileId, Identity),
    path: &Path,
    (start, end): (u64, u64),
    source: &SourceRoute,
    cfg: &config::Tail,
    stats: &Stats,
) -> std::io::Result<Chunk> {
    let host = LineMeta::json(&host_name());
    let enc = LineEncoder::new(
        &source.encoder,
        &host,
        path,
        None,
        stats,
        cfg.max_line_bytes,
    );
    let mut splitter = Splitter::new(start, cfg.max_line_bytes);
    let mut builder = ChunkBuilder::new(start);
    let mut buf = vec![0u8; cfg.read_buffer_bytes];
    while splitter.fed_offset() < end {
        let want =
            usize::try_from(end - splitter.fed_offset()).map_or(buf.len(), |n| n.min(buf.len()));
        let n = file.read_at(&mut buf[..want], splitter.fed_offset())?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} ends before offset {end}", path.display()),
            ));
        }
        splitter.feed(&buf[..n]);
        while let Some(piece) = splitter.next_piece() {
            let piece_end = piece.end();
            // No quarantine here (those lines were quarantined the first
            // time), so this cannot wait or fail.
            let _ = enc.piece(piece, path, &mut builder);
            builder.end = piece_end;
        }
    }
    let path: Arc<Path> = Arc::from(path);
    let origin = Origin {
        route: source.route,
        file: id,
        identity,
        path: &path,
        handle: &file,
    };
    Ok(builder
        .take_chunk(&origin)
        .unwrap_or_else(|| origin.empty_chunk(start, end)))
}

/// Finds a checkpointed file again: at its recorded path, or by identity
/// in the directories of `patterns` (it may have been rotated since).
fn locate(entry: &FileState, patterns: &[String]) -> Option<(PathBuf, File)> {
    let is_it = |path: &Path| entry.identity.open_at(path);
    if let Some(f) = is_it(&entry.path) {
        return Some((entry.path.clone(), f));
    }
    let dirs: HashSet<PathBuf> = patterns.iter().map(|p| literal_dir(p)).collect();
    // A scan can race the bot's rotation: Python renames every backup one
    // by one (`.2` to `.3`, then `.1` to `.2`, …), so a file listed as
    // `.3` may be `.4` by the time it is opened, and the one opened as
    // `.3` is another. A miss is scanned again for a while before the
    // bytes are given up on.
    for attempt in 0..LOCATE_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(LOCATE_PAUSE);
        }
        for dir in &dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(f) = is_it(&e.path()) {
                    return Some((e.path(), f));
                }
            }
        }
    }
    None
}

/// Why a file was not found: whether a file with its inode is there at
/// all (then its first bytes differ from those fingerprinted).
fn missing(entry: &FileState, patterns: &[String]) -> String {
    use std::os::unix::fs::MetadataExt;
    let dirs: HashSet<PathBuf> = patterns.iter().map(|p| literal_dir(p)).collect();
    for dir in &dirs {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata()
                && m.dev() == entry.identity.dev
                && m.ino() == entry.identity.ino
            {
                return format!(
                    "{} has its inode but not its first {} bytes (size {})",
                    e.path().display(),
                    entry.identity.fp_len,
                    m.len()
                );
            }
        }
    }
    "no file with its identity in the sources' directories".into()
}

/// How often, and how far apart, a file of an interrupted batch is looked
/// for before its bytes are given up on (about 3 s in all).
const LOCATE_ATTEMPTS: u32 = 30;
const LOCATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Encoder, Schema, default_table_columns};
    use std::io::Write;

    fn open_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    // The live file is read as the bot writes it, a line or two per read,
    // so an interrupted batch can be thousands of chunks of two files in
    // turn. Each file is opened once for all its chunks: with a descriptor
    // per chunk, the replay ran out of descriptors and took files that were
    // there for gone (their rows were then read again by the tailer, and
    // sent twice).
    #[test]
    fn thousands_of_chunks_are_rebuilt_through_one_descriptor_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let line = |file: usize, n: usize| {
            format!(
                "{{\"ts\":\"2026-11-22T10:00:00Z\",\"event\":\"e{file}\",\"guild_id\":\"{n}\"}}\n"
            )
        };
        let lines = 3000;
        let mut checkpoints = Checkpoints::default();
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        for file in 0..2 {
            let path = dir.path().join(format!("events{file}.jsonl"));
            let mut w = File::create(&path).unwrap();
            let mut ends = vec![0u64];
            for n in 0..lines {
                let l = line(file, n);
                w.write_all(l.as_bytes()).unwrap();
                ends.push(ends.last().unwrap() + l.len() as u64);
            }
            // Rotated since: found again by identity, not by path.
            let rotated = dir.path().join(format!("events{file}.jsonl.1"));
            std::fs::rename(&path, &rotated).unwrap();
            let identity = Identity::of(&File::open(&rotated).unwrap()).unwrap();
            ids.push(checkpoints.register(identity, &path, 0));
            offsets.push(ends);
        }
        // One line of each file in turn: no two chunks of a file adjacent.
        let chunks = (0..lines)
            .flat_map(|n| {
                (0..2).map({
                    let offsets = &offsets;
                    let ids = &ids;
                    move |f| ChunkRange {
                        file: ids[f],
                        start: offsets[f][n],
                        end: offsets[f][n + 1],
                    }
                })
            })
            .collect();
        let manifest = Manifest {
            token: "t".into(),
            chunks,
        };
        let pattern = dir.path().join("events*.jsonl");
        let config = Config::parse(&format!(
            "[clickhouse]\nurl = \"http://127.0.0.1:1\"\n[[source]]\npaths = [\"{}\"]\n[state]\ndir = \"{}\"\n",
            pattern.display(),
            dir.path().display()
        ))
        .unwrap();
        let schema = Arc::new(Schema::plain(&default_table_columns()).unwrap());
        let sources = vec![SourceRoute {
            patterns: vec![pattern.display().to_string()],
            encoder: Arc::new(Encoder::plain(schema)),
            route: 0,
            follow_symlinks: false,
            exclude: Vec::new(),
            start_at: config::StartAt::Beginning,
        }];
        let stats = Stats::default();
        let before = open_descriptors();
        let batch = interrupted_batch(&manifest, &checkpoints, &config, &sources, &stats)
            .expect("the bytes are there");
        let held = open_descriptors().saturating_sub(before);
        assert_eq!(batch.rows, 2 * lines, "every row rebuilt");
        assert!(
            held <= 8,
            "{held} descriptors held for {} chunks",
            batch.chunks.len()
        );
        assert_eq!(
            batch.chunks.len(),
            2 * lines,
            "the manifest's own order kept"
        );
        assert_eq!(batch.chunks[1].end, offsets[1][1]);

        // Adjacent ranges of one file are read as one.
        let mut one_file = manifest.clone();
        one_file.chunks.retain(|c| c.file == ids[0]);
        let batch = interrupted_batch(&one_file, &checkpoints, &config, &sources, &stats).unwrap();
        assert_eq!((batch.chunks.len(), batch.rows), (1, lines));
    }
}
