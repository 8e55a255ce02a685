//! The HTTP server: /metrics, the landing page, health and lifecycle endpoints; TLS and basic
//! auth from the web config; bounded connections and header reads; concurrent scrapes
//! collapsed into one.

pub mod api;
mod conn;
pub mod control_socket;
mod landing;
mod web_config;

pub use api::Api;
pub use control_socket::{ControlSocket, SocketSetting};
pub use web_config::{WebConfig, WebConfigSource};

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::{self, Collector};

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
    limiter: web_config::Limiter,
    collector: Arc<Collector>,
    reload: mpsc::Sender<ReloadRequest>,
    scrape: tokio::sync::Mutex<ScrapeCache>,
    /// Requests waiting for `scrape`'s lock.
    scrape_waiting: AtomicUsize,
    /// When the last landing page was rendered (from a gather begun after that), and its HTML.
    landing: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
    api: Api,
}

impl State {
    fn new(config: HttpConfig, collector: Arc<Collector>, reload: mpsc::Sender<ReloadRequest>, api: Api) -> State {
        State {
            config,
            auth: web_config::Authenticator::default(),
            limiter: web_config::Limiter::default(),
            collector,
            reload,
            scrape: tokio::sync::Mutex::new(ScrapeCache::default()),
            scrape_waiting: AtomicUsize::new(0),
            landing: tokio::sync::Mutex::new(None),
            api,
        }
    }
}

#[derive(Default)]
struct ScrapeCache {
    /// Per format (text, OpenMetrics 1.0.0, 0.0.1) and encoding (plain, gzip): when the last
    /// encode started, and its output; kept only while requests that can use it wait.
    last: [Option<(Instant, Bytes)>; 6],
    /// Length of the last page: the next is encoded into a buffer of about that size, which
    /// then becomes the response body as it is (no copy, no doubling beyond the page).
    last_len: usize,
}

type Body = Full<Bytes>;

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: HttpConfig,
    collector: Arc<Collector>,
    reload: mpsc::Sender<ReloadRequest>,
    api: Api,
    shutdown: CancellationToken,
) {
    let state = Arc::new(State::new(config, collector, reload, api));
    if let Some(web) = &state.config.web {
        tokio::spawn(Arc::clone(web).watch(shutdown.clone()));
    }
    let slots = conn::Slots::new(conn::MAX_CONNECTIONS);
    loop {
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
        let slot = tokio::select! {
            s = slots.take() => s,
            _ = shutdown.cancelled() => return,
        };
        // TLS is decided per connection (its handshake comes first); authentication and
        // headers per request, from the web config in force then.
        let tls = state.config.web.as_ref().and_then(|w| w.current().tls.clone());
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let activity = Arc::clone(&slot.activity);
            let stream = conn::Watched::new(stream, Arc::clone(&activity));
            let served = async {
                match tls {
                    None => serve_connection(stream, state, activity, shutdown).await,
                    Some(tls) => {
                        let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, accept).await {
                            Ok(Ok(tls_stream)) => serve_connection(tls_stream, state, activity, shutdown).await,
                            Ok(Err(err)) => debug!(%peer, error = %err, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            };
            // An evicted connection is dropped where it stands: its slot goes to a new one.
            tokio::select! {
                _ = served => {}
                _ = slot.activity.evicted.cancelled() => debug!(%peer, "connection closed to free its slot"),
            }
            drop(slot);
        });
    }
}

/// Serves HTTP/1.1 on one connection, plain or TLS, until it ends or shutdown.
async fn serve_connection<IO>(io: IO, state: Arc<State>, activity: Arc<conn::Activity>, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        let busy = activity.busy();
        async move {
            let _busy = busy;
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
    if let Some(limit) = web.and_then(|w| w.rate_limit.as_ref())
        && !state.limiter.allow(limit)
    {
        return text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
    }
    if let Some(web) = web
        && web.auth_required(req.uri().path())
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
                let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
                let format = metrics::Format::from_accept(header(ACCEPT));
                let gzip = metrics::accepts_gzip(header(ACCEPT_ENCODING));
                match scrape(state, format, gzip).await {
                    Some(body) => {
                        let mut resp = Response::new(Full::new(body));
                        let headers = resp.headers_mut();
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
                        if gzip {
                            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                        }
                        headers.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
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
    if path.starts_with("/api/v1/") {
        return api::route(state, req).await;
    }
    if method == Method::GET
        && let Some(resp) = landing::asset(path)
    {
        return resp;
    }
    match (path, method) {
        ("/", &Method::GET) => match landing_html(state).await {
            Some(html) => landing::page(html),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "gather failed\n"),
        },
        // HEAD as GET (hyper sends no body), as Prometheus answers both on these two.
        ("/-/healthy", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "procwatch is healthy.\n"),
        ("/-/ready", &Method::GET | &Method::HEAD) => match state.config.ready.load(Ordering::Acquire) {
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
async fn scrape(state: &State, format: metrics::Format, gzip: bool) -> Option<Bytes> {
    let arrived = Instant::now();
    let slot = format as usize * 2 + usize::from(gzip);
    state.scrape_waiting.fetch_add(1, Ordering::SeqCst);
    let mut cache = state.scrape.lock().await;
    state.scrape_waiting.fetch_sub(1, Ordering::SeqCst);
    if let Some((started, body)) = &cache.last[slot]
        && *started >= arrived
    {
        return Some(body.clone());
    }
    let started = Instant::now();
    let collector = Arc::clone(&state.collector);
    let capacity = cache.last_len + cache.last_len / 16 + 4096;
    let (len, body) = tokio::task::spawn_blocking(move || {
        let g = collector.gather();
        let mut page = metrics::page_buffer(capacity);
        collector.encode(g, format, &mut page);
        let len = page.len();
        let body = if gzip {
            Bytes::from(metrics::gzip(page.as_bytes()))
        } else {
            Bytes::from(page)
        };
        (len, body)
    })
    .await
    .ok()?;
    cache.last_len = len;
    // Only a request waiting now can take this page (one that comes later arrives after
    // this scrape started); with nobody waiting, no page is held between scrapes.
    if state.scrape_waiting.load(Ordering::SeqCst) > 0 {
        cache.last[slot] = Some((started, body.clone()));
    } else {
        cache.last = Default::default();
    }
    Some(body)
}

/// The landing page as it is now, rendered once for everyone who arrived while a render was
/// running or before it started (a page open in many tabs). `None` if the gather failed.
async fn landing_html(state: &State) -> Option<Bytes> {
    let arrived = Instant::now();
    let mut cache = state.landing.lock().await;
    if let Some((started, html)) = cache.as_ref()
        && *started >= arrived
    {
        return Some(html.clone());
    }
    let started = Instant::now();
    let g = api::gathered(state).await?;
    let (path, lifecycle, tracking) = (
        state.config.telemetry_path.clone(),
        state.config.enable_lifecycle,
        state.collector.tracking().to_owned(),
    );
    let html = tokio::task::spawn_blocking(move || {
        landing::render(&crate::status::StatusInfo::new(&g), &path, lifecycle, &tracking)
    })
    .await
    .ok()?;
    *cache = Some((started, html.clone()));
    Some(html)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
