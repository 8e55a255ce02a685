//! The YAML config: raw serde structs, then a validated [`Config`]; its included files and env
//! files; and the embedded demo config.
//!
//! Parsing and validation happen before anything starts. Every error names the file (the
//! included file or env file where it is there), the line, the column and the key, so that a
//! typo never passes silently and never starts half a config. Files are read with
//! [`read_bounded`]: regular files only, with a size bound, so that a FIFO, a device or
//! `/dev/zero` named as a config can neither block nor exhaust memory.
//!
//! Layout, for whoever adds a key: the raw structs mirror the YAML (`RawConfig`, `RawProgram`,
//! `RawWatch`), then [`validate`] checks the top level and calls [`program`] per process and
//! [`watch`] per watch, each with the [`Source`] (file name and directory) it was written in.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::supervisor::identity::{self, Identity, Limit, LimitKind, LimitUnit, User};

/// The config `cargo run` uses when no `--config` is given.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// Name under which errors in the embedded demo config are reported.
const DEMO_NAME: &str = "<embedded demo config>";

/// A config file (or included file) larger than this is refused before it is parsed.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// An env file larger than this is refused.
pub const MAX_ENV_FILE_BYTES: u64 = 1 << 20;
/// The text of all scalars of one file after YAML aliases are expanded: a small file cannot
/// become a large config through aliases.
pub const MAX_EXPANDED_BYTES: usize = 16 << 20;
/// One argument or `KEY=VALUE` may be at most this long, NUL included (`MAX_ARG_STRLEN`,
/// execve(2)).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// Copies of one program (`instances`).
pub const MAX_INSTANCES: u32 = 10_000;
/// `output: {file: ...}` defaults, as Docker's json-file driver's usual settings.
const DEFAULT_MAX_SIZE: u64 = 10 << 20;
const DEFAULT_MAX_FILES: u32 = 5;

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
    /// `Some(i)` for copy `i` of a program with `instances:` (named `name-i`).
    pub instance: Option<u32>,
    pub command: Vec<String>,
    /// Absolute, or relative to procwatch's own directory only for the embedded demo.
    pub cwd: Option<PathBuf>,
    /// Everything the program gets on top of procwatch's environment, final: the env files in
    /// order, then `env`, then `HOME`/`USER`/`LOGNAME` of `user` where neither set them, then
    /// `PROCWATCH_INSTANCE`.
    pub env: BTreeMap<String, String>,
    /// User, groups, umask and limits, resolved (see [`Identity::apply_in_child`]).
    pub identity: Identity,
    pub restart: RestartPolicy,
    pub backoff: BackoffConfig,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// Restart or signal the program when a watch sees changes.
    pub on_change: Option<OnChange>,
    /// Programs that must meet a condition before this one starts, in config order.
    pub depends_on: Vec<Dependency>,
    /// Failing: the run is ended and restarted through the restart policy.
    pub liveness: Option<ProbeConfig>,
    /// Drives `procwatch_process_ready` and `depends_on: ready`.
    pub readiness: Option<ProbeConfig>,
    pub output: OutputConfig,
    /// cgroup limits (`resources:`), written to the program's cgroup before each start.
    pub resources: Resources,
}

/// Where a program's stdout and stderr go (`output:`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OutputConfig {
    /// Each line to procwatch's stdout behind the program's name, as docker compose does.
    #[default]
    Prefix,
    /// procwatch's own stdout and stderr, untouched and not captured.
    Inherit,
    /// A file with size rotation.
    File(FileOutput),
}

/// `output: {file: PATH, max_size: 10MiB, max_files: 5, prefix: false}`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    /// Relative paths are relative to the config file's directory.
    pub path: PathBuf,
    /// The file is rotated before a line would take it past this size.
    pub max_size: u64,
    /// Files kept, counting the one being written: `PATH`, `PATH.1`, ... `PATH.<max_files-1>`.
    pub max_files: u32,
    /// Write the program's name before each line too.
    pub prefix: bool,
}

/// `on_change`: what to do to a program when a watch counts events, once per burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnChange {
    /// The watch's name (checked to exist).
    pub watch: String,
    pub action: OnChangeAction,
    /// The quiet that ends a burst: the action comes this long after the last change.
    pub debounce: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChangeAction {
    Restart,
    Signal(Signal),
}

/// The default `on_change.debounce`.
pub const ON_CHANGE_DEBOUNCE: Duration = Duration::from_millis(500);

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
    /// The files `include` brought in, in the order they were read.
    pub included: Vec<PathBuf>,
    pub listen_address: Option<String>,
    pub status_interval: Duration,
    pub shutdown_timeout: Duration,
    /// `cgroup:` auto | off | required (see cgroup.rs).
    pub cgroup: crate::cgroup::CgroupSetting,
    pub processes: Vec<ProgramConfig>,
    pub watches: Vec<WatchConfig>,
}

impl Config {
    /// Reads and validates the file at `path`, the files it includes and the env files its
    /// programs name. Reads files: call it off the async workers.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        // Relative paths in the config are relative to its directory: made absolute once
        // here, they do not depend on procwatch's own directory afterwards.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = absolute.parent().unwrap_or(Path::new("/"));
        let file = path.display().to_string();
        let mut config = Config::parse_in(&text, &file, dir, Some(&absolute))?;
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

    /// Parses and validates YAML text; `file` names it in errors, and relative paths (of
    /// `cwd`, `env_file`, `include`, watches) are relative to `file`'s directory.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let dir = Path::new(file).parent().filter(|d| !d.as_os_str().is_empty());
        Config::parse_in(text, file, dir.unwrap_or(Path::new(".")), None)
    }

    fn parse_in(text: &str, file: &str, dir: &Path, path: Option<&Path>) -> Result<Config, ConfigError> {
        let src = Source { file, dir };
        let raw = parse_yaml::<RawConfig>(text, file)?;
        let raw = match raw {
            Some(raw) if raw.processes.is_some() || raw.watches.is_some() || raw.include.is_some() => raw,
            // An empty or truncated file must not stop every program: say what it lacks.
            _ => {
                return src
                    .c()
                    .err(&serde_saphyr::Location::UNKNOWN, "(document)", NOTHING_TO_RUN);
            }
        };
        validate(raw, &src, path)
    }
}

const NOTHING_TO_RUN: &str = "no `processes:` or `watches:` in this file (is it empty or cut short?); \
     write `processes: []` for a config that runs nothing";

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
    cgroup: Option<Spanned<String>>,
    include: Option<Vec<Spanned<String>>>,
    processes: Option<Vec<Spanned<RawProgram>>>,
    watches: Option<Vec<Spanned<RawWatch>>>,
}

/// An included file: programs and watches only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInclude {
    processes: Option<Vec<Spanned<RawProgram>>>,
    watches: Option<Vec<Spanned<RawWatch>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    cwd: Option<Spanned<PathBuf>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<Scalar>>,
    #[serde(default)]
    env_file: Vec<Spanned<String>>,
    user: Option<Spanned<Scalar>>,
    group: Option<Spanned<Scalar>>,
    umask: Option<Spanned<Scalar>>,
    #[serde(default)]
    limits: BTreeMap<String, Spanned<RawLimit>>,
    instances: Option<Spanned<Scalar>>,
    restart: Option<Spanned<String>>,
    backoff: Option<RawBackoff>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<Scalar>>,
    depends_on: Option<Spanned<OrderedMap<Spanned<String>, Spanned<String>>>>,
    liveness: Option<Spanned<RawProbe>>,
    readiness: Option<Spanned<RawProbe>>,
    on_change: Option<Spanned<RawOnChange>>,
    output: Option<Spanned<RawOutput>>,
    resources: Option<Spanned<RawResources>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    memory: Option<Spanned<Scalar>>,
    cpu: Option<Spanned<Scalar>>,
    pids: Option<Spanned<Scalar>>,
}

/// `output: prefix | inherit | {file: ...}`: a word or a map, each with its own errors.
enum RawOutput {
    Mode(String),
    File(Box<RawFileOutput>),
}

