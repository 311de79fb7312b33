//! A real cluster (issue: many bots, replicated tables): ZooKeeper and
//! three 18.16 servers in two shards (`tests/support/cluster.rs`), the bot
//! writing at its pace, chtail killed, replicas killed, ZooKeeper stopped,
//! a replica cut off, and three chtails at once. Every case counts events
//! written, rows, lost and duplicated.

use std::time::{Duration, Instant};

use crate::support::cluster::Cluster;
use crate::support::{
    self, BOT_RATE, BOT_SECS, ClickHouse, Env, SHORT, Writer, one_at_a_time, peak_rss_kib,
    seq_counts,
};

const PEAK_RSS_KIB: u64 = 48 << 10;

/// An env whose chtail writes to `table` through `urls` (a TOML array).
fn env_on(node: &ClickHouse, name: &str, glob: &str, urls: &str, table: &str) -> Env {
    let env = Env::new(node, name, glob, "[tail]\npoll_interval = \"1s\"");
    let text = std::fs::read_to_string(&env.config).unwrap().replacen(
        &format!("url = \"{}\"", node.url()),
        &format!("url = {urls}\ntable = \"{table}\"\ncreate_table = false"),
        1,
    );
    std::fs::write(&env.config, text).unwrap();
    env
}

/// (distinct events, duplicated rows) in `table` as `node` sees it.
fn tally(node: &ClickHouse, table: &str) -> (u64, u64) {
    let seqs = seq_counts(node, table);
    (seqs.len() as u64, seqs.values().map(|c| c - 1).sum())
}

#[test]
fn cluster_starts_and_replicates() {
    let _one = one_at_a_time();
    let cluster = Cluster::start(None);
    let env = env_on(&cluster.nodes[0], "cl_smoke", "events.jsonl", &cluster.shard_urls(1), "argus_events_local");
    cluster.create(&env.database, "cityHash64(guild_id)");
    support::append(&env.log("events.jsonl"), 0, 1000);
    let mut chtail = env.start();
    let table = format!("{}.argus_events_local", env.database);
    support::wait_until(SHORT, "1000 rows", || support::count(&cluster.nodes[0], &table) >= 1000);
    cluster.sync(&env.database);
    assert_eq!(tally(&cluster.nodes[1], &table), (1000, 0));
    assert!(chtail.terminate(SHORT).success());
    println!("{}", chtail.logs());
}
