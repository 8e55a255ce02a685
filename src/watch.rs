//! File watches: inotify(7) events -> per-watch atomic counters by kind.
//!
//! Each watch drains its own inotify instance in one task and counts with atomics, so the
//! kernel queue is read as fast as it fills and no count waits on anything slower. A queue
//! overflow (`IN_Q_OVERFLOW`) is counted and logged: events were lost, and the metric says so.
//! A path that does not exist (yet, or any more) is retried every few seconds. The watcher
//! knows nothing of programs.
//!
//! Exactness: a directory created under a recursive watch is watched at once and then listed,
//! and what the listing finds is counted as created, so files made in it before its watch
//! existed are not lost; a name counted by a listing is not counted again when its own
//! `IN_CREATE` turns up. One rename is one event (its `IN_MOVED_FROM`, or its `IN_MOVED_TO`
//! when it came from outside the watch); a removed directory is one event (its parent's
//! `IN_DELETE`, not its own `IN_DELETE_SELF`).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ApplyReport, WatchConfig};

/// How long a watch lets events gather after a wake-up before reading them.
const COALESCE: Duration = Duration::from_millis(2);

/// How often a watch whose path is missing looks for it again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The kinds, in the order of [`WatchStats::events`].
pub const KINDS: [&str; 5] = ["create", "modify", "remove", "rename", "other"];
const CREATE: usize = 0;
const MODIFY: usize = 1;
const REMOVE: usize = 2;
const RENAME: usize = 3;
const OTHER: usize = 4;

/// A watch's live counters; written from its thread, read at scrape time. Errors are logged
/// before they are counted, so that whoever sees a counter rise finds the log line.
#[derive(Debug)]
pub struct WatchStats {
    pub name: String,
    pub path: PathBuf,
    up: AtomicBool,
    events: [AtomicU64; 5],
    overflows: AtomicU64,
    errors: AtomicU64,
}

