//! `build` (and `builder prune`): flags mapped onto [`berth_build::build`], the context read from a
//! directory, a tar on stdin or nothing (`-` with a Dockerfile on stdin), base images pulled as
//! `run` pulls them.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use berth_build::progress::{Mode, Progress};
use berth_build::{BuildError, BuildOptions, Context};
use berth_runtime::Engine;
use berth_store::{ImageRecord, Platform, Reference};
use clap::Args;

use super::registry::{ensure_image, PullPolicy};

// `build` flags.
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
    /// Do not use cache when building the image
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Always attempt to pull all referenced images
    #[arg(long)]
    pull: bool,
    /// Set metadata for an image
    #[arg(long)]
    label: Vec<String>,
    /// Write the image ID to the file
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Set type of progress output (auto, plain, tty)
    #[arg(long, default_value = "auto", value_parser = ["auto", "plain", "tty", "quiet", "rawjson"])]
    progress: String,
    /// Suppress the build output and print image ID on success
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Set the networking mode for the RUN instructions during build
    #[arg(long)]
    network: Option<String>,
    /// Add a custom host-to-IP mapping (format: 'host:ip')
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    /// Output destination (format: 'type=local,dest=path' or 'type=tar,dest=path')
    #[arg(short = 'o', long)]
    output: Vec<String>,
    /// Secret to expose to RUN --mount=type=secret (format: 'id=mysecret[,src=/local/secret]' or 'id=mysecret,env=VAR')
    #[arg(long)]
    secret: Vec<String>,
    /// SSH agent socket to expose to RUN --mount=type=ssh (format: 'default|<id>[=<socket>]')
    #[arg(long)]
    ssh: Vec<String>,
    /// Set target platform for build (format: 'os/arch[/variant]')
    #[arg(long)]
    platform: Option<String>,
    /// Build context: a directory, or - for a tar (or a Dockerfile) on stdin
    path: String,
}

/// Where the Dockerfile and the context come from.
struct Inputs {
    dockerfile: String,
    name: String,
    context: Context,
}

fn build_args(args: &BuildArgs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kv in &args.build_arg {
        match kv.split_once('=') {
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            // `--build-arg NAME` takes the value from the environment, as Docker does.
            None => {
                if let Ok(v) = std::env::var(kv) {
                    out.insert(kv.clone(), v);
                }
            }
        }
    }
    out
}

/// Reads the Dockerfile and opens the context as Docker does: `build DIR` (Dockerfile in DIR or
/// `-f`), `build -f- DIR`, `build - < Dockerfile` (no context), `build - < context.tar`.
fn inputs(engine: &Engine, args: &BuildArgs) -> anyhow::Result<Inputs> {
    let read_stdin = |what: &str| -> anyhow::Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {what} from stdin"))?;
        Ok(buf)
    };
    let scratch = engine.store().tmp_dir();
    if args.path == "-" {
        let bytes = read_stdin("the build context")?;
        if !berth_archive::looks_like_tar(&bytes) {
            let text = String::from_utf8(bytes).context("the Dockerfile on stdin is not UTF-8")?;
            return Ok(Inputs {
                dockerfile: text,
                name: "Dockerfile".into(),
                context: Context::empty(&scratch)?,
            });
        }
        let context = Context::tar(&bytes[..], &scratch)?;
        let name = args.file.clone().unwrap_or_else(|| "Dockerfile".into());
        let path = context.root().join(name.trim_start_matches('/'));
        let resolved = berth_archive::resolve_in_root(context.root(), Path::new(&name))
            .ok()
            .flatten()
            .map(|r| context.root().join(r.path))
            .unwrap_or(path);
        let dockerfile = std::fs::read_to_string(&resolved)
            .with_context(|| format!("failed to read {name} from the context tar"))?;
        return Ok(Inputs {
            dockerfile,
            name,
            context,
        });
    }
    let dir = Path::new(&args.path);
    if !dir.is_dir() {
        bail!("unable to prepare context: path {:?} not found", args.path);
    }
    if args.file.as_deref() == Some("-") {
        let text = String::from_utf8(read_stdin("the Dockerfile")?)
            .context("the Dockerfile on stdin is not UTF-8")?;
        return Ok(Inputs {
            dockerfile: text,
            name: "Dockerfile".into(),
            context: Context::dir(dir, None)?,
        });
    }
    let path = match &args.file {
        Some(f) => PathBuf::from(f),
        None => dir.join("Dockerfile"),
    };
    let dockerfile = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read Dockerfile {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    Ok(Inputs {
        dockerfile,
        name,
        context: Context::dir(dir, Some(&path))?,
    })
}

