//! End-to-end benchmark: `cargo bench --bench e2e`.
//!
//! Writes N sample bot events (default 2,000,000; `CHTAIL_BENCH_EVENTS`)
//! into four files, starts chtail against a private ClickHouse, and measures
//! until every row is committed:
//! - end-to-end events per second (chtail's start to the last row counted),
//! - chtail's CPU seconds (user + system) per million events,
//! - chtail's peak RSS.
//!
//! Then it stops ClickHouse, appends another N/2 events, lets chtail run
//! into the outage, and reports its RSS while the backlog grows: the queue
//! is bounded, so memory must stay flat.
//!
//! Then the live-writer phase: the bot (`tests/support/bot.py`, Python's
//! `RotatingFileHandler`, 8 MiB files) writes at 20,000 events/s for 30 s
//! with a glob matching only the live file; midway chtail is killed with
//! SIGKILL and restarted. It reports events written, rows, lost,
//! duplicated, and chtail's peak RSS across both processes.
//!
//! Soak mode (`CHTAIL_BENCH_SOAK_MINUTES=30 cargo bench --bench e2e`): only
//! a rotating writer at 5,000 events/s (10 MiB files, 20 backups) for that
//! long, printing chtail's RSS and open descriptors every minute, then the
//! slope of RSS over the last 20 minutes (or the whole run if shorter).

// The bench uses a few of the tests' helpers; the rest are the tests'.
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::{ClickHouse, append, count, cpu_seconds, wait_until};

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Least-squares slope of (minute, MiB) points, in MiB per minute.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

fn soak(minutes: u64) {
    let ch = ClickHouse::start();
    let env = support::Env::new(
        &ch,
        "soak",
        "events.jsonl",
        "[tail]\npoll_interval = \"1s\"",
    );
    let chtail = env.start();
    let pid = chtail.pid();
    let rate = 5_000;
    let n = rate * 60 * minutes;
    let writer =
        support::Writer::start(&env.log("events.jsonl"), "rotating20", 0, n, 10 << 20, rate);
    let mut points = Vec::new();
    let start = Instant::now();
    for minute in 1..=minutes {
        while start.elapsed() < Duration::from_secs(60 * minute) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let rss = proc_field(pid, "status", "VmRSS:") as f64 / 1024.0;
        println!(
            "soak minute {minute}: RSS {rss:.1} MiB, {} descriptors, {} rows",
            fds(pid),
            count(&ch, &env.table())
        );
        points.push((minute as f64, rss));
    }
    let rate_reached = writer_finish(&mut Some(writer));
    let last: Vec<_> = points.iter().rev().take(20).rev().copied().collect();
    println!(
        "soak: {n} events at {rate_reached:.0}/s; RSS slope over the last {} minutes: {:+.3} MiB/min; peak RSS {:.1} MiB",
        last.len(),
        slope(&last),
        proc_field(pid, "status", "VmHWM:") as f64 / 1024.0
    );
    drop(chtail);
}

fn writer_finish(writer: &mut Option<support::Writer>) -> f64 {
    writer.take().map(support::Writer::finish).unwrap_or(0.0)
}

