//! The daemon: start-up and shutdown order, nothing else.
//!
//! Start-up: lock the state directory, load the checkpoints, reach
//! ClickHouse (retrying until it answers) and learn the table's schema, then
//! start the stages back to front: inserter, batcher, tailer. Shutdown
//! (DESIGN.md §2.7): on SIGTERM or SIGINT only the tailer is told to stop;
//! the queue closes behind it, the batcher drains it, and the inserter ends
//! when the batcher's channel does, so everything read is inserted and
//! committed. If that takes longer than `shutdown.timeout`, the inserter
//! starts no new attempt (an insert in flight is never cut off), and what is
//! left stays uncommitted in the log files for the next start. A second
//! signal exits at once: the checkpoint on disk is always consistent.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::batch;
use crate::checkpoint::{Checkpoints, Loaded, Manifest, StateError};
use crate::clickhouse::{Backoff, Class, Delivery, Server};
use crate::config::Config;
use crate::insert::{Inserter, Outcome};
use crate::plan::{self, Plan};
use crate::quarantine::Quarantine;
use crate::queue::Queue;
use crate::stats::Stats;
use crate::tail::{self, SourceRoute, Tailer};

/// Exit status for a state directory chtail cannot trust (sysexits' DATAERR).
pub const EXIT_BAD_STATE: u8 = 65;
/// Exit status after a second signal.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Signals that stop the daemon: SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs the daemon until it is stopped. Returns the process exit status.
pub async fn run(config: Config) -> anyhow::Result<u8> {
    let mut signals = Signals::new()?;
    let state_dir = config.state.dir.clone();
    let _lock = lock_state_dir(&state_dir)?;
    let (checkpoints, loaded) = match Checkpoints::load(&state_dir) {
        Ok(c) => c,
        Err(e @ StateError::Corrupt { .. }) => {
            tracing::error!("{e}");
            return Ok(EXIT_BAD_STATE);
        }
        Err(e) => return Err(e.into()),
    };
    match &loaded {
        Loaded::Fresh => {
            tracing::info!(dir = %state_dir.display(), "no state yet; every matching file is read from its start")
        }
        Loaded::Current => {
            tracing::info!(dir = %state_dir.display(), files = checkpoints.files().count(), "state loaded")
        }
        Loaded::Previous(why) => {
            tracing::warn!(dir = %state_dir.display(), "state.json is unusable ({why}); resumed from the previous copy, so a few rows may be sent again")
        }
    }

    let server = Server::new(&config.clickhouse).map_err(anyhow::Error::msg)?;
    let plan = tokio::select! {
        r = connect(&server, &config) => r,
        sig = signals.recv() => {
            tracing::info!(signal = sig, "stopped before ClickHouse was reached; nothing was read");
            return Ok(0);
        }
    };
    let version = plan.version;
    for t in &plan.tables {
        let table = format!("{}.{}", config.clickhouse.database, t.name);
        tracing::info!(server = %version, table = %table, columns = t.schema.columns().len(), "ClickHouse reached");
        match server.delivery(version, &t.name).await {
            Delivery::ExactlyOnce(why) => {
                tracing::info!(table = %table, "delivery is exactly-once: {why}")
            }
            Delivery::AtLeastOnce(why) => {
                tracing::warn!(table = %table, "delivery is at-least-once: {why}")
            }
        }
    }
    let stats = Arc::new(Stats::default());
    let checkpoints = Arc::new(Mutex::new(checkpoints));
    let quarantine = Arc::new(Mutex::new(Quarantine::new(&state_dir, stats.clone())));
    let queue = Arc::new(Queue::new(
        config.queue.max_rows,
        config.queue.max_bytes,
        stats.clone(),
    ));
    let (give_up_tx, give_up) = watch::channel(false);

    let inserter = Inserter {
        server,
        sqls: plan.tables.iter().map(|t| t.sql.clone()).collect(),
        dedup_tokens: version.has_dedup_token(),
        checkpoints: checkpoints.clone(),
        state_dir: state_dir.clone(),
        quarantine: quarantine.clone(),
        stats: stats.clone(),
        give_up,
        retry: (config.clickhouse.retry_initial, config.clickhouse.retry_max),
        calm_inserts: 0,
    };
    let mut inserter = inserter;
    // A batch a crash interrupted goes out again first, byte for byte.
    if let Some(manifest) = Manifest::load(&state_dir) {
        let batch = replay_batch(&manifest, &checkpoints, &config, &plan.sources, &stats);
        if let Some(batch) = batch {
            tracing::info!(rows = batch.rows, token = %manifest.token, "re-sending the batch that was in flight when chtail stopped");
            let replayed = tokio::select! {
                ok = inserter.replay(&batch, &manifest.token) => ok,
                sig = signals.recv() => {
                    tracing::info!(signal = sig, "stopped while re-sending the interrupted batch; it is sent again on the next start");
                    return Ok(0);
                }
            };
            if !replayed {
                return Ok(0);
            }
        }
    }
    let (batch_tx, batch_rx) = mpsc::channel(1);
    let mut insert_task = tokio::spawn(inserter.run(batch_rx));
    let batch_task = tokio::spawn(batch::run(
        queue.clone(),
        config.batch.clone(),
        stats.clone(),
        batch_tx,
    ));
    let tailer = Tailer::new(
        plan.sources.clone(),
        config.tail.clone(),
        config.batch.max_rows,
        tail::Shared {
            queue,
            checkpoints,
            quarantine,
            stats: stats.clone(),
        },
    );
    let control = tailer.control();
    let tail_thread = std::thread::Builder::new()
        .name("chtail-tail".into())
        .spawn(move || tailer.run())
        .context("starting the tailer thread")?;
    let progress_task = tokio::spawn(log_progress(stats.clone()));

    // Running. Only a signal (or a stage dying) ends this.
    let sig = tokio::select! {
        sig = signals.recv() => sig,
        r = &mut insert_task => {
            bail!("the insert stage ended unexpectedly: {r:?}");
        }
    };
    tracing::info!(signal = sig, timeout = ?config.shutdown.timeout, "stopping: reading stopped, inserting what was read");
    control.stop();
    let deadline = tokio::time::sleep(config.shutdown.timeout);
    tokio::pin!(deadline);
    let mut deadline_passed = false;
    let outcome = loop {
        tokio::select! {
            r = &mut insert_task => break r.context("insert stage")?,
            _ = &mut deadline, if !deadline_passed => {
                deadline_passed = true;
                tracing::warn!("shutdown timeout reached; finishing the insert in flight and starting no other");
                let _ = give_up_tx.send(true);
            }
            sig = signals.recv() => {
                tracing::warn!(signal = sig, "second signal: exiting now; the checkpoint on disk is consistent and unsent rows are read again on the next start");
                return Ok(EXIT_INTERRUPTED);
            }
        }
    };
    let _ = batch_task.await;
    progress_task.abort();
    if tail_thread.join().is_err() {
        tracing::error!("the tailer thread panicked");
    }
    match outcome {
        Outcome::Drained => tracing::info!(
            rows = Stats::get(&stats.rows_inserted),
            quarantined = Stats::get(&stats.quarantined),
            "drained: everything read is in ClickHouse and committed"
        ),
        Outcome::GaveUp { rows_left } => tracing::warn!(
            rows_left,
            "stopped with rows not yet inserted; they stay in the log files and are sent on the next start"
        ),
    }
    Ok(0)
}

