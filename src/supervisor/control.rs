//! Commands into the supervisor: start, stop, restart and signal one program by name.
//!
//! Each runner owns the receiving end of one bounded channel; [`Control`] (a cheap clonable
//! handle that app gives to HTTP, on_change and probes) finds a program's sender by name and
//! waits for the runner's reply. The runner stays the only writer of its program's state: a
//! command is a request, carried out between two steps of its own loop.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

/// Commands that may wait for one program at once; more get [`ControlError::Busy`]. A stop
/// can take stop_timeout, so a few queued commands are normal; dozens are a stuck client.
pub(super) const QUEUE: usize = 16;

/// What to do to a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    /// Send this signal to the program's process group.
    Signal(i32),
}

impl Action {
    /// Every action label, in the order of [`super::ProgramStatus::control_actions`].
    pub const LABELS: [&'static str; 4] = ["start", "stop", "restart", "signal"];

    /// Where this action is counted in [`super::ProgramStatus::control_actions`].
    pub fn index(self) -> usize {
        match self {
            Action::Start => 0,
            Action::Stop => 1,
            Action::Restart => 2,
            Action::Signal(_) => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        Action::LABELS[self.index()]
    }
}

/// Who asks; decides how the action is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An operator (ctl, the API): counted in `procwatch_process_control_actions_total`; a stop
    /// holds the program down ("stopped by hand") until it is started or changed by a reload.
    Hand,
    /// The supervisor's own policy (a failing liveness probe): a restart is counted in
    /// `procwatch_process_restarts_total` and follows the restart policy.
    Policy,
    /// A watch's `on_change`: counted by the watch, not here.
    Watch,
}

/// What an action did: the main PID before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub before: Option<i32>,
    pub after: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no program named {0:?}")]
    UnknownProgram(String),
    #[error("program {0:?} has too many commands waiting; try again")]
    Busy(String),
    #[error("program {0:?} is not running")]
    NotRunning(String),
    #[error("program {0:?} was reloaded or procwatch is stopping; the command was not carried out")]
    Gone(String),
    #[error("program {name:?} could not be started: {message}")]
    StartFailed { name: String, message: String },
}

pub(super) type Reply = oneshot::Sender<Result<Outcome, ControlError>>;

/// One command in a runner's queue.
pub(super) struct Request {
    pub action: Action,
    pub origin: Origin,
    pub reply: Reply,
}

pub(super) type Senders = Arc<ArcSwap<HashMap<String, mpsc::Sender<Request>>>>;

/// Sends commands to programs by name. Clone it freely.
#[derive(Clone)]
pub struct Control(pub(super) Senders);

impl Control {
    /// Asks the program's runner to carry out `action` and waits until it has taken effect: a
    /// start or restart until the new process is spawned, a stop until its group is gone.
    pub async fn send(&self, name: &str, action: Action, origin: Origin) -> Result<Outcome, ControlError> {
        let sender = self
            .0
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::UnknownProgram(name.to_owned()))?;
        let (reply, answer) = oneshot::channel();
        sender
            .try_send(Request { action, origin, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => ControlError::Busy(name.to_owned()),
                mpsc::error::TrySendError::Closed(_) => ControlError::Gone(name.to_owned()),
            })?;
        answer
            .await
            .unwrap_or_else(|_| Err(ControlError::Gone(name.to_owned())))
    }

    /// Whether a program of that name is configured now.
    pub fn knows(&self, name: &str) -> bool {
        self.0.load().contains_key(name)
    }
}
