//! Faults of the host: the state disk fills up while the bot writes at its
//! pace. chtail must never run ahead of its state (no INSERT without its
//! manifest on disk, no next batch before the last checkpoint is written),
//! must say so (`/ready`, the metric, the log), must resume by itself, and
//! a stop meanwhile must say what is uncommitted and exit 75.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    self, BOT_RATE, BOT_SECS, Env, SHORT, Writer, http_get, metrics_port, one_at_a_time,
    peak_rss_kib, sample, shared, wait_until,
};

/// A small tmpfs for the state directory, unmounted on drop.
struct SmallDisk<'a>(&'a Path);

impl<'a> SmallDisk<'a> {
    /// `None` (with the reason printed) where a tmpfs cannot be mounted.
    fn mount(dir: &'a Path) -> Option<SmallDisk<'a>> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        if !out.status.success() {
            println!(
                "SKIPPED: cannot mount a tmpfs here ({}); the full-disk test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk(dir))
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .output()
            .expect("dd");
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// The bot writing `n` events at its pace, chtail shipping them, and the
/// state disk filled once the first rows are in.
fn fill_while_shipping(env: &Env, disk: &SmallDisk<'_>, n: u64) -> (Writer, support::Chtail) {
    let writer = Writer::bot(env, n, 4 << 20);
    let chtail = env.start();
    wait_until(SHORT, "the first rows", || {
        support::count(shared(), &env.table()) > 0
    });
    disk.fill();
    (writer, chtail)
}

fn metric(port: u16, name: &str) -> f64 {
    sample(&http_get(port, "/metrics").1, name).unwrap_or(0.0)
}

// Issue 12, case 1: with the state disk full, chtail kept inserting, said
// it was ready and drained, and sent everything again after a restart.
#[test]
fn a_full_state_disk_stops_shipping_until_it_has_room_and_loses_nothing() {
    let _one = one_at_a_time();
    let ch = shared();
    let env = Env::new(ch, "state_full", "events.jsonl", "");
    let Some(disk) = SmallDisk::mount(&env.state) else {
        return;
    };
    let port = metrics_port(&env);
    let n = BOT_RATE * BOT_SECS;
    let (writer, mut chtail) = fill_while_shipping(&env, &disk, n);
    wait_until(SHORT, "/ready to say the state cannot be written", || {
        let (code, body) = http_get(port, "/ready");
        code == 503 && body.contains("cannot be written")
    });
    // Nothing more goes out while the state cannot be written.
    let stalled = support::count(ch, &env.table());
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(200));
        let rows = support::count(ch, &env.table());
        assert!(
            rows <= stalled + 50_000,
            "at most the batch in flight may land once the disk is full: {stalled} -> {rows}"
        );
    }
    let held = support::count(ch, &env.table());
    assert!(metric(port, "chtail_state_write_failures_total") > 0.0);
    assert!(
        chtail
            .logs()
            .contains("nothing more is sent until it can be written"),
        "{}",
        chtail.logs()
    );
    // Two more failed attempts to write the state, and still no insert.
    let failures = metric(port, "chtail_state_write_failures_total");
    wait_until(SHORT, "two more failed state writes", || {
        metric(port, "chtail_state_write_failures_total") >= failures + 2.0
    });
    assert_eq!(
        support::count(ch, &env.table()),
        held,
        "no insert while the state is stuck"
    );
    disk.free();
    wait_until(SHORT, "/ready again", || http_get(port, "/ready").0 == 200);
    let rate = writer.finish();
    let peak = peak_rss_kib(chtail.pid());
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "state disk full mid-stream: {n} events at {rate:.0}/s, {held} rows when it stalled: {distinct} arrived, \
         {dups} duplicated; peak RSS {peak} KiB"
    );
    assert_eq!((distinct, dups), (n, 0), "{}", chtail.logs());
    assert!(
        chtail.logs().contains("can be written again"),
        "{}",
        chtail.logs()
    );
    assert!(peak < 48 << 10, "peak RSS {peak} KiB");
}

#[test]
fn a_stop_while_the_state_cannot_be_written_says_so_and_exits_75() {
    let _one = one_at_a_time();
    let ch = shared();
    let env = Env::new(
        ch,
        "state_full_stop",
        "events.jsonl",
        "[shutdown]\ntimeout = \"3s\"",
    );
    let Some(disk) = SmallDisk::mount(&env.state) else {
        return;
    };
    let n = BOT_RATE * BOT_SECS;
    let (writer, mut chtail) = fill_while_shipping(&env, &disk, n);
    std::thread::sleep(Duration::from_secs(3));
    chtail.signal("TERM");
    let status = chtail.wait(SHORT);
    assert_eq!(status.code(), Some(75), "{}", chtail.logs());
    assert!(
        chtail
            .logs()
            .contains("stopped while the state could not be written"),
        "{}",
        chtail.logs()
    );
    assert!(!chtail.logs().contains("drained: everything read"));
    disk.free();
    let rate = writer.finish();
    let mut chtail = env.start();
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "stopped with the state disk full, restarted with room: {n} events at {rate:.0}/s: {distinct} arrived, {dups} duplicated"
    );
    assert_eq!(distinct, n, "{}", chtail.logs());
    if ch.is_modern() {
        assert_eq!(dups, 0);
    } else {
        // 18.16 cannot deduplicate: at most the batch inserted and not
        // committed is sent again.
        assert!(dups <= 50_000, "{dups} duplicated");
    }
}

