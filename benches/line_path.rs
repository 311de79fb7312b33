//! The per-line path alone, on one core: the bot's sample events, read in
//! `tail.read_buffer_bytes`-sized pieces, split into lines by the tailer's
//! own splitter, parsed and encoded into RowBinary rows of the default
//! table by the real encoder (with the event-time key on, as by default).
//! No files, no queue, no server: a change to the hot path is judged in
//! seconds.
//!
//! `cargo bench --bench line_path` (`CHTAIL_BENCH_LINES`, default 1,000,000;
//! `CHTAIL_BENCH_ROUNDS`, default 5, the best is kept) prints lines/s,
//! MB/s and nanoseconds of this thread's CPU per line.

use std::sync::Arc;
use std::time::Instant;

use chtail::parse::{Encoder, LineMeta, Schema, default_table_columns};
use chtail::tail::LineSplitter;

/// A line as the bot writes it (Python's `json.dumps` of its event).
fn event(seq: u64) -> String {
    let extra = if seq.is_multiple_of(3) {
        String::new()
    } else {
        format!(
            r#", "command": "cmd{}", "duration_ms": {}.5"#,
            seq % 5,
            seq % 100
        )
    };
    let kind = if seq.is_multiple_of(3) {
        "interaction"
    } else {
        "app_command"
    };
    format!(
        r#"{{"ts": "2026-11-22T10:00:00.{:06}+00:00", "event": "{kind}", "guild_id": "{}", "type": "application_command"{extra}}}"#,
        seq % 1_000_000,
        seq % 7
    )
}

/// CPU time of this thread, in nanoseconds (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat: the bench needs Linux's scheduler statistics")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let lines = env_number("CHTAIL_BENCH_LINES", 1_000_000);
    let rounds = env_number("CHTAIL_BENCH_ROUNDS", 5);
    let mut input = Vec::new();
    for seq in 0..lines {
        input.extend_from_slice(event(seq).as_bytes());
        input.push(b'\n');
    }
    let schema = Schema::plain(&default_table_columns()).expect("the default table");
    let encoder = Encoder::plain(Arc::new(schema)).with_time_key(Some("ts".into()));
    let read_size = 64 << 10; // tail.read_buffer_bytes' default
    let mut best: Option<(f64, u64)> = None;
    for round in 1..=rounds {
        let mut splitter = LineSplitter::new(0, 1 << 20);
        let mut rows = Vec::with_capacity(256 << 10);
        let mut encoded = 0u64;
        let (wall, cpu) = (Instant::now(), thread_cpu_ns());
        for piece in input.chunks(read_size) {
            splitter.feed(piece);
            while let Some(p) = splitter.next_piece() {
                let line = p.line().expect("no over-long line in the sample");
                encoder
                    .encode_line(line, &LineMeta::NONE, &mut rows)
                    .expect("every sample line encodes");
                encoded += 1;
                // A chunk is cut at about 128 KiB.
                if rows.len() >= 128 << 10 {
                    rows.clear();
                }
            }
        }
        let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu_ns() - cpu);
        assert_eq!(encoded, lines, "every line split and encoded");
        println!(
            "round {round}: {lines} lines in {wall:.3} s wall, {:.3} s CPU",
            cpu as f64 / 1e9
        );
        if best.is_none_or(|(_, c)| cpu < c) {
            best = Some((wall, cpu));
        }
    }
    let (_, cpu) = best.expect("at least one round");
    let secs = cpu as f64 / 1e9;
    println!(
        "line path (split, parse, encode; best of {rounds}): {:.0} lines/s, {:.1} MB/s, {:.0} ns CPU per line, \
         on one core ({} bytes a line on average)",
        lines as f64 / secs,
        input.len() as f64 / secs / 1e6,
        cpu as f64 / lines as f64,
        input.len() as u64 / lines
    );
}