impl<'de> Deserialize<'de> for RawOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawOutput;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("prefix, inherit, or a map {file: PATH, max_size, max_files, prefix}")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawOutput, E> {
                Ok(RawOutput::Mode(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawOutput, A::Error> {
                RawFileOutput::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|f| RawOutput::File(Box::new(f)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnChange {
    watch: Spanned<String>,
    action: Option<Spanned<String>>,
    signal: Option<Spanned<String>>,
    debounce: Option<Spanned<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileOutput {
    file: Spanned<PathBuf>,
    max_size: Option<Spanned<Scalar>>,
    max_files: Option<Spanned<u32>>,
    prefix: Option<bool>,
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

/// Any YAML scalar, kept exactly as written: `3.10` stays `3.10`, `1e3` stays `1e3`, `0027`
/// stays `0027` (a float or an integer would not).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Scalar)
    }
}

/// A limit: `65536`, `unlimited`, `64MiB`, or `{soft: 1024, hard: 4096}`.
enum RawLimit {
    Both(String),
    Split { soft: String, hard: String },
}

impl<'de> Deserialize<'de> for RawLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawLimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a limit (a number, `unlimited`, or {soft: N, hard: N})")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawLimit, E> {
                Ok(RawLimit::Both(v.to_owned()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawLimit, E> {
                Ok(RawLimit::Both(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawLimit, E> {
                Ok(RawLimit::Both(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawLimit, A::Error> {
                use serde::de::Error;
                let (mut soft, mut hard) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Scalar>()?.0;
                    match key.as_str() {
                        "soft" => soft = Some(value),
                        "hard" => hard = Some(value),
                        other => return Err(A::Error::unknown_field(other, &["soft", "hard"])),
                    }
                }
                match (soft, hard) {
                    (Some(soft), Some(hard)) => Ok(RawLimit::Split { soft, hard }),
                    (None, _) => Err(A::Error::missing_field("soft")),
                    (_, None) => Err(A::Error::missing_field("hard")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

// ---- reading files ----

/// Reads at most `max` bytes of a regular file. Anything else (a FIFO, a device such as
/// `/dev/zero`, a directory, a socket) is refused before it is read, so that reading a config
/// can neither block nor grow without bound.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let refuse = |what: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({what})"),
        ))
    };
    let check = |meta: &std::fs::Metadata| {
        let t = meta.file_type();
        match () {
            _ if t.is_file() => Ok(()),
            _ if t.is_dir() => refuse("a directory"),
            _ if t.is_fifo() => refuse("a FIFO"),
            _ if t.is_char_device() || t.is_block_device() => refuse("a device"),
            _ if t.is_socket() => refuse("a socket"),
            _ => refuse("unknown type"),
        }
    };
    // Checked before opening, so that opening has no side effects (a tape, a terminal)...
    check(&std::fs::metadata(path)?)?;
    // ...and again on what was opened (the path may have been replaced in between). O_NONBLOCK:
    // should it be a FIFO after all, open(2) does not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    check(&meta)?;
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "file is {} bytes; at most {max} are read",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The size may have grown since fstat: read one byte more than allowed to notice.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("file is larger than {max} bytes")));
    }
    Ok(bytes)
}

/// Reads a YAML file as text: a regular file, at most `MAX_CONFIG_BYTES`, and UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    };
    let bytes = read_bounded(path, MAX_CONFIG_BYTES).map_err(read_err)?;
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

/// Deserializes YAML into `T`, bounding nesting and what aliases expand to, with errors that
/// name the file, line, column and key path. `None` for an empty document.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<Option<T>, ConfigError> {
    let options = || {
        serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_depth: 32,
            },
        }
    };
    let mut key = String::new();
    // First a walk that only measures, over borrowed text: an alias repeated a million times
    // costs no memory there, and is refused before anything is built from it. Without an `&`
    // there is no anchor, hence no alias: the text is all there is, and its size is bounded.
    let measured = match text.contains('&') {
        true => serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
            serde::de::DeserializeSeed::deserialize(Measure(&mut 0), de)
        }),
        false => Ok(()),
    };
    // Then the document, without tracking the key path: tracking costs about a third of the
    // parse (0.15 s for 5000 programs), and only an error needs it. On an error the same text
    // is parsed again with tracking, which fails at the same place with the same error.
    let result = measured.and_then(|()| {
        serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
            <Option<T> as serde::Deserialize>::deserialize(de)
        })
        .or_else(|_| {
            serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
                serde_path_to_error::deserialize::<_, Option<T>>(de).map_err(|e| {
                    // `Spanned` fields show up as `.value` in the path; users never wrote that.
                    key = e.path().to_string().replace(".value", "");
                    e.into_inner()
                })
            })
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

/// Walks any YAML value and adds up the bytes of its scalars, aliases expanded; fails past
/// [`MAX_EXPANDED_BYTES`].
struct Measure<'a>(&'a mut usize);

impl Measure<'_> {
    fn add<E: serde::de::Error>(&mut self, n: usize) -> Result<(), E> {
        *self.0 = self.0.saturating_add(n);
        if *self.0 > MAX_EXPANDED_BYTES {
            return Err(E::custom(format!(
                "the config expands to more than {MAX_EXPANDED_BYTES} bytes of text (YAML aliases?)"
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Measure<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Measure<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.add(8)
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.add(8)
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.add(8)
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.add(8)
    }
    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        self.add(v.len().max(8))
    }
    fn visit_bytes<E: serde::de::Error>(mut self, v: &[u8]) -> Result<(), E> {
        self.add(v.len().max(8))
    }
    fn visit_none<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.add(8)
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.add(8)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Measure(self.0))?.is_some() {
            self.add(8)?;
        }
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Measure(self.0))?.is_some() {
            map.next_value_seed(Measure(self.0))?;
            self.add(8)?;
        }
        Ok(())
    }
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
        let (line, column) = if *at == serde_saphyr::Location::UNKNOWN {
            (1, 1)
        } else {
            (at.line(), at.column())
        };
        Err(ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
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

    fn output(&self, raw: Option<&Spanned<RawOutput>>, key: &str) -> Result<OutputConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(OutputConfig::Prefix);
        };
        let f = match &raw.value {
            RawOutput::Mode(m) => {
                return match m.as_str() {
                    "prefix" => Ok(OutputConfig::Prefix),
                    "inherit" => Ok(OutputConfig::Inherit),
                    other => self.err(
                        &raw.referenced,
                        key,
                        format!("unknown output {other:?} (expected prefix, inherit, or {{file: PATH}})"),
                    ),
                };
            }
            RawOutput::File(f) => f,
        };
        if f.file.value.as_os_str().is_empty() {
            return self.err(&f.file.referenced, &format!("{key}.file"), "must not be empty");
        }
        let max_size = match &f.max_size {
            None => DEFAULT_MAX_SIZE,
            Some(s) => match parse_size(&s.value.0) {
                Some(n) if n > 0 => n,
                _ => {
                    return self.err(
                        &s.referenced,
                        &format!("{key}.max_size"),
                        format!("invalid size {:?} (write it like 10MiB, 512KiB, 1GB)", s.value.0),
                    );
                }
            },
        };
        let max_files = match &f.max_files {
            None => DEFAULT_MAX_FILES,
            Some(n) if n.value >= 1 => n.value,
            Some(n) => return self.err(&n.referenced, &format!("{key}.max_files"), "must be at least 1"),
        };
        Ok(OutputConfig::File(FileOutput {
            path: f.file.value.clone(),
            max_size,
            max_files,
            prefix: f.prefix.unwrap_or(false),
        }))
    }

    /// A valid name not used before; `seen` maps each name to the file that defined it.
    fn name(
        &self,
        name: &Spanned<String>,
        key: &str,
        seen: &mut HashMap<String, String>,
    ) -> Result<String, ConfigError> {
        let n = &name.value;
        if !valid_name(n) {
            return self.err(
                &name.referenced,
                key,
                format!("invalid name {n:?}: use letters, digits, '_' and '-', not starting with a digit or '-'"),
            );
        }
        self.unique(n, &name.referenced, key, seen)?;
        Ok(n.clone())
    }

    fn unique(
        &self,
        n: &str,
        at: &serde_saphyr::Location,
        key: &str,
        seen: &mut HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        if let Some(first) = seen.get(n) {
            let also = if first == self.file {
                String::new()
            } else {
                format!(" (first defined in {first})")
            };
            return self.err(at, key, format!("duplicate name {n:?}{also}"));
        }
        seen.insert(n.to_owned(), self.file.to_owned());
        Ok(())
    }
}

/// The file a part of the config was written in: its name for errors, its directory for
/// relative paths.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a str,
    pub(crate) dir: &'a Path,
}

impl Source<'_> {
    pub(crate) fn c(&self) -> Checker<'_> {
        Checker { file: self.file }
    }

    /// `p` if absolute, else `p` relative to the config file's directory.
    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        let joined: PathBuf = self
            .dir
            .join(p)
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        if joined.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            joined
        }
    }
}

/// Names are unique across the main file and every included file.
#[derive(Default)]
struct Names {
    /// What exec allows and what procwatch's own environment takes of it: looked up once
    /// per config, not per program (at 5000 programs that was a tenth of the validation).
    exec: ExecBudget,
    programs: HashMap<String, String>,
    watches: HashMap<String, String>,
    /// `on_change.watch` references, checked once every watch is known (includes too): the
    /// watch named, and the error to give if there is none.
    watch_refs: Vec<(String, ConfigError)>,
}

fn validate(raw: RawConfig, src: &Source, path: Option<&Path>) -> Result<Config, ConfigError> {
    let c = src.c();
    let status_interval = c.duration(&raw.status_interval, "status_interval", Duration::from_secs(10))?;
    let shutdown_timeout = c.duration(&raw.shutdown_timeout, "shutdown_timeout", Duration::from_secs(15))?;
    if let Some(addr) = &raw.listen_address
        && let Err(message) = parse_listen_address(&addr.value)
    {
        return c.err(&addr.referenced, "listen_address", message);
    }

    let cgroup = match &raw.cgroup {
        None => crate::cgroup::CgroupSetting::Auto,
        Some(v) => match crate::cgroup::CgroupSetting::parse(&v.value) {
            Some(s) => s,
            None => {
                return c.err(
                    &v.referenced,
                    "cgroup",
                    format!("unknown value {:?} (expected auto, off or required)", v.value),
                );
            }
        },
    };

    let mut names = Names::default();
    let mut processes = Vec::new();
    let mut watches = Vec::new();
    for (i, p) in raw.processes.iter().flatten().enumerate() {
        program(src, i, p, &mut names, &mut processes)?;
    }
    for (i, w) in raw.watches.iter().flatten().enumerate() {
        watches.push(watch(src, i, w, &mut names)?);
    }
    let mut included = Vec::new();
    for (i, pattern) in raw.include.iter().flatten().enumerate() {
        let key = format!("include[{i}]");
        for file in expand_include(src, pattern, &key, path)? {
            if included.contains(&file) {
                continue;
            }
            let name = file.display().to_string();
            let text = read_text(&file)?;
            let dir = file.parent().unwrap_or(Path::new("/"));
            let inc = Source { file: &name, dir };
            let raw = match parse_yaml::<RawInclude>(&text, &name)? {
                Some(raw) if raw.processes.is_some() || raw.watches.is_some() => raw,
                _ => {
                    return inc
                        .c()
                        .err(&serde_saphyr::Location::UNKNOWN, "(document)", NOTHING_TO_RUN);
                }
            };
            for (i, p) in raw.processes.iter().flatten().enumerate() {
                program(&inc, i, p, &mut names, &mut processes)?;
            }
            for (i, w) in raw.watches.iter().flatten().enumerate() {
                watches.push(watch(&inc, i, w, &mut names)?);
            }
            included.push(file);
        }
    }
    for (watch, unknown) in names.watch_refs {
        if !names.watches.contains_key(&watch) {
            return Err(unknown);
        }
    }
    check_dependencies(&mut processes)?;
    Ok(Config {
        source: None,
        included,
        listen_address: raw.listen_address.map(|a| a.value),
        status_interval,
        shutdown_timeout,
        cgroup,
        processes,
        watches,
    })
}

/// The files an `include` glob names: relative to the including file, sorted; only the last
/// component may hold wildcards; directories are skipped. Matching nothing is a warning.
fn expand_include(
    src: &Source,
    pattern: &Spanned<String>,
    key: &str,
    including: Option<&Path>,
) -> Result<Vec<PathBuf>, ConfigError> {
    let c = src.c();
    let at = &pattern.referenced;
    let full = src.path(Path::new(&pattern.value));
    let (dir, glob) = match (full.parent(), full.file_name().and_then(|f| f.to_str())) {
        (Some(dir), Some(glob)) if !pattern.value.is_empty() => (dir.to_path_buf(), glob.to_owned()),
        _ => return c.err(at, key, "expected a file name or a glob like conf.d/*.yaml"),
    };
    if dir.to_string_lossy().contains(['*', '?', '[', '{']) {
        return c.err(
            at,
            key,
            "only the file name may hold wildcards (conf.d/*.yaml, not */x.yaml)",
        );
    }
    let matcher = match globset::GlobBuilder::new(&glob).literal_separator(true).build() {
        Ok(g) => g.compile_matcher(),
        Err(e) => return c.err(at, key, format!("invalid glob: {}", e.kind())),
    };
    let mut files = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name();
                if !matcher.is_match(Path::new(&name)) || e.path().is_dir() {
                    continue;
                }
                files.push(e.path());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return c.err(at, key, format!("cannot read directory {}: {e}", dir.display())),
    }
    files.sort();
    if files.is_empty() {
        tracing::warn!(file = src.file, key, pattern = %pattern.value, "include matches no file");
    }
    if let Some(including) = including {
        let me = std::fs::canonicalize(including).ok();
        if files.iter().any(|f| std::fs::canonicalize(f).ok() == me) {
            return c.err(at, key, "includes the file it is in");
        }
    }
    Ok(files)
}