// Issue 12, case 4: a symlink in the log directory was followed anywhere.
#[test]
fn symlinks_are_skipped_unless_the_source_follows_them() {
    let ch = shared();
    let env = Env::new(ch, "symlinks", "*.jsonl", "");
    // Outside the log directory: a file that is not the bot's, and a file
    // of events that a link may point at.
    let secret = env.tmp.path().join("secret.txt");
    std::fs::write(&secret, "root:x:0:0:secret\n").unwrap();
    let elsewhere = env.tmp.path().join("elsewhere.jsonl");
    support::append(&elsewhere, 0, 100);
    std::os::unix::fs::symlink(&secret, env.log("shadow.jsonl")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.log("linked.jsonl")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.log("linked-again.jsonl")).unwrap();
    support::append(&env.log("events.jsonl"), 1000, 1200);
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), 200);
    assert!(chtail.terminate(SHORT).success());
    let quarantine =
        std::fs::read_to_string(env.state.join("quarantine.jsonl")).unwrap_or_default();
    assert!(!quarantine.contains("secret"), "{quarantine}");
    assert!(
        chtail.logs().contains("skipping a symlink"),
        "{}",
        chtail.logs()
    );
    let check = support::chtail_cmd(&["check"], &env.config);
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("is a symlink and is skipped"), "{check}");

    // Followed: the target is read, once, however many links point at it.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[[source]]\n", "[[source]]\nfollow_symlinks = true\n");
    std::fs::write(&env.config, text).unwrap();
    std::fs::remove_file(env.log("shadow.jsonl")).unwrap();
    let mut chtail = env.start();
    let (distinct, dups) = support::finish(ch, &env.table(), 300, &mut chtail, SHORT);
    assert_eq!((distinct, dups), (300, 0), "{}", chtail.logs());
}

// Issue 12, case 5: files and output.
#[test]
fn state_files_are_private_urls_are_masked_and_a_closed_stdout_is_quiet() {
    use std::os::unix::fs::PermissionsExt;
    let ch = shared();
    let env = Env::new(ch, "private", "events.jsonl", "");
    support::append(&env.log("events.jsonl"), 0, 10);
    support::append_raw(&env.log("events.jsonl"), b"not json\n");
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), 10);
    wait_until(SHORT, "the quarantine record", || {
        env.state.join("quarantine.jsonl").exists()
    });
    assert!(chtail.terminate(SHORT).success());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.state), 0o700, "the state directory");
    for f in ["state.json", "inflight.json", "lock", "quarantine.jsonl"] {
        assert_eq!(mode(&env.state.join(f)), 0o600, "{f}");
    }

    // A password in the URL is never printed.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let url = ch.url().replace("http://", "http://writer:s3cret-pw@");
    std::fs::write(&env.config, text.replace(&ch.url(), &url)).unwrap();
    let check = support::chtail_cmd(&["check"], &env.config);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!all.contains("s3cret-pw"), "{all}");
    assert!(all.contains("***@"), "{all}");

    // `status | head -1`: the reader is gone before chtail writes.
    for cmd in [["status"], ["check"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chtail"))
            .args(cmd)
            .arg("--config")
            .arg(&env.config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{cmd:?}: {stderr}");
    }
}

/// Whether the tests run as root (needed to run chtail as another user);
/// says so when not.
fn root() -> bool {
    let uid = Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    if !root {
        println!("SKIPPED: needs root, to run chtail as another user (nobody)");
    }
    root
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
}

/// Lets nobody reach the test's directory and read its config.
fn open_to_nobody(env: &Env) {
    chmod(env.tmp.path(), 0o755);
    chmod(&env.config, 0o644);
}

/// `chtail ARGS --config` as the user nobody. setpriv execs chtail itself,
/// so a signal to the child reaches chtail.
fn as_nobody(env: &Env, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        env!("CARGO_BIN_EXE_chtail"),
    ])
    .args(args)
    .arg("--config")
    .arg(&env.config);
    cmd
}

