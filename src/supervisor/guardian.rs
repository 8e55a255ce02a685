//! The guardian: a small helper process that kills every program's process group when
//! procwatch dies, however it dies (SIGKILL included).
//!
//! `PR_SET_PDEATHSIG` takes down a program's main process with procwatch, but not its
//! descendants. The guardian is procwatch's own binary started with `--guardian`; procwatch
//! tells it each process group as it starts (`+PGID`) and ends (`-PGID`) over a pipe. When the
//! pipe reaches end-of-file, procwatch is gone, and the guardian SIGKILLs the groups it knows.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// The flag that makes the procwatch binary act as the guardian.
pub const GUARDIAN_FLAG: &str = "--guardian";

/// procwatch's end of the pipe.
pub(crate) struct Guardian {
    child: Child,
    pipe: Mutex<Option<ChildStdin>>,
}

impl Guardian {
    /// Starts the guardian from procwatch's own executable.
    pub(crate) fn start() -> std::io::Result<Guardian> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg(GUARDIAN_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Guardian {
            child,
            pipe: Mutex::new(pipe),
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn send(&self, sign: char, pgid: i32) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pipe.as_mut()
            && writeln!(p, "{sign}{pgid}").is_err()
        {
            tracing::warn!("the guardian process is gone; programs' descendants may outlive a killed procwatch");
            *pipe = None;
        }
    }

    /// Closes the pipe (every group is gone by now) and waits briefly for the guardian to end,
    /// so that it does not outlive a clean shutdown. The reaper thread reaps it.
    pub(crate) async fn close(&self) {
        drop(self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        // SAFETY: signal 0 only checks for existence.
        while unsafe { libc::kill(self.pid(), 0) } == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn watch_group(&self, pgid: i32) {
        self.send('+', pgid);
    }

    pub(crate) fn forget_group(&self, pgid: i32) {
        self.send('-', pgid);
    }
}

/// The guardian process's main: returns its exit code.
pub fn guardian_main() -> u8 {
    // It shares procwatch's process group, so a Ctrl-C in a terminal reaches it too: only the
    // end of the pipe may end it.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal's disposition to ignore.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut groups = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, num) = line.split_at(line.len().min(1));
        match (sign, num.parse::<i32>()) {
            ("+", Ok(pgid)) if pgid > 1 => {
                groups.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        // SAFETY: plain syscall.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    0
}
