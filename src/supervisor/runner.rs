//! One task per program: start it, wait for its exit, apply the restart policy with backoff,
//! and stop its whole process tree when told to (stop signal, grace, SIGKILL): in cgroup mode
//! every member of its cgroup, in proc mode its session, its tree and what left them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::control::{Reply, Request};
use super::os::{self, Entry, Os, OsEvent, Stdio};
use super::probe::{ProbeEvent, RunProbes};
use super::{Action, ControlError, Exit, ExitReason, Origin, Outcome, Program, ProgramState, ProgramStatus};
use crate::config::{DependCondition, ProgramConfig, RestartPolicy};
use crate::output::{self, Output};
use crate::procfs;

/// How often a stop in proc mode re-checks its process group besides on every reap: catches
/// processes that left the group's session and are not procwatch's to reap.
const GROUP_RECHECK: Duration = Duration::from_millis(50);
/// A listing of procwatch's children (see [`Children`]) is made at most once per this many
/// times the cost of the last: at most an eighth of a core however many children procwatch
/// has (a listing of 5000 costs about 25 ms here).
const LISTING_SPACING: u32 = 8;
/// How long to wait for a group to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a run's end waits for the last of its output to be read (a descendant that left
/// the group may hold the pipes open; it is still read, just not waited for).
const OUTPUT_DRAIN: Duration = Duration::from_millis(250);
/// Last stderr lines in the log record of a failed run.
const CRASH_LINES: usize = 10;

/// Publishes the status a new runner starts from: the new config, not started, not ready;
/// the counters go on. Done for every new runner of an apply before any of them starts, so
/// that no dependent sees the state of a dependency's previous run.
pub(super) fn reset(program: &Program, config: Arc<ProgramConfig>) {
    let status = ProgramStatus::clone(&program.status());
    program.store(ProgramStatus {
        config,
        state: ProgramState::Starting,
        ready: false,
        started: false,
        ..status
    });
}

pub(super) fn spawn(
    os: Arc<Os>,
    output: Arc<Output>,
    program: Arc<Program>,
    deps: Vec<(Arc<Program>, DependCondition)>,
    stop: CancellationToken,
    commands: mpsc::Receiver<Request>,
) -> JoinHandle<()> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let status = ProgramStatus::clone(&program.status());
    let config = Arc::clone(&status.config);
    let runner = Runner {
        os,
        output,
        entry: Entry {
            program,
            events: events_tx,
        },
        events,
        backoff: Backoff::new(config.backoff),
        status,
        deps,
        stop,
        commands,
        run_started: Instant::now(),
        ran: Duration::ZERO,
    };
    tokio::spawn(runner.run())
}

struct Runner {
    os: Arc<Os>,
    output: Arc<Output>,
    entry: Entry,
    events: mpsc::UnboundedReceiver<OsEvent>,
    backoff: Backoff,
    /// The runner's own copy; published after every change.
    status: ProgramStatus,
    /// What must hold before the first start, by `depends_on`.
    deps: Vec<(Arc<Program>, DependCondition)>,
    stop: CancellationToken,
    /// Operator (and probe, and on_change) commands; read between the steps of the loop.
    commands: mpsc::Receiver<Request>,
    /// When the current run was started, and how long the last one lasted up to its main
    /// process's exit (or the start of its stop): what the backoff measures.
    run_started: Instant,
    ran: Duration,
}

enum RunEnd {
    Exited(Exit),
    /// Ended by its failing liveness probe: a failed run, whatever its exit code.
    Unhealthy(Exit),
    /// procwatch stops it (shutdown, or a reload that removes or changes it).
    Stopped,
    /// Stopped by a command: hold it down until told otherwise.
    Held,
    /// Restarted by a command: start again at once, then answer.
    StartAgain(Pending),
}

/// A start or restart by command, answered once the new process is spawned.
struct Pending {
    reply: Reply,
    before: Option<i32>,
}

/// How the wait for dependencies ended.
enum Gate {
    Met,
    /// Started by hand meanwhile: start now.
    Start(Pending),
    /// Stopped by hand meanwhile.
    Held,
    /// The stop token.
    Stop,
}

