//! The watch thread: one inotify instance for every watch, read on a thread of its own.
//!
//! A thread, not the async runtime: a task parked on the inotify descriptor is woken by every
//! single event, and in a burst those wake-ups cost more than the counting. Here the thread
//! waits in poll(2), then sleeps [`COALESCE`] while it is not waiting on the descriptor (so
//! arrivals wake nobody), then drains hundreds of events per read. Setting up a watch (the
//! tree walk) happens here too, never on the async workers.
//!
//! One instance means one kernel queue (`fs.inotify.max_queued_events`, 16384 by default) for
//! all watches: when it overflows, every watch counts the overflow and lists its tree again.
//! The thread also polls /proc/self/mountinfo, which wakes it when a mount is made: inotify
//! does not see through a mount made over a watched directory.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify};
use tracing::{error, warn};

use super::WatchStats;
use super::tree::{Moves, Outcome, Registry, Tree};
use crate::config::WatchConfig;

/// How long the thread lets events gather after a wake-up before reading them.
const COALESCE: Duration = Duration::from_millis(2);

enum Command {
    Add(WatchConfig, Arc<WatchStats>),
    Remove(Vec<String>, tokio::sync::oneshot::Sender<()>),
    Stop,
}

/// An eventfd that wakes the thread for a command.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        // SAFETY: plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// The async side's handle on the thread.
pub(super) struct Handle {
    tx: mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub(super) fn start() -> std::io::Result<Handle> {
        let wake = Arc::new(EventFd::new()?);
        let (tx, rx) = mpsc::channel();
        let thread_wake = Arc::clone(&wake);
        let thread = std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || Watcher::new(rx, thread_wake).run())?;
        Ok(Handle {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    fn send(&self, c: Command) {
        if self.tx.send(c).is_ok() {
            self.wake.signal();
        }
    }

    pub(super) fn add(&self, config: WatchConfig, stats: Arc<WatchStats>) {
        self.send(Command::Add(config, stats));
    }

    /// Stops the named watches; returns once they no longer count.
    pub(super) async fn remove(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Remove(names, tx));
        let _ = rx.await;
    }

    pub(super) async fn stop(mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Watcher {
    rx: mpsc::Receiver<Command>,
    wake: Arc<EventFd>,
    inotify: Option<(Inotify, Registry)>,
    /// When inotify_init failed: the errno logged, and when to try again.
    init_failed: Option<(i32, Instant)>,
    trees: Vec<Option<Tree>>,
    by_name: HashMap<String, usize>,
    moves: Moves,
    mounts: Option<Mounts>,
}

impl Watcher {
    fn new(rx: mpsc::Receiver<Command>, wake: Arc<EventFd>) -> Watcher {
        Watcher {
            rx,
            wake,
            inotify: None,
            init_failed: None,
            trees: Vec::new(),
            by_name: HashMap::new(),
            moves: Moves::default(),
            mounts: Mounts::open(),
        }
    }

    fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if !self.commands() {
                break;
            }
            self.ensure_inotify();
            let now = Instant::now();
            let mut next: Option<Instant> = self.init_failed.map(|(_, at)| at);
            let mut soonest = |t: Option<Instant>| {
                if let Some(t) = t {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            };
            let mut listed = false;
            for tree in self.trees.iter_mut().flatten() {
                if let Some((_, reg)) = self.inotify.as_mut()
                    && tree.retry_at.is_some_and(|t| t <= now)
                {
                    tree.establish(reg);
                    listed |= tree.has_pending();
                }
                soonest(tree.retry_at);
                soonest(tree.expire(now));
                tree.publish();
            }
            if listed {
                // What a root that came back holds is counted once the queue is read.
                self.drain(&mut buf);
            }
            let timeout = next.map_or(-1, |t| {
                let ms = t.saturating_duration_since(Instant::now()).as_millis();
                i32::try_from(ms + 1).unwrap_or(i32::MAX)
            });
            let mut fds = [
                pollfd(self.wake.0.as_raw_fd(), libc::POLLIN),
                pollfd(self.inotify.as_ref().map_or(-1, |(i, _)| i.as_raw_fd()), libc::POLLIN),
                pollfd(self.mounts.as_ref().map_or(-1, |m| m.file.as_raw_fd()), libc::POLLPRI),
            ];
            // SAFETY: `fds` is a valid array of pollfds; negative fds are ignored by poll(2).
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    error!(error = %err, "poll failed in the watch thread");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if fds[0].revents != 0 {
                self.wake.clear();
            }
            if fds[2].revents != 0 {
                self.on_mounts();
                for tree in self.trees.iter_mut().flatten() {
                    tree.publish();
                }
            }
            if fds[1].revents != 0 {
                std::thread::sleep(COALESCE);
                self.drain(&mut buf);
            }
        }
        for t in self.trees.iter_mut().flatten() {
            if let Some((_, reg)) = self.inotify.as_mut() {
                t.take_down(reg);
            }
        }
    }

    /// Applies queued commands; false on stop.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Command::Add(config, stats) => {
                    let id = self.trees.iter().position(Option::is_none).unwrap_or_else(|| {
                        self.trees.push(None);
                        self.trees.len() - 1
                    });
                    self.by_name.insert(config.name.clone(), id);
                    self.trees[id] = Some(Tree::new(id, config, stats));
                }
                Command::Remove(names, done) => {
                    for name in names {
                        if let Some(id) = self.by_name.remove(&name)
                            && let Some(mut t) = self.trees[id].take()
                        {
                            if let Some((_, reg)) = self.inotify.as_mut() {
                                t.take_down(reg);
                            }
                            t.stats.up.store(false, std::sync::atomic::Ordering::Relaxed);
                            self.moves.drop_tree(id);
                        }
                    }
                    let _ = done.send(());
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn ensure_inotify(&mut self) {
        if self.inotify.is_some() || self.trees.iter().all(Option::is_none) {
            return;
        }
        if self.init_failed.is_some_and(|(_, at)| at > Instant::now()) {
            return;
        }
        match Inotify::init() {
            Ok(i) => {
                let reg = Registry::new(i.watches());
                self.inotify = Some((i, reg));
                self.init_failed = None;
            }
            Err(err) => {
                let errno = err.raw_os_error().unwrap_or(0);
                if self.init_failed.is_none_or(|(e, _)| e != errno) {
                    error!(error = %err, "cannot start inotify; no watch counts until it can{}", super::tree::hint_for(&err));
                    for t in self.trees.iter().flatten() {
                        t.stats.error();
                    }
                }
                self.init_failed = Some((errno, Instant::now() + super::tree::RETRY_EVERY));
            }
        }
    }

    fn drain(&mut self, buf: &mut [u8]) {
        let Some((inotify, reg)) = self.inotify.as_mut() else {
            return;
        };
        loop {
            let events = match inotify.read_events(buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    error!(error = %err, "cannot read inotify events");
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow(&mut self.trees, reg);
                    continue;
                }
                let wd = ev.wd.get_watch_descriptor_id();
                if ev.mask.contains(EventMask::IGNORED) {
                    for t in reg.forget(wd) {
                        if let Some(tree) = self.trees[t].as_mut()
                            && tree.ignored(wd) == Outcome::RootGone
                        {
                            tree.root_gone(reg);
                        }
                    }
                    continue;
                }
                // Usually one tree; more where watches overlap. Looked up again each time,
                // since counting may change who uses `wd`.
                let mut i = 0;
                while let Some(t) = reg.user(wd, i) {
                    i += 1;
                    let Some(tree) = self.trees[t].as_mut() else {
                        continue;
                    };
                    if tree.on_event(reg, &mut self.moves, wd, ev.mask, ev.cookie, ev.name) == Outcome::RootGone {
                        tree.root_gone(reg);
                        // It no longer uses `wd`: the next user moved into its place.
                        i -= 1;
                    }
                }
            }
        }
        // The queue is empty: names found by listing that no event explained were created
        // unseen, and a directory that moved away with no `IN_MOVED_TO` left the tree.
        for tree in self.trees.iter_mut().flatten() {
            tree.commit_pending();
        }
        for (t, rel) in self.moves.left() {
            if let Some(tree) = self.trees[t].as_mut() {
                tree.forget_tree(reg, &rel);
            }
        }
        for tree in self.trees.iter_mut().flatten() {
            tree.publish();
        }
    }

    fn on_mounts(&mut self) {
        let Some(m) = self.mounts.as_mut() else {
            return;
        };
        let new = m.changed();
        let Some((_, reg)) = self.inotify.as_mut() else {
            return;
        };
        for at in new {
            for tree in self.trees.iter_mut().flatten() {
                tree.mounted(reg, &at);
            }
        }
    }
}

/// Every established tree lost events: count the overflow and list the tree again.
fn overflow(trees: &mut [Option<Tree>], reg: &mut Registry) {
    let (mut created, mut removed, mut watches) = (0, 0, 0);
    for tree in trees.iter_mut().flatten() {
        if !tree.is_up() {
            continue;
        }
        tree.stats.overflows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (c, r) = tree.resync(reg);
        created += c;
        removed += r;
        watches += 1;
    }
    warn!(
        watches,
        created,
        removed,
        "inotify queue overflowed (fs.inotify.max_queued_events): events were lost; every watch was listed again and counted what changed unseen (creates and removes are exact again; modifies, renames and metadata changes in the gap are not)"
    );
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// /proc/self/mountinfo, which poll(2) marks with POLLPRI when the mount table changes.
struct Mounts {
    file: std::fs::File,
    known: HashSet<PathBuf>,
}

impl Mounts {
    fn open() -> Option<Mounts> {
        let file = std::fs::File::open("/proc/self/mountinfo").ok()?;
        let mut m = Mounts {
            file,
            known: HashSet::new(),
        };
        m.known = m.read();
        Some(m)
    }

    fn read(&mut self) -> HashSet<PathBuf> {
        use std::io::Seek;
        let mut text = String::new();
        if self.file.seek(std::io::SeekFrom::Start(0)).is_err() || self.file.read_to_string(&mut text).is_err() {
            return self.known.clone();
        }
        // proc(5): the fifth field is the mount point, with octal escapes for space, tab,
        // newline and backslash.
        text.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape(p)))
            .collect()
    }

    /// Mount points that appeared since the last call.
    fn changed(&mut self) -> Vec<PathBuf> {
        let now = self.read();
        let new = now.difference(&self.known).cloned().collect();
        self.known = now;
        new
    }
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(super::unescape("/a\\040b/c\\134d"), "/a b/c\\d");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