/// The `--secret` values as files: `src=` files as they are; values from the environment (`env=`, or
/// a bare `id=` naming a variable, as buildx) written to a private directory removed with this.
struct Secrets {
    files: BTreeMap<String, PathBuf>,
    dir: Option<berth_store::PrivateDir>,
}

impl Secrets {
    fn new(engine: &Engine, specs: &[String]) -> anyhow::Result<Self> {
        let mut secrets = Self {
            files: BTreeMap::new(),
            dir: None,
        };
        for spec in specs {
            let (mut id, mut src, mut env) = (None, None, None);
            for part in spec.split(',') {
                match part.split_once('=') {
                    Some(("id", v)) => id = Some(v.to_string()),
                    Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                    Some(("env", v)) => env = Some(v.to_string()),
                    Some(("type", "file" | "env")) => {}
                    _ => bail!("invalid secret {spec:?}: expected id=ID[,src=FILE|,env=VAR]"),
                }
            }
            let id = id
                .filter(|i| !i.is_empty())
                .with_context(|| format!("invalid secret {spec:?}: id= is required"))?;
            let file = match (src, env) {
                (Some(src), None) => {
                    if !src.is_file() {
                        bail!("secret {id}: {} is not a readable file", src.display());
                    }
                    src
                }
                (None, env) => {
                    let var = env.unwrap_or_else(|| id.clone());
                    let value = std::env::var_os(&var).with_context(|| {
                        format!(
                            "secret {id}: environment variable {var} is not set (or give src=FILE)"
                        )
                    })?;
                    secrets.write(&id, value.as_encoded_bytes(), engine)?
                }
                (Some(_), Some(_)) => bail!("invalid secret {spec:?}: src= and env= together"),
            };
            secrets.files.insert(id, file);
        }
        Ok(secrets)
    }

    /// Writes a secret value to a file only root can read.
    fn write(&mut self, id: &str, value: &[u8], engine: &Engine) -> anyhow::Result<PathBuf> {
        let dir = match &mut self.dir {
            Some(dir) => dir,
            none => none.insert(berth_store::PrivateDir::create(
                engine.store(),
                "build-secrets",
            )?),
        };
        let (_, file) = dir
            .write_file(value)
            .with_context(|| format!("secret {id}"))?;
        Ok(file)
    }
}

/// The `--ssh` values: `default` or `<id>`, with `=<socket>` or else `$SSH_AUTH_SOCK`.
fn ssh_sockets(specs: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut sockets = BTreeMap::new();
    for spec in specs {
        let (id, path) = match spec.split_once('=') {
            Some((id, path)) => (id, PathBuf::from(path)),
            None => (
                spec.as_str(),
                std::env::var_os("SSH_AUTH_SOCK")
                    .map(PathBuf::from)
                    .with_context(|| {
                        format!("--ssh {spec}: SSH_AUTH_SOCK is not set (give {spec}=<socket>)")
                    })?,
            ),
        };
        if id.is_empty() {
            bail!("invalid --ssh {spec:?}: expected default|<id>[=<socket>]");
        }
        let is_socket = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .unwrap_or(false);
        if !is_socket {
            bail!(
                "--ssh {spec}: {} is not an SSH agent socket (key files are not supported)",
                path.display()
            );
        }
        sockets.insert(id.to_string(), path);
    }
    Ok(sockets)
}

/// Runs `build`; returns the exit code.
pub fn build(engine: &Engine, args: BuildArgs) -> anyhow::Result<i32> {
    let build_args = build_args(&args);
    if args.check {
        return check(engine, &args, &build_args);
    }
    let tags: Vec<Reference> = args
        .tag
        .iter()
        .map(|t| Reference::parse(t).with_context(|| format!("invalid tag {t:?}")))
        .collect::<anyhow::Result<_>>()?;
    let outputs: Vec<Output> = args
        .output
        .iter()
        .map(|o| Output::parse(o))
        .collect::<anyhow::Result<_>>()?;
    let mut labels = BTreeMap::new();
    for l in &args.label {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    // What builders killed mid-step left mounted (a COPY's snapshot) goes first.
    engine.store().remove_abandoned_work()?;
    let secrets = Secrets::new(engine, &args.secret)?;
    let ssh = ssh_sockets(&args.ssh)?;
    if let Some(p) = args.platform.as_deref().filter(|p| p.contains(',')) {
        bail!("building for several platforms at once (--platform {p}) is not supported")
    }
    let platform = super::registry::platform(args.platform.as_deref())?;
    let inputs = inputs(engine, &args)?;
    let options = BuildOptions {
        dockerfile: inputs.dockerfile.clone(),
        dockerfile_name: inputs.name.clone(),
        build_args,
        target: args.target.clone(),
        no_cache: args.no_cache,
        labels,
        network: args.network.clone(),
        add_hosts: args.add_host.clone(),
        secrets: secrets.files.clone(),
        ssh,
        platform,
    };
    let quiet = args.quiet || args.progress == "quiet";
    let mode = match args.progress.as_str() {
        _ if quiet => Mode::Quiet,
        "tty" => Mode::Tty,
        "auto" if std::io::stderr().is_terminal() => Mode::Tty,
        _ => Mode::Plain,
    };
    let progress = Progress::new(mode);
    let host = CliHost { pull: args.pull };
    let built = berth_build::build(engine, &inputs.context, &options, &host, &progress);
    progress.finish();
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            report_failure(&inputs, &e);
            return Ok(1);
        }
    };
    let image = built.image;
    for tag in &tags {
        engine.store().tag(&image.id, tag)?;
    }
    for output in &outputs {
        output.write(engine, &image)?;
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, image.id.as_str())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if quiet {
        println!("{}", image.id);
    } else {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "#- writing image {} done", image.id);
        for tag in &tags {
            let _ = writeln!(err, "#- naming to {tag} done");
        }
        let _ = writeln!(
            err,
            "Built {} in {:.1}s ({} steps run, {} cached)",
            image.id.short(),
            progress.elapsed(),
            built.steps_run,
            built.steps_cached
        );
    }
    Ok(0)
}

