//! Image commands: images, import, save, load, tag, rmi, history, image inspect/prune.

use std::collections::HashSet;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use berth_runtime::events::Event;
use berth_runtime::Engine;
use berth_store::image::RunConfig;
use berth_store::reference::familiar_name;
use berth_store::{Digest, ImageRecord, Reference, RemovedImage};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{archive_stdout, write_atomically};
use crate::format::{human_duration, human_size, image_size, print_rows};

// `images` flags.
#[derive(Args)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short = 'a', long)]
    all: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Show digests
    #[arg(long)]
    digests: bool,
    /// Filter output based on conditions provided
    #[arg(short = 'f', long)]
    filter: Vec<String>,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Repository (and optionally tag) to list
    repository: Option<String>,
}

// `import` flags.
#[derive(Args)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction to the created image
    #[arg(short = 'c', long)]
    change: Vec<String>,
    /// Set commit message for imported image
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// Set platform if server is multi-platform capable
    #[arg(long)]
    platform: Option<String>,
    /// File (tar, gzip or zstd) or - for stdin
    file: String,
    /// Repository[:tag] for the image
    reference: Option<String>,
}

// `save` flags.
#[derive(Args)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Images to save (names, name:tag or IDs)
    #[arg(required = true)]
    images: Vec<String>,
}

// `load` flags.
#[derive(Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short = 'i', long)]
    input: Option<PathBuf>,
    /// Suppress the load output (there is no progress output; the loaded images are still listed)
    #[arg(short = 'q', long)]
    quiet: bool,
}

// `tag` arguments.
#[derive(Args)]
pub struct TagArgs {
    /// Source image
    source: String,
    /// Target name
    target: String,
}

// `rmi` flags.
#[derive(Args)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short = 'f', long)]
    force: bool,
    /// Do not delete untagged parents
    #[arg(long = "no-prune")]
    no_prune: bool,
    /// Images
    #[arg(required = true)]
    images: Vec<String>,
}

// `history` flags.
#[derive(Args)]
pub struct HistoryArgs {
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set)]
    human: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Image
    image: String,
}

// `image inspect` flags.
#[derive(Args)]
pub struct ImageInspectArgs {
    /// Format output using a Go template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Images
    #[arg(required = true)]
    images: Vec<String>,
}

// `image prune` flags.
#[derive(Args)]
pub struct ImagePruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
    /// Provide filter values
    #[arg(long)]
    filter: Vec<String>,
}

