//! The OCI runtime spec of a container, built from its record (image defaults already merged at create) and
//! Docker's defaults: namespaces, capabilities, mounts, masked paths, devices, resources.

use std::path::{Path, PathBuf};

use berth_store::container::{ContainerRecord, DeviceMapping, HostConfig, MountPoint};
use serde_json::{json, Value};

use crate::error::RuntimeError;
use crate::user::resolve_user;

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows (for `--privileged` and `--cap-add ALL`).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Normalises a capability name (`net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN`) to `CAP_NET_ADMIN`, or refuses it.
pub fn normalize_capability(name: &str) -> Result<String, RuntimeError> {
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(RuntimeError::InvalidOption(format!(
            "invalid capability: {name}"
        )))
    }
}

/// The effective capability set: Docker's defaults (or all, when privileged), plus adds, minus drops.
pub fn capabilities(record: &ContainerRecord) -> Result<Vec<String>, RuntimeError> {
    let hc = &record.host_config;
    let mut caps: Vec<String> = if hc.privileged {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    for add in &hc.cap_add {
        let add = normalize_capability(add)?;
        if add == "ALL" {
            caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        } else if !caps.contains(&add) {
            caps.push(add);
        }
    }
    for drop in &hc.cap_drop {
        let drop = normalize_capability(drop)?;
        if drop == "ALL" {
            caps.clear();
        } else {
            caps.retain(|c| c != &drop);
        }
    }
    caps.sort();
    Ok(caps)
}

/// Where the files Berth writes for a container live and are mounted from.
pub struct SpecPaths<'a> {
    /// The mounted overlay root filesystem.
    pub rootfs: &'a Path,
    /// `containers/<id>/` with hosts, hostname, resolv.conf.
    pub files: &'a Path,
    /// `--network container:<other>`: that container's network namespace to join.
    pub network_namespace: Option<&'a Path>,
}

/// Where `--init`'s init is mounted in the container (Docker's path).
pub const INIT_PATH: &str = "/sbin/docker-init";

/// The static init binary for `--init`: `BERTH_INIT` if set, else Debian's `tini-static` (package
/// `tini`) or an installed `docker-init`. It must be static: it runs inside the container's rootfs.
fn init_binary() -> Result<PathBuf, RuntimeError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("BERTH_INIT") {
        Some(path) => vec![PathBuf::from(path)],
        None => [
            "/usr/bin/tini-static",
            "/usr/libexec/docker/docker-init",
            "/usr/bin/docker-init",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        RuntimeError::InvalidOption(
            "--init needs a static init binary: install tini (apt-get install tini) or set BERTH_INIT"
                .into(),
        )
    })
}

/// The process arguments: entrypoint then command, as Docker combines them at create.
pub fn process_args(record: &ContainerRecord) -> Vec<String> {
    let mut args = record.config.entrypoint.clone().unwrap_or_default();
    args.extend(record.config.cmd.clone().unwrap_or_default());
    args
}

