//! `build`: in this increment only `--check` (parse and lint the Dockerfile without building).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

/// `build` flags.
#[derive(Args)]
pub struct BuildArgs {
    /// Name of the Dockerfile (default: 'PATH/Dockerfile'); - reads it from stdin
    #[arg(short = 'f', long = "file")]
    file: Option<String>,
    /// Check build configuration (parse and lint) without building
    #[arg(long)]
    check: bool,
    /// Set build-time variables
    #[arg(long = "build-arg")]
    build_arg: Vec<String>,
    /// Name and optionally a tag in the 'name:tag' format
    #[arg(short = 't', long = "tag")]
    tag: Vec<String>,
    /// Set the target build stage to build
    #[arg(long)]
    target: Option<String>,
    /// Build context: a directory, or - for a Dockerfile on stdin
    path: String,
}

/// Runs `build`; returns the exit code.
pub fn build(args: BuildArgs) -> anyhow::Result<i32> {
    if !args.check {
        bail!("not implemented yet: only `berth build --check` is available in this version");
    }
    let stdin_dockerfile = args.file.as_deref() == Some("-") || args.path == "-";
    let (name, source) = if stdin_dockerfile {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the Dockerfile from stdin")?;
        ("Dockerfile".to_string(), text)
    } else {
        let path = match &args.file {
            Some(f) => PathBuf::from(f),
            None => Path::new(&args.path).join("Dockerfile"),
        };
        if !Path::new(&args.path).is_dir() {
            bail!("unable to prepare context: path {:?} not found", args.path);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read Dockerfile {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        (name, text)
    };
    let mut build_args = BTreeMap::new();
    for kv in &args.build_arg {
        match kv.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            // `--build-arg NAME` takes the value from the environment, as Docker does.
            None => match std::env::var(kv) {
                Ok(v) => build_args.insert(kv.clone(), v),
                Err(_) => continue,
            },
        };
    }
    let report = berth_build::check(&source, &name, &build_args);
    if let Some(target) = &args.target {
        let known = berth_build::parse(&source).ok().is_some_and(|df| {
            df.instructions.iter().any(|i| {
                matches!(&i.command, berth_build::parser::Command::From { name: Some(n), .. } if n.eq_ignore_ascii_case(target))
            })
        });
        if !known {
            eprintln!("ERROR: target stage {target:?} could not be found");
            return Ok(1);
        }
    }
    print!("{}", report.render());
    Ok(if report.failed() { 1 } else { 0 })
}
