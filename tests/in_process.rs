//! procwatch as a library: `app::run` in this process on 127.0.0.1:0, stopped by its token.
//! In a test binary of its own: `run` makes this process a child subreaper that reaps every
//! child, which would take other tests' children from them.

mod util;

use std::time::Duration;

use procwatch::app::{self, Options};
use procwatch::config::Config;
use tokio_util::sync::CancellationToken;
use util::Scrape;

async fn scrape(addr: String) -> Option<Scrape> {
    tokio::task::spawn_blocking(move || util::http(&addr, "GET", "/metrics", "").ok())
        .await
        .ok()
        .flatten()
        .filter(|r| r.0 == 200)
        .map(|r| Scrape::parse(r.2))
}

async fn wait_scrape(addr: &str, what: &str, f: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = scrape(addr.to_owned()).await.filter(|s| f(s)) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_counts_and_stops_on_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "status_interval: 0\nprocesses:\n  - name: app\n    command: [sh, -c, 'echo $$ > pid; exec sleep 600']\n    cwd: {d}\nwatches:\n  - name: here\n    path: {d}\n    include: ['*.txt']\n",
        d = dir.path().display()
    );
    let config = Config::parse(&yaml, "inline.yaml").unwrap();
    let options = Options {
        listen_address: Some("127.0.0.1:0".to_owned()),
        telemetry_path: "/metrics".to_owned(),
        enable_lifecycle: false,
        web_config: None,
        guardian: false,
        control_socket: procwatch::http::SocketSetting::Off,
        collectors: procwatch::metrics::Groups::all(),
    };
    let listener = app::bind(&options, &config).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app::run(options, config, listener, shutdown.clone()));

    let s = wait_scrape(&addr, "app up and the watch up", |s| {
        s.prog("procwatch_process_up", "app") == Some(1.0)
            && s.get("procwatch_file_watch_up", &[("watch", "here")]) == Some(1.0)
    })
    .await;
    let pid = s.prog("procwatch_process_pid", "app").unwrap() as i32;
    std::fs::write(dir.path().join("a.txt"), "").unwrap();
    wait_scrape(&addr, "the created file", |s| {
        s.get("procwatch_file_events_total", &[("watch", "here"), ("kind", "create")]) == Some(1.0)
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run returns after its token is cancelled")
        .unwrap()
        .unwrap();
    // SAFETY: signal 0 only checks for existence.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the program is gone");
    assert!(util::http(&addr, "GET", "/metrics", "").is_err(), "no longer serving");
}
