//! The caller's side of an attached container: raw terminal mode for `-t`, window-size and signal
//! forwarding (`--sig-proxy`), and waiting for the monitor to report the exit status or a detach.

use std::io::{BufRead, Write};
use std::os::fd::{AsFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::unistd::Pid;

use crate::engine::{MonitorEvent, Started};
use crate::error::{io_err, RuntimeError};

/// How an attached session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The container exited with this status.
    Exited(i32),
    /// The user detached (ctrl-p ctrl-q); the container runs on.
    Detached,
}

/// Puts the terminal on fd 0 in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: Option<Termios>,
}

impl RawTerminal {
    /// Enters raw mode when stdin is a terminal; otherwise does nothing.
    pub fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        Self { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Waits for an attached container to exit (or for a detach), forwarding signals to it and window size
/// changes to its monitor. The monitor does the actual I/O with the fds we handed it.
pub fn wait_attached(
    started: Started,
    tty: bool,
    sig_proxy: bool,
) -> Result<SessionEnd, RuntimeError> {
    let mut control = started.control;
    let Some(mut events) = started.events else {
        return Ok(SessionEnd::Detached);
    };
    let _raw = tty.then(RawTerminal::enter);
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGWINCH);
    for sig in crate::signal::PROXIED {
        mask.add(sig);
    }
    mask.thread_block().map_err(|e| io_err("sigprocmask", e))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| io_err("signalfd", e))?;
    let container = Pid::from_raw(started.pid);
    let monitor = Pid::from_raw(started.monitor_pid);
    let mut line = String::new();
    loop {
        // Lines the BufReader already holds must be handled before polling the fd again.
        if events.buffer().is_empty() {
            let mut fds = [
                PollFd::new(events.get_ref().as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io_err("poll", e)),
            }
            let sig_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
            let ev_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            if sig_ready {
                while let Ok(Some(info)) = sfd.read_signal() {
                    let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                        continue;
                    };
                    if sig == Signal::SIGWINCH {
                        match &mut control {
                            Some(socket) => {
                                let _ = socket.write_all(b"resize\n");
                            }
                            None => {
                                let _ = kill(monitor, Signal::SIGWINCH);
                            }
                        }
                    } else if sig_proxy {
                        let _ = kill(container, sig);
                    }
                }
            }
            if !ev_ready {
                continue;
            }
        }
        line.clear();
        let n = events
            .read_line(&mut line)
            .map_err(|e| io_err("read monitor status", e))?;
        if n == 0 {
            return Err(RuntimeError::Monitor(
                "exited without reporting the container's status".into(),
            ));
        }
        match MonitorEvent::parse(&line) {
            Some(MonitorEvent::Exited(code)) => return Ok(SessionEnd::Exited(code)),
            Some(MonitorEvent::Detached) => return Ok(SessionEnd::Detached),
            Some(MonitorEvent::Failed(_, msg)) => return Err(RuntimeError::Reported(msg)),
            _ => {}
        }
    }
}

/// The window size of the terminal on `fd`, if it is one.
pub fn window_size(fd: RawFd) -> Option<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own; a bad fd just fails.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

/// Copies the window size of the terminal on `from` to the terminal on `to` (pty master); bad fds are ignored.
pub(crate) fn copy_window_size(from: RawFd, to: RawFd) {
    if let Some(ws) = window_size(from) {
        // SAFETY: TIOCSWINSZ reads the winsize we own; a bad fd just fails.
        unsafe { libc::ioctl(to, libc::TIOCSWINSZ, &ws) };
    }
}

/// The key sequence that detaches a terminal from a container, leaving it running: Docker's
/// `--detach-keys` (`ctrl-p,ctrl-q` unless given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys(Vec<u8>);

impl Default for DetachKeys {
    fn default() -> Self {
        Self(vec![0x10, 0x11])
    }
}

