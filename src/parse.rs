//! Parse stage: one JSON line in, one RowBinary row out (or a reason why not).
//!
//! The target table's columns are read from the server at start-up
//! (`DESCRIBE TABLE`) into a [`Schema`]; each line is parsed once, its keys
//! matched to columns by name, and the row encoded in the column order of the
//! `INSERT` statement. Missing keys take the column type's default, extra
//! keys are ignored. A line that cannot become a row is rejected with a
//! [`Reject`] reason for the quarantine; it never stops the pipeline.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A column type chtail can encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// `String`, and `LowCardinality(String)` (the same in RowBinary).
    String,
    Float64,
    Float32,
    Int {
        bits: u8,
        signed: bool,
    },
    Bool,
    Nullable(Box<ColumnType>),
}

impl ColumnType {
    /// Parses a ClickHouse type name as `DESCRIBE TABLE` prints it.
    pub fn parse(name: &str) -> Option<ColumnType> {
        let name = name.trim();
        if let Some(inner) = strip_wrapper(name, "LowCardinality") {
            return match ColumnType::parse(inner)? {
                ColumnType::String => Some(ColumnType::String),
                ColumnType::Nullable(t) if *t == ColumnType::String => {
                    Some(ColumnType::Nullable(t))
                }
                _ => None,
            };
        }
        if let Some(inner) = strip_wrapper(name, "Nullable") {
            return Some(ColumnType::Nullable(Box::new(ColumnType::parse(inner)?)));
        }
        Some(match name {
            "String" => ColumnType::String,
            "Float64" => ColumnType::Float64,
            "Float32" => ColumnType::Float32,
            "Bool" | "Boolean" => ColumnType::Bool,
            "Int8" => ColumnType::Int {
                bits: 8,
                signed: true,
            },
            "Int16" => ColumnType::Int {
                bits: 16,
                signed: true,
            },
            "Int32" => ColumnType::Int {
                bits: 32,
                signed: true,
            },
            "Int64" => ColumnType::Int {
                bits: 64,
                signed: true,
            },
            "UInt8" => ColumnType::Int {
                bits: 8,
                signed: false,
            },
            "UInt16" => ColumnType::Int {
                bits: 16,
                signed: false,
            },
            "UInt32" => ColumnType::Int {
                bits: 32,
                signed: false,
            },
            "UInt64" => ColumnType::Int {
                bits: 64,
                signed: false,
            },
            _ => return None,
        })
    }
}

fn strip_wrapper<'a>(name: &'a str, wrapper: &str) -> Option<&'a str> {
    name.strip_prefix(wrapper)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// The columns chtail writes, in `INSERT` order.
#[derive(Debug, Clone)]
pub struct Schema {
    columns: Vec<Column>,
    index: HashMap<String, usize>,
}

/// A column chtail cannot write; reported at start-up, never mid-stream.
#[derive(Debug, Clone, thiserror::Error)]
#[error("column `{column}` has type `{ty}`, which chtail cannot encode yet")]
pub struct UnsupportedColumn {
    pub column: String,
    pub ty: String,
}

impl Schema {
    /// Builds the schema from `(name, type)` pairs of the insertable columns.
    pub fn new(columns: &[(String, String)]) -> Result<Schema, Vec<UnsupportedColumn>> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (name, ty) in columns {
            match ColumnType::parse(ty) {
                Some(t) => out.push(Column {
                    name: name.clone(),
                    ty: t,
                }),
                None => bad.push(UnsupportedColumn {
                    column: name.clone(),
                    ty: ty.clone(),
                }),
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        let index = out
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Ok(Schema {
            columns: out,
            index,
        })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// `INSERT INTO db.table (a, b, ...) FORMAT RowBinary`.
    pub fn insert_sql(&self, database: &str, table: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "\\`")))
            .collect();
        format!(
            "INSERT INTO `{database}`.`{table}` ({}) FORMAT RowBinary",
            cols.join(", ")
        )
    }

    /// Parses one line (without its `\n`) and appends its row to `out`.
    /// On rejection `out` is left as it was.
    pub fn encode_line(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), Reject> {
        let mut slots: Vec<Option<&RawValue>> = vec![None; self.columns.len()];
        // Checked up front so that invalid UTF-8 anywhere, even in a key
        // chtail ignores, is reported as such.
        let text = std::str::from_utf8(line).map_err(|_| Reject::InvalidUtf8)?;
        let mut de = serde_json::Deserializer::from_str(text);
        FieldsSeed {
            schema: self,
            slots: &mut slots,
        }
        .deserialize(&mut de)
        .map_err(classify_json_error)?;
        de.end().map_err(classify_json_error)?;

        let mark = out.len();
        for (col, raw) in self.columns.iter().zip(&slots) {
            if let Err(e) = encode_value(&col.ty, raw.map(RawValue::get), out) {
                out.truncate(mark);
                return Err(Reject::WrongType {
                    column: col.name.clone(),
                    detail: e,
                });
            }
        }
        Ok(())
    }
}

