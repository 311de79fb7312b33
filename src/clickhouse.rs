//! The ClickHouse boundary: the client, the table, and what a failure means.
//!
//! Every error from the server or the network is classified here and only
//! here ([`classify`]), into what the inserter must do about it: retry, split
//! the batch to isolate bad rows, or shout for an operator while retrying.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clickhouse::{Client, Compression};

use crate::config;
use crate::parse::{ColumnDef, Schema, UnsupportedColumn, default_table_columns};

/// A server's version, e.g. 18.16.1 or 26.9.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    pub(crate) fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        Some(Version {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
        })
    }

    /// `insert_deduplication_token` exists from 22.2 on (README, "Exactly once").
    pub(crate) fn has_dedup_token(&self) -> bool {
        *self
            >= Version {
                major: 22,
                minor: 2,
            }
    }

    /// `async_insert` exists from 21.11 on; from 26.2 it is on by default,
    /// and chtail turns it off for its own inserts (README, "Exactly once").
    pub(crate) fn has_async_insert(&self) -> bool {
        *self
            >= Version {
                major: 21,
                minor: 11,
            }
    }

    /// `RowBinaryWithDefaults` (a DEFAULT expression for missing values)
    /// is read by 23.5 and later.
    pub(crate) fn has_row_binary_with_defaults(&self) -> bool {
        *self
            >= Version {
                major: 23,
                minor: 5,
            }
    }

    /// `DateTime64` exists from 20.1 on.
    pub(crate) fn has_datetime64(&self) -> bool {
        self.major >= 20
    }

    /// Table TTLs exist from 19.6 on.
    pub(crate) fn has_ttl(&self) -> bool {
        *self
            >= Version {
                major: 19,
                minor: 6,
            }
    }

    /// From 20.5 an HTTP INSERT whose body was cut short (the connection
    /// dropped before its last chunk) commits nothing; before, the rows
    /// that arrived are inserted (ClickHouse issue 9666). A catch-up stream
    /// needs the former (README, "Catch-up").
    pub(crate) fn refuses_cut_bodies(&self) -> bool {
        *self
            >= Version {
                major: 20,
                minor: 5,
            }
    }

    /// Before 19.x, `LowCardinality` needs an experimental switch.
    pub(crate) fn low_cardinality_is_experimental(&self) -> bool {
        self.major < 19
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the inserter should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Network faults, timeouts, overload: wait and try again.
    Transient,
    /// The server refused the data itself: split to find the bad rows.
    BadData,
    /// Credentials, a missing table, a changed schema: an operator must act.
    /// chtail keeps retrying slowly so that it resumes by itself once fixed.
    Operator,
}

impl Class {
    pub(crate) const ALL: [Class; 3] = [Class::Transient, Class::BadData, Class::Operator];

    /// The fixed label for counters.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::BadData => "bad_data",
            Class::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub class: Class,
    /// ClickHouse's error code, when the server sent one.
    pub code: Option<u32>,
    pub message: String,
}

impl Failure {
    /// What to tell the operator, for `Operator` failures.
    pub(crate) fn advice(&self) -> &'static str {
        match self.code {
            Some(c) if AUTH.contains(&c) => "check clickhouse.user and clickhouse.password",
            Some(c) if MISSING.contains(&c) => {
                "create the table, or set create_table = true (see `chtail check`)"
            }
            Some(c) if SCHEMA_CHANGED.contains(&c) => {
                "the table's columns changed while chtail ran; restart chtail to read the new schema"
            }
            Some(c) if PRIVILEGE.contains(&c) => "grant INSERT on the table to clickhouse.user",
            None if self.class == Class::Transient => {
                "check that the server is up and that clickhouse.url (and ca_file, for https) is right"
            }
            _ => "see the server's message",
        }
    }

    /// What a transient failure means, where its code says more than its
    /// message: a replicated table that lost ZooKeeper.
    pub(crate) fn meaning(&self) -> Option<&'static str> {
        match self.code {
            Some(c) if REPLICATION.contains(&c) => Some(
                "the replicated table cannot take inserts while ZooKeeper is unreachable from this replica (read-only); the batch is retried here or on another listed replica, and a replica that did commit it drops the retry as an identical block",
            ),
            _ => None,
        }
    }

    /// The table (or its database) does not exist.
    pub(crate) fn is_missing_table(&self) -> bool {
        self.code.is_some_and(|c| MISSING.contains(&c))
    }

    /// TOO_MANY_PARTS: the server's merges are behind; fewer, bigger
    /// inserts help.
    pub(crate) fn is_parts_pressure(&self) -> bool {
        self.code == Some(TOO_MANY_PARTS)
    }
}

