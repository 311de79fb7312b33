//! The fast path for the lines a bot writes: one flat JSON object, keys
//! without escapes, values that are strings, numbers, `true`, `false` or
//! `null`.
//!
//! It finds each value's raw text (as serde_json's `RawValue` would) in one
//! pass over the bytes, checking the JSON grammar as it goes. Anything else
//! (a nested object or array, an escaped key, a value or byte it would have
//! to reject) makes it give up, and the line takes serde_json's path, which
//! accepts exactly what it accepted before and names the error; so the fast
//! path never decides that a line is bad. Measured with `cargo bench
//! --bench line_path` (README, "Performance").

/// JSON's insignificant whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` (read little-endian) that is `"`, `\`
/// or a control character. Only the lowest one is exact (a borrow can mark
/// bytes above it), which is all [`stop`] reads.
fn specials(w: u64) -> u64 {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    (zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below_space) & HIGHS
}

/// The high bit set in each byte of `x` that is zero (and maybe in bytes
/// above a zero one, which no caller minds).
fn zero(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Whether a value's text has an escape to decode (eight bytes at a time:
/// faster on short values than `contains`' search).
pub(super) fn has_backslash(text: &str) -> bool {
    let backslashes = ONES * u64::from(b'\\');
    let mut words = text.as_bytes().chunks_exact(8);
    let found = words.by_ref().any(|w| {
        let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        zero(w ^ backslashes) != 0
    });
    // Under eight bytes: a loop, not `contains`' call to `memchr`.
    found
        || words
            .remainder()
            .iter()
            .fold(false, |seen, &b| seen | (b == b'\\'))
}

/// Where the first `"`, `\` or control character at or after `at` is:
/// eight bytes at a time (strings are short, so a vector search's setup
/// costs more than it saves), then byte by byte near the end.
fn stop(b: &[u8], mut at: usize) -> Option<usize> {
    while let Some(word) = b.get(at..at + 8) {
        let m = specials(u64::from_le_bytes(word.try_into().ok()?));
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = b.get(at..)?;
    let i = rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    Some(at + i)
}

/// Whether `a` and `b` hold the same bytes: keys and dictionary values are
/// short, and two overlapping loads of each cost less than a call to
/// `memcmp`.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word4(s: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(s[at..at + 4].try_into().expect("four bytes"))
    }
    fn word8(s: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(s[at..at + 8].try_into().expect("eight bytes"))
    }
    fn word16(s: &[u8], at: usize) -> u128 {
        u128::from_le_bytes(s[at..at + 16].try_into().expect("sixteen bytes"))
    }
    let n = a.len();
    if b.len() != n {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        17..=32 => word16(a, 0) == word16(b, 0) && word16(a, n - 16) == word16(b, n - 16),
        _ => a == b,
    }
}

struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    at: usize,
    /// Whether a string value so far had an escape.
    escaped: bool,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while self.b.get(self.at).is_some_and(|&c| is_ws(c)) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    /// The string starting at the cursor (a `"`), quotes included. `None`
    /// for a raw control character or an escape JSON does not have; with
    /// `plain`, also for any escape.
    fn string(&mut self, plain: bool) -> Option<usize> {
        let start = self.at;
        self.at += 1;
        loop {
            self.at = stop(self.b, self.at)?;
            let c = self.b[self.at];
            if c < 0x20 {
                return None;
            }
            if c == b'"' {
                self.at += 1;
                return Some(start);
            }
            if plain {
                return None;
            }
            self.escaped = true;
            match *self.b.get(self.at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                b'u' => {
                    let hex = self.b.get(self.at + 2..self.at + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.at += 6;
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// A number as JSON writes it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE]
    /// [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.at..self.at + word.len())? == word {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// One value's raw text.
    fn value(&mut self) -> Option<&'a str> {
        let start = self.at;
        match self.peek()? {
            b'"' => {
                self.string(false)?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => self.number()?,
        }
        // Only ASCII delimits a value, so both ends are char boundaries.
        self.s.get(start..self.at)
    }
}

/// Walks the object on `line` (valid UTF-8), calling `field(key, raw)` for
/// each key and value in order. `None` if the line is not a flat object
/// this path takes (serde_json's path then reads it); else whether any
/// string value had an escape (without one, a string's text is what lies
/// between its quotes).
pub(super) fn fields<'a>(
    line: &'a str,
    mut field: impl FnMut(&'a str, &'a str),
) -> Option<Escapes> {
    let mut c = Cursor {
        s: line,
        b: line.as_bytes(),
        at: 0,
        escaped: false,
    };
    c.skip_ws();
    if c.peek()? != b'{' {
        return None;
    }
    c.at += 1;
    c.skip_ws();
    if c.peek()? == b'}' {
        c.at += 1;
    } else {
        loop {
            if c.peek()? != b'"' {
                return None;
            }
            let start = c.string(true)?;
            let key = line.get(start + 1..c.at - 1)?;
            c.skip_ws();
            if c.peek()? != b':' {
                return None;
            }
            c.at += 1;
            c.skip_ws();
            let raw = c.value()?;
            field(key, raw);
            c.skip_ws();
            match c.peek()? {
                b',' => {
                    c.at += 1;
                    c.skip_ws();
                }
                b'}' => {
                    c.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    c.skip_ws();
    (c.at == line.len()).then_some(if c.escaped {
        Escapes::Maybe
    } else {
        Escapes::None
    })
}

/// Whether a line's string values may hold escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escapes {
    None,
    Maybe,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(line: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        fields(line, |k, v| out.push((k.to_string(), v.to_string())))?;
        Some(out)
    }

    #[test]
    fn the_bots_lines_are_walked() {
        let got = walk(
            r#"{"ts": "2026-11-22T10:00:00.1+00:00", "n": -1.5e+3, "ok": true, "x": null, "s": "a\"b\u00e9", "z": 0}"#,
        )
        .unwrap();
        let want = [
            ("ts", r#""2026-11-22T10:00:00.1+00:00""#),
            ("n", "-1.5e+3"),
            ("ok", "true"),
            ("x", "null"),
            ("s", r#""a\"b\u00e9""#),
            ("z", "0"),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        assert_eq!(walk(" { } ").unwrap(), vec![]);
        assert_eq!(walk("{\"é\":\"ü\"}").unwrap().len(), 1);
    }

    /// Whatever this path does not take goes to serde_json, which decides.
    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        for line in [
            r#"{"a": {"b": 1}}"#,
            r#"{"a": [1]}"#,
            r#"{"a\n": 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": .5}"#,
            r#"{"a": 1e}"#,
            r#"{"a": +1}"#,
            r#"{"a": tru}"#,
            r#"{"a": "\x"}"#,
            r#"{"a": "\u12"}"#,
            "{\"a\": \"tab\there\"}",
            r#"{"a": 1,}"#,
            r#"{"a": 1} x"#,
            r#"{"a" 1}"#,
            r#"{"a": 1"#,
            r#"{"a": "open"#,
            r#"[1]"#,
            r#""s""#,
            "",
        ] {
            assert!(walk(line).is_none(), "{line}");
        }
    }

    /// The word-at-a-time searches find what a byte loop finds, wherever
    /// the byte lies in its word and whatever follows it.
    #[test]
    fn word_searches_agree_with_byte_loops() {
        use proptest::prelude::*;
        let byte = prop_oneof![
            Just(b'"'),
            Just(b'\\'),
            0u8..0x20,
            0x20u8..0x80,
            0x80u8..=0xff,
        ];
        proptest!(|(bytes in proptest::collection::vec(byte, 0..40), from in 0usize..40)| {
            let from = from.min(bytes.len());
            let want = bytes[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|i| from + i);
            prop_assert_eq!(stop(&bytes, from), want);
            let text = String::from_utf8_lossy(&bytes);
            prop_assert_eq!(has_backslash(&text), text.contains('\\'));
            // Against itself with one byte changed, and against its prefixes.
            for i in 0..bytes.len() {
                let mut other = bytes.clone();
                other[i] ^= 1 << (i % 8);
                prop_assert!(!same_bytes(&bytes, &other));
                prop_assert!(same_bytes(&bytes[..i], &other[..i]));
                prop_assert!(!same_bytes(&bytes[..i], &bytes));
            }
            prop_assert!(same_bytes(&bytes, &bytes.clone()));
        });
    }

    /// Every line this path takes, serde_json reads the same way.
    #[test]
    fn agrees_with_serde_json() {
        use proptest::prelude::*;
        let value = prop_oneof![
            "[a-z\\\\\"é ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
            Just("true".to_string()),
            Just("null".to_string()),
        ];
        proptest!(|(entries in proptest::collection::vec(("[a-z]{1,3}", value), 0..6), ws in " {0,2}")| {
            let body: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
                .collect();
            let line = format!("{ws}{{{}}}{ws}", body.join(","));
            let got = walk(&line).expect("a flat object");
            let whole: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&line).expect("serde_json reads it too");
            let mut mine = serde_json::Map::new();
            for (k, v) in got {
                mine.insert(k, serde_json::from_str(&v).expect("a value"));
            }
            prop_assert_eq!(mine, whole);
        });
    }
}
