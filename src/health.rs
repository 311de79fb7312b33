//! Health: the watchdog, the systemd status line and the progress log.
//!
//! Reads the counters and the stages' liveness beats; writes nothing the
//! pipeline depends on. systemd's watchdog is pinged only while every stage
//! shows life; `/health` names a stuck stage; a line a minute in the log
//! says whether events flow. Aborted by the daemon when the pipeline stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::clickhouse::Server;
use crate::liveness::Grace;
use crate::metrics::Endpoint;
use crate::notify::Notifier;
use crate::stats::Stats;

/// How often an idle chtail checks that ClickHouse answers.
const PROBE_EVERY: Duration = Duration::from_secs(15);

/// The watchdog and the status line. systemd is pinged only while every
/// stage shows life: the tailer went round its loop (or is waiting on a
/// full queue, which is backpressure working) and no insert has hung past
/// its timeouts. Waiting out a ClickHouse outage is healthy; a stage that
/// stopped moving is not, and then systemd restarts chtail.
pub(crate) async fn watch_health(
    server: Server,
    notifier: Arc<Notifier>,
    endpoint: Arc<Endpoint>,
    grace: Grace,
) {
    let watchdog = notifier.watchdog_interval();
    let period = watchdog
        .map(|w| (w / 2).min(Duration::from_secs(5)))
        .unwrap_or(Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    let stats = endpoint.stats.clone();
    let live = endpoint.liveness.clone();
    let mut last = (Stats::get(&stats.rows_inserted), std::time::Instant::now());
    let mut last_warned: Option<std::time::Instant> = None;
    let mut last_probe = std::time::Instant::now();
    loop {
        tick.tick().await;
        // With no inserts to tell, ask ClickHouse now and then whether it
        // answers, so /ready and the status line stay true when idle.
        let quiet = live
            .last_insert
            .age_ms()
            .is_none_or(|age| u128::from(age) > PROBE_EVERY.as_millis())
            && live.insert_started.age_ms().is_none();
        if quiet && last_probe.elapsed() >= PROBE_EVERY {
            last_probe = std::time::Instant::now();
            live.set_reachable(server.version().await.is_ok());
        }
        let stuck = live.stuck_stage(grace);
        *endpoint.stuck.lock().unwrap_or_else(|e| e.into_inner()) = stuck.clone();
        match &stuck {
            None => {
                if watchdog.is_some() {
                    notifier.watchdog();
                }
            }
            Some(why) => {
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::error!("a stage looks stuck ({why}); the watchdog is not pinged");
                    last_warned = Some(std::time::Instant::now());
                }
            }
        }
        if notifier.enabled() {
            let rows = Stats::get(&stats.rows_inserted);
            let secs = last.1.elapsed().as_secs_f64().max(0.001);
            let rate = (rows.saturating_sub(last.0)) as f64 / secs;
            last = (rows, std::time::Instant::now());
            let since = match live.last_insert.age_ms() {
                None => "no insert yet".to_string(),
                Some(age) => format!("last insert {}s ago", age / 1000),
            };
            let ch = if let Some(why) = endpoint.state.problem() {
                format!("STATE NOT WRITABLE, waiting: {why}")
            } else if live.reachable() {
                "ClickHouse up".to_string()
            } else {
                "ClickHouse DOWN, retrying".to_string()
            };
            notifier.status(&format!(
                "{rate:.0} rows/s, lag {} bytes, queue {} rows, {since}, {ch}{}",
                endpoint.total_lag(),
                Stats::get(&stats.queue_rows),
                stuck.map(|w| format!(", STUCK: {w}")).unwrap_or_default()
            ));
        }
    }
}

/// A line a minute saying whether events flow.
pub(crate) async fn log_progress(stats: Arc<Stats>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let rows = stats.rows_inserted.load(Ordering::Relaxed);
        tracing::info!(
            rows_inserted = rows - last,
            rows_total = rows,
            quarantined = stats.quarantined(),
            insert_failures = stats.insert_failures(),
            queue_rows = Stats::get(&stats.queue_rows),
            "progress over the last minute"
        );
        last = rows;
    }
}
