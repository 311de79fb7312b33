//! The migrations: chtail's own for the default table, and the operator's
//! `.sql` files, in one list ordered by version.

use std::path::{Path, PathBuf};

use super::sql;
use crate::clickhouse::{Described, Version};

/// Versions 1 to 99 are chtail's own; an operator's files start at 100.
pub(crate) const FIRST_OPERATOR_VERSION: u32 = 100;

/// The built-in migration whose record says the rollups are complete.
pub(crate) const ROLLUP_VIEW_VERSION: u32 = 2;

/// One migration.
#[derive(Debug, Clone)]
pub(crate) struct Migration {
    pub version: u32,
    pub name: String,
    pub origin: Origin,
    /// Of the file as written, or of a built-in's template, so that a
    /// server upgrade (which may render other SQL) is not a change.
    pub checksum: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Origin {
    BuiltIn,
    File(PathBuf),
}

impl Origin {
    pub(crate) fn describe(&self) -> String {
        match self {
            Origin::BuiltIn => "built in".into(),
            Origin::File(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// Statements run in order, each safe to run again.
    Statements(Vec<String>),
    /// The rollup's materialized view, created at a moment with no INSERT
    /// in flight, and the backfill of the events already in the table
    /// (`super::backfill`).
    ViewAndBackfill(Rollup),
}

/// The names and SQL of the daily rollup of a default table.
#[derive(Debug, Clone)]
pub(crate) struct Rollup {
    pub database: String,
    pub table: String,
    pub rollup: String,
    pub view: String,
    /// `SELECT … FROM table` before its `WHERE` and `GROUP BY`.
    pub select: String,
    pub group_by: String,
}

impl Rollup {
    pub(crate) fn of(database: &str, table: &str) -> Rollup {
        let rollup = format!("{table}_daily");
        Rollup {
            database: database.into(),
            table: table.into(),
            view: format!("{rollup}_mv"),
            select: render(ROLLUP_SELECT, database, table, &rollup, ""),
            group_by: "GROUP BY guild_id, day, event, type, command".into(),
            rollup,
        }
    }

    pub(crate) fn q(&self, name: &str) -> String {
        format!("`{}`.`{name}`", self.database)
    }

    pub(crate) fn create_view(&self) -> String {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {} TO {} AS\n{}\n{}",
            self.q(&self.view),
            self.q(&self.rollup),
            self.select,
            self.group_by
        )
    }

    /// The backfill of the parts `parts` (a list of quoted names), sent
    /// with `insert_deduplicate = 0` (a rollup block equal to one the view
    /// wrote before a retry is still new data).
    pub(crate) fn backfill(&self, parts: &str) -> String {
        format!(
            "INSERT INTO {}\n{}\nWHERE _part IN ({parts})\n{}",
            self.q(&self.rollup),
            self.select,
            self.group_by
        )
    }
}

/// The daily rollup: one row per guild, UTC day, event, type and command,
/// with the number of events and the sum of their durations in whole
/// microseconds (integers, so that sums in any order are exact, and the
/// rollups' averages equal the raw events').
const ROLLUP_TABLE: &str = "CREATE TABLE IF NOT EXISTS `{db}`.`{rollup}` (
    guild_id String,
    day Date,
    event String,
    type String,
    command String,
    events UInt64,
    duration_us Int64
) ENGINE = SummingMergeTree((events, duration_us))
ORDER BY (guild_id, day, event, type, command){settings}";

/// What the view and the backfill compute from raw events. Every column
/// is cast to the rollup's type (18.16 refuses a view whose types differ
/// in `LowCardinality`), and `ts` is read with the `OrZero` parser: a view
/// that failed would fail the bot's INSERTs into the table.
const ROLLUP_SELECT: &str = "SELECT
    CAST(guild_id AS String) AS guild_id,
    toDate(parseDateTimeBestEffortOrZero(CAST(ts AS String), 'UTC')) AS day,
    CAST(event AS String) AS event,
    CAST(type AS String) AS type,
    CAST(command AS String) AS command,
    count() AS events,
    sum(toInt64(round(duration_ms * 1000))) AS duration_us
FROM `{db}`.`{table}`";

/// The view's template, for its checksum: the view and the backfill.
const ROLLUP_VIEW: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`{rollup}_mv` TO `{db}`.`{rollup}` AS {select} GROUP BY guild_id, day, event, type, command; INSERT INTO `{db}`.`{rollup}` {select} WHERE _part IN ({parts}) GROUP BY guild_id, day, event, type, command";

fn render(template: &str, database: &str, table: &str, rollup: &str, settings: &str) -> String {
    template
        .replace("{db}", database)
        .replace("{table}", table)
        .replace("{rollup}", rollup)
        .replace("{settings}", settings)
}

/// Why chtail's own migrations do not fit the table, if they do not: they
/// need the default table's columns in a local, unreplicated MergeTree (a
/// view fires only on the replica that takes the INSERT).
pub(crate) fn builtin_misfit(engine: &str, columns: &[Described]) -> Option<String> {
    if engine != "MergeTree" {
        return Some(format!(
            "the table's engine is {engine}; chtail's rollups are made for a plain MergeTree (on a replicated or distributed table, write the rollups as your own migrations)"
        ));
    }
    let base = |ty: &str| {
        ty.strip_prefix("LowCardinality(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(ty)
            .to_string()
    };
    for (name, ty) in [
        ("ts", "String"),
        ("event", "String"),
        ("guild_id", "String"),
        ("type", "String"),
        ("command", "String"),
        ("duration_ms", "Float64"),
    ] {
        match columns.iter().find(|c| c.name == name) {
            Some(c) if base(&c.ty) == ty => {}
            Some(c) => {
                return Some(format!(
                    "column {name} is {}, not {ty}: chtail's rollups are made for the default table's columns",
                    c.ty
                ));
            }
            None => {
                return Some(format!(
                    "the table has no column {name}: chtail's rollups are made for the default table's columns"
                ));
            }
        }
    }
    None
}

/// chtail's own migrations for `database`.`table`.
pub(crate) fn builtin(database: &str, table: &str, version: Version) -> Vec<Migration> {
    let rollup = Rollup::of(database, table);
    // Where plain MergeTree deduplicates, the rollup does too: a batch
    // re-sent after a crash is dropped by the table and by the view.
    let settings = if version.has_dedup_token() {
        "\nSETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    vec![
        Migration {
            version: 1,
            name: "daily_rollup_table".into(),
            origin: Origin::BuiltIn,
            checksum: sql::checksum(ROLLUP_TABLE),
            body: Body::Statements(vec![render(
                ROLLUP_TABLE,
                database,
                table,
                &rollup.rollup,
                settings,
            )]),
        },
        Migration {
            version: ROLLUP_VIEW_VERSION,
            name: "daily_rollup_view".into(),
            origin: Origin::BuiltIn,
            checksum: sql::checksum(&format!("{ROLLUP_VIEW}\n{ROLLUP_SELECT}")),
            body: Body::ViewAndBackfill(rollup),
        },
    ]
}

/// The operator's migrations in `dir`: every `NNNN_name.sql`, where NNNN
/// (100 or more) is its version. Anything else ending in `.sql` is an
/// error, so that a misnamed file is not silently skipped.
pub(crate) fn operator_files(dir: &Path) -> Result<Vec<Migration>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("schema.migrations_dir {}: {e}", dir.display()))?;
    let mut out: Vec<Migration> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("schema.migrations_dir {}: {e}", dir.display()))?;
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        let (version, name) = stem
            .split_once('_')
            .and_then(|(v, n)| Some((v.parse::<u32>().ok()?, n)))
            .filter(|(_, n)| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
            .ok_or_else(|| {
                format!(
                    "{}: a migration's file name is its version and name, e.g. 0100_commands_by_hour.sql",
                    path.display()
                )
            })?;
        if version < FIRST_OPERATOR_VERSION {
            return Err(format!(
                "{}: versions below {FIRST_OPERATOR_VERSION} are chtail's own; number your migrations from {FIRST_OPERATOR_VERSION}",
                path.display()
            ));
        }
        if let Some(twin) = out.iter().find(|m| m.version == version) {
            return Err(format!(
                "{} and {} have the same version {version}",
                twin.origin.describe(),
                path.display()
            ));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let statements = sql::statements(&text);
        if statements.is_empty() {
            return Err(format!("{}: holds no statement", path.display()));
        }
        out.push(Migration {
            version,
            name: name.to_string(),
            checksum: sql::checksum(&text),
            origin: Origin::File(path),
            body: Body::Statements(statements),
        });
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Described {
        Described {
            name: name.into(),
            ty: ty.into(),
            default_kind: String::new(),
        }
    }

    fn default_columns() -> Vec<Described> {
        crate::parse::default_table_columns()
            .iter()
            .map(|(n, t)| col(n, t))
            .collect()
    }

    #[test]
    fn builtins_fit_the_default_table_only() {
        assert_eq!(builtin_misfit("MergeTree", &default_columns()), None);
        let why = builtin_misfit("ReplicatedMergeTree", &default_columns()).unwrap();
        assert!(why.contains("ReplicatedMergeTree"), "{why}");
        let mut cols = default_columns();
        cols.retain(|c| c.name != "command");
        assert!(
            builtin_misfit("MergeTree", &cols)
                .unwrap()
                .contains("no column command")
        );
        cols.push(col("command", "UInt32"));
        assert!(
            builtin_misfit("MergeTree", &cols)
                .unwrap()
                .contains("UInt32")
        );
    }

    #[test]
    fn a_server_upgrade_is_not_a_change() {
        let old = builtin(
            "db",
            "t",
            Version {
                major: 18,
                minor: 16,
            },
        );
        let new = builtin(
            "db",
            "t",
            Version {
                major: 26,
                minor: 9,
            },
        );
        for (a, b) in old.iter().zip(&new) {
            assert_eq!(a.checksum, b.checksum, "{}", a.name);
        }
        let Body::Statements(s) = &new[0].body else {
            panic!()
        };
        assert!(
            s[0].contains("non_replicated_deduplication_window"),
            "{}",
            s[0]
        );
        let Body::Statements(s) = &old[0].body else {
            panic!()
        };
        assert!(!s[0].contains("SETTINGS"), "{}", s[0]);
    }

    #[test]
    fn operator_files_are_named_by_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0101_b.sql"), "SELECT 2").unwrap();
        std::fs::write(dir.path().join("0100_a.sql"), "SELECT 1; SELECT 1").unwrap();
        std::fs::write(dir.path().join("README"), "not a migration").unwrap();
        let got = operator_files(dir.path()).unwrap();
        assert_eq!(
            got.iter()
                .map(|m| (m.version, m.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(100, "a"), (101, "b")]
        );
        std::fs::write(dir.path().join("0005_low.sql"), "SELECT 1").unwrap();
        assert!(
            operator_files(dir.path())
                .unwrap_err()
                .contains("below 100")
        );
        std::fs::remove_file(dir.path().join("0005_low.sql")).unwrap();
        std::fs::write(dir.path().join("views.sql"), "SELECT 1").unwrap();
        assert!(
            operator_files(dir.path())
                .unwrap_err()
                .contains("views.sql")
        );
        std::fs::remove_file(dir.path().join("views.sql")).unwrap();
        std::fs::write(dir.path().join("0100_again.sql"), "SELECT 1").unwrap();
        assert!(
            operator_files(dir.path())
                .unwrap_err()
                .contains("same version 100")
        );
    }
}
