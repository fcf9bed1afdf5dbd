//! `exec`: a new process inside a running container.
//!
//! Berth joins the container itself rather than through libcontainer's tenant builder, because the tenant
//! builder of libcontainer 0.7 rebuilds the spec's `linux` section from namespaces and cgroup path only, so
//! an exec'd process would run without the container's seccomp profile. The steps are runc's `nsenter`:
//! the CLI (single-threaded) forks a child that joins the container's cgroups and namespaces and forks
//! again so the grandchild is inside the PID namespace; the grandchild takes the container's user,
//! capabilities, no_new_privs and seccomp filter from the bundle's `config.json` — the very spec the
//! container runs with — and execs. The CLI is a child subreaper, so the grandchild becomes its child and
//! its exit status is the exec's.

use std::ffi::CString;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::engine::Engine;
use crate::error::{io_err, RuntimeError};
use crate::session::{copy_window_size, DetachKeys, DetachScanner, RawTerminal};

/// What `berth exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE` additions to the container's environment.
    pub env: Vec<String>,
    /// `-w`: working directory (default: the container's).
    pub workdir: Option<String>,
    /// `-u`: user[:group] (default: the container's).
    pub user: Option<String>,
    /// `-t`: a pseudo-terminal.
    pub tty: bool,
    /// `-i`: keep stdin open.
    pub interactive: bool,
    /// `-d`: run in the background.
    pub detach: bool,
    /// `--privileged`: every capability.
    pub privileged: bool,
    /// `--detach-keys`: what detaches a foreground exec with a terminal.
    pub detach_keys: DetachKeys,
}

/// How a foreground exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    /// The process exited with this status.
    Exited(i32),
    /// The user pressed the detach keys; the process runs on.
    Detached,
}

/// Everything the grandchild needs, computed before forking.
struct Plan {
    args: Vec<CString>,
    env: Vec<CString>,
    path: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    caps: Option<oci_spec::runtime::LinuxCapabilities>,
    no_new_privileges: bool,
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    namespaces: Vec<(CloneFlags, File)>,
    cgroup_files: Vec<PathBuf>,
    tty: bool,
    /// The caller's terminal size, given to the new pty before the process starts.
    window: Option<libc::winsize>,
    stdin: Option<OwnedFd>,
    /// Where stdout and stderr go instead of the caller's (a healthcheck's capture pipe).
    output: Option<OwnedFd>,
    quiet: bool,
}

impl Engine {
    /// Runs `options.cmd` inside the running container `name_or_id`. Foreground execs wait for the
    /// process (forwarding signals, and with `tty` the terminal); `detach` returns once it has started.
    pub fn exec(&self, name_or_id: &str, options: &ExecOptions) -> Result<ExecEnd, RuntimeError> {
        let record = self.container(name_or_id)?;
        if !record.state.running || !self.monitor_alive(&record.id) {
            return Err(RuntimeError::NotRunning(record.id.clone()));
        }
        if record.state.paused {
            return Err(RuntimeError::InvalidOption(format!(
                "container {} is paused, unpause the container before exec",
                record.id
            )));
        }
        if options.cmd.is_empty() {
            return Err(RuntimeError::InvalidOption(
                "exec requires at least one command argument".into(),
            ));
        }
        let spec_path = self.run_dir(&record.id).join("config.json");
        let spec = Spec::load(&spec_path).map_err(|e| io_err(spec_path.display(), e))?;
        let plan = plan(&spec, record.state.pid, options)?;
        let child = spawn(plan)?;
        if options.detach {
            return Ok(ExecEnd::Exited(0));
        }
        if options.tty {
            let master = child
                .pty
                .ok_or_else(|| RuntimeError::Io("exec: no pty".into()))?;
            pump_tty(
                child.pid,
                master,
                options.interactive,
                options.detach_keys.clone(),
            )
        } else {
            wait_proxying_signals(child.pid).map(ExecEnd::Exited)
        }
    }
}

/// Starts a healthcheck probe in a running container with stdout and stderr on `output`; the caller
/// (the monitor, a subreaper) reaps it.
pub(crate) fn spawn_probe(
    engine: &Engine,
    id: &str,
    container_pid: Pid,
    cmd: &[String],
    output: OwnedFd,
) -> Result<Pid, RuntimeError> {
    let spec_path = engine.run_dir(id).join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| io_err(spec_path.display(), e))?;
    let options = ExecOptions {
        cmd: cmd.to_vec(),
        ..ExecOptions::default()
    };
    let mut plan = plan(&spec, container_pid.as_raw(), &options)?;
    plan.output = Some(output);
    Ok(spawn(plan)?.pid)
}