impl DetachKeys {
    /// Parses Docker's syntax: comma-separated keys, each a single character or `ctrl-<c>` with `<c>`
    /// one of `a`-`z`, `@`, `[`, `\`, `]`, `^`, `_`. An empty string means the default.
    pub fn parse(spec: &str) -> Result<Self, RuntimeError> {
        if spec.is_empty() {
            return Ok(Self::default());
        }
        let bad =
            |why: &str| RuntimeError::InvalidOption(format!("invalid detach keys ({spec}): {why}"));
        let mut codes = Vec::new();
        for key in spec.split(',') {
            if key.len() == 1 {
                codes.push(key.as_bytes()[0]);
                continue;
            }
            let lower = key.to_ascii_lowercase();
            let Some(c) = lower.strip_prefix("ctrl-").filter(|c| c.len() == 1) else {
                return Err(bad(&format!("unknown key {key:?}")));
            };
            codes.push(match c.as_bytes()[0] {
                c @ b'a'..=b'z' => c - b'a' + 1,
                b'@' => 0,
                b'[' => 27,
                b'\\' => 28,
                b']' => 29,
                b'^' => 30,
                b'_' => 31,
                _ => return Err(bad(&format!("unknown key {key:?}"))),
            });
        }
        if codes.len() > MAX_DETACH_KEYS {
            return Err(bad(&format!("at most {MAX_DETACH_KEYS} keys")));
        }
        Ok(Self(codes))
    }

    /// The keys as hex digits, for the attach handshake and the monitor's command line.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The keys from [`DetachKeys::to_hex`]'s form; the default for anything else.
    pub fn from_hex(hex: &str) -> Self {
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        match bytes {
            Some(b) if !b.is_empty() && b.len() <= MAX_DETACH_KEYS => Self(b),
            _ => Self::default(),
        }
    }
}

/// The longest detach sequence accepted (it travels in a short handshake message).
const MAX_DETACH_KEYS: usize = 16;

/// Watches a terminal's input for the detach keys.
#[derive(Debug, Clone)]
pub(crate) struct DetachScanner {
    keys: DetachKeys,
    /// How many keys of the sequence the input has matched so far (held back, not forwarded yet).
    matched: usize,
}

impl DetachScanner {
    pub(crate) fn new(keys: DetachKeys) -> Self {
        Self { keys, matched: 0 }
    }

    /// Returns the bytes to forward and whether the whole sequence was typed. A partial sequence is held
    /// back until the next byte shows whether it continues; when it does not, it is forwarded as typed.
    pub(crate) fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let keys = &self.keys.0;
        let mut out = Vec::with_capacity(input.len() + keys.len());
        for &b in input {
            if b == keys[self.matched] {
                self.matched += 1;
                if self.matched == keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held back goes through, and this byte may start it.
            out.extend_from_slice(&keys[..self.matched]);
            self.matched = 0;
            if b == keys[0] {
                self.matched = 1;
                if keys.len() == 1 {
                    self.matched = 0;
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys() {
        let mut scan = DetachScanner::new(DetachKeys::default());
        assert_eq!(scan.scan(b"ab"), (b"ab".to_vec(), false));
        assert_eq!(scan.scan(b"a\x10"), (b"a".to_vec(), false));
        assert_eq!(scan.scan(b"\x11"), (vec![], true));
        assert_eq!(scan.scan(b"\x10x"), (b"\x10x".to_vec(), false));
        assert_eq!(scan.scan(b"\x10\x10\x11"), (b"\x10".to_vec(), true));

        let keys = DetachKeys::parse("ctrl-a,d").unwrap();
        assert_eq!(keys, DetachKeys(vec![1, b'd']));
        assert_eq!(DetachKeys::from_hex(&keys.to_hex()), keys);
        let mut scan = DetachScanner::new(keys);
        assert_eq!(scan.scan(b"\x10\x11\x01"), (b"\x10\x11".to_vec(), false));
        assert_eq!(scan.scan(b"d"), (vec![], true));
        assert_eq!(
            DetachKeys::parse("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_,CTRL-Z").unwrap(),
            DetachKeys(vec![0, 27, 28, 29, 30, 31, 26])
        );
        assert_eq!(DetachKeys::parse("").unwrap(), DetachKeys::default());
        for bad in ["ctrl-1", "ctl-a", "ab", "ctrl-", ","] {
            assert!(DetachKeys::parse(bad).is_err(), "{bad}");
        }
        let mut single = DetachScanner::new(DetachKeys::parse("ctrl-x").unwrap());
        assert_eq!(single.scan(b"ab\x18cd"), (b"ab".to_vec(), true));
    }
}