/// Prints a failed build as BuildKit does: the instruction in its Dockerfile context, then the
/// error.
fn report_failure(inputs: &Inputs, e: &BuildError) {
    let line = match e {
        BuildError::Step { line, .. } => Some(*line),
        BuildError::Parse { error, .. } => Some(error.line),
        _ => None,
    };
    let mut err = std::io::stderr().lock();
    if let Some(line) = line {
        let _ = writeln!(err, "{}:{line}", inputs.name);
        let _ = writeln!(err, "--------------------");
        let lines: Vec<&str> = inputs.dockerfile.lines().collect();
        let first = line.saturating_sub(2).max(1);
        for n in first..=(line + 1).min(lines.len()) {
            let marker = if n == line { ">>>" } else { "   " };
            let _ = writeln!(
                err,
                " {n:>3} | {marker} {}",
                lines.get(n - 1).copied().unwrap_or("")
            );
        }
        let _ = writeln!(err, "--------------------");
    }
    let what = match e {
        BuildError::Step { line, message, .. } => format!("{}:{line}: {message}", inputs.name),
        other => other.to_string(),
    };
    let _ = writeln!(err, "ERROR: failed to solve: {what}");
}

/// Base images and downloads for the builder.
struct CliHost {
    pull: bool,
}

impl berth_build::Host for CliHost {
    fn base_image(
        &self,
        engine: &Engine,
        reference: &str,
        platform: Option<&Platform>,
    ) -> Result<ImageRecord, String> {
        // A local image of another platform is as good as missing.
        let local = engine.store().image(reference).ok();
        let wrong_platform = match (&local, platform) {
            (Some(image), Some(wanted)) => !wanted.accepts(&Platform::of_config(&image.config)),
            _ => false,
        };
        let policy = if self.pull || wrong_platform {
            PullPolicy::Always
        } else {
            PullPolicy::Missing
        };
        ensure_image(engine, reference, policy, platform).map_err(|e| format!("{e:#}"))?;
        let image = engine.store().image(reference).map_err(|e| e.to_string())?;
        match platform {
            Some(wanted) if !wanted.accepts(&Platform::of_config(&image.config)) => Err(format!(
                "{reference} is for {}, not {wanted}",
                Platform::of_config(&image.config)
            )),
            _ => Ok(image),
        }
    }

