//! `RunOptions`: what `create`/`run` (and later the Engine API and Compose) ask for, and how it becomes a
//! container record with the image's defaults merged in, as Docker merges them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_store::container::{
    ContainerConfig, ContainerRecord, ContainerState, DeviceMapping, HostConfig, LogConfig,
    MountPoint, MountRequest, PortBinding, RestartPolicy, Ulimit,
};
use berth_store::image::HealthConfig;
use berth_store::ImageRecord;

use crate::error::RuntimeError;

/// The label the builder puts on its RUN containers. They are disposable (removed once their changes
/// are a layer), so, like `--rm` containers, their overlay is mounted volatile.
pub const BUILD_CONTAINER_LABEL: &str = "berth.build";

/// The default PATH Docker puts in a container's environment when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything `create` and `run` accept, as plain data (the CLI fills it from flags).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Image reference or ID.
    pub image: String,
    /// `--name`.
    pub name: Option<String>,
    /// Arguments after the image (the command).
    pub command: Vec<String>,
    /// `--entrypoint` (`Some("")` resets the image's).
    pub entrypoint: Option<String>,
    /// `-e KEY=value` or `-e KEY` (taken from the caller's environment).
    pub env: Vec<String>,
    /// `--env-file` paths.
    pub env_files: Vec<PathBuf>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-h`.
    pub hostname: Option<String>,
    /// `--label k=v`.
    pub labels: Vec<String>,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
    /// Whether the caller stays attached (run without -d).
    pub attach: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--memory`, `--cpus`, … and `--restart`.
    pub resources: ResourceOptions,
    /// `--ulimit name=soft[:hard]`.
    pub ulimits: Vec<String>,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--read-only`.
    pub read_only: bool,
    /// `--security-opt`.
    pub security_opt: Vec<String>,
    /// `--init`.
    pub init: bool,
    /// `--stop-signal`.
    pub stop_signal: Option<String>,
    /// `--stop-timeout`.
    pub stop_timeout: Option<i64>,
    /// `--log-opt k=v`.
    pub log_opts: Vec<String>,
    /// `--log-driver`: `json-file` (the default) or `none`.
    pub log_driver: Option<String>,
    /// `--health-cmd`.
    pub health_cmd: Option<String>,
    /// `--health-interval`.
    pub health_interval: Option<String>,
    /// `--health-timeout`.
    pub health_timeout: Option<String>,
    /// `--health-retries`.
    pub health_retries: Option<i64>,
    /// `--health-start-period`.
    pub health_start_period: Option<String>,
    /// `--no-healthcheck`.
    pub no_healthcheck: bool,
    /// `--network`.
    pub network: Option<String>,
    /// `-p [ip:][hostport:]containerport[/proto]`.
    pub publish: Vec<String>,
    /// `-P`.
    pub publish_all: bool,
    /// `--expose port[/proto]` (ranges too).
    pub expose: Vec<String>,
    /// `--ip`.
    pub ip: Option<String>,
    /// `--network-alias`.
    pub network_aliases: Vec<String>,
    /// `--link name[:alias]`.
    pub links: Vec<String>,
    /// `--add-host name:ip`.
    pub add_hosts: Vec<String>,
    /// `--dns`.
    pub dns: Vec<String>,
    /// `--dns-search`.
    pub dns_search: Vec<String>,
    /// `-v`.
    pub volumes: Vec<String>,
    /// `--mount`.
    pub mounts: Vec<String>,
    /// `--tmpfs path[:opts]`.
    pub tmpfs: Vec<String>,
    /// `--volumes-from`.
    pub volumes_from: Vec<String>,
    /// `--shm-size`.
    pub shm_size: Option<String>,
    /// `--ipc`.
    pub ipc: Option<String>,
    /// `--pid`.
    pub pid: Option<String>,
    /// `--device host[:container[:perms]]`.
    pub devices: Vec<String>,
    /// `--sysctl key=value`.
    pub sysctls: Vec<String>,
    /// `--group-add`.
    pub group_add: Vec<String>,
}

/// What `run` sets and `update` may change later: the resource limits and the restart policy.
/// None leaves a setting as it is (`update`) or at its default (`run`).
#[derive(Debug, Clone, Default)]
pub struct ResourceOptions {
    /// `--memory`.
    pub memory: Option<String>,
    /// `--memory-swap`.
    pub memory_swap: Option<String>,
    /// `--cpus`.
    pub cpus: Option<String>,
    /// `--cpu-shares`.
    pub cpu_shares: Option<i64>,
    /// `--cpuset-cpus`.
    pub cpuset_cpus: Option<String>,
    /// `--pids-limit` (0 or -1: unlimited).
    pub pids_limit: Option<i64>,
    /// `--restart`.
    pub restart: Option<String>,
}

impl ResourceOptions {
    /// Whether any setting is given (Docker refuses an update of nothing).
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.memory_swap.is_none()
            && self.cpus.is_none()
            && self.cpu_shares.is_none()
            && self.cpuset_cpus.is_none()
            && self.pids_limit.is_none()
            && self.restart.is_none()
    }
}

/// Parses a Docker size (`512m`, `1g`, `100k`, `1024`, `1.5g`) into bytes, binary units as Docker's RAMInBytes.
pub fn parse_bytes(input: &str) -> Result<i64, RuntimeError> {
    let bad = || RuntimeError::InvalidOption(format!("invalid size: '{input}'"));
    let s = input.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult): (&str, f64) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1024.0),
        Some('m') => (&s[..s.len() - 1], 1024.0 * 1024.0),
        Some('g') => (&s[..s.len() - 1], 1024.0 * 1024.0 * 1024.0),
        Some('t') => (&s[..s.len() - 1], 1024f64.powi(4)),
        Some(c) if c.is_ascii_digit() => (s, 1.0),
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok((value * mult) as i64)
}

/// Parses a Go-style duration (`30s`, `1m30s`, `500ms`, `1h`) into nanoseconds.
pub fn parse_duration(input: &str) -> Result<i64, RuntimeError> {
    let bad = || RuntimeError::InvalidOption(format!("invalid duration: '{input}'"));
    let mut total: f64 = 0.0;
    let mut rest = input.trim();
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * unit;
        rest = &rest[unit_end..];
    }
    Ok(total as i64)
}

fn parse_key_values(
    items: &[String],
    what: &str,
) -> Result<BTreeMap<String, String>, RuntimeError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
        if k.is_empty() {
            return Err(RuntimeError::InvalidOption(format!(
                "invalid {what}: '{item}'"
            )));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `--memory`: bytes, at least Docker's 6 MB.
pub fn parse_memory(value: &str) -> Result<i64, RuntimeError> {
    let memory = parse_bytes(value)?;
    if memory > 0 && memory < 6 * 1024 * 1024 {
        return Err(RuntimeError::InvalidOption(
            "Minimum memory limit allowed is 6MB".into(),
        ));
    }
    Ok(memory)
}

/// `--memory-swap`: bytes of memory plus swap, or -1 for unlimited swap.
pub fn parse_memory_swap(value: &str) -> Result<i64, RuntimeError> {
    match value {
        "-1" => Ok(-1),
        v => parse_bytes(v),
    }
}

/// Docker's checks of a memory limit against its memory+swap limit (0 = unset).
pub fn check_memory_limits(memory: i64, memory_swap: i64) -> Result<(), RuntimeError> {
    if memory_swap > 0 && memory == 0 {
        return Err(RuntimeError::InvalidOption(
            "You should always set the Memory limit when using Memoryswap limit, see usage".into(),
        ));
    }
    if memory_swap > 0 && memory_swap < memory {
        return Err(RuntimeError::InvalidOption(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        ));
    }
    Ok(())
}

/// `--cpus 1.5` → nano-CPUs, between 0.01 and the CPUs this host has.
pub fn parse_cpus(value: &str) -> Result<i64, RuntimeError> {
    let invalid =
        || RuntimeError::InvalidOption(format!("invalid argument \"{value}\" for \"--cpus\" flag"));
    let cpus: f64 = value.parse().map_err(|_| invalid())?;
    if cpus.is_nan() || cpus <= 0.0 || !cpus.is_finite() {
        return Err(invalid());
    }
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    if cpus > online {
        return Err(RuntimeError::InvalidOption(format!(
            "range of CPUs is from 0.01 to {online:.2}, as there are only {online} CPUs available"
        )));
    }
    Ok((cpus * 1e9) as i64)
}

/// The CPUs of a cpuset list (`0-3,5`), or None when it is not one.
fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
        if first > last {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

/// Checks `--cpuset-cpus` before the cgroup write would fail with a bare EINVAL or ERANGE: Docker's
/// words for a list that is not one, and for CPUs this host does not have.
pub fn check_cpuset(list: &str) -> Result<(), RuntimeError> {
    let cpus = parse_cpu_list(list).ok_or_else(|| {
        RuntimeError::InvalidOption(format!("Invalid value {list} for cpuset cpus"))
    })?;
    let Ok(online_text) = std::fs::read_to_string("/sys/devices/system/cpu/online") else {
        return Ok(());
    };
    let Some(online) = parse_cpu_list(&online_text) else {
        return Ok(());
    };
    if cpus.iter().any(|cpu| !online.contains(cpu)) {
        return Err(RuntimeError::InvalidOption(format!(
            "Requested CPUs are not available - requested {list}, available: {}",
            online_text.trim()
        )));
    }
    Ok(())
}

/// Refuses a `--security-opt` Berth does not know, as Docker does, rather than run without it.
/// `apparmor=` and `label=` are accepted and have no effect: this host runs neither AppArmor nor
/// SELinux confinement for containers.
fn check_security_opt(opt: &str) -> Result<(), RuntimeError> {
    let (key, value) = opt
        .split_once(['=', ':'])
        .map_or((opt, None), |(k, v)| (k, Some(v)));
    let known = match (key, value) {
        ("no-new-privileges", None | Some("true" | "false")) => true,
        ("seccomp", Some(v)) => !v.is_empty(),
        ("apparmor" | "label", Some(_)) => true,
        _ => false,
    };
    if known {
        Ok(())
    } else {
        Err(RuntimeError::InvalidOption(format!(
            "Invalid --security-opt: {opt:?}"
        )))
    }
}

/// `--device host[:container][:perms]` → Docker's mapping; the host path must be a device node.
fn parse_device(spec: &str) -> Result<DeviceMapping, RuntimeError> {
    let bad =
        |why: String| RuntimeError::InvalidOption(format!("invalid --device {spec:?}: {why}"));
    let is_permissions = |p: &str| !p.is_empty() && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if is_permissions(p) => (*h, *h, *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] if is_permissions(p) => (*h, *c, *p),
        _ => return Err(bad("use host[:container][:rwm]".into())),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(bad("device paths must be absolute".into()));
    }
    let mapping = DeviceMapping {
        path_on_host: host.to_string(),
        path_in_container: container.to_string(),
        cgroup_permissions: permissions.to_string(),
    };
    crate::spec::device_node(&mapping)?;
    Ok(mapping)
}

/// `--sysctl key=value`, checked as Docker does: only kernel parameters a container's own
/// namespaces hold (IPC and network), and not those of a namespace shared with the host.
fn parse_sysctl(
    spec: &str,
    network_mode: &str,
    ipc_mode: &str,
) -> Result<(String, String), RuntimeError> {
    const IPC_KEYS: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let bad = |why: String| {
        RuntimeError::InvalidOption(format!(
            "invalid argument {spec:?} for \"--sysctl\" flag: {why}"
        ))
    };
    let (key, value) = spec
        .split_once('=')
        .ok_or_else(|| bad("use key=value".into()))?;
    let ipc = IPC_KEYS.contains(&key) || key.starts_with("fs.mqueue.");
    if ipc && ipc_mode == "host" {
        return Err(bad(format!(
            "sysctl {key:?} is not allowed with --ipc host"
        )));
    }
    if key.starts_with("net.") && network_mode == "host" {
        return Err(bad(format!(
            "sysctl {key:?} is not allowed in host network namespace"
        )));
    }
    if !ipc && !key.starts_with("net.") {
        return Err(bad(format!("sysctl {key:?} is not whitelisted")));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Reads `--env-file` files: `KEY=value` lines, `KEY` alone takes the caller's value, `#` comments.