impl WatchStats {
    fn new(config: &WatchConfig) -> WatchStats {
        WatchStats {
            name: config.name.clone(),
            path: config.path.clone(),
            up: AtomicBool::new(false),
            events: Default::default(),
            overflows: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The same counts under a new path (a reload moved the watch).
    fn moved_to(&self, config: &WatchConfig) -> WatchStats {
        let load = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        WatchStats {
            events: std::array::from_fn(|i| load(&self.events[i])),
            overflows: load(&self.overflows),
            errors: load(&self.errors),
            ..WatchStats::new(config)
        }
    }

    fn count(&self, kind: usize) {
        self.events[kind].fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self) -> WatchReport {
        WatchReport {
            name: self.name.clone(),
            path: self.path.clone(),
            up: self.up.load(Ordering::Relaxed),
            events: std::array::from_fn(|i| self.events[i].load(Ordering::Relaxed)),
            overflows: self.overflows.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// A watch as seen at one scrape.
#[derive(Debug, Clone)]
pub struct WatchReport {
    pub name: String,
    pub path: PathBuf,
    pub up: bool,
    pub events: [u64; 5],
    pub overflows: u64,
    pub errors: u64,
}

impl WatchReport {
    /// `(kind, count)` pairs.
    pub fn events(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KINDS.iter().copied().zip(self.events.iter().copied())
    }
}

/// A read-only view for collectors.
#[derive(Clone, Default)]
pub struct WatchView(Arc<ArcSwap<Vec<Arc<WatchStats>>>>);

impl WatchView {
    pub fn reports(&self) -> Vec<WatchReport> {
        self.0.load().iter().map(|w| w.report()).collect()
    }
}

struct Running {
    config: WatchConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Owns every watch task.
#[derive(Default)]
pub struct Watches {
    published: WatchView,
    running: HashMap<String, Running>,
}

impl Watches {
    pub fn view(&self) -> WatchView {
        self.published.clone()
    }

    /// Makes the set of watches match `configs`, by name: unchanged ones keep running and
    /// counting, changed ones are re-established (their counts go on), removed ones stop.
    pub async fn apply(&mut self, configs: &[WatchConfig]) -> ApplyReport {
        let report = ApplyReport::diff(self.running.iter().map(|(n, r)| (n, &r.config)), configs, |c| &c.name);
        let mut stopping = Vec::new();
        for name in report.to_stop() {
            if let Some(r) = self.running.remove(name) {
                r.stop.cancel();
                stopping.push(r.task);
            }
        }
        for task in stopping {
            let _ = task.await;
        }
        // Kept by name, so that a re-established watch's counts go on.
        let old: HashMap<String, Arc<WatchStats>> = self
            .published
            .0
            .load()
            .iter()
            .map(|w| (w.name.clone(), Arc::clone(w)))
            .collect();
        let mut list = Vec::with_capacity(configs.len());
        for config in configs {
            let stats = match old.get(&config.name) {
                Some(s) if s.path == config.path => Arc::clone(s),
                Some(s) => Arc::new(s.moved_to(config)),
                None => Arc::new(WatchStats::new(config)),
            };
            if !self.running.contains_key(&config.name) {
                let stop = CancellationToken::new();
                let task = tokio::spawn(run_watch(config.clone(), Arc::clone(&stats), stop.clone()));
                self.running.insert(
                    config.name.clone(),
                    Running {
                        config: config.clone(),
                        stop,
                        task,
                    },
                );
            }
            list.push(stats);
        }
        self.published.0.store(Arc::new(list));
        report
    }

    pub async fn shutdown(&mut self) {
        for r in self.running.values() {
            r.stop.cancel();
        }
        for (_, r) in self.running.drain() {
            let _ = r.task.await;
        }
    }
}

/// An eventfd that tells a watch thread to stop.
struct StopFd(OwnedFd);

impl StopFd {
    fn new() -> std::io::Result<StopFd> {
        // SAFETY: plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(StopFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Include and exclude globs, matched on the path relative to the watch root.
struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A name no file can have (it holds a NUL): a directory whose every entry would be excluded
/// matches `dir/PROBE`, and is not watched at all (`target/**`, `.git/**`).
const PROBE: &str = "\0";

impl Filter {
    fn new(config: &WatchConfig) -> Filter {
        Filter {
            include: glob_set(&config.include),
            exclude: glob_set(&config.exclude),
        }
    }

    fn is_active(&self) -> bool {
        self.include.is_some() || self.exclude.is_some()
    }

    fn wanted(&self, rel: &Path) -> bool {
        if let Some(ex) = &self.exclude
            && ex.is_match(rel)
        {
            return false;
        }
        self.include.as_ref().is_none_or(|inc| inc.is_match(rel))
    }

    fn prunes(&self, dir: &Path) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|ex| !dir.as_os_str().is_empty() && ex.is_match(dir.join(PROBE)))
    }
}

fn glob_set(globs: &[String]) -> Option<GlobSet> {
    if globs.is_empty() {
        return None;
    }
    let mut b = GlobSetBuilder::new();
    for g in globs {
        // Validated with the config; a glob that fails here is skipped, not fatal.
        if let Ok(g) = Glob::new(g) {
            b.add(g);
        }
    }
    b.build().ok()
}

/// One watch's life: establish, count, and re-establish when the path comes back. Every
/// failure waits `RETRY_EVERY` before the next try, so nothing here can spin.
async fn run_watch(config: WatchConfig, stats: Arc<WatchStats>, stop: CancellationToken) {
    let filter = Arc::new(Filter::new(&config));
    let mut said_missing = false;
    while !stop.is_cancelled() {
        let root = match std::fs::canonicalize(&config.path) {
            Ok(root) => root,
            Err(err) => {
                if !said_missing {
                    info!(watch = %config.name, path = %config.path.display(), error = %err, "watch path not there; retrying every {RETRY_EVERY:?}");
                    said_missing = true;
                }
                if !wait_or_stop(&stop).await {
                    break;
                }
                continue;
            }
        };
        said_missing = false;
        let outcome = match Tree::establish(root.clone(), config.recursive, Arc::clone(&filter), Arc::clone(&stats)) {
            Ok((inotify, tree)) => {
                stats.up.store(true, Ordering::Relaxed);
                info!(watch = %config.name, path = %root.display(), recursive = config.recursive, dirs = tree.dirs.len(), "watching");
                let outcome = run_tree(&config.name, tree, inotify, &stop).await;
                stats.up.store(false, Ordering::Relaxed);
                outcome
            }
            Err(err) => Err(err),
        };
        match outcome {
            Ok(false) => break,
            Ok(true) => {
                warn!(watch = %config.name, path = %root.display(), "watched path went away; waiting for it to come back");
            }
            Err(err) => {
                warn!(watch = %config.name, path = %root.display(), error = %err, "cannot watch{}", hint(&err));
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if !wait_or_stop(&stop).await {
                    break;
                }
            }
        }
    }
    stats.up.store(false, Ordering::Relaxed);
}

/// Sleeps `RETRY_EVERY`; false if `stop` came first.
async fn wait_or_stop(stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY_EVERY) => true,
        _ = stop.cancelled() => false,
    }
}

/// Counts on the tree's own thread until the root goes away (`Ok(true)`), `stop`
/// (`Ok(false)`), or inotify fails.
async fn run_tree(name: &str, tree: Tree, inotify: Inotify, stop: &CancellationToken) -> std::io::Result<bool> {
    let stop_fd = Arc::new(StopFd::new()?);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_stop = Arc::clone(&stop_fd);
    std::thread::Builder::new()
        .name(format!("watch-{name}"))
        .spawn(move || {
            let _ = done_tx.send(tree.run_blocking(inotify, &thread_stop));
        })?;
    tokio::select! {
        end = done_rx => end.unwrap_or(Ok(true)),
        _ = stop.cancelled() => {
            stop_fd.signal();
            Ok(false)
        }
    }
}

fn hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOSPC) => ": out of inotify watches; raise the limit with `sysctl fs.inotify.max_user_watches=N`",
        Some(libc::EMFILE) => {
            ": out of inotify instances; raise the limit with `sysctl fs.inotify.max_user_instances=N`"
        }
        _ => "",
    }
}

const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DONT_FOLLOW);

