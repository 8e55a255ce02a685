//! Wiring: one shutdown token; starts the supervisor, the watches, the HTTP server and the
//! status report; turns signals and `POST /-/reload` into shutdown and reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::http::{self, HttpConfig, ReloadRequest, WebConfigSource};
use crate::metrics::{Collector, ReloadStatus};
use crate::status;
use crate::supervisor::{Supervisor, SupervisorError};
use crate::watch::Watches;

pub const DEFAULT_LISTEN: &str = ":9407";

/// Start-up settings from the command line.
#[derive(Clone)]
pub struct Options {
    /// `--web.listen-address`; the config's `listen_address`, then `:9407`, where absent.
    pub listen_address: Option<String>,
    pub telemetry_path: String,
    pub enable_lifecycle: bool,
    /// `--web.config.file`, loaded and validated.
    pub web_config: Option<Arc<WebConfigSource>>,
    /// Start the guardian process (see `supervisor::guardian`): true in the procwatch binary.
    pub guardian: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid listen address {addr:?}: {message}")]
    ListenAddress { addr: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl AppError {
    /// Config and start-up errors exit 1; anything else is unexpected.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::ListenAddress { .. } | AppError::Bind { .. } => 1,
            AppError::Supervisor(_) | AppError::Signals(_) => 2,
        }
    }
}

/// `:9407` means every address, as in the Prometheus exporters.
pub fn parse_listen_address(addr: &str) -> Result<SocketAddr, AppError> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    };
    full.parse()
        .map_err(|e: std::net::AddrParseError| AppError::ListenAddress {
            addr: addr.to_owned(),
            message: e.to_string(),
        })
}

/// Binds the listener; nothing has been started yet if this fails.
pub async fn bind(options: &Options, config: &Config) -> Result<TcpListener, AppError> {
    let addr = options
        .listen_address
        .as_deref()
        .or(config.listen_address.as_deref())
        .unwrap_or(DEFAULT_LISTEN);
    let sock = parse_listen_address(addr)?;
    TcpListener::bind(sock).await.map_err(|source| AppError::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Runs procwatch until `shutdown` is cancelled or SIGTERM/SIGINT arrives, then stops every
/// program and returns.
pub async fn run(
    options: Options,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    // Handlers first: a SIGTERM or SIGHUP while thousands of programs are starting must be a
    // graceful stop or a reload, not the default action (death).
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    let mut supervisor = Supervisor::new(options.guardian)?;
    let mut watches = Watches::default();
    let reload_status = Arc::new(ReloadStatus::default());
    let collector = Arc::new(Collector::new(
        supervisor.view(),
        watches.view(),
        Arc::clone(&reload_status),
    ));

    if let Ok(addr) = listener.local_addr() {
        info!(version = env!("CARGO_PKG_VERSION"), %addr, config = %config.source_name(), "procwatch starting");
    }
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let server = tokio::spawn(http::serve(
        listener,
        HttpConfig {
            telemetry_path: options.telemetry_path.clone(),
            enable_lifecycle: options.enable_lifecycle,
            web: options.web_config.clone(),
        },
        Arc::clone(&collector),
        reload_tx,
        shutdown.clone(),
    ));

    supervisor.apply(&config.processes).await;
    watches.apply(&config.watches).await;
    reload_status.record(true);
    let mut reporter = StatusTask::start(config.status_interval, &collector, &shutdown);

    let mut app = Running {
        config,
        supervisor,
        watches,
        reload_status,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            _ = hup.recv() => {
                info!("SIGHUP: reloading config");
                let _ = app.reload(&mut reporter, &collector, &shutdown).await;
            }
            Some(reply) = reload_rx.recv() => {
                info!("POST /-/reload: reloading config");
                let _ = reply.send(app.reload(&mut reporter, &collector, &shutdown).await);
            }
        }
    }

    shutdown.cancel();
    let timeout = app.config.shutdown_timeout;
    app.supervisor.shutdown(timeout).await;
    app.watches.shutdown().await;
    let _ = server.await;
    let _ = reporter.task.await;
    info!("procwatch stopped");
    Ok(())
}

struct Running {
    config: Config,
    supervisor: Supervisor,
    watches: Watches,
    reload_status: Arc<ReloadStatus>,
}

impl Running {
    /// Re-reads the config file and applies the difference. A config that does not load is
    /// refused whole and nothing changes.
    async fn reload(
        &mut self,
        reporter: &mut StatusTask,
        collector: &Arc<Collector>,
        shutdown: &CancellationToken,
    ) -> Result<String, String> {
        let new = match &self.config.source {
            Some(path) => Config::load(path),
            None => Ok(Config::demo()),
        };
        let new = match new {
            Ok(c) => c,
            Err(err) => {
                // The log first: whoever sees the gauge drop can find why.
                error!(error = %err, "reload refused; everything goes on as it was");
                self.reload_status.record(false);
                return Err(err.to_string());
            }
        };
        if new.listen_address != self.config.listen_address {
            warn!(
                old = ?self.config.listen_address,
                new = ?new.listen_address,
                "listen_address changed: it takes effect at the next restart, not on reload"
            );
        }
        let p = self.supervisor.apply(&new.processes).await;
        let w = self.watches.apply(&new.watches).await;
        if new.status_interval != self.config.status_interval {
            reporter.stop.cancel();
            *reporter = StatusTask::start(new.status_interval, collector, shutdown);
        }
        self.config = new;
        let summary = format!(
            "programs: started {:?}, stopped {:?}, restarted {:?}, unchanged {:?}; watches: started {:?}, stopped {:?}, restarted {:?}, unchanged {:?}",
            p.started, p.stopped, p.restarted, p.unchanged, w.started, w.stopped, w.restarted, w.unchanged
        );
        info!(
            programs_started = p.started.join(","),
            programs_stopped = p.stopped.join(","),
            programs_restarted = p.restarted.join(","),
            programs_unchanged = p.unchanged.join(","),
            watches_started = w.started.join(","),
            watches_stopped = w.stopped.join(","),
            watches_restarted = w.restarted.join(","),
            watches_unchanged = w.unchanged.join(","),
            "config reloaded"
        );
        self.reload_status.record(true);
        Ok(summary)
    }
}

struct StatusTask {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl StatusTask {
    fn start(interval: Duration, collector: &Arc<Collector>, shutdown: &CancellationToken) -> StatusTask {
        let stop = shutdown.child_token();
        let task = tokio::spawn(status::report_every(interval, Arc::clone(collector), stop.clone()));
        StatusTask { stop, task }
    }
}
