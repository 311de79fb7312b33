//! Any table, any event shape: every column type written and read back on
//! both servers, rename / catch-all / metadata columns, DEFAULT and
//! MATERIALIZED columns, several sources into several tables, and a corpus
//! of bad and awkward lines with the outcome expected of each.

use crate::support::{ClickHouse, Env, SHORT, append_raw, chtail_cmd, count, shared, wait_until};

/// Adds keys to the config's first `[[source]]` block.
fn first_source_gets(env: &Env, keys: &str) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let at = text.find("[[source]]\n").unwrap();
    let end = at + text[at..].find('\n').unwrap() + 1;
    let end = end + text[end..].find('\n').unwrap() + 1; // the paths line
    let text = format!("{}{keys}\n{}", &text[..end], &text[end..]);
    std::fs::write(&env.config, text).unwrap();
}

/// Quarantined records: (offset, reason kind, reason).
fn quarantined(env: &Env) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(env.state.join("quarantine.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["offset"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn lines_of(ch: &ClickHouse, sql: &str) -> Vec<String> {
    ch.query(sql).lines().map(str::to_string).collect()
}

#[test]
fn every_column_type_round_trips_on_a_modern_server() {
    let ch = ClickHouse::modern("");
    let env = Env::new(&ch, "types_modern", "typed.jsonl", "");
    let db = &env.database;
    ch.query(&format!("CREATE DATABASE {db}"));
    ch.query(&format!(
        "CREATE TABLE {db}.typed (
            s String, lc LowCardinality(String), fs FixedString(4),
            i8 Int8, u64 UInt64, i128 Int128, f32 Float32, f64 Float64, b Bool,
            d Decimal(18, 4), d38 Decimal(38, 10),
            day Date, day32 Date32, t DateTime('UTC'), t_berlin DateTime('Europe/Berlin'),
            t64 DateTime64(3, 'UTC'), t64_tokyo DateTime64(6, 'Asia/Tokyo'),
            id UUID, v4 IPv4, v6 IPv6, e Enum8('ok' = 1, 'error' = 2),
            n Nullable(Int32), arr Array(String), arr_n Array(Nullable(UInt8)),
            m Map(String, UInt64), lc_n LowCardinality(Nullable(String)),
            guild String, region String DEFAULT 'eu', rest String,
            src String, at UInt64, host String, seen DateTime64(3, 'UTC'),
            day_m Date MATERIALIZED toDate(t)
        ) ENGINE = MergeTree ORDER BY s"
    ));
    first_source_gets(
        &env,
        r#"table = "typed"
rename = { guildId = "guild" }
catch_all = "rest"
metadata = { file = "src", offset = "at", host = "host", ingest_time = "seen" }"#,
    );
    let full = r#"{"s":"full","lc":"low","fs":"ab","i8":-128,"u64":18446744073709551615,"i128":-170141183460469231731687303715884105728,"f32":1.5,"f64":-2.25e-3,"b":true,"d":"12345.67891","d38":0.1234567891,"day":"2026-11-22","day32":"1901-02-03","t":"2026-11-22T10:00:00Z","t_berlin":"2026-11-22 11:00:00","t64":"2026-11-22T10:00:00.123456+00:00","t64_tokyo":"2026-11-22T19:00:00.654321","id":"00112233-4455-6677-8899-aabbccddeeff","v4":"192.168.1.20","v6":"2001:db8::ff00:42:8329","e":"error","n":-7,"arr":["a","b\"c"],"arr_n":[1,null,3],"m":{"x":1,"y":2},"lc_n":null,"guildId":"g-1","region":"us","unknown":{"k":[1,2]},"other":"o"}"#;
    let minimal = r#"{"s":"minimal"}"#;
    let epoch =
        r#"{"s":"epoch","t":1795341600,"t64":1795341600123,"day":20414,"e":1,"v4":3232235796}"#;
    let bad = r#"{"s":"bad","u64":-1}"#;
    let bad_time = r#"{"s":"bad-time","t":"next tuesday"}"#;
    let text = [full, minimal, epoch, bad, bad_time].join("\n") + "\n";
    append_raw(&env.log("typed.jsonl"), text.as_bytes());

    let out = chtail_cmd(&["check"], &env.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        r#""guild" or "guildId" -> guild (String)"#,
        "(keys no other column takes) -> rest (String)",
        "(metadata: file) -> src (String)",
        "(metadata: ingest_time) -> seen (DateTime64(3, 'UTC'))",
        "\"region\" -> region (String)  [missing: the column's DEFAULT]",
        "\"n\" -> n (Nullable(Int32))  [missing: NULL]",
        "sample of the last 5 line(s): 3 would be inserted, 2 quarantined",
        "2 x wrong_type",
        "column `u64`: expected an unsigned integer, got -1",
        "cannot read \"next tuesday\" as a timestamp",
    ] {
        assert!(stdout.contains(want), "check lacks {want:?}:\n{stdout}");
    }
    assert!(
        !stdout.contains("day_m"),
        "MATERIALIZED columns are the server's"
    );

    let mut chtail = env.start();
    wait_until(SHORT, "3 rows", || count(&ch, &format!("{db}.typed")) >= 3);
    let got = lines_of(
        &ch,
        &format!(
            "SELECT s, lc, hex(fs), i8, u64, i128, f32, f64, b, d, d38,
                    day, day32, toUnixTimestamp(t), toUnixTimestamp(t_berlin), toUnixTimestamp64Milli(t64),
                    toUnixTimestamp64Micro(t64_tokyo), id, v4, v6, e, n, arr, arr_n, m, lc_n, guild, region, rest,
                    src = '{}', at, host != '', dateDiff('second', seen, now64(3)) < 600, day_m
             FROM {db}.typed ORDER BY s FORMAT TSV",
            env.log("typed.jsonl").display()
        ),
    );
    let want_epoch = "epoch\t\t00000000\t0\t0\t0\t0\t0\tfalse\t0\t0\t2025-11-22\t1970-01-01\t1795341600\t0\t1795341600123\t0\t00000000-0000-0000-0000-000000000000\t192.168.1.20\t::\tok\t\\N\t[]\t[]\t{}\t\\N\t\teu\t{}\t1\tOFFSET\t1\t1\t2026-11-22";
    let want_full = "full\tlow\t61620000\t-128\t18446744073709551615\t-170141183460469231731687303715884105728\t1.5\t-0.00225\ttrue\t12345.6789\t0.1234567891\t2026-11-22\t1901-02-03\t1795341600\t1795341600\t1795341600123\t1795341600654321\t00112233-4455-6677-8899-aabbccddeeff\t192.168.1.20\t2001:db8::ff00:42:8329\terror\t-7\t['a','b\"c']\t[1,NULL,3]\t{'x':1,'y':2}\t\\N\tg-1\tus\t{\"unknown\":{\"k\":[1,2]},\"other\":\"o\"}\t1\t0\t1\t1\t2026-11-22";
    let want_minimal = "minimal\t\t00000000\t0\t0\t0\t0\t0\tfalse\t0\t0\t1970-01-01\t1970-01-01\t0\t0\t0\t0\t00000000-0000-0000-0000-000000000000\t0.0.0.0\t::\tok\t\\N\t[]\t[]\t{}\t\\N\t\teu\t{}\t1\tOFFSET\t1\t1\t1970-01-01";
    assert_eq!(got.len(), 3, "{got:#?}");
    // The offset column holds where each line starts in its file.
    let minimal_at = full.len() + 1;
    let epoch_at = minimal_at + minimal.len() + 1;
    assert_eq!(
        got[0],
        want_epoch.replace("\tOFFSET\t", &format!("\t{epoch_at}\t"))
    );
    assert_eq!(got[1], want_full);
    assert_eq!(
        got[2],
        want_minimal.replace("\tOFFSET\t", &format!("\t{minimal_at}\t"))
    );

    let q = quarantined(&env);
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q.iter().all(|(_, kind, _)| kind == "wrong_type"), "{q:?}");
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn column_types_round_trip_on_the_old_server_and_defaults_degrade_with_a_note() {
    let ch = shared();
    let env = Env::new(ch, "types_old", "typed.jsonl", "");
    let db = &env.database;
    ch.query(&format!("CREATE DATABASE {db}"));
    ch.query(&format!(
        "CREATE TABLE {db}.typed (
            s String, fs FixedString(4), i8 Int8, u64 UInt64, f32 Float32, f64 Float64,
            day Date, t DateTime('UTC'), t_berlin DateTime('Europe/Berlin'),
            id UUID, e Enum8('ok' = 1, 'error' = 2), e16 Enum16('big' = 1000),
            n Nullable(Int32), arr Array(String), arr_n Array(Nullable(UInt8)),
            region String DEFAULT 'eu', day_m Date MATERIALIZED toDate(t)
        ) ENGINE = MergeTree() ORDER BY s"
    ));
    first_source_gets(&env, "table = \"typed\"");
    let lines = [
        r#"{"s":"full","fs":"abcd","i8":127,"u64":18446744073709551615,"f32":-0.5,"f64":1e300,"day":"2026-11-22","t":"2026-11-22T10:00:00.999Z","t_berlin":"2026-11-22 11:00:00","id":"00112233-4455-6677-8899-aabbccddeeff","e":"error","e16":"big","n":2147483647,"arr":["x"],"arr_n":[null,255],"region":"us"}"#,
        r#"{"s":"minimal"}"#,
        r#"{"s":"bad","fs":"abcde"}"#,
    ];
    append_raw(
        &env.log("typed.jsonl"),
        (lines.join("\n") + "\n").as_bytes(),
    );
    let out = chtail_cmd(&["check"], &env.config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("cannot apply DEFAULT expressions to rows sent in RowBinary"),
        "{stdout}"
    );
    assert!(stdout.contains("1 x wrong_type"), "{stdout}");

    let mut chtail = env.start();
    wait_until(SHORT, "2 rows", || count(ch, &format!("{db}.typed")) >= 2);
    let got = lines_of(
        ch,
        &format!(
            "SELECT s, fs, i8, u64, f32, f64, day, toUnixTimestamp(t), toUnixTimestamp(t_berlin), id, e, e16, n, arr, arr_n, region, day_m
             FROM {db}.typed ORDER BY s FORMAT TSV"
        ),
    );
    assert_eq!(
        got,
        vec![
            "full\tabcd\t127\t18446744073709551615\t-0.5\t1e300\t2026-11-22\t1795341600\t1795341600\t00112233-4455-6677-8899-aabbccddeeff\terror\tbig\t2147483647\t['x']\t[NULL,255]\tus\t2026-11-22".to_string(),
            // No RowBinaryWithDefaults on 18.16: a missing DEFAULT column
            // gets the type's default, as `check` said.
            "minimal\t\\0\\0\\0\\0\t0\t0\t0\t0\t0000-00-00\t0\t0\t00000000-0000-0000-0000-000000000000\tok\tbig\t\\N\t[]\t[]\t\t0000-00-00".to_string(),
        ]
    );
    let q = quarantined(&env);
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].2.contains("longer than FixedString(4)"), "{q:?}");
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn several_sources_go_to_their_own_tables() {
    let ch = shared();
    let env = Env::new(ch, "multi_table", "events*.jsonl", "");
    let db = &env.database;
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "\n[[source]]\npaths = [\"{}/audit*.jsonl\"]\ntable = \"audit\"\nrename = {{ who = \"actor\" }}\n",
        env.logs.display()
    ));
    std::fs::write(&env.config, text).unwrap();
    ch.query(&format!("CREATE DATABASE {db}"));
    ch.query(&format!(
        "CREATE TABLE {db}.audit (ts String, actor String, n UInt32) ENGINE = MergeTree() ORDER BY ts"
    ));
    crate::support::append(&env.log("events.jsonl"), 0, 3000);
    let mut audit = String::new();
    for i in 0..2000 {
        audit.push_str(&format!(
            "{{\"ts\":\"a{i:05}\",\"who\":\"user{}\",\"n\":{i}}}\n",
            i % 7
        ));
    }
    append_raw(&env.log("audit.jsonl"), audit.as_bytes());
    let mut chtail = env.start();
    crate::support::expect_rows(ch, &env.table(), 3000);
    wait_until(SHORT, "2000 audit rows", || {
        count(ch, &format!("{db}.audit")) >= 2000
    });
    env.settled(0);
    assert_eq!(
        ch.query(&format!(
            "SELECT count(), uniqExact(ts), sum(n), uniqExact(actor), min(actor) FROM {db}.audit"
        ))
        .trim(),
        "2000\t2000\t1999000\t7\tuser0"
    );
    assert!(chtail.terminate(SHORT).success());
}