/// Validates one raw program and appends it (or its instances) to `out`.
fn program(
    src: &Source,
    i: usize,
    p: &Spanned<RawProgram>,
    names: &mut Names,
    out: &mut Vec<ProgramConfig>,
) -> Result<(), ConfigError> {
    let c = src.c();
    let at = |k: &str| format!("processes[{i}].{k}");
    let p_val = &p.value;
    let name = c.name(&p_val.name, &at("name"), &mut names.programs)?;
    let command = &p_val.command;
    if command.value.is_empty() || command.value[0].is_empty() {
        return c.err(
            &command.referenced,
            &at("command"),
            "must be a non-empty list: [program, args...]",
        );
    }
    if command.value.iter().any(|a| a.contains('\0')) {
        return c.err(
            &command.referenced,
            &at("command"),
            "an argument cannot hold a NUL byte",
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
            Some(sig) if [libc::SIGKILL, libc::SIGSTOP, libc::SIGCONT].contains(&sig.0) => {
                return c.err(
                    &s.referenced,
                    &at("stop_signal"),
                    format!(
                        "{} cannot be a stop signal (KILL comes anyway after stop_timeout; STOP and CONT do not stop)",
                        sig.name()
                    ),
                );
            }
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
    let on_change = match &p_val.on_change {
        Some(raw) => Some(on_change(src, &at("on_change"), raw, names)?),
        None => None,
    };
    let cwd = p_val.cwd.as_ref().map(|d| src.path(&d.value));
    let liveness = c.probe(&p_val.liveness, &at("liveness"), ProbeRole::Liveness)?;
    let readiness = c.probe(&p_val.readiness, &at("readiness"), ProbeRole::Readiness)?;
    let depends_on = c.dependencies(&p_val.depends_on, &at("depends_on"))?;
    let mut output = c.output(p_val.output.as_ref(), &at("output"))?;
    let resources = c.resources(p_val.resources.as_ref(), &at("resources"))?;
    if let OutputConfig::File(f) = &mut output {
        f.path = src.path(&f.path);
    }

    let mut env = BTreeMap::new();
    for (j, f) in p_val.env_file.iter().enumerate() {
        read_env_file(src, f, &at(&format!("env_file[{j}]")), &mut env)?;
    }
    for (k, v) in &p_val.env {
        if let Err(message) = check_env_key(k) {
            return c.err(&v.referenced, &at(&format!("env.{k}")), message);
        }
        if v.value.0.contains('\0') {
            return c.err(
                &v.referenced,
                &at(&format!("env.{k}")),
                "a value cannot hold a NUL byte",
            );
        }
        env.insert(k.clone(), v.value.0.clone());
    }
    let identity = identity_of(src, i, p_val)?;
    if let Some(u) = &identity.user {
        for (var, value) in [
            ("USER", Some(&u.name)),
            ("LOGNAME", Some(&u.name)),
            ("HOME", u.home.as_ref()),
        ] {
            if let Some(value) = value {
                env.entry(var.to_owned()).or_insert_with(|| value.clone());
            }
        }
    }
    check_exec_size(src, &at("command"), command, &env, &names.exec)?;

    let base = ProgramConfig {
        name,
        instance: None,
        command: command.value.clone(),
        cwd,
        env,
        identity,
        restart,
        backoff,
        stop_signal,
        stop_timeout,
        on_change,
        depends_on,
        liveness,
        readiness,
        output,
        resources,
    };
    let Some(n) = &p_val.instances else {
        out.push(base);
        return Ok(());
    };
    let count = match n.value.0.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_INSTANCES).contains(&n) => n,
        _ => {
            return c.err(
                &n.referenced,
                &at("instances"),
                format!("expected a number from 1 to {MAX_INSTANCES}, not {:?}", n.value.0),
            );
        }
    };
    // The base name stays taken (a second `web` would be confusing); each copy's must be free.
    for k in 0..count {
        let mut copy = base.clone();
        copy.name = format!("{}-{k}", base.name);
        copy.instance = Some(k);
        copy.env.insert("PROCWATCH_INSTANCE".to_owned(), k.to_string());
        // Each copy its own file (`web.log` -> `web-0.log`): rotation needs one writer per file.
        if let OutputConfig::File(f) = &mut copy.output {
            f.path = instance_path(&f.path, k);
        }
        c.unique(&copy.name, &p_val.name.referenced, &at("name"), &mut names.programs)?;
        out.push(copy);
    }
    Ok(())
}

/// Validates a program's `on_change` (at `key`); the watch it names is checked at the end.
fn on_change(src: &Source, key: &str, raw: &Spanned<RawOnChange>, names: &mut Names) -> Result<OnChange, ConfigError> {
    let c = src.c();
    let r = &raw.value;
    let at = |k: &str| format!("{key}.{k}");
    let unknown = c
        .err::<()>(
            &r.watch.referenced,
            &at("watch"),
            format!("no watch named {:?} (on_change names one of `watches`)", r.watch.value),
        )
        .unwrap_err();
    names.watch_refs.push((r.watch.value.clone(), unknown));
    let signal = match &r.signal {
        None => None,
        Some(s) => match Signal::parse(&s.value) {
            Some(sig) => Some((sig, s)),
            None => {
                let known: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
                return c.err(
                    &s.referenced,
                    &at("signal"),
                    format!("unknown signal {:?} (expected one of {})", s.value, known.join(", ")),
                );
            }
        },
    };
    let action = match r.action.as_ref().map(|a| (a.value.as_str(), a)) {
        None | Some(("restart", _)) => {
            if let Some((_, s)) = signal {
                return c.err(
                    &s.referenced,
                    &at("signal"),
                    "a signal goes with `action: signal` (this on_change restarts)",
                );
            }
            OnChangeAction::Restart
        }
        Some(("signal", _)) => OnChangeAction::Signal(signal.map_or(Signal(libc::SIGHUP), |(sig, _)| sig)),
        Some((other, a)) => {
            return c.err(
                &a.referenced,
                &at("action"),
                format!("unknown action {other:?} (expected restart or signal)"),
            );
        }
    };
    let debounce = c.duration(&r.debounce, &at("debounce"), ON_CHANGE_DEBOUNCE)?;
    Ok(OnChange {
        watch: r.watch.value.clone(),
        action,
        debounce,
    })
}

/// `dir/web.log` -> `dir/web-3.log`; `dir/web` -> `dir/web-3`.
fn instance_path(path: &Path, k: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{k}"),
    };
    path.with_file_name(name)
}

/// Validates one raw watch.
fn watch(src: &Source, i: usize, w: &Spanned<RawWatch>, names: &mut Names) -> Result<WatchConfig, ConfigError> {
    let c = src.c();
    let at = |k: &str| format!("watches[{i}].{k}");
    let w_val = &w.value;
    let name = c.name(&w_val.name, &at("name"), &mut names.watches)?;
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
    Ok(WatchConfig {
        name,
        path: src.path(&w_val.path.value),
        recursive: w_val.recursive.unwrap_or(true),
        include: w_val.include.iter().map(|g| g.value.clone()).collect(),
        exclude: w_val.exclude.iter().map(|g| g.value.clone()).collect(),
    })
}

/// user, group, umask and limits, resolved now so that a wrong one is a config error.
fn identity_of(src: &Source, i: usize, p: &RawProgram) -> Result<Identity, ConfigError> {
    let c = src.c();
    let at = |k: &str| format!("processes[{i}].{k}");
    let mut id = Identity::default();
    if let Some(u) = &p.user {
        let user = match identity::lookup_user(&u.value.0) {
            Ok(Some(user)) => user,
            Ok(None) => return c.err(&u.referenced, &at("user"), format!("no such user {:?}", u.value.0)),
            Err(e) => return c.err(&u.referenced, &at("user"), e),
        };
        if user.gid.is_none() && p.group.is_none() {
            return c.err(
                &u.referenced,
                &at("user"),
                format!("uid {} has no passwd entry: give `group:` too", user.uid),
            );
        }
        // SAFETY: geteuid has no preconditions. (Asked only here: most programs set no user.)
        let euid = unsafe { libc::geteuid() };
        if user.uid != euid && !identity::capable(identity::CAP_SETUID) {
            return c.err(
                &u.referenced,
                &at("user"),
                format!(
                    "running as user {:?} needs root (procwatch runs as uid {euid} without CAP_SETUID)",
                    user.name
                ),
            );
        }
        id.user = Some(user);
    }
    if let Some(g) = &p.group {
        id.group = match identity::lookup_group(&g.value.0) {
            Ok(Some(group)) => Some(group),
            Ok(None) => return c.err(&g.referenced, &at("group"), format!("no such group {:?}", g.value.0)),
            Err(e) => return c.err(&g.referenced, &at("group"), e),
        };
    }
    if let Some(gid) = id.gid() {
        id.groups = match &id.user {
            Some(User { name, gid: Some(_), .. }) => {
                identity::supplementary_groups(name, gid).or_else(|e| c.err(&p.name.referenced, &at("user"), e))?
            }
            // Only a group: the supplementary groups are dropped, as with systemd's Group=.
            _ => Vec::new(),
        };
        // setgroups(2) needs CAP_SETGID even to set the groups one already has.
        if !identity::capable(identity::CAP_SETGID) {
            let (at_loc, key) = match (&p.group, &p.user) {
                (Some(g), _) => (g.referenced, at("group")),
                (None, Some(u)) => (u.referenced, at("user")),
                (None, None) => (p.name.referenced, at("name")),
            };
            // SAFETY: getegid has no preconditions.
            let egid = unsafe { libc::getegid() };
            return c.err(
                &at_loc,
                &key,
                format!("changing groups (to gid {gid}) needs root (procwatch runs as gid {egid} without CAP_SETGID)"),
            );
        }
    }
    if let Some(m) = &p.umask {
        id.umask = match u32::from_str_radix(m.value.0.trim(), 8) {
            Ok(v) if v <= 0o777 => Some(v as libc::mode_t),
            _ => {
                return c.err(
                    &m.referenced,
                    &at("umask"),
                    format!("expected an octal mode like \"0027\", not {:?}", m.value.0),
                );
            }
        };
    }
    for (name, value) in &p.limits {
        let key = at(&format!("limits.{name}"));
        let Some(kind) = LimitKind::parse(name) else {
            let known: Vec<&str> = LimitKind::ALL.iter().map(|k| k.name()).collect();
            return c.err(
                &value.referenced,
                &key,
                format!("unknown limit {name:?} (expected one of {})", known.join(", ")),
            );
        };
        let parse = |text: &str| {
            parse_limit(kind.unit(), text).ok_or_else(|| {
                let example = match kind.unit() {
                    LimitUnit::Count => "65536",
                    LimitUnit::Bytes => "64MiB",
                    LimitUnit::Seconds => "3600 or 1h",
                };
                format!("invalid value {text:?} (write it like {example}, or unlimited)")
            })
        };
        let (soft, hard) = match &value.value {
            RawLimit::Both(v) => parse(v).map(|v| (v, v)),
            RawLimit::Split { soft, hard } => parse(soft).and_then(|s| parse(hard).map(|h| (s, h))),
        }
        .or_else(|e| c.err(&value.referenced, &key, e))?;
        if soft > hard {
            return c.err(&value.referenced, &key, "soft must not be above hard");
        }
        let (_, current_hard) = kind.current();
        if hard > current_hard && !identity::capable(identity::CAP_SYS_RESOURCE) {
            return c.err(
                &value.referenced,
                &key,
                format!(
                    "{} is above procwatch's own hard limit {current_hard}; raising it needs CAP_SYS_RESOURCE, which procwatch does not have (root in a container may lack it)",
                    fmt_limit(hard)
                ),
            );
        }
        if kind == LimitKind::Nofile && hard > identity::nr_open() {
            return c.err(
                &value.referenced,
                &key,
                format!(
                    "{} is above the kernel's ceiling fs.nr_open = {}",
                    fmt_limit(hard),
                    identity::nr_open()
                ),
            );
        }
        id.limits.push(Limit { kind, soft, hard });
    }
    id.limits.sort_by_key(|l| l.kind);
    Ok(id)
}

