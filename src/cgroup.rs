//! cgroup v2: detect, create, place, read, kill, remove. Nothing else touches cgroupfs.
//!
//! Each program runs in `<base>/programs/<name>/`, where `<base>` is procwatch's own cgroup
//! when procwatch (with its guardian) is alone in it and it is not the hierarchy's root: a
//! unit systemd delegates (`Delegate=yes`), or the root of a container's cgroup namespace.
//! procwatch then moves itself to `<own>/supervisor/` and enables controllers for its
//! programs, as systemd does for a service (and as its `DelegateSubgroup=supervisor` does
//! beforehand). Where its own cgroup holds other processes too (the root of a host without
//! systemd, a login session, a test runner's cgroup), `<base>` is `<own>/procwatch-<pid>/`, so
//! that instances never collide; each holds an flock(2) on its `<base>` for as long as it runs,
//! which is how a starting instance tells a dead instance's leftover from a live one (a PID
//! says nothing across PID namespaces). procwatch never creates, writes or removes anything outside
//! `<base>` (and `<own>/supervisor/`), and removes `<base>` (or what it made in it) when it
//! stops. See the kernel's Documentation/admin-guide/cgroup-v2.rst.
//!
//! Works on a unified hierarchy and on the cgroup2 part of a hybrid one (tracking, `cpu.stat`,
//! `cgroup.kill`, `cgroup.events`, PSI); memory, pids and io figures and `resources:` need the
//! controllers, which a hybrid host keeps in v1.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `cgroup:` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupSetting {
    /// Use cgroups where they work, else proc mode (with one log line giving the reason).
    #[default]
    Auto,
    /// Always proc mode.
    Off,
    /// cgroups or a start-up error.
    Required,
}

impl CgroupSetting {
    pub fn parse(text: &str) -> Option<CgroupSetting> {
        match text {
            "auto" => Some(CgroupSetting::Auto),
            "off" => Some(CgroupSetting::Off),
            "required" => Some(CgroupSetting::Required),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CgroupSetting::Auto => "auto",
            CgroupSetting::Off => "off",
            CgroupSetting::Required => "required",
        }
    }
}

/// The cgroup controllers `resources:` can use.
pub const RESOURCE_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup: required, but cgroup v2 cannot be used here: {0}")]
    Required(String),
}

/// Where procwatch works in the cgroup v2 tree.
#[derive(Debug)]
pub struct Tree {
    /// `<base>`: everything procwatch made is under it.
    base: PathBuf,
    /// Whether procwatch created `<base>` itself (and so removes it at exit).
    own_base: bool,
    /// `<base>/programs`.
    programs: PathBuf,
    /// `<base>/programs` open: each program's cgroup is made and opened relative to it, not
    /// by its full path (two walks of a 6-component path per first start, about a twelfth of
    /// the spawner threads' time at 5000 starts).
    programs_fd: OwnedFd,
    /// Controllers enabled for the programs' cgroups (`cgroup.subtree_control` of programs/).
    controllers: BTreeSet<String>,
    /// `<base>` open and flock(2)ed while procwatch runs, where it made `<base>` itself: the
    /// sign to other instances that this one lives (see [`remove_dead_instances`]).
    _alive: Option<OwnedFd>,
}

/// How programs are tracked, and why.
#[derive(Debug)]
pub enum Tracking {
    Cgroup(std::sync::Arc<Tree>),
    Proc { reason: String },
}

impl Tracking {
    pub fn mode(&self) -> &'static str {
        match self {
            Tracking::Cgroup(_) => "cgroup",
            Tracking::Proc { .. } => "proc",
        }
    }

    /// One line for the start-up log, `--check-config` and the landing page.
    pub fn describe(&self) -> String {
        match self {
            Tracking::Cgroup(t) => {
                let ctl = if t.controllers.is_empty() {
                    "no controllers (memory, pids, io figures and resources: unavailable)".to_owned()
                } else {
                    format!(
                        "controllers {}",
                        t.controllers.iter().cloned().collect::<Vec<_>>().join(",")
                    )
                };
                format!("cgroup mode: programs in {}, {ctl}", t.programs.display())
            }
            Tracking::Proc { reason } => format!("proc mode: {reason}"),
        }
    }

    pub fn tree(&self) -> Option<&std::sync::Arc<Tree>> {
        match self {
            Tracking::Cgroup(t) => Some(t),
            Tracking::Proc { .. } => None,
        }
    }
}

/// Where cgroup2 is mounted and procwatch's own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub mount: PathBuf,
    /// procwatch's own cgroup, as a directory.
    pub own: PathBuf,
}

/// Finds the cgroup2 mount (`/sys/fs/cgroup` unified, or `/sys/fs/cgroup/unified` hybrid) and
/// this process's cgroup in it. The mount's root (mountinfo's fourth field) counts: a cgroup2
/// mounted inside a container's cgroup namespace has its root at the namespace's root, and one
/// bound in from outside it shows a root such as `/..`, under which procwatch's cgroup cannot
/// be found (it would be some other cgroup of the same name).
pub fn locate() -> Result<Location, String> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mounts = parse_cgroup2_mounts(&mountinfo);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let own = parse_own_cgroup(&cgroup).ok_or("/proc/self/cgroup has no cgroup v2 (0::) line")?;
    let Some((mount, root)) = mounts.first() else {
        return Err("no cgroup2 file system is mounted".to_owned());
    };
    // The first mount that shows procwatch's cgroup (a later one may cover an earlier one).
    mounts
        .iter()
        .find_map(|(mount, root)| {
            let rel = Path::new(&own).strip_prefix(root).ok()?;
            Some(Location {
                own: if rel.as_os_str().is_empty() {
                    mount.clone()
                } else {
                    mount.join(rel)
                },
                mount: mount.clone(),
            })
        })
        .ok_or_else(|| {
            format!(
                "the cgroup2 file system at {} shows {root} of the hierarchy, which does not hold procwatch's cgroup ({own}): \
                 mount cgroup2 inside procwatch's cgroup namespace",
                mount.display()
            )
        })
}

/// The mount point of the first cgroup2 file system in /proc/self/mountinfo (proc(5)).
pub fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    parse_cgroup2_mounts(text).into_iter().next().map(|(mount, _)| mount)
}

/// The cgroup2 file systems in mountinfo text, in its order: each mount point and its root
/// (the cgroup shown at the mount point, as a path from the reader's cgroup namespace root;
/// `/..` and the like for a mount made outside that namespace).
pub fn parse_cgroup2_mounts(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = left.split_whitespace().skip(3);
            let root = unescape_mount(fields.next()?);
            let point = fields.next()?;
            Some((PathBuf::from(unescape_mount(point)), root))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path of the `0::PATH` line of /proc/PID/cgroup (cgroups(7)).
pub fn parse_own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_owned())
}

/// Detects cgroup v2 and sets procwatch's subtree up, per `setting`. `guardian`: the PID of
/// procwatch's guardian (its parent, which shares its cgroup), if any.
pub fn detect(setting: CgroupSetting, guardian: Option<i32>) -> Result<Tracking, CgroupError> {
    if setting == CgroupSetting::Off {
        return Ok(Tracking::Proc {
            reason: "cgroup: off in the config".to_owned(),
        });
    }
    match set_up(guardian) {
        Ok(tree) => Ok(Tracking::Cgroup(std::sync::Arc::new(tree))),
        Err(reason) if setting == CgroupSetting::Required => Err(CgroupError::Required(reason)),
        Err(reason) => Ok(Tracking::Proc { reason }),
    }
}

