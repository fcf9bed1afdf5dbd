//! Attaching to a running container's stdio through its monitor.
//!
//! The monitor listens on `attach.sock` in the container's run directory. A client (`berth attach`)
//! connects and hands over its own stdin, stdout and stderr with SCM_RIGHTS; from then on the monitor
//! writes the container's output straight into the client's descriptors and forwards what the client's
//! stdin yields, so no byte passes through the client process. The socket stays open as the control
//! channel: the client writes `resize` lines after SIGWINCH, the monitor writes `detached` or
//! `exited <code>` before it lets go of the client's descriptors. `run` in the foreground hands its stdio
//! to the monitor at spawn time instead (no output is missed before the container starts) and talks over
//! the status pipe; both end up as an [`Attachment`].

use std::fs::File;
use std::io::{BufReader, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};

use crate::engine::{Engine, Started};
use crate::error::{io_err, RuntimeError};
use crate::session::{DetachKeys, DetachScanner};

/// The socket's file name in the container's run directory.
pub(crate) const SOCKET_NAME: &str = "attach.sock";

/// Unix socket paths are limited to 108 bytes and run directories can be deep, so sockets are reached
/// through `/proc/self/fd/<dir fd>/<name>`: the directory is opened, and the short path resolves through it.
pub(crate) struct ShortPath {
    _dir: File,
    path: PathBuf,
}

impl ShortPath {
    pub(crate) fn new(dir: &Path, name: &str) -> Result<Self, RuntimeError> {
        let dir_file = File::open(dir).map_err(|e| io_err(dir.display(), e))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir_file.as_raw_fd()));
        Ok(Self {
            _dir: dir_file,
            path,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// One caller attached to the container's stdio.
pub(crate) struct Attachment {
    /// The caller's stdin, while its input is forwarded.
    pub input: Option<OwnedFd>,
    /// The caller's stdout.
    pub output: OwnedFd,
    /// The caller's stderr.
    pub errors: OwnedFd,
    /// The client's socket; None for the starter of a foreground `run`, which listens on the status pipe.
    pub socket: Option<UnixStream>,
    /// Watches the input for the detach keys.
    pub detach: DetachScanner,
}

impl Attachment {
    /// The starter's own stdio (fds 0-2, inherited by the monitor). They are moved to new descriptors
    /// and 0-2 pointed at /dev/null, so dropping the attachment really lets go of the caller's terminal.
    pub(crate) fn from_inherited_stdio(forward_input: bool, keys: DetachKeys) -> Option<Self> {
        let take = |fd: RawFd| -> Option<OwnedFd> {
            let new = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)).ok()?;
            // SAFETY: F_DUPFD_CLOEXEC just returned this fresh descriptor; we are its only owner.
            Some(unsafe { OwnedFd::from_raw_fd(new) })
        };
        let input = take(0)?;
        let output = take(1)?;
        let errors = take(2)?;
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            for fd in 0..3 {
                let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
            }
        }
        Some(Self {
            input: forward_input.then_some(input),
            output,
            errors,
            socket: None,
            detach: DetachScanner::new(keys),
        })
    }

    /// Receives a client's descriptors on a freshly accepted connection.
    pub(crate) fn receive(stream: UnixStream, open_stdin: bool) -> Result<Self, RuntimeError> {
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 3]);
        let msg = nix::sys::socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err("attach handshake", e))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(|e| io_err("attach handshake", e))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed this fd in our table for us.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // "stdin" or "nostdin", then " keys=<hex>" (the client's detach keys).
        let hello = msg
            .iovs()
            .next()
            .map(|data| String::from_utf8_lossy(data).into_owned())
            .unwrap_or_default();
        let wants_stdin = hello.starts_with("stdin");
        let keys = hello
            .split_whitespace()
            .find_map(|w| w.strip_prefix("keys="))
            .map(DetachKeys::from_hex)
            .unwrap_or_default();
        if fds.len() != 3 {
            return Err(RuntimeError::Io("attach handshake: expected 3 fds".into()));
        }
        let errors = fds.pop().ok_or_else(|| RuntimeError::Io("attach".into()))?;
        let output = fds.pop().ok_or_else(|| RuntimeError::Io("attach".into()))?;
        let input = fds.pop().filter(|_| wants_stdin && open_stdin);
        // Replies are short lines; a client that stops reading must not block the monitor.
        let _ = stream.set_nonblocking(true);
        Ok(Self {
            input,
            output,
            errors,
            socket: Some(stream),
            detach: DetachScanner::new(keys),
        })
    }

    /// Tells a socket client how its attachment ended (the starter is told over the status pipe).
    pub(crate) fn tell(&mut self, line: &str) {
        if let Some(s) = &mut self.socket {
            let _ = s.write_all(line.as_bytes());
        }
    }
}

/// Binds the monitor's attach socket in `dir`, replacing a stale one.
pub(crate) fn listen(dir: &Path) -> Result<UnixListener, RuntimeError> {
    let short = ShortPath::new(dir, SOCKET_NAME)?;
    let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
    let listener =
        UnixListener::bind(short.path()).map_err(|e| io_err(dir.join(SOCKET_NAME).display(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("attach socket", e))?;
    Ok(listener)
}

impl Engine {
    /// Attaches the caller's stdin (when `stdin` and the container keeps stdin open), stdout and stderr to
    /// a running container. Wait on the result with [`crate::session::wait_attached`].
    pub fn attach(
        &self,
        name_or_id: &str,
        stdin: bool,
        keys: &DetachKeys,
    ) -> Result<Started, RuntimeError> {
        let record = self.container(name_or_id)?;
        if !record.state.running || !self.monitor_alive(&record.id) {
            return Err(RuntimeError::InvalidOption(
                "You cannot attach to a stopped container, start it first".into(),
            ));
        }
        if record.state.paused {
            return Err(RuntimeError::InvalidOption(
                "You cannot attach to a paused container, unpause it first".into(),
            ));
        }
        let dir = self.run_dir(&record.id);
        let short = ShortPath::new(&dir, SOCKET_NAME)?;
        let stream = UnixStream::connect(short.path())
            .map_err(|e| io_err(dir.join(SOCKET_NAME).display(), e))?;
        let fds = [0, 1, 2];
        let hello = format!(
            "{} keys={}",
            if stdin { "stdin" } else { "nostdin" },
            keys.to_hex()
        );
        nix::sys::socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(hello.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| io_err("attach", e))?;
        let control = stream.try_clone().map_err(|e| io_err("attach", e))?;
        Ok(Started {
            pid: record.state.pid,
            monitor_pid: record.state.monitor_pid,
            events: Some(BufReader::new(File::from(OwnedFd::from(stream)))),
            control: Some(File::from(OwnedFd::from(control))),
        })
    }
}

/// Reads the control lines a client sent; returns false when the client is gone.
pub(crate) fn read_control(socket: &mut UnixStream, resize: &mut bool) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if buf[..n].windows(6).any(|w| w == b"resize") {
                    *resize = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}
