//! Configuration: one TOML file, read once, validated once.
//!
//! The file is parsed into a spanned TOML tree, every key is checked against
//! the known ones (so *all* unknown keys are reported, each with its line),
//! each section is deserialized into a raw serde struct, and the raw structs
//! are validated into [`Config`], the only type the rest of chtail sees.
//! Every problem is collected before anything is reported, so an operator
//! fixes a bad file in one pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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
    /// PEM certificates trusted for https:// URLs, besides the Mozilla roots.
    pub ca_file: Option<PathBuf>,
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

impl Mapping {
    /// The metadata columns, each with what fills it.
    pub fn metadata_columns(&self) -> Vec<(crate::parse::MetaField, &str)> {
        use crate::parse::MetaField;
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

/// Every problem found in a config file, each with its key and line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{} in the configuration:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: `{}`: {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

// ---- raw, as written -------------------------------------------------------

/// Known keys per section; anything else is an error naming key and line.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "clickhouse",
        &[
            "url",
            "database",
            "table",
            "user",
            "password",
            "password_file",
            "create_table",
            "ca_file",
            "compression",
            "connect_timeout",
            "request_timeout",
            "retry_initial_backoff",
            "retry_max_backoff",
        ],
    ),
    (
        "source",
        &[
            "paths",
            "table",
            "rename",
            "catch_all",
            "metadata",
            "follow_symlinks",
        ],
    ),
    ("state", &["dir"]),
    ("batch", &["max_rows", "max_bytes", "max_wait"]),
    ("queue", &["max_rows", "max_bytes"]),
    (
        "tail",
        &["poll_interval", "max_line_bytes", "read_buffer_bytes"],
    ),
    ("shutdown", &["timeout"]),
    ("metrics", &["listen", "ready_max_lag", "event_time_key"]),
    ("heartbeat", &["enabled", "interval", "table"]),
];

const METADATA_KEYS: &[&str] = &["file", "offset", "host", "ingest_time"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClickHouse {
    url: Option<Spanned<Urls>>,
    database: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    user: Option<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    create_table: Option<bool>,
    ca_file: Option<Spanned<PathBuf>>,
    compression: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    retry_initial_backoff: Option<Spanned<String>>,
    retry_max_backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    paths: Spanned<Vec<String>>,
    table: Option<Spanned<String>>,
    rename: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    catch_all: Option<Spanned<String>>,
    metadata: Option<Spanned<Metadata>>,
    follow_symlinks: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_rows: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<ByteSize>>,
    max_wait: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_rows: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<ByteSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTail {
    poll_interval: Option<Spanned<String>>,
    max_line_bytes: Option<Spanned<ByteSize>>,
    read_buffer_bytes: Option<Spanned<ByteSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    ready_max_lag: Option<Spanned<ByteSize>>,
    event_time_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    enabled: Option<bool>,
    interval: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
}

/// `url = "http://a:8123"` or `url = ["http://a:8123", "http://b:8123"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

/// A size given as a number of bytes or a string such as `"16MiB"`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum ByteSize {
    Bytes(i64),
    Text(String),
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

    /// Validates the text of a config file, collecting every problem.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let lines = LineIndex::new(text);
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                return Err(vec![Problem {
                    key: "(syntax)".into(),
                    line: e.span().map(|s| lines.line(s.start)),
                    message: e.message().trim().to_string(),
                }]);
            }
        };
        let mut v = Validator {
            lines: &lines,
            problems: Vec::new(),
            failed: Vec::new(),
        };
        let mut doc = doc.into_inner();
        v.strip_unknown(&mut doc);

        let clickhouse: RawClickHouse = v.section(&mut doc, "clickhouse").unwrap_or_default();
        let state: RawState = v.section(&mut doc, "state").unwrap_or_default();
        let batch: RawBatch = v.section(&mut doc, "batch").unwrap_or_default();
        let queue: RawQueue = v.section(&mut doc, "queue").unwrap_or_default();
        let tail: RawTail = v.section(&mut doc, "tail").unwrap_or_default();
        let shutdown: RawShutdown = v.section(&mut doc, "shutdown").unwrap_or_default();
        let sources = v.sources(&mut doc);

        let metrics: RawMetrics = v.section(&mut doc, "metrics").unwrap_or_default();
        let heartbeat: RawHeartbeat = v.section(&mut doc, "heartbeat").unwrap_or_default();
        let mut config = v.validate(clickhouse, sources, state, batch, queue, tail, shutdown);
        (config.metrics, config.heartbeat) = v.service(metrics, heartbeat);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            v.problems.sort_by_key(|p| p.line.unwrap_or(0));
            Err(v.problems)
        }
    }
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

