//! `chtail schema status | plan | apply`: versioned migrations for the
//! table chtail fills (README, "Managed schema").
//!
//! - [`migrations`]: chtail's own (versions 1–99: the daily rollup of the
//!   default table) and the operator's `.sql` files (100 and up), one list
//!   in version order, each with a checksum.
//! - [`backfill`]: the rollup's view and the backfill of the events
//!   already in the table, each counted once while INSERTs go on.
//! - Here: what the server has (the record table, the table's engine and
//!   TTLs), what is pending, and running it. ClickHouse has no
//!   transactional DDL, so every statement is safe to run again, and a
//!   migration is recorded only once all of it ran: after a failure,
//!   `apply` starts that migration again from its first statement.
//! - Retention is not a migration but a setting: the table's TTL is
//!   compared with `[schema] retention` on every run and changed to match.

mod backfill;
mod migrations;
mod sql;

use std::collections::BTreeMap;
use std::time::Instant;

use crate::clickhouse::{Server, Version};
use crate::config::Config;
use crate::delivery::{self, Delivery};
use migrations::{Body, Migration, Rollup};

pub(crate) use migrations::ROLLUP_VIEW_VERSION;

/// Where applied migrations are recorded, in `clickhouse.database`.
pub const RECORD_TABLE: &str = "chtail_schema_migrations";

/// Exists while an `apply` runs: only one can create it.
const LOCK_TABLE: &str = "chtail_schema_lock";

/// The `schema` subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// What is applied, pending or changed, and the retention in force.
    Status,
    /// The SQL `apply` would run on this server; changes nothing.
    Plan,
    /// Runs what is pending, in version order.
    Apply,
}

/// A statement that failed, and why.
#[derive(Debug)]
pub(crate) struct Failed {
    statement: String,
    message: String,
}

impl Failed {
    fn new(statement: &str, message: String) -> Failed {
        Failed {
            statement: statement.to_string(),
            message,
        }
    }
}

/// Why a schema command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot reach ClickHouse at {urls}: {message}")]
    Unreachable { urls: String, message: String },
    #[error("{0}")]
    Files(String),
    #[error("{0}")]
    Changed(String),
    #[error(
        "migration {version:04} {name} failed; nothing of it is recorded, and `chtail schema apply` runs it again from its first statement.\nthe statement:\n{statement}\nClickHouse said: {message}"
    )]
    Failed {
        version: u32,
        name: String,
        statement: String,
        message: String,
    },
    #[error("{0}")]
    Locked(String),
    #[error(
        "stopped by a signal: the table's merges run and the lock is released; `chtail schema apply` finishes what was left"
    )]
    Interrupted,
    #[error("{0}")]
    Query(String),
}

impl SchemaError {
    /// 65 (EX_DATAERR) for a bad or changed migration file, 69
    /// (EX_UNAVAILABLE) when no server answers, 75 (EX_TEMPFAIL) while
    /// another apply runs, 130 after SIGINT or SIGTERM, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            SchemaError::Files(_) | SchemaError::Changed(_) => 65,
            SchemaError::Unreachable { .. } => 69,
            SchemaError::Locked(_) => 75,
            SchemaError::Interrupted => 130,
            SchemaError::Failed { .. } | SchemaError::Query(_) => 1,
        }
    }
}

/// An applied migration as recorded.
#[derive(Debug, Clone)]
struct Record {
    name: String,
    checksum: String,
    applied_at: String,
    by: String,
}

/// A table's TTL as chtail manages it.
#[derive(Debug)]
struct Ttl {
    /// "raw events" or "heartbeats".
    what: &'static str,
    table: String,
    /// The time the TTL counts from.
    expr: String,
    want: Option<u32>,
    have: TtlNow,
}

#[derive(Debug, PartialEq)]
enum TtlNow {
    NoTable,
    None,
    /// chtail's TTL, of this many days.
    Days(u32),
    /// A TTL chtail did not write: left alone.
    Other(String),
    /// A table chtail's own migrations do not fit: its `ts` may not be the
    /// bot's, so chtail sets no TTL on it.
    NotManaged,
}

