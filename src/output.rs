//! Captured output: each run's stdout and stderr come through pipes into one reader thread,
//! which frames lines, passes each on (to procwatch's stdout behind the program's name, or to a
//! file with size rotation), counts them, and keeps the last lines of every program.
//!
//! procwatch's own stdout and stderr are [`Sink`]s: a bounded queue and a writer thread, so that
//! nobody waits on a reader who stopped reading. Program lines wait for room (the reader thread
//! stops reading the pipes bound for stdout, and the programs block on their own output, as on
//! a terminal); procwatch's own lines (its log, the status report) are dropped and counted.
//!
//! One thread with epoll(7) serves every pipe: a read costs one `read(2)` of up to 64 KiB and one
//! `epoll_ctl(2)` re-arm (EPOLLONESHOT), so one thread passes on far more than a core's worth of
//! programs can write (see the benchmark), and 1000 idle programs cost no thread each.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc};

use crate::config::{FileOutput, OutputConfig};

/// A line longer than this is cut here; the rest, up to its newline, is dropped and the cut is
/// counted (`procwatch_process_log_truncated_lines_total`). Docker's log drivers split at 16 KiB too.
pub const MAX_LINE: usize = 16 * 1024;
/// The last lines of each program, at most this many bytes (text plus an 11-byte header per
/// line): about 100 lines of 70 characters, and 8 MiB for 1000 programs that all talk.
pub const RING_BYTES: usize = 8 * 1024;
/// Longest text kept in the ring per line (the full line still goes to stdout or the file).
const RING_LINE: usize = 2 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// procwatch's own stdout or stderr queue; writes that do not fit wait (program lines) or are
/// dropped and counted (procwatch's log and status report).
const SINK_BYTES: usize = 256 * 1024;
/// Lines queued for one `follow` subscriber before it is counted as having skipped lines.
const FOLLOW_QUEUE: usize = 1024;

/// Which of a program's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the program's output since procwatch started (over every run), from 0.
    pub seq: u64,
    /// When procwatch read it.
    pub time: SystemTime,
    pub stream: Stream,
    /// The line without its newline, as UTF-8 (invalid bytes replaced); at most 2 KiB here.
    pub text: String,
}

/// Lines a follower gets at once.
#[derive(Debug, Default)]
pub struct Followed {
    pub lines: Vec<LogLine>,
    /// Lines the follower missed because it read too slowly.
    pub skipped: u64,
}

/// Counters of one stream of one program.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamCounts {
    pub lines: u64,
    pub bytes: u64,
    pub truncated: u64,
}

/// A program's captured output, kept by name across runs and reloads (like its counters).
#[derive(Debug)]
pub struct ProgramOutput {
    name: String,
    lines: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    truncated: [AtomicU64; 2],
    /// Unix time of the last line, in ms; 0 before the first.
    last_output_ms: AtomicU64,
    /// Lock order: `ring`, then `followers`. Held by the reader thread for one chunk (no I/O).
    ring: Mutex<Ring>,
    followers: Mutex<Vec<Follower>>,
    n_followers: AtomicUsize,
    /// The file this program writes to, shared by its runs so that rotation sees every line.
    file: Mutex<Option<Arc<FileDest>>>,
}

#[derive(Debug)]
struct Follower {
    tx: mpsc::Sender<LogLine>,
    skipped: Arc<AtomicU64>,
}

impl ProgramOutput {
    pub fn new(name: &str) -> ProgramOutput {
        ProgramOutput {
            name: name.to_owned(),
            lines: Default::default(),
            bytes: Default::default(),
            truncated: Default::default(),
            last_output_ms: AtomicU64::new(0),
            ring: Mutex::new(Ring::default()),
            followers: Mutex::new(Vec::new()),
            n_followers: AtomicUsize::new(0),
            file: Mutex::new(None),
        }
    }

    pub fn counts(&self, stream: Stream) -> StreamCounts {
        let i = stream.index();
        StreamCounts {
            lines: self.lines[i].load(Ordering::Relaxed),
            bytes: self.bytes[i].load(Ordering::Relaxed),
            truncated: self.truncated[i].load(Ordering::Relaxed),
        }
    }

