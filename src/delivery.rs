//! Whether a batch re-sent after a crash can land twice, judged from the
//! server's version and the target table's engine (README, "Exactly once"
//! and "A sharded bot").
//!
//! A replay re-sends the very same rows in the same order, cut into the
//! same blocks, with the same settings: a `Replicated*` table drops it as an
//! identical block (on every version, with no token); from 22.2 a plain
//! `MergeTree` with `non_replicated_deduplication_window` drops it by its
//! `insert_deduplication_token`. A `Distributed` table is judged by its
//! sharding key and the tables it forwards to.

use crate::clickhouse::{Server, Version};

/// Whether a crash can send a batch twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Why, and the limit of the server's memory of what it saw.
    ExactlyOnce {
        why: String,
        limit: String,
    },
    AtLeastOnce(String),
}

/// A `Distributed` table's definition: `Distributed(cluster, database,
/// table[, sharding_key[, policy]])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Distributed {
    pub cluster: String,
    pub database: String,
    pub table: String,
    pub sharding_key: Option<String>,
}

impl Distributed {
    /// Reads the engine's arguments from `engine_full`.
    pub(crate) fn parse(engine_full: &str) -> Option<Distributed> {
        let args = engine_full.strip_prefix("Distributed(")?;
        let mut parts = Vec::new();
        let (mut depth, mut quote, mut start) = (0usize, None, 0);
        for (i, c) in args.char_indices() {
            match (c, quote) {
                ('\'' | '`' | '"', None) => quote = Some(c),
                (q, Some(open)) if q == open => quote = None,
                (_, Some(_)) => {}
                ('(', None) => depth += 1,
                (')', None) if depth == 0 => {
                    parts.push(args[start..i].trim());
                    break;
                }
                (')', None) => depth -= 1,
                (',', None) if depth == 0 => {
                    parts.push(args[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        let bare = |s: &str| s.trim_matches(['\'', '`', '"']).to_string();
        Some(Distributed {
            cluster: bare(parts.first()?),
            database: bare(parts.get(1)?),
            table: bare(parts.get(2)?),
            sharding_key: parts.get(3).map(|k| k.to_string()),
        })
    }

    /// Whether the same row always goes to the same shard. Without a key
    /// the cluster has one shard.
    pub(crate) fn deterministic(&self) -> bool {
        self.sharding_key.as_deref().is_none_or(|key| {
            let k = key.to_ascii_lowercase();
            !["rand", "uuid", "now(", "today("]
                .iter()
                .any(|f| k.contains(f))
        })
    }

    /// What an insert into it means for delivery, and the safe choice
    /// (for `check`).
    pub(crate) fn explain(&self) -> String {
        let key = self.sharding_key.as_deref().unwrap_or("(none: one shard)");
        format!(
            "Distributed over cluster {} and table {}.{}, sharded by {key}. chtail inserts \
             into it synchronously (insert_distributed_sync = 1), so a batch is acknowledged \
             once every shard has its rows; the server's default, asynchronous forwarding, \
             acknowledges once the rows are queued on the receiving node, and a node lost \
             before forwarding loses them. A re-sent batch is recognised only if the sharding \
             key is deterministic and the shards' tables deduplicate. The safe choice: one \
             chtail per host writing to its shard's Replicated table, with clickhouse.url \
             listing that shard's replicas (README, \"A sharded bot\")",
            self.cluster, self.database, self.table
        )
    }
}

/// A table's engine and its full definition, if the table exists.
pub(crate) async fn engine(
    server: &Server,
    database: &str,
    table: &str,
) -> Option<(String, String)> {
    let sql = format!(
        "SELECT engine, engine_full FROM system.tables WHERE database = '{database}' AND name = '{table}'"
    );
    let row = server.text(&sql, &[]).await.ok()?;
    let row = row.trim_end();
    if row.is_empty() {
        return None;
    }
    let (engine, full) = row.split_once('\t').unwrap_or((row, ""));
    Some((
        crate::clickhouse::unescape_tsv(engine),
        crate::clickhouse::unescape_tsv(full),
    ))
}

/// Whether a retried batch is recognised by this server and table, and
/// why (README, "Exactly once").
pub(crate) async fn of(server: &Server, version: Version, database: &str, table: &str) -> Delivery {
    let Some((kind, full)) = engine(server, database, table).await else {
        return Delivery::AtLeastOnce(format!("cannot read the engine of {database}.{table}"));
    };
    if kind != "Distributed" {
        return local(server, version, database, table, &kind, &full).await;
    }
    let Some(d) = Distributed::parse(&full) else {
        return Delivery::AtLeastOnce(format!(
            "cannot read the Distributed table's definition: {full}"
        ));
    };
    if !d.deterministic() {
        return Delivery::AtLeastOnce(format!(
            "the Distributed table is sharded by {}, which is not deterministic: a batch re-sent after a crash is split among the shards anew, so its rows arrive in other blocks and are inserted twice; shard by a column of the event (for example cityHash64(guild_id)), or write to the shards' own tables",
            d.sharding_key.as_deref().unwrap_or_default()
        ));
    }
    let Some((kind, full)) = engine(server, &d.database, &d.table).await else {
        return Delivery::AtLeastOnce(format!(
            "cannot read the engine of {}.{}, which the Distributed table forwards to",
            d.database, d.table
        ));
    };
    let via = format!(
        "inserts go synchronously (insert_distributed_sync = 1) through the Distributed table, whose deterministic sharding key splits a re-sent batch into the same blocks for each shard, where {}.{} is",
        d.database, d.table
    );
    match local(server, version, &d.database, &d.table, &kind, &full).await {
        Delivery::ExactlyOnce { why, limit } => Delivery::ExactlyOnce {
            why: format!("{via} {why}"),
            limit,
        },
        Delivery::AtLeastOnce(why) => Delivery::AtLeastOnce(format!("{via} {why}")),
    }
}

/// A table that stores rows itself.
async fn local(
    server: &Server,
    version: Version,
    database: &str,
    table: &str,
    engine: &str,
    full: &str,
) -> Delivery {
    if engine.starts_with("Replicated") || engine.starts_with("Shared") {
        let blocks = merge_tree_setting(server, full, "replicated_deduplication_window").await;
        let seconds =
            merge_tree_setting(server, full, "replicated_deduplication_window_seconds").await;
        let (window, limit) = match (blocks, seconds) {
            (Some(b), Some(s)) => (
                format!("the last {b} blocks within {s} s"),
                format!(
                    "a batch re-sent after an outage or downtime longer than {s} s (replicated_deduplication_window_seconds), or after {b} other blocks, is inserted twice"
                ),
            ),
            (Some(b), None) => (
                format!("the last {b} blocks"),
                format!("a batch re-sent after {b} other blocks is inserted twice"),
            ),
            _ => (
                "its last blocks (replicated_deduplication_window)".into(),
                "a batch re-sent after more blocks than replicated_deduplication_window is inserted twice".into(),
            ),
        };
        return Delivery::ExactlyOnce {
            why: format!(
                "{engine}, which drops a block identical to one of {window} on any of its replicas; a batch re-sent after a crash is the same rows in the same blocks"
            ),
            limit,
        };
    }
    if !version.has_dedup_token() {
        return Delivery::AtLeastOnce(format!(
            "ClickHouse {version} has no insert_deduplication_token (22.2 and later have), and the table is not Replicated"
        ));
    }
    if !engine.ends_with("MergeTree") {
        return Delivery::AtLeastOnce(format!("the {engine} engine does not deduplicate inserts"));
    }
    let window = merge_tree_setting(server, full, "non_replicated_deduplication_window")
        .await
        .unwrap_or(0);
    if window > 0 {
        Delivery::ExactlyOnce {
            why: format!(
                "{engine} with non_replicated_deduplication_window = {window} (the last {window} inserts are remembered); a batch re-sent after a crash carries the same insert_deduplication_token"
            ),
            limit: format!(
                "a batch re-sent after {window} other inserts into the table is inserted twice"
            ),
        }
    } else {
        Delivery::AtLeastOnce(format!(
            "plain {engine} with non_replicated_deduplication_window = 0; for exactly-once run: ALTER TABLE `{database}`.`{table}` MODIFY SETTING non_replicated_deduplication_window = 1000"
        ))
    }
}

/// A MergeTree setting of the table (from its definition), else the
/// server's default; `None` when the server does not know it.
async fn merge_tree_setting(server: &Server, engine_full: &str, name: &str) -> Option<u64> {
    if let Some(v) = table_setting(engine_full, name) {
        return Some(v);
    }
    let sql = format!("SELECT value FROM system.merge_tree_settings WHERE name = '{name}'");
    server
        .text(&sql, &[])
        .await
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// `name = N` from the SETTINGS clause of an `engine_full`.
fn table_setting(engine_full: &str, name: &str) -> Option<u64> {
    let settings = engine_full.split(" SETTINGS ").nth(1)?;
    settings.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_settings_are_read_from_engine_full() {
        let full = "MergeTree ORDER BY ts SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192";
        assert_eq!(
            table_setting(full, "non_replicated_deduplication_window"),
            Some(1000)
        );
        assert_eq!(table_setting(full, "index_granularity"), Some(8192));
        assert_eq!(
            table_setting("MergeTree() ORDER BY (a)", "index_granularity"),
            None
        );
    }

    #[test]
    fn distributed_definitions_old_and_new() {
        // 18.16 writes the arguments bare; newer servers quote them.
        let old = Distributed::parse(
            "Distributed(chtail, t_db, argus_events_local, cityHash64(guild_id))",
        )
        .unwrap();
        assert_eq!(
            old,
            Distributed {
                cluster: "chtail".into(),
                database: "t_db".into(),
                table: "argus_events_local".into(),
                sharding_key: Some("cityHash64(guild_id)".into()),
            }
        );
        assert!(old.deterministic());
        let new = Distributed::parse(
            "Distributed('chtail', 'db', 'local', rand()) SETTINGS fsync_after_insert = 0",
        )
        .unwrap();
        assert_eq!(new.table, "local");
        assert_eq!(new.sharding_key.as_deref(), Some("rand()"));
        assert!(!new.deterministic());
        let one_shard = Distributed::parse("Distributed('c', 'db', 't')").unwrap();
        assert_eq!(one_shard.sharding_key, None);
        assert!(one_shard.deterministic());
        assert_eq!(Distributed::parse("MergeTree ORDER BY ts"), None);
    }
}
