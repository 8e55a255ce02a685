//! The landing page in a real browser: headless Chromium, driven through chromedriver's
//! WebDriver HTTP protocol, loads the page under its Content-Security-Policy, the page's own
//! script fills the table from the API, a click on "restart" changes the program's PID, and
//! "logs" opens the output panel.
//!
//! Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). Where they are
//! missing the test says so and passes, except under CI (CI=true) or
//! PROCWATCH_REQUIRE_CHROMIUM=1, where their absence is a failure.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use util::{Procwatch, wait_for};

const T: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(DRIVER).exists() {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("PROCWATCH_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{CHROMIUM} and {DRIVER} are required here (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: the browser test needs {CHROMIUM} and {DRIVER} (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        wait_for(T, "chromedriver to listen", || {
            b.call("GET", "/status", None)
                .ok()
                .filter(|v| v["value"]["ready"] == true)
        });
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b.call("POST", "/session", Some(caps)).expect("new session");
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Some(b)
    }

    /// One WebDriver request; the answer's JSON.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> std::io::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(T))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let (head_len, length) = loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other("chromedriver closed the connection"));
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head}")))?;
                break (end + 4, length);
            }
        };
        while raw.len() < head_len + length {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw[head_len..]).into_owned();
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self
            .call(method, &format!("/session/{}{path}", self.session), body)
            .expect("webdriver call");
        assert!(v["value"].get("error").is_none(), "{method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` in the page and returns its result.
    fn eval(&self, script: &str) -> Value {
        self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    fn click(&self, css: &str) {
        let el = self.session_call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned();
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// The browser's console messages so far.
    fn console(&self) -> String {
        self.call(
            "POST",
            &format!("/session/{}/se/log", self.session),
            Some(json!({"type": "browser"})),
        )
        .map(|v| v["value"].to_string())
        .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const CELL: &str = "return (function(name, cls) { const r = document.querySelector('#programs tr[data-name=\"' + name + '\"]'); if (!r) return null; const c = r.querySelector('td.' + cls); return c ? c.textContent : null; })";

fn cell(b: &Browser, name: &str, class: &str) -> Option<String> {
    b.eval(&format!("{CELL}('{name}', '{class}');"))
        .as_str()
        .map(str::to_owned)
}

#[test]
fn the_landing_page_refreshes_itself_and_restarts_a_program_in_a_real_browser() {
    let Some(b) = Browser::start() else { return };
    let pw = Procwatch::start(
        "status_interval: 0\nprocesses:\n  - name: web\n    command: [sleep, '600']\n  - name: other\n    command: [sleep, '600']\nwatches:\n  - name: drop\n    path: drop\n",
        &["--web.enable-lifecycle"],
    );
    std::fs::create_dir(pw.path("drop")).unwrap();
    let pid = |name: &str| {
        wait_for(T, "a PID", || {
            pw.scrape().prog("procwatch_process_pid", name).map(|p| p as i32)
        })
    };
    let (web0, other0) = (pid("web"), pid("other"));
    b.goto(&format!("http://{}/", pw.addr));
    // The rows the page's script built from the API (a server-rendered row has no td.pid).
    let shown = wait_for(T, "the script to fill the table", || cell(&b, "web", "pid"));
    assert_eq!(shown, web0.to_string());
    assert_eq!(cell(&b, "web", "state").as_deref(), Some("running"));
    assert_eq!(cell(&b, "other", "pid"), Some(other0.to_string()));

    b.click("#programs tr[data-name=\"web\"] button.restart");
    let web1 = wait_for(T, "the new PID in the page", || {
        cell(&b, "web", "pid").filter(|p| *p != web0.to_string() && p != "-")
    });
    assert_eq!(web1, pid("web").to_string(), "the page shows the PID procwatch reports");
    assert_eq!(pid("other"), other0, "restarting web never touches other");
    assert_eq!(
        pw.scrape().get(
            "procwatch_process_control_actions_total",
            &[("name", "web"), ("action", "restart")]
        ),
        Some(1.0)
    );

    b.click("#programs tr[data-name=\"other\"] button.stop");
    wait_for(T, "other stopped by hand in the page", || {
        (cell(&b, "other", "state").as_deref() == Some("stopped-by-hand")).then_some(())
    });

    b.click("#programs tr[data-name=\"web\"] button.logs");
    wait_for(T, "the output panel", || {
        let v = b.eval(
            "const s = document.getElementById('logs'); return s.hidden ? null : document.getElementById('logs-name').textContent + '|' + document.getElementById('logs-note').textContent;",
        );
        v.as_str()
            .filter(|t| t.starts_with("web|") && t.len() > 4)
            .map(str::to_owned)
    });

    // The watches table refreshes too.
    wait_for(T, "the watch up", || {
        (pw.scrape().get("procwatch_file_watch_up", &[("watch", "drop")]) == Some(1.0)).then_some(())
    });
    std::fs::write(pw.path("drop/new.csv"), "x").unwrap();
    wait_for(T, "the page to count the create", || {
        let v = b.eval("const c = document.querySelector('#watches tr[data-watch=\"drop\"] td.create'); return c ? c.textContent : null;");
        v.as_str().filter(|n| *n != "0").map(str::to_owned)
    });

    let console = b.console();
    assert!(
        !console.contains("Content Security Policy") && !console.contains("Refused to"),
        "the page breaks its own CSP: {console}"
    );
}

#[test]
fn without_lifecycle_the_page_has_no_buttons_that_change_state() {
    let Some(b) = Browser::start() else { return };
    let pw = Procwatch::start(
        "status_interval: 0\nprocesses:\n  - name: web\n    command: [sleep, '600']\n",
        &[],
    );
    b.goto(&format!("http://{}/", pw.addr));
    wait_for(T, "the script to fill the table", || cell(&b, "web", "pid"));
    let buttons =
        b.eval("return Array.from(document.querySelectorAll('#programs button')).map(b => b.textContent).join(',');");
    assert_eq!(buttons, "logs");
}

/// The page says which tracking mode is in force, as procwatch_tracking_info does.
#[test]
fn the_landing_page_shows_the_tracking_mode() {
    let Some(b) = Browser::start() else { return };
    let pw = Procwatch::start(
        "status_interval: 0\nprocesses:\n  - name: web\n    command: [sleep, '600']\n",
        &[],
    );
    let s = pw.scrape();
    let mode = ["cgroup", "proc"]
        .into_iter()
        .find(|m| s.get("procwatch_tracking_info", &[("mode", m)]) == Some(1.0))
        .unwrap_or_else(|| panic!("no procwatch_tracking_info: {}", s.text));
    b.goto(&format!("http://{}/", pw.addr));
    wait_for(T, "the script to fill the table", || cell(&b, "web", "pid"));
    let line = b.eval("return document.getElementById('tracking').textContent;");
    let line = line.as_str().unwrap_or_default();
    assert!(line.starts_with(&format!("tracking: {mode} mode")), "{line:?} ({mode})");
    let log = pw.stderr();
    assert!(
        log.contains(&line[..line.len().min(60)]),
        "the page shows the logged line: {line:?}\n{log}"
    );
}
