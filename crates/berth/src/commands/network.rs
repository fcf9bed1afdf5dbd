//! Network commands: ls, inspect (the default `bridge` network for now; user-defined networks follow).

use anyhow::bail;
use berth_net::{CreateOptions, Network};
use berth_runtime::events::Event;
use berth_runtime::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::format::{print_documents, print_rows};

/// `network` subcommands.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum NetworkCommand {
    /// Create a network
    Create(CreateArgs),
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove all unused networks
    Prune(PruneArgs),
    /// Connect a container to a network
    Connect(ConnectArgs),
    /// Disconnect a container from a network
    Disconnect(DisconnectArgs),
    /// List networks
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove the default bridge's host side (bridge, rules) when no container uses it
    #[command(hide = true)]
    Reset,
}

// `network create` flags.
#[derive(Args)]
pub struct CreateArgs {
    /// Driver to manage the Network
    #[arg(short = 'd', long, default_value = "bridge")]
    driver: String,
    /// Subnet in CIDR format that represents a network segment
    #[arg(long)]
    subnet: Option<String>,
    /// IPv4 Gateway for the master subnet
    #[arg(long)]
    gateway: Option<String>,
    /// Allocate container ip from a sub-range
    #[arg(long = "ip-range")]
    ip_range: Option<String>,
    /// Restrict external access to the network
    #[arg(long)]
    internal: bool,
    /// Set metadata on a network
    #[arg(long)]
    label: Vec<String>,
    /// Network name
    name: String,
}

// `network connect` flags.
#[derive(Args)]
pub struct ConnectArgs {
    /// Add network-scoped alias for the container
    #[arg(long)]
    alias: Vec<String>,
    /// IPv4 address (e.g., 172.30.100.104)
    #[arg(long)]
    ip: Option<String>,
    /// Network
    network: String,
    /// Container
    container: String,
}

// `network disconnect` flags.
#[derive(Args)]
pub struct DisconnectArgs {
    /// Force the container to disconnect from a network
    #[arg(short = 'f', long)]
    force: bool,
    /// Network
    network: String,
    /// Container
    container: String,
}

// `network rm` arguments.
#[derive(Args)]
pub struct RmArgs {
    /// Networks
    #[arg(required = true)]
    networks: Vec<String>,
}

// `network prune` flags.
#[derive(Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
}

// `network ls` flags.
#[derive(Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Do not truncate the output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

// `network inspect` flags.
#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Networks
    #[arg(required = true)]
    networks: Vec<String>,
}

fn builtin(name: &str, driver: &str) -> Value {
    json!({"Name": name, "Id": name, "Driver": driver, "Scope": "local", "IPAM": {"Config": []}, "Containers": {}})
}

fn network_json(engine: &Engine, n: &Network) -> anyhow::Result<Value> {
    let mut containers = serde_json::Map::new();
    for r in engine.containers()? {
        let ns = &r.network_settings;
        if r.host_config.network_mode == n.name && !ns.ip_address.is_empty() {
            containers.insert(
                r.id.clone(),
                json!({"Name": r.name, "IPv4Address": format!("{}/{}", ns.ip_address, ns.ip_prefix_len), "MacAddress": ns.mac_address}),
            );
        } else if let Some(e) = ns.networks.get(&n.name) {
            containers.insert(
                r.id.clone(),
                json!({"Name": r.name, "IPv4Address": format!("{}/{}", e.ip_address, e.ip_prefix_len), "MacAddress": e.mac_address}),
            );
        }
    }
    Ok(json!({
        "Name": n.name, "Id": n.id, "Created": n.created, "Driver": "bridge", "Scope": "local",
        "Internal": n.internal, "Labels": n.labels,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string(), "IPRange": n.ip_range.map(|r| r.to_string()).unwrap_or_default()}]},
        "Options": {"com.docker.network.bridge.name": n.bridge},
        "Containers": containers,
    }))
}

fn all(engine: &Engine) -> anyhow::Result<Vec<Value>> {
    let root = engine.store().root();
    let networks = Network::list(root)?;
    let mut out = Vec::new();
    if !networks.iter().any(|n| n.name == "bridge") {
        // Not used yet: created on first use, listed like Docker's.
        out.push(builtin("bridge", "bridge"));
    }
    for n in &networks {
        out.push(network_json(engine, n)?);
    }
    out.push(builtin("host", "host"));
    out.push(builtin("none", "null"));
    Ok(out)
}

/// (network, container name) for every network some container (in any state) is configured to use.
fn in_use(engine: &Engine) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for r in engine.containers()? {
        out.push((r.host_config.network_mode.clone(), r.name.clone()));
        for e in &r.host_config.extra_networks {
            out.push((e.name.clone(), r.name.clone()));
        }
    }
    Ok(out)
}