    /// When the program last wrote a line; `None` before the first.
    pub fn last_output(&self) -> Option<SystemTime> {
        match self.last_output_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// The last `n` lines kept (both streams, oldest first); fewer if the ring holds fewer.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        lock(&self.ring).lines(n, |_| true)
    }

    /// At most `n` of the lines kept after line `seq` (the newest if more are kept): how a
    /// polling follower (`ctl logs -f`) asks for what it has not seen.
    pub fn after(&self, seq: u64, n: usize) -> Vec<LogLine> {
        lock(&self.ring).lines(n, |l| l.seq > seq)
    }

    /// The text of the last `n` stderr lines written since line `since` (a [`Run::first_seq`]).
    pub fn last_stderr(&self, since: u64, n: usize) -> Vec<String> {
        lock(&self.ring)
            .lines(n, |l| l.stream == Stream::Stderr && l.seq >= since)
            .into_iter()
            .map(|l| l.text)
            .collect()
    }

    /// The last `n` lines, then every new line as it comes; drop the `Follow` to stop.
    pub fn follow(&self, n: usize) -> Follow {
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        let skipped = Arc::new(AtomicU64::new(0));
        // Under the ring's lock: no line falls between the backlog and the subscription.
        let ring = lock(&self.ring);
        let backlog = ring.lines(n, |_| true);
        let mut followers = lock(&self.followers);
        followers.retain(|f| !f.tx.is_closed());
        followers.push(Follower {
            tx,
            skipped: Arc::clone(&skipped),
        });
        self.n_followers.store(followers.len(), Ordering::Relaxed);
        drop(followers);
        drop(ring);
        Follow {
            backlog: Some(backlog),
            rx,
            skipped,
        }
    }

    fn file_dest(&self, spec: &FileOutput) -> Arc<FileDest> {
        let mut file = lock(&self.file);
        match &*file {
            Some(f) if f.spec == *spec => Arc::clone(f),
            _ => {
                let f = Arc::new(FileDest {
                    spec: spec.clone(),
                    state: Mutex::new(None),
                });
                *file = Some(Arc::clone(&f));
                f
            }
        }
    }
}

/// A subscription to a program's new lines, made by [`ProgramOutput::follow`].
pub struct Follow {
    backlog: Option<Vec<LogLine>>,
    rx: mpsc::Receiver<LogLine>,
    skipped: Arc<AtomicU64>,
}