fn fmt_limit(n: u64) -> String {
    if n == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        n.to_string()
    }
}

/// `65536`, `unlimited`/`infinity`, sizes like `64MiB` for byte limits, durations for `cpu`.
fn parse_limit(unit: LimitUnit, text: &str) -> Option<u64> {
    let text = text.trim();
    if matches!(text, "unlimited" | "infinity") {
        return Some(libc::RLIM_INFINITY);
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    match unit {
        LimitUnit::Count => None,
        LimitUnit::Bytes => parse_size(text),
        LimitUnit::Seconds => parse_duration(text).map(|d| d.as_secs()),
    }
}

/// Parses sizes like `512MiB`, `10MB`, `4k`, `100` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let n: u64 = text[..digits].parse().ok()?;
    let factor: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        "T" | "TB" => 1000 * 1000 * 1000 * 1000,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// An env key exec can carry: not empty, no `=`, no NUL.
fn check_env_key(k: &str) -> Result<(), &'static str> {
    if k.is_empty() {
        Err("an environment variable name cannot be empty")
    } else if k.contains('=') {
        Err("an environment variable name cannot hold '='")
    } else if k.contains('\0') {
        Err("an environment variable name cannot hold a NUL byte")
    } else {
        Ok(())
    }
}

/// Refuses an argv or environment that execve(2) would refuse with E2BIG: one string longer
/// than `MAX_ARG_STRLEN`, or argv and environment (procwatch's own included) above `ARG_MAX`.
/// ARG_MAX, and what each variable of procwatch's own environment (which programs inherit)
/// costs of it.
struct ExecBudget {
    arg_max: usize,
    own_env: Vec<(std::ffi::OsString, usize)>,
    own_total: usize,
}

impl Default for ExecBudget {
    fn default() -> ExecBudget {
        // SAFETY: sysconf has no preconditions.
        let arg_max = match unsafe { libc::sysconf(libc::_SC_ARG_MAX) } {
            n if n > 0 => n as usize,
            _ => 2 << 20,
        };
        let own_env: Vec<(std::ffi::OsString, usize)> = std::env::vars_os()
            .map(|(k, v)| {
                let cost = exec_cost(k.len() + 1 + v.len());
                (k, cost)
            })
            .collect();
        let own_total = own_env.iter().map(|(_, c)| c).sum();
        ExecBudget {
            arg_max,
            own_env,
            own_total,
        }
    }
}

/// What execve counts for a string of `len` bytes: the string with its NUL, and a pointer.
fn exec_cost(len: usize) -> usize {
    len + 1 + std::mem::size_of::<usize>()
}

fn check_exec_size(
    src: &Source,
    key: &str,
    command: &Spanned<Vec<String>>,
    env: &BTreeMap<String, String>,
    budget: &ExecBudget,
) -> Result<(), ConfigError> {
    let c = src.c();
    let at = &command.referenced;
    let cost = exec_cost;
    let mut total = 0usize;
    for a in &command.value {
        if a.len() + 1 > MAX_ARG_STRLEN {
            return c.err(
                at,
                key,
                format!(
                    "an argument of {} bytes is above exec's limit of {MAX_ARG_STRLEN}",
                    a.len()
                ),
            );
        }
        total += cost(a.len());
    }
    for (k, v) in env {
        let len = k.len() + 1 + v.len();
        if len + 1 > MAX_ARG_STRLEN {
            return c.err(
                at,
                &key.replace("command", &format!("env.{k}")),
                format!("{len} bytes are above exec's limit of {MAX_ARG_STRLEN} for one variable"),
            );
        }
        total += cost(len);
    }
    // procwatch's own variables, but those the program sets itself (rarely any).
    total += budget.own_total;
    if !env.is_empty() {
        for (k, c) in &budget.own_env {
            if env.contains_key(k.to_str().unwrap_or_default()) {
                total -= c;
            }
        }
    }
    let arg_max = budget.arg_max;
    if total > arg_max {
        return c.err(
            at,
            key,
            format!(
                "the command and environment take {total} bytes, above exec's limit ARG_MAX = {arg_max} (procwatch's own environment included)"
            ),
        );
    }
    Ok(())
}

/// Reads one `env_file` entry into `env`: `-path` may be missing.
fn read_env_file(
    src: &Source,
    entry: &Spanned<String>,
    key: &str,
    env: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let c = src.c();
    let (optional, name) = match entry.value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, entry.value.as_str()),
    };
    if name.is_empty() {
        return c.err(&entry.referenced, key, "expected a file name");
    }
    let path = src.path(Path::new(name));
    let bytes = match read_bounded(&path, MAX_ENV_FILE_BYTES) {
        Ok(b) => b,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return c.err(
                &entry.referenced,
                key,
                format!("cannot read env file {}: {e}", path.display()),
            );
        }
    };
    let file = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Invalid {
        file: file.clone(),
        line: 1,
        column: 1,
        key: key.to_owned(),
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let vars = parse_env_file(&text).map_err(|(line, column, message)| ConfigError::Invalid {
        file,
        line,
        column,
        key: key.to_owned(),
        message,
    })?;
    env.extend(vars);
    Ok(())
}

/// Parses systemd `EnvironmentFile=` syntax: `KEY=VALUE` lines; lines starting with `#` or
/// `;` are comments; `export ` before a key is tolerated; values may be `"double quoted"`
/// (with `\"`, `\\`, `\$`, `` \` `` and line continuation) or `'single quoted'` (literal),
/// may span lines inside quotes; unquoted values lose surrounding blanks, and a backslash
/// escapes the next character. No variable expansion. Errors are (line, column, message).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (u64, u64, String)> {
    let mut cur = Cursor {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
    };
    let mut out = Vec::new();
    while let Some(c) = cur.peek() {
        // Blanks, empty lines and comments.
        if c.is_whitespace() {
            cur.next();
            continue;
        }
        if c == '#' || c == ';' {
            while cur.peek().is_some_and(|c| c != '\n') {
                cur.next();
            }
            continue;
        }
        // The key, up to '='.
        let (key_line, key_col) = (cur.line, cur.col);
        let mut key = String::new();
        while let Some(c) = cur.peek().filter(|&c| c != '=' && c != '\n') {
            key.push(c);
            cur.next();
        }
        if cur.next() != Some('=') {
            return Err((
                key_line,
                key_col,
                format!("expected KEY=VALUE, found {:?}", key.trim_end()),
            ));
        }
        let mut key = key.trim();
        if let Some(rest) = key.strip_prefix("export")
            && rest.starts_with([' ', '\t'])
        {
            key = rest.trim_start();
        }
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((
                key_line,
                key_col,
                format!("invalid variable name {key:?} (letters, digits and '_', not starting with a digit)"),
            ));
        }
        while cur.peek().is_some_and(|c| c == ' ' || c == '\t') {
            cur.next();
        }
        // The value, up to an unquoted end of line; `kept` is its length without trailing
        // unquoted blanks.
        let mut value = String::new();
        let mut kept = 0;
        while let Some(c) = cur.peek().filter(|&c| c != '\n') {
            let (q_line, q_col) = (cur.line, cur.col);
            cur.next();
            let unclosed = |what: &str| (q_line, q_col, format!("{what} quote not closed"));
            match c {
                '\'' => loop {
                    match cur.next().ok_or_else(|| unclosed("single"))? {
                        '\'' => break,
                        c => value.push(c),
                    }
                },
                '"' => loop {
                    match cur.next().ok_or_else(|| unclosed("double"))? {
                        '"' => break,
                        '\\' => match cur.next().ok_or_else(|| unclosed("double"))? {
                            '\n' => {}
                            n @ ('"' | '\\' | '$' | '`') => value.push(n),
                            other => {
                                value.push('\\');
                                value.push(other);
                            }
                        },
                        c => value.push(c),
                    }
                },
                '\\' => match cur.next() {
                    Some('\n') | None => {}
                    Some(n) => value.push(n),
                },
                ' ' | '\t' | '\r' => {
                    value.push(c);
                    continue;
                }
                c => value.push(c),
            }
            kept = value.len();
        }
        value.truncate(kept);
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Characters of an env file with the line and column of the next one.
struct Cursor {
    chars: Vec<char>,
    i: usize,
    line: u64,
    col: u64,
}

impl Cursor {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
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

/// Where to listen: `:PORT` is every address, IPv4 and IPv6, as in the Prometheus exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    Any(u16),
    At(SocketAddr),
}

