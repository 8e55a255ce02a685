//! The endpoint behind --web.config.file (TLS with rustls, bcrypt basic auth, headers,
//! certificate rotation), and bounded HTTP: idle connections and huge headers.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::pki_types::{CertificateDer, ServerName};
use util::{Procwatch, http, run_to_end, wait_for};

const T: Duration = Duration::from_secs(30);

/// A CA and a server certificate for 127.0.0.1, written as PEM files.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "procwatch test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca,
        };
        pki.issue("first");
        pki
    }

    /// Writes a new server certificate and key; returns the certificate's DER.
    fn issue(&self, cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        // Replaced by rename, as rotation tools do. Key first, then the certificate.
        replace(&self.dir.join("server.key"), &key.serialize_pem());
        replace(&self.dir.join("server.pem"), &cert.pem());
        cert.der().to_vec()
    }

    /// A client certificate signed by the CA, as (cert chain, key) for rustls.
    fn client_identity(&self) -> (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        self.client_identity_named(&[])
    }

    /// The same, with these subject alternative names (DNS names or IP addresses).
    fn client_identity_named(
        &self,
        sans: &[&str],
    ) -> (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "prometheus");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (vec![CertificateDer::from(cert.der().to_vec())], der.into())
    }

    /// A client that trusts this CA and presents a certificate from `identity`'s CA.
    fn client_with_cert(&self, identity: &Pki) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca.der().to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = identity.client_identity();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca.der().to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// GET over TLS: (status, head, body, the server's certificate).
fn https(
    addr: &str,
    client: &Arc<rustls::ClientConfig>,
    path: &str,
    auth: Option<&str>,
) -> std::io::Result<(u16, String, String, Vec<u8>)> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let conn = rustls::ClientConnection::new(Arc::clone(client), ServerName::try_from("127.0.0.1").unwrap())
        .map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let auth = auth
        .map(|a| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        })
        .unwrap_or_default();
    write!(tls, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n")?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // Our server closes without close_notify after Connection: close at times.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned(), peer))
}