impl Ttl {
    /// The statement that brings the table to the wanted TTL, if any.
    fn statement(&self, db: &str) -> Option<String> {
        let t = format!("`{db}`.`{}`", self.table);
        match (&self.have, self.want) {
            (TtlNow::NoTable | TtlNow::Other(_) | TtlNow::NotManaged, _) => None,
            (TtlNow::Days(d), Some(w)) if *d == w => None,
            (_, Some(w)) => Some(format!(
                "ALTER TABLE {t} MODIFY TTL {} + INTERVAL {w} DAY",
                self.expr
            )),
            (TtlNow::Days(_), None) => Some(format!("ALTER TABLE {t} REMOVE TTL")),
            (TtlNow::None, None) => None,
        }
    }

    fn describe(&self, db: &str, version: Version) -> String {
        let t = format!("{db}.{}", self.table);
        let pending = self.statement(db).is_some();
        match (&self.have, self.want) {
            (_, Some(_)) if !version.has_ttl() => format!(
                "{}: not possible on ClickHouse {version}, which has no TTL (19.6 and later have); {t} keeps every row until deleted by hand, e.g. ALTER TABLE {t} DELETE WHERE …",
                self.what
            ),
            (TtlNow::NotManaged, Some(w)) => format!(
                "{}: {w} days wanted, but chtail sets retention only on a table its own migrations fit (see the note above); {t} keeps its rows",
                self.what
            ),
            (TtlNow::NoTable, Some(w)) => {
                format!("{}: {w} days wanted; {t} does not exist yet", self.what)
            }
            (TtlNow::Other(text), _) => format!(
                "{}: {t} has a TTL chtail did not write ({text}); chtail leaves it",
                self.what
            ),
            (_, Some(w)) if pending => format!(
                "{}: {w} days wanted, not applied yet (chtail schema apply)",
                self.what
            ),
            (_, Some(w)) => format!("{}: {w} days (a TTL on {t})", self.what),
            (TtlNow::Days(d), None) if pending => format!(
                "{}: kept forever wanted; the TTL of {d} days on {t} is removed by apply",
                self.what
            ),
            _ => format!("{}: kept forever", self.what),
        }
    }
}

/// What the server has and what the config asks for.
struct Survey {
    server: Server,
    version: Version,
    db: String,
    table: String,
    /// The table's engine, `None` if it does not exist yet.
    engine: Option<String>,
    /// Why chtail's own migrations are left out, if they are.
    misfit: Option<String>,
    migrations: Vec<Migration>,
    records: BTreeMap<u32, Record>,
    record_table: bool,
    /// `[heartbeat]` is on and its table does not exist yet.
    heartbeat_missing: bool,
    ttls: Vec<Ttl>,
}

impl Survey {
    fn state(&self, m: &Migration) -> State<'_> {
        match self.records.get(&m.version) {
            Some(r) if r.checksum == m.checksum => State::Applied(r),
            Some(r) => State::Changed(r),
            None => State::Pending,
        }
    }

    fn pending(&self) -> impl Iterator<Item = &Migration> {
        self.migrations
            .iter()
            .filter(|m| matches!(self.state(m), State::Pending))
    }

    /// Every applied migration whose source changed since, as messages.
    fn changed(&self) -> Vec<String> {
        self.migrations
            .iter()
            .filter_map(|m| match self.state(m) {
                State::Changed(r) => Some(format!(
                    "migration {:04} {} ({}) changed after it was applied on {} (checksum then {}, now {}); an applied migration is never run again: put the change in a new migration with a higher version, or restore the file",
                    m.version,
                    m.name,
                    m.origin.describe(),
                    r.applied_at,
                    r.checksum,
                    m.checksum
                )),
                _ => None,
            })
            .collect()
    }

    fn q(&self, name: &str) -> String {
        format!("`{}`.`{name}`", self.db)
    }
}

