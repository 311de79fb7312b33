//! The target table as chtail writes it: its insertable columns, in
//! `INSERT` order, each with the type it is encoded as, and the input
//! format (`RowBinary`, or `RowBinaryWithDefaults` where a column has a
//! DEFAULT of its own); the default table's columns; identifier quoting.

use jiff::tz::TimeZone;

use super::types::ColumnType;

/// A column of the target table that chtail writes.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The type as the server names it.
    pub type_name: String,
    /// The column has a DEFAULT expression of its own.
    pub has_default: bool,
}

/// A column as the table defines it: name, type, and whether a DEFAULT
/// expression fills it when the value is missing.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub name: String,
    pub ty: String,
    pub has_default: bool,
}

/// The columns chtail writes, in `INSERT` order, and the input format.
#[derive(Debug, Clone)]
pub struct Schema {
    columns: Vec<Column>,
    /// `RowBinaryWithDefaults`: each value is prefixed by a byte saying
    /// whether the server should compute the column's DEFAULT instead.
    with_defaults: bool,
}

/// A column chtail cannot write; reported at start-up, never mid-stream.
#[derive(Debug, Clone, thiserror::Error)]
#[error("column `{column}` has type `{ty}`, which chtail cannot encode")]
pub struct UnsupportedColumn {
    pub column: String,
    pub ty: String,
}

impl Schema {
    /// Builds the schema of the insertable columns. `server_tz` is the zone
    /// of DateTime columns without one; `defaults_format` says whether the
    /// server accepts `RowBinaryWithDefaults`, used when a column has a
    /// DEFAULT expression so that a missing key gets that expression.
    pub fn new(
        columns: &[ColumnDef],
        server_tz: &TimeZone,
        defaults_format: bool,
    ) -> Result<Schema, Vec<UnsupportedColumn>> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for c in columns {
            match ColumnType::parse(&c.ty, server_tz) {
                Ok(t) => out.push(Column {
                    name: c.name.clone(),
                    ty: t,
                    type_name: c.ty.clone(),
                    has_default: c.has_default,
                }),
                Err(_) => bad.push(UnsupportedColumn {
                    column: c.name.clone(),
                    ty: c.ty.clone(),
                }),
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        let with_defaults = defaults_format && out.iter().any(|c| c.has_default);
        Ok(Schema {
            columns: out,
            with_defaults,
        })
    }

    /// A schema of plain columns (`(name, type)`), in UTC.
    pub fn plain(columns: &[(String, String)]) -> Result<Schema, Vec<UnsupportedColumn>> {
        let defs: Vec<ColumnDef> = columns
            .iter()
            .map(|(n, t)| ColumnDef {
                name: n.clone(),
                ty: t.clone(),
                has_default: false,
            })
            .collect();
        Schema::new(&defs, &TimeZone::UTC, false)
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Rows are `RowBinaryWithDefaults`: each value is prefixed by a byte
    /// saying whether the server should compute the column's DEFAULT.
    pub(crate) fn with_defaults(&self) -> bool {
        self.with_defaults
    }

    /// Columns whose DEFAULT expression the server cannot apply to rows
    /// chtail sends (old servers without `RowBinaryWithDefaults`): a
    /// missing key gets the type's default there.
    pub fn defaults_not_applied(&self) -> Vec<&str> {
        if self.with_defaults {
            return Vec::new();
        }
        self.columns
            .iter()
            .filter(|c| c.has_default)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// `INSERT INTO db.table (a, b, ...) FORMAT RowBinary`, or `FORMAT
    /// Native` when the rows are sent as Native blocks.
    pub fn insert_sql(&self, database: &str, table: &str, native: bool) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        format!(
            "INSERT INTO {}.{} ({}) FORMAT {}",
            quote_ident(database),
            quote_ident(table),
            cols.join(", "),
            if native {
                "Native"
            } else if self.with_defaults {
                "RowBinaryWithDefaults"
            } else {
                "RowBinary"
            }
        )
    }
}

/// A backquoted identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The columns and types of the default table (README, "The table").
pub fn default_table_columns() -> Vec<(String, String)> {
    [
        ("ts", "String"),
        ("event", "LowCardinality(String)"),
        ("guild_id", "String"),
        ("type", "LowCardinality(String)"),
        ("command", "String"),
        ("duration_ms", "Float64"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect()
}
