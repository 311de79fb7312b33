//! The bot's pace: a writer at 20,000 events/s for 15 s through each way a
//! bot rotates (Python's `RotatingFileHandler` and `TimedRotatingFileHandler`,
//! the real `logrotate` with `create`, `copytruncate` and `create` +
//! `compress` + `delaycompress`), each with a glob matching only the live
//! file and with one matching the rotated names too; files rotated while
//! chtail is down; chtail killed with SIGKILL during rotating writes. The
//! rows in ClickHouse are the judge (every event written and still on disk
//! arrives, none twice, no stray rows), and chtail's peak RSS stays under
//! 48 MiB with the default settings.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    self, BOT_RATE, BOT_SECS, ClickHouse, Env, SHORT, Writer, one_at_a_time, peak_rss_kib,
    seq_counts, seqs_on_disk, shared,
};

/// The memory bound chtail keeps with default settings (README, "Memory").
const PEAK_RSS_KIB: u64 = 48 << 10;

/// Default settings, apart from the glob (the poll interval too: a one
/// second poll beside a one second rotation is the case that hid files).
const DEFAULTS: &str = "[tail]\npoll_interval = \"1s\"";

/// How the bot's files are rotated.
#[derive(Clone, Copy)]
enum Rotation {
    /// A Python logging handler rotating by itself: handler, maxBytes.
    Python(&'static str, u64),
    /// The real logrotate every second: options, with the bot writing
    /// through this handler.
    Logrotate(&'static str, &'static str),
}

fn logrotate(conf: &Path, state: &Path) {
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(state)
        .arg(conf)
        .output()
        .expect("logrotate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A bot whose WatchedFileHandler reopens its file between logrotate's
    // rename and its create makes logrotate move the new file aside as a
    // `.backup` (a race of theirs, not chtail's): those lines are in a
    // file, and must arrive like any other.
    if stderr.contains("already exists") {
        println!("logrotate: {}", stderr.trim());
        return;
    }
    assert!(out.status.success(), "logrotate: {stderr}");
}

/// Writes at the bot's pace while rotating; returns the rate reached.
fn write_rotating(env: &Env, rotation: Rotation, first: u64, n: u64) -> f64 {
    let log = env.log("events.jsonl");
    match rotation {
        Rotation::Python(handler, max_bytes) => {
            Writer::start(&log, handler, first, n, max_bytes, BOT_RATE).finish()
        }
        Rotation::Logrotate(handler, options) => {
            let conf = env.tmp.path().join("logrotate.conf");
            std::fs::write(
                &conf,
                format!(
                    "{} {{\n  rotate 1000\n  missingok\n  {options}\n}}\n",
                    log.display()
                ),
            )
            .unwrap();
            let state = env.tmp.path().join("logrotate.state");
            let mut writer = Writer::start(&log, handler, first, n, 0, BOT_RATE);
            while writer.running() {
                std::thread::sleep(Duration::from_secs(1));
                logrotate(&conf, &state);
            }
            writer.finish()
        }
    }
}

fn live(name: &str, glob: &str, rotation: Rotation) {
    let _one = one_at_a_time();
    live_on(shared(), name, glob, rotation);
}

fn live_on(ch: &ClickHouse, name: &str, glob: &str, rotation: Rotation) {
    let env = Env::new(ch, name, glob, DEFAULTS);
    let mut chtail = env.start();
    let n = BOT_RATE * BOT_SECS;
    let rate = write_rotating(&env, rotation, 0, n);
    let files = std::fs::read_dir(&env.logs).unwrap().count();
    // With logrotate, lines can be in no file by logrotate's own doing
    // (written between its copy and truncate; a `.backup` it overwrote):
    // everything in a file must arrive, once.
    let python = matches!(rotation, Rotation::Python(..));
    let on_disk = seqs_on_disk(&env.logs);
    let peak = peak_rss_kib(chtail.pid());
    let (distinct, dups) =
        support::finish(ch, &env.table(), on_disk.len() as u64, &mut chtail, SHORT);
    let got = seq_counts(ch, &env.table());
    let missing = on_disk.iter().filter(|s| !got.contains_key(s)).count();
    let stray = got.keys().filter(|s| **s >= n).count();
    println!(
        "{name} (glob {glob}): {n} events at {rate:.0}/s into {files} files, {} on disk: \
         {distinct} arrived, {missing} missing, {dups} duplicated; peak RSS {} KiB",
        on_disk.len(),
        peak
    );
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
    assert!(files > 5, "the test must rotate: {files} files");
    if python {
        assert_eq!(on_disk.len() as u64, n, "every event is in a file");
    }
    assert_eq!(
        (missing, dups, stray),
        (0, 0, 0),
        "chtail log:\n{}",
        chtail.logs()
    );
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

const ROTATING: Rotation = Rotation::Python("rotating", 4 << 20);
const TIMED: Rotation = Rotation::Python("timed", 0);
const CREATE: Rotation = Rotation::Logrotate("watched", "create\n  nocompress");
const COPYTRUNCATE: Rotation = Rotation::Logrotate("plain", "copytruncate\n  nocompress");
const COMPRESS: Rotation = Rotation::Logrotate("watched", "create\n  compress\n  delaycompress");

#[test]
fn rotating_file_handler_live_name_only() {
    live("live_rot_narrow", "events.jsonl", ROTATING);
}

#[test]
fn rotating_file_handler_rotated_names_too() {
    live("live_rot_wide", "events.jsonl*", ROTATING);
}

// Issue 11, case 1: with a live-name-only glob, the live file was never
// tracked while the bot wrote, so every renamed file was lost.
#[test]
fn timed_rotating_file_handler_live_name_only() {
    live("live_timed_narrow", "events.jsonl", TIMED);
}

#[test]
fn timed_rotating_file_handler_rotated_names_too() {
    live("live_timed_wide", "events.jsonl*", TIMED);
}

#[test]
fn logrotate_create_live_name_only() {
    live("live_lr_create_narrow", "events.jsonl", CREATE);
}

#[test]
fn logrotate_create_rotated_names_too() {
    live("live_lr_create_wide", "events.jsonl*", CREATE);
}

#[test]
fn logrotate_copytruncate_live_name_only() {
    live("live_lr_copy_narrow", "events.jsonl", COPYTRUNCATE);
}

#[test]
fn logrotate_copytruncate_rotated_names_too() {
    live("live_lr_copy_wide", "events.jsonl*", COPYTRUNCATE);
}

#[test]
fn logrotate_compress_delaycompress_live_name_only() {
    live("live_lr_gz_narrow", "events.jsonl", COMPRESS);
}

#[test]
fn logrotate_compress_delaycompress_rotated_names_too() {
    live("live_lr_gz_wide", "events.jsonl*", COMPRESS);
}

// Issue 11, case 2: files born and rotated away while chtail was down,
// never seen by it, with a live-name-only glob.
#[test]
fn files_born_and_rotated_while_chtail_is_down_are_all_read() {
    let _one = one_at_a_time();
    let ch = shared();
    let env = Env::new(ch, "live_down", "events.jsonl", DEFAULTS);
    let n = BOT_RATE * 20;
    // Small files: several are born and rotated away during the downtime.
    let mut writer = Writer::bot(&env, n, 1 << 20);
    let mut chtail = env.start();
    std::thread::sleep(Duration::from_secs(5));
    let mut peak = peak_rss_kib(chtail.pid());
    assert!(chtail.terminate(SHORT).success(), "{}", chtail.logs());
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let files_during_downtime = std::fs::read_dir(&env.logs).unwrap().count();
    let mut chtail = env.start();
    let rate = {
        while writer.running() {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(peak_rss_kib(chtail.pid()));
        }
        writer.finish()
    };
    peak = peak.max(peak_rss_kib(chtail.pid()));
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "rotated while down ({:.0} s, {files_during_downtime} files by then): {n} events at {rate:.0}/s: \
         {distinct} arrived, {dups} duplicated; peak RSS {peak} KiB",
        down.elapsed().as_secs_f64()
    );
    assert_eq!((distinct, dups), (n, 0), "chtail log:\n{}", chtail.logs());
    assert!(
        chtail
            .logs()
            .contains("found a rotated file chtail had not read"),
        "the downtime must have hidden whole files: {}",
        chtail.logs()
    );
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
    // The operator can see which files the source treats as rotations.
    let status = support::chtail_cmd(&["status"], &env.config);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("rotations of"), "{status}");
    let check = support::chtail_cmd(&["check"], &env.config);
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("are rotations of"), "{check}");
}

