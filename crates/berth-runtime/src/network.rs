//! Connecting containers to their network (`--network bridge`, the default) through `berth-net`, and
//! recording what they got (Docker's `NetworkSettings`, /etc/hosts).

use std::net::Ipv4Addr;

use berth_net::{Attachment, Network, PortMapping};
use berth_store::container::{
    ContainerRecord, EndpointSettings, ExtraNetwork, NetworkSettings, PortBinding,
};

use crate::engine::Engine;
use crate::error::RuntimeError;

fn net_err(e: berth_net::NetError) -> RuntimeError {
    match e {
        berth_net::NetError::PortTaken(_) => RuntimeError::Start(format!(
            "driver failed programming external connectivity on endpoint: {e}"
        )),
        other => RuntimeError::Start(format!("network: {other}")),
    }
}

/// The ports to publish: `-p` bindings, plus every exposed port on a free host port with `-P`.
fn port_mappings(record: &ContainerRecord) -> Result<Vec<PortMapping>, RuntimeError> {
    let mut mappings = Vec::new();
    let mut add = |port: &str, binding: &PortBinding| -> Result<(), RuntimeError> {
        let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
        let bad = || RuntimeError::InvalidOption(format!("invalid port {port}"));
        mappings.push(PortMapping {
            protocol: protocol.to_string(),
            container_port: number.parse().map_err(|_| bad())?,
            host_ip: if binding.host_ip.is_empty() {
                Ipv4Addr::UNSPECIFIED
            } else {
                binding.host_ip.parse().map_err(|_| bad())?
            },
            host_port: if binding.host_port.is_empty() {
                0
            } else {
                binding.host_port.parse().map_err(|_| bad())?
            },
        });
        Ok(())
    };
    let hc = &record.host_config;
    for (port, bindings) in &hc.port_bindings {
        for binding in bindings {
            add(port, binding)?;
        }
    }
    if hc.publish_all_ports {
        for port in record.config.exposed_ports.keys() {
            if !hc.port_bindings.contains_key(port) {
                add(port, &PortBinding::default())?;
            }
        }
    }
    Ok(mappings)
}

/// `--ip` / `network connect --ip` as recorded (empty: any address).
fn requested_ip(text: &str) -> Result<Option<Ipv4Addr>, RuntimeError> {
    match text {
        "" => Ok(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|_| RuntimeError::InvalidOption(format!("invalid IPv4 address: {text}"))),
    }
}

/// The names a container answers to on a network: its name, short ID and the aliases given there.
fn dns_names(record: &ContainerRecord, aliases: &[String]) -> Vec<String> {
    let mut names = vec![record.name.clone(), record.id[..12].to_string()];
    names.extend(aliases.iter().cloned());
    names
}

/// A container's network namespace, made by the monitor before the container, and the child process
/// that plugs it into the container's network meanwhile: libcontainer's init joins the namespace by
/// path ([`Prewired::namespace_path`]), so the veth pair, addresses and routes (about 2 ms of kernel
/// work) are set up while the container is created instead of after it.
///
/// Dropped before [`connect`] took it (the container was not created), it waits for the child and
/// undoes the wiring.
pub(crate) struct Prewired {
    id: String,
    network: Network,
    ip: Ipv4Addr,
    ports: Vec<PortMapping>,
    names: Vec<String>,
    /// The new network namespace; the container's init holds it once created.
    namespace: std::fs::File,
    /// The plugging child, until waited for.
    plugging: Option<Plugging>,
    /// Taken by [`connect`]: the container owns the wiring now.
    connected: bool,
}

impl Prewired {
    /// The path libcontainer's init opens to join the namespace (this process's descriptor of it).
    pub(crate) fn namespace_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&self.namespace)
        ))
    }

    fn attachment(&self) -> Attachment<'_> {
        Attachment {
            ip: Some(self.ip),
            ports: &self.ports,
            names: &self.names,
            interface: 0,
        }
    }

    /// Waits for the plugging child: Ok once the namespace is wired.
    fn plugged(&mut self) -> Result<(), RuntimeError> {
        match self.plugging.take() {
            Some(child) => child.wait(),
            None => Ok(()),
        }
    }
}

impl Drop for Prewired {
    fn drop(&mut self) {
        if !self.connected {
            let _ = self.plugged();
            self.network.abandon(&self.id, &self.attachment());
        }
    }
}