impl Follow {
    /// The backlog first, then whatever came since (waiting for at least one line); `None` once
    /// the program is gone from the config.
    pub async fn next(&mut self) -> Option<Followed> {
        if let Some(lines) = self.backlog.take() {
            return Some(Followed { lines, skipped: 0 });
        }
        let first = self.rx.recv().await?;
        let mut lines = vec![first];
        while lines.len() < FOLLOW_QUEUE {
            match self.rx.try_recv() {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        Some(Followed {
            lines,
            skipped: self.skipped.swap(0, Ordering::Relaxed),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

// ---- the ring of last lines ----

/// Record: time in ms (8 bytes LE), stream (1), text length (2 LE), text.
const HEADER: usize = 11;

/// The last lines of a program in one bounded byte buffer: no allocation per line.
#[derive(Debug, Default)]
struct Ring {
    buf: VecDeque<u8>,
    /// Lines held; they are the last `count` of `next_seq`.
    count: usize,
    next_seq: u64,
}

impl Ring {
    fn push(&mut self, time_ms: u64, stream: Stream, text: &[u8]) {
        let text = &text[..text.len().min(RING_LINE)];
        let need = HEADER + text.len();
        while self.count > 0 && self.buf.len() + need > RING_BYTES {
            let len = u16::from_le_bytes([self.buf[9], self.buf[10]]) as usize;
            self.buf.drain(..HEADER + len);
            self.count -= 1;
        }
        if self.buf.capacity() < RING_BYTES {
            // One allocation per program, the first time it writes.
            self.buf.reserve_exact(RING_BYTES - self.buf.len());
        }
        self.buf.extend(time_ms.to_le_bytes());
        self.buf.push_back(stream as u8);
        self.buf.extend((text.len() as u16).to_le_bytes());
        self.buf.extend(text);
        self.count += 1;
        self.next_seq += 1;
    }

    /// The last `n` lines that pass `keep`, oldest first.
    fn lines(&self, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
        let mut all = Vec::with_capacity(self.count);
        let mut at = 0;
        let mut seq = self.next_seq - self.count as u64;
        let (a, b) = self.buf.as_slices();
        let byte = |i: usize| if i < a.len() { a[i] } else { b[i - a.len()] };
        while at < self.buf.len() {
            let mut ms = [0u8; 8];
            for (k, m) in ms.iter_mut().enumerate() {
                *m = byte(at + k);
            }
            let stream = if byte(at + 8) == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            let len = u16::from_le_bytes([byte(at + 9), byte(at + 10)]) as usize;
            let text: Vec<u8> = (at + HEADER..at + HEADER + len).map(byte).collect();
            let line = LogLine {
                seq,
                time: UNIX_EPOCH + Duration::from_millis(u64::from_le_bytes(ms)),
                stream,
                text: String::from_utf8_lossy(&text).into_owned(),
            };
            if keep(&line) {
                all.push(line);
            }
            at += HEADER + len;
            seq += 1;
        }
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
        all
    }
}

// ---- line framing ----

/// Splits a stream of bytes into lines: never merges two, never splits one below `MAX_LINE`.
#[derive(Debug, Default)]
pub struct Framer {
    partial: Vec<u8>,
    /// The start of an over-long line was passed on (cut); drop the rest up to its newline.
    discarding: bool,
}

impl Framer {
    /// Passes each complete line of `chunk` (without its newline) to `emit(line, cut)`.
    pub fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while let Some(i) = memchr::memchr(b'\n', chunk) {
            let piece = &chunk[..i];
            chunk = &chunk[i + 1..];
            if self.discarding {
                self.discarding = false;
            } else if self.partial.is_empty() {
                match piece.get(..MAX_LINE) {
                    Some(head) if piece.len() > MAX_LINE => emit(head, true),
                    _ => emit(piece, false),
                }
            } else {
                let room = MAX_LINE - self.partial.len();
                let cut = piece.len() > room;
                self.partial.extend_from_slice(&piece[..piece.len().min(room)]);
                emit(&self.partial, cut);
                self.partial.clear();
            }
        }
        if !chunk.is_empty() && !self.discarding {
            let room = MAX_LINE - self.partial.len();
            if chunk.len() > room {
                self.partial.extend_from_slice(&chunk[..room]);
                emit(&self.partial, true);
                self.partial.clear();
                self.discarding = true;
            } else {
                self.partial.extend_from_slice(chunk);
            }
        }
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
    }

    /// At end of stream: a last line without a newline is still a line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(&self.partial, false);
        }
        self.partial = Vec::new();
        self.discarding = false;
    }
}

// ---- files with size rotation ----

#[derive(Debug)]
struct FileDest {
    spec: FileOutput,
    /// Opened by the reader thread on the first write; `None` until then (or after an error).
    state: Mutex<Option<RotatingFile>>,
}

#[derive(Debug)]
struct RotatingFile {
    file: std::fs::File,
    size: u64,
}

impl FileDest {
    /// Writes whole lines; rotates before a line that would take the file past `max_size`.
    fn write(&self, mut block: &[u8]) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.is_none() {
            *state = Some(self.open()?);
        }
        let Some(f) = state.as_mut() else { unreachable!() };
        while !block.is_empty() {
            // The longest run of whole lines that fits.
            let room = self.spec.max_size.saturating_sub(f.size) as usize;
            let mut take = 0;
            while take < block.len() {
                let end = memchr::memchr(b'\n', &block[take..]).map_or(block.len(), |i| take + i + 1);
                if end > room {
                    break;
                }
                take = end;
            }
            if take == 0 {
                if f.size == 0 {
                    // A line longer than max_size: a file of its own.
                    take = memchr::memchr(b'\n', block).map_or(block.len(), |i| i + 1);
                } else {
                    self.rotate(f)?;
                    continue;
                }
            }
            f.file.write_all(&block[..take])?;
            f.size += take as u64;
            block = &block[take..];
        }
        Ok(())
    }

    fn open(&self) -> io::Result<RotatingFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { file, size })
    }

