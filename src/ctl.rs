//! `procwatch ctl`: operates a running procwatch through its control socket, or over HTTP(S)
//! with `--url` (credentials from PROCWATCH_USER/PROCWATCH_PASSWORD, CA from `--ca-file`).
//!
//! Exit codes as the contract says: 0 when the command was carried out, 1 when it was refused
//! or failed (unknown program, nobody listening, 401/403, a failed reload), 2 for a usage
//! error or an answer that makes no sense.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::api::{self, CommandReply, ErrorReply, LogsReply};
use crate::http::control_socket;
use crate::status::{self, StatusInfo};

#[derive(Parser, Debug)]
#[command(
    name = "procwatch ctl",
    bin_name = "procwatch ctl",
    about = "Operate a running procwatch: status, start, stop, restart, signal, logs, reload."
)]
struct CtlCli {
    /// The control socket [default: $RUNTIME_DIRECTORY/procwatch.sock, else /run/procwatch.sock
    /// as root, else $XDG_RUNTIME_DIR/procwatch.sock].
    #[arg(long, value_name = "PATH", conflicts_with = "url", global = true)]
    socket: Option<PathBuf>,
    /// Talk HTTP(S) to this procwatch instead, e.g. https://host:9407 (credentials from
    /// PROCWATCH_USER and PROCWATCH_PASSWORD; state-changing commands need
    /// --web.enable-lifecycle there).
    #[arg(long, value_name = "URL", global = true)]
    url: Option<String>,
    /// CA certificate(s) to trust for an https:// URL [default: the system's bundle].
    #[arg(long = "ca-file", value_name = "FILE", global = true)]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// State, PID, uptime, CPU, memory, restarts, readiness and last exit per program; watches.
    Status {
        /// Only these programs.
        names: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Start programs (also ones stopped by hand).
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop programs; they stay stopped until started by hand or changed by a reload.
    Stop {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Restart programs (not counted as a policy restart).
    Restart {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Send a signal (HUP, USR1, ... or a number) to a program's process group.
    Signal { name: String, signal: String },
    /// The last lines of a program's output.
    Logs {
        name: String,
        /// How many lines.
        #[arg(short = 'n', long = "lines", default_value_t = api::DEFAULT_LINES)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short = 'f', long = "follow")]
        follow: bool,
    },
    /// Re-read the config, as SIGHUP does.
    Reload,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// How often `logs -f` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);
/// A request that gets no answer in this time fails (a stop may take its stop_timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a command failed; the message is what the user sees.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    /// Refused or failed: exit 1.
    #[error("{0}")]
    Refused(String),
    /// An answer that makes no sense, or a bad argument: exit 2.
    #[error("{0}")]
    Unexpected(String),
}

impl CtlError {
    fn code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Unexpected(_) => 2,
        }
    }
}

/// Where procwatch is.
enum Target {
    Socket(PathBuf),
    Url {
        uri: Uri,
        tls: Option<Arc<rustls::ClientConfig>>,
        auth: Option<HeaderValue>,
    },
}

/// Runs `procwatch ctl ARGS` (`args` starts with `ctl`); returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    let cli = match CtlCli::try_parse_from(args) {
        Ok(c) => c,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { 2 } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("procwatch ctl: cannot start the runtime: {err}");
            return 2;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("procwatch ctl: {err}");
            err.code()
        }
    }
}

async fn run(cli: CtlCli) -> Result<(), CtlError> {
    let target = target(&cli)?;
    match cli.command {
        Command::Status { names, output } => {
            let mut info: StatusInfo = get_json(&target, "/api/v1/programs").await?;
            if !names.is_empty() {
                if let Some(unknown) = names.iter().find(|n| !info.programs.iter().any(|p| &p.name == *n)) {
                    return Err(CtlError::Refused(format!("no program named {unknown:?}")));
                }
                info.programs.retain(|p| names.contains(&p.name));
                info.watches.clear();
            }
            match output {
                Format::Table => print!("{}", status::render_info(&info)),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&info).map_err(|e| CtlError::Unexpected(e.to_string()))?
                ),
            }
            Ok(())
        }
        Command::Start { names } => commands(&target, &names, "start", "").await,
        Command::Stop { names } => commands(&target, &names, "stop", "").await,
        Command::Restart { names } => commands(&target, &names, "restart", "").await,
        Command::Signal { name, signal } => {
            let Some(number) = api::parse_signal(&signal) else {
                return Err(CtlError::Unexpected(format!(
                    "unknown signal {signal:?} (use a name like HUP, USR1, TERM, or a number)"
                )));
            };
            commands(&target, &[name], "signal", &format!("?signal={number}")).await
        }
        Command::Logs { name, lines, follow } => logs(&target, &name, lines, follow).await,
        Command::Reload => {
            let (status, body) = request(&target, Method::POST, "/-/reload").await?;
            let text = String::from_utf8_lossy(&body);
            if status == StatusCode::OK {
                print!("{text}");
                Ok(())
            } else {
                Err(refusal(&target, status).unwrap_or_else(|| CtlError::Refused(text.trim().to_owned())))
            }
        }
    }
}

