//! The YAML config: raw serde structs, then a validated [`Config`]; and the embedded demo config.
//!
//! Parsing and validation happen before anything starts. Every error names the file, the line,
//! the column and the key, so that a typo never passes silently and never starts half a config.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The config `cargo run` uses when no `--config` is given.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// Name under which errors in the embedded demo config are reported.
const DEMO_NAME: &str = "<embedded demo config>";

/// A config file larger than this is refused before it is parsed.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        /// Dotted path of the offending key, e.g. `processes[1].stop_signal`.
        key: String,
        message: String,
    },
}

/// What happens when a program's run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
}

/// A signal, by number, with the name it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("PWR", libc::SIGPWR),
];

impl Signal {
    pub fn parse(text: &str) -> Option<Signal> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS.iter().find(|(n, _)| *n == bare).map(|&(_, s)| Signal(s))
    }

    pub fn name(self) -> &'static str {
        SIGNALS.iter().find(|(_, s)| *s == self.0).map_or("?", |(n, _)| n)
    }
}

/// One supervised program, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramConfig {
    pub name: String,
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    pub backoff: BackoffConfig,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
}

/// One watched path, validated (its globs compile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    pub name: String,
    pub path: PathBuf,
    pub recursive: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A whole validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where it was read from; `None` for the embedded demo.
    pub source: Option<PathBuf>,
    pub listen_address: Option<String>,
    pub status_interval: Duration,
    pub shutdown_timeout: Duration,
    pub processes: Vec<ProgramConfig>,
    pub watches: Vec<WatchConfig>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = read_text(path)?;
        let mut config = Config::parse(&text, &file)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// What to call this config in messages: its file, or the embedded demo.
    pub fn source_name(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| DEMO_NAME.to_owned(), |p| p.display().to_string())
    }

    /// The embedded demo config.
    pub fn demo() -> Config {
        Config::parse(DEMO_CONFIG, DEMO_NAME).expect("the embedded demo config is valid")
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        // An empty file is an empty config: nothing to run.
        let raw = parse_yaml::<RawConfig>(text, file)?.unwrap_or(RawConfig {
            listen_address: None,
            status_interval: None,
            shutdown_timeout: None,
            processes: Vec::new(),
            watches: Vec::new(),
        });
        validate(raw, file)
    }
}

/// What applying a config does to what runs, by name, each list sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
}

impl ApplyReport {
    /// Compares what runs now (name, config) with what `wanted` asks for: a name only wanted
    /// is started, one only running is stopped, one whose config differs is restarted.
    pub fn diff<'a, T: PartialEq + 'a>(
        running: impl IntoIterator<Item = (&'a String, &'a T)>,
        wanted: &[T],
        name: impl Fn(&T) -> &str,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut running: std::collections::HashMap<&str, &T> =
            running.into_iter().map(|(n, c)| (n.as_str(), c)).collect();
        for w in wanted {
            let n = name(w).to_owned();
            match running.remove(name(w)) {
                None => report.started.push(n),
                Some(c) if c == w => report.unchanged.push(n),
                Some(_) => report.restarted.push(n),
            }
        }
        report.stopped = running.into_keys().map(str::to_owned).collect();
        for names in [
            &mut report.started,
            &mut report.stopped,
            &mut report.restarted,
            &mut report.unchanged,
        ] {
            names.sort();
        }
        report
    }

    /// Names whose current run must end: the stopped and the restarted.
    pub fn to_stop(&self) -> impl Iterator<Item = &String> {
        self.stopped.iter().chain(&self.restarted)
    }
}

// ---- raw serde structs: exactly the YAML's shape, with positions ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen_address: Option<Spanned<String>>,
    status_interval: Option<Spanned<Scalar>>,
    shutdown_timeout: Option<Spanned<Scalar>>,
    #[serde(default)]
    processes: Vec<Spanned<RawProgram>>,
    #[serde(default)]
    watches: Vec<Spanned<RawWatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
    restart: Option<Spanned<String>>,
    backoff: Option<RawBackoff>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial: Option<Spanned<Scalar>>,
    max: Option<Spanned<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    recursive: Option<bool>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
}

