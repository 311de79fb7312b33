//! Parse stage: one JSON line in, one RowBinary row out (or a reason why not).
//!
//! The target table's columns are read from the server at start-up
//! (`DESCRIBE TABLE`) into a [`Schema`]; a source's [`Encoder`] maps JSON
//! keys to those columns (by name, or through the source's rename map), and
//! fills the metadata columns it names and its catch-all column. Each line
//! is parsed once and encoded straight into RowBinary in the column order of
//! the `INSERT`. A missing key takes the column's default, extra keys are
//! ignored and counted (or kept in the catch-all column). A line that cannot
//! become a row is rejected with a [`Reject`] reason for the quarantine; it
//! never stops the pipeline. A column type chtail cannot write is reported
//! at start-up ([`UnsupportedColumn`]), never mid-stream.

pub(crate) mod flat;
mod reject;
mod schema;
pub mod time;
pub mod types;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

// JSON keys are short and chosen by the bot, not by someone flooding one
// map: a fast fixed hasher for the key lookup (SipHash showed in profiles).
// foldhash replaced a hand-written FNV-1a: `benches/line_path.rs`, runs
// alternated, 576-628 ns a line against FNV's 564-576, within the noise.
use foldhash::fast::FixedState;
use jiff::tz::TimeZone;
use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::{self, MetaField};
pub use reject::{Reject, RejectKind};
pub use schema::{
    Column, ColumnDef, Schema, UnsupportedColumn, default_table_columns, quote_ident,
};
pub use types::{ColumnType, extend_short, put_bytes, put_varint};

/// What a column is filled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The JSON value of a key.
    Key,
    /// The keys no other column takes, kept whole.
    CatchAll,
    Meta(MetaField),
}

/// What chtail knows about a line besides its text, as JSON values.
#[derive(Debug, Clone, Copy)]
pub struct LineMeta<'a> {
    /// The file's path, as a JSON string.
    pub path: &'a str,
    /// Byte offset of the line's start in its file.
    pub offset: u64,
    /// This machine's host name, as a JSON string.
    pub host: &'a str,
    /// When the line was read, as a JSON string (ISO-8601, UTC).
    pub ingest_time: &'a str,
}

impl LineMeta<'_> {
    /// A string as a JSON value.
    pub fn json(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
    }

    /// Metadata for code paths that have none to give (tests, `check`).
    pub const NONE: LineMeta<'static> = LineMeta {
        path: "\"\"",
        offset: 0,
        host: "\"\"",
        ingest_time: "\"1970-01-01T00:00:00Z\"",
    };
}

/// A source's way from JSON lines to a table's rows.
#[derive(Debug, Clone)]
pub struct Encoder {
    schema: Arc<Schema>,
    roles: Vec<Role>,
    /// JSON key → column index.
    index: HashMap<String, usize, FixedState>,
    /// The same for keys shorter than 64 bytes, by length: a key is found
    /// by comparing it with the few of its length, with no hashing (the
    /// cost of a lookup was measured at a sixth of a line's). Each entry
    /// is (key, column, its place in `order`).
    by_len: Vec<Vec<(String, usize, usize)>>,
    /// Every key with its column, in the table's column order. The key
    /// after the last one found is tried first: a bot writes its keys in
    /// one order on every line, and a table made for its events lists its
    /// columns in that order (the default table does). A miss costs one
    /// comparison before the lookup.
    order: Vec<(String, usize)>,
    catch_all: Option<usize>,
    /// The key holding the event's own time, for the delay metric.
    time_key: Option<String>,
    /// The column only the time key fills, if there is one: the time is
    /// then read from that column's slot, with no key compared with it.
    time_column: Option<usize>,
}

/// What became of a line that became a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Keys no column took.
    pub ignored: u32,
    /// The event's own time (Unix milliseconds), if it had a readable one.
    pub time_ms: Option<i64>,
}

/// A line in a mapping listing (`chtail check`).
#[derive(Debug, Clone)]
pub struct MappingLine {
    /// Where the value comes from: `key "x"`, `metadata file`, ...
    pub from: String,
    pub column: String,
    pub ty: String,
    pub note: &'static str,
}