/// The child process that runs [`Network::plug`] while the monitor creates the container.
struct Plugging {
    child: nix::unistd::Pid,
    /// Its error, if any, as text; end of file when it exits.
    report: std::fs::File,
}

impl Plugging {
    fn start(
        network: &Network,
        id: &str,
        namespace: std::os::fd::BorrowedFd<'_>,
        ip: Ipv4Addr,
    ) -> Result<Self, RuntimeError> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| RuntimeError::Io(format!("pipe: {e}")))?;
        // SAFETY: the monitor runs one thread, so the child starts with no lock held by another
        // thread; it only plugs the namespace in (netlink requests and a sysfs write) and leaves
        // with _exit, running no destructor or exit handler on state it shares with the monitor.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(read);
                let code = match network.plug(id, namespace, ip, 0) {
                    Ok(()) => 0,
                    Err(e) => {
                        use std::io::Write;
                        let _ = std::fs::File::from(write).write_all(e.to_string().as_bytes());
                        1
                    }
                };
                // SAFETY: ends the child at once, as a forked child of a Rust program must.
                unsafe { libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Self {
                child,
                report: read.into(),
            }),
            Err(e) => Err(RuntimeError::Io(format!("fork: {e}"))),
        }
    }

    fn wait(mut self) -> Result<(), RuntimeError> {
        let mut error = String::new();
        let _ = std::io::Read::read_to_string(&mut self.report, &mut error);
        match nix::sys::wait::waitpid(self.child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
            _ if !error.is_empty() => Err(RuntimeError::Start(format!("network: {error}"))),
            status => Err(RuntimeError::Start(format!(
                "network: the process plugging the container in ended: {status:?}"
            ))),
        }
    }
}

/// Makes the network namespace of a container about to be created and starts plugging it into the
/// container's network (see [`Prewired`]); `spare_namespace`, a fresh one made ahead, is used when
/// given. None when the container gets no network of its own (`none`: its init makes an empty
/// namespace; `host`; `container:`).
pub(crate) fn prewire(
    engine: &Engine,
    record: &ContainerRecord,
    spare_namespace: Option<std::fs::File>,
) -> Result<Option<Prewired>, RuntimeError> {
    let network = match record.host_config.network_mode.as_str() {
        "bridge" => Network::default_bridge(engine.store().root()).map_err(net_err)?,
        "none" | "host" => return Ok(None),
        mode if mode.starts_with("container:") => return Ok(None),
        name => joinable(engine, name)?,
    };
    let names = dns_names(record, &record.host_config.network_aliases);
    let requested = requested_ip(&record.host_config.ipv4_address)?;
    let ports = port_mappings(record)?;
    let namespace = match spare_namespace {
        Some(namespace) => namespace,
        None => berth_net::netlink::Netlink::new_namespace().map_err(net_err)?,
    };
    let ip = network.lease(&record.id, requested).map_err(net_err)?;
    let mut prewired = Prewired {
        id: record.id.clone(),
        network,
        ip,
        ports,
        names,
        namespace,
        plugging: None,
        connected: false,
    };
    prewired.plugging = Some(Plugging::start(
        &prewired.network,
        &record.id,
        std::os::fd::AsFd::as_fd(&prewired.namespace),
        ip,
    )?);
    Ok(Some(prewired))
}