/// Any YAML scalar, kept as its text: `10s`, `0` and `"1"` are all fine where text is wanted.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a YAML file as text: at most `MAX_CONFIG_BYTES`, and UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(read_err(std::io::Error::other(format!(
            "file is {} bytes; a config may be at most {MAX_CONFIG_BYTES}",
            meta.len()
        ))));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

/// Deserializes YAML into `T`, bounding nesting, with errors that name the file, line,
/// column and key path. `None` for an empty document.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<Option<T>, ConfigError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 32,
        },
    };
    let mut key = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Option<T>>(de).map_err(|e| {
            // `Spanned` fields show up as `.value` in the path; users never wrote that.
            key = e.path().to_string().replace(".value", "");
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let (line, column) = err.location().map_or((0, 0), |loc| (loc.line(), loc.column()));
        let message = err.without_snippet().to_string();
        // The saphyr message ends with its own " at line L column C"; we say it up front.
        let message = strip_location_suffix(&message).to_owned();
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            key: if key.is_empty() || key == "." {
                "(document)".to_owned()
            } else {
                key
            },
            message,
        }
    })
}

fn strip_location_suffix(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains("column") => &message[..i],
        _ => message,
    }
}

// ---- validation ----

/// Collects the first error with its position; validation stops at the first problem.
pub(crate) struct Checker<'a> {
    pub(crate) file: &'a str,
}

impl Checker<'_> {
    pub(crate) fn err<T>(
        &self,
        at: &serde_saphyr::Location,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            key: key.to_owned(),
            message: message.into(),
        })
    }

    fn duration(&self, value: &Option<Spanned<Scalar>>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) => match parse_duration(&s.value.0) {
                Some(d) => Ok(d),
                None => self.err(
                    &s.referenced,
                    key,
                    format!("invalid duration {:?} (write it like 200ms, 10s, 1m, 1h)", s.value.0),
                ),
            },
        }
    }

    fn name(&self, name: &Spanned<String>, key: &str, seen: &mut HashSet<String>) -> Result<String, ConfigError> {
        let n = &name.value;
        if !valid_name(n) {
            return self.err(
                &name.referenced,
                key,
                format!("invalid name {n:?}: use letters, digits, '_' and '-', not starting with a digit or '-'"),
            );
        }
        if !seen.insert(n.clone()) {
            return self.err(&name.referenced, key, format!("duplicate name {n:?}"));
        }
        Ok(n.clone())
    }
}