/// Parses a listen address: `:PORT` for every address, else `HOST:PORT` with a literal IP.
/// The config's `listen_address` and `--web.listen-address` both go through this one function.
pub fn parse_listen_address(addr: &str) -> Result<ListenAddress, String> {
    match addr.strip_prefix(':') {
        Some(port) => port
            .parse()
            .map(ListenAddress::Any)
            .map_err(|e| format!("port: {e} (expected HOST:PORT or :PORT)")),
        None => addr
            .parse()
            .map(ListenAddress::At)
            .map_err(|e: std::net::AddrParseError| format!("{e} (expected HOST:PORT, [IPv6]:PORT or :PORT)")),
    }
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

// ---- health and order: liveness, readiness, depends_on ----

/// What a program waits for in another before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependCondition {
    /// The dependency's process has been started.
    Started,
    /// The dependency runs and its readiness probe passes (or it runs, where it has none).
    Ready,
    /// The dependency ran to exit code 0 and is not going to run again (a one-shot task).
    CompletedSuccessfully,
}

impl DependCondition {
    const ALL: [(&str, DependCondition); 3] = [
        ("started", DependCondition::Started),
        ("ready", DependCondition::Ready),
        ("completed_successfully", DependCondition::CompletedSuccessfully),
    ];

    pub fn as_str(self) -> &'static str {
        DependCondition::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("?", |(n, _)| n)
    }
}

#[derive(Debug, Clone)]
pub struct Dependency {
    /// A program; once validated, never the base name of programs with `instances` (a
    /// dependency on `web` becomes one on each of `web-0`, `web-1`...).
    pub name: String,
    pub condition: DependCondition,
    /// Where it was written, for errors found once every file is read.
    site: Site,
}

/// Two dependencies are the same whatever line they were written on: moving a line is not a
/// change that restarts a program on reload.
impl PartialEq for Dependency {
    fn eq(&self, other: &Dependency) -> bool {
        self.name == other.name && self.condition == other.condition
    }
}

impl Eq for Dependency {}

#[derive(Debug, Clone)]
struct Site {
    file: String,
    at: serde_saphyr::Location,
    key: String,
}

impl Site {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ConfigError> {
        Checker { file: &self.file }.err(&self.at, &self.key, message)
    }
}

/// One health check of a program, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub check: ProbeCheck,
    pub period: Duration,
    pub timeout: Duration,
    /// Failures in a row that make the probe fail (liveness: restart; readiness: not ready).
    pub failure_threshold: u32,
    /// Successes in a row that make a failed readiness probe pass again.
    pub success_threshold: u32,
    /// Time after the start of a run before the first probe.
    pub initial_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    /// GET `url`; success is `status`, or any 2xx or 3xx where it is not given. Redirects are
    /// not followed.
    Http { url: String, status: Option<u16> },
    /// A TCP connection to `address` (`host:port`) is accepted.
    Tcp { address: String },
    /// `command` (argv) exits 0; run with the program's identity, environment and cwd.
    Exec { command: Vec<String> },
}

impl ProbeCheck {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeCheck::Http { .. } => "http",
            ProbeCheck::Tcp { .. } => "tcp",
            ProbeCheck::Exec { .. } => "exec",
        }
    }
}

/// Which of a program's probes: the `probe` label of the probe metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRole {
    Liveness,
    Readiness,
}

impl ProbeRole {
    pub const ALL: [ProbeRole; 2] = [ProbeRole::Liveness, ProbeRole::Readiness];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeRole::Liveness => "liveness",
            ProbeRole::Readiness => "readiness",
        }
    }
}

impl ProgramConfig {
    /// The probe of this role, where the program has one.
    pub fn probe(&self, role: ProbeRole) -> Option<&ProbeConfig> {
        match role {
            ProbeRole::Liveness => self.liveness.as_ref(),
            ProbeRole::Readiness => self.readiness.as_ref(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    http: Option<Spanned<RawHttpProbe>>,
    tcp: Option<Spanned<String>>,
    exec: Option<Spanned<Vec<String>>>,
    period: Option<Spanned<Scalar>>,
    timeout: Option<Spanned<Scalar>>,
    failure_threshold: Option<Spanned<Scalar>>,
    success_threshold: Option<Spanned<Scalar>>,
    initial_delay: Option<Spanned<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpProbe {
    url: Spanned<String>,
    status: Option<Spanned<Scalar>>,
}

/// A YAML map read as its entries in the order written (errors name the first bad one).
struct OrderedMap<K, V>(Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, Val: Deserialize<'de>> serde::de::Visitor<'de> for V<K, Val> {
            type Value = OrderedMap<K, Val>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl Checker<'_> {
    fn count(&self, value: &Option<Spanned<Scalar>>, key: &str, default: u32) -> Result<u32, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) => match s.value.0.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => self.err(
                    &s.referenced,
                    key,
                    format!("must be a whole number of at least 1, not {:?}", s.value.0),
                ),
            },
        }
    }

    fn probe(
        &self,
        raw: &Option<Spanned<RawProbe>>,
        key: &str,
        role: ProbeRole,
    ) -> Result<Option<ProbeConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let at = |k: &str| format!("{key}.{k}");
        let p = &raw.value;
        let given = [p.http.is_some(), p.tcp.is_some(), p.exec.is_some()];
        if given.iter().filter(|&&g| g).count() != 1 {
            return self.err(&raw.referenced, key, "needs exactly one of http, tcp or exec");
        }
        let check = if let Some(http) = &p.http {
            let url = &http.value.url;
            check_url(&url.value).or_else(|m| self.err(&url.referenced, &at("http.url"), m))?;
            let status = match &http.value.status {
                None => None,
                Some(s) => match s.value.0.trim().parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => Some(code),
                    _ => {
                        return self.err(
                            &s.referenced,
                            &at("http.status"),
                            format!("not an HTTP status code: {:?}", s.value.0),
                        );
                    }
                },
            };
            ProbeCheck::Http {
                url: url.value.clone(),
                status,
            }
        } else if let Some(tcp) = &p.tcp {
            check_host_port(&tcp.value).or_else(|m| self.err(&tcp.referenced, &at("tcp"), m))?;
            ProbeCheck::Tcp {
                address: tcp.value.clone(),
            }
        } else {
            let exec = p.exec.as_ref().expect("one of the three is given");
            if exec.value.first().is_none_or(String::is_empty) {
                return self.err(
                    &exec.referenced,
                    &at("exec"),
                    "must be a non-empty list: [program, args...]",
                );
            }
            ProbeCheck::Exec {
                command: exec.value.clone(),
            }
        };
        let period = self.duration(&p.period, &at("period"), Duration::from_secs(10))?;
        let timeout = self.duration(&p.timeout, &at("timeout"), Duration::from_secs(1))?;
        for (value, d, k) in [(&p.period, period, "period"), (&p.timeout, timeout, "timeout")] {
            if d.is_zero() {
                let loc = value.as_ref().map_or(raw.referenced, |v| v.referenced);
                return self.err(&loc, &at(k), "must be more than 0");
            }
        }
        let failure_threshold = self.count(&p.failure_threshold, &at("failure_threshold"), 3)?;
        let success_threshold = self.count(&p.success_threshold, &at("success_threshold"), 1)?;
        if role == ProbeRole::Liveness
            && success_threshold != 1
            && let Some(s) = &p.success_threshold
        {
            return self.err(
                &s.referenced,
                &at("success_threshold"),
                "must be 1 for a liveness probe (one success ends a series of failures)",
            );
        }
        Ok(Some(ProbeConfig {
            check,
            period,
            timeout,
            failure_threshold,
            success_threshold,
            initial_delay: self.duration(&p.initial_delay, &at("initial_delay"), Duration::ZERO)?,
        }))
    }

    fn dependencies(
        &self,
        raw: &Option<Spanned<OrderedMap<Spanned<String>, Spanned<String>>>>,
        key: &str,
    ) -> Result<Vec<Dependency>, ConfigError> {
        let Some(raw) = raw else { return Ok(Vec::new()) };
        let mut deps: Vec<Dependency> = Vec::with_capacity(raw.value.0.len());
        for (name, condition) in &raw.value.0 {
            let k = format!("{key}.{}", name.value);
            let Some(&(_, condition)) = DependCondition::ALL.iter().find(|(n, _)| *n == condition.value) else {
                return self.err(
                    &condition.referenced,
                    &k,
                    format!(
                        "unknown condition {:?} (expected started, ready or completed_successfully)",
                        condition.value
                    ),
                );
            };
            if deps.iter().any(|d| d.name == name.value) {
                return self.err(&name.referenced, &k, "named twice");
            }
            deps.push(Dependency {
                name: name.value.clone(),
                condition,
                site: Site {
                    file: self.file.to_owned(),
                    at: name.referenced,
                    key: k,
                },
            });
        }
        Ok(deps)
    }
}

/// Every dependency names another program (a name with `instances` stands for all of its
/// copies), a one-shot condition names a program that can complete, and there is no cycle.
/// Errors point at the `depends_on` entry, in whichever file it is.
fn check_dependencies(programs: &mut [ProgramConfig]) -> Result<(), ConfigError> {
    let index: HashMap<String, usize> = programs.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
    // `web` -> [web-0, web-1, ...]
    let mut copies: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in programs.iter().enumerate() {
        if let Some(k) = p.instance {
            let base = p.name.strip_suffix(&format!("-{k}")).unwrap_or(&p.name);
            copies.entry(base.to_owned()).or_default().push(i);
        }
    }
    for i in 0..programs.len() {
        let mut resolved = Vec::with_capacity(programs[i].depends_on.len());
        for d in &programs[i].depends_on {
            let targets = match (index.get(&d.name), copies.get(&d.name)) {
                (Some(&t), _) => vec![t],
                (None, Some(all)) => all.clone(),
                (None, None) => return d.site.err(format!("no program is named {:?}", d.name)),
            };
            for t in targets {
                let target = &programs[t];
                if t == i {
                    return d.site.err("a program cannot depend on itself");
                }
                if d.condition == DependCondition::CompletedSuccessfully && target.restart == RestartPolicy::Always {
                    return d.site.err(format!(
                        "{:?} has restart: always, so it never completes; give it restart: never or on-failure",
                        d.name
                    ));
                }
                resolved.push(Dependency {
                    name: target.name.clone(),
                    ..d.clone()
                });
            }
        }
        programs[i].depends_on = resolved;
    }
    // Depth-first search; a dependency met again while still on the path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; programs.len()];
    for start in 0..programs.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // (program, next dependency to look at)
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnPath;
        while let Some(&mut (i, ref mut next)) = path.last_mut() {
            let Some(d) = programs[i].depends_on.get(*next) else {
                mark[i] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            let target = index[&d.name];
            match mark[target] {
                Mark::Done => {}
                Mark::New => {
                    mark[target] = Mark::OnPath;
                    path.push((target, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|&(p, _)| p == target).expect("on the path");
                    let mut names: Vec<&str> = path[from..].iter().map(|&(p, _)| programs[p].name.as_str()).collect();
                    names.push(&programs[target].name);
                    return d.site.err(format!("dependency cycle: {}", names.join(" -> ")));
                }
            }
        }
    }
    Ok(())
}

/// An absolute `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("URL {url:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("URL {url:?} has no host"));
    }
    Ok(())
}

