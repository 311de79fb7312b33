//! `chtail report`: the bot's four dashboard queries for one guild, read
//! from the events chtail shipped (README, "Report").
//!
//! Days are UTC days of `parseDateTimeBestEffort(ts)`; durations are those
//! of `app_command` events, averaged from their sum in whole microseconds.
//! The figures come from the daily rollup once `chtail schema apply` has
//! made it (README, "Managed schema"), else from the configured table's raw
//! events; the report says which.

use serde::Serialize;

use crate::clickhouse::{Failure, Server};
use crate::config::Config;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub guild: String,
    pub days: u32,
    /// Rows of the command lists: `--limit`, else 10 top commands and 50
    /// commands with their durations.
    pub limit: Option<u32>,
    pub from: From,
}

/// Where to read the figures (`--from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum From {
    /// The rollups once they are applied, else the raw events.
    #[default]
    Auto,
    Raw,
    Rollups,
}

/// The four answers.
#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub guild: String,
    /// Where the figures were read from.
    pub source: String,
    pub days: u32,
    /// Interactions per UTC day over the last `days` days (today included),
    /// days without any left out.
    pub interactions_per_day: Vec<DayCount>,
    /// The guild's most used commands.
    pub top_commands: Vec<CommandCount>,
    /// Each command's count and average duration.
    pub commands: Vec<CommandStats>,
    /// The average duration of the guild's commands; `None` without any.
    pub avg_duration_ms: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DayCount {
    pub day: String,
    pub count: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CommandCount {
    pub command: String,
    pub count: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CommandStats {
    pub command: String,
    pub count: u64,
    pub avg_ms: f64,
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("guild id {0:?} is not a number (a Discord guild id is all digits)")]
    BadGuild(String),
    #[error("guild {guild} has no events in {table}")]
    UnknownGuild { guild: String, table: String },
    #[error("cannot reach ClickHouse at {urls}: {message}")]
    Unreachable { urls: String, message: String },
    #[error(
        "the rollups of {0} are not applied: `chtail schema apply` makes them (README, \"Managed schema\")"
    )]
    NoRollups(String),
    #[error("ClickHouse refused a report query: {0}")]
    Query(String),
}

impl ReportError {
    /// The exit code: 65 (EX_DATAERR) for a bad or unknown guild, 69
    /// (EX_UNAVAILABLE) when no server answers, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::BadGuild(_) | ReportError::UnknownGuild { .. } => 65,
            ReportError::Unreachable { .. } => 69,
            ReportError::NoRollups(_) | ReportError::Query(_) => 1,
        }
    }
}

/// Reads the four figures for `req.guild`.
pub async fn run(config: &Config, req: &Request) -> Result<Report, ReportError> {
    let guild = req.guild.trim();
    if guild.is_empty() || !guild.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReportError::BadGuild(req.guild.clone()));
    }
    let ch = &config.clickhouse;
    let (server, version) = Server::first_answering(ch)
        .await
        .map_err(|(urls, message)| ReportError::Unreachable { urls, message })?;
    let rollup = match req.from {
        From::Raw => None,
        From::Auto | From::Rollups => {
            crate::schema::applied_rollup(&server, version, &ch.database, &ch.table).await
        }
    };
    let from = match &rollup {
        Some(r) => Source::rollup(&ch.database, r),
        None if req.from == From::Rollups => {
            return Err(ReportError::NoRollups(format!(
                "{}.{}",
                ch.database, ch.table
            )));
        }
        None => Source::raw(&ch.database, &ch.table),
    };
    let sql = Queries::new(&from, guild, req.days, req.limit);
    let q = |sql: &str| {
        let server = server.clone();
        let sql = sql.to_string();
        async move { server.text(&sql, &[]).await.map_err(query_error) }
    };
    let any = q(&sql.events).await?;
    if matches!(any.trim(), "0" | "") {
        return Err(ReportError::UnknownGuild {
            guild: guild.to_string(),
            table: format!("{}.{}", ch.database, ch.table),
        });
    }
    let per_day = q(&sql.per_day).await?;
    let top = q(&sql.top).await?;
    let stats = q(&sql.commands).await?;
    let overall = q(&sql.overall).await?;
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(unescape).collect())
            .collect()
    };
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    let overall = rows(&overall);
    let avg_duration_ms = overall
        .first()
        .filter(|r| r.len() == 2 && num(&r[0]) > 0)
        .map(|r| average_ms(&r[1], num(&r[0])));
    Ok(Report {
        guild: guild.to_string(),
        source: from.describe,
        days: req.days,
        interactions_per_day: rows(&per_day)
            .into_iter()
            .filter(|r| r.len() == 2)
            .map(|r| DayCount {
                day: r[0].clone(),
                count: num(&r[1]),
            })
            .collect(),
        top_commands: rows(&top)
            .into_iter()
            .filter(|r| r.len() == 2)
            .map(|r| CommandCount {
                command: r[0].clone(),
                count: num(&r[1]),
            })
            .collect(),
        commands: rows(&stats)
            .into_iter()
            .filter(|r| r.len() == 3)
            .map(|r| CommandStats {
                command: r[0].clone(),
                count: num(&r[1]),
                avg_ms: average_ms(&r[2], num(&r[1])),
            })
            .collect(),
        avg_duration_ms,
    })
}