fn cstring(s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::InvalidOption(format!("NUL byte in {s:?}")))
}

/// Sets `KEY=VALUE` in an ordered environment, replacing an earlier value of the same key.
fn set_env(env: &mut Vec<(String, String)>, entry: &str) {
    let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
    match env.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

fn plan(spec: &Spec, pid: i32, options: &ExecOptions) -> Result<Plan, RuntimeError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::Io("container spec has no process".into()))?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| RuntimeError::Io("container spec has no linux section".into()))?;
    let proc_root = PathBuf::from(format!("/proc/{pid}"));

    // Environment: the container's, then -e; HOME follows -u unless the container set it.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in process.env().as_deref().unwrap_or_default() {
        set_env(&mut env, e);
    }
    let (uid, gid, additional_gids) = match &options.user {
        Some(spec_user) => {
            // Docker reports every exec that cannot start its process as an OCI exec failure (126).
            let user = crate::user::resolve_user(&proc_root.join("root"), spec_user)
                .map_err(|e| RuntimeError::Exec(e.to_string()))?;
            set_env(&mut env, &format!("HOME={}", user.home));
            (user.uid, user.gid, user.additional_gids)
        }
        None => {
            let u = process.user();
            (
                u.uid(),
                u.gid(),
                u.additional_gids().clone().unwrap_or_default(),
            )
        }
    };
    if options.tty && !env.iter().any(|(k, _)| k == "TERM") {
        set_env(&mut env, "TERM=xterm");
    }
    for e in &options.env {
        match e.split_once('=') {
            Some(_) => set_env(&mut env, e),
            // `-e NAME` passes the caller's value, or nothing when the caller has none (Docker's rule).
            None => {
                if let Ok(value) = std::env::var(e) {
                    set_env(&mut env, &format!("{e}={value}"));
                }
            }
        }
    }
    let path: Vec<String> = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, p)| p.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let env = env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;

    let cwd = options
        .workdir
        .clone()
        .unwrap_or_else(|| process.cwd().display().to_string());
    if !cwd.starts_with('/') {
        return Err(RuntimeError::Exec(format!(
            "the working directory '{cwd}' is invalid, it needs to be an absolute path"
        )));
    }

    let caps = if options.privileged {
        let all: oci_spec::runtime::Capabilities = crate::spec::ALL_CAPABILITIES
            .iter()
            .filter_map(|c| c.trim_start_matches("CAP_").parse().ok())
            .collect();
        let mut c = oci_spec::runtime::LinuxCapabilities::default();
        c.set_bounding(Some(all.clone()))
            .set_effective(Some(all.clone()))
            .set_permitted(Some(all))
            .set_inheritable(None)
            .set_ambient(None);
        Some(c)
    } else {
        process.capabilities().clone()
    };

    // Namespaces: every one the container has, opened now (the paths vanish once we join its mount ns).
    let mut namespaces = Vec::new();
    for ns in linux.namespaces().as_deref().unwrap_or_default() {
        let (name, flag) = match ns.typ() {
            LinuxNamespaceType::Cgroup => ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            LinuxNamespaceType::Ipc => ("ipc", CloneFlags::CLONE_NEWIPC),
            LinuxNamespaceType::Uts => ("uts", CloneFlags::CLONE_NEWUTS),
            LinuxNamespaceType::Network => ("net", CloneFlags::CLONE_NEWNET),
            LinuxNamespaceType::Pid => ("pid", CloneFlags::CLONE_NEWPID),
            LinuxNamespaceType::Mount => ("mnt", CloneFlags::CLONE_NEWNS),
            _ => continue,
        };
        let path = proc_root.join("ns").join(name);
        let file = File::open(&path).map_err(|e| io_err(path.display(), e))?;
        namespaces.push((flag, file));
    }
    // Mount last: after it, host paths are gone. Cgroup before it, after the cgroup move.
    namespaces.sort_by_key(|(flag, _)| match *flag {
        CloneFlags::CLONE_NEWCGROUP => 1,
        CloneFlags::CLONE_NEWNS => 2,
        _ => 0,
    });

    let stdin = if options.detach || !options.interactive {
        Some(
            File::open("/dev/null")
                .map_err(|e| io_err("/dev/null", e))?
                .into(),
        )
    } else {
        None
    };
    Ok(Plan {
        args: options
            .cmd
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?,
        env,
        path,
        cwd,
        uid,
        gid,
        additional_gids,
        caps,
        no_new_privileges: process.no_new_privileges() == Some(true),
        seccomp: linux.seccomp().clone(),
        namespaces,
        cgroup_files: crate::cgroup::join_files_of(pid),
        tty: options.tty,
        window: options
            .tty
            .then(|| crate::session::window_size(0))
            .flatten(),
        stdin,
        output: None,
        quiet: options.detach,
    })
}

