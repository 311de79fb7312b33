//! The Native format: a batch's RowBinary rows, regrouped column by column
//! as the body of an INSERT.
//!
//! Why (README, "Performance"): ClickHouse parses RowBinary one value at a
//! time, and a LowCardinality column costs it a dictionary lookup per row;
//! a Native block it takes in whole columns. Measured on ClickHouse 18.16,
//! the same 2,000,000 rows cost the server 0.92 CPU-seconds per million as
//! RowBinary over HTTP and 0.42 as Native. chtail still encodes each line
//! into a RowBinary row (one format for the queue, the quarantine's bisect
//! and replay); the regrouping happens as the INSERT is sent, a block of
//! block of about [`BLOCK_BYTES`] at a time, so it costs no memory beyond
//! one block. The server squashes the blocks of one INSERT into parts of up to
//! `min_insert_block_size_rows` rows, so small blocks make no more parts.
//!
//! A block is cut where its rows' RowBinary bytes reach [`BLOCK_BYTES`]
//! (or at [`MAX_BLOCK_ROWS`]), counted from the first row of the batch, and
//! each LowCardinality dictionary lists its values in the
//! order they first appear: the same rows always make the same bytes, so a
//! replayed batch is the same INSERT (invariant 3).
//!
//! Only tables whose every column has a layout here go Native; any other
//! (arrays, maps, `LowCardinality` of anything but `String`, or rows that
//! need `RowBinaryWithDefaults`) are sent as RowBinary, as before.

use std::collections::HashMap;

use bytes::Bytes;

use crate::parse::{ColumnType, Schema, extend_short, put_bytes, put_varint};

/// A block is cut once its rows reach this many RowBinary bytes: the block
/// and its compressed copy then stay under the allocator's mmap threshold
/// (128 KiB, main.rs) and are served from the heap instead of fresh pages.
/// Measured on the bot's events against blocks of 16,384 rows (about 1.2
/// MB): 1.31-1.36 CPU-seconds for 2,000,000 events instead of 1.48-1.53,
/// the server's CPU unchanged.
pub const BLOCK_BYTES: usize = 96 << 10;
/// And at this many rows, whatever their size.
pub const MAX_BLOCK_ROWS: usize = 65_536;

/// How one column's values lie in a RowBinary row and in a Native block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// The same bytes in both, a value of `width` bytes or (`None`) a
    /// varint length and the bytes. `nullable`: a flag byte and, when 0,
    /// the value in RowBinary; a null map, then every row's value (the
    /// type's default for a null) in Native.
    Value {
        width: Option<usize>,
        nullable: bool,
    },
    /// `LowCardinality(String)`: a string in RowBinary; a dictionary and an
    /// index per row in Native.
    LowCardinality,
}

#[derive(Debug)]
struct Column {
    name: String,
    type_name: String,
    wire: Wire,
}

/// The Native layout of a table's insertable columns.
#[derive(Debug)]
pub struct Layout {
    columns: Vec<Column>,
}

/// Rows that do not walk as the layout says: a bug in chtail, not bad data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "encoded rows do not match the table's layout: {}",
            self.0
        )
    }
}

impl Layout {
    /// The layout of `schema`, or `None` when a column has none here or
    /// the rows carry per-value DEFAULT markers.
    pub fn new(schema: &Schema) -> Option<Layout> {
        if schema.with_defaults() {
            return None;
        }
        let columns = schema
            .columns()
            .iter()
            .map(|c| {
                Some(Column {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    wire: wire(&c.type_name, &c.ty)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Layout { columns })
    }

    /// The Native blocks of the rows in `parts` (each a run of whole
    /// RowBinary rows), cut at [`BLOCK_BYTES`], made as they are taken.
    pub fn blocks<'a>(&'a self, parts: &'a [Bytes]) -> Blocks<'a> {
        Blocks {
            layout: self,
            parts,
            part: 0,
            at: 0,
            builders: self.columns.iter().map(|c| Builder::new(c.wire)).collect(),
        }
    }

    /// Native blocks of rows given part by part (a stream's chunks as they
    /// come): cut exactly as [`Layout::blocks`] cuts the same rows however
    /// they are split into parts, so a stream read again makes the same
    /// blocks.
    pub fn cutter(&self) -> Cutter<'_> {
        Cutter {
            blocks: self.blocks(&[]),
            rows: 0,
            bytes: 0,
        }
    }
}

/// See [`Layout::cutter`].
pub struct Cutter<'a> {
    blocks: Blocks<'a>,
    rows: usize,
    bytes: usize,
}

impl Cutter<'_> {
    /// Takes the rows of `part`; the blocks they complete go to `out`.
    pub fn push(&mut self, part: &[u8], out: &mut Vec<Bytes>) -> Result<(), Malformed> {
        let mut at = 0;
        while at < part.len() {
            let len = self.blocks.take_row(&part[at..])?;
            if len == 0 {
                return Err(Malformed("a row of no bytes".into()));
            }
            at += len;
            self.rows += 1;
            self.bytes += len;
            if self.rows >= MAX_BLOCK_ROWS || self.bytes >= BLOCK_BYTES {
                out.push(self.blocks.finish(self.rows));
                self.rows = 0;
                self.bytes = 0;
            }
        }
        Ok(())
    }

