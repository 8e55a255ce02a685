//! The procwatch binary: flags, logging, the runtime; maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use procwatch::app::{self, Options};
use procwatch::config::{Config, format_duration};
use procwatch::http::{SocketSetting, WebConfigSource};
use procwatch::metrics::{Group, Groups};
use procwatch::output;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "procwatch",
    version,
    about = "Supervise programs, watch directories, export it all to Prometheus.",
    after_help = "Operate a running procwatch (status, start, stop, restart, signal, logs, reload): procwatch ctl --help"
)]
struct Cli {
    /// The YAML config; without it, an embedded demo config runs.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve on [default: the config's listen_address, else :9407].
    #[arg(long = "web.listen-address", value_name = "HOST:PORT")]
    listen_address: Option<String>,
    /// Path under which metrics are exposed.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics")]
    telemetry_path: String,
    /// TLS and basic auth, in the exporter-toolkit format node_exporter uses.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config: Option<PathBuf>,
    /// Allow the endpoints that change state: POST /-/reload and POST /api/v1/... .
    #[arg(long = "web.enable-lifecycle")]
    enable_lifecycle: bool,
    /// The local control socket for `procwatch ctl` (mode 0600), or `none` [default:
    /// $RUNTIME_DIRECTORY/procwatch.sock, else /run/procwatch.sock as root, else
    /// $XDG_RUNTIME_DIR/procwatch.sock].
    #[arg(long = "control.socket", value_name = "PATH")]
    control_socket: Option<String>,
    /// Log level.
    #[arg(long = "log.level", value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Log format.
    #[arg(long = "log.format", value_enum, default_value_t = LogFormat::Logfmt)]
    log_format: LogFormat,
    /// Validate the config, print what would run, and exit 0 (valid) or 1.
    #[arg(long = "check-config")]
    check_config: bool,
    #[command(flatten)]
    collectors: CollectorFlags,
}

/// `--no-collector.GROUP`, as node_exporter names them: each turns one optional group of
/// metric families off (see metrics::Group).
#[derive(Args, Debug)]
#[command(next_help_heading = "Collectors")]
struct CollectorFlags {
    /// Leave out read_bytes_total and write_bytes_total (/proc/PID/io).
    #[arg(long = "no-collector.io")]
    io: bool,
    /// Leave out major_page_faults_total and minor_page_faults_total.
    #[arg(long = "no-collector.faults")]
    faults: bool,
    /// Leave out context_switches_total (/proc/PID/status).
    #[arg(long = "no-collector.ctxswitch")]
    ctxswitch: bool,
    /// Leave out swap_bytes (/proc/PID/status).
    #[arg(long = "no-collector.memory")]
    memory: bool,
    /// Leave out the cgroup families (memory, OOM kills).
    #[arg(long = "no-collector.cgroup")]
    cgroup: bool,
    /// Leave out the pressure (PSI) families.
    #[arg(long = "no-collector.pressure")]
    pressure: bool,
    /// Leave out the captured-output families.
    #[arg(long = "no-collector.logs")]
    logs: bool,
    /// Leave out the probe families.
    #[arg(long = "no-collector.probes")]
    probes: bool,
}

impl CollectorFlags {
    fn groups(&self) -> Groups {
        let off = [
            (self.io, Group::Io),
            (self.faults, Group::Faults),
            (self.ctxswitch, Group::Ctxswitch),
            (self.memory, Group::Memory),
            (self.cgroup, Group::Cgroup),
            (self.pressure, Group::Pressure),
            (self.logs, Group::Logs),
            (self.probes, Group::Probes),
        ];
        off.into_iter()
            .filter(|(off, _)| *off)
            .fold(Groups::all(), |groups, (_, group)| groups.without(group))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Logfmt,
    Json,
}

fn init_logging(level: LogLevel, format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let level = match level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(tracing_logfmt::builder().layer().with_writer(output::LogWriter))
            .init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(output::LogWriter))
            .init(),
    }
}

fn load(cli: &Cli) -> Result<Config, procwatch::config::ConfigError> {
    match &cli.config {
        Some(path) => Config::load(path),
        None => Ok(Config::demo()),
    }
}

