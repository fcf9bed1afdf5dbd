//! Container commands: run, create, start, stop, kill, rm, ps, logs, wait, inspect, …

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_runtime::exec::{ExecEnd, ExecOptions};
use berth_runtime::logs::{self, LogRecord};
use berth_runtime::options::ResourceOptions;
use berth_runtime::session::{wait_attached, DetachKeys, SessionEnd};
use berth_runtime::{Engine, PendingRun, RunOptions, StdioMode};
use berth_store::container::{ContainerRecord, Status};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::Failed;
use crate::format::{binary_size, human_duration, human_size, print_rows, seconds_since};

// Flags shared by `create` and `run`. Every option that takes a value takes the next word whatever it
// starts with (`allow_hyphen_values`), as Docker's flag parser does: `--memory-swap -1`, `--name -x`.
#[derive(Args, Clone)]
pub struct CreateArgs {
    /// Print help (-h is --hostname, as in Docker)
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Assign a name to the container
    #[arg(long, allow_hyphen_values = true)]
    name: Option<String>,
    /// Set environment variables
    #[arg(short = 'e', long = "env", allow_hyphen_values = true)]
    env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", allow_hyphen_values = true)]
    env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", allow_hyphen_values = true)]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long, allow_hyphen_values = true)]
    user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Option<String>,
    /// Container host name
    #[arg(short = 'h', long, allow_hyphen_values = true)]
    hostname: Option<String>,
    /// Set meta data on a container
    #[arg(short = 'l', long = "label", allow_hyphen_values = true)]
    label: Vec<String>,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Automatically remove the container when it exits
    #[arg(long)]
    rm: bool,
    #[command(flatten)]
    resources: ResourceArgs,
    /// Ulimit options
    #[arg(long, allow_hyphen_values = true)]
    ulimit: Vec<String>,
    /// Add Linux capabilities
    #[arg(long = "cap-add", allow_hyphen_values = true)]
    cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop", allow_hyphen_values = true)]
    cap_drop: Vec<String>,
    /// Give extended privileges to this container
    #[arg(long)]
    privileged: bool,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    read_only: bool,
    /// Security Options
    #[arg(long = "security-opt", allow_hyphen_values = true)]
    security_opt: Vec<String>,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long)]
    init: bool,
    /// Signal to stop the container
    #[arg(long = "stop-signal", allow_hyphen_values = true)]
    stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(long = "stop-timeout", allow_hyphen_values = true)]
    stop_timeout: Option<i64>,
    /// Log driver options
    #[arg(long = "log-opt", allow_hyphen_values = true)]
    log_opt: Vec<String>,
    /// Logging driver for the container (json-file, none)
    #[arg(long = "log-driver", allow_hyphen_values = true)]
    log_driver: Option<String>,
    /// Command to run to check health
    #[arg(long = "health-cmd", allow_hyphen_values = true)]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long = "health-interval", allow_hyphen_values = true)]
    health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long = "health-timeout", allow_hyphen_values = true)]
    health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long = "health-retries", allow_hyphen_values = true)]
    health_retries: Option<i64>,
    /// Start period for the container to initialize before starting health-retries countdown (ms|s|m|h)
    #[arg(long = "health-start-period", allow_hyphen_values = true)]
    health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// Connect a container to a network (bridge, none, host)
    #[arg(long = "network", alias = "net", allow_hyphen_values = true)]
    network: Option<String>,
    /// Publish a container's port(s) to the host
    #[arg(short = 'p', long = "publish", allow_hyphen_values = true)]
    publish: Vec<String>,
    /// Publish all exposed ports to random ports
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Expose a port or a range of ports
    #[arg(long = "expose", allow_hyphen_values = true)]
    expose: Vec<String>,
    /// IPv4 address (e.g., 172.30.100.104) on a user-defined network
    #[arg(long = "ip", allow_hyphen_values = true)]
    ip: Option<String>,
    /// Add network-scoped alias for the container
    #[arg(long = "network-alias", allow_hyphen_values = true)]
    network_alias: Vec<String>,
    /// Add link to another container (name[:alias])
    #[arg(long = "link", allow_hyphen_values = true)]
    link: Vec<String>,
    /// Add a custom host-to-IP mapping (host:ip)
    #[arg(long = "add-host", allow_hyphen_values = true)]
    add_host: Vec<String>,
    /// Set custom DNS servers
    #[arg(long = "dns", allow_hyphen_values = true)]
    dns: Vec<String>,
    /// Set custom DNS search domains
    #[arg(long = "dns-search", allow_hyphen_values = true)]
    dns_search: Vec<String>,
    /// Bind mount a volume
    #[arg(short = 'v', long = "volume", allow_hyphen_values = true)]
    volume: Vec<String>,
    /// Attach a filesystem mount to the container
    #[arg(long, allow_hyphen_values = true)]
    mount: Vec<String>,
    /// Mount a tmpfs directory
    #[arg(long, allow_hyphen_values = true)]
    tmpfs: Vec<String>,
    /// Mount volumes from the specified container(s)
    #[arg(long = "volumes-from", allow_hyphen_values = true)]
    volumes_from: Vec<String>,
    /// Size of /dev/shm
    #[arg(long = "shm-size", allow_hyphen_values = true)]
    shm_size: Option<String>,
    /// IPC mode to use (private, shareable, host)
    #[arg(long, allow_hyphen_values = true)]
    ipc: Option<String>,
    /// PID namespace to use (host)
    #[arg(long, allow_hyphen_values = true)]
    pid: Option<String>,
    /// Add a host device to the container
    #[arg(long, allow_hyphen_values = true)]
    device: Vec<String>,
    /// Sysctl options
    #[arg(long, allow_hyphen_values = true)]
    sysctl: Vec<String>,
    /// Add additional groups to join
    #[arg(long = "group-add", allow_hyphen_values = true)]
    group_add: Vec<String>,
    /// Write the container ID to the file
    #[arg(long, allow_hyphen_values = true)]
    cidfile: Option<std::path::PathBuf>,
    /// Pull image before running ("always", "missing", "never")
    #[arg(long, value_enum, default_value = "missing")]
    pull: super::registry::PullPolicy,
    /// Set platform if server is multi-platform capable (os/arch[/variant])
    #[arg(long, allow_hyphen_values = true)]
    platform: Option<String>,
    /// Image to run, then the command and its arguments. One positional: everything after the image
    /// belongs to the command, even words that look like our flags (`IMAGE -c 'echo hi'`).
    #[arg(
        value_name = "IMAGE [COMMAND] [ARG...]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    image_and_command: Vec<String>,
}

