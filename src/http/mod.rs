//! The HTTP server: /metrics, the landing page, health and lifecycle endpoints; TLS and basic
//! auth from the web config; bounded connections and header reads; concurrent scrapes
//! collapsed into one.

mod web_config;

pub use web_config::{WebConfig, WebConfigSource};

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::{self, Collector, Gathered};

/// At most this many connections are served at once; more wait in the kernel's backlog. High
/// enough that hundreds of idle clients leave room for a real scrape; each idle one costs a
/// few KiB and is dropped after `HEADER_READ_TIMEOUT`.
const MAX_CONNECTIONS: usize = 1024;
/// A client must finish its TLS handshake, and then send its request headers, within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on buffered request bytes (headers included).
const MAX_BUF: usize = 16 * 1024;

/// A reload asked for over HTTP; the answer is `Err(message)` if it was refused.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

pub struct HttpConfig {
    pub telemetry_path: String,
    pub enable_lifecycle: bool,
    /// TLS and basic auth; `None` serves plain HTTP to everyone.
    pub web: Option<Arc<WebConfigSource>>,
    /// Set once the first config has been applied: until then `/-/ready` answers 503.
    pub ready: Arc<AtomicBool>,
}

struct State {
    config: HttpConfig,
    auth: web_config::Authenticator,
    collector: Arc<Collector>,
    reload: mpsc::Sender<ReloadRequest>,
    scrape: tokio::sync::Mutex<ScrapeCache>,
}

#[derive(Default)]
struct ScrapeCache {
    /// Per format (text, OpenMetrics): when the last encode started, and its output.
    last: [Option<(Instant, Bytes)>; 2],
    /// Reused encode buffer.
    buf: String,
}

type Body = Full<Bytes>;

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: HttpConfig,
    collector: Arc<Collector>,
    reload: mpsc::Sender<ReloadRequest>,
    shutdown: CancellationToken,
) {
    let state = Arc::new(State {
        config,
        auth: web_config::Authenticator::default(),
        collector,
        reload,
        scrape: tokio::sync::Mutex::new(ScrapeCache::default()),
    });
    if let Some(web) = &state.config.web {
        tokio::spawn(Arc::clone(web).watch(shutdown.clone()));
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(err) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        // TLS is decided per connection (its handshake comes first); authentication and
        // headers per request, from the web config in force then.
        let tls = state.config.web.as_ref().and_then(|w| w.current().tls.clone());
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, state, shutdown).await,
                Some(tls) => {
                    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, accept).await {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, state, shutdown).await,
                        Ok(Err(err)) => debug!(%peer, error = %err, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection, plain or TLS, until it ends or shutdown.
async fn serve_connection<IO>(io: IO, state: Arc<State>, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move {
            let web = state.config.web.as_ref().map(|w| w.current());
            Ok::<_, Infallible>(respond(&state, web.as_deref(), req).await)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(err) = r { debug!(error = %err, "connection ended") },
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
}

/// Authentication, then the route, then the web config's extra headers.
async fn respond(state: &State, web: Option<&WebConfig>, req: Request<Incoming>) -> Response<Body> {
    if let Some(web) = web
        && !state.auth.allowed(web, req.headers().get(AUTHORIZATION)).await
    {
        let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"procwatch\""));
        return resp;
    }
    let mut resp = route(state, req).await;
    if let Some(web) = web {
        for (name, value) in &web.headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
    }
    resp
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    if path == state.config.telemetry_path {
        return match *method {
            Method::GET | Method::HEAD => {
                let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
                let format = metrics::Format::from_accept(accept);
                match scrape(state, format).await {
                    Some(body) => {
                        let mut resp = Response::new(Full::new(body));
                        resp.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
                        resp
                    }
                    // A failed pass is an error, never an empty page that looks like no programs.
                    None => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "gathering metrics failed; see the log\n",
                    ),
                }
            }
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
        };
    }
    match (path, method) {
        ("/", &Method::GET) => {
            let collector = Arc::clone(&state.collector);
            match tokio::task::spawn_blocking(move || collector.gather()).await {
                Ok(g) => html(landing_page(&g, &state.config.telemetry_path)),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "gather failed\n"),
            }
        }
        ("/-/healthy", &Method::GET) => text(StatusCode::OK, "procwatch is healthy.\n"),
        ("/-/ready", &Method::GET) => match state.config.ready.load(Ordering::Acquire) {
            true => text(StatusCode::OK, "procwatch is ready.\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "procwatch is starting its programs.\n"),
        },
        ("/-/reload", &Method::POST) => {
            if !state.config.enable_lifecycle {
                return text(
                    StatusCode::FORBIDDEN,
                    "lifecycle APIs are not enabled (--web.enable-lifecycle)\n",
                );
            }
            let (tx, rx) = oneshot::channel();
            if state.reload.send(tx).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match rx.await {
                Ok(Ok(summary)) => text(StatusCode::OK, &format!("{summary}\n")),
                Ok(Err(message)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("failed to reload config: {message}\n"),
                ),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        ("/", _) | ("/-/healthy", _) | ("/-/ready", _) | ("/-/reload", _) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// Gathers and encodes, collapsing concurrent scrapes: whoever waited while a scrape that
/// started after its arrival ran gets that scrape's output. `None` if the pass failed.
async fn scrape(state: &State, format: metrics::Format) -> Option<Bytes> {
    let arrived = Instant::now();
    let slot = format as usize;
    let mut cache = state.scrape.lock().await;
    if let Some((started, body)) = &cache.last[slot]
        && *started >= arrived
    {
        return Some(body.clone());
    }
    let started = Instant::now();
    let collector = Arc::clone(&state.collector);
    let mut buf = std::mem::take(&mut cache.buf);
    let buf = tokio::task::spawn_blocking(move || {
        let g = collector.gather();
        collector.encode(g, format, &mut buf);
        buf
    })
    .await
    .ok()?;
    let body = Bytes::copy_from_slice(buf.as_bytes());
    cache.buf = buf;
    cache.last[slot] = Some((started, body.clone()));
    Some(body)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn html(body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn landing_page(g: &Gathered, telemetry_path: &str) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>procwatch</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>\
         <h1>procwatch</h1><p>version {} &middot; <a href=\"{}\">Metrics</a></p><h2>Programs</h2>\
         <table><tr><th>name</th><th>state</th><th>pid</th><th>uptime</th><th>cpu</th><th>memory</th><th>restarts</th><th>command</th></tr>",
        env!("CARGO_PKG_VERSION"),
        esc(telemetry_path)
    );
    for r in &g.programs {
        let row = crate::status::ProgramRow::new(r, g.at);
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&row.name),
            row.state,
            row.pid,
            row.uptime,
            row.cpu,
            row.memory,
            row.restarts,
            esc(&row.command)
        );
    }
    s.push_str("</table><h2>Watches</h2><table><tr><th>name</th><th>path</th><th>state</th>");
    for k in crate::watch::KINDS {
        let _ = write!(s, "<th>{k}</th>");
    }
    s.push_str("<th>overflows</th><th>errors</th></tr>");
    for w in &g.watches {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>",
            esc(&w.name),
            esc(&w.path.display().to_string()),
            if w.up { "up" } else { "down" }
        );
        for (_, n) in w.events() {
            let _ = write!(s, "<td>{n}</td>");
        }
        let _ = write!(s, "<td>{}</td><td>{}</td></tr>", w.overflows, w.errors);
    }
    s.push_str("</table></body></html>\n");
    s
}
