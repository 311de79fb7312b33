//! Running as a service: the systemd notification protocol against a fake
//! `NOTIFY_SOCKET`, the metrics endpoint after a known workload, `/health`
//! and `/ready`, SIGHUP reloads (a source added; an invalid file refused),
//! and the heartbeat table.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::{
    self, Chtail, ClickHouse, Env, SHORT, append, append_raw, count, expect_rows, http_get as get,
    metrics_port, sample, shared, wait_until,
};

/// chtail started under a fake systemd: a `NOTIFY_SOCKET` the test reads,
/// and a 1 s watchdog.
fn start_notified(env: &Env) -> (Chtail, UnixDatagram) {
    let socket_path = env.tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chtail = Chtail::start_with_env(
        &env.config,
        &env.tmp.path().join("chtail.log"),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    (chtail, socket)
}

/// Appends to `got` every message that arrives within `d`.
fn receive(socket: &UnixDatagram, d: Duration, got: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            // Assignments are newline-separated; a final newline is allowed.
            let text = String::from_utf8_lossy(&buf[..n]);
            got.push(text.trim_end_matches('\n').to_string());
        }
    }
}

#[test]
fn systemd_hears_ready_watchdog_status_and_stopping_in_order() {
    let ch = shared();
    let env = Env::new(ch, "notify", "events.jsonl", "");
    append(&env.log("events.jsonl"), 0, 500);
    let (mut chtail, socket) = start_notified(&env);
    let mut got: Vec<String> = Vec::new();
    expect_rows(ch, &env.table(), 500);
    receive(&socket, Duration::from_secs(3), &mut got);
    chtail.signal("TERM");
    assert!(chtail.wait(SHORT).success());
    receive(&socket, Duration::from_millis(500), &mut got);

    let first = |needle: &str| got.iter().position(|m| m.contains(needle));
    let ready = first("READY=1").unwrap_or_else(|| panic!("no READY: {got:#?}"));
    let watchdog = got
        .iter()
        .skip(ready)
        .position(|m| m == "WATCHDOG=1")
        .map(|i| i + ready)
        .unwrap_or_else(|| panic!("no WATCHDOG after READY: {got:#?}"));
    let stopping = first("STOPPING=1").unwrap_or_else(|| panic!("no STOPPING: {got:#?}"));
    assert!(ready < watchdog && watchdog < stopping, "{got:#?}");
    // Pings every half interval or faster, while healthy.
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 4, "{pings} pings in ~3s: {got:#?}");
    assert!(
        got.iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("rows/s") && m.contains("lag")),
        "{got:#?}"
    );
}

