//! Starting a process without copying procwatch's address space, placed in its cgroup before
//! its first instruction.
//!
//! `fork` copies the page tables of the whole (large, multi-threaded) procwatch for every
//! start; at 5000 programs that was most of the start-up time. Like posix_spawn, this clones
//! with `CLONE_VM | CLONE_VFORK`: the child runs on a small stack of its own in procwatch's
//! memory while the spawning thread waits, and execs. In cgroup mode it is `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7+), so no migration (and no RCU grace period) is needed;
//! where clone3 is refused (ENOSYS under seccomp profiles and `RestrictNamespaces=`, or not
//! x86_64) the glibc `clone` wrapper is used and the child writes itself into `cgroup.procs`
//! before exec, which costs an RCU grace period per start.
//!
//! Between clone and exec the child may only make async-signal-safe system calls and must
//! not allocate: everything it needs is prepared in [`Prepared`] beforehand.
//!
//! The child also shares procwatch's fd table (`CLONE_FILES`) instead of getting a copy:
//! procwatch holds thousands of fds (kept /proc and cgroup files, two pipes per program), and
//! copying the table at clone then closing every close-on-exec fd at exec made each start
//! cost O(fds), so starting N programs cost O(N²) (a perf profile of 2000 starts: most of the
//! spawner's time in `dup_fd`, `do_close_on_exec` and `filp_flush`). Before the clone the
//! spawner points three low fds of its own (the stdio slots) at the child's stdin, stdout and
//! stderr; the child unshares with `close_range(slots_end, ~0, CLOSE_RANGE_UNSHARE)`, which
//! copies only the fds below the slots' end (Linux 5.9+; `unshare(CLONE_FILES)`, a full copy,
//! elsewhere), then moves the slots onto 0, 1 and 2 and execs.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::identity::Identity;
use crate::cgroup::ProgramCgroup;

/// procwatch's own environment, which every program inherits (but for the variables its
/// `env` sets), as `KEY=value` C strings: made once, not at every start (at 5000 starts,
/// copying it each time cost about a twentieth of the spawner threads' time).
pub(crate) struct OwnEnv {
    vars: Vec<(OsString, CString)>,
    path: Option<OsString>,
}

impl OwnEnv {
    /// procwatch's environment now (procwatch never changes it afterwards).
    pub(crate) fn capture() -> OwnEnv {
        let mut path = None;
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| {
                if k == "PATH" {
                    path = Some(v.clone());
                }
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                // A NUL cannot be in an environment variable; skipped if it were.
                Some((k, CString::new(kv).ok()?))
            })
            .collect();
        OwnEnv { vars, path }
    }
}

/// What the child needs, prepared before the clone.
pub(crate) struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// Holds the C strings `envp` points to: procwatch's and the program's own.
    _own_env: Arc<OwnEnv>,
    _envp: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    /// Onto fd 0 (/dev/null), 1 and 2; `None` keeps procwatch's.
    stdin: RawFd,
    stdout: Option<RawFd>,
    stderr: Option<RawFd>,
    /// User, groups, umask, rlimits (resolved at config time).
    identity: Identity,
    parent: libc::pid_t,
    /// The child's errno if it failed before exec (shared memory: CLONE_VM).
    error: AtomicI32,
    /// Which step failed, for the message.
    step: AtomicI32,
}

/// The steps that can fail in the child, reported with the errno.
const STEPS: [&str; 6] = [
    "join the cgroup",
    "setsid",
    "set the parent-death signal",
    "set up stdio",
    "chdir",
    "exec",
];

/// Where the child goes and what it gets; built by the caller per start.
pub(crate) struct SpawnArgs<'a> {
    pub(crate) command: &'a [String],
    pub(crate) env: &'a std::collections::BTreeMap<String, String>,
    pub(crate) cwd: Option<&'a Path>,
    pub(crate) stdout: Option<RawFd>,
    pub(crate) stderr: Option<RawFd>,
    pub(crate) stdin: RawFd,
    pub(crate) identity: &'a Identity,
    pub(crate) own_env: &'a Arc<OwnEnv>,
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the command, env or cwd"))
}