    /// `PATH` -> `PATH.1` -> ... -> `PATH.<max_files-1>`, the oldest removed: `max_files` files
    /// in all, counting the one being written, as Docker's `max-file`.
    fn rotate(&self, f: &mut RotatingFile) -> io::Result<()> {
        let path = &self.spec.path;
        let numbered = |n: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let keep = self.spec.max_files.saturating_sub(1);
        if keep == 0 {
            f.file.set_len(0)?;
            f.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(path, numbered(1))?;
        *f = self.open()?;
        Ok(())
    }
}

// ---- procwatch's own stdout and stderr ----

/// procwatch's own stdout or stderr: a bounded queue drained by a writer thread, so that a
/// reader who stops reading stalls no one.
pub struct Sink {
    fd: RawFd,
    /// A regular file cannot be stalled by a reader: written at once, in the caller's thread,
    /// so that a log record is on disk before what it reports is published.
    direct: bool,
    state: Mutex<SinkState>,
    /// Signalled when there is something to write.
    ready: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    idle: Condvar,
    what: &'static str,
}

#[derive(Default)]
struct SinkState {
    queue: Vec<u8>,
    writing: bool,
    /// The reader thread waits for room (its eventfd is written when there is some).
    waiter: Option<RawFd>,
    dropped: u64,
    reported: u64,
}

static STDOUT: OnceLock<Arc<Sink>> = OnceLock::new();
static STDERR: OnceLock<Arc<Sink>> = OnceLock::new();

/// procwatch's stdout: program lines and the status report go through here.
pub fn stdout() -> &'static Arc<Sink> {
    STDOUT.get_or_init(|| Sink::start(libc::STDOUT_FILENO, "stdout"))
}

/// procwatch's stderr: its own log goes through here.
pub fn stderr() -> &'static Arc<Sink> {
    STDERR.get_or_init(|| Sink::start(libc::STDERR_FILENO, "stderr"))
}

/// Waits up to `timeout` for what is queued for procwatch's stdout and stderr to be written.
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for sink in [STDOUT.get(), STDERR.get()].into_iter().flatten() {
        sink.flush(deadline);
    }
}

impl Sink {
    fn start(fd: RawFd, what: &'static str) -> Arc<Sink> {
        // SAFETY: fstat fills a plain struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let direct = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let sink = Arc::new(Sink {
            fd,
            direct,
            state: Mutex::new(SinkState::default()),
            ready: Condvar::new(),
            idle: Condvar::new(),
            what,
        });
        let writer = Arc::clone(&sink);
        let spawned = std::thread::Builder::new()
            .name(format!("procwatch-{what}"))
            .spawn(move || writer.write_forever());
        if spawned.is_err() {
            // No writer: everything pushed is dropped and counted; nothing blocks.
            lock(&sink.state).waiter = None;
        }
        sink
    }

    /// Queues `bytes` whole if there is room; otherwise drops them and counts one drop.
    pub fn try_push(&self, bytes: &[u8]) -> bool {
        let mut st = lock(&self.state);
        if self.direct_write(&st, bytes) {
            return true;
        }
        if !st.queue.is_empty() && st.queue.len() + bytes.len() > SINK_BYTES {
            st.dropped += 1;
            return false;
        }
        st.queue.extend_from_slice(bytes);
        self.ready.notify_one();
        true
    }

    /// Queues `bytes` whole if there is room; otherwise returns false and writes `waker` (an
    /// eventfd) once there is room.
    fn push_or_wait(&self, bytes: &[u8], waker: RawFd) -> bool {
        let mut st = lock(&self.state);
        if self.direct_write(&st, bytes) {
            return true;
        }
        if !st.queue.is_empty() && st.queue.len() + bytes.len() > SINK_BYTES {
            st.waiter = Some(waker);
            return false;
        }
        st.queue.extend_from_slice(bytes);
        self.ready.notify_one();
        true
    }

    /// Writes at once to a regular file when nothing is queued before (under the lock: in order).
    fn direct_write(&self, st: &SinkState, bytes: &[u8]) -> bool {
        if self.direct && st.queue.is_empty() && !st.writing {
            write_all_fd(self.fd, bytes);
            return true;
        }
        false
    }

    /// Records procwatch could not queue (dropped), since it started.
    pub fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }

    fn flush(&self, deadline: Instant) {
        let mut st = lock(&self.state);
        while !st.queue.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self.idle.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn write_forever(&self) {
        let mut batch = Vec::new();
        loop {
            let mut st = lock(&self.state);
            st.writing = false;
            while st.queue.is_empty() {
                self.idle.notify_all();
                st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::swap(&mut st.queue, &mut batch);
            st.writing = true;
            if let Some(waker) = st.waiter.take() {
                wake(waker);
            }
            let unreported = st.dropped - st.reported;
            st.reported = st.dropped;
            drop(st);
            write_all_fd(self.fd, &batch);
            batch.clear();
            if batch.capacity() > 4 * SINK_BYTES {
                batch = Vec::new();
            }
            if unreported > 0 {
                // Into the stderr sink: never blocks, even when that is this sink.
                tracing::warn!(
                    dropped = unreported,
                    "procwatch's {} was not being read: records of procwatch's own dropped",
                    self.what
                );
            }
        }
    }
}

/// Writes everything it can; a closed or broken descriptor drops the rest (SIGPIPE is ignored
/// by Rust programs, so a closed pipe is EPIPE here).
fn write_all_fd(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    // A non-blocking descriptor someone else set up: wait until it can take more.
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 1000) };
                    continue;
                }
                _ => return,
            }
        }
        bytes = &bytes[n as usize..];
    }
}