/// `host:port`, `[v6]:port`.
fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = || format!("invalid address {addr:?} (write it as host:port, [ipv6]:port)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['[', ']', '/', ' ']) || (host.contains(':') && !addr.starts_with('[')) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

/// A program's `resources:`, validated: cgroup limits, and where each was written (the
/// controllers are only known once procwatch has chosen its tracking mode, so the check
/// against them comes after parsing: [`Config::check_resources`]).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub limits: crate::cgroup::Limits,
    /// (controller, where its key was written), in the order written.
    sites: Vec<(&'static str, Site)>,
}

/// Moving a line is not a change that restarts a program on reload.
impl PartialEq for Resources {
    fn eq(&self, other: &Resources) -> bool {
        self.limits == other.limits
    }
}

impl Eq for Resources {}

impl Checker<'_> {
    fn resources(&self, raw: Option<&Spanned<RawResources>>, key: &str) -> Result<Resources, ConfigError> {
        let mut r = Resources::default();
        let Some(raw) = raw else { return Ok(r) };
        let raw = &raw.value;
        let mut site = |controller: &'static str, at: &serde_saphyr::Location| {
            r.sites.push((
                controller,
                Site {
                    file: self.file.to_owned(),
                    at: *at,
                    key: format!("{key}.{controller}"),
                },
            ));
        };
        if let Some(m) = &raw.memory {
            match parse_size(&m.value.0) {
                Some(n) if n >= 4096 => r.limits.memory = Some(n),
                _ => {
                    return self.err(
                        &m.referenced,
                        &format!("{key}.memory"),
                        format!(
                            "invalid memory limit {:?} (write it like 512MiB or 2GiB; at least 4KiB)",
                            m.value.0
                        ),
                    );
                }
            }
            site("memory", &m.referenced);
        }
        if let Some(c) = &raw.cpu {
            match parse_cpu(&c.value.0) {
                Some(millis) => r.limits.cpu_millis = Some(millis),
                None => {
                    return self.err(
                        &c.referenced,
                        &format!("{key}.cpu"),
                        format!(
                            "invalid cpu limit {:?} (a number of cores like 0.5, 1.5 or 2, or millicores like 500m; at least 0.01)",
                            c.value.0
                        ),
                    );
                }
            }
            site("cpu", &c.referenced);
        }
        if let Some(p) = &raw.pids {
            match p.value.0.trim().parse::<u64>() {
                Ok(n) if n >= 1 => r.limits.pids = Some(n),
                _ => {
                    return self.err(
                        &p.referenced,
                        &format!("{key}.pids"),
                        format!("invalid pids limit {:?} (a number of processes, at least 1)", p.value.0),
                    );
                }
            }
            site("pids", &p.referenced);
        }
        // Errors name the first key as written.
        r.sites.sort_by_key(|(_, s)| (s.at.line(), s.at.column()));
        Ok(r)
    }
}

/// A CPU limit in thousandths of a core: `1.5` (cores) or `1500m` (millicores, as Kubernetes
/// writes them); at least 0.01 (the kernel's smallest quota at a 100 ms period).
pub fn parse_cpu(text: &str) -> Option<u64> {
    let text = text.trim();
    let millis = match text.strip_suffix('m') {
        Some(m) => m.parse::<u64>().ok()?,
        None => {
            let cores: f64 = text.parse().ok()?;
            if !cores.is_finite() || !(0.0..=1e9).contains(&cores) {
                return None;
            }
            (cores * 1000.0).round() as u64
        }
    };
    (10..=1_000_000_000_000).contains(&millis).then_some(millis)
}