/// What `detect` would choose, without creating anything (for `--check-config`).
pub fn probe(setting: CgroupSetting) -> Result<String, CgroupError> {
    if setting == CgroupSetting::Off {
        return Ok("proc mode: cgroup: off in the config".to_owned());
    }
    let found = locate().and_then(|loc| {
        let c = CString::new(loc.own.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
            return Err(writable_reason(&loc.own, &io::Error::last_os_error()));
        }
        let ctl: Vec<String> = read_controllers(&loc.own.join("cgroup.controllers"))
            .into_iter()
            .filter(|c| RESOURCE_CONTROLLERS.contains(&c.as_str()))
            .collect();
        Ok(format!(
            "cgroup mode: programs under {}, controllers for resources: {}",
            loc.own.display(),
            if ctl.is_empty() {
                "none".to_owned()
            } else {
                ctl.join(",")
            }
        ))
    });
    match found {
        Ok(line) => Ok(line),
        Err(reason) if setting == CgroupSetting::Required => Err(CgroupError::Required(reason)),
        Err(reason) => Ok(format!("proc mode: {reason}")),
    }
}

/// Where procwatch works, given where it is (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Its cgroup holds no process but procwatch and its guardian, and is not the
    /// hierarchy's root: a unit delegated by systemd (`Delegate=yes`), or the root of a
    /// container's cgroup namespace. `<own>` is the base: procwatch moves to
    /// `<own>/supervisor/` and enables controllers in `<own>`, as systemd does for a service.
    Own,
    /// Already in `<parent>/supervisor/`, with nothing in `<parent>` itself: systemd's
    /// `DelegateSubgroup=supervisor`, or a procwatch started again in a subtree it set up.
    Subgroup,
    /// Others live in its cgroup (the root of a host without systemd, a login session, a
    /// test runner's cgroup): `<own>/procwatch-<pid>/`, so that instances never collide.
    Shared,
}

/// Chooses the layout; `members`: the processes of procwatch's own cgroup.
fn layout(loc: &Location, members: &[i32], ours: impl Fn(i32) -> bool) -> Layout {
    // The hierarchy's real root has no `cgroup.type` (cgroup-v2.rst); the root of a cgroup
    // namespace, which a container sees at its mount point, does.
    if !loc.own.join("cgroup.type").exists() {
        return Layout::Shared;
    }
    let subgroup = loc.own != loc.mount
        && loc.own.file_name().is_some_and(|n| n == "supervisor")
        && loc
            .own
            .parent()
            .is_some_and(|p| read_pids(&p.join("cgroup.procs")).is_ok_and(|v| v.is_empty()));
    if subgroup {
        // Whoever else is in supervisor/ (an ExecReload= helper, a `docker exec` shell)
        // stays there with procwatch: nothing needs to move.
        Layout::Subgroup
    } else if members.iter().all(|&p| ours(p)) {
        Layout::Own
    } else {
        Layout::Shared
    }
}

fn set_up(guardian: Option<i32>) -> Result<Tree, String> {
    let loc = locate()?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let ours = |pid: i32| pid == me || Some(pid) == guardian;
    let members = read_pids(&loc.own.join("cgroup.procs")).map_err(|e| format!("{}: {e}", loc.own.display()))?;
    if !members.contains(&me) {
        return Err(format!(
            "{} does not list procwatch (PID {me}) among its processes: cgroup2 is not mounted as procwatch's namespaces see it",
            loc.own.display()
        ));
    }
    let layout = layout(&loc, &members, ours);
    let (base, own_base, alive) = match layout {
        Layout::Own => (loc.own.clone(), false, None),
        Layout::Subgroup => (loc.own.parent().expect("checked by layout").to_path_buf(), false, None),
        Layout::Shared => {
            let (base, alive) = claim_base(&loc.own, me)?;
            (base, true, alive)
        }
    };
    if !own_base {
        // Move procwatch (and its guardian) out of the inner node into a leaf.
        let sup = base.join("supervisor");
        if loc.own != sup {
            mkdir_ok(&sup).map_err(|e| writable_reason(&sup, &e))?;
            for pid in std::iter::once(me).chain(guardian) {
                write_file(&sup.join("cgroup.procs"), &pid.to_string()).map_err(|e| writable_reason(&sup, &e))?;
            }
        }
    }
    let programs = base.join("programs");
    match std::fs::create_dir(&programs) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A procwatch that was killed in this cgroup left its programs' cgroups.
            kill_and_remove_children(&programs);
        }
        Err(e) => {
            if own_base {
                let _ = std::fs::remove_dir(&base);
            }
            return Err(writable_reason(&programs, &e));
        }
    }
    let controllers = enable_controllers(&base, &programs);
    let programs_fd = match open_dir(libc::AT_FDCWD, &programs) {
        Ok(fd) => fd,
        Err(e) => return Err(format!("cannot open {}: {e}", programs.display())),
    };
    Ok(Tree {
        base,
        own_base,
        programs,
        programs_fd,
        controllers,
        _alive: alive,
    })
}

/// Removes dead instances' leftovers from `own`, then makes and locks `<own>/procwatch-<me>/`
/// (`procwatch-<me>.<n>` if a live procwatch of another PID namespace holds that name).
/// Instances sharing `own` take turns here, so that none finds another's `<base>` made and
/// not yet locked. The lock is `None` where the filesystem has no flock(2).
fn claim_base(own: &Path, me: i32) -> Result<(PathBuf, Option<OwnedFd>), String> {
    // Unlocked when it closes, at the end of this function.
    let turn = open_dir(libc::AT_FDCWD, own).ok().filter(|fd| take_turn(fd, own));
    remove_dead_instances(own, me);
    for n in 0.. {
        let base = match n {
            0 => own.join(format!("procwatch-{me}")),
            n => own.join(format!("procwatch-{me}.{n}")),
        };
        let existed = match std::fs::create_dir(&base) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(writable_reason(&base, &e)),
        };
        let fd = open_dir(libc::AT_FDCWD, &base).map_err(|e| format!("cannot open {}: {e}", base.display()))?;
        let lock = match try_lock(&fd) {
            Ok(true) => Some(fd),
            Ok(false) => continue,
            Err(_) => None,
        };
        if existed {
            // Not locked: our PID was a dead instance's too, and this is its leftover.
            kill_and_remove_children(&base);
        }
        drop(turn);
        return Ok((base, lock));
    }
    unreachable!("the names run out only after every u64")
}

/// Takes the lock on the shared cgroup `own` (its fd), waiting at most [`TURN_WAIT`] for an
/// instance holding it (a start stopped half-way, by SIGSTOP or a debugger, holds it).
fn take_turn(fd: &OwnedFd, own: &Path) -> bool {
    let deadline = Instant::now() + TURN_WAIT;
    loop {
        match try_lock(fd) {
            Ok(true) => return true,
            Ok(false) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(false) => {
                tracing::warn!(cgroup = %own.display(), waited = ?TURN_WAIT, "another procwatch starting in this cgroup holds it up; going on without waiting for it");
                return false;
            }
            Err(_) => return false,
        }
    }
}

/// How long a start waits for another instance's start in the same cgroup to finish.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Whether `pid` is a procwatch in this PID namespace: its command name is procwatch's own
/// (a PID a dead instance left, now another program's, is not).
fn is_procwatch(pid: i32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    comm(&pid.to_string()).is_some_and(|c| c.starts_with("procwatch") || Some(&c) == comm("self").as_ref())
}