    /// The last block, of the rows taken since the last one was cut.
    pub fn end(&mut self) -> Option<Bytes> {
        let rows = std::mem::take(&mut self.rows);
        self.bytes = 0;
        (rows > 0).then(|| self.blocks.finish(rows))
    }
}

fn wire(type_name: &str, ty: &ColumnType) -> Option<Wire> {
    if let Some(inner) = type_name
        .strip_prefix("LowCardinality(")
        .and_then(|t| t.strip_suffix(')'))
    {
        return (inner == "String").then_some(Wire::LowCardinality);
    }
    let (ty, nullable) = match ty {
        ColumnType::Nullable(inner) => (inner.as_ref(), true),
        t => (t, false),
    };
    let width = match ty {
        ColumnType::String => None,
        t => Some(t.fixed_width()?),
    };
    Some(Wire::Value { width, nullable })
}

/// One column of the block being built.
enum Builder {
    /// The column's bytes as Native has them (for nullable columns, the
    /// values after the null map).
    Plain {
        /// The value's width (`None`: a varint length and the bytes).
        width: Option<usize>,
        data: Vec<u8>,
        /// The null map, for a nullable column.
        nulls: Option<Vec<u8>>,
    },
    LowCardinality {
        /// Value → index; index 0 is the empty string, as the server's own
        /// dictionaries have it.
        index: Dictionary,
        /// The dictionary's values in index order, each a varint and bytes.
        keys: Vec<u8>,
        rows: Vec<u32>,
    },
}

impl Builder {
    fn new(wire: Wire) -> Builder {
        match wire {
            Wire::LowCardinality => {
                let mut b = Builder::LowCardinality {
                    index: Dictionary::default(),
                    keys: Vec::new(),
                    rows: Vec::new(),
                };
                b.clear();
                b
            }
            Wire::Value { width, nullable } => Builder::Plain {
                width,
                data: Vec::new(),
                nulls: nullable.then(Vec::new),
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Builder::Plain { data, nulls, .. } => {
                data.clear();
                if let Some(n) = nulls {
                    n.clear();
                }
            }
            Builder::LowCardinality { index, keys, rows } => {
                index.clear();
                keys.clear();
                rows.clear();
                keys.push(0);
            }
        }
    }
}

/// A LowCardinality column's values in the order they first appeared.
#[derive(Default)]
struct Dictionary {
    values: Vec<Vec<u8>>,
    /// Value → index, once there are more than [`Dictionary::SMALL`]: a few
    /// values are found faster by comparing them all.
    by_value: HashMap<Vec<u8>, u32, foldhash::fast::FixedState>,
}

impl Dictionary {
    const SMALL: usize = 16;

    /// Empty but for the empty string, at 0.
    fn clear(&mut self) {
        self.values.clear();
        self.by_value.clear();
        self.values.push(Vec::new());
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    /// The index of `v`, and whether it was new.
    fn index_of(&mut self, v: &[u8]) -> Result<(u32, bool), Malformed> {
        let found = if self.values.len() <= Self::SMALL {
            self.values
                .iter()
                .position(|x| crate::parse::flat::same_bytes(x, v))
        } else {
            self.by_value.get(v).map(|&i| i as usize)
        };
        if let Some(i) = found {
            return Ok((u32::try_from(i).unwrap_or(u32::MAX), false));
        }
        let i = u32::try_from(self.values.len())
            .map_err(|_| Malformed("dictionary too large".into()))?;
        self.values.push(v.to_vec());
        if self.values.len() > Self::SMALL {
            if self.by_value.is_empty() {
                for (j, x) in self.values.iter().enumerate() {
                    self.by_value
                        .insert(x.clone(), u32::try_from(j).unwrap_or(u32::MAX));
                }
            } else {
                self.by_value.insert(v.to_vec(), i);
            }
        }
        Ok((i, true))
    }
}

/// A varint at the start of `b`: its value and its length.
#[inline]
fn varint(b: &[u8]) -> Option<(usize, usize)> {
    match b.first() {
        Some(&v) if v < 0x80 => Some((usize::from(v), 1)),
        _ => long_varint(b),
    }
}

#[cold]
fn long_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((usize::try_from(v).ok()?, i + 1));
        }
    }
    None
}