fn target(cli: &CtlCli) -> Result<Target, CtlError> {
    let Some(url) = &cli.url else {
        let path = match &cli.socket {
            Some(p) => p.clone(),
            None => control_socket::default_path().ok_or_else(|| {
                CtlError::Refused(
                    "no control socket path: RUNTIME_DIRECTORY and XDG_RUNTIME_DIR are unset and not root; \
                     pass --socket PATH or --url URL"
                        .into(),
                )
            })?,
        };
        return Ok(Target::Socket(path));
    };
    let uri: Uri = url
        .trim_end_matches('/')
        .parse()
        .map_err(|e| CtlError::Unexpected(format!("--url {url:?}: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(tls_config(cli.ca_file.as_deref())?),
        _ => {
            return Err(CtlError::Unexpected(format!(
                "--url {url:?}: must start with http:// or https://"
            )));
        }
    };
    if uri.host().is_none() {
        return Err(CtlError::Unexpected(format!("--url {url:?}: no host")));
    }
    let auth =
        match (std::env::var("PROCWATCH_USER"), std::env::var("PROCWATCH_PASSWORD")) {
            (Ok(user), Ok(password)) => {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                    CtlError::Unexpected("PROCWATCH_USER/PROCWATCH_PASSWORD: not valid in a header".into())
                })?)
            }
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                return Err(CtlError::Unexpected(
                    "set both PROCWATCH_USER and PROCWATCH_PASSWORD, or neither".into(),
                ));
            }
            _ => None,
        };
    Ok(Target::Url { uri, tls, auth })
}

