//! Where each source's events go: the tables, their schemas and INSERT
//! statements, and each source's encoder. Built at start-up from the config
//! and the server (`DESCRIBE TABLE` per table), by `run` and by `check`.

use std::sync::Arc;

use crate::clickhouse::{Class, Failure, Native, Server, Version, schema_of};
use crate::config::Config;
use crate::parse::{Encoder, Schema};
use crate::tail::SourceRoute;

/// A table chtail writes to.
pub(crate) struct Table {
    pub name: String,
    pub schema: Arc<Schema>,
    pub sql: String,
    /// How the rows go as Native blocks; `None`: as RowBinary (`sql`).
    pub native: Option<Arc<Native>>,
    /// A `Distributed` table's definition, as far as chtail reads it.
    pub distributed: Option<crate::delivery::Distributed>,
    /// A `Distributed` table, read or not: inserted into synchronously.
    pub sync_insert: bool,
}

pub(crate) struct Plan {
    pub version: Version,
    /// The distinct tables, in the order sources first name them; a
    /// chunk's and a batch's `route` index this.
    pub tables: Vec<Table>,
    /// One per `[[source]]`, in config order.
    pub sources: Vec<SourceRoute>,
}

impl Plan {
    /// The most rows of a catch-up stream (README, "Catch-up"), or why
    /// there are none: the config says so, the server commits what arrived
    /// of an INSERT cut short, or a table is `Distributed` (its shards take
    /// their rows as inserts of their own).
    pub(crate) fn catch_up_rows(&self, config: &Config) -> Result<usize, String> {
        if config.batch.catch_up_rows == 0 {
            return Err("batch.catch_up_rows = 0".into());
        }
        if !self.version.refuses_cut_bodies() {
            return Err(format!(
                "ClickHouse {} inserts what arrived of an INSERT cut short (20.5 and later do not)",
                self.version
            ));
        }
        if self.tables.iter().any(|t| t.distributed.is_some()) {
            return Err("a Distributed table takes no streams".into());
        }
        Ok(config.batch.catch_up_rows)
    }
}

/// Why there is no plan: the first failure's class, and every problem.
#[derive(Debug)]
pub(crate) struct Problems {
    pub class: Class,
    pub messages: Vec<String>,
}

impl From<Failure> for Problems {
    fn from(f: Failure) -> Problems {
        let message = if f.class == Class::Operator {
            format!("{} ({})", f.message, f.advice())
        } else {
            f.message
        };
        Problems {
            class: f.class,
            messages: vec![message],
        }
    }
}

/// Reads every target table (creating missing ones if configured) and
/// binds every source to its table. `notes` gets what an operator should
/// know but need not act on.
pub(crate) async fn prepare(
    server: &Server,
    config: &Config,
    notes: &mut Vec<String>,
) -> Result<Plan, Problems> {
    let ch = &config.clickhouse;
    let version = server.version().await?;
    let tz = match server.timezone().await {
        Ok(tz) => tz,
        // A zone this machine does not know matters only for DateTime
        // columns without a zone of their own: say so, and use UTC.
        Err(f) if f.class == Class::Operator => {
            notes.push(format!(
                "{}; DateTime columns without a time zone read wall-clock times as UTC",
                f.message
            ));
            jiff::tz::TimeZone::UTC
        }
        Err(f) => return Err(f.into()),
    };
    let mut names: Vec<&str> = Vec::new();
    for s in &config.sources {
        if !names.contains(&s.table.as_str()) {
            names.push(&s.table);
        }
    }
    let mut tables = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        let full = format!("{}.{name}", ch.database);
        let mut columns = server.describe(name).await?;
        if columns.is_none() && ch.create_table {
            server.create_default_table(version, name).await?;
            notes.push(format!(
                "table {full} did not exist; created it with the default columns"
            ));
            columns = server.describe(name).await?;
        }
        if ch.create_table && ch.urls.len() > 1 {
            // Every replica gets the table, so a fail-over finds it.
            for other in server.each() {
                if let Ok(None) = other.describe(name).await
                    && let Ok(v) = other.version().await
                    && other.create_default_table(v, name).await.is_ok()
                {
                    notes.push(format!("created table {full} at {}", other.url()));
                }
            }
        }
        let Some(columns) = columns else {
            problems.push(format!(
                "table {full} does not exist and create_table = false"
            ));
            continue;
        };
        match schema_of(&columns, &tz, version) {
            Ok(schema) => {
                let missing = schema.defaults_not_applied();
                if !missing.is_empty() {
                    notes.push(format!(
                        "table {full}: ClickHouse {version} cannot apply DEFAULT expressions to rows sent in RowBinary (23.5 and later can); a missing key in column(s) {} gets the type's default instead",
                        missing.join(", ")
                    ));
                }
                let native = crate::native::Layout::new(&schema).map(|layout| {
                    Arc::new(Native {
                        layout,
                        sql: schema.insert_sql(&ch.database, name, true),
                    })
                });
                let sql = schema.insert_sql(&ch.database, name, false);
                let (sync_insert, distributed) =
                    match crate::delivery::engine(server, &ch.database, name).await {
                        Some((engine, full)) if engine == "Distributed" => {
                            (true, crate::delivery::Distributed::parse(&full))
                        }
                        _ => (false, None),
                    };
                tables.push(Table {
                    name: name.to_string(),
                    schema: Arc::new(schema),
                    sql,
                    native,
                    distributed,
                    sync_insert,
                });
            }
            Err(bad) => problems.extend(bad.iter().map(|u| format!("table {full}: {u}"))),
        }
    }
    let mut sources = Vec::new();
    for (n, s) in config.sources.iter().enumerate() {
        let Some(route) = tables.iter().position(|t| t.name == s.table) else {
            continue; // its table's problem is reported above
        };
        let Ok(route16) = u16::try_from(route) else {
            problems.push(format!("more than {} tables", u16::MAX));
            break;
        };
        match Encoder::new(tables[route].schema.clone(), &s.mapping) {
            Ok(encoder) => sources.push(SourceRoute {
                patterns: s.paths.clone(),
                encoder: Arc::new(encoder.with_time_key(config.metrics.event_time_key.clone())),
                route: route16,
                follow_symlinks: s.follow_symlinks,
                exclude: s.exclude.clone(),
                start_at: s.start_at,
            }),
            Err(errs) => problems.extend(
                errs.into_iter()
                    .map(|e| format!("[[source]] #{} ({}): {e}", n + 1, s.paths.join(", "))),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(Problems {
            class: Class::Operator,
            messages: problems,
        });
    }
    Ok(Plan {
        version,
        tables,
        sources,
    })
}
