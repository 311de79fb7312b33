//! Delivery: every event arrives once, through restarts, drains, outages
//! and bad input.

use std::time::Duration;

use crate::support::{
    self, ClickHouse, SHORT, append, append_raw, count, count_and_unique, expect_rows, shared,
    wait_until,
};

#[test]
fn events_across_several_files_arrive_exactly_once_with_their_values() {
    let ch = shared();
    let env = support::Env::new(ch, "several_files", "events*.jsonl", "");
    append(&env.log("events-a.jsonl"), 0, 3000);
    append(&env.log("events-b.jsonl"), 3000, 5000);
    append(&env.log("events-c.jsonl"), 5000, 5500);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 5500);

    // The values, not just the count: compare with what the writer wrote.
    let want_sum: f64 = (0..5500u64)
        .filter(|s| s % 3 != 0)
        .map(|s| (s % 100) as f64 + 0.5)
        .sum();
    let got = ch.query(&format!(
        "SELECT sum(duration_ms), countIf(event = 'interaction'), countIf(command = 'cmd2'), uniqExact(guild_id) FROM {}",
        env.table()
    ));
    let got: Vec<&str> = got.split_whitespace().collect();
    assert_eq!(got[0].parse::<f64>().unwrap(), want_sum);
    assert_eq!(
        got[1],
        (0..5500u64).filter(|s| s % 3 == 0).count().to_string()
    );
    assert_eq!(
        got[2],
        (0..5500u64)
            .filter(|s| s % 3 != 0 && s % 5 == 2)
            .count()
            .to_string()
    );
    assert_eq!(got[3], "7");
    let one = ch.query(&format!(
        "SELECT ts, event, guild_id, type, command, duration_ms FROM {} WHERE ts = '2026-11-22T10:00:00.000004+00:00'",
        env.table()
    ));
    assert_eq!(
        one.trim(),
        "2026-11-22T10:00:00.000004+00:00\tapp_command\t4\tapplication_command\tcmd4\t4.5"
    );

    let status = chtail.terminate(SHORT);
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn appended_lines_and_files_that_appear_later_arrive() {
    let ch = shared();
    let env = support::Env::new(ch, "appended", "*.jsonl", "[batch]\nmax_wait = \"200ms\"");
    append(&env.log("a.jsonl"), 0, 100);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 100);
    append(&env.log("a.jsonl"), 100, 250);
    expect_rows(ch, &env.table(), 250);
    append(&env.log("b.jsonl"), 250, 400);
    expect_rows(ch, &env.table(), 400);
    // A line written in two pieces is shipped once, whole.
    let line = support::event(400);
    let (head, tail) = line.split_at(30);
    append_raw(&env.log("b.jsonl"), head.as_bytes());
    env.settled(head.len() as u64);
    assert_eq!(count(ch, &env.table()), 400, "a partial line must wait");
    append_raw(&env.log("b.jsonl"), format!("{tail}\n").as_bytes());
    expect_rows(ch, &env.table(), 401);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn restart_after_sigterm_neither_loses_nor_duplicates() {
    let ch = shared();
    let env = support::Env::new(ch, "restart", "events.jsonl", "");
    let log = env.log("events.jsonl");
    append(&log, 0, 2000);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 2000);
    assert!(chtail.terminate(SHORT).success());

    // Written while chtail was down.
    append(&log, 2000, 3000);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 3000);
    assert!(chtail.terminate(SHORT).success());

    // Nothing new: a restart sends nothing again and reads only what is
    // new. One line more, once it arrives, proves the file was read again
    // from its checkpoint: had it been read from the start, those bytes
    // would have been read (and counted) before the new line's.
    let mut chtail = env.start();
    let next = support::event(3000);
    append(&log, 3000, 3001);
    expect_rows(ch, &env.table(), 3001);
    env.settled(0);
    let port = support::metrics_port(&env);
    let read = support::sample(
        &support::http_get(port, "/metrics").1,
        "chtail_bytes_read_total",
    );
    assert_eq!(
        read,
        Some(next.len() as f64 + 1.0),
        "a restart reads only what is new"
    );
    assert_eq!(count_and_unique(ch, &env.table()), (3001, 3001));
    assert!(chtail.terminate(SHORT).success());

    // The offset on disk is the file's size.
    let size = std::fs::metadata(&log).unwrap().len();
    let state = std::fs::read_to_string(env.state.join("state.json")).unwrap();
    assert!(state.contains(&format!("\"offset\": {size}")), "{state}");
}