/// The value at the start of `b`: `width` bytes, or a varint length and
/// the bytes.
#[inline]
fn value(width: Option<usize>, b: &[u8]) -> Option<&[u8]> {
    match width {
        Some(n) => b.get(..n),
        None => {
            let (len, w) = varint(b)?;
            b.get(..w + len)
        }
    }
}

/// The Native blocks of a batch's rows; see [`Layout::blocks`].
pub struct Blocks<'a> {
    layout: &'a Layout,
    parts: &'a [Bytes],
    part: usize,
    at: usize,
    builders: Vec<Builder>,
}

impl Blocks<'_> {
    /// Takes one row from `row` (the rest of a part) into the builders;
    /// returns its length.
    fn take_row(&mut self, row: &[u8]) -> Result<usize, Malformed> {
        let mut at = 0;
        let columns = &self.layout.columns;
        let short = |i: usize| Malformed(format!("row cut short in {}", columns[i].name));
        for (i, b) in self.builders.iter_mut().enumerate() {
            match b {
                Builder::Plain { width, data, nulls } => {
                    let mut flag = 0;
                    if let Some(nulls) = nulls {
                        flag = *row.get(at).ok_or_else(|| short(i))?;
                        nulls.push(flag);
                        at += 1;
                    }
                    if flag == 0 {
                        let v = value(*width, &row[at..]).ok_or_else(|| short(i))?;
                        extend_short(data, v);
                        at += v.len();
                    } else {
                        // A null's place holds the type's default.
                        data.resize(data.len() + width.unwrap_or(1), 0);
                    }
                }
                Builder::LowCardinality { index, keys, rows } => {
                    let all = value(None, &row[at..]).ok_or_else(|| short(i))?;
                    let (_, w) = varint(all).ok_or_else(|| short(i))?;
                    let (i, new) = index.index_of(&all[w..])?;
                    if new {
                        keys.extend_from_slice(all);
                    }
                    rows.push(i);
                    at += all.len();
                }
            }
        }
        Ok(at)
    }

    /// The block of the rows taken so far; the builders are emptied.
    fn finish(&mut self, rows: usize) -> Bytes {
        let size: usize = self
            .builders
            .iter()
            .map(|b| match b {
                Builder::Plain { data, nulls, .. } => {
                    data.len() + nulls.as_ref().map_or(0, Vec::len)
                }
                Builder::LowCardinality { keys, rows, .. } => keys.len() + rows.len() * 4 + 32,
            })
            .sum::<usize>()
            + self
                .layout
                .columns
                .iter()
                .map(|c| c.name.len() + c.type_name.len() + 4)
                .sum::<usize>()
            + 20;
        let mut out = Vec::with_capacity(size);
        put_varint(&mut out, self.layout.columns.len() as u64);
        put_varint(&mut out, rows as u64);
        for (col, b) in self.layout.columns.iter().zip(&mut self.builders) {
            put_bytes(&mut out, col.name.as_bytes());
            put_bytes(&mut out, col.type_name.as_bytes());
            match b {
                Builder::Plain { data, nulls, .. } => {
                    if let Some(n) = nulls {
                        out.extend_from_slice(n);
                    }
                    out.extend_from_slice(data);
                }
                Builder::LowCardinality { index, keys, rows } => {
                    // The serialization's version: shared dictionaries with
                    // additional keys.
                    out.extend_from_slice(&1u64.to_le_bytes());
                    // The index width, then: the block carries its own keys
                    // (1 << 9) and they replace any earlier ones (1 << 10).
                    let (width, code) = match index.len() {
                        0..=0x100 => (1, 0),
                        0x101..=0x1_0000 => (2, 1),
                        _ => (4, 2),
                    };
                    let code: u64 = code | 1 << 9 | 1 << 10;
                    out.extend_from_slice(&code.to_le_bytes());
                    out.extend_from_slice(&(index.len() as u64).to_le_bytes());
                    out.extend_from_slice(keys);
                    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
                    // By width, so that each is one loop without a copy call
                    // per row (the indexes fit: the width follows the size).
                    match width {
                        1 => out.extend(rows.iter().map(|&i| i.to_le_bytes()[0])),
                        2 => {
                            for &i in rows.iter() {
                                out.extend_from_slice(&i.to_le_bytes()[..2]);
                            }
                        }
                        _ => {
                            for &i in rows.iter() {
                                out.extend_from_slice(&i.to_le_bytes());
                            }
                        }
                    }
                }
            }
            b.clear();
        }
        Bytes::from(out)
    }
}

