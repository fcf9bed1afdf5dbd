//! Berth's container networking: a host bridge per network, a veth pair per container, address leases
//! that are never handed out twice, outbound NAT, and published ports.
//!
//! Everything here is synchronous and forks nothing, so the monitor (single-threaded, because
//! libcontainer forks) can call it around creating the container: [`Network::attach`] wires a
//! running container's network namespace up, in three steps the monitor also takes one by one
//! ([`Network::lease`], [`Network::plug`], [`Network::complete`]) to plug a namespace it made
//! itself while the container is created; [`Network::detach`] undoes it when the container stops.
//! Links, addresses and routes go through netlink ([`netlink`]); NAT and published
//! ports are iptables rules in Berth's own chains ([`firewall`]), tagged so they can be removed by owner.

pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod netlink;

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

pub use ipam::Subnet;

/// Everything that can go wrong wiring a container up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// The object already exists.
    #[error("already exists")]
    Exists,
    /// An iptables command failed.
    #[error("firewall: {0}")]
    Firewall(String),
    /// Reading or writing network state.
    #[error("{0}")]
    Io(String),
    /// No free address, no free subnet.
    #[error("{0}")]
    Exhausted(String),
    /// A bad port, address or network option.
    #[error("{0}")]
    Invalid(String),
    /// The host port is taken.
    #[error("Bind for {0} failed: port is already allocated")]
    PortTaken(String),
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> NetError {
    NetError::Io(format!("{what}: {e}"))
}

/// A port published on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The container's port.
    pub container_port: u16,
    /// Host address (`0.0.0.0` = all).
    pub host_ip: Ipv4Addr,
    /// Host port (0 = pick a free one).
    pub host_port: u16,
}

/// How a container joins a network.
#[derive(Debug, Clone, Default)]
pub struct Attachment<'a> {
    /// `--ip`.
    pub ip: Option<Ipv4Addr>,
    /// Published ports (first network only).
    pub ports: &'a [PortMapping],
    /// DNS names (container name, short ID, aliases).
    pub names: &'a [String],
    /// N of `ethN` in the container: 0 for its first network.
    pub interface: u32,
}

/// What a container got on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of the network.
    pub prefix: u8,
    /// The gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// Its MAC address (`02:42:` + the address, as Docker).
    pub mac: String,
    /// The published ports, with host ports chosen.
    pub ports: Vec<PortMapping>,
}

/// Brings `lo` up in the network namespace of process `pid` (for `--network none`, where nothing else
/// is set up: Docker's containers still have a working loopback).
pub fn loopback_up(pid: i32) -> Result<(), NetError> {
    let path = format!("/proc/{pid}/ns/net");
    let netns = fs::File::open(&path).map_err(|e| io(&path, e))?;
    let mut inside = netlink::Netlink::in_namespace(netns.as_raw_fd())?;
    inside.set_up(LOOPBACK_INDEX)
}

/// The interface index of `lo` in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// A bridge network as stored in `<root>/networks/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    /// Network name (`bridge` is the default).
    pub name: String,
    /// 64 hex characters (`bridge` for the default network).
    #[serde(default)]
    pub id: String,
    /// The Linux bridge.
    pub bridge: String,
    /// Its subnet.
    #[serde(with = "subnet_text")]
    pub subnet: Subnet,
    /// The bridge's address.
    pub gateway: Ipv4Addr,
    /// No route out (`--internal`).
    #[serde(default)]
    pub internal: bool,
    /// `--ip-range`: where automatic addresses come from (the whole subnet when absent).
    #[serde(
        default,
        with = "optional_subnet_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_range: Option<Subnet>,
    /// `--label`s.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created: String,
    #[serde(skip)]
    state_dir: PathBuf,
}

mod subnet_text {
    use super::Subnet;

