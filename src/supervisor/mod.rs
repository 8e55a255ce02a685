//! The supervisor: the only writer of program state. It starts, restarts and stops programs and
//! publishes an immutable snapshot of each program's state after every change.
//!
//! Readers (the metrics collector, the status report) load the published list and each
//! program's status without locks; nothing they do can delay a restart.

mod backoff;
mod control;
mod guardian;
pub mod identity;
mod os;
mod probe;
mod runner;
mod spawn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cgroup::{self, CgroupSetting, ProgramCgroup};
use crate::config::{ApplyReport, DependCondition, ProbeRole, ProgramConfig};
use crate::output::{Output, ProgramOutput};
use crate::procfs;

pub use control::{Action, Control, ControlError, Origin, Outcome};
pub use guardian::{guardian_up, split as split_guardian};
pub use probe::ProbeSample;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot become a child subreaper or start the supervisor threads: {0}")]
    Start(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Exit code 0.
    Success,
    /// A non-zero exit code, or the command could not be started at all.
    Failure,
    /// Killed by a signal.
    Signal,
    /// Killed by the OOM killer (SIGKILL while `oom_kill` of its cgroup's `memory.events` went
    /// up: cgroup mode with the memory controller).
    Oom,
}

impl ExitReason {
    /// Every reason, in the order of [`ProgramStatus::exits`].
    pub const ALL: [ExitReason; 4] = [
        ExitReason::Success,
        ExitReason::Failure,
        ExitReason::Signal,
        ExitReason::Oom,
    ];

    /// Where this reason is counted in [`ProgramStatus::exits`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Success => "success",
            ExitReason::Failure => "failure",
            ExitReason::Signal => "signal",
            ExitReason::Oom => "oom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub reason: ExitReason,
    /// The exit code, 128+N for signal N; 127/126 when the command could not be started.
    pub code: i32,
}

/// Where a program is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramState {
    /// Not started yet: a dependency does not meet its `depends_on` condition.
    Waiting {
        dependency: String,
    },
    Starting,
    Running {
        pid: i32,
        since: SystemTime,
    },
    /// Being stopped by procwatch (shutdown or reload).
    Stopping {
        pid: i32,
        since: SystemTime,
    },
    /// Waiting to be started again.
    BackingOff {
        until: SystemTime,
    },
    /// Not running and not going to be started again (policy, or stopped).
    Stopped,
    /// Stopped by an operator: the restart policy leaves it down until it is started by hand
    /// or changed by a reload.
    StoppedByHand,
}

impl ProgramState {
    pub fn label(&self) -> &'static str {
        match self {
            ProgramState::Waiting { .. } => "waiting",
            ProgramState::Starting => "starting",
            ProgramState::Running { .. } => "running",
            ProgramState::Stopping { .. } => "stopping",
            ProgramState::BackingOff { .. } => "backoff",
            ProgramState::Stopped => "stopped",
            ProgramState::StoppedByHand => "stopped-by-hand",
        }
    }

    /// The main PID and when the current run started, while there is one.
    pub fn run(&self) -> Option<(i32, SystemTime)> {
        match *self {
            ProgramState::Running { pid, since } | ProgramState::Stopping { pid, since } => Some((pid, since)),
            _ => None,
        }
    }
}

/// One published snapshot of a program.
#[derive(Debug, Clone)]
pub struct ProgramStatus {
    pub config: Arc<ProgramConfig>,
    pub state: ProgramState,
    pub restarts: u64,
    /// Runs ended, by reason, indexed by [`ExitReason::index`].
    pub exits: [u64; 4],
    pub last_exit: Option<Exit>,
    /// Actions taken by hand, indexed by [`Action::index`].
    pub control_actions: [u64; 4],
    /// Running, and its readiness probe passes (or it has none).
    pub ready: bool,
    /// A run has started since this config was applied (for `depends_on: started`).
    pub started: bool,
}

impl ProgramStatus {
    /// Whether this program, as a dependency, meets `condition`.
    pub fn meets(&self, condition: DependCondition) -> bool {
        match condition {
            DependCondition::Started => self.started,
            DependCondition::Ready => self.ready,
            DependCondition::CompletedSuccessfully => {
                self.started
                    && self.state == ProgramState::Stopped
                    && self.last_exit.is_some_and(|e| e.reason == ExitReason::Success)
            }
        }
    }
}

