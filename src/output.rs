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
/// The last lines of each program: at least this many bytes of them (text plus a 3- or 4-byte
/// header per line), about 110 lines of 70 characters. Held deflated in chunks once written
/// (see [`Ring`]): 2 to 3 KiB for a full ring of log lines.
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

/// A ring's lines are kept in chunks of at most this many bytes of records: a ring costs what
/// it holds, and a chunk that is no longer written is deflated as a whole.
const CHUNK: usize = 2 * 1024;
/// A chunk still taking lines is deflated once its program has been quiet this long (and it
/// holds at least [`QUIET_MIN`] bytes; smaller ones are only trimmed to their size).
const QUIET: Duration = Duration::from_secs(5);
const QUIET_MIN: usize = 512;
/// A record's header: two varints of at most 10 bytes each.
const MAX_HEADER: usize = 20;
/// Bytes of a ring deflated on the read path per second, at most (see [`Ring::seal_behind`]).
const READ_PATH_DEFLATE: usize = 64 * 1024;
/// How often the reader thread compacts the rings written since its last pass.
const COMPACT_EVERY: Duration = Duration::from_secs(1);
/// A compaction pass that gave back this much returns the free memory to the system.
#[cfg(target_env = "gnu")]
const TRIM_AFTER: usize = 256 * 1024;

/// The last lines of a program: at least [`RING_BYTES`] of records, in chunks of up to
/// [`CHUNK`] bytes, oldest first. A record is the line's time (ms after its chunk's first line,
/// zigzag varint), its length and stream (varint), and its text: 3 or 4 bytes of header.
/// Lines are written into the last chunk; chunks behind it are deflated by [`Ring::compact`]
/// (the reader thread, off the reading path), to about a quarter of their size for log lines.
#[derive(Debug, Default)]
struct Ring {
    chunks: VecDeque<Chunk>,
    /// Bytes of records in all chunks (before deflating).
    raw: usize,
    next_seq: u64,
    last_ms: u64,
    /// In the reader thread's list of rings to compact.
    listed: bool,
    /// Bytes deflated on the read path in the second since `budget_since` (ms).
    budget_since: u64,
    budget_used: usize,
}

/// Deflates ring chunks: kept by the reader thread (deflate's tables take about 300 KiB).
struct Deflater {
    z: flate2::Compress,
    scratch: Vec<u8>,
}

impl Deflater {
    fn new() -> Deflater {
        Deflater {
            z: flate2::Compress::new(flate2::Compression::fast(), false),
            scratch: Vec::with_capacity(CHUNK + RING_LINE + MAX_HEADER),
        }
    }

    /// Replaces a chunk's records with the same deflated (or as they are, where deflating does
    /// not make them smaller), in an allocation of exactly their size.
    fn seal(&mut self, chunk: &mut Chunk, freed: &mut usize) {
        let ChunkData::Open(buf) = &chunk.data else { return };
        self.z.reset();
        self.scratch.clear();
        let data = match self
            .z
            .compress_vec(buf, &mut self.scratch, flate2::FlushCompress::Finish)
        {
            Ok(flate2::Status::StreamEnd) if self.scratch.len() < buf.len() => {
                ChunkData::Deflated(Box::from(&self.scratch[..]))
            }
            _ => ChunkData::Stored(Box::from(&buf[..])),
        };
        let kept = match &data {
            ChunkData::Stored(b) | ChunkData::Deflated(b) => b.len(),
            ChunkData::Open(_) => 0,
        };
        *freed += buf.capacity().saturating_sub(kept);
        chunk.data = data;
    }
}

#[derive(Debug)]
struct Chunk {
    first_seq: u64,
    lines: u32,
    base_ms: u64,
    raw_len: usize,
    data: ChunkData,
}

