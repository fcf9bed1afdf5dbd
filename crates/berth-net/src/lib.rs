//! Berth's container networking: a host bridge per network, a veth pair per container, address leases
//! that are never handed out twice, outbound NAT, and published ports.
//!
//! Everything here is synchronous and forks nothing, so the monitor (single-threaded, because
//! libcontainer forks) can call it between creating the container and starting it:
//! [`Network::attach`] wires the container's network namespace up, [`Network::detach`] undoes it when
//! the container stops. Links, addresses and routes go through netlink ([`netlink`]); NAT and published
//! ports are iptables rules in Berth's own chains ([`firewall`]), tagged so they can be removed by owner.

pub mod firewall;
pub mod ipam;
pub mod netlink;

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
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
    if let Some(lo) = inside.link_index("lo")? {
        inside.set_up(lo)?;
    }
    Ok(())
}

/// A bridge network as stored in `<root>/networks/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Network name (`bridge` is the default).
    pub name: String,
    /// The Linux bridge.
    pub bridge: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// The bridge's address.
    pub gateway: Ipv4Addr,
    state_dir: PathBuf,
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
        let subnet = ipam::free_subnet()?;
        let net = Network {
            name: "bridge".into(),
            bridge: default_bridge_name(root),
            gateway: subnet.host(1),
            subnet,
            state_dir: dir.join("bridge"),
        };
        net.create_host_side()?;
        let text = format!(
            "{{\"Name\":\"bridge\",\"Bridge\":\"{}\",\"Subnet\":\"{}\",\"Gateway\":\"{}\"}}\n",
            net.bridge, net.subnet, net.gateway
        );
        let tmp = dir.join(".bridge.json.tmp");
        fs::write(&tmp, text).map_err(|e| io(tmp.display(), e))?;
        fs::rename(&tmp, &config).map_err(|e| io(config.display(), e))?;
        Ok(net)
    }

    /// Reads a network's config, if it exists.
    pub fn load(dir: &Path, name: &str) -> Result<Option<Network>, NetError> {
        let path = dir.join(format!("{name}.json"));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path.display(), e)),
        };
        let field = |key: &str| -> Result<String, NetError> {
            let pattern = format!("\"{key}\":\"");
            let start = text
                .find(&pattern)
                .ok_or_else(|| io(path.display(), format!("no {key}")))?
                + pattern.len();
            let end = text[start..]
                .find('"')
                .ok_or_else(|| io(path.display(), format!("bad {key}")))?;
            Ok(text[start..start + end].to_string())
        };
        let subnet: Subnet = field("Subnet")?.parse()?;
        let gateway: Ipv4Addr = field("Gateway")?
            .parse()
            .map_err(|e| io(path.display(), e))?;
        Ok(Some(Network {
            name: name.to_string(),
            bridge: field("Bridge")?,
            subnet,
            gateway,
            state_dir: dir.join(name),
        }))
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
        firewall::add_network(&self.bridge, &self.subnet)?;
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

    fn veth_name(container_id: &str) -> String {
        format!("vb{}", &container_id[..container_id.len().min(11)])
    }

    /// Wires container `id` (its init is `pid`, not yet started) to this network: an address lease,
    /// a veth pair with `eth0` inside, the default route, `lo` up, and the published `ports`.
    pub fn attach(&self, id: &str, pid: i32, ports: &[PortMapping]) -> Result<Endpoint, NetError> {
        let ip = ipam::lease(&self.state_dir, &self.subnet, id)?;
        let result = self.wire(id, pid, ip, ports);
        if result.is_err() {
            // The namespace lives on (the init waits to be started), so the veth must go by hand.
            if let Ok(mut nl) = netlink::Netlink::new() {
                if let Ok(Some(index)) = nl.link_index(&Self::veth_name(id)) {
                    let _ = nl.delete_link(index);
                }
            }
            self.detach(id, !ports.is_empty());
        }
        result
    }

    fn wire(
        &self,
        id: &str,
        pid: i32,
        ip: Ipv4Addr,
        ports: &[PortMapping],
    ) -> Result<Endpoint, NetError> {
        let netns_path = format!("/proc/{pid}/ns/net");
        let netns = fs::File::open(&netns_path).map_err(|e| io(&netns_path, e))?;
        let mut host = netlink::Netlink::new()?;
        let bridge = host
            .link_index(&self.bridge)?
            .ok_or_else(|| NetError::Netlink(format!("bridge {} is missing", self.bridge)))?;
        let veth = Self::veth_name(id);
        let o = ip.octets();
        let mac = [0x02, 0x42, o[0], o[1], o[2], o[3]];
        host.create_veth(&veth, "eth0", mac, netns.as_raw_fd())?;
        let index = host
            .link_index(&veth)?
            .ok_or_else(|| NetError::Netlink(format!("{veth} vanished")))?;
        host.attach_to_bridge(index, bridge)?;
        let mut inside = netlink::Netlink::in_namespace(netns.as_raw_fd())?;
        if let Some(lo) = inside.link_index("lo")? {
            inside.set_up(lo)?;
        }
        let eth0 = inside
            .link_index("eth0")?
            .ok_or_else(|| NetError::Netlink("eth0 is missing in the container".into()))?;
        inside.add_address(eth0, ip, self.subnet.prefix)?;
        inside.set_up(eth0)?;
        inside.add_default_route(self.gateway)?;
        let ports = firewall::publish(id, ip, ports)?;
        Ok(Endpoint {
            ip,
            prefix: self.subnet.prefix,
            gateway: self.gateway,
            mac: format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
            ports,
        })
    }

    /// Undoes [`Network::attach`] once the container's processes are gone: published ports (when
    /// `published`) and the lease. Safe to call for a container never attached.
    pub fn detach(&self, id: &str, published: bool) {
        if published {
            firewall::unpublish(id);
        }
        // The veth pair goes with the container's network namespace when its last process exits; asking
        // the kernel about it here would only wait for rtnl while the namespace is torn down.
        ipam::release(&self.state_dir, id);
    }
}
