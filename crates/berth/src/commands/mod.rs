//! One module per command group; each command is a short mapping from flags to a library call.

mod build;
mod container;
mod events;
mod filesystem;
mod image;
mod network;
mod registry;
mod system;
mod volume;

use std::fs::File;
use std::path::Path;

use anyhow::Context;

use berth_runtime::{Engine, RuntimeError};
use clap::Subcommand;

/// Every `berth` command.
///
/// Each command's flags are built only when it is the one invoked (`defer`): building all of them
/// costs every command, `run` included, about a millisecond. The flag structs therefore carry plain
/// comments, not doc comments: clap would make a struct's doc comment the description of the command
/// built from it, in place of the command's own.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Create and run a new container from an image
    #[command(disable_help_flag = true)]
    Run(container::RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(container::CreateArgs),
    /// Start one or more stopped containers
    Start(container::StartArgs),
    /// Stop one or more running containers
    Stop(container::StopArgs),
    /// Restart one or more containers
    Restart(container::StopArgs),
    /// Kill one or more running containers
    Kill(container::KillArgs),
    /// Remove one or more containers
    Rm(container::RmArgs),
    /// List containers
    #[command(alias = "ls")]
    Ps(container::PsArgs),
    /// Fetch the logs of a container
    Logs(container::LogsArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(container::NamesArgs),
    /// Return low-level information on containers or images
    Inspect(container::InspectArgs),
    /// Rename a container
    Rename(container::RenameArgs),
    /// Pause all processes within one or more containers
    Pause(container::NamesArgs),
    /// Unpause all processes within one or more containers
    Unpause(container::NamesArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(container::StatsArgs),
    /// Execute a command in a running container
    Exec(container::ExecArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(container::AttachArgs),
    /// List port mappings or a specific mapping for the container
    Port(container::PortArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(filesystem::CpArgs),
    /// Export a container's filesystem as a tar archive
    Export(filesystem::ExportArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(filesystem::DiffArgs),
    /// Create a new image from a container's changes
    Commit(filesystem::CommitArgs),
    /// Display the running processes of a container
    Top(container::TopArgs),
    /// Update configuration of one or more containers
    Update(container::UpdateArgs),
    /// Get real time events from the server
    Events(events::EventsArgs),
    /// Manage containers
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// List images
    Images(image::ImagesArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(image::ImportArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(image::SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(image::LoadArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(image::TagArgs),
    /// Remove one or more images
    Rmi(image::RmiArgs),
    /// Show the history of an image
    History(image::HistoryArgs),
    /// Build an image from a Dockerfile
    Build(build::BuildArgs),
    /// Manage the build cache
    #[command(subcommand)]
    Builder(build::BuilderCommand),
    /// Download an image from a registry
    Pull(registry::PullArgs),
    /// Upload an image to a registry
    Push(registry::PushArgs),
    /// Log in to a registry
    Login(registry::LoginArgs),
    /// Log out from a registry
    Logout(registry::LogoutArgs),
    /// Search registries for images
    Search(registry::SearchArgs),
    /// Inspect image manifests in registries
    #[command(subcommand)]
    Manifest(registry::ManifestCommand),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage Berth
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Show the Berth version information
    Version(system::VersionArgs),
    /// Display system-wide information
    Info(system::InfoArgs),
}

impl Command {
    /// Whether stdout is the only pipe or stream socket the command writes to (no monitor's or
    /// container's), so that a closed stdout may simply end it.
    pub fn writes_only_to_stdout(&self) -> bool {
        matches!(
            self,
            Command::Ps(_)
                | Command::Images(_)
                | Command::Inspect(_)
                | Command::History(_)
                | Command::Port(_)
                | Command::Top(_)
                | Command::Diff(_)
                | Command::Logs(_)
                | Command::Stats(_)
                | Command::Search(_)
                | Command::Version(_)
                | Command::Info(_)
                | Command::Network(_)
                | Command::Volume(_)
                | Command::Container(
                    container::ContainerCommand::Ls(_)
                        | container::ContainerCommand::Logs(_)
                        | container::ContainerCommand::Inspect(_)
                        | container::ContainerCommand::Stats(_)
                        | container::ContainerCommand::Top(_)
                        | container::ContainerCommand::Port(_)
                        | container::ContainerCommand::Diff(_)
                )
                | Command::Image(
                    image::ImageCommand::Ls(_)
                        | image::ImageCommand::Inspect(_)
                        | image::ImageCommand::History(_)
                )
        )
    }
}

/// Runs a command and returns the process exit code.
pub fn run(command: Command, root: &Path, runroot: &Path) -> i32 {
    // Docker's engine errors for container-starting commands are 125; lookups of missing objects are 1.
    let engine_error_code = match &command {
        Command::Run(_) | Command::Create(_) | Command::Start(_) => 125,
        _ => 1,
    };
    let result = (|| -> anyhow::Result<i32> {
        // Credentials live in the user's Docker config, not in the store.
        let command = match command {
            Command::Login(a) => return registry::login(a),
            Command::Logout(a) => return registry::logout(a),
            Command::Search(a) => return registry::search(a),
            Command::Manifest(c) => return registry::manifest_command(c),
            // `run` opens the store itself, once its container's monitor is on its way.
            Command::Run(a) | Command::Container(container::ContainerCommand::Run(a)) => {
                return container::run(root, runroot, a)
            }
            other => other,
        };
        let engine = Engine::open(root, runroot)?;
        match command {
            Command::Run(_) => unreachable!("`run` is dispatched before the store is opened"),
            Command::Create(a) => container::create(&engine, a),
            Command::Start(a) => container::start(&engine, a),
            Command::Stop(a) => container::stop(&engine, a),
            Command::Restart(a) => container::restart(&engine, a),
            Command::Kill(a) => container::kill(&engine, a),
            Command::Rm(a) => container::rm(&engine, a),
            Command::Ps(a) => container::ps(&engine, a),
            Command::Logs(a) => container::logs(&engine, a),
            Command::Wait(a) => container::wait(&engine, a),
            Command::Inspect(a) => container::inspect(&engine, a),
            Command::Rename(a) => container::rename(&engine, a),
            Command::Pause(a) => container::pause(&engine, a, true),
            Command::Unpause(a) => container::pause(&engine, a, false),
            Command::Stats(a) => container::stats(&engine, a),
            Command::Top(a) => container::top(&engine, a),
            Command::Exec(a) => container::exec(&engine, a),
            Command::Cp(a) => filesystem::cp(&engine, a),
            Command::Export(a) => filesystem::export(&engine, a),
            Command::Diff(a) => filesystem::diff(&engine, a),
            Command::Commit(a) => filesystem::commit(&engine, a),
            Command::Update(a) => container::update(&engine, a),
            Command::Events(a) => events::events(&engine, a),
            Command::Attach(a) => container::attach(&engine, a),
            Command::Port(a) => container::port(&engine, a),
            Command::Container(c) => container::container_command(&engine, c),
            Command::Images(a) => image::images(&engine, a),
            Command::Import(a) => image::import(&engine, a),
            Command::Save(a) => image::save(&engine, a),
            Command::Load(a) => image::load(&engine, a),
            Command::Tag(a) => image::tag(&engine, a),
            Command::Rmi(a) => image::rmi(&engine, a),
            Command::History(a) => image::history(&engine, a),
            Command::Pull(a) => registry::pull(&engine, a),
            Command::Push(a) => registry::push(&engine, a),
            Command::Build(a) => build::build(&engine, a),
            Command::Builder(c) => build::builder_command(&engine, c),
            Command::Login(_) | Command::Logout(_) | Command::Search(_) | Command::Manifest(_) => {
                Ok(0)
            }
            Command::Image(c) => image::image_command(&engine, c),
            Command::Volume(c) => volume::volume_command(&engine, c),
            Command::Network(c) => network::network_command(&engine, c),
            Command::System(c) => system::system_command(&engine, c),
            Command::Version(a) => system::version(&engine, a),
            Command::Info(a) => system::info(&engine, a),
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(Failed(code)) = e.downcast_ref::<Failed>() {
                return *code;
            }
            eprintln!("Error: {}", error_chain(&e));
            e.downcast_ref::<RuntimeError>()
                .map(|r| {
                    if r.exit_code() != 125 {
                        r.exit_code()
                    } else {
                        engine_error_code
                    }
                })
                .unwrap_or(engine_error_code)
        }
    }
}

/// Stdout for a tar stream; refused when it is a terminal, as Docker does.
pub fn archive_stdout(
    what: &str,
) -> anyhow::Result<std::io::BufWriter<std::io::StdoutLock<'static>>> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        anyhow::bail!("cowardly refusing to {what} to a terminal. Use the -o flag or redirect");
    }
    Ok(std::io::BufWriter::new(stdout.lock()))
}

/// Writes a file through a temporary file beside it, renamed into place only when `write` succeeded:
/// a failed `save -o`/`export -o` leaves nothing behind and never clobbers an existing file.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("invalid output path {}", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        berth_store::random_hex(6)
    ));
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    let result = write(&mut file)
        .and_then(|()| {
            file.sync_all()
                .with_context(|| format!("write {}", tmp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Docker's question before a prune: `warning`, then `Are you sure you want to continue? [y/N]` on
/// stderr, and a line read from stdin. Only `y` or `yes` goes on; anything else, or no input at all
/// (stdin closed or not a terminal and empty), deletes nothing. `-f` skips the question.
pub fn confirm_prune(force: bool, warning: &str) -> bool {
    if force {
        return true;
    }
    eprint!("{warning}\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// An error that has already been reported and carries its exit code.
#[derive(Debug)]
pub struct Failed(pub i32);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Failed {}

fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
