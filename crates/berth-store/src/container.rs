//! Container records as the store keeps them, with Docker's `inspect` field names so the CLI (and later the
//! Engine API) can print them as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::HealthConfig;

/// One container: what it was created with and what it is doing now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    /// The image's config digest.
    pub image_id: Digest,
    /// Uncompressed layer digests of the image, bottom first (kept so the rootfs survives `rmi -f`).
    pub layers: Vec<Digest>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Docker's `Config`.
    pub config: ContainerConfig,
    /// Docker's `HostConfig`.
    pub host_config: HostConfig,
    /// Volumes and binds as mounted (Docker's `Mounts`).
    pub mounts: Vec<MountPoint>,
    /// Docker's `State`.
    pub state: ContainerState,
    /// Docker's `NetworkSettings` (filled while running on a network).
    #[serde(default)]
    pub network_settings: NetworkSettings,
    /// How many times the restart policy restarted it.
    pub restart_count: u64,
}

/// Docker's container `Config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// Hostname inside the container.
    pub hostname: String,
    /// Domain name inside the container.
    pub domainname: String,
    /// User (`name`, `uid[:gid]`).
    pub user: String,
    /// Whether stdin is attached.
    pub attach_stdin: bool,
    /// Whether stdout is attached.
    pub attach_stdout: bool,
    /// Whether stderr is attached.
    pub attach_stderr: bool,
    /// Exposed ports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// A pseudo-terminal is allocated.
    pub tty: bool,
    /// Stdin stays open.
    pub open_stdin: bool,
    /// Stdin closes after the first attach ends.
    pub stdin_once: bool,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// The command.
    pub cmd: Option<Vec<String>>,
    /// The healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// The image as the user named it.
    pub image: String,
    /// Volumes declared by the image or `-v /path`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// Working directory.
    pub working_dir: String,
    /// The entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Signal that `stop` sends.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Seconds `stop` waits before SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
}

/// Docker's `RestartPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    pub name: String,
    /// For `on-failure`: the most restarts (0 = unlimited).
    pub maximum_retry_count: u64,
}

/// Docker's `Ulimit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ulimit {
    /// `nofile`, `nproc`, …
    pub name: String,
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
}

/// Docker's `LogConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogConfig {
    /// Always `json-file` for now.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `max-size`, `max-file`.
    pub config: BTreeMap<String, String>,
}

/// A mount as requested (`--mount`, `-v`, `--tmpfs`), Docker's `HostConfig.Mounts` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountRequest {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Host path (bind) or volume name (volume; empty for anonymous).
    #[serde(default)]
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs/bind options (`size=64m`, `mode=1777`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Docker's `HostConfig`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    /// `-v` bind strings as given.
    #[serde(default)]
    pub binds: Vec<String>,
    /// `none`, `host`, later network names.
    pub network_mode: String,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// `--rm`.
    pub auto_remove: bool,
    /// Capabilities added.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--read-only`.
    pub readonly_rootfs: bool,
    /// `--security-opt`.
    #[serde(default)]
    pub security_opt: Vec<String>,
    /// Memory limit in bytes (0 = none).
    pub memory: i64,
    /// Memory+swap limit in bytes (0 = default, -1 = unlimited).
    pub memory_swap: i64,
    /// CPU quota in units of 1e-9 CPUs.
    pub nano_cpus: i64,
    /// Relative CPU weight.
    pub cpu_shares: i64,
    /// Allowed CPUs (`0-1`).
    pub cpuset_cpus: String,
    /// Most processes (0 = unlimited).
    pub pids_limit: i64,
    /// rlimits.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// Run an init as PID 1.
    pub init: bool,
    /// Logging.
    pub log_config: LogConfig,
    /// `--mount` and `--tmpfs` requests.
    #[serde(default)]
    pub mounts: Vec<MountRequest>,
    /// `--volumes-from`.
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// `-p`: container port (`80/tcp`) to host bindings.
    #[serde(default)]
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    /// `-P`: publish every exposed port on a random host port.
    #[serde(default)]
    pub publish_all_ports: bool,
    /// `--ip` on a user-defined network (Docker keeps it in the endpoint's IPAM config).
    #[serde(
        default,
        rename = "BerthIPv4Address",
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_address: String,
    /// `--network-alias` names (Docker keeps them in the endpoint config).
    #[serde(
        default,
        rename = "BerthNetworkAliases",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_aliases: Vec<String>,
    /// `--link name[:alias]`.
    #[serde(default)]
    pub links: Vec<String>,
    /// Networks joined with `network connect`, after the first (`network_mode`), in interface order.
    #[serde(
        default,
        rename = "BerthNetworks",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_networks: Vec<ExtraNetwork>,
    /// `--add-host name:ip`.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// `--dns`.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--dns-search`.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// Size of /dev/shm in bytes (`--shm-size`, Docker's 64 MiB by default; 0 in records older than the
    /// field, which get the default too).
    #[serde(default)]
    pub shm_size: i64,
    /// `--ipc`: `private` (the default), `shareable` or `host`.
    #[serde(default)]
    pub ipc_mode: String,
    /// `--pid`: empty (own namespace) or `host`.
    #[serde(default)]
    pub pid_mode: String,
    /// `--device` mappings.
    #[serde(default)]
    pub devices: Vec<DeviceMapping>,
    /// `--sysctl` settings (namespaced kernel parameters only).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// `--group-add`: groups (names from the image's /etc/group, or numbers) the process joins.
    #[serde(default)]
    pub group_add: Vec<String>,
}

