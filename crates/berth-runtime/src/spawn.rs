//! Starting a monitor: `posix_spawn` into a session of its own.
//!
//! `posix_spawn` starts the child vfork-style: nothing of the caller is copied. A `fork` (what
//! `std::process::Command` does once it needs code run in the child) copies the page tables of the
//! whole CLI only for `exec` to throw them away, on the path of every `run`.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Descriptors below this may be targets of the child's set-up (stdio, the status and record pipes).
const LOW_FDS: RawFd = 10;

/// What one of the child's fds 0-2 is.
pub(crate) enum ChildFd<'a> {
    /// The caller's own.
    Inherit,
    /// `/dev/null`.
    Null,
    /// This descriptor of the caller's.
    Fd(BorrowedFd<'a>),
}

/// Starts `program` with `args` and the caller's environment: in a new session (terminal signals
/// do not reach it, and it may read a terminal it does not control), in `/`, with `stdio` as fds
/// 0-2 and each of `passed` at its number. Returns its PID; the caller never waits for it.
pub(crate) fn spawn_session(
    program: &Path,
    args: &[&OsStr],
    stdio: [ChildFd<'_>; 3],
    passed: &[(BorrowedFd<'_>, RawFd)],
) -> io::Result<i32> {
    let program = c_string(program.as_os_str())?;
    let args: Vec<CString> = args.iter().map(|a| c_string(a)).collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut pair = k;
            pair.push("=");
            pair.push(v);
            c_string(&pair)
        })
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*mut libc::c_char> = std::iter::once(&program)
        .chain(&args)
        .map(|a| a.as_ptr().cast_mut())
        .collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    // The child's descriptors are set up by dup2 one after the other: a source among the low numbers
    // could be overwritten by an earlier dup2 (or be dup2'd onto itself, which keeps close-on-exec),
    // so those are copied out of the way first.
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut dups: Vec<(RawFd, RawFd)> = Vec::new();
    let sources = stdio
        .iter()
        .enumerate()
        .filter_map(|(target, fd)| match fd {
            ChildFd::Fd(fd) => Some((*fd, target as RawFd)),
            _ => None,
        })
        .chain(passed.iter().copied());
    for (fd, target) in sources {
        let raw = if fd.as_raw_fd() < LOW_FDS {
            let high = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(LOW_FDS),
            )?;
            // SAFETY: F_DUPFD_CLOEXEC just returned this fresh descriptor; we are its only owner.
            moved.push(unsafe { OwnedFd::from_raw_fd(high) });
            high
        } else {
            fd.as_raw_fd()
        };
        dups.push((raw, target));
    }
    let null = c"/dev/null";

    let mut actions = SpawnObject::new(
        libc::posix_spawn_file_actions_init,
        libc::posix_spawn_file_actions_destroy,
    )?;
    for (target, fd) in stdio.iter().enumerate() {
        if let ChildFd::Null = fd {
            // SAFETY: `actions` is initialised; the path is a NUL-terminated string that outlives it.
            check(unsafe {
                libc::posix_spawn_file_actions_addopen(
                    actions.as_mut_ptr(),
                    target as libc::c_int,
                    null.as_ptr(),
                    libc::O_RDWR,
                    0,
                )
            })?;
        }
    }
    for (source, target) in dups {
        // SAFETY: `actions` is initialised; the source is open until posix_spawn returns.
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), source, target)
        })?;
    }
    // SAFETY: `actions` is initialised; "/" is a NUL-terminated static string.
    check(unsafe {
        libc::posix_spawn_file_actions_addchdir_np(actions.as_mut_ptr(), c"/".as_ptr())
    })?;

    let mut attr = SpawnObject::new(libc::posix_spawnattr_init, libc::posix_spawnattr_destroy)?;
    // The child starts with no signal blocked and SIGPIPE at its default (ignored here), as
    // `std::process::Command` starts children.
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    let mut pipe_only = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset/sigaddset initialise the sets they are given; `attr` is initialised.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigemptyset(pipe_only.as_mut_ptr());
        libc::sigaddset(pipe_only.as_mut_ptr(), libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigmask(
            attr.as_mut_ptr(),
            empty.as_ptr(),
        ))?;
        check(libc::posix_spawnattr_setsigdefault(
            attr.as_mut_ptr(),
            pipe_only.as_ptr(),
        ))?;
        let flags = libc::POSIX_SPAWN_SETSID
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        check(libc::posix_spawnattr_setflags(attr.as_mut_ptr(), flags))?;
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the program path, argv and envp are
    // NUL-terminated strings in NULL-terminated arrays that outlive it; `actions` and `attr` are
    // initialised. The child only runs the file actions and exec.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            actions.as_mut_ptr(),
            attr.as_mut_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    drop(moved);
    Ok(pid)
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// posix_spawn's functions return the error number instead of setting errno.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// An initialised posix_spawn object (`posix_spawn_file_actions_t`, `posix_spawnattr_t`), on the
/// heap so that it never moves, destroyed on drop.
struct SpawnObject<T> {
    inner: Box<MaybeUninit<T>>,
    destroy: unsafe extern "C" fn(*mut T) -> libc::c_int,
}

impl<T> SpawnObject<T> {
    fn new(
        init: unsafe extern "C" fn(*mut T) -> libc::c_int,
        destroy: unsafe extern "C" fn(*mut T) -> libc::c_int,
    ) -> io::Result<Self> {
        let mut inner = Box::new(MaybeUninit::uninit());
        // SAFETY: `init` is the object's own initialiser; it writes a fresh object into the storage.
        check(unsafe { init(inner.as_mut_ptr()) })?;
        Ok(Self { inner, destroy })
    }

    fn as_mut_ptr(&mut self) -> *mut T {
        self.inner.as_mut_ptr()
    }
}

impl<T> Drop for SpawnObject<T> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` (only a successful init makes a SpawnObject), destroyed once,
        // by the destructor that goes with its initialiser.
        unsafe {
            (self.destroy)(self.inner.as_mut_ptr());
        }
    }
}