pub fn read_env_file(path: &std::path::Path) -> Result<Vec<String>, RuntimeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RuntimeError::InvalidOption(format!("open {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() {
            return Err(RuntimeError::InvalidOption(format!(
                "{}: no variable name on line '{line}'",
                path.display()
            )));
        }
        if key.contains(char::is_whitespace) {
            return Err(RuntimeError::InvalidOption(format!(
                "{}: variable '{key}' contains whitespaces",
                path.display()
            )));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Resolves `KEY` (no `=`) from the caller's environment as Docker does; unset keys are dropped.
fn expand_env(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .filter_map(|item| {
            if item.contains('=') {
                Some(item)
            } else {
                std::env::var(&item).ok().map(|v| format!("{item}={v}"))
            }
        })
        .collect()
}

/// Merges `overrides` into `base` by key (later wins), keeping first-seen order.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for item in overrides {
        let key = item.split_once('=').map_or(item.as_str(), |(k, _)| k);
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => *slot = item.clone(),
            None => out.push(item.clone()),
        }
    }
    out
}

/// `--restart no|always|unless-stopped|on-failure[:N]` → Docker's restart policy.
pub fn parse_restart(input: Option<&str>) -> Result<RestartPolicy, RuntimeError> {
    let input = input.unwrap_or("no");
    let (name, count) = match input.split_once(':') {
        Some((n, c)) => (n, Some(c)),
        None => (input, None),
    };
    let bad = || RuntimeError::InvalidOption(format!("invalid restart policy '{input}'"));
    match (name, count) {
        ("no" | "" | "always" | "unless-stopped", None) => Ok(RestartPolicy {
            name: if name.is_empty() {
                "no".into()
            } else {
                name.into()
            },
            maximum_retry_count: 0,
        }),
        ("on-failure", count) => Ok(RestartPolicy {
            name: name.into(),
            maximum_retry_count: match count {
                Some(c) => c.parse().map_err(|_| bad())?,
                None => 0,
            },
        }),
        ("always" | "unless-stopped" | "no", Some(_)) => Err(RuntimeError::InvalidOption(format!(
            "maximum retry count cannot be used with restart policy '{name}'"
        ))),
        _ => Err(bad()),
    }
}

