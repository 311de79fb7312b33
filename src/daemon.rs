//! The daemon: start-up and shutdown order, nothing else.
//!
//! Start-up: lock the state directory, load the checkpoints, reach
//! ClickHouse (retrying until it answers) and learn the table's schema, then
//! start the stages back to front: inserter, batcher, tailer. Shutdown
//! (README, invariant 7): on SIGTERM or SIGINT only the tailer is told to stop;
//! the queue closes behind it, the batcher drains it, and the inserter ends
//! when the batcher's channel does, so everything read is inserted and
//! committed. If that takes longer than `shutdown.timeout`, the inserter
//! starts no new attempt (an insert in flight is never cut off), and what is
//! left stays uncommitted in the log files for the next start. A second
//! signal exits at once: the checkpoint on disk is always consistent.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{mpsc, watch};

use crate::batch;
use crate::checkpoint::{self, Checkpoints, Loaded, Manifest, StateError, StateHealth};
use crate::clickhouse::{Backoff, Class, Server};
use crate::config::Config;
use crate::delivery::{self, Delivery};
use crate::health;
use crate::heartbeat;
use crate::insert::{Inserter, Outcome};
use crate::liveness::Grace;
use crate::metrics::{self, Endpoint};
use crate::notify::Notifier;
use crate::plan::{self, Plan};
use crate::quarantine::Quarantine;
use crate::queue::Queue;
use crate::replay;
use crate::signal::{Sig, Signals};
use crate::stats::Stats;
use crate::tail::{self, Tailer};

/// Exit status for a configuration that cannot be used, including a state
/// directory chtail may not write (sysexits' USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;
/// Exit status for a state directory chtail cannot trust (sysexits' DATAERR).
pub const EXIT_BAD_STATE: u8 = 65;
/// Exit status of a stop while the state directory could not be written:
/// what was inserted is not committed (sysexits' TEMPFAIL).
pub const EXIT_UNCOMMITTED: u8 = 75;
/// Exit status after a second signal.
pub const EXIT_INTERRUPTED: u8 = 130;

/// How one run of the pipeline ended.
enum End {
    Exit(u8),
    Reload(Box<Config>),
}

/// What lives across reloads.
struct Service {
    config_path: PathBuf,
    signals: Signals,
    notifier: Arc<Notifier>,
    stats: Arc<Stats>,
    /// Whether the state can be written (across reloads, like the counters).
    state: Arc<StateHealth>,
    endpoint: Arc<Endpoint>,
    /// The metrics listener, and the address it listens on.
    listener: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

/// Runs the daemon until it is stopped. Returns the process exit status.
/// SIGHUP reads `config_path` again: a valid new config replaces the
/// running pipeline (drained first, so nothing is lost or sent twice); an
/// invalid one is logged and the old config keeps running.
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<u8> {
    let stats = Arc::new(Stats::default());
    let state = Arc::new(StateHealth::default());
    let mut service = Service {
        config_path,
        signals: Signals::new()?,
        notifier: Arc::new(Notifier::from_env()),
        endpoint: Endpoint::new(stats.clone(), Arc::default(), state.clone()),
        stats,
        state,
        listener: None,
    };
    let mut config = config;
    loop {
        // Shipping matters more than the endpoint: a port in use (a second
        // chtail on the host, say) is logged loudly, not fatal.
        if let Err(e) = service.listen(config.metrics.listen).await {
            tracing::error!("{e:#}; /metrics, /health and /ready are off until a reload fixes it");
        }
        match pipeline(&config, &mut service).await? {
            End::Exit(code) => return Ok(code),
            End::Reload(new) => {
                tracing::info!("configuration reloaded");
                config = *new;
            }
        }
    }
}

impl Service {
    /// (Re)starts the metrics listener if its address changed.
    async fn listen(&mut self, addr: Option<SocketAddr>) -> anyhow::Result<()> {
        if self.listener.as_ref().map(|(a, _)| *a) == addr {
            return Ok(());
        }
        if let Some((_, task)) = self.listener.take() {
            task.abort();
        }
        let Some(addr) = addr else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
        tracing::info!(%addr, "serving /metrics, /health and /ready");
        let task = tokio::spawn(metrics::serve(listener, self.endpoint.clone()));
        self.listener = Some((addr, task));
        Ok(())
    }

    /// Reads the config file again; `None` (logged) if it is not valid.
    fn reread_config(&self) -> Option<Config> {
        match Config::load(&self.config_path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(
                    path = %self.config_path.display(),
                    "SIGHUP: the new configuration is not valid; the running one stays:\n{e}"
                );
                None
            }
        }
    }
}

