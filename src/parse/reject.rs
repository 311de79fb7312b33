//! Why a line did not become a row, for the quarantine and the counters.

use std::fmt;

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
    pub fn kind(&self) -> RejectKind {
        match self {
            Reject::InvalidUtf8 => RejectKind::InvalidUtf8,
            Reject::InvalidJson(_) => RejectKind::InvalidJson,
            Reject::NotAnObject => RejectKind::NotAnObject,
            Reject::WrongType { .. } => RejectKind::WrongType,
            Reject::TooLong { .. } => RejectKind::TooLong,
            Reject::Server(_) => RejectKind::Server,
        }
    }
}

/// Why a line was quarantined, without the details: the counters' label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    WrongType,
    TooLong,
    Server,
}

impl RejectKind {
    pub const ALL: [RejectKind; 6] = [
        RejectKind::InvalidUtf8,
        RejectKind::InvalidJson,
        RejectKind::NotAnObject,
        RejectKind::WrongType,
        RejectKind::TooLong,
        RejectKind::Server,
    ];

    /// A short, fixed label for counters, logs and quarantine records.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::InvalidUtf8 => "invalid_utf8",
            RejectKind::InvalidJson => "invalid_json",
            RejectKind::NotAnObject => "not_an_object",
            RejectKind::WrongType => "wrong_type",
            RejectKind::TooLong => "too_long",
            RejectKind::Server => "rejected_by_server",
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

/// Raw JSON for an error message, cut at 40 bytes.
pub(crate) fn shown(raw: &str) -> String {
    let c = cut(raw);
    if c.len() < raw.len() {
        format!("{c}…")
    } else {
        raw.to_string()
    }
}

/// A value for an error message: quoted, and cut at 40 bytes.
pub(crate) fn quote_short(s: &str) -> String {
    let c = cut(s);
    if c.len() < s.len() {
        format!("{c:?}…")
    } else {
        format!("{s:?}")
    }
}

fn cut(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
