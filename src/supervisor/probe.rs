//! Health probes: `http`, `tcp` and `exec` checks, run every `period` while a program runs.
//!
//! One task per probe per run, started by the runner when the run starts and dropped (which
//! ends it, and kills an exec check in flight) when the run ends: a probe never fires while a
//! program is starting, stopping or backing off. The task counts results against the
//! thresholds and tells the runner only of transitions (ready, not ready, liveness failed); the
//! runner stays the only writer of program state. Per-probe numbers for the collector are
//! atomics in [`ProbeStats`].
//!
//! http and tcp checks run on procwatch's runtime without forking. An exec check is a child of
//! procwatch, so it is forked by the supervisor's spawner thread and its exit status comes from
//! the reaper (which reaps every child): see [`Os::spawn_probe`].

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::Program;
use super::os::Os;
use crate::config::{ProbeCheck, ProbeConfig, ProbeRole, ProgramConfig, format_duration};

/// At most this much of an exec check's output is kept for its error message.
const OUTPUT_TAIL: usize = 256;
/// How long a killed exec check may take to be reaped before the probe gives up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The numbers the collector reports for one probe of one program, over every run.
#[derive(Debug, Default)]
pub(crate) struct ProbeStats {
    /// 0: no result yet; 1: the last check failed; 2: it passed.
    last: AtomicU8,
    failures: AtomicU64,
    duration_ns: AtomicU64,
}

/// One probe of one program as seen at a scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeSample {
    /// The result of the last check; `None` before the first.
    pub success: Option<bool>,
    pub failures: u64,
    /// How long the last check took.
    pub duration: Duration,
}