/// A `tracing` writer into procwatch's stderr sink: one record per event, whole or not at all.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

pub struct LogRecord(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogRecord;
    fn make_writer(&'a self) -> LogRecord {
        LogRecord(Vec::new())
    }
}

impl io::Write for LogRecord {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogRecord {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            stderr().try_push(&self.0);
        }
    }
}

// ---- pipes and the reader thread ----

/// The child's ends of one run's stdout and stderr, to be made its fds 1 and 2 (dup2(2) clears
/// their O_CLOEXEC).
#[derive(Debug)]
pub struct ChildStdio {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// One run's capture: the child's ends until the spawn takes them, and a way to wait until
/// everything the run wrote has been read.
pub struct Run {
    stdio: Option<ChildStdio>,
    state: Arc<RunState>,
    first_seq: u64,
}

#[derive(Debug, Default)]
struct RunState {
    /// Pipes of this run not yet at end of file.
    open: AtomicUsize,
    done: Notify,
}

impl Run {
    /// The child's ends, for the spawn (once).
    pub fn take_stdio(&mut self) -> Option<ChildStdio> {
        self.stdio.take()
    }

    /// The seq of the first line this run may have written.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Waits until both pipes are at end of file (every process holding them is gone) or
    /// `timeout` passes (a descendant that left the group may hold them; it is still read).
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.state.done.notified();
                if self.state.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[derive(Debug, Clone)]
enum Dest {
    Stdout,
    File(Arc<FileDest>),
}

/// The output side of procwatch: one reader thread for every program's pipes.
pub struct Output {
    shared: Arc<Shared>,
}

struct Shared {
    epoll: OwnedFd,
    /// An eventfd: new pipes to watch, or room in the stdout sink.
    wake: OwnedFd,
    /// Pipes made by `attach`, handed to the reader thread.
    new: Mutex<Vec<Pipe>>,
    /// Width of the name column: the longest program name configured.
    width: AtomicUsize,
}

const WAKE_TOKEN: u64 = u64::MAX;

impl Output {
    /// Starts the reader thread.
    pub fn start() -> io::Result<Arc<Output>> {
        // SAFETY: plain syscalls; the fds are owned right away.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )?;
        let shared = Arc::new(Shared {
            epoll,
            wake,
            new: Mutex::new(Vec::new()),
            width: AtomicUsize::new(0),
        });
        let reader = Reader {
            shared: Arc::clone(&shared),
            pipes: HashMap::new(),
            parked: Vec::new(),
            next_token: 0,
        };
        std::thread::Builder::new()
            .name("procwatch-output".into())
            .spawn(move || reader.run())?;
        Ok(Arc::new(Output { shared }))
    }

