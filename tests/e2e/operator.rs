//! What an operator types: `--version`, `--help`, the default config path,
//! and `${VAR}` in the config file.

use std::process::Command;

use crate::support::{Env, shared};

fn chtail(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chtail"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run chtail")
}

#[test]
fn version_names_the_commit_date_and_target_and_help_the_default_config() {
    let out = chtail(&["--version"], &[]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("chtail {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        v.contains("(commit ") && v.contains(", built 20") && v.contains("linux"),
        "{v}"
    );
    for cmd in ["run", "check", "status"] {
        let out = chtail(&[cmd, "--help"], &[]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("[default: /etc/chtail/chtail.toml]"),
            "{cmd}: {help}"
        );
    }
    // Without --config, that is the file read.
    let out = chtail(&["check"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    if !std::path::Path::new("/etc/chtail/chtail.toml").exists() {
        assert!(err.contains("/etc/chtail/chtail.toml"), "{err}");
        assert_eq!(out.status.code(), Some(64));
    }
}

/// A secret from the environment; an unset variable is a config error that
/// names the key and the line, and a default stands in for one.
#[test]
fn config_variables_come_from_the_environment() {
    let ch = shared();
    let env = Env::new(ch, "config_vars", "events.jsonl", "");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let password = format!("password = \"{}\"", ch.password());
    assert!(text.contains(&password), "{text}");
    let line = text.lines().position(|l| l == password).unwrap() + 1;
    let text = text.replace(&password, "password = \"${CHTAIL_TEST_PASSWORD}\"");
    let text = text.replace(
        "[state]",
        "[batch]\nmax_rows = ${CHTAIL_TEST_ROWS:-1000}\n\n[state]",
    );
    std::fs::write(&env.config, &text).unwrap();
    let config = env.config.to_str().unwrap();
    let unset = chtail(&["check", "--config", config], &[]);
    let err = String::from_utf8_lossy(&unset.stderr);
    assert_eq!(unset.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("line {line}: `clickhouse.password`"))
            && err.contains("CHTAIL_TEST_PASSWORD is not set"),
        "{err}"
    );
    let set = chtail(
        &["check", "--config", config],
        &[("CHTAIL_TEST_PASSWORD", &ch.password())],
    );
    assert!(
        set.status.success(),
        "{}{}",
        String::from_utf8_lossy(&set.stdout),
        String::from_utf8_lossy(&set.stderr)
    );
}

/// `check --offline` checks the config, the state directory and the
/// sources, and neither reaches ClickHouse nor creates anything there.
#[test]
fn check_offline_creates_nothing_and_needs_no_server() {
    let ch = shared();
    let env = Env::new(ch, "check_offline", "events.jsonl", "");
    crate::support::append(&env.log("events.jsonl"), 0, 10);
    let config = env.config.to_str().unwrap();
    let out = chtail(&["check", "--offline", "--config", config], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("events.jsonl is readable") && text.contains("--offline"),
        "{text}"
    );
    let db = ch.query(&format!(
        "SELECT count() FROM system.databases WHERE name = '{}'",
        env.database
    ));
    assert_eq!(db.trim(), "0", "--offline created the database");
    // The same config with nothing listening: still fine offline.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    std::fs::write(&env.config, text.replace(&ch.url(), &dead)).unwrap();
    assert!(
        chtail(&["check", "--offline", "--config", config], &[])
            .status
            .success()
    );
    assert!(!chtail(&["check", "--config", config], &[]).status.success());
}