/// The started process: its PID (our child) and, with a tty, the pty master.
struct Spawned {
    pid: Pid,
    pty: Option<OwnedFd>,
}

fn spawn(plan: Plan) -> Result<Spawned, RuntimeError> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io_err("prctl(PR_SET_CHILD_SUBREAPER)", Errno::last()));
    }
    let (mut pid_reader, pid_writer) = UnixStream::pair().map_err(|e| io_err("socketpair", e))?;
    let (exec_reader, exec_writer) = UnixStream::pair().map_err(|e| io_err("socketpair", e))?;
    // SAFETY: the CLI is single-threaded (no runtime, no helper threads), so the child may run arbitrary
    // code after fork; it leaves only through exec or _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| io_err("fork", e))? {
        ForkResult::Child => {
            drop(pid_reader);
            drop(exec_reader);
            intermediate(plan, pid_writer, exec_writer)
        }
        ForkResult::Parent { child } => {
            drop(pid_writer);
            drop(exec_writer);
            drop(plan);
            let mut line = String::new();
            let read = pid_reader.read_to_string(&mut line);
            let _ = waitpid(child, None);
            read.map_err(|e| io_err("exec", e))?;
            let pid = match line.trim().split_once(' ') {
                Some(("pid", n)) => n.parse::<i32>().ok().map(Pid::from_raw),
                Some(("error", message)) => return Err(RuntimeError::Exec(message.into())),
                _ => None,
            }
            .ok_or_else(|| RuntimeError::Io("exec: the setup process died".into()))?;
            let (pty, report) = read_exec_report(&exec_reader)?;
            if let Some(report) = report {
                // The process never started; reap it so it leaves no zombie.
                let _ = waitpid(pid, None);
                return Err(report);
            }
            Ok(Spawned { pid, pty })
        }
    }
}

/// Reads what the grandchild says before it execs: optionally a pty master, then either EOF (exec
/// happened: the socket is close-on-exec) or an error line `CODE MESSAGE`.
fn read_exec_report(
    socket: &UnixStream,
) -> Result<(Option<OwnedFd>, Option<RuntimeError>), RuntimeError> {
    let mut pty = None;
    let mut text = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = match nix::sys::socket::recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_err("exec", e)),
        };
        let mut carried_fd = false;
        for c in msg.cmsgs().map_err(|e| io_err("exec", e))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed this fd in our table for us.
                    pty = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                    carried_fd = true;
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            break;
        }
        // The byte that carried the pty is not part of the report.
        if !carried_fd {
            text.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    if text.is_empty() {
        return Ok((pty, None));
    }
    let (code, message) = text.split_once(' ').unwrap_or((text, ""));
    // An exec that cannot start its command exits 126 whatever the cause, as Docker's (a `run`
    // whose command is missing exits 127).
    let error = match code {
        "127" => RuntimeError::Exec(format!(
            "exec failed: unable to start container process: exec: {message:?}: executable file not found in $PATH"
        )),
        "126" => RuntimeError::Exec(format!(
            "exec failed: unable to start container process: exec: {message:?}: permission denied"
        )),
        _ => RuntimeError::Exec(message.to_string()),
    };
    Ok((pty, Some(error)))
}

/// The forked child: joins cgroups and namespaces, forks the grandchild into the PID namespace, reports
/// its PID and exits.
fn intermediate(plan: Plan, mut pid_writer: UnixStream, exec_writer: UnixStream) -> ! {
    let line = match join_container(&plan) {
        Err(e) => format!("error exec failed: {e}\n"),
        // SAFETY: this process is single-threaded (a fork of the single-threaded CLI).
        Ok(()) => match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                drop(pid_writer);
                grandchild(plan, exec_writer)
            }
            Ok(ForkResult::Parent { child }) => format!("pid {child}\n"),
            Err(e) => format!("error exec failed: fork: {e}\n"),
        },
    };
    let _ = pid_writer.write_all(line.as_bytes());
    // SAFETY: _exit ends this forked process without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// Moves the calling process into the container's cgroups, then its namespaces (mount last).
