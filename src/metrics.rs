//! `/metrics` (Prometheus text format), `/health` and `/ready`, on one small
//! HTTP listener (loopback by default, `metrics.listen`).
//!
//! The listener outlives reloads: the daemon points it at the running
//! pipeline's checkpoints with [`Endpoint::attach`]. Labels are fixed sets
//! (reject kinds, failure classes) or file paths, never a value from an
//! event.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
    pub(crate) fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("chtail");
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// One scrape: every family read from the counters at that moment.
struct Scrape(Arc<Endpoint>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &self.0;
        let s = &e.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 10] = [
            (
                "state_write_failures",
                "Failed writes of the checkpoint or a batch's manifest (shipping waits until one succeeds).",
                e.state.failures(),
            ),
            (
                "file_errors",
                "Errors listing, opening or reading the sources' files (permissions, descriptors); each is retried.",
                get(&s.file_errors),
            ),
            (
                "lines_read",
                "Lines read from the log files.",
                get(&s.lines_read),
            ),
            (
                "bytes_read",
                "Bytes read from the log files.",
                get(&s.bytes_read),
            ),
            (
                "events_parsed",
                "Lines that became rows.",
                get(&s.rows_parsed),
            ),
            (
                "quarantined",
                "Lines written to the quarantine file.",
                s.quarantined(),
            ),
            (
                "keys_ignored",
                "JSON keys that no column took.",
                get(&s.keys_ignored),
            ),
            (
                "batches_inserted",
                "INSERTs ClickHouse acknowledged.",
                get(&s.batches_inserted),
            ),
            (
                "rows_inserted",
                "Rows ClickHouse acknowledged.",
                get(&s.rows_inserted),
            ),
            (
                "insert_retries",
                "INSERT attempts after a failed one.",
                get(&s.insert_retries),
            ),
        ];
        enc.encode_descriptor("build_info", "chtail's version.", None, MetricType::Gauge)?
            .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1u64)?;
        for (name, help, v) in counters {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut m = enc.encode_descriptor(
            "parse_failures",
            "Lines that could not become rows (or that ClickHouse refused), by reason.",
            None,
            MetricType::Counter,
        )?;
        for k in RejectKind::ALL {
            m.encode_family(&[("kind", k.label())])?
                .encode_counter::<NoLabelSet, _, u64>(&s.rejected(k), None)?;
        }
        let mut m = enc.encode_descriptor(
            "insert_failures",
            "Failed INSERT attempts, by class (transient: retried; bad_data: split; operator: someone must act).",
            None,
            MetricType::Counter,
        )?;
        for c in Class::ALL {
            m.encode_family(&[("class", c.label())])?
                .encode_counter::<NoLabelSet, _, u64>(&s.failures(c), None)?;
        }
        let files = e.files();
        let gauges: [(&str, &str, u64); 4] = [
            (
                "queue_rows",
                "Rows read and waiting to be inserted.",
                get(&s.queue_rows),
            ),
            (
                "queue_bytes",
                "Bytes of encoded rows waiting to be inserted.",
                get(&s.queue_bytes),
            ),
            (
                "lag_bytes",
                "Bytes of all tracked files not yet committed.",
                files.iter().filter_map(|f| f.lag_bytes).sum(),
            ),
            (
                "clickhouse_up",
                "1 if the last exchange with ClickHouse succeeded.",
                u64::from(e.liveness.reachable()),
            ),
        ];
        for (name, help, v) in gauges {
            enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&v)?;
        }
        let mut m = enc.encode_descriptor(
            "file_lag_bytes",
            "Bytes of a tracked file not yet committed.",
            None,
            MetricType::Gauge,
        )?;
        for f in &files {
            if let Some(lag) = f.lag_bytes {
                m.encode_family(&[("path", f.path.as_str())])?
                    .encode_gauge(&lag)?;
            }
        }
        enc.encode_descriptor(
            "last_insert_timestamp_seconds",
            "When ClickHouse last acknowledged an INSERT (Unix time; 0: not yet).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(e.liveness.last_insert.unix_ms() as f64 / 1000.0))?;
        let (buckets, count, sum) = s.delay.snapshot();
        let bounds = DELAY_BUCKETS.iter().chain([&f64::INFINITY]);
        let own: Vec<(f64, u64)> = bounds.zip(&buckets).map(|(le, c)| (*le, *c)).collect();
        enc.encode_descriptor(
            "event_delay_seconds",
            "From an event's own time (its ts) to ClickHouse acknowledging it.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &own, None)
    }
}

/// At most this many connections are served at once; more are closed at
/// once, so that scrapers cannot take the descriptors the log files need.
const MAX_CONNECTIONS: usize = 32;
/// A connection gets this long to send its request and take the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the endpoint until the task is aborted: hyper's HTTP/1 server,
/// one request per connection, within the connection cap and timeout.
pub(crate) async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_error: Option<std::time::Instant> = None;
    loop {
        let conn = match listener.accept().await {
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
            let service = hyper::service::service_fn(move |req| {
                let reply = respond(&endpoint, req.method(), req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            // A client that does not send its request, or does not take
            // the answer, is dropped in time.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, served).await;
        });
    }
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn respond(endpoint: &Arc<Endpoint>, method: &hyper::Method, path: &str) -> Reply {
    const TEXT: &str = "text/plain; charset=utf-8";
    use hyper::StatusCode as S;
    let (code, ctype, body) = if method != hyper::Method::GET && method != hyper::Method::HEAD {
        (S::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into())
    } else {
        match path {
            "/metrics" => (
                S::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                endpoint.render(),
            ),
            "/health" => match endpoint.stuck.lock().map(|s| s.clone()).unwrap_or(None) {
                None => (S::OK, TEXT, "ok\n".into()),
                Some(why) => (S::SERVICE_UNAVAILABLE, TEXT, format!("stuck: {why}\n")),
            },
            "/ready" => match endpoint.ready() {
                Ok(why) => (S::OK, TEXT, why + "\n"),
                Err(why) => (S::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n")),
            },
            _ => (
                S::NOT_FOUND,
                TEXT,
                "try /metrics, /health or /ready\n".into(),
            ),
        }
    };
    let mut reply = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *reply.status_mut() = code;
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    reply
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
            "chtail_event_delay_seconds_bucket{le=\"86400\"} 1",
            "chtail_event_delay_seconds_bucket{le=\"+Inf\"} 1",
            "chtail_event_delay_seconds_sum 1.5",
            "# TYPE chtail_rows_inserted_total counter",
            "chtail_event_delay_seconds_count 1",
            "# TYPE chtail_event_delay_seconds histogram",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert_eq!(
            respond(&e, &hyper::Method::GET, "/ready").status(),
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "not ready before a pipeline runs"
        );
        assert_eq!(
            respond(&e, &hyper::Method::GET, "/health").status(),
            hyper::StatusCode::OK
        );
        assert_eq!(
            respond(&e, &hyper::Method::POST, "/metrics").status(),
            hyper::StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