/// A supervised program, kept by name across reloads so its counters go on.
#[derive(Debug)]
pub struct Program {
    pub name: String,
    status: ArcSwap<ProgramStatus>,
    /// CPU of every process of this program that procwatch reaped (wait4 rusage), in µs.
    reaped_user_us: AtomicU64,
    reaped_system_us: AtomicU64,
    /// The rest of what wait4's rusage told of them (exporter: faults, I/O, context switches).
    reaped: ReapedRusage,
    /// Bumped on every publish: what a dependent waiting for this program wakes up on.
    changed: tokio::sync::watch::Sender<()>,
    /// Liveness, readiness: indexed like [`ProbeRole::ALL`].
    probe_stats: [probe::ProbeStats; 2],
    /// Its cgroup in cgroup mode, made at its first start and kept across runs and reloads.
    cgroup: OnceLock<Arc<ProgramCgroup>>,
    /// Its captured output: counters and last lines, over every run.
    output: Arc<ProgramOutput>,
}

/// Totals of wait4 rusage over the processes of a program that procwatch reaped.
#[derive(Debug, Default)]
struct ReapedRusage {
    minflt: AtomicU64,
    majflt: AtomicU64,
    /// 512-byte blocks, as the kernel counts them from the same I/O accounting as /proc/PID/io.
    inblock: AtomicU64,
    oublock: AtomicU64,
    nvcsw: AtomicU64,
    nivcsw: AtomicU64,
}

impl Program {
    fn new(config: Arc<ProgramConfig>) -> Program {
        Program {
            name: config.name.clone(),
            output: Arc::new(ProgramOutput::new(&config.name)),
            status: ArcSwap::from_pointee(ProgramStatus {
                config,
                state: ProgramState::Starting,
                restarts: 0,
                exits: [0; 4],
                last_exit: None,
                control_actions: [0; 4],
                ready: false,
                started: false,
            }),
            reaped_user_us: AtomicU64::new(0),
            reaped_system_us: AtomicU64::new(0),
            reaped: ReapedRusage::default(),
            changed: tokio::sync::watch::Sender::new(()),
            probe_stats: Default::default(),
            cgroup: OnceLock::new(),
        }
    }

    /// Publishes a new status and wakes whoever waits on this program.
    fn store(&self, status: ProgramStatus) {
        self.status.store(Arc::new(status));
        self.changed.send_replace(());
    }

    pub(crate) fn probe_stats(&self, role: ProbeRole) -> &probe::ProbeStats {
        &self.probe_stats[role as usize]
    }

    /// The numbers of the program's probe of this role, where it has one.
    pub fn probe(&self, role: ProbeRole) -> Option<ProbeSample> {
        self.status().config.probe(role)?;
        Some(self.probe_stats(role).sample())
    }

    /// Its cgroup (cgroup mode, once started): membership, CPU, memory, pressure.
    pub fn cgroup(&self) -> Option<&ProgramCgroup> {
        self.cgroup.get().map(|c| &**c)
    }

    /// Its captured output: line counts, the last lines, a follow subscription.
    pub fn output(&self) -> &Arc<ProgramOutput> {
        &self.output
    }

    pub fn status(&self) -> Arc<ProgramStatus> {
        self.status.load_full()
    }

    /// Adds a reaped process's wait4 rusage (which includes the children it waited for).
    pub(crate) fn add_reaped_rusage(&self, ru: &libc::rusage) {
        let r = &self.reaped;
        let add = |a: &AtomicU64, v: libc::c_long| a.fetch_add(v.max(0) as u64, Ordering::Relaxed);
        add(&r.minflt, ru.ru_minflt);
        add(&r.majflt, ru.ru_majflt);
        add(&r.inblock, ru.ru_inblock);
        add(&r.oublock, ru.ru_oublock);
        add(&r.nvcsw, ru.ru_nvcsw);
        add(&r.nivcsw, ru.ru_nivcsw);
    }

    /// Faults, I/O and context switches of the processes of this program that have been reaped.
    pub fn reaped_usage(&self) -> procfs::Counters {
        let r = &self.reaped;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        procfs::Counters {
            minor_faults: get(&r.minflt),
            major_faults: get(&r.majflt),
            read_bytes: get(&r.inblock) * 512,
            write_bytes: get(&r.oublock) * 512,
            voluntary_ctxt_switches: get(&r.nvcsw),
            nonvoluntary_ctxt_switches: get(&r.nivcsw),
        }
    }

