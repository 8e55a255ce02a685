//! One watch's tree: which kernel watch is which directory, the names known in each, and how
//! inotify(7) events become counts.
//!
//! Counting is a change of what is known, not a tally of events, so that events the kernel
//! reports late, twice or not at all cannot skew it:
//! - each watched directory keeps the names it holds (a 64-bit hash and two flags per name);
//!   `create` is a name coming into it (`IN_CREATE`, or found by listing a directory made after
//!   its parent's event, or by the re-listing after a queue overflow), `remove` a name going
//!   out (`IN_DELETE`, or missing at that re-listing). A name already known is not counted
//!   again, a name not known is not counted as removed;
//! - `rename` is one per rename, counted when either name is wanted by the globs; the two
//!   halves are paired by cookie (see [`Moves`]);
//! - `modify` is one per write session of a file: a file with writes not yet counted counts
//!   once when it is closed after writing (`IN_CLOSE_WRITE`), or after [`QUIET`] without a
//!   write while it stays open. How many `IN_MODIFY` the kernel queued (it folds identical
//!   ones) does not matter, so the count is the same for the same operations. A non-empty file
//!   found by listing a new directory had writes the kernel could not report: it counts the
//!   same way;
//! - `other`: metadata changed (`IN_ATTRIB`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, WatchDescriptor, WatchMask};
use tracing::{info, warn};

use super::{CREATE, Filter, MODIFY, OTHER, REMOVE, RENAME, WatchStats};
use crate::config::WatchConfig;

/// A file kept open counts one `modify` per burst of writes; a burst ends after this long
/// without a write.
pub(super) const QUIET: Duration = Duration::from_secs(1);

const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DONT_FOLLOW);

/// A hasher for keys that are hashes already (FxHash's mixing step).
#[derive(Default)]
pub(super) struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }
}

pub(super) type Fast = BuildHasherDefault<MixHasher>;

/// A name's 64-bit FNV-1a hash, mixed. Two names of one directory share a hash with odds of
/// about n²/2⁶⁵: nothing a real directory reaches.
fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h ^= h >> 32;
    h.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

const WANTED: u8 = 1;
const IS_DIR: u8 = 2;
/// Found by a listing, not counted yet: see [`Tree::commit_pending`].
const PENDING: u8 = 4;

/// The kernel watches of the one inotify instance, and which trees use each: two watches of
/// overlapping paths share the kernel's watch of a directory, which is removed with its last user.
pub(super) struct Registry {
    watches: inotify::Watches,
    users: HashMap<i32, (WatchDescriptor, Vec<usize>), Fast>,
}

impl Registry {
    pub(super) fn new(watches: inotify::Watches) -> Registry {
        Registry {
            watches,
            users: HashMap::default(),
        }
    }

    fn add(&mut self, path: &Path, mask: WatchMask, tree: usize) -> std::io::Result<i32> {
        let wd = self.watches.add(path, mask)?;
        let id = wd.get_watch_descriptor_id();
        let users = &mut self.users.entry(id).or_insert_with(|| (wd, Vec::new())).1;
        if !users.contains(&tree) {
            users.push(tree);
        }
        Ok(id)
    }

    fn release(&mut self, wd: i32, tree: usize) {
        if let Entry::Occupied(mut e) = self.users.entry(wd) {
            e.get_mut().1.retain(|&t| t != tree);
            if e.get().1.is_empty() {
                let (wd, _) = e.remove();
                let _ = self.watches.remove(wd);
            }
        }
    }

    /// The kernel dropped `wd` (`IN_IGNORED`): the trees that used it.
    pub(super) fn forget(&mut self, wd: i32) -> Vec<usize> {
        self.users.remove(&wd).map(|(_, t)| t).unwrap_or_default()
    }

    /// The `i`th tree that uses `wd`, if there is one.
    pub(super) fn user(&self, wd: i32, i: usize) -> Option<usize> {
        self.users.get(&wd).and_then(|(_, t)| t.get(i).copied())
    }
}

/// Renames in flight, by cookie: `IN_MOVED_FROM` and `IN_MOVED_TO` of one rename share a
/// cookie, but other renames' halves may come between them. A small bounded ring: the halves
/// of a rename are queued together, so an entry is looked up within a few events; one pushed
/// out before its pair came costs at most one rename counted twice.
#[derive(Default)]
pub(super) struct Moves {
    ring: std::collections::VecDeque<Move>,
}