// The error codes chtail gives a meaning to, all of them here (README,
// "How it works").
const AUTH: &[u32] = &[192, 193, 194, 516];
const MISSING: &[u32] = &[60, 81];
const SCHEMA_CHANGED: &[u32] = &[8, 16, 32, 33];
const PRIVILEGE: &[u32] = &[164, 497];
const TOO_MANY_PARTS: u32 = 252;
/// Bad-data codes: the rows themselves are wrong.
const BAD_DATA: &[u32] = &[6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 190];
/// Codes an operator must fix: authentication, missing objects, privileges,
/// and the RowBinary layout no longer matching the table.
const OPERATOR: &[u32] = &[8, 16, 32, 33, 60, 81, 115, 192, 193, 194, 497, 516];

/// Codes of a replicated table without ZooKeeper: TABLE_IS_READ_ONLY,
/// NO_ZOOKEEPER, UNKNOWN_STATUS_OF_INSERT, KEEPER_EXCEPTION (transient).
const REPLICATION: &[u32] = &[242, 225, 319, 999];

/// The one place where a ClickHouse error is given a meaning.
pub(crate) fn classify(err: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    // The whole chain: "client error (Connect)" alone does not say that the
    // certificate was not trusted, or that the connection was refused.
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    let code = match err {
        E::BadResponse(text) => exception_code(text),
        _ => None,
    };
    let class = match (err, code) {
        (E::Network(_) | E::TimedOut, _) => Class::Transient,
        (_, Some(c)) if BAD_DATA.contains(&c) => Class::BadData,
        (_, Some(c)) if OPERATOR.contains(&c) => Class::Operator,
        (E::BadResponse(_), _) => Class::Transient,
        _ => Class::Transient,
    };
    Failure {
        class,
        code,
        message: one_line(&message),
    }
}

