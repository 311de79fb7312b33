//! `chtail check`: everything `run` would need, checked once, every problem
//! printed. Exit status 0 only if all is well.

use std::fs::File;
use std::path::Path;

use crate::checkpoint::Checkpoints;
use crate::clickhouse::{Delivery, Server, schema_of};
use crate::config::Config;

/// Prints a report to stdout and returns the number of problems found.
pub async fn check(config: &Config) -> usize {
    let mut problems = 0;
    let mut bad = |what: String| {
        println!("PROBLEM  {what}");
        problems += 1;
    };
    println!("ok       configuration is valid");

    // State directory.
    let dir = &config.state.dir;
    match std::fs::create_dir_all(dir).and_then(|()| probe_writable(dir)) {
        Ok(()) => println!("ok       state directory {} is writable", dir.display()),
        Err(e) => bad(format!("state directory {}: {e}", dir.display())),
    }
    match Checkpoints::read_only(dir) {
        Ok(files) => println!("ok       state: {} file(s) checkpointed", files.len()),
        Err(e) => bad(format!("state: {e}")),
    }

    // Sources.
    for pattern in config.sources.iter().flat_map(|s| &s.paths) {
        let paths: Vec<_> = match glob::glob(pattern) {
            Ok(p) => p.flatten().filter(|p| p.is_file()).collect(),
            Err(e) => {
                bad(format!("source {pattern}: {e}"));
                continue;
            }
        };
        if paths.is_empty() {
            println!(
                "note     source {pattern}: no file matches yet (files that appear later are picked up)"
            );
        }
        for p in paths {
            match File::open(&p) {
                Ok(_) => println!("ok       source {pattern}: {} is readable", p.display()),
                Err(e) => bad(format!(
                    "source {pattern}: cannot read {}: {e}",
                    p.display()
                )),
            }
        }
    }

    // ClickHouse.
    let ch = &config.clickhouse;
    let server = match Server::new(ch) {
        Ok(s) => s,
        Err(e) => {
            bad(e);
            return problems;
        }
    };
    let mut reachable = None;
    for one in server.each() {
        match one.version().await {
            Ok(v) => {
                println!(
                    "ok       ClickHouse {v} at {} answers as user {}",
                    one.url(),
                    ch.user
                );
                reachable.get_or_insert((one, v));
            }
            Err(f) => bad(format!(
                "ClickHouse at {} does not answer as user {}: {} ({})",
                one.url(),
                ch.user,
                f.message,
                f.advice()
            )),
        }
    }
    let Some((server, version)) = reachable else {
        return problems;
    };
    let table = format!("{}.{}", ch.database, ch.table);
    let mut columns = match server.describe().await {
        Ok(c) => c,
        Err(f) => {
            bad(format!("cannot describe table {table}: {}", f.message));
            return problems;
        }
    };
    if columns.is_none() {
        if ch.create_table {
            match server.create_default_table(version).await {
                Ok(()) => println!("ok       table {table} did not exist; created it"),
                Err(f) => bad(format!("cannot create table {table}: {}", f.message)),
            }
            columns = server.describe().await.ok().flatten();
        } else {
            bad(format!(
                "table {table} does not exist and create_table = false"
            ));
        }
    }
    if let Some(columns) = columns {
        match schema_of(&columns) {
            Ok(schema) => {
                println!("ok       table {table}: JSON key -> column (type):");
                for c in schema.columns() {
                    let ty = &columns
                        .iter()
                        .find(|d| d.name == c.name)
                        .map(|d| d.ty.clone())
                        .unwrap_or_default();
                    println!("           {} -> {} ({ty})", c.name, c.name);
                }
            }
            Err(unsupported) => {
                for u in unsupported {
                    bad(format!("table {table}: {u}"));
                }
            }
        }
    }
    match server.delivery(version).await {
        Delivery::ExactlyOnce(why) => {
            println!(
                "ok       delivery is exactly-once: {why}; a batch re-sent after a crash carries the same deduplication token"
            );
        }
        Delivery::AtLeastOnce(why) => {
            println!(
                "note     delivery is at-least-once: {why}. A batch inserted just before a crash, before its checkpoint, is sent again"
            );
        }
    }
    problems
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".chtail-check");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(probe)
}
