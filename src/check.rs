//! `chtail check`: everything `run` would need, checked once, every problem
//! printed. Exit status 0 only if all is well.

use std::fs::File;
use std::path::Path;

use crate::checkpoint::Checkpoints;
use crate::clickhouse::Server;
use crate::config::{self, Config};
use crate::delivery::{self, Delivery};
use crate::parse::{LineMeta, Reject};
use crate::plan;
use crate::tail::{self, SourceRoute};

/// Prints a report to stdout and returns the number of problems found.
pub async fn check(config: &Config, offline: bool) -> usize {
    let mut problems = 0;
    let mut bad = |what: String| {
        crate::out!("PROBLEM  {what}");
        problems += 1;
    };
    crate::out!("ok       configuration is valid");

    // State directory: looked at, never created (`run` creates it, 0700).
    let dir = &config.state.dir;
    let state_ok = if dir.is_dir() {
        match probe_writable(dir) {
            Ok(()) => {
                crate::out!("ok       state directory {} is writable", dir.display());
                true
            }
            Err(e) => {
                bad(format!(
                    "state directory {}: {e} (chtail's user must be able to write it)",
                    dir.display()
                ));
                false
            }
        }
    } else {
        // The nearest existing parent must let `run` create it.
        let parent = dir.ancestors().skip(1).find(|p| p.is_dir());
        match parent.map(|p| (p, probe_writable(p))) {
            Some((_, Ok(()))) => {
                crate::out!(
                    "note     state directory {} does not exist yet; `chtail run` creates it (mode 0700)",
                    dir.display()
                );
                true
            }
            Some((p, Err(e))) => {
                bad(format!(
                    "state directory {} does not exist and cannot be created in {}: {e}",
                    dir.display(),
                    p.display()
                ));
                false
            }
            None => {
                bad(format!(
                    "state directory {}: no existing parent",
                    dir.display()
                ));
                false
            }
        }
    };
    if state_ok {
        match Checkpoints::read_only(dir) {
            Ok(files) => crate::out!("ok       state: {} file(s) checkpointed", files.len()),
            Err(e) => bad(format!("state: {e}")),
        }
    }

    // Sources.
    for (source, pattern) in config
        .sources
        .iter()
        .flat_map(|s| s.paths.iter().map(move |p| (s, p)))
    {
        let dir = tail::literal_dir(pattern);
        if let Err(e) = std::fs::read_dir(&dir) {
            bad(format!(
                "source {pattern}: cannot list {}: {e}; chtail must be able to read the \
                 directory (add its user to the directory's group, e.g. `usermod -aG <group> \
                 chtail`, or set SupplementaryGroups= in a drop-in)",
                dir.display()
            ));
            continue;
        }
        let mut paths = Vec::new();
        match glob::glob(pattern) {
            Ok(found) => {
                for p in found {
                    match p {
                        Ok(p)
                            if !source.follow_symlinks
                                && std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) =>
                        {
                            crate::out!(
                                "note     source {pattern}: {} is a symlink and is skipped (follow_symlinks = false)",
                                p.display()
                            );
                        }
                        Ok(p)
                            if source.exclude.iter().any(|x| {
                                glob::Pattern::new(x).is_ok_and(|g| g.matches_path(&p))
                            }) =>
                        {
                            crate::out!(
                                "note     source {pattern}: {} is excluded and is not read",
                                p.display()
                            );
                        }
                        Ok(p) if p.is_file() => paths.push(p),
                        Ok(_) => {}
                        Err(e) => bad(format!(
                            "source {pattern}: cannot list {}: {}",
                            e.path().display(),
                            e.error()
                        )),
                    }
                }
            }
            Err(e) => {
                bad(format!("source {pattern}: {e}"));
                continue;
            }
        };
        for (live, rotations) in tail::rotations_of_pattern(pattern) {
            if rotations.is_empty() {
                continue;
            }
            let names = tail::file_names(rotations.iter().rev().take(5));
            crate::out!(
                "note     source {pattern}: {} file(s) are rotations of {} (read if chtail did not see them): {}{}",
                rotations.len(),
                live.display(),
                names.join(", "),
                if rotations.len() > names.len() {
                    ", …"
                } else {
                    ""
                }
            );
        }
        if paths.is_empty() {
            crate::out!(
                "note     source {pattern}: no file matches yet (files that appear later are picked up)"
            );
        }
        for p in paths {
            match File::open(&p) {
                Ok(_) => crate::out!("ok       source {pattern}: {} is readable", p.display()),
                Err(e) => bad(format!(
                    "source {pattern}: cannot read {}: {e}",
                    p.display()
                )),
            }
        }
    }

    if offline {
        crate::out!(
            "note     --offline: ClickHouse was not contacted; the server, the table and the column mapping are not checked"
        );
        return problems;
    }

    // ClickHouse.
    let ch = &config.clickhouse;
    let server = match Server::new(ch) {
        Ok(s) => s,
        Err(e) => {
            bad(e);
            return problems;
        }
    };
    let mut reachable = None;
    for one in server.each() {
        match one.version().await {
            Ok(v) => {
                crate::out!(
                    "ok       ClickHouse {v} at {} answers as user {}",
                    one.url(),
                    ch.user
                );
                reachable.get_or_insert((one, v));
            }
            Err(f) => bad(format!(
                "ClickHouse at {} does not answer as user {}: {} ({})",
                one.url(),
                ch.user,
                f.message,
                f.advice()
            )),
        }
    }
    let Some((server, _)) = reachable else {
        return problems;
    };
    let mut notes = Vec::new();
    let plan = match plan::prepare(&server, config, &mut notes).await {
        Ok(plan) => plan,
        Err(p) => {
            for n in notes {
                crate::out!("note     {n}");
            }
            for m in p.messages {
                bad(m);
            }
            return problems;
        }
    };
    for n in notes {
        crate::out!("note     {n}");
    }
    for t in &plan.tables {
        let table = format!("{}.{}", ch.database, t.name);
        if let Some(d) = &t.distributed {
            crate::out!("note     table {table}: {}", d.explain());
        }
        match delivery::of(&server, plan.version, &ch.database, &t.name).await {
            Delivery::ExactlyOnce { why, limit } => {
                crate::out!("ok       table {table}: delivery is exactly-once: {why}");
                crate::out!("note     table {table}: the deduplication window: {limit}");
            }
            Delivery::AtLeastOnce(why) => crate::out!(
                "note     table {table}: delivery is at-least-once: {why}. A batch inserted just before a crash, before its checkpoint, is sent again"
            ),
        }
        // The rollups `chtail schema apply` made, if any (README, "Managed
        // schema").
        if let Some(note) =
            crate::schema::rollup_note(&server, plan.version, &ch.database, &t.name).await
        {
            crate::out!("note     rollups {note}");
        }
    }
    match plan.catch_up_rows(config) {
        Ok(rows) => crate::out!(
            "ok       catch-up: a backlog goes in streamed INSERTs of up to {rows} rows (README, \"Catch-up\")"
        ),
        Err(why) => crate::out!(
            "note     catch-up: no streamed INSERTs ({why}); inserts stay at batch.max_rows"
        ),
    }
    for (n, (source, route)) in config.sources.iter().zip(&plan.sources).enumerate() {
        let table = &plan.tables[usize::from(route.route)].name;
        crate::out!(
            "ok       [[source]] #{} ({}) -> table {}.{table}; JSON key -> column (type):",
            n + 1,
            source.paths.join(", "),
            ch.database
        );
        for m in route.encoder.mapping() {
            let from = if m.from.is_empty() {
                "(nothing)".to_string()
            } else {
                m.from
            };
            let note = if m.note.is_empty() {
                String::new()
            } else {
                format!("  [{}]", m.note)
            };
            crate::out!("           {from} -> {} ({}){note}", m.column, m.ty);
        }
        let report = sample(route, &config.tail);
        report.print();
    }
    problems
}