/// Why a line did not become a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    InvalidUtf8,
    InvalidJson(String),
    NotAnObject,
    WrongType {
        column: String,
        detail: String,
    },
    TooLong {
        len: u64,
        max: usize,
    },
    /// The server refused the row as bad data.
    Server(String),
}

impl Reject {
    /// A short, fixed label for counters and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Reject::InvalidUtf8 => "invalid_utf8",
            Reject::InvalidJson(_) => "invalid_json",
            Reject::NotAnObject => "not_an_object",
            Reject::WrongType { .. } => "wrong_type",
            Reject::TooLong { .. } => "too_long",
            Reject::Server(_) => "rejected_by_server",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Reject::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            Reject::NotAnObject => f.write_str("the line is JSON but not an object"),
            Reject::WrongType { column, detail } => write!(f, "column `{column}`: {detail}"),
            Reject::TooLong { len, max } => {
                write!(
                    f,
                    "line of {len} bytes is longer than tail.max_line_bytes ({max})"
                )
            }
            Reject::Server(e) => write!(f, "rejected by ClickHouse: {e}"),
        }
    }
}

fn classify_json_error(e: serde_json::Error) -> Reject {
    if e.is_data() && e.to_string().starts_with(NOT_AN_OBJECT) {
        Reject::NotAnObject
    } else {
        Reject::InvalidJson(e.to_string())
    }
}

const NOT_AN_OBJECT: &str = "chtail: not an object";

/// Collects, for each schema column, the raw JSON text of its value.
struct FieldsSeed<'s, 'v, 'a> {
    schema: &'s Schema,
    slots: &'v mut [Option<&'a RawValue>],
}

impl<'de, 's, 'v> DeserializeSeed<'de> for FieldsSeed<'s, 'v, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 's, 'v> Visitor<'de> for FieldsSeed<'s, 'v, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.schema.index.get(key.as_ref()) {
                Some(&i) => self.slots[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    // Anything but an object: a recognisable error, classified above.
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(NOT_AN_OBJECT))
    }
}