fn validate(raw: RawConfig, file: &str) -> Result<Config, ConfigError> {
    let c = Checker { file };
    let status_interval = c.duration(&raw.status_interval, "status_interval", Duration::from_secs(10))?;
    let shutdown_timeout = c.duration(&raw.shutdown_timeout, "shutdown_timeout", Duration::from_secs(15))?;
    if let Some(addr) = &raw.listen_address
        && addr.value.trim().is_empty()
    {
        return c.err(&addr.referenced, "listen_address", "must not be empty");
    }

    let mut names = HashSet::new();
    let mut processes = Vec::with_capacity(raw.processes.len());
    for (i, p) in raw.processes.iter().enumerate() {
        let at = |k: &str| format!("processes[{i}].{k}");
        let p_val = &p.value;
        let name = c.name(&p_val.name, &at("name"), &mut names)?;
        if p_val.command.value.is_empty() || p_val.command.value[0].is_empty() {
            return c.err(
                &p_val.command.referenced,
                &at("command"),
                "must be a non-empty list: [program, args...]",
            );
        }
        let restart = match p_val.restart.as_ref() {
            None => RestartPolicy::OnFailure,
            Some(r) => match r.value.as_str() {
                "always" => RestartPolicy::Always,
                "on-failure" => RestartPolicy::OnFailure,
                "never" => RestartPolicy::Never,
                other => {
                    return c.err(
                        &r.referenced,
                        &at("restart"),
                        format!("unknown restart policy {other:?} (expected always, on-failure or never)"),
                    );
                }
            },
        };
        let (initial, max) = match &p_val.backoff {
            None => (None, None),
            Some(b) => (b.initial.as_ref(), b.max.as_ref()),
        };
        let backoff = BackoffConfig {
            initial: c.duration(
                &initial.map(clone_scalar),
                &at("backoff.initial"),
                Duration::from_secs(1),
            )?,
            max: c.duration(&max.map(clone_scalar), &at("backoff.max"), Duration::from_secs(60))?,
        };
        if backoff.max < backoff.initial {
            let loc = max.map_or(p.referenced, |m| m.referenced);
            return c.err(&loc, &at("backoff.max"), "must not be less than backoff.initial");
        }
        let stop_signal = match &p_val.stop_signal {
            None => Signal(libc::SIGTERM),
            Some(s) => match Signal::parse(&s.value) {
                Some(sig) => sig,
                None => {
                    let known: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
                    return c.err(
                        &s.referenced,
                        &at("stop_signal"),
                        format!("unknown signal {:?} (expected one of {})", s.value, known.join(", ")),
                    );
                }
            },
        };
        let stop_timeout = c.duration(&p_val.stop_timeout, &at("stop_timeout"), Duration::from_secs(10))?;
        processes.push(ProgramConfig {
            name,
            command: p_val.command.value.clone(),
            cwd: p_val.cwd.clone(),
            env: p_val.env.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
            restart,
            backoff,
            stop_signal,
            stop_timeout,
        });
    }

    let mut watch_names = HashSet::new();
    let mut watches = Vec::with_capacity(raw.watches.len());
    for (i, w) in raw.watches.iter().enumerate() {
        let at = |k: &str| format!("watches[{i}].{k}");
        let w_val = &w.value;
        let name = c.name(&w_val.name, &at("name"), &mut watch_names)?;
        if w_val.path.value.as_os_str().is_empty() {
            return c.err(&w_val.path.referenced, &at("path"), "must not be empty");
        }
        for (list, key) in [(&w_val.include, "include"), (&w_val.exclude, "exclude")] {
            for (j, g) in list.iter().enumerate() {
                if let Err(e) = globset::Glob::new(&g.value) {
                    return c.err(
                        &g.referenced,
                        &format!("watches[{i}].{key}[{j}]"),
                        format!("invalid glob: {}", e.kind()),
                    );
                }
            }
        }
        watches.push(WatchConfig {
            name,
            path: w_val.path.value.clone(),
            recursive: w_val.recursive.unwrap_or(true),
            include: w_val.include.iter().map(|g| g.value.clone()).collect(),
            exclude: w_val.exclude.iter().map(|g| g.value.clone()).collect(),
        });
    }

    Ok(Config {
        source: None,
        listen_address: raw.listen_address.map(|a| a.value),
        status_interval,
        shutdown_timeout,
        processes,
        watches,
    })
}

fn clone_scalar(s: &Spanned<Scalar>) -> Spanned<Scalar> {
    Spanned::new(Scalar(s.value.0.clone()), s.referenced, s.defined)
}

