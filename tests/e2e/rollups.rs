//! Managed schema (`chtail schema status | plan | apply`) on 18.16 and on
//! the modern engine: migrations from empty, a re-run, a failure half-way
//! and the apply that finishes it, a changed file refused, an operator's own
//! migration, a backfill interrupted and started again; the rollups give
//! the four dashboard figures exactly as the raw events do, for 50 guilds
//! over 40 days; retention by TTL on the modern engine and its plain
//! refusal on 18.16. The live cases (the bot writing, chtail killed) are
//! in `live.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use crate::support::{self, ClickHouse, Env, chtail_cmd, expect_rows, shared};

/// One UTC day `back` days before today, as `YYYY-MM-DD`.
pub(crate) fn day(back: u64) -> String {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(back * 86_400);
    humantime::format_rfc3339(t).to_string()[..10].to_string()
}

/// The guilds of [`history`].
pub(crate) const HISTORY_GUILDS: u64 = 50;

/// A bot's history: events of 50 guilds (ids 1000–1049) over the last 40
/// days, interactions and commands, some near midnight in +02:00 (the UTC
/// day before), a few with a `ts` no parser reads. Never at 10:00:00, the
/// time of the live writer's events. Returns the lines and, per guild, the
/// expected interactions per UTC day and (count, sum of whole µs) per
/// command.
pub(crate) fn history(per_guild_day: u64) -> (String, BTreeMap<String, Expected>) {
    let commands = [
        "ping", "play", "skip", "queue", "stop", "help", "stats", "rank", "ban", "kick", "mute",
        "poll",
    ];
    let mut lines = String::new();
    let mut want: BTreeMap<String, Expected> = BTreeMap::new();
    let mut rng = support::XorShift(0x9e37_79b9_7f4a_7c15);
    let mut n = 0u64;
    for back in 0..40u64 {
        let date = day(back);
        for g in 0..HISTORY_GUILDS {
            let guild = (1000 + g).to_string();
            let w = want.entry(guild.clone()).or_default();
            for _ in 0..per_guild_day {
                n += 1;
                let r = rng.next();
                let (ts, utc_day) = match r % 10 {
                    0 => (
                        format!("{date}T01:15:00.{:06}+02:00", n % 1_000_000),
                        day(back + 1),
                    ),
                    1 if n.is_multiple_of(97) => (format!("not a time {n}"), String::new()),
                    _ => (
                        format!("{date}T12:34:56.{:06}+00:00", n % 1_000_000),
                        date.clone(),
                    ),
                };
                if (r >> 8).is_multiple_of(3) {
                    lines.push_str(&format!(
                        r#"{{"ts": "{ts}", "event": "interaction", "guild_id": "{guild}", "type": "application_command"}}"#
                    ));
                    if !utc_day.is_empty() {
                        *w.per_day.entry(utc_day).or_insert(0) += 1;
                    }
                } else {
                    let cmd = commands[((r >> 16) % commands.len() as u64) as usize];
                    // Durations in whole microseconds, as the report sums them.
                    let us = (r >> 24) % 5_000_000;
                    let ms = us as f64 / 1000.0;
                    lines.push_str(&format!(
                        r#"{{"ts": "{ts}", "event": "app_command", "guild_id": "{guild}", "command": "{cmd}", "duration_ms": {ms}}}"#
                    ));
                    let e = w.commands.entry(cmd.to_string()).or_insert((0, 0));
                    e.0 += 1;
                    e.1 += us;
                }
                lines.push('\n');
            }
        }
    }
    (lines, want)
}

/// What the report must say about one guild of [`history`].
#[derive(Default, Debug)]
pub(crate) struct Expected {
    pub per_day: BTreeMap<String, u64>,
    pub commands: BTreeMap<String, (u64, u64)>,
}