// Issue 12, case 5: `check` created a missing state directory, and `run`
// exited 1 for one it could not write.
#[test]
fn check_creates_nothing_and_run_exits_64_for_a_state_directory_it_may_not_write() {
    let ch = shared();
    let env = Env::new(ch, "state_denied", "events.jsonl", "");
    support::append(&env.log("events.jsonl"), 0, 10);
    let check = support::chtail_cmd(&["check"], &env.config);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("does not exist yet"), "{text}");
    assert!(!env.state.exists(), "check created the state directory");
    if !root() {
        return;
    }
    open_to_nobody(&env);
    std::fs::create_dir(&env.state).unwrap();
    chmod(&env.state, 0o700); // root's: nobody may not write it
    let out = as_nobody(&env, &["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("state.dir must be"), "{stderr}");
}

// Issue 12, case 3: a log directory chtail's user cannot read was "no file
// matches yet" to `check` and silence to `run`.
#[test]
fn an_unreadable_log_directory_is_a_problem_and_an_error_until_fixed() {
    let ch = shared();
    let env = Env::new(ch, "unreadable", "events.jsonl", "");
    if !root() {
        return;
    }
    // chtail runs as nobody: it can reach its config and state, not the
    // logs (root's, 0750).
    open_to_nobody(&env);
    std::fs::create_dir_all(&env.state).unwrap();
    let chown = Command::new("chown")
        .arg("nobody")
        .arg(&env.state)
        .status()
        .unwrap();
    assert!(chown.success());
    support::append(&env.log("events.jsonl"), 0, 100);
    chmod(&env.logs, 0o750);
    let as_nobody = |args: &[&str]| as_nobody(&env, args);
    let check = as_nobody(&["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PROBLEM  source") && text.contains("Permission denied"),
        "{text}"
    );
    assert!(!text.contains("all is well"), "{text}");

    let log = env.tmp.path().join("chtail-nobody.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let mut run = as_nobody(&["run"]).stderr(stderr).spawn().unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(SHORT, "an error about the directory", || {
        logs().contains("cannot list a source directory") && logs().contains("Permission denied")
    });
    assert!(logs().contains("ERROR"), "{}", logs());
    // Fixed while it runs: picked up without a restart.
    chmod(&env.logs, 0o755);
    support::expect_rows(ch, &env.table(), 100);
    let _ = Command::new("kill").arg(run.id().to_string()).status();
    let status = run.wait().unwrap();
    assert!(status.success(), "{}", logs());
}