/// `Code: 60. DB::Exception: ...` or a bare code from the header.
fn exception_code(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Ok(n) = t.parse() {
        return Some(n);
    }
    let at = t.find("Code: ")? + "Code: ".len();
    let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn one_line(s: &str) -> String {
    let s = s.split("Stack trace").next().unwrap_or(s);
    let mut out: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > 500 {
        let mut end = 500;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// A connection to the configured server (or replicas) and table.
#[derive(Clone)]
pub(crate) struct Server {
    /// One client per URL, in the configured order.
    clients: Vec<Client>,
    /// Which one is in use; moves on when it fails ([`Server::fail_over`]).
    current: Arc<AtomicUsize>,
    cfg: config::ClickHouse,
}

/// A column as `DESCRIBE TABLE` reports it.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub name: String,
    pub ty: String,
    /// `""`, `DEFAULT`, `MATERIALIZED`, `ALIAS` or `EPHEMERAL`.
    pub default_kind: String,
}

impl Server {
    /// Fails only if the TLS configuration cannot be built (a CA file that
    /// became unreadable since the config was checked).
    pub(crate) fn new(cfg: &config::ClickHouse) -> Result<Server, String> {
        use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
        // The crate's default HTTP client plus a connect timeout, so that an
        // unreachable host fails fast instead of hanging a request. The pool
        // idle time stays below ClickHouse's 3 s keep-alive, so an idle
        // connection is never reused just as the server closes it.
        let mut connector = HttpConnector::new();
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        // The end of an INSERT body is a few bytes behind a large write;
        // with Nagle's algorithm it waited for the server's delayed ACK,
        // 40 ms an INSERT (measured: 30 ms inserts took 70).
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // https:// URLs use rustls with the Mozilla roots plus `ca_file`;
        // http:// URLs pass through untouched. The CA file was checked when
        // the config was loaded.
        let tls = tls_config(cfg)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HyperClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(https);
        // No session database: every statement names `database`.`table`, so
        // a database that does not exist yet can still be created.
        let clients = cfg
            .urls
            .iter()
            .map(|url| {
                Client::with_http_client(http.clone())
                    .with_url(url)
                    .with_user(&cfg.user)
                    .with_password(cfg.password.expose())
                    .with_compression(if cfg.compression {
                        Compression::Lz4
                    } else {
                        Compression::None
                    })
                    .with_validation(false)
            })
            .collect();
        Ok(Server {
            clients,
            current: Arc::new(AtomicUsize::new(0)),
            cfg: cfg.clone(),
        })
    }

    fn client(&self) -> &Client {
        &self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()]
    }

    /// The URL in use.
    /// The URL in use, for messages: credentials in it are masked.
    pub(crate) fn url(&self) -> String {
        redact_url(&self.cfg.urls[self.current.load(Ordering::Relaxed) % self.cfg.urls.len()])
    }

    /// Moves on to the next replica, if there is another one. Called after
    /// a network fault, timeout or overload; the batch is retried there
    /// (with the same token, which Replicated tables deduplicate across
    /// replicas).
    pub(crate) fn fail_over(&self) {
        if self.clients.len() > 1 {
            let from = self.url();
            self.current.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %from, to = %self.url(), "failing over to the next ClickHouse URL");
        }
    }

    /// A server for each configured URL on its own (for `chtail check`).
    pub(crate) fn each(&self) -> Vec<Server> {
        (0..self.clients.len())
            .map(|i| Server {
                clients: vec![self.clients[i].clone()],
                current: Arc::new(AtomicUsize::new(0)),
                cfg: config::ClickHouse {
                    urls: vec![self.cfg.urls[i].clone()],
                    ..self.cfg.clone()
                },
            })
            .collect()
    }

    pub(crate) fn config(&self) -> &config::ClickHouse {
        &self.cfg
    }

    /// Runs a query and returns its TabSeparated output.
    pub(crate) async fn text(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<String, Failure> {
        self.text_within(sql, settings, self.cfg.request_timeout)
            .await
    }

    /// [`Server::text`] with its own time limit, for statements that may
    /// run long (a backfill of every event in a table).
    pub(crate) async fn text_within(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
        limit: Duration,
    ) -> Result<String, Failure> {
        // Raw: a `?` in the text (a regular expression, an operator's
        // migration) is SQL, not a bind placeholder.
        let mut q = self.client().query_raw(sql);
        for (k, v) in settings {
            q = q.with_setting(*k, *v);
        }
        let fut = async {
            let mut cursor = q.fetch_bytes("TabSeparated")?;
            cursor.collect().await
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure {
                class: Class::Transient,
                code: None,
                message: format!("no answer within {limit:?}"),
            }),
        }
    }

    /// The first configured server that answers, and its version; else
    /// the URLs tried and the last failure (for the one-shot commands).
    pub(crate) async fn first_answering(
        cfg: &config::ClickHouse,
    ) -> Result<(Server, Version), (String, String)> {
        let all = Server::new(cfg).map_err(|m| (cfg.urls.join(", "), m))?;
        let mut last = String::new();
        for one in all.each() {
            match one.version().await {
                Ok(v) => return Ok((one, v)),
                Err(f) => last = f.message,
            }
        }
        let urls = all.each().iter().map(Server::url).collect::<Vec<_>>();
        Err((urls.join(", "), last))
    }

    pub(crate) async fn version(&self) -> Result<Version, Failure> {
        let text = self.text("SELECT version()", &[]).await?;
        Version::parse(&text).ok_or_else(|| Failure {
            class: Class::Operator,
            code: None,
            message: format!("cannot read the server version from {text:?}"),
        })
    }

    /// The server's time zone: the zone of DateTime columns without one.
    pub(crate) async fn timezone(&self) -> Result<jiff::tz::TimeZone, Failure> {
        let text = self.text("SELECT timezone()", &[]).await?;
        let name = text.trim();
        jiff::tz::TimeZone::get(name).map_err(|e| Failure {
            class: Class::Operator,
            code: None,
            message: format!("the server's time zone {name:?} is unknown here: {e}"),
        })
    }

    /// The table's columns, or `None` if the table does not exist.
    pub(crate) async fn describe(&self, table: &str) -> Result<Option<Vec<Described>>, Failure> {
        let sql = format!("DESCRIBE TABLE `{}`.`{table}`", self.cfg.database);
        let text = match self.text(&sql, &[]).await {
            Ok(t) => t,
            // Unknown table, or unknown database (then the table is missing too).
            Err(f) if f.is_missing_table() => return Ok(None),
            Err(f) => return Err(f),
        };
        Ok(Some(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let mut f = l.split('\t');
                    Described {
                        name: unescape_tsv(f.next().unwrap_or_default()),
                        ty: unescape_tsv(f.next().unwrap_or_default()),
                        default_kind: f.next().unwrap_or_default().to_string(),
                    }
                })
                .collect(),
        ))
    }

    /// Creates the database (if needed) and the default table (README,
    /// "The table"), with exactly its columns. On servers that can deduplicate inserts
    /// into a plain MergeTree, the table is created with a deduplication
    /// window so that a re-sent batch is recognised.
    pub(crate) async fn create_default_table(
        &self,
        version: Version,
        table: &str,
    ) -> Result<(), Failure> {
        let db = &self.cfg.database;
        if db != "default" {
            self.text(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"), &[])
                .await?;
        }
        let sql = default_table_sql(db, table, version);
        let settings: &[(&str, &str)] = if version.low_cardinality_is_experimental() {
            &[("allow_experimental_low_cardinality_type", "1")]
        } else {
            &[]
        };
        self.text(&sql, settings).await.map(|_| ())
    }

    /// Sends one INSERT of pre-encoded RowBinary `parts` (`sql` says
    /// `FORMAT RowBinary`), as Native blocks when `native` is given. Only
    /// `Ok` means the rows are committed; the request is bounded by the
    /// configured timeouts rather than dropped half-way by the caller.
    pub(crate) async fn insert(
        &self,
        sql: &str,
        native: Option<&Native>,
        parts: &[bytes::Bytes],
        token: Option<&str>,
        version: Version,
        distributed: bool,
    ) -> Result<(), Failure> {
        if let Some(native) = native {
            let mut blocks = native.layout.blocks(parts);
            let sent = self
                .insert_body(&native.sql, token, version, distributed, || blocks.next())
                .await;
            match sent {
                Ok(result) => return result,
                // Never seen: the rows and the layout come from one schema.
                // The request was dropped before its end, so the server
                // commits none of it; the rows go as RowBinary instead.
                Err(malformed) => tracing::error!(
                    "sending a batch as RowBinary instead of Native (please report this): {malformed}"
                ),
            }
        }
        let mut parts = parts.iter().cloned();
        let sent = self
            .insert_body(sql, token, version, distributed, || parts.next().map(Ok))
            .await;
        sent.unwrap_or_else(|m| unreachable!("RowBinary parts are sent as they are: {m}"))
    }

    /// One INSERT of the body `next` yields, piece by piece.
    async fn insert_body(
        &self,
        sql: &str,
        token: Option<&str>,
        version: Version,
        distributed: bool,
        mut next: impl FnMut() -> Option<Result<bytes::Bytes, crate::native::Malformed>>,
    ) -> Result<Result<(), Failure>, crate::native::Malformed> {
        let mut insert = self.open_insert(sql, token, version, distributed);
        while let Some(piece) = next() {
            let piece = piece?;
            if piece.is_empty() {
                continue;
            }
            if let Err(e) = insert.send(piece).await {
                return Ok(Err(classify(&e)));
            }
        }
        Ok(insert.end().await.map_err(|e| classify(&e)))
    }

    /// A catch-up stream (README, "Catch-up"): one INSERT whose rows are
    /// given chunk by chunk, ended (committed) by [`Stream::end`] or
    /// dropped (nothing committed, on a server that
    /// [`refuses_cut_bodies`](Version::refuses_cut_bodies)). The server's
    /// block limits are pinned, so that the whole body is one block.
    pub(crate) fn stream<'a>(
        &self,
        sql: &str,
        native: Option<&'a Native>,
        token: Option<&str>,
        version: Version,
    ) -> Stream<'a> {
        let sql = native.map_or(sql, |n| n.sql.as_str());
        let insert = self
            .open_insert(sql, token, version, false)
            .with_setting("min_insert_block_size_rows", "1048576")
            .with_setting("min_insert_block_size_bytes", "268435456")
            .with_setting("max_insert_block_size", "1048576");
        Stream {
            insert,
            native: native.map(|n| n.layout.cutter()),
            blocks: Vec::new(),
        }
    }

    fn open_insert(
        &self,
        sql: &str,
        token: Option<&str>,
        version: Version,
        distributed: bool,
    ) -> clickhouse::insert_formatted::InsertFormatted {
        let mut insert = self.client().insert_formatted_with(sql).with_timeouts(
            Some(self.cfg.request_timeout),
            Some(self.cfg.request_timeout),
        );
        if let Some(t) = token {
            // A batch the table drops as already inserted is dropped by its
            // materialized views too (the rollups, README "Managed schema"):
            // said outright, since older servers default to 0.
            insert = insert
                .with_setting("insert_deduplication_token", t)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        }
        // Plain synchronous inserts wherever the server knows async ones
        // (on by default from 26.2): chtail's batches are large already,
        // and an async insert deduplicates by other rules.
        if version.has_async_insert() {
            insert = insert.with_setting("async_insert", "0");
        }
        // Into a Distributed table, acknowledged only once every shard has
        // its rows (the old name, which newer servers keep as an alias of
        // distributed_foreground_insert). README, "A sharded bot".
        if distributed {
            insert = insert.with_setting("insert_distributed_sync", "1");
        }
        insert
    }
}

