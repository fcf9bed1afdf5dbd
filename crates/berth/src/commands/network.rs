//! Network commands: ls, inspect (the default `bridge` network for now; user-defined networks follow).

use anyhow::bail;
use berth_net::Network;
use berth_runtime::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::format::{print_documents, print_rows};

/// `network` subcommands.
#[derive(Subcommand)]
pub enum NetworkCommand {
    /// List networks
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove the default bridge's host side (bridge, rules) when no container uses it
    #[command(hide = true)]
    Reset,
}

/// `network ls` flags.
#[derive(Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
}

/// `network inspect` flags.
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

fn bridge_json(engine: &Engine) -> anyhow::Result<Value> {
    let dir = engine.store().root().join("networks");
    let mut containers = serde_json::Map::new();
    for r in engine.containers()? {
        if r.host_config.network_mode == "bridge" && !r.network_settings.ip_address.is_empty() {
            containers.insert(
                r.id.clone(),
                json!({"Name": r.name, "IPv4Address": format!("{}/{}", r.network_settings.ip_address, r.network_settings.ip_prefix_len), "MacAddress": r.network_settings.mac_address}),
            );
        }
    }
    let (subnet, gateway, bridge) = match Network::load(&dir, "bridge")? {
        Some(n) => (n.subnet.to_string(), n.gateway.to_string(), n.bridge),
        None => (String::new(), String::new(), String::new()),
    };
    Ok(json!({
        "Name": "bridge", "Id": "bridge", "Driver": "bridge", "Scope": "local",
        "IPAM": {"Driver": "default", "Config": if subnet.is_empty() { json!([]) } else { json!([{"Subnet": subnet, "Gateway": gateway}]) }},
        "Options": {"com.docker.network.bridge.name": bridge},
        "Containers": containers,
    }))
}

fn all(engine: &Engine) -> anyhow::Result<Vec<Value>> {
    Ok(vec![
        bridge_json(engine)?,
        builtin("host", "host"),
        builtin("none", "null"),
    ])
}

pub fn network_command(engine: &Engine, command: NetworkCommand) -> anyhow::Result<i32> {
    match command {
        NetworkCommand::Ls(args) => {
            let rows: Vec<Value> = all(engine)?
                .into_iter()
                .map(|n| json!({"ID": n["Id"], "Name": n["Name"], "Driver": n["Driver"], "Scope": n["Scope"]}))
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