impl CreateArgs {
    /// The image reference (clap guarantees the first value).
    fn image(&self) -> &str {
        self.image_and_command
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn options(&self, attach: bool) -> anyhow::Result<RunOptions> {
        Ok(RunOptions {
            image: self.image().to_string(),
            resources: self.resources.options(),
            name: self.name.clone(),
            command: self.image_and_command[1..].to_vec(),
            entrypoint: self.entrypoint.clone(),
            env: self.env.clone(),
            env_files: self.env_file.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            labels: self.label.clone(),
            tty: self.tty,
            interactive: self.interactive,
            attach,
            auto_remove: self.rm,
            ulimits: self.ulimit.clone(),
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            privileged: self.privileged,
            read_only: self.read_only,
            security_opt: self.security_opt.clone(),
            init: self.init,
            stop_signal: self.stop_signal.clone(),
            stop_timeout: self.stop_timeout,
            log_opts: self.log_opt.clone(),
            health_cmd: self.health_cmd.clone(),
            health_interval: self.health_interval.clone(),
            health_timeout: self.health_timeout.clone(),
            health_retries: self.health_retries,
            health_start_period: self.health_start_period.clone(),
            no_healthcheck: self.no_healthcheck,
            network: self.network.clone(),
            publish: self.publish.clone(),
            publish_all: self.publish_all,
            expose: self.expose.clone(),
            ip: self.ip.clone(),
            network_aliases: self.network_alias.clone(),
            links: self.link.clone(),
            add_hosts: self.add_host.clone(),
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            volumes: self.volume.clone(),
            mounts: self.mount.clone(),
            tmpfs: self.tmpfs.clone(),
            volumes_from: self.volumes_from.clone(),
            log_driver: self.log_driver.clone(),
            shm_size: self.shm_size.clone(),
            ipc: self.ipc.clone(),
            pid: self.pid.clone(),
            devices: self.device.clone(),
            sysctls: self.sysctl.clone(),
            group_add: self.group_add.clone(),
        })
    }

    /// `--cidfile`: refused when the file exists, Docker's guard against two containers sharing
    /// one file, before anything is made.
    fn check_cidfile(&self) -> anyhow::Result<()> {
        match &self.cidfile {
            Some(path) if path.exists() => bail!(
                "Container ID file found, make sure the other container isn't running or delete {}",
                path.display()
            ),
            _ => Ok(()),
        }
    }

    /// Writes the new container's ID to `--cidfile`, if given.
    fn write_cidfile(&self, id: &str) -> anyhow::Result<()> {
        if let Some(path) = &self.cidfile {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, id.as_bytes()))
                .with_context(|| format!("writing the container ID file {}", path.display()))?;
        }
        Ok(())
    }
}

// `run` flags: create's plus detach and signal proxying.
#[derive(Args)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    detach: bool,
    /// Proxy received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    #[command(flatten)]
    create: CreateArgs,
}

// `start` flags.
#[derive(Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short = 'a', long)]
    attach: bool,
    /// Attach container's STDIN
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    /// Containers
    #[arg(required = true)]
    containers: Vec<String>,
}

// `stop` and `restart` flags.
#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", alias = "timeout")]
    time: Option<i64>,
    /// Signal to send to the container
    #[arg(short = 's', long)]
    signal: Option<String>,
    /// Containers
    #[arg(required = true)]
    containers: Vec<String>,
}

// `kill` flags.
#[derive(Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
    /// Containers
    #[arg(required = true)]
    containers: Vec<String>,
}

// `rm` flags.
#[derive(Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short = 'v', long)]
    volumes: bool,
    /// Containers
    #[arg(required = true)]
    containers: Vec<String>,
}

// Commands that take only container names.
#[derive(Args)]
pub struct NamesArgs {
    /// Containers
    #[arg(required = true)]
    containers: Vec<String>,
}

// `ps` flags.
#[derive(Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    all: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Show n last created containers (includes all states)
    #[arg(short = 'n', long = "last", default_value_t = -1)]
    last: i64,
    /// Show the latest created container (includes all states)
    #[arg(short = 'l', long)]
    latest: bool,
    /// Display total file sizes
    #[arg(short = 's', long)]
    size: bool,
    /// Filter output based on conditions provided
    #[arg(short = 'f', long)]
    filter: Vec<String>,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

// `logs` flags.
#[derive(Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short = 'f', long)]
    follow: bool,
    /// Number of lines to show from the end of the logs
    #[arg(short = 'n', long, default_value = "all", allow_hyphen_values = true)]
    tail: String,
    /// Show logs since timestamp (RFC 3339) or relative (42m)
    #[arg(long)]
    since: Option<String>,
    /// Show logs before a timestamp (RFC 3339) or relative (42m)
    #[arg(long)]
    until: Option<String>,
    /// Show timestamps
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Container
    container: String,
}

// `inspect` flags.
#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Display total file sizes
    #[arg(short = 's', long)]
    size: bool,
    /// Only inspect objects of this type (container, image, volume)
    #[arg(long = "type")]
    kind: Option<String>,
    /// Names or IDs
    #[arg(required = true)]
    names: Vec<String>,
}