/// Replaces `path` with `text` by rename: procwatch, which re-reads its web config and
/// certificates when they change, sees the old file or the new one, never half of one (a
/// truncated web config is a valid one: no TLS, no authentication).
fn replace(path: &Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hash(password: &str) -> String {
    // Cost 4 keeps the test quick; the server takes any cost.
    bcrypt::hash(password, 4).unwrap().replacen("$2b$", "$2y$", 1)
}

/// A web config with TLS from `Pki`'s files, a header, and `users` (YAML lines) if any.
fn web_config(dir: &Path, users: &str) -> PathBuf {
    let path = dir.join("web.yml");
    let mut text = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Frame-Options: DENY\n".to_owned();
    if !users.is_empty() {
        text.push_str(&format!("basic_auth_users:\n{users}"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_endpoint_is_behind_tls_and_basic_auth() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let web = web_config(certs.path(), &format!("  prometheus: '{}'\n", hash("s3cret")));
    let pw = Procwatch::start(
        "processes:\n  - name: web\n    command: [sleep, '600']\n",
        &["--web.config.file", web.to_str().unwrap(), "--web.enable-lifecycle"],
    );
    let client = pki.client();
    for path in ["/metrics", "/", "/-/healthy", "/-/ready", "/nope"] {
        let (status, head, _, _) = https(&pw.addr, &client, path, None).unwrap();
        assert_eq!(status, 401, "{path} without credentials");
        assert!(head.contains("www-authenticate: Basic realm=\"procwatch\""), "{head}");
        let (status, _, _, _) = https(&pw.addr, &client, path, Some("prometheus:wrong")).unwrap();
        assert_eq!(status, 401, "{path} with a wrong password");
        let (status, _, _, _) = https(&pw.addr, &client, path, Some("nobody:s3cret")).unwrap();
        assert_eq!(status, 401, "{path} with an unknown user");
    }
    // Ready is not waited for over TLS, and `web` may still be starting: wait for it.
    let (status, head, _, _) = wait_for(T, "web up over TLS", || {
        https(&pw.addr, &client, "/metrics", Some("prometheus:s3cret"))
            .ok()
            .filter(|r| r.2.contains("procwatch_process_up{name=\"web\"} 1"))
    });
    assert_eq!(status, 200);
    assert!(head.contains("x-frame-options: DENY"), "{head}");
    // Cached after the first check: a second request does not pay bcrypt again (and works).
    assert_eq!(
        https(&pw.addr, &client, "/-/healthy", Some("prometheus:s3cret"))
            .unwrap()
            .0,
        200
    );
    // Plain HTTP to the TLS port gets no answer.
    assert!(http(&pw.addr, "GET", "/metrics", "").map(|r| r.0).unwrap_or(0) != 200);
}

#[test]
fn client_certificates_are_required_and_verified_when_configured() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let web = certs.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: ca.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
    )
    .unwrap();
    let pw = Procwatch::start("processes: []\n", &["--web.config.file", web.to_str().unwrap()]);
    let (status, _, body, _) = https(&pw.addr, &pki.client_with_cert(&pki), "/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("procwatch_build_info"));
    // Without a client certificate, or with one from another CA, nothing is served.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = Pki::new(elsewhere.path());
    for (what, client) in [
        ("no certificate", pki.client()),
        ("another CA's", pki.client_with_cert(&other)),
    ] {
        let r = https(&pw.addr, &client, "/metrics", None);
        assert!(r.as_ref().is_err(), "served with {what}: {:?}", r.map(|r| r.0));
    }
}

#[test]
fn certificates_rotate_without_a_restart_and_a_bad_change_keeps_the_last_good() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let web = web_config(certs.path(), "");
    let pw = Procwatch::start("processes: []\n", &["--web.config.file", web.to_str().unwrap()]);
    let client = pki.client();
    let first = https(&pw.addr, &client, "/-/healthy", None).unwrap().3;
    let second = pki.issue("second");
    assert_ne!(first, second);
    wait_for(T, "the new certificate to be served", || {
        https(&pw.addr, &client, "/-/healthy", None)
            .ok()
            .filter(|r| r.3 == second)
    });
    // A web config that goes bad: the last good one stays, and the log says why.
    replace(
        &web,
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
    );
    let (status, _, _, peer) = https(&pw.addr, &client, "/-/healthy", None).unwrap();
    assert_eq!((status, peer == second), (200, true));
    wait_for(T, "the warning", || {
        pw.stderr().contains("keeping the last good one").then_some(())
    });
}

#[test]
fn a_bad_web_config_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = util::marker("badweb");
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "processes:\n  - name: a\n    command: [sleep, '600']\n").unwrap();
    let cases = [
        (
            "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
            "web.yml:2:14: tls_server_config.cert_file: cannot read",
        ),
        (
            "basic_auth_users:\n  alice: 'plaintext'\n",
            "web.yml:2:10: basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "basic_auth_user:\n  alice: x\n",
            "web.yml:1:1: basic_auth_user: unknown field",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
            "tls_server_config",
        ),
    ];
    for (text, want) in cases {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, text).unwrap();
        for check in [true, false] {
            let mut args = vec![
                "--config",
                config.to_str().unwrap(),
                "--web.config.file",
                web.to_str().unwrap(),
            ];
            if check {
                args.push("--check-config");
            }
            let (code, _, stderr) = run_to_end(&args, dir.path(), &m);
            assert_eq!(code, 1, "{text}: {stderr}");
            assert!(stderr.contains(want), "{want:?} not in {stderr:?}");
        }
    }
    assert!(util::pids_with(&m).is_empty());
}

#[test]
fn idle_connections_and_huge_headers_neither_starve_a_scrape_nor_grow_memory() {
    let pw = Procwatch::start("processes:\n  - name: a\n    command: [sleep, '600']\n", &[]);
    let rss = || util::rss_kib(pw.supervisor_pid());
    // Ready does not wait for `a` to be spawned; asserted up below, among the idle clients.
    pw.wait_scrape(T, "a up", |s| s.prog("procwatch_process_up", "a") == Some(1.0));
    let before = rss();
    // 300 connections that never send a byte, and 50 that send half a header.
    let mut idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&pw.addr).unwrap()).collect();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&pw.addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        idle.push(s);
    }
    let t0 = Instant::now();
    let s = pw.scrape();
    assert!(s.prog("procwatch_process_up", "a") == Some(1.0));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a scrape waited {:?}",
        t0.elapsed()
    );

    // A 1 MiB header is refused, and does not stay in memory.
    for _ in 0..5 {
        let mut s = TcpStream::connect(&pw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let _ = s.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(!out.starts_with("HTTP/1.1 200"), "a 1 MiB header was served");
    }
    let after = rss();
    assert!(after < before + 16 * 1024, "RSS grew from {before} kB to {after} kB");
    drop(idle);
    assert_eq!(pw.scrape().prog("procwatch_process_up", "a"), Some(1.0));
}

