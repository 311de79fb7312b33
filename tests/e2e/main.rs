//! The integration tests: one binary, one module per concern.
//!
//! Each test asserts what an operator would check: rows in ClickHouse,
//! offsets on disk, exit codes, or (for the tailer model) every line
//! delivered exactly once.

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod delivery;
mod faults;
mod live;
mod model;
mod modern;
mod network;
mod operator;
mod report;
mod rollups;
mod rotation;
mod schema;
mod service;
