//! One task per program: start it, wait for its exit, apply the restart policy with backoff,
//! and stop its whole process group when told to (stop signal, grace, SIGKILL).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::os::{self, Entry, Os, OsEvent};
use super::{Exit, ExitReason, Program, ProgramState, ProgramStatus};
use crate::config::{ProgramConfig, RestartPolicy};
use crate::procfs;

/// How often a stop re-checks its process group besides on every reap: catches processes that
/// left the group's session and are not procwatch's to reap.
const GROUP_RECHECK: Duration = Duration::from_millis(50);
/// How long to wait for a group to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

pub(super) fn spawn(
    os: Arc<Os>,
    program: Arc<Program>,
    config: Arc<ProgramConfig>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let status = ProgramStatus::clone(&program.status());
    let runner = Runner {
        os,
        entry: Entry {
            program,
            events: events_tx,
        },
        events,
        backoff: Backoff::new(config.backoff),
        status: ProgramStatus { config, ..status },
        stop,
    };
    tokio::spawn(runner.run())
}

struct Runner {
    os: Arc<Os>,
    entry: Entry,
    events: mpsc::UnboundedReceiver<OsEvent>,
    backoff: Backoff,
    /// The runner's own copy; published after every change.
    status: ProgramStatus,
    stop: CancellationToken,
}

enum RunEnd {
    Exited(Exit),
    Stopped,
}

impl Runner {
    fn name(&self) -> &str {
        &self.status.config.name
    }

    fn publish(&mut self, state: ProgramState) {
        self.status.state = state;
        self.entry.program.status.store(Arc::new(self.status.clone()));
    }

    fn record_exit(&mut self, exit: Exit) {
        self.status.exits[exit.reason.index()] += 1;
        self.status.last_exit = Some(exit);
    }

    async fn run(mut self) {
        loop {
            self.publish(ProgramState::Starting);
            let started = Instant::now();
            let exit = match self.run_once().await {
                RunEnd::Stopped => break,
                RunEnd::Exited(exit) => exit,
            };
            let restart = match self.status.config.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => exit.reason != ExitReason::Success,
                RestartPolicy::Never => false,
            };
            if !restart {
                info!(
                    program = self.name(),
                    code = exit.code,
                    "program ended; not restarting (restart: {})",
                    self.status.config.restart
                );
                self.publish(ProgramState::Stopped);
                self.stop.cancelled().await;
                return;
            }
            let delay = self.backoff.next_delay(started.elapsed());
            self.publish(ProgramState::BackingOff {
                until: SystemTime::now() + delay,
            });
            if !delay.is_zero() {
                info!(program = self.name(), code = exit.code, delay = ?delay, "restarting after backoff");
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => break,
            }
            self.status.restarts += 1;
        }
        self.publish(ProgramState::Stopped);
    }

    /// One run: start, wait for the exit (or a stop), clean up the group.
    async fn run_once(&mut self) -> RunEnd {
        if self.stop.is_cancelled() {
            return RunEnd::Stopped;
        }
        let config = Arc::clone(&self.status.config);
        let pid = match self.os.spawn(Arc::clone(&config), self.entry.clone()).await {
            Ok(pid) => pid,
            Err(err) => {
                // A command that cannot start is a failed run: counted, logged, retried by policy.
                let code = match err.raw_os_error() {
                    Some(libc::ENOENT) => 127,
                    _ => 126,
                };
                warn!(
                    program = self.name(),
                    command = ?config.command,
                    cwd = ?config.cwd,
                    error = %err,
                    "cannot start program"
                );
                let exit = Exit {
                    reason: ExitReason::Failure,
                    code,
                };
                self.record_exit(exit);
                return RunEnd::Exited(exit);
            }
        };
        let since = SystemTime::now();
        info!(program = self.name(), pid, "started");
        self.publish(ProgramState::Running { pid, since });

        let main_exit = tokio::select! {
            exit = wait_main(&mut self.events) => Some(exit),
            _ = self.stop.cancelled() => None,
        };
        match main_exit {
            Some(exit) => {
                self.record_exit(exit);
                self.publish(ProgramState::BackingOff {
                    until: SystemTime::now(),
                });
                // A run is over when its main process ends; what it left in its group goes too.
                if os::group_alive(pid) {
                    self.stop_group(pid, &mut None).await;
                }
                self.os.forget_group(pid);
                info!(
                    program = self.name(),
                    pid,
                    code = exit.code,
                    reason = exit.reason.as_str(),
                    "exited"
                );
                RunEnd::Exited(exit)
            }
            None => {
                self.publish(ProgramState::Stopping { pid, since });
                let mut main = Some(pid);
                self.stop_group(pid, &mut main).await;
                self.os.forget_group(pid);
                info!(program = self.name(), pid, "stopped");
                RunEnd::Stopped
            }
        }
    }

    /// Stop signal to the group, then SIGKILL after stop_timeout; returns once the group is
    /// empty. Records the main process's exit if it happens here (`main` is its PID until then).
    async fn stop_group(&mut self, pgid: i32, main: &mut Option<i32>) {
        let targets = Targets::find(pgid, main.is_some());
        let signal = self.status.config.stop_signal;
        targets.signal(signal.0);
        // A stopped process cannot act on the stop signal until it is continued.
        targets.signal(libc::SIGCONT);
        let timeout = self.status.config.stop_timeout;
        if self.wait_gone(&targets, timeout, main).await {
            return;
        }
        warn!(
            program = self.name(),
            pgid,
            ?timeout,
            "still running after stop_timeout; sending SIGKILL"
        );
        targets.signal(libc::SIGKILL);
        if !self.wait_gone(&targets, KILL_GRACE, main).await {
            warn!(program = self.name(), pgid, "processes still running after SIGKILL");
        }
    }

    async fn wait_gone(&mut self, targets: &Targets, timeout: Duration, main: &mut Option<i32>) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if main.is_none() && !targets.alive() {
                return true;
            }
            tokio::select! {
                ev = self.events.recv() => {
                    if let Some(OsEvent::MainExited { pid, status }) = ev
                        && *main == Some(pid)
                    {
                        *main = None;
                        let exit = decode(status);
                        self.record_exit(exit);
                    }
                }
                _ = tokio::time::sleep(GROUP_RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => return main.is_none() && !targets.alive(),
            }
        }
    }
}

