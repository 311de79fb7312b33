//! Test support: a private ClickHouse server, chtail as a real process, and
//! log directories with the bot's way of writing and rotating.
//!
//! The server is Debian's `clickhouse-server` (installed by `.ci/run` if
//! missing), or a modern `clickhouse` binary if one is on PATH. It listens on
//! free loopback ports with a temporary data directory, and a watchdog stops
//! it when the test process ends, however it ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) mod cluster;
pub(crate) mod netns;

/// A private ClickHouse server.
pub(crate) struct ClickHouse {
    pub http_port: u16,
    tcp_port: u16,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// The chdb front (modern ClickHouse) rather than a server binary.
    modern: bool,
    /// Also serving HTTPS on this port, with a certificate from `ca.pem`.
    pub tls_port: Option<u16>,
    /// The network namespace it runs in (`None`: the host's).
    netns: Option<String>,
    /// More server configuration (a cluster node's `remote_servers`,
    /// `zookeeper`, `macros`), inside `<yandex>`.
    extra_config: String,
    /// Run the server as this uid (its directory handed to it), so that
    /// an `iptables` owner match can cut everything it sends.
    run_as: Option<u32>,
}

/// A loopback port free now and never handed out before in this process:
/// the kernel may give the same free port to two tests running side by
/// side, and the second server, unable to listen, would leave its test
/// talking to the first test's server.
pub(crate) fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The shared server for tests that do not stop it.
pub(crate) fn shared() -> &'static ClickHouse {
    static SERVER: OnceLock<ClickHouse> = OnceLock::new();
    SERVER.get_or_init(ClickHouse::start)
}

impl ClickHouse {
    pub(crate) fn start() -> ClickHouse {
        ClickHouse::start_in(None)
    }

    /// Debian's server inside a network namespace ([`netns::Netns`]).
    pub(crate) fn start_in(netns: Option<&netns::Netns>) -> ClickHouse {
        ClickHouse::start_node(netns, free_port(), free_port(), String::new(), None)
    }

    /// Debian's server on the given ports, with `extra_config` (a cluster
    /// node, [`cluster::Cluster`]).
    pub(crate) fn start_node(
        netns: Option<&netns::Netns>,
        http_port: u16,
        tcp_port: u16,
        extra_config: String,
        run_as: Option<u32>,
    ) -> ClickHouse {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut ch = ClickHouse {
            http_port,
            tcp_port,
            dir,
            _tmp: Some(tmp),
            child: None,
            modern: false,
            tls_port: None,
            netns: netns.map(|n| n.name.clone()),
            extra_config,
            run_as,
        };
        ch.write_config();
        ch.spawn();
        ch
    }

    /// A modern ClickHouse (26.x, through chdb) behind the HTTP front in
    /// `tests/support/chdb_front.py`. `password` is required if not empty.
    pub(crate) fn modern(password: &str) -> ClickHouse {
        ClickHouse::modern_with(password, false, None)
    }

    /// [`ClickHouse::modern`] inside a network namespace.
    pub(crate) fn modern_in(netns: &netns::Netns) -> ClickHouse {
        ClickHouse::modern_with("", false, Some(netns))
    }

    /// [`ClickHouse::modern`], also serving HTTPS with a certificate signed
    /// by a throwaway CA (`ca_file()`).
    pub(crate) fn modern_tls() -> ClickHouse {
        ClickHouse::modern_with("", true, None)
    }

    fn modern_with(password: &str, tls: bool, netns: Option<&netns::Netns>) -> ClickHouse {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("password"), password).unwrap();
        if tls {
            let script = "set -e
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=chtail-test-ca
            openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf";
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut ch = ClickHouse {
            http_port: free_port(),
            tcp_port: 0,
            dir,
            _tmp: Some(tmp),
            child: None,
            modern: true,
            tls_port: tls.then(free_port),
            netns: netns.map(|n| n.name.clone()),
            extra_config: String::new(),
            run_as: None,
        };
        ch.spawn();
        ch
    }

    /// Makes the chdb front refuse, as bad data, any insert holding `marker`.
    pub(crate) fn reject_rows_with(&self, marker: &str) {
        std::fs::write(self.dir.join("reject"), marker).unwrap();
    }