enum State<'a> {
    Applied(&'a Record),
    Changed(&'a Record),
    Pending,
}

/// Runs `action` and prints its report to stdout.
pub async fn run(config: &Config, action: Action) -> Result<(), SchemaError> {
    // Before anything else, so that a signal is never the default death
    // while apply holds the lock or has stopped merges.
    let signals = if action == Action::Apply {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| SchemaError::Query(format!("cannot watch for SIGTERM: {e}")))?,
        )
    } else {
        None
    };
    let survey = survey(config).await?;
    match action {
        Action::Status => {
            status(&survey).await;
            Ok(())
        }
        Action::Plan => {
            let changed = survey.changed();
            if !changed.is_empty() {
                return Err(SchemaError::Changed(changed.join("\n")));
            }
            print_plan(&survey, config);
            Ok(())
        }
        Action::Apply => apply(&survey, config, signals).await,
    }
}

async fn survey(config: &Config) -> Result<Survey, SchemaError> {
    let ch = &config.clickhouse;
    let (server, version) = Server::first_answering(ch)
        .await
        .map_err(|(urls, message)| SchemaError::Unreachable { urls, message })?;
    let query = |f: crate::clickhouse::Failure| SchemaError::Query(f.message);
    let db = ch.database.clone();
    let table = ch.table.clone();
    let engine_of = |name: &str| {
        let server = server.clone();
        let (db, name) = (db.clone(), name.to_string());
        async move {
            // Asked twice: `engine` takes a failed query for a missing table.
            let exists = server
                .text(&format!("EXISTS TABLE `{db}`.`{name}`"), &[])
                .await?;
            Ok::<_, crate::clickhouse::Failure>(if exists.trim() == "1" {
                delivery::engine(&server, &db, &name).await
            } else {
                None
            })
        }
    };
    let raw = engine_of(&table).await.map_err(query)?;
    let misfit = match &raw {
        None if ch.create_table => None,
        None => Some(format!(
            "{db}.{table} does not exist and clickhouse.create_table is off"
        )),
        Some((engine, _)) => {
            let columns = server
                .describe(&table)
                .await
                .map_err(query)?
                .unwrap_or_default();
            migrations::builtin_misfit(engine, &columns)
        }
    };
    let mut list = if misfit.is_none() {
        migrations::builtin(&db, &table, version)
    } else {
        Vec::new()
    };
    if let Some(dir) = &config.schema.migrations_dir {
        list.extend(migrations::operator_files(dir).map_err(SchemaError::Files)?);
    }
    let record_table = engine_of(RECORD_TABLE).await.map_err(query)?.is_some();
    let mut records = BTreeMap::new();
    if record_table {
        let text = server
            .text(
                &format!(
                    "SELECT version, argMax(name, applied_at), argMax(checksum, applied_at), \
                     toString(max(applied_at)), argMax(chtail, applied_at) \
                     FROM `{db}`.`{RECORD_TABLE}` GROUP BY version ORDER BY version"
                ),
                &[],
            )
            .await
            .map_err(query)?;
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if let [v, name, checksum, at, by] = f[..]
                && let Ok(v) = v.parse::<u32>()
            {
                records.insert(
                    v,
                    Record {
                        name: name.into(),
                        checksum: checksum.into(),
                        applied_at: at.into(),
                        by: by.into(),
                    },
                );
            }
        }
    }
    // A table apply creates has no TTL yet.
    let have = |found: Option<&(String, String)>, expr: &str| match found {
        Some((_, full)) => ttl_now(Some(full), expr),
        None if ch.create_table => TtlNow::None,
        None => TtlNow::NoTable,
    };
    let mut ttls = vec![Ttl {
        what: "raw events",
        table: table.clone(),
        expr: "parseDateTimeBestEffortOrZero(ts, 'UTC')".into(),
        want: config.schema.retention_days,
        have: have(raw.as_ref(), "parseDateTimeBestEffortOrZero(ts, 'UTC')"),
    }];
    let mut heartbeat_missing = false;
    if config.heartbeat.enabled {
        let hb = engine_of(&config.heartbeat.table).await.map_err(query)?;
        heartbeat_missing = hb.is_none();
        ttls.push(Ttl {
            what: "heartbeats",
            table: config.heartbeat.table.clone(),
            expr: "toDateTime(time)".into(),
            want: Some(config.schema.heartbeat_retention_days),
            have: have(hb.as_ref(), "toDateTime(time)"),
        });
    }
    // A table chtail cannot give rollups gets no retention from it either
    // (its `ts` may not be the bot's).
    if misfit.is_some() {
        ttls[0].have = TtlNow::NotManaged;
    }
    list.sort_by_key(|m| m.version);
    Ok(Survey {
        server,
        version,
        db,
        table,
        engine: raw.map(|(e, _)| e),
        misfit,
        migrations: list,
        records,
        record_table,
        heartbeat_missing,
        ttls,
    })
}

