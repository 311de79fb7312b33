//! A real cluster: ZooKeeper and three 18.16 servers in two shards
//! (`tests/support/cluster.rs`), the bot writing at its pace through
//! Python's `RotatingFileHandler`, chtail SIGKILLed, a replica SIGKILLed,
//! ZooKeeper stopped, a replica cut off the network, and three chtails at
//! once. Every case prints events written, rows, lost and duplicated, and
//! asserts none lost and none twice: a replay is the same rows in the same
//! blocks, which a Replicated table drops as identical (with no token on
//! 18.16).

use std::time::{Duration, Instant};

use crate::support::cluster::Cluster;
use crate::support::netns::Netns;
use crate::support::{
    self, BOT_RATE, BOT_SECS, Chtail, ClickHouse, Env, SHORT, Writer, chtail_cmd, one_at_a_time,
    peak_rss_kib, seq_counts,
};

const PEAK_RSS_KIB: u64 = 48 << 10;
const LOCAL: &str = "argus_events_local";

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

/// An env writing to shard 1's replicated table through both its replicas,
/// with the cluster's tables made for it.
fn shard_one(cluster: &Cluster, name: &str, glob: &str) -> Env {
    let env = env_on(&cluster.nodes[0], name, glob, &cluster.shard_urls(1), LOCAL);
    cluster.create(&env.database, "cityHash64(guild_id)");
    env
}

/// Waits until `node` sees `want` distinct events in `table` (or a
/// minute passes), then returns (distinct events, duplicated rows).
fn tally(node: &ClickHouse, table: &str, want: u64) -> (u64, u64) {
    let deadline = Instant::now() + SHORT;
    let mut seqs = seq_counts(node, table);
    while (seqs.len() as u64) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        seqs = seq_counts(node, table);
    }
    (seqs.len() as u64, seqs.values().map(|c| c - 1).sum())
}