/// procwatch's own CPU time (user + system), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let [user, system, ..] = util::cpu_ticks(pid).unwrap();
    user + system
}

#[test]
fn a_flood_of_concurrent_scrapes_shares_the_proc_work() {
    concurrent_requests_share_the_proc_work("/metrics");
}

/// The landing page reads the same programs: a page open in many tabs must not cost a /proc
/// pass per request either.
#[test]
fn a_flood_of_landing_page_requests_shares_the_proc_work() {
    concurrent_requests_share_the_proc_work("/");
}

/// 40 requests for `path` at once cost under a third of the CPU of 40 one by one (300
/// programs to read each time).
fn concurrent_requests_share_the_proc_work(path: &str) {
    let mut yaml = String::from("status_interval: 0\nprocesses:\n");
    for i in 0..300 {
        yaml.push_str(&format!("  - name: p{i}\n    command: [sleep, '600']\n"));
    }
    let pw = Procwatch::start(&yaml, &[]);
    pw.wait_scrape(T, "300 programs up", |s| {
        s.samples
            .iter()
            .filter(|(k, v)| k.starts_with("procwatch_process_up{") && **v == 1.0)
            .count()
            == 300
    });
    const N: u64 = 40;
    let get = |addr: &str| {
        let (status, _, _) = http(addr, "GET", path, "").unwrap();
        assert_eq!(status, 200);
    };
    let c0 = cpu_ticks(pw.supervisor_pid());
    for _ in 0..N {
        get(&pw.addr);
    }
    let one_by_one = cpu_ticks(pw.supervisor_pid()) - c0;
    // All connect first and send together, so that "at once" does not hinge on how fast
    // this host starts 40 threads.
    let start = std::sync::Barrier::new(N as usize);
    let c1 = cpu_ticks(pw.supervisor_pid());
    std::thread::scope(|scope| {
        for _ in 0..N {
            scope.spawn(|| {
                let mut s = TcpStream::connect(&pw.addr).unwrap();
                s.set_read_timeout(Some(T)).unwrap();
                start.wait();
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    pw.addr
                )
                .unwrap();
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).unwrap();
                assert!(
                    raw.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&raw[..raw.len().min(200)])
                );
            });
        }
    });
    let together = cpu_ticks(pw.supervisor_pid()) - c1;
    eprintln!("{N} requests for {path}: {one_by_one} ticks one by one, {together} ticks all at once");
    assert!(one_by_one >= 10, "the baseline is measurable: {one_by_one} ticks");
    assert!(
        together * 3 < one_by_one,
        "{together} ticks at once vs {one_by_one} one by one"
    );
}

