//! Signal names and numbers as Docker accepts them (`KILL`, `SIGKILL`, `9`).

use std::str::FromStr;

use nix::sys::signal::Signal;

use crate::error::RuntimeError;

/// Parses a signal by name (with or without `SIG`, any case) or number.
pub fn parse_signal(input: &str) -> Result<Signal, RuntimeError> {
    let bad = || RuntimeError::InvalidSignal(input.to_string());
    if let Ok(n) = input.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = input.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// The signals a foreground `run`, `attach` or `exec` passes on to the container's process (Docker's
/// sig-proxy); the rest either stop the caller or mean nothing to the container.
pub(crate) const PROXIED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A child's exit status as a shell reports it: the exit code, or 128 + the signal that killed it.
pub(crate) fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => Some(code),
        nix::sys::wait::WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