fn create(engine: &Engine, args: CreateArgs) -> anyhow::Result<i32> {
    if args.driver != "bridge" {
        bail!(
            "plugin \"{}\" not found: only the bridge driver is supported",
            args.driver
        );
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let id = format!(
        "{}{}",
        berth_store::random_hex(16),
        berth_store::random_hex(16)
    );
    let n = Network::create(
        engine.store().root(),
        &args.name,
        &CreateOptions {
            subnet: args.subnet,
            gateway: args.gateway,
            ip_range: args.ip_range,
            internal: args.internal,
            labels,
            created: berth_store::now_rfc3339(),
            id,
        },
    )?;
    engine.emit(&Event::network("create", &n.id, &n.name, None));
    println!("{}", n.id);
    Ok(0)
}

/// Removes those of `names` no container uses, printing each name removed (prune).
pub fn remove_unused(engine: &Engine, names: &[String]) -> anyhow::Result<()> {
    remove(engine, names, true).map(drop)
}

fn remove(engine: &Engine, names: &[String], quiet_unused: bool) -> anyhow::Result<bool> {
    let root = engine.store().root();
    let users = in_use(engine)?;
    let mut failed = false;
    for name in names {
        if matches!(name.as_str(), "bridge" | "host" | "none") {
            if !quiet_unused {
                eprintln!("Error response from daemon: {name} is a pre-defined network and cannot be removed");
                failed = true;
            }
            continue;
        }
        let Some(n) = Network::list(root)?
            .into_iter()
            .find(|n| &n.name == name || (name.len() >= 12 && n.id.starts_with(name.as_str())))
        else {
            eprintln!("Error response from daemon: network {name} not found");
            failed = true;
            continue;
        };
        let using: Vec<&str> = users
            .iter()
            .filter(|(net, _)| *net == n.name)
            .map(|(_, c)| c.as_str())
            .collect();
        if !using.is_empty() {
            if !quiet_unused {
                eprintln!(
                    "Error response from daemon: error while removing network: network {} has active endpoints (containers: {})",
                    n.name,
                    using.join(", ")
                );
                failed = true;
            }
            continue;
        }
        n.remove(root)?;
        engine.emit(&Event::network("destroy", &n.id, &n.name, None));
        println!("{name}");
    }
    Ok(!failed)
}

pub fn network_command(engine: &Engine, command: NetworkCommand) -> anyhow::Result<i32> {
    match command {
        NetworkCommand::Create(args) => create(engine, args),
        NetworkCommand::Connect(args) => {
            engine.network_connect(
                &args.network,
                &args.container,
                &args.alias,
                args.ip.as_deref(),
            )?;
            Ok(0)
        }
        NetworkCommand::Disconnect(args) => {
            let _ = args.force;
            engine.network_disconnect(&args.network, &args.container)?;
            Ok(0)
        }
        NetworkCommand::Rm(args) => {
            if remove(engine, &args.networks, false)? {
                Ok(0)
            } else {
                Ok(1)
            }
        }
        NetworkCommand::Prune(args) => {
            if !super::confirm_prune(
                args.force,
                "WARNING! This will remove all custom networks not used by at least one container.",
            ) {
                return Ok(0);
            }
            let names: Vec<String> = Network::list(engine.store().root())?
                .into_iter()
                .map(|n| n.name)
                .filter(|n| n != "bridge")
                .collect();
            println!("Deleted Networks:");
            remove_unused(engine, &names)?;
            Ok(0)
        }
        NetworkCommand::Ls(args) => {
            let rows: Vec<Value> = all(engine)?
                .into_iter()
                .map(|n| {
                    let id = n["Id"].as_str().unwrap_or_default();
                    let id = if args.no_trunc {
                        id
                    } else {
                        &id[..id.len().min(12)]
                    };
                    json!({"ID": id, "Name": n["Name"], "Driver": n["Driver"], "Scope": n["Scope"]})
                })
                .collect();
            if args.quiet {
                for r in &rows {
                    println!("{}", r["ID"].as_str().unwrap_or_default());
                }
                return Ok(0);
            }
            print_rows(
                args.format.as_deref(),
                &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                &["ID", "Name", "Driver", "Scope"],
                &rows,
            )?;
            Ok(0)
        }
        NetworkCommand::Inspect(args) => {
            let networks = all(engine)?;
            let mut found = Vec::new();
            for name in &args.networks {
                match networks.iter().find(|n| n["Name"] == name.as_str()) {
                    Some(n) => found.push(n.clone()),
                    None => bail!("network {name} not found"),
                }
            }
            print_documents(args.format.as_deref(), &found)?;
            Ok(0)
        }
        NetworkCommand::Reset => {
            let in_use = engine
                .containers()?
                .iter()
                .any(|r| r.state.running && r.host_config.network_mode == "bridge");
            if in_use {
                bail!("the bridge network has active endpoints");
            }
            if let Some(n) = Network::load(&engine.store().root().join("networks"), "bridge")? {
                n.destroy()?;
                let _ = std::fs::remove_file(engine.store().root().join("networks/bridge.json"));
            }
            Ok(0)
        }
    }
}