impl Config {
    /// Refuses `resources:` where it cannot be kept: in proc mode, or where a controller it
    /// needs is not enabled for procwatch's cgroups (a hybrid host keeps them in cgroup v1; a
    /// container's cgroup delegates none). At start nothing starts; on reload the config is
    /// refused whole. The first offending key, with its file, line and column.
    pub fn check_resources(&self, support: &crate::cgroup::LimitSupport) -> Result<(), ConfigError> {
        use crate::cgroup::LimitSupport;
        for p in &self.processes {
            for (controller, site) in &p.resources.sites {
                match support {
                    LimitSupport::Proc { reason } => {
                        return site.err(format!(
                            "resources need cgroup mode, and procwatch tracks programs in proc mode here ({reason})"
                        ));
                    }
                    LimitSupport::Cgroup { controllers } if !controllers.contains(*controller) => {
                        let have = if controllers.is_empty() {
                            "none".to_owned()
                        } else {
                            controllers.iter().cloned().collect::<Vec<_>>().join(", ")
                        };
                        return site.err(format!(
                            "the {controller} controller is not available to procwatch's cgroups here \
                             (available: {have}; a hybrid host keeps it in cgroup v1, a container's cgroup \
                             may not delegate it): this limit cannot be kept"
                        ));
                    }
                    LimitSupport::Cgroup { .. } => {}
                }
            }
        }
        Ok(())
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
        let (_, _, key, _) = err("status_interval: fast\nprocesses: []\n");
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
    fn a_file_without_processes_or_watches_is_refused() {
        for text in [
            "",
            "---\n",
            "# nothing\n",
            "status_interval: 5s\n",
            "listen_address: \":1\"\n",
        ] {
            let (line, col, key, msg) = err(text);
            assert_eq!((line, col, key.as_str()), (1, 1, "(document)"), "{text:?}");
            assert!(msg.contains("no `processes:` or `watches:`"), "{msg}");
        }
        assert!(Config::parse("processes: []\n", "t.yaml").unwrap().processes.is_empty());
        assert!(Config::parse("watches: []\n", "t.yaml").is_ok());
    }

    #[test]
    fn scalars_are_kept_as_written() {
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x, 1e3, 0x10, 3.10, true]\n    env: {V: 3.10, E: 1e3, O: 0027, B: yes, I: 10}\n",
            "t.yaml",
        )
        .unwrap();
        let p = &c.processes[0];
        assert_eq!(p.command, ["x", "1e3", "0x10", "3.10", "true"]);
        let env: Vec<(&str, &str)> = p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            [("B", "yes"), ("E", "1e3"), ("I", "10"), ("O", "0027"), ("V", "3.10")]
        );
    }

    #[test]
    fn bad_env_keys_are_refused_with_their_position() {
        for (yaml_key, what) in [("\"\"", "empty"), ("\"A=B\"", "'='"), ("\"A\\0B\"", "NUL")] {
            let (line, col, key, msg) = err(&format!(
                "processes:\n  - name: a\n    command: [x]\n    env: {{{yaml_key}: v}}\n"
            ));
            assert_eq!(line, 4, "{yaml_key}");
            assert!(col > 10, "{yaml_key}: {col}");
            assert!(key.starts_with("processes[0].env."), "{key}");
            assert!(msg.contains(what), "{msg}");
        }
        let (_, _, _, msg) = err("processes:\n  - name: a\n    command: [x]\n    env: {A: \"a\\0b\"}\n");
        assert!(msg.contains("NUL"), "{msg}");
    }

    #[test]
    fn stop_signals_that_cannot_stop_are_refused() {
        for sig in ["KILL", "STOP", "SIGCONT"] {
            let (line, col, key, msg) = err(&format!(
                "processes:\n  - name: a\n    command: [x]\n    stop_signal: {sig}\n"
            ));
            assert_eq!((line, col, key.as_str()), (4, 18, "processes[0].stop_signal"));
            assert!(msg.contains("cannot be a stop signal"), "{msg}");
        }
        assert!(
            Config::parse(
                "processes:\n  - name: a\n    command: [x]\n    stop_signal: INT\n",
                "t.yaml"
            )
            .is_ok()
        );
    }

    #[test]
    fn listen_address_is_checked_where_written() {
        let (line, col, key, msg) = err("listen_address: \"not an address\"\nprocesses: []\n");
        assert_eq!((line, col, key.as_str()), (1, 17, "listen_address"));
        assert!(msg.contains("HOST:PORT"), "{msg}");
        for good in [":9407", "127.0.0.1:0", "[::1]:80"] {
            assert!(parse_listen_address(good).is_ok(), "{good}");
        }
        for bad in ["", "9407", "localhost", ":http", "1.2.3.4:99999"] {
            assert!(parse_listen_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aliases_cannot_blow_a_small_file_up() {
        let big = "x".repeat(1 << 20);
        let mut yaml = format!("big: &big {big}\n");
        yaml.clear();
        yaml.push_str(&format!("processes:\n  - name: a\n    command: [&big {big}"));
        for _ in 0..40 {
            yaml.push_str(", *big");
        }
        yaml.push_str("]\n");
        let (line, _, _, msg) = err(&yaml);
        assert!(msg.contains("expands to more than"), "{msg}");
        assert_eq!(line, 3);
        // Below the expansion bound, exec's own limits still apply, with the key.
        let arg = "y".repeat(200_000);
        let (line, _, key, msg) = err(&format!("processes:\n  - name: a\n    command: [x, {arg}]\n"));
        assert_eq!((line, key.as_str()), (3, "processes[0].command"));
        assert!(msg.contains("exec's limit"), "{msg}");
        let mut yaml = format!("processes:\n  - name: a\n    command: [x, &a {}", "z".repeat(100_000));
        for _ in 0..40 {
            yaml.push_str(", *a");
        }
        yaml.push_str("]\n");
        let (_, _, _, msg) = err(&yaml);
        assert!(msg.contains("ARG_MAX"), "{msg}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    cwd: work\nwatches:\n  - name: w\n    path: ./data\n  - name: abs\n    path: /srv\n",
            "/etc/pw/main.yaml",
        )
        .unwrap();
        assert_eq!(c.processes[0].cwd.as_deref(), Some(Path::new("/etc/pw/work")));
        assert_eq!(c.watches[0].path, Path::new("/etc/pw/data"));
        assert_eq!(c.watches[1].path, Path::new("/srv"));
        assert_eq!(Config::demo().watches[0].path, Path::new("."));
    }

    #[test]
    fn instances_are_named_and_numbered() {
        let c = Config::parse(
            "processes:\n  - name: web\n    command: [x]\n    instances: 3\n  - name: one\n    command: [y]\n",
            "t.yaml",
        )
        .unwrap();
        let names: Vec<&str> = c.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web-0", "web-1", "web-2", "one"]);
        assert_eq!(c.processes[2].env["PROCWATCH_INSTANCE"], "2");
        assert_eq!(c.processes[2].instance, Some(2));
        assert!(!c.processes[3].env.contains_key("PROCWATCH_INSTANCE"));
        // Two instances of the same program are equal but for name and number: a reload from
        // 3 to 2 keeps web-0 and web-1 as they are.
        let two = Config::parse(
            "processes:\n  - name: web\n    command: [x]\n    instances: 2\n",
            "t.yaml",
        )
        .unwrap();
        let r = ApplyReport::diff(c.processes.iter().map(|p| (&p.name, p)), &two.processes, |p| &p.name);
        assert_eq!(r.unchanged, ["web-0", "web-1"]);
        assert_eq!(r.stopped, ["one", "web-2"]);
        for bad in ["0", "-1", "many", "10001"] {
            let (line, _, key, _) = err(&format!(
                "processes:\n  - name: web\n    command: [x]\n    instances: {bad}\n"
            ));
            assert_eq!((line, key.as_str()), (4, "processes[0].instances"), "{bad}");
        }
        let (line, _, key, msg) =
            err("processes:\n  - name: web\n    command: [x]\n    instances: 2\n  - name: web-1\n    command: [x]\n");
        assert_eq!((line, key.as_str()), (5, "processes[1].name"));
        assert!(msg.contains("duplicate"), "{msg}");
    }

    #[test]
    fn identity_keys_resolve_or_are_refused() {
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    user: root\n    umask: 0027\n    limits: {nofile: 1024, core: 0, cpu: 1h, stack: {soft: 8MiB, hard: unlimited}}\n",
            "t.yaml",
        )
        .unwrap();
        let p = &c.processes[0];
        let id = &p.identity;
        assert_eq!(id.user.as_ref().unwrap().uid, 0);
        assert_eq!(id.gid(), Some(0));
        assert_eq!(id.umask, Some(0o027));
        let limits: Vec<String> = id.limits.iter().map(|l| l.to_string()).collect();
        assert_eq!(limits, ["nofile=1024", "core=0", "stack=8388608/unlimited", "cpu=3600"]);
        assert_eq!((p.env["USER"].as_str(), p.env["HOME"].as_str()), ("root", "/root"));
        // `env` wins over what `user` would set.
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    user: root\n    env: {HOME: /tmp}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.processes[0].env["HOME"], "/tmp");

        let cases = [
            ("user: no-such-user-pw", "processes[0].user", "no such user"),
            ("group: no-such-group-pw", "processes[0].group", "no such group"),
            ("user: 4000123", "processes[0].user", "give `group:`"),
            ("umask: 999", "processes[0].umask", "octal"),
            ("umask: \"01777\"", "processes[0].umask", "octal"),
            ("limits: {files: 10}", "processes[0].limits.files", "unknown limit"),
            ("limits: {nofile: lots}", "processes[0].limits.nofile", "invalid value"),
            (
                "limits: {nofile: {soft: 10, hard: 5}}",
                "processes[0].limits.nofile",
                "soft must not",
            ),
            ("limits: {nofile: {soft: 10}}", "processes[0].limits.nofile", "hard"),
            // Above the hard limit without CAP_SYS_RESOURCE, or above fs.nr_open with it.
            ("limits: {nofile: unlimited}", "processes[0].limits.nofile", "above"),
        ];
        for (line, want_key, want) in cases {
            let (l, _, key, msg) = err(&format!("processes:\n  - name: a\n    command: [x]\n    {line}\n"));
            assert_eq!(l, 4, "{line}");
            assert!(key.starts_with(want_key), "{line}: {key}");
            assert!(msg.contains(want), "{line}: {msg}");
        }
    }

    #[test]
    fn env_files_follow_systemd_syntax() {
        let text = "# comment\n; another\n\nA=1\n  B = two words  \nexport C=\"quoted # not a comment\"\nD='single $HOME \\n'\nE=\"multi\nline\"\nF=a\\\n b\nG=\"esc \\\" \\$X \\q\"\nH=\nI=x # kept\n";
        let vars = parse_env_file(text).unwrap();
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", "quoted # not a comment"),
                ("D", "single $HOME \\n"),
                ("E", "multi\nline"),
                ("F", "a b"),
                ("G", "esc \" $X \\q"),
                ("H", ""),
                ("I", "x # kept"),
            ]
        );
        assert_eq!(parse_env_file("A=1\nnot a line\n").unwrap_err().0, 2);
        // Later lines and later files win.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.env"), "A=1\nB=1\nA=one\n").unwrap();
        std::fs::write(dir.path().join("2.env"), "B=2\n").unwrap();
        let main = dir.path().join("main.yaml");
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    env_file: [1.env, 2.env, -3.env]\n",
            main.to_str().unwrap(),
        )
        .unwrap();
        let env: Vec<(&str, &str)> = c.processes[0]
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "one"), ("B", "2")]);
        let (line, col, msg) = parse_env_file("A=1\n  B=\"open\n").unwrap_err();
        assert_eq!((line, col), (2, 5));
        assert!(msg.contains("not closed"), "{msg}");
        assert_eq!(parse_env_file("1A=x\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("A-B=x\n").unwrap_err().0, 1);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("100"), Some(100));
        for bad in ["", "MiB", "1.5GiB", "10 parsecs", "-1"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
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
    fn output_modes_and_files() {
        let c = Config::parse(
            "processes:\n  - {name: a, command: [x]}\n  - {name: b, command: [x], output: inherit}\n  - name: c\n    command: [x]\n    output: {file: c.log, max_size: 1MiB, max_files: 2, prefix: true}\n  - name: d\n    command: [x]\n    output: {file: /var/log/d.log}\n  - name: e\n    command: [x]\n    instances: 2\n    output: {file: logs/e.log}\n",
            "t.yaml",
        )
        .unwrap();
        let files: Vec<_> = c.processes[4..]
            .iter()
            .map(|p| match &p.output {
                OutputConfig::File(f) => f.path.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(files, [PathBuf::from("logs/e-0.log"), PathBuf::from("logs/e-1.log")]);
        let out: Vec<&OutputConfig> = c.processes.iter().map(|p| &p.output).collect();
        assert_eq!(out[0], &OutputConfig::Prefix);
        assert_eq!(out[1], &OutputConfig::Inherit);
        assert_eq!(
            out[2],
            &OutputConfig::File(FileOutput {
                path: "c.log".into(),
                max_size: 1 << 20,
                max_files: 2,
                prefix: true
            })
        );
        assert_eq!(
            out[3],
            &OutputConfig::File(FileOutput {
                path: "/var/log/d.log".into(),
                max_size: 10 << 20,
                max_files: 5,
                prefix: false
            })
        );
        let (line, _, key, msg) = err("processes:\n  - name: a\n    command: [x]\n    output: prefixed\n");
        assert_eq!((line, key.as_str()), (4, "processes[0].output"));
        assert!(msg.contains("prefixed"), "{msg}");
        let (line, _, key, _) =
            err("processes:\n  - name: a\n    command: [x]\n    output:\n      file: a.log\n      max_size: lots\n");
        assert_eq!((line, key.as_str()), (6, "processes[0].output.max_size"));
        let (_, _, key, msg) = err("processes:\n  - name: a\n    command: [x]\n    output: {file: a.log, rotate: 3}\n");
        assert!(key.starts_with("processes[0].output"), "{key}");
        assert!(msg.contains("rotate"), "{msg}");
        let (_, _, key, _) =
            err("processes:\n  - name: a\n    command: [x]\n    output: {file: a.log, max_files: 0}\n");
        assert_eq!(key, "processes[0].output.max_files");
    }

    #[test]
    fn signals() {
        assert_eq!(Signal::parse("SIGterm"), Some(Signal(libc::SIGTERM)));
        assert_eq!(Signal::parse("KILL").unwrap().name(), "KILL");
        assert_eq!(Signal::parse("FOO"), None);
    }

    #[test]
    fn on_change_is_checked_with_its_position() {
        let prog = |on_change: &str| {
            format!(
                "processes:\n  - name: a\n    command: [x]\n    on_change: {on_change}\nwatches:\n  - name: src\n    path: /tmp\n"
            )
        };
        let c = Config::parse(
            &prog("{watch: src, action: signal, signal: USR1, debounce: 2s}"),
            "t.yaml",
        )
        .unwrap();
        let want = OnChange {
            watch: "src".into(),
            action: OnChangeAction::Signal(Signal(libc::SIGUSR1)),
            debounce: Duration::from_secs(2),
        };
        assert_eq!(c.processes[0].on_change.as_ref(), Some(&want));
        let c = Config::parse(&prog("{watch: src}"), "t.yaml").unwrap();
        let on = c.processes[0].on_change.as_ref().unwrap();
        assert_eq!((on.action, on.debounce), (OnChangeAction::Restart, ON_CHANGE_DEBOUNCE));
        let c = Config::parse(&prog("{watch: src, action: signal}"), "t.yaml").unwrap();
        let on = c.processes[0].on_change.as_ref().unwrap();
        assert_eq!(on.action, OnChangeAction::Signal(Signal(libc::SIGHUP)));

        for (on_change, col, key, says) in [
            (
                "{watch: nope}",
                24,
                "processes[0].on_change.watch",
                "no watch named \"nope\"",
            ),
            (
                "{watch: src, action: signal, signal: HUPP}",
                53,
                "processes[0].on_change.signal",
                "unknown signal",
            ),
            (
                "{watch: src, action: reboot}",
                37,
                "processes[0].on_change.action",
                "unknown action",
            ),
            (
                "{watch: src, signal: HUP}",
                37,
                "processes[0].on_change.signal",
                "goes with `action: signal`",
            ),
            (
                "{watch: src, debounce: soon}",
                39,
                "processes[0].on_change.debounce",
                "invalid duration",
            ),
        ] {
            let (line, c, k, message) = err(&prog(on_change));
            assert_eq!((line, c, k.as_str()), (4, col, key), "{on_change}: {message}");
            assert!(message.contains(says), "{on_change}: {message}");
        }
    }

    #[test]
    fn probes_parse_with_defaults() {
        let c = Config::parse(
            "processes:
  - name: web
    command: [x]
    liveness: {http: {url: 'http://127.0.0.1:8080/healthz', status: 204}, period: 2s}
    readiness: {tcp: '[::1]:8080', success_threshold: 2, failure_threshold: 1}
  - name: w
    command: [x]
    liveness: {exec: [true], initial_delay: 5s, timeout: 200ms}
",
            "t.yaml",
        )
        .unwrap();
        let live = c.processes[0].liveness.as_ref().unwrap();
        assert_eq!(
            live.check,
            ProbeCheck::Http {
                url: "http://127.0.0.1:8080/healthz".into(),
                status: Some(204)
            }
        );
        assert_eq!(live.period, Duration::from_secs(2));
        assert_eq!(live.timeout, Duration::from_secs(1));
        assert_eq!((live.failure_threshold, live.success_threshold), (3, 1));
        let ready = c.processes[0].readiness.as_ref().unwrap();
        assert_eq!(ready.check.kind(), "tcp");
        assert_eq!((ready.failure_threshold, ready.success_threshold), (1, 2));
        let exec = c.processes[1].liveness.as_ref().unwrap();
        assert_eq!(exec.initial_delay, Duration::from_secs(5));
        assert_eq!(exec.timeout, Duration::from_millis(200));
    }

    #[test]
    fn bad_probes_are_refused_with_their_key() {
        let cases = [
            ("liveness: {period: 1s}", "processes[0].liveness", "exactly one"),
            (
                "liveness: {tcp: 'a:1', exec: [x]}",
                "processes[0].liveness",
                "exactly one",
            ),
            (
                "liveness: {http: {url: 'ftp://h/'}}",
                "processes[0].liveness.http.url",
                "http://",
            ),
            (
                "liveness: {http: {url: '/healthz'}}",
                "processes[0].liveness.http.url",
                "http://",
            ),
            (
                "liveness: {http: {url: 'http://h/', status: 42}}",
                "processes[0].liveness.http.status",
                "42",
            ),
            (
                "readiness: {tcp: 'localhost'}",
                "processes[0].readiness.tcp",
                "host:port",
            ),
            ("readiness: {tcp: '::1:80'}", "processes[0].readiness.tcp", "host:port"),
            ("readiness: {tcp: 'h:0'}", "processes[0].readiness.tcp", "host:port"),
            ("readiness: {exec: []}", "processes[0].readiness.exec", "non-empty"),
            (
                "readiness: {tcp: 'h:1', period: 0s}",
                "processes[0].readiness.period",
                "more than 0",
            ),
            (
                "readiness: {tcp: 'h:1', failure_threshold: 0}",
                "processes[0].readiness.failure_threshold",
                "at least 1",
            ),
            (
                "liveness: {tcp: 'h:1', success_threshold: 2}",
                "processes[0].liveness.success_threshold",
                "must be 1",
            ),
            ("liveness: {tcp: 'h:1', perod: 2s}", "processes[0].liveness", "perod"),
        ];
        for (probe, want_key, want_msg) in cases {
            let (line, _, key, msg) = err(&format!("processes:\n  - name: a\n    command: [x]\n    {probe}\n"));
            assert_eq!(line, 4, "{probe}");
            assert!(key.starts_with(want_key), "{probe}: {key}");
            assert!(msg.contains(want_msg), "{probe}: {msg}");
        }
    }

    #[test]
    fn depends_on_parses_in_order() {
        let c = Config::parse(
            "processes:
  - name: web
    command: [x]
    depends_on: {migrate: completed_successfully, db: ready, cache: started}
  - {name: db, command: [x]}
  - {name: cache, command: [x]}
  - {name: migrate, command: [x], restart: never}
",
            "t.yaml",
        )
        .unwrap();
        let deps: Vec<(&str, DependCondition)> = c.processes[0]
            .depends_on
            .iter()
            .map(|d| (d.name.as_str(), d.condition))
            .collect();
        assert_eq!(
            deps,
            [
                ("migrate", DependCondition::CompletedSuccessfully),
                ("db", DependCondition::Ready),
                ("cache", DependCondition::Started)
            ]
        );
    }

    #[test]
    fn bad_dependencies_are_refused_at_the_entry() {
        let (line, col, key, msg) = err(
            "processes:\n  - name: a\n    command: [x]\n    depends_on:\n      b: ready\n      nope: started\n  - {name: b, command: [x]}\n",
        );
        assert_eq!((line, col, key.as_str()), (6, 7, "processes[0].depends_on.nope"));
        assert!(msg.contains("\"nope\""), "{msg}");

        let (line, _, key, msg) = err("processes:\n  - name: a\n    command: [x]\n    depends_on: {a: started}\n");
        assert_eq!((line, key.as_str()), (4, "processes[0].depends_on.a"));
        assert!(msg.contains("itself"), "{msg}");

        let (_, _, key, msg) =
            err("processes:\n  - {name: a, command: [x], depends_on: {b: healthy}}\n  - {name: b, command: [x]}\n");
        assert_eq!(key, "processes[0].depends_on.b");
        assert!(msg.contains("healthy"), "{msg}");

        let (_, _, key, msg) = err(
            "processes:\n  - {name: a, command: [x], depends_on: {b: completed_successfully}}\n  - {name: b, command: [x], restart: always}\n",
        );
        assert_eq!(key, "processes[0].depends_on.b");
        assert!(msg.contains("restart: always"), "{msg}");
    }

    #[test]
    fn a_dependency_cycle_is_refused_and_named() {
        let (line, col, key, msg) = err("processes:
  - {name: a, command: [x], depends_on: {b: started}}
  - {name: b, command: [x], depends_on: {c: ready}}
  - name: c
    command: [x]
    depends_on:
      d: started
      a: started
  - {name: d, command: [x]}
");
        assert_eq!((line, col, key.as_str()), (8, 7, "processes[2].depends_on.a"));
        assert_eq!(msg, "dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn a_dependency_on_a_program_with_instances_is_on_every_copy() {
        let c = Config::parse(
            "processes:\n  - {name: web, command: [x], instances: 2}\n  - {name: lb, command: [x], depends_on: {web: ready, web-1: started}}\n",
            "t.yaml",
        )
        .unwrap();
        let lb = c.processes.iter().find(|p| p.name == "lb").unwrap();
        let deps: Vec<(&str, DependCondition)> = lb.depends_on.iter().map(|d| (d.name.as_str(), d.condition)).collect();
        assert_eq!(
            deps,
            [
                ("web-0", DependCondition::Ready),
                ("web-1", DependCondition::Ready),
                ("web-1", DependCondition::Started)
            ]
        );
    }

    #[test]
    fn a_bad_dependency_in_an_included_file_names_that_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/app.yaml"),
            "processes:\n  - name: app\n    command: [x]\n    depends_on:\n      db: ready\n",
        )
        .unwrap();
        let main = dir.path().join("procwatch.yaml");
        std::fs::write(
            &main,
            "include: [conf.d/*.yaml]\nprocesses:\n  - {name: dbx, command: [x]}\n",
        )
        .unwrap();
        match Config::load(&main) {
            Err(ConfigError::Invalid {
                file,
                line,
                column,
                key,
                ..
            }) => {
                assert!(file.ends_with("conf.d/app.yaml"), "{file}");
                assert_eq!((line, column, key.as_str()), (5, 7, "processes[0].depends_on.db"));
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn resources_parse_sizes_cores_and_counts() {
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    resources: {memory: 512MiB, cpu: 1.5, pids: 1000}\n  - name: b\n    command: [x]\n    resources: {cpu: 250m}\n  - name: c\n    command: [x]\n",
            "t.yaml",
        )
        .unwrap();
        let l = |i: usize| c.processes[i].resources.limits;
        assert_eq!(l(0).memory, Some(512 << 20));
        assert_eq!(l(0).cpu_millis, Some(1500));
        assert_eq!(l(0).pids, Some(1000));
        assert_eq!((l(1).memory, l(1).cpu_millis, l(1).pids), (None, Some(250), None));
        assert!(l(2).is_empty());
        assert_eq!(parse_cpu("2"), Some(2000));
        assert_eq!(parse_cpu("0.01"), Some(10));
        for bad in ["0", "0.001", "-1", "nan", "inf", "1.5 cores", "", "5m"] {
            assert_eq!(parse_cpu(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_resources_name_the_key_line_and_column() {
        for (yaml, key, col) in [
            ("resources: {memory: lots}", "processes[0].resources.memory", 25),
            ("resources: {memory: 0}", "processes[0].resources.memory", 25),
            ("resources: {cpu: 0}", "processes[0].resources.cpu", 22),
            ("resources: {pids: -3}", "processes[0].resources.pids", 23),
            ("resources: {swap: 1GiB}", "processes[0].resources", 0),
        ] {
            let (line, column, k, message) = err(&format!("processes:\n  - name: a\n    command: [x]\n    {yaml}\n"));
            assert_eq!(line, 4, "{yaml}: {message}");
            assert!(k.starts_with(key), "{yaml}: {k}");
            if col > 0 {
                assert_eq!(column, col, "{yaml}: {message}");
            }
        }
    }

    #[test]
    fn resources_are_refused_where_they_cannot_be_kept() {
        use crate::cgroup::LimitSupport;
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n  - name: b\n    command: [x]\n    resources:\n      pids: 10\n      memory: 1GiB\n",
            "t.yaml",
        )
        .unwrap();
        let proc = LimitSupport::Proc {
            reason: "cannot write /sys/fs/cgroup".to_owned(),
        };
        let msg = c.check_resources(&proc).unwrap_err().to_string();
        assert!(msg.starts_with("t.yaml:7:13: processes[1].resources.pids: "), "{msg}");
        assert!(
            msg.contains("proc mode") && msg.contains("cannot write /sys/fs/cgroup"),
            "{msg}"
        );
        let only_pids = LimitSupport::Cgroup {
            controllers: ["pids".to_owned()].into(),
        };
        let msg = c.check_resources(&only_pids).unwrap_err().to_string();
        assert!(
            msg.starts_with("t.yaml:8:15: processes[1].resources.memory: the memory controller"),
            "{msg}"
        );
        assert!(msg.contains("available: pids"), "{msg}");
        let all = LimitSupport::Cgroup {
            controllers: ["memory", "cpu", "pids"].map(str::to_owned).into(),
        };
        c.check_resources(&all).unwrap();
        // Without resources, any host will do.
        let plain = Config::parse("processes:\n  - name: a\n    command: [x]\n", "t.yaml").unwrap();
        plain.check_resources(&proc).unwrap();
    }

    #[test]
    fn moving_resources_to_another_line_is_no_change() {
        let a = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    resources: {pids: 10}\n",
            "t.yaml",
        )
        .unwrap();
        let b = Config::parse(
            "processes:\n\n  - name: a\n    resources: {pids: 10}\n    command: [x]\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(a.processes, b.processes);
        let c = Config::parse(
            "processes:\n  - name: a\n    command: [x]\n    resources: {pids: 11}\n",
            "t.yaml",
        )
        .unwrap();
        assert_ne!(a.processes, c.processes);
    }
}
