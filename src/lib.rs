//! chtail ships a bot's JSON event log into ClickHouse.
//!
//! ```text
//!  log files ──▶ tail ──▶ parse ──▶ queue ──▶ batch ──▶ insert ──▶ checkpoint
//!  (the buffer)  (offsets travel with every row)   (bounded)      (acknowledged bytes only)
//! ```
//!
//! The invariants (DESIGN.md §2), and where each is kept:
//!
//! 1. **The log file is the buffer.** The queue is bounded in rows and
//!    bytes; when it is full the tailer stops reading ([`queue`]).
//! 2. **A checkpoint never passes an unacknowledged event.** Chunks carry
//!    their byte ranges; offsets advance only after the INSERT carrying them
//!    returned success, in order ([`insert`], [`checkpoint`]).
//! 3. **Deduplication where ClickHouse can.** A batch is named by its byte
//!    ranges and its `insert_deduplication_token` derives from them
//!    ([`batch::token`]).
//! 4. **A bad line never stops the pipeline.** It is quarantined, counted and
//!    skipped, its offset still advances ([`parse`], [`quarantine`]); a batch
//!    rejected as bad data is split to isolate the bad rows ([`insert`]).
//! 5. **Files are identified by content and inode, not path** ([`tail`]).
//!    Only complete lines are shipped ([`tail::lines`]).
//! 6. **State survives any crash**: atomic, fsynced checkpoints, and a
//!    corrupt state is never silently treated as "start from zero"
//!    ([`checkpoint`]).
//! 7. **SIGTERM drains**: only the tailer watches the stop signal; every
//!    later stage ends because its input ended ([`daemon`]).

#![forbid(unsafe_code)]

pub mod batch;
pub mod check;
pub mod checkpoint;
pub mod clickhouse;
pub mod config;
pub mod daemon;
pub mod heartbeat;
pub mod insert;
pub mod metrics;
pub mod notify;
pub mod parse;
pub mod plan;
pub mod quarantine;
pub mod queue;
pub mod stats;
pub mod status;
pub mod tail;