/// One run of the pipeline with one config: until a stop signal (then it
/// drains and says Exit) or a valid reload (then it drains and says
/// Reload).
async fn pipeline(config: &Config, svc: &mut Service) -> anyhow::Result<End> {
    let stats = svc.stats.clone();
    let state_dir = config.state.dir.clone();
    let _lock = match lock_state_dir(&state_dir) {
        Ok(lock) => lock,
        Err(e) if cannot_be_fixed_by_restart(&e) => {
            tracing::error!(
                "{e:#}; state.dir must be a directory chtail's user can write (the package's unit uses StateDirectory=chtail)"
            );
            return Ok(End::Exit(EXIT_BAD_CONFIG));
        }
        Err(e) => return Err(e),
    };
    let (checkpoints, loaded) = match Checkpoints::load(&state_dir) {
        Ok(c) => c,
        Err(e @ StateError::Corrupt { .. }) => {
            tracing::error!("{e}");
            return Ok(End::Exit(EXIT_BAD_STATE));
        }
        Err(e) => return Err(e.into()),
    };
    match &loaded {
        Loaded::Fresh => {
            tracing::info!(dir = %state_dir.display(), "no state yet; every matching file is read from its start");
            // The state on disk from the first moment, with the time chtail
            // began to watch: files rotated away before a first commit are
            // still read after a restart.
            checkpoint::save(&state_dir, &checkpoints.snapshot())
                .with_context(|| format!("writing the first state in {}", state_dir.display()))?;
        }
        Loaded::Current => {
            tracing::info!(dir = %state_dir.display(), files = checkpoints.files().count(), "state loaded")
        }
        Loaded::Previous(why) => {
            tracing::warn!(dir = %state_dir.display(), "state.json is unusable ({why}); resumed from the previous copy, so a few rows may be sent again")
        }
    }

    let server = Server::new(&config.clickhouse).map_err(anyhow::Error::msg)?;
    svc.notifier.status("connecting to ClickHouse");
    let plan = loop {
        tokio::select! {
            r = connect(&server, config, &svc.notifier) => break r,
            sig = svc.signals.recv() => match sig {
                Sig::Stop(name) => {
                    tracing::info!(signal = name, "stopped before ClickHouse was reached; nothing was read");
                    return Ok(End::Exit(0));
                }
                Sig::Reload => {
                    if let Some(new) = svc.reread_config() {
                        return Ok(End::Reload(Box::new(new)));
                    }
                }
            },
        }
    };
    let liveness = svc.endpoint.liveness.clone();
    liveness.set_reachable(true);
    let version = plan.version;
    for t in &plan.tables {
        let table = format!("{}.{}", config.clickhouse.database, t.name);
        tracing::info!(server = %version, table = %table, columns = t.schema.columns().len(), "ClickHouse reached");
        if let Some(d) = &t.distributed {
            tracing::info!(table = %table, cluster = %d.cluster, "a Distributed table: inserts wait until every shard has its rows (insert_distributed_sync = 1)");
        }
        match delivery::of(&server, version, &config.clickhouse.database, &t.name).await {
            Delivery::ExactlyOnce { why, limit } => {
                tracing::info!(table = %table, "delivery is exactly-once: {why}; {limit}")
            }
            Delivery::AtLeastOnce(why) => {
                tracing::warn!(table = %table, "delivery is at-least-once: {why}")
            }
        }
    }
    // A batch a crash interrupted, rebuilt from the files as they are now.
    let interrupted = Manifest::load(&state_dir).and_then(|manifest| {
        replay::interrupted(&manifest, &checkpoints, config, &plan.sources)
            .map(|spans| (manifest, spans))
    });
    // From here the inserter's ledger owns the checkpoints; the tailer
    // sends it what it learns of the files.
    let (ledger, registry) = checkpoint::split(checkpoints);
    let published = ledger.published();
    let quarantine = Arc::new(Mutex::new(Quarantine::new(&state_dir, stats.clone())));
    let queue = Arc::new(Queue::new(
        config.queue.max_rows,
        config.queue.max_bytes,
        stats.clone(),
    ));
    let (give_up_tx, give_up) = watch::channel(false);
    let pressure = Arc::new(batch::PartsPressure::default());
    let mut inserter = Inserter {
        server: server.clone(),
        sqls: plan.tables.iter().map(|t| t.sql.clone()).collect(),
        natives: plan.tables.iter().map(|t| t.native.clone()).collect(),
        dedup_tokens: version.has_dedup_token(),
        distributed: plan.tables.iter().map(|t| t.sync_insert).collect(),
        version,
        ledger,
        state_dir: state_dir.clone(),
        state: svc.state.clone(),
        quarantine: quarantine.clone(),
        stats: stats.clone(),
        liveness: liveness.clone(),
        give_up,
        retry: (config.clickhouse.retry_initial, config.clickhouse.retry_max),
        pressure: pressure.clone(),
        sources: plan.sources.clone().into(),
        tail: config.tail.clone(),
        limits: config.batch.clone(),
    };
    // A batch a crash interrupted goes out again first, byte for byte.
    if let Some((manifest, spans)) = interrupted {
        let bytes: u64 = spans.iter().map(|s| s.range.end - s.range.start).sum();
        tracing::info!(ranges = spans.len(), bytes, token = %manifest.token, "re-sending the batch that was in flight when chtail stopped");
        svc.notifier
            .status("re-sending the batch interrupted by the last stop");
        let replayed = tokio::select! {
            ok = inserter.replay(&spans, &manifest.token) => ok,
            sig = svc.signals.stop() => {
                tracing::info!(signal = sig, "stopped while re-sending the interrupted batch; it is sent again on the next start");
                return Ok(End::Exit(0));
            }
        };
        if !replayed {
            return Ok(End::Exit(0));
        }
    }
    let (batch_tx, batch_rx) = mpsc::channel(1);
    let mut insert_task = tokio::spawn(inserter.run(batch_rx));
    let batch_task = tokio::spawn(batch::run(
        queue.clone(),
        config.batch.clone(),
        match plan.catch_up_rows(config) {
            Ok(rows) => rows,
            Err(why) => {
                tracing::info!("no catch-up streams: {why}; inserts stay at batch.max_rows");
                0
            }
        },
        pressure,
        batch_tx,
    ));
    let tailer = Tailer::new(
        plan.sources.clone(),
        config.tail.clone(),
        config.batch.max_rows,
        tail::Shared {
            queue,
            registry,
            quarantine,
            stats: stats.clone(),
            beat: liveness.tail.clone(),
        },
    );
    let control = tailer.control();
    liveness.tail.now();
    let tail_thread = std::thread::Builder::new()
        .name("chtail-tail".into())
        .spawn(move || tailer.run())
        .context("starting the tailer thread")?;
    let mut helpers = vec![tokio::spawn(health::log_progress(stats.clone()))];
    if config.heartbeat.enabled {
        helpers.push(tokio::spawn(heartbeat::run(
            server.clone(),
            version,
            config.heartbeat.clone(),
            config.clickhouse.create_table,
            svc.endpoint.clone(),
        )));
    }
    svc.endpoint
        .attach(Some(published), config.metrics.ready_max_lag);
    svc.notifier.ready("shipping");
    let watchdog = tokio::spawn(health::watch_health(
        server.clone(),
        svc.notifier.clone(),
        svc.endpoint.clone(),
        Grace::of(config),
    ));
    helpers.push(watchdog);

    // Running. Only a signal (or a stage dying) ends this.
    let end = loop {
        let sig = tokio::select! {
            sig = svc.signals.recv() => sig,
            r = &mut insert_task => {
                bail!("the insert stage ended unexpectedly: {r:?}");
            }
        };
        match sig {
            Sig::Stop(name) => {
                tracing::info!(signal = name, timeout = ?config.shutdown.timeout, "stopping: reading stopped, inserting what was read");
                svc.notifier.stopping("draining: inserting what was read");
                break End::Exit(0);
            }
            Sig::Reload => {
                tracing::info!(path = %svc.config_path.display(), "SIGHUP: reading the configuration again");
                if let Some(new) = svc.reread_config() {
                    tracing::info!(
                        "new configuration is valid; draining the running pipeline, then starting with it"
                    );
                    svc.notifier
                        .reloading("reloading: draining, then starting with the new configuration");
                    break End::Reload(Box::new(new));
                }
            }
        }
    };
    // The helpers first (they only watch), then the stages front to back:
    // the tailer stops, the batcher and the inserter end with their input.
    for h in &helpers {
        h.abort();
    }
    for h in helpers {
        let _ = h.await;
    }
    control.stop();
    let outcome = match drain(config, svc, &mut insert_task, &give_up_tx).await? {
        Some(outcome) => outcome,
        None => return Ok(End::Exit(EXIT_INTERRUPTED)),
    };
    let _ = batch_task.await;
    if tail_thread.join().is_err() {
        tracing::error!("the tailer thread panicked");
    }
    svc.endpoint.attach(None, config.metrics.ready_max_lag);
    match outcome {
        Outcome::Drained => tracing::info!(
            rows = Stats::get(&stats.rows_inserted),
            quarantined = stats.quarantined(),
            "drained: everything read is in ClickHouse and committed"
        ),
        Outcome::GaveUp { rows_left } => tracing::warn!(
            rows_left,
            "stopped with rows not yet inserted; they stay in the log files and are sent on the next start"
        ),
        Outcome::Uncommitted {
            inserted,
            rows_left,
            error,
        } => {
            tracing::error!(
                inserted_not_committed = inserted,
                rows_left,
                "stopped while the state could not be written ({error}): {inserted} rows are in ClickHouse but not committed, and are sent again on the next start (under the same deduplication token); {rows_left} rows read were not sent and stay in the log files"
            );
            return Ok(End::Exit(EXIT_UNCOMMITTED));
        }
    }
    Ok(end)
}