/// Takes an exclusive flock(2) on `fd` without waiting: `Ok(false)` if another holds it.
/// Retried on EINTR.
fn try_lock(fd: &OwnedFd) -> io::Result<bool> {
    loop {
        // SAFETY: a plain syscall on an fd we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn writable_reason(path: &Path, e: &io::Error) -> String {
    format!(
        "cannot write {} ({e}): run as root, or with a delegated cgroup (systemd Delegate=yes)",
        path.display()
    )
}

/// The controllers procwatch turns on for its programs' cgroups where its base is offered
/// them: memory (`memory.current`, `memory.peak`, OOM kills, `memory.max`), pids (`pids.max`),
/// io (`io.stat`: read and written bytes, dead processes included) and cpu (`cpu.max`).
/// `cpu.stat`'s usage needs no controller; cpu is on so that `resources: {cpu}` can be kept
/// at any reload. With it, programs share a contended CPU by program (each has `cpu.weight`
/// 100) rather than by thread, as systemd services do where the cpu controller is on.
pub const CONTROLLERS: [&str; 4] = ["memory", "pids", "io", "cpu"];

/// Turns on, for programs/, each of [`CONTROLLERS`] that `base` is offered (its
/// `cgroup.controllers`); returns those it could. `base` holds no process by now (the kernel's
/// no-internal-processes rule refuses controllers for the children of a cgroup that does,
/// its root excepted). One write per controller, so that one the kernel refuses (cpu with a
/// real-time process in the subtree) leaves the others on; the refusal is logged.
fn enable_controllers(base: &Path, programs: &Path) -> BTreeSet<String> {
    let available = read_controllers(&base.join("cgroup.controllers"));
    let mut enabled = BTreeSet::new();
    for c in CONTROLLERS {
        if !available.contains(c) {
            continue;
        }
        let line = format!("+{c}");
        let written = write_file(&base.join("cgroup.subtree_control"), &line)
            .map_err(|e| (base, e))
            .and_then(|()| write_file(&programs.join("cgroup.subtree_control"), &line).map_err(|e| (programs, e)));
        match written {
            Ok(()) => {
                enabled.insert(c.to_owned());
            }
            Err((dir, e)) => tracing::warn!(
                controller = c,
                cgroup = %dir.display(),
                error = %e,
                "cannot enable a controller for the programs' cgroups; its figures and limits are unavailable"
            ),
        }
    }
    enabled
}

fn read_controllers(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Removes the `procwatch-<pid>` subtrees under `own` whose procwatch no longer lives: those
/// whose lock is free, unless `<pid>` is a procwatch here. The lock tells a live instance of
/// another PID namespace (where `<pid>` means nothing) from a dead one; the PID still spares a
/// running instance of an earlier version, which held no lock. A `procwatch-<pid>.<n>` was made
/// by a version that locks, so its lock alone decides, as for our own PID.
fn remove_dead_instances(own: &Path, me: i32) {
    let Ok(entries) = std::fs::read_dir(own) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((pid, suffixed)) = name
            .to_str()
            .and_then(|n| n.strip_prefix("procwatch-"))
            .and_then(|p| Some((p.split('.').next()?.parse::<i32>().ok()?, p.contains('.'))))
        else {
            continue;
        };
        // Held until the end of this iteration, past the removal.
        let fd = open_dir(libc::AT_FDCWD, &e.path());
        let locked = fd.as_ref().is_ok_and(|fd| matches!(try_lock(fd), Ok(false)));
        let alive = locked || (!suffixed && pid != me && is_procwatch(pid));
        if !alive {
            tracing::info!(cgroup = %e.path().display(), "removing the cgroups of a procwatch that no longer runs");
            kill_and_remove(&e.path());
        }
    }
}

/// Kills everything under `dir` and removes `dir` and its sub-cgroups.
pub fn kill_and_remove(dir: &Path) {
    kill_and_remove_children(dir);
    let _ = std::fs::remove_dir(dir);
}

/// Kills everything under `dir` and removes its sub-cgroups (not `dir` itself).
pub fn kill_and_remove_children(dir: &Path) {
    let _ = write_file(&dir.join("cgroup.kill"), "1");
    // SIGKILL is not instant; the cgroups can only go once empty. Bounded: a start-up step.
    let _ = wait_unpopulated_blocking(dir, Duration::from_secs(5));
    remove_subtree(dir, false);
}

/// Removes the sub-cgroups of `dir`, deepest first, and `dir` itself if `me`.
fn remove_subtree(dir: &Path, me: bool) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_subtree(&e.path(), true);
            }
        }
    }
    if me {
        let _ = std::fs::remove_dir(dir);
    }
}

fn mkdir_ok(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Opens the directory `path` (relative to the directory fd `at`, or `AT_FDCWD`) as an fd.
fn open_dir(at: libc::c_int, path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid C string and directory fd; the fd returned is owned below.
    let fd = unsafe { libc::openat(at, c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(text.as_bytes())
}

fn read_pids(path: &Path) -> io::Result<Vec<i32>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

impl Tree {
    /// The program's cgroup, created if it does not exist yet (it is reused across runs and
    /// reloads, so its counters go on).
    pub fn program(&self, name: &str) -> io::Result<ProgramCgroup> {
        let dir = self.programs.join(name);
        let rel = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a directory fd we own and a valid C string.
        if unsafe { libc::mkdirat(self.programs_fd.as_raw_fd(), rel.as_ptr(), 0o777) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        let fd = open_dir(self.programs_fd.as_raw_fd(), Path::new(name))?;
        Ok(ProgramCgroup::with_fd(dir, fd).absent_without(&self.controllers))
    }

    /// `<base>/programs`, which the guardian kills whole if procwatch dies.
    pub fn programs_dir(&self) -> &Path {
        &self.programs
    }

    /// What the guardian removes when procwatch is gone: `<base>` if procwatch made it, else
    /// only `programs/`.
    pub fn cleanup_dir(&self) -> &Path {
        if self.own_base { &self.base } else { &self.programs }
    }

    /// At a clean exit: kills whatever is left (nothing, normally) and removes what procwatch made.
    pub fn remove(&self) {
        kill_and_remove(&self.programs);
        if self.own_base {
            // supervisor/ may exist in an older layout; procwatch itself is not in base.
            remove_subtree(&self.base, true);
        }
    }
}

/// The cgroups of this procwatch that `cgroup.kill` was written to, until removed (see
/// [`ProgramCgroup::was_killed`]). By path: a program's cgroup outlives the handle a reload
/// drops with the program's old config.
fn killed_cgroups() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    static KILLED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    KILLED.lock().unwrap_or_else(|e| e.into_inner())
}

/// One program's cgroup. The directory fd is what `clone3(CLONE_INTO_CGROUP)` takes.
#[derive(Debug)]
pub struct ProgramCgroup {
    dir: PathBuf,
    fd: OwnedFd,
    /// Limits and OOM state of the current run (see the end of this file).
    run: RunState,
    /// The files a scrape reads, kept open between scrapes (see [`StatFile`]).
    stats: Mutex<[Slot; StatFile::COUNT]>,
}

/// The files of a program's cgroup that are read at every scrape. Each is opened at its first
/// read and kept open: a `pread` at offset 0 of a cgroupfs file returns fresh content (as for
/// /proc), without the path walk, open and close that cost more than the read itself (about
/// 8 µs a file here). A file that does not exist in the cgroup (its controller is not enabled,
/// PSI is off) is found absent once and not looked for again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatFile {
    Procs,
    CpuStat,
    CpuPressure,
    MemoryPressure,
    IoPressure,
    MemoryCurrent,
    MemoryPeak,
    MemoryMax,
    MemoryEvents,
    IoStat,
}

impl StatFile {
    const COUNT: usize = 10;
    /// In the order of [`PRESSURE_RESOURCES`].
    const PRESSURE: [StatFile; 3] = [StatFile::CpuPressure, StatFile::MemoryPressure, StatFile::IoPressure];

    fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or_default()
    }

    /// The name for openat(2), without a copy at each open past the fds' budget.
    fn c_name(self) -> &'static CStr {
        match self {
            StatFile::Procs => c"cgroup.procs",
            StatFile::CpuStat => c"cpu.stat",
            StatFile::CpuPressure => c"cpu.pressure",
            StatFile::MemoryPressure => c"memory.pressure",
            StatFile::IoPressure => c"io.pressure",
            StatFile::MemoryCurrent => c"memory.current",
            StatFile::MemoryPeak => c"memory.peak",
            StatFile::MemoryMax => c"memory.max",
            StatFile::MemoryEvents => c"memory.events",
            StatFile::IoStat => c"io.stat",
        }
    }
}

