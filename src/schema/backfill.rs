//! The rollup's view and the backfill of the events already in the table,
//! counting each event once while INSERTs go on (README, "Managed schema").
//!
//! A view sees only the INSERTs that start after it exists, and an INSERT
//! that is running when the view is created may or may not feed it. So the
//! view is created at a moment when no INSERT into the table is running,
//! and that moment is checked afterwards: the table's parts are listed
//! before the view is created and again after, with merges stopped so that
//! parts change only by INSERTs. If the lists are equal and still no INSERT
//! is running, every event is either in a listed part (written before the
//! view: the backfill counts it) or in a later one (written through the
//! view); otherwise the view is dropped, the rollup emptied, and the moment
//! sought again. Merges start again as soon as the backfill reads (it
//! holds its parts from then on). The rollup is read only once the migration is recorded,
//! so emptying it loses nothing, and a failure anywhere leaves a state
//! that `apply` starts again from the top.

use std::time::{Duration, Instant};

use super::Failed;
use super::migrations::Rollup;
use crate::clickhouse::Server;

/// How long to wait for a moment with no INSERT running, each time.
const QUIET_WAIT: Duration = Duration::from_secs(120);
/// How many times the view is created before giving up.
const ATTEMPTS: u32 = 200;
/// The backfill reads the whole table.
const BACKFILL_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// The statements, as `plan` prints them.
pub(crate) fn describe(r: &Rollup) -> Vec<String> {
    vec![
        format!("DROP TABLE IF EXISTS {}", r.q(&r.view)),
        format!(
            "-- once no INSERT into {} is running:\nTRUNCATE TABLE {}",
            r.q(&r.table),
            r.q(&r.rollup)
        ),
        format!("SYSTEM STOP MERGES {}", r.q(&r.table)),
        format!(
            "-- once no merge of {0} and no INSERT into it is running, its parts are listed and the view created;\n\
             -- if the parts then differ or an INSERT is running, the view is dropped, the rollup emptied\n\
             -- (once no INSERT is running), and this step is taken again\n{1}",
            r.q(&r.table),
            r.create_view()
        ),
        format!(
            "-- the parts listed before the view (with insert_deduplicate = 0); merges start again\n\
             -- once it reads (its parts are its own by then):\n{}",
            r.backfill("<the parts listed before the view>")
        ),
        format!("SYSTEM START MERGES {}", r.q(&r.table)),
    ]
}

/// Creates the view and backfills the rollup; returns how many times the
/// view had to be created.
pub(crate) async fn run(server: &Server, r: &Rollup) -> Result<u32, Failed> {
    exec(server, &format!("DROP TABLE IF EXISTS {}", r.q(&r.view))).await?;
    wait_quiet(server, r).await?;
    exec(server, &format!("TRUNCATE TABLE {}", r.q(&r.rollup))).await?;
    exec(server, &format!("SYSTEM STOP MERGES {}", r.q(&r.table))).await?;
    let fenced = fence_and_fill(server, r).await;
    // Merges start again whatever happened.
    let started = exec(server, &format!("SYSTEM START MERGES {}", r.q(&r.table))).await;
    let attempts = fenced?;
    started?;
    Ok(attempts)
}

