//! The `chtail` command: parse arguments, set up logging, hand over.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use chtail::config::Config;

use chtail::daemon::EXIT_BAD_CONFIG;

/// Where the package puts the config.
const DEFAULT_CONFIG: &str = "/etc/chtail/chtail.toml";

#[derive(Parser)]
#[command(
    name = "chtail",
    version = env!("CHTAIL_LONG_VERSION"),
    about = "Ship a bot's JSON event log into ClickHouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground, logging to stderr.
    Run {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format: plain text (for journald) or one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate the config, reach ClickHouse, check (or create) the table.
    Check {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check the config, the state directory and the sources only:
        /// ClickHouse is not contacted and nothing is created.
        #[arg(long)]
        offline: bool,
    },
    /// Show each tracked file: path, identity, size, committed offset, lag.
    Status {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The bot's four dashboard figures for one guild: interactions per
    /// day, top commands, each command's count and average duration, and
    /// the overall average duration.
    Report {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The guild's id (digits).
        #[arg(long, value_name = "ID")]
        guild: String,
        /// Interactions per day over this many days, today included (UTC).
        #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Rows of the command lists (default: 10 top commands, 50 with
        /// their durations).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: Option<u32>,
        /// Read the rollups (once `chtail schema apply` made them) or the
        /// raw events; `auto` reads the rollups when they are applied.
        #[arg(long, value_enum, default_value_t = ReportFrom::Auto)]
        from: ReportFrom,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Managed schema: versioned migrations (the dashboards' daily rollup
    /// and the operator's own .sql files) and retention TTLs.
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Print the man page or a shell's completions, made from these
    /// definitions (the package installs them).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFrom {
    Auto,
    Raw,
    Rollups,
}

#[derive(Subcommand)]
enum SchemaAction {
    /// What is applied, pending or changed, the retention in force, and
    /// how events reach the rollups.
    Status {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print exactly the SQL `apply` would run on this server; change
    /// nothing.
    Plan {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run the pending migrations in version order, record each, and set
    /// the retention TTLs.
    Apply {
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// What `chtail generate` prints.
#[derive(Clone, Copy, ValueEnum)]
enum Generated {
    /// The man page (roff), chtail(1).
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    pin_malloc_threshold();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            let path = config;
            let Some(config) = load(&path) else {
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(chtail::daemon::run(path, config)) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, offline } => {
            init_logging(LogFormat::Text);
            let Some(config) = load(&config) else {
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let problems = match rt {
                Ok(rt) => rt.block_on(chtail::check::check(&config, offline)),
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if problems == 0 {
                chtail::out!("all is well");
                ExitCode::SUCCESS
            } else {
                chtail::out!("{problems} problem(s) found");
                ExitCode::FAILURE
            }
        }
        Command::Generate { what } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut out = std::io::stdout().lock();
            let shell = match what {
                Generated::Man => {
                    return match clap_mangen::Man::new(cmd).render(&mut out) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("chtail: {e}");
                            ExitCode::FAILURE
                        }
                    };
                }
                Generated::Bash => clap_complete::Shell::Bash,
                Generated::Zsh => clap_complete::Shell::Zsh,
                Generated::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "chtail", &mut out);
            ExitCode::SUCCESS
        }
        Command::Report {
            config,
            guild,
            days,
            limit,
            from,
            json,
        } => {
            let Some(config) = load(&config) else {
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            let from = match from {
                ReportFrom::Auto => chtail::report::From::Auto,
                ReportFrom::Raw => chtail::report::From::Raw,
                ReportFrom::Rollups => chtail::report::From::Rollups,
            };
            let request = chtail::report::Request {
                guild,
                days,
                limit,
                from,
            };
            let Some(rt) = one_shot_runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(chtail::report::run(&config, &request)) {
                Ok(report) if json => {
                    chtail::out!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    chtail::out!("{}", chtail::report::render(&report).trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chtail: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Schema { action } => {
            let (config, action) = match action {
                SchemaAction::Status { config } => (config, chtail::schema::Action::Status),
                SchemaAction::Plan { config } => (config, chtail::schema::Action::Plan),
                SchemaAction::Apply { config } => (config, chtail::schema::Action::Apply),
            };
            let Some(config) = load(&config) else {
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            if action == chtail::schema::Action::Apply {
                init_logging(LogFormat::Text);
            }
            let Some(rt) = one_shot_runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(chtail::schema::run(&config, action)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chtail: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Status { config, json } => {
            let Some(config) = load(&config) else {
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            if json {
                return match chtail::status::report(&config) {
                    Ok(report) => {
                        chtail::out!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("chtail: cannot read the state: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            match chtail::status::collect(&config) {
                Ok(rows) => {
                    if chtail::status::daemon_running(&config) {
                        chtail::out!("chtail is running with this state directory");
                    } else {
                        chtail::out!("chtail is not running; offsets as last committed");
                    }
                    chtail::status::print_table(&rows);
                    chtail::status::print_rotations(&config);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chtail: cannot read the state: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The runtime of a command that runs once and exits.
fn one_shot_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("chtail: cannot start the runtime: {e}");
            None
        }
    }
}

fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            let text = format!("chtail: {e}");
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                // Each line an error in the journal (see init_logging).
                for line in text.lines() {
                    eprintln!("<3>{line}");
                }
            } else {
                eprint!("{text}");
            }
            None
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CHTAIL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        // Under systemd, stderr goes to the journal (JOURNAL_STREAM says
        // so): each line starts with its syslog priority, which journald
        // takes as the entry's level (`journalctl -p warning`), and the
        // journal's own timestamp stands in for chtail's.
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => builder
            .event_format(Prioritised(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .init(),
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A text line prefixed with `<N>`, the syslog priority of its level.
struct Prioritised<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Prioritised<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// glibc raises its mmap threshold each time a large block is freed (up to
/// 32 MiB); from then on chunks, batches and compression buffers come from
/// the heap, which fragments and does not shrink. Pinned at glibc's own
/// default (128 KiB), large blocks stay mmapped and go back to the system
/// when freed. Measured with the state disk full while the bot writes, then
/// the catch-up (README, "Memory"): peak RSS 41-47 MiB, 34 MiB pinned
/// (jemalloc-style allocators measured worse: mimalloc 100-112 MiB).
#[allow(unsafe_code)]
fn pin_malloc_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it runs first in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
