//! The per-container monitor: `berth-monitor <id>`, started by `start`/`run` in its own session. It creates and
//! starts the container through the embedded libcontainer, owns the container's stdio (pipes or a pty), appends
//! it to the json log, forwards it to an attached caller, reaps the exit status, records it, applies the
//! restart policy and `--rm`. Single-threaded and without an async runtime, because libcontainer forks.

use std::fs::{self, File};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_store::container::{ContainerRecord, Status};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::attach::Attachment;
use crate::engine::{Engine, MonitorEvent, RECORD_FD, STATUS_FD};
use crate::error::{io_err, RuntimeError};
use crate::events::Event;
use crate::logs::{JsonLogWriter, Stream};
use crate::session::{copy_window_size, DetachKeys};

/// How long a container runs before its monitor sheds the memory it needed to create it.
const SHED_STARTUP_MEMORY_AFTER: Duration = Duration::from_secs(1);

/// Docker's restart backoff: 100 ms doubling, reset after the container ran this long.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The status pipe back to the process that started the monitor; silently gone when that process is.
struct StatusPipe(Option<File>);

impl StatusPipe {
    fn inherit() -> Self {
        // fcntl tells whether fd 3 was handed to us at all.
        if nix::fcntl::fcntl(STATUS_FD, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            return Self(None);
        }
        let _ = nix::fcntl::fcntl(
            STATUS_FD,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // SAFETY: fd 3 is open (checked above) and was given to this process to own by its parent.
        Self(Some(unsafe { File::from_raw_fd(STATUS_FD) }))
    }

    fn send(&mut self, event: &MonitorEvent) {
        if let Some(f) = &mut self.0 {
            if f.write_all(event.to_line().as_bytes()).is_err() {
                self.0 = None;
            }
        }
    }

    /// Sends the last event and closes the pipe: the starter stops waiting then.
    fn finish(&mut self, event: &MonitorEvent) {
        self.send(event);
        self.0 = None;
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.as_ref().map(|f| f.as_fd())
    }
}

/// What one run of the container ended with.
struct Outcome {
    exit_code: i32,
    oom_killed: bool,
    ran_for: Duration,
    /// The container's mount namespace, held open by the monitor: the mounts inside (its `/proc`,
    /// `/dev`, `/sys`...) are torn down when this is dropped, after the exit is recorded, instead of
    /// in the init's own exit, where the kernel also waits for an RCU grace period before its parent
    /// hears of the exit.
    mount_namespace: Option<File>,
}

/// Runs the monitor for container `id` until the container is finally stopped; returns the process exit code.
/// `attached`: the starter's stdio (fds 0-2) is the container's until it detaches with these keys.
/// `await_record`: started by `run` before the container's record was written; it waits on
/// [`RECORD_FD`] to hear that it is, and leaves without a word if it never is.
pub fn run(
    root: &Path,
    runroot: &Path,
    id: &str,
    attached: Option<DetachKeys>,
    await_record: bool,
) -> i32 {
    // Blocks of 64 KiB and more (the stdio and log buffers) get mappings of their own, whose pages are
    // only resident once written and go back to the kernel when freed. glibc's default threshold rises
    // to the largest block freed, which creating the container pushes up: those buffers would then sit
    // in the heap, zeroed and resident, for the container's whole life.
    // SAFETY: mallopt only changes the allocator's tuning, before anything else runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
    let mut status = StatusPipe::inherit();
    set_monitor_signals(true);
    // Nearly every container gets a network namespace of its own. For `run`, it is made now, while
    // the starter still opens the store and writes the record: about a millisecond of kernel work
    // off the start's path. (Dropped unused for `--network host`, `none` or `container:`.)
    let mut spare_netns = if await_record {
        berth_net::netlink::Netlink::new_namespace().ok()
    } else {
        None
    };
    let engine = match Engine::open(root, runroot) {
        Ok(e) => e,
        Err(e) => {
            status.send(&MonitorEvent::Failed(125, e.to_string()));
            return 125;
        }
    };
    tracing::debug!("store opened");
    if await_record && !record_written() {
        return 0;
    }
    tracing::debug!("record written");
    let code = match supervise(&engine, id, attached, &mut status, spare_netns.take()) {
        Ok(code) => {
            status.finish(&MonitorEvent::Exited(code));
            0
        }
        Err(e) => {
            // 126/127 carry just the command; the starter words the message.
            let detail = match &e {
                RuntimeError::CommandNotFound(c) | RuntimeError::CommandNotExecutable(c) => {
                    c.clone()
                }
                other => other.to_string(),
            };
            status.send(&MonitorEvent::Failed(e.exit_code(), detail));
            e.exit_code()
        }
    };
    // A `--rm` container's files were only moved aside: deleting them is not the caller's wait (the
    // status pipe closes first; the caller's stdio was let go with the attachments).
    drop(status);
    engine.store().empty_trash();
    code
}

/// Waits on [`RECORD_FD`] until the starter says the container's record is written (one byte) or
/// goes away without a word (the container was not created).
fn record_written() -> bool {
    if nix::fcntl::fcntl(RECORD_FD, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return false;
    }
    // SAFETY: the descriptor is open (checked above) and was passed to this process to own; it is
    // read once and closed here.
    let pipe = unsafe { File::from_raw_fd(RECORD_FD) };
    let mut byte = [0u8; 1];
    loop {
        match (&pipe).read(&mut byte) {
            Ok(n) => return n == 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// `spare_netns`: a fresh network namespace for the first run to use (see [`run`]).
fn supervise(
    engine: &Engine,
    id: &str,
    attached: Option<DetachKeys>,
    status: &mut StatusPipe,
    mut spare_netns: Option<File>,
) -> Result<i32, RuntimeError> {
    let record = engine.store().container(id)?;
    let id = record.id.clone();
    let run_dir = engine.run_dir(&id);
    // (Taking the lock creates the run dir.)
    let Some(mut lock) = engine.lock_monitor(&id)? else {
        return Err(RuntimeError::Monitor(format!(
            "container {id} already has a monitor"
        )));
    };
    let _ = lock.set_len(0);
    let mut attachments = Attachments {
        listener: Some(crate::attach::listen(&run_dir)?),
        list: Vec::new(),
        starter_left: false,
    };
    if let Some(keys) = attached.filter(|_| status.fd().is_some()) {
        attachments.list.extend(Attachment::from_inherited_stdio(
            record.config.open_stdin,
            keys,
        ));
    }
    let mut backoff = BACKOFF_START;
    let mut first = true;
    let final_code;
    let mut mount_namespace = None;
    loop {
        // `start` cleared stopped_by_user before spawning us: a stop that arrives while we start up
        // must stick.
        let record = engine.store().container(&id)?;
        let log_path = engine.log_path(&id);
        let result = run_once(
            engine,
            &record,
            &log_path,
            &mut attachments,
            status,
            first,
            spare_netns.take(),
        );
        first = false;
        let outcome = match result {
            Ok(outcome) if record.host_config.auto_remove => {
                // A `--rm` container is gone for everyone once its record is. The starter hears the
                // exit code then; the rest of the cleanup no longer holds it up. (What a crash here
                // leaves is swept as orphans: directories without a record.)
                // Its anonymous volumes go with it, before the exit is reported too: as Docker's
                // `run --rm`, the volumes are gone when `run` returns.
                engine.store().delete_container(&id)?;
                tracing::debug!("record deleted");
                engine.remove_anonymous_volumes(&record.mounts);
                record_exit_code(&mut lock, outcome.exit_code);
                attachments.end_run(outcome.exit_code);
                drop(attachments);
                status.finish(&MonitorEvent::Exited(outcome.exit_code));
                tracing::debug!("exit reported");
                emit_exit(engine, &record, &outcome);
                // No one waits for the rest: it yields the CPU to whatever runs next (as often as
                // not, the next container's start).
                // SAFETY: setpriority only lowers this process's own scheduling priority.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                }
                release_runtime(engine, &id, outcome.mount_namespace);
                engine.discard_stopped(&record, false)?;
                drop(lock);
                return Ok(outcome.exit_code);
            }
            Ok(outcome) => outcome,
            Err(e) => {
                let code = e.exit_code();
                let message = e.to_string();
                let _ = engine.store().update_container(&id, |r| {
                    r.state.status = if r.state.started_at == berth_store::container::ZERO_TIME {
                        Status::Created
                    } else {
                        Status::Exited
                    };
                    r.state.running = false;
                    r.state.restarting = false;
                    r.state.pid = 0;
                    r.state.exit_code = code;
                    r.state.error = message.clone();
                    r.network_settings = Default::default();
                    Ok::<(), ()>(())
                });
                record_exit_code(&mut lock, code);
                attachments.end_run(code);
                if record.host_config.auto_remove {
                    let _ = engine.discard_stopped(&record, true);
                }
                return Err(e);
            }
        };
        let updated = engine.store().update_container(&id, |r| {
            r.state.running = false;
            r.state.paused = false;
            r.state.pid = 0;
            r.state.exit_code = outcome.exit_code;
            r.state.oom_killed = outcome.oom_killed;
            r.state.finished_at = berth_store::now_rfc3339();
            r.network_settings = Default::default();
            let policy = &r.host_config.restart_policy;
            let restart = !r.state.stopped_by_user
                && !r.host_config.auto_remove
                && match policy.name.as_str() {
                    "always" | "unless-stopped" => true,
                    "on-failure" => {
                        outcome.exit_code != 0
                            && (policy.maximum_retry_count == 0
                                || r.restart_count < policy.maximum_retry_count)
                    }
                    _ => false,
                };
            r.state.restarting = restart;
            r.state.status = if restart {
                Status::Restarting
            } else {
                Status::Exited
            };
            if restart {
                r.restart_count += 1;
            }
            Ok::<(), ()>(())
        })?;
        let record = updated.map_err(|_| RuntimeError::Io("update".into()))?;
        emit_exit(engine, &record, &outcome);
        attachments.end_run(outcome.exit_code);
        if !record.state.restarting {
            final_code = outcome.exit_code;
            mount_namespace = outcome.mount_namespace;
            break;
        }
        release_runtime(engine, &id, outcome.mount_namespace);
        backoff = if outcome.ran_for >= BACKOFF_RESET_AFTER {
            BACKOFF_START
        } else {
            backoff
        };
        if sleep_unless_stopped(engine, &id, backoff)? {
            final_code = outcome.exit_code;
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    record_exit_code(&mut lock, final_code);
    let abandoned_build = attachments.starter_left && is_build_container(&record);
    drop(attachments);
    let _ = fs::remove_file(run_dir.join(crate::attach::SOCKET_NAME));
    // The exit is recorded and reported before the container's resources are released: unmounting
    // its root filesystem syncs the filesystem under the store (an overlay unmount does), which takes
    // as long as the host has unwritten data there, seconds on a busy host. Until the lock goes,
    // commands that need the container stopped wait for it (`Engine::await_monitor_finish`).
    status.finish(&MonitorEvent::Exited(final_code));
    release_runtime(engine, &id, mount_namespace);
    if abandoned_build {
        engine.discard_stopped(&engine.store().container(&id)?, true)?;
    }
    drop(lock);
    Ok(final_code)
}

/// The monitor ignores the signals that would kill it (it runs in its own session, but a stray SIGTERM or a
/// write to a departed caller must not take the container's supervisor down). The container must not
/// inherit that: ignored signals survive exec, and a shell cannot even trap a signal ignored on entry.
/// So dispositions are reset to default around the fork that creates the container.
fn set_monitor_signals(ignore: bool) {
    let handler = if ignore {
        nix::sys::signal::SigHandler::SigIgn
    } else {
        nix::sys::signal::SigHandler::SigDfl
    };
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN/SIG_DFL install no handler code, so no handler can run at an unsafe point.
        let _ = unsafe { nix::sys::signal::signal(sig, handler) };
    }
}

/// The monitor lives as long as its container but needs little of the binary once the container runs:
/// creating it touched megabytes of code (libcontainer, SQLite, serde) that stay mapped. So, once:
/// - the store's connection lets go of its page cache and statements, and freed heap goes back to the
///   kernel;
/// - the stack pages below the current frame (creating the container used the stack deeply) go back;
/// - clean pages of read-only file mappings are dropped from our page tables. They stay in the page
///   cache, shared with every other berth process, and fault back in if used again. Which pages are
///   clean file pages, not private copies (relocated data, say), `/proc/self/pagemap` tells page by
///   page, so nothing is lost: what is dropped is exactly the file's content.
///
/// Everything is looked up first and the pages dropped last, in a loop that calls nothing but
/// `madvise`: code that runs after the drop faults back in (64 KiB around each page touched), so the
/// less of it, the less comes back.
fn release_startup_memory(store: &berth_store::Store) {
    /// At most this many runs of pages are dropped (the monitor has a few dozen).
    const MAX_RUNS: usize = 256;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as usize);
    store.release_memory();
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let (Ok(maps), Ok(mut pagemap)) = (
        fs::read_to_string("/proc/self/maps"),
        File::open("/proc/self/pagemap"),
    ) else {
        return;
    };
    let mut runs = [(0usize, 0usize); MAX_RUNS];
    let mut count = 0;
    let mut stack: Option<(usize, usize)> = None;
    let mut entries: Vec<u8> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let Some((start, end)) =
            fields
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                })
        else {
            continue;
        };
        let perms = fields.next().unwrap_or("");
        let path = fields.nth(3).unwrap_or("");
        if path == "[stack]" {
            stack = Some((start, end));
        }
        if !(perms.starts_with('r')
            && !perms.contains('w')
            && perms.ends_with('p')
            && path.starts_with('/'))
        {
            continue;
        }
        // One 64-bit entry per page: bit 63 present, bit 61 a file page (not a private copy).
        use std::io::{Read, Seek, SeekFrom};
        let pages = (end - start) / page_size;
        entries.resize(pages * 8, 0);
        if pagemap
            .seek(SeekFrom::Start((start / page_size * 8) as u64))
            .is_err()
            || pagemap.read_exact(&mut entries).is_err()
        {
            continue;
        }
        let mut run_start: Option<usize> = None;
        for page in 0..=pages {
            let clean_file_page = entries.get(page * 8..page * 8 + 8).is_some_and(|e| {
                let e = u64::from_ne_bytes(e.try_into().unwrap_or_default());
                e >> 63 & 1 == 1 && e >> 61 & 1 == 1
            });
            match (clean_file_page, run_start) {
                (true, None) => run_start = Some(page),
                (false, Some(first)) => {
                    if count < MAX_RUNS {
                        runs[count] = (start + first * page_size, start + page * page_size);
                        count += 1;
                    }
                    run_start = None;
                }
                _ => {}
            }
        }
    }
    drop((maps, entries, pagemap));
    // The stack grows down: below this frame (less two pages for the red zone and the calls that
    // follow, whose pages come back zeroed, as fresh stack always is) nothing is live.
    let here = &count as *const usize as usize;
    if let Some((start, _)) = stack.filter(|(start, end)| (*start..*end).contains(&here)) {
        let unused_end = (here - 2 * page_size) & !(page_size - 1);
        if unused_end > start {
            // SAFETY: [start, unused_end) is the part of our own stack mapping below the current
            // frame, which holds no live data; dropped anonymous pages read back as zeros.
            unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    unused_end - start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
    for &(start, end) in &runs[..count] {
        // SAFETY: the range is pages of one read-only file mapping of ours that pagemap shows to be
        // the file's own pages, no private copies: MADV_DONTNEED only drops page-table entries, and
        // the next access refaults the identical page from the file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Whether the builder made this container for a RUN step (see `BUILD_CONTAINER_LABEL`).
fn is_build_container(record: &ContainerRecord) -> bool {
    record
        .config
        .labels
        .contains_key(crate::options::BUILD_CONTAINER_LABEL)
}

/// Leaves the final exit code in the lock file, where a `wait` blocked on the lock reads it even after
/// `--rm` has removed the container and unlinked the file.
/// The events of a container's exit: `oom` when the kernel killed it for memory, then `die`.
fn emit_exit(engine: &Engine, record: &ContainerRecord, outcome: &Outcome) {
    if outcome.oom_killed {
        engine.emit(&Event::container(record, "oom", &[]));
    }
    engine.emit(&Event::container(
        record,
        "die",
        &[("exitCode", outcome.exit_code.to_string())],
    ));
}

fn record_exit_code(lock: &mut File, code: i32) {
    use std::io::Seek;
    let _ = lock.set_len(0);
    let _ = lock.seek(io::SeekFrom::Start(0));
    let _ = lock.write_all(code.to_string().as_bytes());
    let _ = lock.flush();
}

/// Sleeps for a restart backoff; returns true when the user stopped the container meanwhile.
fn sleep_unless_stopped(engine: &Engine, id: &str, total: Duration) -> Result<bool, RuntimeError> {
    let end = Instant::now() + total;
    loop {
        let record = engine.store().container(id)?;
        if record.state.stopped_by_user {
            engine
                .store()
                .update_container(id, |r| {
                    r.state.restarting = false;
                    r.state.status = Status::Exited;
                    Ok::<(), ()>(())
                })?
                .map_err(|_| RuntimeError::Io("update".into()))?;
            return Ok(true);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(false);
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The container's stdio as the monitor holds it.
struct ContainerIo {
    /// stdout pipe read end, or the pty master.
    out: OwnedFd,
    /// stderr pipe read end (None with a tty).
    err: Option<OwnedFd>,
    /// Where input for the container goes: stdin pipe write end, or a dup of the pty master.
    input: Option<OwnedFd>,
}

/// Everyone attached to the container's stdio, and the socket new clients arrive on.
struct Attachments {
    listener: Option<UnixListener>,
    list: Vec<Attachment>,
    /// The starter (the `run` or builder that spawned us, attached through the status pipe) went
    /// away before the container exited.
    starter_left: bool,
}

impl Attachments {
    /// Attach clients follow one run of the container, as with Docker: once its exit is recorded they
    /// are told the status and let go. The starter of a foreground `run` stays through restarts.
    fn end_run(&mut self, exit_code: i32) {
        let line = format!("exited {exit_code}\n");
        self.list.retain_mut(|a| {
            a.tell(&line);
            a.socket.is_none()
        });
    }

    /// The starter of a foreground `run`, whose terminal sets the pty's size.
    fn starter(&self) -> Option<&Attachment> {
        self.list.iter().find(|a| a.socket.is_none())
    }
}

fn run_once(
    engine: &Engine,
    record: &ContainerRecord,
    log_path: &Path,
    attachments: &mut Attachments,
    status: &mut StatusPipe,
    first: bool,
    spare_netns: Option<File>,
) -> Result<Outcome, RuntimeError> {
    let id = record.id.as_str();
    let store = engine.store();
    // A container deleted once it exits needs no crash-safe writes (see `mount_container`).
    let disposable = record.host_config.auto_remove || is_build_container(record);
    let rootfs = store
        .snapshots()
        .mount_container(id, &record.layers, disposable)?;
    tracing::debug!("rootfs mounted");
    let result = (|| {
        fill_new_volumes(record, &rootfs)?;
        // A missing working directory is created, as Docker (runc) does.
        let cwd = &record.config.working_dir;
        if !cwd.is_empty() && cwd != "/" {
            berth_archive::create_dir_all_in_root(&rootfs, Path::new(cwd))
                .map_err(|e| RuntimeError::Io(format!("working directory {cwd}: {e}")))?;
        }
        let files = store.container_dir(id);
        let shared_netns = crate::network::shared_namespace(engine, record)?;
        // The container's own network namespace is made and wired while libcontainer creates it.
        let prewired = crate::network::prewire(engine, record, spare_netns)?;
        tracing::debug!("network prewired");
        let netns_path = shared_netns.or_else(|| prewired.as_ref().map(|p| p.namespace_path()));
        // Legacy links add the linked containers' addresses to the environment, as they are now.
        let linked;
        let record = if record.host_config.links.is_empty() {
            record
        } else {
            let mut with_links = record.clone();
            with_links
                .config
                .env
                .extend(crate::network::link_env(engine, record));
            linked = with_links;
            &linked
        };
        let spec = crate::spec::build_spec(
            record,
            &crate::spec::SpecPaths {
                rootfs: &rootfs,
                files: &files,
                network_namespace: netns_path.as_deref(),
            },
        )?;
        let bundle = engine.run_dir(id);
        let spec_path = bundle.join("config.json");
        fs::write(
            &spec_path,
            serde_json::to_vec(&spec).map_err(|e| io_err("spec", e))?,
        )
        .map_err(|e| io_err(spec_path.display(), e))?;
        tracing::debug!("spec written");
        let lc_root = engine.libcontainer_root();
        let stale = lc_root.join(id);
        if stale.exists() {
            if let Ok(mut old) = libcontainer::container::Container::load(stale.clone()) {
                let _ = old.delete(true);
            }
            let _ = fs::remove_dir_all(&stale);
        }
        let max_size = record
            .host_config
            .log_config
            .config
            .get("max-size")
            .map(|s| crate::options::parse_bytes(s))
            .transpose()?
            .unwrap_or(0) as u64;
        let max_files = record
            .host_config
            .log_config
            .config
            .get("max-file")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        // `--log-driver none` keeps nothing; attached callers still get the output.
        let mut log = if record.host_config.log_config.kind == "none" {
            None
        } else {
            Some(
                JsonLogWriter::open(log_path, max_size, max_files)
                    .map_err(|e| io_err(log_path.display(), e))?,
            )
        };

        let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&lc_root)
            .map_err(|e| RuntimeError::Start(e.to_string()))?;
        let console_path = bundle.join("console.sock");
        let (builder, mut io, console) = if record.config.tty {
            let _ = fs::remove_file(&console_path);
            // Bound through a short path (run dirs can exceed the 108-byte socket path limit);
            // libcontainer itself connects through a symlink in its state dir.
            let short = crate::attach::ShortPath::new(&bundle, "console.sock")?;
            let listener =
                UnixListener::bind(short.path()).map_err(|e| io_err(console_path.display(), e))?;
            (
                builder.with_console_socket(Some(&console_path)),
                None,
                Some(listener),
            )
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            // A 1 MiB pipe lets a chatty container write on while the monitor logs (64 KiB default).
            for fd in [&out_r, &err_r] {
                let _ =
                    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
            }
            let (stdin_child, input): (OwnedFd, Option<OwnedFd>) = if record.config.open_stdin {
                let (r, w) = pipe()?;
                (r, Some(w))
            } else {
                (
                    File::open("/dev/null")
                        .map_err(|e| io_err("/dev/null", e))?
                        .into(),
                    None,
                )
            };
            let builder = builder
                .with_stdin(stdin_child)
                .with_stdout(out_w)
                .with_stderr(err_w);
            (
                builder,
                Some(ContainerIo {
                    out: out_r,
                    err: Some(err_r),
                    input,
                }),
                None,
            )
        };
        tracing::debug!("stdio ready");
        let started_at = Instant::now();
        set_monitor_signals(false);
        let built = builder
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        set_monitor_signals(true);
        let mut container = built.map_err(|e| classify_start_error(&e.to_string(), record))?;
        tracing::debug!("container created");
        let mount_namespace = container
            .pid()
            .and_then(|pid| File::open(format!("/proc/{pid}/ns/mnt")).ok());
        // The init waits for start(): finish wiring its network namespace up first.
        let (network, network_settings) =
            match crate::network::connect(engine, record, container.pid(), prewired) {
                Ok(Some((n, settings))) => (Some(n), Some(settings)),
                Ok(None) => (None, None),
                Err(e) => {
                    let _ = container.delete(true);
                    return Err(e);
                }
            };
        tracing::debug!("network connected");
        if let Err(e) = container.start() {
            let _ = container.delete(true);
            crate::network::disconnect(engine, record, network.as_ref());
            return Err(classify_start_error(&e.to_string(), record));
        }
        tracing::debug!("container started");
        let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
        if let Some(listener) = console {
            let master = receive_pty_master(&listener)?;
            let _ = fs::remove_file(&console_path);
            let input = master
                .try_clone()
                .map_err(|e| io_err("dup pty master", e))?;
            if let Some(starter) = attachments.starter() {
                copy_window_size(starter.output.as_raw_fd(), master.as_raw_fd());
            }
            io = Some(ContainerIo {
                out: master,
                err: None,
                input: record.config.open_stdin.then_some(input),
            });
        }
        let Some(mut io) = io else {
            return Err(RuntimeError::Start("no container stdio".into()));
        };
        store
            .update_container(id, |r| {
                r.state.status = Status::Running;
                r.state.running = true;
                r.state.paused = false;
                r.state.restarting = false;
                r.state.oom_killed = false;
                r.state.dead = false;
                r.state.pid = pid;
                r.state.monitor_pid = std::process::id() as i32;
                r.state.exit_code = 0;
                r.state.error.clear();
                r.state.started_at = berth_store::now_rfc3339();
                r.state.health = crate::health::initial_health(r.config.healthcheck.as_ref());
                if let Some(settings) = &network_settings {
                    r.network_settings = settings.clone();
                }
                Ok::<(), ()>(())
            })?
            .map_err(|_| RuntimeError::Io("update".into()))?;
        if first {
            status.send(&MonitorEvent::Started(pid));
        }
        // After the starter is told: the event log is for observers, not on the way of a start.
        engine.emit(&Event::container(record, "start", &[]));
        let mut prober = crate::health::Prober::new(record.config.healthcheck.as_ref());
        let exit_code = pump(
            Pid::from_raw(pid),
            &mut io,
            &mut log,
            attachments,
            status,
            record.config.tty,
            Health {
                prober: &mut prober,
                engine,
                record,
            },
        )?;
        tracing::debug!("container exited");
        if let Some(log) = log.as_mut() {
            let _ = log.finish();
        }
        let oom_killed = crate::cgroup::oom_kills(id) > 0;
        crate::network::disconnect(engine, record, network.as_ref());
        tracing::debug!("network disconnected");
        Ok(Outcome {
            exit_code,
            oom_killed,
            ran_for: started_at.elapsed(),
            mount_namespace,
        })
    })();
    // After an exit, the caller releases the rest (`release_runtime`) when it suits it.
    if result.is_err() {
        let _ = store.snapshots().unmount_container(id);
    }
    result
}

/// What a container that exited still holds once its monitor has its exit status: the init has
/// exited, so the kernel has killed the rest of its PID namespace; left are its mount namespace
/// (`mount_namespace`, the monitor's hold on it: see [`Outcome`]), the cgroups, libcontainer's state
/// dir and the rootfs mount.
fn release_runtime(engine: &Engine, id: &str, mount_namespace: Option<File>) {
    drop(mount_namespace);
    crate::cgroup::remove(id);
    let _ = fs::remove_dir_all(engine.libcontainer_root().join(id));
    let _ = engine.store().snapshots().unmount_container(id);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe", e))
}

/// Maps libcontainer's start errors onto Docker's exit codes and words.
fn classify_start_error(message: &str, record: &ContainerRecord) -> RuntimeError {
    let command = crate::spec::process_args(record)
        .into_iter()
        .next()
        .unwrap_or_default();
    if message.contains("not found in $PATH")
        || message.contains("No such file or directory") && message.contains("exec")
    {
        RuntimeError::CommandNotFound(command)
    } else if message.contains("does not have correct permissions") || message.contains("EACCES") {
        RuntimeError::CommandNotExecutable(command)
    } else {
        RuntimeError::Start(message.to_string())
    }
}

/// Receives the pty master that libcontainer's init sends over the console socket.
fn receive_pty_master(listener: &UnixListener) -> Result<OwnedFd, RuntimeError> {
    let (stream, _) = listener.accept().map_err(|e| io_err("console socket", e))?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| io_err("receive pty", e))?;
    for c in msg.cmsgs().map_err(|e| io_err("receive pty", e))? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(RuntimeError::Start("console socket sent no pty".into()))
}

/// Moves bytes between the container and the log / attached caller until the container exits and its
/// output is drained. Returns the exit status.
fn pump(
    pid: Pid,
    io: &mut ContainerIo,
    log: &mut Option<JsonLogWriter>,
    attachments: &mut Attachments,
    status: &mut StatusPipe,
    tty: bool,
    mut health: Health<'_>,
) -> Result<i32, RuntimeError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGWINCH);
    mask.thread_block().map_err(|e| io_err("sigprocmask", e))?;
    let result = pump_loop(pid, io, log, attachments, status, tty, &mask, &mut health);
    if let Some(prober) = health.prober.as_mut() {
        prober.abort();
    }
    let _ = mask.thread_unblock();
    result
}

/// One slot of the monitor's poll set.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Signals,
    Out,
    Err,
    Input(usize),
    Control(usize),
    Listener,
    Probe,
}

/// The healthcheck side of the pump loop.
struct Health<'a> {
    prober: &'a mut Option<crate::health::Prober>,
    engine: &'a Engine,
    record: &'a ContainerRecord,
}

#[allow(clippy::too_many_arguments)]
fn pump_loop(
    pid: Pid,
    io: &mut ContainerIo,
    log: &mut Option<JsonLogWriter>,
    attachments: &mut Attachments,
    status: &mut StatusPipe,
    tty: bool,
    mask: &SigSet,
    health: &mut Health<'_>,
) -> Result<i32, RuntimeError> {
    let sfd = SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| io_err("signalfd", e))?;
    let mut buf = vec![0u8; 128 * 1024];
    let mut exit: Option<i32> = reap(pid, health.prober.as_mut());
    let mut out_open = true;
    let mut err_open = io.err.is_some();
    let mut drain_deadline: Option<Instant> = None;
    // Memory from creating the container is given back once it has run a moment: short-lived
    // containers (`run --rm … true`) never pay for it.
    let mut shed_at = Some(Instant::now() + SHED_STARTUP_MEMORY_AFTER);
    loop {
        if exit.is_some() {
            if !out_open && !err_open {
                break;
            }
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
            if Instant::now() >= deadline {
                break;
            }
        }
        if exit.is_none() {
            if let Some(prober) = health.prober.as_mut() {
                prober.tick(health.engine, health.record, pid);
            }
        }
        if exit.is_none() && shed_at.is_some_and(|t| Instant::now() >= t) {
            release_startup_memory(health.engine.store());
            shed_at = None;
        }
        let wake_at = [health.prober.as_ref().map(|p| p.wake_at()), shed_at]
            .into_iter()
            .flatten()
            .min();
        let timeout = if exit.is_some() {
            PollTimeout::from(100u16)
        } else if let Some(at) = wake_at {
            let ms = at
                .saturating_duration_since(Instant::now())
                .as_millis()
                .clamp(1, 60_000);
            PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::NONE)
        } else {
            PollTimeout::NONE
        };
        let mut slots = vec![Slot::Signals];
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if out_open {
            slots.push(Slot::Out);
            fds.push(PollFd::new(io.out.as_fd(), PollFlags::POLLIN));
        }
        if let (true, Some(err)) = (err_open, &io.err) {
            slots.push(Slot::Err);
            fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
        }
        for (i, a) in attachments.list.iter().enumerate() {
            if let (Some(input), true) = (&a.input, io.input.is_some()) {
                slots.push(Slot::Input(i));
                fds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
            }
            // Sockets say resize or hang up; the starter's status pipe only hangs up (POLLERR).
            let control = match &a.socket {
                Some(socket) => Some((socket.as_fd(), PollFlags::POLLIN)),
                None => status.fd().map(|fd| (fd, PollFlags::empty())),
            };
            if let Some((fd, events)) = control {
                slots.push(Slot::Control(i));
                fds.push(PollFd::new(fd, events));
            }
        }
        if let Some(listener) = &attachments.listener {
            slots.push(Slot::Listener);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        if let Some(probe_output) = health.prober.as_ref().and_then(|p| p.output_fd()) {
            slots.push(Slot::Probe);
            fds.push(PollFd::new(probe_output, PollFlags::POLLIN));
        }
        // The log is written out only when nothing is ready: a busy container's lines go to the file
        // in 256 KiB writes, not one write per read, and a quiet one's are on disk (for `logs -f`)
        // before the monitor sleeps.
        let ready_now = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_err("poll", e)),
        };
        if ready_now == 0 {
            if let Some(log) = log.as_mut() {
                let _ = log.flush();
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io_err("poll", e)),
            }
        }
        let ready: Vec<Slot> = slots
            .iter()
            .zip(fds.iter())
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(slot, _)| *slot)
            .collect();
        drop(fds);
        let mut gone: Vec<usize> = Vec::new();
        for slot in ready {
            match slot {
                Slot::Signals => {
                    while let Ok(Some(info)) = sfd.read_signal() {
                        if info.ssi_signo == Signal::SIGWINCH as u32 && tty {
                            if let Some(starter) = attachments.starter() {
                                copy_window_size(starter.output.as_raw_fd(), io.out.as_raw_fd());
                            }
                        }
                    }
                    if exit.is_none() {
                        exit = reap(pid, health.prober.as_mut());
                    }
                }
                Slot::Out | Slot::Err => {
                    let (fd, stream) = match (slot, &io.err) {
                        (Slot::Err, Some(err)) => (err, Stream::Stderr),
                        _ => (&io.out, Stream::Stdout),
                    };
                    match read_some(fd, &mut buf) {
                        Some(n) if n > 0 => {
                            let data = &buf[..n];
                            if let Some(log) = log.as_mut() {
                                let _ = log.write(stream, data);
                            }
                            for (i, a) in attachments.list.iter().enumerate() {
                                let target = match stream {
                                    Stream::Stdout => a.output.as_raw_fd(),
                                    Stream::Stderr => a.errors.as_raw_fd(),
                                };
                                if write_all_fd(target, data).is_err() {
                                    gone.push(i);
                                }
                            }
                        }
                        _ => match stream {
                            Stream::Stdout => out_open = false,
                            Stream::Stderr => err_open = false,
                        },
                    }
                }
                Slot::Input(i) => {
                    let a = &mut attachments.list[i];
                    let Some(input) = &a.input else { continue };
                    match read_some(input, &mut buf) {
                        Some(n) if n > 0 => {
                            let (data, detach) = if tty {
                                a.detach.scan(&buf[..n])
                            } else {
                                (buf[..n].to_vec(), false)
                            };
                            if let Some(target) = &io.input {
                                let _ = write_all_fd(target.as_raw_fd(), &data);
                            }
                            if detach {
                                match a.socket {
                                    Some(_) => a.tell("detached\n"),
                                    None => status.send(&MonitorEvent::Detached),
                                }
                                gone.push(i);
                            }
                        }
                        _ => {
                            // The caller's stdin ended: close the container's (a pty's master stays open).
                            a.input = None;
                            if !tty {
                                io.input = None;
                            }
                        }
                    }
                }
                Slot::Control(i) => {
                    let a = &mut attachments.list[i];
                    let mut resize = false;
                    let alive = match &mut a.socket {
                        Some(socket) => crate::attach::read_control(socket, &mut resize),
                        None => false,
                    };
                    if !alive {
                        gone.push(i);
                    } else if resize && tty {
                        copy_window_size(a.output.as_raw_fd(), io.out.as_raw_fd());
                    }
                }
                Slot::Probe => {
                    if let Some(prober) = health.prober.as_mut() {
                        prober.read_output();
                    }
                }
                Slot::Listener => {
                    while let Some(Ok((stream, _))) =
                        attachments.listener.as_ref().map(|l| l.accept())
                    {
                        if let Ok(a) = Attachment::receive(stream, io.input.is_some()) {
                            if tty {
                                copy_window_size(a.output.as_raw_fd(), io.out.as_raw_fd());
                            }
                            attachments.list.push(a);
                        }
                    }
                }
            }
        }
        gone.sort_unstable();
        gone.dedup();
        for i in gone.into_iter().rev() {
            let left = attachments.list.remove(i);
            if left.socket.is_none() && exit.is_none() {
                attachments.starter_left = true;
                // A build step dies with its build (Ctrl-C or a killed `berth build`), as
                // BuildKit cancels it; the container is then removed like a `--rm` one.
                if is_build_container(health.record) {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
        }
    }
    let code = exit.unwrap_or(137);
    Ok(code)
}