    /// Aligns the name column to the longest of `names`, as docker compose does.
    pub fn set_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let w = names.into_iter().map(str::len).max().unwrap_or(0);
        self.shared.width.store(w, Ordering::Relaxed);
    }

    /// Sets up one run's stdout and stderr as `config` asks: pipes read by the reader thread,
    /// or procwatch's own (`inherit`).
    pub fn attach(&self, program: &Arc<ProgramOutput>, config: &OutputConfig) -> io::Result<Run> {
        let state = Arc::new(RunState::default());
        let first_seq = lock(&program.ring).next_seq;
        let (dest, prefix) = match config {
            OutputConfig::Inherit => {
                let stdio = ChildStdio {
                    stdout: dup_cloexec(libc::STDOUT_FILENO)?,
                    stderr: dup_cloexec(libc::STDERR_FILENO)?,
                };
                return Ok(Run {
                    stdio: Some(stdio),
                    state,
                    first_seq,
                });
            }
            OutputConfig::Prefix => (Dest::Stdout, true),
            OutputConfig::File(spec) => (Dest::File(program.file_dest(spec)), spec.prefix),
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        state.open.store(2, Ordering::Release);
        let mut new = lock(&self.shared.new);
        for (fd, stream) in [(out_r, Stream::Stdout), (err_r, Stream::Stderr)] {
            new.push(Pipe {
                fd,
                stream,
                program: Arc::clone(program),
                run: Arc::clone(&state),
                dest: dest.clone(),
                prefix,
                framer: Framer::default(),
                pending: Vec::new(),
                eof: false,
                column: (usize::MAX, Vec::new()),
            });
        }
        drop(new);
        wake(self.shared.wake.as_raw_fd());
        Ok(Run {
            stdio: Some(ChildStdio {
                stdout: out_w,
                stderr: err_w,
            }),
            state,
            first_seq,
        })
    }
}

/// A pipe with both ends close-on-exec and the read end non-blocking: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, owned right away.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Only the read end: the two ends are separate open file descriptions.
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, w))
}

fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl returns a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn wake(eventfd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes to an eventfd; EAGAIN (counter full) still leaves it readable.
    unsafe { libc::write(eventfd, (&one as *const u64).cast(), 8) };
}

fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: a valid epoll_event.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    program: Arc<ProgramOutput>,
    run: Arc<RunState>,
    dest: Dest,
    prefix: bool,
    framer: Framer,
    /// Lines for stdout that did not fit in the sink yet.
    pending: Vec<u8>,
    eof: bool,
    /// The name column as last built, and the width it was built for.
    column: (usize, Vec<u8>),
}

struct Reader {
    shared: Arc<Shared>,
    pipes: HashMap<u64, Pipe>,
    /// Pipes waiting for room in the stdout sink (not armed in epoll meanwhile).
    parked: Vec<u64>,
    next_token: u64,
}

const ARM: u32 = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;

