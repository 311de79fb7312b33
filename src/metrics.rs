//! `/metrics` (Prometheus text format), `/health` and `/ready`, on one small
//! HTTP listener (loopback by default, `metrics.listen`).
//!
//! The listener outlives reloads: the daemon points it at the running
//! pipeline's checkpoints with [`Endpoint::attach`]. Labels are fixed sets
//! (reject kinds, failure classes) or file paths, never a value from an
//! event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::checkpoint::{Published, StateHealth};
use crate::clickhouse::Class;
use crate::liveness::Liveness;
use crate::parse::RejectKind;
use crate::stats::{DELAY_BUCKETS, Stats};
use crate::status::{self, FileStatus, Phase};

/// What the endpoint reports on.
pub(crate) struct Endpoint {
    pub stats: Arc<Stats>,
    pub liveness: Arc<Liveness>,
    /// Whether the state can be written.
    pub state: Arc<StateHealth>,
    checkpoints: RwLock<Option<Arc<Published>>>,
    ready_max_lag: AtomicU64,
    /// A stage that looks stuck, for `/health` (set by the watchdog check).
    pub stuck: Mutex<Option<String>>,
}

impl Endpoint {
    pub(crate) fn new(
        stats: Arc<Stats>,
        liveness: Arc<Liveness>,
        state: Arc<StateHealth>,
    ) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            stats,
            liveness,
            state,
            checkpoints: RwLock::new(None),
            ready_max_lag: AtomicU64::new(u64::MAX),
            stuck: Mutex::new(None),
        })
    }

    /// Reports on a (new) running pipeline.
    pub(crate) fn attach(&self, checkpoints: Option<Arc<Published>>, ready_max_lag: u64) {
        *self.checkpoints.write().unwrap_or_else(|e| e.into_inner()) = checkpoints;
        self.ready_max_lag.store(ready_max_lag, Ordering::Relaxed);
    }

    /// Tracked files and their lag (files still being read).
    pub(crate) fn files(&self) -> Vec<FileStatus> {
        let cp = self
            .checkpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match cp {
            Some(published) => status::of(&published.files())
                .into_iter()
                .filter(|f| f.state != Phase::Released)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Unread bytes over all files.
    pub(crate) fn total_lag(&self) -> u64 {
        self.files().iter().filter_map(|f| f.lag_bytes).sum()
    }

    /// `Ok(reason)` when ready, `Err(reason)` when not.
    pub(crate) fn ready(&self) -> Result<String, String> {
        if self.checkpoints.read().map(|c| c.is_none()).unwrap_or(true) {
            return Err("not shipping yet (starting or reloading)".into());
        }
        if let Some(why) = self.state.problem() {
            return Err(format!(
                "the state directory cannot be written ({why}); nothing is shipped until it can"
            ));
        }
        if !self.liveness.reachable() {
            return Err("ClickHouse is not reachable (inserts are being retried)".into());
        }
        let lag = self.total_lag();
        let max = self.ready_max_lag.load(Ordering::Relaxed);
        if lag > max {
            return Err(format!(
                "{lag} bytes not shipped yet, more than metrics.ready_max_lag ({max})"
            ));
        }
        Ok(format!("ready: ClickHouse reachable, {lag} bytes behind"))
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let s = &self.stats;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(
                out,
                "# HELP chtail_{name} {help}\n# TYPE chtail_{name} {kind}"
            );
            for (labels, v) in samples {
                let _ = writeln!(out, "chtail_{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v as f64)];
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "build_info",
            "gauge",
            "chtail's version.",
            &[(
                format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
                1.0,
            )],
        );
        metric(
            "state_write_failures_total",
            "counter",
            "Failed writes of the checkpoint or a batch's manifest (shipping waits until one succeeds).",
            &one(self.state.failures()),
        );
        metric(
            "file_errors_total",
            "counter",
            "Errors listing, opening or reading the sources' files (permissions, descriptors); each is retried.",
            &one(get(&s.file_errors)),
        );
        metric(
            "lines_read_total",
            "counter",
            "Lines read from the log files.",
            &one(get(&s.lines_read)),
        );
        metric(
            "bytes_read_total",
            "counter",
            "Bytes read from the log files.",
            &one(get(&s.bytes_read)),
        );
        metric(
            "events_parsed_total",
            "counter",
            "Lines that became rows.",
            &one(get(&s.rows_parsed)),
        );
        metric(
            "parse_failures_total",
            "counter",
            "Lines that could not become rows (or that ClickHouse refused), by reason.",
            &RejectKind::ALL
                .iter()
                .map(|k| (format!("{{kind=\"{}\"}}", k.label()), s.rejected(*k) as f64))
                .collect::<Vec<_>>(),
        );
        metric(
            "quarantined_total",
            "counter",
            "Lines written to the quarantine file.",
            &one(s.quarantined()),
        );
        metric(
            "keys_ignored_total",
            "counter",
            "JSON keys that no column took.",
            &one(get(&s.keys_ignored)),
        );
        metric(
            "batches_inserted_total",
            "counter",
            "INSERTs ClickHouse acknowledged.",
            &one(get(&s.batches_inserted)),
        );
        metric(
            "rows_inserted_total",
            "counter",
            "Rows ClickHouse acknowledged.",
            &one(get(&s.rows_inserted)),
        );
        metric(
            "insert_failures_total",
            "counter",
            "Failed INSERT attempts, by class (transient: retried; bad_data: split; operator: someone must act).",
            &Class::ALL
                .iter()
                .map(|c| {
                    (
                        format!("{{class=\"{}\"}}", c.label()),
                        s.failures(*c) as f64,
                    )
                })
                .collect::<Vec<_>>(),
        );
        metric(
            "insert_retries_total",
            "counter",
            "INSERT attempts after a failed one.",
            &one(get(&s.insert_retries)),
        );
        metric(
            "queue_rows",
            "gauge",
            "Rows read and waiting to be inserted.",
            &one(get(&s.queue_rows)),
        );
        metric(
            "queue_bytes",
            "gauge",
            "Bytes of encoded rows waiting to be inserted.",
            &one(get(&s.queue_bytes)),
        );
        let files = self.files();
        metric(
            "file_lag_bytes",
            "gauge",
            "Bytes of a tracked file not yet committed.",
            &files
                .iter()
                .filter_map(|f| {
                    Some((
                        format!("{{path=\"{}\"}}", escape_label(&f.path)),
                        f.lag_bytes? as f64,
                    ))
                })
                .collect::<Vec<_>>(),
        );
        metric(
            "lag_bytes",
            "gauge",
            "Bytes of all tracked files not yet committed.",
            &one(files.iter().filter_map(|f| f.lag_bytes).sum()),
        );
        metric(
            "last_insert_timestamp_seconds",
            "gauge",
            "When ClickHouse last acknowledged an INSERT (Unix time; 0: not yet).",
            &[(
                String::new(),
                self.liveness.last_insert.unix_ms() as f64 / 1000.0,
            )],
        );
        metric(
            "clickhouse_up",
            "gauge",
            "1 if the last exchange with ClickHouse succeeded.",
            &one(u64::from(self.liveness.reachable())),
        );
        let (buckets, count, sum) = s.delay.snapshot();
        let mut samples: Vec<(String, f64)> = DELAY_BUCKETS
            .iter()
            .zip(&buckets)
            .map(|(le, c)| (format!("_bucket{{le=\"{le}\"}}"), *c as f64))
            .collect();
        samples.push((
            "_bucket{le=\"+Inf\"}".into(),
            buckets[DELAY_BUCKETS.len()] as f64,
        ));
        samples.push(("_sum".into(), sum));
        samples.push(("_count".into(), count as f64));
        metric(
            "event_delay_seconds",
            "histogram",
            "From an event's own time (its ts) to ClickHouse acknowledging it.",
            &samples,
        );
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// At most this many connections are served at once; more are closed at
/// once, so that scrapers cannot take the descriptors the log files need.
const MAX_CONNECTIONS: usize = 32;
/// A connection gets this long to send its request and take the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the endpoint until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_error: Option<std::time::Instant> = None;
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // EMFILE and the like: say so (once a minute), then wait
                // for descriptors to come back.
                if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::error!(error = %e, "the metrics listener cannot accept connections");
                    last_error = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(conn);
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // The request line and headers; the body (if any) is ignored.
            let read = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                while len < buf.len() {
                    let n = conn.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            let (code, ctype, body) = respond(&endpoint, method, path);
            let reply = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // A reader that does not take the answer is dropped in time.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                conn.write_all(reply.as_bytes()).await?;
                if method != "HEAD" {
                    conn.write_all(body.as_bytes()).await?;
                }
                conn.shutdown().await
            })
            .await;
        });
    }
}