#[derive(Debug)]
enum ChunkData {
    /// Records as written: the last chunk, and chunks not compacted yet.
    Open(Vec<u8>),
    /// Records that did not get smaller by deflating.
    Stored(Box<[u8]>),
    Deflated(Box<[u8]>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

impl Chunk {
    /// The chunk's records, inflated if need be.
    fn records(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.data {
            ChunkData::Open(v) => v.as_slice().into(),
            ChunkData::Stored(b) => (&b[..]).into(),
            ChunkData::Deflated(b) => {
                let mut out = Vec::with_capacity(self.raw_len);
                let mut inflate = flate2::Decompress::new(false);
                match inflate.decompress_vec(b, &mut out, flate2::FlushDecompress::Finish) {
                    Ok(_) if out.len() == self.raw_len => out.into(),
                    // Cannot happen (we deflated it); the lines are lost rather than wrong.
                    _ => Vec::new().into(),
                }
            }
        }
    }

    /// Appends this chunk's lines to `out`.
    fn decode(&self, out: &mut Vec<LogLine>) {
        let records = self.records();
        let (mut at, mut seq) = (0, self.first_seq);
        while at < records.len() {
            let (Some(dt), Some(ls)) = (get_varint(&records, &mut at), get_varint(&records, &mut at)) else {
                return;
            };
            let len = (ls >> 1) as usize;
            let Some(text) = records.get(at..at + len) else { return };
            at += len;
            // Zigzag: the wall clock may step back between two lines.
            let dt = (dt >> 1) as i64 ^ -((dt & 1) as i64);
            out.push(LogLine {
                seq,
                time: UNIX_EPOCH + Duration::from_millis(self.base_ms.saturating_add_signed(dt)),
                stream: if ls & 1 == 0 { Stream::Stdout } else { Stream::Stderr },
                text: String::from_utf8_lossy(text).into_owned(),
            });
            seq += 1;
        }
    }
}

impl Ring {
    fn push(&mut self, time_ms: u64, stream: Stream, text: &[u8]) {
        let text = &text[..text.len().min(RING_LINE)];
        let fits = |c: &Chunk| matches!(&c.data, ChunkData::Open(v) if v.len() + MAX_HEADER + text.len() <= CHUNK);
        if !self.chunks.back().is_some_and(fits) {
            self.chunks.push_back(Chunk {
                first_seq: self.next_seq,
                lines: 0,
                base_ms: time_ms,
                raw_len: 0,
                // A program's first chunk grows with what it holds; once it has filled one,
                // the next is made whole at once (no reallocation while it fills).
                data: ChunkData::Open(match self.chunks.is_empty() {
                    true => Vec::new(),
                    false => Vec::with_capacity(CHUNK),
                }),
            });
        }
        let Some(chunk) = self.chunks.back_mut() else {
            unreachable!()
        };
        let ChunkData::Open(buf) = &mut chunk.data else {
            unreachable!()
        };
        let before = buf.len();
        let need = MAX_HEADER + text.len();
        if buf.capacity() - buf.len() < need {
            // Doubling, but never past the chunk's bound: capacity stays near what is held.
            let want = (buf.capacity() * 2).clamp(before + need, CHUNK.max(before + need));
            buf.reserve_exact(want - before);
        }
        let dt = time_ms as i64 - chunk.base_ms as i64;
        put_varint(buf, ((dt << 1) ^ (dt >> 63)) as u64);
        put_varint(buf, (text.len() as u64) << 1 | stream.index() as u64);
        buf.extend_from_slice(text);
        let added = buf.len() - before;
        chunk.raw_len += added;
        chunk.lines += 1;
        self.raw += added;
        self.next_seq += 1;
        self.last_ms = time_ms;
        // Drop the oldest chunks while the rest still hold RING_BYTES.
        while self.chunks.len() > 1 && self.raw - self.chunks[0].raw_len >= RING_BYTES {
            if let Some(old) = self.chunks.pop_front() {
                self.raw -= old.raw_len;
            }
        }
    }

    /// Deflates the chunks behind the last one, at most [`READ_PATH_DEFLATE`] bytes of them a
    /// second: called by the reader as soon as it has read everything a program wrote, so that
    /// a burst of output (every program at start-up) leaves deflated chunks rather than a peak
    /// of raw ones in the heap; a flood (whose chunks are dropped as fast as they fill) costs
    /// at most that much deflating a second. The rest waits for [`Ring::compact`].
    fn seal_behind(&mut self, now_ms: u64, deflater: &mut Deflater, freed: &mut usize) {
        if now_ms.saturating_sub(self.budget_since) >= 1000 {
            (self.budget_since, self.budget_used) = (now_ms, 0);
        }
        let last = self.chunks.len().saturating_sub(1);
        for chunk in self.chunks.iter_mut().take(last) {
            if let ChunkData::Open(_) = chunk.data {
                if self.budget_used + chunk.raw_len > READ_PATH_DEFLATE {
                    return;
                }
                self.budget_used += chunk.raw_len;
                deflater.seal(chunk, freed);
            }
        }
    }

    /// Deflates the chunks no longer written, and the last one once the program has been quiet
    /// for [`QUIET`]; true while there is more to do later (the last chunk is not quiet yet).
    /// Adds the bytes it gave back to `freed`.
    fn compact(&mut self, now_ms: u64, deflater: &mut Deflater, freed: &mut usize) -> bool {
        let quiet = now_ms.saturating_sub(self.last_ms) >= QUIET.as_millis() as u64;
        let last = self.chunks.len().saturating_sub(1);
        for (i, chunk) in self.chunks.iter_mut().enumerate() {
            let ChunkData::Open(buf) = &mut chunk.data else {
                continue;
            };
            if i < last || (quiet && buf.len() >= QUIET_MIN) {
                deflater.seal(chunk, freed);
            } else if quiet {
                *freed += buf.capacity() - buf.len();
                buf.shrink_to_fit();
            }
        }
        !quiet
    }

    /// The last `n` lines that pass `keep`, oldest first.
    fn lines(&self, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
        let mut all = Vec::new();
        for chunk in &self.chunks {
            chunk.decode(&mut all);
        }
        all.retain(|l| keep(l));
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
        all
    }

    /// Bytes the ring takes on the heap (its chunks' buffers), for tests and the benchmark.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| {
                std::mem::size_of::<Chunk>()
                    + match &c.data {
                        ChunkData::Open(v) => v.capacity(),
                        ChunkData::Stored(b) | ChunkData::Deflated(b) => b.len(),
                    }
            })
            .sum()
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
            untidy: Vec::new(),
            next_compact: Instant::now(),
            deflater: None,
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
    /// Programs whose rings have lines to compact, and when the next pass is due.
    untidy: Vec<Arc<ProgramOutput>>,
    next_compact: Instant,
    /// Made at the first compaction and kept.
    deflater: Option<Deflater>,
}

