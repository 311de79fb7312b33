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

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{ClickHouse, append, count, wait_until};

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (f[11] + f[12]) as f64 / ticks
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
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
        bytes as f64 / (1 << 20) as f64,
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
}
