//! /proc -> plain structs: a process's stat, its open fds, its children, and a whole process tree.
//!
//! Everything here is a snapshot the kernel may invalidate at any moment: a PID that vanished
//! mid-read is "no sample" (`None`), never an error. Units are in the names. See proc(5).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub mod taskstats;

/// Per-host constants, read once.
#[derive(Debug, Clone, Copy)]
pub struct Sys {
    /// USER_HZ: the unit of the CPU times in /proc/PID/stat.
    pub clk_tck: u64,
    pub page_size: u64,
    /// Unix time of boot, from /proc/stat `btime`.
    pub boot_time_secs: u64,
    /// Whether this kernel has per-process I/O accounting (/proc/PID/io).
    pub has_io: bool,
    /// Whether this kernel reports per-process swap (`VmSwap` in /proc/PID/status).
    pub has_swap: bool,
}

pub fn sys() -> Sys {
    static SYS: OnceLock<Sys> = OnceLock::new();
    *SYS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let clk = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s))
            .unwrap_or(0);
        Sys {
            clk_tck: if clk > 0 { clk as u64 } else { 100 },
            page_size: if page > 0 { page as u64 } else { 4096 },
            boot_time_secs: boot,
            has_io: std::fs::read("/proc/self/io").is_ok_and(|t| parse_io(&t).is_some()),
            has_swap: std::fs::read("/proc/self/status").is_ok_and(|t| t.windows(7).any(|w| w == b"VmSwap:")),
        }
    })
}

fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The fields of /proc/PID/stat that procwatch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub pid: i32,
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub minflt: u64,
    /// Faults of children this process has waited for (see wait4(2)).
    pub cminflt: u64,
    pub majflt: u64,
    pub cmajflt: u64,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// CPU of children this process has waited for (see wait4(2)).
    pub cutime_ticks: u64,
    pub cstime_ticks: u64,
    pub num_threads: u64,
    /// Since boot, in clock ticks.
    pub starttime_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses the text of /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses: the fields are counted from the last `)`. By hand, not through the `procfs`
/// crate's `Stat` parser, which parses all 52 fields into a struct with owned strings: 2.1 µs a
/// file against 0.5 µs here, which at every process of every scrape was a tenth of procwatch's
/// scrape cost beyond its reads (the benchmark prints both; the tests check that the two agree).
pub fn parse_stat(text: &[u8]) -> Option<Stat> {
    let open = memchr::memchr(b'(', text)?;
    let close = memchr::memrchr(b')', text)?;
    if open == 0 || close < open {
        return None;
    }
    let pid = dec_i64(text[..open].trim_ascii_end())?;
    let mut fields = text
        .get(close + 1..)?
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty());
    let state = match fields.next()? {
        [s] => *s,
        _ => return None,
    };
    // Fields 4 to 24 of proc(5), numbered from 1.
    let mut f = [0i64; 21];
    for v in &mut f {
        *v = dec_i64(fields.next()?)?;
    }
    let at = |n: usize| f[n - 4];
    let u = |n: usize| at(n).max(0) as u64;
    let i = |n: usize| i32::try_from(at(n)).ok();
    Some(Stat {
        pid: i32::try_from(pid).ok()?,
        state,
        ppid: i(4)?,
        pgrp: i(5)?,
        session: i(6)?,
        minflt: u(10),
        cminflt: u(11),
        majflt: u(12),
        cmajflt: u(13),
        utime_ticks: u(14),
        stime_ticks: u(15),
        cutime_ticks: u(16),
        cstime_ticks: u(17),
        num_threads: u(20),
        starttime_ticks: u(22),
        vsize_bytes: u(23),
        rss_pages: u(24),
    })
}

/// A decimal integer, optionally negative; `None` for anything else (or overflow).
fn dec_i64(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let v = dec_u64(digits)?;
    let v = i64::try_from(v).ok()?;
    Some(if neg { -v } else { v })
}

/// A decimal integer of ASCII digits only.
pub(crate) fn dec_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let d = d.wrapping_sub(b'0');
        (d < 10).then_some(())?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// The lines of a `Key: value` or `key value` file: `(key, rest of the line)`.
fn keyed_lines(text: &[u8], sep: u8) -> impl Iterator<Item = (&[u8], &[u8])> {
    text.split(|&b| b == b'\n').filter_map(move |line| {
        let at = memchr::memchr(sep, line)?;
        Some((&line[..at], &line[at + 1..]))
    })
}

/// The fields of /proc/PID/status that procwatch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub voluntary_ctxt_switches: u64,
    pub nonvoluntary_ctxt_switches: u64,
    pub swap_bytes: u64,
}

/// Parses the three fields procwatch uses from /proc/PID/status, by hand, not through the
/// `procfs` crate: its `Status` parser builds a map of every line, about 20-30 µs a process
/// against 1 µs here (the benchmark prints both), which alone would cost more than the file's
/// read. Each field is found by its line's start (`\nKey:`, with a SIMD substring search): the
/// kernel escapes a newline in the command name, so no other line can start so.
pub fn parse_status(text: &[u8]) -> Option<Status> {
    use memchr::memmem::Finder;
    static KEYS: OnceLock<[Finder<'static>; 3]> = OnceLock::new();
    let [voluntary, nonvoluntary, swap] = KEYS.get_or_init(|| {
        [
            Finder::new(b"\nvoluntary_ctxt_switches:"),
            Finder::new(b"\nnonvoluntary_ctxt_switches:"),
            Finder::new(b"\nVmSwap:"),
        ]
    });
    let field = |key: &Finder<'_>| -> Option<u64> {
        let rest = &text[key.find(text)? + key.needle().len()..];
        let line = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
        let mut words = line.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
        let v = dec_u64(words.next()?)?;
        // VmSwap is in kB; the others are counts.
        Some(if words.next() == Some(b"kB") { v * 1024 } else { v })
    };
    // The context switch lines exist since Linux 2.6.23; VmSwap only for processes with memory.
    Some(Status {
        voluntary_ctxt_switches: field(voluntary)?,
        nonvoluntary_ctxt_switches: field(nonvoluntary)?,
        swap_bytes: field(swap).unwrap_or(0),
    })
}

