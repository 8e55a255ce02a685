//! The guardian: procwatch's first process, which stays behind as the supervisor's parent and
//! child subreaper so that nothing a program started can outlive procwatch, however procwatch
//! dies (SIGKILL and the OOM killer included).
//!
//! At start `main` calls [`split`]: the process forks; the parent becomes the guardian (keeping
//! the PID that systemd, Docker or a shell know), the child goes on as the supervisor. The
//! guardian is a child subreaper (prctl(2) `PR_SET_CHILD_SUBREAPER`) *above* the supervisor,
//! as tini is: when the supervisor dies, every process it or its programs left is re-parented
//! to the guardian, which SIGKILLs them until none is left, and in cgroup mode first kills
//! `programs/` whole with `cgroup.kill` and removes procwatch's cgroups. It forwards the
//! signals it gets to the supervisor, and exits with the supervisor's exit status.
//!
//! The two share one socket pair. The supervisor writes one line, `cgroup PATH`, once it knows
//! its cgroups; nothing else goes over it, so a stopped guardian can never block supervision.
//! End-of-file on the supervisor's side means the guardian is gone: the supervisor says so
//! loudly and stops every program (a `kill -9` of procwatch's PID is a stop, done in full).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The supervisor's side of the link to its guardian.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) pid: i32,
    sock: OwnedFd,
}

static LINK: OnceLock<Link> = OnceLock::new();
/// False once the guardian is known to be gone.
static UP: AtomicBool = AtomicBool::new(true);

/// Whether a guardian was started and still lives: `None` without one (`app::run` in a test).
pub fn guardian_up() -> Option<bool> {
    LINK.get().map(|_| UP.load(Ordering::Relaxed))
}

/// The link, if `split` made one.
pub(crate) fn link() -> Option<&'static Link> {
    LINK.get()
}

/// The signals the guardian passes on to the supervisor: every one that can be caught, but
/// SIGCHLD (the guardian's own) and SIGPIPE (ignored: a closed stderr must not end it). The
/// supervisor decides what each means. 32 and 33 are glibc's own (NPTL) and cannot be used.
fn forwarded() -> impl Iterator<Item = i32> {
    (1..=64).filter(|&s| {
        !matches!(
            s,
            libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD | libc::SIGPIPE | 32 | 33
        )
    })
}

/// Forks the guardian off. Returns in the child (the supervisor); the parent runs the
/// guardian until the supervisor ends and exits with its status. Must run before any thread
/// is started. On failure procwatch goes on without a guardian, and says so.
pub fn split() {
    if let Err(err) = try_split() {
        tracing::warn!(error = %err, "cannot start the guardian; programs' descendants may outlive a killed procwatch");
    }
}

fn try_split() -> io::Result<()> {
    // fork(2) copies only the calling thread: any other would be missing in the supervisor
    // (with whatever lock it held), and in the guardian it would take process-directed
    // signals without forwarding them.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(io::Error::other(format!(
            "procwatch already runs {threads} threads (the guardian must be split off first)"
        )));
    }
    let mut fds = [0; 2];
    // SAFETY: plain syscalls with valid out-pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: just created, owned here.
    let (mine, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Block what the guardian will read through a signalfd before forking, so that no signal
    // sent to the guardian in between takes its default action.
    let mut set = empty_sigset();
    let mut old = empty_sigset();
    for sig in forwarded().chain([libc::SIGCHLD]) {
        // SAFETY: valid sigset.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: valid sigsets; this thread is the only one.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    // SAFETY: single-threaded here (main calls this before the runtime starts).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = io::Error::last_os_error();
        // SAFETY: restoring the old mask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        // SAFETY: undo the subreaper flag; nothing was forked.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
        return Err(err);
    }
    if pid == 0 {
        // The supervisor.
        // SAFETY: restoring the mask and dropping the subreaper flag the guardian keeps
        // (the supervisor sets its own later).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        drop(theirs);
        // SAFETY: plain syscall.
        let parent = unsafe { libc::getppid() };
        let _ = LINK.set(Link {
            pid: parent,
            sock: mine,
        });
        return Ok(());
    }
    drop(mine);
    let code = guard(pid, theirs, &set);
    crate::output::flush(Duration::from_secs(1));
    std::process::exit(code);
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut s: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::sigemptyset(&mut s) };
    s
}

extern "C" fn ignore(_: libc::c_int) {}