/// Connects a created (not yet started) container to its network: waits for its [`Prewired`]
/// namespace to be plugged in, publishes its ports, registers its names and joins its other
/// networks. Returns the network to disconnect from later and the settings to record with the
/// container's running state (one store write for both), or None when it has none to join.
pub(crate) fn connect(
    engine: &Engine,
    record: &ContainerRecord,
    pid: Option<nix::unistd::Pid>,
    prewired: Option<Prewired>,
) -> Result<Option<(Network, NetworkSettings)>, RuntimeError> {
    let pid = pid.ok_or_else(|| RuntimeError::Start("container has no init process".into()))?;
    let Some(mut prewired) = prewired else {
        if record.host_config.network_mode == "none" {
            berth_net::loopback_up(pid.as_raw()).map_err(net_err)?;
        }
        return Ok(None);
    };
    prewired.plugged()?;
    let endpoint = prewired
        .network
        .complete(&record.id, prewired.ip, &prewired.attachment())
        .map_err(net_err)?;
    prewired.connected = true;
    let network = prewired.network.clone();
    drop(prewired);
    let mut ports: std::collections::BTreeMap<String, Vec<PortBinding>> = Default::default();
    for p in &endpoint.ports {
        ports
            .entry(format!("{}/{}", p.container_port, p.protocol))
            .or_default()
            .push(PortBinding {
                host_ip: p.host_ip.to_string(),
                host_port: p.host_port.to_string(),
            });
    }
    let mut settings = NetworkSettings {
        ip_address: endpoint.ip.to_string(),
        ip_prefix_len: endpoint.prefix,
        gateway: endpoint.gateway.to_string(),
        mac_address: endpoint.mac.clone(),
        ports,
        networks: Default::default(),
    };
    for (i, extra) in record.host_config.extra_networks.iter().enumerate() {
        match join_extra(engine, record, pid.as_raw(), extra, i as u32 + 1) {
            Ok(endpoint) => {
                settings.networks.insert(extra.name.clone(), endpoint);
            }
            Err(e) => {
                disconnect_extras(engine, record, &settings);
                network.detach(&record.id, !endpoint.ports.is_empty());
                return Err(e);
            }
        }
    }
    // Docker lists the container's own address with its hostname.
    let hosts = engine.store().container_dir(&record.id).join("hosts");
    if let Ok(text) = std::fs::read_to_string(&hosts) {
        let mut text: String = text
            .lines()
            .filter(|l| !l.starts_with("127.0.1.1\t"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("{}\t{}\n", endpoint.ip, record.config.hostname));
        add_links(engine, record, &mut text);
        let _ = std::fs::write(&hosts, text);
    }
    Ok(Some((network, settings)))
}

/// For `--network container:<other>`: the network namespace of that (running) container.
pub(crate) fn shared_namespace(
    engine: &Engine,
    record: &ContainerRecord,
) -> Result<Option<std::path::PathBuf>, RuntimeError> {
    let Some(other) = record.host_config.network_mode.strip_prefix("container:") else {
        return Ok(None);
    };
    let target = engine.container(other)?;
    if !target.state.running || target.state.pid <= 0 {
        return Err(RuntimeError::InvalidOption(format!(
            "cannot join network of a non running container: {other}"
        )));
    }
    Ok(Some(std::path::PathBuf::from(format!(
        "/proc/{}/ns/net",
        target.state.pid
    ))))
}

/// Adds `--link name:alias` entries to the container's /etc/hosts: the linked container's address
/// under the alias and its name (legacy links on the default bridge).
fn add_links(engine: &Engine, record: &ContainerRecord, hosts: &mut String) {
    for (alias, target) in linked(engine, record) {
        hosts.push_str(&format!(
            "{}\t{alias} {} {}\n",
            target.network_settings.ip_address,
            target.name,
            &target.id[..12]
        ));
    }
}

/// The containers `--link name:alias` names (an alias defaults to the name), with their aliases: those
/// that exist and have an address.
fn linked<'r>(
    engine: &'r Engine,
    record: &'r ContainerRecord,
) -> impl Iterator<Item = (&'r str, ContainerRecord)> + 'r {
    record.host_config.links.iter().filter_map(|link| {
        let (name, alias) = link.split_once(':').unwrap_or((link, link));
        let target = engine.container(name).ok()?;
        (!target.network_settings.ip_address.is_empty()).then_some((alias, target))
    })
}

/// Docker's legacy link environment for each `--link name:alias` (default bridge): with `ALIAS` the alias
/// upper-cased (`-` as `_`), `ALIAS_NAME=/<this container>/<alias>`; for every port the linked container
/// exposes `ALIAS_PORT_<port>_<PROTO>` (`tcp://ip:port`) with its `_ADDR`, `_PORT` and `_PROTO`, and
/// `ALIAS_PORT` for the lowest; `ALIAS_ENV_<VAR>` for its environment but `HOME` and `PATH`. Linked
/// containers that do not run have no address and give nothing.
pub(crate) fn link_env(engine: &Engine, record: &ContainerRecord) -> Vec<String> {
    let mut env = Vec::new();
    for (alias, target) in linked(engine, record).filter(|(_, t)| t.state.running) {
        let ip = &target.network_settings.ip_address;
        let prefix = alias.to_ascii_uppercase().replace('-', "_");
        let mut ports: Vec<(u16, String)> = target
            .config
            .exposed_ports
            .keys()
            .filter_map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                Some((port.parse().ok()?, proto.to_ascii_lowercase()))
            })
            .collect();
        ports.sort();
        if let Some((port, proto)) = ports.first() {
            env.push(format!("{prefix}_PORT={proto}://{ip}:{port}"));
        }
        for (port, proto) in &ports {
            let var = format!("{prefix}_PORT_{port}_{}", proto.to_ascii_uppercase());
            env.push(format!("{var}={proto}://{ip}:{port}"));
            env.push(format!("{var}_ADDR={ip}"));
            env.push(format!("{var}_PORT={port}"));
            env.push(format!("{var}_PROTO={proto}"));
        }
        env.push(format!(
            "{prefix}_NAME=/{}/{alias}",
            record.name.trim_start_matches('/')
        ));
        for pair in &target.config.env {
            let Some((var, value)) = pair.split_once('=') else {
                continue;
            };
            if var != "HOME" && var != "PATH" {
                env.push(format!("{prefix}_ENV_{var}={value}"));
            }
        }
    }
    env
}