/// Appends one value in RowBinary. `raw` is the value's JSON text, `None`
/// when the key was missing.
fn encode_value(ty: &ColumnType, raw: Option<&str>, out: &mut Vec<u8>) -> Result<(), String> {
    let raw = raw.filter(|r| *r != "null");
    match ty {
        ColumnType::Nullable(inner) => match raw {
            None => out.push(1),
            Some(_) => {
                out.push(0);
                encode_value(inner, raw, out)?;
            }
        },
        ColumnType::String => {
            let text: Cow<str> = match raw {
                None => Cow::Borrowed(""),
                Some(r) if r.starts_with('"') => {
                    serde_json::from_str::<Cow<str>>(r).map_err(|e| e.to_string())?
                }
                // Numbers, booleans and nested values keep their JSON text:
                // a bot that writes `"guild_id": 123` still fills the column.
                Some(r) => Cow::Borrowed(r),
            };
            put_varint(out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
        ColumnType::Float64 => {
            let v = number(raw)?.unwrap_or(0.0);
            out.extend_from_slice(&v.to_le_bytes());
        }
        ColumnType::Float32 => {
            let v = number(raw)?.unwrap_or(0.0) as f32;
            out.extend_from_slice(&v.to_le_bytes());
        }
        ColumnType::Bool => {
            let v = match raw {
                None | Some("false") | Some("0") => 0u8,
                Some("true") | Some("1") => 1,
                Some(r) => return Err(format!("expected true or false, got {}", shorten(r))),
            };
            out.push(v);
        }
        ColumnType::Int { bits, signed } => {
            let bytes = (*bits / 8) as usize;
            let Some(r) = raw else {
                out.extend(std::iter::repeat_n(0, bytes));
                return Ok(());
            };
            let in_range = if *signed {
                let v: i64 = r
                    .parse()
                    .map_err(|_| format!("expected an integer, got {}", shorten(r)))?;
                let shift = 64 - u32::from(*bits);
                ((v << shift) >> shift == v).then(|| v.to_le_bytes())
            } else {
                let v: u64 = r
                    .parse()
                    .map_err(|_| format!("expected an unsigned integer, got {}", shorten(r)))?;
                (*bits == 64 || v >> bits == 0).then(|| v.to_le_bytes())
            };
            let le = in_range.ok_or_else(|| format!("{r} is out of range for {bits} bits"))?;
            out.extend_from_slice(&le[..bytes]);
        }
    }
    Ok(())
}

fn number(raw: Option<&str>) -> Result<Option<f64>, String> {
    match raw {
        None => Ok(None),
        Some(r) if r.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => r
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("expected a number, got {}", shorten(r))),
        Some(r) => Err(format!("expected a number, got {}", shorten(r))),
    }
}

fn shorten(s: &str) -> String {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// ClickHouse's unsigned LEB128, used for string lengths.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The columns and types of the default table of DESIGN.md §1.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schema() -> Schema {
        Schema::new(&default_table_columns()).unwrap()
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn the_design_example_encodes_in_column_order() {
        let line = br#"{"ts": "2026-11-22T10:00:00.123456+00:00", "event": "app_command", "guild_id": "123", "type": "application_command", "command": "ping", "duration_ms": 12.5, "extra": {"x": [1, 2]}}"#;
        let mut out = Vec::new();
        schema().encode_line(line, &mut out).unwrap();
        let mut want = Vec::new();
        string(&mut want, "2026-11-22T10:00:00.123456+00:00");
        string(&mut want, "app_command");
        string(&mut want, "123");
        string(&mut want, "application_command");
        string(&mut want, "ping");
        want.extend_from_slice(&12.5f64.to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn missing_fields_take_defaults_and_numbers_fill_strings() {
        let mut out = Vec::new();
        schema()
            .encode_line(
                br#"{"event":"interaction","guild_id":42,"duration_ms":null}"#,
                &mut out,
            )
            .unwrap();
        let mut want = Vec::new();
        string(&mut want, "");
        string(&mut want, "interaction");
        string(&mut want, "42");
        string(&mut want, "");
        string(&mut want, "");
        want.extend_from_slice(&0f64.to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn escapes_are_decoded() {
        let s = Schema::new(&[("command".into(), "String".into())]).unwrap();
        let mut out = Vec::new();
        s.encode_line(br#"{"command":"a\"b\u00e9\n"}"#, &mut out)
            .unwrap();
        let mut want = Vec::new();
        string(&mut want, "a\"bé\n");
        assert_eq!(out, want);
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason_and_leave_no_bytes() {
        let s = schema();
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "invalid_json"),
            (b"[1,2]", "not_an_object"),
            (b"\"text\"", "not_an_object"),
            (b"{\"command\":\"\xff\xfe\"}", "invalid_utf8"),
            (br#"{"duration_ms":"fast"}"#, "wrong_type"),
            (br#"{"a":1} trailing"#, "invalid_json"),
            (b"", "invalid_json"),
        ];
        for (line, kind) in cases {
            let mut out = vec![7];
            let err = s.encode_line(line, &mut out).unwrap_err();
            assert_eq!(
                err.kind(),
                *kind,
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(out, vec![7]);
        }
    }

    #[test]
    fn deep_nesting_is_handled_without_a_crash() {
        let open = "[".repeat(100_000);
        let close = "]".repeat(100_000);
        // Under a key chtail ignores: skipped, the row still goes in.
        let ignored = format!("{{\"x\":{open}{close},\"event\":\"e\"}}");
        schema()
            .encode_line(ignored.as_bytes(), &mut Vec::new())
            .unwrap();
        // As the line itself: not an object.
        let top = format!("{open}{close}");
        let err = schema()
            .encode_line(top.as_bytes(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), "not_an_object");
        // Unbalanced: invalid.
        let err = schema()
            .encode_line(format!("{{\"x\":{open}}}").as_bytes(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_json");
    }

    #[test]
    fn integers_are_range_checked() {
        let s = Schema::new(&[
            ("a".into(), "UInt8".into()),
            ("b".into(), "Int16".into()),
            ("c".into(), "Nullable(Int64)".into()),
        ])
        .unwrap();
        let mut out = Vec::new();
        s.encode_line(br#"{"a":255,"b":-32768,"c":null}"#, &mut out)
            .unwrap();
        assert_eq!(out, vec![255, 0x00, 0x80, 1]);
        assert!(s.encode_line(br#"{"a":256}"#, &mut Vec::new()).is_err());
        assert!(s.encode_line(br#"{"b":40000}"#, &mut Vec::new()).is_err());
        assert!(s.encode_line(br#"{"a":-1}"#, &mut Vec::new()).is_err());
    }

    #[test]
    fn unsupported_types_are_named() {
        let err = Schema::new(&[("x".into(), "Array(UUID)".into())]).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "column `x` has type `Array(UUID)`, which chtail cannot encode yet"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = schema().encode_line(&line, &mut Vec::new());
        }
    }
}
