//! File watches: inotify(7) events -> per-watch atomic counters by kind.
//!
//! Every watch shares one inotify instance, read by one thread of its own (see [`thread`]), so
//! a thousand watches cost one of the user's `fs.inotify.max_user_instances` (128 by default),
//! not a thousand. The thread counts with atomics and publishes nothing slower; the watcher
//! knows nothing of programs. What each kind counts, exactly, is in [`tree`] and the README.

mod thread;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use tokio::sync::watch;

use crate::config::{ApplyReport, WatchConfig};

/// The kinds, in the order of [`WatchReport::events`].
pub const KINDS: [&str; 5] = ["create", "modify", "remove", "rename", "other"];
const CREATE: usize = 0;
const MODIFY: usize = 1;
const REMOVE: usize = 2;
const RENAME: usize = 3;
const OTHER: usize = 4;

/// A watch's live counters; written from the watch thread, read at scrape time. Errors are
/// logged before they are counted, so that whoever sees a counter rise finds the log line.
#[derive(Debug)]
pub(crate) struct WatchStats {
    name: String,
    path: PathBuf,
    up: AtomicBool,
    events: [AtomicU64; 5],
    overflows: AtomicU64,
    errors: AtomicU64,
    /// The number of events counted so far, sent after each batch that counted any: what
    /// `on_change` waits on. Shared with the stats that replace these on a reload.
    changes: Arc<watch::Sender<u64>>,
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
            changes: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The same counts under a new path (a reload moved the watch).
    fn moved_to(&self, config: &WatchConfig) -> WatchStats {
        let load = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        WatchStats {
            events: std::array::from_fn(|i| load(&self.events[i])),
            overflows: load(&self.overflows),
            errors: load(&self.errors),
            changes: Arc::clone(&self.changes),
            ..WatchStats::new(config)
        }
    }

    /// Adds one batch's counts, by kind.
    fn add(&self, counts: &[u64; KINDS.len()]) {
        for (e, &n) in self.events.iter().zip(counts) {
            if n > 0 {
                e.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.events.iter().map(|e| e.load(Ordering::Relaxed)).sum()
    }

    /// Tells `on_change` waiters that events were counted (cheap when nobody waits).
    fn publish_changes(&self) {
        let total = self.total();
        self.changes.send_if_modified(|t| {
            let changed = *t != total;
            *t = total;
            changed
        });
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

/// A read-only view for collectors and for `on_change`.
#[derive(Clone, Default)]
pub struct WatchView(Arc<ArcSwap<Vec<Arc<WatchStats>>>>);

impl WatchView {
    pub fn reports(&self) -> Vec<WatchReport> {
        self.0.load().iter().map(|w| w.report()).collect()
    }

    /// A receiver that changes whenever the watch `name` counts events (any kind; opens and
    /// reads are never counted). `None` for a watch that is not configured.
    pub fn changes(&self, name: &str) -> Option<watch::Receiver<u64>> {
        self.0
            .load()
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.changes.subscribe())
    }
}

/// Owns the watch thread and the set of watches it runs.
#[derive(Default)]
pub struct Watches {
    published: WatchView,
    running: HashMap<String, WatchConfig>,
    thread: Option<thread::Handle>,
}

impl Watches {
    pub fn view(&self) -> WatchView {
        self.published.clone()
    }

    /// Makes the set of watches match `configs`, by name: unchanged ones keep running and
    /// counting, changed ones are re-established (their counts go on), removed ones stop.
    pub async fn apply(&mut self, configs: &[WatchConfig]) -> ApplyReport {
        let report = ApplyReport::diff(self.running.iter(), configs, |c| &c.name);
        if self.thread.is_none() && !configs.is_empty() {
            match thread::Handle::start() {
                Ok(h) => self.thread = Some(h),
                Err(err) => tracing::error!(error = %err, "cannot start the watch thread; no watch will count"),
            }
        }
        let stopping: Vec<String> = report
            .to_stop()
            .filter_map(|name| self.running.remove(name).map(|_| name.to_owned()))
            .collect();
        if let Some(t) = &self.thread {
            t.remove(stopping).await;
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
                if let Some(t) = &self.thread {
                    t.add(config.clone(), Arc::clone(&stats));
                }
                self.running.insert(config.name.clone(), config.clone());
            }
            list.push(stats);
        }
        self.published.0.store(Arc::new(list));
        report
    }

    pub async fn shutdown(&mut self) {
        self.running.clear();
        if let Some(t) = self.thread.take() {
            t.stop().await;
        }
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
        // `dir/**` excludes `dir` itself too: `.git/**` is meant to hide the repository, and
        // `.git` appearing or going is part of it.
        let exclude: Vec<String> = config
            .exclude
            .iter()
            .flat_map(|g| {
                let itself = g.strip_suffix("/**").filter(|d| !d.is_empty()).map(str::to_owned);
                std::iter::once(g.clone()).chain(itself)
            })
            .collect();
        Filter {
            include: glob_set(&config.include),
            exclude: glob_set(&exclude),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        Filter::new(&WatchConfig {
            name: "w".into(),
            path: "/".into(),
            recursive: true,
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn a_dir_glob_excludes_the_dir_itself() {
        let f = filter(&[], &[".git/**"]);
        assert!(!f.wanted(Path::new(".git")));
        assert!(!f.wanted(Path::new(".git/HEAD")));
        assert!(f.prunes(Path::new(".git")));
        assert!(f.wanted(Path::new(".gitignore")));
        assert!(f.wanted(Path::new("src/main.rs")));
    }
}