/// The resources whose PSI files (`<resource>.pressure`) a program's cgroup has.
pub const PRESSURE_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// Closes every kept file of one cgroup, giving their fds back to the budget.
fn close_all(slots: &mut [Slot; StatFile::COUNT]) {
    let open = slots.iter().filter(|s| matches!(s, Slot::Open(_))).count();
    *slots = Default::default();
    crate::procfs::release_fds(open);
}

impl Drop for ProgramCgroup {
    fn drop(&mut self) {
        close_all(self.stats.get_mut().unwrap_or_else(|e| e.into_inner()));
    }
}

/// One kept stats file.
#[derive(Debug, Default)]
enum Slot {
    /// Not opened yet (or the cgroup was removed since: opened again at the next read).
    #[default]
    Closed,
    Open(File),
    /// Not there in this cgroup: its controller is not enabled, or PSI is off.
    Absent,
}

/// `cpu.stat`'s totals, in µs: every process that ever ran in the cgroup, dead ones included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub user_usec: u64,
    pub system_usec: u64,
}

/// PSI totals of one resource, in µs (`some` and `full` lines of `*.pressure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub some_usec: u64,
    /// Absent for cpu on older kernels.
    pub full_usec: Option<u64>,
}

/// `io.stat` summed over the devices, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStat {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// The memory controller's figures, where it is enabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub current_bytes: u64,
    /// `memory.peak` (Linux 5.19+).
    pub peak_bytes: Option<u64>,
    /// `None` for `max` (no limit).
    pub max_bytes: Option<u64>,
    /// `oom_kill` of `memory.events`.
    pub oom_kills: u64,
}

impl ProgramCgroup {
    #[cfg(test)]
    fn open(dir: PathBuf) -> io::Result<ProgramCgroup> {
        let fd = open_dir(libc::AT_FDCWD, &dir)?;
        Ok(ProgramCgroup::with_fd(dir, fd))
    }

    fn with_fd(dir: PathBuf, fd: OwnedFd) -> ProgramCgroup {
        ProgramCgroup {
            dir,
            fd,
            run: RunState::default(),
            stats: Mutex::default(),
        }
    }

