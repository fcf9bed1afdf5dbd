//! System commands: version, info, system df, system prune.

use berth_runtime::Engine;
use berth_store::container::Status;
use clap::{Args, Subcommand};

use crate::format::{human_size, print_table};

/// `system` subcommands.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum SystemCommand {
    /// Show disk usage
    Df,
    /// Display system-wide information
    Info,
    /// Remove unused data
    Prune(PruneArgs),
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
        SystemCommand::Info => info(engine),
        SystemCommand::Prune(a) => prune(engine, a),
    }
}

pub fn version(_engine: &Engine) -> anyhow::Result<i32> {
    println!("Client: Berth");
    println!(" Version:      {}", env!("CARGO_PKG_VERSION"));
    println!(" API version:  1.43");
    println!(
        " OS/Arch:      linux/{}",
        berth_store::image::host_platform().1
    );
    println!();
    println!("Engine: Berth (daemonless)");
    println!(" Version:      {}", env!("CARGO_PKG_VERSION"));
    println!(" Runtime:      libcontainer (youki) 0.7, embedded");
    Ok(0)
}

pub fn info(engine: &Engine) -> anyhow::Result<i32> {
    let containers = engine.containers()?;
    let count = |s: Status| containers.iter().filter(|c| c.state.status == s).count();
    let cgroup = if berth_runtime::cgroup::is_unified() {
        "2"
    } else {
        "1 (hybrid or legacy)"
    };
    println!("Containers: {}", containers.len());
    println!(" Running: {}", count(Status::Running));
    println!(" Paused: {}", count(Status::Paused));
    println!(
        " Stopped: {}",
        count(Status::Exited) + count(Status::Created)
    );
    println!("Images: {}", engine.store().images()?.len());
    println!("Storage Driver: overlay");
    println!("Logging Driver: json-file");
    println!("Cgroup Version: {cgroup}");
    println!("Runtime: libcontainer (embedded)");
    println!(
        "Kernel Version: {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("Architecture: {}", std::env::consts::ARCH);
    println!(
        "CPUs: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("Berth Root Dir: {}", engine.store().root().display());
    println!("Berth Run Dir: {}", engine.runroot().display());
    Ok(0)
}

fn df(engine: &Engine) -> anyhow::Result<i32> {
    let store = engine.store();
    let images = store.images()?;
    let containers = engine.containers()?;
    let volumes = store.volumes()?;
    let used_images: Vec<_> = containers.iter().map(|c| &c.image_id).collect();
    let image_size: u64 = images.iter().map(|i| i.size).sum();
    let unused_image_size: u64 = images
        .iter()
        .filter(|i| !used_images.contains(&&i.id))
        .map(|i| i.size)
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
            for a in store.remove_image(image.id.as_str(), true)? {
                if let berth_store::RemovedImage::Deleted(d) = a {
                    reclaimed += image.size;
                    println!("Deleted Image: {d}");
                }
            }
        }
    }
    reclaimed += store.remove_partial_downloads()?;
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}
