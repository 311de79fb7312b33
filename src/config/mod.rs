//! Configuration: one TOML file, read once, validated once.
//!
//! - [`raw`]: the file as written, one serde struct per section; the keys
//!   chtail knows are read off these types, so there is no second list.
//! - [`validate`]: every key checked (all unknown keys reported, each with
//!   its line and a likely meant key), each section deserialized, then
//!   validated into [`Config`], the only type the rest of chtail sees.
//! - [`report`]: the problems, each naming its key and line, all collected
//!   before anything is reported, so an operator fixes a file in one pass.
//!
//! This is the lowest layer: it imports nothing of the pipeline.

mod raw;
mod report;
mod validate;
mod vars;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

pub use report::{ConfigError, Problem};
pub use validate::parse_bytes;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub clickhouse: ClickHouse,
    pub sources: Vec<Source>,
    pub state: State,
    pub batch: Batch,
    pub queue: Queue,
    pub tail: Tail,
    pub shutdown: Shutdown,
    pub metrics: Metrics,
    pub heartbeat: Heartbeat,
    pub schema: Schema,
}

#[derive(Clone, PartialEq)]
pub struct ClickHouse {
    /// One URL, or several replicas to fail over between, in order.
    pub urls: Vec<String>,
    pub database: String,
    pub table: String,
    pub user: String,
    pub password: Secret,
    pub create_table: bool,
    /// PEM certificates trusted for https:// URLs, besides the Mozilla
    /// roots: `clickhouse.ca_file`, read and checked when the file is.
    pub ca_file: Option<PathBuf>,
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub compression: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouse")
            .field("urls", &self.urls)
            .field("database", &self.database)
            .field("table", &self.table)
            .field("user", &self.user)
            .field("password", &self.password)
            .finish_non_exhaustive()
    }
}

/// A password that never shows up in logs or debug output.
#[derive(Clone, Default, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub paths: Vec<String>,
    /// The table this source's events go to (`clickhouse.table` unless the
    /// source names its own), in `clickhouse.database`.
    pub table: String,
    pub mapping: Mapping,
    /// Read what a matching symlink points to (README, "Security"); off by
    /// default: whoever can write the log directory could otherwise make
    /// chtail read any file its user can.
    pub follow_symlinks: bool,
    /// Globs of paths the source does not read although `paths` match them.
    pub exclude: Vec<String>,
    /// Where a file is first read when chtail starts with no state at all.
    pub start_at: StartAt,
}

/// Where chtail starts reading the files it finds on its very first start
/// (an empty state directory). Files that appear later, and files found on
/// any later start, are always read from their beginning, so that nothing
/// written while chtail runs, or while it is down, is skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartAt {
    #[default]
    Beginning,
    /// After the last complete line: attach to a bot with a large history.
    End,
}

/// How a source's JSON keys and line metadata fill its table's columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// JSON key → column, for keys whose name differs from their column's.
    pub rename: Vec<(String, String)>,
    /// A String or Map(String, …) column that keeps the keys no other
    /// column takes.
    pub catch_all: Option<String>,
    pub metadata: Metadata,
}

/// Columns filled with what chtail knows about each line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The path of the file the line was read from.
    pub file: Option<String>,
    /// The byte offset of the line's start in that file.
    pub offset: Option<String>,
    /// This machine's host name.
    pub host: Option<String>,
    /// When chtail read the line.
    pub ingest_time: Option<String>,
}

/// Metadata chtail knows about each line: the keys of `[source.metadata]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaField {
    File,
    Offset,
    Host,
    IngestTime,
}

impl MetaField {
    /// The key naming it in `[source.metadata]`.
    pub fn key(self) -> &'static str {
        match self {
            MetaField::File => "file",
            MetaField::Offset => "offset",
            MetaField::Host => "host",
            MetaField::IngestTime => "ingest_time",
        }
    }
}

impl Mapping {
    /// The metadata columns, each with what fills it.
    pub fn metadata_columns(&self) -> Vec<(MetaField, &str)> {
        let m = &self.metadata;
        [
            (MetaField::File, &m.file),
            (MetaField::Offset, &m.offset),
            (MetaField::Host, &m.host),
            (MetaField::IngestTime, &m.ingest_time),
        ]
        .into_iter()
        .filter_map(|(f, c)| c.as_deref().map(|c| (f, c)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
    /// The most rows one streamed catch-up INSERT carries (README,
    /// "Catch-up"); 0: never streamed.
    pub catch_up_rows: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub max_rows: usize,
    pub max_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    pub poll_interval: Duration,
    pub max_line_bytes: usize,
    pub read_buffer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    pub timeout: Duration,
}

/// The HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Where `/metrics`, `/health` and `/ready` listen; `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
    /// `/ready` fails while the unread bytes of all files exceed this.
    pub ready_max_lag: u64,
    /// The JSON key holding an event's own time, for the delay histogram.
    pub event_time_key: Option<String>,
}

/// A row every `interval` into a table, so dashboards see chtail alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub enabled: bool,
    pub interval: Duration,
    pub table: String,
}

/// `[schema]`: what `chtail schema apply` manages (README, "Managed
/// schema").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    /// The operator's own `NNNN_name.sql` migrations.
    pub migrations_dir: Option<PathBuf>,
    /// Raw events older than this many days are deleted by a TTL (servers
    /// with TTL only); `None` keeps them.
    pub retention_days: Option<u32>,
    /// The heartbeat table's TTL in days.
    pub heartbeat_retention_days: u32,
}

