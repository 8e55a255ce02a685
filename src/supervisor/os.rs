//! The operating-system side of supervision: spawner threads (one per core, up to four) start
//! programs, one thread reaps every child, and a registry says which program a reaped process
//! belonged to.
//!
//! procwatch is a child subreaper (prctl(2) `PR_SET_CHILD_SUBREAPER`), so descendants whose
//! parent exits are re-parented to it. The reaper takes every exit with wait4(2), whose rusage
//! is the process's CPU plus that of every child it waited for: that is how the CPU of processes
//! that lived and died between two scrapes is kept.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Program;
use super::guardian;
use super::spawn::{OwnEnv, Prepared, SpawnArgs, Spawner};
use crate::cgroup::{ProgramCgroup, Tracking};
use crate::config::ProgramConfig;
use crate::procfs;

/// What the reaper tells a program's runner.
#[derive(Debug)]
pub(crate) enum OsEvent {
    /// The program's main process ended; `status` is the raw wait status.
    MainExited { pid: i32, status: i32 },
    /// Some other process of the program was reaped.
    Reaped,
}

/// How the reaper finds the program a process belongs to.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) program: Arc<Program>,
    pub(crate) events: mpsc::UnboundedSender<OsEvent>,
}

#[derive(Default)]
struct Registry {
    /// Main process PID -> program.
    mains: HashMap<i32, Entry>,
    /// Per spawner thread, bumped before and after each clone: odd while one is under way,
    /// whose PID is not registered yet (see [`Os::reap_forever`]).
    cloning: [u64; MAX_SPAWNERS],
    /// Process group (= session) ID of a run -> program, until the group is empty.
    groups: HashMap<i32, Entry>,
    /// Exec probes that have not been reaped yet -> where their wait status goes.
    probes: HashMap<i32, oneshot::Sender<i32>>,
}

struct ProbeRequest {
    command: Vec<String>,
    config: Arc<ProgramConfig>,
    /// PID, the read end of its output, its wait status to come.
    reply: oneshot::Sender<io::Result<(i32, io::PipeReader, oneshot::Receiver<i32>)>>,
}

/// The fds a run's standard output and error go to (the output module's pipe ends or
/// files); `None` keeps procwatch's own.
#[derive(Debug, Default)]
pub(crate) struct Stdio {
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

enum Job {
    Program {
        config: Arc<ProgramConfig>,
        entry: Entry,
        stdio: Stdio,
        reply: oneshot::Sender<io::Result<i32>>,
    },
    Probe(ProbeRequest),
}

pub(crate) struct Os {
    /// std Mutex: held only for map updates, never across a clone or an `.await`.
    registry: Mutex<Registry>,
    /// Signalled when a spawner thread has registered what it cloned.
    registered: Condvar,
    spawn_tx: std::sync::mpsc::Sender<Job>,
    /// Bumped after each spawn, so that a reaper with no children knows when to look again.
    spawned: (Mutex<u64>, Condvar),
    tracking: Tracking,
    /// procwatch's environment, which programs inherit, captured once.
    own_env: Arc<OwnEnv>,
}

/// The most spawner threads procwatch runs.
const MAX_SPAWNERS: usize = 4;

/// How many spawner threads: one per core, up to [`MAX_SPAWNERS`]. A spawner thread waits
/// while its child runs up to exec (CLONE_VFORK), most of a start's cost; with several, the
/// children of a burst of starts (5000 at start-up) exec on every core at once.
fn spawner_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_SPAWNERS)
}

impl Os {
    /// Makes procwatch a child subreaper and starts the spawner and reaper threads. With
    /// `guardian`, watches the guardian process that `main` forked off (see guardian.rs).
    pub(crate) fn start(guardian: bool, tracking: Tracking) -> io::Result<Arc<Os>> {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if guardian && let Some(link) = guardian::link() {
            if let Some(tree) = tracking.tree() {
                link.tell_cgroup(tree.cleanup_dir());
            }
            link.watch()?;
        }
        let (spawn_tx, spawn_rx) = std::sync::mpsc::channel::<Job>();
        let os = Arc::new(Os {
            registry: Mutex::new(Registry::default()),
            registered: Condvar::new(),
            spawn_tx,
            spawned: (Mutex::new(0), Condvar::new()),
            tracking,
            own_env: Arc::new(OwnEnv::capture()),
        });
        let devnull = Arc::new(std::fs::File::open("/dev/null")?);
        // The spawner threads take jobs from one queue: whichever is free takes the next.
        let jobs = Arc::new(Mutex::new(spawn_rx));
        // Every thread lives as long as the process: PR_SET_PDEATHSIG fires when the *thread*
        // that cloned a child exits, so programs must be started from threads that never end.
        for id in 0..spawner_threads() {
            let mut spawner = Spawner::new()?;
            let (me, jobs, devnull) = (Arc::clone(&os), Arc::clone(&jobs), Arc::clone(&devnull));
            std::thread::Builder::new()
                .name("procwatch-spawn".into())
                .spawn(move || {
                    loop {
                        // Held while waiting: the other spawners wait for the lock meanwhile.
                        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else { return };
                        me.run_job(id, &mut spawner, devnull.as_raw_fd(), job);
                    }
                })?;
        }
        let reaper = Arc::clone(&os);
        std::thread::Builder::new()
            .name("procwatch-reap".into())
            .spawn(move || reaper.reap_forever())?;
        Ok(os)
    }

