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

/// Ctrl-P Ctrl-Q detaches (Docker's default detach keys); returns the bytes to forward and whether to detach.
pub(crate) fn scan_detach_keys(input: &[u8], pending: &mut bool) -> (Vec<u8>, bool) {
    const CTRL_P: u8 = 0x10;
    const CTRL_Q: u8 = 0x11;
    let mut out = Vec::with_capacity(input.len() + 1);
    for &b in input {
        if *pending {
            *pending = false;
            if b == CTRL_Q {
                return (out, true);
            }
            out.push(CTRL_P);
        }
        if b == CTRL_P {
            *pending = true;
        } else {
            out.push(b);
        }
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys() {
        let mut pending = false;
        assert_eq!(
            scan_detach_keys(b"ab", &mut pending),
            (b"ab".to_vec(), false)
        );
        assert_eq!(
            scan_detach_keys(b"a\x10", &mut pending),
            (b"a".to_vec(), false)
        );
        assert!(pending);
        assert_eq!(scan_detach_keys(b"\x11", &mut pending), (vec![], true));
        pending = false;
        assert_eq!(
            scan_detach_keys(b"\x10x", &mut pending),
            (b"\x10x".to_vec(), false)
        );
    }
}