/// Docker's size of a container's /dev/shm when `--shm-size` is not given: 64 MiB.
pub const DEFAULT_SHM_SIZE: i64 = 64 << 20;

/// A host device given to a container (`--device /dev/x[:/dev/y[:rwm]]`), Docker's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceMapping {
    /// The device node on the host.
    pub path_on_host: String,
    /// Where it appears in the container.
    pub path_in_container: String,
    /// What the container may do with it: some of `r`, `w`, `m`.
    pub cgroup_permissions: String,
}

/// A network a container joined with `network connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtraNetwork {
    /// Network name.
    pub name: String,
    /// `--alias`es.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip` (empty: any).
    #[serde(default, rename = "IPv4Address")]
    pub ip: String,
}

/// A container's address on one network (Docker's `EndpointSettings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    /// Address.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// Gateway.
    pub gateway: String,
    /// MAC address.
    pub mac_address: String,
    /// Aliases.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// One host side of a published port (Docker's `PortBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    /// Host address (empty = all).
    #[serde(rename = "HostIp")]
    pub host_ip: String,
    /// Host port (empty = a free one).
    pub host_port: String,
}

/// Docker's `NetworkSettings` of a running container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// Address on the default network.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Its prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// The gateway.
    pub gateway: String,
    /// MAC address of eth0.
    pub mac_address: String,
    /// Published ports as bound: `80/tcp` to host bindings.
    pub ports: BTreeMap<String, Vec<PortBinding>>,
    /// The networks joined with `network connect` (the first network is the fields above).
    #[serde(default)]
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// Docker's `Mounts` entry of inspect: a mount as set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Volume name (volume mounts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Host path.
    pub source: String,
    /// Path in the container.
    pub destination: String,
    /// `local` for volumes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver: String,
    /// Mount mode string as given (`ro`, `z`…).
    pub mode: String,
    /// Writable.
    #[serde(rename = "RW")]
    pub rw: bool,
    /// Propagation.
    pub propagation: String,
    /// Anonymous volume (removed with `rm -v`); not a Docker field (inspect leaves it out, the store
    /// must keep it).
    #[serde(default)]
    pub anonymous: bool,
    /// tmpfs options; not a Docker field (inspect leaves it out, the store must keep it).
    #[serde(default)]
    pub options: Vec<String>,
}

/// One probe's result, Docker's `Health.Log` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthLogEntry {
    /// RFC 3339.
    pub start: String,
    /// RFC 3339.
    pub end: String,
    /// Exit code of the probe.
    pub exit_code: i64,
    /// The probe's output (truncated).
    pub output: String,
}

/// Docker's `State.Health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy`, `unhealthy`.
    pub status: String,
    /// Consecutive failures.
    pub failing_streak: u64,
    /// The last probes (at most 5).
    pub log: Vec<HealthLogEntry>,
}

/// The lifecycle status names Docker uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started.
    #[default]
    Created,
    /// Its process runs.
    Running,
    /// Frozen.
    Paused,
    /// Waiting for its restart policy to start it again.
    Restarting,
    /// Being removed.
    Removing,
    /// Its process ended.
    Exited,
    /// Failed to stop or remove.
    Dead,
}

impl Status {
    /// The lowercase name Docker prints.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

/// Docker's `State`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    /// Lifecycle status.
    pub status: Status,
    /// Running (also true while paused).
    pub running: bool,
    /// Frozen.
    pub paused: bool,
    /// Waiting to restart.
    pub restarting: bool,
    /// Killed by the OOM killer.
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    /// Dead.
    pub dead: bool,
    /// Host PID of the container's init (0 when not running).
    pub pid: i32,
    /// Exit code of the last run.
    pub exit_code: i32,
    /// Why the last start failed.
    pub error: String,
    /// RFC 3339 (zero time when never).
    pub started_at: String,
    /// RFC 3339 (zero time when never).
    pub finished_at: String,
    /// Health, when a healthcheck is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// PID of the monitor process (not a Docker field: inspect leaves it out, the store must keep it).
    #[serde(default)]
    pub monitor_pid: i32,
    /// The user stopped it (for `unless-stopped` and to suppress restarts; not a Docker field: inspect
    /// leaves it out, the store must keep it).
    #[serde(default)]
    pub stopped_by_user: bool,
}

/// The zero time Docker prints for never.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl ContainerState {
    /// A fresh, never-started state.
    pub fn created() -> Self {
        Self {
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            ..Self::default()
        }
    }
}