/// The report's statements for one guild: the four figures, and whether
/// the guild has any events. Public for the rollups' benchmark
/// (`benches/rollups.rs`), which times them.
#[derive(Debug, Clone)]
pub struct Queries {
    pub events: String,
    pub per_day: String,
    pub top: String,
    pub commands: String,
    pub overall: String,
}

impl Queries {
    /// From the raw events of `db`.`table`, or from `rollup` in `db`.
    pub fn of(db: &str, table: &str, rollup: Option<&str>, guild: &str, days: u32) -> Queries {
        let from = match rollup {
            Some(r) => Source::rollup(db, r),
            None => Source::raw(db, table),
        };
        Queries::new(&from, guild, days, None)
    }

    fn new(from: &Source, guild: &str, days: u32, limit: Option<u32>) -> Queries {
        let Source {
            table,
            count,
            micros,
            day,
            ..
        } = from;
        let of_guild = format!("guild_id = '{guild}'");
        let commands = format!("{of_guild} AND event = 'app_command'");
        Queries {
            events: format!("SELECT {count} FROM {table} WHERE {of_guild}"),
            per_day: format!(
                "SELECT {day}, {count} FROM {table} \
                 WHERE {of_guild} AND event = 'interaction' \
                 AND day > toDate(now(), 'UTC') - {days} AND day <= toDate(now(), 'UTC') \
                 GROUP BY day ORDER BY day"
            ),
            top: format!(
                "SELECT command, {count} AS n FROM {table} WHERE {commands} \
                 GROUP BY command ORDER BY n DESC, command LIMIT {}",
                limit.unwrap_or(10)
            ),
            commands: format!(
                "SELECT command, {count} AS n, {micros} FROM {table} WHERE {commands} \
                 GROUP BY command ORDER BY n DESC, command LIMIT {}",
                limit.unwrap_or(50)
            ),
            overall: format!("SELECT {count}, {micros} FROM {table} WHERE {commands}"),
        }
    }
}

/// Where the four figures are read from, and how.
struct Source {
    /// `db`.`table`.
    table: String,
    /// Events in a group.
    count: &'static str,
    /// Their durations' sum in whole microseconds.
    micros: &'static str,
    /// The UTC day, named `day`.
    day: &'static str,
    describe: String,
}

impl Source {
    fn raw(db: &str, table: &str) -> Source {
        Source {
            table: format!("`{db}`.`{table}`"),
            count: "count()",
            micros: "sum(toInt64(round(duration_ms * 1000)))",
            day: "toDate(parseDateTimeBestEffortOrZero(ts, 'UTC')) AS day",
            describe: format!("raw events in {db}.{table}"),
        }
    }

    /// The daily rollup `chtail schema apply` made (README, "Managed schema").
    fn rollup(db: &str, rollup: &str) -> Source {
        Source {
            table: format!("`{db}`.`{rollup}`"),
            count: "sum(events)",
            micros: "sum(duration_us)",
            day: "day",
            describe: format!("rollups in {db}.{rollup}"),
        }
    }
}

/// An average from the sum of whole microseconds, so that the raw events
/// and the rollups (which sum the same integers) give the same figure to
/// the last bit.
fn average_ms(micros: &str, count: u64) -> f64 {
    match micros.parse::<i64>() {
        Ok(us) if count > 0 => us as f64 / count as f64 / 1000.0,
        _ => f64::NAN,
    }
}

fn query_error(f: Failure) -> ReportError {
    ReportError::Query(f.message)
}

/// A TabSeparated field as written.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t")
        .replace("\\n", "\n")
        .replace("\\'", "'")
        .replace("\\\\", "\\")
}

/// The report as readable tables.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "guild {}: from {}", r.guild, r.source);
    let _ = writeln!(out, "\ninteractions per day, last {} days (UTC):", r.days);
    if r.interactions_per_day.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for d in &r.interactions_per_day {
        let _ = writeln!(out, "  {}  {:>10}", d.day, d.count);
    }
    let width = r
        .commands
        .iter()
        .map(|c| c.command.chars().count())
        .chain(r.top_commands.iter().map(|c| c.command.chars().count()))
        .chain([7])
        .max()
        .unwrap_or(7);
    let _ = writeln!(out, "\ntop commands:");
    if r.top_commands.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (i, c) in r.top_commands.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>2}. {:<width$}  {:>10}",
            i + 1,
            c.command,
            c.count
        );
    }
    let _ = writeln!(out, "\ncommands, count and average duration:");
    if r.commands.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for c in &r.commands {
        let _ = writeln!(
            out,
            "  {:<width$}  {:>10}  {:>10.1} ms",
            c.command, c.count, c.avg_ms
        );
    }
    let _ = match r.avg_duration_ms {
        Some(ms) => writeln!(out, "\naverage command duration: {ms:.1} ms"),
        None => writeln!(out, "\naverage command duration: (no commands)"),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_section() {
        let r = Report {
            guild: "42".into(),
            source: "raw events in db.t".into(),
            days: 30,
            interactions_per_day: vec![DayCount {
                day: "2026-11-22".into(),
                count: 3,
            }],
            top_commands: vec![CommandCount {
                command: "ping".into(),
                count: 2,
            }],
            commands: vec![CommandStats {
                command: "ping".into(),
                count: 2,
                avg_ms: 12.5,
            }],
            avg_duration_ms: Some(12.5),
        };
        let text = render(&r);
        for want in [
            "guild 42: from raw events in db.t",
            "2026-11-22           3",
            " 1. ping",
            "12.5 ms",
            "average command duration: 12.5 ms",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }
}