fn parse_ulimit(input: &str) -> Result<Ulimit, RuntimeError> {
    let bad = || RuntimeError::InvalidOption(format!("invalid ulimit argument: {input}"));
    let (name, values) = input.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (s.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?),
        None => {
            let v: i64 = values.parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    const KNOWN: &[&str] = &[
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
        "as",
    ];
    if !KNOWN.contains(&name) {
        return Err(RuntimeError::InvalidOption(format!(
            "invalid ulimit type: {name}"
        )));
    }
    // -1 is unlimited, as with Docker; no other negative value means anything.
    if soft < -1 || hard < -1 {
        return Err(bad());
    }
    let unlimited_as_max = |v: i64| if v == -1 { i64::MAX } else { v };
    if unlimited_as_max(soft) > unlimited_as_max(hard) {
        return Err(RuntimeError::InvalidOption(format!(
            "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        )));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// The pieces of a record that need the store (volumes) are filled by the engine; this builds the rest.
pub(crate) fn build_record(
    options: &RunOptions,
    image: &ImageRecord,
    id: &str,
    name: &str,
) -> Result<ContainerRecord, RuntimeError> {
    let img = &image.config.config;
    // Environment: image first, then --env-file, then -e (later wins).
    let mut user_env = Vec::new();
    for file in &options.env_files {
        user_env.extend(read_env_file(file)?);
    }
    if let Some(bad) = options.env.iter().find(|e| e.starts_with('=')) {
        return Err(RuntimeError::InvalidOption(format!(
            "invalid environment variable: {bad}"
        )));
    }
    user_env.extend(options.env.iter().cloned());
    let mut env = merge_env(&img.env, &expand_env(user_env));
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    // ENTRYPOINT/CMD: --entrypoint replaces the image's and drops its CMD; arguments replace CMD.
    let (entrypoint, cmd) = match &options.entrypoint {
        Some(e) if e.is_empty() => (
            None,
            (!options.command.is_empty()).then(|| options.command.clone()),
        ),
        Some(e) => (
            Some(vec![e.clone()]),
            (!options.command.is_empty()).then(|| options.command.clone()),
        ),
        None => (
            img.entrypoint.clone().filter(|e| !e.is_empty()),
            if options.command.is_empty() {
                img.cmd.clone()
            } else {
                Some(options.command.clone())
            },
        ),
    };
    if entrypoint.as_ref().is_none_or(Vec::is_empty) && cmd.as_ref().is_none_or(Vec::is_empty) {
        return Err(RuntimeError::NoCommand);
    }
    let mut labels = img.labels.clone();
    labels.extend(parse_key_values(&options.labels, "label")?);

    let healthcheck = if options.no_healthcheck {
        Some(HealthConfig {
            test: vec!["NONE".into()],
            ..HealthConfig::default()
        })
    } else {
        let mut hc = img.healthcheck.clone();
        if options.health_cmd.is_some()
            || options.health_interval.is_some()
            || options.health_timeout.is_some()
            || options.health_retries.is_some()
            || options.health_start_period.is_some()
        {
            let mut h = hc.unwrap_or_default();
            if let Some(cmd) = &options.health_cmd {
                h.test = vec!["CMD-SHELL".into(), cmd.clone()];
            }
            if let Some(v) = &options.health_interval {
                h.interval = parse_duration(v)?;
            }
            if let Some(v) = &options.health_timeout {
                h.timeout = parse_duration(v)?;
            }
            if let Some(v) = &options.health_start_period {
                h.start_period = parse_duration(v)?;
            }
            if let Some(v) = options.health_retries {
                h.retries = v;
            }
            hc = Some(h);
        }
        hc
    };

    let memory = options
        .resources
        .memory
        .as_deref()
        .map(parse_memory)
        .transpose()?;
    let memory = memory.unwrap_or(0);
    let memory_swap = options
        .resources
        .memory_swap
        .as_deref()
        .map(parse_memory_swap)
        .transpose()?
        .unwrap_or(0);
    check_memory_limits(memory, memory_swap)?;
    let nano_cpus = options
        .resources
        .cpus
        .as_deref()
        .map(parse_cpus)
        .transpose()?
        .unwrap_or(0);
    if let Some(list) = options.resources.cpuset_cpus.as_deref() {
        check_cpuset(list)?;
    }
    for opt in &options.security_opt {
        check_security_opt(opt)?;
    }
    let network_mode = match options.network.as_deref() {
        None | Some("default") => "bridge".to_string(),
        Some(n) => n.to_string(),
    };
    if !options.network_aliases.is_empty()
        && matches!(network_mode.as_str(), "none" | "host" | "bridge")
    {
        return Err(RuntimeError::InvalidOption(
            "network-scoped alias is supported only for containers in user defined networks".into(),
        ));
    }
    if network_mode.starts_with("container:") {
        if options.hostname.is_some() {
            return Err(RuntimeError::InvalidOption(
                "conflicting options: hostname and the network mode".into(),
            ));
        }
        if !options.publish.is_empty() || options.publish_all {
            return Err(RuntimeError::InvalidOption(
                "conflicting options: port publishing and the container type network mode".into(),
            ));
        }
    }
    if !options.links.is_empty() && network_mode != "bridge" {
        return Err(RuntimeError::InvalidOption(
            "links are only supported on the default bridge network".into(),
        ));
    }
    let ipv4_address = match &options.ip {
        Some(ip) => {
            if matches!(network_mode.as_str(), "none" | "host" | "bridge") {
                return Err(RuntimeError::InvalidOption(
                    "user specified IP address is supported on user defined networks only".into(),
                ));
            }
            ip.parse::<std::net::Ipv4Addr>()
                .map_err(|_| RuntimeError::InvalidOption(format!("invalid IPv4 address: {ip}")))?;
            ip.clone()
        }
        None => String::new(),
    };
    for host in &options.add_hosts {
        let valid = host
            .split_once(':')
            .or_else(|| host.split_once('='))
            .is_some_and(|(name, ip)| {
                !name.is_empty() && (ip == "host-gateway" || ip.parse::<std::net::IpAddr>().is_ok())
            });
        if !valid {
            return Err(RuntimeError::InvalidOption(format!(
                "invalid argument \"{host}\" for \"--add-host\" flag: invalid IP address in add-host"
            )));
        }
    }
    for server in &options.dns {
        server
            .parse::<std::net::IpAddr>()
            .map_err(|_| RuntimeError::InvalidOption(format!("{server} is not an ip address")))?;
    }
    let mut port_bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    for spec in &options.publish {
        for (port, binding) in parse_publish(spec)? {
            port_bindings.entry(port).or_default().push(binding);
        }
    }
    let private_stack = network_mode == "none" || network_mode.starts_with("container:");
    if (network_mode == "host" || private_stack)
        && (!port_bindings.is_empty() || options.publish_all)
    {
        if network_mode == "host" {
            // Docker ignores published ports in host mode (with a warning).
            port_bindings.clear();
        } else {
            return Err(RuntimeError::InvalidOption(
                "conflicting options: port publishing and the container type network mode".into(),
            ));
        }
    }
    let mut exposed_ports = img.exposed_ports.clone();
    for spec in &options.expose {
        for port in parse_expose(spec)? {
            exposed_ports.insert(port, serde_json::json!({}));
        }
    }
    for port in port_bindings.keys() {
        exposed_ports.insert(port.clone(), serde_json::json!({}));
    }
    let mut log_config = LogConfig {
        kind: match options.log_driver.as_deref() {
            None | Some("json-file") => "json-file".into(),
            Some("none") => "none".into(),
            Some(driver) => {
                return Err(RuntimeError::InvalidOption(format!(
                    "logging driver {driver:?} is not supported (json-file and none are)"
                )))
            }
        },
        config: parse_key_values(&options.log_opts, "log-opt")?,
    };
    if log_config.kind == "none" {
        if let Some(key) = log_config.config.keys().next() {
            return Err(RuntimeError::InvalidOption(format!(
                "unknown log opt '{key}' for none log driver"
            )));
        }
    }
    for key in log_config.config.keys() {
        if !matches!(
            key.as_str(),
            "max-size" | "max-file" | "compress" | "labels" | "env" | "tag"
        ) {
            return Err(RuntimeError::InvalidOption(format!(
                "unknown log opt '{key}' for json-file log driver"
            )));
        }
    }
    if let Some(size) = log_config.config.get("max-size") {
        parse_bytes(size)?;
    }
    if let Some(n) = log_config.config.get("max-file") {
        let n: u32 = n
            .parse()
            .map_err(|_| RuntimeError::InvalidOption(format!("invalid max-file: {n}")))?;
        if n == 0 {
            return Err(RuntimeError::InvalidOption(
                "max-file cannot be less than 1".into(),
            ));
        }
    }
    log_config.config.retain(|_, v| !v.is_empty());
    for cap in options.cap_add.iter().chain(&options.cap_drop) {
        crate::spec::normalize_capability(cap)?;
    }
    if let Some(sig) = &options.stop_signal {
        crate::signal::parse_signal(sig)?;
    }

    // On the host's network a container goes by the host's name, as with Docker.
    let hostname = match &options.hostname {
        Some(name) => name.clone(),
        None if network_mode == "host" => nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| id[..12].to_string()),
        None => id[..12].to_string(),
    };
    let config = ContainerConfig {
        hostname,
        domainname: String::new(),
        user: options.user.clone().unwrap_or_else(|| img.user.clone()),
        attach_stdin: options.attach && options.interactive,
        attach_stdout: options.attach,
        attach_stderr: options.attach,
        exposed_ports,
        tty: options.tty,
        open_stdin: options.interactive,
        stdin_once: options.attach && options.interactive,
        env,
        cmd,
        healthcheck,
        image: options.image.clone(),
        volumes: img.volumes.clone(),
        working_dir: options
            .workdir
            .clone()
            .unwrap_or_else(|| img.working_dir.clone()),
        entrypoint,
        labels,
        stop_signal: options
            .stop_signal
            .clone()
            .unwrap_or_else(|| img.stop_signal.clone()),
        stop_timeout: options.stop_timeout,
    };
    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return Err(RuntimeError::InvalidOption(format!(
            "the working directory '{}' is invalid, it needs to be an absolute path",
            config.working_dir
        )));
    }
    let shm_size = match options.shm_size.as_deref() {
        Some(size) => match parse_bytes(size)? {
            bytes if bytes > 0 => bytes,
            _ => {
                return Err(RuntimeError::InvalidOption(format!(
                    "invalid --shm-size {size:?}: it must be greater than 0"
                )))
            }
        },
        None => berth_store::container::DEFAULT_SHM_SIZE,
    };
    let ipc_mode = match options.ipc.as_deref() {
        None | Some("") | Some("private") => "private".to_string(),
        Some(mode @ ("shareable" | "host")) => mode.to_string(),
        Some(mode) => {
            return Err(RuntimeError::InvalidOption(format!(
                "invalid IPC mode: {mode} (Berth supports private, shareable and host)"
            )))
        }
    };
    let pid_mode = match options.pid.as_deref() {
        None | Some("") => String::new(),
        Some("host") => "host".to_string(),
        Some(mode) => {
            return Err(RuntimeError::InvalidOption(format!(
                "invalid PID mode: {mode} (Berth supports host, or the container's own)"
            )))
        }
    };
    let devices = options
        .devices
        .iter()
        .map(|d| parse_device(d))
        .collect::<Result<Vec<_>, _>>()?;
    let sysctls = options
        .sysctls
        .iter()
        .map(|s| parse_sysctl(s, &network_mode, &ipc_mode))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let host_config = HostConfig {
        binds: options.volumes.clone(),
        network_mode,
        restart_policy: parse_restart(options.resources.restart.as_deref())?,
        auto_remove: options.auto_remove,
        cap_add: options.cap_add.clone(),
        cap_drop: options.cap_drop.clone(),
        privileged: options.privileged,
        readonly_rootfs: options.read_only,
        security_opt: options.security_opt.clone(),
        memory,
        memory_swap,
        nano_cpus,
        cpu_shares: options.resources.cpu_shares.unwrap_or(0),
        cpuset_cpus: options.resources.cpuset_cpus.clone().unwrap_or_default(),
        pids_limit: options.resources.pids_limit.unwrap_or(0),
        ulimits: options
            .ulimits
            .iter()
            .map(|u| parse_ulimit(u))
            .collect::<Result<_, _>>()?,
        init: options.init,
        log_config,
        mounts: Vec::new(),
        volumes_from: options.volumes_from.clone(),
        port_bindings,
        publish_all_ports: options.publish_all,
        ipv4_address,
        network_aliases: options.network_aliases.clone(),
        links: options.links.clone(),
        extra_networks: Vec::new(),
        extra_hosts: options.add_hosts.clone(),
        dns: options.dns.clone(),
        dns_search: options.dns_search.clone(),
        shm_size,
        ipc_mode,
        pid_mode,
        devices,
        sysctls,
        group_add: options.group_add.clone(),
    };
    if host_config.auto_remove && host_config.restart_policy.name != "no" {
        return Err(RuntimeError::InvalidOption(
            "Conflicting options: --restart and --rm".into(),
        ));
    }
    Ok(ContainerRecord {
        id: id.to_string(),
        name: name.to_string(),
        image_id: image.id.clone(),
        layers: image.config.rootfs.diff_ids.clone(),
        created: berth_store::now_rfc3339(),
        config,
        host_config,
        mounts: Vec::new(),
        state: ContainerState::created(),
        network_settings: Default::default(),
        restart_count: 0,
    })
}

fn parse_port_range(text: &str, spec: &str) -> Result<(u16, u16), RuntimeError> {
    let bad = || RuntimeError::InvalidOption(format!("invalid port specification: \"{spec}\""));
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a == 0 && b == 0 {
        return Ok((0, 0));
    }
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

fn split_protocol<'a>(text: &'a str, spec: &str) -> Result<(&'a str, &'a str), RuntimeError> {
    let (ports, proto) = text.rsplit_once('/').unwrap_or((text, "tcp"));
    if !matches!(proto, "tcp" | "udp") {
        return Err(RuntimeError::InvalidOption(format!(
            "invalid proto: {proto} in \"{spec}\""
        )));
    }
    Ok((ports, proto))
}

/// `-p`: `[ip:][hostport[-end]:]containerport[-end][/tcp|/udp]` → (`80/tcp`, binding) pairs; ranges
/// expand port by port (equal lengths, or one host port for a container range is refused as Docker).
pub fn parse_publish(spec: &str) -> Result<Vec<(String, PortBinding)>, RuntimeError> {
    let bad = |why: &str| {
        RuntimeError::InvalidOption(format!("invalid publish specification \"{spec}\": {why}"))
    };
    let (rest, proto) = split_protocol(spec, spec)?;
    let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => ("", "", *c),
        [c, h] => ("", *h, *c),
        [c, h, ip] => (*ip, *h, *c),
        _ => return Err(bad("too many colons")),
    };
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if !ip.is_empty() && ip.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(bad(&format!("invalid IP address: {ip}")));
    }
    let (c_start, c_end) = parse_port_range(container, spec)?;
    if c_start == 0 {
        return Err(bad("invalid containerPort"));
    }
    let (h_start, h_end) = if host.is_empty() {
        (0, 0)
    } else {
        parse_port_range(host, spec)?
    };
    let count = c_end - c_start;
    if h_start != 0 && h_end - h_start != count {
        return Err(bad("port ranges don't match in length"));
    }
    Ok((0..=count)
        .map(|i| {
            (
                format!("{}/{proto}", c_start + i),
                PortBinding {
                    host_ip: ip.to_string(),
                    host_port: if h_start == 0 {
                        String::new()
                    } else {
                        (h_start + i).to_string()
                    },
                },
            )
        })
        .collect())
}

/// `--expose 80`, `--expose 7000-7002/udp`.
pub fn parse_expose(spec: &str) -> Result<Vec<String>, RuntimeError> {
    let (ports, proto) = split_protocol(spec, spec)?;
    let (a, b) = parse_port_range(ports, spec)?;
    if a == 0 {
        return Err(RuntimeError::InvalidOption(format!(
            "invalid port specification: \"{spec}\""
        )));
    }
    Ok((a..=b).map(|p| format!("{p}/{proto}")).collect())
}

/// A mount request parsed from `-v`, `--mount` or `--tmpfs`.
pub(crate) fn parse_volume_flag(spec: &str) -> Result<MountRequest, RuntimeError> {
    let bad = |why: &str| {
        RuntimeError::InvalidOption(format!("invalid volume specification: '{spec}': {why}"))
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => ("", *target, ""),
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => return Err(bad("too many colons")),
    };
    if !target.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    if target == "/" {
        return Err(bad("invalid mount destination '/'"));
    }
    let mut read_only = false;
    let mut options = Vec::new();
    for m in mode.split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" => read_only = true,
            // A new volume is not filled from the image's content.
            "nocopy" => options.push("nocopy".to_string()),
            "rw" | "z" | "Z" | "private" | "rprivate" | "shared" | "rshared" | "slave"
            | "rslave" => {}
            other => return Err(bad(&format!("invalid mode: {other}"))),
        }
    }
    let kind = if source.is_empty() || !source.starts_with(['/', '.']) {
        "volume"
    } else {
        "bind"
    };
    if kind == "volume" && !source.is_empty() {
        berth_store::validate_name(source)
            .map_err(|_| bad("volume names must match [a-zA-Z0-9][a-zA-Z0-9_.-]"))?;
    }
    if kind == "bind" && !source.starts_with('/') {
        return Err(bad("bind source path must be absolute"));
    }
    Ok(MountRequest {
        kind: kind.into(),
        source: source.into(),
        target: target.into(),
        read_only,
        options,
    })
}

