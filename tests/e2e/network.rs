//! Network faults, for real: chtail and the server run in a network
//! namespace of the test's own and talk over its loopback, while
//! `iptables` rules inside it drop packets. The bot writes at its pace
//! throughout. Cases, each on Debian's 18.16 and on the modern engine:
//!
//! - the replies of INSERTs the server committed are lost for longer than
//!   `request_timeout` (the case `insert_deduplication_token` is for);
//! - 30 % of all packets are lost for a minute, and the server is
//!   restarted in the middle of it;
//! - a two-minute partition that drops packets, never refusing them.
//!
//! Nothing is lost; the modern server (tokens) gets nothing twice; 18.16
//! gets at most the batches that were in flight twice; memory stays flat.
//! Without the rights to make a namespace (not root), each test says so and
//! skips.

use std::time::{Duration, Instant};

use crate::support::netns::Netns;
use crate::support::{
    self, BOT_RATE, BOT_SECS, Chtail, ClickHouse, Env, SHORT, Writer, one_at_a_time, peak_rss_kib,
};

/// The memory bound chtail keeps with default settings (README, "Memory").
const PEAK_RSS_KIB: u64 = 48 << 10;

/// Small batches, so that "the batches in flight" is a small number of rows.
const BATCH_ROWS: u64 = 20_000;