    /// The settings of every insert the modern front received, one line
    /// each (`k=v k=v`).
    pub(crate) fn insert_settings(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("insert_settings"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub(crate) fn is_modern(&self) -> bool {
        self.modern
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><console>0</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
{extra}
</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port,
            extra = self.extra_config,
        );
        // A cluster node runs `ON CLUSTER` DDL for other sessions: what the
        // default table needs on 18.16 is set for every session there.
        let profile = if self.extra_config.is_empty() {
            ""
        } else {
            "<allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>"
        };
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage>{profile}</default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default>
    <writer><password>s3cret-pw</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></writer>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#
        );
        std::fs::write(self.dir.join("config.xml"), config).expect("write config");
        std::fs::write(self.dir.join("users.xml"), users).expect("write users");
    }

    fn spawn(&mut self) {
        let config = self.dir.join("config.xml");
        let server = if self.modern {
            let password = std::fs::read_to_string(self.dir.join("password")).unwrap_or_default();
            let tls = match self.tls_port {
                Some(p) => format!("{p} {d}/server.pem {d}/server.key", d = self.dir.display()),
                None => String::new(),
            };
            format!(
                "python3 {}/tests/support/chdb_front.py {}/data {} '{password}' {tls}",
                env!("CARGO_MANIFEST_DIR"),
                self.dir.display(),
                self.http_port
            )
        } else if which("clickhouse") {
            format!("clickhouse server --config-file={}", config.display())
        } else if which("clickhouse-server") {
            format!("clickhouse-server --config-file={}", config.display())
        } else {
            panic!(
                "no ClickHouse server: install Debian's clickhouse-server (the README's test command does)"
            );
        };
        let server = match self.run_as {
            Some(uid) => {
                let status = Command::new("chown")
                    .args(["-R", &format!("{uid}:{uid}")])
                    .arg(&self.dir)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown the server's directory");
                format!("setpriv --reuid={uid} --regid={uid} --clear-groups {server}")
            }
            None => server,
        };
        let server = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} {server}"),
            None => server,
        };
        self.child = Some(watched(&server, &self.dir));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut exited = None;
        while Instant::now() < deadline {
            // A server that exited (it could not listen, say) must not
            // pass for started because something else answers its port.
            exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                break;
            }
            if self.try_query("SELECT 1").is_ok_and(|r| r.trim() == "1") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("server.err.log")).unwrap_or_default();
        let out = std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default();
        panic!(
            "ClickHouse did not start on port {} (exited: {exited:?}):\n{log}\n{out}",
            self.http_port
        );
    }

    /// The server process's pid (the chdb front's Python process for the
    /// modern engine). For `benches/compare.rs`.
    #[allow(dead_code)]
    pub(crate) fn server_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .expect("the server's pid")
    }

    /// The native protocol's port (`clickhouse-client`); 0 for the chdb front.
    /// For `benches/compare.rs`.
    #[allow(dead_code)]
    pub(crate) fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// Stops the server (its data stays); `resume` starts it again.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        // The port is free once nothing answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_query("SELECT 1").is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the server process itself, mid-whatever.
    pub(crate) fn kill9(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    pub(crate) fn resume(&mut self) {
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections neither answer nor reset,
    /// as when a partition drops packets. [`ClickHouse::thaw`] ends it.
    pub(crate) fn freeze(&self) {
        self.signal_server("STOP");
    }

    pub(crate) fn thaw(&self) {
        self.signal_server("CONT");
    }

    fn signal_server(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the server's pid");
        let status = Command::new("kill")
            .args([&format!("-{sig}"), pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} of the server");
    }

    /// Runs a query; panics on failure.
    pub(crate) fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"))
    }

    pub(crate) fn try_query(&self, sql: &str) -> Result<String, String> {
        match &self.netns {
            None => http_post(self.http_port, "/", sql.as_bytes(), &self.password()),
            Some(ns) => self.query_in(ns, sql),
        }
    }

    /// A query from inside the server's network namespace, with curl.
    fn query_in(&self, ns: &str, sql: &str) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "60"])
            .args(["-H", &format!("X-ClickHouse-Key: {}", self.password())])
            .args(["--data-binary", "@-", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}/", self.http_port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        if out.status.success() && code == "200" {
            Ok(body.to_string())
        } else {
            Err(format!(
                "HTTP {code}: {body}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The password the server requires ("" for none).
    pub(crate) fn password(&self) -> String {
        std::fs::read_to_string(self.dir.join("password")).unwrap_or_default()
    }

    /// `SELECT count()` etc. as a number.
    pub(crate) fn number(&self, sql: &str) -> u64 {
        let out = self.query(sql);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql:?} returned {out:?}"))
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.0 POST (no chunked replies), enough for tests.
/// Runs `server` (a shell command) with its pid in `dir/pid` and its output
/// in `dir/stdout`, under a watchdog that stops it when this test process
/// is gone, even if it panicked or was killed.
pub(crate) fn watched(server: &str, dir: &Path) -> Child {
    let script = format!(
        "{server} >{d}/stdout 2>&1 & s=$!; echo $s >{d}/pid; \
         trap 'kill $s; wait $s; exit 0' TERM; \
         while kill -0 {me} 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.5; done; \
         kill $s 2>/dev/null; wait $s",
        d = dir.display(),
        me = std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a server")
}

pub(crate) fn http_post(
    port: u16,
    path: &str,
    body: &[u8],
    password: &str,
) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-ClickHouse-Key: {password}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(body.to_string())
    } else {
        Err(format!("{}: {body}", head.lines().next().unwrap_or("")))
    }
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A test's own directories, database and config.
pub(crate) struct Env {
    pub tmp: tempfile::TempDir,
    pub logs: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub database: String,
}

impl Env {
    /// `extra` is appended to the config (e.g. a `[batch]` section).
    pub(crate) fn new(ch: &ClickHouse, name: &str, glob: &str, extra: &str) -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let logs = tmp.path().join("logs");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&logs).unwrap();
        let database = format!("t_{name}");
        ch.query(&format!("DROP DATABASE IF EXISTS {database}"));
        let config = tmp.path().join("chtail.toml");
        let text = format!(
            r#"[clickhouse]
url = "{url}"
password = "{password}"
database = "{database}"
retry_initial_backoff = "50ms"
retry_max_backoff = "500ms"
request_timeout = "10s"

[[source]]
paths = ["{logs}/{glob}"]

[state]
dir = "{state}"

{tail}

{metrics}

{extra}
"#,
            tail = if extra.contains("[tail]") {
                ""
            } else {
                "[tail]\npoll_interval = \"200ms\""
            },
            metrics = if extra.contains("[metrics]") {
                String::new()
            } else {
                format!("[metrics]\nlisten = \"127.0.0.1:{}\"", free_port())
            },
            url = ch.url(),
            password = ch.password(),
            logs = logs.display(),
            state = state.display(),
        );
        std::fs::write(&config, text).unwrap();
        Env {
            tmp,
            logs,
            state,
            config,
            database,
        }
    }

    pub(crate) fn table(&self) -> String {
        format!("{}.argus_events", self.database)
    }

    /// Appends `text` (whole sections) to the config.
    pub(crate) fn append_config(&self, text: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, format!("{config}\n{text}")).unwrap();
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    pub(crate) fn start(&self) -> Chtail {
        Chtail::start(&self.config, &self.tmp.path().join("chtail.log"))
    }

    /// Waits until the running chtail has settled: every non-empty log file
    /// is tracked and committed up to its last `unterminated` bytes (a line
    /// still waiting for its newline), and the pipeline holds nothing (the
    /// queue gauge counts a chunk until its batch is done with). Then no
    /// insert is pending, so what ClickHouse holds is final; a count taken
    /// now can fail, unlike one taken after a pause.
    pub(crate) fn settled(&self, unterminated: u64) {
        let port = metrics_port(self);
        wait_until(SHORT, "chtail settled", || {
            let out = chtail_cmd(&["status", "--json"], &self.config);
            let Ok(rows) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            let rows = rows["files"].as_array().cloned().unwrap_or_default();
            let tracked = |p: &Path| rows.iter().any(|r| r["path"].as_str() == p.to_str());
            let every_file = std::fs::read_dir(&self.logs)
                .unwrap()
                .flatten()
                .all(|e| e.metadata().is_ok_and(|m| m.len() == 0) || tracked(&e.path()));
            let lag: u64 = rows.iter().filter_map(|r| r["lag_bytes"].as_u64()).sum();
            let held = sample(&http_get(port, "/metrics").1, "chtail_queue_rows");
            every_file && lag == unterminated && held == Some(0.0)
        });
    }
}

/// One event line; `seq` makes each line unique (it goes into `ts`).
pub(crate) fn event(seq: u64) -> String {
    let (event, extra) = if seq.is_multiple_of(3) {
        ("interaction", String::new())
    } else {
        (
            "app_command",
            format!(
                r#", "command": "cmd{}", "duration_ms": {}.5"#,
                seq % 5,
                seq % 100
            ),
        )
    };
    format!(
        r#"{{"ts": "2026-11-22T10:00:00.{seq:06}+00:00", "event": "{event}", "guild_id": "{}", "type": "application_command"{extra}, "seq": {seq}}}"#,
        seq % 7
    )
}

/// Appends events `from..to` to `path`, one write per line as a logger would.
pub(crate) fn append(path: &Path, from: u64, to: u64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for seq in from..to {
        buf.push_str(&event(seq));
        buf.push('\n');
        if buf.len() > 64 << 10 {
            f.write_all(buf.as_bytes()).unwrap();
            buf.clear();
        }
    }
    f.write_all(buf.as_bytes()).unwrap();
}

pub(crate) fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// Waits until `f` holds, or panics with `what` after `timeout`.
pub(crate) fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// chtail as a real process.
pub(crate) struct Chtail {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Chtail {
    pub(crate) fn start(config: &Path, log: &Path) -> Chtail {
        Chtail::start_with_env(config, log, &[])
    }

    /// With extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub(crate) fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Chtail {
        Chtail::spawn(Command::new(env!("CARGO_BIN_EXE_chtail")), config, log, env)
    }

    /// Inside a network namespace (`ip netns exec` becomes chtail: the
    /// pid is chtail's).
    pub(crate) fn start_in(ns: &netns::Netns, config: &Path, log: &Path) -> Chtail {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_chtail")]);
        Chtail::spawn(c, config, log, &[])
    }

    fn spawn(mut command: Command, config: &Path, log: &Path, env: &[(&str, &str)]) -> Chtail {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .env(
                "CHTAIL_LOG",
                std::env::var("CHTAIL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start chtail");
        Chtail {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// SIGTERM, then the exit status (panics if it does not exit in time).
    pub(crate) fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait(within)
    }

    pub(crate) fn wait(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "chtail did not exit within {within:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Chtail {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- chtail log ({}) ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
        self.kill9();
    }
}

/// Rows in the table and how many distinct events among them.
pub(crate) fn count_and_unique(ch: &ClickHouse, table: &str) -> (u64, u64) {
    let out = ch.query(&format!("SELECT count(), uniqExact(ts) FROM {table}"));
    let mut it = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Rows in `table`, 0 if it does not exist yet.
pub(crate) fn count(ch: &ClickHouse, table: &str) -> u64 {
    ch.try_query(&format!("SELECT count() FROM {table}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) const SHORT: Duration = Duration::from_secs(60);

/// Waits for `n` rows, then checks there are exactly `n`, all distinct.
pub(crate) fn expect_rows(ch: &ClickHouse, table: &str, n: u64) {
    wait_until(SHORT, &format!("{n} rows in {table}"), || {
        count(ch, table) >= n
    });
    // A wrong extra batch would be in flight behind the n-th row: give it
    // a moment. (Tests that must prove nothing more arrives use
    // `Env::settled`, which waits on chtail's own state instead.)
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        count_and_unique(ch, table),
        (n, n),
        "rows and distinct events in {table}"
    );
}

/// `GET path` on the metrics listener: (status code, body).
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}

/// The value of one sample line (`name{labels}`) in an exposition.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub(crate) fn metrics_port(env: &Env) -> u16 {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let at = text.find("listen = \"127.0.0.1:").unwrap() + "listen = \"127.0.0.1:".len();
    text[at..].split('"').next().unwrap().parse().unwrap()
}

/// The bot's pace, for every rotation and delivery test that writes live.
pub(crate) const BOT_RATE: u64 = 20_000;
pub(crate) const BOT_SECS: u64 = 15;

/// The bot writer at its own pace, its output kept to learn the rate it
/// reached.
pub(crate) struct Writer {
    child: Child,
}

impl Writer {
    /// `tests/support/bot.py` writing `count` events from `first` at `rate`.
    pub(crate) fn start(
        path: &Path,
        handler: &str,
        first: u64,
        count: u64,
        max_bytes: u64,
        rate: u64,
    ) -> Writer {
        let child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/bot.py"))
            .arg(path)
            .args([
                handler,
                &first.to_string(),
                &count.to_string(),
                &max_bytes.to_string(),
                &rate.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        Writer { child }
    }

    /// The bot at its pace: `n` events through a `RotatingFileHandler`
    /// on the env's `events.jsonl`, rolling over at `max_bytes`.
    pub(crate) fn bot(env: &Env, n: u64, max_bytes: u64) -> Writer {
        Writer::start(
            &env.log("events.jsonl"),
            "rotating",
            0,
            n,
            max_bytes,
            BOT_RATE,
        )
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the writer; returns the events per second it reached.
    pub(crate) fn finish(self) -> f64 {
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "the bot writer failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let rate = text
            .split('(')
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no rate in the writer's output: {text}"));
        println!("writer: {}", text.trim());
        rate
    }
}

/// Tests that load the machine (a writer at the bot's pace) run one at a
/// time, so that each gets the pace it asks for.
pub(crate) fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The machine's load averages (1, 5, 15 minutes), for the benchmarks.
#[allow(dead_code)]
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The peak resident memory of a running process so far (VmHWM), in KiB.
/// Panics if it cannot be read: a test that cannot observe must not pass.
/// User + system CPU seconds of a running process. For the benchmarks.
#[allow(dead_code)]
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (f[11] + f[12]) as f64 / ticks
}

pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Waits until `table` holds all `n` distinct events (or `timeout` passed),
/// then stops chtail, which drains whatever it read, and counts: after its
/// exit nothing more can arrive. Returns (distinct events, duplicated
/// rows). chtail must exit 0.
pub(crate) fn finish(
    ch: &ClickHouse,
    table: &str,
    n: u64,
    chtail: &mut Chtail,
    timeout: Duration,
) -> (u64, u64) {
    let deadline = Instant::now() + timeout;
    while (seq_counts(ch, table).len() as u64) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = chtail.terminate(SHORT);
    assert!(
        status.success(),
        "chtail exited with {status}; log:
{}",
        chtail.logs()
    );
    let seqs = seq_counts(ch, table);
    let dups = seqs.values().map(|c| c - 1).sum();
    (seqs.len() as u64, dups)
}

/// Seqs of the events in the table (decoded from `ts`), with how often each
/// occurs.
pub(crate) fn seq_counts(ch: &ClickHouse, table: &str) -> std::collections::HashMap<u64, u64> {
    let out = ch.query(&format!(
        "SELECT substring(ts, 21, 6), count() FROM {table} GROUP BY ts"
    ));
    out.lines()
        .filter_map(|l| {
            let (seq, n) = l.split_once('\t')?;
            Some((seq.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Seqs of the events found in the files of `dir` (compressed ones too).
pub(crate) fn seqs_on_disk(dir: &Path) -> std::collections::HashSet<u64> {
    let mut out = std::collections::HashSet::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let o = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        } else {
            std::fs::read_to_string(&path).unwrap_or_default()
        };
        for line in text.lines() {
            if let Some(at) = line.find("10:00:00.")
                && let Ok(seq) = line[at + 9..at + 15].parse()
            {
                out.insert(seq);
            }
        }
    }
    out
}

/// Whether `chtail status` shows every non-empty file of `logs` tracked and
/// committed to its end.
pub(crate) fn all_committed(config: &Path, logs: &Path) -> bool {
    let out = chtail_cmd(&["status", "--json"], config);
    let Ok(rows) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    let rows = rows["files"].as_array().cloned().unwrap_or_default();
    let done: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| r["lag_bytes"].as_u64() == Some(0))
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect();
    std::fs::read_dir(logs).unwrap().flatten().all(|e| {
        e.metadata().is_ok_and(|m| m.len() == 0) || done.contains(&e.path().display().to_string())
    })
}

/// Waits until `table` holds `n` distinct events (or `timeout` passes),
/// gives a stray extra insert a moment to show, and returns
/// (distinct events, duplicated rows).
pub(crate) fn tally(ch: &ClickHouse, table: &str, n: u64, timeout: Duration) -> (u64, u64) {
    let deadline = Instant::now() + timeout;
    while (seq_counts(ch, table).len() as u64) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(700));
    let seqs = seq_counts(ch, table);
    let dups = seqs.values().map(|c| c - 1).sum();
    (seqs.len() as u64, dups)
}

/// A small deterministic random source for kill timings (xorshift).
pub(crate) struct XorShift(pub u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `chtail SUBCOMMAND [ARGS] --config CONFIG` to completion.
pub(crate) fn chtail_cmd(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chtail"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run chtail")
}