/// `[a-zA-Z_][a-zA-Z0-9_-]*`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses `200ms`, `10s`, `1m`, `2h`, `1m30s`, or a bare `0`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Formats a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> (u64, u64, String, String) {
        match Config::parse(yaml, "t.yaml") {
            Err(ConfigError::Invalid {
                line,
                column,
                key,
                message,
                ..
            }) => (line, column, key, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn demo_config_is_valid() {
        let c = Config::demo();
        assert!(c.processes.len() >= 2);
        assert!(!c.watches.is_empty());
    }

    #[test]
    fn full_config_parses_with_defaults() {
        let c = Config::parse(
            "processes:\n  - name: web\n    command: [python3, -m, http.server]\n    env: {A: 1}\n",
            "t.yaml",
        )
        .unwrap();
        let p = &c.processes[0];
        assert_eq!(p.command, ["python3", "-m", "http.server"]);
        assert_eq!(p.env["A"], "1");
        assert_eq!(p.restart, RestartPolicy::OnFailure);
        assert_eq!(p.stop_signal, Signal(libc::SIGTERM));
        assert_eq!(p.stop_timeout, Duration::from_secs(10));
        assert_eq!(p.backoff.initial, Duration::from_secs(1));
        assert_eq!(c.status_interval, Duration::from_secs(10));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(15));
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let (line, col, key, msg) = err("processes:\n  - name: a\n    command: [x]\n    restrat: always\n");
        assert_eq!(line, 4);
        assert_eq!(col, 5);
        assert!(key.starts_with("processes[0]"), "{key}");
        assert!(msg.contains("restrat"), "{msg}");
    }

    #[test]
    fn duplicate_name_is_refused_at_the_second() {
        let (line, _, key, msg) = err("processes:\n  - name: a\n    command: [x]\n  - name: a\n    command: [y]\n");
        assert_eq!((line, key.as_str()), (4, "processes[1].name"));
        assert!(msg.contains("duplicate"), "{msg}");
    }

    #[test]
    fn empty_command_is_refused() {
        let (line, _, key, _) = err("processes:\n  - name: a\n    command: []\n");
        assert_eq!((line, key.as_str()), (3, "processes[0].command"));
    }

    #[test]
    fn bad_duration_is_refused() {
        let (line, col, key, msg) = err("processes:\n  - name: a\n    command: [x]\n    stop_timeout: 10 sec\n");
        assert_eq!((line, col, key.as_str()), (4, 19, "processes[0].stop_timeout"));
        assert!(msg.contains("10 sec"), "{msg}");
        let (_, _, key, _) = err("status_interval: fast\n");
        assert_eq!(key, "status_interval");
    }

    #[test]
    fn bad_signal_is_refused() {
        let (line, _, key, msg) = err("processes:\n  - name: a\n    command: [x]\n    stop_signal: TERMM\n");
        assert_eq!((line, key.as_str()), (4, "processes[0].stop_signal"));
        assert!(msg.contains("TERMM"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let (line, _, key, _) = err("processes:\n  - name: a\n    command: python3\n");
        assert_eq!(line, 3);
        assert!(key.contains("command"), "{key}");
    }

    #[test]
    fn bad_names_and_globs_are_refused() {
        let (_, _, key, _) = err("processes:\n  - name: 9lives\n    command: [x]\n");
        assert_eq!(key, "processes[0].name");
        let (line, _, key, _) = err("watches:\n  - name: w\n    path: /tmp\n    include: ['a[']\n");
        assert_eq!((line, key.as_str()), (4, "watches[0].include[0]"));
    }

    #[test]
    fn deep_nesting_and_garbage_are_refused_cleanly() {
        let deep = "[".repeat(10_000);
        assert!(Config::parse(&deep, "t.yaml").is_err());
        assert!(Config::parse(":\n\t- ]]", "t.yaml").is_err());
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let c = Config::parse("", "t.yaml").unwrap();
        assert!(c.processes.is_empty());
    }

    #[test]
    fn apply_report_diffs_by_name() {
        let running = [("a".to_owned(), 1), ("b".to_owned(), 2), ("c".to_owned(), 3)];
        let wanted = [("d", 4), ("c", 3), ("b", 20)];
        let r = ApplyReport::diff(
            running.iter().map(|(n, v)| (n, v)),
            &wanted.map(|(_, v)| v),
            |v| match v {
                4 => "d",
                3 => "c",
                _ => "b",
            },
        );
        assert_eq!(r.started, ["d"]);
        assert_eq!(r.stopped, ["a"]);
        assert_eq!(r.restarted, ["b"]);
        assert_eq!(r.unchanged, ["c"]);
        assert_eq!(r.to_stop().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "s", "10", "10x", "-1s", "1.5s", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn signals() {
        assert_eq!(Signal::parse("SIGterm"), Some(Signal(libc::SIGTERM)));
        assert_eq!(Signal::parse("KILL").unwrap().name(), "KILL");
        assert_eq!(Signal::parse("FOO"), None);
    }
}