// `rename` arguments.
#[derive(Args)]
pub struct RenameArgs {
    /// Container
    container: String,
    /// New name
    new_name: String,
}

// `stats` flags.
#[derive(Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Containers
    containers: Vec<String>,
}

// `top` arguments.
#[derive(Args)]
pub struct TopArgs {
    /// Container
    container: String,
    /// ps options
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    ps_args: Vec<String>,
}

// `port` arguments.
#[derive(Args)]
pub struct PortArgs {
    /// Container
    container: String,
    /// PRIVATE_PORT[/PROTO]
    port: Option<String>,
}

// `attach` flags.
#[derive(Args)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    /// Proxy all received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    /// Container
    container: String,
}

// `exec` flags.
#[derive(Args)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    tty: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file")]
    env_file: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]")
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    privileged: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    /// Container
    container: String,
    /// Command and arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `container` subcommands.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum ContainerCommand {
    /// List containers
    #[command(alias = "ps", name = "ls")]
    Ls(PsArgs),
    /// Create and run a new container
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(CreateArgs),
    /// Start containers
    Start(StartArgs),
    /// Stop containers
    Stop(StopArgs),
    /// Restart containers
    Restart(StopArgs),
    /// Kill containers
    Kill(KillArgs),
    /// Remove containers
    Rm(RmArgs),
    /// Fetch logs
    Logs(LogsArgs),
    /// Wait for containers
    Wait(NamesArgs),
    /// Inspect containers
    Inspect(InspectArgs),
    /// Rename a container
    Rename(RenameArgs),
    /// Pause containers
    Pause(NamesArgs),
    /// Unpause containers
    Unpause(NamesArgs),
    /// Resource usage
    Stats(StatsArgs),
    /// Processes of a container
    Top(TopArgs),
    /// Remove all stopped containers
    Prune(PruneArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(super::filesystem::CpArgs),
    /// Export a container's filesystem as a tar archive
    Export(super::filesystem::ExportArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(super::filesystem::DiffArgs),
    /// Create a new image from a container's changes
    Commit(super::filesystem::CommitArgs),
    /// Update configuration of one or more containers
    Update(UpdateArgs),
}

// The resource limits and restart policy: set by `create`/`run`, changed by `update`.
#[derive(Args, Clone)]
pub struct ResourceArgs {
    /// Restart policy to apply when a container exits (no, always, unless-stopped, on-failure[:max-retries])
    #[arg(long, allow_hyphen_values = true)]
    restart: Option<String>,
    /// Memory limit
    #[arg(short = 'm', long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Number of CPUs
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares", allow_hyphen_values = true)]
    cpu_shares: Option<i64>,
    /// CPUs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-cpus", allow_hyphen_values = true)]
    cpuset_cpus: Option<String>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
}

impl ResourceArgs {
    fn options(&self) -> ResourceOptions {
        ResourceOptions {
            memory: self.memory.clone(),
            memory_swap: self.memory_swap.clone(),
            cpus: self.cpus.clone(),
            cpu_shares: self.cpu_shares,
            cpuset_cpus: self.cpuset_cpus.clone(),
            pids_limit: self.pids_limit,
            restart: self.restart.clone(),
        }
    }
}

// `update` flags: the limits and restart policy of `run`, for containers that exist.
#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    resources: ResourceArgs,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

/// `update`: each container's new limits, Docker's output (the names as given) and exit code.
pub fn update(engine: &Engine, args: UpdateArgs) -> anyhow::Result<i32> {
    let options = args.resources.options();
    let mut failed = false;
    for name in &args.containers {
        match engine.update(name, &options) {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return Err(Failed(1).into());
    }
    Ok(0)
}

// `container prune` flags.
#[derive(Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
    /// Provide filter values
    #[arg(long)]
    filter: Vec<String>,
}

pub fn container_command(engine: &Engine, command: ContainerCommand) -> anyhow::Result<i32> {
    match command {
        ContainerCommand::Ls(a) => ps(engine, a),
        ContainerCommand::Run(_) => {
            unreachable!("`container run` is dispatched before the store is opened")
        }
        ContainerCommand::Create(a) => create(engine, a),
        ContainerCommand::Start(a) => start(engine, a),
        ContainerCommand::Stop(a) => stop(engine, a),
        ContainerCommand::Restart(a) => restart(engine, a),
        ContainerCommand::Kill(a) => kill(engine, a),
        ContainerCommand::Rm(a) => rm(engine, a),
        ContainerCommand::Logs(a) => logs(engine, a),
        ContainerCommand::Wait(a) => wait(engine, a),
        ContainerCommand::Inspect(a) => inspect(
            engine,
            InspectArgs {
                kind: Some("container".into()),
                ..a
            },
        ),
        ContainerCommand::Rename(a) => rename(engine, a),
        ContainerCommand::Pause(a) => pause(engine, a, true),
        ContainerCommand::Unpause(a) => pause(engine, a, false),
        ContainerCommand::Stats(a) => stats(engine, a),
        ContainerCommand::Top(a) => top(engine, a),
        ContainerCommand::Prune(a) => prune(engine, a),
        ContainerCommand::Exec(a) => exec(engine, a),
        ContainerCommand::Attach(a) => attach(engine, a),
        ContainerCommand::Port(a) => port(engine, a),
        ContainerCommand::Cp(a) => super::filesystem::cp(engine, a),
        ContainerCommand::Export(a) => super::filesystem::export(engine, a),
        ContainerCommand::Diff(a) => super::filesystem::diff(engine, a),
        ContainerCommand::Commit(a) => super::filesystem::commit(engine, a),
        ContainerCommand::Update(a) => update(engine, a),
    }
}

pub fn create(engine: &Engine, args: CreateArgs) -> anyhow::Result<i32> {
    let options = args.options(false)?;
    args.check_cidfile()?;
    let platform = super::registry::platform(args.platform.as_deref())?;
    super::registry::ensure_image(engine, args.image(), args.pull, platform.as_ref())?;
    let record = engine.create(&options)?;
    args.write_cidfile(&record.id)?;
    println!("{}", record.id);
    Ok(0)
}

/// The `--detach-keys` of a command: Docker's ctrl-p ctrl-q unless given.
fn detach_keys(flag: &Option<String>) -> anyhow::Result<DetachKeys> {
    Ok(DetachKeys::parse(flag.as_deref().unwrap_or_default())?)
}

/// Docker's check before it attaches a terminal: `-i -t` needs one on stdin, since the container's
/// terminal would otherwise get a pipe's bytes with no way to resize or signal it.
fn check_input_is_a_terminal(tty: bool, interactive: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if tty && interactive && !std::io::stdin().is_terminal() {
        eprintln!("the input device is not a TTY");
        return Err(Failed(1).into());
    }
    Ok(())
}

/// `run`: the container's monitor is spawned first, so that it loads and opens the store while this
/// process opens it too, looks the image up (or pulls it) and writes the container's record.
pub fn run(root: &Path, runroot: &Path, args: RunArgs) -> anyhow::Result<i32> {
    let attach = !args.detach;
    if attach {
        check_input_is_a_terminal(args.create.tty, args.create.interactive)?;
    }
    let options = args.create.options(attach)?;
    args.create.check_cidfile()?;
    let keys = detach_keys(&args.detach_keys)?;
    let platform = super::registry::platform(args.create.platform.as_deref())?;
    let stdio = if attach {
        StdioMode::Inherit(keys)
    } else {
        StdioMode::Detached
    };
    let pending = PendingRun::spawn(root, runroot, &stdio, options.interactive)?;
    let engine = Engine::open(root, runroot)?;
    super::registry::ensure_image(
        &engine,
        args.create.image(),
        args.create.pull,
        platform.as_ref(),
    )?;
    let (record, started) = engine.run(&options, pending)?;
    args.create.write_cidfile(&record.id)?;
    if args.detach {
        println!("{}", record.id);
        return Ok(0);
    }
    // The store is not needed while the container runs.
    drop(engine);
    match wait_attached(started, record.config.tty, args.sig_proxy)? {
        SessionEnd::Exited(code) => Ok(code),
        SessionEnd::Detached => Ok(0),
    }
}

pub fn attach(engine: &Engine, args: AttachArgs) -> anyhow::Result<i32> {
    let record = engine.container(&args.container)?;
    let keys = detach_keys(&args.detach_keys)?;
    let started = engine.attach(&record.id, !args.no_stdin, &keys)?;
    match wait_attached(started, record.config.tty, args.sig_proxy)? {
        SessionEnd::Exited(code) => Ok(code),
        SessionEnd::Detached => Ok(0),
    }
}

pub fn exec(engine: &Engine, args: ExecArgs) -> anyhow::Result<i32> {
    if !args.detach {
        check_input_is_a_terminal(args.tty, args.interactive)?;
    }
    let mut env = Vec::new();
    for file in &args.env_file {
        env.extend(berth_runtime::options::read_env_file(Path::new(file))?);
    }
    env.extend(args.env);
    let options = ExecOptions {
        cmd: args.command,
        env,
        workdir: args.workdir,
        user: args.user,
        tty: args.tty,
        interactive: args.interactive,
        detach: args.detach,
        privileged: args.privileged,
        detach_keys: detach_keys(&args.detach_keys)?,
    };
    match engine.exec(&args.container, &options)? {
        ExecEnd::Exited(code) => Ok(code),
        ExecEnd::Detached => Ok(0),
    }
}

pub fn start(engine: &Engine, args: StartArgs) -> anyhow::Result<i32> {
    if args.attach && args.containers.len() > 1 {
        bail!("you cannot start and attach multiple containers at once");
    }
    let keys = detach_keys(&args.detach_keys)?;
    let mut failed = false;
    for name in &args.containers {
        if args.attach {
            let record = engine.container(name)?;
            // Already running: attach to it, as Docker does.
            let started = if record.state.running && engine.monitor_alive(&record.id) {
                engine.attach(&record.id, args.interactive, &keys)?
            } else {
                engine.start(name, StdioMode::Inherit(keys.clone()))?
            };
            return match wait_attached(started, record.config.tty, true)? {
                SessionEnd::Exited(code) => Ok(code),
                SessionEnd::Detached => Ok(0),
            };
        }
        match engine.start(name, StdioMode::Detached) {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("Error: failed to start containers");
        return Err(Failed(1).into());
    }
    Ok(0)
}

fn for_each(
    names: &[String],
    mut f: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<i32> {
    let mut failed = false;
    for name in names {
        match f(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error response from daemon: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub fn stop(engine: &Engine, args: StopArgs) -> anyhow::Result<i32> {
    for_each(&args.containers, |name| {
        if let Some(sig) = &args.signal {
            let record = engine.container(name)?;
            if record.state.running {
                let sig = berth_runtime::signal::parse_signal(sig)?;
                engine.kill(name, sig)?;
            }
        }
        engine.stop(name, args.time)?;
        Ok(())
    })
}

pub fn restart(engine: &Engine, args: StopArgs) -> anyhow::Result<i32> {
    for_each(&args.containers, |name| {
        engine.restart(name, args.time)?;
        Ok(())
    })
}

pub fn kill(engine: &Engine, args: KillArgs) -> anyhow::Result<i32> {
    let signal = berth_runtime::signal::parse_signal(&args.signal)?;
    for_each(&args.containers, |name| {
        engine.kill(name, signal)?;
        Ok(())
    })
}

pub fn rm(engine: &Engine, args: RmArgs) -> anyhow::Result<i32> {
    for_each(&args.containers, |name| {
        engine.remove(name, args.force, args.volumes)?;
        Ok(())
    })
}

pub fn wait(engine: &Engine, args: NamesArgs) -> anyhow::Result<i32> {
    let mut failed = false;
    for name in &args.containers {
        match engine.wait(name) {
            Ok(code) => println!("{code}"),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub fn rename(engine: &Engine, args: RenameArgs) -> anyhow::Result<i32> {
    let record = engine.container(&args.container)?;
    engine
        .store()
        .rename_container(&record.id, &args.new_name)?;
    Ok(0)
}

pub fn pause(engine: &Engine, args: NamesArgs, paused: bool) -> anyhow::Result<i32> {
    for_each(&args.containers, |name| {
        engine.set_paused(name, paused)?;
        Ok(())
    })
}

/// Docker's STATUS column text.
fn status_text(record: &ContainerRecord) -> String {
    let s = &record.state;
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let mut text = format!("Up {}", human_duration(seconds_since(&s.started_at)));
            if let Some(h) = &s.health {
                text.push_str(&format!(
                    " ({})",
                    if h.status == "starting" {
                        "health: starting".to_string()
                    } else {
                        h.status.clone()
                    }
                ));
            }
            text
        }
        Status::Paused => format!(
            "Up {} (Paused)",
            human_duration(seconds_since(&s.started_at))
        ),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code,
            human_duration(seconds_since(&s.finished_at))
        ),
        Status::Removing => "Removal In Progress".into(),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code,
            human_duration(seconds_since(&s.finished_at))
        ),
        Status::Dead => "Dead".into(),
    }
}

fn command_text(record: &ContainerRecord, no_trunc: bool) -> String {
    let args = berth_runtime::spec::process_args(record);
    let text = args.join(" ");
    if no_trunc || text.chars().count() <= 20 {
        format!("\"{text}\"")
    } else {
        format!("\"{}…\"", text.chars().take(19).collect::<String>())
    }
}

/// Docker shows the name used at create while it still points at the same image, else the short ID.
/// `resolved` caches name lookups across the rows of one listing.
fn image_text(
    engine: &Engine,
    record: &ContainerRecord,
    resolved: &mut std::collections::HashMap<String, Option<berth_store::Digest>>,
) -> String {
    let current = resolved
        .entry(record.config.image.clone())
        .or_insert_with(|| {
            engine
                .store()
                .image(&record.config.image)
                .ok()
                .map(|i| i.id)
        });
    if current.as_ref() == Some(&record.image_id) {
        record.config.image.clone()
    } else {
        record.image_id.short().to_string()
    }
}

/// A `ps --filter key=value` as a test of a record. What it needs from the store (the image of
/// `ancestor`, the container of `before`/`since`) is looked up once here, not once per container.
type ContainerFilter = Box<dyn Fn(&ContainerRecord) -> bool>;

fn container_filter(engine: &Engine, filter: &str) -> anyhow::Result<ContainerFilter> {
    let (key, value) = filter
        .split_once('=')
        .with_context(|| format!("bad format of filter (expected name=value): {filter}"))?;
    let value = value.to_string();
    Ok(match key {
        "id" => Box::new(move |r| r.id.starts_with(&value)),
        "name" => Box::new(move |r| r.name.contains(&value)),
        "status" => Box::new(move |r| r.state.status.as_str() == value),
        "exited" => Box::new(move |r| {
            r.state.status == Status::Exited && r.state.exit_code.to_string() == value
        }),
        "label" => match value.split_once('=') {
            Some((k, v)) => {
                let (k, v) = (k.to_string(), v.to_string());
                Box::new(move |r| r.config.labels.get(&k).is_some_and(|x| *x == v))
            }
            None => Box::new(move |r| r.config.labels.contains_key(&value)),
        },
        "ancestor" => {
            let image = engine.store().image(&value).ok().map(|i| i.id);
            Box::new(move |r| image.as_ref() == Some(&r.image_id))
        }
        "health" => Box::new(move |r| {
            r.state
                .health
                .as_ref()
                .map_or("none", |h| h.status.as_str())
                == value
        }),
        "volume" => Box::new(move |r| {
            r.mounts
                .iter()
                .any(|m| m.name == value || m.destination == value)
        }),
        // Created before or after the named container (RFC 3339 in UTC with the same precision,
        // so the texts sort as the times do).
        "before" => {
            let created = engine.container(&value)?.created;
            Box::new(move |r| r.created < created)
        }
        "since" => {
            let created = engine.container(&value)?.created;
            Box::new(move |r| r.created > created)
        }
        "network" => Box::new(move |r| {
            r.host_config.network_mode == value
                || r.host_config.extra_networks.iter().any(|n| n.name == value)
        }),
        other => bail!("invalid filter '{other}'"),
    })
}

pub fn ps(engine: &Engine, args: PsArgs) -> anyhow::Result<i32> {
    let mut records = engine.containers()?;
    let show_all = args.all || args.last >= 0 || args.latest || !args.filter.is_empty();
    if !show_all {
        records.retain(|r| {
            matches!(
                r.state.status,
                Status::Running | Status::Paused | Status::Restarting
            )
        });
    }
    for f in &args.filter {
        let keep = container_filter(engine, f)?;
        records.retain(|r| keep(r));
    }
    let last = if args.latest { 1 } else { args.last };
    if last >= 0 {
        records.truncate(last as usize);
    }
    if args.quiet {
        for r in &records {
            println!(
                "{}",
                if args.no_trunc {
                    r.id.as_str()
                } else {
                    &r.id[..12]
                }
            );
        }
        return Ok(0);
    }
    let mut resolved = std::collections::HashMap::new();
    let rows: Vec<Value> = records
        .iter()
        .map(|r| {
            let size = if args.size {
                human_size(engine.store().snapshots().container_size(&r.id))
            } else {
                String::new()
            };
            json!({
                "ID": if args.no_trunc { r.id.clone() } else { r.id[..12].to_string() },
                "Image": image_text(engine, r, &mut resolved),
                "Command": command_text(r, args.no_trunc),
                "CreatedAt": r.created,
                "RunningFor": format!("{} ago", human_duration(seconds_since(&r.created))),
                "Status": status_text(r),
                "State": r.state.status.as_str(),
                "Ports": ports_text(r),
                "Names": r.name,
                "Labels": r.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                "Networks": std::iter::once(r.host_config.network_mode.as_str())
                    .filter(|mode| !mode.starts_with("container:"))
                    .chain(r.host_config.extra_networks.iter().map(|n| n.name.as_str()))
                    .collect::<Vec<_>>()
                    .join(","),
                "Mounts": r.mounts.iter().map(|m| if m.name.is_empty() { m.source.clone() } else { m.name.clone() }).collect::<Vec<_>>().join(","),
                "Size": size,
            })
        })
        .collect();
    let (header, fields): (Vec<&str>, Vec<&str>) = if args.size {
        (
            vec![
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
                "SIZE",
            ],
            vec![
                "ID",
                "Image",
                "Command",
                "RunningFor",
                "Status",
                "Ports",
                "Names",
                "Size",
            ],
        )
    } else {
        (
            vec![
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ],
            vec![
                "ID",
                "Image",
                "Command",
                "RunningFor",
                "Status",
                "Ports",
                "Names",
            ],
        )
    };
    print_rows(args.format.as_deref(), &header, &fields, &rows)?;
    Ok(0)
}

/// Parses `--since`/`--until` as Docker does: RFC 3339, a date and time without zone (local time,
/// down to a bare `2026-01-02`), a Unix timestamp, or a duration before now (`10m`).
pub(super) fn parse_time_bound(value: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let naive = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M"))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(&format!("{value}:00"), "%Y-%m-%dT%H:%M")
        })
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        });
    if let Ok(naive) = naive {
        if let Some(local) = chrono::Local.from_local_datetime(&naive).earliest() {
            return Ok(local.with_timezone(&chrono::Utc));
        }
    }
    if let Ok(secs) = value.parse::<f64>() {
        return chrono::DateTime::from_timestamp(secs as i64, ((secs.fract()) * 1e9) as u32)
            .context("timestamp out of range");
    }
    let ns = berth_runtime::options::parse_duration(value).map_err(|_| {
        anyhow::anyhow!(
            "invalid time value {value:?}: use RFC 3339, a Unix timestamp or a duration like 10m"
        )
    })?;
    Ok(chrono::Utc::now() - chrono::Duration::nanoseconds(ns))
}

pub fn logs(engine: &Engine, args: LogsArgs) -> anyhow::Result<i32> {
    let record = engine.container(&args.container)?;
    if record.host_config.log_config.kind == "none" {
        bail!("configured logging driver does not support reading");
    }
    let path = engine.log_path(&record.id);
    let since = args.since.as_deref().map(parse_time_bound).transpose()?;
    let until = args.until.as_deref().map(parse_time_bound).transpose()?;
    // Docker shows everything for `all`, a negative number or anything that is not a number.
    let tail: Option<usize> = args.tail.parse().ok();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let print = |r: &LogRecord,
                 out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>|
     -> std::io::Result<()> {
        let prefix = if args.timestamps {
            format!("{} ", r.time)
        } else {
            String::new()
        };
        if r.stream == "stderr" {
            out.flush()?;
            let mut e = stderr.lock();
            write!(e, "{prefix}{}", r.log)
        } else {
            write!(out, "{prefix}{}", r.log)
        }
    };
    let in_range = |r: &LogRecord| {
        let t = r.timestamp();
        since.is_none_or(|s| t.is_some_and(|t| t >= s))
            && until.is_none_or(|u| t.is_some_and(|t| t <= u))
    };
    // A follower reads the backlog itself and goes on from exactly where it ends: nothing written
    // meanwhile is lost or repeated, whatever rotation does.
    let (mut records, mut follower) = if args.follow {
        match logs::LogFollower::from_oldest(&path) {
            Ok(mut follower) => (follower.poll()?, Some(follower)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
            Err(e) => return Err(e.into()),
        }
    } else {
        (logs::read_all(&path).unwrap_or_default(), None)
    };
    records.retain(|r| in_range(r));
    let skip = tail.map_or(0, |n| records.len().saturating_sub(n));
    for r in &records[skip..] {
        if print(r, &mut out).is_err() {
            return Ok(0);
        }
    }
    out.flush().ok();
    if let Some(follower) = follower.as_mut() {
        loop {
            let batch = follower.poll()?;
            for r in &batch {
                if until.is_some_and(|u| r.timestamp().is_some_and(|t| t > u)) {
                    return Ok(0);
                }
                if print(r, &mut out).is_err() {
                    return Ok(0);
                }
            }
            if out.flush().is_err() {
                return Ok(0);
            }
            if batch.is_empty() {
                if !engine.monitor_alive(&record.id) {
                    // Read what the monitor wrote last, then stop.
                    for r in follower.poll()? {
                        let _ = print(&r, &mut out);
                    }
                    out.flush().ok();
                    return Ok(0);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(0)
}

/// Docker's container inspect document.
/// Docker's `NetworkSettings`: the top-level fields of the default network, and `Networks`.
fn network_settings_json(r: &ContainerRecord) -> Value {
    let n = &r.network_settings;
    let mut ports = serde_json::Map::new();
    for port in r.config.exposed_ports.keys() {
        ports.insert(port.clone(), Value::Null);
    }
    for (port, bindings) in &n.ports {
        ports.insert(port.clone(), json!(bindings));
    }
    let mut networks = serde_json::Map::new();
    networks.insert(
        r.host_config.network_mode.clone(),
        json!({
            "IPAddress": n.ip_address, "IPPrefixLen": n.ip_prefix_len, "Gateway": n.gateway,
            "MacAddress": n.mac_address, "NetworkID": r.host_config.network_mode,
            "Aliases": r.host_config.network_aliases,
        }),
    );
    for extra in &r.host_config.extra_networks {
        let e = n.networks.get(&extra.name).cloned().unwrap_or_default();
        networks.insert(
            extra.name.clone(),
            json!({
                "IPAddress": e.ip_address, "IPPrefixLen": e.ip_prefix_len, "Gateway": e.gateway,
                "MacAddress": e.mac_address, "NetworkID": extra.name, "Aliases": extra.aliases,
            }),
        );
    }
    json!({
        "Bridge": "", "SandboxID": "", "HairpinMode": false,
        "Ports": if r.state.running { Value::Object(ports) } else { json!({}) },
        "IPAddress": n.ip_address, "IPPrefixLen": n.ip_prefix_len, "Gateway": n.gateway,
        "MacAddress": n.mac_address,
        "Networks": networks,
    })
}

/// The PORTS column: `0.0.0.0:8080->80/tcp, 443/tcp`.
fn ports_text(r: &ContainerRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (port, bindings) in &r.network_settings.ports {
        for b in bindings {
            parts.push(format!("{}:{}->{port}", b.host_ip, b.host_port));
        }
    }
    if r.state.running {
        for port in r.config.exposed_ports.keys() {
            if !r.network_settings.ports.contains_key(port) {
                parts.push(port.clone());
            }
        }
    }
    parts.join(", ")
}

/// `port CONTAINER [PRIVATE_PORT[/PROTO]]`.
pub fn port(engine: &Engine, args: PortArgs) -> anyhow::Result<i32> {
    let r = engine.container(&args.container)?;
    let wanted = args.port.as_deref().map(|p| {
        if p.contains('/') {
            p.to_string()
        } else {
            format!("{p}/tcp")
        }
    });
    let mut found = false;
    for (port, bindings) in &r.network_settings.ports {
        if wanted.as_ref().is_some_and(|w| w != port) {
            continue;
        }
        for b in bindings {
            found = true;
            if wanted.is_some() {
                println!("{}:{}", b.host_ip, b.host_port);
            } else {
                println!("{port} -> {}:{}", b.host_ip, b.host_port);
            }
        }
    }
    if let (Some(w), false) = (&wanted, found) {
        bail!("No public port '{w}' published for {}", args.container);
    }
    Ok(0)
}

pub fn container_json(engine: &Engine, r: &ContainerRecord, size: bool) -> Value {
    let args = berth_runtime::spec::process_args(r);
    let files = engine.store().container_dir(&r.id);
    let snap = engine.store().snapshots();
    let lower: Vec<String> = snap
        .lower_dirs(&r.layers)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut v = json!({
        "Id": r.id,
        "Created": r.created,
        "Path": args.first().cloned().unwrap_or_default(),
        "Args": args.iter().skip(1).collect::<Vec<_>>(),
        "State": r.state,
        "Image": r.image_id,
        "ResolvConfPath": files.join("resolv.conf"),
        "HostnamePath": files.join("hostname"),
        "HostsPath": files.join("hosts"),
        "LogPath": engine.log_path(&r.id),
        "Name": format!("/{}", r.name),
        "RestartCount": r.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": Value::Null,
        "HostConfig": r.host_config,
        "GraphDriver": {
            "Name": "overlay",
            "Data": {
                "LowerDir": lower.join(":"),
                "UpperDir": snap.upper_dir(&r.id),
                "MergedDir": snap.merged_dir(&r.id),
                "WorkDir": snap.container_dir(&r.id).join("work"),
            }
        },
        "Mounts": r.mounts,
        "Config": r.config,
        "NetworkSettings": network_settings_json(r),
    });
    // Berth's own bookkeeping, stored with the record, is not part of Docker's document.
    if let Some(state) = v["State"].as_object_mut() {
        state.remove("MonitorPid");
        state.remove("StoppedByUser");
    }
    if let Some(mounts) = v["Mounts"].as_array_mut() {
        for m in mounts.iter_mut().filter_map(Value::as_object_mut) {
            m.remove("Anonymous");
            m.remove("Options");
        }
    }
    if size {
        let rw = snap.container_size(&r.id);
        v["SizeRw"] = json!(rw);
        v["SizeRootFs"] = json!(
            rw + engine
                .store()
                .image(r.image_id.as_str())
                .map(|i| i.size)
                .unwrap_or(0)
        );
    }
    v
}

pub fn inspect(engine: &Engine, args: InspectArgs) -> anyhow::Result<i32> {
    let mut docs = Vec::new();
    let mut failed = false;
    for name in &args.names {
        let want = args.kind.as_deref();
        let found: Option<Value> = (|| {
            if want.is_none() || want == Some("container") {
                if let Ok(r) = engine.container(name) {
                    return Some(container_json(engine, &r, args.size));
                }
            }
            if want.is_none() || want == Some("image") {
                if let Ok(i) = engine.store().image(name) {
                    return Some(super::image::image_json(engine, &i));
                }
            }
            if want.is_none() || want == Some("volume") {
                if let Ok(v) = engine.store().volume(name) {
                    return Some(super::volume::volume_json(&v));
                }
            }
            None
        })();
        match found {
            Some(doc) => docs.push(doc),
            None => {
                eprintln!("Error: No such object: {name}");
                failed = true;
            }
        }
    }
    crate::format::print_documents(args.format.as_deref(), &docs)?;
    Ok(if failed { 1 } else { 0 })
}

pub fn stats(engine: &Engine, args: StatsArgs) -> anyhow::Result<i32> {
    let pick = |engine: &Engine| -> anyhow::Result<Vec<ContainerRecord>> {
        if args.containers.is_empty() {
            Ok(engine
                .containers()?
                .into_iter()
                .filter(|r| args.all || r.state.running)
                .collect())
        } else {
            args.containers
                .iter()
                .map(|n| Ok(engine.container(n)?))
                .collect()
        }
    };
    let sample = |records: &[ContainerRecord]| -> Vec<(u64, berth_runtime::cgroup::Usage)> {
        records
            .iter()
            .map(|r| (now_ns(), berth_runtime::cgroup::usage(&r.id)))
            .collect()
    };
    let total_mem = host_memory();
    loop {
        let records = pick(engine)?;
        let before = sample(&records);
        std::thread::sleep(Duration::from_millis(500));
        let after = sample(&records);
        let rows: Vec<Value> = records
            .iter()
            .zip(before.iter().zip(after.iter()))
            .map(|(r, ((t0, u0), (t1, u1)))| {
                let cpu = if r.state.running && t1 > t0 {
                    (u1.cpu_ns.saturating_sub(u0.cpu_ns)) as f64 / (t1 - t0) as f64 * 100.0
                } else {
                    0.0
                };
                let limit = if u1.memory_limit > 0 { u1.memory_limit } else { total_mem };
                let mem_pct = if limit > 0 { u1.memory as f64 / limit as f64 * 100.0 } else { 0.0 };
                let (rx, tx) = berth_runtime::network::traffic(r).unwrap_or((0, 0));
                json!({
                    "ID": if args.no_trunc { r.id.clone() } else { r.id[..12].to_string() },
                    "Container": if args.no_trunc { r.id.clone() } else { r.id[..12].to_string() },
                    "Name": r.name,
                    "CPUPerc": format!("{cpu:.2}%"),
                    "MemUsage": format!("{} / {}", binary_size(u1.memory), binary_size(limit)),
                    "MemPerc": format!("{mem_pct:.2}%"),
                    "NetIO": format!("{} / {}", human_size(rx), human_size(tx)),
                    "BlockIO": format!("{} / {}", human_size(u1.block_read), human_size(u1.block_write)),
                    "PIDs": u1.pids.to_string(),
                })
            })
            .collect();
        if !args.no_stream {
            print!("\x1b[2J\x1b[H");
        }
        print_rows(
            args.format.as_deref(),
            &[
                "CONTAINER ID",
                "NAME",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "NET I/O",
                "BLOCK I/O",
                "PIDS",
            ],
            &[
                "ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs",
            ],
            &rows,
        )?;
        std::io::stdout().flush().ok();
        if args.no_stream {
            return Ok(0);
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn top(engine: &Engine, args: TopArgs) -> anyhow::Result<i32> {
    let record = engine.container(&args.container)?;
    if !record.state.running {
        bail!("container {} is not running", args.container);
    }
    let pids = berth_runtime::cgroup::pids(&record.id);
    let ps_args = if args.ps_args.is_empty() {
        vec!["-ef".to_string()]
    } else {
        args.ps_args.clone()
    };
    // As Docker: the container's PIDs are asked for (`-q`), so that options that select processes
    // by terminal or user (BSD `c`, `u`) still list them; some options do not combine with `-q`,
    // and then every process is listed and filtered below.
    let pid_list = pids
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let with_pids = std::process::Command::new("ps")
        .args(&ps_args)
        .args(["-q", &pid_list])
        .output()
        .context("running ps")?;
    let output = if with_pids.status.success() && !pids.is_empty() {
        with_pids
    } else {
        std::process::Command::new("ps")
            .args(&ps_args)
            .output()
            .context("running ps")?
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(0);
    };
    let pid_col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    println!("{header}");
    for line in lines {
        let pid: Option<i32> = line
            .split_whitespace()
            .nth(pid_col)
            .and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(0)
}

pub fn prune(engine: &Engine, args: PruneArgs) -> anyhow::Result<i32> {
    if !super::confirm_prune(
        args.force,
        "WARNING! This will remove all stopped containers.",
    ) {
        return Ok(0);
    }
    let mut reclaimed = 0;
    engine.remove_orphans()?;
    println!("Deleted Containers:");
    for r in engine.containers()? {
        if !matches!(
            r.state.status,
            Status::Exited | Status::Created | Status::Dead
        ) {
            continue;
        }
        engine.await_monitor_finish(&r.id);
        if !engine.monitor_alive(&r.id) {
            reclaimed += engine.store().snapshots().container_size(&r.id);
            engine.remove(&r.id, false, false)?;
            println!("{}", r.id);
        }
    }
    println!("\nTotal reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_take_dockers_forms() {
        use chrono::TimeZone;
        let local = |y, mo, d, h, mi, s| {
            chrono::Local
                .with_ymd_and_hms(y, mo, d, h, mi, s)
                .earliest()
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(
            parse_time_bound("2026-01-02T03:04:05Z").unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
        );
        for (text, (h, mi, sec)) in [
            ("2026-01-02T03:04:05", (3, 4, 5)),
            ("2026-01-02T03:04", (3, 4, 0)),
            ("2026-01-02T03", (3, 0, 0)),
            ("2026-01-02", (0, 0, 0)),
        ] {
            assert_eq!(
                parse_time_bound(text).unwrap(),
                local(2026, 1, 2, h, mi, sec),
                "{text}"
            );
        }
        assert_eq!(
            parse_time_bound("1700000000").unwrap().timestamp(),
            1_700_000_000
        );
        assert!(parse_time_bound("yesterday").is_err());
    }
}