/// The watched tree: which inotify watch is which directory, and what was counted by listing.
struct Tree {
    watches: inotify::Watches,
    root: PathBuf,
    root_wd: Option<WatchDescriptor>,
    recursive: bool,
    filter: Arc<Filter>,
    stats: Arc<WatchStats>,
    /// Watch -> directory, relative to the root ("" is the root; a watched file's own name).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Names counted as created by listing a new directory, whose `IN_CREATE` may still come.
    listed: HashMap<WatchDescriptor, HashSet<OsString>>,
    /// Cookie of the last `IN_MOVED_FROM`: the `IN_MOVED_TO` with it is the same rename.
    last_from: Option<u32>,
}

impl Tree {
    fn establish(
        root: PathBuf,
        recursive: bool,
        filter: Arc<Filter>,
        stats: Arc<WatchStats>,
    ) -> std::io::Result<(Inotify, Tree)> {
        let inotify = Inotify::init()?;
        let mut tree = Tree {
            watches: inotify.watches(),
            root,
            root_wd: None,
            recursive,
            filter,
            stats,
            dirs: HashMap::new(),
            listed: HashMap::new(),
            last_from: None,
        };
        if tree.root.is_dir() {
            let wd = tree.watches.add(&tree.root, DIR_MASK | WatchMask::ONLYDIR)?;
            // The root's own watch first, so that an unwatchable root is an error; then the
            // tree below it, without counting what is already there.
            tree.root_wd = Some(wd);
            tree.add_tree(Path::new(""), false);
        } else {
            let wd = tree.watches.add(&tree.root, DIR_MASK)?;
            let name = tree.root.file_name().map(PathBuf::from).unwrap_or_default();
            tree.root_wd = Some(wd.clone());
            tree.dirs.insert(wd, name);
        }
        Ok((inotify, tree))
    }

