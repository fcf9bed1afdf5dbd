//! The engine: container lifecycle operations over the store, one short-lived call per CLI command.
//! Running containers are owned by their monitor processes; the engine starts them and talks to them
//! through the store, signals and the monitor's lock.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_store::container::{ContainerRecord, MountPoint, Status};
use berth_store::{Store, StoreError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{io_err, RuntimeError};
use crate::events::Event;
use crate::options::{self, RunOptions};
use crate::spawn::ChildFd;

/// The file descriptor the monitor reports on (see [`MonitorEvent`]).
pub const STATUS_FD: RawFd = 3;

/// The file descriptor on which a monitor started before its container's record is written (`run`)
/// waits to hear that it is: one byte, or the end of the pipe when the container was not created.
pub const RECORD_FD: RawFd = 4;

/// An open engine: the store plus the run directory.
pub struct Engine {
    store: Store,
    runroot: PathBuf,
}

/// How the caller of `start` wants the container's stdio.
#[derive(Debug)]
pub enum StdioMode {
    /// Detached: output only to the log.
    Detached,
    /// The caller's own stdin/stdout/stderr are handed to the monitor, which forwards container stdio
    /// to them (and to the log) until the caller goes away or types these detach keys.
    Inherit(crate::session::DetachKeys),
    /// No stdin; stdout and stderr both go to this descriptor (a pipe the caller reads), which the
    /// monitor holds until it exits: a build step's output.
    Output(std::os::fd::OwnedFd),
}

/// The file name of the monitor binary, installed next to `berth`.
pub const MONITOR_BINARY: &str = "berth-monitor";

/// The monitor binary beside the running executable (`berth`, or the monitor itself). It is a program
/// of its own, not a mode of `berth`, because its processes live as long as what they serve — one per
/// container, and a network's DNS server: it carries only the runtime, not the registry client, the
/// builder or the CLI, so it maps and dirties a fraction of their memory.
/// (Whether it is there is only checked when starting it fails: no extra lookup on `run`'s path.)
pub(crate) fn monitor_binary() -> Result<std::path::PathBuf, RuntimeError> {
    let exe = std::env::current_exe().map_err(|e| io_err("locate the berth binary", e))?;
    Ok(exe.with_file_name(MONITOR_BINARY))
}

/// The error for a monitor binary that could not be started.
fn monitor_spawn_error(monitor: &Path, e: std::io::Error) -> RuntimeError {
    if e.kind() == std::io::ErrorKind::NotFound {
        let beside = monitor.parent().unwrap_or(monitor);
        return RuntimeError::Monitor(format!(
            "{} not found: it is installed beside berth, in {}",
            monitor.display(),
            beside.display()
        ));
    }
    RuntimeError::Monitor(format!("spawn {}: {e}", monitor.display()))
}

/// What the monitor tells the process that started it, one line each on the status pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// The container runs with this host PID.
    Started(i32),
    /// The container could not be started.
    Failed(i32, String),
    /// The container exited with this status (after any restarts the policy made).
    Exited(i32),
    /// The attached caller pressed the detach keys.
    Detached,
}

impl MonitorEvent {
    /// The wire form.
    pub fn to_line(&self) -> String {
        match self {
            MonitorEvent::Started(pid) => format!("started {pid}\n"),
            MonitorEvent::Failed(code, msg) => {
                format!("failed {code} {}\n", msg.replace('\n', " "))
            }
            MonitorEvent::Exited(code) => format!("exited {code}\n"),
            MonitorEvent::Detached => "detached\n".to_string(),
        }
    }

    /// Parses the wire form.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "started" => rest.parse().ok().map(MonitorEvent::Started),
            "exited" => rest.parse().ok().map(MonitorEvent::Exited),
            "detached" => Some(MonitorEvent::Detached),
            "failed" => {
                let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(MonitorEvent::Failed(code.parse().ok()?, msg.to_string()))
            }
            _ => None,
        }
    }
}

/// A started container: its PID, and for attached starts the pipe the monitor reports on.
pub struct Started {
    /// The container's init PID on the host.
    pub pid: i32,
    /// The monitor's PID.
    pub monitor_pid: i32,
    /// Remaining monitor events (exit, detach); None when detached.
    pub events: Option<BufReader<File>>,
    /// For `attach`: the monitor's socket, where window-size changes are announced. None: the monitor
    /// holds our terminal from the start and is sent SIGWINCH instead.
    pub control: Option<File>,
}

/// A monitor just spawned: its PID and the pipe it reports on.
struct SpawnedMonitor {
    pid: i32,
    events: BufReader<File>,
}

