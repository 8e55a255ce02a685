//! /proc -> plain structs: a process's stat, its open fds, its children, and a whole process tree.
//!
//! Everything here is a snapshot the kernel may invalidate at any moment: a PID that vanished
//! mid-read is "no sample" (`None`), never an error. Units are in the names. See proc(5).

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::sync::OnceLock;

/// Per-host constants, read once.
#[derive(Debug, Clone, Copy)]
pub struct Sys {
    /// USER_HZ: the unit of the CPU times in /proc/PID/stat.
    pub clk_tck: u64,
    pub page_size: u64,
    /// Unix time of boot, from /proc/stat `btime`.
    pub boot_time_secs: u64,
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
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &[u8]) -> Option<Stat> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let pid = std::str::from_utf8(&text[..open]).ok()?.trim().parse().ok()?;
    let rest = std::str::from_utf8(text.get(close + 2..)?).ok()?;
    // rest starts at field 3 (state); field N is at index N - 3.
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.as_bytes().first().copied()?;
    let mut num = || -> Option<i64> { f.next()?.parse().ok() };
    let ppid = num()? as i32; // 4
    let pgrp = num()? as i32; // 5
    let session = num()? as i32; // 6
    for _ in 7..=13 {
        num()?;
    }
    let utime = num()?; // 14
    let stime = num()?; // 15
    let cutime = num()?; // 16
    let cstime = num()?; // 17
    num()?; // 18 priority
    num()?; // 19 nice
    let threads = num()?; // 20
    num()?; // 21 itrealvalue
    let start = num()?; // 22
    let vsize = num()?; // 23
    let rss = num()?; // 24
    let u = |v: i64| v.max(0) as u64;
    Some(Stat {
        pid,
        state,
        ppid,
        pgrp,
        session,
        utime_ticks: u(utime),
        stime_ticks: u(stime),
        cutime_ticks: u(cutime),
        cstime_ticks: u(cstime),
        num_threads: u(threads),
        starttime_ticks: u(start),
        vsize_bytes: u(vsize),
        rss_pages: u(rss),
    })
}

/// Reads a small /proc file into `buf` (cleared first). `None` if it vanished or is unreadable.
fn read_into(path: &str, buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    File::open(path).ok()?.read_to_end(buf).ok()?;
    Some(())
}

/// Reusable buffers for reading /proc, so that a scrape allocates almost nothing.
#[derive(Default)]
pub struct Reader {
    path: String,
    buf: Vec<u8>,
}

impl Reader {
    pub fn stat(&mut self, pid: i32) -> Option<Stat> {
        proc_path(&mut self.path, pid, "stat");
        read_into(&self.path, &mut self.buf)?;
        parse_stat(&self.buf)
    }

    /// Open file descriptors. Since Linux 6.2 the size of /proc/PID/fd is the count (one
    /// stat call); older kernels report 0 there, and then the directory is counted.
    pub fn open_fds(&mut self, pid: i32) -> Option<u64> {
        proc_path(&mut self.path, pid, "fd");
        let size = std::fs::metadata(&self.path).ok()?.len();
        if size > 0 {
            return Some(size);
        }
        Some(std::fs::read_dir(&self.path).ok()?.count() as u64)
    }

    /// Appends the PIDs of `pid`'s children to `out`. A single-threaded process has one
    /// `task/PID/children` file; others have one per thread (proc(5): children are listed
    /// per the thread that forked them).
    pub fn children(&mut self, pid: i32, threads: u64, out: &mut Vec<i32>) {
        if threads <= 1 {
            proc_path(&mut self.path, pid, "task/");
            use std::fmt::Write;
            let _ = write!(self.path, "{pid}/children");
            if read_into(&self.path, &mut self.buf).is_some() {
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

/// Writes `/proc/PID/TAIL` into a reused string.
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
        let page = sys().page_size;
        self.walk_tree(root, walk, |r, st| {
            let fds = r.open_fds(st.pid).unwrap_or(0);
            usage.add(st, fds, page);
        });
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
