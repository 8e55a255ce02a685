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
    #[serde(default)]
    basic_auth_excluded_paths: Vec<String>,
    rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    client_ca: Option<Spanned<String>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    client_ca_file: Option<Spanned<PathBuf>>,
    client_auth_type: Option<Spanned<String>>,
    client_allowed_sans: Option<Spanned<Vec<String>>>,
    min_version: Option<Spanned<String>>,
    max_version: Option<Spanned<String>>,
    cipher_suites: Option<Spanned<Vec<String>>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<Spanned<String>>,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted: procwatch serves HTTP/1.1 only, which every HTTP/2 client falls back to
    /// through ALPN (README, Known limits).
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
    /// Paths served without basic auth (`basic_auth_excluded_paths`).
    excluded_paths: Vec<String>,
    /// `rate_limit`: one request per `interval`, with bursts of `burst`, for all clients.
    pub rate_limit: Option<RateLimit>,
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
                // Blank means unset, as in exporter-toolkit.
                if value.value.is_empty() {
                    continue;
                }
                let allowed: &[&str] = match lower.as_str() {
                    "x-frame-options" => &["deny", "sameorigin"],
                    "x-content-type-options" => &["nosniff"],
                    _ => &[],
                };
                if !allowed.is_empty() && !allowed.contains(&value.value.to_ascii_lowercase().as_str()) {
                    return c.err(
                        &value.referenced,
                        &key,
                        format!("must be one of {}", allowed.join(", ")),
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
        let rate_limit = match &raw.rate_limit {
            None => None,
            Some(r) => {
                let interval = match &r.value.interval {
                    None => Duration::ZERO,
                    Some(i) => match crate::config::parse_duration(&i.value) {
                        Some(d) => d,
                        None => {
                            return c.err(
                                &i.referenced,
                                "rate_limit.interval",
                                "not a duration (like 100ms or 1s)",
                            );
                        }
                    },
                };
                // An interval of 0 turns the limiter off, as in exporter-toolkit.
                (!interval.is_zero()).then(|| RateLimit {
                    interval,
                    burst: r.value.burst.unwrap_or(1),
                })
            }
        };
        Ok(WebConfig {
            tls,
            users,
            headers,
            excluded_paths: raw.basic_auth_excluded_paths.clone(),
            rate_limit,
            files,
        })
    }

    pub fn needs_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether a request for `path` must authenticate.
    pub fn auth_required(&self, path: &str) -> bool {
        self.needs_auth() && !self.excluded_paths.iter().any(|p| p == path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// A token bucket shared by every connection, as exporter-toolkit's `rate_limit`: refills one
/// token per interval up to `burst`. Kept across web config reloads.
#[derive(Default)]
pub struct Limiter(Mutex<Option<(f64, std::time::Instant)>>);

impl Limiter {
    pub fn allow(&self, limit: &RateLimit) -> bool {
        let now = std::time::Instant::now();
        let burst = f64::from(limit.burst.max(1));
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = state.get_or_insert((burst, now));
        let refill = now.duration_since(*last).as_secs_f64() / limit.interval.as_secs_f64();
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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

/// PEM text given inline (`cert`) or as a file (`cert_file`), never both: the text, where it
/// is in the web config, and the key to name in errors.
fn pem_source(
    c: &Checker<'_>,
    base: &Path,
    (inline, file): (&Option<Spanned<String>>, &Option<Spanned<PathBuf>>),
    name: &str,
    files: &mut Vec<PathBuf>,
) -> Result<Option<(Vec<u8>, serde_saphyr::Location, String)>, ConfigError> {
    match (inline, file) {
        (Some(i), Some(_)) => c.err(
            &i.referenced,
            &format!("tls_server_config.{name}"),
            format!("give {name} or {name}_file, not both"),
        ),
        (Some(i), None) => Ok(Some((
            i.value.clone().into_bytes(),
            i.referenced,
            format!("tls_server_config.{name}"),
        ))),
        (None, Some(f)) => {
            let path = base.join(&f.value);
            let key = format!("tls_server_config.{name}_file");
            let pem = read_pem(&path)
                .or_else(|e| c.err(&f.referenced, &key, format!("cannot read {}: {e}", path.display())))?;
            files.push(path);
            Ok(Some((pem, f.referenced, key)))
        }
        (None, None) => Ok(None),
    }
}

/// The TLS 1.2 cipher suites rustls offers, by their Go names (crypto/tls), as a web config
/// names them. TLS 1.3 suites are not configurable, in Go as here: all three are offered.
fn tls12_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Key exchange groups by their Go names (crypto/tls CurveID).
fn curve(name: &str) -> Result<&'static dyn rustls::crypto::SupportedKxGroup, &'static str> {
    use rustls::crypto::ring::kx_group;
    match name {
        "X25519" => Ok(kx_group::X25519),
        "CurveP256" => Ok(kx_group::SECP256R1),
        "CurveP384" => Ok(kx_group::SECP384R1),
        "CurveP521" => Err("P-521 is not offered by rustls' ring provider (use CurveP384, CurveP256 or X25519)"),
        "X25519MLKEM768" => Err("X25519MLKEM768 is not offered by rustls' ring provider (use X25519)"),
        _ => Err("unknown curve (expected X25519, CurveP256 or CurveP384)"),
    }
}

/// `client_allowed_sans`: after the usual verification, the client certificate must carry one
/// of these names (DNS names and IP addresses, matched as rustls matches a server's name).
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    names: Vec<rustls::pki_types::ServerName<'static>>,
}

impl rustls::server::danger::ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        if self
            .names
            .iter()
            .any(|n| rustls::client::verify_server_name(&cert, n).is_ok())
        {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_config(
    c: &Checker<'_>,
    base: &Path,
    t: &Spanned<RawTls>,
    files: &mut Vec<PathBuf>,
) -> Result<rustls::ServerConfig, ConfigError> {
    let raw = &t.value;
    let required = |v: Option<(Vec<u8>, serde_saphyr::Location, String)>, name: &str| match v {
        Some(v) => Ok(v),
        None => c.err(
            &t.referenced,
            &format!("tls_server_config.{name}_file"),
            format!("required when tls_server_config is given (or {name}, inline)"),
        ),
    };
    let cert = pem_source(c, base, (&raw.cert, &raw.cert_file), "cert", files)?;
    let (cert_pem, cert_at, cert_key) = required(cert, "cert")?;
    let key = pem_source(c, base, (&raw.key, &raw.key_file), "key", files)?;
    let (key_pem, key_at, key_key) = required(key, "key")?;
    let certs =
        pem_certs(&cert_pem).or_else(|e| c.err(&cert_at, &cert_key, format!("cannot read certificates: {e}")))?;
    if certs.is_empty() {
        return c.err(&cert_at, &cert_key, "no certificate in it");
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .or_else(|e| c.err(&key_at, &key_key, format!("cannot read a private key: {e}")))?;

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

    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = &raw.cipher_suites {
        let key = "tls_server_config.cipher_suites";
        let mut chosen: Vec<rustls::SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.tls13().is_some())
            .collect();
        for name in &suites.value {
            match tls12_suite(name) {
                Some(suite) => chosen.push(suite),
                None if TLS13_SUITES.contains(&name.as_str()) => {}
                None => {
                    let offered: Vec<&str> = [
                        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
                        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
                    ]
                    .to_vec();
                    return c.err(
                        &suites.referenced,
                        key,
                        format!(
                            "{name:?} is not offered by rustls (no CBC, RSA key exchange or 3DES suites); TLS 1.2 suites offered: {}",
                            offered.join(", ")
                        ),
                    );
                }
            }
        }
        if versions.len() == 1 && max == 2 && chosen.iter().all(|s| s.tls13().is_some()) {
            return c.err(
                &suites.referenced,
                key,
                "no TLS 1.2 suite listed, and TLS 1.2 is the only version allowed",
            );
        }
        provider.cipher_suites = chosen;
    }
    if let Some(curves) = &raw.curve_preferences {
        let mut groups = Vec::new();
        for name in &curves.value {
            let group = curve(name).or_else(|why| {
                c.err(
                    &curves.referenced,
                    "tls_server_config.curve_preferences",
                    format!("{name:?}: {why}"),
                )
            })?;
            groups.push(group);
        }
        if groups.is_empty() {
            return c.err(
                &curves.referenced,
                "tls_server_config.curve_preferences",
                "empty: no key exchange possible",
            );
        }
        provider.kx_groups = groups;
    }
    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .or_else(|e| c.err(&t.referenced, "tls_server_config", e.to_string()))?;
    let auth_type = raw
        .client_auth_type
        .as_ref()
        .map_or("NoClientCert", |s| s.value.as_str());
    let auth_at = raw.client_auth_type.as_ref().map_or(t.referenced, |s| s.referenced);
    let auth_key = "tls_server_config.client_auth_type";
    if let Some(sans) = &raw.client_allowed_sans
        && auth_type != "RequireAndVerifyClientCert"
    {
        return c.err(
            &sans.referenced,
            "tls_server_config.client_allowed_sans",
            "needs client_auth_type: RequireAndVerifyClientCert (the others let a client in without a certificate to match)",
        );
    }
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca = pem_source(c, base, (&raw.client_ca, &raw.client_ca_file), "client_ca", files)?;
            let Some((ca_pem, ca_at, ca_key)) = ca else {
                return c.err(
                    &auth_at,
                    auth_key,
                    format!("{auth_type} needs client_ca_file (or client_ca)"),
                );
            };
            let mut roots = rustls::RootCertStore::empty();
            let cas = pem_certs(&ca_pem).or_else(|e| c.err(&ca_at, &ca_key, e))?;
            for cert in cas {
                roots.add(cert).or_else(|e| c.err(&ca_at, &ca_key, e.to_string()))?;
            }
            let mut verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if auth_type == "VerifyClientCertIfGiven" {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().or_else(|e| c.err(&auth_at, auth_key, e.to_string()))?;
            match &raw.client_allowed_sans {
                None => builder.with_client_cert_verifier(verifier),
                Some(sans) => {
                    let mut names = Vec::new();
                    for san in &sans.value {
                        let name = match san.parse::<std::net::IpAddr>() {
                            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                            Err(_) => match rustls::pki_types::DnsName::try_from(san.clone()) {
                                Ok(dns) => rustls::pki_types::ServerName::DnsName(dns),
                                Err(_) => {
                                    return c.err(
                                        &sans.referenced,
                                        "tls_server_config.client_allowed_sans",
                                        format!("{san:?}: only DNS names and IP addresses can be matched (rustls does not expose e-mail or URI names)"),
                                    );
                                }
                            },
                        };
                        names.push(name);
                    }
                    builder.with_client_cert_verifier(Arc::new(AllowedSans { inner: verifier, names }))
                }
            }
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return c.err(&auth_at, auth_key, format!("{auth_type} (a client certificate that is not verified) is not supported; use RequireAndVerifyClientCert or VerifyClientCertIfGiven"));
        }
        other => return c.err(&auth_at, auth_key, format!("unknown client_auth_type {other:?}")),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .or_else(|e| c.err(&key_at, &key_key, format!("the key does not fit the certificate: {e}")))?;
    // exporter-toolkit's default is the server's order (prefer_server_cipher_suites: true).
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
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
        self.refresh_with(WebConfig::load);
    }

    /// [`WebConfigSource::refresh`], reading the config with `load`.
    ///
    /// What is remembered as seen are the stamps taken *before* the read, also after a
    /// successful one: a file changed while it was read (a config truncated, then written, by
    /// an editor or `echo >`) no longer matches them, and is read again at the next check.
    /// Stamps taken after the read would match it, and leave in force what was read half-way
    /// (an empty file is a valid config: no TLS, no authentication) until the next change.
    /// A config that names other files than the one in force (certificates added or moved)
    /// is read once more at the next check, to take those files' stamps before a read.
    fn refresh_with(&self, load: impl FnOnce(&Path) -> Result<WebConfig, ConfigError>) {
        let current = self.current.load_full();
        let now = stamps(&current.files);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        *seen = now;
        match load(&self.path) {
            Ok(new) => {
                info!(file = %self.path.display(), "web config changed; reloaded");
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

    /// An editor or `echo >` truncates the file, then writes it: a check that reads it in
    /// between reads an empty file, a valid config with no TLS and no authentication. The
    /// write that follows must be read at the next check, not taken as seen.
    #[test]
    fn a_file_changed_while_it_is_read_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let full = format!("basic_auth_users:\n  alice: '{hash}'\n");
        let path = write(dir.path(), "web.yml", &full);
        let source = WebConfigSource::load(&path).unwrap();
        assert!(source.current().needs_auth());

        std::fs::write(&path, "").unwrap();
        // The check reads the truncated file, and the rest is written before it is done.
        source.refresh_with(|p| {
            let read = WebConfig::load(p);
            std::fs::write(p, &full).unwrap();
            read
        });
        assert!(!source.current().needs_auth(), "what was read half-way is in force");
        source.refresh();
        assert!(
            source.current().needs_auth(),
            "the write made during the read was not read"
        );
        // And then it is seen: nothing more to read.
        source.refresh_with(|_| panic!("read again with nothing changed"));
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
