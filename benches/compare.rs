//! The comparison benchmark: `cargo bench --bench compare`.
//!
//! The same N bot events (default 2,000,000; `CHTAIL_BENCH_EVENTS`), in four
//! log files, loaded into the default table three ways against one private
//! ClickHouse on this machine:
//! - the server's own load of the rows, with no agent: `clickhouse-client`
//!   inserting a RowBinary file of them (made once by the server's own
//!   `SELECT … FORMAT RowBinary`),
//! - `clickhouse-client` inserting the log files as JSONEachRow,
//! - chtail end to end from the log files (metrics endpoint and the delay
//!   histogram on, as deployed).
//!
//! Each is measured until every row is committed: wall seconds, events/s,
//! the client's CPU-seconds per million events, the server's CPU-seconds per
//! million events (and with the merges that followed, until the server is
//! idle again), the client's peak RSS. Rounds alternate the order (default
//! 2; `CHTAIL_BENCH_ROUNDS`); the table shows each method's best round by
//! events/s, then the ratios and the targets.
//!
//! `CHTAIL_BENCH_SERVER=modern` runs against ClickHouse 26.9 (chdb behind
//! the test's HTTP front) instead of Debian's 18.16. There is no native
//! protocol there, so the server's own load is `curl` posting the RowBinary
//! file and the JSON lines to the same front; the front is Python and
//! measures itself more than the engine.

// The bench uses a few of the tests' helpers; the rest are the tests'.
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{ClickHouse, append, cpu_seconds};

fn peak_rss_mib(pid: u32) -> f64 {
    support::peak_rss_kib(pid) as f64 / 1024.0
}

/// One method's figures in one round.
#[derive(Clone)]
struct Run {
    who: &'static str,
    round: u32,
    wall: f64,
    client_cpu: f64,
    server_cpu: f64,
    server_cpu_settled: f64,
    client_rss_mib: f64,
    load: String,
}

impl Run {
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.wall
    }
}

/// Rows committed in `table`, from the parts list (cheap for the server,
/// unlike a count).
fn rows(ch: &ClickHouse, table: &str) -> u64 {
    let (db, name) = table.split_once('.').expect("db.table");
    ch.try_query(&format!(
        "SELECT sum(rows) FROM system.parts WHERE active AND database = '{db}' AND table = '{name}'"
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Waits until the server has no merge running for two seconds (at most a
/// minute), so that one method's merges are not billed to the next.
fn settle(ch: &ClickHouse) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while quiet < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let merges = ch
            .try_query("SELECT count() FROM system.merges")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        quiet = if merges == 0 { quiet + 1 } else { 0 };
    }
}

/// The client's own resource use, from `wait4` on it.
struct Usage {
    cpu: f64,
    max_rss_mib: f64,
}

#[allow(unsafe_code)] // wait4: the only way to read one child's rusage.
fn wait_with_usage(child: std::process::Child) -> (std::process::ExitStatus, Usage) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    let mut status = 0;
    // SAFETY: rusage is plain data, fully written by wait4 on success.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; both pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    // The child is reaped; `Child` must not wait for it again.
    std::mem::forget(child);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    use std::os::unix::process::ExitStatusExt;
    (
        std::process::ExitStatus::from_raw(status),
        Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
        },
    )
}

struct Bench {
    ch: ClickHouse,
    n: u64,
    /// The four log files.
    logs: Vec<PathBuf>,
    /// The same lines in one file, for the JSONEachRow load.
    json: PathBuf,
    /// The rows as RowBinary, made by the server.
    rowbinary: PathBuf,
    /// `CREATE TABLE {table} …` as chtail creates it.
    ddl: String,
    /// Its columns, `a, b, …`, as an INSERT names them.
    columns: String,
    _tmp: tempfile::TempDir,
}