impl Encoder {
    /// Binds `mapping` to `schema`. Every problem is reported: a rename,
    /// metadata or catch-all column the table does not have, or a catch-all
    /// column of a type that cannot hold the extra keys.
    pub fn new(schema: Arc<Schema>, mapping: &config::Mapping) -> Result<Encoder, Vec<String>> {
        let mut problems = Vec::new();
        let find = |name: &str| schema.columns().iter().position(|c| c.name == name);
        let mut roles = vec![Role::Key; schema.columns().len()];
        for (field, column) in mapping.metadata_columns() {
            match find(column) {
                Some(i) => roles[i] = Role::Meta(field),
                None => problems.push(format!(
                    "metadata.{} names column `{column}`, which the table does not have (or cannot take inserts)",
                    field.key()
                )),
            }
        }
        let mut catch_all = None;
        if let Some(column) = &mapping.catch_all {
            match find(column) {
                Some(i) if catch_all_type_ok(&schema.columns()[i].ty) => {
                    roles[i] = Role::CatchAll;
                    catch_all = Some(i);
                }
                Some(i) => problems.push(format!(
                    "catch_all column `{column}` has type `{}`; it must be String or Map(String, ...)",
                    schema.columns()[i].type_name
                )),
                None => problems.push(format!(
                    "catch_all names column `{column}`, which the table does not have"
                )),
            }
        }
        let mut index = HashMap::with_hasher(FixedState::default());
        for (i, c) in schema.columns().iter().enumerate() {
            if roles[i] == Role::Key {
                index.insert(c.name.clone(), i);
            }
        }
        for (key, column) in &mapping.rename {
            match find(column) {
                Some(i) if roles[i] == Role::Key => {
                    index.insert(key.clone(), i);
                }
                Some(_) => problems.push(format!(
                    "rename maps key `{key}` to column `{column}`, which is filled by chtail (metadata or catch_all)"
                )),
                None => problems.push(format!(
                    "rename maps key `{key}` to column `{column}`, which the table does not have"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut order: Vec<(String, usize)> = index.iter().map(|(k, &i)| (k.clone(), i)).collect();
        order.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let mut by_len = vec![Vec::new(); 64];
        for (at, (k, i)) in order.iter().enumerate() {
            if let Some(same) = by_len.get_mut(k.len()) {
                same.push((k.clone(), *i, at));
            }
        }
        Ok(Encoder {
            schema,
            roles,
            index,
            by_len,
            order,
            catch_all,
            time_key: None,
            time_column: None,
        }
        .with_time_key(Some("ts".into())))
    }

    /// The column `key` fills, if any, and the key's place in `order`.
    fn column_of(&self, key: &str) -> Option<(usize, usize)> {
        match self.by_len.get(key.len()) {
            Some(same) => same
                .iter()
                .find(|(k, _, _)| flat::same_bytes(k.as_bytes(), key.as_bytes()))
                .map(|&(_, i, at)| (i, at)),
            None => {
                let i = *self.index.get(key)?;
                let at = self.order.iter().position(|(k, _)| k == key)?;
                Some((i, at))
            }
        }
    }

    /// An encoder of the table's columns by name, with nothing else.
    pub fn plain(schema: Arc<Schema>) -> Encoder {
        Encoder::new(schema, &config::Mapping::default()).expect("an empty mapping always binds")
    }

    /// Which key holds the event's time (`None`: none).
    pub fn with_time_key(mut self, key: Option<String>) -> Encoder {
        self.time_column = key.as_deref().and_then(|key| {
            let (i, _) = self.column_of(key)?;
            let shared = self.order.iter().filter(|&&(_, c)| c == i).count() > 1;
            (!shared).then_some(i)
        });
        self.time_key = key;
        self
    }

    /// Whether any column takes the line's metadata (the caller then
    /// fills [`LineMeta`] properly).
    pub fn uses_metadata(&self) -> bool {
        self.roles.iter().any(|r| matches!(r, Role::Meta(_)))
    }

    /// The mapping, column by column, for `chtail check`.
    pub fn mapping(&self) -> Vec<MappingLine> {
        let mut keys_of: Vec<Vec<&str>> = vec![Vec::new(); self.schema.columns().len()];
        let mut sorted: Vec<(&String, &usize)> = self.index.iter().collect();
        sorted.sort();
        for (k, &i) in sorted {
            keys_of[i].push(k);
        }
        self.schema
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let from = match self.roles[i] {
                    Role::Key => keys_of[i]
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    Role::CatchAll => "(keys no other column takes)".into(),
                    Role::Meta(m) => format!("(metadata: {})", m.key()),
                };
                let note = if c.has_default && self.roles[i] == Role::Key {
                    if self.schema.with_defaults() {
                        "missing: the column's DEFAULT"
                    } else {
                        "missing: the type's default (this server cannot apply DEFAULT to RowBinary)"
                    }
                } else if c.ty.is_nullable() {
                    "missing: NULL"
                } else {
                    ""
                };
                MappingLine {
                    from,
                    column: c.name.clone(),
                    ty: c.type_name.clone(),
                    note,
                }
            })
            .collect()
    }

    /// Parses one line (without its `\n`) and appends its row to `out`.
    /// Returns how many of its keys no column took (ignored). On rejection
    /// `out` is left as it was.
    pub fn encode_line(
        &self,
        line: &[u8],
        meta: &LineMeta<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Encoded, Reject> {
        // The values by column; on the stack for any usual table.
        let n = self.schema.columns().len();
        let mut stack = [None; 32];
        let mut heap = Vec::new();
        let slots: &mut [Option<&str>] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, None);
            &mut heap
        };
        let mut extras = Vec::new();
        // Checked up front so that invalid UTF-8 anywhere, even in a key
        // chtail ignores, is reported as such.
        let text = simdutf8::basic::from_utf8(line).map_err(|_| Reject::InvalidUtf8)?;
        let mut ignored = 0;
        let mut time = None;
        // The flat objects bots write take the fast path; a catch-all
        // column, or anything unusual, serde_json's.
        let walked = if self.catch_all.is_some() {
            None
        } else {
            let mut next = 0;
            let walked = flat::fields(text, |key, raw| {
                let column = match self.order.get(next) {
                    Some((k, i)) if flat::same_bytes(k.as_bytes(), key.as_bytes()) => {
                        next += 1;
                        Some(*i)
                    }
                    _ => self.column_of(key).map(|(i, at)| {
                        next = at + 1;
                        i
                    }),
                };
                let is_time = || self.time_key.as_deref() == Some(key);
                match column {
                    Some(i) => {
                        slots[i] = Some(raw);
                        if self.time_column.is_none() && is_time() {
                            time = Some(raw);
                        }
                    }
                    None if is_time() => time = Some(raw),
                    None => ignored += 1,
                }
            });
            if let Some(i) = self.time_column {
                time = slots[i];
            }
            walked
        };
        // Without an escape on the line, a string's text is what lies
        // between its quotes, with nothing to look for.
        let unescaped = walked == Some(flat::Escapes::None);
        if walked.is_none() {
            slots.fill(None);
            ignored = 0;
            time = None;
            let mut de = serde_json::Deserializer::from_str(text);
            FieldsSeed {
                encoder: self,
                slots,
                extras: self.catch_all.is_some().then_some(&mut extras),
                ignored: &mut ignored,
                time: &mut time,
            }
            .deserialize(&mut de)
            .map_err(classify_json_error)?;
            de.end().map_err(classify_json_error)?;
        }

        let mark = out.len();
        let defaults = self.schema.with_defaults();
        let mut offset_text = String::new();
        for (i, col) in self.schema.columns().iter().enumerate() {
            let result = match self.roles[i] {
                Role::Key => {
                    let raw = slots[i];
                    let missing = raw.is_none_or(|r| r == "null" && !col.ty.is_nullable());
                    // Only a column with a DEFAULT expression is left to the
                    // server: for the others ClickHouse would insert zero
                    // bytes, which is not even a valid Enum.
                    if defaults && missing && col.has_default {
                        out.push(1);
                        Ok(())
                    } else {
                        if defaults {
                            out.push(0);
                        }
                        if unescaped {
                            types::encode_unescaped(&col.ty, raw, out)
                        } else {
                            types::encode(&col.ty, raw, out)
                        }
                    }
                }
                Role::Meta(field) => {
                    if defaults {
                        out.push(0);
                    }
                    let raw = match field {
                        MetaField::File => meta.path,
                        MetaField::Host => meta.host,
                        MetaField::IngestTime => meta.ingest_time,
                        MetaField::Offset => {
                            use std::fmt::Write;
                            offset_text.clear();
                            let _ = write!(offset_text, "{}", meta.offset);
                            &offset_text
                        }
                    };
                    types::encode(&col.ty, Some(raw), out)
                }
                Role::CatchAll => {
                    if defaults {
                        out.push(0);
                    }
                    encode_catch_all(&col.ty, &extras, out)
                }
            };
            if let Err(e) = result {
                out.truncate(mark);
                return Err(Reject::WrongType {
                    column: col.name.clone(),
                    detail: e,
                });
            }
        }
        let time_ms = time.and_then(|raw: &str| {
            let text = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                Some(between) if unescaped => Cow::Borrowed(between),
                _ => types::text_of(raw).ok()?,
            };
            if raw.starts_with('"') {
                time::event_ms(&text)
            } else {
                Some(time::instant(&text, false, &TimeZone::UTC).ok()?.unix_ms())
            }
        });
        Ok(Encoded { ignored, time_ms })
    }

