//! From the spanned TOML tree to [`Config`]: unknown keys, types, values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::*;
use super::report::{LineIndex, suggestion};
use super::*;

/// The longest line `tail.max_line_bytes` may allow: with the chunk size,
/// it keeps a chunk's row offsets within `u32`.
pub(crate) const MAX_LINE_LIMIT: usize = 256 << 20;

/// Validates the text of a config file, collecting every problem.
pub(super) fn document(text: &str) -> Result<Config, Vec<Problem>> {
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
    let raw = RawDocument {
        clickhouse: v.section(&mut doc, "clickhouse").unwrap_or_default(),
        source: v.sources(&mut doc),
        state: v.section(&mut doc, "state").unwrap_or_default(),
        batch: v.section(&mut doc, "batch").unwrap_or_default(),
        queue: v.section(&mut doc, "queue").unwrap_or_default(),
        tail: v.section(&mut doc, "tail").unwrap_or_default(),
        shutdown: v.section(&mut doc, "shutdown").unwrap_or_default(),
        metrics: v.section(&mut doc, "metrics").unwrap_or_default(),
        heartbeat: v.section(&mut doc, "heartbeat").unwrap_or_default(),
        schema: v.section(&mut doc, "schema").unwrap_or_default(),
    };
    let config = v.config(raw);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        v.problems.sort_by_key(|p| p.line.unwrap_or(0));
        Err(v.problems)
    }
}

