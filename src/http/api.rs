//! `/api/v1/`: programs' status as JSON, commands by hand (start, stop, restart, signal) and
//! the last lines of a program's output. Served on the TCP listener (state-changing routes need
//! `--web.enable-lifecycle`, auth as the web config says) and on the control socket (guarded by
//! its file mode).
//!
//! JSON goes through serde_json: the status structs derive Serialize/Deserialize once (in
//! `status`), and `ctl` reads back exactly what this module writes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::{Body, State};
use crate::config::{OutputConfig, Signal};
use crate::metrics::Gathered;
use crate::status::StatusInfo;
use crate::supervisor::{Action, Control, ControlError, Origin};

/// Lines `logs` returns when the request names no count, and at most.
pub const DEFAULT_LINES: usize = 100;
pub const MAX_LINES: usize = 10_000;

/// What the API needs besides the collector: the command handle, and one collapsed gather
/// shared by `/`, `/api/v1/programs` and every listener.
#[derive(Clone)]
pub struct Api {
    control: Control,
    cache: Arc<tokio::sync::Mutex<Option<LastGather>>>,
}

/// When the last gather started, and what it found.
type LastGather = (Instant, Arc<Gathered>);

impl Api {
    pub fn new(control: Control) -> Api {
        Api {
            control,
            cache: Arc::default(),
        }
    }
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub name: String,
    pub action: String,
    /// The main PID before and after.
    pub pid_before: Option<i32>,
    pub pid_after: Option<i32>,
}

/// One line of captured output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub stream: String,
    pub text: String,
}

/// The answer to `logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    pub name: String,
    /// False while output capture is not available for this program.
    pub captured: bool,
    pub lines: Vec<LogLine>,
}

/// An error, as JSON: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// Gathers once for everyone who arrived while a gather was running or before it started: a
/// page that polls every few seconds from many tabs costs one /proc pass per round.
pub(super) async fn gathered(state: &State) -> Option<Arc<Gathered>> {
    let arrived = Instant::now();
    let mut cache = state.api.cache.lock().await;
    if let Some((started, g)) = cache.as_ref()
        && *started >= arrived
    {
        return Some(Arc::clone(g));
    }
    let started = Instant::now();
    let collector = Arc::clone(&state.collector);
    let g = Arc::new(tokio::task::spawn_blocking(move || collector.gather()).await.ok()?);
    *cache = Some((started, Arc::clone(&g)));
    Some(g)
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &ErrorReply { error: message.into() })
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Routes one request under `/api/v1/`.
pub(super) async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/api/v1/programs").unwrap_or("\u{0}");
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    let method = req.method().clone();
    match (rest, parts.as_slice(), &method) {
        ("" | "/", _, &Method::GET) => match gathered(state).await {
            Some(g) => json(StatusCode::OK, &StatusInfo::new(&g)),
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gathering status failed; see the log",
            ),
        },
        (_, [name], &Method::GET) => match gathered(state).await {
            Some(g) => match StatusInfo::new(&g).programs.into_iter().find(|p| p.name == *name) {
                Some(p) => json(StatusCode::OK, &p),
                None => error(
                    StatusCode::NOT_FOUND,
                    ControlError::UnknownProgram((*name).to_owned()).to_string(),
                ),
            },
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gathering status failed; see the log",
            ),
        },
        (_, [name, "logs"], &Method::GET) => logs(state, name, &req),
        (_, [name, action @ ("start" | "stop" | "restart" | "signal")], &Method::POST) => {
            if !state.config.enable_lifecycle {
                return error(
                    StatusCode::FORBIDDEN,
                    "lifecycle APIs are not enabled (--web.enable-lifecycle)",
                );
            }
            let action = match *action {
                "start" => Action::Start,
                "stop" => Action::Stop,
                "restart" => Action::Restart,
                _ => {
                    let Some(text) = query(&req, "signal") else {
                        return error(StatusCode::BAD_REQUEST, "signal needs ?signal=NAME (HUP, USR1, ...)");
                    };
                    match parse_signal(text) {
                        Some(sig) => Action::Signal(sig),
                        None => return error(StatusCode::BAD_REQUEST, format!("unknown signal {text:?}")),
                    }
                }
            };
            command(&state.api.control, name, action).await
        }
        (_, [_] | [_, "logs" | "start" | "stop" | "restart" | "signal"], _) | ("" | "/", _, _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such API path"),
    }
}

/// A signal by name (`HUP`, `SIGHUP`) or number.
pub fn parse_signal(text: &str) -> Option<i32> {
    match text.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => Some(n),
        Ok(_) => None,
        Err(_) => Signal::parse(text).map(|s| s.0),
    }
}

async fn command(control: &Control, name: &str, action: Action) -> Response<Body> {
    match control.send(name, action, Origin::Hand).await {
        Ok(outcome) => json(
            StatusCode::OK,
            &CommandReply {
                name: name.to_owned(),
                action: action.as_str().to_owned(),
                pid_before: outcome.before,
                pid_after: outcome.after,
            },
        ),
        Err(err) => {
            let status = match err {
                ControlError::UnknownProgram(_) => StatusCode::NOT_FOUND,
                ControlError::NotRunning(_) => StatusCode::CONFLICT,
                ControlError::Busy(_) | ControlError::Gone(_) => StatusCode::SERVICE_UNAVAILABLE,
                ControlError::StartFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, err.to_string())
        }
    }
}

fn logs(state: &State, name: &str, req: &Request<Incoming>) -> Response<Body> {
    let Some(program) = state.collector.program(name) else {
        return error(
            StatusCode::NOT_FOUND,
            ControlError::UnknownProgram(name.to_owned()).to_string(),
        );
    };
    let lines = match query(req, "lines").map(str::parse::<usize>) {
        None => DEFAULT_LINES,
        Some(Ok(n)) => n.min(MAX_LINES),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "lines must be a number"),
    };
    let after = match query(req, "after").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "after must be a number"),
    };
    let output = program.output();
    let kept = match after {
        None => output.tail(lines),
        Some(seq) => output.after(seq, lines),
    };
    json(
        StatusCode::OK,
        &LogsReply {
            name: name.to_owned(),
            // `output: inherit` passes the program's output through untouched: nothing is kept.
            captured: !matches!(program.status().config.output, OutputConfig::Inherit),
            lines: kept
                .into_iter()
                .map(|l| LogLine {
                    seq: l.seq,
                    stream: l.stream.as_str().to_owned(),
                    text: l.text,
                })
                .collect(),
        },
    )
}