fn basic(credentials: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// One keep-alive HTTP/1.1 connection: requests one after another, each answer read by its
/// Content-Length.
struct KeepAlive(TcpStream);

impl KeepAlive {
    fn get(&mut self, path: &str, auth: &str) -> u16 {
        let auth = base64::engine::general_purpose::STANDARD.encode(auth);
        write!(
            self.0,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut byte).expect("the connection stays open");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a content-length");
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).unwrap();
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

#[test]
fn a_revoked_user_is_refused_on_an_open_keep_alive_connection() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let users = |names: &[&str]| -> String {
        let mut text = String::from("basic_auth_users:\n");
        for n in names {
            text.push_str(&format!("  {n}: '{}'\n", hash("pw")));
        }
        text
    };
    std::fs::write(&web, users(&["alice", "bob"])).unwrap();
    let pw = Procwatch::start("processes: []\n", &["--web.config.file", web.to_str().unwrap()]);
    let mut conn = KeepAlive(TcpStream::connect(&pw.addr).unwrap());
    conn.0.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(conn.get("/-/healthy", "bob:pw"), 200);
    assert_eq!(conn.get("/-/healthy", "bob:pw"), 200, "cached");
    // Bob is removed while his connection is open.
    replace(&web, &users(&["alice"]));
    wait_for(T, "bob to be refused on a new connection", || {
        let r = http(&pw.addr, "GET", "/-/healthy", &basic("bob:pw")).ok()?;
        (r.0 == 401).then_some(())
    });
    assert_eq!(conn.get("/-/healthy", "bob:pw"), 401, "a revoked user was served");
    assert_eq!(conn.get("/-/healthy", "alice:pw"), 200);
}

#[test]
fn a_port_alone_listens_on_ipv4_and_ipv6() {
    let port = util::free_port();
    let listen = format!(":{port}");
    let (dir, config) = util::config_dir("processes: []\n");
    let arg = config.to_str().unwrap().to_owned();
    let pw = Procwatch::start_in(
        dir,
        config,
        &["--config", &arg, "--web.listen-address", &listen],
        &util::marker("dual-stack"),
    );
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let r = http(&addr, "GET", "/-/healthy", "");
        assert_eq!(r.as_ref().map(|r| r.0).ok(), Some(200), "{addr}: {r:?}");
    }
    drop(pw);
}

/// How long one bcrypt check at `cost` takes here and now (the machine may be loaded).
fn bcrypt_time(hash: &str) -> Duration {
    let t0 = Instant::now();
    let _ = bcrypt::verify("calibration", hash);
    t0.elapsed()
}