impl Iterator for Blocks<'_> {
    type Item = Result<Bytes, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let (mut rows, mut bytes) = (0, 0);
        while rows < MAX_BLOCK_ROWS && bytes < BLOCK_BYTES {
            // Borrowed from the batch, not from `self`: no clone per row.
            let parts = self.parts;
            let Some(part) = parts.get(self.part) else {
                break;
            };
            if self.at >= part.len() {
                self.part += 1;
                self.at = 0;
                continue;
            }
            match self.take_row(&part[self.at..]) {
                Ok(len) if len > 0 => {
                    self.at += len;
                    bytes += len;
                }
                Ok(_) => return Some(Err(Malformed("a row of no bytes".into()))),
                Err(e) => return Some(Err(e)),
            }
            rows += 1;
        }
        (rows > 0).then(|| Ok(self.finish(rows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(cols: &[(&str, &str)]) -> Schema {
        let cols: Vec<(String, String)> = cols
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Schema::plain(&cols).expect("schema")
    }

    fn rb_str(out: &mut Vec<u8>, s: &str) {
        out.push(u8::try_from(s.len()).unwrap());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn layouts() {
        let default = Schema::plain(&crate::parse::default_table_columns()).unwrap();
        assert!(
            Layout::new(&default).is_some(),
            "the default table goes Native"
        );
        assert!(Layout::new(&schema(&[("a", "Array(String)")])).is_none());
        assert!(Layout::new(&schema(&[("a", "LowCardinality(Nullable(String))")])).is_none());
        assert!(Layout::new(&schema(&[("a", "Map(String, UInt8)")])).is_none());
        let l = Layout::new(&schema(&[
            ("a", "String"),
            ("b", "LowCardinality(String)"),
            ("c", "Nullable(Int32)"),
            ("d", "Nullable(String)"),
            ("e", "DateTime64(3, 'UTC')"),
            ("f", "Decimal(20, 2)"),
        ]))
        .expect("a layout");
        let wires: Vec<Wire> = l.columns.iter().map(|c| c.wire).collect();
        assert_eq!(
            wires,
            [
                Wire::Value {
                    width: None,
                    nullable: false
                },
                Wire::LowCardinality,
                Wire::Value {
                    width: Some(4),
                    nullable: true
                },
                Wire::Value {
                    width: None,
                    nullable: true
                },
                Wire::Value {
                    width: Some(8),
                    nullable: false
                },
                Wire::Value {
                    width: Some(16),
                    nullable: false
                },
            ]
        );
    }

    /// The bytes the server itself writes for the same block (a
    /// `SELECT … FORMAT Native` of ClickHouse 18.16, cut to three rows).
    #[test]
    fn a_block_is_what_the_server_writes() {
        let l = Layout::new(&schema(&[
            ("s", "String"),
            ("e", "LowCardinality(String)"),
            ("n", "Nullable(UInt8)"),
            ("f", "Float64"),
        ]))
        .unwrap();
        let mut rows = Vec::new();
        for (s, e, n, f) in [
            ("x", "interaction", Some(7u8), 1.5f64),
            ("yy", "app_command", None, 2.0),
            ("", "interaction", Some(0), -1.0),
        ] {
            rb_str(&mut rows, s);
            rb_str(&mut rows, e);
            match n {
                Some(v) => rows.extend_from_slice(&[0, v]),
                None => rows.push(1),
            }
            rows.extend_from_slice(&f.to_le_bytes());
        }
        // Split the rows over two parts, as chunks are.
        let first = 2 + 12 + 2 + 8;
        let parts = [
            Bytes::copy_from_slice(&rows[..first]),
            Bytes::copy_from_slice(&rows[first..]),
        ];
        let blocks: Vec<Bytes> = l.blocks(&parts).map(Result::unwrap).collect();
        assert_eq!(blocks.len(), 1);
        let mut want = vec![4, 3];
        rb_str(&mut want, "s");
        rb_str(&mut want, "String");
        for s in ["x", "yy", ""] {
            rb_str(&mut want, s);
        }
        rb_str(&mut want, "e");
        rb_str(&mut want, "LowCardinality(String)");
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&0x600u64.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        for k in ["", "interaction", "app_command"] {
            rb_str(&mut want, k);
        }
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&[1, 2, 1]);
        rb_str(&mut want, "n");
        rb_str(&mut want, "Nullable(UInt8)");
        want.extend_from_slice(&[0, 1, 0, 7, 0, 0]);
        rb_str(&mut want, "f");
        rb_str(&mut want, "Float64");
        for f in [1.5f64, 2.0, -1.0] {
            want.extend_from_slice(&f.to_le_bytes());
        }
        assert_eq!(blocks[0].as_ref(), want.as_slice());
    }

    #[test]
    fn blocks_are_cut_by_size_from_the_batch_start() {
        let l = Layout::new(&schema(&[("v", "UInt32")])).unwrap();
        let n = BLOCK_BYTES / 4 * 2 + 5;
        let all: Vec<u8> = (0..n)
            .flat_map(|i| u32::try_from(i).unwrap().to_le_bytes())
            .collect();
        // However the rows are split into parts, the blocks are the same.
        let one = [Bytes::from(all.clone())];
        let many: Vec<Bytes> = all.chunks(4 * 1000).map(Bytes::copy_from_slice).collect();
        let a: Vec<Bytes> = l.blocks(&one).map(Result::unwrap).collect();
        let b: Vec<Bytes> = l.blocks(&many).map(Result::unwrap).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        // Given part by part, as a stream gets them, in other cuts still.
        for size in [4 * 777, 4 * 30_000] {
            let mut cutter = l.cutter();
            let mut c = Vec::new();
            for part in all.chunks(size) {
                cutter.push(part, &mut c).unwrap();
            }
            c.extend(cutter.end());
            assert_eq!(a, c, "parts of {size} bytes");
        }
        assert_eq!(&a[2][..2], &[1, 5]);
        assert!(l.blocks(&[]).next().is_none());
        // Tiny rows: cut by count.
        let l = Layout::new(&schema(&[("v", "UInt8")])).unwrap();
        let tiny = [Bytes::from(vec![7u8; MAX_BLOCK_ROWS + 1])];
        assert_eq!(l.blocks(&tiny).count(), 2);
    }

    /// Many values: the dictionary switches to hashing and the indexes to
    /// two bytes, and every row still names its own value.
    #[test]
    fn large_dictionaries() {
        let l = Layout::new(&schema(&[("e", "LowCardinality(String)")])).unwrap();
        let values: Vec<String> = (0..300).map(|i| format!("v{}", i % 300)).collect();
        let mut rows = Vec::new();
        for v in values.iter().chain(values.iter().rev()) {
            rb_str(&mut rows, v);
        }
        let blocks: Vec<Bytes> = l.blocks(&[Bytes::from(rows)]).map(Result::unwrap).collect();
        assert_eq!(blocks.len(), 1);
        let b = &blocks[0][..];
        let head = 2 + 2 + 1 + "LowCardinality(String)".len() + 1;
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        assert_eq!(u64_at(head), 1);
        assert_eq!(u64_at(head + 8), 1 | 1 << 9 | 1 << 10, "UInt16 indexes");
        assert_eq!(u64_at(head + 16), 301, "300 values and the empty one");
        let mut at = head + 24;
        let mut keys = Vec::new();
        for _ in 0..301 {
            let n = usize::from(b[at]);
            keys.push(
                std::str::from_utf8(&b[at + 1..at + 1 + n])
                    .unwrap()
                    .to_string(),
            );
            at += 1 + n;
        }
        assert_eq!(u64_at(at), 600);
        at += 8;
        let got: Vec<&str> = (0..600)
            .map(|r| {
                let i = u16::from_le_bytes([b[at + 2 * r], b[at + 2 * r + 1]]);
                keys[usize::from(i)].as_str()
            })
            .collect();
        let want: Vec<&str> = values
            .iter()
            .chain(values.iter().rev())
            .map(String::as_str)
            .collect();
        assert_eq!(got, want);
        assert_eq!(at + 1200, b.len());
    }

    #[test]
    fn malformed_rows_are_an_error_not_a_panic() {
        let l = Layout::new(&schema(&[("s", "String"), ("v", "UInt32")])).unwrap();
        let parts = [Bytes::from_static(&[5, b'a', b'b'])];
        assert!(l.blocks(&parts).next().unwrap().is_err());
    }
}