fn respond(endpoint: &Endpoint, method: &str, path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            endpoint.render(),
        ),
        "/health" => match endpoint.stuck.lock().map(|s| s.clone()).unwrap_or(None) {
            None => ("200 OK", TEXT, "ok\n".into()),
            Some(why) => ("503 Service Unavailable", TEXT, format!("stuck: {why}\n")),
        },
        "/ready" => match endpoint.ready() {
            Ok(why) => ("200 OK", TEXT, why + "\n"),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /health or /ready\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_no_event_values() {
        let stats = Arc::new(Stats::default());
        stats.rows_inserted.store(990, Ordering::Relaxed);
        stats.count_reject(RejectKind::InvalidJson);
        stats.delay.observe_ms(1500);
        let e = Endpoint::new(stats, Arc::default(), Arc::default());
        let text = e.render();
        for want in [
            "chtail_rows_inserted_total 990",
            "chtail_parse_failures_total{kind=\"invalid_json\"} 1",
            "chtail_insert_failures_total{class=\"bad_data\"} 0",
            "chtail_event_delay_seconds_bucket{le=\"1\"} 0",
            "chtail_event_delay_seconds_bucket{le=\"2.5\"} 1",
            "chtail_event_delay_seconds_count 1",
            "# TYPE chtail_event_delay_seconds histogram",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert_eq!(
            respond(&e, "GET", "/ready").0,
            "503 Service Unavailable",
            "not ready before a pipeline runs"
        );
        assert_eq!(respond(&e, "GET", "/health").0, "200 OK");
        assert_eq!(respond(&e, "POST", "/metrics").0, "405 Method Not Allowed");
    }
}
