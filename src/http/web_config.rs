//! The web config (`--web.config.file`, the exporter-toolkit format node_exporter uses): TLS
//! and basic auth in front of every endpoint, and extra response headers. Validated at start;
//! read again when it or its certificate files change, keeping the last good one if the new
//! one is bad.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine;
use hyper::header::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_saphyr::Spanned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Checker, ConfigError, MAX_CONFIG_BYTES, parse_yaml, read_bounded, read_text};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<Spanned<RawTls>>,
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    client_ca_file: Option<Spanned<PathBuf>>,
    client_auth_type: Option<Spanned<String>>,
    min_version: Option<Spanned<String>>,
    max_version: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility; procwatch serves HTTP/1.1.
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
}

/// The response headers the exporter-toolkit lets a web config set.
const ALLOWED_HEADERS: [&str; 5] = [
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "content-security-policy",
];

/// A validated web config.
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User -> bcrypt hash. Empty: no authentication.
    users: HashMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The files it was built from (the config and its certificates): a change means reload.
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .finish()
    }
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let text = read_text(path)?;
        WebConfig::parse(&text, path)
    }

    /// Parses and validates web config text that was read from `path` (which names it in
    /// errors, and against whose directory relative certificate paths are resolved).
    pub fn parse(text: &str, path: &Path) -> Result<WebConfig, ConfigError> {
        let file = path.display().to_string();
        let raw: RawWebConfig = parse_yaml(text, &file)?.unwrap_or_default();
        let c = Checker { file: &file };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut files = vec![path.to_path_buf()];
        let tls = match &raw.tls_server_config {
            None => None,
            Some(t) => Some(Arc::new(tls_config(&c, base, t, &mut files)?)),
        };
        let mut users = HashMap::new();
        for (user, hash) in &raw.basic_auth_users {
            let key = format!("basic_auth_users.{user}");
            let h = &hash.value;
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) || h.parse::<bcrypt::HashParts>().is_err() {
                return c.err(
                    &hash.referenced,
                    &key,
                    "not a bcrypt hash (expected $2y$, $2b$ or $2a$; make one with `htpasswd -nBC 10 USER`)",
                );
            }
            users.insert(user.clone(), h.clone());
        }
        let mut headers = Vec::new();
        if let Some(http) = &raw.http_server_config {
            for (name, value) in &http.headers {
                let key = format!("http_server_config.headers.{name}");
                let lower = name.to_ascii_lowercase();
                if !ALLOWED_HEADERS.contains(&lower.as_str()) {
                    return c.err(
                        &value.referenced,
                        &key,
                        format!("header not allowed here (allowed: {})", ALLOWED_HEADERS.join(", ")),
                    );
                }
                let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(lower.as_bytes()),
                    HeaderValue::from_str(&value.value),
                ) else {
                    return c.err(&value.referenced, &key, "invalid header value");
                };
                headers.push((n, v));
            }
        }
        Ok(WebConfig {
            tls,
            users,
            headers,
            files,
        })
    }

    pub fn needs_auth(&self) -> bool {
        !self.users.is_empty()
    }
}

/// PEM files are read as the config is: regular files only, bounded (a FIFO would block).
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    read_bounded(path, MAX_CONFIG_BYTES).map_err(|e| e.to_string())
}

fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn tls_config(
    c: &Checker<'_>,
    base: &Path,
    t: &Spanned<RawTls>,
    files: &mut Vec<PathBuf>,
) -> Result<rustls::ServerConfig, ConfigError> {
    let raw = &t.value;
    let required = |v: &Option<Spanned<PathBuf>>, key: &str| match v {
        Some(p) => Ok((base.join(&p.value), p.referenced)),
        None => c.err(
            &t.referenced,
            &format!("tls_server_config.{key}"),
            "required when tls_server_config is given",
        ),
    };
    let (cert_path, cert_at) = required(&raw.cert_file, "cert_file")?;
    let (key_path, key_at) = required(&raw.key_file, "key_file")?;
    let certs: Vec<CertificateDer<'static>> = read_pem(&cert_path).and_then(|pem| pem_certs(&pem)).or_else(|e| {
        c.err(
            &cert_at,
            "tls_server_config.cert_file",
            format!("cannot read certificates from {}: {e}", cert_path.display()),
        )
    })?;
    if certs.is_empty() {
        return c.err(
            &cert_at,
            "tls_server_config.cert_file",
            format!("no certificate in {}", cert_path.display()),
        );
    }
    let key = read_pem(&key_path)
        .and_then(|pem| PrivateKeyDer::from_pem_slice(&pem).map_err(|e| e.to_string()))
        .or_else(|e| {
            c.err(
                &key_at,
                "tls_server_config.key_file",
                format!("cannot read a private key from {}: {e}", key_path.display()),
            )
        })?;
    files.extend([cert_path, key_path.clone()]);

    let version = |v: &Option<Spanned<String>>, key: &str, default: u8| match v {
        None => Ok(default),
        Some(s) => match s.value.as_str() {
            "TLS12" => Ok(2),
            "TLS13" => Ok(3),
            "TLS10" | "TLS11" => c.err(
                &s.referenced,
                &format!("tls_server_config.{key}"),
                "TLS 1.0 and 1.1 are not offered (use TLS12 or TLS13)",
            ),
            other => c.err(
                &s.referenced,
                &format!("tls_server_config.{key}"),
                format!("unknown TLS version {other:?} (expected TLS12 or TLS13)"),
            ),
        },
    };
    let (min, max) = (
        version(&raw.min_version, "min_version", 2)?,
        version(&raw.max_version, "max_version", 3)?,
    );
    let mut versions = Vec::new();
    if max >= 3 && min <= 3 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= 2 && max >= 2 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        let at = raw.min_version.as_ref().map_or(t.referenced, |s| s.referenced);
        return c.err(&at, "tls_server_config.min_version", "min_version is above max_version");
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .or_else(|e| c.err(&t.referenced, "tls_server_config", e.to_string()))?;
    let auth_type = raw
        .client_auth_type
        .as_ref()
        .map_or("NoClientCert", |s| s.value.as_str());
    let auth_at = raw.client_auth_type.as_ref().map_or(t.referenced, |s| s.referenced);
    let auth_key = "tls_server_config.client_auth_type";
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let Some(ca) = &raw.client_ca_file else {
                return c.err(&auth_at, auth_key, format!("{auth_type} needs client_ca_file"));
            };
            let ca_path = base.join(&ca.value);
            let mut roots = rustls::RootCertStore::empty();
            let cas = read_pem(&ca_path).and_then(|pem| pem_certs(&pem)).or_else(|e| {
                c.err(
                    &ca.referenced,
                    "tls_server_config.client_ca_file",
                    format!("cannot read {}: {e}", ca_path.display()),
                )
            })?;
            for cert in cas {
                roots
                    .add(cert)
                    .or_else(|e| c.err(&ca.referenced, "tls_server_config.client_ca_file", e.to_string()))?;
            }
            files.push(ca_path);
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if auth_type == "VerifyClientCertIfGiven" {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().or_else(|e| c.err(&auth_at, auth_key, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return c.err(&auth_at, auth_key, format!("{auth_type} (a client certificate that is not verified) is not supported; use RequireAndVerifyClientCert or VerifyClientCertIfGiven"));
        }
        other => return c.err(&auth_at, auth_key, format!("unknown client_auth_type {other:?}")),
    };
    let mut config = builder.with_single_cert(certs, key).or_else(|e| {
        c.err(
            &key_at,
            "tls_server_config.key_file",
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A file's identity and version, to notice it changed.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
        })
        .collect()
}

/// How often the web config's files are checked for a change: a revoked user or a rotated
/// certificate takes effect within this time.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The web config in force, read again when its files change.
pub struct WebConfigSource {
    path: PathBuf,
    current: ArcSwap<WebConfig>,
    seen: Mutex<Vec<Stamp>>,
}

impl WebConfigSource {
    /// Reads and validates the file. Blocking: call it at start-up or off the async threads.
    pub fn load(path: &Path) -> Result<WebConfigSource, ConfigError> {
        let config = WebConfig::load(path)?;
        Ok(WebConfigSource {
            path: path.to_path_buf(),
            seen: Mutex::new(stamps(&config.files)),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The config in force: a pointer load, checked on every request.
    pub fn current(&self) -> Arc<WebConfig> {
        self.current.load_full()
    }

    /// Reads the config again if one of its files changed (a few stat(2) calls otherwise).
    /// A config that went bad is logged once per change, and the last good one stays.
    /// Blocking (file reads, PEM parsing): [`WebConfigSource::watch`] runs it off the async
    /// threads.
    pub fn refresh(&self) {
        let current = self.current.load_full();
        let now = stamps(&current.files);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        *seen = now;
        match WebConfig::load(&self.path) {
            Ok(new) => {
                info!(file = %self.path.display(), "web config changed; reloaded");
                *seen = stamps(&new.files);
                self.current.store(Arc::new(new));
            }
            Err(err) => {
                warn!(error = %err, "web config changed but is not valid; keeping the last good one");
            }
        }
    }

    /// Calls [`WebConfigSource::refresh`] every [`RECHECK_EVERY`] on the blocking pool until
    /// `shutdown`.
    pub(crate) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(RECHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let source = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || source.refresh()).await;
        }
    }
}

/// Checks basic auth. bcrypt is slow on purpose: it runs off the async threads, at most two
/// at a time, and every result is remembered (as a keyed hash of user, stored hash and
/// password, never the password), the failures as the successes: an attacker repeating a
/// wrong password costs a hash lookup, and a correct scrape does not wait behind them. An
/// unknown user is checked against a known user's hash (whose answer is then ignored), as
/// exporter-toolkit does, so that the time taken does not tell which user names exist.
pub struct Authenticator {
    hasher: std::hash::RandomState,
    good: Mutex<HashSet<u64>>,
    bad: Mutex<HashSet<u64>>,
    bcrypt_slots: Semaphore,
}

/// Remembered checks of each kind before that cache starts over.
const MAX_CACHED: usize = 1024;

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator {
            hasher: std::hash::RandomState::new(),
            good: Mutex::new(HashSet::new()),
            bad: Mutex::new(HashSet::new()),
            bcrypt_slots: Semaphore::new(2),
        }
    }
}

