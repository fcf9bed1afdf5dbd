//! Container filesystem commands: cp, export, diff, commit.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use berth_archive::ChangeKind;
use berth_runtime::filesystem::{CommitOptions, CopyTarget};
use berth_runtime::Engine;
use berth_store::image::RunConfig;
use berth_store::Reference;
use clap::Args;

use super::{archive_stdout, write_atomically};

// `cp` flags.
#[derive(Args)]
pub struct CpArgs {
    /// Archive mode (copy all uid/gid information)
    #[arg(short = 'a', long)]
    archive: bool,
    /// Always follow symbol link in SRC_PATH
    #[arg(short = 'L', long = "follow-link")]
    follow_link: bool,
    /// Suppress progress output during copy
    #[arg(short = 'q', long)]
    quiet: bool,
    /// CONTAINER:SRC_PATH, a local path, or - (a tar on stdin)
    source: String,
    /// CONTAINER:DEST_PATH, a local path, or - (a tar on stdout)
    destination: String,
}

// `export` flags.
#[derive(Args)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Container
    container: String,
}

// `diff` arguments.
#[derive(Args)]
pub struct DiffArgs {
    /// Container
    container: String,
}

// `commit` flags.
#[derive(Args)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short = 'a', long)]
    author: Option<String>,
    /// Apply Dockerfile instruction to the created image
    #[arg(short = 'c', long)]
    change: Vec<String>,
    /// Commit message
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// Pause container during commit
    #[arg(short = 'p', long, default_value_t = true, action = clap::ArgAction::Set)]
    pause: bool,
    /// Container
    container: String,
    /// Repository[:tag] for the new image
    reference: Option<String>,
}

/// A `cp` operand: `CONTAINER:PATH` or a local path. As Docker: a path starting with `/` or `.` is local
/// even if it has a colon.
fn split_operand(arg: &str) -> (Option<&str>, &str) {
    if arg.starts_with('/') || arg.starts_with('.') {
        return (None, arg);
    }
    match arg.split_once(':') {
        Some((container, path)) if !container.is_empty() => (Some(container), path),
        _ => (None, arg),
    }
}

pub fn cp(engine: &Engine, args: CpArgs) -> anyhow::Result<i32> {
    let _ = args.quiet;
    match (
        split_operand(&args.source),
        split_operand(&args.destination),
    ) {
        ((Some(_), _), (Some(_), _)) => bail!("copying between containers is not supported"),
        ((None, _), (None, _)) => bail!("must specify at least one container source"),
        ((Some(container), path), (None, dest)) => {
            if path.is_empty() {
                bail!("invalid source path: empty path in {}", args.source);
            }
            if dest == "-" {
                let mut out = archive_stdout("copy")?;
                engine.copy_from_container(
                    container,
                    path,
                    CopyTarget::Stream(&mut out),
                    args.follow_link,
                    args.archive,
                )?;
                out.flush().context("write to stdout")?;
            } else {
                engine.copy_from_container(
                    container,
                    path,
                    CopyTarget::Path(Path::new(dest)),
                    args.follow_link,
                    args.archive,
                )?;
            }
            Ok(0)
        }
        ((None, src), (Some(container), path)) => {
            if path.is_empty() {
                bail!(
                    "invalid destination path: empty path in {}",
                    args.destination
                );
            }
            let mut stdin = std::io::stdin().lock();
            let source = (src != "-").then(|| Path::new(src));
            engine.copy_to_container(
                container,
                source,
                &mut stdin,
                path,
                args.follow_link,
                args.archive,
            )?;
            Ok(0)
        }
    }
}

pub fn export(engine: &Engine, args: ExportArgs) -> anyhow::Result<i32> {
    match &args.output {
        Some(file) => write_atomically(Path::new(file), |f| {
            let mut out = std::io::BufWriter::new(f);
            engine.export(&args.container, &mut out)?;
            out.flush().context("write")?;
            Ok(())
        })?,
        None => {
            let mut out = archive_stdout("export")?;
            engine.export(&args.container, &mut out)?;
            out.flush().context("write to stdout")?;
        }
    }
    Ok(0)
}

pub fn diff(engine: &Engine, args: DiffArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    for change in engine.diff(&args.container)? {
        let letter = match change.kind {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        };
        writeln!(out, "{letter} {}", change.path.display())?;
    }
    Ok(0)
}

pub fn commit(engine: &Engine, args: CommitArgs) -> anyhow::Result<i32> {
    let reference = args
        .reference
        .as_deref()
        .map(Reference::parse)
        .transpose()?;
    // Checked before anything is written; applied to the container's config by the engine.
    berth_build::apply_changes(&mut RunConfig::default(), &args.change)?;
    let changes = args.change;
    let image = engine.commit(
        &args.container,
        &CommitOptions {
            author: args.author,
            message: args.message,
            pause: args.pause,
            reference,
        },
        &|config: &mut RunConfig| {
            berth_build::apply_changes(config, &changes).map_err(|e| e.to_string())
        },
    )?;
    println!("{}", image.id);
    Ok(0)
}