impl Bench {
    fn client_load(
        &self,
        who: &'static str,
        round: u32,
        format: &str,
        file: &Path,
        http: bool,
    ) -> Run {
        let db = format!(
            "cmp_{}_{}_{round}",
            format.to_lowercase(),
            if http { "http" } else { "native" }
        );
        let table = format!("{db}.argus_events");
        self.ch.query(&format!("DROP DATABASE IF EXISTS {db}"));
        self.ch.query(&format!("CREATE DATABASE {db}"));
        // 18.16 calls LowCardinality experimental (chtail sets this too).
        let path = if self.ch.is_modern() {
            "/"
        } else {
            "/?allow_experimental_low_cardinality_type=1"
        };
        let ddl = self.ddl.replace("{table}", &table);
        support::http_post(self.ch.http_port, path, ddl.as_bytes(), &self.ch.password())
            .expect("CREATE TABLE");
        settle(&self.ch);
        let server = self.ch.server_pid();
        let load = support::loadavg();
        let server_before = cpu_seconds(server);
        let start = Instant::now();
        let child = if http {
            // `-T` streams the file (`--data-binary @file` would read it
            // into memory first).
            Command::new("curl")
                .args(["-sS", "--fail", "-H", "Expect:", "-X", "POST", "-T"])
                .arg(file)
                .arg(format!(
                    "{}/?input_format_skip_unknown_fields=1&query=INSERT%20INTO%20{table}%20({})%20FORMAT%20{format}",
                    self.ch.url(),
                    self.columns.replace(' ', "%20")
                ))
                .stdout(Stdio::null())
                .spawn()
                .expect("curl")
        } else {
            Command::new("clickhouse-client")
                .args(["--host", "127.0.0.1", "--port"])
                .arg(self.ch.tcp_port().to_string())
                .arg("--input_format_skip_unknown_fields=1")
                .arg("--query")
                .arg(format!(
                    "INSERT INTO {table} ({}) FORMAT {format}",
                    self.columns
                ))
                .stdin(File::open(file).expect("the input file"))
                .spawn()
                .expect("clickhouse-client")
        };
        let (status, usage) = wait_with_usage(child);
        let wall = start.elapsed().as_secs_f64();
        let server_cpu = cpu_seconds(server) - server_before;
        assert!(status.success(), "{who}: {status}");
        assert_eq!(rows(&self.ch, &table), self.n, "{who}: rows");
        settle(&self.ch);
        Run {
            who,
            round,
            wall,
            client_cpu: usage.cpu,
            server_cpu,
            server_cpu_settled: cpu_seconds(server) - server_before,
            client_rss_mib: usage.max_rss_mib,
            load,
        }
    }

