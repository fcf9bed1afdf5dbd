//! Address management: subnets chosen clear of the host's routes, and leases that are files created
//! with `O_EXCL` — the kernel guarantees only one creator wins, so concurrent `run`s never share an
//! address, and a lease names its owner so a crashed container's lease can be found and released.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use crate::NetError;

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The `n`th address of the subnet.
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.base) & self.mask()) | n)
    }

    /// Number of addresses.
    pub fn size(&self) -> u32 {
        (!self.mask()).wrapping_add(1)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base) & self.mask()
    }

    /// Whether two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.base) & mask == u32::from(other.base) & mask
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::Invalid(format!("invalid subnet {s:?}"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 30 {
            return Err(bad());
        }
        let subnet = Subnet { base, prefix };
        Ok(Subnet {
            base: subnet.host(0),
            prefix,
        })
    }
}

/// The IPv4 routes of the host (as subnets), from /proc/net/route.
pub(crate) fn host_routes() -> Vec<Subnet> {
    let text = fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            if mask == 0 {
                return None; // the default route overlaps everything
            }
            Some(Subnet {
                base: Ipv4Addr::from(u32::from_be(dest)),
                prefix: u32::from_be(mask).count_ones() as u8,
            })
        })
        .collect()
}

/// A /24 in 172.18–31.x or 10.89–99.x that no route of the host (nor any of `taken`) covers: Docker's
/// own 172.17.0.0/16 and whatever else is in use are avoided this way. Call under the host-wide lock.
pub fn free_subnet(taken: &[Subnet]) -> Result<Subnet, NetError> {
    let mut routes = host_routes();
    routes.extend_from_slice(taken);
    let candidates = (18..=31u8)
        .flat_map(|b| (0..=255u8).map(move |c| Ipv4Addr::new(172, b, c, 0)))
        .chain((89..=99u8).flat_map(|b| (0..=255u8).map(move |c| Ipv4Addr::new(10, b, c, 0))));
    for base in candidates {
        let subnet = Subnet { base, prefix: 24 };
        if !routes.iter().any(|r| r.overlaps(&subnet)) {
            return Ok(subnet);
        }
    }
    Err(NetError::Exhausted(
        "could not find an available, non-overlapping IPv4 address pool".into(),
    ))
}

/// Takes the lease file of `ip` for `owner`; false when someone holds it.
fn claim(dir: &Path, ip: Ipv4Addr, owner: &str) -> Result<bool, NetError> {
    let path = dir.join(ip.to_string());
    match fs::File::options().write(true).create_new(true).open(&path) {
        Ok(_) => {
            fs::write(&path, owner)
                .map_err(|e| NetError::Io(format!("{}: {e}", path.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(NetError::Io(format!("{}: {e}", path.display()))),
    }
}

/// Leases `ip` (`--ip`) to `owner`: it must be a host address of the subnet, not the gateway, free.
pub fn lease_address(
    state_dir: &Path,
    subnet: &Subnet,
    gateway: Ipv4Addr,
    ip: Ipv4Addr,
    owner: &str,
) -> Result<Ipv4Addr, NetError> {
    if lease_of(state_dir, owner) == Some(ip) {
        return Ok(ip);
    }
    let broadcast = subnet.host(subnet.size().saturating_sub(1));
    if !subnet.contains(ip) || ip == subnet.host(0) || ip == broadcast || ip == gateway {
        return Err(NetError::Invalid(format!(
            "invalid address {ip}: it does not belong to any of this network's subnets ({subnet})"
        )));
    }
    let dir = state_dir.join("leases");
    fs::create_dir_all(&dir).map_err(|e| NetError::Io(format!("{}: {e}", dir.display())))?;
    if claim(&dir, ip, owner)? {
        Ok(ip)
    } else {
        Err(NetError::Invalid(format!("Address already in use: {ip}")))
    }
}

/// Leases the lowest free address of `subnet` (within `range` when given; never the gateway) to
/// container `owner`.
pub fn lease(
    state_dir: &Path,
    subnet: &Subnet,
    range: Option<&Subnet>,
    gateway: Ipv4Addr,
    owner: &str,
) -> Result<Ipv4Addr, NetError> {
    let dir = state_dir.join("leases");
    fs::create_dir_all(&dir).map_err(|e| NetError::Io(format!("{}: {e}", dir.display())))?;
    // An owner holds at most one lease: a restart reuses it.
    if let Some(ip) = lease_of(state_dir, owner) {
        return Ok(ip);
    }
    for n in 1..subnet.size().saturating_sub(1) {
        let ip = subnet.host(n);
        if ip == gateway || range.is_some_and(|r| !r.contains(ip)) {
            continue;
        }
        if claim(&dir, ip, owner)? {
            return Ok(ip);
        }
    }
    Err(NetError::Exhausted(format!(
        "no available IPv4 addresses on this network's address pools: {subnet}"
    )))
}

/// The address leased to `owner`, if any.
pub fn lease_of(state_dir: &Path, owner: &str) -> Option<Ipv4Addr> {
    let dir = state_dir.join("leases");
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let holder = fs::read_to_string(entry.path()).ok()?;
        (holder == owner)
            .then(|| entry.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// Releases `owner`'s lease.
pub fn release(state_dir: &Path, owner: &str) {
    if let Some(ip) = lease_of(state_dir, owner) {
        let _ = fs::remove_file(state_dir.join("leases").join(ip.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_math() {
        let s: Subnet = "172.20.5.9/24".parse().unwrap();
        assert_eq!(s.to_string(), "172.20.5.0/24");
        assert_eq!(s.host(1), Ipv4Addr::new(172, 20, 5, 1));
        assert!(s.contains(Ipv4Addr::new(172, 20, 5, 200)));
        assert!(!s.contains(Ipv4Addr::new(172, 20, 6, 1)));
        let wide: Subnet = "172.20.0.0/16".parse().unwrap();
        assert!(wide.overlaps(&s) && s.overlaps(&wide));
        assert!("10.0.0.0/33".parse::<Subnet>().is_err());
        assert!("nonsense".parse::<Subnet>().is_err());
    }

    #[test]
    fn leases_are_unique_and_released() {
        let dir = std::env::temp_dir().join(format!("berth-ipam-{}", std::process::id()));
        let s: Subnet = "10.99.1.0/29".parse().unwrap();
        let gw = s.host(1);
        let a = lease(&dir, &s, None, gw, "a").unwrap();
        let b = lease(&dir, &s, None, gw, "b").unwrap();
        assert_ne!(a, b);
        assert_eq!(lease(&dir, &s, None, gw, "a").unwrap(), a);
        for owner in ["c", "d", "e", "f"] {
            let _ = lease(&dir, &s, None, gw, owner);
        }
        assert!(
            lease(&dir, &s, None, gw, "g").is_err(),
            "a /29 has 5 leasable addresses"
        );
        release(&dir, "a");
        assert_eq!(lease(&dir, &s, None, gw, "g").unwrap(), a);
        assert!(lease_address(&dir, &s, gw, b, "h").is_err(), "taken");
        assert!(lease_address(&dir, &s, gw, gw, "h").is_err(), "gateway");
        assert!(lease_address(&dir, &s, gw, Ipv4Addr::new(10, 0, 0, 1), "h").is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