/// Waits for the insert stage to finish what was read. After
/// `shutdown.timeout` it starts no new insert; the one in flight is never
/// cut off, and systemd is asked to wait for it. `None` after a second stop
/// signal: exit now (the checkpoint on disk is consistent).
async fn drain(
    config: &Config,
    svc: &mut Service,
    insert_task: &mut tokio::task::JoinHandle<Outcome>,
    give_up_tx: &watch::Sender<bool>,
) -> anyhow::Result<Option<Outcome>> {
    let deadline = tokio::time::Instant::now() + config.shutdown.timeout;
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    let mut deadline_passed = false;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            r = &mut *insert_task => return Ok(Some(r.context("insert stage")?)),
            _ = &mut sleep, if !deadline_passed => {
                deadline_passed = true;
                tracing::warn!("shutdown timeout reached; finishing the insert in flight and starting no other");
                let _ = give_up_tx.send(true);
            }
            _ = tick.tick() => {
                // Still draining: keep systemd's watchdog and stop timeout
                // from cutting an insert off half-way.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                svc.notifier.watchdog();
                svc.notifier.extend_timeout(left + config.clickhouse.request_timeout + Duration::from_secs(10));
            }
            sig = svc.signals.stop() => {
                tracing::warn!(signal = sig, "second signal: exiting now; the checkpoint on disk is consistent and unsent rows are read again on the next start");
                return Ok(None);
            }
        }
    }
}