/// `image` subcommands.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum ImageCommand {
    /// List images
    #[command(name = "ls", alias = "list")]
    Ls(ImagesArgs),
    /// Display detailed information on one or more images
    Inspect(ImageInspectArgs),
    /// Remove images
    Rm(RmiArgs),
    /// Remove unused images
    Prune(ImagePruneArgs),
    /// Import a tarball
    Import(ImportArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Tag an image
    Tag(TagArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Download an image from a registry
    Pull(super::registry::PullArgs),
    /// Upload an image to a registry
    Push(super::registry::PushArgs),
    /// Build an image from a Dockerfile
    Build(Box<super::build::BuildArgs>),
}

pub fn image_command(engine: &Engine, command: ImageCommand) -> anyhow::Result<i32> {
    match command {
        ImageCommand::Ls(a) => images(engine, a),
        ImageCommand::Inspect(a) => inspect(engine, a),
        ImageCommand::Rm(a) => rmi(engine, a),
        ImageCommand::Prune(a) => prune(engine, a),
        ImageCommand::Import(a) => import(engine, a),
        ImageCommand::Save(a) => save(engine, a),
        ImageCommand::Load(a) => load(engine, a),
        ImageCommand::Tag(a) => tag(engine, a),
        ImageCommand::History(a) => history(engine, a),
        ImageCommand::Pull(a) => super::registry::pull(engine, a),
        ImageCommand::Push(a) => super::registry::push(engine, a),
        ImageCommand::Build(a) => super::build::build(engine, *a),
    }
}

fn created_ago(image: &ImageRecord) -> String {
    let secs = (chrono::Utc::now() - image.created()).num_seconds();
    format!("{} ago", human_duration(secs))
}

pub fn images(engine: &Engine, args: ImagesArgs) -> anyhow::Result<i32> {
    let images = engine.store().images()?;
    // Build steps' images are intermediate: shown with -a only, as Docker shows them.
    let intermediate = engine.store().build_cache_images()?;
    let wanted = args
        .repository
        .as_deref()
        .map(Reference::parse_name_only)
        .transpose()?;
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for image in &images {
        if !args.all && image.tags.is_empty() && intermediate.contains(&image.id) {
            continue;
        }
        let mut names: Vec<(String, String)> = image
            .tags
            .iter()
            .filter_map(|t| Reference::parse(t).ok())
            .filter(|r| {
                wanted.as_ref().is_none_or(|w| {
                    w.repository() == r.repository() && w.tag().is_none_or(|t| Some(t) == r.tag())
                })
            })
            .map(|r| {
                (
                    r.familiar_repository(),
                    r.tag().unwrap_or("<none>").to_string(),
                )
            })
            .collect();
        // An untagged image pulled by digest is listed under its repository, as Docker does.
        let digests: Vec<Reference> = image
            .repo_digests
            .iter()
            .filter_map(|d| Reference::parse(d).ok())
            .collect();
        if names.is_empty() {
            for d in &digests {
                let repo = d.familiar_repository();
                let matches = wanted
                    .as_ref()
                    .is_none_or(|w| w.repository() == d.repository() && w.tag().is_none());
                if matches && !names.iter().any(|(r, _)| r == &repo) {
                    names.push((repo, "<none>".into()));
                }
            }
        }
        if names.is_empty() {
            if wanted.is_some() {
                continue;
            }
            names.push(("<none>".into(), "<none>".into()));
        }
        // Untagged is dangling even when known by digest (`repo <none>`), as Docker prunes it.
        let dangling = image.tags.is_empty();
        let mut keep = true;
        for f in &args.filter {
            let (k, v) = f
                .split_once('=')
                .with_context(|| format!("bad format of filter (expected name=value): {f}"))?;
            keep &= match k {
                "dangling" => (v == "true") == dangling,
                "reference" => names.iter().any(|(repo, tag)| {
                    glob_match(v, &format!("{repo}:{tag}")) || glob_match(v, repo)
                }),
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => image.config.config.labels.get(lk).is_some_and(|x| x == lv),
                    None => image.config.config.labels.contains_key(v),
                },
                "before" => engine
                    .store()
                    .image(v)
                    .is_ok_and(|b| image.created() < b.created()),
                "since" => engine
                    .store()
                    .image(v)
                    .is_ok_and(|b| image.created() > b.created()),
                other => anyhow::bail!("invalid filter '{other}'"),
            };
        }
        if !keep {
            continue;
        }
        let id = if args.no_trunc {
            image.id.to_string()
        } else {
            image.id.short().to_string()
        };
        if !ids.contains(&id) {
            ids.push(id.clone());
        }
        for (repo, tag) in names {
            // The digest this tag was pulled or pushed as; else one the registry knows this repository's
            // image by; else none: as Docker 20.10 shows, a digest only exists for registry images,
            // never for one imported, committed, built or loaded here.
            let tag_digest = image
                .tags
                .iter()
                .filter_map(|t| Reference::parse(t).ok())
                .find(|t| t.familiar_repository() == repo && t.tag() == Some(tag.as_str()))
                .and_then(|t| engine.store().tag_digest(&t).ok().flatten());
            let digest = tag_digest
                .as_ref()
                .or_else(|| {
                    digests
                        .iter()
                        .find(|d| d.familiar_repository() == repo)
                        .and_then(|d| d.digest())
                })
                .map_or_else(|| "<none>".to_string(), Digest::to_string);
            rows.push(json!({
                "Repository": repo,
                "Tag": tag,
                "ID": id,
                "Digest": digest,
                "CreatedSince": created_ago(image),
                // Go's time.String(), as Docker prints it (in UTC here).
                "CreatedAt": image.created().format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
                "Size": image_size(image.size),
            }));
        }
    }
    if args.quiet {
        for id in ids {
            println!("{id}");
        }
        return Ok(0);
    }
    if args.digests {
        print_rows(
            args.format.as_deref(),
            &["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"],
            &["Repository", "Tag", "Digest", "ID", "CreatedSince", "Size"],
            &rows,
        )?;
    } else {
        print_rows(
            args.format.as_deref(),
            &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            &["Repository", "Tag", "ID", "CreatedSince", "Size"],
            &rows,
        )?;
    }
    Ok(0)
}

