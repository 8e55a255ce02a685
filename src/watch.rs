//! File watches: notify (inotify(7)) events -> per-watch atomic counters by kind.
//!
//! Counting happens in notify's callback with atomics, so the kernel queue is drained at full
//! speed and no count waits on anything slower. A queue overflow (`IN_Q_OVERFLOW`) is counted
//! and logged: events were lost, and the metric says so. A path that does not exist (yet, or
//! any more) is retried every few seconds; the watcher knows nothing of programs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::WatchConfig;

/// How often a watch whose path is missing looks for it again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The kinds, in the order of [`WatchStats::events`].
pub const KINDS: [&str; 5] = ["create", "modify", "remove", "rename", "other"];
const CREATE: usize = 0;
const MODIFY: usize = 1;
const REMOVE: usize = 2;
const RENAME: usize = 3;
const OTHER: usize = 4;

/// A watch's live counters; written from notify's thread, read at scrape time.
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

    pub fn total(&self) -> u64 {
        self.events.iter().sum()
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

/// What applying a config did, by watch name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
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
        let mut report = ApplyReport::default();
        let old: HashMap<String, Arc<WatchStats>> = self
            .published
            .0
            .load()
            .iter()
            .map(|w| (w.name.clone(), Arc::clone(w)))
            .collect();
        let mut tasks = Vec::new();
        self.running.retain(|name, r| {
            let keep = match configs.iter().find(|c| &c.name == name) {
                None => {
                    report.stopped.push(name.clone());
                    false
                }
                Some(c) if *c != r.config => {
                    report.restarted.push(name.clone());
                    false
                }
                Some(_) => true,
            };
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (name, r) in std::mem::take(&mut self.running) {
            if report.stopped.contains(&name) || report.restarted.contains(&name) {
                tasks.push(r.task);
            } else {
                self.running.insert(name, r);
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut list = Vec::with_capacity(configs.len());
        for config in configs {
            if self.running.contains_key(&config.name)
                && let Some(stats) = old.get(&config.name)
            {
                report.unchanged.push(config.name.clone());
                list.push(Arc::clone(stats));
                continue;
            }
            let stats = match old.get(&config.name) {
                Some(s) if s.path == config.path => Arc::clone(s),
                Some(s) => {
                    // Same name, new path: the counts go on, the path shown is the new one.
                    let fresh = WatchStats::new(config);
                    for (i, e) in s.events.iter().enumerate() {
                        fresh.events[i].store(e.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    fresh
                        .overflows
                        .store(s.overflows.load(Ordering::Relaxed), Ordering::Relaxed);
                    fresh.errors.store(s.errors.load(Ordering::Relaxed), Ordering::Relaxed);
                    Arc::new(fresh)
                }
                None => {
                    report.started.push(config.name.clone());
                    Arc::new(WatchStats::new(config))
                }
            };
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

/// One watch's life: establish, count, and re-establish when the path comes back.
async fn run_watch(config: WatchConfig, stats: Arc<WatchStats>, stop: CancellationToken) {
    let include = glob_set(&config.include);
    let exclude = glob_set(&config.exclude);
    let mut said_missing = false;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let root = match std::fs::canonicalize(&config.path) {
            Ok(root) => root,
            Err(err) => {
                if !said_missing {
                    info!(watch = %config.name, path = %config.path.display(), error = %err, "watch path not there; retrying every {RETRY_EVERY:?}");
                    said_missing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        said_missing = false;
        let gone = Arc::new(Notify::new());
        let handler = Counter {
            stats: Arc::clone(&stats),
            root: root.clone(),
            include: include.clone(),
            exclude: exclude.clone(),
            gone: Arc::clone(&gone),
            last_from_cookie: None,
            last_removed: None,
        };
        let mode = if config.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let established = notify::recommended_watcher(handler).and_then(|mut w| w.watch(&root, mode).map(|()| w));
        let watcher = match established {
            Ok(w) => w,
            Err(err) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(watch = %config.name, path = %root.display(), error = %err, "{}", hint(&err));
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        stats.up.store(true, Ordering::Relaxed);
        info!(watch = %config.name, path = %root.display(), recursive = config.recursive, "watching");
        tokio::select! {
            _ = gone.notified() => {
                warn!(watch = %config.name, path = %root.display(), "watched path went away; waiting for it to come back");
            }
            _ = stop.cancelled() => {}
        }
        stats.up.store(false, Ordering::Relaxed);
        drop(watcher);
    }
    stats.up.store(false, Ordering::Relaxed);
}

fn hint(err: &notify::Error) -> String {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "cannot watch: out of inotify watches; raise the limit with `sysctl fs.inotify.max_user_watches=N`"
                .to_owned()
        }
        _ => "cannot watch".to_owned(),
    }
}

/// The notify callback. It runs on notify's thread and only touches atomics.
struct Counter {
    stats: Arc<WatchStats>,
    root: PathBuf,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    gone: Arc<Notify>,
    /// inotify cookie of the last IN_MOVED_FROM: its IN_MOVED_TO is the same rename.
    last_from_cookie: Option<usize>,
    /// A removed directory is reported twice (IN_DELETE on the parent, IN_DELETE_SELF on
    /// itself): the second report is dropped.
    last_removed: Option<PathBuf>,
}

impl Counter {
    fn wanted(&self, path: &Path) -> bool {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if let Some(ex) = &self.exclude
            && ex.is_match(rel)
        {
            return false;
        }
        match &self.include {
            Some(inc) => inc.is_match(rel),
            None => true,
        }
    }

    fn on_event(&mut self, event: notify::Event) {
        if event.need_rescan() {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            warn!(watch = %self.stats.name, "kernel event queue overflowed: events were lost (raise fs.inotify.max_queued_events)");
            return;
        }
        let Some(path) = event.paths.first() else {
            if !matches!(event.kind, EventKind::Access(_)) {
                self.stats.count(OTHER);
            }
            return;
        };
        if *path == self.root {
            // The root itself was removed or moved away: the watch is gone, not an event in it.
            if matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            ) {
                self.stats.up.store(false, Ordering::Relaxed);
                self.gone.notify_one();
            }
            return;
        }
        let kind = match event.kind {
            EventKind::Access(_) => return,
            EventKind::Create(_) => CREATE,
            EventKind::Remove(_) => {
                if self.last_removed.as_deref() == Some(path.as_path()) {
                    self.last_removed = None;
                    return;
                }
                self.last_removed = Some(path.clone());
                REMOVE
            }
            EventKind::Modify(ModifyKind::Data(_)) => MODIFY,
            // One rename is one event: counted at its IN_MOVED_FROM when the source is watched,
            // else at its IN_MOVED_TO; notify's extra "Both" event is not counted.
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                self.last_from_cookie = event.tracker();
                RENAME
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                if event.tracker().is_some() && event.tracker() == self.last_from_cookie {
                    return;
                }
                RENAME
            }
            EventKind::Modify(ModifyKind::Name(_)) => return,
            _ => OTHER,
        };
        if kind != REMOVE {
            self.last_removed = None;
        }
        if self.wanted(path) {
            self.stats.count(kind);
        }
    }
}

impl notify::EventHandler for Counter {
    fn handle_event(&mut self, event: notify::Result<notify::Event>) {
        match event {
            Ok(event) => self.on_event(event),
            Err(err) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(watch = %self.stats.name, error = %err, "{}", hint(&err));
            }
        }
    }
}