/// The guardian's life: forward signals, learn the cgroup path, and when the supervisor ends,
/// kill whatever is left. Returns the exit code.
fn guard(supervisor: i32, sock: OwnedFd, set: &libc::sigset_t) -> i32 {
    // A real (no-op) handler: as PID 1 in a container, a signal with the default action is
    // dropped by the kernel; blocked and read through the signalfd, it is forwarded.
    for sig in forwarded() {
        // SAFETY: installing a handler that does nothing.
        unsafe { libc::signal(sig, ignore as *const () as libc::sighandler_t) };
    }
    // SAFETY: ignoring SIGPIPE: a closed stderr must not kill the guardian.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // SAFETY: valid sigset; the fd is owned below.
    let sfd = unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) };
    if sfd < 0 {
        // Without it, wait for the supervisor plainly: cleanup still happens.
        return finish(supervisor, wait_blocking(supervisor), None);
    }
    // SAFETY: just created.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    let mut cleanup: Option<PathBuf> = None;
    let mut sock = Some(sock);
    let mut line = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (a negative fd is skipped).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0
            && let Some(s) = &sock
        {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                sock = None;
            } else {
                line.extend_from_slice(&buf[..n as usize]);
                while let Some(end) = line.iter().position(|&b| b == b'\n') {
                    let l: Vec<u8> = line.drain(..=end).collect();
                    let l = String::from_utf8_lossy(&l);
                    if let Some(path) = l.trim_end().strip_prefix("cgroup ") {
                        cleanup = Some(PathBuf::from(path));
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            // SAFETY: signalfd_siginfo is plain data.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reading one record into a local.
            let n = unsafe { libc::read(sfd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if n as usize != size {
                continue;
            }
            let sig = info.ssi_signo as i32;
            if sig != libc::SIGCHLD {
                // SAFETY: plain syscall to our child.
                unsafe { libc::kill(supervisor, sig) };
                continue;
            }
            let mut status = 0;
            // SAFETY: plain syscall.
            let r = unsafe { libc::waitpid(supervisor, &mut status, libc::WNOHANG) };
            if r == supervisor {
                return finish(supervisor, status, cleanup);
            }
        }
    }
}

fn wait_blocking(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: plain syscall.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    status
}

/// The supervisor has ended with `status`: kill what is left, return the exit code to use.
fn finish(supervisor: i32, status: i32, cgroup: Option<PathBuf>) -> i32 {
    // By PID: a process the cgroup's kill ends is re-parented here and reaped below too.
    let mut killed = std::collections::HashSet::new();
    if let Some(dir) = &cgroup {
        let programs = if dir.ends_with("programs") {
            dir.clone()
        } else {
            dir.join("programs")
        };
        if programs.exists() {
            procs_in(&programs, &mut killed);
            crate::cgroup::kill_and_remove(dir);
        }
    }
    kill_children(&mut killed);
    let killed = killed.len();
    let (code, signal) = if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status)))
    } else {
        (libc::WEXITSTATUS(status), None)
    };
    if let Some(sig) = signal {
        tracing::error!(
            pid = supervisor,
            signal = sig,
            killed,
            "the supervisor was killed; the guardian stopped every process its programs left"
        );
    } else if killed > 0 {
        tracing::warn!(killed, "the guardian killed processes left after procwatch ended");
    }
    code
}

/// Adds the processes in `dir` and the cgroups below it to `pids`.
fn procs_in(dir: &std::path::Path, pids: &mut std::collections::HashSet<i32>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

/// SIGKILLs every child of the guardian, reaps, and repeats until none is left: each killed
/// process's own children are re-parented here in turn. Adds each child it killed to
/// `killed`; a child already dead when first seen (ended by the cgroup's kill or its
/// parent-death signal, or a zombie its dead parent never reaped) is reaped, not counted.
fn kill_children(killed: &mut std::collections::HashSet<i32>) {
    // SAFETY: plain syscall.
    let me = unsafe { libc::getpid() };
    let path = format!("/proc/{me}/task/{me}/children");
    let mut reader = crate::procfs::Reader::default();
    // Children seen (a reaped one as its negated PID, which lets the PID come back as new).
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut text = String::new();
        let _ = std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
        for pid in text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if seen.insert(pid) && reader.stat(pid).is_some_and(|st| st.state != b'Z') {
                killed.insert(pid);
                // SAFETY: plain syscall to our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Reap what has died; the rest is waited for below.
        let mut status = 0;
        // SAFETY: plain syscall.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return;
        }
        if r == 0 {
            if Instant::now() > deadline {
                return;
            }
            // Dying takes a moment; a reaped PID may also be reused by a new child.
            std::thread::sleep(Duration::from_millis(2));
        } else if r > 0 {
            seen.remove(&r);
            seen.insert(-r);
        }
    }
}

impl Link {
    /// Tells the guardian which cgroup to kill and remove if procwatch dies. Never blocks.
    pub(crate) fn tell_cgroup(&self, dir: &std::path::Path) {
        let mut msg = b"cgroup ".to_vec();
        msg.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()));
        msg.push(b'\n');
        // SAFETY: a nonblocking send of a local buffer; a full buffer (a guardian that never
        // reads) loses the line rather than stalling procwatch.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n != msg.len() as isize {
            tracing::warn!("cannot tell the guardian procwatch's cgroup");
        }
    }

    /// Starts the thread that notices the guardian's end (end-of-file on the socket): it logs
    /// an error and sends procwatch SIGTERM, so that every program is stopped while procwatch
    /// still can.
    pub(crate) fn watch(&'static self) -> io::Result<()> {
        std::thread::Builder::new().name("procwatch-guardian".into()).spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: reading into a local buffer, blocking, on a dedicated thread.
                let n = unsafe { libc::read(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n == 0 || (n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
                    break;
                }
            }
            UP.store(false, Ordering::Relaxed);
            tracing::error!(
                guardian = self.pid,
                "the guardian process is gone (killed?): stopping every program now, as for SIGTERM, so that none outlives procwatch"
            );
            // SAFETY: plain syscall to ourselves; app handles SIGTERM as a graceful stop.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        })?;
        Ok(())
    }
}