// Memory and descriptors must not grow with the number of files: 2,000
// rotated files matched by a wide glob, each read to its end in one round;
// idle, they give their descriptors back (`tail/park.rs`). Then the bot
// writes at its pace through a RotatingFileHandler, which renames every
// one of them at each rollover, and a few old ones grow or move out of the
// glob: every line arrives once, from files reopened by identity.
#[test]
fn two_thousand_rotated_files_cost_neither_memory_nor_lines() {
    let _one = one_at_a_time();
    let ch = shared();
    let env = Env::new(ch, "many_files", "events.jsonl*", "");
    let files = 2_000;
    let per_file = 100;
    for f in 0..files {
        let first = f * per_file;
        support::append(
            &env.log(&format!("events.jsonl.{}", f + 1)),
            first,
            first + per_file,
        );
    }
    let old = files * per_file;
    let mut chtail = env.start();
    wait_until(SHORT, "every row", || {
        support::count(ch, &env.table()) >= old
    });
    let pid = chtail.pid();
    let open = descriptors(pid);
    wait_until(SHORT * 2, "idle files closed", || {
        descriptors(pid) <= 128 + 64
    });
    let parked = descriptors(pid);

    // Old files written to again, one of them moved out of the glob (six
    // digits: the seq is read back from six digits of `ts`).
    let more = 900_000;
    support::append(&env.log("events.jsonl.7"), more, more + 100);
    support::append(&env.log("events.jsonl.1234"), more + 100, more + 200);
    support::append(&env.log("events.jsonl.42"), more + 200, more + 300);
    std::fs::rename(env.log("events.jsonl.42"), env.log("moved.log")).unwrap();
    // The bot, renaming all of them at each rollover.
    let live = BOT_RATE * BOT_SECS;
    let mut writer = Writer::start(
        &env.log("events.jsonl"),
        "rotating5000",
        old,
        live,
        4 << 20,
        BOT_RATE,
    );
    let mut most = 0;
    while writer.running() {
        most = most.max(descriptors(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = writer.finish();
    let peak = peak_rss_kib(pid);
    let n = old + live + 300;
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "{files} rotated files ({old} events), then {live} written at {rate:.0}/s renaming them all at \
         each rollover, 300 more in old files: {distinct} of {n} arrived, {dups} duplicated; peak RSS \
         {peak} KiB; descriptors {open} with all files read, {parked} once idle, at most {most} while \
         the bot wrote"
    );
    assert_eq!((distinct, dups), (n, 0), "{}", chtail.logs());
    assert!(peak < 48 << 10, "peak RSS {peak} KiB");
    assert!(most <= 128 + 64, "{most} descriptors while the bot wrote");
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
}

/// Sets the soft limit on open files of `pid`, within its hard limit
/// (raising a hard limit needs CAP_SYS_RESOURCE, which a container may not
/// give even to root).
fn set_nofile(pid: u32, soft: u64) -> bool {
    let hard = nofile_hard(pid);
    Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={}:", soft.min(hard)),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn nofile_hard(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/limits: {e}"))
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no open-files limit for {pid}"))
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/fd: {e}"))
        .count()
}

// Issue 12, case 2: descriptors run out. With room for only a few files,
// and 1,100 connections held open on the metrics port, chtail must say so
// (an ERROR naming the error, the metric), never take a file it cannot
// open or list for gone, keep its descriptors under the limit, and read
// everything once the limit is raised, without a restart.
#[test]
fn running_out_of_descriptors_is_an_error_never_a_file_gone() {
    let _one = one_at_a_time();
    let ch = shared();
    let env = Env::new(
        ch,
        "emfile",
        "events.jsonl*",
        "[tail]\npoll_interval = \"200ms\"",
    );
    let mut chtail = env.start();
    let pid = chtail.pid();
    let port = metrics_port(&env);
    wait_until(SHORT, "/ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(port, "/ready").0 == 200
    });
    // The test holds many connections itself.
    if !set_nofile(std::process::id(), 4096) || !set_nofile(pid, 40) {
        println!("SKIPPED: prlimit cannot change the descriptor limits here (needs root)");
        return;
    }
    let baseline = descriptors(pid);
    let mut held = Vec::new();
    for _ in 0..1_100 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
            held.push(c);
        }
    }
    // Rotated files a plenty: 1 MiB each at the bot's pace.
    let n = BOT_RATE * BOT_SECS;
    let mut writer = Writer::bot(&env, n, 1 << 20);
    let mut most = 0;
    while writer.running() {
        most = most.max(descriptors(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let rate = writer.finish();
    let files = std::fs::read_dir(&env.logs).unwrap().count();
    let starved_logs = chtail.logs();
    assert!(
        starved_logs.contains("Too many open files"),
        "no EMFILE reported ({files} files, {} connections held):\n{starved_logs}",
        held.len()
    );
    assert!(
        !starved_logs.contains("finished a rotated file"),
        "a file chtail could not open or list was taken for gone:\n{starved_logs}"
    );
    drop(held);
    assert!(set_nofile(pid, 65_536), "cannot raise the limit again");
    let (distinct, dups) = support::finish(ch, &env.table(), n, &mut chtail, SHORT);
    println!(
        "descriptors limited to 40 ({baseline} in use at the start, at most {most} while {files} files \
         were written at {rate:.0}/s with 1,100 connections attempted on the metrics port): \
         {distinct} of {n} arrived once the limit was raised, {dups} duplicated"
    );
    assert!(
        rate >= BOT_RATE as f64 * 0.5,
        "the writer reached only {rate:.0} events/s: not the bot's pace"
    );
    assert_eq!((distinct, dups), (n, 0), "{}", chtail.logs());
}