/// Reaps children (the container's init, healthcheck probes, anything reparented to us); returns the
/// container's exit status once it has exited, and hands a probe's status to its prober.
fn reap(pid: Pid, mut prober: Option<&mut crate::health::Prober>) -> Option<i32> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) => {
                if status.pid() == Some(pid) {
                    found = crate::signal::exit_code(status);
                } else if let Some(p) = prober.as_deref_mut() {
                    if status.pid().is_some() && status.pid() == p.pid() {
                        if let Some(code) = crate::signal::exit_code(status) {
                            p.exited(code);
                        }
                    }
                }
            }
        }
    }
}

/// Reads what one ready descriptor has; `None` (or `Some(0)`) is the end of that stream. The
/// descriptors are blocking and read only after poll reports them ready, so any error but EINTR — EIO
/// from a pty master whose slave closed, above all — means the stream is over.
fn read_some(fd: &impl AsFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        match nix::unistd::read(fd.as_fd().as_raw_fd(), buf) {
            Ok(n) => return Some(n),
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: fd is one of our open descriptors for the duration of the call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::unistd::write(borrowed, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies the image's content at each volume's mount point into a volume that is still empty (Docker
/// fills new volumes this way).
fn fill_new_volumes(record: &ContainerRecord, rootfs: &Path) -> Result<(), RuntimeError> {
    for m in record
        .mounts
        .iter()
        .filter(|m| m.kind == "volume" && !m.options.iter().any(|o| o == "nocopy"))
    {
        let data = PathBuf::from(&m.source);
        let empty = fs::read_dir(&data)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            continue;
        }
        let source = crate::rootfs::resolve_in_root(rootfs, Path::new(&m.destination))
            .map_err(|e| io_err(&m.destination, e))?;
        if source.is_dir() {
            copy_tree(&source, &data).map_err(|e| io_err(format!("fill volume {}", m.name), e))?;
        }
    }
    Ok(())
}

/// Copies a directory tree preserving modes, owners, symlinks and times (not following symlinks).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(from)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
    }
    Ok(())
}
