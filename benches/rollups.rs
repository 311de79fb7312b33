//! The rollups' benchmark: `cargo bench --bench rollups`.
//!
//! N events (default 10,000,000; `CHTAIL_BENCH_EVENTS`) of 100 guilds over
//! the last 365 days, one guild with 30 % of them, are made by the server
//! itself (`INSERT … SELECT … FROM numbers`) in the default table of a
//! private ClickHouse (18.16; `CHTAIL_BENCH_SERVER=modern` for 26.9 behind
//! the tests' HTTP front, which adds its own time to every query). Then
//! `chtail schema apply` (the rollup's view and the backfill of every
//! event), and the dashboards' four queries for the biggest guild and a
//! typical one, exactly as `chtail report` sends them, from the raw events
//! and from the rollup: the best of three runs each, in milliseconds, and
//! a check that both return the same rows.

// The bench uses a few of the tests' helpers; the rest are the tests'.
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use chtail::report::Queries;
use support::{ClickHouse, chtail_cmd};

/// The best of three runs of `sql`, and its result.
fn timed(ch: &ClickHouse, sql: &str) -> (Duration, String) {
    let mut best = Duration::MAX;
    let mut out = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        out = ch.query(sql);
        best = best.min(t.elapsed());
    }
    (best, out)
}

fn main() {
    let n: u64 = std::env::var("CHTAIL_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let ch = if std::env::var("CHTAIL_BENCH_SERVER").as_deref() == Ok("modern") {
        ClickHouse::modern("")
    } else {
        ClickHouse::start()
    };
    let version = ch.query("SELECT version()");
    let tmp = tempfile::tempdir().unwrap();
    let db = "bench_rollups";
    let config = tmp.path().join("chtail.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\nrequest_timeout = \"600s\"\n\n\
             [[source]]\npaths = [\"{}/none*.jsonl\"]\n\n[state]\ndir = \"{}/state\"\n",
            ch.url(),
            tmp.path().display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    // The table, as `chtail check` creates it.
    let out = chtail_cmd(&["check"], &config);
    assert!(
        ch.number(&format!("EXISTS TABLE {db}.argus_events")) == 1,
        "the table was not created: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    println!(
        "ClickHouse {} on this machine; load average {}",
        version.trim(),
        support::loadavg()
    );
    let t = Instant::now();
    let chunk = 1_000_000;
    let mut start = 0;
    while start < n {
        let count = chunk.min(n - start);
        ch.query(&format!(
            "INSERT INTO {db}.argus_events \
             SELECT concat(replaceOne(toString(toDateTime(now() - (cityHash64(number, 1) % (365 * 86400))), 'UTC'), ' ', 'T'), \
                    '.', substring(toString(1000000 + number % 1000000), 2), '+00:00'), \
                    if(number % 3 = 0, 'interaction', 'app_command'), \
                    toString(if(cityHash64(number, 2) % 10 < 3, 1000, 1000 + cityHash64(number, 2) % 100)), \
                    if(number % 3 = 0, 'application_command', ''), \
                    if(number % 3 = 0, '', concat('cmd', toString(cityHash64(number, 3) % 40))), \
                    if(number % 3 = 0, 0, (cityHash64(number, 4) % 5000000) / 1000) \
             FROM (SELECT number + {start} AS number FROM numbers({count}))"
        ));
        start += count;
    }
    ch.query(&format!("OPTIMIZE TABLE {db}.argus_events FINAL"));
    println!(
        "{n} events made by the server in {:.1} s and merged into one part",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let out = chtail_cmd(&["schema", "apply"], &config);
    assert!(
        out.status.success(),
        "schema apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "chtail schema apply (the rollup, its view, the backfill of {n} events): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    ch.query(&format!("OPTIMIZE TABLE {db}.argus_events_daily FINAL"));
    let rollup_rows = ch.number(&format!("SELECT count() FROM {db}.argus_events_daily"));
    println!("rollup rows after OPTIMIZE FINAL: {rollup_rows}\n");

    println!("| guild (events) | query | raw events ms | rollups ms | raw / rollups |");
    println!("|---|---|---:|---:|---:|");
    for guild in ["1000", "1057"] {
        let events = ch.number(&format!(
            "SELECT count() FROM {db}.argus_events WHERE guild_id = '{guild}'"
        ));
        let raw = Queries::of(db, "argus_events", None, guild, 30);
        let rolled = Queries::of(db, "argus_events", Some("argus_events_daily"), guild, 30);
        for (name, a, b) in [
            (
                "interactions per day, 30 days",
                &raw.per_day,
                &rolled.per_day,
            ),
            ("top commands", &raw.top, &rolled.top),
            (
                "count and average per command",
                &raw.commands,
                &rolled.commands,
            ),
            ("overall average", &raw.overall, &rolled.overall),
        ] {
            let (ta, ra) = timed(&ch, a);
            let (tb, rb) = timed(&ch, b);
            assert_eq!(ra, rb, "{name} for guild {guild}: the rollups differ");
            println!(
                "| {guild} ({events}) | {name} | {:.1} | {:.1} | {:.0} |",
                ta.as_secs_f64() * 1e3,
                tb.as_secs_f64() * 1e3,
                ta.as_secs_f64() / tb.as_secs_f64()
            );
        }
    }
    println!("\nload average after: {}", support::loadavg());
}