/// The TTL in a table's `engine_full`, as chtail sees it.
fn ttl_now(engine_full: Option<&str>, expr: &str) -> TtlNow {
    let Some(full) = engine_full else {
        return TtlNow::NoTable;
    };
    let Some(at) = full.find(" TTL ") else {
        return TtlNow::None;
    };
    let rest = &full[at + 5..];
    let text = rest[..rest.find(" SETTINGS ").unwrap_or(rest.len())].trim();
    let days = text
        .strip_prefix(expr)
        .and_then(|t| t.trim().strip_prefix("+ toIntervalDay("))
        .and_then(|t| t.strip_suffix(')'))
        .and_then(|n| n.parse().ok());
    match days {
        Some(d) => TtlNow::Days(d),
        None => TtlNow::Other(text.to_string()),
    }
}

async fn status(s: &Survey) {
    crate::out!(
        "ClickHouse {} at {}; table {}.{} ({})",
        s.version,
        s.server.url(),
        s.db,
        s.table,
        s.engine.as_deref().unwrap_or("does not exist yet")
    );
    if let Some(why) = &s.misfit {
        crate::out!("note     chtail's own migrations are left out: {why}");
    }
    if !s.record_table {
        crate::out!(
            "note     no migration applied yet ({}.{RECORD_TABLE} does not exist)",
            s.db
        );
    }
    for m in &s.migrations {
        let line = match s.state(m) {
            State::Applied(r) => format!(
                "applied  {} (at {} by chtail {})",
                label(m),
                r.applied_at,
                r.by
            ),
            State::Changed(r) => format!(
                "CHANGED  {} since it was applied at {}: checksum then {}, now {}",
                label(m),
                r.applied_at,
                r.checksum,
                m.checksum
            ),
            State::Pending => format!("pending  {}", label(m)),
        };
        crate::out!("{line}");
    }
    for (v, r) in &s.records {
        if !s.migrations.iter().any(|m| m.version == *v) {
            crate::out!(
                "applied  {v:04} {} (at {} by chtail {}; its file is no longer in schema.migrations_dir)",
                r.name,
                r.applied_at,
                r.by
            );
        }
    }
    for t in &s.ttls {
        crate::out!("retention {}", t.describe(&s.db, s.version));
    }
    if let Some(note) = rollup_note(&s.server, s.version, &s.db, &s.table).await {
        crate::out!("rollups  {note}");
    }
}

fn label(m: &Migration) -> String {
    format!("{:04} {} ({})", m.version, m.name, m.origin.describe())
}

/// The statements `apply` would run before the migrations: the database,
/// the table if it is missing, and the record table.
fn preamble(s: &Survey, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if s.engine.is_none() && config.clickhouse.create_table {
        if s.db != "default" {
            out.push(format!("CREATE DATABASE IF NOT EXISTS `{}`", s.db));
        }
        out.push(crate::clickhouse::default_table_sql(
            &s.db, &s.table, s.version,
        ));
    }
    if !s.record_table {
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (version UInt32, name String, checksum String, applied_at DateTime, chtail String) ENGINE = MergeTree() ORDER BY version",
            s.q(RECORD_TABLE)
        ));
    }
    out
}

fn heartbeat_table(s: &Survey, config: &Config) -> Option<String> {
    (s.heartbeat_missing && config.clickhouse.create_table)
        .then(|| crate::heartbeat::create_sql(&s.db, &config.heartbeat.table, s.version))
}