/// A user-defined network by name.
pub fn find(engine: &Engine, name: &str) -> Result<Network, RuntimeError> {
    Network::load(&engine.store().root().join("networks"), name)
        .map_err(net_err)?
        .ok_or_else(|| RuntimeError::InvalidOption(format!("network {name} not found")))
}

/// A network by name for joining: user-defined ones get their DNS server started.
fn joinable(engine: &Engine, name: &str) -> Result<Network, RuntimeError> {
    let network = find(engine, name)?;
    network.ensure().map_err(net_err)?;
    let exe = crate::engine::monitor_binary()?;
    let args: Vec<&std::ffi::OsStr> = vec![
        "--root".as_ref(),
        engine.store().root().as_os_str(),
        "--runroot".as_ref(),
        engine.runroot().as_os_str(),
        "--dns-server".as_ref(),
        name.as_ref(),
    ];
    berth_net::dns::ensure_server(&network, &exe, &args).map_err(net_err)?;
    Ok(network)
}

/// Joins one `network connect`ed network as `eth<interface>`.
fn join_extra(
    engine: &Engine,
    record: &ContainerRecord,
    pid: i32,
    extra: &ExtraNetwork,
    interface: u32,
) -> Result<EndpointSettings, RuntimeError> {
    let network = joinable(engine, &extra.name)?;
    let ip = requested_ip(&extra.ip)?;
    let names = dns_names(record, &extra.aliases);
    let endpoint = network
        .attach(
            &record.id,
            pid,
            &Attachment {
                ip,
                ports: &[],
                names: &names,
                interface,
            },
        )
        .map_err(net_err)?;
    Ok(EndpointSettings {
        ip_address: endpoint.ip.to_string(),
        ip_prefix_len: endpoint.prefix,
        gateway: endpoint.gateway.to_string(),
        mac_address: endpoint.mac,
        aliases: extra.aliases.clone(),
    })
}

fn disconnect_extras(engine: &Engine, record: &ContainerRecord, settings: &NetworkSettings) {
    for name in settings.networks.keys() {
        if let Ok(Some(n)) = Network::load(&engine.store().root().join("networks"), name) {
            n.detach(&record.id, false);
        }
    }
}

