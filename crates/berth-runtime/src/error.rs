//! Errors of the runtime.

use berth_store::StoreError;

/// Everything that can go wrong creating, running or managing a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// From the store (unknown image, name conflict, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A run option that cannot be honoured.
    #[error("{0}")]
    InvalidOption(String),
    /// Neither the image nor the user gave a command.
    #[error("no command specified")]
    NoCommand,
    /// A user or group that does not resolve in the container.
    #[error("{0}")]
    User(String),
    /// The command could not be found in the container (exit 127).
    #[error("failed to create task for container: exec: {0}: executable file not found in $PATH: unknown")]
    CommandNotFound(String),
    /// The command exists but cannot be run (exit 126).
    #[error("failed to create task for container: exec: {0}: permission denied: unknown")]
    CommandNotExecutable(String),
    /// The embedded runtime failed to create or start the container.
    #[error("failed to start container: {0}")]
    Start(String),
    /// `exec` could not start its process (exit 126, as Docker).
    #[error("OCI runtime exec failed: {0}: unknown")]
    Exec(String),
    /// An operation that needs a running container.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// Removing a running container without force.
    #[error("cannot remove container \"/{0}\": container is running: stop the container before removing or force remove")]
    RemoveRunning(String),
    /// The container is paused.
    #[error("container {0} is paused, unpause the container before stopping or killing")]
    Paused(String),
    /// A signal name or number that does not exist.
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    /// File or process plumbing failed.
    #[error("{0}")]
    Io(String),
    /// An error the monitor already worded, passed on as is.
    #[error("{0}")]
    Reported(String),
    /// The monitor process could not be started or died early.
    #[error("monitor: {0}")]
    Monitor(String),
}

impl RuntimeError {
    /// The exit status Docker uses for this error: 127 not found, 126 not executable, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::CommandNotFound(_) => 127,
            RuntimeError::CommandNotExecutable(_) | RuntimeError::Exec(_) => 126,
            _ => 125,
        }
    }
}

pub(crate) fn io_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Io(format!("{what}: {e}"))
}
