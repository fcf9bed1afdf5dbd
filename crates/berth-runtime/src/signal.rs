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