const ARM: u32 = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;

impl Reader {
    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Vec::with_capacity(READ_CHUNK * 2);
        loop {
            let timeout = if self.untidy.is_empty() {
                -1
            } else {
                let left = self.next_compact.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
            };
            // SAFETY: a valid buffer of epoll_events.
            let n = unsafe {
                libc::epoll_wait(
                    self.shared.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout,
                )
            };
            if !self.untidy.is_empty() && Instant::now() >= self.next_compact {
                self.compact();
            }
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

    /// Compacts the rings written since the last pass (one lock each; no I/O).
    fn compact(&mut self) {
        let deflater = self.deflater.get_or_insert_with(Deflater::new);
        let now_ms = unix_ms(SystemTime::now());
        let mut freed = 0;
        self.untidy.retain(|program| {
            let mut ring = lock(&program.ring);
            ring.listed = ring.compact(now_ms, deflater, &mut freed);
            ring.listed
        });
        // The chunks given back lie between others in the reader thread's heap, which malloc
        // does not return to the system by itself: after a burst (1000 programs writing at
        // start-up), RSS would stay at its peak. malloc_trim(3) gives back their free pages.
        #[cfg(target_env = "gnu")]
        if freed >= TRIM_AFTER {
            // SAFETY: no preconditions.
            unsafe { libc::malloc_trim(0) };
        }
        self.next_compact = Instant::now() + COMPACT_EVERY;
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
        // Everything the program wrote so far is read (or it is gone).
        let drained = chunk.len() < buf.len();
        out.clear();
        let program = &p.program;
        let stream = p.stream;
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let mut lines = 0u64;
        let mut cut = 0u64;
        let mut listed = false;
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
            if drained && ring.chunks.len() > 1 {
                let deflater = self.deflater.get_or_insert_with(Deflater::new);
                ring.seal_behind(now_ms, deflater, &mut 0);
            }
            if lines > 0 && !ring.listed {
                ring.listed = true;
                listed = true;
            }
            if let Some(fs) = followers.as_mut()
                && fs.iter().any(|f| f.tx.is_closed())
            {
                fs.retain(|f| !f.tx.is_closed());
                program.n_followers.store(fs.len(), Ordering::Relaxed);
            }
        }
        if listed {
            if self.untidy.is_empty() {
                self.next_compact = Instant::now() + COMPACT_EVERY;
            }
            self.untidy.push(Arc::clone(program));
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

    /// A log line such as servers write: a timestamp, a level, ids and numbers that vary.
    fn log_line(i: u64) -> String {
        let id = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        format!(
            "2026-11-27T19:{:02}:{:02}.{:03}Z INFO request id={id:08x} path=/api/v1/items/{} status={} took={}ms",
            i / 60 % 60,
            i % 60,
            id % 1000,
            id % 10_000,
            [200, 200, 404, 500][(id % 4) as usize],
            id % 300
        )
    }

    #[test]
    fn the_ring_keeps_the_last_lines_within_its_bytes() {
        let mut r = Ring::default();
        for i in 0..1000 {
            let s = if i % 2 == 0 { Stream::Stdout } else { Stream::Stderr };
            r.push(1_700_000_000_000 + i, s, format!("line {i}").as_bytes());
        }
        assert!(r.raw >= RING_BYTES && r.raw <= RING_BYTES + CHUNK, "{}", r.raw);
        let last = r.lines(3, |_| true);
        let texts: Vec<&str> = last.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 997", "line 998", "line 999"]);
        assert_eq!(last[2].seq, 999);
        assert_eq!(last[2].stream, Stream::Stderr);
        assert_eq!(last[2].time, UNIX_EPOCH + Duration::from_millis(1_700_000_000_999));
        let all = r.lines(usize::MAX, |_| true);
        assert!(all.len() > 700, "{}", all.len());
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(all.last().unwrap().seq, 999);
        // A huge line is kept cut to RING_LINE and does not break the ring.
        r.push(2, Stream::Stdout, &vec![b'z'; 10_000]);
        assert_eq!(r.lines(1, |_| true)[0].text.len(), RING_LINE);
        assert_eq!(r.lines(2, |_| true)[0].text, "line 999");
        // A clock that steps back is recorded as it was read.
        assert_eq!(r.lines(1, |_| true)[0].time, UNIX_EPOCH + Duration::from_millis(2));
        assert!(r.raw <= RING_BYTES + CHUNK + RING_LINE);
    }

    #[test]
    fn a_ring_costs_what_it_holds() {
        // A program that wrote two lines holds a few dozen bytes, not a ring's worth.
        let mut r = Ring::default();
        r.push(1, Stream::Stdout, b"starting");
        r.push(2, Stream::Stderr, b"listening on :8080");
        assert!(r.heap_bytes() < 256, "{}", r.heap_bytes());
        // Full of log lines: compacted once quiet, all of it deflated, every line intact.
        let mut r = Ring::default();
        for i in 0..300 {
            r.push(1_700_000_000_000 + i, Stream::Stdout, log_line(i).as_bytes());
        }
        let before = r.lines(usize::MAX, |_| true);
        let raw_heap = r.heap_bytes();
        assert!(raw_heap >= RING_BYTES, "{raw_heap}");
        // Not quiet yet: the chunks behind the last one are deflated, the last is kept to write.
        assert!(r.compact(1_700_000_000_300, &mut Deflater::new(), &mut 0));
        assert!(matches!(r.chunks.back().unwrap().data, ChunkData::Open(_)));
        assert!(
            r.chunks
                .iter()
                .rev()
                .skip(1)
                .all(|c| matches!(c.data, ChunkData::Deflated(_)))
        );
        // Quiet: the last one too.
        let quiet = 1_700_000_000_300 + QUIET.as_millis() as u64;
        assert!(!r.compact(quiet, &mut Deflater::new(), &mut 0));
        assert!(r.chunks.iter().all(|c| matches!(c.data, ChunkData::Deflated(_))));
        assert_eq!(r.lines(usize::MAX, |_| true), before);
        assert!(r.heap_bytes() * 3 < raw_heap, "{} of {raw_heap}", r.heap_bytes());
        // Lines after that go into a new chunk, and every line reads back in order.
        r.push(1_700_000_009_000, Stream::Stderr, b"after");
        let after = r.lines(2, |_| true);
        assert_eq!(after[0], *before.last().unwrap());
        assert_eq!((after[1].text.as_str(), after[1].seq), ("after", 300));
        assert_eq!(r.lines(5, |l| l.stream == Stream::Stderr).len(), 1);
    }

    #[test]
    fn the_read_path_deflates_at_most_its_budget_a_second() {
        let mut r = Ring::default();
        let mut d = Deflater::new();
        let t = 1_700_000_000_000;
        // A burst: sealed as soon as it is read, all but the chunk being written.
        for i in 0..300 {
            r.push(t, Stream::Stdout, log_line(i).as_bytes());
        }
        r.seal_behind(t, &mut d, &mut 0);
        let open = |r: &Ring| r.chunks.iter().filter(|c| matches!(c.data, ChunkData::Open(_))).count();
        assert_eq!(open(&r), 1);
        // A flood within the same second: past the budget, chunks wait for the compaction.
        for i in 0..2000 {
            r.push(t + 1, Stream::Stdout, log_line(i).as_bytes());
            r.seal_behind(t + 1, &mut d, &mut 0);
        }
        assert!(r.budget_used <= READ_PATH_DEFLATE);
        assert!(open(&r) > 1, "{}", open(&r));
        // The next second has a budget again.
        r.seal_behind(t + 1000, &mut d, &mut 0);
        assert_eq!(open(&r), 1);
        assert_eq!(r.lines(1, |_| true)[0].text, log_line(1999));
    }

    #[test]
    fn lines_that_do_not_deflate_are_stored_as_they_are() {
        let mut r = Ring::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // 32 lines a chunk: the last one holds 14, more than QUIET_MIN bytes.
        for i in 0..110 {
            // Random bytes (xorshift): deflate cannot shrink them.
            let text: Vec<u8> = (0..60)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            r.push(i, Stream::Stdout, &text);
        }
        let before = r.lines(usize::MAX, |_| true);
        r.compact(1_000_000, &mut Deflater::new(), &mut 0);
        assert!(r.chunks.iter().all(|c| !matches!(c.data, ChunkData::Open(_))));
        assert_eq!(r.lines(usize::MAX, |_| true), before);
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