/// An open catch-up INSERT; see [`Server::stream`].
pub(crate) struct Stream<'a> {
    insert: clickhouse::insert_formatted::InsertFormatted,
    /// Cuts Native blocks by the rows alone, from the stream's start: the
    /// same rows read again make the same blocks, the same INSERT.
    native: Option<crate::native::Cutter<'a>>,
    blocks: Vec<bytes::Bytes>,
}

impl Stream<'_> {
    /// Sends encoded rows (RowBinary, as a chunk holds them), regrouped
    /// into Native blocks where the table has a Native layout.
    pub(crate) async fn rows(&mut self, part: &bytes::Bytes) -> Result<(), Failure> {
        if part.is_empty() {
            return Ok(());
        }
        let Some(cutter) = self.native.as_mut() else {
            return self.send(part.clone()).await;
        };
        cutter.push(part, &mut self.blocks).map_err(malformed)?;
        for block in std::mem::take(&mut self.blocks) {
            self.send(block).await?;
        }
        Ok(())
    }

    async fn send(&mut self, piece: bytes::Bytes) -> Result<(), Failure> {
        self.insert.send(piece).await.map_err(|e| classify(&e))
    }

    /// Ends the body: only `Ok` means the rows are committed.
    pub(crate) async fn end(mut self) -> Result<(), Failure> {
        if let Some(last) = self.native.as_mut().and_then(crate::native::Cutter::end) {
            self.send(last).await?;
        }
        self.insert.end().await.map_err(|e| classify(&e))
    }
}