/// Storage I/O of a process, from /proc/PID/io: what it (its live and dead threads, and the
/// children it waited for) made the block layer fetch and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Io {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Parses /proc/PID/io, by hand for the reason `stat` is (the crate's `Io` parser: 1.8 µs a
/// file against 0.3 µs here; the tests check that the two agree).
pub fn parse_io(text: &[u8]) -> Option<Io> {
    let (mut read, mut write, mut cancelled) = (None, None, None);
    for (key, value) in keyed_lines(text, b':') {
        let slot = match key {
            b"read_bytes" => &mut read,
            b"write_bytes" => &mut write,
            b"cancelled_write_bytes" => &mut cancelled,
            _ => continue,
        };
        *slot = Some(dec_u64(value.trim_ascii())?);
    }
    Some(Io {
        read_bytes: read?,
        // Written pages truncated before writeback never reach the disk.
        write_bytes: write?.saturating_sub(cancelled?),
    })
}

/// The soft limit on open files, from /proc/PID/limits; `u64::MAX` for unlimited. By hand
/// for the same reason as status: the crate's `Limits` parser reads all 16 limits into owned
/// strings, and this runs for every main process at every scrape.
pub fn parse_max_fds(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    match line.split_ascii_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

/// What a pass reads of each process beyond `stat`, the children and the fd count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// Context switches of every thread: taskstats where the kernel answers procwatch, else
    /// /proc/PID/status and each other thread's task/TID/status.
    pub ctxswitch: bool,
    /// Swapped-out memory (/proc/PID/status `VmSwap`), read while a swap area is in use.
    pub swap: bool,
    /// /proc/PID/io.
    pub io: bool,
}

/// The kinds of per-process file a [`Reader`] keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Stat,
    Status,
    Io,
    Children,
    Limits,
}

impl Which {
    const COUNT: usize = 5;

    /// Writes the file's path, `/proc/PID/...`, NUL-terminated for [`open_proc`].
    fn tail(self, pid: i32, path: &mut String) {
        use std::fmt::Write;
        path.clear();
        let _ = match self {
            Which::Stat => write!(path, "/proc/{pid}/stat\0"),
            Which::Status => write!(path, "/proc/{pid}/status\0"),
            Which::Io => write!(path, "/proc/{pid}/io\0"),
            Which::Children => write!(path, "/proc/{pid}/task/{pid}/children\0"),
            Which::Limits => write!(path, "/proc/{pid}/limits\0"),
        };
    }
}