/// How a wait while down (backoff, or stopped) ended.
enum Wake {
    /// Start now; `Some` when a command asked, `None` when the backoff elapsed.
    Start(Option<Pending>),
    /// The stop token.
    Stop,
}

impl Runner {
    fn name(&self) -> &str {
        &self.status.config.name
    }

    fn publish(&mut self, state: ProgramState) {
        match (&self.status.state, &state) {
            (ProgramState::Running { .. }, ProgramState::Running { .. }) => {}
            // Ready from the start where there is no readiness probe to say otherwise.
            (_, ProgramState::Running { .. }) => self.status.ready = self.status.config.readiness.is_none(),
            _ => self.status.ready = false,
        }
        self.status.state = state;
        self.entry.program.store(self.status.clone());
    }

    /// Waits until every dependency meets its condition at once, answering commands meanwhile
    /// (a start by hand starts it now; a stop holds it down), so that a waiting program is
    /// never wedged nor doubled (process-compose #530).
    async fn wait_for_dependencies(&mut self) -> Gate {
        // What was last said: (dependency, whether it had stopped for good).
        let mut said: Option<(usize, bool)> = None;
        loop {
            // Subscribed before looking, so that a change right after the look is not missed.
            let mut changes: Vec<_> = self.deps.iter().map(|(p, _)| p.changed.subscribe()).collect();
            let unmet = self.deps.iter().position(|(p, c)| !p.status().meets(*c));
            let Some(i) = unmet else {
                if said.is_some() {
                    info!(program = self.name(), "dependencies met; starting");
                }
                return Gate::Met;
            };
            let (dep, condition) = (Arc::clone(&self.deps[i].0), self.deps[i].1);
            let status = dep.status();
            let stuck = matches!(status.state, ProgramState::Stopped | ProgramState::StoppedByHand) && status.started;
            if said.is_none_or(|(j, _)| j != i) {
                info!(
                    program = self.name(),
                    dependency = %dep.name,
                    condition = condition.as_str(),
                    dependency_state = status.state.label(),
                    "waiting for dependency"
                );
                let dependency = dep.name.clone();
                self.publish(ProgramState::Waiting { dependency });
            }
            if stuck && said != Some((i, true)) {
                warn!(
                    program = self.name(),
                    dependency = %dep.name,
                    condition = condition.as_str(),
                    "the dependency has stopped and will not start again by itself; waiting until it is started"
                );
            }
            said = Some((i, stuck));
            let req = tokio::select! {
                _ = changes[i].changed() => continue,
                _ = self.stop.cancelled() => return Gate::Stop,
                Some(req) = self.commands.recv() => req,
            };
            match req.action {
                Action::Start | Action::Restart => match self.start_by(req) {
                    Wake::Start(Some(p)) => return Gate::Start(p),
                    _ => unreachable!("start_by always starts with a reply"),
                },
                Action::Stop => {
                    self.took(req.action, req.origin);
                    let _ = req.reply.send(Ok(Outcome::default()));
                    return Gate::Held;
                }
                Action::Signal(_) => {
                    let _ = req.reply.send(Err(ControlError::NotRunning(self.name().to_owned())));
                }
            }
        }
    }

    fn record_exit(&mut self, exit: Exit) {
        self.status.exits[exit.reason.index()] += 1;
        self.status.last_exit = Some(exit);
    }

    /// Counts an operator's action (published with the next state change, which every action
    /// makes or follows at once) and logs it.
    fn took(&mut self, action: Action, origin: Origin) {
        if origin == Origin::Hand {
            self.status.control_actions[action.index()] += 1;
            // A start by hand begins a fresh backoff sequence, as systemd's reset-failed does.
            if matches!(action, Action::Start | Action::Restart) {
                self.backoff = Backoff::new(self.status.config.backoff);
            }
        }
        info!(program = self.name(), action = action.as_str(), origin = ?origin, "command");
    }

