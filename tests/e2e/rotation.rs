//! Rotation and state, file by file: a file rotated while chtail was down,
//! a deleted file, a corrupt or unusable state. The rotation schemes at the
//! bot's pace are in `live.rs`. The rows in ClickHouse are the judge:
//! nothing lost, nothing twice.

use std::time::Duration;

use crate::support::{self, ClickHouse, Env, SHORT, shared};

fn settle(ch: &ClickHouse, table: &str, n: u64) -> (u64, u64) {
    support::tally(ch, table, n, SHORT)
}

#[test]
fn a_file_rotated_away_while_chtail_was_down_is_found_and_finished() {
    let ch = shared();
    // Only the live name is a source: the rotated file is found by identity.
    let env = Env::new(ch, "down_rotation", "events.jsonl", "");
    let log = env.log("events.jsonl");
    support::append(&log, 0, 1000);
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), 1000);
    assert!(chtail.terminate(SHORT).success());

    support::append(&log, 1000, 1500);
    std::fs::rename(&log, env.log("events.jsonl.1")).unwrap();
    support::append(&log, 1500, 1800);
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), 1800);
    assert!(
        chtail.logs().contains("rotated while chtail was down"),
        "{}",
        chtail.logs()
    );
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn a_corrupt_state_file_falls_back_to_the_previous_copy() {
    let ch = shared();
    let env = Env::new(
        ch,
        "corrupt_state",
        "events.jsonl",
        "[batch]\nmax_rows = 100\nmax_wait = \"100ms\"",
    );
    let log = env.log("events.jsonl");
    support::append(&log, 0, 1000);
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), 1000);
    assert!(chtail.terminate(SHORT).success());

    std::fs::write(
        env.state.join("state.json"),
        b"{\"version\": 1, \"files\": [{\"id\"",
    )
    .unwrap();
    support::append(&log, 1000, 1200);
    let mut chtail = env.start();
    let (distinct, dups) = settle(ch, &env.table(), 1200);
    println!(
        "corrupt state.json: resumed from state.json.prev: {distinct} of 1200 events, {dups} sent again"
    );
    assert_eq!(distinct, 1200);
    assert!(
        dups <= 100,
        "at most the last batch is sent again, got {dups}"
    );
    assert!(
        chtail.logs().contains("resumed from the previous copy"),
        "{}",
        chtail.logs()
    );
    assert!(chtail.terminate(SHORT).success());
}

#[test]
fn with_no_usable_state_chtail_refuses_to_start_rather_than_start_from_zero() {
    let ch = shared();
    let env = Env::new(ch, "no_state", "events.jsonl", "");
    support::append(&env.log("events.jsonl"), 0, 10);
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(env.state.join("state.json"), b"\0\0\0").unwrap();
    std::fs::write(env.state.join("state.json.prev"), b"not json").unwrap();
    let mut chtail = env.start();
    let status = chtail.wait(SHORT);
    assert_eq!(status.code(), Some(65), "{}", chtail.logs());
    assert!(
        chtail.logs().contains("will not guess"),
        "{}",
        chtail.logs()
    );
    assert_eq!(support::count(ch, &env.table()), 0);
}

/// Descriptors chtail holds on files that were deleted.
/// Panics if it cannot look: "nothing held" must be an observation.
fn deleted_files_held(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|t| t.ends_with("(deleted)") && t.contains("/logs/"))
        .collect()
}

#[test]
fn a_deleted_file_is_read_to_its_end_and_its_descriptor_released() {
    let ch = shared();
    let env = Env::new(ch, "deleted", "events*.jsonl", "");
    let old = env.log("events-old.jsonl");
    support::append(&old, 0, 2000);
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), 2000);
    // Lines appended just before the deletion are still read, through the
    // open descriptor.
    support::append(&old, 2000, 2500);
    std::fs::remove_file(&old).unwrap();
    support::expect_rows(ch, &env.table(), 2500);
    support::wait_until(SHORT, "the deleted file's descriptor to be closed", || {
        deleted_files_held(chtail.pid()).is_empty()
    });
    assert!(chtail.logs().contains("released it"), "{}", chtail.logs());
    assert!(chtail.terminate(SHORT).success());
}

// More files than stay open: idle ones are closed (tail/park.rs), and one
// that grows, or moves out of the glob after growing, is reopened by
// identity and read.
#[test]
fn closed_idle_files_that_grow_or_move_are_read() {
    let ch = shared();
    let env = Env::new(ch, "parked", "events.jsonl*", "");
    let files = 200;
    for f in 0..files {
        support::append(
            &env.log(&format!("events.jsonl.{}", f + 1)),
            f * 10,
            f * 10 + 10,
        );
    }
    let mut chtail = env.start();
    support::expect_rows(ch, &env.table(), files * 10);
    let pid = chtail.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    support::wait_until(Duration::from_secs(90), "idle files closed", || fds() < 180);
    support::append(&env.log("events.jsonl.7"), 5_000, 5_010);
    support::append(&env.log("events.jsonl.42"), 5_010, 5_020);
    std::fs::rename(env.log("events.jsonl.42"), env.log("moved.log")).unwrap();
    support::expect_rows(ch, &env.table(), files * 10 + 20);
    assert!(chtail.terminate(SHORT).success());
}