/// What a stop must take down: the run's process group, and the descendants that left it
/// (setsid) while their parent was still in the program's tree.
struct Targets {
    pgid: i32,
    /// (PID, start time): a PID alone could be reused by then.
    escaped: Vec<(i32, u64)>,
}

impl Targets {
    /// `main_alive`: the tree can only be walked from a main process that still runs.
    fn find(pgid: i32, main_alive: bool) -> Targets {
        let escaped = if main_alive {
            procfs::Reader::default()
                .escaped(pgid, pgid)
                .into_iter()
                .map(|st| (st.pid, st.starttime_ticks))
                .collect()
        } else {
            Vec::new()
        };
        Targets { pgid, escaped }
    }

    fn signal(&self, signal: i32) {
        os::signal_group(self.pgid, signal);
        let mut reader = procfs::Reader::default();
        for &(pid, start) in &self.escaped {
            if reader.runs(pid, start) {
                // SAFETY: plain syscall; the start time check makes it the same process.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    fn alive(&self) -> bool {
        let mut reader = procfs::Reader::default();
        os::group_alive(self.pgid) || self.escaped.iter().any(|&(pid, start)| reader.runs(pid, start))
    }
}

async fn wait_main(events: &mut mpsc::UnboundedReceiver<OsEvent>) -> Exit {
    loop {
        match events.recv().await {
            Some(OsEvent::MainExited { status, .. }) => return decode(status),
            Some(OsEvent::Reaped) => continue,
            // The sender lives in this runner's Entry, so the channel cannot close.
            None => std::future::pending::<()>().await,
        }
    }
}

fn decode(status: i32) -> Exit {
    match os::exit_code(status) {
        (code, Some(_)) => Exit {
            reason: ExitReason::Signal,
            code,
        },
        (0, None) => Exit {
            reason: ExitReason::Success,
            code: 0,
        },
        (code, None) => Exit {
            reason: ExitReason::Failure,
            code,
        },
    }
}