fn print_plan(config: &Config) {
    println!(
        "{}: config OK: {} programs, {} watches",
        config.source_name(),
        config.processes.len(),
        config.watches.len()
    );
    for file in &config.included {
        println!("  included {}", file.display());
    }
    for p in &config.processes {
        let instance = p.instance.map_or_else(String::new, |i| format!(" (instance {i})"));
        println!(
            "  program {}{instance}: {:?} (restart {}, backoff {}..{}, stop {} then SIGKILL after {})",
            p.name,
            p.command,
            p.restart,
            format_duration(p.backoff.initial),
            format_duration(p.backoff.max),
            p.stop_signal.name(),
            format_duration(p.stop_timeout)
        );
        println!("    runs as: {}", p.identity.describe());
        if let Some(cwd) = &p.cwd {
            println!("    cwd: {}", cwd.display());
        }
        let l = p.resources.limits;
        if !l.is_empty() {
            let mut parts = Vec::new();
            if let Some(m) = l.memory {
                parts.push(format!("memory.max {m}"));
            }
            if l.cpu_millis.is_some() {
                parts.push(format!("cpu.max {}", procwatch::cgroup::cpu_max(l.cpu_millis)));
            }
            if let Some(n) = l.pids {
                parts.push(format!("pids.max {n}"));
            }
            println!("    resources: {}", parts.join(", "));
        }
        if !p.env.is_empty() {
            let keys: Vec<&str> = p.env.keys().map(String::as_str).collect();
            println!("    env: {}", keys.join(" "));
        }
    }
    for w in &config.watches {
        println!(
            "  watch {}: {} ({}, include {:?}, exclude {:?})",
            w.name,
            w.path.display(),
            if w.recursive { "recursive" } else { "not recursive" },
            w.include,
            w.exclude
        );
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("ctl") {
        return ExitCode::from(procwatch::ctl::main(std::env::args_os().skip(1)));
    }
    let code = run(Cli::parse());
    // The log is written by a thread: what is queued for stdout and stderr is written before
    // any exit (a --check-config warning included), never waiting long on a stalled reader.
    output::flush(Duration::from_secs(1));
    code
}

fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_level, cli.log_format);
    if !cli.telemetry_path.starts_with('/') || cli.telemetry_path.len() < 2 {
        eprintln!(
            "procwatch: --web.telemetry-path {:?}: must be a path like /metrics",
            cli.telemetry_path
        );
        return ExitCode::from(1);
    }
    if !cli.check_config {
        // First, while procwatch has one thread (the log's writer thread starts at the first
        // record, and loading the config may log): the process forks, and this one goes on as
        // the supervisor under a guardian that keeps the original PID (supervisor/guardian.rs).
        // A thread that existed before the fork would be missing in the supervisor and would
        // take the guardian's signals without forwarding them.
        procwatch::supervisor::split_guardian();
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("procwatch: {err}");
            return ExitCode::from(1);
        }
    };
    let web_config = match cli.web_config.as_deref().map(WebConfigSource::load).transpose() {
        Ok(w) => w.map(Arc::new),
        Err(err) => {
            eprintln!("procwatch: {err}");
            return ExitCode::from(1);
        }
    };
    if cli.check_config {
        print_plan(&config);
        match procwatch::cgroup::probe(config.cgroup) {
            Ok(line) => println!("  tracking: {line}"),
            Err(err) => {
                eprintln!("procwatch: {err}");
                return ExitCode::from(1);
            }
        }
        if let Err(err) = config.check_resources(&procwatch::cgroup::probe_limits(config.cgroup)) {
            eprintln!("procwatch: {err}");
            return ExitCode::from(1);
        }
        if let Some(w) = &web_config {
            let w = w.current();
            println!(
                "  web config {}: TLS {}, basic auth {}",
                cli.web_config.as_deref().unwrap_or(std::path::Path::new("")).display(),
                if w.tls.is_some() { "on" } else { "off" },
                if w.needs_auth() { "on" } else { "off" }
            );
        }
        return ExitCode::SUCCESS;
    }
    let options = Options {
        listen_address: cli.listen_address.clone(),
        telemetry_path: cli.telemetry_path.clone(),
        enable_lifecycle: cli.enable_lifecycle,
        web_config,
        guardian: true,
        control_socket: SocketSetting::from_flag(cli.control_socket.as_deref()),
        collectors: cli.collectors.groups(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("procwatch: cannot start the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let listener = app::bind(&options, &config).await?;
        app::run(options, config, listener, CancellationToken::new()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.exit_code();
            eprintln!("procwatch: {:#}", anyhow::Error::from(err));
            ExitCode::from(code)
        }
    }
}