/// What should become of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// A row whose `ts` is this.
    Row(&'static str),
    /// Skipped silently (empty lines).
    Skip,
    /// Quarantined with this reason kind.
    Quarantine(&'static str),
}

#[test]
fn a_corpus_of_bad_and_awkward_lines_each_gets_its_expected_outcome() {
    use Outcome::*;
    let ch = shared();
    let env = Env::new(
        ch,
        "corpus",
        "events.jsonl",
        "[tail]\npoll_interval = \"200ms\"\nmax_line_bytes = \"4KiB\"\n",
    );
    let deep = format!(
        "{{\"ts\":\"deep-ignored\",\"x\":{}{}}}\n",
        "[".repeat(1900),
        "]".repeat(1900)
    );
    let long = format!("{{\"ts\":\"long\",\"command\":\"{}\"}}\n", "x".repeat(5000));
    let corpus: Vec<(Vec<u8>, Outcome)> = vec![
        (b"\xEF\xBB\xBF{\"ts\":\"bom\"}\r\n".to_vec(), Row("bom")),
        (b"\n".to_vec(), Skip),
        (b"   \t \r\n".to_vec(), Skip),
        (
            b"{\"ts\":\"crlf\",\"event\":\"e\"}\r\n".to_vec(),
            Row("crlf"),
        ),
        (b"{not json\n".to_vec(), Quarantine("invalid_json")),
        (
            b"{\"ts\":\"a\"} {\"ts\":\"b\"}\n".to_vec(),
            Quarantine("invalid_json"),
        ),
        (
            b"{\"ts\":\"\xff\xfe latin1 \xe9\"}\n".to_vec(),
            Quarantine("invalid_utf8"),
        ),
        (b"[1,2,3]\n".to_vec(), Quarantine("not_an_object")),
        (b"\"just a string\"\n".to_vec(), Quarantine("not_an_object")),
        (b"null\n".to_vec(), Quarantine("not_an_object")),
        (b"42\n".to_vec(), Quarantine("not_an_object")),
        (
            b"{\"ts\":\"wrong\",\"duration_ms\":\"fast\"}\n".to_vec(),
            Quarantine("wrong_type"),
        ),
        (
            b"{\"ts\":\"wrong2\",\"duration_ms\":[1]}\n".to_vec(),
            Quarantine("wrong_type"),
        ),
        (
            b"{\"ts\":\"raw\x00nul\"}\n".to_vec(),
            Quarantine("invalid_json"),
        ),
        (b"\x00\x00\x00\n".to_vec(), Quarantine("invalid_json")),
        (
            b"{\"ts\":\"escaped-nul\\u0000\"}\n".to_vec(),
            Row("escaped-nul\0"),
        ),
        (deep.into_bytes(), Row("deep-ignored")),
        (long.into_bytes(), Quarantine("too_long")),
        (
            b"{\"ts\":\"dup\",\"ts\":\"dup-last\"}\n".to_vec(),
            Row("dup-last"),
        ),
        (
            "{\"ts\":\"unicode \u{fc} \u{1F600}\"}\n"
                .as_bytes()
                .to_vec(),
            Row("unicode \u{fc} \u{1F600}"),
        ),
        (
            b"{\"ts\":\"number\",\"guild_id\":123456789012345678}\n".to_vec(),
            Row("number"),
        ),
        (b"{\"ts\":\"after\"}\n".to_vec(), Row("after")),
    ];
    let mut bytes = Vec::new();
    let mut offsets = Vec::new();
    for (line, _) in &corpus {
        offsets.push(bytes.len() as u64);
        bytes.extend_from_slice(line);
    }
    // A last line without its newline waits until it has one.
    bytes.extend_from_slice(b"{\"ts\":\"partial\"}");
    let path = env.log("events.jsonl");
    append_raw(&path, &bytes);
    let mut chtail = env.start();
    let want_rows: Vec<&str> = corpus
        .iter()
        .filter_map(|(_, o)| match o {
            Row(ts) => Some(*ts),
            _ => None,
        })
        .collect();
    let table = env.table();
    let lines = corpus.iter().filter(|(_, o)| *o != Skip).count();
    wait_until(SHORT, "every corpus line inserted or quarantined", || {
        usize::try_from(count(ch, &table)).unwrap() + quarantined(&env).len() >= lines
    });
    env.settled(b"{\"ts\":\"partial\"}".len() as u64);
    let mut got = lines_of(ch, &format!("SELECT ts FROM {table} FORMAT TSV"));
    got.sort();
    let mut want: Vec<String> = want_rows.iter().map(|ts| ts.replace('\0', "\\0")).collect();
    want.sort();
    assert_eq!(got, want, "quarantined: {:#?}", quarantined(&env));
    append_raw(&path, b"\n");
    wait_until(SHORT, "the completed last line", || {
        count(ch, &table) > want_rows.len() as u64
    });
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {table} WHERE ts = 'partial'"))
            .trim(),
        "1"
    );
    // The guild id written as a number keeps its digits.
    assert_eq!(
        ch.query(&format!("SELECT guild_id FROM {table} WHERE ts = 'number'"))
            .trim(),
        "123456789012345678"
    );

    let q = quarantined(&env);
    let want_q: Vec<(u64, &str)> = corpus
        .iter()
        .zip(&offsets)
        .filter_map(|((_, o), at)| match o {
            Quarantine(kind) => Some((*at, *kind)),
            _ => None,
        })
        .collect();
    let got_q: Vec<(u64, &str)> = q.iter().map(|(at, kind, _)| (*at, kind.as_str())).collect();
    assert_eq!(got_q, want_q);
    // Not UTF-8: kept byte for byte, in base64.
    let raw = std::fs::read_to_string(env.state.join("quarantine.jsonl")).unwrap();
    assert!(raw.contains("line_base64"), "{raw}");
    let status = chtail_cmd(&["status", "--json"], &env.config);
    assert!(status.status.success());
    // What a script watching chtail reads: it runs, its counters, the
    // quarantine's size.
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let records = raw.lines().count() as u64;
    assert_eq!(report["running"], true, "{report}");
    assert_eq!(report["quarantined"].as_u64(), Some(records), "{report}");
    assert_eq!(
        report["counters"]["quarantined_total"].as_f64(),
        Some(records as f64),
        "{report}"
    );
    assert!(
        report["counters"]["rows_inserted_total"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(chtail.terminate(SHORT).success());
    let logs = chtail.logs();
    assert!(logs.contains("quarantined"), "{logs}");
}