/// The CA file given, else the system's bundle.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CtlError> {
    const SYSTEM_BUNDLES: [&str; 3] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    let path = match ca_file {
        Some(p) => p.to_owned(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| CtlError::Refused("no system CA bundle found; pass --ca-file".into()))?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CtlError::Refused(format!("--ca-file {}: {e}", path.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(CtlError::Refused(format!(
            "--ca-file {}: no certificate in it",
            path.display()
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| CtlError::Unexpected(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn describe(target: &Target) -> String {
    match target {
        Target::Socket(p) => format!("control socket {}", p.display()),
        Target::Url { uri, .. } => uri.to_string(),
    }
}

/// One request; the answer's status and body.
async fn request(target: &Target, method: Method, path: &str) -> Result<(StatusCode, Bytes), CtlError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request_once(target, method, path)).await {
        Ok(r) => r,
        Err(_) => Err(CtlError::Refused(format!(
            "{}: no answer within {REQUEST_TIMEOUT:?}",
            describe(target)
        ))),
    }
}

async fn request_once(target: &Target, method: Method, path: &str) -> Result<(StatusCode, Bytes), CtlError> {
    let unreachable = |err: std::io::Error| {
        let what = describe(target);
        CtlError::Refused(match (target, err.raw_os_error()) {
            (Target::Socket(_), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
                format!("procwatch is not running at {what} (nothing listening: {err})")
            }
            (Target::Socket(_), Some(libc::EACCES | libc::EPERM)) => format!(
                "{what}: permission denied (the socket is mode 0600: run ctl as the user procwatch runs as, or root)"
            ),
            (Target::Url { .. }, Some(libc::ECONNREFUSED)) => {
                format!("nothing listening at {what} ({err})")
            }
            _ => format!("cannot reach {what}: {err}"),
        })
    };
    match target {
        Target::Socket(path_) => {
            let stream = tokio::net::UnixStream::connect(path_).await.map_err(unreachable)?;
            exchange(stream, method, "localhost", path, None).await
        }
        Target::Url { uri, tls, auth } => {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
            let full = format!("{}{path}", uri.path().trim_end_matches('/'));
            let authority = uri.authority().map_or(host, |a| a.as_str());
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(unreachable)?;
            match tls {
                None => exchange(stream, method, authority, &full, auth.as_ref()).await,
                Some(config) => {
                    let name = ServerName::try_from(host.to_owned())
                        .map_err(|e| CtlError::Unexpected(format!("--url host {host:?}: {e}")))?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, stream)
                        .await
                        .map_err(|e| CtlError::Refused(format!("TLS with {}: {e}", describe(target))))?;
                    exchange(stream, method, authority, &full, auth.as_ref()).await
                }
            }
        }
    }
}

async fn exchange<IO>(
    io: IO,
    method: Method,
    host: &str,
    path: &str,
    auth: Option<&HeaderValue>,
) -> Result<(StatusCode, Bytes), CtlError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |e: hyper::Error| CtlError::Refused(format!("the connection to procwatch failed: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(broken)?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| CtlError::Unexpected(e.to_string()))?;
    if let Some(a) = auth {
        req.headers_mut().insert(AUTHORIZATION, a.clone());
    }
    let resp = sender.send_request(req).await.map_err(broken)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(broken)?.to_bytes();
    driver.abort();
    Ok((status, body))
}

/// 401 and 403, explained.
fn refusal(target: &Target, status: StatusCode) -> Option<CtlError> {
    let what = describe(target);
    let message = match status {
        StatusCode::UNAUTHORIZED => match target {
            Target::Url { auth: Some(_), .. } => {
                format!(
                    "refused by {what}: 401 Unauthorized: the credentials in PROCWATCH_USER/PROCWATCH_PASSWORD were not accepted"
                )
            }
            _ => format!(
                "refused by {what}: 401 Unauthorized: it asks for basic auth; set PROCWATCH_USER and PROCWATCH_PASSWORD"
            ),
        },
        StatusCode::FORBIDDEN => format!(
            "refused by {what}: 403 Forbidden: state-changing commands over HTTP need procwatch started with \
             --web.enable-lifecycle; or use the control socket"
        ),
        _ => return None,
    };
    Some(CtlError::Refused(message))
}

/// The error of a non-2xx answer: the API's JSON message, or the body.
fn failure(target: &Target, status: StatusCode, body: &[u8]) -> CtlError {
    if let Some(r) = refusal(target, status) {
        return r;
    }
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(e) => CtlError::Refused(e.error),
        Err(_) => CtlError::Refused(format!(
            "{}: {status}: {}",
            describe(target),
            String::from_utf8_lossy(body).trim()
        )),
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(target: &Target, path: &str) -> Result<T, CtlError> {
    let (status, body) = request(target, Method::GET, path).await?;
    if !status.is_success() {
        return Err(failure(target, status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| {
        CtlError::Unexpected(format!(
            "{} answered something that is not procwatch's API ({e}); is it a procwatch of the same version?",
            describe(target)
        ))
    })
}

/// One command per name, in order; every name is tried, the first failure decides the exit.
async fn commands(target: &Target, names: &[String], action: &str, query: &str) -> Result<(), CtlError> {
    let mut first_error = None;
    for name in names {
        let path = format!("/api/v1/programs/{name}/{action}{query}");
        let result = match request(target, Method::POST, &path).await {
            Ok((status, body)) if status.is_success() => serde_json::from_slice::<CommandReply>(&body)
                .map_err(|e| CtlError::Unexpected(format!("{}: unexpected answer: {e}", describe(target)))),
            Ok((status, body)) => Err(failure(target, status, &body)),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => println!("{}", describe_reply(&r)),
            Err(e) => {
                eprintln!("procwatch ctl: {action} {name}: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(()),
        // Each error was printed with its program's name already.
        Some(e) => Err(match e {
            CtlError::Refused(_) => CtlError::Refused(format!("{action}: not every program was {action}ed")),
            CtlError::Unexpected(m) => CtlError::Unexpected(m),
        }),
    }
}

fn describe_reply(r: &CommandReply) -> String {
    let pid = |p: Option<i32>| p.map_or_else(|| "none".to_owned(), |p| p.to_string());
    match r.action.as_str() {
        "start" if r.pid_before.is_some() => format!("{}: already running (pid {})", r.name, pid(r.pid_after)),
        "start" => format!("{}: started (pid {})", r.name, pid(r.pid_after)),
        "stop" => format!("{}: stopped by hand (was pid {})", r.name, pid(r.pid_before)),
        "restart" => format!(
            "{}: restarted (pid {} -> {})",
            r.name,
            pid(r.pid_before),
            pid(r.pid_after)
        ),
        _ => format!("{}: signal sent (pid {})", r.name, pid(r.pid_after)),
    }
}

async fn logs(target: &Target, name: &str, lines: usize, follow: bool) -> Result<(), CtlError> {
    use std::io::Write as _;
    let mut path = format!("/api/v1/programs/{name}/logs?lines={lines}");
    let mut warned = false;
    loop {
        let reply: LogsReply = get_json(target, &path).await?;
        if !reply.captured && !warned {
            eprintln!("procwatch ctl: the output of {name:?} is not captured; there are no lines to show");
            warned = true;
        }
        let mut out = std::io::stdout().lock();
        for l in &reply.lines {
            let _ = writeln!(out, "{}", l.text);
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        if let Some(last) = reply.lines.last() {
            path = format!(
                "/api/v1/programs/{name}/logs?lines={}&after={}",
                api::MAX_LINES,
                last.seq
            );
        }
        // No line yet: ask for the tail again (an `after` would skip line 0).
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