    async fn run(mut self) {
        let mut pending = None;
        // Dependencies gate the start of this config, not restarts by policy: a dependent that
        // crashes while its dependency restarts is restarted by its own backoff, never held.
        if !self.deps.is_empty() {
            match self.wait_for_dependencies().await {
                Gate::Met => {}
                Gate::Start(p) => pending = Some(p),
                Gate::Held => match self.held(ProgramState::StoppedByHand).await {
                    Wake::Start(p) => pending = p,
                    Wake::Stop => return,
                },
                Gate::Stop => {
                    self.publish(ProgramState::Stopped);
                    return;
                }
            }
        }
        loop {
            self.publish(ProgramState::Starting);
            let exit = match self.run_once(pending.take()).await {
                RunEnd::Stopped => break,
                RunEnd::StartAgain(p) => {
                    pending = Some(p);
                    continue;
                }
                RunEnd::Held => match self.held(ProgramState::StoppedByHand).await {
                    Wake::Start(p) => {
                        pending = p;
                        continue;
                    }
                    Wake::Stop => return,
                },
                RunEnd::Exited(exit) => (exit, false),
                RunEnd::Unhealthy(exit) => (exit, true),
            };
            let (exit, unhealthy) = exit;
            let restart = match self.status.config.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => unhealthy || exit.reason != ExitReason::Success,
                RestartPolicy::Never => false,
            };
            if !restart {
                info!(
                    program = self.name(),
                    code = exit.code,
                    "program ended; not restarting (restart: {})",
                    self.status.config.restart
                );
                match self.held(ProgramState::Stopped).await {
                    Wake::Start(p) => {
                        pending = p;
                        continue;
                    }
                    Wake::Stop => return,
                }
            }
            // The run's length up to its main process's exit, not the stop of what it left.
            let delay = self.backoff.next_delay(self.ran);
            if !delay.is_zero() {
                info!(program = self.name(), code = exit.code, delay = ?delay, "restarting after backoff");
            }
            match self.backing_off(delay).await {
                Wake::Start(None) => self.status.restarts += 1,
                // Started by hand: not a policy restart.
                Wake::Start(p) => pending = p,
                Wake::Stop => break,
            }
        }
        self.publish(ProgramState::Stopped);
    }

    /// Down until the backoff delay elapses, answering commands meanwhile: a start or restart
    /// starts it now, a stop holds it down.
    async fn backing_off(&mut self, delay: Duration) -> Wake {
        let state = ProgramState::BackingOff {
            until: SystemTime::now() + delay,
        };
        self.down(state, Some(tokio::time::Instant::now() + delay)).await
    }

    /// Down in `state` (backing off until `until`, or stopped by policy or by hand) until the
    /// deadline, or a start or restart command. A stop by hand makes it "stopped by hand" and
    /// drops the deadline.
    async fn held(&mut self, state: ProgramState) -> Wake {
        self.down(state, None).await
    }

    async fn down(&mut self, state: ProgramState, mut until: Option<tokio::time::Instant>) -> Wake {
        self.publish(state);
        loop {
            let deadline = async {
                match until {
                    // Due already (a zero backoff): no timer, whose millisecond granularity
                    // would add up to a millisecond to every immediate restart.
                    Some(t) if t <= tokio::time::Instant::now() => {}
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            // Biased: a stop or a command already waiting wins over a deadline already due.
            let req = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Wake::Stop,
                Some(req) = self.commands.recv() => req,
                _ = deadline => return Wake::Start(None),
            };
            match req.action {
                Action::Start | Action::Restart => return self.start_by(req),
                Action::Stop => {
                    self.took(req.action, req.origin);
                    if req.origin == Origin::Hand || until.is_some() {
                        until = None;
                        self.publish(ProgramState::StoppedByHand);
                    }
                    let _ = req.reply.send(Ok(Outcome::default()));
                }
                Action::Signal(_) => {
                    let _ = req.reply.send(Err(ControlError::NotRunning(self.name().to_owned())));
                }
            }
        }
    }

    /// A start or restart command while down.
    fn start_by(&mut self, req: Request) -> Wake {
        self.took(req.action, req.origin);
        if req.origin == Origin::Policy {
            self.status.restarts += 1;
        }
        Wake::Start(Some(Pending {
            reply: req.reply,
            before: None,
        }))
    }

    /// One run: start, wait for the exit (or a stop, or a command), clean up the group.
    async fn run_once(&mut self, pending: Option<Pending>) -> RunEnd {
        if self.stop.is_cancelled() {
            return RunEnd::Stopped;
        }
        let config = Arc::clone(&self.status.config);
        self.run_started = Instant::now();
        let run = self.output.attach(self.entry.program.output(), &config.output);
        let spawned = match run {
            Ok(mut run) => {
                let stdio = run.take_stdio().map_or_else(Stdio::default, |c| Stdio {
                    stdout: Some(c.stdout),
                    stderr: Some(c.stderr),
                });
                (self.os.spawn(Arc::clone(&config), self.entry.clone(), stdio).await).map(|pid| (pid, run))
            }
            Err(err) => Err(err),
        };
        let (pid, run) = match spawned {
            Ok(started) => started,
            Err(err) => {
                // A command that cannot start is a failed run: counted, logged, retried by policy.
                let code = match err.kind() {
                    std::io::ErrorKind::NotFound => 127,
                    _ => 126,
                };
                warn!(
                    program = self.name(),
                    command = ?config.command,
                    cwd = ?config.cwd,
                    error = %err,
                    "cannot start program"
                );
                if let Some(p) = pending {
                    let _ = p.reply.send(Err(ControlError::StartFailed {
                        name: self.name().to_owned(),
                        message: err.to_string(),
                    }));
                }
                let exit = Exit {
                    reason: ExitReason::Failure,
                    code,
                };
                self.record_exit(exit);
                self.ran = self.run_started.elapsed();
                return RunEnd::Exited(exit);
            }
        };
        let since = SystemTime::now();
        info!(program = self.name(), pid, "started");
        self.status.started = true;
        self.publish(ProgramState::Running { pid, since });
        if let Some(p) = pending {
            let _ = p.reply.send(Ok(Outcome {
                before: p.before,
                after: Some(pid),
            }));
        }

        // Probes end with the run (dropped on every way out below): none fires while the
        // program stops or backs off.
        let mut probes = RunProbes::start(&self.os, &self.entry.program, &config);
        loop {
            let req = tokio::select! {
                exit = wait_main(&mut self.events) => {
                    drop(probes);
                    return self.exited(pid, exit, &run).await;
                }
                _ = self.stop.cancelled() => {
                    drop(probes);
                    self.stop_run(pid, since, &run).await;
                    return RunEnd::Stopped;
                }
                Some(req) = self.commands.recv() => req,
                event = probes.next() => match event {
                    ProbeEvent::Ready(ready) => {
                        self.status.ready = ready;
                        self.publish(ProgramState::Running { pid, since });
                        continue;
                    }
                    ProbeEvent::LivenessFailed(error) => {
                        drop(probes);
                        return self.end_unhealthy(pid, since, &error, &run).await;
                    }
                },
            };
            let running = Outcome {
                before: Some(pid),
                after: Some(pid),
            };
            match req.action {
                Action::Start => {
                    self.took(req.action, req.origin);
                    let _ = req.reply.send(Ok(running));
                }
                Action::Signal(signal) => {
                    if os::signal_group(pid, signal) {
                        self.took(req.action, req.origin);
                        let _ = req.reply.send(Ok(running));
                    } else {
                        let _ = req.reply.send(Err(ControlError::NotRunning(self.name().to_owned())));
                    }
                }
                Action::Stop => {
                    self.took(req.action, req.origin);
                    drop(probes);
                    self.stop_run(pid, since, &run).await;
                    let _ = req.reply.send(Ok(Outcome {
                        before: Some(pid),
                        after: None,
                    }));
                    return RunEnd::Held;
                }
                Action::Restart => {
                    self.took(req.action, req.origin);
                    drop(probes);
                    self.stop_run(pid, since, &run).await;
                    if req.origin == Origin::Policy {
                        // Through the restart policy, with backoff, counted as a restart.
                        let _ = req.reply.send(Ok(Outcome {
                            before: Some(pid),
                            after: None,
                        }));
                        let exit = self.status.last_exit.unwrap_or(Exit {
                            reason: ExitReason::Signal,
                            code: 128 + libc::SIGKILL,
                        });
                        return RunEnd::Exited(exit);
                    }
                    return RunEnd::StartAgain(Pending {
                        reply: req.reply,
                        before: Some(pid),
                    });
                }
            }
        }
    }

    /// The main process ended by itself.
    async fn exited(&mut self, pid: i32, mut exit: Exit, run: &output::Run) -> RunEnd {
        if self.entry.program.cgroup().is_some_and(|cg| cg.take_oom()) {
            exit.reason = ExitReason::Oom;
        }
        self.record_exit(exit);
        self.publish(ProgramState::BackingOff {
            until: SystemTime::now(),
        });
        self.ran = self.run_started.elapsed();
        // A run is over when its main process ends; what it left goes too.
        self.stop_group(pid, &mut None).await;
        self.os.forget_group(pid);
        run.drained(OUTPUT_DRAIN).await;
        self.log_exit(pid, exit, run);
        RunEnd::Exited(exit)
    }

    /// Ends a run whose liveness probe failed: stopped as by hand, then handed to the restart
    /// policy as a failed run.
    async fn end_unhealthy(&mut self, pid: i32, since: SystemTime, error: &str, run: &output::Run) -> RunEnd {
        warn!(
            program = self.name(),
            pid,
            %error,
            "liveness probe failed {} times in a row; stopping the program to restart it (restart: {})",
            self.status.config.liveness.as_ref().map_or(0, |l| l.failure_threshold),
            self.status.config.restart
        );
        let ended = self.status.exits;
        self.stop_run(pid, since, run).await;
        let exit = match self.status.last_exit {
            Some(exit) if self.status.exits != ended => exit,
            // Not even SIGKILL ended it (logged by stop_group): count it as killed.
            _ => {
                let exit = Exit {
                    reason: ExitReason::Signal,
                    code: 128 + libc::SIGKILL,
                };
                self.record_exit(exit);
                exit
            }
        };
        RunEnd::Unhealthy(exit)
    }

    /// Stops the running main process and its group (stop signal, grace, SIGKILL).
    async fn stop_run(&mut self, pid: i32, since: SystemTime, run: &output::Run) {
        self.ran = self.run_started.elapsed();
        self.publish(ProgramState::Stopping { pid, since });
        let mut main = Some(pid);
        self.stop_group(pid, &mut main).await;
        self.os.forget_group(pid);
        run.drained(OUTPUT_DRAIN).await;
        info!(program = self.name(), pid, "stopped");
    }

    /// The "exited" record; a failed run's carries its last stderr lines.
    fn log_exit(&self, pid: i32, exit: Exit, run: &output::Run) {
        let (code, reason) = (exit.code, exit.reason.as_str());
        let stderr = match exit.reason {
            ExitReason::Success => Vec::new(),
            _ => self.entry.program.output().last_stderr(run.first_seq(), CRASH_LINES),
        };
        if stderr.is_empty() {
            info!(program = self.name(), pid, code, reason, "exited");
        } else {
            warn!(program = self.name(), pid, code, reason, stderr = %stderr.join("\n"), "exited");
        }
    }

    /// Stop signal to every process of the run, then SIGKILL after stop_timeout; returns once
    /// none is left. Records the main process's exit if it happens here (`main` is its PID
    /// until then).
    async fn stop_group(&mut self, pgid: i32, main: &mut Option<i32>) {
        let mut targets = Targets::find(&self.entry.program, pgid, main.is_some());
        if main.is_none() && targets.gone().await {
            return;
        }
        let signal = self.status.config.stop_signal;
        targets.signal(signal.0);
        let timeout = self.status.config.stop_timeout;
        if self.wait_gone(&mut targets, timeout, main, Some(signal.0)).await {
            return;
        }
        warn!(
            program = self.name(),
            pgid,
            ?timeout,
            "still running after stop_timeout; sending SIGKILL"
        );
        targets.kill();
        if !self
            .wait_gone(&mut targets, KILL_GRACE, main, Some(libc::SIGKILL))
            .await
        {
            warn!(program = self.name(), pgid, "processes still running after SIGKILL");
        }
    }

    /// Waits until no target is left and the main process's exit is recorded, or `timeout`.
    /// Processes found later (forked meanwhile, or re-parented) get `signal` too.
    async fn wait_gone(
        &mut self,
        targets: &mut Targets,
        timeout: Duration,
        main: &mut Option<i32>,
        signal: Option<i32>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(sig) = signal {
                targets.refresh(sig);
            }
            if main.is_none() && !targets.alive() {
                if targets.gone().await {
                    return true;
                }
                // A fresh listing found more: signalled at the top of the loop.
                continue;
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
                _ = targets.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(sig) = signal {
                        targets.refresh(sig);
                    }
                    return main.is_none() && targets.gone().await;
                }
            }
        }
    }
}