    pub(crate) fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    /// Starts a program in its own session and process group (and its cgroup, in cgroup
    /// mode); returns its PID once it has exec'd.
    pub(crate) async fn spawn(&self, config: Arc<ProgramConfig>, entry: Entry, stdio: Stdio) -> io::Result<i32> {
        let (reply, rx) = oneshot::channel();
        self.spawn_tx
            .send(Job::Program {
                config,
                entry,
                stdio,
                reply,
            })
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }

    fn run_job(&self, id: usize, spawner: &mut Spawner, devnull: i32, job: Job) {
        match job {
            Job::Program {
                config,
                entry,
                stdio,
                reply,
            } => {
                let program = Arc::clone(&entry.program);
                let cgroup = self.program_cgroup(&program);
                // `resources:` limits before the first instruction (cgroup.rs, prepare_run).
                let prepared = match &cgroup {
                    Some(Ok(cg)) => cg.prepare_run(&config.resources.limits),
                    _ => Ok(()),
                };
                let result = match (&cgroup, prepared) {
                    (Some(Err(e)), _) => Err(io::Error::new(
                        e.kind(),
                        format!("cannot create the program's cgroup: {e}"),
                    )),
                    (_, Err(e)) => Err(e),
                    _ => {
                        let cg = cgroup.as_ref().and_then(|c| c.as_ref().ok());
                        let args = SpawnArgs {
                            command: &config.command,
                            env: &config.env,
                            cwd: config.cwd.as_deref(),
                            stdout: stdio.stdout.as_ref().map(|f| f.as_raw_fd()),
                            stderr: stdio.stderr.as_ref().map(|f| f.as_raw_fd()),
                            stdin: devnull,
                            identity: &config.identity,
                            own_env: &self.own_env,
                        };
                        Prepared::new(&args).and_then(|prepared| {
                            self.cloning(
                                id,
                                || spawner.spawn(&prepared, cg.map(|c| &**c)),
                                |result, reg| {
                                    if let Ok(pid) = *result {
                                        reg.mains.insert(pid, entry.clone());
                                        reg.groups.insert(pid, entry);
                                    }
                                },
                            )
                        })
                    }
                };
                drop(stdio);
                self.bump();
                let _ = reply.send(result);
            }
            Job::Probe(req) => self.spawn_probe_now(id, req),
        }
    }

