//! Column types: reading ClickHouse's type names, and writing one JSON value
//! as one RowBinary value of a type.
//!
//! The rules follow what ClickHouse itself does with JSON input: a missing
//! key or `null` takes the type's default (NULL for Nullable), a string
//! column takes any JSON value (non-strings keep their JSON text), numbers
//! are range-checked, a number into a Date is a day count, and timestamps
//! are read as described in [`super::time`]. What cannot be written is an
//! error naming what was expected, and the line is quarantined.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use jiff::tz::TimeZone;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::reject::{quote_short, shown};
use super::time;

/// A column type chtail can encode.
#[derive(Debug, Clone)]
pub enum ColumnType {
    /// `String` (and `LowCardinality(String)`, the same in RowBinary).
    String,
    FixedString(usize),
    /// `Int8`…`Int256`, `UInt8`…`UInt256`.
    Int {
        bits: u16,
        signed: bool,
    },
    Float32,
    Float64,
    Bool,
    /// `Decimal(P, S)`: an integer of 4, 8, 16 or 32 bytes, scaled by 10^S.
    Decimal {
        precision: u8,
        scale: u8,
    },
    Date,
    Date32,
    DateTime(TimeZone),
    DateTime64 {
        precision: u8,
        tz: TimeZone,
    },
    Uuid,
    Ipv4,
    Ipv6,
    Enum {
        bits: u8,
        by_name: HashMap<String, i16>,
        /// Valid values, sorted; the first is the default.
        values: Vec<i16>,
    },
    Nullable(Box<ColumnType>),
    Array(Box<ColumnType>),
    Map(Box<ColumnType>, Box<ColumnType>),
}

/// Why a type name is not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl ColumnType {
    /// Parses a type name as `DESCRIBE TABLE` prints it. `server_tz` is the
    /// zone of DateTime columns that name none.
    pub fn parse(name: &str, server_tz: &TimeZone) -> Result<ColumnType, Unsupported> {
        let name = name.trim();
        let unsupported = || Unsupported(name.to_string());
        let (head, args) = match name.find('(') {
            Some(i) if name.ends_with(')') => (&name[..i], Some(&name[i + 1..name.len() - 1])),
            Some(_) => return Err(unsupported()),
            None => (name, None),
        };
        let args: Vec<&str> = args.map(split_args).unwrap_or_default();
        let one = |args: &[&str]| -> Result<ColumnType, Unsupported> {
            match args {
                [inner] => ColumnType::parse(inner, server_tz),
                _ => Err(unsupported()),
            }
        };
        let num = |s: &str| s.trim().parse::<u32>().map_err(|_| unsupported());
        Ok(match (head, args.len()) {
            ("String", 0) => ColumnType::String,
            ("FixedString", 1) => ColumnType::FixedString(num(args[0])? as usize),
            ("LowCardinality", 1) => one(&args)?,
            // The stored value is the argument type's; the function is the
            // server's business.
            ("SimpleAggregateFunction", 2) => ColumnType::parse(args[1], server_tz)?,
            ("Nullable", 1) => ColumnType::Nullable(Box::new(one(&args)?)),
            ("Array", 1) => ColumnType::Array(Box::new(one(&args)?)),
            ("Map", 2) => ColumnType::Map(
                Box::new(ColumnType::parse(args[0], server_tz)?),
                Box::new(ColumnType::parse(args[1], server_tz)?),
            ),
            ("Float32", 0) => ColumnType::Float32,
            ("Float64", 0) => ColumnType::Float64,
            ("Bool" | "Boolean", 0) => ColumnType::Bool,
            ("Date", 0) => ColumnType::Date,
            ("Date32", 0) => ColumnType::Date32,
            ("DateTime", 0) => ColumnType::DateTime(server_tz.clone()),
            ("DateTime", 1) => ColumnType::DateTime(zone(args[0]).ok_or_else(unsupported)?),
            ("DateTime64", 1 | 2) => {
                let precision = num(args[0])?;
                if precision > 9 {
                    return Err(unsupported());
                }
                let tz = match args.get(1) {
                    Some(z) => zone(z).ok_or_else(unsupported)?,
                    None => server_tz.clone(),
                };
                ColumnType::DateTime64 {
                    precision: u8::try_from(precision).map_err(|_| unsupported())?,
                    tz,
                }
            }
            ("Decimal", 2) => decimal(num(args[0])?, num(args[1])?).ok_or_else(unsupported)?,
            ("Decimal32", 1) => decimal(9, num(args[0])?).ok_or_else(unsupported)?,
            ("Decimal64", 1) => decimal(18, num(args[0])?).ok_or_else(unsupported)?,
            ("Decimal128", 1) => decimal(38, num(args[0])?).ok_or_else(unsupported)?,
            ("Decimal256", 1) => decimal(76, num(args[0])?).ok_or_else(unsupported)?,
            ("UUID", 0) => ColumnType::Uuid,
            ("IPv4", 0) => ColumnType::Ipv4,
            ("IPv6", 0) => ColumnType::Ipv6,
            ("Enum8", _) | ("Enum16", _) => {
                enum_type(if head == "Enum8" { 8 } else { 16 }, &args).ok_or_else(unsupported)?
            }
            (int, 0) => {
                let (signed, digits) = match int.strip_prefix("UInt") {
                    Some(d) => (false, d),
                    None => (true, int.strip_prefix("Int").ok_or_else(unsupported)?),
                };
                let bits: u16 = digits.parse().map_err(|_| unsupported())?;
                if ![8, 16, 32, 64, 128, 256].contains(&bits) {
                    return Err(unsupported());
                }
                ColumnType::Int { bits, signed }
            }
            _ => return Err(unsupported()),
        })
    }

    /// Whether a JSON `null` (or a missing key) is NULL rather than the
    /// default.
    pub fn is_nullable(&self) -> bool {
        matches!(self, ColumnType::Nullable(_))
    }
}

