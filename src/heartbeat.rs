//! The heartbeat: optionally, every `heartbeat.interval`, one row into a
//! table of its own (host, time, sequence, lag, events inserted since the
//! last beat), so a dashboard sees the sidecar alive even when the bot is
//! quiet. A failed beat is logged and skipped; it never holds up events.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::clickhouse::{Server, Version};
use crate::config::Heartbeat;
use crate::metrics::Endpoint;
use crate::parse::LineMeta;
use crate::parse::time;

/// The heartbeat table's columns; DateTime64 where the server has it.
pub(crate) fn create_sql(database: &str, table: &str, version: Version) -> String {
    let time_type = if version.has_datetime64() {
        "DateTime64(3, 'UTC')"
    } else {
        "DateTime('UTC')"
    };
    format!(
        "CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (host String, time {time_type}, seq UInt64, lag_bytes UInt64, events UInt64, version String) ENGINE = MergeTree() ORDER BY (host, time)"
    )
}

/// Runs until aborted.
pub(crate) async fn run(
    server: Server,
    version: Version,
    cfg: Heartbeat,
    create_table: bool,
    endpoint: Arc<Endpoint>,
) {
    let database = server.config().database.clone();
    if create_table
        && let Err(f) = server
            .text(&create_sql(&database, &cfg.table, version), &[])
            .await
    {
        tracing::warn!(table = %cfg.table, "cannot create the heartbeat table: {}", f.message);
    }
    let host = crate::tail::host_name();
    let sql = format!(
        "INSERT INTO `{database}`.`{}` (host, time, seq, lag_bytes, events, version) FORMAT JSONEachRow",
        cfg.table
    );
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut last_rows = endpoint.stats.rows_inserted.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        seq += 1;
        let rows = endpoint.stats.rows_inserted.load(Ordering::Relaxed);
        // Epoch seconds: DateTime reads the integer, DateTime64 the
        // fraction too.
        let now = time::now();
        let when = if version.has_datetime64() {
            format!("{}.{:03}", now.secs, now.nanos / 1_000_000)
        } else {
            now.secs.to_string()
        };
        let row = format!(
            "{{\"host\":{},\"time\":{},\"seq\":{seq},\"lag_bytes\":{},\"events\":{},\"version\":\"{}\"}}\n",
            LineMeta::json(&host),
            when,
            endpoint.total_lag(),
            rows.saturating_sub(last_rows),
            env!("CARGO_PKG_VERSION"),
        );
        match server
            .insert(&sql, None, &[row.into()], None, version, false)
            .await
        {
            Ok(()) => last_rows = rows,
            Err(f) => tracing::warn!(table = %cfg.table, "heartbeat not written: {}", f.message),
        }
    }
}
