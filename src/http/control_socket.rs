//! The local control socket: the `/api/v1/` routes and `/-/reload` over HTTP/1.1 on a Unix
//! socket, for `procwatch ctl`. Its guard is the file mode (0600: procwatch's own user) and
//! the peer's credentials (that user or root), not the web config: state-changing routes are
//! always allowed here.
//!
//! A socket file left by a procwatch that was killed is replaced; one that another live
//! procwatch answers on is left alone (a warning at the default path, an error at a path the
//! operator gave). Any other failure at the default path is a warning too; at a given path,
//! a start-up error. At exit the file is removed, if it is still ours.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{HttpConfig, ReloadRequest, State, api::Api, conn, serve_connection};
use crate::metrics::Collector;

pub const FILE_NAME: &str = "procwatch.sock";

/// `--control.socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSetting {
    /// No flag: the default path, if there is one.
    Default,
    /// `none`.
    Off,
    /// A path the operator gave.
    Path(PathBuf),
}

impl SocketSetting {
    pub fn from_flag(flag: Option<&str>) -> SocketSetting {
        match flag {
            None => SocketSetting::Default,
            Some("none") => SocketSetting::Off,
            Some(p) => SocketSetting::Path(PathBuf::from(p)),
        }
    }

    /// The path in force; `None` when off or when no default applies.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            SocketSetting::Default => default_path(),
            SocketSetting::Off => None,
            SocketSetting::Path(p) => Some(p.clone()),
        }
    }
}

/// `$RUNTIME_DIRECTORY/procwatch.sock` (systemd's RuntimeDirectory=), else
/// `/run/procwatch.sock` as root, else `$XDG_RUNTIME_DIR/procwatch.sock`.
pub fn default_path() -> Option<PathBuf> {
    let env_dir = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or_default()))
    };
    if let Some(dir) = env_dir("RUNTIME_DIRECTORY") {
        return Some(dir.join(FILE_NAME));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/run").join(FILE_NAME));
    }
    env_dir("XDG_RUNTIME_DIR").map(|d| d.join(FILE_NAME))
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "control socket {path}: another procwatch is serving there (use --control.socket to pick another path, or none)"
    )]
    InUse { path: PathBuf },
    #[error("control socket {path}: a file that is not a socket is in the way")]
    NotASocket { path: PathBuf },
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound control socket; its file is removed when this is dropped (if it is still ours).
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the file we made: a newer procwatch may have replaced it.
    id: (u64, u64),
}

impl ControlSocket {
    /// Binds the socket `setting` names. `Ok(None)`: off, no default path applies, or the
    /// default path is held by another live procwatch (a warning).
    pub fn bind(setting: &SocketSetting) -> Result<Option<ControlSocket>, SocketError> {
        let Some(path) = setting.path() else {
            if *setting == SocketSetting::Default {
                info!("no control socket: neither RUNTIME_DIRECTORY nor XDG_RUNTIME_DIR is set and not root");
            }
            return Ok(None);
        };
        match Self::bind_path(&path) {
            Err(SocketError::InUse { path }) if *setting == SocketSetting::Default => {
                warn!(path = %path.display(), "another procwatch serves the default control socket; running without one");
                Ok(None)
            }
            // The default path is a convenience: procwatch runs without it (only a path the
            // operator asked for is worth refusing to start over).
            Err(err) if *setting == SocketSetting::Default => {
                warn!(error = %err, "cannot make the default control socket; running without one");
                Ok(None)
            }
            r => r.map(Some),
        }
    }

    fn bind_path(path: &Path) -> Result<ControlSocket, SocketError> {
        let io_err = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // Someone answering means a live procwatch; refused means a stale file.
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(SocketError::InUse { path: path.to_owned() }),
                    Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        info!(path = %path.display(), "replacing a stale control socket");
                        std::fs::remove_file(path).map_err(io_err)?;
                    }
                    Err(err) => return Err(io_err(err)),
                }
            }
            Ok(_) => return Err(SocketError::NotASocket { path: path.to_owned() }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(err)),
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        // Between bind and chmod the file has the umask's mode; the peer check in `serve`
        // refuses anyone but our user and root in that window too.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        let meta = std::fs::metadata(path).map_err(io_err)?;
        info!(path = %path.display(), "control socket listening");
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves the socket until `shutdown`, then removes its file.
/// `config` is the TCP listener's: the socket serves the same, except that state-changing
/// routes are always allowed and no web config (TLS, auth) applies.
pub async fn serve(
    socket: ControlSocket,
    config: HttpConfig,
    collector: Arc<Collector>,
    reload: mpsc::Sender<ReloadRequest>,
    api: Api,
    shutdown: CancellationToken,
) {
    let config = HttpConfig {
        enable_lifecycle: true,
        web: None,
        ..config
    };
    let state = Arc::new(State::new(config, collector, reload, api));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let slots = conn::Slots::new(conn::MAX_CONNECTIONS);
    loop {
        let stream = tokio::select! {
            r = socket.listener.accept() => match r {
                Ok((s, _)) => s,
                Err(err) => {
                    warn!(error = %err, "control socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                debug!(uid = cred.uid(), "control socket: refused a peer of another user");
                continue;
            }
            Err(err) => {
                debug!(error = %err, "control socket: no peer credentials");
                continue;
            }
        }
        // The same slots, write timeout and eviction of the quietest as the TCP endpoint.
        let slot = tokio::select! {
            s = slots.take() => s,
            _ = shutdown.cancelled() => break,
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let activity = Arc::clone(&slot.activity);
            let stream = conn::Watched::new(stream, Arc::clone(&activity));
            tokio::select! {
                _ = serve_connection(stream, state, activity, shutdown) => {}
                _ = slot.activity.evicted.cancelled() => {}
            }
        });
    }
    drop(socket);
}