    /// Marks the files of a controller that is not enabled for the programs' cgroups as
    /// absent from the start (procwatch enables its controllers once, at start): neither the
    /// first start (memory.events) nor the first scrape looks for them. Each missing file
    /// cost two failed opens per program there, about 0.2 s of CPU on the first scrape of
    /// 5000 programs without the memory and io controllers.
    fn absent_without(self, controllers: &BTreeSet<String>) -> ProgramCgroup {
        const OF: [(StatFile, &str); 5] = [
            (StatFile::MemoryCurrent, "memory"),
            (StatFile::MemoryPeak, "memory"),
            (StatFile::MemoryMax, "memory"),
            (StatFile::MemoryEvents, "memory"),
            (StatFile::IoStat, "io"),
        ];
        {
            let mut slots = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            for (file, controller) in OF {
                if !controllers.contains(controller) {
                    slots[file as usize] = Slot::Absent;
                }
            }
        }
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn dir_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// `cgroup.procs` open for writing: where clone3 cannot place a child, the child writes
    /// itself into it before exec.
    pub fn procs_fd(&self) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.dir.join("cgroup.procs"))
    }

    /// The members (thread group IDs) now, from `cgroup.procs`.
    pub fn procs(&self, out: &mut Vec<i32>) {
        self.members(&mut Vec::new(), out);
    }

    /// The members now, like [`ProgramCgroup::procs`], reading through `buf` (reused between
    /// calls, so that a scrape allocates nothing here).
    pub fn members(&self, buf: &mut Vec<u8>, out: &mut Vec<i32>) {
        out.clear();
        if self.read_kept(StatFile::Procs, buf).is_some()
            && let Ok(text) = std::str::from_utf8(buf)
        {
            out.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }

    /// Reads one stats file into `buf` through its kept fd. `None` where the file is absent
    /// (decided at its first open) or the cgroup is gone.
    fn read_kept(&self, file: StatFile, buf: &mut Vec<u8>) -> Option<()> {
        let mut slots = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match &slots[file as usize] {
            Slot::Absent => return None,
            Slot::Open(f) => match crate::procfs::pread_into(f, buf) {
                Ok(()) => return Some(()),
                // ENODEV: the cgroup was removed; if it was made again under the same path,
                // every file is opened afresh (this one now, the others at their next read).
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => close_all(&mut slots),
                // EOPNOTSUPP: PSI turned off for this cgroup (cgroup.pressure 0).
                Err(_) => {
                    slots[file as usize] = Slot::Absent;
                    crate::procfs::release_fds(1);
                    return None;
                }
            },
            Slot::Closed => {}
        }
        let slot = &mut slots[file as usize];
        match self.open_stat_file(file) {
            Ok(f) => {
                crate::procfs::pread_into(&f, buf).ok()?;
                // Past the fds' budget, the file is opened and read at each read instead.
                if crate::procfs::keep_fd() {
                    *slot = Slot::Open(f);
                }
                Some(())
            }
            Err(e) => {
                let absent = match e.raw_os_error() {
                    // The cgroup exists but not this file: its controller is not enabled here.
                    Some(libc::ENOENT) => self.dir.is_dir(),
                    // Out of fds or memory: try again at the next read.
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR) => false,
                    // EOPNOTSUPP (PSI off), EACCES: this file will not be readable here.
                    _ => true,
                };
                if absent {
                    *slot = Slot::Absent;
                }
                None
            }
        }
    }

    /// Opens one stats file relative to the cgroup's directory fd: one lookup instead of a walk
    /// of the whole path (4.7 against 6.1 µs for open, read and close of `cpu.stat` here), which
    /// matters where the fd budget is spent and files are opened at each scrape. Through the
    /// path where that fails: a cgroup removed and made again under the same path is a new
    /// directory, and the kept fd is of the old one.
    fn open_stat_file(&self, file: StatFile) -> io::Result<File> {
        // SAFETY: a valid directory fd and C string; the fd returned is owned below.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                file.c_name().as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: just opened, owned by nobody else.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        File::open(self.dir.join(file.name()))
    }

    /// Reads `file` and parses it as text; `None` where it is absent or does not parse.
    fn parse_kept<T>(&self, file: StatFile, buf: &mut Vec<u8>, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        self.read_kept(file, buf)?;
        parse(std::str::from_utf8(buf).ok()?)
    }

    /// Whether any process is left (`populated` of `cgroup.events`).
    pub fn populated(&self) -> bool {
        populated(&self.dir)
    }

    /// SIGKILLs every process in the cgroup, atomically with respect to forks (`cgroup.kill`,
    /// Linux 5.14+). Falls back to killing each member where the file is missing.
    pub fn kill(&self) {
        if write_file(&self.dir.join("cgroup.kill"), "1").is_ok() {
            killed_cgroups().insert(self.dir.clone());
        } else {
            let mut pids = Vec::new();
            self.procs(&mut pids);
            for pid in pids {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// `cpu.stat`'s totals; `buf` is scratch space reused between calls.
    pub fn cpu(&self, buf: &mut Vec<u8>) -> Option<CpuStat> {
        self.parse_kept(StatFile::CpuStat, buf, parse_cpu_stat)
    }

    /// PSI of each of [`PRESSURE_RESOURCES`]; `None` where PSI is off.
    pub fn pressure(&self, buf: &mut Vec<u8>) -> [Option<Pressure>; 3] {
        StatFile::PRESSURE.map(|f| self.parse_kept(f, buf, parse_pressure))
    }

    /// The memory controller's figures; `None` without the controller.
    pub fn memory(&self, buf: &mut Vec<u8>) -> Option<Memory> {
        let current = self.parse_kept(StatFile::MemoryCurrent, buf, |t| t.trim().parse().ok())?;
        Some(Memory {
            current_bytes: current,
            peak_bytes: self.parse_kept(StatFile::MemoryPeak, buf, |t| t.trim().parse().ok()),
            max_bytes: self.parse_kept(StatFile::MemoryMax, buf, parse_max),
            oom_kills: self
                .parse_kept(StatFile::MemoryEvents, buf, |t| parse_keyed(t, "oom_kill"))
                .unwrap_or(0),
        })
    }

    /// Storage I/O of every process that ever ran in the cgroup (`io.stat`, summed over the
    /// devices); `None` without the io controller.
    pub fn io(&self, buf: &mut Vec<u8>) -> Option<IoStat> {
        self.parse_kept(StatFile::IoStat, buf, |t| Some(parse_io_stat(t)))
    }

    /// `oom_kill` of `memory.events`, `None` without the memory controller. Read at each start
    /// and each end of a run, through the scrape's kept file: without the controller the file
    /// is found absent once, not looked up again at every start.
    pub fn oom_kills(&self) -> Option<u64> {
        self.parse_kept(StatFile::MemoryEvents, &mut Vec::new(), |t| parse_keyed(t, "oom_kill"))
    }

    /// Removes the cgroup (empty by now: the program was stopped). Killing first makes sure.
    pub fn remove(&self) {
        if self.populated() {
            self.kill();
            let _ = wait_unpopulated_blocking(&self.dir, Duration::from_secs(5));
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => {
                // The next mkdir makes a new cgroup, which no `cgroup.kill` has touched.
                killed_cgroups().remove(&self.dir);
            }
            Err(e) => {
                tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot remove a program's cgroup")
            }
        }
    }

    /// Whether `cgroup.kill` was ever written to this cgroup. Some kernels (6.18 here) then
    /// SIGKILL every child that `clone3(CLONE_INTO_CGROUP)` places in it, at once and for
    /// good: the fork takes the cgroup's kill sequence from the parent's cgroup, not the
    /// target's, and so sees a kill pending. A child that joins by writing `cgroup.procs`
    /// is not affected, so a program once killed so is spawned that way (7-15 ms more a start).
    pub fn was_killed(&self) -> bool {
        killed_cgroups().contains(&self.dir)
    }

    /// A watch on `cgroup.events`, which changes whenever `populated` may have (the kernel
    /// sends IN_MODIFY on that file for every change, cgroup-v2.rst), so a stop waits for
    /// emptiness without polling. See [`EventsWatch`].
    pub fn events_watch(&self) -> io::Result<EventsWatch> {
        EventsWatch::new(&self.dir)
    }
}

/// A watch on one cgroup's `cgroup.events`, in the inotify instance every stop shares.
///
/// One instance for all: an instance per stop ran out of `fs.inotify.max_user_instances`
/// (128 by default) when hundreds of programs stopped at once, and closing an instance that
/// held a watch waits for an SRCU grace period. Removing a watch from a live instance does
/// not wait (the mark is freed later by the kernel's reaper). One thread reads the instance
/// and bumps each watched cgroup's counter; a waiter sees every bump made after it subscribed.
pub struct EventsWatch {
    wd: i32,
    rx: tokio::sync::watch::Receiver<u64>,
}

/// The shared instance: its fd, and the counter of each watch descriptor with the number of
/// [`EventsWatch`]es on it (two stops of one cgroup share its descriptor).
struct EventsWatches {
    fd: OwnedFd,
    watched: Mutex<std::collections::HashMap<i32, (tokio::sync::watch::Sender<u64>, usize)>>,
}

/// Made at the first watch, with the thread that reads it; lives as long as procwatch.
static EVENTS_WATCHES: std::sync::OnceLock<io::Result<EventsWatches>> = std::sync::OnceLock::new();

fn events_watches() -> io::Result<&'static EventsWatches> {
    let shared = EVENTS_WATCHES.get_or_init(|| {
        // Blocking reads on a thread of its own: no runtime needed, none stalled.
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::thread::Builder::new()
            .name("cgroup-events".into())
            .spawn(read_events_forever)?;
        Ok(EventsWatches {
            fd,
            watched: Mutex::new(std::collections::HashMap::new()),
        })
    });
    shared.as_ref().map_err(|e| io::Error::new(e.kind(), e.to_string()))
}

/// The reading thread: every event bumps its watch's counter (an overflow bumps them all).
fn read_events_forever() {
    let Ok(shared) = events_watches() else { return };
    let mut buf = [0u8; 4096];
    let header = std::mem::size_of::<libc::inotify_event>();
    loop {
        // SAFETY: reading into a local buffer from the instance's fd.
        let n = unsafe { libc::read(shared.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %io::Error::last_os_error(), "cannot read cgroup.events watches");
            return;
        }
        let watched = shared.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = 0;
        while at + header <= n as usize {
            // SAFETY: the kernel writes whole events; read_unaligned copes with the buffer.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            at += header + ev.len as usize;
            let bump = |tx: &tokio::sync::watch::Sender<u64>| tx.send_modify(|n| *n += 1);
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                watched.values().for_each(|(tx, _)| bump(tx));
            } else if let Some((tx, _)) = watched.get(&ev.wd) {
                bump(tx);
            }
        }
    }
}

impl EventsWatch {
    fn new(dir: &Path) -> io::Result<EventsWatch> {
        let shared = events_watches()?;
        let path = CString::new(dir.join("cgroup.events").as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut watched = shared.watched.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: valid fd and C string. The same file gives the same descriptor.
        let wd = unsafe { libc::inotify_add_watch(shared.fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        let (tx, refs) = watched
            .entry(wd)
            .or_insert_with(|| (tokio::sync::watch::Sender::new(0), 0));
        *refs += 1;
        Ok(EventsWatch { wd, rx: tx.subscribe() })
    }

    /// Resolves at the next change after the watch was made or last resolved.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender lives while this watch does.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for EventsWatch {
    fn drop(&mut self) {
        let Ok(shared) = events_watches() else { return };
        let mut watched = shared.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, refs)) = watched.get_mut(&self.wd) {
            *refs -= 1;
            if *refs == 0 {
                watched.remove(&self.wd);
                // EINVAL when the cgroup is gone already (its watch went with it).
                // SAFETY: plain syscall on the instance's fd.
                unsafe { libc::inotify_rm_watch(shared.fd.as_raw_fd(), self.wd) };
            }
        }
    }
}

fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .ok()
        .and_then(|t| parse_keyed(&t, "populated"))
        .is_none_or(|v| v != 0)
}

fn events_watch(dir: &Path) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = CString::new(dir.join("cgroup.events").as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid fd and C string.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Empties an inotify fd's queue (the events only say "look again").
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 1024];
    // SAFETY: reading into a local buffer from a nonblocking fd we own.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Waits (blocking, for start-up and exit paths) until `dir` is empty or `timeout` passes.
fn wait_unpopulated_blocking(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let watch = events_watch(dir).ok();
    loop {
        if !populated(dir) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match &watch {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
                drain(fd);
            }
            None => std::thread::sleep(Duration::from_millis(10).min(left)),
        }
    }
}