/// Reaches ClickHouse, reads (or creates) the tables and binds the sources
/// to them. Retries until it succeeds: a server that is down, a table that
/// is missing or a column chtail cannot write are each logged, and fixed by
/// the operator without a restart.
///
/// For systemd, waiting out an outage is the service doing its job: after
/// the first failure chtail reports READY with a "waiting for ClickHouse"
/// status (so a boot is not held up, and the start timeout does not turn an
/// outage into a restart loop), and keeps the watchdog fed while it waits.
async fn connect(server: &Server, config: &Config, notifier: &Arc<Notifier>) -> Plan {
    let cfg = server.config();
    let mut backoff = Backoff::new(cfg.retry_initial, cfg.retry_max);
    let keepalive = notifier.watchdog_interval().map(|w| {
        let pinger = notifier.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(w / 2);
            loop {
                tick.tick().await;
                pinger.watchdog();
            }
        })
    });
    let _stop_keepalive = AbortOnDrop(keepalive);
    loop {
        let mut notes = Vec::new();
        match plan::prepare(server, config, &mut notes).await {
            Ok(plan) => {
                for n in notes {
                    tracing::warn!("{n}");
                }
                return plan;
            }
            Err(problems) => {
                let delay = backoff.next_delay();
                let msg = problems.messages.join("; ");
                if problems.class == Class::Operator || backoff.attempts() > 3 {
                    tracing::error!(url = %server.url(), retry_in = ?delay, "cannot start shipping: {msg}");
                } else {
                    tracing::warn!(url = %server.url(), retry_in = ?delay, "ClickHouse not reachable yet: {msg}");
                }
                notifier.ready(&format!(
                    "waiting for ClickHouse (retry in {delay:?}): {msg}"
                ));
                server.fail_over();
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// A permission or the kind of file at the path: waiting or restarting
/// changes nothing, an operator must act.
fn cannot_be_fixed_by_restart(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::{NotADirectory, PermissionDenied, ReadOnlyFilesystem};
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                PermissionDenied | ReadOnlyFilesystem | NotADirectory
            )
        })
}

/// One chtail per state directory: a second one would commit over the first.
fn lock_state_dir(dir: &Path) -> anyhow::Result<File> {
    checkpoint::create_private_dir(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let path = dir.join("lock");
    let file =
        checkpoint::private_file(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another chtail is already running with state directory {}",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