/// Rebuilds the batch of `manifest` that is not committed yet from the log
/// files: the same bytes, read and encoded again, in the same order.
fn replay_batch(
    manifest: &Manifest,
    checkpoints: &Mutex<Checkpoints>,
    config: &Config,
    sources: &[SourceRoute],
    stats: &Stats,
) -> Option<batch::Batch> {
    let pending = manifest.pending(&checkpoints.lock().unwrap_or_else(|e| e.into_inner()));
    if pending.is_empty() {
        return None;
    }
    let patterns: Vec<String> = config
        .sources
        .iter()
        .flat_map(|s| s.paths.clone())
        .collect();
    let mut batch = batch::Batch::default();
    for range in pending {
        let entry = checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(range.file)
            .cloned()?;
        let chunk = tail::locate(&entry, &patterns).and_then(|(path, file)| {
            let source = tail::source_near(sources, Some(&entry.path), &path);
            if batch
                .chunks
                .first()
                .is_some_and(|c| c.route != sources[source].route)
            {
                return None; // a batch goes to one table
            }
            tail::reread(
                &file,
                (range.file, entry.identity),
                &path,
                (range.start, range.end),
                &sources[source],
                &config.tail,
                stats,
            )
            .ok()
        });
        match chunk {
            Some(c) => batch.push(c),
            None => {
                tracing::warn!(path = %entry.path.display(), start = range.start, end = range.end, "cannot find the bytes of the interrupted batch any more (file deleted or rewritten); they cannot be re-sent")
            }
        }
    }
    (!batch.chunks.is_empty()).then_some(batch)
}

/// Reaches ClickHouse, reads (or creates) the tables and binds the sources
/// to them. Retries until it succeeds: a server that is down, a table that
/// is missing or a column chtail cannot write are each logged, and fixed by
/// the operator without a restart.
async fn connect(server: &Server, config: &Config) -> Plan {
    let cfg = server.config();
    let mut backoff = Backoff::new(cfg.retry_initial, cfg.retry_max);
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
                server.fail_over();
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One chtail per state directory: a second one would commit over the first.
fn lock_state_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
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

/// A line a minute saying whether events flow.
async fn log_progress(stats: Arc<Stats>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let rows = stats.rows_inserted.load(Ordering::Relaxed);
        tracing::info!(
            rows_inserted = rows - last,
            rows_total = rows,
            quarantined = Stats::get(&stats.quarantined),
            insert_failures = Stats::get(&stats.insert_failures),
            queue_rows = Stats::get(&stats.queue_rows),
            "progress over the last minute"
        );
        last = rows;
    }
}