/// Never seen: the rows and the layout come from one schema. Taken as bad
/// data, the stream is split into batches, which go as RowBinary if their
/// Native blocks cannot be made.
fn malformed(m: crate::native::Malformed) -> Failure {
    Failure {
        class: Class::BadData,
        code: None,
        message: format!("a Native block could not be made (please report this): {m}"),
    }
}

/// The default table's CREATE statement (README, "The table").
pub(crate) fn default_table_sql(db: &str, table: &str, version: Version) -> String {
    let cols: Vec<String> = default_table_columns()
        .iter()
        .map(|(n, t)| format!("{n} {t}"))
        .collect();
    let dedup = if version.has_dedup_token() {
        " SETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{table}` ({}) ENGINE = MergeTree() ORDER BY (guild_id, ts){dedup}",
        cols.join(", ")
    )
}

/// A table's rows as Native blocks: the layout and its `INSERT … FORMAT
/// Native`.
#[derive(Debug)]
pub(crate) struct Native {
    pub layout: crate::native::Layout,
    pub sql: String,
}

/// `url` with any `user:password@` in it masked, for logs and reports.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn tls_config(cfg: &config::ClickHouse) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        for cert in &cfg.ca_certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS setup: {e}"))
}

pub(crate) fn unescape_tsv(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('\'') => out.push('\''),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The insertable columns of a described table, as a [`Schema`]. Columns
/// computed by the server (MATERIALIZED, ALIAS, EPHEMERAL) are left to it.
pub(crate) fn schema_of(
    columns: &[Described],
    server_tz: &jiff::tz::TimeZone,
    version: Version,
) -> Result<Schema, Vec<UnsupportedColumn>> {
    let defs: Vec<ColumnDef> = columns
        .iter()
        .filter(|c| c.default_kind.is_empty() || c.default_kind == "DEFAULT")
        .map(|c| ColumnDef {
            name: c.name.clone(),
            ty: c.ty.clone(),
            has_default: c.default_kind == "DEFAULT",
        })
        .collect();
    Schema::new(&defs, server_tz, version.has_row_binary_with_defaults())
}

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next wait: a random time between half and all of the capped
    /// exponential step, so that many chtails do not retry in step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_masked() {
        assert_eq!(
            redact_url("http://bot:secret@host:8123/?database=x"),
            "http://***@host:8123/?database=x"
        );
        assert_eq!(redact_url("https://host:8443"), "https://host:8443");
        assert_eq!(redact_url("http://host/a@b"), "http://host/a@b");
    }

    #[test]
    fn codes_are_read_from_bodies_and_headers() {
        assert_eq!(
            exception_code("Code: 60. DB::Exception: Table default.x doesn't exist."),
            Some(60)
        );
        assert_eq!(exception_code("252"), Some(252));
        assert_eq!(exception_code("something else"), None);
    }

    #[test]
    fn classes() {
        let bad = |t: &str| classify(&clickhouse::error::Error::BadResponse(t.into())).class;
        assert_eq!(
            bad("Code: 27. DB::Exception: Cannot parse input"),
            Class::BadData
        );
        assert_eq!(
            bad("Code: 516. DB::Exception: Authentication failed"),
            Class::Operator
        );
        assert_eq!(
            bad("Code: 252. DB::Exception: Too many parts"),
            Class::Transient
        );
        assert_eq!(
            bad("Code: 241. DB::Exception: Memory limit"),
            Class::Transient
        );
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut).class,
            Class::Transient
        );
    }

    #[test]
    fn versions() {
        let v = Version::parse("18.16.1").unwrap();
        assert!(!v.has_dedup_token());
        assert!(v.low_cardinality_is_experimental());
        assert!(Version::parse("26.9.1.1").unwrap().has_dedup_token());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
    }
}