    fn chtail_load(&self, round: u32) -> Run {
        // `CHTAIL_BENCH_CONFIG`: more of chtail's config, to compare settings.
        let extra = std::env::var("CHTAIL_BENCH_CONFIG").unwrap_or_default();
        let env = support::Env::new(
            &self.ch,
            &format!("cmp_chtail_{round}"),
            "events-*.jsonl",
            &extra.replace("\\n", "\n"),
        );
        // `CHTAIL_BENCH_CLICKHOUSE`: more keys of its `[clickhouse]` section.
        if let Ok(keys) = std::env::var("CHTAIL_BENCH_CLICKHOUSE") {
            let text = std::fs::read_to_string(&env.config).unwrap();
            let text = text.replacen(
                "[clickhouse]\n",
                &format!("[clickhouse]\n{}\n", keys.replace("\\n", "\n")),
                1,
            );
            std::fs::write(&env.config, text).unwrap();
        }
        for log in &self.logs {
            std::fs::hard_link(log, env.logs.join(log.file_name().unwrap())).expect("link");
        }
        let table = env.table();
        settle(&self.ch);
        let server = self.ch.server_pid();
        let load = support::loadavg();
        let server_before = cpu_seconds(server);
        let start = Instant::now();
        let mut chtail = env.start();
        let pid = chtail.pid();
        let deadline = start + Duration::from_secs(600);
        while rows(&self.ch, &table) < self.n {
            assert!(Instant::now() < deadline, "chtail: rows after 600 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let wall = start.elapsed().as_secs_f64();
        let client_cpu = cpu_seconds(pid);
        let server_cpu = cpu_seconds(server) - server_before;
        let client_rss_mib = peak_rss_mib(pid);
        settle(&self.ch);
        let server_cpu_settled = cpu_seconds(server) - server_before;
        assert!(chtail.terminate(Duration::from_secs(60)).success());
        assert_eq!(rows(&self.ch, &table), self.n, "chtail: rows");
        Run {
            who: "chtail",
            round,
            wall,
            client_cpu,
            server_cpu,
            server_cpu_settled,
            client_rss_mib,
            load,
        }
    }
}

fn prepare(ch: ClickHouse, n: u64) -> Bench {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = 4;
    let logs: Vec<PathBuf> = (0..files)
        .map(|i| tmp.path().join(format!("events-{i}.jsonl")))
        .collect();
    std::thread::scope(|s| {
        for (i, path) in logs.iter().enumerate() {
            let i = i as u64;
            s.spawn(move || append(path, i * n / files, (i + 1) * n / files));
        }
    });
    let json = tmp.path().join("all.jsonl");
    {
        let mut out = File::create(&json).unwrap();
        for log in &logs {
            std::io::copy(&mut File::open(log).unwrap(), &mut out).unwrap();
        }
    }
    let bytes = std::fs::metadata(&json).unwrap().len();
    // The table as chtail creates it: `chtail check` creates it.
    let env = support::Env::new(&ch, "cmp_schema", "none-*.jsonl", "");
    let out = Command::new(env!("CARGO_BIN_EXE_chtail"))
        .args(["check", "--config"])
        .arg(&env.config)
        .output()
        .expect("chtail check");
    assert!(out.status.success(), "chtail check: {out:?}");
    let ddl = ch
        .query(&format!("SHOW CREATE TABLE {}", env.table()))
        .trim()
        .replace("\\n", "\n")
        .replace("\\'", "'")
        .replace(&env.table(), "{table}");
    let columns = ch
        .query(&format!("DESCRIBE TABLE {}", env.table()))
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    // The rows as the server itself writes them in RowBinary.
    let source = env.table();
    let rowbinary = tmp.path().join("rows.bin");
    // Streamed, so that this process stays small: a child's peak RSS as
    // the kernel reports it starts from its parent's.
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-H", "Expect:", "-X", "POST", "-T"])
        .arg(&json)
        .arg(format!(
            "{}/?input_format_skip_unknown_fields=1&query=INSERT%20INTO%20{source}%20FORMAT%20JSONEachRow",
            ch.url()
        ))
        .status()
        .expect("curl");
    assert!(out.success(), "the JSONEachRow load for the RowBinary file");
    assert_eq!(rows(&ch, &source), n, "rows for the RowBinary file");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&rowbinary)
        .arg(format!(
            "{}/?query=SELECT%20*%20FROM%20{source}%20FORMAT%20RowBinary",
            ch.url()
        ))
        .status()
        .expect("curl");
    assert!(out.success(), "SELECT … FORMAT RowBinary");
    println!(
        "{n} events: {:.0} MB of log lines in {files} files, {:.0} MB as RowBinary; server {}",
        bytes as f64 / 1e6,
        std::fs::metadata(&rowbinary).unwrap().len() as f64 / 1e6,
        ch.query("SELECT version()").trim()
    );
    Bench {
        ch,
        n,
        logs,
        json,
        rowbinary,
        ddl,
        columns,
        _tmp: tmp,
    }
}

fn main() {
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env_num("CHTAIL_BENCH_EVENTS", 2_000_000);
    let rounds = u32::try_from(env_num("CHTAIL_BENCH_ROUNDS", 2)).unwrap_or(2);
    let modern = std::env::var("CHTAIL_BENCH_SERVER").is_ok_and(|v| v == "modern");
    let ch = if modern {
        ClickHouse::modern("")
    } else {
        ClickHouse::start()
    };
    let b = prepare(ch, n);
    let (rb, js) = if modern {
        ("curl RowBinary file", "curl JSONEachRow")
    } else {
        (
            "clickhouse-client RowBinary file",
            "clickhouse-client JSONEachRow",
        )
    };
    // Over HTTP, as chtail sends (on the modern server the loads above are).
    let http_rb = "curl RowBinary file over HTTP";
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let mut order: Vec<u8> = if modern {
            vec![0, 1, 2]
        } else {
            vec![0, 1, 2, 3]
        };
        if round % 2 == 0 {
            order.reverse();
        }
        for m in order {
            let run = match m {
                0 => b.client_load(rb, round, "RowBinary", &b.rowbinary, modern),
                1 => b.client_load(js, round, "JSONEachRow", &b.json, modern),
                2 => b.chtail_load(round),
                _ => b.client_load(http_rb, round, "RowBinary", &b.rowbinary, true),
            };
            println!(
                "round {round}: {:<34} {:>6.2} s {:>9.0} events/s  client {:.2} CPU-s  server {:.2} CPU-s ({:.2} with merges)  client peak RSS {:.1} MiB  load {}",
                run.who,
                run.wall,
                run.rate(n),
                run.client_cpu,
                run.server_cpu,
                run.server_cpu_settled,
                run.client_rss_mib,
                run.load
            );
            runs.push(run);
        }
    }
    let best = |who: &str| -> Run {
        runs.iter()
            .filter(|r| r.who == who)
            .max_by(|a, b| a.rate(n).total_cmp(&b.rate(n)))
            .expect("a run")
            .clone()
    };
    let m = n as f64 / 1e6;
    println!();
    println!(
        "| who | wall s | events/s | client CPU-s per M | server CPU-s per M | server CPU-s per M with merges | client peak RSS MiB | load average |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let mut who = vec![rb, js, "chtail"];
    if !modern {
        who.push(http_rb);
    }
    let table: Vec<Run> = who.iter().map(|w| best(w)).collect();
    for r in &table {
        println!(
            "| {} (round {}) | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            r.who,
            r.round,
            r.wall,
            r.rate(n),
            r.client_cpu / m,
            r.server_cpu / m,
            r.server_cpu_settled / m,
            r.client_rss_mib,
            r.load
        );
    }
    let (own, chtail) = (&table[0], &table[2]);
    let speed = chtail.rate(n) / own.rate(n);
    let server = chtail.server_cpu / own.server_cpu;
    let server_settled = chtail.server_cpu_settled / own.server_cpu_settled;
    let cpu = chtail.client_cpu / m;
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "chtail events/s over the server's own RowBinary load: {:.0} % (target >= 90 %: {})",
        speed * 100.0,
        mark(speed >= 0.9)
    );
    println!(
        "server CPU under chtail over the RowBinary load: {:.0} % ({:.0} % with merges) (target <= 110 %: {})",
        server * 100.0,
        server_settled * 100.0,
        mark(server <= 1.1)
    );
    println!(
        "chtail CPU: {cpu:.2} CPU-seconds per million events (target <= 0.5: {})",
        mark(cpu <= 0.5)
    );
    println!(
        "chtail peak RSS: {:.1} MiB (target <= 32 MiB: {}; `cargo bench --bench e2e` measures the outage)",
        chtail.client_rss_mib,
        mark(chtail.client_rss_mib <= 32.0)
    );
}