/// Builds the OCI runtime spec (config.json) of a container.
pub fn build_spec(record: &ContainerRecord, paths: &SpecPaths<'_>) -> Result<Value, RuntimeError> {
    let config = &record.config;
    let hc = &record.host_config;
    let mut args = process_args(record);
    if args.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    let init = if hc.init {
        let binary = init_binary()?;
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
        Some(binary)
    } else {
        None
    };
    let mut user = resolve_user(paths.rootfs, &config.user)?;
    for gid in crate::user::resolve_groups(paths.rootfs, &hc.group_add)? {
        if !user.additional_gids.contains(&gid) {
            user.additional_gids.push(gid);
        }
    }
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.insert(0, format!("HOSTNAME={}", config.hostname));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    if config.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let caps = capabilities(record)?;
    let cwd = if config.working_dir.is_empty() {
        "/".to_string()
    } else {
        config.working_dir.clone()
    };
    // Docker creates a missing working directory in the container.
    let cwd_host = crate::rootfs::resolve_in_root(paths.rootfs, Path::new(&cwd))
        .map_err(|e| RuntimeError::Io(format!("working directory {cwd}: {e}")))?;
    if !cwd_host.exists() {
        std::fs::create_dir_all(&cwd_host)
            .map_err(|e| RuntimeError::Io(format!("create working directory {cwd}: {e}")))?;
        let _ = std::os::unix::fs::chown(&cwd_host, Some(user.uid), Some(user.gid));
    }
    let no_new_privileges = hc.security_opt.iter().any(|o| {
        let o = o.replace('=', ":");
        o == "no-new-privileges" || o == "no-new-privileges:true"
    });

    let mut process = json!({
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
    });
    // Only present when true: libcontainer 0.7 treats any present value (even false) as "load seccomp after
    // dropping capabilities", which fails without CAP_SYS_ADMIN.
    if no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    if !hc.ulimits.is_empty() {
        // Only what the user asks for: raising a limit fails without CAP_SYS_RESOURCE, so Berth sets none by default.
        let rlimits: Vec<Value> = hc
            .ulimits
            .iter()
            .map(|u| {
                // -1 (unlimited) is RLIM_INFINITY; the spec's limits are unsigned.
                let limit = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
                json!({"type": format!("RLIMIT_{}", u.name.to_ascii_uppercase()), "soft": limit(u.soft), "hard": limit(u.hard)})
            })
            .collect();
        process["rlimits"] = Value::Array(rlimits);
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if hc.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "nodev", "mode=755"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    // /dev/shm: the container's own tmpfs (64 MiB unless --shm-size), or the host's with --ipc host.
    if hc.ipc_mode == "host" {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "nosuid", "noexec", "nodev"]}));
    } else {
        let size = if hc.shm_size > 0 {
            hc.shm_size
        } else {
            berth_store::container::DEFAULT_SHM_SIZE
        };
        mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={size}")]}));
    }
    // The container's own cgroups, read-only (Docker's default): programs that size themselves by
    // their limits (JVMs, Go and .NET runtimes) read them there. Bind mounts rather than the spec's
    // `cgroup` mount type, which libcontainer 0.7 mounts writable on v1 hosts.
    let cgroup_mode = if hc.privileged { "rw" } else { "ro" };
    for (source, destination) in crate::cgroup::container_view(&record.id) {
        mounts.push(json!({"destination": destination, "type": "bind", "source": source, "options": ["bind", cgroup_mode, "nosuid", "noexec", "nodev"]}));
    }
    for (file, dest) in [
        ("hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        let source = paths.files.join(file);
        if source.exists() && !user_mounts_cover(&record.mounts, dest) {
            mounts.push(json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate"]}));
        }
    }
    for m in &record.mounts {
        mounts.push(mount_json(m));
    }
    if let Some(binary) = init {
        mounts.push(json!({"destination": INIT_PATH, "type": "bind", "source": binary, "options": ["bind", "ro", "nosuid", "nodev"]}));
    }

    let mut namespaces = vec![json!({"type": "uts"}), json!({"type": "mount"})];
    if hc.pid_mode != "host" {
        namespaces.push(json!({"type": "pid"}));
    }
    if hc.ipc_mode != "host" {
        namespaces.push(json!({"type": "ipc"}));
    }
    match paths.network_namespace {
        Some(path) => namespaces.push(json!({"type": "network", "path": path})),
        None if hc.network_mode != "host" => namespaces.push(json!({"type": "network"})),
        None => {}
    }

    let mut resources = limits(hc);
    let mut allowed = device_rules(hc.privileged);
    let devices = device_nodes(&hc.devices)?;
    if let Some(rules) = allowed.as_array_mut() {
        rules.extend(devices.iter().map(|(_, rule)| rule.clone()));
    }
    resources["devices"] = allowed;

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": crate::cgroup::cgroups_path(&record.id),
    });
    if !devices.is_empty() {
        linux["devices"] = Value::Array(devices.into_iter().map(|(node, _)| node).collect());
    }
    if !hc.sysctls.is_empty() {
        linux["sysctl"] = json!(hc.sysctls);
    }
    if !hc.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if let Some(seccomp) = crate::seccomp::profile_for(record)? {
        linux["seccomp"] = seccomp;
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": paths.rootfs, "readonly": hc.readonly_rootfs},
        "hostname": config.hostname,
        "mounts": mounts,
        "linux": linux,
    }))
}