async fn fence_and_fill(server: &Server, r: &Rollup) -> Result<u32, Failed> {
    let merges = format!(
        "SELECT count() FROM system.merges WHERE database = '{}' AND table = '{}'",
        r.database, r.table
    );
    let since = Instant::now();
    while number(server, &merges).await? > 0 {
        if since.elapsed() > QUIET_WAIT {
            return Err(Failed::new(
                &merges,
                format!(
                    "a merge of {} still runs after SYSTEM STOP MERGES and {QUIET_WAIT:?}",
                    r.q(&r.table)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for attempt in 1..=ATTEMPTS {
        wait_quiet(server, r).await?;
        let before = parts(server, r).await?;
        exec(server, &r.create_view()).await?;
        let after = parts(server, r).await?;
        let busy = inserts_running(server, r).await?;
        if before == after && busy == 0 {
            if !before.is_empty() {
                let list = before
                    .iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = r.backfill(&list);
                let fill = server.text_within(&sql, &[("insert_deduplicate", "0")], BACKFILL_LIMIT);
                // Merges start again as soon as the backfill reads: its
                // parts are then its own (a merge leaves them to it), and a
                // long backfill does not pile up the bot's parts.
                let filled = tokio::select! {
                    filled = fill => filled,
                    never = merges_once_reading(server, r) => match never {},
                };
                filled.map_err(|f| Failed::new(&sql, f.message))?;
            }
            return Ok(attempt);
        }
        tracing::debug!(
            attempt,
            busy,
            "an INSERT ran while the view was created; again"
        );
        exec(server, &format!("DROP TABLE IF EXISTS {}", r.q(&r.view))).await?;
        wait_quiet(server, r).await?;
        exec(server, &format!("TRUNCATE TABLE {}", r.q(&r.rollup))).await?;
        // Out of step with a writer that inserts on a fixed beat.
        tokio::time::sleep(Duration::from_millis(13 * u64::from(attempt % 17))).await;
    }
    Err(Failed::new(
        &r.create_view(),
        format!(
            "INSERTs into {} never paused while the view was created ({ATTEMPTS} tries); run apply again when the table is quieter",
            r.q(&r.table)
        ),
    ))
}

/// Starts the table's merges again once the backfill has read its first
/// rows; never returns.
async fn merges_once_reading(server: &Server, r: &Rollup) -> std::convert::Infallible {
    let reading = format!(
        "SELECT count() FROM system.processes WHERE read_rows > 0 \
         AND position(query, 'INSERT INTO {}') = 1",
        r.q(&r.rollup)
    );
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if number(server, &reading).await.is_ok_and(|n| n > 0) {
            let _ = exec(server, &format!("SYSTEM START MERGES {}", r.q(&r.table))).await;
            tracing::debug!("the backfill reads; merges of {} started again", r.table);
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until no INSERT into the table is running.
async fn wait_quiet(server: &Server, r: &Rollup) -> Result<(), Failed> {
    let since = Instant::now();
    loop {
        if inserts_running(server, r).await? == 0 {
            return Ok(());
        }
        if since.elapsed() > QUIET_WAIT {
            return Err(Failed::new(
                "SELECT … FROM system.processes",
                format!(
                    "INSERTs into {} ran without a pause for {QUIET_WAIT:?}",
                    r.q(&r.table)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// INSERTs running on this server whose text names the table (a name
/// that only looks alike makes the wait longer, never wrong).
async fn inserts_running(server: &Server, r: &Rollup) -> Result<u64, Failed> {
    number(
        server,
        &format!(
            "SELECT count() FROM system.processes \
             WHERE match(query, '(?i)^[[:space:]]*insert[[:space:]]') AND position(query, '{}') > 0",
            r.table
        ),
    )
    .await
}

async fn parts(server: &Server, r: &Rollup) -> Result<Vec<String>, Failed> {
    let sql = format!(
        "SELECT name FROM system.parts WHERE database = '{}' AND table = '{}' AND active ORDER BY name",
        r.database, r.table
    );
    let text = server
        .text(&sql, &[])
        .await
        .map_err(|f| Failed::new(&sql, f.message))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

async fn number(server: &Server, sql: &str) -> Result<u64, Failed> {
    let text = server
        .text(sql, &[])
        .await
        .map_err(|f| Failed::new(sql, f.message))?;
    Ok(text.trim().parse().unwrap_or(0))
}

async fn exec(server: &Server, sql: &str) -> Result<(), Failed> {
    server
        .text_within(sql, &[], BACKFILL_LIMIT)
        .await
        .map(|_| ())
        .map_err(|f| Failed::new(sql, f.message))
}
