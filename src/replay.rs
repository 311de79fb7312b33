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

use crate::checkpoint::{Checkpoints, ChunkRange, FileState, Manifest};
use crate::config::{self, Config};
use crate::identity::{FileId, Identity};
use crate::parse::LineMeta;
use crate::queue::Chunk;
use crate::stats::Stats;
use crate::tail::{
    CHUNK_BYTES, CHUNK_ROWS, ChunkBuilder, LineEncoder, Origin, SourceRoute, Splitter, host_name,
    literal_dir, source_near,
};

/// One recorded byte range, and the open file it is in: what a re-send
/// reads again.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub range: ChunkRange,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    pub identity: Identity,
    /// The source whose encoder made the rows.
    pub source: usize,
}

impl Span {
    /// The span of a chunk read by the tailer.
    pub(crate) fn of(chunk: &Chunk) -> Span {
        Span {
            range: ChunkRange {
                file: chunk.file,
                start: chunk.start,
                end: chunk.end,
            },
            path: chunk.path.clone(),
            file: chunk.handle.clone(),
            identity: chunk.identity,
            source: usize::from(chunk.source),
        }
    }

    /// Adds `next` to the spans, as part of the last one if it continues it.
    pub(crate) fn extend(spans: &mut Vec<Span>, next: Span) {
        match spans.last_mut() {
            Some(last)
                if last.range.file == next.range.file && last.range.end == next.range.start =>
            {
                last.range.end = next.range.end;
            }
            _ => spans.push(next),
        }
    }
}

/// A file found again: where, and open.
type Opened = (Arc<Path>, Arc<File>);

/// The part of `manifest`'s batch that is not committed yet, found again
/// in the log files: one span per run of adjacent ranges, each file
/// located and opened once. Ranges whose file cannot be found are logged
/// and left out.
pub(crate) fn interrupted(
    manifest: &Manifest,
    checkpoints: &Checkpoints,
    config: &Config,
    sources: &[SourceRoute],
) -> Option<Vec<Span>> {
    let pending = manifest.pending(checkpoints);
    if pending.is_empty() {
        return None;
    }
    let patterns: Vec<String> = config
        .sources
        .iter()
        .flat_map(|s| s.paths.clone())
        .collect();
    // Each file is looked for and opened once, and its spans share that
    // one descriptor: a batch can hold thousands of one-line chunks of a
    // file (the live file read as the bot writes it), and one descriptor
    // per chunk ran out of descriptors (EMFILE) while the file was there.
    let mut found: HashMap<FileId, Option<Opened>> = HashMap::new();
    let mut spans: Vec<Span> = Vec::new();
    for range in ChunkRange::runs(pending) {
        let entry = checkpoints.get(range.file).cloned()?;
        let located = found
            .entry(range.file)
            .or_insert_with(|| {
                locate(&entry, &patterns).map(|(p, f)| (Arc::from(p.as_path()), Arc::new(f)))
            })
            .clone();
        let span = match located {
            None => Err(missing(&entry, &patterns)),
            Some((path, file)) => {
                let source = source_near(sources, Some(&entry.path), &path);
                if spans
                    .first()
                    .is_some_and(|s| sources[s.source].route != sources[source].route)
                {
                    Err("its source goes to another table".to_string()) // a batch goes to one table
                } else {
                    Ok(Span {
                        range,
                        path,
                        file,
                        identity: entry.identity,
                        source,
                    })
                }
            }
        };
        match span {
            Ok(s) => Span::extend(&mut spans, s),
            Err(why) => {
                tracing::warn!(path = %entry.path.display(), identity = %entry.identity, start = range.start, end = range.end, "cannot find the bytes of the interrupted batch any more ({why}); they cannot be re-sent")
            }
        }
    }
    (!spans.is_empty()).then_some(spans)
}

/// The rows of `spans` read and encoded again, exactly as they were the
/// first time (the same bytes always give the same rows), in chunks of
/// about [`CHUNK_BYTES`]: a re-send of a million rows holds one chunk at a
/// time. No quarantine here: those lines were quarantined the first time.
pub(crate) struct Reread<'a> {
    spans: &'a [Span],
    /// The span being read, and where in it.
    at: usize,
    from: Option<u64>,
    sources: &'a [SourceRoute],
    cfg: &'a config::Tail,
    stats: &'a Stats,
    host: String,
    buf: Vec<u8>,
}