/// The resource limits of a container's cgroups (memory, CPU, pids) in the OCI spec's form: the
/// spec's `linux.resources` less the device rules, and what `update` applies to a running container.
pub fn limits(hc: &HostConfig) -> Value {
    let mut resources = json!({});
    if hc.memory > 0 {
        let swap = match hc.memory_swap {
            0 => hc.memory * 2,
            -1 => -1,
            s => s,
        };
        resources["memory"] = json!({"limit": hc.memory, "swap": swap});
    }
    let mut cpu = serde_json::Map::new();
    if hc.nano_cpus > 0 {
        cpu.insert("period".into(), json!(100_000u64));
        cpu.insert(
            "quota".into(),
            json!(hc.nano_cpus * 100_000 / 1_000_000_000),
        );
    }
    if hc.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(hc.cpu_shares));
    }
    if !hc.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(hc.cpuset_cpus));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if hc.pids_limit > 0 {
        resources["pids"] = json!({"limit": hc.pids_limit});
    }
    resources
}

fn user_mounts_cover(mounts: &[MountPoint], dest: &str) -> bool {
    mounts.iter().any(|m| m.destination == dest)
}

fn mount_json(m: &MountPoint) -> Value {
    match m.kind.as_str() {
        "tmpfs" => {
            // Docker's tmpfs defaults: nosuid, nodev and noexec, unless the user asked for `exec`.
            let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
            if !m.options.iter().any(|o| o == "exec") {
                options.push("noexec".into());
            }
            options.extend(m.options.iter().cloned());
            if !m.rw {
                options.push("ro".into());
            }
            json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": options})
        }
        _ => {
            let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
            if !m.rw {
                options.push("ro".into());
            }
            json!({"destination": m.destination, "type": "bind", "source": PathBuf::from(&m.source), "options": options})
        }
    }
}

/// The OCI device node and the cgroup rule allowing it, for each `--device`.
fn device_nodes(devices: &[DeviceMapping]) -> Result<Vec<(Value, Value)>, RuntimeError> {
    devices.iter().map(device_node).collect()
}

/// The OCI device node and cgroup rule of one `--device`, from the host node as it is now; `create`
/// calls it too, to refuse a path that is no device before anything is made.
pub(crate) fn device_node(d: &DeviceMapping) -> Result<(Value, Value), RuntimeError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(&d.path_on_host).map_err(|e| {
        RuntimeError::InvalidOption(format!(
            "error gathering device information while adding custom device {:?}: {e}",
            d.path_on_host
        ))
    })?;
    let kind = if meta.file_type().is_block_device() {
        "b"
    } else if meta.file_type().is_char_device() {
        "c"
    } else {
        return Err(RuntimeError::InvalidOption(format!(
            "{} is not a device node",
            d.path_on_host
        )));
    };
    let (major, minor) = (
        nix::sys::stat::major(meta.rdev()),
        nix::sys::stat::minor(meta.rdev()),
    );
    let node = json!({"path": d.path_in_container, "type": kind, "major": major, "minor": minor,
        "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid()});
    let rule = json!({"allow": true, "type": kind, "major": major, "minor": minor,
        "access": d.cgroup_permissions});
    Ok((node, rule))
}

fn device_rules(privileged: bool) -> Value {
    if privileged {
        return json!([{"allow": true, "access": "rwm"}]);
    }
    let rule = |t: &str, major: i64, minor: Option<i64>| {
        let mut r = json!({"allow": true, "type": t, "major": major, "access": "rwm"});
        if let Some(minor) = minor {
            r["minor"] = json!(minor);
        }
        r
    };
    json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        {"allow": true, "type": "b", "access": "m"},
        rule("c", 1, Some(3)),
        rule("c", 1, Some(5)),
        rule("c", 1, Some(7)),
        rule("c", 1, Some(8)),
        rule("c", 1, Some(9)),
        rule("c", 5, Some(0)),
        rule("c", 5, Some(1)),
        rule("c", 5, Some(2)),
        rule("c", 136, None),
        rule("c", 10, Some(200)),
    ])
}
