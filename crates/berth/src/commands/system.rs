//! System commands: version, info, system df, system prune.

use berth_runtime::Engine;
use berth_store::container::Status;
use clap::{Args, Subcommand};

use serde_json::json;

use crate::format::{human_size, print_documents, print_table};

/// `system` subcommands.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum SystemCommand {
    /// Show disk usage
    Df,
    /// Display system-wide information
    Info(InfoArgs),
    /// Remove unused data
    Prune(PruneArgs),
    /// Get real time events from the server
    Events(super::events::EventsArgs),
}

// `version` flags. (Plain comments on these structs, as elsewhere here: clap would show a doc comment
// as the command's description instead of the subcommand's own.)
#[derive(Args)]
pub struct VersionArgs {
    /// Format output using a custom template: 'json' or a Go template ('{{.Server.Version}}')
    #[arg(short = 'f', long)]
    format: Option<String>,
}

// `info` (and `system info`) flags.
#[derive(Args)]
pub struct InfoArgs {
    /// Format output using a custom template: 'json' or a Go template ('{{.ServerVersion}}')
    #[arg(short = 'f', long)]
    format: Option<String>,
}

// `system prune` flags.
#[derive(Args)]
pub struct PruneArgs {
    /// Remove all unused images not just dangling ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
    /// Prune anonymous volumes
    #[arg(long)]
    volumes: bool,
}

pub fn system_command(engine: &Engine, command: SystemCommand) -> anyhow::Result<i32> {
    match command {
        SystemCommand::Df => df(engine),
        SystemCommand::Info(a) => info(engine, a),
        SystemCommand::Prune(a) => prune(engine, a),
        SystemCommand::Events(a) => super::events::events(engine, a),
    }
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `berth version`: Docker's two sections, or with `--format` a template over Docker's field names
/// (`.Client.Version`, `.Server.Version`, …) so that scripts written for `docker version` work.
pub fn version(_engine: &Engine, args: VersionArgs) -> anyhow::Result<i32> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = berth_store::image::host_platform().1;
    if let Some(format) = &args.format {
        let doc = json!({
            "Client": {
                "Platform": {"Name": "Berth"},
                "Version": version,
                "ApiVersion": API_VERSION,
                "DefaultAPIVersion": API_VERSION,
                "Os": "linux",
                "Arch": arch,
            },
            "Server": {
                "Platform": {"Name": "Berth (daemonless)"},
                "Components": [
                    {
                        "Name": "Engine",
                        "Version": version,
                        "Details": {"ApiVersion": API_VERSION, "Os": "linux", "Arch": arch},
                    },
                    {
                        "Name": "libcontainer (youki)",
                        "Version": RUNTIME_VERSION,
                        "Details": {"Embedded": "true"},
                    },
                ],
                "Version": version,
                "ApiVersion": API_VERSION,
                "Os": "linux",
                "Arch": arch,
                "KernelVersion": kernel_version(),
            },
        });
        print_documents(Some(format), &[doc])?;
        return Ok(0);
    }
    println!("Client: Berth");
    println!(" Version:      {version}");
    println!(" API version:  {API_VERSION}");
    println!(" OS/Arch:      linux/{arch}");
    println!();
    println!("Engine: Berth (daemonless)");
    println!(" Version:      {version}");
    println!(" Runtime:      libcontainer (youki) {RUNTIME_VERSION}, embedded");
    Ok(0)
}

/// The Docker API version Berth's output corresponds to.
const API_VERSION: &str = "1.43";

/// The embedded runtime's version.
const RUNTIME_VERSION: &str = "0.7";

/// `berth info`: what Docker's `info` shows that applies here, or with `--format` a template over
/// Docker's field names (`.ServerVersion`, `.Containers`, `.Driver`, …).
pub fn info(engine: &Engine, args: InfoArgs) -> anyhow::Result<i32> {
    let containers = engine.containers()?;
    let count = |s: Status| containers.iter().filter(|c| c.state.status == s).count();
    let (running, paused) = (count(Status::Running), count(Status::Paused));
    let stopped = count(Status::Exited) + count(Status::Created);
    let images = engine.store().images()?.len();
    let unified = berth_runtime::cgroup::is_unified();
    let kernel = kernel_version();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let root = engine.store().root().display().to_string();
    let runroot = engine.runroot().display().to_string();
    if let Some(format) = &args.format {
        let doc = json!({
            "Containers": containers.len(),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": stopped,
            "Images": images,
            "Driver": "overlay",
            "LoggingDriver": "json-file",
            "CgroupVersion": if unified { "2" } else { "1" },
            "DefaultRuntime": "libcontainer",
            "KernelVersion": kernel,
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "NCPU": cpus,
            "DockerRootDir": root,
            "BerthRunDir": runroot,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
        });
        print_documents(Some(format), &[doc])?;
        return Ok(0);
    }
    let cgroup = if unified { "2" } else { "1 (hybrid or legacy)" };
    println!("Containers: {}", containers.len());
    println!(" Running: {running}");
    println!(" Paused: {paused}");
    println!(" Stopped: {stopped}");
    println!("Images: {images}");
    println!("Storage Driver: overlay");
    println!("Logging Driver: json-file");
    println!("Cgroup Version: {cgroup}");
    println!("Runtime: libcontainer (embedded)");
    println!("Kernel Version: {kernel}");
    println!("Architecture: {}", std::env::consts::ARCH);
    println!("CPUs: {cpus}");
    println!("Berth Root Dir: {root}");
    println!("Berth Run Dir: {runroot}");
    Ok(0)
}

