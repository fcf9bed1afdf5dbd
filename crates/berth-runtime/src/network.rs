//! Connecting containers to their network (`--network bridge`, the default) through `berth-net`, and
//! recording what they got (Docker's `NetworkSettings`, /etc/hosts).

use std::net::Ipv4Addr;

use berth_net::{Network, PortMapping};
use berth_store::container::{ContainerRecord, NetworkSettings, PortBinding};

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

/// Connects a created (not yet started) container to its network; returns the network to disconnect
/// from later, or None when it has none to join (`none`, `host`).
pub(crate) fn connect(
    engine: &Engine,
    record: &ContainerRecord,
    pid: Option<nix::unistd::Pid>,
) -> Result<Option<Network>, RuntimeError> {
    let pid = pid.ok_or_else(|| RuntimeError::Start("container has no init process".into()))?;
    match record.host_config.network_mode.as_str() {
        "bridge" => {}
        "none" => {
            berth_net::loopback_up(pid.as_raw()).map_err(net_err)?;
            return Ok(None);
        }
        _ => return Ok(None),
    }
    let network = Network::default_bridge(engine.store().root()).map_err(net_err)?;
    let endpoint = network
        .attach(&record.id, pid.as_raw(), &port_mappings(record)?)
        .map_err(net_err)?;
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
    let settings = NetworkSettings {
        ip_address: endpoint.ip.to_string(),
        ip_prefix_len: endpoint.prefix,
        gateway: endpoint.gateway.to_string(),
        mac_address: endpoint.mac.clone(),
        ports,
    };
    let stored = engine.store().update_container(&record.id, |r| {
        r.network_settings = settings.clone();
        Ok::<(), ()>(())
    });
    if stored.is_err() {
        network.detach(&record.id, true);
        return Err(RuntimeError::Start("record network settings".into()));
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
        let _ = std::fs::write(&hosts, text);
    }
    Ok(Some(network))
}

/// Undoes [`connect`] after the container stopped.
pub(crate) fn disconnect(engine: &Engine, record: &ContainerRecord, network: Option<&Network>) {
    if let Some(network) = network {
        let published = engine
            .store()
            .container(&record.id)
            .map(|r| !r.network_settings.ports.is_empty())
            .unwrap_or(true);
        network.detach(&record.id, published);
        let _ = engine.store().update_container(&record.id, |r| {
            r.network_settings = NetworkSettings::default();
            Ok::<(), ()>(())
        });
    }
}

/// Releases what a container whose monitor died left on its network.
pub(crate) fn release_orphan(engine: &Engine, record: &ContainerRecord) {
    if record.host_config.network_mode != "bridge" {
        return;
    }
    if let Ok(Some(network)) = Network::load(&engine.store().root().join("networks"), "bridge") {
        network.detach(&record.id, true);
    }
}