    /// (user, system) CPU of the processes of this program that have been reaped.
    pub fn reaped_cpu(&self) -> (Duration, Duration) {
        (
            Duration::from_micros(self.reaped_user_us.load(Ordering::Relaxed)),
            Duration::from_micros(self.reaped_system_us.load(Ordering::Relaxed)),
        )
    }
}

/// The published list of programs, in config order.
pub type Programs = Arc<Vec<Arc<Program>>>;

/// A cheap, clonable read-only view for collectors.
#[derive(Clone)]
pub struct SupervisorView {
    programs: Arc<ArcSwap<Vec<Arc<Program>>>>,
    mode: &'static str,
    describe: Arc<str>,
}

impl SupervisorView {
    pub fn programs(&self) -> Programs {
        self.programs.load_full()
    }

    /// How programs are tracked: `cgroup` or `proc` (`procwatch_tracking_info`).
    pub fn tracking_mode(&self) -> &'static str {
        self.mode
    }

    /// The mode and why, in one line (the landing page shows it).
    pub fn tracking(&self) -> &str {
        &self.describe
    }
}

struct Runner {
    config: Arc<ProgramConfig>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    commands: mpsc::Sender<control::Request>,
}

/// Runners a reload is stopping, in a task of their own, so that a shutdown that preempts the
/// reload (dropping `apply` mid-way) still finds them, waits for them within its bound, and
/// kills them past it.
struct Retiring {
    /// Their stop tokens (cancelled one by one, in reverse dependency order, by the task).
    stops: Vec<CancellationToken>,
    /// Cancelled once every one of them has stopped.
    done: CancellationToken,
}

impl Retiring {
    /// Starts stopping `runners` in reverse dependency order.
    fn start(runners: Vec<Runner>) -> Retiring {
        let stops = runners.iter().map(|r| r.stop.clone()).collect();
        let done = CancellationToken::new();
        let finished = done.clone();
        tokio::spawn(async move {
            stop_in_order(runners).await;
            finished.cancel();
        });
        Retiring { stops, done }
    }
}

/// Stops `runners` in reverse dependency order: each program is told to stop once every
/// program among `runners` that depends on it has stopped; unrelated programs stop at once.
/// Returns when all have stopped.
async fn stop_in_order(runners: Vec<Runner>) {
    let done: HashMap<String, CancellationToken> = runners
        .iter()
        .map(|r| (r.config.name.clone(), CancellationToken::new()))
        .collect();
    let mut dependents: HashMap<String, Vec<CancellationToken>> = HashMap::new();
    for r in &runners {
        for d in &r.config.depends_on {
            if done.contains_key(&d.name) {
                dependents
                    .entry(d.name.clone())
                    .or_default()
                    .push(done[&r.config.name].clone());
            }
        }
    }
    let mut stopping = Vec::with_capacity(runners.len());
    for runner in runners {
        let first = dependents.remove(&runner.config.name).unwrap_or_default();
        let mine = done[&runner.config.name].clone();
        stopping.push(tokio::spawn(async move {
            for dependent in first {
                dependent.cancelled().await;
            }
            runner.stop.cancel();
            let _ = runner.task.await;
            mine.cancel();
        }));
    }
    for task in stopping {
        let _ = task.await;
    }
}

pub struct Supervisor {
    os: Arc<os::Os>,
    output: Arc<Output>,
    published: Arc<ArcSwap<Vec<Arc<Program>>>>,
    runners: HashMap<String, Runner>,
    /// Each runner's command sender by name, republished by `apply`.
    commands: control::Senders,
    /// Runners being stopped by a reload (see [`Retiring`]).
    retiring: Vec<Retiring>,
}