/// Blocks the servers dropped as identical to one they had
/// (`DuplicatedInsertedBlocks`, counted since each server started).
fn dropped_blocks(nodes: &[ClickHouse]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            n.query("SELECT sum(value) FROM system.events WHERE event = 'DuplicatedInsertedBlocks'")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

/// Lets chtail finish what is on disk, stops it, and checks that each of
/// shard 1's replicas holds every one of the `n` events exactly once.
/// Returns how many blocks the replicas dropped as identical.
fn judge_shard_one(cluster: &Cluster, env: &Env, n: u64, case: &str, chtail: &mut Chtail) -> u64 {
    let table = format!("{}.{LOCAL}", env.database);
    // Every event in (or a minute passed), then a drained stop: what the
    // replicas hold after that is final.
    tally(&cluster.nodes[0], &table, n);
    assert!(chtail.terminate(SHORT).success(), "{}", chtail.logs());
    cluster.sync(&env.database);
    for node in &cluster.nodes[..2] {
        let (distinct, dups) = tally(node, &table, n);
        println!(
            "{case}: {n} events written; replica {}: {} rows, {} lost, {dups} duplicated",
            node.http_port,
            distinct + dups,
            n - distinct
        );
        assert_eq!((distinct, dups), (n, 0), "{}", chtail.logs());
    }
    let dropped = dropped_blocks(&cluster.nodes[..2]);
    println!("{case}: {dropped} re-sent blocks dropped as identical by the replicas");
    dropped
}

/// The bot at its pace into shard 1's replicas (`url` lists both), chtail
/// SIGKILLed at least 8 times, half of them mid-insert, restarted each
/// time.
fn kills_into_replicas(name: &str, glob: &str) {
    let _one = one_at_a_time();
    let cluster = Cluster::start(None);
    let env = shard_one(&cluster, name, glob);
    let n = BOT_RATE * BOT_SECS;
    let mut writer = Writer::bot(&env, n, 2 << 20);
    let (mut kills, mut peak) = (0, 0);
    let mut rng = support::XorShift(0x9e3779b97f4a7c15);
    while writer.running() || kills < 8 {
        let mut chtail = env.start();
        let until = Instant::now() + Duration::from_millis(700 + rng.next() % 1000);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            peak = peak.max(peak_rss_kib(chtail.pid()));
        }
        if kills % 2 == 1 {
            // Every other kill lands mid-insert: the replica is frozen
            // past a batch's max_wait, so an INSERT is surely in flight;
            // thawed after the kill, the replica may commit what it took
            // in, and the restarted chtail sends that batch again.
            cluster.nodes[0].freeze();
            std::thread::sleep(Duration::from_millis(1500));
            chtail.kill9();
            cluster.nodes[0].thaw();
        } else {
            chtail.kill9();
        }
        kills += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let rate = writer.finish();
    let mut chtail = env.start();
    let case = format!("{name}: chtail SIGKILLed {kills} times, the bot at {rate:.0}/s");
    let dropped = judge_shard_one(&cluster, &env, n, &case, &mut chtail);
    // The kills did interrupt inserts: their batches were sent again, and
    // the replicas dropped them as identical blocks.
    let replays = chtail
        .logs()
        .matches("re-sending the batch that was in flight")
        .count();
    println!("{name}: {replays} interrupted batches re-sent");
    assert!(
        replays >= 1 && dropped >= 1,
        "no kill interrupted an insert"
    );
    println!("{name}: peak RSS {peak} KiB");
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

#[test]
fn kill_9_into_a_replicated_shard_live_name_only() {
    kills_into_replicas("cl_kill_narrow", "events.jsonl");
}

#[test]
fn kill_9_into_a_replicated_shard_rotated_names_too() {
    kills_into_replicas("cl_kill_wide", "events.jsonl*");
}

// The replica chtail writes to (the first listed) is SIGKILLed while the
// bot writes: the insert in flight fails, chtail fails over to the other
// replica with the same block, and the killed one catches up when back.
#[test]
fn the_replica_being_written_to_is_killed_mid_insert() {
    let _one = one_at_a_time();
    let mut cluster = Cluster::start(None);
    let env = shard_one(&cluster, "cl_replica_kill", "events.jsonl*");
    let n = BOT_RATE * BOT_SECS;
    let mut chtail = env.start();
    let mut writer = Writer::bot(&env, n, 2 << 20);
    std::thread::sleep(Duration::from_secs(4));
    cluster.nodes[0].kill9();
    std::thread::sleep(Duration::from_secs(10));
    cluster.nodes[0].resume();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = writer.finish();
    let logs = chtail.logs();
    assert!(logs.contains("failing over"), "{logs}");
    let case = format!("replica a1 SIGKILLed for 10 s, the bot at {rate:.0}/s");
    judge_shard_one(&cluster, &env, n, &case, &mut chtail);
}

// ZooKeeper is stopped for 30 s while the bot writes: the replicated table
// is read-only, inserts fail and are retried (the log says why), nothing
// is dropped, nothing lands twice.
#[test]
fn zookeeper_stopped_for_30_s() {
    let _one = one_at_a_time();
    let mut cluster = Cluster::start(None);
    let env = shard_one(&cluster, "cl_zk_stop", "events.jsonl");
    let n = BOT_RATE * BOT_SECS;
    let mut chtail = env.start();
    let mut writer = Writer::bot(&env, n, 2 << 20);
    std::thread::sleep(Duration::from_secs(3));
    cluster.zk.stop();
    let mut peak = 0;
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(peak_rss_kib(chtail.pid()));
    }
    cluster.zk.resume();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = writer.finish();
    let logs = chtail.logs();
    assert!(
        logs.contains("ZooKeeper is unreachable"),
        "the log says what is happening: {logs}"
    );
    let case = format!("ZooKeeper stopped for 30 s, the bot at {rate:.0}/s");
    judge_shard_one(&cluster, &env, n, &case, &mut chtail);
    println!("zookeeper stopped: peak RSS {peak} KiB");
    assert!(peak < PEAK_RSS_KIB, "peak RSS {peak} KiB");
}

// The replica chtail writes to is cut off the network for 20 s inside a
// namespace of the test's own, where the whole cluster and chtail run:
// every packet to its ports is dropped, and every packet it sends (its
// server runs as its own uid: ZooKeeper and the other replica are cut off
// too). The insert hangs until request_timeout, chtail fails over, the
// replica catches up when healed.
#[test]
fn a_replica_cut_off_the_network() {
    let _one = one_at_a_time();
    let ns = match Netns::new("cluster") {
        Ok(ns) => ns,
        Err(why) => {
            println!("skipped: no network namespace here: {why}");
            return;
        }
    };
    const ITS_UID: u32 = 65534;
    let cluster = Cluster::start_with(Some(&ns), Some(ITS_UID));
    let env = shard_one(&cluster, "cl_cut", "events.jsonl");
    let n = BOT_RATE * BOT_SECS;
    let mut chtail = Chtail::start_in(&ns, &env.config, &env.tmp.path().join("chtail.log"));
    let mut writer = Writer::bot(&env, n, 2 << 20);
    std::thread::sleep(Duration::from_secs(3));
    let a1 = &cluster.nodes[0];
    for port in [a1.http_port, a1.tcp_port(), cluster.interserver[0]] {
        let port = port.to_string();
        ns.drop_packets(&["-p", "tcp", "--sport", &port, "-j", "DROP"]);
        ns.drop_packets(&["-p", "tcp", "--dport", &port, "-j", "DROP"]);
    }
    let uid = ITS_UID.to_string();
    ns.drop_packets(&["-m", "owner", "--uid-owner", &uid, "-j", "DROP"]);
    std::thread::sleep(Duration::from_secs(20));
    ns.heal();
    while writer.running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = writer.finish();
    let logs = chtail.logs();
    assert!(logs.contains("failing over"), "{logs}");
    let case = format!("replica a1 cut off for 20 s, the bot at {rate:.0}/s");
    judge_shard_one(&cluster, &env, n, &case, &mut chtail);
}

/// Three bots, each with its own log, state and chtail, writing at once:
/// bot k writes events k·300,000 … (k+1)·300,000. `target(k)` gives the
/// (url list, table) of bot k's chtail. Each chtail is SIGKILLed twice
/// during the writing. The union is counted through the Distributed table.
fn three_bots(name: &str, cluster: &Cluster, target: impl Fn(usize) -> (String, &'static str)) {
    let per_bot = BOT_RATE * BOT_SECS;
    let envs: Vec<Env> = (0..3)
        .map(|k| {
            let (urls, table) = target(k);
            env_on(
                &cluster.nodes[0],
                &format!("{name}_{k}"),
                "events.jsonl*",
                &urls,
                table,
            )
        })
        .collect();
    let db = format!("t_{name}");
    cluster.create(&db, "cityHash64(guild_id)");
    for env in &envs {
        let text = std::fs::read_to_string(&env.config).unwrap();
        std::fs::write(&env.config, text.replace(&env.database, &db)).unwrap();
    }
    let mut writers: Vec<Writer> = envs
        .iter()
        .zip(0u64..)
        .map(|(env, k)| {
            Writer::start(
                &env.log("events.jsonl"),
                "rotating",
                k * per_bot,
                per_bot,
                2 << 20,
                BOT_RATE,
            )
        })
        .collect();
    let mut chtails: Vec<Chtail> = envs.iter().map(Env::start).collect();
    let mut kills = 0;
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(3000 + 1000 * round));
        for (c, env) in chtails.iter_mut().zip(&envs) {
            c.kill9();
            kills += 1;
            *c = env.start();
        }
    }
    while writers.iter_mut().any(Writer::running) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rates: Vec<String> = writers
        .into_iter()
        .map(|w| format!("{:.0}", w.finish()))
        .collect();
    let n = 3 * per_bot;
    tally(&cluster.nodes[0], &format!("{db}.argus_events"), n);
    for c in &mut chtails {
        assert!(c.terminate(SHORT).success(), "{}", c.logs());
    }
    cluster.sync(&db);
    let (distinct, dups) = tally(&cluster.nodes[0], &format!("{db}.argus_events"), n);
    let per_shard: Vec<u64> = [0, 2]
        .iter()
        .map(|&i| support::count(&cluster.nodes[i], &format!("{db}.{LOCAL}")))
        .collect();
    println!(
        "{name}: 3 bots at {} events/s, each chtail SIGKILLed twice ({kills} kills): {n} events \
         written; through the Distributed table {} rows, {} lost, {dups} duplicated \
         (shard 1: {} rows, shard 2: {} rows)",
        rates.join("/"),
        distinct + dups,
        n - distinct,
        per_shard[0],
        per_shard[1]
    );
    assert_eq!((distinct, dups), (n, 0));
}