struct Move {
    tree: usize,
    cookie: u32,
    counted: bool,
    /// A directory that left its place: forgotten if no `IN_MOVED_TO` in the tree follows.
    dir: Option<PathBuf>,
}

const MOVES_KEPT: usize = 256;

impl Moves {
    fn push(&mut self, m: Move) {
        if self.ring.len() == MOVES_KEPT {
            self.ring.pop_front();
        }
        self.ring.push_back(m);
    }

    fn take(&mut self, tree: usize, cookie: u32) -> Option<Move> {
        let i = self.ring.iter().rposition(|m| m.tree == tree && m.cookie == cookie)?;
        self.ring.remove(i)
    }

    /// Directories that moved away with no `IN_MOVED_TO` in the queue: they left the tree.
    pub(super) fn left(&mut self) -> Vec<(usize, PathBuf)> {
        self.ring
            .iter_mut()
            .filter_map(|m| m.dir.take().map(|d| (m.tree, d)))
            .collect()
    }

    pub(super) fn drop_tree(&mut self, tree: usize) {
        self.ring.retain(|m| m.tree != tree);
    }
}

struct Dir {
    /// Relative to the root ("" is the root; a watched file's own name).
    rel: PathBuf,
    /// Name hash -> WANTED | IS_DIR.
    known: HashMap<u64, u8, Fast>,
}

struct Dirty {
    last_write: Instant,
    wanted: bool,
}

/// What an event did to the tree.
#[derive(PartialEq, Eq)]
pub(super) enum Outcome {
    Fine,
    /// The root itself went away: the tree is down until it comes back.
    RootGone,
}

pub(super) struct Tree {
    pub(super) id: usize,
    pub(super) config: WatchConfig,
    pub(super) stats: Arc<WatchStats>,
    filter: Filter,
    root: PathBuf,
    root_wd: Option<i32>,
    root_is_dir: bool,
    dirs: HashMap<i32, Dir, Fast>,
    /// Files with writes not yet counted, by (watch, name hash).
    dirty: HashMap<(i32, u64), Dirty, Fast>,
    /// No burst in `dirty` ends before this: [`Tree::expire`] scans the map only then.
    next_expiry: Option<Instant>,
    /// When to try establishing again while down.
    pub(super) retry_at: Option<Instant>,
    /// Whether what an establishing finds was made after the watch began (the root came back,
    /// or appeared after start) and is counted as created.
    count_on_establish: bool,
    said_missing: bool,
    /// The errno last logged, so that a failure repeating every retry is logged once.
    last_error: Option<i32>,
    said_too_long: bool,
    /// What was counted since the last [`Tree::publish`], by kind: a scrape sees a batch of
    /// events whole or not at all. (Counted one by one, a scrape between a batch's last event
    /// and the end of its queue could see that event counted but not the names found by
    /// listing a new directory earlier in it, which are counted at the queue's end.)
    batch: [u64; super::KINDS.len()],
    /// Names found by listing, by (watch, name hash), counted once the queue is read to its end.
    pending: Vec<(i32, u64)>,
}

pub(super) const RETRY_EVERY: Duration = Duration::from_secs(2);