/// The monitor of a container about to be run, spawned before the store is even opened: it loads
/// and opens the store while the caller does, looks the image up and writes the record, then waits
/// on [`RECORD_FD`] to hear that the record is written (the end of the pipe, when the container was
/// not created, sends it away without a word). Passed to [`Engine::run`].
pub struct PendingRun {
    id: String,
    monitor: SpawnedMonitor,
    record_written: std::os::fd::OwnedFd,
}

impl PendingRun {
    /// Spawns the monitor of a fresh container ID for the store at `root` and the run directory at
    /// `runroot` (as given to [`Engine::open`]), with the caller's stdio as `stdio` says; `open_stdin`:
    /// the container keeps its stdin (`-i`).
    pub fn spawn(
        root: &Path,
        runroot: &Path,
        stdio: &StdioMode,
        open_stdin: bool,
    ) -> Result<Self, RuntimeError> {
        let root = std::path::absolute(root).map_err(|e| io_err(root.display(), e))?;
        let runroot = open_run_directory(runroot)?;
        let id = new_container_id();
        let (record_read, record_written) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe", e))?;
        let monitor = spawn_monitor(
            &root,
            &runroot,
            &id,
            stdio,
            open_stdin,
            Some(record_read.as_fd()),
        )?;
        Ok(Self {
            id,
            monitor,
            record_written,
        })
    }
}

/// Spawns the monitor of container `id` with the caller's stdio as `stdio` says; `record` is the
/// pipe it waits on before it reads the container's record (see [`PendingRun`]). `root` and
/// `runroot` are absolute: the monitor starts in `/`.
fn spawn_monitor(
    root: &Path,
    runroot: &Path,
    id: &str,
    stdio: &StdioMode,
    open_stdin: bool,
    record: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<SpawnedMonitor, RuntimeError> {
    crate::runroot::prepare(runroot).map_err(|e| io_err(runroot.display(), e))?;
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe", e))?;
    let monitor = monitor_binary()?;
    let keys_hex;
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--runroot"),
        runroot.as_os_str(),
    ];
    if record.is_some() {
        args.push(OsStr::new("--await-record"));
    }
    args.push(OsStr::new(id));
    let output;
    let stdio = match stdio {
        StdioMode::Detached => [ChildFd::Null, ChildFd::Null, ChildFd::Null],
        StdioMode::Inherit(keys) => {
            keys_hex = keys.to_hex();
            args.extend([OsStr::new("--attached"), OsStr::new(&keys_hex)]);
            let input = if open_stdin {
                ChildFd::Inherit
            } else {
                ChildFd::Null
            };
            [input, ChildFd::Inherit, ChildFd::Inherit]
        }
        StdioMode::Output(fd) => {
            keys_hex = crate::session::DetachKeys::default().to_hex();
            args.extend([OsStr::new("--attached"), OsStr::new(&keys_hex)]);
            output = fd.as_fd();
            [ChildFd::Null, ChildFd::Fd(output), ChildFd::Fd(output)]
        }
    };
    let mut passed = vec![(write_end.as_fd(), STATUS_FD)];
    if let Some(fd) = record {
        passed.push((fd, RECORD_FD));
    }
    // The monitor outlives us; we never wait for it (it is reaped by init after we exit).
    let pid = crate::spawn::spawn_session(&monitor, &args, stdio, &passed)
        .map_err(|e| monitor_spawn_error(&monitor, e))?;
    drop(passed);
    drop(write_end);
    Ok(SpawnedMonitor {
        pid,
        events: BufReader::new(File::from(read_end)),
    })
}

/// The run directory at `runroot`, created when missing (with its `containers`), as an absolute
/// path without symlinks.
fn open_run_directory(runroot: &Path) -> Result<PathBuf, RuntimeError> {
    fs::create_dir_all(runroot.join("containers")).map_err(|e| io_err(runroot.display(), e))?;
    fs::canonicalize(runroot).map_err(|e| io_err(runroot.display(), e))
}

/// A fresh container ID: 64 random hex digits.
fn new_container_id() -> String {
    format!(
        "{}{}",
        berth_store::random_hex(16),
        berth_store::random_hex(16)
    )
}

impl Engine {
    /// Opens the store at `root` and the run directory at `runroot`.
    pub fn open(root: &Path, runroot: &Path) -> Result<Self, RuntimeError> {
        let store = Store::open(root)?;
        let runroot = open_run_directory(runroot)?;
        Ok(Self { store, runroot })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The run directory.
    pub fn runroot(&self) -> &Path {
        &self.runroot
    }

    /// `runroot/containers/<id>`: the monitor's lock and sockets, the bundle.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.runroot.join("containers").join(id)
    }

    /// Where libcontainer keeps its state.
    pub fn libcontainer_root(&self) -> PathBuf {
        self.runroot.join("libcontainer")
    }