    /// Runs `clone` (a clone or fork) marked as under way for spawner `id`, then `register`s
    /// what it started. The reaper may take a new PID's exit before it is registered (it peeks
    /// with WNOWAIT, then locks): it waits for the clones under way when it looked before it
    /// decides that a PID is no program's. The lock itself is not held across the clone, so
    /// that the spawner threads clone at the same time.
    fn cloning<T>(&self, id: usize, clone: impl FnOnce() -> T, register: impl FnOnce(&T, &mut Registry)) -> T {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).cloning[id] += 1;
        let result = clone();
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        register(&result, &mut reg);
        reg.cloning[id] += 1;
        drop(reg);
        self.registered.notify_all();
        result
    }

    fn bump(&self) {
        let (generation, cond) = &self.spawned;
        *generation.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cond.notify_all();
    }

    /// The program's cgroup, created at its first start (in the spawner thread: mkdir in
    /// cgroupfs is a system call the async workers must not make); `None` in proc mode.
    fn program_cgroup<'p>(&self, program: &'p Program) -> Option<io::Result<&'p ProgramCgroup>> {
        let tree = self.tracking.tree()?;
        if let Some(cg) = program.cgroup.get() {
            return Some(Ok(cg));
        }
        match tree.program(&program.name) {
            Ok(cg) => Some(Ok(program.cgroup.get_or_init(|| Arc::new(cg)))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Starts an exec probe's command for a program, in a session of its own, with the
    /// program's identity, environment and working directory; its output is kept for the
    /// error message.
    pub(crate) async fn spawn_probe(
        self: &Arc<Self>,
        command: Vec<String>,
        config: Arc<ProgramConfig>,
    ) -> io::Result<ProbeChild> {
        let (reply, rx) = oneshot::channel();
        self.spawn_tx
            .send(Job::Probe(ProbeRequest { command, config, reply }))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        let (pid, output, status) = rx.await.map_err(|_| io::Error::other("spawner thread is gone"))??;
        let mut child = ProbeChild {
            os: Arc::clone(self),
            pid,
            status,
            exited: None,
            output: None,
            buf: Vec::new(),
        };
        // Registered with this runtime's reactor: done here, not on the spawner thread. If it
        // fails, `child` is dropped, which kills the check.
        child.output = Some(tokio::net::unix::pipe::Receiver::from_owned_fd(
            std::os::fd::OwnedFd::from(output),
        )?);
        Ok(child)
    }

    fn spawn_probe_now(&self, id: usize, req: ProbeRequest) {
        let result = (|| {
            let (reader, writer) = io::pipe()?;
            let (status_tx, status) = oneshot::channel();
            let mut cmd = Command::new(&req.command[0]);
            cmd.args(&req.command[1..])
                .envs(&req.config.env)
                .stdin(std::process::Stdio::null())
                .stdout(writer.try_clone()?)
                .stderr(writer);
            if let Some(cwd) = &req.config.cwd {
                cmd.current_dir(cwd);
            }
            in_own_session(&mut cmd, &req.config);
            // Marked as under way, as for programs: the reaper must find the PID registered.
            let pid = self.cloning(
                id,
                || cmd.spawn().map(|c| c.id() as i32),
                |pid, reg| {
                    if let Ok(pid) = *pid {
                        reg.probes.insert(pid, status_tx);
                    }
                },
            )?;
            // The parent's copies of the write end are closed with `cmd`.
            drop(cmd);
            Ok((pid, reader, status))
        })();
        self.bump();
        let _ = req.reply.send(result);
    }

    /// SIGKILLs an exec probe's process group, unless it has been reaped already.
    fn kill_probe(&self, pid: i32) {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Registered means not reaped: the PID, hence the group ID, is still this probe's.
        if reg.probes.contains_key(&pid) {
            signal_group(pid, libc::SIGKILL);
        }
    }

    /// Stops attributing processes of the group `pgid` (its run is over and it is empty).
    pub(crate) fn forget_group(&self, pgid: i32) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.groups.remove(&pgid);
        reg.mains.remove(&pgid);
    }

    /// Every process group procwatch still answers for.
    pub(crate) fn groups(&self) -> Vec<i32> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.groups.keys().copied().collect()
    }

    fn reap_forever(&self) {
        let mut reader = procfs::Reader::default();
        loop {
            let seen_gen = *self.spawned.0.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: siginfo_t is plain data; waitid fills it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // Peek (WNOWAIT) so that the zombie's /proc entry can still be read for attribution.
            let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r != 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ECHILD) => self.wait_for_spawn(seen_gen),
                    _ => {
                        tracing::error!(error = %io::Error::last_os_error(), "waitid failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                continue;
            }
            // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
            let pid = unsafe { info.si_pid() };
            if pid <= 0 {
                continue;
            }
            let stat = reader.stat(pid);
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            // A clone under way now may have made this PID (or its group): wait until those
            // are registered. Clones begun later cannot have: this PID had exited already.
            let under_way = reg.cloning;
            while !reg.mains.contains_key(&pid)
                && !reg.probes.contains_key(&pid)
                && reg
                    .cloning
                    .iter()
                    .zip(under_way)
                    .any(|(&now, then)| now == then && then % 2 == 1)
            {
                reg = self.registered.wait(reg).unwrap_or_else(|e| e.into_inner());
            }
            let mut status = 0;
            // SAFETY: rusage is plain data; wait4 fills it.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            if let Some(probe) = reg.probes.remove(&pid) {
                // An exec probe is over when its command ends: whatever it left in its group
                // goes now, while the unreaped zombie still holds the group ID.
                signal_group(pid, libc::SIGKILL);
                let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
                drop(reg);
                if got == pid {
                    let _ = probe.send(status);
                }
                continue;
            }
            let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if got != pid {
                // Someone else reaped it (std reaps a child whose exec failed); nothing to count.
                continue;
            }
            let (event, entry) = if let Some(entry) = reg.mains.remove(&pid) {
                (OsEvent::MainExited { pid, status }, Some(entry))
            } else {
                let entry = stat.and_then(|st| {
                    reg.groups
                        .get(&st.pgrp)
                        .or_else(|| reg.groups.get(&st.session))
                        .cloned()
                });
                (OsEvent::Reaped, entry)
            };
            drop(reg);
            match entry {
                Some(entry) => {
                    let p = &entry.program;
                    // Before the runner hears of it: was it the OOM killer's victim?
                    if let (OsEvent::MainExited { status, .. }, Some(cg)) = (&event, p.cgroup()) {
                        cg.note_main_exit(*status);
                    }
                    p.reaped_user_us.fetch_add(micros(ru.ru_utime), Ordering::Relaxed);
                    p.reaped_system_us.fetch_add(micros(ru.ru_stime), Ordering::Relaxed);
                    p.add_reaped_rusage(&ru);
                    let _ = entry.events.send(event);
                }
                None => tracing::debug!(pid, "reaped a process that belongs to no program"),
            }
        }
    }

    fn wait_for_spawn(&self, seen_gen: u64) {
        let (generation, cond) = &self.spawned;
        let guard = generation.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = cond
            .wait_while(guard, |g| *g == seen_gen)
            .unwrap_or_else(|e| e.into_inner());
    }
}