fn record_sql(s: &Survey, m: &Migration) -> String {
    format!(
        "INSERT INTO {} (version, name, checksum, applied_at, chtail) SELECT {}, '{}', '{}', now(), '{}'",
        s.q(RECORD_TABLE),
        m.version,
        m.name,
        m.checksum,
        env!("CARGO_PKG_VERSION")
    )
}

fn print_plan(s: &Survey, config: &Config) {
    let mut any = false;
    let mut say = |comment: String, statements: Vec<String>| {
        any = true;
        crate::out!("-- {comment}");
        for st in statements {
            crate::out!("{st};");
        }
        crate::out!("");
    };
    crate::out!(
        "-- ClickHouse {} at {}: what `chtail schema apply` runs, in order\n",
        s.version,
        s.server.url()
    );
    let pre = preamble(s, config);
    let pending: Vec<&Migration> = s.pending().collect();
    if !pre.is_empty()
        && (!pending.is_empty() || s.ttls.iter().any(|t| t.statement(&s.db).is_some()))
    {
        say("the table and the record of migrations".into(), pre);
    }
    for m in pending {
        let mut statements = match &m.body {
            Body::Statements(st) => st.clone(),
            Body::ViewAndBackfill(r) => backfill::describe(r),
        };
        statements.push(record_sql(s, m));
        say(label(m), statements);
    }
    if let Some(sql) = heartbeat_table(s, config) {
        say("the heartbeat table".into(), vec![sql]);
    }
    for t in &s.ttls {
        if !s.version.has_ttl() {
            continue;
        }
        if let Some(st) = t.statement(&s.db) {
            say(
                format!("retention: {}", t.describe(&s.db, s.version)),
                vec![st],
            );
        }
    }
    if !any {
        crate::out!("-- nothing to do: the schema is up to date");
    }
}

async fn apply(
    s: &Survey,
    config: &Config,
    term: Option<tokio::signal::unix::Signal>,
) -> Result<(), SchemaError> {
    let changed = s.changed();
    if !changed.is_empty() {
        return Err(SchemaError::Changed(changed.join("\n")));
    }
    let Some(mut term) = term else {
        return Err(SchemaError::Query(
            "apply without its signal handler".into(),
        ));
    };
    if s.pending()
        .any(|m| matches!(m.body, Body::ViewAndBackfill(_)))
        && let Some(why) = replay_pending(config)
    {
        return Err(SchemaError::Locked(why));
    }
    let held = std::cell::Cell::new(false);
    let work = async {
        lock(s).await?;
        held.set(true);
        apply_locked(s, config).await
    };
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(SchemaError::Interrupted),
        _ = term.recv() => Err(SchemaError::Interrupted),
    };
    if !held.get() {
        return result;
    }
    if matches!(result, Err(SchemaError::Interrupted)) {
        // A backfill stops the table's merges; they must not stay stopped.
        // (A backfill query already running finishes on the server; the
        // next apply waits for it, as for any INSERT, and starts over.)
        let _ = s
            .server
            .text(&format!("SYSTEM START MERGES {}", s.q(&s.table)), &[])
            .await;
    }
    let _ = s
        .server
        .text(&format!("DROP TABLE IF EXISTS {}", s.q(LOCK_TABLE)), &[])
        .await;
    result
}

/// Whether a stopped chtail has a batch to re-send (README, "Exactly
/// once"). Such a batch, if the server had it before the view existed, is
/// dropped by the table when re-sent but counted by the new view, on top
/// of the backfill: the view must come after the re-send. A running chtail
/// re-sends before it reads anything, and its batch in flight is what the
/// backfill's fence waits for.
fn replay_pending(config: &Config) -> Option<String> {
    let dir = &config.state.dir;
    if !dir.is_dir() || crate::status::daemon_running(config) {
        return None;
    }
    let manifest = crate::checkpoint::Manifest::load(dir)?;
    let (checkpoints, _) = crate::checkpoint::Checkpoints::load(dir).ok()?;
    (!manifest.pending(&checkpoints).is_empty()).then(|| {
        format!(
            "chtail is stopped with a batch to re-send ({}): start it first (it re-sends that batch before anything else), then apply; a view created before the re-send could count that batch twice",
            dir.join("inflight.json").display()
        )
    })
}

