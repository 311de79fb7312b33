//! A real ClickHouse cluster on loopback, from the Debian packages that the
//! README's test command installs: one ZooKeeper 3.8 and three 18.16
//! servers forming two shards, the first with two replicas (`a1`, `a2`),
//! the second with one (`b1`). Tables are created with `ON CLUSTER` DDL:
//! a `ReplicatedMergeTree` per shard (`argus_events_local`) and a
//! `Distributed` table over them (`argus_events`). Everything runs in the
//! host's network or in a test's own namespace ([`Netns`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::{ClickHouse, free_port, watched};

/// The cluster's name in `remote_servers`.
pub(crate) const CLUSTER: &str = "chtail";

/// One ZooKeeper server (standalone), from Debian's `zookeeper` package.
pub(crate) struct ZooKeeper {
    pub port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    child: Option<Child>,
    netns: Option<String>,
}

impl ZooKeeper {
    pub(crate) fn start(netns: Option<&Netns>) -> ZooKeeper {
        assert!(
            Path::new("/usr/share/java/zookeeper.jar").exists(),
            "no ZooKeeper: install Debian's zookeeper (the README's test command does)"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}/data\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\nmaxClientCnxns=0\n4lw.commands.whitelist=ruok,srvr\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut zk = ZooKeeper {
            port,
            dir,
            _tmp: tmp,
            child: None,
            netns: netns.map(|n| n.name.clone()),
        };
        zk.spawn();
        zk
    }

    fn spawn(&mut self) {
        let java = format!(
            "java -Xmx256m -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar \
             org.apache.zookeeper.server.ZooKeeperServerMain {}/zoo.cfg",
            self.dir.display()
        );
        self.child = Some(watched(&in_netns(&self.netns, &java), &self.dir));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.ruok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "ZooKeeper did not start on port {}: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
        );
    }

    /// Whether ZooKeeper serves sessions: `srvr` names its mode only then
    /// (`ruok` answers `imok` earlier, and a server that connects in that
    /// moment gets no session; 18.16's DDL then crashes on the null one).
    fn ruok(&self) -> bool {
        let probe = format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{} && echo srvr >&3 && timeout 2 cat <&3'",
            self.port
        );
        Command::new("sh")
            .arg("-c")
            .arg(in_netns(&self.netns, &probe))
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Mode: standalone"))
    }

    /// Stops ZooKeeper (its data stays); `resume` starts it again.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub(crate) fn resume(&mut self) {
        self.spawn();
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn in_netns(netns: &Option<String>, command: &str) -> String {
    match netns {
        Some(ns) => format!("ip netns exec {ns} {command}"),
        None => command.to_string(),
    }
}

/// ZooKeeper and three servers: `nodes[0]` and `nodes[1]` are shard 1's
/// replicas, `nodes[2]` is shard 2.
pub(crate) struct Cluster {
    pub nodes: Vec<ClickHouse>,
    pub zk: ZooKeeper,
    /// Each node's interserver port (replicas fetch parts through it).
    pub interserver: Vec<u16>,
}

/// (shard, replica name) of each node.
const LAYOUT: [(u32, &str); 3] = [(1, "a1"), (1, "a2"), (2, "b1")];

impl Cluster {
    pub(crate) fn start(netns: Option<&Netns>) -> Cluster {
        Cluster::start_with(netns, None)
    }

    /// [`Cluster::start`] with the first node's server running as `uid`
    /// (see [`ClickHouse::start_node`]).
    pub(crate) fn start_with(netns: Option<&Netns>, first_as: Option<u32>) -> Cluster {
        let zk = ZooKeeper::start(netns);
        let ports: Vec<(u16, u16, u16)> = LAYOUT
            .iter()
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let replica = |i: usize| {
            format!(
                "<replica><host>127.0.0.1</host><port>{}</port></replica>",
                ports[i].1
            )
        };
        let remote = format!(
            "<remote_servers><{CLUSTER}>\
             <shard><internal_replication>true</internal_replication>{}{}</shard>\
             <shard><internal_replication>true</internal_replication>{}</shard>\
             </{CLUSTER}></remote_servers>",
            replica(0),
            replica(1),
            replica(2)
        );
        // Nodes start one after another: three servers starting at once
        // on two cores take longer than the three in a row.
        let nodes: Vec<ClickHouse> = LAYOUT
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, ((shard, name), (http, tcp, inter)))| {
                let extra = format!(
                    "{remote}\n<zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node>\
                     <session_timeout_ms>6000</session_timeout_ms></zookeeper>\n\
                     <macros><shard>{shard:02}</shard><replica>{name}</replica></macros>\n\
                     <interserver_http_port>{inter}</interserver_http_port>\
                     <interserver_http_host>127.0.0.1</interserver_http_host>\n\
                     <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>",
                    zk = zk.port
                );
                ClickHouse::start_node(netns, *http, *tcp, extra, first_as.filter(|_| i == 0))
            })
            .collect();
        // Each node must hold a ZooKeeper session before any DDL.
        for node in &nodes {
            let deadline = Instant::now() + Duration::from_secs(60);
            while node
                .try_query("SELECT count() FROM system.zookeeper WHERE path = '/'")
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "no ZooKeeper session at {}",
                    node.url()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Cluster {
            nodes,
            zk,
            interserver: ports.iter().map(|p| p.2).collect(),
        }
    }

    /// Creates `db` on every node with `ON CLUSTER` DDL: the default
    /// table's columns as `argus_events_local` (`ReplicatedMergeTree`, one
    /// ZooKeeper path per shard) and `argus_events`, a `Distributed` table
    /// over it sharded by `sharding_key`.
    pub(crate) fn create(&self, db: &str, sharding_key: &str) {
        let first = &self.nodes[0];
        // A node's DDL worker may still be making its first ZooKeeper
        // session just after start: the first statement is retried.
        let deadline = Instant::now() + Duration::from_secs(90);
        let drop = format!("DROP DATABASE IF EXISTS {db} ON CLUSTER {CLUSTER}");
        while let Err(e) = first.try_query(&drop) {
            assert!(Instant::now() < deadline, "{drop}: {e}");
            std::thread::sleep(Duration::from_secs(1));
        }
        first.query(&format!("CREATE DATABASE {db} ON CLUSTER {CLUSTER}"));
        first.query(&format!(
            "CREATE TABLE {db}.argus_events_local ON CLUSTER {CLUSTER} \
             (ts String, event LowCardinality(String), guild_id String, \
             type LowCardinality(String), command String, duration_ms Float64) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}/argus_events', '{{replica}}') \
             ORDER BY (guild_id, ts)"
        ));
        first.query(&format!(
            "CREATE TABLE {db}.argus_events ON CLUSTER {CLUSTER} AS {db}.argus_events_local \
             ENGINE = Distributed({CLUSTER}, {db}, argus_events_local, {sharding_key})"
        ));
    }

    /// A `url = [...]` value listing the replicas of `shard` (1 or 2).
    pub(crate) fn shard_urls(&self, shard: u32) -> String {
        let urls: Vec<String> = LAYOUT
            .iter()
            .zip(&self.nodes)
            .filter(|((s, _), _)| *s == shard)
            .map(|(_, n)| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Waits until every replica of every shard has fetched what its
    /// siblings hold (`SYSTEM SYNC REPLICA`), so that a count through the
    /// `Distributed` table sees everything whichever replica it reads.
    pub(crate) fn sync(&self, db: &str) {
        for node in &self.nodes {
            node.query(&format!("SYSTEM SYNC REPLICA {db}.argus_events_local"));
        }
    }
}