/// `KEY VALUE` lines (`cgroup.events`, `memory.events`, `cpu.stat`). These parsers run on a
/// few files of every program at every scrape: they look at bytes, line by line, with no
/// character search per line.
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    lines(text).find_map(|line| {
        let value = line.strip_prefix(key.as_bytes())?.strip_prefix(b" ")?;
        crate::procfs::dec_u64(value.trim_ascii())
    })
}

/// The lines of a small text file, as bytes.
fn lines(text: &str) -> impl Iterator<Item = &[u8]> {
    text.as_bytes().split(|&b| b == b'\n')
}

pub fn parse_cpu_stat(text: &str) -> Option<CpuStat> {
    let (mut user, mut system) = (None, None);
    for line in lines(text) {
        let (slot, value) = if let Some(v) = line.strip_prefix(b"user_usec ") {
            (&mut user, v)
        } else if let Some(v) = line.strip_prefix(b"system_usec ") {
            (&mut system, v)
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = crate::procfs::dec_u64(value.trim_ascii());
        }
    }
    Some(CpuStat {
        user_usec: user?,
        system_usec: system?,
    })
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=N` and the same for `full`. `total` is the
/// last field of each line (Documentation/accounting/psi.rst).
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let (mut some, mut full) = (None, None);
    for line in lines(text) {
        let slot = if line.starts_with(b"some ") {
            &mut some
        } else if line.starts_with(b"full ") {
            &mut full
        } else {
            continue;
        };
        let last = line.iter().rposition(|&b| b == b' ').map_or(line, |at| &line[at + 1..]);
        *slot = last
            .strip_prefix(b"total=")
            .and_then(|v| crate::procfs::dec_u64(v.trim_ascii_end()));
    }
    Some(Pressure {
        some_usec: some?,
        full_usec: full,
    })
}

/// `io.stat`: one line per device, `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`
/// (cgroup-v2.rst); the byte counts summed over the devices. Empty until the cgroup's first I/O.
pub fn parse_io_stat(text: &str) -> IoStat {
    let mut io = IoStat::default();
    for field in text.split_ascii_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let sum = match key {
            "rbytes" => &mut io.read_bytes,
            "wbytes" => &mut io.write_bytes,
            _ => continue,
        };
        *sum += value.parse::<u64>().unwrap_or(0);
    }
    io
}

/// A `memory.max`-style value: bytes, or `max` for no limit.
pub fn parse_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        v => v.parse().ok(),
    }
}

// ---- resources: limits, and OOM kills told apart (memory.events) ----

/// The `resources:` limits of a program, as written to its cgroup; `None` is no limit (`max`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`, in bytes.
    pub memory: Option<u64>,
    /// CPU in thousandths of a core (`cpu: 1.5` is 1500): the `cpu.max` quota per period.
    pub cpu_millis: Option<u64>,
    /// `pids.max`.
    pub pids: Option<u64>,
}

/// The `cpu.max` period, in µs: systemd's default (`CPUQuotaPeriodSec=100ms`).
pub const CPU_PERIOD_USEC: u64 = 100_000;
/// The smallest `cpu.max` quota the kernel takes, in µs; at a 100 ms period, 1% of a core.
pub const CPU_MIN_QUOTA_USEC: u64 = 1_000;

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The three files and what goes in them, in the order they are written.
    pub fn files(&self) -> [(&'static str, &'static str, String); 3] {
        let max = |v: Option<u64>| v.map_or_else(|| "max".to_owned(), |v| v.to_string());
        [
            ("memory", "memory.max", max(self.memory)),
            ("cpu", "cpu.max", cpu_max(self.cpu_millis)),
            ("pids", "pids.max", max(self.pids)),
        ]
    }
}

/// The `cpu.max` line for `millis` thousandths of a core: `QUOTA PERIOD` in µs, or `max PERIOD`.
pub fn cpu_max(millis: Option<u64>) -> String {
    match millis {
        None => format!("max {CPU_PERIOD_USEC}"),
        Some(m) => {
            let quota = m.saturating_mul(CPU_PERIOD_USEC / 1000).max(CPU_MIN_QUOTA_USEC);
            format!("{quota} {CPU_PERIOD_USEC}")
        }
    }
}

/// What `resources:` can use where procwatch runs: the config is checked against it at start
/// and at every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSupport {
    /// proc mode: no limits at all; why procwatch is in proc mode.
    Proc { reason: String },
    /// cgroup mode, with these controllers enabled for the programs' cgroups.
    Cgroup { controllers: BTreeSet<String> },
}

impl Tracking {
    pub fn limit_support(&self) -> LimitSupport {
        match self {
            Tracking::Cgroup(t) => LimitSupport::Cgroup {
                controllers: t.controllers.clone(),
            },
            Tracking::Proc { reason } => LimitSupport::Proc { reason: reason.clone() },
        }
    }
}

/// What `--check-config` can tell about `resources:` without creating anything: proc mode
/// where procwatch's cgroup cannot be written, else the resource controllers its cgroup has
/// (under systemd's `Delegate=yes`, of the unit's cgroup, whose `.control` or `supervisor`
/// leaf the check may run in). The start checks again against the subtree it really gets.
pub fn probe_limits(setting: CgroupSetting) -> LimitSupport {
    if setting == CgroupSetting::Off {
        return LimitSupport::Proc {
            reason: "cgroup: off in the config".to_owned(),
        };
    }
    let loc = match locate() {
        Ok(loc) => loc,
        Err(reason) => return LimitSupport::Proc { reason },
    };
    let Ok(c) = CString::new(loc.own.as_os_str().as_bytes()) else {
        return LimitSupport::Proc {
            reason: format!("{}: not a usable path", loc.own.display()),
        };
    };
    // SAFETY: a valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return LimitSupport::Proc {
            reason: writable_reason(&loc.own, &io::Error::last_os_error()),
        };
    }
    let leaf = loc
        .own
        .file_name()
        .is_some_and(|n| n == ".control" || n == "supervisor");
    let unit = match loc.own.parent() {
        Some(parent) if leaf && loc.own != loc.mount => parent,
        _ => &loc.own,
    };
    LimitSupport::Cgroup {
        controllers: read_controllers(&unit.join("cgroup.controllers"))
            .into_iter()
            .filter(|c| RESOURCE_CONTROLLERS.contains(&c.as_str()))
            .collect(),
    }
}

/// Per program cgroup: the limits last written, and whether the last main exit was an OOM kill.
#[derive(Debug, Default)]
struct RunState {
    limits: std::sync::Mutex<Limits>,
    /// `oom_kill` of `memory.events` when the current run started; `u64::MAX` without it.
    oom_at_start: std::sync::atomic::AtomicU64,
    /// The main process of the last run was killed by SIGKILL while `oom_kill` went up.
    oom_exit: std::sync::atomic::AtomicBool,
}