/// Dropped in this order: chtail, the server, the directories, the
/// namespace, then the lock that keeps the bot-pace tests apart.
struct Case {
    chtail: Chtail,
    ch: ClickHouse,
    env: Env,
    ns: Netns,
    peak: u64,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Case {
    /// The namespace, a server and chtail inside it, and the bot writing
    /// `n` events for two seconds already; `None` (and why) if a namespace
    /// cannot be made here.
    fn start(tag: &str, modern: bool, n: u64) -> Option<(Case, Writer)> {
        let one = one_at_a_time();
        let tag = if modern {
            format!("{tag}_m")
        } else {
            tag.to_string()
        };
        let ns = match Netns::new(&tag) {
            Ok(ns) => ns,
            Err(why) => {
                println!("SKIPPED: no network namespace with iptables here: {why}");
                return None;
            }
        };
        let ch = if modern {
            ClickHouse::modern_in(&ns)
        } else {
            ClickHouse::start_in(Some(&ns))
        };
        let env = Env::new(
            &ch,
            &format!("net_{tag}"),
            "events.jsonl",
            &format!(
                "[batch]\nmax_rows = {BATCH_ROWS}\n[metrics]\nlisten = \"\"\n\
                 [tail]\npoll_interval = \"1s\""
            ),
        );
        // Faster timeouts than the defaults, so that each case shows
        // several of them within its minute or two.
        let text = std::fs::read_to_string(&env.config).unwrap().replace(
            "request_timeout = \"10s\"",
            "request_timeout = \"4s\"\nconnect_timeout = \"2s\"",
        );
        std::fs::write(&env.config, text).unwrap();
        let chtail = Chtail::start_in(&ns, &env.config, &env.tmp.path().join("chtail.log"));
        let writer = Writer::bot(&env, n, 8 << 20);
        let mut case = Case {
            _one: one,
            ns,
            ch,
            env,
            chtail,
            peak: 0,
        };
        case.wait(Duration::from_secs(2));
        Some((case, writer))
    }

    fn port(&self) -> String {
        self.ch.http_port.to_string()
    }

    /// Waits `d`, sampling chtail's peak RSS.
    fn wait(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.peak = self.peak.max(peak_rss_kib(self.chtail.pid()));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Heals the network, waits for every event, stops chtail and judges.
    fn finish(mut self, what: &str, writer: Writer, n: u64) {
        self.ns.heal();
        let rate = writer.finish();
        self.peak = self.peak.max(peak_rss_kib(self.chtail.pid()));
        let (distinct, dups) =
            support::finish(&self.ch, &self.env.table(), n, &mut self.chtail, SHORT * 3);
        let server = if self.ch.is_modern() {
            "modern"
        } else {
            "18.16"
        };
        println!(
            "{what} ({server}): {n} events at {rate:.0}/s: {distinct} arrived, {dups} duplicated; \
             peak RSS {} KiB",
            self.peak
        );
        assert!(
            rate >= BOT_RATE as f64 * 0.5,
            "the writer reached only {rate:.0} events/s: not the bot's pace"
        );
        assert_eq!(
            distinct,
            n,
            "events lost; chtail log:\n{}",
            self.chtail.logs()
        );
        if self.ch.is_modern() {
            assert_eq!(dups, 0, "{}", self.chtail.logs());
        } else {
            // No token on 18.16: a batch the server may have committed
            // before its reply was lost is sent again. So at most the rows
            // of the attempts that failed can arrive twice.
            let unsure: u64 = self
                .chtail
                .logs()
                .lines()
                .filter(|l| l.contains("insert failed, will retry"))
                .filter_map(|l| {
                    l.split("rows=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            println!("18.16: {unsure} rows in attempts that failed");
            assert!(
                dups <= unsure,
                "{dups} duplicated, more than the {unsure} rows of failed attempts"
            );
        }
        assert!(self.peak < PEAK_RSS_KIB, "peak RSS {} KiB", self.peak);
    }
}

/// The longest the replies are dropped for, waiting for an insert to time
/// out.
const LOST_REPLIES_MAX: Duration = Duration::from_secs(60);

/// The replies of committed INSERTs dropped for longer than
/// `request_timeout`: the request goes through, the answer never comes.
fn lost_replies(modern: bool) {
    let n = BOT_RATE * BOT_SECS;
    let Some((mut case, w)) = Case::start("lr", modern, n) else {
        return;
    };
    case.wait(Duration::from_secs(2));
    case.ns
        .drop_packets(&["-p", "tcp", "--sport", &case.port(), "-j", "DROP"]);
    // At least 12 s, and on until an insert has timed out: a stream being
    // fed at the bot's pace fits its body into the socket's buffer for a
    // while, and only its end waits for a reply.
    let dropped = Instant::now();
    case.wait(Duration::from_secs(12));
    while !case.chtail.logs().contains("will retry") && dropped.elapsed() < LOST_REPLIES_MAX {
        case.wait(Duration::from_secs(1));
    }
    let lost = dropped.elapsed();
    case.ns.heal();
    case.wait(Duration::from_secs(2));
    let logs = case.chtail.logs();
    let timeouts = logs.matches("will retry").count();
    println!(
        "{timeouts} failed attempts, {} catch-up streams so far",
        logs.matches("catch-up stream inserted").count()
    );
    assert!(
        timeouts > 0,
        "no insert timed out in {lost:?} of lost replies: the fault did not bite"
    );
    case.finish(&format!("replies lost for {lost:.0?}"), w, n);
}

#[test]
fn lost_replies_18_16() {
    lost_replies(false);
}

#[test]
fn lost_replies_modern() {
    lost_replies(true);
}

/// 30 % of packets lost for a minute, the server restarted half-way.
fn packet_loss_and_a_restart(modern: bool) {
    let n = BOT_RATE * 30;
    let Some((mut case, w)) = Case::start("pl", modern, n) else {
        return;
    };
    case.ns.drop_packets(&[
        "-p",
        "tcp",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.3",
        "-j",
        "DROP",
    ]);
    case.wait(Duration::from_secs(30));
    // The rules stay while the server restarts; the support's own queries
    // (its start-up check) retry through the loss.
    case.ch.stop();
    case.ch.resume();
    case.wait(Duration::from_secs(30));
    case.finish("30 % packet loss for a minute, server restarted", w, n);
}

#[test]
fn packet_loss_and_a_server_restart_18_16() {
    packet_loss_and_a_restart(false);
}

#[test]
fn packet_loss_and_a_server_restart_modern() {
    packet_loss_and_a_restart(true);
}

/// Two minutes in which every packet to or from the server is dropped.
fn partition(modern: bool) {
    let n = BOT_RATE * BOT_SECS;
    let Some((mut case, w)) = Case::start("pt", modern, n) else {
        return;
    };
    let port = case.port();
    case.ns
        .drop_packets(&["-p", "tcp", "--sport", &port, "-j", "DROP"]);
    case.ns
        .drop_packets(&["-p", "tcp", "--dport", &port, "-j", "DROP"]);
    case.wait(Duration::from_secs(120));
    case.finish("a two-minute partition", w, n);
}

#[test]
fn a_two_minute_partition_18_16() {
    partition(false);
}

#[test]
fn a_two_minute_partition_modern() {
    partition(true);
}