/// With a real bcrypt cost: an unknown user takes as long as a known one with a wrong
/// password (no user-name discovery by timing), and 60 clients hammering wrong passwords do
/// not hold up a correct scrape (failures are remembered as successes are).
#[test]
fn wrong_passwords_neither_reveal_users_nor_starve_a_correct_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let real = bcrypt::hash("s3cret", 10).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  prometheus: '{real}'\n")).unwrap();
    let pw = Procwatch::start("processes: []\n", &["--web.config.file", web.to_str().unwrap()]);
    let addr = pw.addr.clone();
    let timed = |credentials: &str| {
        let t0 = Instant::now();
        let status = http(&addr, "GET", "/-/healthy", &basic(credentials)).unwrap().0;
        (status, t0.elapsed())
    };

    // Timing: each attempt with a new password, so that nothing is answered from memory.
    // A stall on a loaded machine only ever adds time: compare the fastest of each.
    let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
    for i in 0..5 {
        let (s1, t1) = timed(&format!("prometheus:wrong{i}"));
        let (s2, t2) = timed(&format!("nobody:wrong{i}"));
        assert_eq!((s1, s2), (401, 401));
        known = known.min(t1);
        unknown = unknown.min(t2);
    }
    eprintln!("fastest of 5 wrong passwords: {known:?} for a known user, {unknown:?} for an unknown one");
    assert!(
        unknown * 2 > known,
        "an unknown user answers faster ({unknown:?}) than a known one ({known:?})"
    );

    // 60 clients, each repeating its own wrong password on a keep-alive connection.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds: Vec<Arc<std::sync::atomic::AtomicU32>> = (0..60).map(|_| Default::default()).collect();
    let attackers: Vec<_> = rounds
        .iter()
        .enumerate()
        .map(|(i, done)| {
            let (addr, stop, done) = (pw.addr.clone(), Arc::clone(&stop), Arc::clone(done));
            std::thread::spawn(move || {
                let mut conn = KeepAlive(TcpStream::connect(&addr).unwrap());
                conn.0.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(conn.get("/metrics", &format!("prometheus:guess{i}")), 401);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Every attacker has been answered at least twice: their first bcrypt is behind us.
    wait_for(Duration::from_secs(300), "every attacker to be answered twice", || {
        rounds
            .iter()
            .all(|r| r.load(std::sync::atomic::Ordering::Relaxed) >= 2)
            .then_some(())
    });
    // One bcrypt, measured under the same load as the scrape: the attackers still run.
    let one = bcrypt_time(&real);
    let (status, took) = timed("prometheus:s3cret");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    // One bcrypt, plus at most the two that may be running: under 1 s on an idle machine; a
    // loaded one gets as many of its own bcrypt times.
    let limit = Duration::from_secs(1).max(one * 4);
    eprintln!("a correct scrape among 60 attackers: {took:?} (one bcrypt here: {one:?})");
    assert_eq!(status, 200);
    assert!(took < limit, "a correct scrape took {took:?} (limit {limit:?})");
}

/// A TCP connection with a small receive buffer, as a client that reads slowly has.
fn small_window_connect(addr: &str) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // SAFETY: a fresh socket, handed to TcpStream, which owns and closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// A client that pipelines scrapes and reads none of the answers, until procwatch stops
/// reading its requests (its answers fill the socket buffers): returns how many it sent.
fn stall(conn: &mut TcpStream) -> usize {
    conn.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // 256 requests a write: procwatch's socket buffers take about 150,000 before they are
    // full, which one by one took over the 10 s write timeout on a loaded machine.
    const BATCH: usize = 256;
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(BATCH);
    let mut sent = 0;
    let t0 = Instant::now();
    loop {
        match conn.write_all(&request) {
            Ok(()) => sent += BATCH,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                eprintln!("stalled after {sent} requests in {:?}", t0.elapsed());
                return sent;
            }
            // procwatch's 10 s write timeout ended the connection while this was still
            // filling its buffers (a loaded machine): stalled all the same.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                eprintln!("closed by procwatch after {sent} requests in {:?}", t0.elapsed());
                return sent;
            }
            Err(e) => panic!("after {sent} requests in {:?}: {e}", t0.elapsed()),
        }
        assert!(sent < 1_000_000, "procwatch never stopped reading");
    }
}

#[test]
fn a_client_that_stops_reading_loses_its_connection() {
    let pw = Procwatch::start("status_interval: 0\nprocesses: []\n", &[]);
    let mut conn = small_window_connect(&pw.addr);
    let sent = stall(&mut conn);
    // procwatch's write timeout is 10 s: well past it, the client reads again.
    std::thread::sleep(Duration::from_secs(13));
    // The connection must be closed (EOF or a reset), not resumed where it stalled.
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (mut raw, mut buf) = (Vec::new(), [0u8; 65536]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let answered = String::from_utf8_lossy(&raw).matches("HTTP/1.1 200 OK").count();
    eprintln!("{sent} requests sent, {answered} answered, then closed: {closed}");
    assert!(
        closed && answered < sent,
        "the connection of a client that read nothing for 13 s was kept ({answered} of {sent} answered)"
    );
    assert_eq!(
        pw.scrape().get("procwatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
}

#[test]
fn clients_that_stall_or_idle_cannot_fill_the_connection_slots() {
    let pw = Procwatch::start("status_interval: 0\nprocesses: []\n", &[]);
    // As many connections as procwatch serves at once: a few that stopped reading, the rest
    // idle half-way through their headers.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..4 {
        let mut c = small_window_connect(&pw.addr);
        stall(&mut c);
        held.push(c);
    }
    while held.len() < 1024 {
        let mut c = TcpStream::connect(&pw.addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        held.push(c);
    }
    // Wait until procwatch has accepted them all (its open fds), then scrape.
    wait_for(T, "procwatch to hold 1024 connections", || {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", pw.supervisor_pid()))
            .ok()?
            .count();
        (fds >= 1024).then_some(())
    });
    let t0 = Instant::now();
    let (status, _, _) = http(&pw.addr, "GET", "/metrics", "").unwrap();
    let took = t0.elapsed();
    eprintln!("a scrape with 1024 connections held: {took:?}");
    assert_eq!(status, 200);
    // Well under the 10 s header and write timeouts that would otherwise free a slot.
    assert!(took < Duration::from_secs(5), "a scrape waited {took:?} for a slot");
    drop(held);
}

/// A client with a certificate naming `sans`, limited to TLS 1.2 and `suites` if given.
fn tls12_client(
    pki: &Pki,
    sans: &[&str],
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca.der().to_vec())).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let (chain, key) = pki.client_identity_named(sans);
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// Every key of the exporter-toolkit format, as a node_exporter web config would set them.
#[test]
fn a_node_exporter_web_config_with_every_key_loads_and_is_applied() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let web = certs.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:
  cert_file: server.pem
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  client_allowed_sans: [prometheus.example, 10.0.0.7]
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    - TLS_AES_128_GCM_SHA256
  prefer_server_cipher_suites: true
  curve_preferences: [X25519, CurveP256]
http_server_config:
  http2: true
  headers:
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: '{}'
basic_auth_excluded_paths: [/-/healthy]
rate_limit:
  interval: 1ms
  burst: 1000
",
            hash("s3cret")
        ),
    )
    .unwrap();
    let pw = Procwatch::start("processes: []\n", &["--web.config.file", web.to_str().unwrap()]);
    use rustls::crypto::ring::cipher_suite as cs;
    let allowed = tls12_client(&pki, &["prometheus.example"], None);
    let (status, head, _, _) = https(&pw.addr, &allowed, "/metrics", Some("prometheus:s3cret")).unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    // Excluded from basic auth, not from TLS.
    assert_eq!(https(&pw.addr, &allowed, "/-/healthy", None).unwrap().0, 200);
    assert_eq!(https(&pw.addr, &allowed, "/metrics", None).unwrap().0, 401);
    // An IP address SAN from the list.
    let by_ip = tls12_client(&pki, &["10.0.0.7"], None);
    assert_eq!(https(&pw.addr, &by_ip, "/-/healthy", None).unwrap().0, 200);
    // A certificate from the right CA whose names are not in client_allowed_sans.
    let other_name = tls12_client(&pki, &["someone.example"], None);
    assert!(
        https(&pw.addr, &other_name, "/-/healthy", None).is_err(),
        "a SAN outside the list was let in"
    );
    // A TLS 1.2 suite that is not in cipher_suites.
    let chacha = tls12_client(
        &pki,
        &["prometheus.example"],
        Some(vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]),
    );
    assert!(
        https(&pw.addr, &chacha, "/-/healthy", None).is_err(),
        "a suite outside cipher_suites was used"
    );
    let listed = tls12_client(
        &pki,
        &["prometheus.example"],
        Some(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]),
    );
    assert_eq!(https(&pw.addr, &listed, "/-/healthy", None).unwrap().0, 200);
}