impl ProbeStats {
    fn record(&self, ok: bool, took: Duration) {
        self.duration_ns
            .store(took.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.last.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
    }

    pub(crate) fn sample(&self) -> ProbeSample {
        ProbeSample {
            success: match self.last.load(Ordering::Relaxed) {
                0 => None,
                n => Some(n == 2),
            },
            failures: self.failures.load(Ordering::Relaxed),
            duration: Duration::from_nanos(self.duration_ns.load(Ordering::Relaxed)),
        }
    }
}

/// What a run's probes tell its runner.
#[derive(Debug)]
pub(super) enum ProbeEvent {
    /// The readiness probe passed `success_threshold` times in a row (true), or failed
    /// `failure_threshold` times in a row after that (false).
    Ready(bool),
    /// The liveness probe failed `failure_threshold` times in a row; the last error.
    LivenessFailed(String),
}

/// The probes of one run; dropping it ends them.
pub(super) struct RunProbes {
    events: mpsc::Receiver<ProbeEvent>,
    _stop: DropGuard,
}

impl RunProbes {
    /// Starts the program's probes for the run that just started.
    pub(super) fn start(os: &Arc<Os>, program: &Arc<Program>, config: &Arc<ProgramConfig>) -> RunProbes {
        let (tx, events) = mpsc::channel(4);
        let stop = CancellationToken::new();
        // Exec checks of one program run one at a time, liveness and readiness included.
        let exec_turn = Arc::new(tokio::sync::Mutex::new(()));
        for (role, probe) in [
            (ProbeRole::Liveness, &config.liveness),
            (ProbeRole::Readiness, &config.readiness),
        ] {
            let Some(probe) = probe else { continue };
            let check = match Check::new(probe, os, config, &exec_turn) {
                Ok(check) => check,
                Err(err) => {
                    // Validated at config time; only a URL the client cannot use gets here.
                    warn!(program = %config.name, probe = role.as_str(), error = %err, "probe cannot run");
                    continue;
                }
            };
            let task = ProbeTask {
                role,
                probe: probe.clone(),
                check,
                program: Arc::clone(program),
                events: tx.clone(),
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = task.run() => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        RunProbes {
            events,
            _stop: stop.drop_guard(),
        }
    }

    /// The next transition; never returns where the run has no probes.
    pub(super) async fn next(&mut self) -> ProbeEvent {
        match self.events.recv().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        }
    }
}

struct ProbeTask {
    role: ProbeRole,
    probe: ProbeConfig,
    check: Check,
    program: Arc<Program>,
    events: mpsc::Sender<ProbeEvent>,
}

impl ProbeTask {
    async fn run(self) {
        let name = &self.program.name;
        let role = self.role.as_str();
        tokio::time::sleep(self.probe.initial_delay).await;
        let mut ticks = tokio::time::interval(self.probe.period);
        // A check that outlasts its period delays the next one: checks never pile up.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut failures, mut successes, mut passing) = (0u32, 0u32, false);
        loop {
            ticks.tick().await;
            let started = Instant::now();
            let result = self.check.run(self.probe.timeout).await;
            self.program
                .probe_stats(self.role)
                .record(result.is_ok(), started.elapsed());
            match result {
                Ok(()) => {
                    successes = successes.saturating_add(1);
                    failures = 0;
                    if !passing && successes >= self.probe.success_threshold {
                        passing = true;
                        if self.role == ProbeRole::Readiness {
                            info!(program = %name, "ready");
                            let _ = self.events.send(ProbeEvent::Ready(true)).await;
                        }
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    successes = 0;
                    let threshold = self.probe.failure_threshold;
                    match self.role {
                        ProbeRole::Liveness => {
                            warn!(program = %name, probe = role, %error, "liveness probe failed ({failures}/{threshold})");
                            if failures >= threshold {
                                let _ = self.events.send(ProbeEvent::LivenessFailed(error)).await;
                                return;
                            }
                        }
                        ProbeRole::Readiness if passing => {
                            warn!(program = %name, probe = role, %error, "readiness probe failed ({failures}/{threshold})");
                            if failures >= threshold {
                                passing = false;
                                warn!(program = %name, %error, "not ready");
                                let _ = self.events.send(ProbeEvent::Ready(false)).await;
                            }
                        }
                        // Not ready yet: failing is expected while the program comes up.
                        ProbeRole::Readiness => debug!(program = %name, probe = role, %error, "not ready yet"),
                    }
                }
            }
        }
    }
}

/// A check, prepared once per run.
enum Check {
    Http(HttpCheck),
    Tcp(String),
    Exec {
        os: Arc<Os>,
        config: Arc<ProgramConfig>,
        command: Vec<String>,
        turn: Arc<tokio::sync::Mutex<()>>,
    },
}

impl Check {
    fn new(
        probe: &ProbeConfig,
        os: &Arc<Os>,
        config: &Arc<ProgramConfig>,
        turn: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Check, String> {
        Ok(match &probe.check {
            ProbeCheck::Http { url, status } => Check::Http(HttpCheck::new(url, *status)?),
            ProbeCheck::Tcp { address } => Check::Tcp(address.clone()),
            ProbeCheck::Exec { command } => Check::Exec {
                os: Arc::clone(os),
                config: Arc::clone(config),
                command: command.clone(),
                turn: Arc::clone(turn),
            },
        })
    }

    /// One check; the error says why it failed.
    async fn run(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Check::Http(http) => within(timeout, http.get()).await,
            Check::Tcp(address) => {
                within(timeout, async {
                    TcpStream::connect(address.as_str())
                        .await
                        .map(drop)
                        .map_err(|e| format!("connect to {address}: {e}"))
                })
                .await
            }
            Check::Exec {
                os,
                config,
                command,
                turn,
            } => {
                let _turn = turn.lock().await;
                exec(os, config, command, timeout).await
            }
        }
    }
}

async fn within(timeout: Duration, check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {}", format_duration(timeout))))
}

/// A GET to one URL over a fresh connection (as a load balancer checks): what answers is
/// what is checked, never a connection kept from an earlier check.
pub(crate) struct HttpCheck {
    url: String,
    host: String,
    port: u16,
    /// `Some` for https.
    tls: Option<rustls::pki_types::ServerName<'static>>,
    authority: String,
    path: String,
    status: Option<u16>,
    /// Roots other than the system's (tests).
    roots: Option<Arc<rustls::ClientConfig>>,
}

impl HttpCheck {
    pub(crate) fn new(url: &str, status: Option<u16>) -> Result<HttpCheck, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("URL {url:?} must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| format!("URL {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = if https {
            Some(rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("URL {url:?}: {e}"))?)
        } else {
            None
        };
        Ok(HttpCheck {
            url: url.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            tls,
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            status,
            roots: None,
        })
    }