/// Takes the apply lock: a table only one apply can create, holding who
/// and since when. A lock left by an apply that was killed is named, with
/// how to remove it.
async fn lock(s: &Survey) -> Result<(), SchemaError> {
    let query = |f: crate::clickhouse::Failure| SchemaError::Query(f.message);
    if s.db != "default" {
        let sql = format!("CREATE DATABASE IF NOT EXISTS `{}`", s.db);
        s.server.text(&sql, &[]).await.map_err(query)?;
    }
    let lock = s.q(LOCK_TABLE);
    let create = format!("CREATE TABLE {lock} (holder String, since DateTime) ENGINE = TinyLog");
    match s.server.text(&create, &[]).await {
        Ok(_) => {
            let holder = format!(
                "chtail {} on {}, pid {}",
                env!("CARGO_PKG_VERSION"),
                crate::tail::host_name(),
                std::process::id()
            )
            .replace(['\'', '\\'], "");
            let sql = format!("INSERT INTO {lock} (holder, since) SELECT '{holder}', now()");
            s.server.text(&sql, &[]).await.map_err(query)?;
            Ok(())
        }
        Err(f) if f.code == Some(57) => {
            let held = s
                .server
                .text(&format!("SELECT holder, toString(since) FROM {lock}"), &[])
                .await
                .unwrap_or_default();
            Err(SchemaError::Locked(format!(
                "another `chtail schema apply` holds the lock ({}): table {}.{LOCK_TABLE}; if none runs (one was killed), DROP TABLE {lock} and apply again",
                held.trim().replace('\t', ", since "),
                s.db
            )))
        }
        Err(f) => Err(query(f)),
    }
}

async fn apply_locked(s: &Survey, config: &Config) -> Result<(), SchemaError> {
    // The default table's LowCardinality columns need the switch on 18.x.
    let settings: &[(&str, &str)] = if s.version.low_cardinality_is_experimental() {
        &[("allow_experimental_low_cardinality_type", "1")]
    } else {
        &[]
    };
    let run_all = |statements: Vec<String>, version: u32, name: &str| {
        let name = name.to_string();
        async move {
            for st in statements {
                s.server
                    .text(&st, settings)
                    .await
                    .map_err(|f| SchemaError::Failed {
                        version,
                        name: name.clone(),
                        statement: st.clone(),
                        message: f.message,
                    })?;
            }
            Ok::<_, SchemaError>(())
        }
    };
    run_all(
        preamble(s, config),
        0,
        "(the table and the record of migrations)",
    )
    .await?;
    let mut done = 0;
    for m in s.pending() {
        let started = Instant::now();
        crate::out!("applying {}", label(m));
        match &m.body {
            Body::Statements(st) => run_all(st.clone(), m.version, &m.name).await?,
            Body::ViewAndBackfill(r) => {
                let tries = backfill::run(&s.server, r)
                    .await
                    .map_err(|f| SchemaError::Failed {
                        version: m.version,
                        name: m.name.clone(),
                        statement: f.statement,
                        message: f.message,
                    })?;
                let counted = s
                    .server
                    .text(&format!("SELECT sum(events) FROM {}", r.q(&r.rollup)), &[])
                    .await
                    .unwrap_or_default();
                crate::out!(
                    "         the view was created at a moment with no INSERT running (try {tries}); the rollup counts {} events",
                    counted.trim()
                );
            }
        }
        run_all(vec![record_sql(s, m)], m.version, &m.name).await?;
        crate::out!(
            "applied  {} in {:.2} s",
            label(m),
            started.elapsed().as_secs_f64()
        );
        done += 1;
    }
    if let Some(sql) = heartbeat_table(s, config) {
        run_all(vec![sql], 0, "(the heartbeat table)").await?;
    }
    // The tables may have been created just now: their TTLs are judged
    // again.
    let ttls = survey(config).await?.ttls;
    for t in &ttls {
        if !s.version.has_ttl() || t.have == TtlNow::NotManaged {
            if t.want.is_some() {
                crate::out!("note     retention {}", t.describe(&s.db, s.version));
            }
            continue;
        }
        if let Some(st) = t.statement(&s.db) {
            run_all(vec![st.clone()], 0, &format!("(retention of {})", t.what)).await?;
            crate::out!("applied  {st}");
            done += 1;
        }
    }
    if done == 0 {
        crate::out!("nothing to do: the schema is up to date");
    } else {
        crate::out!("the schema is up to date");
    }
    Ok(())
}