#[test]
fn metrics_after_a_known_workload_and_health_and_ready() {
    let ch = ClickHouse::start();
    let env = Env::new(&ch, "metrics", "events.jsonl", "");
    let port = metrics_port(&env);
    let path = env.log("events.jsonl");
    // Stamped now, so the delay histogram has something to say.
    let mut good = String::new();
    for i in 0..1000 {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        good.push_str(&format!("{{\"ts\":\"{now}\",\"guild_id\":\"g{i}\"}}\n"));
    }
    append_raw(&path, good.as_bytes());
    let mut bad = String::new();
    for i in 0..10 {
        bad.push_str(&format!("{{broken {i}\n"));
    }
    for i in 0..5 {
        bad.push_str(&format!("{{\"ts\":\"w{i}\",\"duration_ms\":\"slow\"}}\n"));
    }
    append_raw(&path, bad.as_bytes());
    let mut chtail = env.start();
    wait_until(SHORT, "1000 rows", || count(&ch, &env.table()) >= 1000);
    wait_until(SHORT, "the lag to reach 0", || {
        sample(&get(port, "/metrics").1, "chtail_lag_bytes") == Some(0.0)
    });
    let (code, text) = get(port, "/metrics");
    assert_eq!(code, 200);
    let want = [
        ("chtail_lines_read_total", 1015.0),
        ("chtail_events_parsed_total", 1000.0),
        ("chtail_rows_inserted_total", 1000.0),
        ("chtail_quarantined_total", 15.0),
        ("chtail_parse_failures_total{kind=\"invalid_json\"}", 10.0),
        ("chtail_parse_failures_total{kind=\"wrong_type\"}", 5.0),
        ("chtail_insert_failures_total{class=\"transient\"}", 0.0),
        ("chtail_queue_rows", 0.0),
        ("chtail_clickhouse_up", 1.0),
        ("chtail_event_delay_seconds_count", 1000.0),
        (
            &format!("chtail_file_lag_bytes{{path=\"{}\"}}", path.display()),
            0.0,
        ),
    ];
    for (name, value) in want {
        assert_eq!(sample(&text, name), Some(value), "{name}\n{text}");
    }
    let bytes = std::fs::metadata(&path).unwrap().len() as f64;
    assert_eq!(sample(&text, "chtail_bytes_read_total"), Some(bytes));
    assert!(sample(&text, "chtail_batches_inserted_total").unwrap() >= 1.0);
    assert!(sample(&text, "chtail_last_insert_timestamp_seconds").unwrap() > 1.7e9);
    // Stamped when written: acknowledged well within a minute.
    assert_eq!(
        sample(&text, "chtail_event_delay_seconds_bucket{le=\"60\"}"),
        Some(1000.0),
        "{text}"
    );
    assert!(!text.contains("guild"), "no event values in labels");
    assert_eq!(get(port, "/health").0, 200);
    let (code, body) = get(port, "/ready");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(port, "/nope").0, 404);
    // HTTP as clients speak it: HEAD has no body, garbage is refused, a
    // client that sends nothing is dropped after the connection timeout.
    let raw = |request: &[u8]| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(request).unwrap();
        let mut text = String::new();
        let started = Instant::now();
        let _ = conn.read_to_string(&mut text);
        (text, started.elapsed())
    };
    let (head, _) = raw(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body after HEAD: {head}");
    let (junk, _) = raw(b"\x01\x02 nonsense\r\n\r\n");
    assert!(
        junk.starts_with("HTTP/1.1 400") || junk.is_empty(),
        "{junk}"
    );
    let (idle, waited) = raw(b"");
    assert!(
        idle.is_empty() && waited < Duration::from_secs(8),
        "{idle} {waited:?}"
    );

    // ClickHouse goes away: not ready (an idle chtail notices within the
    // probe interval), still healthy, and a new event waits.
    let mut ch = ch;
    ch.stop();
    append(&path, 1000, 1001);
    wait_until(SHORT, "/ready to fail", || get(port, "/ready").0 == 503);
    let (_, body) = get(port, "/ready");
    assert!(body.contains("ClickHouse is not reachable"), "{body}");
    assert_eq!(get(port, "/health").0, 200);
    wait_until(SHORT, "a failed insert to be counted", || {
        let text = get(port, "/metrics").1;
        sample(&text, "chtail_insert_failures_total{class=\"transient\"}").unwrap() >= 1.0
    });
    assert_eq!(
        sample(&get(port, "/metrics").1, "chtail_clickhouse_up"),
        Some(0.0)
    );
    ch.resume();
    wait_until(SHORT, "/ready again", || get(port, "/ready").0 == 200);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn sighup_adds_a_source_and_an_invalid_config_is_refused() {
    let ch = shared();
    let env = Env::new(ch, "reload", "a-*.jsonl", "[batch]\nmax_wait = \"200ms\"");
    append(&env.log("a-1.jsonl"), 0, 1000);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 1000);

    // A second source, in a directory the first does not cover.
    let b_dir = env.tmp.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    append(&b_dir.join("b.jsonl"), 1000, 1600);
    let good = std::fs::read_to_string(&env.config).unwrap();

    // First an invalid file: refused, the old config keeps shipping.
    std::fs::write(
        &env.config,
        good.replace("[batch]", "[batch]\nmax_rowz = 1"),
    )
    .unwrap();
    chtail.signal("HUP");
    wait_until(SHORT, "the refusal in the log", || {
        chtail.logs().contains("the new configuration is not valid")
    });
    assert!(
        chtail.logs().contains("batch.max_rowz"),
        "{}",
        chtail.logs()
    );
    append(&env.log("a-1.jsonl"), 1600, 1700);
    expect_rows(ch, &env.table(), 1100);

    // Then a valid one with the new source.
    std::fs::write(
        &env.config,
        format!(
            "{good}\n[[source]]\npaths = [\"{}/*.jsonl\"]\n",
            b_dir.display()
        ),
    )
    .unwrap();
    chtail.signal("HUP");
    expect_rows(ch, &env.table(), 1700);
    assert!(chtail.logs().contains("configuration reloaded"));
    // Both sources keep flowing after the reload.
    append(&env.log("a-1.jsonl"), 1700, 1800);
    append(&b_dir.join("b.jsonl"), 1800, 1900);
    expect_rows(ch, &env.table(), 1900);
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn the_heartbeat_table_gets_a_row_per_interval() {
    let ch = shared();
    let env = Env::new(
        ch,
        "heartbeat",
        "events.jsonl",
        "[heartbeat]\nenabled = true\ninterval = \"300ms\"\ntable = \"beats\"",
    );
    append(&env.log("events.jsonl"), 0, 200);
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), 200);
    let beats = format!("{}.beats", env.database);
    wait_until(SHORT, "5 heartbeats", || count(ch, &beats) >= 5);
    let row = ch.query(&format!(
        "SELECT count(), max(seq) >= 5, sum(events) = 200, argMax(lag_bytes, seq) = 0, uniqExact(host), any(version) != '' FROM {beats}"
    ));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&fields[1..], ["1", "1", "1", "1", "1"], "{row}");
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn waiting_for_clickhouse_at_boot_is_ready_and_fed_not_a_restart_loop() {
    let ch = shared();
    let env = Env::new(ch, "notify_wait", "events.jsonl", "");
    // Nothing listens here: the outage chtail must wait out.
    let port = support::free_port();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&ch.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(&env.config, text).unwrap();
    let (mut chtail, socket) = start_notified(&env);
    let mut got = Vec::new();
    receive(&socket, Duration::from_secs(3), &mut got);
    assert!(
        got.iter()
            .any(|m| m.starts_with("READY=1\nSTATUS=waiting for ClickHouse")),
        "{got:#?}"
    );
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{got:#?}"
    );
    assert!(chtail.terminate(SHORT).success());
}
