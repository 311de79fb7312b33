//! Against a modern ClickHouse (26.x through chdb, see
//! `tests/support/chdb_front.py`): the table chtail creates deduplicates,
//! LZ4 bodies and passwords work, and delivery is exactly once through
//! SIGKILLs at random moments.

use std::time::{Duration, Instant};

use crate::support::{ClickHouse, Env, SHORT, Writer, append, expect_rows};

#[test]
fn the_table_is_created_to_deduplicate_and_rows_arrive_compressed_with_a_password() {
    let ch = ClickHouse::modern("modern-pw");
    let env = Env::new(&ch, "modern_basic", "events*.jsonl", "");
    append(&env.log("events-1.jsonl"), 0, 3000);
    append(&env.log("events-2.jsonl"), 3000, 5000);

    let out = crate::support::chtail_cmd(&["check"], &env.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ClickHouse 26."), "{stdout}");
    assert!(
        stdout.contains(
            "delivery is exactly-once: MergeTree with non_replicated_deduplication_window = 1000"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "note     table t_modern_basic.argus_events: the deduplication window: a batch re-sent after 1000 other inserts"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("modern-pw"));
    let create = ch.query(&format!("SHOW CREATE TABLE {}", env.table()));
    assert!(
        create.contains("non_replicated_deduplication_window = 1000"),
        "{create}"
    );
    for col in [
        "`ts` String",
        "`event` LowCardinality(String)",
        "`duration_ms` Float64",
    ] {
        assert!(create.contains(col), "{create}");
    }

    let mut chtail = env.start();
    expect_rows(&ch, &env.table(), 5000);
    assert!(chtail.terminate(SHORT).success());
    assert!(!chtail.logs().contains("modern-pw"));
    // async_insert is on by default from 26.2: chtail's inserts turn it
    // off (their batches are large, and async inserts deduplicate by other
    // rules), and carry their token.
    let sent = ch.insert_settings();
    assert!(!sent.is_empty(), "no insert recorded");
    for s in &sent {
        assert!(s.contains("async_insert=0"), "{s}");
        assert!(s.contains("insert_deduplication_token="), "{s}");
    }
}

#[test]
fn a_wrong_password_is_reported_loudly_and_retried_until_fixed() {
    let ch = ClickHouse::modern("right");
    let env = Env::new(&ch, "modern_auth", "events.jsonl", "");
    append(&env.log("events.jsonl"), 0, 100);
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("password = \"right\"", "password = \"wrong\""),
    )
    .unwrap();
    let mut chtail = env.start();
    crate::support::wait_until(SHORT, "an authentication error in the log", || {
        chtail
            .logs()
            .contains("check clickhouse.user and clickhouse.password")
    });
    assert!(
        !chtail.logs().contains("wrong\""),
        "the password must not be logged"
    );
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn exactly_once_through_kill_9_at_random_moments_with_rotation() {
    let ch = ClickHouse::modern("");
    let max_rows = 2_000;
    let env = Env::new(
        &ch,
        "modern_crash",
        "events.jsonl*",
        &format!("[batch]\nmax_rows = {max_rows}\nmax_wait = \"200ms\""),
    );
    let n = 30_000;
    let mut writer = Writer::start(&env.log("events.jsonl"), "rotating", 0, n, 96 << 10, 4_000);
    let mut kills = 0u64;
    let mut rng = crate::support::XorShift(0x2545f4914f6cdd1d);
    let started = Instant::now();
    while writer.running() || kills < 8 {
        let mut chtail = env.start();
        std::thread::sleep(Duration::from_millis(200 + rng.next() % 1200));
        chtail.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.next() % 200));
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the writer never finished"
        );
    }
    writer.finish();
    let mut chtail = env.start();
    let (distinct, dups) = crate::support::tally(&ch, &env.table(), n, SHORT);
    let lost = n - distinct;
    println!(
        "modern ClickHouse, kill -9 x{kills} during rotation-heavy writing: {n} events, {lost} lost, {dups} duplicated"
    );
    assert_eq!((lost, dups), (0, 0), "chtail log:\n{}", chtail.logs());
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn check_explains_why_a_plain_merge_tree_is_only_at_least_once() {
    let ch = ClickHouse::modern("");
    let env = Env::new(&ch, "modern_plain", "events.jsonl", "");
    ch.query(&format!("CREATE DATABASE IF NOT EXISTS {}", env.database));
    ch.query(&format!(
        "CREATE TABLE {} (ts String, event String, guild_id String, type String, command String, duration_ms Float64) \
         ENGINE = MergeTree ORDER BY ts",
        env.table()
    ));
    let out = crate::support::chtail_cmd(&["check"], &env.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("delivery is at-least-once: plain MergeTree with non_replicated_deduplication_window = 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("MODIFY SETTING non_replicated_deduplication_window = 1000"),
        "{stdout}"
    );
}

#[test]
fn clickhouse_killed_and_restarted_repeatedly_during_a_stream_loses_and_duplicates_nothing() {
    let mut ch = ClickHouse::modern("");
    let env = Env::new(
        &ch,
        "modern_server_kills",
        "events.jsonl*",
        "[batch]\nmax_rows = 3000\nmax_wait = \"200ms\"",
    );
    let n = 24_000;
    let mut chtail = env.start();
    let mut writer = Writer::start(&env.log("events.jsonl"), "rotating", 0, n, 128 << 10, 3_000);
    let mut kills = 0;
    while writer.running() {
        std::thread::sleep(Duration::from_millis(700));
        ch.kill9();
        kills += 1;
        // Down for longer than a batch interval.
        std::thread::sleep(Duration::from_millis(400 + 300 * (kills % 3)));
        ch.resume();
    }
    writer.finish();
    let (distinct, dups) = crate::support::tally(&ch, &env.table(), n, SHORT);
    let lost = n - distinct;
    println!(
        "modern ClickHouse SIGKILLed x{kills} during a stream: {n} events, {lost} lost, {dups} duplicated"
    );
    assert_eq!((lost, dups), (0, 0), "chtail log:\n{}", chtail.logs());
    assert!(chtail.terminate(SHORT).success());
}

/// Everything at once, for minutes: a rotating writer, chtail SIGKILLed and
/// restarted, ClickHouse SIGKILLed and restarted, at random moments.
/// `cargo test --test e2e chaos -- --ignored --nocapture`
/// (`CHTAIL_CHAOS_SECS`, default 180, sets how long).
#[test]
#[ignore = "minutes long; run on demand"]
fn chaos() {
    let secs: u64 = std::env::var("CHTAIL_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let mut ch = ClickHouse::modern("");
    let env = Env::new(
        &ch,
        "chaos",
        "events.jsonl*",
        "[batch]\nmax_rows = 5000\nmax_wait = \"300ms\"",
    );
    let rate = 3_000;
    // `ts` holds six digits of sequence number.
    let n = (secs * rate).min(999_999);
    let mut writer = Writer::start(&env.log("events.jsonl"), "rotating", 0, n, 512 << 10, rate);
    let mut rng = crate::support::XorShift(0x9e3779b97f4a7c15);
    let (mut chtail_kills, mut server_kills) = (0, 0);
    let mut chtail = env.start();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(500 + rng.next() % 2500));
        if rng.next().is_multiple_of(2) {
            chtail.kill9();
            chtail_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.next() % 1000));
            chtail = env.start();
        } else {
            ch.kill9();
            server_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.next() % 3000));
            ch.resume();
        }
    }
    writer.finish();
    let (distinct, dups) = crate::support::tally(&ch, &env.table(), n, Duration::from_secs(600));
    let rows = distinct + dups;
    let lost = n - distinct;
    println!(
        "chaos for {secs}s: {n} events written, {rows} rows in ClickHouse, {lost} lost, {dups} duplicated \
         (chtail SIGKILLed {chtail_kills} times, ClickHouse {server_kills} times)"
    );
    assert_eq!((lost, dups), (0, 0), "chtail log:\n{}", chtail.logs());
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn https_with_a_private_ca_file() {
    let ch = ClickHouse::modern_tls();
    let env = Env::new(&ch, "modern_tls", "events.jsonl", "");
    let tls_url = format!("https://127.0.0.1:{}", ch.tls_port.unwrap());
    let text = std::fs::read_to_string(&env.config).unwrap();
    let plain = text.replace(
        &format!("url = \"{}\"", ch.url()),
        &format!("url = \"{tls_url}\""),
    );
    // Without the CA the server's certificate is not trusted: said plainly.
    std::fs::write(&env.config, &plain).unwrap();
    let out = crate::support::chtail_cmd(&["check"], &env.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("ClickHouse at {tls_url} does not answer")),
        "{stdout}"
    );
    assert!(stdout.to_lowercase().contains("certificate"), "{stdout}");

    let with_ca = plain.replace(
        "[clickhouse]\n",
        &format!("[clickhouse]\nca_file = \"{}\"\n", ch.ca_file().display()),
    );
    std::fs::write(&env.config, with_ca).unwrap();
    let out = crate::support::chtail_cmd(&["check"], &env.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    append(&env.log("events.jsonl"), 0, 2000);
    let mut chtail = env.start();
    expect_rows(&ch, &env.table(), 2000);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn a_batch_rejected_as_bad_data_is_split_and_only_the_bad_rows_quarantined() {
    let ch = ClickHouse::modern("");
    let env = Env::new(
        &ch,
        "modern_bad_rows",
        "events.jsonl",
        "[batch]\nmax_wait = \"300ms\"",
    );
    ch.reject_rows_with("poison-pill");
    let log = env.log("events.jsonl");
    append(&log, 0, 400);
    for seq in [400u64, 401, 402] {
        let line = crate::support::event(seq)
            .replace("\"event\": \"app_command\"", "\"event\": \"poison-pill\"");
        let line = line.replace("\"event\": \"interaction\"", "\"event\": \"poison-pill\"");
        crate::support::append_raw(&log, format!("{line}\n").as_bytes());
    }
    append(&log, 403, 800);
    let mut chtail = env.start();
    crate::support::wait_until(SHORT, "the good rows", || {
        crate::support::count(&ch, &env.table()) >= 797
    });
    crate::support::wait_until(SHORT, "everything committed", || {
        crate::support::all_committed(&env.config, &env.logs)
    });
    assert!(chtail.terminate(SHORT).success());
    assert_eq!(
        crate::support::count_and_unique(&ch, &env.table()),
        (797, 797)
    );
    let q = std::fs::read_to_string(env.state.join("quarantine.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{q}");
    for r in &records {
        assert_eq!(r["kind"], "rejected_by_server", "{q}");
        assert!(r["line"].as_str().unwrap().contains("poison-pill"), "{q}");
        assert!(r["reason"].as_str().unwrap().contains("Code: 27"), "{q}");
    }
    assert!(
        chtail
            .logs()
            .contains("splitting it to isolate the bad rows"),
        "{}",
        chtail.logs()
    );
}