#[test]
fn sigterm_in_the_middle_of_a_large_backlog_loses_nothing() {
    let ch = shared();
    let env = support::Env::new(
        ch,
        "backlog",
        "events*.jsonl",
        "[batch]\nmax_rows = 20000\n[shutdown]\ntimeout = \"20s\"",
    );
    let n = 300_000;
    append(&env.log("events-1.jsonl"), 0, n / 2);
    append(&env.log("events-2.jsonl"), n / 2, n);
    let mut chtail = env.start();
    wait_until(SHORT, "the first rows", || count(ch, &env.table()) > 0);
    let started = std::time::Instant::now();
    let status = chtail.terminate(SHORT);
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "drain took {:?}",
        started.elapsed()
    );
    let (rows, unique) = count_and_unique(ch, &env.table());
    assert_eq!(rows, unique, "no duplicates after the drain");
    assert!(chtail.logs().contains("drained"), "{}", chtail.logs());

    let mut chtail = env.start();
    expect_rows(ch, &env.table(), n);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn a_clickhouse_outage_is_waited_out() {
    let mut ch = ClickHouse::start();
    let env = support::Env::new(
        &ch,
        "outage",
        "events.jsonl",
        "[batch]\nmax_wait = \"200ms\"",
    );
    let log = env.log("events.jsonl");
    append(&log, 0, 1000);
    let mut chtail = env.start();
    expect_rows(&ch, &env.table(), 1000);

    ch.stop();
    append(&log, 1000, 5000);
    std::thread::sleep(Duration::from_secs(4));
    append(&log, 5000, 6000);
    ch.resume();
    expect_rows(&ch, &env.table(), 6000);
    assert!(chtail.logs().contains("will retry"), "{}", chtail.logs());
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn clickhouse_down_at_start_is_retried_and_sigterm_still_exits() {
    let mut ch = ClickHouse::start();
    let env = support::Env::new(&ch, "down_at_start", "events.jsonl", "");
    append(&env.log("events.jsonl"), 0, 500);
    ch.stop();
    let mut chtail = env.start();
    wait_until(SHORT, "a log line about the unreachable server", || {
        chtail.logs().contains("not reachable")
    });
    assert!(chtail.terminate(SHORT).success());
    ch.resume();
    let mut chtail = env.start();
    expect_rows(&ch, &env.table(), 500);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn invalid_lines_are_quarantined_while_the_valid_ones_around_them_arrive() {
    let ch = shared();
    let env = support::Env::new(
        ch,
        "garbage",
        "events.jsonl",
        "[tail]\nmax_line_bytes = 2000\npoll_interval = \"200ms\"",
    );
    let log = env.log("events.jsonl");
    append_raw(&log, b"\xEF\xBB\xBF");
    append(&log, 0, 10);
    let bad: &[&[u8]] = &[
        b"not json at all\n",
        b"{\"event\": \"interaction\", \"guild_id\": \"1\"\n",
        b"[1, 2, 3]\n",
        b"{\"event\": \"app_command\", \"duration_ms\": \"slow\"}\n",
        b"{\"event\": \"\xff\xfe\"}\n",
        b"\n",
        b"   \r\n",
    ];
    for b in bad {
        append_raw(&log, b);
    }
    append_raw(&log, format!("{}\r\n", support::event(10)).as_bytes());
    append_raw(
        &log,
        format!("{{\"event\": \"{}\"}}\n", "x".repeat(5000)).as_bytes(),
    );
    append(&log, 11, 20);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 20);
    assert!(chtail.terminate(SHORT).success());

    let q = std::fs::read_to_string(env.state.join("quarantine.jsonl")).unwrap();
    let kinds: Vec<String> = q
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "invalid_json",
            "invalid_json",
            "not_an_object",
            "wrong_type",
            "invalid_utf8",
            "too_long"
        ],
        "{q}"
    );
    // Offsets point at the lines themselves.
    let first: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    let bytes = std::fs::read(&log).unwrap();
    let at = usize::try_from(first["offset"].as_u64().unwrap()).unwrap();
    assert!(bytes[at..].starts_with(b"not json at all\n"));
    // And everything was committed past them.
    let state = std::fs::read_to_string(env.state.join("state.json")).unwrap();
    assert!(
        state.contains(&format!("\"offset\": {}", bytes.len())),
        "{state}"
    );
}

#[test]
fn a_renamed_file_is_read_to_its_end_and_the_new_one_from_its_start() {
    let ch = shared();
    let env = support::Env::new(
        ch,
        "rename",
        "events.jsonl",
        "[batch]\nmax_wait = \"200ms\"",
    );
    let log = env.log("events.jsonl");
    append(&log, 0, 1000);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 1000);
    // Written just before the rotation, so possibly not yet read.
    append(&log, 1000, 1500);
    std::fs::rename(&log, env.log("events.jsonl.1")).unwrap();
    append(&log, 1500, 2000);
    expect_rows(ch, &env.table(), 2000);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn a_bad_config_names_every_key_and_line_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[clickhouse]\nurl = \"http://127.0.0.1:1\"\npasword = \"x\"\n\n[[source]]\npaths = [\"/tmp/x\"]\n\n[batch]\nmax_wait = \"fast\"\n",
    )
    .unwrap();
    let out = support::chtail_cmd(&["run"], &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("line 3: `clickhouse.pasword`: unknown key (did you mean `password`?)"),
        "{stderr}"
    );
    assert!(stderr.contains("line 9: `batch.max_wait`"), "{stderr}");
}