/// `*` wildcard match, as Docker's reference filter.
fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i)
                        && glob_match(tail, &text[head.len() + i..])
                })
        }
    }
}

pub fn import(engine: &Engine, args: ImportArgs) -> anyhow::Result<i32> {
    let tags = args
        .reference
        .as_deref()
        .map(Reference::parse)
        .transpose()?
        .into_iter()
        .collect::<Vec<_>>();
    let mut run_config = RunConfig::default();
    berth_build::apply_changes(&mut run_config, &args.change)?;
    let reader: Box<dyn Read> = if args.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(&args.file).with_context(|| format!("open {}", args.file))?)
    };
    let platform = super::registry::platform(args.platform.as_deref())?;
    let image = engine.store().import_rootfs(
        reader,
        run_config,
        args.message.as_deref(),
        platform.as_ref(),
        &tags,
    )?;
    let name = tags.first().map_or(image.id.to_string(), |t| t.familiar());
    engine.emit(&Event::image("import", image.id.as_str(), &name));
    println!("{}", image.id);
    Ok(0)
}

pub fn save(engine: &Engine, args: SaveArgs) -> anyhow::Result<i32> {
    let what = args.images.join(", ");
    match &args.output {
        Some(path) => write_atomically(path, |file| {
            engine
                .store()
                .save_images(&args.images, std::io::BufWriter::new(file))
                .with_context(|| format!("save {what}"))
        })?,
        None => {
            let mut out = archive_stdout("save")?;
            engine
                .store()
                .save_images(&args.images, &mut out)
                .with_context(|| format!("save {what}"))?;
            out.flush().context("write to stdout")?;
        }
    }
    Ok(0)
}

/// Writes `path` through a temporary file beside it, renamed over it only once `write` succeeded, so a
/// failed save never leaves a truncated archive (nor clobbers an existing file).
pub fn load(engine: &Engine, args: LoadArgs) -> anyhow::Result<i32> {
    let loaded = match &args.input {
        Some(path) => {
            let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
            engine
                .store()
                .load_images(std::io::BufReader::new(file))
                .with_context(|| format!("load {}", path.display()))?
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                anyhow::bail!("requested load from stdin, but stdin is empty");
            }
            engine
                .store()
                .load_images(stdin.lock())
                .context("load from stdin")?
        }
    };
    // `docker load -q` only drops the progress bars; the loaded images are printed either way.
    let _ = args.quiet;
    for image in loaded {
        let name = image
            .tags
            .first()
            .map_or(image.id.to_string(), |t| t.familiar());
        engine.emit(&Event::image("load", image.id.as_str(), &name));
        if image.tags.is_empty() {
            println!("Loaded image ID: {}", image.id);
        }
        for tag in &image.tags {
            println!("Loaded image: {}", tag.familiar());
        }
    }
    Ok(0)
}

pub fn tag(engine: &Engine, args: TagArgs) -> anyhow::Result<i32> {
    let image = engine.store().image(&args.source)?;
    let target = Reference::parse(&args.target)?;
    if target.digest().is_some() {
        anyhow::bail!("refusing to create a tag with a digest reference");
    }
    engine.store().tag(&image.id, &target)?;
    engine.emit(&Event::image("tag", image.id.as_str(), &target.familiar()));
    Ok(0)
}

