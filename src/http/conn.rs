//! Connection slots: at most [`MAX_CONNECTIONS`] at once, and none of them can be held by a
//! client that stops reading or never sends. A write that makes no progress for
//! [`WRITE_TIMEOUT`] ends its connection; and when every slot is taken, a new connection takes
//! the slot of the one that has been quiet longest (no byte read or written, no request being
//! handled), so that idle or stalled clients, however many, cannot lock a scrape out.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// At most this many connections are served at once. Each costs a few KiB (plus the kernel's
/// socket buffers); idle ones are dropped after the header read timeout, or sooner when the
/// slots run out.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// A response write (or TLS handshake write) that makes no progress for this long is given
/// up, and the connection closed.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the slot table knows about one connection.
pub(crate) struct Activity {
    /// Milliseconds since the table's epoch when a byte last moved, or a request started.
    last_progress: AtomicU64,
    /// Requests being handled right now (a connection answering a slow scrape is not quiet).
    busy: AtomicU64,
    /// Cancelled to take the slot back.
    pub(crate) evicted: CancellationToken,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last_progress
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a request in progress until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(Arc::clone(self))
    }
}

pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The connections being served.
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    live: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Whether an eviction has been logged (once: an attack must not flood the log).
    warned: AtomicBool,
}

/// A connection's hold on its slot; frees it when dropped.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub(crate) activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Slots {
    pub(crate) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(max)),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            warned: AtomicBool::new(false),
        })
    }

    /// A slot for a connection just accepted: a free one, else the quietest connection's.
    /// Waits only while every connection is busy answering a request.
    pub(crate) async fn take(self: &Arc<Self>) -> Slot {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.evict_quietest();
                Arc::clone(&self.permits)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let activity = Arc::new(Activity {
            last_progress: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            evicted: CancellationToken::new(),
            epoch: self.epoch,
        });
        activity.touch();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&activity));
        Slot {
            slots: Arc::clone(self),
            id,
            activity,
            _permit: permit,
        }
    }

    fn evict_quietest(&self) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let quietest = live
            .values()
            .filter(|a| a.busy.load(Ordering::Relaxed) == 0 && !a.evicted.is_cancelled())
            .min_by_key(|a| a.last_progress.load(Ordering::Relaxed));
        if let Some(a) = quietest {
            a.evicted.cancel();
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "every connection slot is taken: closing the quietest connection for each new one (logged once)"
                );
            }
        }
    }
}

/// A connection's socket, which notes every byte that moves and fails a write that makes no
/// progress for [`WRITE_TIMEOUT`].
pub(crate) struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> Watched<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>) -> Watched<IO> {
        Watched {
            io,
            activity,
            stalled: None,
        }
    }

    /// Called with a write's result: progress clears the stall timer; `Pending` starts it, and
    /// turns into an error when it runs out.
    fn after_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                self.activity.touch();
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.after_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.after_write(cx, r)
    }
}