/// Parses `--mount type=bind,source=/a,target=/b,readonly` (also `src`, `dst`, `destination`, `ro`).
pub(crate) fn parse_mount_flag(spec: &str) -> Result<MountRequest, RuntimeError> {
    let bad = |why: String| {
        RuntimeError::InvalidOption(format!(
            "invalid argument \"{spec}\" for \"--mount\" flag: {why}"
        ))
    };
    let mut kind = "volume".to_string();
    let mut source = String::new();
    let mut target = String::new();
    let mut read_only = false;
    let mut options = Vec::new();
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k {
            "type" => kind = v.to_string(),
            "source" | "src" => source = v.to_string(),
            "target" | "destination" | "dst" => target = v.to_string(),
            "readonly" | "ro" => read_only = v.is_empty() || v == "true" || v == "1",
            "tmpfs-size" => options.push(format!(
                "size={}",
                parse_bytes(v).map_err(|e| bad(e.to_string()))?
            )),
            "tmpfs-mode" => options.push(format!("mode={v}")),
            "volume-nocopy" if v.is_empty() || v == "true" || v == "1" => {
                options.push("nocopy".to_string())
            }
            "bind-propagation" | "volume-nocopy" | "consistency" => {}
            other => return Err(bad(format!("unexpected key '{other}' in '{field}'"))),
        }
    }
    if !matches!(kind.as_str(), "bind" | "volume" | "tmpfs") {
        return Err(bad(format!("invalid mount type '{kind}'")));
    }
    if target.is_empty() {
        return Err(bad("target is required".into()));
    }
    if !target.starts_with('/') {
        return Err(bad("target must be an absolute path".into()));
    }
    if kind == "bind" && !source.starts_with('/') {
        return Err(bad("bind source must be an absolute path".into()));
    }
    if kind == "tmpfs" && !source.is_empty() {
        return Err(bad("source is not allowed for tmpfs mounts".into()));
    }
    Ok(MountRequest {
        kind,
        source,
        target,
        read_only,
        options,
    })
}

