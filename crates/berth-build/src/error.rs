//! Build errors.

/// What went wrong in a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error("{file}:{}: {}", .error.line, .error.message)]
    Parse {
        /// The Dockerfile's name.
        file: String,
        /// The parse error.
        error: crate::ParseError,
    },
    /// A step failed; `line` locates its instruction.
    #[error("{message}")]
    Step {
        /// 1-based line of the instruction.
        line: usize,
        /// The instruction as written.
        instruction: String,
        /// Why it failed.
        message: String,
    },
    /// A RUN step's command exited non-zero.
    #[error("process \"{command}\" did not complete successfully: exit code: {code}")]
    RunFailed {
        /// The command, joined like BuildKit prints it.
        command: String,
        /// Its exit code.
        code: i32,
    },
    /// The Dockerfile is well-formed but cannot be built as written.
    #[error("{0}")]
    Invalid(String),
    /// The context or a COPY source.
    #[error("{0}")]
    Context(String),
    /// A base image could not be found or pulled, or a download failed.
    #[error("{0}")]
    Host(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// The runtime.
    #[error(transparent)]
    Runtime(#[from] berth_runtime::RuntimeError),
    /// The stage stopped because another stage failed (whose error is the build's).
    #[error("cancelled: another stage failed")]
    Cancelled,
    /// Other I/O.
    #[error("{0}")]
    Io(String),
}