    #[cfg(test)]
    fn with_roots(mut self, roots: rustls::RootCertStore) -> HttpCheck {
        self.roots = Some(Arc::new(client_config(roots)));
        self
    }

    async fn get(&self) -> Result<(), String> {
        let url = &self.url;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("GET {url}: connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let code = match &self.tls {
            None => self.request(tcp).await?,
            Some(name) => {
                let config = match &self.roots {
                    Some(c) => Arc::clone(c),
                    None => system_roots().await,
                };
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("GET {url}: TLS: {e}"))?;
                self.request(tls).await?
            }
        };
        let ok = match self.status {
            Some(want) => code == want,
            None => (200..400).contains(&code),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("GET {url}: status {code}"))
        }
    }

    /// Sends the request and returns the status. Written by hand rather than with hyper's
    /// client: a check needs the status line only, and hyper's connection task (its
    /// dispatcher, buffers and header maps, a shutdown(2), a wait for the server's EOF) cost
    /// more than the check itself (see the `probes` benchmark). What has arrived of the rest is
    /// read before closing, so that the close is a FIN, not a reset, for servers that answer
    /// in one write.
    async fn request<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) -> Result<u16, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = &self.url;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: procwatch/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        stream.flush().await.map_err(|e| format!("GET {url}: {e}"))?;
        let mut buf = [0u8; RESPONSE_HEAD];
        let mut got = 0;
        loop {
            let n = stream
                .read(&mut buf[got..])
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            got += n;
            if let Some(status) = status_line(&buf[..got]) {
                drain(&mut stream).await;
                return status.map_err(|line| format!("GET {url}: not an HTTP/1 response: {line:?}"));
            }
            if n == 0 || got == buf.len() {
                return Err(format!("GET {url}: the connection ended before a status line"));
            }
        }
    }
}

/// Reads what has arrived of the response already, without waiting for more (at most 64 KiB):
/// closing a socket with unread data resets the connection instead of closing it.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut rest = [0u8; 4096];
    for _ in 0..16 {
        let mut rb = tokio::io::ReadBuf::new(&mut rest);
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb)))
                .await;
        if !matches!(polled, std::task::Poll::Ready(Ok(()))) || rb.filled().is_empty() {
            return;
        }
    }
}

/// Bytes of a response read at most to find its status line.
const RESPONSE_HEAD: usize = 1024;

/// The status of a response that starts with `head`: `None` until its first line is complete,
/// the line itself if it is not `HTTP/1.x NNN ...`.
fn status_line(head: &[u8]) -> Option<Result<u16, String>> {
    let end = memchr::memchr(b'\n', head)?;
    let line = String::from_utf8_lossy(&head[..end]).trim_end().to_owned();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(1..))
        .and_then(|r| r.strip_prefix(' '))
        .and_then(|r| r.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code));
    Some(status.ok_or(line))
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The TLS client config with the system's trusted roots, read once (off the async workers:
/// it reads every file of the system's certificate directory).
async fn system_roots() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Arc::clone(c);
    }
    let config = tokio::task::spawn_blocking(|| {
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            warn!(error = %err, "reading the system's trusted certificates");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        debug!(added, ignored, "system trusted certificates for https probes");
        Arc::new(client_config(roots))
    })
    .await
    .unwrap_or_else(|_| Arc::new(client_config(rustls::RootCertStore::empty())));
    Arc::clone(CONFIG.get_or_init(|| config))
}