    fn download(&self, url: &str, out: &mut dyn Write) -> Result<(), String> {
        berth_registry::download(url, out)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn clone_git(&self, url: &str, reference: Option<&str>, into: &Path) -> Result<(), String> {
        let git = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
            let out = std::process::Command::new("git")
                .args(args)
                // Never ask for credentials on the terminal; only network transports (no file://,
                // no ext:: helpers running commands).
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("GIT_ALLOW_PROTOCOL", "http:https:ssh:git")
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| format!("run git: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        use std::ffi::OsStr;
        let (url, dir) = (OsStr::new(url), into.as_os_str());
        // A shallow clone of the branch or tag first; servers that cannot (dumb HTTP) and commit IDs
        // need a full clone and a checkout.
        let mut shallow = vec![
            OsStr::new("clone"),
            OsStr::new("--quiet"),
            OsStr::new("--depth"),
            OsStr::new("1"),
        ];
        if let Some(r) = reference {
            shallow.extend([OsStr::new("--branch"), OsStr::new(r)]);
        }
        shallow.extend([OsStr::new("--"), url, dir]);
        if git(&shallow).is_ok() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(into);
        git(&[
            OsStr::new("clone"),
            OsStr::new("--quiet"),
            OsStr::new("--"),
            url,
            dir,
        ])?;
        if let Some(r) = reference {
            let checkout = [
                OsStr::new("-C"),
                dir,
                OsStr::new("checkout"),
                OsStr::new("--quiet"),
                OsStr::new(r),
            ];
            git(&checkout)?;
        }
        Ok(())
    }
}

/// An `--output` destination.
enum Output {
    /// `type=tar,dest=file` (`-` for stdout): the image's root filesystem as a tar.
    Tar(String),
    /// `type=local,dest=dir`: the root filesystem written into a directory.
    Local(PathBuf),
}

impl Output {
    fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut kind = None;
        let mut dest = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v.to_string()),
                Some(("dest", v)) => dest = Some(v.to_string()),
                // `-o dir` is short for type=local,dest=dir.
                None if kind.is_none() && dest.is_none() => {
                    kind = Some("local".into());
                    dest = Some(part.to_string());
                }
                _ => bail!("invalid --output {spec:?}: expected type=local|tar,dest=PATH"),
            }
        }
        let dest = dest.with_context(|| format!("invalid --output {spec:?}: dest is required"))?;
        match kind.as_deref() {
            Some("tar") => Ok(Output::Tar(dest)),
            Some("local") | None => Ok(Output::Local(PathBuf::from(dest))),
            Some(other) => bail!("unsupported --output type {other:?}: use local or tar"),
        }
    }

    fn write(&self, engine: &Engine, image: &ImageRecord) -> anyhow::Result<()> {
        let snapshots = engine.store().snapshots();
        let id = berth_store::work_name("build-out");
        let root = snapshots.mount_layers_readonly(&id, &image.config.rootfs.diff_ids)?;
        let result = (|| -> anyhow::Result<()> {
            match self {
                Output::Tar(dest) if dest == "-" => {
                    let out = std::io::stdout().lock();
                    if out.is_terminal() {
                        bail!("refusing to write a tar to a terminal: use -o type=tar,dest=FILE");
                    }
                    berth_archive::write_tree(&root, out)?.flush()?;
                }
                Output::Tar(dest) => {
                    let file =
                        std::fs::File::create(dest).with_context(|| format!("creating {dest}"))?;
                    berth_archive::write_tree(&root, std::io::BufWriter::new(file))?.flush()?;
                }
                Output::Local(dir) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let (reader, writer) = std::io::pipe()?;
                    let root = root.clone();
                    let producer = std::thread::spawn(move || {
                        berth_archive::write_tree(&root, writer).map(drop)
                    });
                    let options = berth_archive::UnpackOptions {
                        whiteouts: berth_archive::WhiteoutMode::Literal,
                        allow_devices: false,
                        owner: None,
                    };
                    let unpacked = berth_archive::unpack_layer(reader, dir, &options);
                    let produced = producer
                        .join()
                        .map_err(|_| anyhow::anyhow!("archive writer panicked"))?;
                    produced?;
                    unpacked?;
                }
            }
            Ok(())
        })();
        let _ = snapshots.remove_container(&id);
        result
    }
}

fn check(
    engine: &Engine,
    args: &BuildArgs,
    build_args: &BTreeMap<String, String>,
) -> anyhow::Result<i32> {
    let inputs = inputs(engine, args)?;
    let report = berth_build::check(&inputs.dockerfile, &inputs.name, build_args);
    if let Some(target) = &args.target {
        let known = berth_build::parse(&inputs.dockerfile).ok().is_some_and(|df| {
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

/// `builder` subcommands.
#[derive(clap::Subcommand)]
pub enum BuilderCommand {
    /// Remove build cache
    Prune(BuilderPruneArgs),
}

/// Runs a `builder` subcommand.
pub fn builder_command(engine: &Engine, command: BuilderCommand) -> anyhow::Result<i32> {
    match command {
        BuilderCommand::Prune(a) => builder_prune(engine, a),
    }
}

// `builder prune` flags.
#[derive(Args)]
pub struct BuilderPruneArgs {
    /// Remove all unused build cache, not just dangling ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
}

/// `builder prune`: forgets the build cache and frees what only it kept.
fn builder_prune(engine: &Engine, args: BuilderPruneArgs) -> anyhow::Result<i32> {
    let _ = args.all;
    if !super::confirm_prune(
        args.force,
        "WARNING! This will remove all dangling build cache.",
    ) {
        return Ok(0);
    }
    let pruned = engine.store().prune_build_cache()?;
    for id in &pruned.images {
        println!("Deleted build cache objects:\n{}", id.short());
    }
    println!(
        "Total reclaimed space: {}",
        crate::format::human_size(pruned.reclaimed)
    );
    Ok(0)
}