struct Validator<'a> {
    lines: &'a LineIndex,
    problems: Vec<Problem>,
    /// Sections that did not deserialize: their defaults are not checked,
    /// so one mistake is reported once.
    failed: Vec<String>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, span: Option<std::ops::Range<usize>>, message: String) {
        self.problems.push(Problem {
            key: key.to_string(),
            line: span.map(|s| self.lines.line(s.start)),
            message,
        });
    }

    /// Removes, and reports, every key chtail does not know.
    fn strip_unknown(&mut self, doc: &mut DeTable<'_>) {
        let mut unknown = Vec::new();
        for (key, value) in doc.iter_mut() {
            let name = key.get_ref().as_ref();
            let Some((_, known)) = KNOWN.iter().find(|(s, _)| *s == name) else {
                unknown.push((name.to_string(), key.span(), "unknown section"));
                continue;
            };
            let tables: Vec<&mut DeTable<'_>> = match value.get_mut() {
                DeValue::Table(t) => vec![t],
                DeValue::Array(a) => a
                    .iter_mut()
                    .filter_map(|v| match v.get_mut() {
                        DeValue::Table(t) => Some(t),
                        _ => None,
                    })
                    .collect(),
                _ => continue, // the type error is reported by the section parse
            };
            for table in tables {
                let mut bad = Vec::new();
                for (k, v) in table.iter_mut() {
                    if !known.contains(&k.get_ref().as_ref()) {
                        bad.push(k.clone());
                    }
                    // `[source.metadata]`: its keys are checked the same way.
                    if name == "source"
                        && k.get_ref() == "metadata"
                        && let DeValue::Table(inner) = v.get_mut()
                    {
                        let wrong: Vec<_> = inner
                            .iter()
                            .map(|(ik, _)| ik.clone())
                            .filter(|ik| !METADATA_KEYS.contains(&ik.get_ref().as_ref()))
                            .collect();
                        for ik in wrong {
                            let full = format!("source.metadata.{}", ik.get_ref());
                            unknown.push((full, ik.span(), "unknown key"));
                            inner.remove(ik.get_ref().as_ref());
                        }
                    }
                }
                for k in bad {
                    let full = format!("{name}.{}", k.get_ref());
                    unknown.push((full, k.span(), "unknown key"));
                    table.remove(k.get_ref().as_ref());
                }
            }
        }
        for (key, span, what) in unknown {
            let hint = suggestion(&key);
            self.problem(&key, Some(span), format!("{what}{hint}"));
            if what == "unknown section" {
                doc.remove(key.as_str());
            }
        }
    }

    fn section<T: DeserializeOwned>(&mut self, doc: &mut DeTable<'_>, name: &str) -> Option<T> {
        let value = doc.remove(name)?;
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(t) => self.deserialize(name, Spanned::new(span, t)),
            _ => {
                self.problem(
                    name,
                    Some(span),
                    "must be a table, e.g. [".to_string() + name + "]",
                );
                None
            }
        }
    }

    fn deserialize<T: DeserializeOwned>(
        &mut self,
        name: &str,
        table: Spanned<DeTable<'_>>,
    ) -> Option<T> {
        let whole = table.span();
        let keys: Vec<(String, std::ops::Range<usize>)> = table
            .get_ref()
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v.span()))
            .collect();
        match T::deserialize(toml::de::Deserializer::from(table)) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or(whole);
                // Name the key whose value is wrong, not just the section.
                let key = keys
                    .iter()
                    .find(|(_, s)| s.start <= span.start && span.start < s.end.max(s.start + 1))
                    .map(|(k, _)| format!("{name}.{k}"))
                    .unwrap_or_else(|| name.to_string());
                let msg = e.message().trim().replace('\n', " ");
                self.problem(&key, Some(span), msg);
                self.failed.push(name.to_string());
                None
            }
        }
    }

    fn sources(&mut self, doc: &mut DeTable<'_>) -> Vec<RawSource> {
        let Some(value) = doc.remove("source") else {
            return Vec::new();
        };
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    let span = item.span();
                    match item.into_inner() {
                        DeValue::Table(t) => {
                            if let Some(s) = self.deserialize("source", Spanned::new(span, t)) {
                                out.push(s);
                            }
                        }
                        _ => self.problem("source", Some(span), "must be a table".into()),
                    }
                }
                out
            }
            _ => {
                self.problem(
                    "source",
                    Some(span),
                    "must be written as one or more [[source]] blocks".into(),
                );
                Vec::new()
            }
        }
    }

    fn duration(&mut self, key: &str, v: Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, Some(v.span()), "must be longer than zero".into());
                default
            }
            Err(e) => {
                self.problem(
                    key,
                    Some(v.span()),
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"500ms\", \"1s\", \"2m\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn count(&mut self, key: &str, v: Option<Spanned<i64>>, default: usize) -> usize {
        let Some(v) = v else { return default };
        match usize::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                self.problem(
                    key,
                    Some(v.span()),
                    "must be a whole number above zero".into(),
                );
                default
            }
        }
    }

    fn bytes(&mut self, key: &str, v: Option<Spanned<ByteSize>>, default: usize) -> usize {
        let Some(v) = v else { return default };
        let parsed = match v.get_ref() {
            ByteSize::Bytes(n) => usize::try_from(*n).ok().filter(|n| *n > 0),
            ByteSize::Text(s) => parse_bytes(s),
        };
        match parsed {
            Some(n) => n,
            None => {
                self.problem(
                    key,
                    Some(v.span()),
                    "must be a size above zero: bytes, or e.g. \"64KiB\", \"16MiB\"".into(),
                );
                default
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn validate(
        &mut self,
        ch: RawClickHouse,
        sources: Vec<RawSource>,
        state: RawState,
        batch: RawBatch,
        queue: RawQueue,
        tail: RawTail,
        shutdown: RawShutdown,
    ) -> Config {
        // [clickhouse]
        let urls = match ch.url {
            None if self.failed.iter().any(|f| f == "clickhouse") => Vec::new(),
            None => {
                self.problem(
                    "clickhouse.url",
                    None,
                    format!("is required, e.g. url = \"{DEFAULT_URL_HINT}\""),
                );
                Vec::new()
            }
            Some(u) => {
                let span = u.span();
                let list = match u.into_inner() {
                    Urls::One(one) => vec![one],
                    Urls::Many(many) => many,
                };
                if list.is_empty() {
                    self.problem("clickhouse.url", Some(span.clone()), "names no URL".into());
                }
                list.into_iter()
                    .map(|u| {
                        let s = u.trim_end_matches('/').to_string();
                        let rest = s
                            .strip_prefix("http://")
                            .or_else(|| s.strip_prefix("https://"));
                        if rest.is_none_or(str::is_empty) {
                            self.problem(
                                "clickhouse.url",
                                Some(span.clone()),
                                format!("`{s}` is not an http:// or https:// URL"),
                            );
                        }
                        s
                    })
                    .collect()
            }
        };
        let database = self.identifier("clickhouse.database", ch.database, "default");
        let table = self.identifier("clickhouse.table", ch.table, "argus_events");
        let password = match (ch.password, ch.password_file) {
            (Some(_), Some(f)) => {
                self.problem(
                    "clickhouse.password_file",
                    Some(f.span()),
                    "set either password or password_file, not both".into(),
                );
                Secret::default()
            }
            (Some(p), None) => Secret(p.into_inner()),
            (None, Some(f)) => match std::fs::read_to_string(f.get_ref()) {
                Ok(s) => Secret(s.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => {
                    let shown = f.get_ref().display().to_string();
                    self.problem(
                        "clickhouse.password_file",
                        Some(f.span()),
                        format!("cannot read {shown}: {e}"),
                    );
                    Secret::default()
                }
            },
            (None, None) => Secret::default(),
        };
        let ca_file = ch.ca_file.map(|f| {
            if let Err(e) = crate::clickhouse::read_ca_file(f.get_ref()) {
                self.problem("clickhouse.ca_file", Some(f.span()), e);
            }
            f.into_inner()
        });
        let compression = match ch.compression.as_ref().map(|c| c.get_ref().as_str()) {
            None | Some("lz4") => true,
            Some("none") => false,
            Some(other) => {
                let span = ch.compression.as_ref().map(|c| c.span());
                self.problem(
                    "clickhouse.compression",
                    span,
                    format!("`{other}` is not one of \"lz4\", \"none\""),
                );
                true
            }
        };
        let retry_initial = self.duration(
            "clickhouse.retry_initial_backoff",
            ch.retry_initial_backoff,
            Duration::from_millis(250),
        );
        let retry_max = self.duration(
            "clickhouse.retry_max_backoff",
            ch.retry_max_backoff,
            Duration::from_secs(30),
        );
        let clickhouse = ClickHouse {
            urls,
            database,
            table,
            user: ch.user.unwrap_or_else(|| "default".into()),
            password,
            create_table: ch.create_table.unwrap_or(true),
            ca_file,
            compression,
            connect_timeout: self.duration(
                "clickhouse.connect_timeout",
                ch.connect_timeout,
                Duration::from_secs(5),
            ),
            request_timeout: self.duration(
                "clickhouse.request_timeout",
                ch.request_timeout,
                Duration::from_secs(30),
            ),
            retry_initial,
            retry_max: retry_max.max(retry_initial),
        };

        // [[source]]
        if sources.is_empty() && !self.failed.iter().any(|f| f == "source") {
            self.problem(
                "source",
                None,
                "at least one [[source]] block with paths = [\"/var/log/bot/events*.jsonl\"] is required".into(),
            );
        }
        let mut out_sources = Vec::new();
        for s in sources {
            let span = s.paths.span();
            let paths = s.paths.into_inner();
            if paths.is_empty() {
                self.problem(
                    "source.paths",
                    Some(span.clone()),
                    "must name at least one path or glob".into(),
                );
            }
            for p in &paths {
                if !p.starts_with('/') {
                    self.problem(
                        "source.paths",
                        Some(span.clone()),
                        format!("`{p}` must be an absolute path"),
                    );
                } else if let Err(e) = glob::Pattern::new(p) {
                    self.problem(
                        "source.paths",
                        Some(span.clone()),
                        format!("`{p}` is not a valid glob: {e}"),
                    );
                }
            }
            let table = self.identifier("source.table", s.table, &clickhouse.table);
            let mapping = Mapping {
                rename: s
                    .rename
                    .map(|r| r.into_inner().into_iter().collect())
                    .unwrap_or_default(),
                catch_all: s.catch_all.map(Spanned::into_inner),
                metadata: s.metadata.map(Spanned::into_inner).unwrap_or_default(),
            };
            let mut filled: Vec<&str> = mapping
                .metadata_columns()
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            filled.extend(mapping.catch_all.as_deref());
            filled.sort_unstable();
            if let Some(w) = filled.windows(2).find(|w| w[0] == w[1]) {
                self.problem(
                    "source.metadata",
                    None,
                    format!(
                        "column `{}` is named twice among metadata and catch_all",
                        w[0]
                    ),
                );
            }
            out_sources.push(Source {
                paths,
                table,
                mapping,
                follow_symlinks: s.follow_symlinks.is_some_and(Spanned::into_inner),
            });
        }

        // [state]
        let dir = match state.dir {
            Some(d) if d.get_ref().is_absolute() => d.into_inner(),
            Some(d) => {
                self.problem(
                    "state.dir",
                    Some(d.span()),
                    "must be an absolute path".into(),
                );
                PathBuf::new()
            }
            None => PathBuf::from("/var/lib/chtail"),
        };

        // [batch] and [queue]
        let batch_rows_span = batch.max_rows.as_ref().map(|v| v.span());
        let batch = Batch {
            max_rows: self.count("batch.max_rows", batch.max_rows, 50_000),
            max_bytes: self.bytes("batch.max_bytes", batch.max_bytes, 8 << 20),
            max_wait: self.duration("batch.max_wait", batch.max_wait, Duration::from_secs(1)),
        };
        let queue_rows_default = (batch.max_rows * 4).max(100_000);
        let queue_bytes_default = (batch.max_bytes * 2).max(16 << 20);
        let queue = Queue {
            max_rows: self.count("queue.max_rows", queue.max_rows, queue_rows_default),
            max_bytes: self.bytes("queue.max_bytes", queue.max_bytes, queue_bytes_default),
        };
        if queue.max_rows < batch.max_rows {
            self.problem(
                "queue.max_rows",
                batch_rows_span,
                format!(
                    "({}) must be at least batch.max_rows ({}), or batches can never fill",
                    queue.max_rows, batch.max_rows
                ),
            );
        }
        if queue.max_bytes < batch.max_bytes {
            self.problem(
                "queue.max_bytes",
                None,
                format!(
                    "({}) must be at least batch.max_bytes ({})",
                    queue.max_bytes, batch.max_bytes
                ),
            );
        }

        // [tail]
        let tail = Tail {
            poll_interval: self.duration(
                "tail.poll_interval",
                tail.poll_interval,
                Duration::from_secs(1),
            ),
            max_line_bytes: self.bytes("tail.max_line_bytes", tail.max_line_bytes, 1 << 20),
            read_buffer_bytes: self.bytes(
                "tail.read_buffer_bytes",
                tail.read_buffer_bytes,
                256 << 10,
            ),
        };

        let shutdown = Shutdown {
            timeout: self.duration(
                "shutdown.timeout",
                shutdown.timeout,
                Duration::from_secs(30),
            ),
        };

        Config {
            clickhouse,
            sources: out_sources,
            state: State { dir },
            batch,
            queue,
            tail,
            shutdown,
            metrics: Metrics {
                listen: None,
                ready_max_lag: 0,
                event_time_key: None,
            },
            heartbeat: Heartbeat {
                enabled: false,
                interval: Duration::ZERO,
                table: String::new(),
            },
        }
    }

    /// `[metrics]` and `[heartbeat]`.
    fn service(&mut self, m: RawMetrics, h: RawHeartbeat) -> (Metrics, Heartbeat) {
        let listen = match m.listen {
            None => Some(DEFAULT_METRICS_LISTEN.parse().expect("a valid address")),
            Some(l) if l.get_ref().is_empty() => None,
            Some(l) => match l.get_ref().parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem(
                        "metrics.listen",
                        Some(l.span()),
                        format!(
                            "`{}` is not an address and port such as \"127.0.0.1:9820\" (\"\" turns the endpoint off)",
                            l.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let metrics = Metrics {
            listen,
            ready_max_lag: self.bytes("metrics.ready_max_lag", m.ready_max_lag, 64 << 20) as u64,
            event_time_key: match m.event_time_key {
                None => Some("ts".into()),
                Some(k) if k.is_empty() => None,
                Some(k) => Some(k),
            },
        };
        let interval = self.duration("heartbeat.interval", h.interval, Duration::from_secs(30));
        if interval.is_zero() {
            self.problem("heartbeat.interval", None, "must be longer than 0s".into());
        }
        let heartbeat = Heartbeat {
            enabled: h.enabled.unwrap_or(false),
            interval,
            table: self.identifier("heartbeat.table", h.table, "chtail_heartbeat"),
        };
        (metrics, heartbeat)
    }

    fn identifier(&mut self, key: &str, v: Option<Spanned<String>>, default: &str) -> String {
        let Some(v) = v else {
            return default.to_string();
        };
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            self.problem(
                key,
                Some(v.span()),
                format!("`{s}` must be a plain identifier (letters, digits, _)"),
            );
        }
        v.into_inner()
    }
}

/// Points at the key that was probably meant.
fn suggestion(key: &str) -> String {
    let (section, leaf) = key.split_once('.').unwrap_or(("", key));
    let candidates: Vec<&str> = if let Some(leaf) = key.strip_prefix("source.metadata.") {
        return METADATA_KEYS
            .iter()
            .filter(|c| edit_distance(c, leaf) <= 2)
            .min_by_key(|c| edit_distance(c, leaf))
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
    } else if section.is_empty() {
        KNOWN.iter().map(|(s, _)| *s).collect()
    } else {
        KNOWN
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, keys)| keys.to_vec())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .filter(|c| edit_distance(c, leaf) <= 2)
        .min_by_key(|c| edit_distance(c, leaf))
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses "123", "64KiB", "16MiB", "1GiB", "10kB", "5MB".
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|n| *n > 0)
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
    fn the_shipped_example_is_valid_and_states_the_defaults() {
        let example = Config::parse(include_str!("../config.example.toml")).expect("valid");
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
    fn sizes() {
        assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
        assert_eq!(parse_bytes("64 KiB"), Some(64 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
    }
}