/// procfs' root, kept open (`O_PATH`) to open and stat files below it with `openat(2)` and
/// `fstatat(2)`: a lookup of `PID/stat` from there skips the walk of `/` and `proc` that each
/// file opened past the fds' budget (see [`keep_fd`]) would cost again, about 0.4 µs of the
/// 3-5 µs of an open. `None` where /proc cannot be opened; paths are walked whole then.
fn proc_root() -> Option<std::os::fd::BorrowedFd<'static>> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    static ROOT: OnceLock<Option<OwnedFd>> = OnceLock::new();
    ROOT.get_or_init(|| {
        // SAFETY: a valid C string; the fd returned is owned below.
        let fd = unsafe { libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        // SAFETY: just opened, owned by nobody else.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .as_ref()
    .map(|fd| fd.as_fd())
}

/// `path` as [`Which::tail`] and [`proc_path`] write it: `/proc/...` and a NUL. The part below
/// /proc, and the whole path, as C strings.
fn split_proc_path(path: &str) -> Option<(&std::ffi::CStr, &std::ffi::CStr)> {
    let whole = std::ffi::CStr::from_bytes_with_nul(path.as_bytes()).ok()?;
    let below = std::ffi::CStr::from_bytes_with_nul(path.strip_prefix("/proc/")?.as_bytes()).ok()?;
    Some((below, whole))
}

/// Opens a file under /proc for reading, relative to [`proc_root`]; `path` as
/// [`split_proc_path`] takes it.
fn open_proc(path: &str) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (below, whole) = split_proc_path(path).ok_or(std::io::ErrorKind::InvalidInput)?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    // SAFETY: valid C strings and directory fd; the fd returned is owned below.
    let fd = unsafe {
        match proc_root() {
            Some(root) => libc::openat(root.as_raw_fd(), below.as_ptr(), flags),
            None => libc::open(whole.as_ptr(), flags),
        }
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The size `stat(2)` gives for a path under /proc, as [`open_proc`] opens it.
fn proc_size(path: &str) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let (below, whole) = split_proc_path(path)?;
    // SAFETY: all-zero is a valid `struct stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C strings and directory fd; `st` is a valid out-pointer.
    let r = unsafe {
        match proc_root() {
            Some(root) => libc::fstatat(root.as_raw_fd(), below.as_ptr(), &mut st, 0),
            None => libc::stat(whole.as_ptr(), &mut st),
        }
    };
    (r == 0).then_some(st.st_size as u64)
}

/// One process's /proc files, opened when first read and kept open while it lives: a read is
/// then one `pread` at offset 0, which the kernel answers with fresh content. The fds belong to
/// the process they were opened for: once it is reaped they answer ESRCH, so a new process that
/// reuses the PID never shows through them.
#[derive(Default)]
struct Kept {
    files: [Option<File>; Which::COUNT],
    /// /proc/PID/fd, whose size is the number of open fds (Linux 6.2+).
    fd_dir: Option<File>,
    /// The pass that last met this process.
    pass: u64,
}

impl Kept {
    fn count(&self) -> usize {
        self.files.iter().flatten().count() + usize::from(self.fd_dir.is_some())
    }
}

/// The kept-open files of every process met, and how many fds they may take.
struct KeptFiles {
    procs: HashMap<i32, Kept>,
    pass: u64,
    /// fds held in `procs`.
    open: usize,
}

/// fds kept open between scrapes, /proc's (a [`Reader`]'s) and cgroupfs' together.
static KEPT_FDS: AtomicUsize = AtomicUsize::new(0);
/// At most this many (set at each pass): beyond it, a file is opened, read and closed at
/// each read as without keeping, so that kept files never starve sockets, pipes and spawns.
/// `usize::MAX` until first set.
static KEEP_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Takes one fd of the keeping budget; `false` when it is spent.
pub(crate) fn keep_fd() -> bool {
    if KEEP_LIMIT.load(Ordering::Relaxed) == usize::MAX {
        set_keep_limit();
    }
    let limit = KEEP_LIMIT.load(Ordering::Relaxed);
    KEPT_FDS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| (k < limit).then_some(k + 1))
        .is_ok()
}

/// Gives back `n` fds taken with [`keep_fd`] (their files were closed).
pub(crate) fn release_fds(n: usize) {
    KEPT_FDS.fetch_sub(n, Ordering::Relaxed);
}

/// Sets the keeping budget from the soft RLIMIT_NOFILE and what procwatch holds besides.
fn set_keep_limit() {
    let soft = nofile_limit().0;
    let kept = KEPT_FDS.load(Ordering::Relaxed);
    // What the rest of procwatch holds can grow (connections, programs' pipes): keep what
    // is kept, but open no more than the limit leaves beside it.
    let others = (open_fd_count().unwrap_or(0) as usize).saturating_sub(kept);
    let limit = (soft.saturating_sub(FD_RESERVE) as usize).saturating_sub(others);
    KEEP_LIMIT.store(limit, Ordering::Relaxed);
}

/// Reads /proc for one caller. [`Reader::default`] opens, reads and closes each file;
/// [`Reader::keeping`] keeps each process's files open between passes (the collector's).
#[derive(Default)]
pub struct Reader {
    path: String,
    buf: Vec<u8>,
    keep: Option<KeptFiles>,
    want: Want,
    /// The source of context switches where the kernel answers (see [`taskstats`]), asked
    /// for at the first pass that wants context switches (`taskstats_tried`).
    taskstats: Option<taskstats::Taskstats>,
    taskstats_tried: bool,
    /// Whether a swap area is in use (/proc/swaps, read at each pass): with none, no process
    /// has swapped-out memory, and `status` is not read for it.
    swap_in_use: bool,
}

/// fds procwatch leaves for everything but kept /proc files (sockets, pipes, programs' output,
/// inotify, the files a reload reads).
const FD_RESERVE: u64 = 1024;

impl Reader {
    /// A reader that keeps each process's files open between passes; call
    /// [`Reader::begin_pass`] and [`Reader::end_pass`] around each pass.
    pub fn keeping(want: Want) -> Reader {
        set_keep_limit();
        Reader {
            keep: Some(KeptFiles {
                procs: HashMap::new(),
                pass: 0,
                open: 0,
            }),
            want,
            swap_in_use: want.swap,
            ..Reader::default()
        }
    }

    /// Opens the taskstats socket the first time a pass wants context switches. Where the
    /// kernel refuses it, procwatch says so once (a collector may make several readers).
    fn try_taskstats(&mut self) {
        if !self.want.ctxswitch || self.taskstats_tried {
            return;
        }
        self.taskstats_tried = true;
        match taskstats::Taskstats::open() {
            Ok(ts) => self.taskstats = Some(ts),
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::info!(reason = %e, "context switches are read from /proc/PID/task/TID/status, one read per thread; threads that exited are not counted");
                });
            }
        }
    }

    /// Where context switches come from: `taskstats` or `status`.
    pub fn ctxswitch_source(&mut self) -> &'static str {
        self.try_taskstats();
        if self.taskstats.is_some() {
            "taskstats"
        } else {
            "status"
        }
    }

    pub fn want(&self) -> Want {
        self.want
    }

    /// fds held open for processes' /proc files.
    pub fn kept_fds(&self) -> usize {
        self.keep.as_ref().map_or(0, |k| k.open)
    }

    pub fn begin_pass(&mut self) {
        if let Some(k) = &mut self.keep {
            k.pass += 1;
            set_keep_limit();
        }
        if self.want.swap {
            self.swap_in_use = swap_in_use(&mut self.buf);
        }
        self.try_taskstats();
    }

    /// Closes the files of every process this pass did not meet: it is gone, or left the trees.
    pub fn end_pass(&mut self) {
        if let Some(k) = &mut self.keep {
            let pass = k.pass;
            let mut closed = 0;
            k.procs.retain(|_, p| {
                let keep = p.pass == pass;
                if !keep {
                    closed += p.count();
                }
                keep
            });
            k.open -= closed;
            release_fds(closed);
        }
    }

    /// Reads `which` of `pid` into `self.buf`. `None` if the process is gone or the file is
    /// unreadable (EACCES for /proc/PID/io of a process procwatch may not ptrace).
    fn read(&mut self, pid: i32, which: Which) -> Option<()> {
        let Reader { path, buf, keep, .. } = self;
        let Some(k) = keep else {
            which.tail(pid, path);
            buf.clear();
            open_proc(path).ok()?.read_to_end(buf).ok()?;
            return Some(());
        };
        let pass = k.pass;
        let kept = k.procs.entry(pid).or_default();
        kept.pass = pass;
        let slot = &mut kept.files[which as usize];
        if let Some(f) = slot {
            match pread_into(f, buf) {
                Ok(()) => return Some(()),
                Err(_) => {
                    // ESRCH: that process was reaped; the PID may belong to a new one now.
                    k.open -= kept.count();
                    release_fds(kept.count());
                    *kept = Kept {
                        pass,
                        ..Kept::default()
                    };
                    if which != Which::Stat {
                        // Only a fresh stat read may decide that this PID is a new process.
                        return None;
                    }
                }
            }
        }
        which.tail(pid, path);
        let f = open_proc(path).ok()?;
        pread_into(&f, buf).ok()?;
        if keep_fd() {
            kept.files[which as usize] = Some(f);
            k.open += 1;
        }
        Some(())
    }

    pub fn stat(&mut self, pid: i32) -> Option<Stat> {
        self.read(pid, Which::Stat)?;
        parse_stat(&self.buf)
    }

    pub fn status(&mut self, pid: i32) -> Option<Status> {
        self.read(pid, Which::Status)?;
        parse_status(&self.buf)
    }

    pub fn io(&mut self, pid: i32) -> Option<Io> {
        self.read(pid, Which::Io)?;
        parse_io(&self.buf)
    }

    /// The soft RLIMIT_NOFILE of `pid`, through prlimit(2): one system call (0.3 µs here)
    /// where `/proc/PID/limits` costs the kernel 4.6 µs to print all 16 limits, and holds no
    /// fd. The kernel answers for whatever process has `pid` now: the caller must check that
    /// `pid` was still its process after this call (see `Collector::gather`). Where prlimit is
    /// refused (EPERM: procwatch is not root, and not the process's user in all of its ids),
    /// the limits file is read instead.
    pub fn max_fds(&mut self, pid: i32) -> Option<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads only (no new limit); `lim` is a valid out-pointer.
        if unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) } == 0 {
            // RLIM_INFINITY is u64::MAX, as `parse_max_fds` gives "unlimited".
            return Some(lim.rlim_cur);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return None;
        }
        self.read(pid, Which::Limits)?;
        parse_max_fds(&self.buf)
    }

    /// Open file descriptors. Since Linux 6.2 the size of /proc/PID/fd is the count (one
    /// stat call, or fstat of the kept directory); older kernels report 0 there, and then the
    /// directory is counted.
    pub fn open_fds(&mut self, pid: i32) -> Option<u64> {
        let Reader { path, keep, .. } = self;
        proc_path(path, pid, "fd\0");
        let size = match keep.as_mut().and_then(|k| {
            let pass = k.pass;
            let kept = k.procs.entry(pid).or_default();
            kept.pass = pass;
            if kept.fd_dir.is_none() && keep_fd() {
                kept.fd_dir = open_proc(path).ok();
                k.open += usize::from(kept.fd_dir.is_some());
                if kept.fd_dir.is_none() {
                    release_fds(1);
                }
            }
            kept.fd_dir.as_ref().map(|d| d.metadata())
        }) {
            Some(meta) => meta.ok()?.len(),
            None => proc_size(path)?,
        };
        fd_count(size, path.trim_end_matches('\0'))
    }

    /// Appends the PIDs of `pid`'s children to `out`. A single-threaded process has one
    /// `task/PID/children` file; others have one per thread (proc(5): children are listed
    /// per the thread that forked them).
    pub fn children(&mut self, pid: i32, threads: u64, out: &mut Vec<i32>) {
        if threads <= 1 {
            if self.read(pid, Which::Children).is_some() {
                parse_pids(&self.buf, out);
            }
            return;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        for task in tasks.flatten() {
            let mut path = task.path();
            path.push("children");
            self.buf.clear();
            if let Ok(mut f) = File::open(&path)
                && f.read_to_end(&mut self.buf).is_ok()
            {
                parse_pids(&self.buf, out);
            }
        }
    }
}

