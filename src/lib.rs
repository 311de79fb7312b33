//! chtail ships a bot's JSON event log into ClickHouse.
//!
//! ```text
//!  log files ──▶ tail ──▶ parse ──▶ queue ──▶ batch ──▶ insert ──▶ checkpoint
//!  (the buffer)  (offsets travel with every row)   (bounded)      (acknowledged bytes only)
//! ```
//!
//! The modules below are declared in that order: the stages, then crash
//! recovery, then the commands, then the service around them.
//! `ARCHITECTURE.md` is the one-page map. The invariants (README,
//! "How it works"), and the one place each is kept:
//!
//! 1. **The log file is the buffer.** The queue is bounded in rows and
//!    bytes, and a chunk's weight is held until its batch is done with; when
//!    it is full the tailer stops reading ([`queue`]).
//! 2. **A checkpoint never passes an unacknowledged event.** Chunks carry
//!    their byte ranges; offsets advance only after the INSERT carrying them
//!    returned success, in order ([`insert`], [`checkpoint`]).
//! 3. **Deduplication where ClickHouse can.** A batch is named by its byte
//!    ranges and its `insert_deduplication_token` derives from them
//!    ([`batch::token`]); after a crash the recorded batch goes out again
//!    byte for byte ([`replay`]).
//! 4. **A bad line never stops the pipeline.** It is quarantined, counted and
//!    skipped, its offset still advances ([`parse`], [`quarantine`]); a batch
//!    rejected as bad data is split to isolate the bad rows ([`insert`]).
//! 5. **Files are identified by content and inode, not path** ([`identity`],
//!    used by [`tail`] and [`replay`]). Only complete lines are shipped
//!    (`tail::lines`).
//! 6. **State survives any crash**: atomic, fsynced checkpoints, and a
//!    corrupt state is never silently treated as "start from zero"
//!    ([`checkpoint`]).
//! 7. **SIGTERM drains**: only the tailer watches the stop signal; every
//!    later stage ends because its input ended ([`daemon`], [`signal`]).

#![forbid(unsafe_code)]

/// `println!` for the commands' reports: a closed stdout (`chtail status |
/// head -1`) ends the command quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

// The configuration: the lowest layer, read by everything below.
pub mod config;

// The stages, in pipeline order.
mod batch;
pub mod checkpoint;
mod clickhouse;
mod delivery;
pub mod identity;
mod insert;
pub mod native;
pub mod parse;
pub mod quarantine;
pub mod queue;
mod replay;
pub mod tail;

// The commands, and the daemon that wires the stages together.
pub mod check;
pub mod daemon;
mod plan;
pub mod report;
pub mod schema;
pub mod status;

// The service around the pipeline.
mod health;
mod heartbeat;
pub mod liveness;
mod metrics;
mod notify;
mod signal;
pub mod stats;