impl Supervisor {
    /// `guardian`: also start the guardian process (procwatch's own binary with
    /// `--guardian`), so that programs' descendants die even if procwatch is SIGKILLed. Only
    /// the procwatch binary can be its own guardian; a test harness running `app::run` cannot.
    ///
    /// `cgroup`: the config's `cgroup:` key; the mode chosen and why is logged once.
    pub fn new(guardian: bool, cgroup: CgroupSetting) -> Result<Supervisor, SupervisorError> {
        let guardian_pid = guardian.then(guardian::link).flatten().map(|l| l.pid);
        let tracking = cgroup::detect(cgroup, guardian_pid)?;
        tracing::info!(
            mode = tracking.mode(),
            setting = cgroup.as_str(),
            "tracking: {}",
            tracking.describe()
        );
        // The output reader thread first: the spawner hands each run the pipes it reads.
        let output = Output::start().map_err(SupervisorError::Start)?;
        Ok(Supervisor {
            os: os::Os::start(guardian, tracking).map_err(SupervisorError::Start)?,
            output,
            published: Arc::new(ArcSwap::from_pointee(Vec::new())),
            runners: HashMap::new(),
            commands: Arc::default(),
            retiring: Vec::new(),
        })
    }

    pub fn view(&self) -> SupervisorView {
        SupervisorView {
            programs: Arc::clone(&self.published),
            mode: self.os.tracking().mode(),
            describe: self.os.tracking().describe().into(),
        }
    }

    /// What `resources:` can use here: the mode, and the controllers in cgroup mode.
    pub fn limit_support(&self) -> cgroup::LimitSupport {
        self.os.tracking().limit_support()
    }

    /// The handle that sends commands (start, stop, restart, signal) to programs by name.
    pub fn control(&self) -> Control {
        Control(Arc::clone(&self.commands))
    }

    /// Makes the running set match `configs`, by name: unchanged programs are left alone,
    /// changed ones are stopped and started with their new config, removed ones are stopped,
    /// added ones are started.
    pub async fn apply(&mut self, configs: &[ProgramConfig]) -> ApplyReport {
        let report = ApplyReport::diff(self.runners.iter().map(|(n, r)| (n, &*r.config)), configs, |c| &c.name);
        // Stop what was removed or changed, dependents before what they depend on, and wait
        // for all of them.
        // The stops run in a task the supervisor keeps track of: a shutdown may drop this
        // future while they wait out a stop_timeout, and must still finish them.
        self.retiring.retain(|r| !r.done.is_cancelled());
        let stopping = report.to_stop().filter_map(|name| self.runners.remove(name)).collect();
        let retiring = Retiring::start(stopping);
        let done = retiring.done.clone();
        self.retiring.push(retiring);
        done.cancelled().await;
        self.output.set_names(configs.iter().map(|c| c.name.as_str()));
        // Programs are kept by name, so a restarted program's counters go on.
        let old: HashMap<String, Arc<Program>> = self
            .published
            .load()
            .iter()
            .map(|p| (p.name.clone(), Arc::clone(p)))
            .collect();
        // A removed program's cgroup goes with it (a changed one keeps its cgroup, and so
        // its CPU counter, across the restart).
        let removed: Vec<Arc<Program>> = report.stopped.iter().filter_map(|n| old.get(n).cloned()).collect();
        if removed.iter().any(|p| p.cgroup().is_some()) {
            let _ = tokio::task::spawn_blocking(move || {
                for p in removed {
                    if let Some(cg) = p.cgroup() {
                        cg.remove();
                    }
                }
            })
            .await;
        }
        let mut list = Vec::with_capacity(configs.len());
        let mut new = Vec::new();
        for config in configs {
            let program = match old.get(&config.name) {
                Some(p) => Arc::clone(p),
                None => Arc::new(Program::new(Arc::new(config.clone()))),
            };
            if !self.runners.contains_key(&config.name) {
                // Every new runner's status is reset before any of them starts (see reset).
                runner::reset(&program, Arc::new(config.clone()));
                new.push(Arc::clone(&program));
            }
            list.push(program);
        }
        let by_name: HashMap<&str, &Arc<Program>> = list.iter().map(|p| (p.name.as_str(), p)).collect();
        for program in new {
            let config = Arc::clone(&program.status().config);
            // Validated: every dependency names a program of this config.
            let deps = config
                .depends_on
                .iter()
                .filter_map(|d| by_name.get(d.name.as_str()).map(|p| (Arc::clone(p), d.condition)))
                .collect();
            let stop = CancellationToken::new();
            let (commands, requests) = mpsc::channel(control::QUEUE);
            let task = runner::spawn(
                Arc::clone(&self.os),
                Arc::clone(&self.output),
                program,
                deps,
                stop.clone(),
                requests,
            );
            self.runners.insert(
                config.name.clone(),
                Runner {
                    config,
                    stop,
                    task,
                    commands,
                },
            );
        }
        self.published.store(Arc::new(list));
        self.commands.store(Arc::new(
            self.runners
                .iter()
                .map(|(name, r)| (name.clone(), r.commands.clone()))
                .collect(),
        ));
        report
    }