/// Whether /proc/swaps lists a swap area (a line beyond its header). Where the file cannot be
/// read, `true`: swap is then read from each process's status as before.
pub fn swap_in_use(buf: &mut Vec<u8>) -> bool {
    if read_into("/proc/swaps", buf).is_none() {
        return true;
    }
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).nth(1).is_some()
}

/// Reads a small /proc file into `buf` (cleared first). `None` if it vanished or is unreadable.
fn read_into(path: &str, buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    File::open(path).ok()?.read_to_end(buf).ok()?;
    Some(())
}

/// Reads the whole of a kept /proc (or cgroupfs) file from offset 0 into `buf`, without
/// zeroing the buffer first. Most of these files are one seq_file record, whole in the first
/// read; `cgroup.procs` and `children` are one short record per PID, and a read stops at the
/// last record that fits its room or the kernel's page ([`SEQ_PAGE`]): a read that ends
/// within [`RECORD_ROOM`] bytes of either is followed by reads from where it stopped until
/// one returns nothing.
pub(crate) fn pread_into(f: &File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    buf.clear();
    let mut want = buf.capacity().max(4096);
    loop {
        buf.reserve(want);
        let at = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `spare.len()` bytes into the vector's spare capacity.
        let n = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let (n, room) = (n as usize, spare.len());
        // SAFETY: pread initialized the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(at + n) };
        // A seq_file read stops at the end of its page (4 KiB, more only where one record
        // needs it), whatever room is left: a read that ends close to a page end may have
        // stopped there, and one that ends close to the room's end may have been cut.
        if n == 0 || (room - n >= RECORD_ROOM && n < SEQ_PAGE - RECORD_ROOM) {
            return Ok(());
        }
        want = room * 2;
    }
}

/// More than the longest record of a multi-record file read through [`pread_into`].
const RECORD_ROOM: usize = 256;
/// What one read of a seq_file returns at most, where no single record is larger.
const SEQ_PAGE: usize = 4096;

/// (soft, hard) RLIMIT_NOFILE of procwatch.
pub fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        (lim.rlim_cur, lim.rlim_max)
    } else {
        (1024, 1024)
    }
}

/// procwatch's RLIMIT_NOFILE as it started, (soft, hard), which its programs get back;
/// (0, 0) while not raised.
static ORIGINAL_NOFILE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The hard limit on open files procwatch gives itself where it may (CAP_SYS_RESOURCE, as
/// root) and its own is lower: systemd's for a service (`DefaultLimitNOFILE=1024:524288`),
/// bounded by the kernel's `fs.nr_open`. The kept /proc and cgroup files take up to 9 fds a
/// program (see the README), 45,000 at 5000 programs; past the limit the collector opens,
/// reads and closes files at each scrape instead, at twice the CPU.
pub const NOFILE_HARD: u64 = 524_288;

/// Raises procwatch's soft RLIMIT_NOFILE to its hard limit, as Go programs do at start, and
/// first, where it may, the hard limit to [`NOFILE_HARD`]: the collector keeps each process's
/// /proc files open. Programs get the original limits back (see [`restore_nofile_in_child`]).
/// Returns (soft before, soft after).
pub fn raise_nofile_limit() -> (u64, u64) {
    let (soft, hard) = nofile_limit();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE_HARD);
    let wanted = hard.max(NOFILE_HARD.min(nr_open));
    // Without CAP_SYS_RESOURCE the hard limit cannot go up: then up to the hard limit only.
    for to in [wanted, hard] {
        if to <= soft {
            break;
        }
        let lim = libc::rlimit {
            rlim_cur: to,
            rlim_max: to,
        };
        // SAFETY: plain syscall with a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            if ORIGINAL_NOFILE[0].load(Ordering::Relaxed) == 0 {
                ORIGINAL_NOFILE[1].store(hard, Ordering::Relaxed);
                ORIGINAL_NOFILE[0].store(soft, Ordering::Relaxed);
            }
            return (soft, to);
        }
    }
    (soft, soft)
}