/// What a stop must take down.
enum Targets {
    /// Every member of the program's cgroup; `cgroup.events` tells when it is empty.
    Cgroup {
        cgroup: Arc<crate::cgroup::ProgramCgroup>,
        /// A watch on `cgroup.events`, made at the first wait.
        watch: Option<crate::cgroup::EventsWatch>,
        /// inotify failed: a recheck timer instead.
        watch_failed: bool,
        /// Members already sent the signal of the current step.
        signalled: Vec<i32>,
    },
    /// The run's process group and session, and the processes that left them: found from
    /// the main process's tree while it lives, and among procwatch's re-parented children by
    /// the sessions and groups the run's processes were seen in.
    Proc {
        pgid: i32,
        /// (PID, start time): a PID alone could be reused by then.
        known: Vec<(i32, u64)>,
        /// Every session and process group seen among the run's processes.
        ids: Vec<i32>,
        signalled: Vec<(i32, u64)>,
        /// The signal the run's process group was sent in this step: once, as a second stop
        /// signal means "quit now" to many programs and restarts a shell's trap.
        group_signalled: Option<i32>,
    },
}

impl Targets {
    /// `main_alive`: the tree can only be walked from a main process that still runs.
    fn find(program: &Program, pgid: i32, main_alive: bool) -> Targets {
        if let Some(cg) = program.cgroup.get() {
            // The watch is made only when a stop has to wait (see `changed`): a run that ends
            // with its cgroup empty (most restarts) needs none.
            return Targets::Cgroup {
                cgroup: Arc::clone(cg),
                watch: None,
                watch_failed: false,
                signalled: Vec::new(),
            };
        }
        let mut t = Targets::Proc {
            pgid,
            known: Vec::new(),
            ids: vec![pgid],
            signalled: Vec::new(),
            group_signalled: None,
        };
        if main_alive
            && let Targets::Proc { known, .. } = &mut t
            && let Some(st) = procfs::Reader::default().stat(pgid)
        {
            known.push((pgid, st.starttime_ticks));
        }
        t.rescan();
        t
    }