fn micros(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1_000_000 + tv.tv_usec.max(0) as u64
}

/// Makes the command's process a session (and process group) leader with the program's
/// identity, that dies with procwatch.
fn in_own_session(cmd: &mut Command, config: &ProgramConfig) {
    // Resolved at config time; cloned here, before the fork: the child must not allocate.
    let identity = config.identity.clone();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session, hence its own process group: signals reach the whole tree.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // procwatch raised its own open-files limit for its kept /proc files; not theirs.
            // Put back before the program's own `limits:`, which may raise it again.
            crate::procfs::restore_nofile_in_child();
            // User, groups, umask, limits; before PR_SET_PDEATHSIG, which a uid change clears.
            identity.apply_in_child().map_err(io::Error::from_raw_os_error)?;
            // Die with procwatch, even if procwatch is SIGKILLed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // procwatch died between fork and prctl.
                libc::_exit(1);
            }
            // Only fds 0-2 past exec.
            super::probe::only_stdio_at_exec();
            Ok(())
        });
    }
}

/// A running exec probe. Dropped before its exit was seen, it is killed.
pub(crate) struct ProbeChild {
    os: Arc<Os>,
    pid: i32,
    status: oneshot::Receiver<i32>,
    exited: Option<Option<i32>>,
    /// Its stdout and stderr; `None` after end of file.
    output: Option<tokio::net::unix::pipe::Receiver>,
    buf: Vec<u8>,
}

impl ProbeChild {
    /// Its raw wait status, once reaped (`None` if the status was lost); reads its output
    /// meanwhile, so that a talkative check never blocks on a full pipe.
    pub(crate) async fn wait(&mut self) -> Option<i32> {
        const KEEP: usize = 1024;
        let mut chunk = [0u8; 512];
        while self.exited.is_none() {
            let output = &self.output;
            let read = async {
                match output {
                    Some(out) => {
                        out.readable().await?;
                        out.try_read(&mut chunk)
                    }
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                status = &mut self.status => {
                    self.exited = Some(status.ok());
                    continue;
                }
                n = read => n,
            };
            match read {
                Ok(0) => self.output = None,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > KEEP {
                        self.buf.drain(..self.buf.len() - KEEP);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.output = None,
            }
        }
        // What it wrote just before exiting is in the pipe; the writers are gone (the reaper
        // killed the group), so end of file comes at once.
        if let Some(out) = &self.output {
            let drain = async {
                loop {
                    out.readable().await?;
                    match out.try_read(&mut chunk) {
                        Ok(0) => return Ok::<_, io::Error>(()),
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(100), drain).await;
        }
        self.exited.flatten()
    }

    pub(crate) fn kill(&self) {
        self.os.kill_probe(self.pid);
    }

    /// The end of what it wrote, on one line.
    pub(crate) fn output_tail(&self) -> String {
        super::probe::tail_text(&self.buf)
    }
}

impl Drop for ProbeChild {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.kill();
        }
    }
}

/// Sends `signal` to the process group `pgid`; false if the group is gone.
pub(crate) fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Whether any process (zombies included) is left in the group.
pub(crate) fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::killpg(pgid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Decodes a raw wait status into an exit code, with 128+N for a signal N.
pub(crate) fn exit_code(status: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    }
}