/// What a sample of real lines would become.
#[derive(Default)]
struct Sample {
    lines: usize,
    rows: usize,
    /// Reason kind → count and up to three examples.
    rejected: Vec<(&'static str, usize, Vec<String>)>,
    /// Keys no column takes, with how many sampled lines had them.
    ignored: Vec<(String, usize)>,
}

/// Lines read from the end of each file of a source.
const SAMPLE_BYTES: u64 = 256 << 10;
const SAMPLE_LINES: usize = 1000;

/// Runs the last lines of the source's files through its encoder.
fn sample(source: &SourceRoute, tail: &config::Tail) -> Sample {
    use std::os::unix::fs::FileExt;
    let mut files: Vec<std::path::PathBuf> = source
        .patterns
        .iter()
        .filter_map(|p| glob::glob(p).ok())
        .flat_map(|paths| paths.flatten())
        .filter(|p| p.is_file() && !tail::is_compressed_name(p))
        .collect();
    // The newest files first: they show what the bot writes now.
    files.sort_by_key(|p| std::cmp::Reverse(p.metadata().and_then(|m| m.modified()).ok()));
    files.dedup();
    let mut out = Sample::default();
    let host = LineMeta::json(&tail::host_name());
    let now = LineMeta::json(&crate::parse::time::format_utc(crate::parse::time::now()));
    let mut buf = Vec::new();
    for path in files {
        if out.lines >= SAMPLE_LINES {
            break;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let from = size.saturating_sub(SAMPLE_BYTES);
        buf.resize(usize::try_from(size - from).unwrap_or(0), 0);
        let Ok(()) = file.read_exact_at(&mut buf, from) else {
            continue;
        };
        if from == 0 && tail::has_compressed_magic(&buf) {
            continue; // compressed; never read
        }
        let path_json = LineMeta::json(&path.to_string_lossy());
        let mut offset = from;
        let mut rest: &[u8] = &buf;
        if from > 0 {
            // Starts mid-line: skip to the first whole one.
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                continue;
            };
            offset += nl as u64 + 1;
            rest = &rest[nl + 1..];
        }
        let mut lines: Vec<(u64, &[u8])> = Vec::new();
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            lines.push((offset, &rest[..nl]));
            offset += nl as u64 + 1;
            rest = &rest[nl + 1..];
        }
        let take = lines.len().min(SAMPLE_LINES - out.lines);
        for &(at, line) in &lines[lines.len() - take..] {
            let Some(line) = tail::line_body(line, at) else {
                continue;
            };
            out.lines += 1;
            let meta = LineMeta {
                path: &path_json,
                offset: at,
                host: &host,
                ingest_time: &now,
            };
            let result = if line.len() > tail.max_line_bytes {
                Err(Reject::TooLong {
                    len: line.len() as u64,
                    max: tail.max_line_bytes,
                })
            } else {
                source.encoder.encode_line(line, &meta, &mut Vec::new())
            };
            match result {
                Ok(done) => {
                    out.rows += 1;
                    if done.ignored > 0 {
                        for k in source.encoder.ignored_keys(line) {
                            let full = out.ignored.len() >= 50;
                            match out.ignored.iter_mut().find(|(n, _)| *n == k) {
                                Some((_, c)) => *c += 1,
                                None if !full => out.ignored.push((k, 1)),
                                None => {}
                            }
                        }
                    }
                }
                Err(r) => {
                    let example = format!("{}:{at}: {r}", path.display());
                    match out
                        .rejected
                        .iter_mut()
                        .find(|(k, _, _)| *k == r.kind().label())
                    {
                        Some((_, c, ex)) => {
                            *c += 1;
                            if ex.len() < 3 {
                                ex.push(example);
                            }
                        }
                        None => out.rejected.push((r.kind().label(), 1, vec![example])),
                    }
                }
            }
        }
    }
    out
}

impl Sample {
    fn print(&self) {
        if self.lines == 0 {
            crate::out!("note     sample: no lines to try yet");
            return;
        }
        let quarantined = self.lines - self.rows;
        let status = if quarantined == 0 {
            "ok      "
        } else {
            "note    "
        };
        crate::out!(
            "{status} sample of the last {} line(s): {} would be inserted, {quarantined} quarantined",
            self.lines,
            self.rows
        );
        for (kind, count, examples) in &self.rejected {
            crate::out!("           {count} x {kind}, e.g.:");
            for e in examples {
                crate::out!("             {e}");
            }
        }
        if !self.ignored.is_empty() {
            let mut keys = self.ignored.clone();
            keys.sort_by_key(|(k, c)| (std::cmp::Reverse(*c), k.clone()));
            let shown: Vec<String> = keys
                .iter()
                .take(10)
                .map(|(k, c)| format!("{k:?} ({c})"))
                .collect();
            crate::out!(
                "note     keys with no column, ignored (set rename or catch_all to keep them): {}",
                shown.join(", ")
            );
        }
    }
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".chtail-check");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(probe)
}