/// chtail SIGKILLed at random moments while the bot writes and rotates at
/// its pace, restarted half a second later each time.
/// Runs chtail for a random 1 to 3 s, sampling its RSS, then SIGKILLs
/// it; returns the peak RSS seen.
fn live_then_kill(env: &Env, rng: &mut support::XorShift) -> u64 {
    let mut chtail = env.start();
    let mut peak = 0;
    let until = Instant::now() + Duration::from_millis(1000 + rng.next() % 2000);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(peak_rss_kib(chtail.pid()));
    }
    chtail.kill9();
    peak
}

fn kill_9_during(name: &str, glob: &str, ch: &ClickHouse) {
    let max_rows = 50_000; // the default: what one kill can leave in flight
    let env = Env::new(ch, name, glob, DEFAULTS);
    let n = BOT_RATE * BOT_SECS;
    let mut writer = Writer::bot(&env, n, 2 << 20);
    let mut kills = 0;
    let mut peak = 0;
    let mut rng = support::XorShift(0x2545f4914f6cdd1d);
    while writer.running() {
        peak = peak.max(live_then_kill(&env, &mut rng));
        kills += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let rate = writer.finish();
    let mut chtail = env.start();
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    let lost = n - distinct;
    let bound = if ch.is_modern() {
        "the server deduplicates".to_string()
    } else {
        format!(
            "bound {} on a server that cannot deduplicate",
            kills * max_rows
        )
    };
    println!(
        "{name}: kill -9 x{kills} during rotating writes at {rate:.0}/s: {n} events, {lost} lost, \
         {dups} duplicated ({bound}); peak RSS {peak} KiB"
    );
    assert_eq!(lost, 0, "chtail log:\n{}", chtail.logs());
    if ch.is_modern() {
        assert_eq!(dups, 0, "the modern server deduplicates every replay");
    } else {
        assert!(
            dups <= kills * max_rows,
            "duplicates beyond what was in flight"
        );
    }
    assert!(kills >= 5, "the writer finished too soon to test anything");
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

#[test]
fn kill_9_during_rotating_writes_live_name_only() {
    let _one = one_at_a_time();
    kill_9_during("live_kill_narrow", "events.jsonl", shared());
}

#[test]
fn kill_9_during_rotating_writes_rotated_names_too() {
    let _one = one_at_a_time();
    kill_9_during("live_kill_wide", "events.jsonl*", shared());
}

// The same on the modern engine (ClickHouse 26.9 through the chdb front),
// where a replay is deduplicated: not one row twice, even with kills.
#[test]
fn modern_server_timed_rotating_file_handler_live_name_only() {
    let _one = one_at_a_time();
    let ch = ClickHouse::modern("");
    live_on(&ch, "live_modern_timed", "events.jsonl", TIMED);
}

#[test]
fn modern_server_kill_9_during_rotating_writes_live_name_only() {
    let _one = one_at_a_time();
    let ch = ClickHouse::modern("");
    kill_9_during("live_modern_kill", "events.jsonl", &ch);
}

// Issue 11, case 3: memory while ClickHouse stops answering (frozen: no
// reply, no reset, as in a partition) while the bot writes at its pace.
#[test]
fn a_server_that_stops_answering_while_the_bot_writes_costs_no_memory_and_loses_nothing() {
    let _one = one_at_a_time();
    let ch = ClickHouse::start();
    let env = Env::new(&ch, "live_frozen", "events.jsonl", DEFAULTS);
    let n = BOT_RATE * BOT_SECS;
    let mut chtail = env.start();
    let mut writer = Writer::bot(&env, n, 4 << 20);
    std::thread::sleep(Duration::from_secs(3));
    ch.freeze();
    let frozen = Instant::now();
    let mut peak = 0;
    while frozen.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(peak_rss_kib(chtail.pid()));
    }
    ch.thaw();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = writer.finish();
    let backlog = std::fs::read_dir(&env.logs).unwrap().count();
    peak = peak.max(peak_rss_kib(chtail.pid()));
    let (distinct, dups) = support::finish(&ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "ClickHouse frozen for 30 s while the bot wrote {n} events at {rate:.0}/s ({backlog} files): \
         {distinct} arrived, {dups} duplicated; peak RSS {peak} KiB"
    );
    assert_eq!(distinct, n, "{}", chtail.logs());
    // A request the frozen server took in before chtail gave up on it may
    // still be executed when it thaws (18.16 has no token to drop it).
    assert!(dups <= 3 * 50_000, "{dups} duplicated");
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

// A rotated file read into the queue during an outage, then released (read
// to its end, idle) before its rows could be inserted: the rotation scan
// must take it as read, not as a rotation chtail missed, or its queued rows
// are read and sent a second time.
#[test]
fn rotations_read_and_released_during_an_outage_are_not_read_again() {
    let _one = one_at_a_time();
    let mut ch = ClickHouse::start();
    // A queue that holds the whole outage, so that rotated files are read
    // to their end and released while nothing can be inserted.
    let env = Env::new(
        &ch,
        "live_outage_release",
        "events.jsonl",
        "[tail]\npoll_interval = \"200ms\"\n[queue]\nmax_rows = 1000000\nmax_bytes = \"512MiB\"",
    );
    let n = BOT_RATE * BOT_SECS;
    let mut chtail = env.start();
    let mut writer = Writer::bot(&env, n, 4 << 20);
    std::thread::sleep(Duration::from_secs(2));
    ch.stop();
    let down = Instant::now();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = writer.finish();
    // Past the release of the last rotation (idle 10 s) and several scans.
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let released = chtail.logs().matches("finished a rotated file").count();
    let peak = peak_rss_kib(chtail.pid());
    ch.resume();
    let files = std::fs::read_dir(&env.logs).unwrap().count();
    let (distinct, dups) = support::finish(&ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "ClickHouse down for 30 s while the bot wrote {n} events at {rate:.0}/s into {files} files, \
         {released} of them released during the outage: {distinct} arrived, {dups} duplicated; \
         peak RSS {peak} KiB (a queue of 512 MiB)"
    );
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
    assert!(
        released > 0,
        "the test must release a file during the outage"
    );
    assert_eq!((distinct, dups), (n, 0), "{}", chtail.logs());
}

/// `start_at = "end"` on a first start skips the history the bot wrote
/// before, and nothing after: the bot writes at its pace and rotates, and
/// chtail is killed midway (a restart is no first start). A file the
/// source's `exclude` takes out is never read, however it grows.
#[test]
fn start_at_end_skips_only_the_history_and_an_excluded_file_stays_unread() {
    let _one = one_at_a_time();
    let ch = shared();
    let env = Env::new(ch, "start_at_end", "*.jsonl*", DEFAULTS);
    let text = std::fs::read_to_string(&env.config).unwrap();
    let paths = format!("paths = [\"{}/*.jsonl*\"]", env.logs.display());
    let text = text.replace(
        &paths,
        &format!(
            "{paths}\nexclude = [\"{}/debug*\"]\nstart_at = \"end\"",
            env.logs.display()
        ),
    );
    std::fs::write(&env.config, text).unwrap();
    // The history, and a debug log beside it; both far above the bot's seqs.
    let history = 1_000_000;
    support::append(&env.log("events.jsonl"), history, history + 50_000);
    support::append(&env.log("debug.jsonl"), 2 * history, 2 * history + 100);
    let mut chtail = env.start();
    support::wait_until(SHORT, "the first look at the files", || {
        chtail
            .logs()
            .contains("reading only what is written from now on")
    });
    let n = BOT_RATE * BOT_SECS;
    let writer = Writer::start(
        &env.log("events.jsonl"),
        "rotating",
        0,
        n,
        4 << 20,
        BOT_RATE,
    );
    std::thread::sleep(Duration::from_secs(BOT_SECS / 2));
    let mut peak = peak_rss_kib(chtail.pid());
    chtail.kill9();
    support::append(
        &env.log("debug.jsonl"),
        2 * history + 100,
        2 * history + 200,
    );
    let mut chtail = env.start();
    let rate = writer.finish();
    peak = peak.max(peak_rss_kib(chtail.pid()));
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    let got = seq_counts(ch, &env.table());
    let stray = got.keys().filter(|s| **s >= n).count();
    println!(
        "start_at = end: {n} events at {rate:.0}/s after 50,000 of history: {distinct} arrived, \
         {dups} duplicated, {stray} from the history or the excluded file; peak RSS {peak} KiB"
    );
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
    assert_eq!((distinct, stray), (n, 0), "chtail log:\n{}", chtail.logs());
    // One kill -9 on 18.16 without deduplication: at most the batch in
    // flight (batch.max_rows, 50,000 by default).
    assert!(dups <= 50_000, "{dups} duplicates");
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

// Managed schema while the bot writes (README, "Managed schema"): a
// history of 110,000 events (50 guilds over 40 days) is shipped, then the
// bot writes at its pace and `chtail schema apply` runs in the middle of
// it, creating the rollup's view and backfilling the history while chtail
// inserts; with `kill`, chtail is also SIGKILLed at random moments. The
// four dashboard figures from the rollups then equal those from the raw
// events for every guild, exactly.
fn rollups_live(ch: &ClickHouse, name: &str, glob: &str, kill: bool) {
    use crate::rollups::{self, HISTORY_GUILDS};
    let env = Env::new(ch, name, glob, DEFAULTS);
    let history_dir = env.tmp.path().join("history");
    std::fs::create_dir_all(&history_dir).unwrap();
    let (lines, want) = rollups::history(55);
    let history = lines.lines().count() as u64;
    assert!(history >= 100_000);
    std::fs::write(history_dir.join("history.jsonl"), &lines).unwrap();
    env.append_config(&format!(
        "[[source]]\npaths = [\"{}/history.jsonl\"]\n",
        history_dir.display()
    ));
    let table = env.table();
    let mut chtail = env.start();
    support::wait_until(SHORT, "the history shipped", || {
        support::count(ch, &table) >= history
    });

    let n = BOT_RATE * BOT_SECS;
    let mut writer = Writer::bot(&env, n, 2 << 20);
    // Without kills, apply runs while the bot writes and chtail inserts.
    // With kills, before them: a batch the table took before the view
    // existed but whose commit a kill interrupted is dropped by the table
    // when re-sent, yet counted by the new view (README, "Exactly once
    // into the rollups").
    let config = env.config.clone();
    let applier = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(if kill { 0 } else { 4 }));
        let started = Instant::now();
        let out = rollups::apply(&config);
        (out, started.elapsed())
    });
    if kill {
        while !applier.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut kills = 0;
    let mut peak = 0;
    let mut rng = support::XorShift(0x2545f4914f6cdd1d);
    while writer.running() {
        let until = Instant::now() + Duration::from_millis(1000 + rng.next() % 2000);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            peak = peak.max(peak_rss_kib(chtail.pid()));
        }
        if kill {
            // Every other kill lands while an insert is in flight: the
            // server is frozen first, takes the batch when it thaws, and
            // the replay on the next start is a duplicate to drop.
            let frozen = kills % 2 == 1;
            if frozen {
                ch.freeze();
                std::thread::sleep(Duration::from_millis(1500));
            }
            chtail.kill9();
            if frozen {
                ch.thaw();
            }
            kills += 1;
            std::thread::sleep(Duration::from_millis(500));
            chtail = env.start();
        }
    }
    let rate = writer.finish();
    let (applied, took) = applier.join().unwrap();
    assert!(
        applied.contains("applied  0002 daily_rollup_view"),
        "{applied}"
    );

    // Every bot event (ts at 10:00:00.<seq>) and the history.
    let bot_rows = || -> std::collections::HashMap<u64, u64> {
        ch.query(&format!(
            "SELECT substring(ts, 21, 6), count() FROM {table} \
             WHERE ts LIKE '2026-11-22T10:00:00.%' GROUP BY ts"
        ))
        .lines()
        .filter_map(|l| {
            let (s, c) = l.split_once('\t')?;
            Some((s.parse().ok()?, c.parse().ok()?))
        })
        .collect()
    };
    support::wait_until(SHORT, "every bot event", || bot_rows().len() as u64 == n);
    peak = peak.max(peak_rss_kib(chtail.pid()));
    let status = chtail.terminate(SHORT);
    assert!(status.success(), "chtail log:\n{}", chtail.logs());
    let got = bot_rows();
    let dups: u64 = got.values().map(|c| c - 1).sum();
    let lost = n - got.len() as u64;
    let total = support::count(ch, &table);
    let rolled = ch.number(&format!("SELECT sum(events) FROM {}_daily", table));
    let guilds: Vec<String> = (0..7)
        .map(|g| g.to_string())
        .chain((0..HISTORY_GUILDS).map(|g| (1000 + g).to_string()))
        .collect();
    // Where the server deduplicates, or nothing was killed, the rollup is
    // exactly the table. On 18.16 a kill can land between the table's part
    // and its view's (ClickHouse has no transaction across the two), and
    // the replay adds to both: the rollup is at-least-once, like the table,
    // not equal to it.
    let exact = ch.is_modern() || !kill;
    let compared = if exact {
        rollups::rollups_equal_raw(&env.config, guilds)
    } else {
        0
    };
    // Batches in flight at a kill, sent again on the next start; those the
    // server had committed were dropped as duplicates, by the table and
    // (the rollup equal to the table shows it) by the view.
    let replays = chtail
        .logs()
        .matches("re-sending the batch that was in flight")
        .count();
    let dropped = if ch.is_modern() {
        ch.number("SELECT sum(value) FROM system.events WHERE event = 'DuplicatedInsertedBlocks'")
    } else {
        0
    };
    println!(
        "{name}: {replays} interrupted batches re-sent, {dropped} blocks dropped as duplicates"
    );
    for line in applied
        .lines()
        .filter(|l| l.contains("the view was created"))
    {
        println!("{name}: schema apply: {}", line.trim());
    }
    if kill && ch.is_modern() {
        assert!(
            replays >= 1 && dropped >= 1,
            "no kill interrupted an insert"
        );
    }
    println!(
        "{name} (glob {glob}): history {history} events + {n} written at {rate:.0}/s, schema apply \
         in {:.2} s while chtail inserted, kill -9 x{kills}: {lost} lost, {dups} duplicated, \
         {total} rows raw, {rolled} events in the rollup; the four figures equal for {compared} \
         guilds; peak RSS {peak} KiB",
        took.as_secs_f64()
    );
    assert_eq!(lost, 0, "chtail log:\n{}", chtail.logs());
    if exact {
        assert_eq!(
            rolled, total,
            "the rollup counts every row of the table, once"
        );
    } else {
        assert!(
            rolled >= history + n && rolled.abs_diff(total) <= kills * 50_000,
            "the rollup lost events, or differs from the table by more than was in flight"
        );
    }
    if ch.is_modern() {
        assert_eq!(dups, 0, "the modern server deduplicates every replay");
        assert_eq!(total, history + n);
    } else {
        assert!(
            dups <= kills * 50_000,
            "duplicates beyond what was in flight"
        );
    }
    if exact && total - dups == history + n {
        for (g, w) in &want {
            rollups::matches_history(&rollups::report(&env.config, g, "rollups"), w);
        }
    }
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
    if kill {
        assert!(kills >= 5, "the writer finished too soon to test anything");
    }
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

#[test]
fn rollups_backfilled_while_the_bot_writes_live_name_only() {
    let _one = one_at_a_time();
    rollups_live(shared(), "live_rollups_narrow", "events.jsonl", false);
}

#[test]
fn modern_server_rollups_backfilled_while_the_bot_writes_rotated_names_too() {
    let _one = one_at_a_time();
    let ch = ClickHouse::modern("");
    rollups_live(&ch, "live_rollups_modern_wide", "events.jsonl*", false);
}

#[test]
fn modern_server_rollups_exactly_once_with_kill_9_live_name_only() {
    let _one = one_at_a_time();
    let ch = ClickHouse::modern("");
    rollups_live(&ch, "live_rollups_modern_kill", "events.jsonl", true);
}

#[test]
fn modern_server_rollups_exactly_once_with_kill_9_rotated_names_too() {
    let _one = one_at_a_time();
    let ch = ClickHouse::modern("");
    rollups_live(&ch, "live_rollups_modern_kill_wide", "events.jsonl*", true);
}

#[test]
fn rollups_inherit_the_duplicates_of_18_16_with_kill_9() {
    let _one = one_at_a_time();
    rollups_live(shared(), "live_rollups_kill", "events.jsonl", true);
}

// Issue 13: catch-up streams (README, "Catch-up"). 600,000 events wait in
// the live file when chtail first starts; the bot then writes 300,000 more
// at its pace, its first write rotating the backlog away. chtail is
// SIGKILLed at random moments, the first ones while it streams the backlog
// (a stream killed before its end commits nothing; one killed after its
// manifest is re-sent whole under its token): on the modern server, not
// one row lost or twice, in streams of more than `batch.max_rows`. (The
// same rows must make the same Native blocks whether streamed or read
// again: ClickHouse 26.9 drops a re-sent insert only if they do.)
fn catch_up_streams_with_kills(name: &str, glob: &str) {
    let ch = ClickHouse::modern("");
    // Streams of 200,000 rows: the backlog is three of them, so that some
    // end under the kills and some are cut short.
    let env = Env::new(
        &ch,
        name,
        glob,
        &format!("{DEFAULTS}\n[batch]\ncatch_up_rows = 200000"),
    );
    let history = 600_000;
    support::append(&env.log("events.jsonl"), 0, history);
    let live = BOT_RATE * BOT_SECS;
    let n = history + live;
    let mut rng = support::XorShift(0x9e3779b97f4a7c15);
    let mut kills = 0;
    let mut peak = 0;
    let mut logs = String::new();
    // Short lives first, while the backlog streams.
    for _ in 0..4 {
        let mut chtail = env.start();
        std::thread::sleep(Duration::from_millis(300 + rng.next() % 900));
        peak = peak.max(peak_rss_kib(chtail.pid()));
        chtail.kill9();
        logs = chtail.logs();
        kills += 1;
    }
    let mut writer = Writer::start(
        &env.log("events.jsonl"),
        "rotating",
        history,
        live,
        4 << 20,
        BOT_RATE,
    );
    while writer.running() {
        peak = peak.max(live_then_kill(&env, &mut rng));
        kills += 1;
    }
    let rate = writer.finish();
    let mut chtail = env.start();
    let (distinct, dups) = support::finish(&ch, &env.table(), n, &mut chtail, SHORT * 2);
    let logs = format!("{logs}{}", chtail.logs());
    let streams = logs.matches("catch-up stream inserted").count();
    let replays = logs
        .matches("re-sending the batch that was in flight")
        .count();
    println!(
        "{name}: {history} events of backlog + {live} written at {rate:.0}/s, kill -9 x{kills}: \
         {distinct} of {n} arrived, {dups} duplicated; {streams} catch-up streams, {replays} \
         interrupted inserts re-sent; peak RSS {peak} KiB"
    );
    assert_eq!((distinct, dups), (n, 0), "{logs}");
    assert!(streams >= 1, "no catch-up stream: {logs}");
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
}

#[test]
fn modern_server_catch_up_streams_with_kill_9_live_name_only() {
    let _one = one_at_a_time();
    catch_up_streams_with_kills("live_streams_narrow", "events.jsonl");
}

#[test]
fn modern_server_catch_up_streams_with_kill_9_rotated_names_too() {
    let _one = one_at_a_time();
    catch_up_streams_with_kills("live_streams_wide", "events.jsonl*");
}

// A stream the server rejects as bad data (three poisoned lines in the
// backlog) is sent again as batches, and those split until the bad rows
// stand alone: they are quarantined, every other row arrives once. Then the
// server freezes for longer than `request_timeout` while 300,000 more
// events land at once and the bot writes at its pace: the stream that was
// cut short is re-sent, read again from the files.
#[test]
fn modern_server_a_rejected_or_frozen_stream_is_re_sent_and_only_bad_rows_quarantined() {
    let _one = one_at_a_time();
    let ch = ClickHouse::modern("");
    let env = Env::new(&ch, "live_streams_bad", "events.jsonl", DEFAULTS);
    ch.reject_rows_with("poison-pill");
    let log = env.log("events.jsonl");
    let history = 200_000;
    support::append(&log, 0, 100_000);
    for seq in [100_000u64, 100_001, 100_002] {
        let line = support::event(seq)
            .replace("\"event\": \"app_command\"", "\"event\": \"poison-pill\"")
            .replace("\"event\": \"interaction\"", "\"event\": \"poison-pill\"");
        support::append_raw(&log, format!("{line}\n").as_bytes());
    }
    support::append(&log, 100_003, history);
    let mut chtail = env.start();
    support::wait_until(SHORT, "the good rows of the backlog", || {
        support::count(&ch, &env.table()) >= history - 3
    });
    let mut peak = peak_rss_kib(chtail.pid());
    ch.freeze();
    let bulk = 300_000;
    support::append(&log, history, history + bulk);
    let live = BOT_RATE * BOT_SECS;
    let mut writer = Writer::start(&log, "rotating", history + bulk, live, 4 << 20, BOT_RATE);
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(peak_rss_kib(chtail.pid()));
    }
    ch.thaw();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(peak_rss_kib(chtail.pid()));
    }
    let rate = writer.finish();
    let n = history + bulk + live - 3;
    let (distinct, dups) = support::finish(&ch, &env.table(), n, &mut chtail, SHORT * 2);
    let logs = chtail.logs();
    let q = std::fs::read_to_string(env.state.join("quarantine.jsonl")).unwrap_or_default();
    println!(
        "a poisoned backlog of {history}, then a 12 s freeze while {bulk} landed at once and the \
         bot wrote {live} at {rate:.0}/s: {distinct} of {n} arrived, {dups} duplicated, {} lines \
         quarantined, {} streams; peak RSS {peak} KiB",
        q.lines().count(),
        logs.matches("catch-up stream inserted").count()
    );
    assert_eq!((distinct, dups), (n, 0), "{logs}");
    assert_eq!(q.lines().count(), 3, "{q}");
    assert!(
        q.lines()
            .all(|l| l.contains("poison-pill") && l.contains("rejected_by_server")),
        "{q}"
    );
    assert!(
        logs.contains("rejected a catch-up stream as bad data"),
        "{logs}"
    );
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
}