/// In a forked child before exec, before the program's own `limits:` are set: puts back the
/// RLIMIT_NOFILE (soft and hard) procwatch started with. Async-signal-safe (atomic loads and
/// setrlimit; lowering a hard limit needs no privilege).
pub fn restore_nofile_in_child() {
    let soft = ORIGINAL_NOFILE[0].load(Ordering::Relaxed);
    let hard = ORIGINAL_NOFILE[1].load(Ordering::Relaxed);
    if soft == 0 {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

/// procwatch's own open fds (the size of /proc/self/fd, Linux 6.2+).
fn open_fd_count() -> Option<u64> {
    std::fs::metadata("/proc/self/fd").ok().map(|m| m.len())
}

/// Writes `/proc/PID/TAIL` into a reused string.
/// The threads of `pid` other than its main one, from /proc/PID/task (`path` is scratch).
fn other_threads(path: &mut String, pid: i32) -> Vec<i32> {
    proc_path(path, pid, "task");
    let Ok(tasks) = std::fs::read_dir(&*path) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&tid| tid != pid)
        .collect()
}

/// The open fds of an fd directory whose `stat(2)` size is `size`: the count since Linux
/// 6.2; where that is 0 (older kernels), its entries are counted.
fn fd_count(size: u64, dir: &str) -> Option<u64> {
    if size > 0 {
        return Some(size);
    }
    Some(std::fs::read_dir(dir).ok()?.count() as u64)
}

fn proc_path(path: &mut String, pid: i32, tail: &str) {
    use std::fmt::Write;
    path.clear();
    let _ = write!(path, "/proc/{pid}/{tail}");
}

fn parse_pids(text: &[u8], out: &mut Vec<i32>) {
    if let Ok(s) = std::str::from_utf8(text) {
        out.extend(s.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
}

/// The children of procwatch itself, over all its threads: programs' main processes, and
/// orphans re-parented to procwatch as their child subreaper.
pub fn own_children(reader: &mut Reader, out: &mut Vec<i32>) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    reader.children(me, 2, out);
}

/// Resource use summed over a live process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    pub processes: u64,
    /// utime + cutime over the tree: CPU of the live processes and of every child they reaped.
    pub user_ticks: u64,
    pub system_ticks: u64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    /// Faults (minflt + cminflt, as CPU), I/O from /proc/PID/io (which includes waited-for
    /// children) where it could be read, context switches from /proc/PID/status where asked.
    pub counters: Counters,
    /// Processes whose io file could be read.
    pub io_processes: u64,
    pub swap_bytes: u64,
}

/// Counters of processes beyond CPU: page faults, storage I/O, context switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub minor_faults: u64,
    pub major_faults: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub voluntary_ctxt_switches: u64,
    pub nonvoluntary_ctxt_switches: u64,
}

impl Counters {
    /// Each counter at the higher of the two: a reported counter never goes down.
    pub fn max(self, o: Counters) -> Counters {
        self.zip(o, u64::max)
    }

    pub fn plus(self, o: Counters) -> Counters {
        self.zip(o, |a, b| a + b)
    }

    fn zip(self, o: Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
        Counters {
            minor_faults: f(self.minor_faults, o.minor_faults),
            major_faults: f(self.major_faults, o.major_faults),
            read_bytes: f(self.read_bytes, o.read_bytes),
            write_bytes: f(self.write_bytes, o.write_bytes),
            voluntary_ctxt_switches: f(self.voluntary_ctxt_switches, o.voluntary_ctxt_switches),
            nonvoluntary_ctxt_switches: f(self.nonvoluntary_ctxt_switches, o.nonvoluntary_ctxt_switches),
        }
    }
}

impl TreeUsage {
    fn add(&mut self, st: &Stat, fds: u64, page_size: u64) {
        self.processes += 1;
        self.user_ticks += st.utime_ticks + st.cutime_ticks;
        self.system_ticks += st.stime_ticks + st.cstime_ticks;
        self.rss_bytes += st.rss_pages * page_size;
        self.vsize_bytes += st.vsize_bytes;
        self.threads += st.num_threads;
        self.open_fds += fds;
        self.counters.minor_faults += st.minflt + st.cminflt;
        self.counters.major_faults += st.majflt + st.cmajflt;
    }

    fn add_io(&mut self, io: &Io) {
        self.counters.read_bytes += io.read_bytes;
        self.counters.write_bytes += io.write_bytes;
        self.io_processes += 1;
    }
}

/// Scratch space for one pass over many trees.
#[derive(Default)]
pub struct TreeWalk {
    stack: Vec<i32>,
    /// PIDs already summed in this pass. A process re-parented while the pass runs (its
    /// parent died) can be met twice, once under its old parent and once under its new one;
    /// summed twice, its CPU would lift a counter that may never go down again.
    seen: HashSet<i32>,
}

impl TreeWalk {
    /// Whether `pid` was already visited in this pass.
    pub fn seen(&self, pid: i32) -> bool {
        self.seen.contains(&pid)
    }
}

impl Reader {
    /// Visits `root` and each of its descendants once per pass (children found through
    /// `task/TID/children`); a child that exited since it was listed is skipped.
    fn walk_tree(&mut self, root: Stat, walk: &mut TreeWalk, mut visit: impl FnMut(&mut Reader, &Stat)) {
        if !walk.seen.insert(root.pid) {
            return;
        }
        visit(self, &root);
        self.children(root.pid, root.num_threads, &mut walk.stack);
        while let Some(pid) = walk.stack.pop() {
            if walk.seen.contains(&pid) {
                continue;
            }
            let Some(st) = self.stat(pid) else { continue };
            walk.seen.insert(pid);
            visit(self, &st);
            self.children(pid, st.num_threads, &mut walk.stack);
        }
    }

    /// Sums the tree under `root` (inclusive), given its already-read stat, skipping what
    /// this pass has summed already.
    pub fn tree_from(&mut self, root: Stat, usage: &mut TreeUsage, walk: &mut TreeWalk) {
        self.walk_tree(root, walk, |r, st| r.add_stat(st, usage));
    }