/// `chtail report --guild G --days 3650 --limit 1000 --json --from F`,
/// without the line that says where it read from.
pub(crate) fn report(config: &Path, guild: &str, from: &str) -> serde_json::Value {
    let out = chtail_cmd(
        &[
            "report", "--guild", guild, "--days", "3650", "--limit", "1000", "--json", "--from",
            from,
        ],
        config,
    );
    assert!(
        out.status.success(),
        "report --from {from} for {guild}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let source = json["source"].as_str().unwrap_or_default().to_string();
    assert!(
        source.starts_with(if from == "raw" {
            "raw events"
        } else {
            "rollups"
        }),
        "{source}"
    );
    json.as_object_mut().unwrap().remove("source");
    json
}

/// The four figures of every guild, from the rollups and from the raw
/// events: equal to the last bit. Returns how many guilds were compared.
pub(crate) fn rollups_equal_raw(config: &Path, guilds: impl IntoIterator<Item = String>) -> usize {
    let mut n = 0;
    for g in guilds {
        let raw = report(config, &g, "raw");
        let rolled = report(config, &g, "rollups");
        assert_eq!(rolled, raw, "guild {g}: rollups against raw events");
        n += 1;
    }
    n
}

/// A JSON report's interactions per day, in its order.
fn per_day(json: &serde_json::Value) -> Vec<(String, u64)> {
    json["interactions_per_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().to_string(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The report of a [`history`] guild against what was written.
pub(crate) fn matches_history(json: &serde_json::Value, want: &Expected) {
    let days: BTreeMap<String, u64> = per_day(json).into_iter().collect();
    // The report counts days up to today: a +02:00 event of today is
    // already today in UTC, and none is in the future.
    assert_eq!(days, want.per_day);
    let commands: BTreeMap<String, (u64, f64)> = json["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["command"].as_str().unwrap().to_string(),
                (c["count"].as_u64().unwrap(), c["avg_ms"].as_f64().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        commands.keys().collect::<Vec<_>>(),
        want.commands.keys().collect::<Vec<_>>()
    );
    for (c, (n, us)) in &want.commands {
        let (got_n, got_avg) = commands[c];
        assert_eq!(got_n, *n, "{c}");
        // Read back from JSON text, which may be a unit in the last place
        // off (serde_json's fast float parsing).
        let avg = *us as f64 / *n as f64 / 1000.0;
        assert!(
            (got_avg - avg).abs() <= avg * 1e-12,
            "{c}: {got_avg} against {avg}"
        );
    }
}

/// `chtail schema ACTION`: (exit code, stdout, stderr).
pub(crate) fn schema(config: &Path, action: &str) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = chtail_cmd(&["schema", action], config);
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Applies, and expects it to work.
pub(crate) fn apply(config: &Path) -> String {
    let (code, out, err) = schema(config, "apply");
    assert_eq!(code, 0, "schema apply:\n{out}\n{err}");
    out
}

/// What a backfill that died half-way leaves: the view in place, part of
/// the events in the rollup, merges of the table stopped, and no record.
fn interrupt_the_backfill(ch: &ClickHouse, db: &str) {
    ch.query(&format!(
        "ALTER TABLE {db}.chtail_schema_migrations DELETE WHERE version = 2"
    ));
    support::wait_until(support::SHORT, "the record deleted", || {
        ch.number(&format!(
            "SELECT count() FROM {db}.chtail_schema_migrations WHERE version = 2"
        )) == 0
    });
    ch.query(&format!(
        "INSERT INTO {db}.argus_events_daily SELECT guild_id, today(), event, type, command, count(), 0 \
         FROM {db}.argus_events WHERE guild_id < '1020' GROUP BY guild_id, event, type, command"
    ));
    ch.query(&format!("SYSTEM STOP MERGES {db}.argus_events"));
}

fn migrations_on(ch: &ClickHouse, name: &str) {
    let env = Env::new(ch, name, "events.jsonl", "");
    let db = &env.database;
    let dir = env.tmp.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    let own = dir.join("0100_commands_by_guild.sql");
    std::fs::write(
        &own,
        format!(
            "-- The operator's own: commands per guild, kept by a view.\n\
             CREATE TABLE IF NOT EXISTS {db}.commands_by_guild (guild_id String, n UInt64)\n\
             ENGINE = SummingMergeTree(n) ORDER BY guild_id;\n\
             CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.commands_by_guild_mv TO {db}.commands_by_guild AS\n\
             SELECT CAST(guild_id AS String) AS guild_id, count() AS n FROM {db}.argus_events\n\
             WHERE event = 'app_command' GROUP BY guild_id;\n"
        ),
    )
    .unwrap();
    // A retention only on 18.16, where it is refused: on the modern engine
    // it would delete the old events the raw figures are compared on (see
    // `retention_by_ttl_on_the_modern_engine`).
    let retention = if ch.is_modern() {
        ""
    } else {
        "retention = \"30d\"\n"
    };
    env.append_config(&format!(
        "[schema]\nmigrations_dir = \"{}\"\n{retention}",
        dir.display()
    ));

    // From empty: what is pending, and a plan that changes nothing.
    let (code, out, err) = schema(&env.config, "status");
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "does not exist yet",
        "pending  0001 daily_rollup_table (built in)",
        "pending  0002 daily_rollup_view (built in)",
        "pending  0100 commands_by_guild",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    let (code, plan, err) = schema(&env.config, "plan");
    assert_eq!(code, 0, "{plan}{err}");
    for want in [
        &format!("CREATE TABLE IF NOT EXISTS `{db}`.`argus_events_daily`"),
        &format!("CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`argus_events_daily_mv`"),
        &format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.commands_by_guild_mv"),
        "SELECT 100, 'commands_by_guild'",
    ] {
        assert!(plan.contains(want), "{want}:\n{plan}");
    }
    assert!(
        !plan.contains("MODIFY TTL"),
        "a TTL only where it is wanted and the server has TTL:\n{plan}"
    );
    assert_eq!(
        ch.number(&format!(
            "SELECT count() FROM system.databases WHERE name = '{db}'"
        )),
        0,
        "plan created something"
    );

    // Events first, so that the backfill has something to count.
    let (lines, want) = history(3);
    support::append_raw(&env.log("events.jsonl"), lines.as_bytes());
    let mut chtail = env.start();
    let total = lines.lines().count() as u64;
    expect_rows(ch, &env.table(), total);

    let out = apply(&env.config);
    assert!(out.contains("applied  0002 daily_rollup_view"), "{out}");
    assert!(out.contains("applied  0100 commands_by_guild"), "{out}");
    if !ch.is_modern() {
        assert!(out.contains("not possible on ClickHouse 18.16"), "{out}");
    }
    let records = format!("SELECT count() FROM {db}.chtail_schema_migrations");
    assert_eq!(ch.number(&records), 3);
    assert_eq!(
        ch.number(&format!("SELECT sum(events) FROM {db}.argus_events_daily")),
        total
    );
    // The report reads the rollups now, and says so.
    let text = chtail_cmd(&["report", "--guild", "1007"], &env.config);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!(
            "guild 1007: from rollups in {db}.argus_events_daily"
        )),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let guilds = || (0..HISTORY_GUILDS).map(|g| (1000 + g).to_string());
    assert_eq!(rollups_equal_raw(&env.config, guilds()), 50);
    for (g, w) in &want {
        matches_history(&report(&env.config, g, "rollups"), w);
    }

    // Again: nothing to do, nothing recorded twice.
    let out = apply(&env.config);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(ch.number(&records), 3);
    let (_, status, _) = schema(&env.config, "status");
    for want in ["applied  0001", "applied  0002", "applied  0100"] {
        assert!(status.contains(want), "{want}:\n{status}");
    }
    if ch.is_modern() {
        assert!(status.contains("raw events: kept forever"), "{status}");
        assert!(
            status.contains("rollups  ") && status.contains("exactly-once"),
            "{status}"
        );
    } else {
        assert!(
            status.contains("at-least-once") && status.contains("rollups inherit"),
            "{status}"
        );
        let check = chtail_cmd(&["check"], &env.config);
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(
            said.contains("note     rollups") && said.contains("rollups inherit"),
            "{said}"
        );
    }

    // A migration that fails half-way: its first statement ran, nothing is
    // recorded; fixed, apply finishes it.
    let two = dir.join("0101_two_steps.sql");
    std::fs::write(
        &two,
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.first_step (x UInt8) ENGINE = Memory;\n\
             CREATE TABLE {db}.second_step (x NoSuchType) ENGINE = Memory;\n"
        ),
    )
    .unwrap();
    let (code, out, err) = schema(&env.config, "apply");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("migration 0101 two_steps failed"), "{err}");
    assert!(err.contains("NoSuchType"), "{err}");
    assert!(
        err.contains("runs it again from its first statement"),
        "{err}"
    );
    assert_eq!(
        ch.number(&format!("EXISTS TABLE {db}.first_step")),
        1,
        "the first statement ran"
    );
    let (_, status, _) = schema(&env.config, "status");
    assert!(status.contains("pending  0101 two_steps"), "{status}");
    std::fs::write(
        &two,
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.first_step (x UInt8) ENGINE = Memory;\n\
             CREATE TABLE IF NOT EXISTS {db}.second_step (x UInt8) ENGINE = Memory;\n"
        ),
    )
    .unwrap();
    let out = apply(&env.config);
    assert!(out.contains("applied  0101 two_steps"), "{out}");
    assert_eq!(ch.number(&records), 4);

    // A file changed after it was applied is refused, by plan and apply.
    let original = std::fs::read_to_string(&own).unwrap();
    std::fs::write(&own, format!("{original}-- one more line\n")).unwrap();
    for action in ["apply", "plan"] {
        let (code, out, err) = schema(&env.config, action);
        assert_eq!(code, 65, "{action}: {out}{err}");
        assert!(
            err.contains("migration 0100 commands_by_guild")
                && err.contains("changed after it was applied"),
            "{err}"
        );
    }
    let (_, status, _) = schema(&env.config, "status");
    assert!(
        status.contains("CHANGED  0100 commands_by_guild"),
        "{status}"
    );
    std::fs::write(&own, original).unwrap();
    assert!(apply(&env.config).contains("nothing to do"));

    // One apply at a time: a lock left by a killed one is named.
    ch.query(&format!(
        "CREATE TABLE {db}.chtail_schema_lock (holder String, since DateTime) ENGINE = TinyLog"
    ));
    ch.query(&format!(
        "INSERT INTO {db}.chtail_schema_lock SELECT 'chtail on elsewhere, pid 7', now()"
    ));
    let (code, _, err) = schema(&env.config, "apply");
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains("holds the lock (chtail on elsewhere, pid 7")
            && err.contains(&format!("DROP TABLE `{db}`.`chtail_schema_lock`")),
        "{err}"
    );
    ch.query(&format!("DROP TABLE {db}.chtail_schema_lock"));

    // A backfill that died half-way: apply starts it again from the top.
    interrupt_the_backfill(ch, db);

    // SIGTERM while apply waits for a quiet moment (an INSERT that runs
    // for 3 s and inserts nothing): it stops, starts the merges again and
    // leaves no lock.
    let sleeper = {
        let url = ch.url();
        let password = ch.password();
        let sql = format!(
            "INSERT INTO {db}.argus_events SELECT '', '', '', '', '', 0 FROM numbers(1) WHERE sleep(3) != 0"
        );
        std::thread::spawn(move || {
            let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
            let _ = support::http_post(port, "/", sql.as_bytes(), &password);
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let applying = std::process::Command::new(env!("CARGO_BIN_EXE_chtail"))
        .args(["schema", "apply", "--config"])
        .arg(&env.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    std::process::Command::new("kill")
        .args(["-TERM", &applying.id().to_string()])
        .status()
        .unwrap();
    let stopped = applying.wait_with_output().unwrap();
    sleeper.join().unwrap();
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
    assert_eq!(
        ch.number(&format!("EXISTS TABLE {db}.chtail_schema_lock")),
        0,
        "the lock is left"
    );
    let (_, status, _) = schema(&env.config, "status");
    assert!(
        status.contains("pending  0002 daily_rollup_view"),
        "{status}"
    );
    let partial = chtail_cmd(
        &["report", "--guild", "1001", "--from", "rollups"],
        &env.config,
    );
    assert_eq!(
        partial.status.code(),
        Some(1),
        "rollups are not read before they are recorded"
    );
    let out = apply(&env.config);
    assert!(out.contains("applied  0002 daily_rollup_view"), "{out}");
    assert_eq!(
        ch.number(&format!("SELECT sum(events) FROM {db}.argus_events_daily")),
        total
    );
    assert_eq!(rollups_equal_raw(&env.config, guilds()), 50);
    // Merges run again: OPTIMIZE merges what the backfill left stopped.
    ch.query(&format!("OPTIMIZE TABLE {db}.argus_events FINAL"));
    assert!(chtail.terminate(support::SHORT).success());
}

#[test]
fn migrations_on_18_16() {
    migrations_on(shared(), "schema_old");
}

#[test]
fn migrations_on_the_modern_engine() {
    let ch = ClickHouse::modern("");
    migrations_on(&ch, "schema_modern");
}

/// Retention on the modern engine: rows older than the window go at the
/// next TTL merge (`OPTIMIZE … FINAL`), the rollups keep their counts; the
/// heartbeat table gets its own TTL; a changed window is applied, a removed
/// one removed.
#[test]
fn retention_by_ttl_on_the_modern_engine() {
    let ch = ClickHouse::modern("");
    let env = Env::new(
        &ch,
        "retention",
        "events.jsonl",
        "[schema]\nretention = \"30d\"\n\n[heartbeat]\nenabled = true\ninterval = \"1s\"\n",
    );
    let db = &env.database;
    let mut lines = String::new();
    for (back, n) in [(100u64, 5u64), (45, 4), (10, 3), (0, 2)] {
        for i in 0..n {
            lines.push_str(&format!(
                r#"{{"ts": "{}T12:00:0{i}.000000+00:00", "event": "interaction", "guild_id": "42", "type": "application_command"}}"#,
                day(back)
            ));
            lines.push('\n');
        }
    }
    support::append_raw(&env.log("events.jsonl"), lines.as_bytes());
    let mut chtail = env.start();
    expect_rows(&ch, &env.table(), 14);
    let out = apply(&env.config);
    assert!(
        out.contains("MODIFY TTL parseDateTimeBestEffortOrZero(ts, 'UTC') + INTERVAL 30 DAY"),
        "{out}"
    );
    assert!(
        out.contains("MODIFY TTL toDateTime(time) + INTERVAL 28 DAY"),
        "{out}"
    );
    ch.query(&format!("OPTIMIZE TABLE {db}.argus_events FINAL"));
    assert_eq!(
        ch.number(&format!("SELECT count() FROM {db}.argus_events")),
        5,
        "only the last 30 days are kept"
    );
    // The rollups keep what the raw table let go.
    let rolled = report(&env.config, "42", "rollups");
    assert_eq!(
        per_day(&rolled),
        vec![(day(100), 5), (day(45), 4), (day(10), 3), (day(0), 2)]
    );
    let hb = ch.query(&format!("SHOW CREATE TABLE {db}.chtail_heartbeat"));
    assert!(
        hb.contains("TTL toDateTime(time) + toIntervalDay(28)"),
        "{hb}"
    );
    let (_, status, _) = schema(&env.config, "status");
    assert!(status.contains("raw events: 30 days"), "{status}");
    assert!(status.contains("heartbeats: 28 days"), "{status}");

    // A longer window, then none.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, text.replace("\"30d\"", "\"60d\"")).unwrap();
    let (_, plan, _) = schema(&env.config, "plan");
    assert!(plan.contains("+ INTERVAL 60 DAY"), "{plan}");
    assert!(!plan.contains("chtail_heartbeat"), "{plan}");
    apply(&env.config);
    let (_, status, _) = schema(&env.config, "status");
    assert!(status.contains("raw events: 60 days"), "{status}");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, text.replace("retention = \"60d\"", "")).unwrap();
    let out = apply(&env.config);
    assert!(out.contains("REMOVE TTL"), "{out}");
    let (_, status, _) = schema(&env.config, "status");
    assert!(status.contains("raw events: kept forever"), "{status}");
    assert!(chtail.terminate(support::SHORT).success());
}

#[test]
fn schema_without_a_server_or_with_a_bad_file_says_so() {
    let ch = shared();
    let env = Env::new(ch, "schema_bad", "events.jsonl", "");
    let dir = env.tmp.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0005_mine.sql"), "SELECT 1").unwrap();
    env.append_config(&format!(
        "[schema]\nmigrations_dir = \"{}\"\n",
        dir.display()
    ));
    let (code, _, err) = schema(&env.config, "status");
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("0005_mine.sql") && err.contains("from 100"),
        "{err}"
    );
    let port = support::free_port();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&ch.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(&env.config, text).unwrap();
    let (code, _, err) = schema(&env.config, "apply");
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("cannot reach ClickHouse"), "{err}");
}