impl Prepared {
    pub(crate) fn new(a: &SpawnArgs<'_>) -> io::Result<Prepared> {
        // procwatch's variables first, but those the program sets, then the program's.
        let own = a.own_env;
        let path_var = match a.env.get("PATH") {
            Some(p) => Some(OsStr::new(p)),
            None => own.path.as_deref(),
        };
        let path = resolve(&a.command[0], path_var, a.cwd)?;
        let argv_c: Vec<CString> = a
            .command
            .iter()
            .map(|s| cstring(s.as_bytes()))
            .collect::<io::Result<_>>()?;
        let envp_c: Vec<CString> = a
            .env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = Vec::with_capacity(own.vars.len() + envp_c.len() + 1);
        envp.extend(
            own.vars
                .iter()
                .filter(|(k, _)| a.env.is_empty() || !a.env.contains_key(k.to_str().unwrap_or("")))
                .map(|(_, kv)| kv.as_ptr()),
        );
        envp.extend(envp_c.iter().map(|c| c.as_ptr()));
        envp.push(std::ptr::null());
        Ok(Prepared {
            path: cstring(path.as_os_str().as_bytes())?,
            _argv: argv_c,
            argv,
            _own_env: Arc::clone(own),
            _envp: envp_c,
            envp,
            cwd: a.cwd.map(|c| cstring(c.as_os_str().as_bytes())).transpose()?,
            stdin: a.stdin,
            stdout: a.stdout,
            stderr: a.stderr,
            identity: a.identity.clone(),
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            error: AtomicI32::new(0),
            step: AtomicI32::new(0),
        })
    }
}

/// Finds the program as execvp(3) would: a name with a `/` is used as is, else the first
/// executable regular file of that name on PATH.
fn resolve(program: &str, path: Option<&std::ffi::OsStr>, cwd: Option<&Path>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.map_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"), |p| p.to_owned());
    for dir in std::env::split_paths(&path) {
        let dir = match (dir.is_relative(), cwd) {
            (true, Some(c)) => c.join(dir),
            _ => dir,
        };
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
        {
            let c = cstring(candidate.as_os_str().as_bytes())?;
            // SAFETY: a valid C string.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
                return Ok(candidate);
            }
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// The child's stack: one per spawner thread, reused, since that thread waits (CLONE_VFORK)
/// for each child to exec before it starts the next.
struct Stack {
    base: *mut libc::c_void,
    size: usize,
}

// SAFETY: the stack is used only by its spawner thread's children, one at a time.
unsafe impl Send for Stack {}

const STACK_SIZE: usize = 256 * 1024;

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: an anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Stack { base, size: STACK_SIZE })
    }
}

/// Starts processes; one per spawner thread, which owns it.
pub(crate) struct Spawner {
    stack: Stack,
    /// The stdio slots: low fds of the spawner's own, pointed at a child's stdin, stdout and
    /// stderr just before its clone and back at /dev/null right after (they must not keep a
    /// program's pipe open). Close-on-exec in procwatch.
    slots: [OwnedFd; 3],
    null: OwnedFd,
}

/// `close_range(2)`'s flag: unshare the fd table first, copying only the fds below the range.
const CLOSE_RANGE_UNSHARE: libc::c_uint = 1 << 1;

/// clone3 refused once (seccomp, old kernel): use the fallback from then on.
static CLONE3_REFUSED: AtomicBool = AtomicBool::new(false);

