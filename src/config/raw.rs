//! The configuration file as written: one serde struct per section.
//!
//! The keys chtail knows are read off these types ([`fields`]), so adding a
//! key to a struct is all it takes for the unknown-key check to accept it.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Visitor};
use toml::Spanned;

use super::Metadata;

/// The sections; each is deserialized on its own so that a mistake in one
/// does not hide the problems of the others.
#[derive(Deserialize, Default)]
pub(super) struct RawDocument {
    pub(super) clickhouse: RawClickHouse,
    pub(super) source: Vec<RawSource>,
    pub(super) state: RawState,
    pub(super) batch: RawBatch,
    pub(super) queue: RawQueue,
    pub(super) tail: RawTail,
    pub(super) shutdown: RawShutdown,
    pub(super) metrics: RawMetrics,
    pub(super) heartbeat: RawHeartbeat,
    pub(super) schema: RawSchema,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClickHouse {
    pub(super) url: Option<Spanned<Urls>>,
    pub(super) database: Option<Spanned<String>>,
    pub(super) table: Option<Spanned<String>>,
    pub(super) user: Option<String>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) create_table: Option<bool>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) compression: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) request_timeout: Option<Spanned<String>>,
    pub(super) retry_initial_backoff: Option<Spanned<String>>,
    pub(super) retry_max_backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) paths: Spanned<Vec<String>>,
    pub(super) table: Option<Spanned<String>>,
    pub(super) rename: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub(super) catch_all: Option<Spanned<String>>,
    pub(super) metadata: Option<Spanned<Metadata>>,
    pub(super) follow_symlinks: Option<Spanned<bool>>,
    pub(super) exclude: Option<Spanned<Vec<String>>>,
    pub(super) start_at: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) dir: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    pub(super) max_rows: Option<Spanned<i64>>,
    pub(super) max_bytes: Option<Spanned<ByteSize>>,
    pub(super) max_wait: Option<Spanned<String>>,
    pub(super) catch_up_rows: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) max_rows: Option<Spanned<i64>>,
    pub(super) max_bytes: Option<Spanned<ByteSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTail {
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) max_line_bytes: Option<Spanned<ByteSize>>,
    pub(super) read_buffer_bytes: Option<Spanned<ByteSize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) ready_max_lag: Option<Spanned<ByteSize>>,
    pub(super) event_time_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeartbeat {
    pub(super) enabled: Option<bool>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) table: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchema {
    pub(super) migrations_dir: Option<Spanned<PathBuf>>,
    pub(super) retention: Option<Spanned<String>>,
    pub(super) heartbeat_retention: Option<Spanned<String>>,
}

/// `url = "http://a:8123"` or `url = ["http://a:8123", "http://b:8123"]`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Urls {
    One(String),
    Many(Vec<String>),
}

/// A size given as a number of bytes or a string such as `"16MiB"`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum ByteSize {
    Bytes(i64),
    Text(String),
}

/// The keys a section (`"batch"`, `"source"`, `"source.metadata"`) or, for
/// `""`, the document accepts; `None` for a section chtail does not have.
pub(super) fn known_keys(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "" => fields::<RawDocument>(),
        "clickhouse" => fields::<RawClickHouse>(),
        "source" => fields::<RawSource>(),
        "source.metadata" => fields::<Metadata>(),
        "state" => fields::<RawState>(),
        "batch" => fields::<RawBatch>(),
        "queue" => fields::<RawQueue>(),
        "tail" => fields::<RawTail>(),
        "shutdown" => fields::<RawShutdown>(),
        "metrics" => fields::<RawMetrics>(),
        "heartbeat" => fields::<RawHeartbeat>(),
        "schema" => fields::<RawSchema>(),
        _ => return None,
    })
}

/// The field names serde derived for `T`, asked of `T`'s own
/// `Deserialize`: it hands them to `deserialize_struct`, where a probe that
/// deserializes nothing records them.
fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut found));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_has_its_keys() {
        let sections = known_keys("").expect("the document");
        assert!(sections.contains(&"clickhouse") && sections.contains(&"source"));
        for s in sections {
            let keys = known_keys(s).unwrap_or_else(|| panic!("section {s} has no keys"));
            assert!(!keys.is_empty(), "{s}");
        }
        assert_eq!(
            known_keys("source.metadata"),
            Some(&["file", "offset", "host", "ingest_time"][..])
        );
        assert!(known_keys("batch").expect("batch").contains(&"max_wait"));
        assert_eq!(known_keys("extra"), None);
    }
}