impl ProgramCgroup {
    /// Before a start (on the spawner thread): writes the limits where they changed since the
    /// last start (a fresh cgroup has none), and notes `oom_kill` so that the run's end can be
    /// told apart as an OOM kill. A limit that cannot be written fails the start: no limit
    /// is dropped silently.
    pub fn prepare_run(&self, limits: &Limits) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let mut written = self.run.limits.lock().unwrap_or_else(|e| e.into_inner());
        if *written != *limits {
            for ((controller, file, text), (_, _, old)) in limits.files().into_iter().zip(written.files()) {
                if text == old {
                    continue;
                }
                let path = self.dir.join(file);
                // Truncating is what a shell's `>` does; cgroupfs ignores it.
                let written = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(text.as_bytes()));
                if let Err(e) = written {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot set the {controller} limit ({} = {text}): {e}", path.display()),
                    ));
                }
            }
            *written = *limits;
        }
        drop(written);
        self.run
            .oom_at_start
            .store(self.oom_kills().unwrap_or(u64::MAX), Ordering::Relaxed);
        self.run.oom_exit.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// On the reaper thread, when the main process has ended with wait `status` and before
    /// its runner hears of it: notes whether it was the OOM killer's victim (killed by
    /// SIGKILL while `oom_kill` of `memory.events` went up since its start). The kernel
    /// counts the kill before it sends the signal.
    pub fn note_main_exit(&self, status: i32) {
        use std::sync::atomic::Ordering;
        let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
        let before = self.run.oom_at_start.load(Ordering::Relaxed);
        let oom = killed && before != u64::MAX && self.oom_kills().is_some_and(|now| now > before);
        self.run.oom_exit.store(oom, Ordering::Relaxed);
    }

    /// Whether the main process's last exit was an OOM kill (see `note_main_exit`); clears it.
    pub fn take_oom(&self) -> bool {
        self.run.oom_exit.swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cgroup");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
    }

    #[test]
    fn finds_cgroup2_in_unified_and_hybrid_mountinfo() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 25 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(parse_mountinfo(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified =
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_mountinfo(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let spaced = "30 24 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(spaced), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            parse_mountinfo("42 25 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"),
            None
        );
    }

    /// The mount's root (fourth field): `/` for a cgroup2 mounted in procwatch's cgroup
    /// namespace (a container's own mount), `/..` for the host's mount seen from inside a
    /// namespace, where procwatch's cgroup is not found (and no other is taken for it).
    #[test]
    fn a_cgroup2_mount_carries_its_root() {
        let container = "48 47 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mounts(container),
            [(PathBuf::from("/sys/fs/cgroup"), "/".to_owned())]
        );
        let outside = "58 48 0:38 /.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                       61 48 0:38 / /mnt/cg rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mounts(outside),
            [
                (PathBuf::from("/sys/fs/cgroup/unified"), "/..".to_owned()),
                (PathBuf::from("/mnt/cg"), "/".to_owned())
            ]
        );
        assert!(Path::new("/").strip_prefix("/..").is_err(), "/ is not under /..");
    }

    #[test]
    fn finds_own_cgroup() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/procwatch.service\n";
        assert_eq!(
            parse_own_cgroup(text).as_deref(),
            Some("/system.slice/procwatch.service")
        );
        assert_eq!(parse_own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn parses_cpu_stat() {
        assert_eq!(
            parse_cpu_stat(&fixture("cpu.stat")),
            Some(CpuStat {
                user_usec: 2_918_021,
                system_usec: 104_437
            })
        );
    }

    #[test]
    fn parses_memory_files() {
        assert_eq!(parse_keyed(&fixture("memory.events"), "oom_kill"), Some(3));
        assert_eq!(parse_keyed(&fixture("memory.events"), "oom_group_kill"), Some(0));
        assert_eq!(parse_max(&fixture("memory.max")), Some(536_870_912));
        assert_eq!(parse_max("max\n"), None);
        assert_eq!(fixture("memory.current").trim().parse::<u64>().ok(), Some(123_482_112));
        assert_eq!(parse_keyed(&fixture("cgroup.events"), "populated"), Some(1));
    }

    #[test]
    fn parses_pressure() {
        assert_eq!(
            parse_pressure(&fixture("memory.pressure")),
            Some(Pressure {
                some_usec: 1_520_300,
                full_usec: Some(1_180_004)
            })
        );
        assert_eq!(
            parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"),
            Some(Pressure {
                some_usec: 42,
                full_usec: None
            })
        );
        assert_eq!(parse_pressure(""), None);
    }

    #[test]
    fn parses_io_stat() {
        assert_eq!(
            parse_io_stat(&fixture("io.stat")),
            IoStat {
                read_bytes: 4_096_000 + 1_234_432,
                write_bytes: 67_108_864 + 8_192
            }
        );
        // No I/O yet: the file is empty, and that is 0, not "no data".
        assert_eq!(parse_io_stat(""), IoStat::default());
    }

    /// A cgroup of its own under the test's, removed (with its processes killed) on drop.
    struct TestCgroup(PathBuf);

    impl TestCgroup {
        /// `None` (with a loud line) where this test cannot make cgroups.
        fn make(name: &str) -> Option<TestCgroup> {
            let loc = match locate() {
                Ok(loc) => loc,
                Err(e) => {
                    eprintln!("!!! SKIPPED: no cgroup2 here: {e}");
                    return None;
                }
            };
            let dir = loc.own.join(format!("{name}-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir(&dir) {
                eprintln!("!!! SKIPPED: cannot make {} ({e}): needs root", dir.display());
                return None;
            }
            Some(TestCgroup(dir))
        }

        fn enter(&self, child: &std::process::Child) {
            write_file(&self.0.join("cgroup.procs"), &child.id().to_string()).unwrap();
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            kill_and_remove(&self.0);
        }
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep").arg("30").spawn().unwrap()
    }

    fn open_fd(cg: &ProgramCgroup, file: StatFile) -> Option<i32> {
        match &cg.stats.lock().unwrap()[file as usize] {
            Slot::Open(f) => Some(f.as_raw_fd()),
            _ => None,
        }
    }

    #[test]
    fn kept_cgroup_files_read_fresh_and_reopen_a_remade_cgroup() {
        let Some(test) = TestCgroup::make("pwtest-kept") else {
            return;
        };
        let cg = ProgramCgroup::open(test.0.clone()).unwrap();
        let (mut buf, mut members) = (Vec::new(), Vec::new());
        cg.members(&mut buf, &mut members);
        assert!(members.is_empty(), "{members:?}");
        let procs_fd = open_fd(&cg, StatFile::Procs).expect("cgroup.procs is kept open");

        // A process that joins shows through the same fd: pread at 0 is fresh content.
        let mut a = sleeper();
        test.enter(&a);
        cg.members(&mut buf, &mut members);
        assert_eq!(members, [a.id() as i32]);
        assert_eq!(open_fd(&cg, StatFile::Procs), Some(procs_fd), "no new open");
        assert!(cg.cpu(&mut buf).is_some());
        let cpu_fd = open_fd(&cg, StatFile::CpuStat).expect("cpu.stat is kept open");
        assert!(cg.cpu(&mut buf).is_some());
        assert_eq!(open_fd(&cg, StatFile::CpuStat), Some(cpu_fd));
        a.kill().unwrap();
        a.wait().unwrap();
        cg.members(&mut buf, &mut members);
        assert!(members.is_empty(), "{members:?}");

        // A file whose controller is not enabled is looked for once.
        if !test.0.join("memory.current").exists() {
            assert_eq!(cg.memory(&mut buf), None);
            assert!(matches!(
                cg.stats.lock().unwrap()[StatFile::MemoryCurrent as usize],
                Slot::Absent
            ));
            // So is memory.events, which each start and end of a run reads.
            assert_eq!(cg.oom_kills(), None);
            assert!(matches!(
                cg.stats.lock().unwrap()[StatFile::MemoryEvents as usize],
                Slot::Absent
            ));
        }

        // The cgroup removed and made again under the same path: its files are opened afresh.
        std::fs::remove_dir(&test.0).unwrap();
        std::fs::create_dir(&test.0).unwrap();
        let mut b = sleeper();
        test.enter(&b);
        cg.members(&mut buf, &mut members);
        assert_eq!(
            members,
            [b.id() as i32],
            "the new cgroup, at the first read after it was made"
        );
        assert!(cg.cpu(&mut buf).is_some(), "cpu.stat of the new cgroup");
        b.kill().unwrap();
        b.wait().unwrap();
    }

    /// What `enable_controllers` writes, on fixture files: `cgroup.controllers` as a container's
    /// cgroup on a cgroup v2 host shows it, and FIFOs standing for the two
    /// `cgroup.subtree_control` files, which keep every write. (This host's v2 hierarchy
    /// offers none of these controllers; the live check is in tests/tracking.rs.)
    #[test]
    fn each_offered_controller_is_turned_on_for_programs() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let programs = base.join("programs");
        std::fs::create_dir(&programs).unwrap();
        let recorder = |d: &Path| {
            let path = CString::new(d.join("cgroup.subtree_control").as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            // Open for reading (and writing, so that it never reads end of file) first: the
            // writes then go into the pipe without waiting.
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(d.join("cgroup.subtree_control"))
                .unwrap()
        };
        let (mut at_base, mut at_programs) = (recorder(base), recorder(&programs));
        let written = |f: &mut File| {
            let mut buf = [0u8; 256];
            let n = f.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        std::fs::write(base.join("cgroup.controllers"), fixture("cgroup.controllers")).unwrap();
        let on = enable_controllers(base, &programs);
        assert_eq!(on, BTreeSet::from(CONTROLLERS.map(str::to_owned)));
        // One write per controller, to the base (for programs/) and to programs/ (for each
        // program's cgroup); cpuset, hugetlb, rdma and misc are not procwatch's to use.
        assert_eq!(written(&mut at_base), "+memory+pids+io+cpu");
        assert_eq!(written(&mut at_programs), "+memory+pids+io+cpu");
        // A hybrid host's v2 root offers hugetlb alone: nothing is written, nothing is on.
        std::fs::write(base.join("cgroup.controllers"), "hugetlb\n").unwrap();
        assert!(enable_controllers(base, &programs).is_empty());
        assert_eq!(written(&mut at_base), "");
        // Offered to the base but refused for programs/ (its file is missing here): not on.
        std::fs::write(base.join("cgroup.controllers"), "io memory\n").unwrap();
        std::fs::remove_file(programs.join("cgroup.subtree_control")).unwrap();
        assert!(enable_controllers(base, &programs).is_empty());
        assert_eq!(written(&mut at_base), "+memory+io");
    }

    #[test]
    fn parses_setting() {
        for s in [CgroupSetting::Auto, CgroupSetting::Off, CgroupSetting::Required] {
            assert_eq!(CgroupSetting::parse(s.as_str()), Some(s));
        }
        assert_eq!(CgroupSetting::parse("yes"), None);
    }

    #[test]
    fn formats_limits_as_the_kernel_takes_them() {
        let none = Limits::default();
        assert!(none.is_empty());
        assert_eq!(
            none.files().map(|(_, f, t)| format!("{f}={t}")),
            ["memory.max=max", "cpu.max=max 100000", "pids.max=max"]
        );
        let l = Limits {
            memory: Some(512 << 20),
            cpu_millis: Some(1500),
            pids: Some(1000),
        };
        assert_eq!(
            l.files().map(|(_, f, t)| format!("{f}={t}")),
            ["memory.max=536870912", "cpu.max=150000 100000", "pids.max=1000"]
        );
        assert_eq!(
            cpu_max(Some(10)),
            "1000 100000",
            "1% of a core: the kernel's smallest quota"
        );
        assert_eq!(cpu_max(Some(1)), "1000 100000", "never below the kernel's minimum");
        assert_eq!(cpu_max(Some(250)), "25000 100000");
    }

    /// memory.events as the kernel writes it before and after an OOM kill (fixtures), as
    /// `note_main_exit` reads it.
    #[test]
    fn oom_kills_are_read_from_memory_events() {
        assert_eq!(parse_keyed(&fixture("memory.events"), "oom_kill"), Some(3));
        assert_eq!(parse_keyed(&fixture("memory.events.before-oom"), "oom_kill"), Some(0));
        assert_eq!(parse_keyed(&fixture("memory.events.after-oom"), "oom_kill"), Some(1));
        assert_eq!(parse_keyed(&fixture("memory.events.after-oom"), "oom"), Some(1));
    }

    /// The run-state logic on a directory that holds fixture copies of the files: limits are
    /// written where they changed, and an exit is an OOM kill only for SIGKILL while
    /// `oom_kill` went up.
    /// The files of a controller that is not enabled are never looked for, even where a file
    /// of that name is there; those of an enabled one are read.
    #[test]
    fn files_of_controllers_not_enabled_are_absent_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.path().join("memory.events"), fixture("memory.events")).unwrap();
        std::fs::write(dir.path().join("io.stat"), "").unwrap();
        let mut buf = Vec::new();
        let none = ProgramCgroup::open(dir.path().to_path_buf())
            .unwrap()
            .absent_without(&BTreeSet::new());
        assert_eq!(none.memory(&mut buf), None);
        assert_eq!(none.oom_kills(), None);
        for f in [StatFile::MemoryCurrent, StatFile::MemoryEvents, StatFile::IoStat] {
            assert!(matches!(none.stats.lock().unwrap()[f as usize], Slot::Absent), "{f:?}");
        }
        let memory = ProgramCgroup::open(dir.path().to_path_buf())
            .unwrap()
            .absent_without(&BTreeSet::from(["memory".to_owned()]));
        assert_eq!(memory.memory(&mut buf).map(|m| m.current_bytes), Some(4096));
        assert_eq!(memory.oom_kills(), Some(3));
        assert!(matches!(
            memory.stats.lock().unwrap()[StatFile::IoStat as usize],
            Slot::Absent
        ));
    }

    #[test]
    fn prepare_run_writes_limits_and_an_oom_kill_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["memory.max", "cpu.max", "pids.max"] {
            std::fs::write(dir.path().join(f), "untouched").unwrap();
        }
        let events = dir.path().join("memory.events");
        std::fs::write(&events, fixture("memory.events.before-oom")).unwrap();
        let cg = ProgramCgroup::open(dir.path().to_path_buf()).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        cg.prepare_run(&Limits::default()).unwrap();
        assert_eq!(
            read("memory.max"),
            "untouched",
            "no limit on a fresh cgroup: nothing written"
        );
        let l = Limits {
            memory: Some(64 << 20),
            cpu_millis: None,
            pids: Some(50),
        };
        cg.prepare_run(&l).unwrap();
        assert_eq!(
            [read("memory.max"), read("cpu.max"), read("pids.max")],
            ["67108864", "untouched", "50"]
        );
        const SIGKILLED: i32 = libc::SIGKILL;
        const SIGTERMED: i32 = libc::SIGTERM;
        const EXIT_1: i32 = 1 << 8;
        cg.note_main_exit(SIGKILLED);
        assert!(!cg.take_oom(), "SIGKILL without an OOM kill is a signal");
        std::fs::write(&events, fixture("memory.events.after-oom")).unwrap();
        for status in [SIGTERMED, EXIT_1] {
            cg.note_main_exit(status);
            assert!(!cg.take_oom(), "status {status:#x} is no OOM kill");
        }
        cg.note_main_exit(SIGKILLED);
        assert!(cg.take_oom(), "SIGKILL while oom_kill went up");
        assert!(!cg.take_oom(), "taken once");
        // The next run starts from the new count; a removed limit goes back to max.
        cg.prepare_run(&Limits::default()).unwrap();
        cg.note_main_exit(SIGKILLED);
        assert!(!cg.take_oom());
        assert_eq!([read("memory.max"), read("pids.max")], ["max", "max"]);
        // Without memory.events (no memory controller) nothing is an OOM kill.
        std::fs::remove_file(&events).unwrap();
        cg.prepare_run(&Limits::default()).unwrap();
        cg.note_main_exit(SIGKILLED);
        assert!(!cg.take_oom());
    }
}