/// The IDs of the containers that are running (states reconciled with their monitors): an image
/// they use is never deleted, even with -f.
fn running_containers(engine: &Engine) -> anyhow::Result<HashSet<String>> {
    Ok(engine
        .containers()?
        .into_iter()
        .filter(|c| c.state.running)
        .map(|c| c.id)
        .collect())
}

pub fn rmi(engine: &Engine, args: RmiArgs) -> anyhow::Result<i32> {
    let running = running_containers(engine)?;
    let mut failed = false;
    for name in &args.images {
        match engine
            .store()
            .delete_image(name, args.force, &|id| running.contains(id))
        {
            Ok(removal) => {
                let id = removal.image.as_str();
                for a in &removal.actions {
                    match a {
                        RemovedImage::Untagged(t) => {
                            engine.emit(&Event::image("untag", id, t));
                            println!("Untagged: {t}");
                        }
                        RemovedImage::Deleted(d) => {
                            engine.emit(&Event::image("delete", id, d.as_str()));
                            println!("Deleted: {d}");
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// Docker's image inspect document (Docker 20.10's fields: `Container`, `ContainerConfig` and
/// `DockerVersion` from the config when it has them, `VirtualSize` equal to `Size`).
pub fn image_json(engine: &Engine, image: &ImageRecord) -> Value {
    let c = &image.config;
    let extra = |key: &str| c.extra.get(key).cloned();
    let extra_str = |key: &str| {
        extra(key)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    // The top layer is the upper dir, the others the lower dirs, as Docker's overlay drivers show.
    let dirs: Vec<String> = engine
        .store()
        .snapshots()
        .lower_dirs(&c.rootfs.diff_ids)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut graph_data = serde_json::Map::new();
    if let Some((upper, lower)) = dirs.split_first() {
        if !lower.is_empty() {
            graph_data.insert("LowerDir".into(), Value::String(lower.join(":")));
        }
        graph_data.insert("UpperDir".into(), Value::String(upper.clone()));
    }
    // Docker's comment is the config's own (`import`, `commit -m` set it); older Berth images only
    // have it in their last history entry.
    let comment = match extra("comment").and_then(|v| v.as_str().map(str::to_string)) {
        Some(comment) => comment,
        None => c
            .history
            .last()
            .and_then(|h| h.comment.clone())
            .unwrap_or_default(),
    };
    let mut doc = json!({
        "Id": image.id,
        "RepoTags": image.tags.iter().map(|t| familiar_name(t)).collect::<Vec<_>>(),
        "RepoDigests": image.repo_digests.iter().map(|d| familiar_name(d)).collect::<Vec<_>>(),
        "Parent": "",
        "Comment": comment,
        "Created": c.created.clone().unwrap_or_default(),
        "Container": extra_str("container"),
        "ContainerConfig": docker_config(extra("container_config").unwrap_or(Value::Null)),
        "DockerVersion": extra_str("docker_version"),
        "Author": c.author.clone().unwrap_or_default(),
        "Config": docker_config(serde_json::to_value(&c.config).unwrap_or(Value::Null)),
        "Architecture": c.architecture,
        "Os": c.os,
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Data": graph_data, "Name": "overlay"},
        "RootFS": {"Type": "layers", "Layers": c.rootfs.diff_ids},
        "Metadata": {"LastTagTime": chrono::DateTime::from_timestamp(image.added, 0).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)).unwrap_or_default()},
    });
    // Docker leaves Variant out when the image has none.
    if let (Some(variant), Some(map)) = (&c.variant, doc.as_object_mut()) {
        map.insert("Variant".into(), Value::String(variant.clone()));
    }
    doc
}

/// A container config as Docker prints it: the fields Go always writes are there (empty lists and
/// maps as `null`, which templates such as `{{.Config.Env}}` rely on), then those the image sets.
fn docker_config(config: Value) -> Value {
    let mut out = json!({
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "Tty": false,
        "OpenStdin": false,
        "StdinOnce": false,
        "Env": null,
        "Cmd": null,
        "Image": "",
        "Volumes": null,
        "WorkingDir": "",
        "Entrypoint": null,
        "OnBuild": null,
        "Labels": null,
    });
    if let (Some(map), Value::Object(set)) = (out.as_object_mut(), config) {
        map.extend(set);
    }
    out
}

fn inspect(engine: &Engine, args: ImageInspectArgs) -> anyhow::Result<i32> {
    let mut docs = Vec::new();
    let mut failed = false;
    for name in &args.images {
        match engine.store().image(name) {
            Ok(i) => docs.push(image_json(engine, &i)),
            Err(e) => {
                eprintln!("Error: {e}");
                failed = true;
            }
        }
    }
    crate::format::print_documents(args.format.as_deref(), &docs)?;
    Ok(if failed { 1 } else { 0 })
}

pub fn history(engine: &Engine, args: HistoryArgs) -> anyhow::Result<i32> {
    let image = engine.store().image(&args.image)?;
    let mut layers = image.config.rootfs.diff_ids.iter().rev();
    let mut rows = Vec::new();
    for (i, h) in image.config.history.iter().enumerate().rev() {
        let size = if h.empty_layer {
            0
        } else {
            layers
                .next()
                .and_then(|d| engine.store().layer(d).ok().flatten())
                .map_or(0, |l| l.unpacked_size)
        };
        let id = if i + 1 == image.config.history.len() {
            if args.no_trunc {
                image.id.to_string()
            } else {
                image.id.short().to_string()
            }
        } else {
            "<missing>".to_string()
        };
        // Docker shows tabs (of RUN lines) as spaces.
        let created_by = h.created_by.clone().unwrap_or_default().replace('\t', " ");
        let created_by = if args.no_trunc || created_by.chars().count() <= 45 {
            created_by
        } else {
            format!("{}…", created_by.chars().take(44).collect::<String>())
        };
        let created = h.created.as_deref().unwrap_or("");
        // Docker's history has whole seconds, printed in RFC 3339 in local time.
        let created_at = chrono::DateTime::parse_from_rfc3339(created)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .unwrap_or_else(|_| created.to_string());
        rows.push(json!({
            "ID": id,
            "CreatedSince": if args.human { format!("{} ago", human_duration(crate::format::seconds_since(created))) } else { created_at.clone() },
            "CreatedAt": created_at,
            "CreatedBy": created_by,
            "Size": if args.human { image_size(size) } else { size.to_string() },
            "Comment": h.comment.clone().unwrap_or_default(),
        }));
    }
    if args.quiet {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    print_rows(
        args.format.as_deref(),
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &["ID", "CreatedSince", "CreatedBy", "Size", "Comment"],
        &rows,
    )?;
    Ok(0)
}

fn prune(engine: &Engine, args: ImagePruneArgs) -> anyhow::Result<i32> {
    let warning = if args.all {
        "WARNING! This will remove all images without at least one container associated to them."
    } else {
        "WARNING! This will remove all dangling images."
    };
    if !super::confirm_prune(args.force, warning) {
        return Ok(0);
    }
    let used: Vec<_> = engine
        .store()
        .containers()?
        .into_iter()
        .map(|c| c.image_id)
        .collect();
    let running = running_containers(engine)?;
    // The build cache's images are `builder prune`'s to remove.
    let intermediate = engine.store().build_cache_images()?;
    let mut reclaimed = 0;
    let mut lines = Vec::new();
    for image in engine.store().images()? {
        let unused = !used.contains(&image.id) && !intermediate.contains(&image.id);
        if unused && (image.tags.is_empty() || args.all) {
            let removal = engine
                .store()
                .delete_image(image.id.as_str(), true, &|id| running.contains(id))?;
            // Only what this removal freed: layers another image or a container still uses stay.
            reclaimed += removal.reclaimed;
            for a in removal.actions {
                match a {
                    RemovedImage::Untagged(t) => lines.push(format!("untagged: {t}")),
                    RemovedImage::Deleted(d) => lines.push(format!("deleted: {d}")),
                }
            }
        }
    }
    if !lines.is_empty() {
        println!("Deleted Images:");
        for l in lines {
            println!("{l}");
        }
        println!();
    }
    reclaimed += engine.store().remove_partial_downloads()?;
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}