    /// Adds one process (a member of a program's cgroup: cgroup mode finds a program's
    /// processes in `cgroup.procs`, not by walking a tree) to `usage`; a vanished PID adds
    /// nothing. `io`: whether to read its io file (not where the cgroup's io.stat counts it).
    /// Returns the stat read.
    pub fn add_member(&mut self, pid: i32, usage: &mut TreeUsage, io: bool) -> Option<Stat> {
        let st = self.stat(pid)?;
        self.add(&st, usage, io);
        Some(st)
    }

    /// What a pass sums for one process: its stat, fds, and status and io where wanted.
    fn add_stat(&mut self, st: &Stat, usage: &mut TreeUsage) {
        self.add(st, usage, true);
    }

    fn add(&mut self, st: &Stat, usage: &mut TreeUsage, io: bool) {
        match self.exited_leader(st) {
            Some((mm, fds)) => usage.add(&mm, fds, sys().page_size),
            None => {
                let fds = self.open_fds(st.pid).unwrap_or(0);
                usage.add(st, fds, sys().page_size);
            }
        }
        let taskstats = self.taskstats.as_mut().filter(|_| self.want.ctxswitch);
        let status_switches = self.want.ctxswitch && taskstats.is_none();
        if let Some(s) = taskstats.and_then(|ts| ts.switches(st.pid)) {
            usage.counters.voluntary_ctxt_switches += s.voluntary;
            usage.counters.nonvoluntary_ctxt_switches += s.involuntary;
        }
        if (status_switches || (self.want.swap && self.swap_in_use))
            && let Some(s) = self.status(st.pid)
        {
            usage.swap_bytes += s.swap_bytes;
            if status_switches {
                usage.counters.voluntary_ctxt_switches += s.voluntary_ctxt_switches;
                usage.counters.nonvoluntary_ctxt_switches += s.nonvoluntary_ctxt_switches;
                if st.num_threads > 1 {
                    self.other_threads_switches(st.pid, usage);
                }
            }
        }
        if io
            && self.want.io
            && let Some(io) = self.io(st.pid)
        {
            usage.add_io(&io);
        }
    }

    /// A process whose main thread has exited while others run: its leader is a zombie that
    /// has dropped its memory and its fd table, so its own `stat` says 0 for RSS and VSZ and
    /// its `fd` directory is empty, though the process holds both. `st` with the memory of a
    /// live thread's `task/TID/stat` (the process's, as all its threads share it), and that
    /// thread's fd count; `None` for any other process.
    fn exited_leader(&mut self, st: &Stat) -> Option<(Stat, u64)> {
        if st.state != b'Z' || st.num_threads <= 1 {
            return None;
        }
        for tid in other_threads(&mut self.path, st.pid) {
            let dir = format!("/proc/{}/task/{tid}", st.pid);
            if read_into(&format!("{dir}/stat"), &mut self.buf).is_none() {
                continue;
            }
            let Some(thread) = parse_stat(&self.buf).filter(|t| t.state != b'Z') else {
                continue;
            };
            let fd_dir = format!("{dir}/fd");
            let fds = fd_count(std::fs::metadata(&fd_dir).map_or(0, |m| m.len()), &fd_dir).unwrap_or(0);
            return Some((
                Stat {
                    rss_pages: thread.rss_pages,
                    vsize_bytes: thread.vsize_bytes,
                    ..*st
                },
                fds,
            ));
        }
        None
    }

    /// Adds the context switches of `pid`'s threads other than its main one, where taskstats
    /// is not to be had. The counts of /proc/PID/status are the main thread's alone
    /// (fs/proc/array.c prints the task's own `nvcsw`/`nivcsw`); each thread's are in its
    /// task/TID/status. Threads come and go, so their files are opened at each read, not kept.
    /// A thread that has exited is no longer counted (the kernel keeps its switches for
    /// taskstats, for getrusage(2) of the process itself, and for wait4(2) once the process is
    /// reaped: procwatch adds those of its own children).
    fn other_threads_switches(&mut self, pid: i32, usage: &mut TreeUsage) {
        use std::fmt::Write;
        for tid in other_threads(&mut self.path, pid) {
            let Reader { path, buf, .. } = self;
            path.clear();
            let _ = write!(path, "/proc/{pid}/task/{tid}/status");
            if read_into(path, buf).is_some()
                && let Some(s) = parse_status(buf)
            {
                usage.counters.voluntary_ctxt_switches += s.voluntary_ctxt_switches;
                usage.counters.nonvoluntary_ctxt_switches += s.nonvoluntary_ctxt_switches;
            }
        }
    }

    /// The processes in the tree under `root` whose session is not `session`: descendants that
    /// left the program's session (setsid) while their parent is still in its tree, and so are
    /// out of reach of a signal to the program's process group.
    pub fn escaped(&mut self, root: i32, session: i32) -> Vec<Stat> {
        let mut out = Vec::new();
        if let Some(st) = self.stat(root) {
            self.walk_tree(st, &mut TreeWalk::default(), |_, st| {
                if st.session != session {
                    out.push(*st);
                }
            });
        }
        out
    }

    /// Whether the process that had `pid` and `starttime_ticks` still runs (not a zombie, not
    /// a new process that reused the PID).
    pub fn runs(&mut self, pid: i32, starttime_ticks: u64) -> bool {
        self.stat(pid)
            .is_some_and(|st| st.starttime_ticks == starttime_ticks && st.state != b'Z')
    }
}

/// procwatch's own process figures, for the standard `process_*` metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelfUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub start_time_secs: f64,
}