    /// The json-file log of a container.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.store.container_dir(id).join(format!("{id}-json.log"))
    }

    /// Creates a container (record, snapshot, volumes, hosts files) without starting it.
    pub fn create(&self, options: &RunOptions) -> Result<ContainerRecord, RuntimeError> {
        let record = self.create_with_id(options, new_container_id())?;
        self.emit(&Event::container(&record, "create", &[]));
        Ok(record)
    }

    fn create_with_id(
        &self,
        options: &RunOptions,
        id: String,
    ) -> Result<ContainerRecord, RuntimeError> {
        let image = self.store.image(&options.image)?;
        let explicit_name = options.name.is_some();
        let mut name = options
            .name
            .clone()
            .unwrap_or_else(|| crate::names::random_name(0));
        let mut record = options::build_record(options, &image, &id, &name)?;
        match record.host_config.network_mode.as_str() {
            "none" | "host" | "bridge" => {}
            mode => match mode.strip_prefix("container:") {
                Some(other) => {
                    self.container(other)?;
                }
                None => {
                    crate::network::find(self, mode)?;
                }
            },
        }
        for link in &record.host_config.links {
            let name = link.split(':').next().unwrap_or(link);
            if self.container(name).is_err() {
                return Err(RuntimeError::InvalidOption(format!(
                    "could not get container for {name}"
                )));
            }
        }
        record.mounts = self.resolve_mounts(options, &record)?;
        record.host_config.mounts = options
            .mounts
            .iter()
            .map(|m| options::parse_mount_flag(m))
            .chain(options.tmpfs.iter().map(|t| options::parse_tmpfs_flag(t)))
            .collect::<Result<_, _>>()?;
        self.store.snapshots().create_container(&id)?;
        let files = self.store.container_dir(&id);
        let result = (|| {
            fs::create_dir_all(&files).map_err(|e| io_err(files.display(), e))?;
            write_etc_files(self.store.root(), &files, &record)?;
            let mut attempt = 0;
            loop {
                match self.store.create_container(&record) {
                    Err(StoreError::NameConflict { .. }) if !explicit_name && attempt < 10 => {
                        attempt += 1;
                        name = crate::names::random_name(attempt);
                        record.name = name.clone();
                    }
                    other => return other.map_err(RuntimeError::from),
                }
            }
        })();
        if let Err(e) = result {
            let _ = self.store.snapshots().remove_container(&id);
            let _ = fs::remove_dir_all(&files);
            self.remove_anonymous_volumes(&record.mounts);
            return Err(e);
        }
        Ok(record)
    }

    /// Records an event in the store's event log (`berth events`).
    pub fn emit(&self, event: &Event) {
        crate::events::record(self.store.root(), event);
    }

    fn resolve_mounts(
        &self,
        options: &RunOptions,
        record: &ContainerRecord,
    ) -> Result<Vec<MountPoint>, RuntimeError> {
        let mut requests = Vec::new();
        for v in &options.volumes {
            requests.push((options::parse_volume_flag(v)?, true));
        }
        for m in &options.mounts {
            requests.push((options::parse_mount_flag(m)?, false));
        }
        for t in &options.tmpfs {
            requests.push((options::parse_tmpfs_flag(t)?, false));
        }
        let mut mounts: Vec<MountPoint> = Vec::new();
        for from in &options.volumes_from {
            let (name, mode) = from.split_once(':').unwrap_or((from.as_str(), ""));
            let other = self.store.container(name)?;
            for m in other.mounts.iter().filter(|m| m.kind != "tmpfs") {
                let mut m = m.clone();
                if mode == "ro" {
                    m.rw = false;
                    m.mode = "ro".into();
                }
                m.anonymous = false; // owned by the other container
                mounts.push(m);
            }
        }
        for (request, create_missing_bind) in requests {
            if mounts.iter().any(|m| m.destination == request.target) {
                return Err(RuntimeError::InvalidOption(format!(
                    "Duplicate mount point: {}",
                    request.target
                )));
            }
            let point = match request.kind.as_str() {
                "bind" => {
                    let source = PathBuf::from(&request.source);
                    if !source.exists() {
                        if !create_missing_bind {
                            return Err(RuntimeError::InvalidOption(format!(
                                "invalid mount config for type \"bind\": bind source path does not exist: {}",
                                request.source
                            )));
                        }
                        fs::create_dir_all(&source).map_err(|e| io_err(source.display(), e))?;
                    }
                    options::mount_point(&request, request.source.clone(), String::new(), false)
                }
                "volume" => {
                    let anonymous = request.source.is_empty();
                    let name = if anonymous {
                        format!(
                            "{}{}",
                            berth_store::random_hex(16),
                            berth_store::random_hex(16)
                        )
                    } else {
                        request.source.clone()
                    };
                    let (volume, created) =
                        self.store
                            .create_volume(&name, &Default::default(), anonymous)?;
                    if created {
                        self.emit(&Event::volume("create", &name));
                    }
                    options::mount_point(
                        &request,
                        volume.mountpoint.to_string_lossy().into_owned(),
                        name,
                        anonymous,
                    )
                }
                _ => options::mount_point(&request, String::new(), String::new(), false),
            };
            mounts.push(point);
        }
        // Image VOLUMEs the user did not cover become anonymous volumes.
        for target in record.config.volumes.keys() {
            if mounts.iter().any(|m| &m.destination == target) {
                continue;
            }
            let name = format!(
                "{}{}",
                berth_store::random_hex(16),
                berth_store::random_hex(16)
            );
            let (volume, _) = self.store.create_volume(&name, &Default::default(), true)?;
            self.emit(&Event::volume("create", &name));
            let request = berth_store::container::MountRequest {
                kind: "volume".into(),
                source: String::new(),
                target: target.clone(),
                read_only: false,
                options: Vec::new(),
            };
            mounts.push(options::mount_point(
                &request,
                volume.mountpoint.to_string_lossy().into_owned(),
                name,
                true,
            ));
        }
        Ok(mounts)
    }

    /// Removes the anonymous volumes among a removed container's mounts.
    pub(crate) fn remove_anonymous_volumes(&self, mounts: &[MountPoint]) {
        for m in mounts.iter().filter(|m| m.anonymous) {
            if self.store.remove_volume(&m.name).is_ok() {
                self.emit(&Event::volume("destroy", &m.name));
            }
        }
    }

    /// Takes the container's monitor lock (`runroot/containers/<id>/monitor.lock`), exclusively and
    /// without waiting: None when a monitor (or another holder) has it. A monitor holds it for its
    /// whole life; `cp` and friends hold it so a stopped container cannot be started underneath them.
    pub(crate) fn lock_monitor(&self, id: &str) -> Result<Option<File>, RuntimeError> {
        let dir = self.run_dir(id);
        fs::create_dir_all(&dir).map_err(|e| io_err(dir.display(), e))?;
        let path = dir.join("monitor.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(path.display(), e))?;
        #[allow(deprecated)]
        let taken = nix::fcntl::flock(
            lock.as_raw_fd(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        );
        Ok(taken.is_ok().then_some(lock))
    }

    /// Whether the container's monitor process is alive (it holds its lock for its whole life).
    pub fn monitor_alive(&self, id: &str) -> bool {
        let path = self.run_dir(id).join("monitor.lock");
        let Ok(file) = File::open(&path) else {
            return false;
        };
        #[allow(deprecated)]
        let locked = nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::LockSharedNonblock);
        locked.is_err()
    }

    /// Brings a record's state in line with reality: a container marked running whose monitor is gone
    /// (killed, or the machine rebooted) is recorded as exited, and what it left is cleaned up.
    fn reconcile(&self, record: ContainerRecord) -> Result<ContainerRecord, RuntimeError> {
        let live_states = [
            Status::Running,
            Status::Paused,
            Status::Restarting,
            Status::Removing,
        ];
        if !live_states.contains(&record.state.status) || self.monitor_alive(&record.id) {
            return Ok(record);
        }
        // The record may be stale (a listing read before its monitor finished or `rm` removed it):
        // look again now that the monitor is known to be gone.
        let record = self.store.container(&record.id)?;
        if !live_states.contains(&record.state.status) {
            return Ok(record);
        }
        self.cleanup_runtime(&record.id);
        crate::network::release_orphan(self, &record);
        let updated = self.store.update_container(&record.id, |r| {
            if live_states.contains(&r.state.status) && r.state.status != Status::Removing {
                r.state.status = Status::Exited;
                r.state.running = false;
                r.state.paused = false;
                r.state.restarting = false;
                r.state.pid = 0;
                r.state.exit_code = 137;
                r.state.error = "monitor process died".into();
                r.state.finished_at = berth_store::now_rfc3339();
                r.network_settings = Default::default();
            }
            Ok::<(), ()>(())
        })?;
        Ok(updated.unwrap_or(record))
    }

    /// Kills what is left of a container whose monitor died and releases its cgroup and mounts.
    fn cleanup_runtime(&self, id: &str) {
        let state_dir = self.libcontainer_root().join(id);
        if state_dir.exists() {
            if let Ok(mut container) = libcontainer::container::Container::load(state_dir.clone()) {
                let _ = container.kill(Signal::SIGKILL, true);
                let _ = container.delete(true);
            }
            let _ = fs::remove_dir_all(&state_dir);
        }
        let _ = self.store.snapshots().unmount_container(id);
    }

    /// Removes what a `create` killed half-way left behind: snapshot and file directories of containers
    /// that have no record. Only directories older than a minute go, so a `create` in progress (its
    /// directories come before its record) is never touched. Working snapshots of builders that died
    /// go too, with what killed processes left in `tmp/` (see `Store::remove_abandoned_work`). Returns how
    /// many were removed.
    pub fn remove_orphans(&self) -> Result<usize, RuntimeError> {
        let known: std::collections::HashSet<String> =
            self.store.containers()?.into_iter().map(|r| r.id).collect();
        let snapshots = self.store.snapshots();
        let mut ids: Vec<String> = Vec::new();
        for dir in [
            snapshots.container_dir("x").parent().map(Path::to_path_buf),
            Some(self.store.root().join("containers")),
        ]
        .into_iter()
        .flatten()
        {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(60));
                let is_id = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
                if is_id && old && !known.contains(&name) && !ids.contains(&name) {
                    ids.push(name);
                }
            }
        }
        for id in &ids {
            let _ = snapshots.remove_container(id);
            let _ = fs::remove_dir_all(self.store.container_dir(id));
        }
        Ok(ids.len() + self.store.remove_abandoned_work()?)
    }

    /// A container by name or ID, with its state reconciled.
    pub fn container(&self, name_or_id: &str) -> Result<ContainerRecord, RuntimeError> {
        let record = self.store.container(name_or_id)?;
        self.reconcile(record)
    }

    /// All containers, newest first, with states reconciled. One removed by another process while
    /// this looks is left out, not an error.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let mut out = Vec::new();
        for record in self.store.containers()? {
            match self.reconcile(record) {
                Ok(r) => out.push(r),
                Err(RuntimeError::Store(StoreError::ContainerNotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Starts a created or exited container by spawning its monitor, and waits until it runs (or failed).
    pub fn start(&self, name_or_id: &str, stdio: StdioMode) -> Result<Started, RuntimeError> {
        let record = self.container(name_or_id)?;
        self.await_monitor_finish(&record.id);
        match record.state.status {
            Status::Running | Status::Restarting if self.monitor_alive(&record.id) => {
                return Ok(Started {
                    pid: record.state.pid,
                    monitor_pid: record.state.monitor_pid,
                    events: None,
                    control: None,
                })
            }
            Status::Paused => {
                return Err(RuntimeError::InvalidOption(
                    "cannot start a paused container, try unpause instead".to_string(),
                ))
            }
            Status::Removing | Status::Dead => {
                return Err(RuntimeError::InvalidOption(format!(
                    "container {} is marked for removal and cannot be started",
                    record.id
                )))
            }
            _ => {}
        }
        // A new start is not stopped by the user; cleared here, before the monitor exists, so that a
        // `stop` racing the monitor's start-up is not undone by it.
        // (Only when set: a fresh `run` pays no extra write.)
        // A start by the user also begins a new count of restarts, as Docker's.
        if record.state.stopped_by_user || record.restart_count > 0 {
            self.store
                .update_container(&record.id, |r| {
                    r.state.stopped_by_user = false;
                    r.restart_count = 0;
                    Ok::<(), ()>(())
                })?
                .map_err(|_| RuntimeError::Io("update".into()))?;
        }
        let monitor = spawn_monitor(
            self.store.root(),
            &self.runroot,
            &record.id,
            &stdio,
            record.config.open_stdin,
            None,
        )?;
        Self::await_started(monitor)
    }

    /// Creates a container and starts it, as `run` does, with the monitor `pending` spawned for it:
    /// the monitor waits on [`RECORD_FD`] until the container's record is written here. A container
    /// whose monitor never came up is removed again when it was to be removed on exit. `pending`
    /// must have been spawned for this engine's store and run directory.
    pub fn run(
        &self,
        options: &RunOptions,
        pending: PendingRun,
    ) -> Result<(ContainerRecord, Started), RuntimeError> {
        let PendingRun {
            id,
            monitor,
            record_written,
        } = pending;
        // An error drops the pipe unwritten: the monitor leaves without a word.
        let record = self.create_with_id(options, id)?;
        File::from(record_written)
            .write_all(b"1")
            .map_err(|e| io_err("tell the monitor", e))?;
        // Once the monitor is on its way: the event log is not on the way of a start.
        self.emit(&Event::container(&record, "create", &[]));
        match Self::await_started(monitor) {
            Ok(started) => Ok((record, started)),
            Err(e) => {
                if record.host_config.auto_remove {
                    let _ = self.remove(&record.id, true, true);
                }
                Err(e)
            }
        }
    }

    /// Waits until a spawned monitor has started its container (or failed to).
    fn await_started(monitor: SpawnedMonitor) -> Result<Started, RuntimeError> {
        let SpawnedMonitor {
            pid: monitor_pid,
            mut events,
        } = monitor;
        let mut line = String::new();
        loop {
            line.clear();
            let n = events
                .read_line(&mut line)
                .map_err(|e| io_err("read monitor status", e))?;
            if n == 0 {
                return Err(RuntimeError::Monitor(
                    "exited before starting the container".into(),
                ));
            }
            match MonitorEvent::parse(&line) {
                Some(MonitorEvent::Started(pid)) => {
                    return Ok(Started {
                        pid,
                        monitor_pid,
                        events: Some(events),
                        control: None,
                    })
                }
                Some(MonitorEvent::Failed(code, msg)) => {
                    return Err(match code {
                        127 => RuntimeError::CommandNotFound(msg),
                        126 => RuntimeError::CommandNotExecutable(msg),
                        _ => RuntimeError::Reported(msg),
                    })
                }
                _ => continue,
            }
        }
    }

    /// Sends a signal to a running container's init process.
    pub fn kill(&self, name_or_id: &str, signal: Signal) -> Result<ContainerRecord, RuntimeError> {
        let record = self.container(name_or_id)?;
        if !record.state.running || record.state.pid <= 0 {
            return Err(RuntimeError::NotRunning(record.id[..12].to_string()));
        }
        if signal == Signal::SIGKILL || signal == Signal::SIGTERM {
            self.mark_stopped_by_user(&record.id)?;
        }
        if record.state.paused && signal == Signal::SIGKILL {
            // A frozen process cannot die; thaw it so SIGKILL is delivered.
            let _ = self.set_paused(&record.id, false);
        }
        self.signal_init(&record, signal)
            .map_err(|e| io_err("kill", e))?;
        Ok(record)
    }

    /// Sends `signal` to the container's init (the PID in `record`) and records Docker's `kill`
    /// event when it was delivered.
    fn signal_init(&self, record: &ContainerRecord, signal: Signal) -> nix::Result<()> {
        kill(Pid::from_raw(record.state.pid), signal)?;
        self.emit(&Event::container(
            record,
            "kill",
            &[("signal", (signal as i32).to_string())],
        ));
        Ok(())
    }

    fn mark_stopped_by_user(&self, id: &str) -> Result<(), RuntimeError> {
        self.store
            .update_container(id, |r| {
                r.state.stopped_by_user = true;
                Ok::<(), ()>(())
            })?
            .map_err(|_| RuntimeError::Io("update".into()))?;
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after the timeout (default 10 s, or the
    /// container's `--stop-timeout`). Returns once the monitor has recorded the exit.
    pub fn stop(
        &self,
        name_or_id: &str,
        timeout: Option<i64>,
    ) -> Result<ContainerRecord, RuntimeError> {
        let record = self.container(name_or_id)?;
        self.mark_stopped_by_user(&record.id)?;
        if !self.monitor_alive(&record.id) {
            return Ok(record);
        }
        let timeout = timeout.or(record.config.stop_timeout).unwrap_or(10);
        if record.state.paused {
            let _ = self.set_paused(&record.id, false);
        }
        let signal = if record.config.stop_signal.is_empty() {
            Signal::SIGTERM
        } else {
            crate::signal::parse_signal(&record.config.stop_signal)?
        };
        // A monitor still starting the container has no PID to signal yet: wait (briefly) for it.
        let mut record = record;
        let started = Instant::now();
        while record.state.pid <= 0
            && self.monitor_alive(&record.id)
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
            record = self.store.container(&record.id)?;
        }
        if record.state.pid > 0 {
            let _ = self.signal_init(&record, signal);
        }
        let deadline = Duration::from_secs(timeout.max(0) as u64);
        if !self.wait_exit_recorded(&record.id, Some(deadline)) {
            let current = self.store.container(&record.id)?;
            if current.state.pid > 0 {
                let _ = self.signal_init(&current, Signal::SIGKILL);
            }
            self.wait_exit_recorded(&record.id, Some(Duration::from_secs(30)));
        }
        self.emit(&Event::container(&record, "stop", &[]));
        Ok(self.container(&record.id).unwrap_or(record))
    }

    /// Waits until the monitor of `id` exits (lock released); false on timeout.
    fn wait_monitor_exit(&self, id: &str, timeout: Option<Duration>) -> bool {
        wait_while(timeout, || self.monitor_alive(id))
    }

    /// Waits until the container's monitor has recorded its final exit (or is gone); false on timeout.
    fn wait_exit_recorded(&self, id: &str, timeout: Option<Duration>) -> bool {
        wait_while(timeout, || {
            !self.exit_recorded(id) && self.monitor_alive(id)
        })
    }

    /// Whether the monitor wrote the container's final exit code into its lock file. It does before it
    /// reports the exit; a new monitor empties the file once it holds the lock.
    fn exit_recorded(&self, id: &str) -> bool {
        fs::metadata(self.run_dir(id).join("monitor.lock")).is_ok_and(|m| m.len() > 0)
    }

    /// Waits while the container's monitor is finishing: it has recorded and reported the container's
    /// exit and is still releasing what the container held, the unmount of its root filesystem above
    /// all, which syncs the filesystem under the store. Commands that need the container stopped
    /// (start, rm, prune, cp into a stopped one) call this first, so that they see it as the stopped
    /// container it is rather than as one whose monitor is alive.
    pub fn await_monitor_finish(&self, id: &str) {
        wait_while(Some(MONITOR_FINISH_TIMEOUT), || {
            self.exit_recorded(id) && self.monitor_alive(id)
        });
    }

    /// Blocks until a container is not running, as `docker wait`, and returns its exit code.
    pub fn wait(&self, name_or_id: &str) -> Result<i32, RuntimeError> {
        let record = self.container(name_or_id)?;
        let path = self.run_dir(&record.id).join("monitor.lock");
        let mut code_from_monitor = None;
        if let Ok(mut file) = File::open(&path) {
            // Blocks while the monitor holds its exclusive lock; then the file holds the exit code (it stays
            // readable through our fd even if `--rm` unlinked it meanwhile).
            #[allow(deprecated)]
            let _ = nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::LockShared);
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut file, &mut text);
            code_from_monitor = text.trim().parse::<i32>().ok();
        }
        match self.store.container(&record.id) {
            Ok(r) => Ok(self.reconcile(r)?.state.exit_code),
            Err(StoreError::ContainerNotFound(_)) => {
                Ok(code_from_monitor.unwrap_or(record.state.exit_code))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a container: refused while running unless `force` (then killed first); with `volumes`, its
    /// anonymous volumes go too.
    pub fn remove(
        &self,
        name_or_id: &str,
        force: bool,
        volumes: bool,
    ) -> Result<ContainerRecord, RuntimeError> {
        let record = self.container(name_or_id)?;
        self.await_monitor_finish(&record.id);
        if self.monitor_alive(&record.id) {
            if !force {
                return Err(RuntimeError::RemoveRunning(record.name.clone()));
            }
            self.mark_stopped_by_user(&record.id)?;
            if record.state.paused {
                let _ = self.set_paused(&record.id, false);
            }
            if record.state.pid > 0 {
                let _ = kill(Pid::from_raw(record.state.pid), Signal::SIGKILL);
            }
            if let Ok(r) = self.store.container(&record.id) {
                if r.state.pid > 0 {
                    let _ = kill(Pid::from_raw(r.state.pid), Signal::SIGKILL);
                }
            }
            self.wait_monitor_exit(&record.id, Some(Duration::from_secs(30)));
        }
        self.remove_stopped(&record, volumes)?;
        Ok(record)
    }

    /// Deletes a stopped container's files and record (used by `rm` and by the monitor for `--rm`).
    pub fn remove_stopped(
        &self,
        record: &ContainerRecord,
        volumes: bool,
    ) -> Result<(), RuntimeError> {
        let discarded = self.discard_stopped(record, volumes);
        self.store.empty_trash();
        discarded
    }

    /// Removes a stopped container as far as anyone can see (record, name, mounts, volumes with
    /// `volumes`) but only moves its directories to the store's trash: the caller empties it with
    /// `store().empty_trash()` when it is off the critical path. The monitor of a `--rm` container
    /// reports the exit once the container is gone and deletes its files after.
    pub fn discard_stopped(
        &self,
        record: &ContainerRecord,
        volumes: bool,
    ) -> Result<(), RuntimeError> {
        self.cleanup_runtime(&record.id);
        let snapshots = self.store.snapshots();
        snapshots.unmount_container(&record.id)?;
        self.store.discard(&[
            &snapshots.container_dir(&record.id),
            &self.store.container_dir(&record.id),
        ])?;
        self.store.delete_container(&record.id)?;
        self.emit(&Event::container(record, "destroy", &[]));
        if volumes {
            self.remove_anonymous_volumes(&record.mounts);
        }
        // A monitor removing its own container still holds the lock fd; unlinking is fine.
        let _ = fs::remove_dir_all(self.run_dir(&record.id));
        Ok(())
    }

    /// Freezes or thaws a running container's processes (cgroup freezer). The record is read here,
    /// so that a caller holding an older one (read before its own freeze) cannot be refused.
    pub fn set_paused(&self, name_or_id: &str, paused: bool) -> Result<(), RuntimeError> {
        let record = &self.container(name_or_id)?;
        if !record.state.running {
            return Err(RuntimeError::NotRunning(record.id[..12].to_string()));
        }
        let mut container =
            libcontainer::container::Container::load(self.libcontainer_root().join(&record.id))
                .map_err(|e| RuntimeError::Start(e.to_string()))?;
        if paused {
            if record.state.paused {
                return Err(RuntimeError::InvalidOption(format!(
                    "container {} is already paused",
                    &record.id[..12]
                )));
            }
            container
                .pause()
                .map_err(|e| RuntimeError::Start(format!("pause: {e}")))?;
        } else {
            if !record.state.paused {
                return Err(RuntimeError::InvalidOption(format!(
                    "container {} is not paused",
                    &record.id[..12]
                )));
            }
            container
                .resume()
                .map_err(|e| RuntimeError::Start(format!("unpause: {e}")))?;
        }
        self.store
            .update_container(&record.id, |r| {
                r.state.paused = paused;
                r.state.status = if paused {
                    Status::Paused
                } else {
                    Status::Running
                };
                Ok::<(), ()>(())
            })?
            .map_err(|_| RuntimeError::Io("update".into()))?;
        self.emit(&Event::container(
            record,
            if paused { "pause" } else { "unpause" },
            &[],
        ));
        Ok(())
    }

    /// Restarts a container: stop (if running) then start detached.
    pub fn restart(
        &self,
        name_or_id: &str,
        timeout: Option<i64>,
    ) -> Result<ContainerRecord, RuntimeError> {
        let record = self.container(name_or_id)?;
        if self.monitor_alive(&record.id) {
            self.stop(&record.id, timeout)?;
        }
        self.start(&record.id, StdioMode::Detached)?;
        self.emit(&Event::container(&record, "restart", &[]));
        self.container(&record.id)
    }
}

/// How long a command waits for a monitor to finish releasing an exited container before it goes on
/// (and finds the container busy). The unmount's sync is all that can take long.
const MONITOR_FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `busy` (1 ms, doubling up to 50 ms) until it is false: true then, false if `timeout` passed.
fn wait_while(timeout: Option<Duration>, mut busy: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    while busy() {
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    true
}

/// A host file the container gets a copy of; a missing one gives an empty copy.
fn host_file(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Writes /etc/hostname, /etc/hosts and /etc/resolv.conf for the container into its files dir.
fn write_etc_files(
    root: &Path,
    files: &Path,
    record: &ContainerRecord,
) -> Result<(), RuntimeError> {
    let write = |name: &str, content: String| {
        let path = files.join(name);
        fs::write(&path, content).map_err(|e| io_err(path.display(), e))
    };
    let hostname = &record.config.hostname;
    write("hostname", format!("{hostname}\n"))?;
    let hc = &record.host_config;
    let mut hosts = if hc.network_mode == "host" {
        host_file("/etc/hosts")
    } else {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
        )
    };
    for entry in &hc.extra_hosts {
        if let Some((name, ip)) = entry.split_once(':').or_else(|| entry.split_once('=')) {
            // Docker's `host-gateway`: the host as containers reach it, the default bridge's gateway.
            let ip = if ip == "host-gateway" {
                berth_net::Network::default_bridge(root)
                    .map_err(|e| RuntimeError::Io(format!("--add-host {entry}: {e}")))?
                    .gateway
                    .to_string()
            } else {
                ip.to_string()
            };
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    write("hosts", hosts)?;
    let mut resolv = host_file("/etc/resolv.conf");
    // On a user-defined network the network's DNS server (at the gateway) resolves container names and
    // relays the rest to the host's resolvers.
    if !matches!(hc.network_mode.as_str(), "none" | "host" | "bridge")
        && !hc.network_mode.starts_with("container:")
    {
        if let Ok(Some(n)) = berth_net::Network::load(&root.join("networks"), &hc.network_mode) {
            let kept: Vec<&str> = resolv
                .lines()
                .filter(|l| !l.starts_with("nameserver"))
                .collect();
            resolv = format!("nameserver {}\n{}\n", n.gateway, kept.join("\n"));
        }
    }
    if !hc.dns.is_empty() || !hc.dns_search.is_empty() {
        let mut lines: Vec<String> = resolv
            .lines()
            .filter(|l| {
                !(l.starts_with("nameserver") && !hc.dns.is_empty()
                    || (l.starts_with("search") || l.starts_with("domain"))
                        && !hc.dns_search.is_empty())
            })
            .map(str::to_string)
            .collect();
        for server in &hc.dns {
            lines.push(format!("nameserver {server}"));
        }
        if !hc.dns_search.is_empty() {
            lines.push(format!("search {}", hc.dns_search.join(" ")));
        }
        resolv = lines.join("\n") + "\n";
    }
    write("resolv.conf", resolv)?;
    Ok(())
}