fn df(engine: &Engine) -> anyhow::Result<i32> {
    let store = engine.store();
    let images = store.images()?;
    let containers = engine.containers()?;
    let volumes = store.volumes()?;
    let used_images: Vec<_> = containers.iter().map(|c| &c.image_id).collect();
    // Images share layers: each layer counts once, and is reclaimable when no image a container
    // uses has it.
    let mut layers: std::collections::BTreeMap<&berth_store::Digest, (u64, bool)> =
        Default::default();
    for image in &images {
        let in_use = used_images.contains(&&image.id);
        for diff_id in &image.config.rootfs.diff_ids {
            // Each shared layer is looked up once.
            let entry = match layers.entry(diff_id) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((store.layer(diff_id)?.map_or(0, |l| l.unpacked_size), false))
                }
            };
            entry.1 |= in_use;
        }
    }
    let image_size: u64 = layers.values().map(|(size, _)| size).sum();
    let unused_image_size: u64 = layers
        .values()
        .filter(|(_, in_use)| !in_use)
        .map(|(size, _)| size)
        .sum();
    let container_sizes: Vec<u64> = containers
        .iter()
        .map(|c| store.snapshots().container_size(&c.id))
        .collect();
    let stopped_size: u64 = containers
        .iter()
        .zip(&container_sizes)
        .filter(|(c, _)| !c.state.running)
        .map(|(_, s)| *s)
        .sum();
    let volume_sizes: Vec<(bool, u64)> = volumes
        .iter()
        .map(|v| {
            let used = store
                .volume_users(&v.name)
                .map(|u| !u.is_empty())
                .unwrap_or(false);
            (used, berth_store::snapshot::dir_size(&v.mountpoint))
        })
        .collect();
    let pct = |part: u64, total: u64| match (part * 100).checked_div(total) {
        Some(p) => format!("{p}%"),
        None => "0%".to_string(),
    };
    let vol_total: u64 = volume_sizes.iter().map(|v| v.1).sum();
    let vol_unused: u64 = volume_sizes.iter().filter(|v| !v.0).map(|v| v.1).sum();
    let ctr_total: u64 = container_sizes.iter().sum();
    print_table(
        &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        &[
            vec![
                "Images".into(),
                images.len().to_string(),
                images
                    .iter()
                    .filter(|i| used_images.contains(&&i.id))
                    .count()
                    .to_string(),
                human_size(image_size),
                format!(
                    "{} ({})",
                    human_size(unused_image_size),
                    pct(unused_image_size, image_size)
                ),
            ],
            vec![
                "Containers".into(),
                containers.len().to_string(),
                containers
                    .iter()
                    .filter(|c| c.state.running)
                    .count()
                    .to_string(),
                human_size(ctr_total),
                format!(
                    "{} ({})",
                    human_size(stopped_size),
                    pct(stopped_size, ctr_total)
                ),
            ],
            vec![
                "Local Volumes".into(),
                volumes.len().to_string(),
                volume_sizes.iter().filter(|v| v.0).count().to_string(),
                human_size(vol_total),
                format!(
                    "{} ({})",
                    human_size(vol_unused),
                    pct(vol_unused, vol_total)
                ),
            ],
        ],
    );
    Ok(0)
}

fn prune(engine: &Engine, args: PruneArgs) -> anyhow::Result<i32> {
    let mut warning = String::from(
        "WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container",
    );
    if args.volumes {
        warning.push_str("\n  - all anonymous volumes not used by at least one container");
    }
    warning.push_str(if args.all {
        "\n  - all images without at least one container associated to them\n  - all build cache"
    } else {
        "\n  - all dangling images\n  - all dangling build cache"
    });
    if !super::confirm_prune(args.force, &warning) {
        return Ok(0);
    }
    let store = engine.store();
    let mut reclaimed = 0u64;
    for c in engine.containers()? {
        if c.state.running {
            continue;
        }
        engine.await_monitor_finish(&c.id);
        if !engine.monitor_alive(&c.id) {
            reclaimed += store.snapshots().container_size(&c.id);
            engine.remove(&c.id, false, false)?;
            println!("Deleted Container: {}", c.id);
        }
    }
    engine.remove_orphans()?;
    // Networks no container uses any more (the default bridge stays, as Docker's).
    let unused: Vec<String> = berth_net::Network::list(store.root())?
        .into_iter()
        .map(|n| n.name)
        .filter(|n| n != "bridge")
        .collect();
    super::network::remove_unused(engine, &unused)?;
    if args.volumes {
        for v in store.volumes()? {
            if v.anonymous && store.volume_users(&v.name)?.is_empty() {
                reclaimed += berth_store::snapshot::dir_size(&v.mountpoint);
                store.remove_volume(&v.name)?;
                println!("Deleted Volume: {}", v.name);
            }
        }
    }
    let pruned = store.prune_build_cache()?;
    if pruned.entries > 0 {
        println!("Deleted build cache objects: {}", pruned.entries);
    }
    reclaimed += pruned.reclaimed;
    let used: Vec<_> = store
        .containers()?
        .into_iter()
        .map(|c| c.image_id)
        .collect();
    for image in store.images()? {
        if !used.contains(&image.id) && (image.tags.is_empty() || args.all) {
            // No container uses it: nothing runs it. What is freed is its layers no other image uses.
            let removal = store.delete_image(image.id.as_str(), true, &|_| false)?;
            reclaimed += removal.reclaimed;
            for action in removal.actions {
                if let berth_store::RemovedImage::Deleted(d) = action {
                    println!("Deleted Image: {d}");
                }
            }
        }
    }
    reclaimed += store.remove_partial_downloads()?;
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}