impl Tree {
    pub(super) fn new(id: usize, config: WatchConfig, stats: Arc<WatchStats>) -> Tree {
        Tree {
            id,
            filter: Filter::new(&config),
            config,
            stats,
            root: PathBuf::new(),
            root_wd: None,
            root_is_dir: false,
            dirs: HashMap::default(),
            dirty: HashMap::default(),
            next_expiry: None,
            retry_at: Some(Instant::now()),
            count_on_establish: false,
            said_missing: false,
            last_error: None,
            said_too_long: false,
            batch: [0; super::KINDS.len()],
            pending: Vec::new(),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.root_wd.is_some()
    }

    fn count(&mut self, kind: usize) {
        self.batch[kind] += 1;
    }

    /// Makes the batch's counts visible to scrapes, and tells `on_change` waiters, once per
    /// batch of events.
    pub(super) fn publish(&mut self) {
        if self.batch.iter().any(|&n| n > 0) {
            self.stats.add(&std::mem::take(&mut self.batch));
            self.stats.publish_changes();
        }
    }

    /// Logs and counts `err` unless it is the one logged last.
    fn error(&mut self, err: &std::io::Error, what: &str, path: &Path) {
        let errno = err.raw_os_error().unwrap_or(0);
        if self.last_error != Some(errno) {
            warn!(watch = %self.config.name, path = %path.display(), error = %err, "{what}{}", hint(err));
            self.stats.error();
            self.last_error = Some(errno);
        }
    }

    /// Tries to watch the root (and, if recursive, everything below it).
    pub(super) fn establish(&mut self, reg: &mut Registry) {
        self.retry_at = None;
        let root = match std::fs::canonicalize(&self.config.path) {
            Ok(root) => root,
            Err(err) => {
                if !self.said_missing {
                    info!(watch = %self.config.name, path = %self.config.path.display(), error = %err, "watch path not there; retrying every {RETRY_EVERY:?}");
                    self.said_missing = true;
                }
                // Whatever is in it when it appears was made after the watch began.
                self.count_on_establish = true;
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
                return;
            }
        };
        self.said_missing = false;
        self.root = root;
        let count = std::mem::take(&mut self.count_on_establish);
        let is_dir = self.root.is_dir();
        let mask = if is_dir {
            DIR_MASK | WatchMask::ONLYDIR
        } else {
            DIR_MASK
        };
        let root = self.root.clone();
        match reg.add(&root, mask, self.id) {
            Ok(wd) => {
                let rel = if is_dir {
                    PathBuf::new()
                } else {
                    root.file_name().map(PathBuf::from).unwrap_or_default()
                };
                self.root_wd = Some(wd);
                self.root_is_dir = is_dir;
                self.dirs.insert(
                    wd,
                    Dir {
                        rel,
                        known: HashMap::default(),
                    },
                );
                if is_dir {
                    let subdirs = self.list(wd, Path::new(""), count);
                    for d in subdirs {
                        self.add_tree(reg, d, count);
                    }
                }
                self.last_error = None;
                self.stats.up.store(true, std::sync::atomic::Ordering::Relaxed);
                info!(watch = %self.config.name, path = %self.root.display(), recursive = self.config.recursive, dirs = self.dirs.len(), "watching");
            }
            Err(err) => {
                self.error(&err, "cannot watch", &root);
                self.count_on_establish = count;
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
            }
        }
    }

    /// Stops watching everything (the root went away, or the watch is removed).
    pub(super) fn take_down(&mut self, reg: &mut Registry) {
        for (wd, _) in self.dirs.drain() {
            reg.release(wd, self.id);
        }
        self.root_wd = None;
        self.root_is_dir = false;
        self.stats.up.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Down because the root went away: look for it again at once, then every few seconds.
    pub(super) fn root_gone(&mut self, reg: &mut Registry) {
        warn!(watch = %self.config.name, path = %self.root.display(), "watched path went away; waiting for it to come back");
        self.take_down(reg);
        self.count_on_establish = true;
        self.retry_at = Some(Instant::now());
    }

    /// Watches `rel` and, if recursive, every directory below it. With `count`, everything
    /// found is counted as created (it was made after its parent's event).
    fn add_tree(&mut self, reg: &mut Registry, rel: PathBuf, count: bool) {
        let mut stack = vec![rel];
        while let Some(dir) = stack.pop() {
            if self.filter.prunes(&dir) {
                continue;
            }
            let path = self.root.join(&dir);
            let wd = match reg.add(&path, DIR_MASK | WatchMask::ONLYDIR, self.id) {
                Ok(wd) => wd,
                // Gone again already, or not a directory (a symlink): nothing to watch.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
                Err(err) if err.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                    // inotify takes a path, and no path can be longer than PATH_MAX: what is
                    // below cannot be watched. One line per watch; every such directory counted.
                    if !self.said_too_long {
                        warn!(watch = %self.config.name, dir = %path.display(), "path too long for inotify (PATH_MAX is 4096 bytes): this directory and everything below it are not watched; procwatch_file_watch_errors_total counts each such directory");
                        self.said_too_long = true;
                    }
                    self.stats.error();
                    continue;
                }
                Err(err) => {
                    let out_of_watches = err.raw_os_error() == Some(libc::ENOSPC);
                    self.error(&err, "cannot watch directory", &path);
                    if out_of_watches {
                        // Every other directory would fail the same way: one error, one line.
                        break;
                    }
                    continue;
                }
            };
            // Already watched by this tree: a bind mount of a directory into itself, or a
            // directory reached twice. Its listing was done.
            if self.dirs.contains_key(&wd) {
                continue;
            }
            self.dirs.insert(
                wd,
                Dir {
                    rel: dir.clone(),
                    known: HashMap::default(),
                },
            );
            stack.extend(self.list(wd, &dir, count));
        }
    }

    /// Lists `dir` (watched as `wd`) into its known names; returns its subdirectories when
    /// recursive. With `count`, names not known yet will be counted as created (see
    /// [`Tree::commit_pending`]), and non-empty files among them as written (see the module doc).
    fn list(&mut self, wd: i32, dir: &Path, count: bool) -> Vec<PathBuf> {
        let mut subdirs = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
            return subdirs;
        };
        let now = Instant::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let rel = (is_dir || self.filter.is_active()).then(|| dir.join(&name));
            let wanted = rel.as_deref().is_none_or(|r| self.filter.wanted(r));
            let h = name_hash(name.as_bytes());
            let flags = if wanted { WANTED } else { 0 } | if is_dir { IS_DIR } else { 0 };
            let Some(d) = self.dirs.get_mut(&wd) else {
                break;
            };
            let new = !d.known.contains_key(&h);
            if count && new {
                d.known.insert(h, flags | PENDING);
                self.pending.push((wd, h));
            } else {
                d.known.insert(h, flags);
            }
            if count && new && wanted && !is_dir {
                self.written_unseen(wd, h, &entry, now);
            }
            if is_dir && self.config.recursive {
                subdirs.extend(rel);
            }
        }
        subdirs
    }

    /// A file found by listing was written where no watch could see it if it is not empty: its
    /// writes count as one `modify`, at its close or after [`QUIET`], as if they had been seen.
    fn written_unseen(&mut self, wd: i32, h: u64, entry: &std::fs::DirEntry, now: Instant) {
        if entry.metadata().is_ok_and(|m| m.len() > 0) {
            self.expiry_at(now + QUIET);
            self.dirty.insert(
                (wd, h),
                Dirty {
                    last_write: now,
                    wanted: true,
                },
            );
        }
    }

    fn expiry_at(&mut self, end: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(end, |n| n.min(end)));
    }

    /// Stops watching `rel` and everything below it (it moved out of the tree).
    pub(super) fn forget_tree(&mut self, reg: &mut Registry, rel: &Path) {
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.rel.starts_with(rel))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            reg.release(wd, self.id);
            self.dirs.remove(&wd);
        }
    }

    /// `from` (watched) is now `to`: the kernel's watches follow the directories, so only the
    /// names change.
    fn moved_tree(&mut self, reg: &mut Registry, from: &Path, to: &Path) {
        let filter_active = self.filter.is_active();
        let mut moved = Vec::new();
        for (wd, d) in self.dirs.iter_mut() {
            if let Ok(below) = d.rel.strip_prefix(from) {
                d.rel = to.join(below);
                moved.push((*wd, d.rel.clone()));
            }
        }
        if self.filter.prunes(to) {
            self.forget_tree(reg, to);
            return;
        }
        if filter_active {
            // Wanted or not depends on the path: learn the names again under their new one.
            for (wd, rel) in moved {
                if let Some(d) = self.dirs.get_mut(&wd) {
                    d.known.clear();
                }
                self.list(wd, &rel, false);
            }
        }
    }

    /// The kernel dropped `wd` (its directory is gone or unmounted).
    pub(super) fn ignored(&mut self, wd: i32) -> Outcome {
        self.dirs.remove(&wd);
        if self.root_wd == Some(wd) {
            Outcome::RootGone
        } else {
            Outcome::Fine
        }
    }

    /// Counts one event.
    pub(super) fn on_event(
        &mut self,
        reg: &mut Registry,
        moves: &mut Moves,
        wd: i32,
        mask: EventMask,
        cookie: u32,
        name: Option<&OsStr>,
    ) -> Outcome {
        let is_root = self.root_wd == Some(wd);
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            // A subdirectory's own removal is counted at its parent; the root's ends the watch.
            return if is_root { Outcome::RootGone } else { Outcome::Fine };
        }
        let Some(dir) = self.dirs.get(&wd) else {
            return Outcome::Fine;
        };
        let is_dir = mask.contains(EventMask::ISDIR);
        let h = match name {
            Some(n) => name_hash(n.as_bytes()),
            // An event of a directory itself is also reported, with its name, by its parent;
            // only the root's own (and a watched file's) are counted from here.
            None if !is_root => return Outcome::Fine,
            None => 0,
        };
        // The path is built only when something needs it: globs, or a directory to (un)watch.
        // A plain file event under a watch without globs costs no allocation.
        let rel = (is_dir || self.filter.is_active()).then(|| match name {
            Some(n) => dir.rel.join(n),
            None => dir.rel.clone(),
        });
        let rel = rel.as_deref().unwrap_or(Path::new(""));
        let wanted = |f: &Filter| !f.is_active() || f.wanted(rel);
        let pending = name.is_some() && dir.known.get(&h).is_some_and(|f| f & PENDING != 0);
        if pending && !mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            // Found by a listing, and this event is not how it came: it was created unseen.
            self.settle(wd, h);
        }

        if mask.contains(EventMask::CREATE) {
            let w = wanted(&self.filter);
            let flags = if w { WANTED } else { 0 } | if is_dir { IS_DIR } else { 0 };
            let new = self.known_insert(wd, h, flags) || pending;
            if new && w {
                self.count(CREATE);
            }
            if is_dir && self.config.recursive {
                self.add_tree(reg, rel.to_path_buf(), true);
            }
        } else if mask.contains(EventMask::DELETE) {
            if let Some(flags) = self.known_remove(wd, h)
                && flags & WANTED != 0
            {
                self.count(REMOVE);
            }
        } else if mask.contains(EventMask::MOVED_FROM) {
            let counted = self.known_remove(wd, h).is_some() && wanted(&self.filter);
            if counted {
                self.count(RENAME);
            }
            moves.push(Move {
                tree: self.id,
                cookie,
                counted,
                dir: is_dir.then(|| rel.to_path_buf()),
            });
        } else if mask.contains(EventMask::MOVED_TO) {
            let w = wanted(&self.filter);
            let flags = if w { WANTED } else { 0 } | if is_dir { IS_DIR } else { 0 };
            let new = self.known_insert(wd, h, flags) || pending;
            let pair = moves.take(self.id, cookie);
            if new && w && !pair.as_ref().is_some_and(|m| m.counted) {
                self.count(RENAME);
            }
            if is_dir && self.config.recursive {
                match pair.and_then(|m| m.dir) {
                    Some(from) => self.moved_tree(reg, &from, rel),
                    // From outside the tree: its contents were not created, they came.
                    None => self.add_tree(reg, rel.to_path_buf(), false),
                }
            }
        } else if mask.contains(EventMask::MODIFY) {
            let now = Instant::now();
            match self.dirty.entry((wd, h)) {
                Entry::Occupied(mut e) => e.get_mut().last_write = now,
                Entry::Vacant(e) => {
                    let w = !self.filter.is_active() || self.filter.wanted(rel);
                    let end = now + QUIET;
                    let next = self.next_expiry.map_or(end, |n| n.min(end));
                    self.next_expiry = Some(next);
                    e.insert(Dirty {
                        last_write: now,
                        wanted: w,
                    });
                }
            }
        } else if mask.contains(EventMask::CLOSE_WRITE) {
            if let Some(d) = self.dirty.remove(&(wd, h))
                && d.wanted
            {
                self.count(MODIFY);
            }
        } else if mask.contains(EventMask::ATTRIB) && wanted(&self.filter) {
            self.count(OTHER);
        }
        Outcome::Fine
    }

    /// Counts a name found by listing as created, if it still waits to be.
    fn settle(&mut self, wd: i32, h: u64) {
        if let Some(f) = self.dirs.get_mut(&wd).and_then(|d| d.known.get_mut(&h))
            && *f & PENDING != 0
        {
            *f &= !PENDING;
            if *f & WANTED != 0 {
                self.count(CREATE);
            }
        }
    }

    /// The queue was read to its end: every event made before the listings that found the
    /// pending names has been seen, and none said how they came (a rename into a directory
    /// being listed is a rename, not a create). What is left was created unseen.
    pub(super) fn commit_pending(&mut self) {
        for (wd, h) in std::mem::take(&mut self.pending) {
            self.settle(wd, h);
        }
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn known_insert(&mut self, wd: i32, h: u64, flags: u8) -> bool {
        self.dirs
            .get_mut(&wd)
            .is_some_and(|d| d.known.insert(h, flags).is_none())
    }

    fn known_remove(&mut self, wd: i32, h: u64) -> Option<u8> {
        self.dirs.get_mut(&wd).and_then(|d| d.known.remove(&h))
    }

    /// Counts the write bursts that ended (no write for [`QUIET`]) on files kept open; returns
    /// when the next one may end.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Instant> {
        if self.dirty.is_empty() {
            self.next_expiry = None;
            return None;
        }
        // A write only pushes its burst's end later: nothing ends before the earliest end
        // noted at an insert, so the map is not scanned on every wake-up of a busy thread.
        if let Some(next) = self.next_expiry
            && next > now
        {
            return Some(next);
        }
        let mut ended = 0;
        let mut next: Option<Instant> = None;
        self.dirty.retain(|_, d| {
            let end = d.last_write + QUIET;
            if end <= now {
                ended += u64::from(d.wanted);
                false
            } else {
                next = Some(next.map_or(end, |n| n.min(end)));
                true
            }
        });
        for _ in 0..ended {
            self.count(MODIFY);
        }
        self.next_expiry = next;
        next
    }

    /// After a queue overflow: lists every watched directory again and counts what changed
    /// unseen (names that came: `create`, once the queue is read to its end; names that went:
    /// `remove`). Returns (created, removed) as found by the listing.
    pub(super) fn resync(&mut self, reg: &mut Registry) -> (u64, u64) {
        let (mut created, mut removed) = (0, 0);
        if !self.root_is_dir {
            return (0, 0);
        }
        if !self.root.is_dir() {
            // Its IN_IGNORED may have been lost with the rest.
            self.root_gone(reg);
            return (0, 0);
        }
        let dirs: Vec<(i32, PathBuf)> = self.dirs.iter().map(|(wd, d)| (*wd, d.rel.clone())).collect();
        let now = Instant::now();
        for (wd, rel) in dirs {
            let Some(mut old) = self.dirs.get_mut(&wd).map(|d| std::mem::take(&mut d.known)) else {
                continue;
            };
            let mut fresh: HashMap<u64, u8, Fast> = HashMap::default();
            let mut new_dirs = Vec::new();
            match std::fs::read_dir(self.root.join(&rel)) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let name = entry.file_name();
                        let h = name_hash(name.as_bytes());
                        if let Some(flags) = old.remove(&h) {
                            fresh.insert(h, flags);
                            continue;
                        }
                        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                        let child = rel.join(&name);
                        let wanted = !self.filter.is_active() || self.filter.wanted(&child);
                        fresh.insert(
                            h,
                            if wanted { WANTED } else { 0 } | if is_dir { IS_DIR } else { 0 } | PENDING,
                        );
                        self.pending.push((wd, h));
                        if wanted {
                            created += 1;
                            if !is_dir {
                                self.written_unseen(wd, h, &entry, now);
                            }
                        }
                        if is_dir && self.config.recursive {
                            new_dirs.push(child);
                        }
                    }
                }
                Err(_) => {
                    // The directory itself is gone: all it held went with it.
                    reg.release(wd, self.id);
                    self.dirs.remove(&wd);
                }
            }
            for (_, flags) in old {
                if flags & WANTED != 0 {
                    if flags & PENDING != 0 {
                        self.count(CREATE);
                    }
                    self.count(REMOVE);
                    removed += 1;
                }
            }
            if let Some(d) = self.dirs.get_mut(&wd) {
                d.known = fresh;
            }
            for d in new_dirs {
                self.add_tree(reg, d, true);
            }
        }
        (created, removed)
    }

    /// A mount appeared at `at` (absolute): if it is inside the tree, the directory under it
    /// is hidden and its watch sees nothing more. Watch the mounted directory instead.
    pub(super) fn mounted(&mut self, reg: &mut Registry, at: &Path) -> bool {
        let Ok(rel) = at.strip_prefix(&self.root) else {
            return false;
        };
        if !self.is_up() || self.filter.prunes(rel) {
            return false;
        }
        if rel.as_os_str().is_empty() {
            warn!(watch = %self.config.name, path = %at.display(), "a file system was mounted on the watched path: watching it from now on; changes made before this line were not seen");
            self.stats.error();
            self.take_down(reg);
            self.retry_at = Some(Instant::now());
            return true;
        }
        let watched_parent = rel.parent().is_some_and(|p| self.dirs.values().any(|d| d.rel == p));
        if !watched_parent || !self.config.recursive {
            return false;
        }
        warn!(watch = %self.config.name, path = %at.display(), "a file system was mounted inside the watch: inotify does not see through a mount made after a directory was watched; watching the mount from now on (changes made before this line were not seen)");
        self.add_tree(reg, rel.to_path_buf(), false);
        // Counted once the mount's watches exist: a client that sees the count can rely on
        // what it does in the mount from then on being seen.
        self.stats.error();
        true
    }
}

fn hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOSPC) => "; out of inotify watches: raise the limit with `sysctl fs.inotify.max_user_watches=N`",
        Some(libc::EMFILE) => {
            "; out of inotify instances: raise the limit with `sysctl fs.inotify.max_user_instances=N`"
        }
        _ => "",
    }
}

pub(super) fn hint_for(err: &std::io::Error) -> &'static str {
    hint(err)
}