    /// The keys of a line that no column takes (for `chtail check`).
    pub fn ignored_keys(&self, line: &[u8]) -> Vec<String> {
        let Ok(text) = std::str::from_utf8(line) else {
            return Vec::new();
        };
        match types::object_entries(text) {
            Ok(entries) => entries
                .into_iter()
                .map(|(k, _)| k.into_owned())
                .filter(|k| !self.index.contains_key(k))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn catch_all_type_ok(ty: &ColumnType) -> bool {
    match ty {
        ColumnType::String => true,
        ColumnType::Nullable(inner) => catch_all_type_ok(inner),
        ColumnType::Map(k, _) => matches!(**k, ColumnType::String),
        _ => false,
    }
}

/// The extra keys as one value: a JSON object for a String column, entries
/// for a Map column.
fn encode_catch_all(
    ty: &ColumnType,
    extras: &[(Cow<'_, str>, &RawValue)],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match ty {
        ColumnType::Nullable(inner) => {
            out.push(0);
            encode_catch_all(inner, extras, out)
        }
        ColumnType::Map(_, value) => {
            put_varint(out, extras.len() as u64);
            for (k, v) in extras {
                put_bytes(out, k.as_bytes());
                types::encode(value, Some(v.get()), out).map_err(|e| format!("key {k:?}: {e}"))?;
            }
            Ok(())
        }
        _ => {
            let mut text = String::from("{");
            for (n, (k, v)) in extras.iter().enumerate() {
                if n > 0 {
                    text.push(',');
                }
                text.push_str(&LineMeta::json(k));
                text.push(':');
                text.push_str(v.get());
            }
            text.push('}');
            put_bytes(out, text.as_bytes());
            Ok(())
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

/// Collects, for each column, the raw JSON text of its value.
struct FieldsSeed<'e, 'v, 'a> {
    encoder: &'e Encoder,
    slots: &'v mut [Option<&'a str>],
    /// Keys no column takes, when a catch-all column keeps them.
    extras: Option<&'v mut Vec<(Cow<'a, str>, &'a RawValue)>>,
    ignored: &'v mut u32,
    /// The value of the encoder's time key.
    time: &'v mut Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(types::Key(key)) = map.next_key::<types::Key<'de>>()? {
            if self.encoder.time_key.as_deref() == Some(key.as_ref()) {
                let raw = map.next_value::<&'de RawValue>()?.get();
                *self.time = Some(raw);
                if let Some((i, _)) = self.encoder.column_of(key.as_ref()) {
                    self.slots[i] = Some(raw);
                }
                continue;
            }
            match self.encoder.column_of(key.as_ref()) {
                Some((i, _)) => self.slots[i] = Some(map.next_value::<&'de RawValue>()?.get()),
                None => match self.extras.as_deref_mut() {
                    Some(extras) => extras.push((key, map.next_value::<&'de RawValue>()?)),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        *self.ignored += 1;
                    }
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc_with(cols: &[(&str, &str)], mapping: &config::Mapping) -> Encoder {
        let cols: Vec<(String, String)> = cols
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        Encoder::new(Arc::new(Schema::plain(&cols).unwrap()), mapping).unwrap()
    }

    fn enc(cols: &[(&str, &str)]) -> Encoder {
        enc_with(cols, &config::Mapping::default())
    }

    fn default_enc() -> Encoder {
        Encoder::plain(Arc::new(Schema::plain(&default_table_columns()).unwrap()))
    }

    fn row(e: &Encoder, line: &str) -> Result<Vec<u8>, Reject> {
        let mut out = Vec::new();
        e.encode_line(line.as_bytes(), &LineMeta::NONE, &mut out)?;
        Ok(out)
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        put_bytes(out, s.as_bytes());
    }

    #[test]
    fn the_design_example_encodes_in_column_order() {
        let line = r#"{"ts": "2026-11-22T10:00:00.123456+00:00", "event": "app_command", "guild_id": "123", "type": "application_command", "command": "ping", "duration_ms": 12.5, "extra": {"x": [1, 2]}}"#;
        let mut out = Vec::new();
        let done = default_enc()
            .encode_line(line.as_bytes(), &LineMeta::NONE, &mut out)
            .unwrap();
        assert_eq!(done.ignored, 1, "the `extra` key is counted");
        assert_eq!(done.time_ms, Some(1_795_341_600_123), "the event's time");
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
        let out = row(
            &default_enc(),
            r#"{"event":"interaction","guild_id":42,"duration_ms":null}"#,
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
        let out = row(
            &enc(&[("command", "String")]),
            r#"{"command":"a\"b\u00e9\n\u0000"}"#,
        )
        .unwrap();
        let mut want = Vec::new();
        string(&mut want, "a\"bé\n\0");
        assert_eq!(out, want);
    }

    /// A line's strings are taken between their quotes only when none of
    /// them has an escape: one escape anywhere, even in a key no column
    /// takes, and every string is decoded.
    #[test]
    fn one_escape_on_a_line_decodes_every_string() {
        let e = enc(&[("a", "String"), ("b", "String")]);
        for (line, a, b) in [
            (r#"{"a":"x\\y","b":"plain"}"#, "x\\y", "plain"),
            (r#"{"a":"plain","b":"q\"u"}"#, "plain", "q\"u"),
            (r#"{"z":"\n","a":"p","b":"\u00e9"}"#, "p", "é"),
            (r#"{"a":"p","b":"r"}"#, "p", "r"),
        ] {
            let mut want = Vec::new();
            string(&mut want, a);
            string(&mut want, b);
            assert_eq!(row(&e, line).unwrap(), want, "{line}");
        }
    }

    /// Each column type: what a JSON value becomes, byte for byte.
    #[test]
    fn every_type_encodes_as_clickhouse_reads_it() {
        let cases: &[(&str, &str, &[u8])] = &[
            ("FixedString(4)", r#""ab""#, b"ab\0\0"),
            ("LowCardinality(FixedString(2))", r#""ab""#, b"ab"),
            ("Int8", "-128", &[0x80]),
            ("UInt16", "65535", &[0xff, 0xff]),
            ("Int32", "-2", &[0xfe, 0xff, 0xff, 0xff]),
            ("UInt64", "18446744073709551615", &[0xff; 8]),
            ("Int128", "-1", &[0xff; 16]),
            ("Float32", "1.5", &[0, 0, 0xc0, 0x3f]),
            ("Bool", "true", &[1]),
            ("Decimal(9, 2)", "12.345", &[0xd2, 0x04, 0, 0]), // 1234, cut
            ("Decimal(18, 3)", r#""-1.5""#, &(-1500i64).to_le_bytes()),
            ("Decimal(38, 0)", "1e3", &1000i128.to_le_bytes()),
            ("Date", r#""1970-01-03""#, &[2, 0]),
            ("Date", "2", &[2, 0]),
            ("Date32", r#""1969-12-31""#, &(-1i32).to_le_bytes()),
            (
                "DateTime('UTC')",
                r#""2026-11-22T10:00:00Z""#,
                &1_795_341_600u32.to_le_bytes(),
            ),
            (
                "DateTime('Europe/Berlin')",
                r#""2026-11-22 11:00:00""#,
                &1_795_341_600u32.to_le_bytes(),
            ),
            ("DateTime", "1795341600000", &1_795_341_600u32.to_le_bytes()),
            (
                "DateTime64(3, 'UTC')",
                r#""2026-11-22T10:00:00.123456+00:00""#,
                &1_795_341_600_123i64.to_le_bytes(),
            ),
            (
                "DateTime64(6)",
                "1795341600.5",
                &1_795_341_600_500_000i64.to_le_bytes(),
            ),
            (
                "UUID",
                r#""00112233-4455-6677-8899-aabbccddeeff""#,
                &[
                    0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb,
                    0xaa, 0x99, 0x88,
                ],
            ),
            ("IPv4", r#""1.2.3.4""#, &[4, 3, 2, 1]),
            (
                "IPv6",
                r#""::1""#,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
            (
                "IPv6",
                r#""1.2.3.4""#,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4],
            ),
            ("Enum8('a' = 1, 'b\\'c' = -2)", r#""b'c""#, &[0xfe]),
            ("Enum16('a' = 1000)", "1000", &[0xe8, 0x03]),
            ("Nullable(UInt8)", "null", &[1]),
            ("Nullable(UInt8)", "7", &[0, 7]),
            ("Array(UInt8)", "[1,2,null]", &[3, 1, 2, 0]),
            (
                "Array(Nullable(String))",
                r#"["x",null]"#,
                &[2, 0, 1, b'x', 1],
            ),
            ("Array(Array(Int8))", "[[1],[]]", &[2, 1, 1, 0]),
            (
                "Map(String, UInt8)",
                r#"{"a":1,"b":2}"#,
                &[2, 1, b'a', 1, 1, b'b', 2],
            ),
            ("Map(UInt8, String)", r#"{"7":"x"}"#, &[1, 7, 1, b'x']),
            ("SimpleAggregateFunction(max, UInt8)", "9", &[9]),
        ];
        for (ty, value, want) in cases {
            let e = enc(&[("c", ty)]);
            let got = row(&e, &format!("{{\"c\":{value}}}"))
                .unwrap_or_else(|r| panic!("{ty} from {value}: {r}"));
            assert_eq!(&got, want, "{ty} from {value}");
        }
    }

    #[test]
    fn missing_values_take_type_defaults() {
        let cases: &[(&str, &[u8])] = &[
            ("FixedString(2)", &[0, 0]),
            ("Decimal(20, 2)", &[0; 16]),
            ("Date", &[0, 0]),
            ("DateTime64(3)", &[0; 8]),
            ("UUID", &[0; 16]),
            ("Enum8('b' = 2, 'a' = -1)", &[0xff]),
            ("Array(String)", &[0]),
            ("Map(String, String)", &[0]),
            ("Nullable(Date)", &[1]),
        ];
        for (ty, want) in cases {
            assert_eq!(&row(&enc(&[("c", ty)]), "{}").unwrap(), want, "{ty}");
            assert_eq!(
                &row(&enc(&[("c", ty)]), r#"{"c":null}"#).unwrap(),
                want,
                "{ty} null"
            );
        }
    }

    #[test]
    fn wrong_values_are_rejected_with_the_column_and_why() {
        let cases: &[(&str, &str, &str)] = &[
            ("Float64", r#""fast""#, "expected a number"),
            ("UInt8", "256", "out of range for UInt8"),
            ("Int8", "1.5", "expected an integer"),
            ("UInt32", "-1", "expected an unsigned integer"),
            ("FixedString(2)", r#""abc""#, "longer than FixedString(2)"),
            ("Decimal(4, 2)", "123.4", "does not fit Decimal(4, 2)"),
            ("Decimal(9, 2)", r#""1,5""#, "not a decimal number"),
            (
                "Date",
                r#""22/11/2026""#,
                "cannot read \"22/11/2026\" as a date",
            ),
            ("Date", "70000", "outside the range of Date"),
            (
                "DateTime",
                r#""yesterday""#,
                "cannot read \"yesterday\" as a timestamp",
            ),
            (
                "DateTime",
                r#""1960-01-01T00:00:00Z""#,
                "outside DateTime's range",
            ),
            ("DateTime64(3)", "true", "expected a timestamp"),
            ("UUID", r#""not-a-uuid""#, "is not a UUID"),
            ("IPv4", r#""300.1.1.1""#, "not an IPv4 address"),
            ("IPv6", r#""::g""#, "not an IP address"),
            ("Enum8('a' = 1)", r#""b""#, "not a value of the Enum"),
            ("Enum8('a' = 1)", "2", "not a value of the Enum"),
            ("Array(UInt8)", r#""1,2""#, "expected an array"),
            ("Array(UInt8)", "[1,300]", "element 1: 300 is out of range"),
            ("Map(String, UInt8)", "[1]", "expected an object"),
            ("Bool", r#""yes""#, "expected true or false"),
        ];
        for (ty, value, why) in cases {
            let err = row(&enc(&[("c", ty)]), &format!("{{\"c\":{value}}}")).unwrap_err();
            assert_eq!(err.kind().label(), "wrong_type", "{ty} {value}: {err}");
            let shown = err.to_string();
            assert!(shown.starts_with("column `c`: "), "{shown}");
            assert!(shown.contains(why), "{ty} {value}: {shown:?} lacks {why:?}");
        }
    }

    #[test]
    fn unsupported_types_are_named_at_start_up() {
        for ty in [
            "Tuple(UInt8, String)",
            "JSON",
            "Object('json')",
            "Array(Tuple(a UInt8))",
            "Dynamic",
            "DateTime('Mars/Base')",
            "Decimal(80, 2)",
        ] {
            let err = Schema::plain(&[("x".into(), ty.into())]).unwrap_err();
            assert_eq!(
                err[0].to_string(),
                format!("column `x` has type `{ty}`, which chtail cannot encode"),
            );
        }
    }

    #[test]
    fn rename_catch_all_and_metadata() {
        let mapping = config::Mapping {
            rename: vec![("guildId".into(), "guild".into())],
            catch_all: Some("rest".into()),
            metadata: config::Metadata {
                file: Some("src".into()),
                offset: Some("at".into()),
                host: Some("host".into()),
                ingest_time: Some("seen".into()),
            },
        };
        let e = enc_with(
            &[
                ("guild", "String"),
                ("rest", "String"),
                ("src", "LowCardinality(String)"),
                ("at", "UInt64"),
                ("host", "String"),
                ("seen", "DateTime64(3, 'UTC')"),
            ],
            &mapping,
        );
        let meta = LineMeta {
            path: r#""/var/log/a.jsonl""#,
            offset: 300,
            host: r#""box""#,
            ingest_time: r#""2026-11-22T10:00:00.250Z""#,
        };
        let mut out = Vec::new();
        let done = e
            .encode_line(
                br#"{"guildId":"g1","x":[1, 2],"y":{"z":"w"}}"#,
                &meta,
                &mut out,
            )
            .unwrap();
        assert_eq!(done.ignored, 0);
        let mut want = Vec::new();
        string(&mut want, "g1");
        string(&mut want, r#"{"x":[1, 2],"y":{"z":"w"}}"#);
        string(&mut want, "/var/log/a.jsonl");
        want.extend_from_slice(&300u64.to_le_bytes());
        string(&mut want, "box");
        want.extend_from_slice(&1_795_341_600_250i64.to_le_bytes());
        assert_eq!(out, want);

        // A Map catch-all keeps the values, strings unquoted.
        let e = enc_with(
            &[("a", "String"), ("rest", "Map(String, String)")],
            &config::Mapping {
                catch_all: Some("rest".into()),
                ..Default::default()
            },
        );
        let out = row(&e, r#"{"a":"1","b":"two","c":3}"#).unwrap();
        let mut want = Vec::new();
        string(&mut want, "1");
        want.push(2);
        string(&mut want, "b");
        string(&mut want, "two");
        string(&mut want, "c");
        string(&mut want, "3");
        assert_eq!(out, want);
    }

    #[test]
    fn mapping_problems_are_all_reported() {
        let schema = Arc::new(
            Schema::plain(&[("a".into(), "String".into()), ("n".into(), "UInt8".into())]).unwrap(),
        );
        let errs = Encoder::new(
            schema,
            &config::Mapping {
                rename: vec![("k".into(), "nope".into())],
                catch_all: Some("n".into()),
                metadata: config::Metadata {
                    host: Some("missing".into()),
                    ..Default::default()
                },
            },
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.contains("metadata.host names column `missing`"))
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("catch_all column `n` has type `UInt8`"))
        );
        assert!(errs.iter().any(|e| e.contains("column `nope`")));
    }

    #[test]
    fn defaults_format_marks_missing_values() {
        let defs = vec![
            ColumnDef {
                name: "a".into(),
                ty: "UInt8".into(),
                has_default: false,
            },
            ColumnDef {
                name: "b".into(),
                ty: "String".into(),
                has_default: true,
            },
            ColumnDef {
                name: "c".into(),
                ty: "Nullable(UInt8)".into(),
                has_default: false,
            },
        ];
        let schema = Schema::new(&defs, &TimeZone::UTC, true).unwrap();
        assert!(
            schema
                .insert_sql("db", "t", false)
                .ends_with("FORMAT RowBinaryWithDefaults")
        );
        let e = Encoder::plain(Arc::new(schema));
        // a present, b missing (server computes DEFAULT), c explicitly null.
        assert_eq!(row(&e, r#"{"a":5,"c":null}"#).unwrap(), vec![0, 5, 1, 0, 1]);
        // An old server: plain RowBinary, and the column is reported.
        let old = Schema::new(&defs, &TimeZone::UTC, false).unwrap();
        assert!(
            old.insert_sql("db", "t", false)
                .ends_with("FORMAT RowBinary")
        );
        assert_eq!(old.defaults_not_applied(), vec!["b"]);
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason_and_leave_no_bytes() {
        let e = default_enc();
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
            let err = e.encode_line(line, &LineMeta::NONE, &mut out).unwrap_err();
            assert_eq!(
                err.kind().label(),
                *kind,
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(out, vec![7]);
        }
    }

    #[test]
    fn every_reject_kind_is_counted_by_the_stats() {
        let all = [
            Reject::InvalidUtf8,
            Reject::InvalidJson(String::new()),
            Reject::NotAnObject,
            Reject::WrongType {
                column: String::new(),
                detail: String::new(),
            },
            Reject::TooLong { len: 0, max: 0 },
            Reject::Server(String::new()),
        ];
        let stats = crate::stats::Stats::default();
        for r in &all {
            stats.count_reject(r.kind());
        }
        assert_eq!(stats.quarantined(), all.len() as u64);
    }

    #[test]
    fn deep_nesting_is_handled_without_a_crash() {
        let e = default_enc();
        let open = "[".repeat(100_000);
        let close = "]".repeat(100_000);
        // Under a key chtail ignores: skipped, the row still goes in.
        let ignored = format!("{{\"x\":{open}{close},\"event\":\"e\"}}");
        row(&e, &ignored).unwrap();
        // As the line itself: not an object.
        let err = row(&e, &format!("{open}{close}")).unwrap_err();
        assert_eq!(err.kind(), RejectKind::NotAnObject);
        // Unbalanced: invalid.
        let err = row(&e, &format!("{{\"x\":{open}}}")).unwrap_err();
        assert_eq!(err.kind(), RejectKind::InvalidJson);
        // Deep inside a column chtail writes: kept as text, or refused by
        // the JSON reader's depth limit, never a crash.
        let deep = format!("{{\"command\":{open}{close}}}");
        let _ = row(&e, &deep);
    }

    /// Every type in one table, for the never-panics property below.
    const ALL_TYPES: &[(&str, &str)] = &[
        ("s", "String"),
        ("fs", "FixedString(3)"),
        ("i", "Int16"),
        ("u", "UInt64"),
        ("big", "Int256"),
        ("f", "Float32"),
        ("b", "Bool"),
        ("d", "Decimal(10, 3)"),
        ("wide", "Decimal(76, 10)"),
        ("day", "Date"),
        ("day32", "Date32"),
        ("t", "DateTime('America/New_York')"),
        ("t64", "DateTime64(9, 'UTC')"),
        ("id", "UUID"),
        ("v4", "IPv4"),
        ("v6", "IPv6"),
        ("e", "Enum8('x' = 1, 'y' = 2)"),
        ("n", "Nullable(Float64)"),
        ("a", "Array(Nullable(DateTime))"),
        ("m", "Map(String, Array(Int8))"),
    ];

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = default_enc().encode_line(&line, &LineMeta::NONE, &mut Vec::new());
            let _ = enc(ALL_TYPES).encode_line(&line, &LineMeta::NONE, &mut Vec::new());
        }

        /// Objects whose values are arbitrary JSON scalars and strings, for
        /// every column type: a row or a reason, never a panic, and a
        /// rejected line leaves no bytes behind.
        #[test]
        fn arbitrary_values_never_panic(
            values in proptest::collection::vec(
                prop_oneof![
                    any::<i64>().prop_map(|v| v.to_string()),
                    any::<u64>().prop_map(|v| v.to_string()),
                    any::<f64>().prop_map(|v| v.to_string()),
                    "[0-9eE.+-]{1,30}",
                    "\"[ -~]{0,30}\"",
                    "\"[0-9:T .,+Z-]{0,30}\"",
                    Just("null".to_string()),
                    Just("true".to_string()),
                    Just("[1,null,\"2\"]".to_string()),
                    Just("{\"k\":[1]}".to_string()),
                ],
                ALL_TYPES.len(),
            )
        ) {
            let e = enc(ALL_TYPES);
            let fields: Vec<String> = ALL_TYPES
                .iter()
                .zip(&values)
                .map(|((name, _), v)| format!("\"{name}\":{v}"))
                .collect();
            let line = format!("{{{}}}", fields.join(","));
            let mut out = vec![9];
            if e.encode_line(line.as_bytes(), &LineMeta::NONE, &mut out).is_err() {
                prop_assert_eq!(out, vec![9]);
            }
        }
    }
}
