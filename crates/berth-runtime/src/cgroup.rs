//! Cgroup paths and readings of a container (v1, v2 and hybrid hosts).

use std::fs;
use std::path::{Path, PathBuf};

/// The cgroup path Berth gives a container (relative to each hierarchy's root).
pub fn cgroups_path(id: &str) -> String {
    format!("/berth/{id}")
}

/// Whether the host uses the unified (v2-only) hierarchy.
pub fn is_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn v1_dir(controller: &str, id: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(cgroups_path(id).trim_start_matches('/'))
}

fn v2_dir(id: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup").join(cgroups_path(id).trim_start_matches('/'))
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// How many processes the OOM killer killed in the container's cgroup (read before the cgroup is removed).
pub fn oom_kills(id: &str) -> u64 {
    if is_unified() {
        read_key(&v2_dir(id).join("memory.events"), "oom_kill").unwrap_or(0)
    } else {
        read_key(&v1_dir("memory", id).join("memory.oom_control"), "oom_kill").unwrap_or(0)
    }
}

/// Resource usage of a running container, for `stats`.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Total CPU time in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, bytes (page cache excluded as Docker does).
    pub memory: u64,
    /// Memory limit in bytes (0 = none).
    pub memory_limit: u64,
    /// Number of processes.
    pub pids: u64,
    /// Bytes read from block devices.
    pub block_read: u64,
    /// Bytes written to block devices.
    pub block_write: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads a container's resource usage from its cgroups.
pub fn usage(id: &str) -> Usage {
    let mut u = Usage::default();
    if is_unified() {
        let dir = v2_dir(id);
        u.cpu_ns = read_key(&dir.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000;
        let current = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let inactive = read_key(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
        u.memory = current.saturating_sub(inactive);
        u.memory_limit = read_u64(&dir.join("memory.max")).unwrap_or(0);
        u.pids = read_u64(&dir.join("pids.current")).unwrap_or(0);
        if let Ok(text) = fs::read_to_string(dir.join("io.stat")) {
            for field in text.split_whitespace() {
                if let Some(v) = field.strip_prefix("rbytes=") {
                    u.block_read += v.parse().unwrap_or(0);
                } else if let Some(v) = field.strip_prefix("wbytes=") {
                    u.block_write += v.parse().unwrap_or(0);
                }
            }
        }
    } else {
        u.cpu_ns = read_u64(&v1_dir("cpuacct", id).join("cpuacct.usage")).unwrap_or(0);
        let mem = v1_dir("memory", id);
        let usage = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
        let inactive = read_key(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
        u.memory = usage.saturating_sub(inactive);
        let limit = read_u64(&mem.join("memory.limit_in_bytes")).unwrap_or(0);
        // v1 reports "no limit" as a huge page-aligned number.
        u.memory_limit = if limit >= (1u64 << 62) { 0 } else { limit };
        u.pids = read_u64(&v1_dir("pids", id).join("pids.current")).unwrap_or(0);
        if let Ok(text) =
            fs::read_to_string(v1_dir("blkio", id).join("blkio.throttle.io_service_bytes"))
        {
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 3 {
                    let v: u64 = f[2].parse().unwrap_or(0);
                    match f[1] {
                        "Read" => u.block_read += v,
                        "Write" => u.block_write += v,
                        _ => {}
                    }
                }
            }
        }
    }
    u
}

/// The freezer state file path for pause/unpause checks.
pub fn is_frozen(id: &str) -> bool {
    if is_unified() {
        read_u64(&v2_dir(id).join("cgroup.freeze")) == Some(1)
    } else {
        fs::read_to_string(v1_dir("freezer", id).join("freezer.state"))
            .map(|s| s.trim() == "FROZEN")
            .unwrap_or(false)
    }
}

/// Host PIDs of every process in the container's cgroup.
pub fn pids(id: &str) -> Vec<i32> {
    let path = if is_unified() {
        v2_dir(id)
    } else {
        v1_dir("pids", id)
    };
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The files through which a single-threaded process joins the cgroups of process `pid`, in every
/// hierarchy where it is in another cgroup: writing `0` to each moves the writer, as `exec` needs.
/// That is `tasks` in a v1 hierarchy, where a thread moving itself is the one move made without the
/// kernel's global threadgroup lock (a pid written to `cgroup.procs` waits for an RCU grace period,
/// see vendor/README.md), and `cgroup.procs` in the v2 tree, which has no `tasks`. Hierarchies where
/// the caller already is in `pid`'s cgroup are left out: even a move to where a process is takes
/// that lock.
pub fn join_files_of(pid: i32) -> Vec<PathBuf> {
    let membership = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cgroup_mounts = cgroup_mounts();
    let mut files = Vec::new();
    for line in membership.lines().filter(|l| !own.lines().any(|o| o == *l)) {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (mount, file) = if controllers.is_empty() {
            (
                cgroup_mounts.iter().find(|(t, _, _)| t == "cgroup2"),
                "cgroup.procs",
            )
        } else {
            // "name=systemd" style hierarchies carry the name in the super options too.
            let wanted: Vec<&str> = controllers.split(',').collect();
            let mount = cgroup_mounts.iter().find(|(t, _, opts)| {
                t == "cgroup" && wanted.iter().all(|w| opts.iter().any(|o| o == w))
            });
            (mount, "tasks")
        };
        if let Some((_, mount_point, _)) = mount {
            let file = Path::new(mount_point)
                .join(path.trim_start_matches('/'))
                .join(file);
            if file.exists() && !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

/// The container's view of its cgroups at `/sys/fs/cgroup`, as (host source, container destination)
/// bind mounts, Docker's (runc's) layout: on a v2 host its own cgroup directory is the whole tree;
/// on a v1 or hybrid host each controller hierarchy shows the container's own directory under the
/// hierarchy's name, and a co-mounted one (`cpu,cpuacct`) under each controller's name too, where
/// runc makes links. Named hierarchies (`name=systemd`) and a hybrid host's `unified` tree are left
/// out: the container has no cgroup of its own there. The directories are made by the runtime's
/// cgroup manager before the container's mounts, so they need not exist yet.
pub fn container_view(id: &str) -> Vec<(PathBuf, String)> {
    if is_unified() {
        return vec![(v2_dir(id), "/sys/fs/cgroup".to_string())];
    }
    let mut view = Vec::new();
    for (fstype, mount_point, super_opts) in cgroup_mounts() {
        let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if fstype != "cgroup"
            || name.contains('/')
            || super_opts.iter().any(|o| o.starts_with("name="))
        {
            continue;
        }
        let source = v1_dir(name, id);
        if name.contains(',') {
            for controller in name.split(',') {
                view.push((source.clone(), format!("/sys/fs/cgroup/{controller}")));
            }
        }
        view.push((source, mount_point.clone()));
    }
    view
}

/// Every cgroup filesystem mount: (fstype `cgroup`/`cgroup2`, mount point, super options — the v1
/// controllers or `name=…`), from one read of mountinfo.
fn cgroup_mounts() -> Vec<(String, String, Vec<String>)> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // mountinfo: id parent major:minor root mount-point options... - fstype source super-options
    mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_string();
            let super_opts: Vec<String> = r.nth(1)?.split(',').map(str::to_string).collect();
            let mount_point = left.split_whitespace().nth(4)?.to_string();
            fstype
                .starts_with("cgroup")
                .then_some((fstype, mount_point, super_opts))
        })
        .collect()
}

/// Removes the cgroups of a container whose init has exited, in every hierarchy: one pass over
/// mountinfo instead of libcontainer's per-controller lookups (which cost milliseconds per `run`).
/// Processes still in them (left over by an exec) are killed first.
pub fn remove(id: &str) {
    let relative = cgroups_path(id);
    for (_, mount, _) in cgroup_mounts() {
        let dir = Path::new(&mount).join(relative.trim_start_matches('/'));
        if !dir.is_dir() {
            continue;
        }
        for attempt in 0..50 {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) if attempt < 49 => {
                    for pid in fs::read_to_string(dir.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse::<i32>().ok())
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(_) => break,
            }
        }
    }
}
