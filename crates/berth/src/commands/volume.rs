//! Volume commands.

use std::collections::BTreeMap;

use berth_runtime::events::Event;
use berth_runtime::Engine;
use berth_store::VolumeRecord;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::format::{human_size, print_rows};

/// `volume` subcommands.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum VolumeCommand {
    /// Create a volume
    Create(CreateArgs),
    /// List volumes
    #[command(name = "ls", alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes
    Inspect(InspectArgs),
    /// Remove one or more volumes
    Rm(RmArgs),
    /// Remove unused local volumes
    Prune(PruneArgs),
}

// `volume create` flags.
#[derive(Args)]
pub struct CreateArgs {
    /// Specify volume driver name (local)
    #[arg(short = 'd', long, default_value = "local")]
    driver: String,
    /// Set metadata for a volume
    #[arg(long)]
    label: Vec<String>,
    /// Volume name
    name: Option<String>,
}

// `volume ls` flags.
#[derive(Args)]
pub struct LsArgs {
    /// Only display volume names
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Provide filter values
    #[arg(short = 'f', long)]
    filter: Vec<String>,
}

// `volume inspect` flags.
#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Volumes
    #[arg(required = true)]
    names: Vec<String>,
}

// `volume rm` flags.
#[derive(Args)]
pub struct RmArgs {
    /// Force the removal of one or more volumes
    #[arg(short = 'f', long)]
    force: bool,
    /// Volumes
    #[arg(required = true)]
    names: Vec<String>,
}

// `volume prune` flags.
#[derive(Args)]
pub struct PruneArgs {
    /// Remove all unused volumes, not just anonymous ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
}

/// Docker's volume inspect document.
pub fn volume_json(v: &VolumeRecord) -> Value {
    json!({
        "CreatedAt": v.created,
        "Driver": "local",
        "Labels": v.labels,
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": {},
        "Scope": "local",
    })
}

pub fn volume_command(engine: &Engine, command: VolumeCommand) -> anyhow::Result<i32> {
    let store = engine.store();
    match command {
        VolumeCommand::Create(a) => {
            if a.driver != "local" {
                anyhow::bail!("volume driver {:?} is not supported (local is)", a.driver);
            }
            let name = a.name.unwrap_or_else(|| {
                format!(
                    "{}{}",
                    berth_store::random_hex(16),
                    berth_store::random_hex(16)
                )
            });
            let mut labels = BTreeMap::new();
            for l in &a.label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_string(), v.to_string());
            }
            let (v, created) = store.create_volume(&name, &labels, false)?;
            if created {
                engine.emit(&Event::volume("create", &v.name));
            }
            println!("{}", v.name);
            Ok(0)
        }
        VolumeCommand::Ls(a) => {
            let mut vols = store.volumes()?;
            for f in &a.filter {
                let (k, v) = f.split_once('=').unwrap_or((f.as_str(), ""));
                match k {
                    "name" => vols.retain(|x| x.name.contains(v)),
                    "dangling" => {
                        let want = v == "true";
                        let mut kept = Vec::new();
                        for x in vols {
                            if store.volume_users(&x.name)?.is_empty() == want {
                                kept.push(x);
                            }
                        }
                        vols = kept;
                    }
                    "label" => vols.retain(|x| match v.split_once('=') {
                        Some((lk, lv)) => x.labels.get(lk).is_some_and(|y| y == lv),
                        None => x.labels.contains_key(v),
                    }),
                    other => anyhow::bail!("invalid filter '{other}'"),
                }
            }
            if a.quiet {
                for v in &vols {
                    println!("{}", v.name);
                }
                return Ok(0);
            }
            let rows: Vec<Value> = vols
                .iter()
                .map(|v| json!({"Driver": "local", "Name": v.name, "Mountpoint": v.mountpoint, "Scope": "local"}))
                .collect();
            print_rows(
                a.format.as_deref(),
                &["DRIVER", "VOLUME NAME"],
                &["Driver", "Name"],
                &rows,
            )?;
            Ok(0)
        }
        VolumeCommand::Inspect(a) => {
            let mut docs = Vec::new();
            let mut failed = false;
            for n in &a.names {
                match store.volume(n) {
                    Ok(v) => docs.push(volume_json(&v)),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            crate::format::print_documents(a.format.as_deref(), &docs)?;
            Ok(if failed { 1 } else { 0 })
        }
        VolumeCommand::Rm(a) => {
            let mut failed = false;
            for n in &a.names {
                match store.remove_volume(n) {
                    Ok(()) => {
                        engine.emit(&Event::volume("destroy", n));
                        println!("{n}");
                    }
                    Err(berth_store::StoreError::VolumeNotFound(_)) if a.force => {}
                    Err(e) => {
                        eprintln!("Error response from daemon: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
        VolumeCommand::Prune(a) => {
            let warning = if a.all {
                "WARNING! This will remove all local volumes not used by at least one container."
            } else {
                "WARNING! This will remove anonymous local volumes not used by at least one container."
            };
            if !super::confirm_prune(a.force, warning) {
                return Ok(0);
            }
            let mut reclaimed = 0;
            let mut removed = Vec::new();
            for v in store.volumes()? {
                if (v.anonymous || a.all) && store.volume_users(&v.name)?.is_empty() {
                    reclaimed += berth_store::snapshot::dir_size(&v.mountpoint);
                    store.remove_volume(&v.name)?;
                    engine.emit(&Event::volume("destroy", &v.name));
                    removed.push(v.name);
                }
            }
            if !removed.is_empty() {
                println!("Deleted Volumes:");
                for n in removed {
                    println!("{n}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", human_size(reclaimed));
            Ok(0)
        }
    }
}