    pub fn serialize<S: serde::Serializer>(s: &Subnet, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&s.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Subnet, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(de)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod optional_subnet_text {
    use super::Subnet;

    pub fn serialize<S: serde::Serializer>(s: &Option<Subnet>, ser: S) -> Result<S::Ok, S::Error> {
        match s {
            Some(s) => ser.serialize_str(&s.to_string()),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        de: D,
    ) -> Result<Option<Subnet>, D::Error> {
        let text = <Option<String> as serde::Deserialize>::deserialize(de)?;
        text.map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `network create` options.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `--subnet` (default: a free /24).
    pub subnet: Option<String>,
    /// `--gateway` (default: the subnet's first address).
    pub gateway: Option<String>,
    /// `--ip-range`: a sub-range of the subnet for automatic addresses.
    pub ip_range: Option<String>,
    /// `--internal`.
    pub internal: bool,
    /// `--label`s.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Creation time to record.
    pub created: String,
    /// A fresh 64-hex ID.
    pub id: String,
}

/// Host-wide lock for choosing subnets and creating bridges: stores with different roots share the
/// host's routing table.
fn host_lock() -> Result<fs::File, NetError> {
    let path = Path::new("/run/lock/berth-net.lock");
    let _ = fs::create_dir_all("/run/lock");
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io(path.display(), e))?;
    #[allow(deprecated)]
    nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::LockExclusive)
        .map_err(|e| io("lock /run/lock/berth-net.lock", e))?;
    Ok(file)
}

/// The bridge name of the default network of the store at `root`: `berth0` for the standard store,
/// a name derived from the root for others, so independent stores never share a bridge.
fn default_bridge_name(root: &Path) -> String {
    if root == Path::new("/var/lib/berth") {
        return "berth0".into();
    }
    // FNV-1a: stable across runs and versions.
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in root.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("brt{:08x}", hash as u32)
}

impl Network {
    /// The default `bridge` network of the store at `root`, created (subnet chosen, bridge made, NAT
    /// set up) on first use.
    pub fn default_bridge(root: &Path) -> Result<Network, NetError> {
        let dir = root.join("networks");
        fs::create_dir_all(&dir).map_err(|e| io(dir.display(), e))?;
        let config = dir.join("bridge.json");
        if let Some(net) = Self::load(&dir, "bridge")? {
            net.ensure_host_side()?;
            return Ok(net);
        }
        let _lock = host_lock()?;
        if let Some(net) = Self::load(&dir, "bridge")? {
            net.ensure_host_side()?;
            return Ok(net);
        }
        let subnet = ipam::free_subnet(&[])?;
        let net = Network {
            name: "bridge".into(),
            id: "bridge".into(),
            bridge: default_bridge_name(root),
            gateway: subnet.host(1),
            subnet,
            internal: false,
            ip_range: None,
            labels: Default::default(),
            created: String::new(),
            state_dir: dir.join("bridge"),
        };
        net.create_host_side()?;
        net.save(&dir)?;
        let _ = config;
        Ok(net)
    }

    fn save(&self, dir: &Path) -> Result<(), NetError> {
        let path = dir.join(format!("{}.json", self.name));
        let text = serde_json::to_vec(self).map_err(|e| io(path.display(), e))?;
        let tmp = dir.join(format!(".{}.json.tmp", self.name));
        fs::write(&tmp, text).map_err(|e| io(tmp.display(), e))?;
        fs::rename(&tmp, &path).map_err(|e| io(path.display(), e))
    }

    /// Every network of the store at `root` (the default `bridge` only once it was used).
    pub fn list(root: &Path) -> Result<Vec<Network>, NetError> {
        let dir = root.join("networks");
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".json").filter(|n| !n.starts_with('.')) {
                if let Some(n) = Self::load(&dir, stem)? {
                    out.push(n);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `network create`: a user-defined bridge network with its own bridge, subnet and rules.
    pub fn create(root: &Path, name: &str, options: &CreateOptions) -> Result<Network, NetError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(NetError::Invalid(format!("invalid network name: {name:?}")));
        }
        if matches!(name, "bridge" | "host" | "none" | "default") {
            return Err(NetError::Invalid(format!(
                "{name} is a pre-defined network and cannot be created"
            )));
        }
        let dir = root.join("networks");
        fs::create_dir_all(&dir).map_err(|e| io(dir.display(), e))?;
        let _lock = host_lock()?;
        if Self::load(&dir, name)?.is_some() {
            return Err(NetError::Invalid(format!(
                "network with name {name} already exists"
            )));
        }
        let others: Vec<Subnet> = Self::list(root)?.iter().map(|n| n.subnet).collect();
        let subnet = match &options.subnet {
            Some(text) => {
                let subnet: Subnet = text.parse()?;
                if let Some(clash) = others
                    .iter()
                    .chain(ipam::host_routes().iter())
                    .find(|o| o.overlaps(&subnet))
                {
                    return Err(NetError::Invalid(format!(
                        "invalid pool request: Pool overlaps with other one on this address space ({subnet} overlaps {clash})"
                    )));
                }
                subnet
            }
            None => ipam::free_subnet(&others)?,
        };
        let gateway = match &options.gateway {
            Some(text) => {
                let gw: Ipv4Addr = text
                    .parse()
                    .map_err(|_| NetError::Invalid(format!("invalid gateway address {text}")))?;
                if !subnet.contains(gw) || gw == subnet.host(0) {
                    return Err(NetError::Invalid(format!(
                        "no matching subnet for gateway {gw}"
                    )));
                }
                gw
            }
            None => subnet.host(1),
        };
        let ip_range = match &options.ip_range {
            Some(text) => {
                let range: Subnet = text.parse()?;
                if range.prefix < subnet.prefix || !subnet.contains(range.base) {
                    return Err(NetError::Invalid(format!(
                        "invalid pool request: ip-range {range} is not within subnet {subnet}"
                    )));
                }
                Some(range)
            }
            None => None,
        };
        let net = Network {
            name: name.to_string(),
            id: options.id.clone(),
            bridge: format!("brt{}", &options.id[..8.min(options.id.len())]),
            subnet,
            gateway,
            internal: options.internal,
            ip_range,
            labels: options.labels.clone(),
            created: options.created.clone(),
            state_dir: dir.join(name),
        };
        net.create_host_side()?;
        net.save(&dir)?;
        Ok(net)
    }

    /// `network rm`: the bridge, its rules, its config.
    pub fn remove(&self, root: &Path) -> Result<(), NetError> {
        dns::stop_server(self);
        self.destroy()?;
        let _ = fs::remove_file(root.join("networks").join(format!("{}.json", self.name)));
        Ok(())
    }

    /// Makes sure the host side exists (after a reboot, or on first use), for any network.
    pub fn ensure(&self) -> Result<(), NetError> {
        self.ensure_host_side()
    }

    /// Reads a network's config, if it exists.
    pub fn load(dir: &Path, name: &str) -> Result<Option<Network>, NetError> {
        let path = dir.join(format!("{name}.json"));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path.display(), e)),
        };
        let mut net: Network = serde_json::from_str(&text).map_err(|e| io(path.display(), e))?;
        net.state_dir = dir.join(name);
        Ok(Some(net))
    }

    /// Creates the bridge with its address and the NAT and forwarding rules.
    fn create_host_side(&self) -> Result<(), NetError> {
        let mut nl = netlink::Netlink::new()?;
        let index = match nl.link_index(&self.bridge)? {
            Some(i) => i,
            None => {
                match nl.create_bridge(&self.bridge) {
                    Ok(()) | Err(NetError::Exists) => {}
                    Err(e) => return Err(e),
                }
                nl.link_index(&self.bridge)?
                    .ok_or_else(|| NetError::Netlink(format!("bridge {} vanished", self.bridge)))?
            }
        };
        nl.add_address(index, self.gateway, self.subnet.prefix)?;
        nl.set_up(index)?;
        let _ = fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        // Published ports answer on 127.0.0.1 too: DNAT'd loopback traffic may leave through the bridge.
        let _ = fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge),
            "1",
        );
        firewall::add_network(&self.bridge, &self.subnet, self.internal)?;
        let marker = self.rules_marker();
        let _ = fs::create_dir_all("/run/berth-net");
        fs::write(&marker, self.subnet.to_string()).map_err(|e| io(marker.display(), e))
    }

    /// Where a marker says this bridge's rules are installed. It lives in /run (tmpfs), which a reboot
    /// empties together with the bridge and the rules, so checking it costs a stat instead of an
    /// iptables run on every container start.
    fn rules_marker(&self) -> PathBuf {
        PathBuf::from(format!("/run/berth-net/{}.rules", self.bridge))
    }

    /// Re-creates what a reboot or a manual clean-up removed.
    fn ensure_host_side(&self) -> Result<(), NetError> {
        let mut nl = netlink::Netlink::new()?;
        if nl.link_index(&self.bridge)?.is_some() && self.rules_marker().exists() {
            return Ok(());
        }
        let _lock = host_lock()?;
        self.create_host_side()
    }

    /// Removes the bridge and its rules (the network must be unused).
    pub fn destroy(&self) -> Result<(), NetError> {
        let mut nl = netlink::Netlink::new()?;
        if let Some(index) = nl.link_index(&self.bridge)? {
            nl.delete_link(index)?;
        }
        firewall::remove_network(&self.bridge);
        let _ = fs::remove_file(self.rules_marker());
        let _ = fs::remove_dir_all(&self.state_dir);
        Ok(())
    }

    /// The host end of a container's veth on its `interface`th network (15 characters at most).
    fn veth_name(container_id: &str, interface: u32) -> String {
        if interface == 0 {
            format!("vb{}", &container_id[..container_id.len().min(11)])
        } else {
            format!(
                "vb{}{interface:02x}",
                &container_id[..container_id.len().min(9)]
            )
        }
    }

    /// Wires container `id` (its process is `pid`) to this network: an address lease (`ip` when one is
    /// asked for), a veth pair with `eth<interface>` inside, `lo` up, the default route (through the
    /// first interface, not on an internal network), the published ports and the DNS names.
    pub fn attach(&self, id: &str, pid: i32, how: &Attachment<'_>) -> Result<Endpoint, NetError> {
        let netns_path = format!("/proc/{pid}/ns/net");
        let netns = fs::File::open(&netns_path).map_err(|e| io(&netns_path, e))?;
        let ip = self.lease(id, how.ip)?;
        let result = self
            .plug(id, netns.as_fd(), ip, how.interface)
            .and_then(|()| self.complete(id, ip, how));
        if result.is_err() {
            self.abandon(id, how);
        }
        result
    }

    /// The first step of [`Network::attach`]: an address for container `id`, `requested` (`--ip`)
    /// or the next free one.
    pub fn lease(&self, id: &str, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
        match requested {
            Some(ip) => ipam::lease_address(&self.state_dir, &self.subnet, self.gateway, ip, id),
            None => ipam::lease(
                &self.state_dir,
                &self.subnet,
                self.ip_range.as_ref(),
                self.gateway,
                id,
            ),
        }
    }

    /// Takes a running container (`pid`) off this network: its `eth<interface>`, ports, lease, names.
    pub fn detach_running(
        &self,
        id: &str,
        pid: i32,
        interface: u32,
        published: bool,
    ) -> Result<(), NetError> {
        let path = format!("/proc/{pid}/ns/net");
        let netns = fs::File::open(&path).map_err(|e| io(&path, e))?;
        let mut inside = netlink::Netlink::in_namespace(netns.as_raw_fd())?;
        if let Some(index) = inside.link_index(&format!("eth{interface}"))? {
            inside.delete_link(index)?;
        }
        self.detach(id, published);
        Ok(())
    }

    /// The second step of [`Network::attach`]: plugs container `id` in through `netns`, its network
    /// namespace: a veth pair on the bridge with `eth<interface>` inside at `ip`, loopback up, and
    /// the default route on the first network. Kernel state only, no files of the store: a child
    /// process can do it while the container is being created.
    pub fn plug(
        &self,
        id: &str,
        netns: BorrowedFd<'_>,
        ip: Ipv4Addr,
        interface: u32,
    ) -> Result<(), NetError> {
        let mut host = netlink::Netlink::new()?;
        let bridge = host
            .link_index(&self.bridge)?
            .ok_or_else(|| NetError::Netlink(format!("bridge {} is missing", self.bridge)))?;
        let veth = Self::veth_name(id, interface);
        let eth = format!("eth{interface}");
        let mac = Self::mac(ip);
        match host.create_veth(&veth, &eth, mac, netns.as_raw_fd(), bridge) {
            Err(NetError::Exists) => {
                // The pair of this container's previous run (the name comes from its id): it goes with
                // that run's network namespace, which the kernel tears down in the background, and a
                // start right after the exit can come first. It is taken down here instead.
                if let Some(index) = host.link_index(&veth)? {
                    let _ = host.delete_link(index);
                }
                host.create_veth(&veth, &eth, mac, netns.as_raw_fd(), bridge)?;
            }
            created => created?,
        }
        // A container reaching its own published port through a host address comes back in through
        // the port it left by.
        let _ = fs::write(format!("/sys/class/net/{veth}/brport/hairpin_mode"), "1");
        let mut inside = netlink::Netlink::in_namespace(netns.as_raw_fd())?;
        // Loopback is interface 1 in every network namespace.
        inside.set_up(LOOPBACK_INDEX)?;
        let eth_index = inside
            .link_index(&eth)?
            .ok_or_else(|| NetError::Netlink(format!("{eth} is missing in the container")))?;
        inside.add_address(eth_index, ip, self.subnet.prefix)?;
        inside.set_up(eth_index)?;
        if !self.internal && interface == 0 {
            inside.add_default_route(self.gateway)?;
        }
        Ok(())
    }

    /// The last step of [`Network::attach`], once container `id` is plugged in at `ip`: its
    /// published ports and its DNS names.
    pub fn complete(
        &self,
        id: &str,
        ip: Ipv4Addr,
        how: &Attachment<'_>,
    ) -> Result<Endpoint, NetError> {
        let ports = firewall::publish(id, ip, how.ports)?;
        // The default bridge resolves no names (Docker's behaviour).
        if self.name != "bridge" && !how.names.is_empty() {
            dns::register(&self.state_dir, id, ip, how.names)?;
        }
        Ok(Endpoint {
            ip,
            prefix: self.subnet.prefix,
            gateway: self.gateway,
            mac: Self::mac(ip).map(|b| format!("{b:02x}")).join(":"),
            ports,
        })
    }

    /// Undoes an attach that failed at any step: the host side of the veth pair (the container's
    /// namespace, and with it the pair, may live on), then [`Network::detach`].
    pub fn abandon(&self, id: &str, how: &Attachment<'_>) {
        if let Ok(mut nl) = netlink::Netlink::new() {
            if let Ok(Some(index)) = nl.link_index(&Self::veth_name(id, how.interface)) {
                let _ = nl.delete_link(index);
            }
        }
        self.detach(id, !how.ports.is_empty());
    }

    /// Docker's MAC address for a container address: `02:42:` and the address.
    fn mac(ip: Ipv4Addr) -> [u8; 6] {
        let o = ip.octets();
        [0x02, 0x42, o[0], o[1], o[2], o[3]]
    }

    /// Undoes [`Network::attach`] once the container's processes are gone: published ports (when
    /// `published`) and the lease. Safe to call for a container never attached.
    pub fn detach(&self, id: &str, published: bool) {
        if published {
            firewall::unpublish(id);
        }
        dns::unregister(&self.state_dir, id);
        // The veth pair goes with the container's network namespace when its last process exits; asking
        // the kernel about it here would only wait for rtnl while the namespace is torn down.
        ipam::release(&self.state_dir, id);
    }
}
