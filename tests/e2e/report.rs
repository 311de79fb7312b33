//! `chtail report`: events shipped by chtail itself, then the four figures
//! for a guild, as text and as JSON, on 18.16 and on the modern engine;
//! and its bad inputs (a guild id that is not a number, a guild without
//! events, no server) each with a message and a non-zero exit.

use std::collections::BTreeMap;

use crate::rollups::day;
use crate::support::{self, ClickHouse, Env, chtail_cmd, expect_rows, shared};

/// The events of three guilds over 40 days, and what the report must say
/// about guild 111 for `--days 30`: interactions per day, and per command
/// (count, sum of durations).
/// Per command: (count, sum of durations).
type Commands = BTreeMap<String, (u64, f64)>;

fn events() -> (String, BTreeMap<String, u64>, Commands) {
    let mut lines = String::new();
    let mut per_day = BTreeMap::new();
    let mut per_command: Commands = BTreeMap::new();
    let mut n = 0u64;
    for back in 0..40u64 {
        let date = day(back);
        for guild in ["111", "222", "333"] {
            for i in 0..(back % 4 + 1) {
                n += 1;
                // A different hour and offset each time; +02:00 near
                // midnight is the previous UTC day.
                let (time, utc_date) = if i % 2 == 0 {
                    (
                        format!("{date}T10:00:{:02}.{n:06}+00:00", i % 60),
                        date.clone(),
                    )
                } else {
                    (format!("{}T01:00:00.{n:06}+02:00", date), day(back + 1))
                };
                lines.push_str(&format!(
                    r#"{{"ts": "{time}", "event": "interaction", "guild_id": "{guild}", "type": "application_command"}}"#
                ));
                lines.push('\n');
                if guild == "111" {
                    *per_day.entry(utc_date).or_insert(0) += 1;
                }
            }
            for (c, cmd) in ["ping", "play", "skip", "queue"].iter().enumerate() {
                let c = c as u64;
                if (back + c).is_multiple_of(3) {
                    continue;
                }
                n += 1;
                let ms = (back * 10 + c) as f64 + 0.5;
                lines.push_str(&format!(
                    r#"{{"ts": "{date}T12:00:00.{n:06}+00:00", "event": "app_command", "guild_id": "{guild}", "command": "{cmd}", "duration_ms": {ms}}}"#
                ));
                lines.push('\n');
                if guild == "111" {
                    let e = per_command.entry(cmd.to_string()).or_insert((0, 0.0));
                    e.0 += 1;
                    e.1 += ms;
                }
            }
        }
    }
    (lines, per_day, per_command)
}

fn report_on(ch: &ClickHouse, name: &str) {
    let env = Env::new(ch, name, "events.jsonl", "");
    let (lines, per_day, per_command) = events();
    support::append_raw(&env.log("events.jsonl"), lines.as_bytes());
    let mut chtail = env.start();
    expect_rows(ch, &env.table(), lines.lines().count() as u64);
    assert!(chtail.terminate(support::SHORT).success());

    let out = chtail_cmd(
        &["report", "--guild", "111", "--days", "30", "--json"],
        &env.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got_days: BTreeMap<String, u64> = json["interactions_per_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().to_string(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect();
    // The last 30 UTC days, today included: day(29) is the oldest.
    let oldest = day(29);
    let want_days: BTreeMap<String, u64> =
        per_day.into_iter().filter(|(d, _)| *d >= oldest).collect();
    assert_eq!(got_days, want_days);
    let mut by_count: Vec<(&String, &(u64, f64))> = per_command.iter().collect();
    by_count.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    let top: Vec<(String, u64)> = json["top_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["command"].as_str().unwrap().to_string(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let want_top: Vec<(String, u64)> = by_count
        .iter()
        .map(|(c, (n, _))| ((*c).clone(), *n))
        .collect();
    assert_eq!(top, want_top);
    for c in json["commands"].as_array().unwrap() {
        let (n, sum) = per_command[c["command"].as_str().unwrap()];
        assert_eq!(c["count"].as_u64(), Some(n));
        assert!(
            (c["avg_ms"].as_f64().unwrap() - sum / n as f64).abs() < 1e-6,
            "{c}"
        );
    }
    let (n, sum) = per_command
        .values()
        .fold((0, 0.0), |(n, s), (cn, cs)| (n + cn, s + cs));
    assert!((json["avg_duration_ms"].as_f64().unwrap() - sum / n as f64).abs() < 1e-6);
    assert!(json["source"].as_str().unwrap().contains("raw events"));

    // The text: the same figures, readable.
    let out = chtail_cmd(&["report", "--guild", "111", "--limit", "2"], &env.config);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("guild 111: from raw events"), "{text}");
    assert!(
        text.contains(&format!(" 1. {:<7}", want_top[0].0)),
        "{text}"
    );
    assert!(
        !text.contains(" 3. "),
        "--limit 2 shows two commands:\n{text}"
    );
    assert!(text.contains("average command duration:"), "{text}");

    // Bad input: a clear message and a non-zero exit.
    let bad = chtail_cmd(&["report", "--guild", "abc"], &env.config);
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a number"));
    let unknown = chtail_cmd(&["report", "--guild", "999"], &env.config);
    assert_eq!(unknown.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("guild 999 has no events"));
}

#[test]
fn report_on_18_16() {
    report_on(shared(), "report_old");
}

#[test]
fn report_on_the_modern_engine() {
    let ch = ClickHouse::modern("");
    report_on(&ch, "report_modern");
}

#[test]
fn report_without_a_server_says_so() {
    let ch = shared();
    let env = Env::new(ch, "report_down", "events.jsonl", "");
    let port = support::free_port();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&ch.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(&env.config, text).unwrap();
    let out = chtail_cmd(&["report", "--guild", "111"], &env.config);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach ClickHouse"), "{err}");
}