impl Engine {
    /// `network connect`: records the network for the container and, when it runs, joins it now as its
    /// next `ethN`.
    pub fn network_connect(
        &self,
        network: &str,
        container: &str,
        aliases: &[String],
        ip: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let record = self.container(container)?;
        let mode = record.host_config.network_mode.as_str();
        if matches!(mode, "none" | "host") || mode.starts_with("container:") {
            return Err(RuntimeError::InvalidOption(format!(
                "container cannot be connected to multiple networks with one of the networks in private ({mode}) mode"
            )));
        }
        if network == "bridge" || network == mode {
            return Err(RuntimeError::InvalidOption(format!(
                "endpoint with name {} already exists in network {network}",
                record.name
            )));
        }
        find(self, network)?;
        if record
            .host_config
            .extra_networks
            .iter()
            .any(|e| e.name == network)
        {
            return Err(RuntimeError::InvalidOption(format!(
                "endpoint with name {} already exists in network {network}",
                record.name
            )));
        }
        let extra = ExtraNetwork {
            name: network.to_string(),
            aliases: aliases.to_vec(),
            ip: ip.unwrap_or_default().to_string(),
        };
        let interface = record.host_config.extra_networks.len() as u32 + 1;
        if record.state.running && record.state.pid > 0 {
            let endpoint = join_extra(self, &record, record.state.pid, &extra, interface)?;
            let stored = self.store().update_container(&record.id, |r| {
                r.host_config.extra_networks.push(extra.clone());
                r.network_settings
                    .networks
                    .insert(network.to_string(), endpoint.clone());
                Ok::<(), ()>(())
            });
            if !matches!(stored, Ok(Ok(_))) {
                if let Ok(n) = find(self, network) {
                    let _ = n.detach_running(&record.id, record.state.pid, interface, false);
                }
                return Err(RuntimeError::Io("record the network connection".into()));
            }
        } else {
            self.store()
                .update_container(&record.id, |r| {
                    r.host_config.extra_networks.push(extra.clone());
                    Ok::<(), ()>(())
                })?
                .map_err(|_| RuntimeError::Io("record the network connection".into()))?;
        }
        Ok(())
    }

    /// `network disconnect`: leaves a network joined with `network connect`.
    pub fn network_disconnect(&self, network: &str, container: &str) -> Result<(), RuntimeError> {
        let record = self.container(container)?;
        let Some(position) = record
            .host_config
            .extra_networks
            .iter()
            .position(|e| e.name == network)
        else {
            if record.host_config.network_mode == network {
                return Err(RuntimeError::InvalidOption(format!(
                    "container {} is connected to {network} as its first network, which cannot be disconnected",
                    record.name
                )));
            }
            return Err(RuntimeError::InvalidOption(format!(
                "container {} is not connected to network {network}",
                record.name
            )));
        };
        let interface = position as u32 + 1;
        if record.state.running && record.state.pid > 0 {
            let n = find(self, network)?;
            n.detach_running(&record.id, record.state.pid, interface, false)
                .map_err(net_err)?;
        }
        self.store()
            .update_container(&record.id, |r| {
                r.host_config.extra_networks.retain(|e| e.name != network);
                r.network_settings.networks.remove(network);
                Ok::<(), ()>(())
            })?
            .map_err(|_| RuntimeError::Io("record the network disconnection".into()))?;
        Ok(())
    }
}

/// Undoes [`connect`] after the container stopped.
pub(crate) fn disconnect(engine: &Engine, record: &ContainerRecord, network: Option<&Network>) {
    // The current record: `network connect` may have added networks while it ran.
    let current = engine.store().container(&record.id).ok();
    if let Some(current) = &current {
        disconnect_extras(engine, record, &current.network_settings);
    }
    if let Some(network) = network {
        let published = current
            .as_ref()
            .is_none_or(|r| !r.network_settings.ports.is_empty());
        network.detach(&record.id, published);
    }
}

/// Releases what a container whose monitor died left on its network.
pub(crate) fn release_orphan(engine: &Engine, record: &ContainerRecord) {
    let mode = record.host_config.network_mode.as_str();
    if matches!(mode, "none" | "host") {
        return;
    }
    if let Ok(Some(network)) = Network::load(&engine.store().root().join("networks"), mode) {
        network.detach(&record.id, true);
    }
}

/// Bytes received and sent by a container's network interfaces (loopback left out, as Docker's
/// `stats` counts them), read from the `/proc/<pid>/net/dev` of its init. None when it has no
/// network namespace of its own (`--network host`) or is not running.
pub fn traffic(record: &ContainerRecord) -> Option<(u64, u64)> {
    if !record.state.running || record.state.pid <= 0 || record.host_config.network_mode == "host" {
        return None;
    }
    let table = std::fs::read_to_string(format!("/proc/{}/net/dev", record.state.pid)).ok()?;
    // Two header lines, then `iface: rx_bytes rx_packets … (8 receive fields) tx_bytes …`.
    Some(
        table
            .lines()
            .skip(2)
            .filter_map(|line| {
                let (name, counters) = line.split_once(':')?;
                let counters: Vec<u64> = counters
                    .split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect();
                (name.trim() != "lo" && counters.len() >= 9).then(|| (counters[0], counters[8]))
            })
            .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t)),
    )
}