/// Parses `--tmpfs /path[:opts]`.
pub(crate) fn parse_tmpfs_flag(spec: &str) -> Result<MountRequest, RuntimeError> {
    let (target, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if !target.starts_with('/') {
        return Err(RuntimeError::InvalidOption(format!(
            "invalid tmpfs destination: {target}"
        )));
    }
    let mut options: Vec<String> = Vec::new();
    let mut read_only = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        if o == "ro" {
            read_only = true;
        } else if o != "rw" {
            options.push(o.to_string());
        }
    }
    Ok(MountRequest {
        kind: "tmpfs".into(),
        source: String::new(),
        target: target.into(),
        read_only,
        options,
    })
}

/// A mount point as it will be set up, before volumes get their host paths.
pub(crate) fn mount_point(
    request: &MountRequest,
    source: String,
    name: String,
    anonymous: bool,
) -> MountPoint {
    MountPoint {
        kind: request.kind.clone(),
        name,
        source,
        destination: request.target.clone(),
        driver: if request.kind == "volume" {
            "local".into()
        } else {
            String::new()
        },
        mode: if request.read_only {
            "ro".into()
        } else {
            String::new()
        },
        rw: !request.read_only,
        propagation: if request.kind == "bind" {
            "rprivate".into()
        } else {
            String::new()
        },
        anonymous,
        options: request.options.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("-1m").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn env_merge_and_restart() {
        let merged = merge_env(&["A=1".into(), "B=2".into()], &["B=3".into(), "C=4".into()]);
        assert_eq!(merged, vec!["A=1", "B=3", "C=4"]);
        assert_eq!(
            parse_restart(Some("on-failure:3"))
                .unwrap()
                .maximum_retry_count,
            3
        );
        assert!(parse_restart(Some("always:3")).is_err());
        assert!(parse_restart(Some("sometimes")).is_err());
    }

    #[test]
    fn ulimits() {
        let u = parse_ulimit("nofile=512:1024").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 512, 1024));
        let u = parse_ulimit("core=-1").unwrap();
        assert_eq!((u.soft, u.hard), (-1, -1));
        assert_eq!(parse_ulimit("core=1024:-1").unwrap().hard, -1);
        for bad in [
            "core=-1:1024",
            "nofile=-5",
            "nofile=2:1",
            "nofile",
            "nofile=x",
            "bogus=1",
        ] {
            assert!(parse_ulimit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_flags() {
        let m = parse_volume_flag("/host:/ctr:ro").unwrap();
        assert_eq!((m.kind.as_str(), m.read_only), ("bind", true));
        let m = parse_volume_flag("data:/data").unwrap();
        assert_eq!((m.kind.as_str(), m.source.as_str()), ("volume", "data"));
        let m = parse_volume_flag("/anon").unwrap();
        assert_eq!((m.kind.as_str(), m.source.as_str()), ("volume", ""));
        assert!(parse_volume_flag("relative").is_err());
        assert!(parse_volume_flag("/a:/b:bogus").is_err());
        let m = parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=1m").unwrap();
        assert_eq!(m.options, vec!["size=1048576"]);
        assert!(parse_mount_flag("type=nfs,target=/x").is_err());
    }
}
