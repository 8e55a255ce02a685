//! Wiring: one shutdown token; starts the supervisor, the watches, the HTTP server and the
//! status report; turns signals and `POST /-/reload` into shutdown and reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, OnChangeAction};
use crate::http::{self, Api, ControlSocket, HttpConfig, ReloadRequest, SocketSetting, WebConfigSource};
use crate::metrics::{Collector, Groups, ReloadStatus};
use crate::on_change::{Act, Triggers};
use crate::status;
use crate::supervisor::{Action, Origin, ProgramState, Supervisor, SupervisorError};
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
    /// `--control.socket`.
    pub control_socket: SocketSetting,
    /// The optional groups of metric families that are on (`--no-collector.GROUP`).
    pub collectors: Groups,
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
    #[error(transparent)]
    ControlSocket(#[from] http::control_socket::SocketError),
}

impl AppError {
    /// Every error `run` returns happens at start-up, and the contract says a config or
    /// start-up error exits 1 (other non-zero codes are for the unexpected, like a panic).
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_)
            | AppError::ListenAddress { .. }
            | AppError::Bind { .. }
            | AppError::Supervisor(_)
            | AppError::Signals(_)
            | AppError::ControlSocket(_) => 1,
        }
    }
}

pub use crate::config::ListenAddress;

/// `:9407` means every address; anything else is `HOST:PORT` with a literal IP. The same parser
/// checks the config's `listen_address` (with its line and column).
pub fn parse_listen_address(addr: &str) -> Result<ListenAddress, AppError> {
    crate::config::parse_listen_address(addr).map_err(|message| AppError::ListenAddress {
        addr: addr.to_owned(),
        message,
    })
}

/// Binds the listener; nothing has been started yet if this fails.
pub async fn bind(options: &Options, config: &Config) -> Result<TcpListener, AppError> {
    let addr = options
        .listen_address
        .as_deref()
        .or(config.listen_address.as_deref())
        .unwrap_or(DEFAULT_LISTEN);
    let bind_error = |source| AppError::Bind {
        addr: addr.to_owned(),
        source,
    };
    match parse_listen_address(addr)? {
        ListenAddress::At(sock) => TcpListener::bind(sock).await.map_err(bind_error),
        ListenAddress::Any(port) => match bind_dual_stack(port) {
            Ok(listener) => Ok(listener),
            // No IPv6 here (a kernel without it, `ipv6.disable=1`): IPv4 alone, as Go does.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) => {
                info!(error = %err, "no IPv6 on this host; listening on IPv4 only");
                TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
                    .await
                    .map_err(bind_error)
            }
            Err(err) => Err(bind_error(err)),
        },
    }
}

/// One IPv6 socket on `[::]:port` with IPV6_V6ONLY off, so that IPv4 clients reach it too
/// (as `::ffff:a.b.c.d`) whatever `net.ipv6.bindv6only` says: ipv6(7).
fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let socket = tokio::net::TcpSocket::new_v6()?;
    let off: libc::c_int = 0;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))?;
    socket.listen(1024)
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
    let mut quit = signal(SignalKind::quit()).map_err(AppError::Signals)?;
    log_other_signals(&shutdown)?;
    // Before anything starts: a control socket held by another procwatch is a start-up error.
    let socket = ControlSocket::bind(&options.control_socket)?;
    let mut supervisor = Supervisor::new(options.guardian, config.cgroup)?;
    // `resources:` needs the tracking mode just chosen: where a limit cannot be kept, nothing
    // starts (and the cgroups just made go).
    if let Err(err) = config.check_resources(&supervisor.limit_support()) {
        supervisor.shutdown(Duration::from_secs(1)).await;
        return Err(err.into());
    }
    let api = Api::new(supervisor.control());
    let mut watches = Watches::default();
    let reload_status = Arc::new(ReloadStatus::default());
    // The config was loaded and validated before `run`: the gauge says so from the first
    // scrape, while the programs are still starting.
    reload_status.record(true);
    let ready = Arc::new(AtomicBool::new(false));
    let mut triggers = Triggers::default();
    let act = on_change_act(&supervisor);
    let collector = Arc::new(
        Collector::new(supervisor.view(), watches.view(), Arc::clone(&reload_status))
            .with_groups(options.collectors)
            .with_triggers(triggers.view()),
    );

    if let Ok(addr) = listener.local_addr() {
        info!(version = env!("CARGO_PKG_VERSION"), %addr, config = %config.source_name(), "procwatch starting");
    }
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let http_config = || HttpConfig {
        telemetry_path: options.telemetry_path.clone(),
        enable_lifecycle: options.enable_lifecycle,
        web: options.web_config.clone(),
        ready: Arc::clone(&ready),
    };
    let server = tokio::spawn(http::serve(
        listener,
        http_config(),
        Arc::clone(&collector),
        reload_tx.clone(),
        api.clone(),
        shutdown.clone(),
    ));
    let socket_server = socket.map(|socket| {
        tokio::spawn(http::control_socket::serve(
            socket,
            http_config(),
            Arc::clone(&collector),
            reload_tx,
            api,
            shutdown.clone(),
        ))
    });

    supervisor.apply(&config.processes).await;
    watches.apply(&config.watches).await;
    triggers
        .apply(&config.processes, &watches.view(), &act, &shutdown)
        .await;
    ready.store(true, Ordering::Release);
    let mut reporter = StatusTask::start(config.status_interval, &collector, &shutdown);

    let mut app = Running {
        config,
        supervisor,
        watches,
        triggers,
        act,
        reload_status,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            _ = quit.recv() => { info!("SIGQUIT: stopping"); break }
            _ = hup.recv() => {
                info!("SIGHUP: reloading config");
                // A shutdown preempts a reload (which may be waiting out a stop_timeout):
                // the runs it was stopping are finished by the shutdown, within its bound.
                tokio::select! {
                    _ = app.reload(&mut reporter, &collector, &shutdown) => {}
                    _ = shutdown.cancelled() => break,
                    _ = term.recv() => { info!("SIGTERM during a reload: stopping"); break }
                    _ = int.recv() => { info!("SIGINT during a reload: stopping"); break }
                    _ = quit.recv() => { info!("SIGQUIT during a reload: stopping"); break }
                }
            }
            Some(reply) = reload_rx.recv() => {
                info!("POST /-/reload: reloading config");
                tokio::select! {
                    r = app.reload(&mut reporter, &collector, &shutdown) => { let _ = reply.send(r); }
                    _ = shutdown.cancelled() => break,
                    _ = term.recv() => { info!("SIGTERM during a reload: stopping"); break }
                    _ = int.recv() => { info!("SIGINT during a reload: stopping"); break }
                    _ = quit.recv() => { info!("SIGQUIT during a reload: stopping"); break }
                }
            }
        }
    }

    shutdown.cancel();
    // No on_change action may reach a program that is being stopped.
    app.triggers.stop().await;
    let timeout = app.config.shutdown_timeout;
    app.supervisor.shutdown(timeout).await;
    app.watches.shutdown().await;
    let _ = server.await;
    if let Some(s) = socket_server {
        let _ = s.await;
    }
    let _ = reporter.task.await;
    info!("procwatch stopped");
    Ok(())
}