pub fn self_usage(reader: &mut Reader) -> Option<SelfUsage> {
    let s = sys();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let st = reader.stat(me)?;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    };
    Some(SelfUsage {
        cpu_seconds: (st.utime_ticks + st.stime_ticks) as f64 / s.clk_tck as f64,
        rss_bytes: st.rss_pages * s.page_size,
        vsize_bytes: st.vsize_bytes,
        open_fds: reader.open_fds(me).unwrap_or(0),
        max_fds,
        threads: st.num_threads,
        start_time_secs: s.boot_time_secs as f64 + st.starttime_ticks as f64 / s.clk_tck as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 3513 88 0 0 \
        150 25 7 3 20 0 3 0 123456 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let st = parse_stat(STAT).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.state, b'S');
        assert_eq!((st.ppid, st.pgrp, st.session), (1, 4242, 4242));
        assert_eq!((st.utime_ticks, st.stime_ticks), (150, 25));
        assert_eq!((st.cutime_ticks, st.cstime_ticks), (7, 3));
        assert_eq!(st.num_threads, 3);
        assert_eq!(st.starttime_ticks, 123456);
        assert_eq!(st.vsize_bytes, 10_485_760);
        assert_eq!(st.rss_pages, 2560);
    }

    #[test]
    fn truncated_or_garbage_stat_is_no_sample() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"12 (x) S 1 2"), None);
        assert_eq!(
            parse_stat(b"abc (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22"),
            None
        );
        assert_eq!(parse_stat(b")("), None);
    }

    /// What the `procfs` crate's parser makes of a stat file, in procwatch's struct.
    fn crate_stat(text: &[u8]) -> Option<Stat> {
        use procfs_core::FromRead;
        let st = procfs_core::process::Stat::from_read(text).ok()?;
        let u = |v: i64| v.max(0) as u64;
        Some(Stat {
            pid: st.pid,
            state: u8::try_from(st.state).ok()?,
            ppid: st.ppid,
            pgrp: st.pgrp,
            session: st.session,
            minflt: st.minflt,
            cminflt: st.cminflt,
            majflt: st.majflt,
            cmajflt: st.cmajflt,
            utime_ticks: st.utime,
            stime_ticks: st.stime,
            cutime_ticks: u(st.cutime),
            cstime_ticks: u(st.cstime),
            num_threads: u(st.num_threads),
            starttime_ticks: st.starttime,
            vsize_bytes: st.vsize,
            rss_pages: st.rss,
        })
    }

    #[test]
    fn hand_parsers_agree_with_the_procfs_crate_on_every_live_process() {
        use procfs_core::{FromBufRead, FromRead};
        assert_eq!(parse_stat(STAT), crate_stat(STAT));
        let (mut stats, mut ios) = (0, 0);
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // A process may exit between the reads: compare what was read.
            if let Ok(text) = std::fs::read(format!("/proc/{pid}/stat")) {
                assert_eq!(
                    parse_stat(&text),
                    crate_stat(&text),
                    "{}",
                    String::from_utf8_lossy(&text)
                );
                assert!(parse_stat(&text).is_some());
                stats += 1;
            }
            if let Ok(text) = std::fs::read(format!("/proc/{pid}/status")) {
                let theirs = procfs_core::process::Status::from_read(&text[..]).unwrap();
                let mine = parse_status(&text).unwrap();
                assert_eq!(
                    (
                        mine.voluntary_ctxt_switches,
                        mine.nonvoluntary_ctxt_switches,
                        mine.swap_bytes
                    ),
                    (
                        theirs.voluntary_ctxt_switches.unwrap(),
                        theirs.nonvoluntary_ctxt_switches.unwrap(),
                        theirs.vmswap.unwrap_or(0) * 1024
                    )
                );
            }
            if let Ok(text) = std::fs::read(format!("/proc/{pid}/io")) {
                let theirs = procfs_core::process::Io::from_buf_read(&text[..]).unwrap();
                let mine = parse_io(&text).unwrap();
                assert_eq!(mine.read_bytes, theirs.read_bytes);
                assert_eq!(
                    mine.write_bytes,
                    theirs.write_bytes.saturating_sub(theirs.cancelled_write_bytes)
                );
                ios += 1;
            }
        }
        assert!(stats > 10 && ios > 10, "{stats} stat and {ios} io files compared");
    }

    #[test]
    fn parses_children_and_btime() {
        let mut v = vec![1];
        parse_pids(b"10 11 12 ", &mut v);
        assert_eq!(v, [1, 10, 11, 12]);
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn a_pass_sums_each_process_once() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut r = Reader::default();
        let me = std::process::id() as i32;
        let mut walk = TreeWalk::default();
        let mut usage = TreeUsage::default();
        let root = r.stat(me).unwrap();
        r.tree_from(root, &mut usage, &mut walk);
        let once = usage;
        assert!(once.processes >= 2, "this process and its sleep: {once:?}");
        // Met again (as a re-parented orphan would be): not summed again.
        let sleep = r.stat(child.id() as i32).unwrap();
        r.tree_from(sleep, &mut usage, &mut walk);
        r.tree_from(root, &mut usage, &mut walk);
        assert_eq!(usage, once);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn parses_status_io_and_limits() {
        let status = std::fs::read("/proc/self/status").unwrap();
        let st = parse_status(&status).unwrap();
        assert!(st.voluntary_ctxt_switches + st.nonvoluntary_ctxt_switches > 0, "{st:?}");
        let io = b"rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 12288\ncancelled_write_bytes: 4096\n";
        assert_eq!(
            parse_io(io),
            Some(Io {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        assert_eq!(parse_io(b"garbage"), None);
        let limits = std::fs::read("/proc/self/limits").unwrap();
        assert_eq!(parse_max_fds(&limits), Some(nofile_limit().0));
    }

    #[test]
    fn parses_status_fields_by_their_lines() {
        let text = b"Name:\tx\nVmRSS:\t    1000 kB\nVmSwap:\t      12 kB\nThreads:\t1\n\
            voluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                voluntary_ctxt_switches: 150,
                nonvoluntary_ctxt_switches: 7,
                swap_bytes: 12 * 1024
            })
        );
        // A kernel thread has no VmSwap line: 0 swapped, the counters still read.
        let kthread = b"Name:\tkworker\nvoluntary_ctxt_switches:\t3\nnonvoluntary_ctxt_switches:\t0\n";
        assert_eq!(parse_status(kthread).map(|s| s.swap_bytes), Some(0));
        assert_eq!(
            parse_status(b"Name:\tx\nVmSwap:\t1 kB\n"),
            None,
            "no context switch lines"
        );
    }

    #[test]
    fn a_kept_file_of_many_records_is_read_whole() {
        // 1500 children of this thread: its children file (one record per PID, 7500 bytes
        // or more) spans pages of the kernel's seq_file, which a read never crosses.
        let mut kids: Vec<_> = (0..1500)
            .map(|_| std::process::Command::new("sleep").arg("30").spawn().unwrap())
            .collect();
        let f = File::open("/proc/thread-self/children").unwrap();
        let mut buf = Vec::with_capacity(16);
        let mut pids = Vec::new();
        // Twice through one buffer: the second read has room for the whole file to spare,
        // and must still go on past the first page.
        for read in ["first", "second"] {
            pread_into(&f, &mut buf).unwrap();
            assert!(buf.len() > SEQ_PAGE, "{read} read: {} bytes", buf.len());
            pids.clear();
            parse_pids(&buf, &mut pids);
            // Every child. (Others may be listed too: children of a test thread that exited
            // are re-parented to another thread of this process.)
            let listed: HashSet<i32> = pids.iter().copied().collect();
            let missing = kids.iter().filter(|k| !listed.contains(&(k.id() as i32))).count();
            assert_eq!(
                missing,
                0,
                "{read} read: {} of {} children listed",
                pids.len(),
                kids.len()
            );
        }
        for k in &mut kids {
            k.kill().unwrap();
            k.wait().unwrap();
        }
    }

    #[test]
    fn kept_files_belong_to_their_process_and_close_when_it_is_gone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let mut r = Reader::keeping(Want {
            io: true,
            ..Want::default()
        });
        r.begin_pass();
        let first = r.stat(pid).unwrap();
        assert!(r.status(pid).is_some());
        assert!(r.io(pid).is_some(), "this process may read its own child's io");
        assert!(r.open_fds(pid).unwrap() >= 3);
        r.end_pass();
        let held = r.kept_fds();
        assert_eq!(held, 4, "stat, status, io, fd dir");
        // The next pass reads the same fds again: fresh content, no new opens.
        r.begin_pass();
        assert_eq!(r.stat(pid).unwrap().starttime_ticks, first.starttime_ticks);
        r.end_pass();
        assert_eq!(r.kept_fds(), held);

        // A kept fd of a reaped process answers ESRCH, whatever now has its PID.
        let Kept { files, .. } = r.keep.as_ref().unwrap().procs.get(&pid).unwrap();
        let stat_fd = files[Which::Stat as usize].as_ref().unwrap().try_clone().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut buf = Vec::new();
        let err = pread_into(&stat_fd, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
        r.begin_pass();
        assert_eq!(r.stat(pid), None, "a reaped process is no sample");
        r.end_pass();
        assert_eq!(r.kept_fds(), 0, "its files are closed");
    }

    /// This process's voluntary context switches as `r` sums them.
    fn own_switches(r: &mut Reader) -> u64 {
        let mut usage = TreeUsage::default();
        r.begin_pass();
        r.add_member(std::process::id() as i32, &mut usage, false).unwrap();
        r.end_pass();
        usage.counters.voluntary_ctxt_switches
    }

    fn ctxswitch_reader(taskstats: bool) -> Reader {
        let mut r = Reader::keeping(Want {
            ctxswitch: true,
            ..Want::default()
        });
        if !taskstats {
            r.taskstats_tried = true;
        }
        r
    }

    #[test]
    fn context_switches_are_summed_over_every_thread_from_either_source() {
        // This test runs on a thread of its own, not the main one, which sleeps meanwhile:
        // switches made here show only in this thread's task/TID/status.
        for taskstats in [false, true] {
            let mut r = ctxswitch_reader(taskstats);
            if taskstats && r.ctxswitch_source() != "taskstats" {
                eprintln!("!!! SKIPPED the taskstats half: the kernel does not answer this process (not root?)");
                continue;
            }
            // Read from `status`, a thread that exits meanwhile (another test's) takes its
            // switches out of the sum: up to 3 tries. One that sums the main thread only
            // fails all 3.
            let mut tries = Vec::new();
            for _ in 0..3 {
                let before = own_switches(&mut r);
                for _ in 0..500 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                let after = own_switches(&mut r);
                tries.push((before, after));
                if after >= before + 500 {
                    break;
                }
            }
            assert!(
                tries.iter().any(|&(before, after)| after >= before + 500),
                "{}: 500 sleeps on a non-main thread, before -> after: {tries:?}",
                r.ctxswitch_source()
            );
        }
    }

    #[test]
    fn context_switches_of_threads_that_exited_still_count_through_taskstats() {
        let mut r = ctxswitch_reader(true);
        if r.ctxswitch_source() != "taskstats" {
            eprintln!("!!! SKIPPED: the kernel does not answer taskstats to this process (not root?)");
            return;
        }
        let before = own_switches(&mut r);
        std::thread::spawn(|| {
            for _ in 0..500 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        })
        .join()
        .unwrap();
        let after = own_switches(&mut r);
        assert!(
            after >= before + 500,
            "a thread that slept 500 times and exited: {before} -> {after}"
        );
    }

    #[test]
    fn with_taskstats_and_no_swap_in_use_status_is_not_read() {
        let mut r = Reader::keeping(Want {
            ctxswitch: true,
            swap: true,
            io: false,
        });
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        r.begin_pass();
        let mut usage = TreeUsage::default();
        r.add_member(pid, &mut usage, false).unwrap();
        r.end_pass();
        let kept = r.kept_fds();
        let (source, swap) = (r.ctxswitch_source(), r.swap_in_use);
        child.kill().unwrap();
        child.wait().unwrap();
        if source != "taskstats" || swap {
            eprintln!("!!! SKIPPED: context switches from {source}, swap in use: {swap}; status is read");
            assert_eq!(kept, 3, "stat, fd dir, status");
            return;
        }
        assert_eq!(kept, 2, "stat and the fd dir only");
    }

    #[test]
    fn max_fds_is_the_limit_the_process_set_and_holds_no_fd() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 777 && exec sleep 30"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut r = Reader::keeping(Want::default());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let limit = loop {
            r.begin_pass();
            let limit = r.max_fds(pid);
            r.end_pass();
            if limit == Some(777) || std::time::Instant::now() > deadline {
                break limit;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(limit, Some(777));
        assert_eq!(r.kept_fds(), 0, "prlimit(2), not a kept /proc/PID/limits");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(r.max_fds(pid), None, "a reaped process has no limit");
    }

    #[test]
    fn reads_own_process() {
        let mut r = Reader::default();
        let me = std::process::id() as i32;
        let st = r.stat(me).unwrap();
        assert_eq!(st.pid, me);
        assert!(st.rss_pages > 0);
        assert!(r.open_fds(me).unwrap() >= 3);
        assert_eq!(r.stat(i32::MAX), None, "a PID that does not exist is no sample");
    }
}