impl<'a> Reread<'a> {
    pub(crate) fn new(
        spans: &'a [Span],
        sources: &'a [SourceRoute],
        cfg: &'a config::Tail,
        stats: &'a Stats,
    ) -> Reread<'a> {
        Reread {
            spans,
            at: 0,
            from: None,
            sources,
            cfg,
            stats,
            host: LineMeta::json(&host_name()),
            buf: vec![0u8; cfg.read_buffer_bytes],
        }
    }
}

impl Iterator for Reread<'_> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        let span = self.spans.get(self.at)?;
        let start = self.from.unwrap_or(span.range.start);
        let chunk = read_part(self, span, start);
        match &chunk {
            Ok(c) if c.end < span.range.end && c.end > start => self.from = Some(c.end),
            Ok(c) if c.end < span.range.end => {
                // No line end before the span's: the unterminated last
                // line of a rotated file, quarantined when it was read.
                tracing::debug!(path = %span.path.display(), start, end = span.range.end, "no line end in the rest of a span");
                self.at += 1;
                self.from = None;
            }
            _ => {
                self.at += 1;
                self.from = None;
            }
        }
        Some(chunk)
    }
}

/// Reads the lines of `span` from `start` into one chunk, up to its end or
/// to the first line end past [`CHUNK_BYTES`] of rows. `span`'s end must be
/// a line end.
fn read_part(r: &mut Reread<'_>, span: &Span, start: u64) -> std::io::Result<Chunk> {
    let source = &r.sources[span.source];
    let enc = LineEncoder::new(
        &source.encoder,
        &r.host,
        &span.path,
        None,
        r.stats,
        r.cfg.max_line_bytes,
    );
    let end = span.range.end;
    let mut splitter = Splitter::new(start, r.cfg.max_line_bytes);
    let mut builder = ChunkBuilder::new(start);
    'read: while splitter.fed_offset() < end {
        let want = usize::try_from(end - splitter.fed_offset())
            .map_or(r.buf.len(), |n| n.min(r.buf.len()));
        let n = span
            .file
            .read_at(&mut r.buf[..want], splitter.fed_offset())?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} ends before offset {end}", span.path.display()),
            ));
        }
        splitter.feed(&r.buf[..n]);
        while let Some(piece) = splitter.next_piece() {
            let piece_end = piece.end();
            // Without a quarantine this cannot wait or fail.
            let row = enc.piece(piece, &span.path, &mut builder).unwrap_or(false);
            enc.count(1, u64::from(row));
            builder.end = piece_end;
            if builder.data_len() >= CHUNK_BYTES || builder.rows_len() >= CHUNK_ROWS {
                break 'read;
            }
        }
    }
    let cut = builder.end;
    let origin = Origin {
        route: source.route,
        source: u16::try_from(span.source).unwrap_or(u16::MAX),
        file: span.range.file,
        identity: span.identity,
        path: &span.path,
        handle: &span.file,
    };
    Ok(builder
        .take_chunk(&origin)
        .unwrap_or_else(|| origin.empty_chunk(start, cut.max(start))))
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

    fn line(file: usize, n: usize) -> String {
        format!("{{\"ts\":\"2026-11-22T10:00:00Z\",\"event\":\"e{file}\",\"guild_id\":\"{n}\"}}\n")
    }

    /// `files` files of `lines` lines each, rotated since they were read,
    /// known to the checkpoints; the line ends of each.
    fn setup(
        dir: &Path,
        files: usize,
        lines: usize,
    ) -> (
        Checkpoints,
        Vec<FileId>,
        Vec<Vec<u64>>,
        Config,
        Vec<SourceRoute>,
    ) {
        let mut checkpoints = Checkpoints::default();
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        for file in 0..files {
            let path = dir.join(format!("events{file}.jsonl"));
            let mut w = std::io::BufWriter::new(File::create(&path).unwrap());
            let mut ends = vec![0u64];
            for n in 0..lines {
                let l = line(file, n);
                w.write_all(l.as_bytes()).unwrap();
                ends.push(ends.last().unwrap() + l.len() as u64);
            }
            drop(w);
            // Rotated since: found again by identity, not by path.
            let rotated = dir.join(format!("events{file}.jsonl.1"));
            std::fs::rename(&path, &rotated).unwrap();
            let identity = Identity::of(&File::open(&rotated).unwrap()).unwrap();
            ids.push(checkpoints.register(identity, &path, 0));
            offsets.push(ends);
        }
        let pattern = dir.join("events*.jsonl");
        let config = Config::parse(&format!(
            "[clickhouse]\nurl = \"http://127.0.0.1:1\"\n[[source]]\npaths = [\"{}\"]\n[state]\ndir = \"{}\"\n",
            pattern.display(),
            dir.display()
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
        (checkpoints, ids, offsets, config, sources)
    }

    // The live file is read as the bot writes it, a line or two per read,
    // so an interrupted batch can be thousands of chunks of two files in
    // turn. Each file is opened once for all its ranges: with a descriptor
    // per chunk, the replay ran out of descriptors and took files that were
    // there for gone (their rows were then read again by the tailer, and
    // sent twice).
    #[test]
    fn thousands_of_ranges_are_read_again_through_one_descriptor_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let lines = 3000;
        let (checkpoints, ids, offsets, config, sources) = setup(dir.path(), 2, lines);
        // One line of each file in turn: no two ranges of a file adjacent.
        let chunks = (0..lines)
            .flat_map(|n| {
                let (ids, offsets) = (&ids, &offsets);
                (0..2).map(move |f| ChunkRange {
                    file: ids[f],
                    start: offsets[f][n],
                    end: offsets[f][n + 1],
                })
            })
            .collect();
        let manifest = Manifest {
            token: "t".into(),
            chunks,
        };
        let stats = Stats::default();
        let before = open_descriptors();
        let spans = interrupted(&manifest, &checkpoints, &config, &sources).expect("found");
        let held = open_descriptors().saturating_sub(before);
        assert!(
            held <= 8,
            "{held} descriptors held for {} spans",
            spans.len()
        );
        assert_eq!(spans.len(), 2 * lines, "the manifest's own order kept");
        let chunks: Vec<Chunk> = Reread::new(&spans, &sources, &config.tail, &stats)
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            chunks.iter().map(|c| c.rows.len()).sum::<usize>(),
            2 * lines
        );
        assert_eq!((chunks[1].file, chunks[1].end), (ids[1], offsets[1][1]));

        // Adjacent ranges of one file are one span.
        let mut one_file = manifest.clone();
        one_file.chunks.retain(|c| c.file == ids[0]);
        let spans = interrupted(&one_file, &checkpoints, &config, &sources).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].range.end, offsets[0][lines]);
    }

    // A stream's million rows are read again a chunk at a time, cut at
    // line ends, covering every byte once.
    #[test]
    fn a_long_span_is_read_again_in_bounded_chunks_at_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let lines = 20_000;
        let (checkpoints, ids, offsets, config, sources) = setup(dir.path(), 1, lines);
        let from = 7;
        let manifest = Manifest {
            token: "t".into(),
            chunks: vec![ChunkRange {
                file: ids[0],
                start: offsets[0][from],
                end: offsets[0][lines],
            }],
        };
        let spans = interrupted(&manifest, &checkpoints, &config, &sources).unwrap();
        let stats = Stats::default();
        let chunks: Vec<Chunk> = Reread::new(&spans, &sources, &config.tail, &stats)
            .map(Result::unwrap)
            .collect();
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        let mut at = offsets[0][from];
        for c in &chunks {
            assert_eq!(c.start, at, "contiguous");
            assert!(
                offsets[0].binary_search(&c.end).is_ok(),
                "cut at a line end"
            );
            assert!(c.data.len() < CHUNK_BYTES + 4096, "{} bytes", c.data.len());
            at = c.end;
        }
        assert_eq!(at, offsets[0][lines]);
        assert_eq!(
            chunks.iter().map(|c| c.rows.len()).sum::<usize>(),
            lines - from
        );
    }
}