/// A table of another shape: chtail's own migrations and its retention are
/// left out, with the reason; the operator's migrations still run.
#[test]
fn a_table_of_another_shape_gets_only_the_operators_migrations() {
    let ch = shared();
    let env = Env::new(ch, "schema_other", "events.jsonl", "");
    let db = &env.database;
    ch.query(&format!("CREATE DATABASE {db}"));
    ch.query(&format!(
        "CREATE TABLE {db}.argus_events (ts String, guild_id String, event String, n UInt32) \
         ENGINE = MergeTree() ORDER BY ts"
    ));
    let dir = env.tmp.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0100_mine.sql"),
        format!("CREATE TABLE IF NOT EXISTS {db}.mine (x UInt8) ENGINE = Memory"),
    )
    .unwrap();
    env.append_config(&format!(
        "[schema]\nmigrations_dir = \"{}\"\nretention = \"30d\"\n",
        dir.display()
    ));
    let (code, status, err) = schema(&env.config, "status");
    assert_eq!(code, 0, "{err}");
    assert!(
        status.contains("chtail's own migrations are left out: the table has no column type"),
        "{status}"
    );
    assert!(!status.contains("0001"), "{status}");
    assert!(status.contains("pending  0100 mine"), "{status}");
    let out = apply(&env.config);
    assert!(out.contains("applied  0100 mine"), "{out}");
    assert_eq!(ch.number(&format!("EXISTS TABLE {db}.mine")), 1);
    assert_eq!(
        ch.number(&format!("EXISTS TABLE {db}.argus_events_daily")),
        0
    );
    let report = chtail_cmd(
        &["report", "--guild", "1", "--from", "rollups"],
        &env.config,
    );
    assert_eq!(report.status.code(), Some(1));
}