/// Loopback only: the endpoint is for a local Prometheus or probe.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9820";

pub const DEFAULT_URL_HINT: &str = "http://127.0.0.1:8123";

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                key: "(file)".into(),
                line: None,
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        Config::parse(&text).map_err(|problems| ConfigError {
            file: path.to_owned(),
            problems,
        })
    }

    /// Validates the text of a config file, collecting every problem;
    /// `${VAR}` and `${VAR:-default}` are taken from the environment.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let text = vars::expand(text, |name| std::env::var(name).ok())?;
        validate::document(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[clickhouse]
url = "http://127.0.0.1:8123"

[[source]]
paths = ["/var/log/argus/events*.jsonl"]

[state]
dir = "/var/lib/chtail"

[batch]
max_rows = 50000
max_wait = "1s"

[shutdown]
timeout = "30s"
"#;

    #[test]
    fn the_design_example_is_valid() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.clickhouse.table, "argus_events");
        assert_eq!(c.clickhouse.urls, vec!["http://127.0.0.1:8123"]);
        assert_eq!(c.clickhouse.database, "default");
        assert_eq!(c.batch.max_rows, 50_000);
        assert_eq!(c.batch.max_wait, Duration::from_secs(1));
        assert_eq!(c.shutdown.timeout, Duration::from_secs(30));
        assert_eq!(c.sources[0].paths, vec!["/var/log/argus/events*.jsonl"]);
        assert!(c.queue.max_rows >= c.batch.max_rows);
    }

    #[test]
    fn schema_retentions_are_whole_days() {
        let base = "[clickhouse]\nurl = \"http://127.0.0.1:8123\"\n[[source]]\npaths = [\"/var/log/a/*.jsonl\"]\n";
        let c = Config::parse(base).expect("valid");
        assert_eq!(c.schema.retention_days, None);
        assert_eq!(c.schema.heartbeat_retention_days, 28);
        let c = Config::parse(&format!(
            "{base}[schema]\nretention = \"90d\"\nheartbeat_retention = \"2weeks\"\nmigrations_dir = \"/etc/chtail/migrations\"\n"
        ))
        .expect("valid");
        assert_eq!(c.schema.retention_days, Some(90));
        assert_eq!(c.schema.heartbeat_retention_days, 14);
        assert_eq!(
            c.schema.migrations_dir.as_deref(),
            Some(Path::new("/etc/chtail/migrations"))
        );
        let problems = Config::parse(&format!(
            "{base}[schema]\nretention = \"36h\"\nheartbeat_retention = \"90x\"\nmigrations_dir = \"rel\"\nretension = 1\n"
        ))
        .unwrap_err();
        let said: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        assert_eq!(
            said,
            vec![
                ("schema.retention".to_string(), Some(6)),
                ("schema.heartbeat_retention".to_string(), Some(7)),
                ("schema.migrations_dir".to_string(), Some(8)),
                ("schema.retension".to_string(), Some(9)),
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("whole number of days"));
    }

    #[test]
    fn exclude_and_start_at() {
        let base = "[clickhouse]\nurl = \"http://127.0.0.1:8123\"\n[[source]]\npaths = [\"/var/log/a/*.jsonl\"]\n";
        let c = Config::parse(&format!(
            "{base}exclude = [\"/var/log/a/debug*\"]\nstart_at = \"end\"\n"
        ))
        .expect("valid");
        assert_eq!(c.sources[0].exclude, vec!["/var/log/a/debug*"]);
        assert_eq!(c.sources[0].start_at, StartAt::End);
        let bad = Config::parse(&format!("{base}start_at = \"middle\"\n")).unwrap_err();
        assert_eq!(bad[0].key, "source.start_at");
        assert_eq!(bad[0].line, Some(5));
        let bad = Config::parse(&format!("{base}exclude = [\"[\"]\n")).unwrap_err();
        assert_eq!(bad[0].key, "source.exclude");
    }

    #[test]
    fn the_shipped_example_is_valid_and_states_the_defaults() {
        let example = Config::parse(include_str!("../../config.example.toml")).expect("valid");
        let minimal = Config::parse(
            "[clickhouse]\nurl = \"http://127.0.0.1:8123\"\n[[source]]\npaths = [\"/var/log/argus/events*.jsonl\"]\n",
        )
        .expect("valid");
        // Every field, not the Debug text (which leaves some out).
        assert!(example == minimal, "{example:#?}\n!=\n{minimal:#?}");
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = r#"
[clickhouse]
url = "http://127.0.0.1:8123"
tabel = "x"

[[source]]
paths = ["/var/log/a.jsonl"]
pathz = ["x"]

[batch]
max_wait = "soon"
max_rows = 0

[extra]
a = 1
"#;
        let problems = Config::parse(text).unwrap_err();
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| shown.iter().any(|s| s.contains(needle));
        assert!(
            has("line 4: `clickhouse.tabel`: unknown key (did you mean `table`?)"),
            "{shown:?}"
        );
        assert!(has("line 8: `source.pathz`: unknown key"), "{shown:?}");
        assert!(has("line 11: `batch.max_wait`"), "{shown:?}");
        assert!(has("line 12: `batch.max_rows`"), "{shown:?}");
        assert!(has("line 14: `extra`: unknown section"), "{shown:?}");
        assert_eq!(problems.len(), 5, "{shown:?}");
    }

    #[test]
    fn sources_name_tables_renames_catch_all_and_metadata() {
        let text = r#"[clickhouse]
url = "http://127.0.0.1:8123"
table = "events"

[[source]]
paths = ["/var/log/a/*.jsonl"]

[[source]]
paths = ["/var/log/b/*.jsonl"]
table = "audit"
rename = { guildId = "guild_id", "user.name" = "user" }
catch_all = "extra"
[source.metadata]
file = "source_file"
offset = "source_offset"
host = "host"
ingest_time = "ingested_at"
"#;
        let c = Config::parse(text).expect("valid");
        assert_eq!(c.sources[0].table, "events");
        assert_eq!(c.sources[0].mapping, Mapping::default());
        let m = &c.sources[1].mapping;
        assert_eq!(c.sources[1].table, "audit");
        assert_eq!(
            m.rename,
            vec![
                ("guildId".to_string(), "guild_id".to_string()),
                ("user.name".to_string(), "user".to_string())
            ]
        );
        assert_eq!(m.catch_all.as_deref(), Some("extra"));
        assert_eq!(m.metadata_columns().len(), 4);

        let bad = text
            .replace("host = \"host\"", "hots = \"host\"")
            .replace("table = \"audit\"", "table = \"a-b\"")
            .replace("catch_all = \"extra\"", "catch_all = \"source_file\"");
        let shown: Vec<String> = Config::parse(&bad)
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let has = |needle: &str| shown.iter().any(|s| s.contains(needle));
        assert!(
            has("line 10: `source.table`: `a-b` must be a plain identifier"),
            "{shown:?}"
        );
        assert!(
            has("line 16: `source.metadata.hots`: unknown key (did you mean `host`?)"),
            "{shown:?}"
        );
        assert!(has("column `source_file` is named twice"), "{shown:?}");
    }

    #[test]
    fn url_may_list_replicas() {
        let c = Config::parse(&GOOD.replace(
            "url = \"http://127.0.0.1:8123\"",
            "url = [\"http://a:8123/\", \"http://b:8123\"]",
        ))
        .expect("valid");
        assert_eq!(c.clickhouse.urls, vec!["http://a:8123", "http://b:8123"]);
        let tls = Config::parse(&GOOD.replace("http://127.0.0.1:8123", "https://ch.example:8443"));
        assert_eq!(
            tls.expect("valid").clickhouse.urls,
            vec!["https://ch.example:8443"]
        );
        let problems = Config::parse(&GOOD.replace(
            "url = \"http://127.0.0.1:8123\"",
            "url = [\"http://a:8123\", \"ftp://b\"]",
        ))
        .unwrap_err();
        assert_eq!(problems[0].key, "clickhouse.url");
        assert!(problems[0].message.contains("ftp://b"));
    }

    #[test]
    fn missing_url_and_sources_are_reported_together() {
        let problems = Config::parse("[state]\ndir = \"relative\"\n").unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"clickhouse.url"));
        assert!(keys.contains(&"source"));
        assert!(keys.contains(&"state.dir"));
    }

    #[test]
    fn wrong_types_name_the_line() {
        let text = "[clickhouse]\nurl = 5\n[[source]]\npaths = [\"/a\"]\n";
        let problems = Config::parse(text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
        assert_eq!(problems[0].key, "clickhouse.url", "{problems:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let problems = Config::parse("[clickhouse]\nurl = \"http://x\n").unwrap_err();
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let text = format!("{GOOD}\n");
        let text = text.replace(
            "url = \"http://127.0.0.1:8123\"",
            "url = \"http://127.0.0.1:8123\"\npassword = \"hunter2\"",
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(c.clickhouse.password.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_line_limit_past_256_mib_is_refused() {
        let problems =
            Config::parse(&format!("{GOOD}\n[tail]\nmax_line_bytes = \"1GiB\"\n")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "tail.max_line_bytes");
        assert!(
            problems[0].message.contains("at most 256MiB"),
            "{problems:?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
        assert_eq!(parse_bytes("64 KiB"), Some(64 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
    }
}