#[test]
fn what_rustls_cannot_do_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "processes: []\n").unwrap();
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    let cases = [
        (
            format!("{tls}  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n"),
            "web.yml:4:18: tls_server_config.cipher_suites: \"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\" is not offered by rustls",
        ),
        (
            format!("{tls}  curve_preferences: [CurveP521]\n"),
            "tls_server_config.curve_preferences: \"CurveP521\": P-521 is not offered",
        ),
        (
            format!(
                "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  client_allowed_sans: [mailto:a@b.example]\n"
            ),
            "only DNS names and IP addresses can be matched",
        ),
        (
            format!("{tls}  client_allowed_sans: [a.example]\n"),
            "client_allowed_sans: needs client_auth_type: RequireAndVerifyClientCert",
        ),
        (
            format!("{tls}  cert: inline\n"),
            "tls_server_config.cert: give cert or cert_file, not both",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow-all\n".to_owned(),
            "http_server_config.headers.X-Frame-Options: must be one of deny, sameorigin",
        ),
        (
            "rate_limit:\n  interval: often\n".to_owned(),
            "rate_limit.interval: not a duration",
        ),
    ];
    let m = util::marker("web-refused");
    for (text, want) in cases {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, &text).unwrap();
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--web.config.file",
            web.to_str().unwrap(),
            "--check-config",
        ];
        let (code, _, stderr) = run_to_end(&args, dir.path(), &m);
        assert_eq!(code, 1, "{text}: {stderr}");
        assert!(stderr.contains(want), "{want:?} not in {stderr:?}");
    }
}

#[test]
fn inline_certificates_and_the_rate_limit_apply() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path());
    let indent = |file: &str| {
        std::fs::read_to_string(certs.path().join(file))
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let web = certs.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert: |\n{}  key: |\n{}rate_limit:\n  interval: 1m\n  burst: 2\n",
            indent("server.pem"),
            indent("server.key")
        ),
    )
    .unwrap();
    let pw = Procwatch::start("processes: []\n", &["--web.config.file", web.to_str().unwrap()]);
    let client = pki.client();
    // The harness's start-up checks took none of the two: it cannot speak TLS.
    let statuses: Vec<u16> = (0..3)
        .map(|_| https(&pw.addr, &client, "/-/healthy", None).unwrap().0)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
}