/// Runs an exec check to its end; at `timeout` its process group is killed, and the check
/// waits for it to be reaped so that checks never pile up.
async fn exec(os: &Arc<Os>, config: &Arc<ProgramConfig>, command: &[String], timeout: Duration) -> Result<(), String> {
    let mut child = os
        .spawn_probe(command.to_vec(), Arc::clone(config))
        .await
        .map_err(|e| format!("cannot start {:?}: {e}", command[0]))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Some(0)) => Ok(()),
        Ok(Some(status)) => {
            let output = child.output_tail();
            let (code, signal) = super::os::exit_code(status);
            let ended = match signal {
                Some(sig) => format!("killed by signal {sig}"),
                None => format!("exit code {code}"),
            };
            Err(if output.is_empty() {
                format!("{:?}: {ended}", command[0])
            } else {
                format!("{:?}: {ended}: {output}", command[0])
            })
        }
        Ok(None) => Err(format!("{:?}: its exit status was lost", command[0])),
        Err(_) => {
            child.kill();
            let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
            Err(format!(
                "{:?}: timed out after {}; killed",
                command[0],
                format_duration(timeout)
            ))
        }
    }
}

/// `close_range(2)`'s flag: mark the fds close-on-exec instead of closing them (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// In an exec check's child, between fork and exec (async-signal-safe): every fd from 3 up
/// is marked close-on-exec, so that the command gets fds 0, 1 and 2 only, as a program does
/// (see spawn.rs), and not an fd procwatch itself inherited without close-on-exec (a
/// jobserver pipe, a shell's stray fd). Marked rather than closed: `std::process::Command`
/// reports a failed exec through a close-on-exec pipe of its own. A kernel before 5.11
/// refuses the flag, and such inherited fds then stay open in the check.
pub(super) fn only_stdio_at_exec() {
    // SAFETY: a plain system call on the child's own fd table.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// The last bytes of an exec check's output, on one line.
pub(super) fn tail_text(buf: &[u8]) -> String {
    let start = buf.len().saturating_sub(OUTPUT_TAIL);
    let text = String::from_utf8_lossy(&buf[start..]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-request-at-a-time HTTP server on a free port answering `status` to everything.
    fn http_server(status: u16) -> (String, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(req.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{req}");
            assert!(req.to_ascii_lowercase().contains("host: "), "{req}");
            let reply = format!("HTTP/1.1 {status} X\r\nlocation: http://elsewhere/\r\ncontent-length: 2\r\n\r\nok");
            s.write_all(reply.as_bytes()).unwrap();
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn http_status_decides() {
        for (served, expected, ok) in [
            (200, None, true),
            (204, Some(204), true),
            (302, None, true),
            (302, Some(200), false),
            (500, None, false),
            (404, Some(200), false),
        ] {
            let (addr, server) = http_server(served);
            let check = HttpCheck::new(&format!("http://{addr}/healthz?x=1"), expected).unwrap();
            let got = within(Duration::from_secs(5), check.get()).await;
            assert_eq!(got.is_ok(), ok, "{served} vs {expected:?}: {got:?}");
            if !ok {
                assert!(got.unwrap_err().contains(&format!("status {served}")));
            }
            server.join().unwrap();
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_line(b"HTTP/1.1 204 No Content\r\n"), Some(Ok(204)));
        assert_eq!(status_line(b"HTTP/1.0 500\r\nx: y\r\n"), Some(Ok(500)));
        assert_eq!(status_line(b"HTTP/1.1 20"), None);
        assert!(matches!(status_line(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Err(_))));
        assert!(matches!(status_line(b"HTTP/1.1 2x4 Hm\r\n"), Some(Err(_))));
        assert!(matches!(status_line(b"HTTP/2 200\r\n"), Some(Err(_))));
    }

    #[tokio::test]
    async fn a_server_that_is_not_http_fails_the_check() {
        for reply in [&b"SSH-2.0-OpenSSH_9.2\r\n"[..], b""] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let _ = s.read(&mut [0u8; 1024]).unwrap();
                s.write_all(reply).unwrap();
            });
            let check = HttpCheck::new(&format!("http://{addr}/"), None).unwrap();
            let err = within(Duration::from_secs(5), check.get()).await.unwrap_err();
            assert!(
                err.contains("not an HTTP/1 response") || err.contains("ended before"),
                "{err}"
            );
            server.join().unwrap();
        }
    }

    #[tokio::test]
    async fn http_times_out_on_a_server_that_never_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let check = HttpCheck::new(&format!("http://{addr}/"), None).unwrap();
        let started = Instant::now();
        let got = within(Duration::from_millis(300), check.get()).await;
        assert!(got.unwrap_err().contains("timed out"));
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[tokio::test]
    async fn refused_connections_fail_tcp_and_http() {
        // A port bound but not listening, held for the whole test: a connection is refused,
        // and no test running beside this one can be given the port meanwhile (a port bound
        // and closed again could be handed to a listener of another test, as CI once saw).
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: just opened, owned by nobody else.
        let held = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a valid socket and address of the size given; getsockname fills `sa`.
        unsafe {
            assert_eq!(libc::bind(held.as_raw_fd(), (&raw const sa).cast(), len), 0);
            assert_eq!(libc::getsockname(held.as_raw_fd(), (&raw mut sa).cast(), &mut len), 0);
        }
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sa.sin_port)));
        let tcp = Check::Tcp(addr.to_string()).run(Duration::from_secs(2)).await;
        assert!(tcp.unwrap_err().contains("connect"));
        let http = HttpCheck::new(&format!("http://{addr}/"), None).unwrap();
        assert!(http.get().await.unwrap_err().contains("connect"));
        drop(held);
    }

    #[tokio::test]
    async fn tcp_passes_on_a_listening_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(Check::Tcp(addr.to_string()).run(Duration::from_secs(2)).await, Ok(()));
        let v6 = tokio::net::TcpListener::bind("[::1]:0").await;
        if let Ok(v6) = v6 {
            let a = v6.local_addr().unwrap();
            assert_eq!(Check::Tcp(a.to_string()).run(Duration::from_secs(2)).await, Ok(()));
        } else {
            eprintln!("skipping the IPv6 part: no ::1 here");
        }
    }

    /// An https server with a certificate for 127.0.0.1 signed by its own CA.
    async fn https_server() -> (String, rustls::RootCertStore, tokio::task::JoinHandle<()>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                let _ = tls.shutdown().await;
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        (addr, roots, task)
    }

    #[tokio::test]
    async fn https_verifies_the_certificate() {
        let (addr, roots, server) = https_server().await;
        let url = format!("https://{addr}/healthz");
        // Trusted through the given root.
        let trusted = HttpCheck::new(&url, Some(200)).unwrap().with_roots(roots);
        assert_eq!(within(Duration::from_secs(5), trusted.get()).await, Ok(()));
        // The system's roots do not know this CA: the check fails in the TLS handshake.
        let system = HttpCheck::new(&url, Some(200)).unwrap();
        let err = within(Duration::from_secs(5), system.get()).await.unwrap_err();
        assert!(err.contains("TLS"), "{err}");
        server.abort();
    }

    #[test]
    fn output_tail_is_short_and_on_one_line() {
        assert_eq!(tail_text(b"no\n  such\tfile\n"), "no such file");
        let long = vec![b'x'; 10_000];
        assert_eq!(tail_text(&long).len(), OUTPUT_TAIL);
    }
}