#[test]
fn three_bots_each_into_its_shard() {
    let _one = one_at_a_time();
    let cluster = Cluster::start(None);
    // Bots 0 and 2 on shard 1's hosts, bot 1 on shard 2's.
    let shards = [1, 2, 1];
    three_bots("cl_bots_shards", &cluster, |k| {
        (cluster.shard_urls(shards[k]), LOCAL)
    });
}

#[test]
fn three_bots_through_the_distributed_table() {
    let _one = one_at_a_time();
    let cluster = Cluster::start(None);
    // Each chtail talks to its own host's server; the Distributed table
    // routes rows by cityHash64(guild_id), synchronously.
    three_bots("cl_bots_dist", &cluster, |k| {
        (format!("[\"{}\"]", cluster.nodes[k].url()), "argus_events")
    });
}

// What `check` and the start-up log say about each kind of target.
#[test]
fn check_states_the_delivery_mode_of_replicated_and_distributed_tables() {
    let _one = one_at_a_time();
    let cluster = Cluster::start(None);
    let env = shard_one(&cluster, "cl_check", "events.jsonl");
    support::append(&env.log("events.jsonl"), 0, 10);
    let check = |config: &std::path::Path| {
        let out = chtail_cmd(&["check"], config);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = check(&env.config);
    assert!(
        text.contains("delivery is exactly-once: ReplicatedMergeTree") && !text.contains("token"),
        "18.16 has no token; a Replicated table deduplicates without one:\n{text}"
    );
    // The Distributed table with a deterministic key: exactly once, and
    // what a Distributed insert means.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace(&format!("table = \"{LOCAL}\""), "table = \"argus_events\""),
    )
    .unwrap();
    let text = check(&env.config);
    assert!(
        text.contains("Distributed over cluster chtail")
            && text.contains("asynchronous forwarding")
            && text.contains("The safe choice")
            && text.contains("delivery is exactly-once: inserts go synchronously"),
        "{text}"
    );
    // Sharded by rand(): a replay splits anew, so at-least-once.
    let db = &env.database;
    cluster.nodes[0].query(&format!(
        "CREATE TABLE {db}.by_rand ON CLUSTER chtail AS {db}.{LOCAL} \
         ENGINE = Distributed(chtail, {db}, {LOCAL}, rand())"
    ));
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace("table = \"argus_events\"", "table = \"by_rand\""),
    )
    .unwrap();
    let text = check(&env.config);
    assert!(
        text.contains("delivery is at-least-once") && text.contains("not deterministic"),
        "{text}"
    );
    // The start-up log says the same as check.
    let mut chtail = env.start();
    support::wait_until(SHORT, "the delivery line", || {
        chtail.logs().contains("delivery is at-least-once")
    });
    assert!(chtail.terminate(SHORT).success());
}