struct Validator<'a> {
    lines: &'a LineIndex,
    problems: Vec<Problem>,
    /// Sections that did not deserialize: their defaults are not checked,
    /// so one mistake is reported once.
    failed: Vec<&'static str>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, span: Option<std::ops::Range<usize>>, message: String) {
        self.problems.push(Problem {
            key: key.to_string(),
            line: span.map(|s| self.lines.line(s.start)),
            message,
        });
    }

    /// Removes, and reports, every key chtail does not know: every section
    /// of the document, every table of an array of tables (`[[source]]`),
    /// and the tables within (`[source.metadata]`), against the keys of
    /// their serde types ([`known_keys`]).
    fn strip_unknown(&mut self, doc: &mut DeTable<'_>) {
        let mut unknown = Vec::new();
        strip_table(doc, "", &mut unknown);
        for (key, span, what) in unknown {
            let hint = suggestion(&key);
            self.problem(&key, Some(span), format!("{what}{hint}"));
        }
    }

    fn section<T: DeserializeOwned>(
        &mut self,
        doc: &mut DeTable<'_>,
        name: &'static str,
    ) -> Option<T> {
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
        name: &'static str,
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
                self.failed.push(name);
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

    /// `batch.catch_up_rows`: 0 (never streamed), or from `batch.max_rows`
    /// up to [`MAX_CATCH_UP_ROWS`] (under the server's 1,048,576-row
    /// block, so that a stream is one atomic insert).
    fn catch_up_rows(&mut self, v: Option<Spanned<i64>>, max_rows: usize) -> usize {
        let Some(v) = v else {
            return MAX_CATCH_UP_ROWS.max(max_rows);
        };
        match usize::try_from(*v.get_ref()) {
            Ok(0) => 0,
            Ok(n) if (max_rows..=MAX_CATCH_UP_ROWS).contains(&n) => n,
            _ => {
                self.problem(
                    "batch.catch_up_rows",
                    Some(v.span()),
                    format!(
                        "must be 0 (no streamed catch-up) or from batch.max_rows ({max_rows}) to {MAX_CATCH_UP_ROWS}"
                    ),
                );
                0
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

    fn config(&mut self, raw: RawDocument) -> Config {
        let clickhouse = self.clickhouse(raw.clickhouse);
        let sources = self.source_list(raw.source, &clickhouse.table);
        let (batch, queue) = self.batch_and_queue(raw.batch, raw.queue);
        let (metrics, heartbeat) = self.service(raw.metrics, raw.heartbeat);
        Config {
            clickhouse,
            sources,
            state: self.state(raw.state),
            batch,
            queue,
            tail: self.tail(raw.tail),
            shutdown: Shutdown {
                timeout: self.duration(
                    "shutdown.timeout",
                    raw.shutdown.timeout,
                    Duration::from_secs(30),
                ),
            },
            metrics,
            heartbeat,
            schema: self.schema(raw.schema),
        }
    }

    /// `[schema]`: retentions are whole days, since they become TTLs of
    /// `INTERVAL n DAY`.
    fn schema(&mut self, s: RawSchema) -> Schema {
        let migrations_dir = match s.migrations_dir {
            Some(d) if d.get_ref().is_absolute() => Some(d.into_inner()),
            Some(d) => {
                self.problem(
                    "schema.migrations_dir",
                    Some(d.span()),
                    "must be an absolute path".into(),
                );
                None
            }
            None => None,
        };
        let retention_days = s
            .retention
            .map(|r| self.days("schema.retention", r))
            .filter(|d| *d > 0);
        let heartbeat_retention_days = match s.heartbeat_retention {
            Some(r) => self.days("schema.heartbeat_retention", r),
            None => 28,
        };
        Schema {
            migrations_dir,
            retention_days,
            heartbeat_retention_days: heartbeat_retention_days.max(1),
        }
    }

    /// A duration of whole days (`"90d"`, `"12weeks"`); 0 after a problem.
    fn days(&mut self, key: &str, v: Spanned<String>) -> u32 {
        const DAY: u64 = 86_400;
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d.as_secs() >= DAY && d.as_secs() % DAY == 0 && d.subsec_nanos() == 0 => {
                u32::try_from(d.as_secs() / DAY).unwrap_or(u32::MAX)
            }
            Ok(_) => {
                self.problem(
                    key,
                    Some(v.span()),
                    format!(
                        "`{}` must be a whole number of days, at least one (e.g. \"90d\")",
                        v.get_ref()
                    ),
                );
                0
            }
            Err(e) => {
                self.problem(
                    key,
                    Some(v.span()),
                    format!("`{}` is not a duration such as \"90d\": {e}", v.get_ref()),
                );
                0
            }
        }
    }

    /// `[clickhouse]`.
    fn clickhouse(&mut self, ch: RawClickHouse) -> ClickHouse {
        let urls = match ch.url {
            None if self.failed.contains(&"clickhouse") => Vec::new(),
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
        let mut ca_certs = Vec::new();
        let ca_file = ch.ca_file.map(|f| {
            match read_ca_file(f.get_ref()) {
                Ok(certs) => ca_certs = certs,
                Err(e) => self.problem("clickhouse.ca_file", Some(f.span()), e),
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
        ClickHouse {
            urls,
            database,
            table,
            user: ch.user.unwrap_or_else(|| "default".into()),
            password,
            create_table: ch.create_table.unwrap_or(true),
            ca_file,
            ca_certs,
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
        }
    }

    /// `[[source]]`: `table` is the default table for sources naming none.
    fn source_list(&mut self, sources: Vec<RawSource>, table: &str) -> Vec<Source> {
        if sources.is_empty() && !self.failed.contains(&"source") {
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
            let exclude = s.exclude.map(Spanned::into_inner).unwrap_or_default();
            for p in &exclude {
                if let Err(e) = glob::Pattern::new(p) {
                    self.problem(
                        "source.exclude",
                        None,
                        format!("`{p}` is not a valid glob: {e}"),
                    );
                }
            }
            let start_at = match s.start_at {
                None => StartAt::Beginning,
                Some(v) => match v.get_ref().as_str() {
                    "beginning" => StartAt::Beginning,
                    "end" => StartAt::End,
                    other => {
                        let message = format!("`{other}`: expected \"beginning\" or \"end\"");
                        self.problem("source.start_at", Some(v.span()), message);
                        StartAt::Beginning
                    }
                },
            };
            let table = self.identifier("source.table", s.table, table);
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
                exclude,
                start_at,
            });
        }
        out_sources
    }

    /// `[state]`.
    fn state(&mut self, state: RawState) -> State {
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
        State { dir }
    }

    /// `[batch]` and `[queue]`, which must hold at least a batch.
    fn batch_and_queue(&mut self, batch: RawBatch, queue: RawQueue) -> (Batch, Queue) {
        let batch_rows_span = batch.max_rows.as_ref().map(|v| v.span());
        let catch_up = batch.catch_up_rows;
        let mut batch = Batch {
            max_rows: self.count("batch.max_rows", batch.max_rows, 50_000),
            max_bytes: self.bytes("batch.max_bytes", batch.max_bytes, 8 << 20),
            max_wait: self.duration("batch.max_wait", batch.max_wait, Duration::from_secs(1)),
            catch_up_rows: 0,
        };
        batch.catch_up_rows = self.catch_up_rows(catch_up, batch.max_rows);
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
        (batch, queue)
    }

    /// `[tail]`.
    fn tail(&mut self, tail: RawTail) -> Tail {
        let span = tail.max_line_bytes.as_ref().map(Spanned::span);
        let max_line_bytes = self.bytes("tail.max_line_bytes", tail.max_line_bytes, 1 << 20);
        if max_line_bytes > MAX_LINE_LIMIT {
            self.problem(
                "tail.max_line_bytes",
                span,
                format!("must be at most 256MiB (a row is sent whole), not {max_line_bytes}"),
            );
        }
        Tail {
            poll_interval: self.duration(
                "tail.poll_interval",
                tail.poll_interval,
                Duration::from_secs(1),
            ),
            max_line_bytes: max_line_bytes.min(MAX_LINE_LIMIT),
            read_buffer_bytes: self.bytes(
                "tail.read_buffer_bytes",
                tail.read_buffer_bytes,
                // What the reads and the parsing of them measured best at
                // (README, "Performance"): the bytes read are still in
                // the cache when they are parsed.
                64 << 10,
            ),
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

/// Moves a table's unknown keys, with their spans, to `unknown`, named
/// from the document's root (`clickhouse.tabel`), and descends into the
/// tables chtail reads (`[[source]]`, `[source.metadata]`).
fn strip_table(
    table: &mut DeTable<'_>,
    path: &str,
    unknown: &mut Vec<(String, std::ops::Range<usize>, &'static str)>,
) {
    let Some(known) = known_keys(path) else {
        return;
    };
    let what = if path.is_empty() {
        "unknown section"
    } else {
        "unknown key"
    };
    let mut bad = Vec::new();
    for (key, value) in table.iter_mut() {
        let name = key.get_ref().as_ref();
        let full = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        if !known.contains(&name) {
            unknown.push((full, key.span(), what));
            bad.push(key.get_ref().to_string());
            continue;
        }
        if known_keys(&full).is_none() {
            continue; // a value, not a table chtail reads
        }
        match value.get_mut() {
            DeValue::Table(t) => strip_table(t, &full, unknown),
            DeValue::Array(items) => {
                for item in items.iter_mut() {
                    if let DeValue::Table(t) = item.get_mut() {
                        strip_table(t, &full, unknown);
                    }
                }
            }
            _ => {} // the type error is reported by the section's parse
        }
    }
    for key in bad {
        table.remove(key.as_str());
    }
}

/// The certificates of a PEM file, or what is wrong with it.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!("{} holds no PEM certificate", path.display())),
        Err(e) => Err(format!(
            "{} is not a PEM certificate file: {e}",
            path.display()
        )),
    }
}

/// Parses "123", "64KiB", "16MiB", "1GiB", "10kB", "5MB".
/// The most rows a streamed catch-up INSERT may carry: below the 1,048,576
/// rows at which the server cuts an INSERT into blocks it commits one by
/// one.
pub(super) const MAX_CATCH_UP_ROWS: usize = 1_000_000;

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