fn join_container(plan: &Plan) -> Result<(), String> {
    // This forked process is single-threaded, so "0" (the writer) moves all of it.
    for file in &plan.cgroup_files {
        std::fs::write(file, "0").map_err(|e| format!("join cgroup {}: {e}", file.display()))?;
    }
    for (flag, file) in &plan.namespaces {
        nix::sched::setns(file.as_fd(), *flag).map_err(|e| format!("setns {flag:?}: {e}"))?;
    }
    Ok(())
}

/// The grandchild, inside the PID namespace: stdio, user, capabilities, seccomp, cwd, exec.
fn grandchild(plan: Plan, report: UnixStream) -> ! {
    let (code, message) = match prepare_and_exec(&plan, &report) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = (&report).write_all(format!("{code} {message}").as_bytes());
    // SAFETY: see intermediate.
    unsafe { libc::_exit(code) }
}

fn prepare_and_exec(
    plan: &Plan,
    report: &UnixStream,
) -> Result<std::convert::Infallible, (i32, String)> {
    let fail = |what: &str, e: &dyn std::fmt::Display| (125, format!("exec failed: {what}: {e}"));
    if plan.tty {
        let master = nix::pty::posix_openpt(
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        )
        .map_err(|e| fail("open /dev/ptmx", &e))?;
        nix::pty::grantpt(&master).map_err(|e| fail("grantpt", &e))?;
        nix::pty::unlockpt(&master).map_err(|e| fail("unlockpt", &e))?;
        let name = nix::pty::ptsname_r(&master).map_err(|e| fail("ptsname", &e))?;
        let slave = File::options()
            .read(true)
            .write(true)
            .open(&name)
            .map_err(|e| fail(&name, &e))?;
        if let Some(window) = &plan.window {
            // SAFETY: TIOCSWINSZ reads a winsize from memory we own; the fd is our open pty slave.
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, window) };
        }
        nix::unistd::setsid().map_err(|e| fail("setsid", &e))?;
        // SAFETY: TIOCSCTTY takes an integer argument; the fd is our open pty slave.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
            return Err(fail("set controlling terminal", &Errno::last()));
        }
        for fd in 0..3 {
            nix::unistd::dup2(slave.as_raw_fd(), fd).map_err(|e| fail("dup2", &e))?;
        }
        let fds = [master.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            report.as_raw_fd(),
            // A stream socket carries ancillary data only along with at least one byte.
            &[IoSlice::new(b"\0")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| fail("send pty", &e))?;
    } else {
        if let Some(stdin) = &plan.stdin {
            nix::unistd::dup2(stdin.as_raw_fd(), 0).map_err(|e| fail("dup2", &e))?;
        }
        if let Some(output) = &plan.output {
            for fd in 1..3 {
                nix::unistd::dup2(output.as_raw_fd(), fd).map_err(|e| fail("dup2", &e))?;
            }
        } else if plan.quiet {
            let null = File::options()
                .write(true)
                .open("/dev/null")
                .map_err(|e| fail("/dev/null", &e))?;
            for fd in 1..3 {
                nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| fail("dup2", &e))?;
            }
        }
    }
    if plan.quiet {
        let _ = nix::unistd::setsid();
    }
    // Signals the caller blocked for its signalfd, or ignored (the monitor does), must not stay so in
    // the new process: both survive exec.
    let _ = SigSet::all().thread_unblock();
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }

    let syscall = libcontainer::syscall::syscall::create_syscall();
    let gids: Vec<nix::unistd::Gid> = plan
        .additional_gids
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    syscall
        .set_groups(&gids)
        .map_err(|e| fail("setgroups", &e))?;
    syscall
        .set_id(
            nix::unistd::Uid::from_raw(plan.uid),
            nix::unistd::Gid::from_raw(plan.gid),
        )
        .map_err(|e| fail("set uid/gid", &e))?;
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it before dropping capabilities.
    if !plan.no_new_privileges {
        if let Some(seccomp) = &plan.seccomp {
            libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|e| fail("seccomp", &e))?;
        }
    }
    libcontainer::capabilities::reset_effective(syscall.as_ref())
        .map_err(|e| fail("capabilities", &e))?;
    if let Some(caps) = &plan.caps {
        libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
            .map_err(|e| fail("capabilities", &e))?;
    }
    nix::unistd::chdir(Path::new(&plan.cwd)).map_err(|e| {
        (
            125,
            format!(
                "exec failed: chdir to cwd (\"{}\") set in config.json failed: {}",
                plan.cwd,
                e.desc()
            ),
        )
    })?;
    if plan.no_new_privileges {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if let Some(seccomp) = &plan.seccomp {
            libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|e| fail("seccomp", &e))?;
        }
    }
    let command = plan.args[0].to_string_lossy().into_owned();
    let candidates: Vec<PathBuf> = if command.contains('/') {
        vec![PathBuf::from(&command)]
    } else {
        plan.path
            .iter()
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(&command))
            .collect()
    };
    let mut denied = false;
    for candidate in candidates {
        let Ok(c) = CString::new(candidate.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        match nix::unistd::execve(&c, &plan.args, &plan.env) {
            Err(Errno::EACCES) => denied = true,
            Err(Errno::ENOEXEC) => denied = true,
            Err(_) => {}
        }
    }
    if denied {
        Err((126, command))
    } else {
        Err((127, command))
    }
}

