//! The landing page: a table of programs and watches rendered on the server (it reads without
//! JavaScript), refreshed every few seconds by a same-origin script from `/api/v1/programs`,
//! with the last output lines of a program on demand and, with `--web.enable-lifecycle`,
//! start/stop/restart buttons. No inline script or style and nothing from elsewhere, so it works
//! offline and under the strict Content-Security-Policy it is served with.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::Body;
use crate::status::{ProgramRow, StatusInfo};

pub const SCRIPT_PATH: &str = "/static/procwatch.js";
pub const STYLE_PATH: &str = "/static/procwatch.css";
const SCRIPT: &str = include_str!("static/procwatch.js");
const STYLE: &str = include_str!("static/procwatch.css");

/// Only this origin's script, style and API; no frames, forms, plugins or inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_headers(mut resp: Response<Body>, content_type: &'static str) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The page's script or stylesheet, if `path` names one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        SCRIPT_PATH => (SCRIPT, "text/javascript; charset=utf-8"),
        STYLE_PATH => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = with_headers(
        Response::new(Full::new(Bytes::from_static(body.as_bytes()))),
        content_type,
    );
    // The files change only with the binary; a version in the URL would be nicer, a short
    // cache is enough.
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    Some(resp)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page's HTML, with the table as it is now. `tracking`: the tracking mode in force and
/// why (it does not change while procwatch runs, so the script leaves it alone).
pub fn render(info: &StatusInfo, telemetry_path: &str, lifecycle: bool, tracking: &str) -> Bytes {
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>procwatch</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <link rel=\"stylesheet\" href=\"{STYLE_PATH}\"><script src=\"{SCRIPT_PATH}\" defer></script></head>\
         <body data-lifecycle=\"{lifecycle}\"><h1>procwatch</h1>\
         <p>version {} &middot; <a href=\"{}\">Metrics</a> &middot; <a href=\"api/v1/programs\">API</a> \
         &middot; <span id=\"updated\">as of page load</span></p><p id=\"tracking\">tracking: {}</p><h2>Programs</h2>\
         <table id=\"programs\"><thead><tr><th>name</th><th>state</th><th>ready</th><th>pid</th><th>uptime</th>\
         <th>cpu</th><th>memory</th><th>restarts</th><th>last exit</th><th>command</th><th></th></tr></thead><tbody>",
        env!("CARGO_PKG_VERSION"),
        esc(telemetry_path),
        esc(tracking)
    );
    for p in &info.programs {
        let r = ProgramRow::new(p);
        let _ = write!(
            s,
            "<tr data-name=\"{n}\"><td>{n}</td><td class=\"state {st}\">{st}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td></td></tr>",
            r.ready,
            r.pid,
            r.uptime,
            r.cpu,
            r.memory,
            r.restarts,
            esc(&r.last_exit),
            esc(&r.command),
            n = esc(&r.name),
            st = esc(&r.state),
        );
    }
    s.push_str(
        "</tbody></table><section id=\"logs\" hidden><h2>Output of <span id=\"logs-name\"></span></h2>\
         <p id=\"logs-note\"></p><pre id=\"logs-lines\"></pre></section>\
         <h2>Watches</h2><table id=\"watches\"><thead><tr><th>name</th><th>path</th><th>state</th>",
    );
    for k in crate::watch::KINDS {
        let _ = write!(s, "<th>{k}</th>");
    }
    s.push_str("<th>overflows</th><th>errors</th></tr></thead><tbody>");
    for w in &info.watches {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>",
            esc(&w.name),
            esc(&w.path),
            if w.up { "up" } else { "down" }
        );
        for k in crate::watch::KINDS {
            let _ = write!(s, "<td>{}</td>", w.events.get(k).copied().unwrap_or(0));
        }
        let _ = write!(s, "<td>{}</td><td>{}</td></tr>", w.overflows, w.errors);
    }
    s.push_str("</tbody></table></body></html>\n");
    Bytes::from(s)
}

/// The page's response, for HTML from [`render`].
pub fn page(html: Bytes) -> Response<Body> {
    let mut resp = with_headers(Response::new(Full::new(html)), "text/html; charset=utf-8");
    *resp.status_mut() = StatusCode::OK;
    resp
}