/// The rollup of `db`.`table`, if its migration is recorded as applied
/// (and unchanged): what `chtail report` reads then.
pub(crate) async fn applied_rollup(
    server: &Server,
    version: Version,
    db: &str,
    table: &str,
) -> Option<String> {
    let sql = format!(
        "SELECT argMax(checksum, applied_at) FROM `{db}`.`{RECORD_TABLE}` WHERE version = {ROLLUP_VIEW_VERSION}"
    );
    let recorded = server.text(&sql, &[]).await.ok()?;
    let builtin = migrations::builtin(db, table, version);
    let want = builtin.iter().find(|m| m.version == ROLLUP_VIEW_VERSION)?;
    (recorded.trim() == want.checksum).then(|| Rollup::of(db, table).rollup)
}

/// How events reach the rollups, once they are applied: as they reach the
/// table, since the view sees each INSERT the table takes.
pub(crate) async fn rollup_note(
    server: &Server,
    version: Version,
    db: &str,
    table: &str,
) -> Option<String> {
    let rollup = applied_rollup(server, version, db, table).await?;
    Some(match delivery::of(server, version, db, table).await {
        Delivery::ExactlyOnce { .. } => format!(
            "{db}.{rollup}: exactly-once, as the table: a batch re-sent after a crash is dropped by the table and by its view (chtail sends deduplicate_blocks_in_dependent_materialized_views = 1; the rollup has its own non_replicated_deduplication_window)"
        ),
        Delivery::AtLeastOnce(why) => format!(
            "{db}.{rollup}: at-least-once, as the table ({why}): rollups inherit the table's duplicates, so an event inserted twice after a crash (at most the batch in flight) is counted twice in both, and a crash inside an insert can leave them apart by that batch"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_read_from_the_engine() {
        let expr = "parseDateTimeBestEffortOrZero(ts, 'UTC')";
        assert_eq!(ttl_now(None, expr), TtlNow::NoTable);
        assert_eq!(
            ttl_now(
                Some("MergeTree ORDER BY (guild_id, ts) SETTINGS index_granularity = 8192"),
                expr
            ),
            TtlNow::None
        );
        assert_eq!(
            ttl_now(
                Some(
                    "MergeTree ORDER BY (guild_id, ts) TTL parseDateTimeBestEffortOrZero(ts, 'UTC') + toIntervalDay(90) SETTINGS index_granularity = 8192"
                ),
                expr
            ),
            TtlNow::Days(90)
        );
        assert_eq!(
            ttl_now(
                Some("MergeTree ORDER BY x TTL d + toIntervalMonth(1)"),
                expr
            ),
            TtlNow::Other("d + toIntervalMonth(1)".into())
        );
    }

    #[test]
    fn a_ttl_is_changed_only_to_match() {
        let mut t = Ttl {
            what: "raw events",
            table: "t".into(),
            expr: "x".into(),
            want: Some(90),
            have: TtlNow::Days(90),
        };
        assert_eq!(t.statement("db"), None);
        t.have = TtlNow::Days(30);
        assert_eq!(
            t.statement("db").as_deref(),
            Some("ALTER TABLE `db`.`t` MODIFY TTL x + INTERVAL 90 DAY")
        );
        t.want = None;
        assert_eq!(
            t.statement("db").as_deref(),
            Some("ALTER TABLE `db`.`t` REMOVE TTL")
        );
        t.have = TtlNow::Other("y".into());
        t.want = Some(7);
        assert_eq!(t.statement("db"), None);
    }
}