    /// Watches `rel` and, if recursive, every directory below it. With `count`, everything
    /// found is counted as created (it was made after its parent's event).
    fn add_tree(&mut self, rel: &Path, count: bool) {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.filter.prunes(&dir) {
                continue;
            }
            let wd = match self.watches.add(self.root.join(&dir), DIR_MASK | WatchMask::ONLYDIR) {
                Ok(wd) => wd,
                // Gone again already, or not a directory (a symlink): nothing to watch.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
                Err(err) => {
                    warn!(watch = %self.stats.name, dir = %self.root.join(&dir).display(), error = %err, "cannot watch directory{}", hint(&err));
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if err.raw_os_error() == Some(libc::ENOSPC) {
                        // Out of watches: every other directory would fail the same way. One
                        // error and one line, not one per directory of a large tree.
                        break;
                    }
                    continue;
                }
            };
            self.dirs.insert(wd.clone(), dir.clone());
            stack.extend(self.list(&wd, &dir, count));
        }
    }

    /// Lists `dir` (watched as `wd`); returns its subdirectories when recursive.
    fn list(&mut self, wd: &WatchDescriptor, dir: &Path, count: bool) -> Vec<PathBuf> {
        let mut subdirs = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
            return subdirs;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let rel = dir.join(&name);
            if count {
                if self.filter.wanted(&rel) {
                    self.stats.count(CREATE);
                }
                self.listed.entry(wd.clone()).or_default().insert(name);
            }
            if self.recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs.push(rel);
            }
        }
        subdirs
    }

    /// Stops watching `rel` and everything below it (it moved out of the tree).
    fn forget_tree(&mut self, rel: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.starts_with(rel))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            let _ = self.watches.remove(wd.clone());
            self.dirs.remove(&wd);
            self.listed.remove(&wd);
        }
    }

    fn unlist(&mut self, wd: &WatchDescriptor, name: Option<&OsStr>) -> bool {
        match (self.listed.get_mut(wd), name) {
            (Some(set), Some(name)) => set.remove(name),
            _ => false,
        }
    }

    /// Reads events on its own thread until the root goes away (true) or `stop` (false).
    ///
    /// A thread of its own, not the async runtime: a task parked on the inotify descriptor
    /// is woken by every single event, and in a burst those wake-ups cost more than the
    /// counting. Here the thread waits in poll(2), then sleeps `COALESCE` while it is not
    /// waiting on the descriptor (so arrivals wake nobody), then drains hundreds of events
    /// per read. The kernel queue (fs.inotify.max_queued_events, 16384 by default) holds far
    /// more than arrives in that time.
    fn run_blocking(mut self, mut inotify: Inotify, stop: &StopFd) -> std::io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut fds = [
            libc::pollfd {
                fd: inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if fds[1].revents != 0 {
                return Ok(false);
            }
            std::thread::sleep(COALESCE);
            loop {
                match inotify.read_events(&mut buf) {
                    Ok(events) => {
                        for ev in events {
                            if self.on_event(ev.wd, ev.mask, ev.cookie, ev.name) {
                                return Ok(true);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(err) => return Err(err),
                }
            }
        }
    }

    /// Counts one event; true when the root itself is gone.
    fn on_event(&mut self, wd: WatchDescriptor, mask: EventMask, cookie: u32, name: Option<&OsStr>) -> bool {
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!(watch = %self.stats.name, "kernel event queue overflowed: events were lost (raise fs.inotify.max_queued_events)");
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            // Directories made during the loss are not watched yet: look again.
            if self.recursive && self.root_wd.is_some() {
                self.add_tree(Path::new(""), false);
            }
            return false;
        }
        let is_root = self.root_wd.as_ref() == Some(&wd);
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&wd);
            self.listed.remove(&wd);
            return is_root;
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            // A subdirectory's own removal was counted at its parent; the root's ends the watch.
            return is_root;
        }
        let Some(dir) = self.dirs.get(&wd) else {
            return false;
        };
        let is_dir = mask.contains(EventMask::ISDIR);
        // The path is built only when something needs it: globs, or a directory to (un)watch.
        // A plain file event under a watch without globs costs no allocation.
        let rel = (is_dir || self.filter.is_active()).then(|| match name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        });
        let rel = rel.as_deref().unwrap_or(Path::new(""));
        let kind = if mask.contains(EventMask::CREATE) {
            if self.unlist(&wd, name) {
                return false;
            }
            if is_dir && self.recursive {
                self.add_tree(rel, true);
            }
            CREATE
        } else if mask.contains(EventMask::DELETE) {
            self.unlist(&wd, name);
            REMOVE
        } else if mask.contains(EventMask::MOVED_FROM) {
            self.unlist(&wd, name);
            self.last_from = Some(cookie);
            if is_dir {
                self.forget_tree(rel);
            }
            RENAME
        } else if mask.contains(EventMask::MOVED_TO) {
            if is_dir && self.recursive {
                self.add_tree(rel, false);
            }
            if self.last_from.take() == Some(cookie) {
                return false;
            }
            RENAME
        } else if mask.contains(EventMask::MODIFY) {
            MODIFY
        } else if mask.contains(EventMask::ATTRIB) {
            OTHER
        } else {
            return false;
        };
        if !self.filter.is_active() || self.filter.wanted(rel) {
            self.stats.count(kind);
        }
        false
    }
}