/// Waits for `pid` while forwarding the usual terminating signals to it.
fn wait_proxying_signals(pid: Pid) -> Result<i32, RuntimeError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in crate::signal::PROXIED {
        mask.add(s);
    }
    mask.thread_block().map_err(|e| io_err("sigprocmask", e))?;
    let sfd =
        SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|e| io_err("signalfd", e))?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                if let Some(code) = crate::signal::exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_err("wait", e)),
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                    if sig != Signal::SIGCHLD {
                        let _ = kill(pid, sig);
                    }
                }
            }
            Ok(None) | Err(Errno::EINTR) => {}
            Err(e) => return Err(io_err("signalfd", e)),
        }
    }
}

/// Copies between our terminal and the exec's pty until the process exits or the user detaches.
fn pump_tty(
    pid: Pid,
    master: OwnedFd,
    interactive: bool,
    keys: DetachKeys,
) -> Result<ExecEnd, RuntimeError> {
    copy_window_size(0, master.as_raw_fd());
    let _raw = RawTerminal::enter();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGWINCH);
    for s in crate::signal::PROXIED {
        mask.add(s);
    }
    mask.thread_block().map_err(|e| io_err("sigprocmask", e))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| io_err("signalfd", e))?;
    let mut exit = None;
    let mut stdin_open = interactive;
    let mut detach = DetachScanner::new(keys);
    let mut buf = vec![0u8; 64 * 1024];
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut master_file = File::from(master);
    loop {
        if exit.is_none() {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => {}
                Ok(status) => exit = crate::signal::exit_code(status),
            }
        }
        let mut fds = vec![
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(master_file.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // Once the process is gone, drain what the pty still holds, then stop.
        let timeout = if exit.is_some() {
            PollTimeout::from(50u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) if exit.is_some() => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(io_err("poll", e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGWINCH) => copy_window_size(0, master_file.as_raw_fd()),
                    Ok(Signal::SIGCHLD) | Err(_) => {}
                    Ok(sig) => {
                        let _ = kill(pid, sig);
                    }
                }
            }
        }
        if ready[1] {
            match master_file.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                }
                // EIO: every slave fd closed, the process and its children are gone.
                _ => {
                    if exit.is_none() {
                        exit = waitpid(pid, None).ok().and_then(crate::signal::exit_code);
                    }
                    break;
                }
            }
        }
        if stdin_open && ready.get(2).copied().unwrap_or(false) {
            match stdin.lock().read(&mut buf) {
                Ok(n) if n > 0 => {
                    let (data, detached) = detach.scan(&buf[..n]);
                    let _ = master_file.write_all(&data);
                    if detached {
                        return Ok(ExecEnd::Detached);
                    }
                }
                _ => stdin_open = false,
            }
        }
    }
    let code = match exit {
        Some(code) => code,
        None => waitpid(pid, None)
            .ok()
            .and_then(crate::signal::exit_code)
            .unwrap_or(137),
    };
    Ok(ExecEnd::Exited(code))
}
