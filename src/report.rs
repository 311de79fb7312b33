//! `chtail report`: the bot's four dashboard queries for one guild, read
//! from the events chtail shipped (README, "Report").
//!
//! Days are UTC days of `parseDateTimeBestEffort(ts)`; durations are those
//! of `app_command` events. Every figure comes from the configured table
//! (`clickhouse.table` in `clickhouse.database`).

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
            ReportError::Query(_) => 1,
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
    let all = Server::new(ch).map_err(|message| ReportError::Unreachable {
        urls: ch.urls.join(", "),
        message,
    })?;
    // The first configured server that answers.
    let mut last = String::new();
    let mut server = None;
    for one in all.each() {
        match one.version().await {
            Ok(_) => {
                server = Some(one);
                break;
            }
            Err(f) => last = f.message,
        }
    }
    let Some(server) = server else {
        return Err(ReportError::Unreachable {
            urls: all
                .each()
                .iter()
                .map(Server::url)
                .collect::<Vec<_>>()
                .join(", "),
            message: last,
        });
    };
    let table = format!("`{}`.`{}`", ch.database, ch.table);
    let q = |sql: String| {
        let server = server.clone();
        async move { server.text(&sql, &[]).await.map_err(query_error) }
    };
    let of_guild = format!("guild_id = '{guild}'");
    let any = q(format!("SELECT count() FROM {table} WHERE {of_guild}")).await?;
    if any.trim() == "0" {
        return Err(ReportError::UnknownGuild {
            guild: guild.to_string(),
            table: format!("{}.{}", ch.database, ch.table),
        });
    }
    let day = "toDate(parseDateTimeBestEffortOrZero(ts, 'UTC'))";
    let per_day = q(format!(
        "SELECT {day} AS day, count() FROM {table} \
         WHERE {of_guild} AND event = 'interaction' \
         AND day > toDate(now(), 'UTC') - {days} AND day <= toDate(now(), 'UTC') \
         GROUP BY day ORDER BY day",
        days = req.days
    ))
    .await?;
    let commands = format!("{of_guild} AND event = 'app_command'");
    let top = q(format!(
        "SELECT command, count() AS n FROM {table} WHERE {commands} \
         GROUP BY command ORDER BY n DESC, command LIMIT {}",
        req.limit.unwrap_or(10)
    ))
    .await?;
    let stats = q(format!(
        "SELECT command, count() AS n, avg(duration_ms) FROM {table} WHERE {commands} \
         GROUP BY command ORDER BY n DESC, command LIMIT {}",
        req.limit.unwrap_or(50)
    ))
    .await?;
    let overall = q(format!(
        "SELECT count(), avg(duration_ms) FROM {table} WHERE {commands}"
    ))
    .await?;
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(unescape).collect())
            .collect()
    };
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    let float = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    let overall = rows(&overall);
    let avg_duration_ms = overall
        .first()
        .filter(|r| r.len() == 2 && num(&r[0]) > 0)
        .map(|r| float(&r[1]));
    Ok(Report {
        guild: guild.to_string(),
        source: format!("raw events in {}.{}", ch.database, ch.table),
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
                avg_ms: float(&r[2]),
            })
            .collect(),
        avg_duration_ms,
    })
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