/// Every signal whose default action (signal(7): "Term" or "Core") would end procwatch without
/// a clean stop, and that is not handled above, is logged and otherwise ignored: logrotate's
/// SIGUSR1, a stray `kill -ALRM`, a CPU or file-size limit (SIGXCPU, SIGXFSZ: the write then
/// fails with EFBIG instead), the real-time signals. SIGPIPE is ignored by the Rust runtime
/// before `main` (a closed client shows as EPIPE). Left to their default: the faults
/// (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS, SIGABRT), which mean procwatch is broken, and
/// SIGKILL/SIGSTOP, which cannot be caught; the guardian takes the programs down then.
/// Handlers (unlike SIG_IGN) are reset at exec, so programs start with default dispositions.
fn log_other_signals(shutdown: &CancellationToken) -> Result<(), AppError> {
    let mut signals: Vec<(i32, String)> = [
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGSTKFLT, "SIGSTKFLT"),
        (libc::SIGPWR, "SIGPWR"),
    ]
    .into_iter()
    .map(|(n, name)| (n, name.to_owned()))
    .collect();
    // libc's SIGRTMIN() skips the ones glibc keeps for itself.
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    signals.extend((rtmin..=rtmax).map(|n| (n, format!("SIGRTMIN+{}", n - rtmin))));
    for (number, name) in signals {
        let mut stream = signal(SignalKind::from_raw(number)).map_err(AppError::Signals)?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = stream.recv() => warn!(signal = %name, "signal received and ignored (procwatch stops on SIGTERM, SIGINT or SIGQUIT and reloads on SIGHUP)"),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    Ok(())
}

struct Running {
    config: Config,
    supervisor: Supervisor,
    watches: Watches,
    triggers: Triggers,
    act: Act,
    reload_status: Arc<ReloadStatus>,
}

/// How `on_change` acts on a program: through its command channel, as `Origin::Watch` (not a
/// policy restart, not an action by hand), and only while it runs: never while it is starting,
/// stopping, backing off or stopped by hand.
fn on_change_act(supervisor: &Supervisor) -> Act {
    let (view, control) = (supervisor.view(), supervisor.control());
    Arc::new(move |name: String, action: OnChangeAction| {
        let (view, control) = (view.clone(), control.clone());
        Box::pin(async move {
            let running = view
                .programs()
                .iter()
                .any(|p| p.name == name && matches!(p.status().state, ProgramState::Running { .. }));
            if !running {
                return false;
            }
            let action = match action {
                OnChangeAction::Restart => Action::Restart,
                OnChangeAction::Signal(s) => Action::Signal(s.0),
            };
            match control.send(&name, action, Origin::Watch).await {
                Ok(_) => true,
                Err(err) => {
                    warn!(name = %name, error = %err, "on_change: the action was not taken");
                    false
                }
            }
        })
    })
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
        // Reading files may be slow (and includes and env files are many): off the workers.
        let source = self.config.source.clone();
        let new = tokio::task::spawn_blocking(move || match source {
            Some(path) => Config::load(&path),
            None => Ok(Config::demo()),
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::Read {
                file: self.config.source_name(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        let support = self.supervisor.limit_support();
        let new = match new.and_then(|c| c.check_resources(&support).map(|()| c)) {
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
        // Programs change under it: no on_change action until they are applied.
        self.triggers.stop().await;
        let p = self.supervisor.apply(&new.processes).await;
        let w = self.watches.apply(&new.watches).await;
        self.triggers
            .apply(&new.processes, &self.watches.view(), &self.act, shutdown)
            .await;
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