impl Spawner {
    /// Called early (the supervisor's start), while low fd numbers are free: the child's copy
    /// of the table is the fds below the slots.
    pub(crate) fn new() -> io::Result<Spawner> {
        let null = OwnedFd::from(std::fs::File::open("/dev/null")?);
        // Never 0, 1 or 2 (procwatch may have been started with them closed): a slot there
        // would be overwritten by another before it is moved.
        let slot = || -> io::Result<OwnedFd> {
            // SAFETY: F_DUPFD_CLOEXEC returns a new fd we then own.
            let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: just created, owned here.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Ok(Spawner {
            stack: Stack::new()?,
            slots: [slot()?, slot()?, slot()?],
            null,
        })
    }

    /// Points the stdio slots at `fds` (`None`: /dev/null, the child keeps procwatch's own).
    fn point_slots(&self, fds: [Option<RawFd>; 3]) -> io::Result<()> {
        for (slot, fd) in self.slots.iter().zip(fds) {
            let src = fd.unwrap_or(self.null.as_raw_fd());
            // SAFETY: dup3 onto a slot we own, from an fd the caller keeps open.
            if unsafe { libc::dup3(src, slot.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Starts the prepared process, in `cgroup` where given; returns its PID once it has
    /// exec'd. An error if the clone failed or the child could not get to exec (it has then
    /// exited with 127 and is reaped like any child).
    pub(crate) fn spawn(&mut self, p: &Prepared, cgroup: Option<&ProgramCgroup>) -> io::Result<i32> {
        p.error.store(0, Ordering::Relaxed);
        let pointed = self.point_slots([Some(p.stdin), p.stdout, p.stderr]);
        let result = pointed.and_then(|()| self.spawn_with_slots(p, cgroup));
        // Whatever happened: the slots must not hold the child's pipes open.
        let _ = self.point_slots([None; 3]);
        result
    }

    fn stdio(&self, p: &Prepared) -> Stdio {
        let slot = |i: usize| self.slots[i].as_raw_fd();
        Stdio {
            fds: [Some(slot(0)), p.stdout.map(|_| slot(1)), p.stderr.map(|_| slot(2))],
            end: self.slots.iter().map(|s| s.as_raw_fd()).max().unwrap_or(2) as libc::c_uint + 1,
        }
    }

    fn spawn_with_slots(&mut self, p: &Prepared, cgroup: Option<&ProgramCgroup>) -> io::Result<i32> {
        // Signals are blocked across the clone, so that none runs a procwatch handler in the
        // child before it has reset them; the child unblocks before exec.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sigsets.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        let mut pid = -1;
        if let Some(cg) = cgroup
            && !CLONE3_REFUSED.load(Ordering::Relaxed)
            && !cg.was_killed()
        {
            match self.clone3_into(p, cg.dir_fd()) {
                Ok(child) => pid = child,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::EINVAL)
                    ) =>
                {
                    // Said once, though several spawner threads may find it out at once.
                    if !CLONE3_REFUSED.swap(true, Ordering::Relaxed) {
                        tracing::info!(error = %e, "clone3(CLONE_INTO_CGROUP) is refused here; programs join their cgroup by writing cgroup.procs before exec");
                    }
                }
                Err(e) => {
                    // SAFETY: restoring the mask.
                    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                    return Err(e);
                }
            }
        }
        // The fallback placement: the child writes itself into `cgroup.procs`, opened only
        // here (an open costs tens of µs; clone3 needs none).
        let procs = match cgroup {
            Some(cg) if pid < 0 => match cg.procs_fd() {
                Ok(f) => Some(f),
                Err(e) => {
                    // SAFETY: restoring the mask.
                    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                    return Err(io::Error::new(e.kind(), format!("cannot open cgroup.procs: {e}")));
                }
            },
            _ => None,
        };
        if pid < 0 {
            let ctx = ChildCtx {
                p,
                join_cgroup: procs.as_ref().map(|f| f.as_raw_fd()),
                stdio: self.stdio(p),
            };
            let top = (self.stack.base as usize + self.stack.size) as *mut libc::c_void;
            // SAFETY: the stack is ours and unused; `ctx` outlives the child's use of it
            // because CLONE_VFORK suspends this thread until the child execs or exits.
            pid = unsafe {
                libc::clone(
                    child_main,
                    top,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
                    (&ctx as *const ChildCtx).cast_mut().cast(),
                )
            };
        }
        let clone_err = io::Error::last_os_error();
        // SAFETY: restoring the mask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        if pid < 0 {
            return Err(clone_err);
        }
        match p.error.load(Ordering::Relaxed) {
            0 => Ok(pid),
            errno => {
                let step = STEPS
                    .get(p.step.load(Ordering::Relaxed) as usize)
                    .copied()
                    .unwrap_or("start");
                let e = io::Error::from_raw_os_error(errno);
                Err(io::Error::new(e.kind(), format!("cannot {step}: {e}")))
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn clone3_into(&mut self, p: &Prepared, cgroup_fd: RawFd) -> io::Result<i32> {
        #[repr(C)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
            set_tid: u64,
            set_tid_size: u64,
            cgroup: u64,
        }
        const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
        let args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES) as u64 | CLONE_INTO_CGROUP,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: self.stack.base as u64,
            stack_size: self.stack.size as u64,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup_fd as u64,
        };
        let ctx = ChildCtx {
            p,
            join_cgroup: None,
            stdio: self.stdio(p),
        };
        let ret: i64;
        // SAFETY: clone3 with CLONE_VM|CLONE_VFORK: the child starts on the top of our
        // spare stack (the kernel computes it from stack + stack_size), never returns into
        // this function, and calls `child_main(ctx)`, which execs or exits. This thread is
        // suspended until then, so `args` and `ctx` stay valid. rcx and r11 are clobbered by
        // `syscall`; r12/r13 carry the entry point and its argument across it.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, 60",
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") child_main as extern "C" fn(*mut libc::c_void) -> libc::c_int,
                in("r13") &ctx as *const ChildCtx,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        Ok(ret as i32)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn clone3_into(&mut self, _p: &Prepared, _cgroup_fd: RawFd) -> io::Result<i32> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

struct ChildCtx<'a> {
    p: &'a Prepared,
    /// `cgroup.procs` to write itself into (the fallback placement).
    join_cgroup: Option<RawFd>,
    stdio: Stdio,
}

/// The stdio slots as the child sees them: what goes onto 0, 1 and 2 (`None`: procwatch's
/// own stays), and the first fd the child does not keep.
struct Stdio {
    fds: [Option<RawFd>; 3],
    end: libc::c_uint,
}

/// The child between clone and exec: async-signal-safe calls only, no allocation.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildCtx the parent keeps alive while it is suspended.
    let ctx = unsafe { &*(arg as *const ChildCtx) };
    let p = ctx.p;
    let fail = |step: i32| -> libc::c_int {
        p.error.store(errno().max(1), Ordering::Relaxed);
        p.step.store(step, Ordering::Relaxed);
        // SAFETY: leaving the child without running anything of procwatch's.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: each call below is an async-signal-safe system call on prepared data.
    unsafe {
        // A fresh process: default signal dispositions (procwatch's handlers would run in
        // procwatch's memory). The mask is restored just before exec.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
        if let Some(fd) = ctx.join_cgroup
            && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
        {
            return fail(0);
        }
        // Its own session, hence its own process group: signals reach the whole group.
        if libc::setsid() < 0 {
            return fail(1);
        }
        // procwatch raised its own open-files limit for its kept /proc files; not theirs. Put
        // back before the program's own `limits:`, which may raise it again.
        crate::procfs::restore_nofile_in_child();
        // User, groups, umask, limits; before PR_SET_PDEATHSIG, which a uid change clears.
        // (apply_in_child makes raw credential system calls: glibc's wrappers would signal
        // procwatch's threads, whose memory this child shares.)
        if let Err(e) = p.identity.apply_in_child() {
            p.error.store(e.max(1), Ordering::Relaxed);
            p.step.store(6, Ordering::Relaxed);
            libc::_exit(127);
        }
        // Die with procwatch's spawner thread (which lives as long as procwatch), even if
        // procwatch is SIGKILLed.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return fail(2);
        }
        if libc::getppid() != p.parent {
            libc::_exit(1);
        }
        // A table of its own, holding only the fds below the slots' end (procwatch's are
        // close-on-exec; the slots are moved onto 0, 1 and 2 below). Until here the table was
        // procwatch's: nothing above changed it.
        if libc::syscall(
            libc::SYS_close_range,
            ctx.stdio.end,
            libc::c_uint::MAX,
            CLOSE_RANGE_UNSHARE,
        ) != 0
            && libc::unshare(libc::CLONE_FILES) != 0
        {
            return fail(3);
        }
        for (fd, target) in ctx.stdio.fds.into_iter().zip(0..) {
            if let Some(fd) = fd
                && !dup_onto(fd, target)
            {
                return fail(3);
            }
        }
        // Nothing but 0, 1 and 2, as systemd gives a service: not the slots, and not an fd
        // procwatch inherited without close-on-exec (a jobserver pipe, a shell's stray fd).
        // On a kernel without close_range the close-on-exec ones still close at exec.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        if let Some(cwd) = &p.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            return fail(4);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(p.path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
    }
    fail(5)
}

/// dup2 that also clears close-on-exec when the fd is already in place.
unsafe fn dup_onto(fd: RawFd, target: RawFd) -> bool {
    // SAFETY: plain fcntl/dup2 calls on fds the parent keeps open.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            return flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == 0;
        }
        libc::dup2(fd, target) == target
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}