#[test]
fn check_says_plainly_when_clickhouse_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"http://127.0.0.1:9\"\npassword = \"hunter2\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"2s\"\n[[source]]\npaths = [\"{0}/*.jsonl\"]\n[state]\ndir = \"{0}/state\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = support::chtail_cmd(&["check"], &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("PROBLEM  ClickHouse at http://127.0.0.1:9 does not answer"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"));
}

#[test]
fn check_creates_the_table_and_status_shows_lag() {
    let ch = shared();
    let env = support::Env::new(ch, "check_status", "events.jsonl", "");
    append(&env.log("events.jsonl"), 0, 10);
    let out = support::chtail_cmd(&["check"], &env.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("created it"), "{stdout}");
    assert!(
        stdout.contains("\"duration_ms\" -> duration_ms (Float64)"),
        "{stdout}"
    );
    assert_eq!(ch.number(&format!("EXISTS TABLE {}", env.table())), 1);

    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 10);
    assert!(chtail.terminate(SHORT).success());
    append(&env.log("events.jsonl"), 10, 20);
    let out = support::chtail_cmd(&["status", "--json"], &env.config);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["running"], false);
    assert_eq!(report["counters"], serde_json::Value::Null);
    let rows = &report["files"];
    let size = std::fs::metadata(env.log("events.jsonl")).unwrap().len();
    assert_eq!(rows[0]["size"], size);
    assert!(rows[0]["lag_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["lag_bytes"], rows[0]["lag_bytes"]);
    assert_eq!(
        rows[0]["lag_bytes"].as_u64().unwrap() + rows[0]["committed"].as_u64().unwrap(),
        size
    );
}

#[test]
fn with_two_urls_chtail_fails_over_when_one_server_stops() {
    let mut a = ClickHouse::start();
    let b = ClickHouse::start();
    let env = support::Env::new(
        &a,
        "failover",
        "events.jsonl*",
        "[batch]\nmax_rows = 2000\nmax_wait = \"200ms\"",
    );
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace(
            &format!("url = \"{}\"", a.url()),
            &format!("url = [\"{}\", \"{}\"]", a.url(), b.url()),
        ),
    )
    .unwrap();
    let n = 12_000;
    let mut chtail = env.start();
    let mut writer =
        support::Writer::start(&env.log("events.jsonl"), "rotating", 0, n, 256 << 10, 2_000);
    wait_until(SHORT, "rows on the first server", || {
        count(&a, &env.table()) > 0
    });
    a.kill9();
    assert!(
        a.try_query("SELECT 1").is_err(),
        "the first server must be down"
    );
    assert!(writer.running(), "the writer must still be writing");
    writer.finish();
    wait_until(SHORT, "every file committed to its end", || {
        support::all_committed(&env.config, &env.logs)
    });
    assert!(chtail.terminate(SHORT).success());
    a.resume();
    let mut seqs = support::seq_counts(&a, &env.table());
    for (seq, c) in support::seq_counts(&b, &env.table()) {
        *seqs.entry(seq).or_default() += c;
    }
    let lost = n - seqs.len() as u64;
    if lost > 0 {
        let missing: Vec<u64> = (0..n).filter(|s| !seqs.contains_key(s)).collect();
        let mut where_ = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&env.logs).unwrap().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap();
            for m in &missing {
                if text.contains(&format!("10:00:00.{m:06}")) {
                    *where_.entry(e.path().display().to_string()).or_insert(0) += 1;
                }
            }
        }
        eprintln!(
            "missing {}..{} ({}), in files: {where_:?}",
            missing[0],
            missing[missing.len() - 1],
            missing.len()
        );
        eprintln!(
            "{}",
            std::fs::read_to_string(env.state.join("state.json")).unwrap()
        );
    }
    let dups: u64 = seqs.values().map(|c| c - 1).sum();
    println!(
        "failover: {n} events, {} on the first server, {} on the second, {lost} lost, {dups} duplicated",
        count(&a, &env.table()),
        count(&b, &env.table())
    );
    assert_eq!(lost, 0, "{}", chtail.logs());
    assert!(
        dups <= 2000,
        "at most the batch in flight when the server stopped"
    );
    assert!(count(&b, &env.table()) > 0);
    assert!(chtail.logs().contains("failing over"), "{}", chtail.logs());
}