impl Reader {
    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Vec::with_capacity(READ_CHUNK * 2);
        loop {
            // SAFETY: a valid buffer of epoll_events.
            let n = unsafe {
                libc::epoll_wait(
                    self.shared.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(error = %io::Error::last_os_error(), "epoll_wait failed; output capture stops");
                    return;
                }
                continue;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    self.woken();
                } else {
                    self.readable(token, &mut buf, &mut out);
                }
            }
        }
    }

    fn woken(&mut self) {
        let mut count = [0u8; 8];
        // SAFETY: reads the eventfd's 8-byte counter (resetting it).
        unsafe { libc::read(self.shared.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        let new = std::mem::take(&mut *lock(&self.shared.new));
        for p in new {
            let token = self.next_token;
            self.next_token += 1;
            self.pipes.insert(token, p);
            self.watch(libc::EPOLL_CTL_ADD, token);
        }
        // Room in the stdout sink, maybe: pass on what waited, in the order it waited.
        let parked = std::mem::take(&mut self.parked);
        for (i, &token) in parked.iter().enumerate() {
            if !self.deliver(token) {
                self.parked.extend_from_slice(&parked[i..]);
                break;
            }
        }
    }

    /// Passes on a parked pipe's pending lines; false if the sink is still full.
    fn deliver(&mut self, token: u64) -> bool {
        let Some(p) = self.pipes.get_mut(&token) else {
            return true;
        };
        if !stdout().push_or_wait(&p.pending, self.shared.wake.as_raw_fd()) {
            return false;
        }
        p.pending.clear();
        self.rearm(token);
        true
    }

    /// Watches the pipe again, or closes it at end of file.
    fn rearm(&mut self, token: u64) {
        let Some(p) = self.pipes.get(&token) else { return };
        if p.eof {
            if let Some(p) = self.pipes.remove(&token) {
                // Closing the fd removes it from the epoll set.
                finish_run(&p.run);
            }
            return;
        }
        self.watch(libc::EPOLL_CTL_MOD, token);
    }

    /// Arms the pipe for one readiness event (`op`: add or modify); a pipe that cannot be
    /// watched is given up (logged; its run does not wait for it).
    fn watch(&mut self, op: libc::c_int, token: u64) {
        let Some(p) = self.pipes.get(&token) else { return };
        if let Err(err) = epoll_ctl(self.shared.epoll.as_raw_fd(), op, p.fd.as_raw_fd(), ARM, token) {
            tracing::error!(program = %p.program.name, error = %err, "cannot watch a program's output pipe");
            if let Some(p) = self.pipes.remove(&token) {
                finish_run(&p.run);
            }
        }
    }

    fn readable(&mut self, token: u64, buf: &mut [u8], out: &mut Vec<u8>) {
        let width = self.shared.width.load(Ordering::Relaxed);
        let Some(p) = self.pipes.get_mut(&token) else { return };
        // SAFETY: reads into a valid buffer.
        let n = unsafe { libc::read(p.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let chunk: &[u8] = if n > 0 {
            &buf[..n as usize]
        } else if n < 0
            && matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR)
            )
        {
            self.rearm(token);
            return;
        } else {
            p.eof = true;
            &[]
        };
        if p.column.0 != width {
            p.column = (width, format!("{:<width$} | ", p.program.name).into_bytes());
        }
        let column: &[u8] = if p.prefix { &p.column.1 } else { &[] };
        out.clear();
        let program = &p.program;
        let stream = p.stream;
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let mut lines = 0u64;
        let mut cut = 0u64;
        {
            let mut ring = lock(&program.ring);
            let follow = program.n_followers.load(Ordering::Relaxed) > 0;
            let mut followers = follow.then(|| lock(&program.followers));
            let mut emit = |line: &[u8], was_cut: bool| {
                lines += 1;
                cut += u64::from(was_cut);
                out.extend_from_slice(column);
                out.extend_from_slice(line);
                out.push(b'\n');
                if let Some(fs) = followers.as_mut() {
                    let l = LogLine {
                        seq: ring.next_seq,
                        time: now,
                        stream,
                        text: String::from_utf8_lossy(&line[..line.len().min(RING_LINE)]).into_owned(),
                    };
                    for f in fs.iter() {
                        if f.tx.try_send(l.clone()).is_err() {
                            f.skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                ring.push(now_ms, stream, line);
            };
            if p.eof {
                p.framer.finish(&mut emit);
            } else {
                p.framer.feed(chunk, &mut emit);
            }
            if let Some(fs) = followers.as_mut()
                && fs.iter().any(|f| f.tx.is_closed())
            {
                fs.retain(|f| !f.tx.is_closed());
                program.n_followers.store(fs.len(), Ordering::Relaxed);
            }
        }
        let i = stream.index();
        program.bytes[i].fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if lines > 0 {
            program.lines[i].fetch_add(lines, Ordering::Relaxed);
            program.last_output_ms.store(now_ms.max(1), Ordering::Relaxed);
        }
        if cut > 0 {
            program.truncated[i].fetch_add(cut, Ordering::Relaxed);
        }
        if out.is_empty() {
            self.rearm(token);
            return;
        }
        match &p.dest {
            Dest::Stdout => {
                if stdout().push_or_wait(out, self.shared.wake.as_raw_fd()) {
                    self.rearm(token);
                } else {
                    // Wait for room: this pipe is not read meanwhile, so its program blocks on
                    // its own output once the pipe is full, as on a stalled terminal.
                    p.pending.extend_from_slice(out);
                    self.parked.push(token);
                }
            }
            Dest::File(f) => {
                if let Err(err) = f.write(out) {
                    tracing::warn!(program = %program.name, path = %f.spec.path.display(), error = %err, "cannot write program output to its file");
                    *lock(&f.state) = None;
                }
                self.rearm(token);
            }
        }
    }
}

fn finish_run(run: &RunState) {
    if run.open.fetch_sub(1, Ordering::AcqRel) == 1 {
        run.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut f = Framer::default();
        let mut got = Vec::new();
        let mut emit = |l: &[u8], cut: bool| got.push((l.to_vec(), cut));
        for c in chunks {
            f.feed(c, &mut emit);
        }
        f.finish(&mut emit);
        got
    }

    #[test]
    fn lines_are_never_split_or_merged_across_reads() {
        let got = frame(&[b"a", b"b\nc", b"d\n\ne", b"f\n", b"tail"]);
        let want: Vec<(Vec<u8>, bool)> = ["ab", "cd", "", "ef", "tail"]
            .iter()
            .map(|s| (s.as_bytes().to_vec(), false))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_long_line_is_cut_once_and_the_next_line_is_whole() {
        let long = vec![b'x'; MAX_LINE + 10];
        // In one read, and spread over many reads.
        let one = [&long[..], b"\nnext\n"].concat();
        let pieces: Vec<&[u8]> = one.chunks(1000).collect();
        for got in [frame(&[&one]), frame(&pieces)] {
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], (vec![b'x'; MAX_LINE], true));
            assert_eq!(got[1], (b"next".to_vec(), false));
        }
        // Exactly MAX_LINE is not cut.
        let exact = [&vec![b'y'; MAX_LINE][..], b"\n"].concat();
        assert_eq!(frame(&[&exact]), vec![(vec![b'y'; MAX_LINE], false)]);
    }

    #[test]
    fn the_ring_keeps_the_last_lines_within_its_bytes() {
        let mut r = Ring::default();
        for i in 0..1000 {
            let s = if i % 2 == 0 { Stream::Stdout } else { Stream::Stderr };
            r.push(1, s, format!("line {i}").as_bytes());
        }
        assert!(r.buf.len() <= RING_BYTES);
        assert!(r.buf.capacity() <= 2 * RING_BYTES, "{}", r.buf.capacity());
        let last = r.lines(3, |_| true);
        let texts: Vec<&str> = last.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 997", "line 998", "line 999"]);
        assert_eq!(last[2].seq, 999);
        assert_eq!(last[2].stream, Stream::Stderr);
        let all = r.lines(usize::MAX, |_| true);
        assert!(all.len() > 300, "{}", all.len());
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        // A huge line is kept cut to RING_LINE and does not break the ring.
        r.push(2, Stream::Stdout, &vec![b'z'; 10_000]);
        assert_eq!(r.lines(1, |_| true)[0].text.len(), RING_LINE);
        assert!(r.buf.len() <= RING_BYTES);
    }

    #[test]
    fn files_rotate_at_line_boundaries_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        let f = FileDest {
            spec: FileOutput {
                path: path.clone(),
                max_size: 100,
                max_files: 3,
                prefix: false,
            },
            state: Mutex::new(None),
        };
        // 30 lines of 10 bytes: 10 per file, 3 files kept.
        for i in 0..30 {
            f.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path).lines().next(), Some("line 0020"));
        assert_eq!(read(&path).len(), 100);
        assert_eq!(read(&dir.path().join("p.log.1")).lines().next(), Some("line 0010"));
        assert_eq!(read(&dir.path().join("p.log.2")).lines().next(), Some("line 0000"));
        assert!(!dir.path().join("p.log.3").exists());
        f.write(b"line 0030\n").unwrap();
        assert_eq!(read(&dir.path().join("p.log.2")).lines().next(), Some("line 0010"));
        assert!(!dir.path().join("p.log.3").exists());
        assert_eq!(read(&path), "line 0030\n");
    }
}
