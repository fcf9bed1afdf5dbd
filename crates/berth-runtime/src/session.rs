//! The caller's side of an attached container: raw terminal mode for `-t`, window-size and signal
//! forwarding (`--sig-proxy`), and waiting for the monitor to report the exit status or a detach.

use std::io::BufRead;
use std::os::fd::AsFd;

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
    let Some(mut events) = started.events else {
        return Ok(SessionEnd::Detached);
    };
    let _raw = tty.then(RawTerminal::enter);
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
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
                        let _ = kill(monitor, Signal::SIGWINCH);
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
