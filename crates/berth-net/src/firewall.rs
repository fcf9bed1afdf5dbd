//! NAT and forwarding with iptables (the nf_tables backend on Debian 12), in Berth's own chains so
//! Docker's and Podman's rules are left alone: `BERTH-POSTROUTING` (masquerade), `BERTH-DNAT` (published
//! ports, reached from PREROUTING and OUTPUT for local destinations) and `BERTH-FORWARD` (accept to and
//! from Berth's bridges — a running dockerd sets the FORWARD policy to DROP). Every rule carries a
//! comment `berth:<owner>` (a bridge or a container ID), which is how it is found again and removed.
//!
//! Published ports are DNAT rules, not a userland proxy: no process per port and no copy of the
//! traffic. Loopback works because the bridge has `route_localnet=1` and traffic from 127.0.0.0/8 to the
//! bridge is masqueraded, as Docker does with its proxy disabled.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::process::Command;

use crate::ipam::Subnet;
use crate::{NetError, PortMapping};

const POSTROUTING: &str = "BERTH-POSTROUTING";
const DNAT: &str = "BERTH-DNAT";
const FORWARD: &str = "BERTH-FORWARD";

fn iptables(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| NetError::Firewall(format!("iptables: {e} (install iptables)")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Firewall(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes chain `chain` in `table` and a jump to it from `from` (first, for FORWARD).
fn ensure_chain(table: &str, chain: &str, from: &str, matcher: &[&str]) -> Result<(), NetError> {
    if iptables(&["-t", table, "-S", chain]).is_err() {
        // Another process may have made it meanwhile.
        let _ = iptables(&["-t", table, "-N", chain]);
    }
    let mut check = vec!["-t", table, "-C", from];
    check.extend_from_slice(matcher);
    check.extend_from_slice(&["-j", chain]);
    if iptables(&check).is_err() {
        let mut insert = vec!["-t", table, "-I", from, "1"];
        insert.extend_from_slice(matcher);
        insert.extend_from_slice(&["-j", chain]);
        iptables(&insert)?;
    }
    Ok(())
}

fn ensure_chains() -> Result<(), NetError> {
    ensure_chain("nat", POSTROUTING, "POSTROUTING", &[])?;
    let local = ["-m", "addrtype", "--dst-type", "LOCAL"];
    ensure_chain("nat", DNAT, "PREROUTING", &local)?;
    ensure_chain("nat", DNAT, "OUTPUT", &local)?;
    ensure_chain("filter", FORWARD, "FORWARD", &[])
}

fn tag(owner: &str) -> String {
    format!("berth:{owner}")
}

/// Adds the rules of a bridge network: traffic within the bridge is accepted, traffic to any other
/// Berth bridge dropped (networks are isolated from each other) — both inserted at the top of
/// `BERTH-FORWARD` so every network's isolation comes before any network's accepts; then masquerade and
/// accept to and from the outside, unless `internal`, where the outside is dropped instead.
pub fn add_network(bridge: &str, subnet: &Subnet, internal: bool) -> Result<(), NetError> {
    ensure_chains()?;
    remove_network(bridge);
    let subnet = subnet.to_string();
    let comment = tag(bridge);
    // Every rule: `iptables -t TABLE ACTION CHAIN [POS] MATCH… -m comment --comment berth:BRIDGE -j VERDICT`.
    let add = |head: &[&str], matches: &[&str], verdict: &str| {
        let mut rule: Vec<&str> = head.to_vec();
        rule.extend_from_slice(matches);
        rule.extend_from_slice(&["-m", "comment", "--comment", &comment, "-j", verdict]);
        iptables(&rule).map(drop)
    };
    let insert_forward = ["-t", "filter", "-I", FORWARD, "1"];
    let append_forward = ["-t", "filter", "-A", FORWARD];
    let append_nat = ["-t", "nat", "-A", POSTROUTING];
    // Inserted in reverse: the intra-bridge accept ends up above the isolation drops.
    for other in ["brt+", "berth0"].into_iter().filter(|o| *o != bridge) {
        add(&insert_forward, &["-i", bridge, "-o", other], "DROP")?;
    }
    add(&insert_forward, &["-i", bridge, "-o", bridge], "ACCEPT")?;
    let verdict = if internal { "DROP" } else { "ACCEPT" };
    add(&append_forward, &["-i", bridge], verdict)?;
    add(&append_forward, &["-o", bridge], verdict)?;
    if !internal {
        add(
            &append_nat,
            &["-s", &subnet, "!", "-o", bridge],
            "MASQUERADE",
        )?;
    }
    add(
        &append_nat,
        &["-s", "127.0.0.0/8", "-o", bridge],
        "MASQUERADE",
    )?;
    // Hairpin: a container reaching a published port of its own network through a host address is
    // DNAT'd back into the bridge; masquerading it makes the answer come back the same way.
    add(
        &append_nat,
        &[
            "-s",
            &subnet,
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
        ],
        "MASQUERADE",
    )?;
    keep_established_first()
}

/// Puts the two rules that must precede every network's isolation drops at the top of
/// `BERTH-FORWARD`: answers of allowed connections, and connections to published ports (DNAT'd:
/// whoever can reach the host may use them, from any network, as with Docker's proxy).
fn keep_established_first() -> Result<(), NetError> {
    for state in ["DNAT", "RELATED,ESTABLISHED"] {
        let rule = ["-m", "conntrack", "--ctstate", state, "-j", "ACCEPT"];
        let mut delete = vec!["-t", "filter", "-D", FORWARD];
        delete.extend_from_slice(&rule);
        while iptables(&delete).is_ok() {}
        let mut insert = vec!["-t", "filter", "-I", FORWARD, "1"];
        insert.extend_from_slice(&rule);
        iptables(&insert)?;
    }
    Ok(())
}

/// Deletes every rule tagged with `owner` from Berth's chains.
fn remove_tagged(owner: &str) {
    let wanted = tag(owner);
    for (table, chain) in [("nat", POSTROUTING), ("nat", DNAT), ("filter", FORWARD)] {
        let Ok(rules) = iptables(&["-t", table, "-S", chain]) else {
            continue;
        };
        for rule in rules.lines().filter(|r| r.starts_with("-A ")) {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let tagged = words
                .windows(2)
                .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == wanted);
            if tagged {
                let mut delete = vec!["-t", table, "-D"];
                delete.extend(words[1..].iter().map(|w| w.trim_matches('"')));
                let _ = iptables(&delete);
            }
        }
    }
}

/// Removes a bridge network's rules.
pub fn remove_network(bridge: &str) {
    remove_tagged(bridge);
}

/// Reserves a free host port (`0` picks one) by binding it: a port some process listens on is refused.
fn check_port(mapping: &PortMapping) -> Result<u16, NetError> {
    let addr = SocketAddrV4::new(mapping.host_ip, mapping.host_port);
    let taken = || NetError::PortTaken(format!("{}:{}", mapping.host_ip, mapping.host_port));
    let port = if mapping.protocol == "udp" {
        UdpSocket::bind(addr)
            .and_then(|s| s.local_addr())
            .map_err(|_| taken())?
            .port()
    } else {
        TcpListener::bind(addr)
            .and_then(|s| s.local_addr())
            .map_err(|_| taken())?
            .port()
    };
    // Another container's DNAT rule for the port counts as taken too.
    let rules = iptables(&["-t", "nat", "-S", DNAT]).unwrap_or_default();
    let busy = rules.lines().any(|r| {
        r.contains(&format!("-p {} ", mapping.protocol))
            && r.contains(&format!("--dport {port} "))
            && (mapping.host_ip.is_unspecified()
                || !r.contains(" -d ")
                || r.contains(&format!("-d {}/32", mapping.host_ip)))
    });
    if busy {
        return Err(NetError::PortTaken(format!("{}:{port}", mapping.host_ip)));
    }
    Ok(port)
}

/// Publishes `ports` of container `id` at `ip`; returns them with host ports chosen.
pub fn publish(
    id: &str,
    ip: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<Vec<PortMapping>, NetError> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    ensure_chains()?;
    let comment = tag(id);
    let mut done = Vec::new();
    for mapping in ports {
        let host_port = match check_port(mapping) {
            Ok(p) => p,
            Err(e) => {
                remove_tagged(id);
                return Err(e);
            }
        };
        let dport = host_port.to_string();
        let to = format!("{ip}:{}", mapping.container_port);
        let host_ip = format!("{}/32", mapping.host_ip);
        let mut rule = vec!["-t", "nat", "-A", DNAT, "-p", &mapping.protocol];
        if !mapping.host_ip.is_unspecified() {
            rule.extend_from_slice(&["-d", &host_ip]);
        }
        rule.extend_from_slice(&[
            "--dport",
            &dport,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]);
        if let Err(e) = iptables(&rule) {
            remove_tagged(id);
            return Err(e);
        }
        done.push(PortMapping {
            host_port,
            ..mapping.clone()
        });
    }
    Ok(done)
}

/// Removes container `id`'s published ports.
pub fn unpublish(id: &str) {
    remove_tagged(id);
}