    /// Proc mode: adds to `known` the processes of the run now alive: the trees under the
    /// known ones and under procwatch's children that share a session or group with the run,
    /// from a listing of them begun at or after `since` (`None`: a recent one will do, see
    /// [`Children::list`]). `Err(when)` if that listing cannot be made before `when`.
    fn rescan_since(&mut self, since: Option<Instant>) -> Result<(), Instant> {
        let Targets::Proc { known, ids, .. } = self else {
            return Ok(());
        };
        let mut reader = procfs::Reader::default();
        let mut candidates = Vec::new();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list(since, ids, &mut reader, &mut candidates)?;
        let mut roots: Vec<i32> = Vec::new();
        roots.extend(known.iter().filter(|&&(p, s)| reader.runs(p, s)).map(|&(p, _)| p));
        for (pid, start) in candidates {
            // Read again: the same process as listed (not a reused PID), and still in one
            // of the run's sessions or groups, as a fresh listing would have it.
            if let Some(st) = reader.stat(pid)
                && st.starttime_ticks == start
                && (ids.contains(&st.session) || ids.contains(&st.pgrp))
                && !roots.contains(&pid)
            {
                roots.push(pid);
            }
        }
        for root in roots {
            // Every process of the tree (no process is in session 0).
            for st in reader.escaped(root, 0) {
                if st.state == b'Z' {
                    continue;
                }
                if !known.contains(&(st.pid, st.starttime_ticks)) {
                    known.push((st.pid, st.starttime_ticks));
                }
                for id in [st.session, st.pgrp] {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        known.retain(|&(p, s)| reader.runs(p, s));
        Ok(())
    }

    /// [`Targets::rescan_since`] from a recent listing: what it misses of processes
    /// re-parented since, a later rescan finds, and [`Targets::gone`] makes sure of.
    fn rescan(&mut self) {
        let _ = self.rescan_since(None);
    }

    /// Whether nothing of the run is left. In proc mode: no process known or in the group
    /// alive, and none of the run's sessions and groups among procwatch's children in a
    /// listing begun after that was seen (every process re-parented to procwatch before it
    /// is in that listing); waits for one if a listing was made too recently (a stop of many
    /// programs at once shares the listings instead of each making its own).
    async fn gone(&mut self) -> bool {
        if self.alive() {
            return false;
        }
        if !matches!(self, Targets::Proc { .. }) {
            return true;
        }
        let seen = Instant::now();
        while let Err(due) = self.rescan_since(Some(seen)) {
            tokio::time::sleep_until(due.into()).await;
        }
        !self.alive()
    }

    /// Sends `signal` to every target not sent it yet (then SIGCONT: a stopped process
    /// cannot act on it until continued).
    fn refresh(&mut self, signal: i32) {
        match self {
            Targets::Cgroup { cgroup, signalled, .. } => {
                let mut pids = Vec::new();
                // A member may fork between the read and the kill: read again until no new
                // member shows up (cgroup.kill, for SIGKILL, needs no such loop).
                for _ in 0..8 {
                    cgroup.procs(&mut pids);
                    let new: Vec<i32> = pids.iter().copied().filter(|p| !signalled.contains(p)).collect();
                    if new.is_empty() {
                        break;
                    }
                    for pid in new {
                        // SAFETY: plain syscalls to a member of the program's cgroup.
                        unsafe {
                            libc::kill(pid, signal);
                            libc::kill(pid, libc::SIGCONT);
                        }
                        signalled.push(pid);
                    }
                }
            }
            Targets::Proc { .. } => {
                self.rescan();
                let Targets::Proc {
                    pgid,
                    known,
                    signalled,
                    group_signalled,
                    ..
                } = self
                else {
                    return;
                };
                if *group_signalled != Some(signal) {
                    os::signal_group(*pgid, signal);
                    os::signal_group(*pgid, libc::SIGCONT);
                    *group_signalled = Some(signal);
                    // The known processes in the group had it with the group. One forked into
                    // the group since is found by a later rescan and sent it alone.
                    let mut reader = procfs::Reader::default();
                    for &(pid, start) in known.iter() {
                        if !signalled.contains(&(pid, start))
                            && reader
                                .stat(pid)
                                .is_some_and(|st| st.starttime_ticks == start && st.pgrp == *pgid)
                        {
                            signalled.push((pid, start));
                        }
                    }
                }
                for &(pid, start) in known.iter() {
                    if !signalled.contains(&(pid, start)) {
                        // SAFETY: plain syscalls; `known` holds only live processes.
                        unsafe {
                            libc::kill(pid, signal);
                            libc::kill(pid, libc::SIGCONT);
                        }
                        signalled.push((pid, start));
                    }
                }
            }
        }
    }

    fn signal(&mut self, signal: i32) {
        self.refresh(signal);
    }

    /// SIGKILL to everything: `cgroup.kill` in cgroup mode.
    fn kill(&mut self) {
        match self {
            Targets::Cgroup { cgroup, signalled, .. } => {
                signalled.clear();
                cgroup.kill();
            }
            Targets::Proc {
                signalled,
                group_signalled,
                ..
            } => {
                signalled.clear();
                *group_signalled = None;
                self.refresh(libc::SIGKILL);
            }
        }
    }

    fn alive(&self) -> bool {
        match self {
            Targets::Cgroup { cgroup, .. } => cgroup.populated(),
            Targets::Proc { pgid, known, .. } => {
                let mut reader = procfs::Reader::default();
                os::group_alive(*pgid) || known.iter().any(|&(pid, start)| reader.runs(pid, start))
            }
        }
    }

    /// Resolves when the targets may have changed: `cgroup.events` was modified (cgroup
    /// mode), or after a short recheck interval (proc mode; exits also arrive as reaper
    /// events).
    async fn changed(&mut self) {
        match self {
            Targets::Cgroup { watch: Some(w), .. } => w.changed().await,
            Targets::Cgroup {
                cgroup,
                watch: watch @ None,
                watch_failed: watch_failed @ false,
                ..
            } => {
                match cgroup.events_watch() {
                    // Resolves at once: the caller looks again with the watch in place, so
                    // that a change made before the watch existed is not missed.
                    Ok(w) => *watch = Some(w),
                    Err(e) => {
                        warn!(error = %e, "cannot watch cgroup.events; checking it on a timer");
                        *watch_failed = true;
                    }
                }
            }
            _ => tokio::time::sleep(GROUP_RECHECK).await,
        }
    }
}

/// procwatch's children (programs' main processes, and processes re-parented to procwatch as
/// their subreaper) by session and by process group: one listing shared by every stop in
/// proc mode. Each stop used to list and read them all at each rescan: with N programs
/// stopping at once (shutdown, a reload that removes them), N² reads every GROUP_RECHECK.
static CHILDREN: LazyLock<Mutex<Children>> = LazyLock::new(|| Mutex::new(Children::default()));

#[derive(Default)]
struct Children {
    /// When the last listing began: every process re-parented to procwatch before then and
    /// still alive is in it.
    taken: Option<Instant>,
    /// How long it took.
    cost: Duration,
    /// Session or process group ID -> (PID, start time) of the children in it.
    by_id: HashMap<i32, Vec<(i32, u64)>>,
}

impl Children {
    /// Appends to `out` the (PID, start time) of the children in any of `ids`, from a listing
    /// begun at or after `since` (`None`: any listing at most GROUP_RECHECK old, or the last
    /// if a new one is not due yet), made now if the last is older. A new listing is due
    /// LISTING_SPACING times the cost of the last after it began: more than a millisecond
    /// before that, a `since` the last does not meet gets `Err(when it is due)`.
    fn list(
        &mut self,
        since: Option<Instant>,
        ids: &[i32],
        reader: &mut procfs::Reader,
        out: &mut Vec<(i32, u64)>,
    ) -> Result<(), Instant> {
        let now = Instant::now();
        let fresh = match (self.taken, since) {
            (None, _) => false,
            (Some(taken), Some(since)) => taken >= since,
            (Some(taken), None) => now.duration_since(taken) < GROUP_RECHECK.max(self.cost * LISTING_SPACING),
        };
        if !fresh {
            // A wait shorter than a timer tick (a millisecond, as tokio's timers go) would
            // cost more than the listing: a small one is made at once.
            if let Some(taken) = self.taken {
                let due = taken + self.cost * LISTING_SPACING;
                if due > now + Duration::from_millis(1) {
                    return Err(due);
                }
            }
            self.take(reader);
        }
        for id in ids {
            if let Some(children) = self.by_id.get(id) {
                out.extend_from_slice(children);
            }
        }
        Ok(())
    }

    fn take(&mut self, reader: &mut procfs::Reader) {
        let taken = Instant::now();
        let mut pids = Vec::new();
        procfs::own_children(reader, &mut pids);
        self.by_id.clear();
        for pid in pids {
            if let Some(st) = reader.stat(pid) {
                let child = (pid, st.starttime_ticks);
                self.by_id.entry(st.session).or_default().push(child);
                if st.pgrp != st.session {
                    self.by_id.entry(st.pgrp).or_default().push(child);
                }
            }
        }
        self.taken = Some(taken);
        self.cost = taken.elapsed();
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
