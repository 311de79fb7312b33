//! Migration files as statements: split at each `;` outside quotes and
//! comments, and named by a checksum of their bytes.

use std::hash::Hasher;

use twox_hash::XxHash64;

/// The statements of a file, in order, without the `;` between them;
/// statements that hold only comments are left out.
pub(crate) fn statements(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    // A backslash escapes the next byte; a doubled quote is
                    // two quoted strings side by side, which this also reads.
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b';' => {
                push(&mut out, &text[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < text.len() {
        push(&mut out, &text[start.min(text.len())..]);
    }
    out
}

fn push(out: &mut Vec<String>, statement: &str) {
    if !only_comments(statement) {
        out.push(statement.trim().to_string());
    }
}

/// Whether `s` holds nothing but whitespace and comments.
fn only_comments(s: &str) -> bool {
    let mut rest = s.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.find('\n').map_or("", |n| &r[n..]).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |n| &r[n + 2..]).trim_start();
        } else {
            return false;
        }
    }
}

/// A migration's checksum: XXH64 of its text, in hex. It tells a changed
/// file from the one applied; it is not a signature.
pub(crate) fn checksum(text: &str) -> String {
    let mut h = XxHash64::with_seed(0);
    h.write(text.as_bytes());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let text = "-- a view\nCREATE TABLE a (s String DEFAULT ';') ENGINE = Memory;\n\
                    /* two; */ INSERT INTO a VALUES ('x\\';y');\n-- the end; nothing\n  ;\n\
                    SELECT `odd;name` FROM a";
        assert_eq!(
            statements(text),
            vec![
                "-- a view\nCREATE TABLE a (s String DEFAULT ';') ENGINE = Memory",
                "/* two; */ INSERT INTO a VALUES ('x\\';y')",
                "SELECT `odd;name` FROM a",
            ]
        );
        assert!(statements("-- nothing\n/* at all */\n").is_empty());
        assert_eq!(statements("SELECT 1;"), vec!["SELECT 1"]);
    }

    #[test]
    fn a_changed_byte_changes_the_checksum() {
        assert_eq!(checksum("SELECT 1"), checksum("SELECT 1"));
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("").len(), 16);
    }
}