fn remember(set: &Mutex<HashSet<u64>>, key: u64) {
    let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
    if set.len() >= MAX_CACHED {
        set.clear();
    }
    set.insert(key);
}

fn remembered(set: &Mutex<HashSet<u64>>, key: u64) -> bool {
    set.lock().unwrap_or_else(|e| e.into_inner()).contains(&key)
}

impl Authenticator {
    pub async fn allowed(&self, web: &WebConfig, authorization: Option<&HeaderValue>) -> bool {
        if !web.needs_auth() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let known = web.users.get(&user);
        // Unknown users pay for a real comparison too (needs_auth: there is a first user).
        let Some(hash) = known.or_else(|| web.users.values().next()) else {
            return false;
        };
        let key = self.hasher.hash_one((&user, known, &password));
        if remembered(&self.good, key) {
            return true;
        }
        if remembered(&self.bad, key) {
            return false;
        }
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        let hash = hash.clone();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let ok = matches && known.is_some();
        remember(if ok { &self.good } else { &self.bad }, key);
        ok
    }
}

fn parse_basic(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "web.yml", text);
        WebConfig::load(&p).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_means_no_tls_and_no_auth() {
        let dir = tempfile::tempdir().unwrap();
        let c = WebConfig::load(&write(dir.path(), "web.yml", "")).unwrap();
        assert!(c.tls.is_none() && !c.needs_auth());
    }

    #[test]
    fn bad_input_names_the_key() {
        assert!(
            err("tls_server_config:\n  cert_file: /nope.pem\n  key_file: /nope.key\n")
                .contains(":2:14: tls_server_config.cert_file: cannot read")
        );
        assert!(
            err("basic_auth_users:\n  alice: plaintext\n").contains(":2:10: basic_auth_users.alice: not a bcrypt hash")
        );
        assert!(err("tls_server_confg: {}\n").contains("unknown field"));
        assert!(err("tls_server_config:\n  key_file: k\n").contains("tls_server_config.cert_file: required"));
        assert!(err("http_server_config:\n  headers:\n    Server: x\n").contains("header not allowed"));
    }

    #[test]
    fn basic_header_parsing() {
        let v = HeaderValue::from_static("Basic YWxpY2U6cyNjcjN0Om9r");
        assert_eq!(parse_basic(&v), Some(("alice".into(), "s#cr3t:ok".into())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
    }

    #[tokio::test]
    async fn auth_checks_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let c = WebConfig::load(&write(
            dir.path(),
            "web.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        ))
        .unwrap();
        let a = Authenticator::default();
        let basic = |s: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert!(a.allowed(&c, Some(&basic("alice:pw"))).await);
        assert!(a.allowed(&c, Some(&basic("alice:pw"))).await, "cached");
        assert!(!a.allowed(&c, Some(&basic("alice:wrong"))).await);
        assert!(!a.allowed(&c, Some(&basic("bob:pw"))).await);
        assert!(!a.allowed(&c, None).await);
    }
}