    /// Stops every program gracefully, then any stray child; returns when all have stopped or
    /// `timeout` passed, in which case everything still alive is killed. In cgroup mode, then
    /// removes the cgroups procwatch made.
    pub async fn shutdown(&mut self, timeout: Duration) {
        self.commands.store(Arc::default());
        let mut stops: Vec<CancellationToken> = self.runners.values().map(|r| r.stop.clone()).collect();
        // What a preempted reload was stopping is finished here too, within the same bound.
        let retiring = std::mem::take(&mut self.retiring);
        stops.extend(retiring.iter().flat_map(|r| r.stops.iter().cloned()));
        let runners = self.runners.drain().map(|(_, r)| r).collect();
        let all = async {
            stop_in_order(runners).await;
            for r in &retiring {
                r.done.cancelled().await;
            }
            self.stop_strays().await;
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(?timeout, "shutdown_timeout passed; killing what is left");
            // Programs still waiting for their dependents to stop must not restart what the
            // SIGKILL below ends.
            for stop in &stops {
                stop.cancel();
            }
            self.kill_everything().await;
        }
        if let Some(tree) = self.os.tracking().tree() {
            let tree = Arc::clone(tree);
            let _ = tokio::task::spawn_blocking(move || tree.remove()).await;
        }
    }

    /// SIGKILL to every program's cgroup or process group and to every stray, until nothing
    /// is left (bounded: SIGKILL is not instant, but cannot be ignored).
    async fn kill_everything(&self) {
        let programs = self.published.load_full();
        for p in programs.iter() {
            if let Some(cg) = p.cgroup() {
                cg.kill();
            }
        }
        for pgid in self.os.groups() {
            os::signal_group(pgid, libc::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let strays = self.strays();
            for &pid in &strays {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let left = !strays.is_empty()
                || self.os.groups().into_iter().any(os::group_alive)
                || programs
                    .iter()
                    .any(|p| p.cgroup().is_some_and(ProgramCgroup::populated));
            if !left || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Children of procwatch that are no program's main process: descendants that left their
    /// program and were re-parented to procwatch (its child subreaper).
    fn strays(&self) -> Vec<i32> {
        let mains: Vec<i32> = self
            .published
            .load()
            .iter()
            .filter_map(|p| p.status().state.run().map(|(pid, _)| pid))
            .collect();
        let mut pids = Vec::new();
        procfs::own_children(&mut procfs::Reader::default(), &mut pids);
        pids.retain(|p| !mains.contains(p));
        pids
    }

    /// Last safety net: anything still re-parented to procwatch gets SIGTERM, then SIGKILL
    /// after a grace, so that nothing procwatch started outlives it. Repeated until none is
    /// left: killing a stray re-parents its children to procwatch, to be found next round.
    async fn stop_strays(&self) {
        let mut pids = self.strays();
        if pids.is_empty() {
            return;
        }
        tracing::warn!(
            count = pids.len(),
            "stopping processes that left their program's process group"
        );
        let mut reader = procfs::Reader::default();
        let mut termed: Vec<(i32, u64)> = Vec::new();
        let kill_at = tokio::time::Instant::now() + STRAY_GRACE;
        while !pids.is_empty() {
            let kill = tokio::time::Instant::now() >= kill_at;
            for &pid in &pids {
                let Some(st) = reader.stat(pid) else { continue };
                if kill {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                } else if !termed.contains(&(pid, st.starttime_ticks)) {
                    termed.push((pid, st.starttime_ticks));
                    // SAFETY: plain syscalls; a stopped process must be continued to act.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                        libc::kill(pid, libc::SIGCONT);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            pids = self.strays();
        }
    }
}

/// How long strays get between SIGTERM and SIGKILL.
const STRAY_GRACE: Duration = Duration::from_secs(2);