/// The bot at its pace with rotation, and one SIGKILL of chtail midway.
fn live_phase(ch: &ClickHouse) {
    let env = support::Env::new(
        ch,
        "bench_live",
        "events.jsonl",
        "[tail]\npoll_interval = \"1s\"",
    );
    let n = 20_000 * 30;
    let writer =
        support::Writer::start(&env.log("events.jsonl"), "rotating", 0, n, 8 << 20, 20_000);
    let mut chtail = env.start();
    let mut peak = 0;
    let sample = |pid: u32, peak: &mut u64, secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            *peak = (*peak).max(proc_field(pid, "status", "VmHWM:"));
        }
    };
    sample(chtail.pid(), &mut peak, 15);
    chtail.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let mut chtail = env.start();
    let started = Instant::now();
    sample(chtail.pid(), &mut peak, 15);
    // What following the bot costs: the restarted chtail's CPU while the
    // bot goes on writing (its first moments catch up on what was written
    // while it was down).
    let (cpu, secs) = (cpu_seconds(chtail.pid()), started.elapsed().as_secs_f64());
    let rate = writer.finish();
    let table = env.table();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (support::seq_counts(ch, &table).len() as u64) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(proc_field(chtail.pid(), "status", "VmHWM:"));
    }
    assert!(chtail.terminate(Duration::from_secs(60)).success());
    let seqs = support::seq_counts(ch, &table);
    let dups: u64 = seqs.values().map(|c| c - 1).sum();
    println!(
        "live writer: {n} events at {rate:.0}/s with rotation and one kill -9: {} rows, {} lost, {dups} duplicated; chtail peak RSS {:.1} MiB",
        seqs.values().sum::<u64>(),
        n - seqs.len() as u64,
        peak as f64 / 1024.0
    );
    println!(
        "chtail CPU while the bot writes: {cpu:.2} s in {secs:.1} s ({:.0} % of a core, about {:.2} CPU-seconds per million events)",
        cpu / secs * 100.0,
        cpu / (secs * rate) * 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    if let Some(minutes) = std::env::var("CHTAIL_BENCH_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return soak(minutes);
    }
    let n: u64 = std::env::var("CHTAIL_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let mut ch = ClickHouse::start();
    let env = support::Env::new(&ch, "bench", "events-*.jsonl", "");

    let t = Instant::now();
    let files = 4;
    std::thread::scope(|s| {
        for i in 0..files {
            let path = env.log(&format!("events-{i}.jsonl"));
            s.spawn(move || append(&path, i * n / files, (i + 1) * n / files));
        }
    });
    let bytes: u64 = (0..files)
        .map(|i| {
            std::fs::metadata(env.log(&format!("events-{i}.jsonl")))
                .unwrap()
                .len()
        })
        .sum();
    println!(
        "wrote {n} events ({:.0} MiB) in {:.1}s",
        bytes as f64 / f64::from(1 << 20),
        t.elapsed().as_secs_f64()
    );

    let mut chtail = env.start();
    let pid = chtail.pid();
    let start = Instant::now();
    let table = env.table();
    wait_until(Duration::from_secs(600), "all rows", || {
        std::thread::sleep(Duration::from_millis(50));
        count(&ch, &table) >= n
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid);
    let hwm_kib = proc_field(pid, "status", "VmHWM:");
    let rows = count(&ch, &table);
    println!(
        "end to end: {n} events in {elapsed:.2}s = {:.0} events/s",
        n as f64 / elapsed
    );
    println!(
        "chtail CPU: {cpu:.2}s user+system = {:.2} CPU-seconds per million events",
        cpu / (n as f64 / 1e6)
    );
    println!("chtail peak RSS: {:.1} MiB", hwm_kib as f64 / 1024.0);
    assert_eq!(rows, n, "rows in ClickHouse");

    // The outage: the backlog grows in the files, not in chtail.
    ch.stop();
    let more = n / 2;
    append(&env.log("events-0.jsonl"), n, n + more);
    std::thread::sleep(Duration::from_secs(10));
    let rss_down = proc_field(pid, "status", "VmRSS:");
    ch.resume();
    wait_until(Duration::from_secs(600), "the backlog", || {
        std::thread::sleep(Duration::from_millis(50));
        count(&ch, &table) >= n + more
    });
    let hwm_after = proc_field(pid, "status", "VmHWM:");
    println!(
        "ClickHouse down with {more} events waiting: chtail RSS {:.1} MiB; peak RSS over the whole run {:.1} MiB",
        rss_down as f64 / 1024.0,
        hwm_after as f64 / 1024.0
    );
    assert_eq!(count(&ch, &table), n + more, "rows after the outage");
    let status = chtail.terminate(Duration::from_secs(60));
    assert!(status.success());
    println!(
        "backlog phase peak RSS {:.1} MiB (above)",
        hwm_after as f64 / 1024.0
    );
    live_phase(&ch);
}
