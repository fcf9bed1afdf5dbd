//! Image commands: images, import, save, load, tag, rmi, history, image inspect/prune.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use berth_runtime::Engine;
use berth_store::image::RunConfig;
use berth_store::reference::familiar_name;
use berth_store::{ImageRecord, Reference, RemovedImage};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{archive_stdout, write_atomically};
use crate::format::{human_duration, human_size, print_rows};

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
            // image by; else, as Docker's containerd image store shows, the digest of the manifest the
            // image has here.
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
                .unwrap_or(&image.manifest_digest)
                .to_string();
            rows.push(json!({
                "Repository": repo,
                "Tag": tag,
                "ID": id,
                "Digest": digest,
                "CreatedSince": created_ago(image),
                "CreatedAt": image.created().to_rfc3339(),
                "Size": human_size(image.size),
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
    Ok(0)
}

pub fn rmi(engine: &Engine, args: RmiArgs) -> anyhow::Result<i32> {
    let mut failed = false;
    for name in &args.images {
        match engine.store().remove_image(name, args.force) {
            Ok(actions) => {
                for a in actions {
                    match a {
                        RemovedImage::Untagged(t) => println!("Untagged: {t}"),
                        RemovedImage::Deleted(d) => println!("Deleted: {d}"),
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

/// Docker's image inspect document.
pub fn image_json(engine: &Engine, image: &ImageRecord) -> Value {
    let c = &image.config;
    let lower: Vec<String> = engine
        .store()
        .snapshots()
        .lower_dirs(&c.rootfs.diff_ids)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    json!({
        "Id": image.id,
        "RepoTags": image.tags.iter().map(|t| familiar_name(t)).collect::<Vec<_>>(),
        "RepoDigests": image.repo_digests.iter().map(|d| familiar_name(d)).collect::<Vec<_>>(),
        "Parent": "",
        "Comment": c.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
        "Created": c.created.clone().unwrap_or_default(),
        "DockerVersion": "",
        "Author": c.author.clone().unwrap_or_default(),
        "Config": c.config,
        "Architecture": c.architecture,
        "Variant": c.variant,
        "Os": c.os,
        "Size": image.size,
        "GraphDriver": {"Name": "overlay", "Data": {"LowerDir": lower.join(":")}},
        "RootFS": {"Type": "layers", "Layers": c.rootfs.diff_ids},
        "Metadata": {"LastTagTime": chrono::DateTime::from_timestamp(image.added, 0).map(|t| t.to_rfc3339()).unwrap_or_default()},
    })
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
                .map_or(0, |l| l.size)
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
        let created_by = h.created_by.clone().unwrap_or_default();
        let created_by = if args.no_trunc || created_by.chars().count() <= 45 {
            created_by
        } else {
            format!("{}…", created_by.chars().take(44).collect::<String>())
        };
        let created = h.created.as_deref().unwrap_or("");
        rows.push(json!({
            "ID": id,
            "CreatedSince": if args.human { format!("{} ago", human_duration(crate::format::seconds_since(created))) } else { created.to_string() },
            "CreatedAt": created,
            "CreatedBy": created_by,
            "Size": if args.human { human_size(size) } else { size.to_string() },
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
    let used: Vec<_> = engine
        .store()
        .containers()?
        .into_iter()
        .map(|c| c.image_id)
        .collect();
    // The build cache's images are `builder prune`'s to remove.
    let intermediate = engine.store().build_cache_images()?;
    let mut reclaimed = 0;
    let mut lines = Vec::new();
    for image in engine.store().images()? {
        let unused = !used.contains(&image.id) && !intermediate.contains(&image.id);
        if unused && (image.tags.is_empty() || args.all) {
            for a in engine.store().remove_image(image.id.as_str(), true)? {
                match a {
                    RemovedImage::Untagged(t) => lines.push(format!("untagged: {t}")),
                    RemovedImage::Deleted(d) => {
                        reclaimed += image.size;
                        lines.push(format!("deleted: {d}"))
                    }
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