fn decimal(precision: u32, scale: u32) -> Option<ColumnType> {
    (1..=76)
        .contains(&precision)
        .then_some(())
        .filter(|()| scale <= precision)?;
    Some(ColumnType::Decimal {
        precision: u8::try_from(precision).ok()?,
        scale: u8::try_from(scale).ok()?,
    })
}

fn zone(arg: &str) -> Option<TimeZone> {
    let name = unquote(arg)?;
    TimeZone::get(&name).ok()
}

fn enum_type(bits: u8, args: &[&str]) -> Option<ColumnType> {
    let mut by_name = HashMap::new();
    let mut values = Vec::new();
    for a in args {
        let (name, value) = a.rsplit_once('=')?;
        let value: i16 = value.trim().parse().ok()?;
        if bits == 8 && i8::try_from(value).is_err() {
            return None;
        }
        by_name.insert(unquote(name)?, value);
        values.push(value);
    }
    values.sort_unstable();
    (!values.is_empty()).then_some(ColumnType::Enum {
        bits,
        by_name,
        values,
    })
}

/// `'text'` with `\'` and `\\` escapes, as ClickHouse prints literals.
fn unquote(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// Splits `a, b(c, d), 'e, f'` at its top-level commas.
fn split_args(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in s.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' => quoted = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// As [`encode`], for a value from a line known to hold no escape: a
/// string's text is then what lies between its quotes, taken without a
/// look for a backslash.
#[inline]
pub fn encode_unescaped(
    ty: &ColumnType,
    raw: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if let (ColumnType::String, Some(raw)) = (ty, raw)
        && let Some(text) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"'))
    {
        put_bytes(out, text.as_bytes());
        return Ok(());
    }
    encode(ty, raw, out)
}

/// Appends the RowBinary of one JSON value; `raw` is its JSON text, `None`
/// for a missing key.
pub fn encode(ty: &ColumnType, raw: Option<&str>, out: &mut Vec<u8>) -> Result<(), String> {
    let raw = raw.filter(|r| *r != "null");
    if let ColumnType::Nullable(inner) = ty {
        match raw {
            None => out.push(1),
            Some(_) => {
                out.push(0);
                encode(inner, raw, out)?;
            }
        }
        return Ok(());
    }
    let Some(raw) = raw else {
        write_default(ty, out);
        return Ok(());
    };
    match ty {
        ColumnType::Nullable(_) => unreachable!("handled above"),
        ColumnType::String => {
            put_bytes(out, text_of(raw)?.as_bytes());
        }
        ColumnType::FixedString(n) => {
            let text = text_of(raw)?;
            if text.len() > *n {
                return Err(format!(
                    "{} is {} bytes, longer than FixedString({n})",
                    quote_short(&text),
                    text.len()
                ));
            }
            out.extend_from_slice(text.as_bytes());
            out.resize(out.len() + n - text.len(), 0);
        }
        ColumnType::Float64 => out.extend_from_slice(&float(raw)?.to_le_bytes()),
        ColumnType::Float32 => out.extend_from_slice(&nearest_f32(float(raw)?).to_le_bytes()),
        ColumnType::Bool => out.push(match raw {
            "false" | "0" => 0,
            "true" | "1" => 1,
            r => return Err(format!("expected true or false, got {}", shown(r))),
        }),
        ColumnType::Int { bits, signed } => int(raw, *bits, *signed, out)?,
        ColumnType::Decimal { precision, scale } => {
            let text = number_text(raw)?;
            let v = decimal_value(&text, *precision, *scale)?;
            put_wide(out, v, decimal_bytes(*precision));
        }
        ColumnType::Date | ColumnType::Date32 => {
            let days = date(raw)?;
            let (lo, hi, bytes) = if matches!(ty, ColumnType::Date) {
                (0, 65_535, 2)
            } else {
                (-25_567, 120_529, 4) // 1900-01-01 ..= 2299-12-31
            };
            if !(lo..=hi).contains(&days) {
                return Err(format!(
                    "{} is outside the range of {}",
                    shown(raw),
                    if bytes == 2 { "Date" } else { "Date32" }
                ));
            }
            out.extend_from_slice(&days.to_le_bytes()[..bytes]);
        }
        ColumnType::DateTime(tz) => {
            let t = timestamp(raw, tz)?;
            let secs = u32::try_from(t.secs).map_err(|_| {
                format!("{} is outside DateTime's range (1970 to 2106)", shown(raw))
            })?;
            out.extend_from_slice(&secs.to_le_bytes());
        }
        ColumnType::DateTime64 { precision, tz } => {
            let t = timestamp(raw, tz)?;
            // 1900-01-01 ..= 2299-12-31 23:59:59, as ClickHouse allows.
            if !(-2_208_988_800..=10_413_791_999).contains(&t.secs) {
                return Err(format!(
                    "{} is outside DateTime64's range (1900 to 2299)",
                    shown(raw)
                ));
            }
            let unit = 10i64.pow(u32::from(*precision));
            let ticks = t.secs * unit + i64::from(t.nanos) / (1_000_000_000 / unit);
            out.extend_from_slice(&ticks.to_le_bytes());
        }
        ColumnType::Uuid => {
            let text = string_only(raw, "a UUID")?;
            let v = uuid(&text).ok_or_else(|| format!("{} is not a UUID", quote_short(&text)))?;
            // Two little-endian halves, high half first.
            out.extend_from_slice(&(v >> 64).to_le_bytes()[..8]);
            out.extend_from_slice(&v.to_le_bytes()[..8]);
        }
        ColumnType::Ipv4 => {
            let v = if raw.starts_with('"') {
                let text = string_only(raw, "an IPv4 address")?;
                u32::from(
                    text.parse::<Ipv4Addr>()
                        .map_err(|_| format!("{} is not an IPv4 address", quote_short(&text)))?,
                )
            } else {
                raw.parse::<u32>()
                    .map_err(|_| format!("expected an IPv4 address, got {}", shown(raw)))?
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        ColumnType::Ipv6 => {
            let text = string_only(raw, "an IPv6 address")?;
            let v = match text.parse::<Ipv6Addr>() {
                Ok(v) => v,
                Err(_) => text
                    .parse::<Ipv4Addr>()
                    .map(|v4| v4.to_ipv6_mapped())
                    .map_err(|_| format!("{} is not an IP address", quote_short(&text)))?,
            };
            out.extend_from_slice(&v.octets());
        }
        ColumnType::Enum {
            bits,
            by_name,
            values,
        } => {
            let v = if raw.starts_with('"') {
                let name = text_of(raw)?;
                *by_name
                    .get(name.as_ref())
                    .ok_or_else(|| format!("{} is not a value of the Enum", quote_short(&name)))?
            } else {
                raw.parse::<i16>()
                    .ok()
                    .filter(|v| values.binary_search(v).is_ok())
                    .ok_or_else(|| format!("{} is not a value of the Enum", shown(raw)))?
            };
            out.extend_from_slice(&v.to_le_bytes()[..usize::from(*bits / 8)]);
        }
        ColumnType::Array(inner) => {
            let items: Vec<&RawValue> = serde_json::from_str(raw)
                .map_err(|_| format!("expected an array, got {}", shown(raw)))?;
            put_varint(out, items.len() as u64);
            for (i, item) in items.iter().enumerate() {
                encode(inner, Some(item.get()), out).map_err(|e| format!("element {i}: {e}"))?;
            }
        }
        ColumnType::Map(key, value) => {
            let entries = object_entries(raw)
                .map_err(|_| format!("expected an object, got {}", shown(raw)))?;
            put_varint(out, entries.len() as u64);
            for (k, v) in &entries {
                encode_key(key, k, out)?;
                encode(value, Some(v.get()), out).map_err(|e| format!("key {k:?}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// A Map key: JSON object keys are strings; non-string key types read the
/// string's content (`{"42": …}` into `Map(UInt64, …)`).
fn encode_key(ty: &ColumnType, key: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let quoted = serde_json::to_string(key).map_err(|e| e.to_string())?;
    let as_json = match ty {
        ColumnType::Int { .. }
        | ColumnType::Float32
        | ColumnType::Float64
        | ColumnType::Decimal { .. }
        | ColumnType::Bool => key,
        _ => &quoted,
    };
    encode(ty, Some(as_json), out).map_err(|e| format!("key {key:?}: {e}"))
}

impl ColumnType {
    /// The size of every value of a fixed-size type, the same in RowBinary
    /// and in the Native format; `None` for variable-size types.
    pub fn fixed_width(&self) -> Option<usize> {
        Some(match self {
            ColumnType::FixedString(n) => *n,
            ColumnType::Int { bits, .. } => usize::from(*bits / 8),
            ColumnType::Float32
            | ColumnType::Date32
            | ColumnType::DateTime(_)
            | ColumnType::Ipv4 => 4,
            ColumnType::Float64 | ColumnType::DateTime64 { .. } => 8,
            ColumnType::Bool => 1,
            ColumnType::Date => 2,
            ColumnType::Decimal { precision, .. } => decimal_bytes(*precision),
            ColumnType::Uuid | ColumnType::Ipv6 => 16,
            ColumnType::Enum { bits, .. } => usize::from(*bits / 8),
            ColumnType::String
            | ColumnType::Nullable(_)
            | ColumnType::Array(_)
            | ColumnType::Map(..) => return None,
        })
    }
}

/// The type's default value, as ClickHouse fills a missing column.
pub fn write_default(ty: &ColumnType, out: &mut Vec<u8>) {
    match ty {
        ColumnType::Nullable(_) => out.push(1),
        ColumnType::String | ColumnType::Array(_) | ColumnType::Map(..) => out.push(0),
        ColumnType::Enum { bits, values, .. } => {
            out.extend_from_slice(&values[0].to_le_bytes()[..usize::from(*bits / 8)])
        }
        fixed => out.resize(out.len() + fixed.fixed_width().unwrap_or(0), 0),
    }
}

/// A string column's text: a JSON string unescaped, anything else as its
/// JSON text (a bot that writes `"guild_id": 123` still fills the column).
#[inline]
pub fn text_of(raw: &str) -> Result<Cow<'_, str>, String> {
    if let Some(inner) = raw.strip_prefix('"') {
        // Without escapes the text is what lies between the quotes (the
        // line was validated as JSON already); with them, decode.
        match inner.strip_suffix('"') {
            Some(text) if !super::flat::has_backslash(text) => Ok(Cow::Borrowed(text)),
            _ => unescaped(raw),
        }
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// A JSON string with escapes, decoded: out of line, so that [`text_of`]
/// stays small enough to inline on the hot path.
#[cold]
#[inline(never)]
fn unescaped(raw: &str) -> Result<Cow<'_, str>, String> {
    serde_json::from_str::<String>(raw)
        .map(Cow::Owned)
        .map_err(|e| e.to_string())
}

fn string_only<'a>(raw: &'a str, what: &str) -> Result<Cow<'a, str>, String> {
    if raw.starts_with('"') {
        text_of(raw)
    } else {
        Err(format!("expected {what} as a string, got {}", shown(raw)))
    }
}

fn is_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

fn float(raw: &str) -> Result<f64, String> {
    if let Some(v) = plain_decimal(raw) {
        return Ok(v);
    }
    if !is_number(raw) {
        return Err(format!("expected a number, got {}", shown(raw)));
    }
    raw.parse::<f64>()
        .map_err(|_| format!("expected a number, got {}", shown(raw)))
}

/// A number as bots write most (`-?digits(.digits)?`, 15 digits at most)
/// without the general parser: the digits as an integer, divided once by
/// a power of ten. Both are exact in an `f64`, so the one division rounds
/// correctly and the result is `parse`'s. `None` for anything else.
fn plain_decimal(raw: &str) -> Option<f64> {
    const TENS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, b) = match raw.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        b => (false, b),
    };
    let (mut m, mut digits, mut point) = (0u64, 0usize, None);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                digits += 1;
                if digits > 15 {
                    return None;
                }
            }
            b'.' if point.is_none() && i > 0 && i + 1 < b.len() => point = Some(b.len() - i - 1),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let v = m as f64 / TENS[point.unwrap_or(0)];
    Some(if negative { -v } else { v })
}

/// A Decimal's digits: a JSON number, or a string holding one (exact
/// decimals are often written as strings to survive JSON readers).
fn number_text(raw: &str) -> Result<Cow<'_, str>, String> {
    if is_number(raw) {
        Ok(Cow::Borrowed(raw))
    } else if raw.starts_with('"') {
        text_of(raw)
    } else {
        Err(format!("expected a number, got {}", shown(raw)))
    }
}

fn int(raw: &str, bits: u16, signed: bool, out: &mut Vec<u8>) -> Result<(), String> {
    let bytes = usize::from(bits / 8);
    let err_kind = || {
        format!(
            "expected {}, got {}",
            if signed {
                "an integer"
            } else {
                "an unsigned integer"
            },
            shown(raw)
        )
    };
    let range = || {
        format!(
            "{raw} is out of range for {}Int{bits}",
            if signed { "" } else { "U" }
        )
    };
    if signed {
        let v: i128 = raw.parse().map_err(|_| err_kind())?;
        if bits < 128 {
            let shift = 128 - u32::from(bits);
            if (v << shift) >> shift != v {
                return Err(range());
            }
        }
        put_wide(out, v, bytes);
    } else {
        let v: u128 = raw.parse().map_err(|_| err_kind())?;
        if bits < 128 && v >> bits != 0 {
            return Err(range());
        }
        out.extend_from_slice(&v.to_le_bytes()[..bytes.min(16)]);
        if bytes > 16 {
            out.resize(out.len() + bytes - 16, 0);
        }
    }
    Ok(())
}

/// The low `bytes` bytes of a two's-complement value, sign-extended past 16.
fn put_wide(out: &mut Vec<u8>, v: i128, bytes: usize) {
    let le = v.to_le_bytes();
    out.extend_from_slice(&le[..bytes.min(16)]);
    if bytes > 16 {
        let fill = if v < 0 { 0xff } else { 0 };
        out.resize(out.len() + bytes - 16, fill);
    }
}

fn decimal_bytes(precision: u8) -> usize {
    match precision {
        0..=9 => 4,
        10..=18 => 8,
        19..=38 => 16,
        _ => 32,
    }
}

/// An exact decimal scaled by 10^scale; extra fraction digits are cut off
/// (toward zero), as ClickHouse does.
pub fn decimal_value(text: &str, precision: u8, scale: u8) -> Result<i128, String> {
    let bad = || format!("{} is not a decimal number", quote_short(text));
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    // digits × 10^(exp − len(frac)), then scaled by 10^scale.
    let digits = format!("{int}{frac}");
    let shift =
        exp.saturating_sub(i64::try_from(frac.len()).unwrap_or(i64::MAX)) + i64::from(scale);
    let digits = digits.trim_start_matches('0');
    let kept: &str = if shift >= 0 {
        digits
    } else {
        let cut = usize::try_from(-shift).unwrap_or(usize::MAX);
        &digits[..digits.len().saturating_sub(cut)]
    };
    let limit = 10i128.pow(u32::from(precision.min(38)));
    let too_big = || {
        format!(
            "{} does not fit Decimal({precision}, {scale})",
            quote_short(text)
        )
    };
    let mut v: i128 = 0;
    for c in kept.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(c - b'0')))
            .ok_or_else(too_big)?;
    }
    if shift > 0 && v != 0 {
        for _ in 0..shift.min(80) {
            v = v.checked_mul(10).ok_or_else(too_big)?;
        }
    }
    if precision <= 38 && v >= limit {
        return Err(too_big());
    }
    Ok(if neg { -v } else { v })
}

fn date(raw: &str) -> Result<i64, String> {
    if is_number(raw) {
        // A number is a day count, as ClickHouse reads it.
        return raw
            .parse::<i64>()
            .map_err(|_| format!("expected a date, got {}", shown(raw)));
    }
    let text = string_only(raw, "a date")?;
    let w = time::parse_iso(&text)
        .ok_or_else(|| format!("cannot read {} as a date (YYYY-MM-DD)", quote_short(&text)))?;
    Ok(time::days_from_civil(w.year, w.month, w.day))
}

fn timestamp(raw: &str, tz: &TimeZone) -> Result<time::Instant, String> {
    if raw.starts_with('"') {
        time::instant(&text_of(raw)?, true, tz)
    } else if is_number(raw) {
        time::instant(raw, false, tz)
    } else {
        Err(format!("expected a timestamp, got {}", shown(raw)))
    }
}

fn uuid(text: &str) -> Option<u128> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    let hex: String = if t.len() == 36 {
        let b = t.as_bytes();
        if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        t.chars().filter(|c| *c != '-').collect()
    } else {
        t.to_string()
    };
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

/// A JSON object key, borrowed from the line unless it had escapes.
/// (`Cow<str>` itself always deserializes owned: one allocation per key.)
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The entries of a JSON object, in order, values as raw JSON text.
pub fn object_entries(raw: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, serde_json::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                out.push((k, map.next_value::<&'de RawValue>()?));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let v = (&mut de).deserialize_map(Entries)?;
    de.end()?;
    Ok(v)
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a Float32 column takes the nearest f32"
)]
fn nearest_f32(v: f64) -> f32 {
    v as f32
}

/// A String's RowBinary (and Native) form: its length, then its bytes.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    put_varint(out, s.len() as u64);
    extend_short(out, s);
}

/// Appends `s` to `out`. The values of a row are mostly under 64 bytes,
/// and for those two overlapping fixed-size moves cost less than a call to
/// `memcpy`. Only spare room already there is used: the buffer never
/// grows by more than `s`.
#[inline]
pub fn extend_short(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    let at = out.len();
    if n == 0 || n > 64 || out.capacity() - at < 64 {
        out.extend_from_slice(s);
        return;
    }
    out.extend_from_slice(&[0; 64]);
    let to = &mut out[at..at + 64];
    match n {
        1..=3 => {
            to[0] = s[0];
            to[n / 2] = s[n / 2];
            to[n - 1] = s[n - 1];
        }
        4..=7 => {
            to[..4].copy_from_slice(&s[..4]);
            to[n - 4..n].copy_from_slice(&s[n - 4..]);
        }
        8..=16 => {
            to[..8].copy_from_slice(&s[..8]);
            to[n - 8..n].copy_from_slice(&s[n - 8..]);
        }
        17..=32 => {
            to[..16].copy_from_slice(&s[..16]);
            to[n - 16..n].copy_from_slice(&s[n - 16..]);
        }
        _ => {
            to[..32].copy_from_slice(&s[..32]);
            to[n - 32..n].copy_from_slice(&s[n - 32..]);
        }
    }
    out.truncate(at + n);
}

/// ClickHouse's unsigned LEB128, used for string and array lengths.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short moves append exactly the bytes, at every length and with
    /// any spare room, and never grow the buffer more than needed.
    #[test]
    fn short_extends_append_exactly_the_bytes() {
        let source: Vec<u8> = (0..100u8)
            .map(|b| b.wrapping_mul(37).wrapping_add(1))
            .collect();
        for n in 0..=source.len() {
            for room in [0, 1, 63, 64, 200] {
                let mut out = Vec::with_capacity(3 + room);
                out.extend_from_slice(b"abc");
                let cap = out.capacity();
                extend_short(&mut out, &source[..n]);
                assert_eq!(&out[..3], b"abc");
                assert_eq!(&out[3..], &source[..n], "{n} bytes, {room} spare");
                if n <= cap - 3 {
                    assert_eq!(out.capacity(), cap, "{n} bytes, {room} spare");
                }
            }
        }
    }

    /// The short cut gives `parse`'s value, bit for bit, or leaves the text
    /// to it.
    #[test]
    fn plain_decimals_are_parsed_as_parse_does() {
        use proptest::prelude::*;
        proptest!(|(text in "-?[0-9]{0,18}(\\.[0-9]{0,18})?")| {
            let want = text.parse::<f64>().ok();
            if let Some(v) = plain_decimal(&text) {
                prop_assert_eq!(Some(v.to_bits()), want.map(f64::to_bits), "{}", text);
            }
        });
        for (text, v) in [
            ("15.5", 15.5),
            ("-0", -0.0),
            ("0.1", 0.1),
            ("999999999999999", 999_999_999_999_999.0),
        ] {
            assert_eq!(
                plain_decimal(text).map(f64::to_bits),
                Some(f64::to_bits(v)),
                "{text}"
            );
        }
        for text in [
            "",
            "-",
            ".5",
            "5.",
            "1e3",
            "1.2.3",
            "1234567890123456",
            "+1",
            "inf",
        ] {
            assert_eq!(plain_decimal(text), None, "{text}");
        }
    }
}
