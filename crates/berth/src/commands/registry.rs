//! Registry commands: pull, push, login, logout; and the pull that `run`/`create` do for a missing image.

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{bail, Context};
use berth_registry::{
    CredentialStore, Credentials, Platform, PullEvent, PullOptions, PushEvent, PushOptions,
    RegistryConfig, RegistryError,
};
use berth_runtime::Engine;
use berth_store::{Reference, StoreError};
use clap::Args;

use crate::format::human_size;

// `pull` flags.
#[derive(Args)]
pub struct PullArgs {
    /// Download all tagged images in the repository
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Set platform if server is multi-platform capable (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Skip image verification (accepted for compatibility; Berth verifies digests always)
    #[arg(long = "disable-content-trust", default_value_t = true, action = clap::ArgAction::Set)]
    disable_content_trust: bool,
    /// Image to pull (name[:tag|@digest])
    image: String,
}

// `push` flags.
#[derive(Args)]
pub struct PushArgs {
    /// Push all tags of an image to the repository
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Skip image signing (accepted for compatibility)
    #[arg(long = "disable-content-trust", default_value_t = true, action = clap::ArgAction::Set)]
    disable_content_trust: bool,
    /// Image to push (name[:tag])
    image: String,
}

// `login` flags.
#[derive(Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password
    #[arg(short = 'p', long)]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long = "password-stdin")]
    password_stdin: bool,
    /// Registry server (default: Docker Hub)
    server: Option<String>,
}

/// `manifest` subcommands.
#[derive(clap::Subcommand)]
pub enum ManifestCommand {
    /// Display an image manifest, or manifest list, from a registry
    Inspect(ManifestInspectArgs),
}

// `manifest inspect` flags.
#[derive(Args)]
pub struct ManifestInspectArgs {
    /// Allow communication with an insecure registry (plain HTTP is used for loopback registries anyway)
    #[arg(long)]
    insecure: bool,
    /// Output additional info including layers and platform
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Image reference (name[:tag|@digest])
    image: String,
}

// `search` flags.
#[derive(Args)]
pub struct SearchArgs {
    /// Max number of search results
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Pretty-print search using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Search term; `host[:port]/term` searches that registry's catalog
    term: String,
}

// `logout` arguments.
#[derive(Args)]
pub struct LogoutArgs {
    /// Registry server (default: Docker Hub)
    server: Option<String>,
}

/// A `--platform` value; none when not given or empty.
pub fn platform(text: Option<&str>) -> anyhow::Result<Option<Platform>> {
    Ok(text
        .filter(|t| !t.is_empty())
        .map(Platform::parse)
        .transpose()?)
}

/// Where pull progress goes: stdout for `pull`, stderr for the pull inside `run`/`create`.
#[derive(Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

impl Output {
    fn line(self, text: &str) {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Output::Stderr => eprintln!("{text}"),
        }
    }
}

impl Output {
    fn is_terminal(self) -> bool {
        let tty = match self {
            Output::Stdout => std::io::stdout().is_terminal(),
            Output::Stderr => std::io::stderr().is_terminal(),
        };
        tty && std::env::var("TERM").map_or(true, |t| t != "dumb")
    }

    fn raw(self, text: &str) {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Output::Stderr => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(text.as_bytes());
                let _ = err.flush();
            }
        }
    }
}

/// Pull progress as Docker shows it: on a terminal, one line per layer redrawn in place with a progress
/// bar; otherwise one plain line per step.
struct PullView {
    output: Output,
    quiet: bool,
    tty: bool,
    /// Layer short ID and its current status, in the order they appeared.
    rows: Vec<(String, String)>,
    /// How many rows are on screen below the cursor's starting point.
    drawn: usize,
}

impl PullView {
    fn new(output: Output, quiet: bool) -> Self {
        Self {
            output,
            quiet,
            tty: output.is_terminal(),
            rows: Vec::new(),
            drawn: 0,
        }
    }

    fn event(&mut self, event: &PullEvent) {
        if self.quiet {
            return;
        }
        let short = |d: &berth_store::Digest| d.hex()[..12].to_string();
        let (id, status) = match event {
            PullEvent::Resolved {
                tag_or_digest,
                repository,
            } => {
                self.rows.clear();
                self.drawn = 0;
                self.output
                    .line(&format!("{tag_or_digest}: Pulling from {repository}"));
                return;
            }
            PullEvent::LayerExists(d) => (short(d), "Already exists".to_string()),
            PullEvent::LayerQueued(d) => (short(d), "Pulling fs layer".to_string()),
            PullEvent::LayerProgress {
                digest,
                received,
                total,
            } => {
                if !self.tty {
                    return;
                }
                (
                    short(digest),
                    progress_bar("Downloading", *received, *total),
                )
            }
            PullEvent::LayerDownloaded(d) => (short(d), "Download complete".to_string()),
            PullEvent::LayerExtracting(d) => {
                if !self.tty {
                    return;
                }
                (short(d), "Extracting".to_string())
            }
            PullEvent::LayerComplete(d) => (short(d), "Pull complete".to_string()),
        };
        if !self.tty {
            self.output.line(&format!("{id}: {status}"));
            return;
        }
        match self.rows.iter_mut().find(|(row, _)| *row == id) {
            Some(row) => row.1 = status,
            None => self.rows.push((id, status)),
        }
        let mut screen = String::new();
        if self.drawn > 0 {
            screen.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for (id, status) in &self.rows {
            screen.push_str(&format!("\x1b[2K{id}: {status}\n"));
        }
        self.drawn = self.rows.len();
        self.output.raw(&screen);
    }
}

/// Docker's `Downloading [=====>      ]  1.2MB/3.4MB`.
fn progress_bar(what: &str, done: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    let filled = (done.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .max(1);
    let mut bar = "=".repeat(filled as usize - 1);
    bar.push('>');
    bar.push_str(&" ".repeat((WIDTH - filled) as usize));
    format!("{what} [{bar}]  {}/{}", human_size(done), human_size(total))
}

/// Pulls `reference` printing Docker's lines (unless `quiet`); used by `pull` and by `run`/`create`.
fn pull_reference(
    engine: &Engine,
    reference: &Reference,
    platform: Option<Platform>,
    quiet: bool,
    output: Output,
) -> anyhow::Result<()> {
    let options = PullOptions {
        platform,
        config: RegistryConfig::load()?,
        ..PullOptions::default()
    };
    let mut view = PullView::new(output, quiet);
    let mut on_event = |event: PullEvent| view.event(&event);
    let pulled = berth_registry::pull(engine.store(), reference, &options, &mut on_event)?;
    if !quiet {
        output.line(&format!("Digest: {}", pulled.digest));
        let status = if pulled.up_to_date {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        output.line(&format!("Status: {status} {}", reference.familiar()));
    }
    Ok(())
}

pub fn pull(engine: &Engine, args: PullArgs) -> anyhow::Result<i32> {
    let _ = args.disable_content_trust;
    let platform = platform(args.platform.as_deref())?;
    if args.all_tags {
        let repository = Reference::parse_name_only(&args.image)?;
        let options = PullOptions {
            platform,
            config: RegistryConfig::load()?,
            ..PullOptions::default()
        };
        let quiet = args.quiet;
        let mut view = PullView::new(Output::Stdout, quiet);
        let mut on_event = |event: PullEvent| view.event(&event);
        let pulled =
            berth_registry::pull_all_tags(engine.store(), &repository, &options, &mut on_event)?;
        if !quiet {
            for image in &pulled {
                println!("Digest: {}", image.digest);
            }
            let newer = pulled.iter().any(|p| !p.up_to_date);
            println!(
                "Status: {} {}",
                if newer {
                    "Downloaded newer image for"
                } else {
                    "Image is up to date for"
                },
                repository.familiar_repository()
            );
        }
        println!("{}", repository.repository());
        return Ok(0);
    }
    let reference = Reference::parse(&args.image)?;
    pull_reference(engine, &reference, platform, args.quiet, Output::Stdout)?;
    println!("{reference}");
    Ok(0)
}

/// `--pull` of `run` and `create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull the image before creating the container
    Always,
    /// Pull the image if it is not in the store
    Missing,
    /// Never pull
    Never,
}

/// Makes sure the image `run`/`create` want is in the store, pulling it as `policy` says. Progress goes
/// to stderr, so stdout carries only the container's output (or its ID), as with Docker.
pub fn ensure_image(
    engine: &Engine,
    image: &str,
    policy: PullPolicy,
    platform: Option<&Platform>,
) -> anyhow::Result<()> {
    let present = match engine.store().image(image) {
        Ok(_) => true,
        Err(StoreError::ImageNotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let pull = match policy {
        PullPolicy::Always => true,
        PullPolicy::Missing => !present,
        PullPolicy::Never => false,
    };
    if !pull {
        return Ok(());
    }
    let reference = Reference::parse(image)?;
    if !present {
        eprintln!("Unable to find image '{}' locally", reference.familiar());
    }
    pull_reference(engine, &reference, platform.cloned(), false, Output::Stderr)
}

pub fn push(engine: &Engine, args: PushArgs) -> anyhow::Result<i32> {
    let _ = args.disable_content_trust;
    let references: Vec<Reference> = if args.all_tags {
        let repository = Reference::parse_name_only(&args.image)?;
        if repository.tag().is_some() || repository.digest().is_some() {
            bail!("tag can't be used with --all-tags/-a");
        }
        let mut tags: Vec<Reference> = engine
            .store()
            .images()?
            .iter()
            .flat_map(|i| i.tags.iter())
            .filter_map(|t| Reference::parse(t).ok())
            .filter(|t| t.repository() == repository.repository())
            .collect();
        tags.sort_by(|a, b| a.tag().cmp(&b.tag()));
        if tags.is_empty() {
            bail!(
                "An image does not exist locally with the tag: {}",
                repository.familiar_repository()
            );
        }
        tags
    } else {
        vec![Reference::parse(&args.image)?]
    };
    let options = PushOptions {
        config: RegistryConfig::load()?,
        ..PushOptions::default()
    };
    let quiet = args.quiet;
    let mut started = false;
    for reference in &references {
        let mut on_event = |event: PushEvent| {
            if quiet {
                return;
            }
            let short = |d: &berth_store::Digest| d.hex()[..12].to_string();
            match event {
                PushEvent::Started { repository } => {
                    if !started {
                        println!("The push refers to repository [{repository}]");
                        started = true;
                    }
                }
                PushEvent::LayerExists(d) => println!("{}: Layer already exists", short(&d)),
                PushEvent::LayerPushed(d) => println!("{}: Pushed", short(&d)),
                PushEvent::LayerMounted { layer, from } => {
                    println!("{}: Mounted from {from}", short(&layer))
                }
            }
        };
        let pushed = berth_registry::push(engine.store(), reference, &options, &mut on_event)?;
        if quiet {
            println!("{reference}");
        } else {
            println!(
                "{}: digest: {} size: {}",
                pushed.tag, pushed.digest, pushed.size
            );
        }
    }
    Ok(0)
}

pub fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let host = berth_registry::normalise_server(args.server.as_deref());
    let store = CredentialStore::from_env();
    let config = RegistryConfig::load()?;
    if args.password.is_some() && args.password_stdin {
        bail!("--password and --password-stdin are mutually exclusive");
    }
    if args.password_stdin && args.username.is_none() {
        bail!("Must provide --username with --password-stdin");
    }
    if args.password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    // Nothing given: the stored credentials, if any, are tried first (Docker does the same).
    if args.username.is_none() && args.password.is_none() && !args.password_stdin {
        if let Some(existing) = store.get(&host)? {
            println!("Authenticating with existing credentials...");
            match berth_registry::login(&host, &existing, &store, &config) {
                Ok(()) => {
                    println!("Login Succeeded");
                    return Ok(0);
                }
                Err(RegistryError::Unauthorized { .. }) if interactive => {
                    eprintln!("Stored credentials for {host} were refused; enter new ones.");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let username = match args.username {
        Some(u) => u,
        None => {
            if !interactive {
                bail!("Cannot perform an interactive login from a non TTY device");
            }
            prompt("Username: ")?
        }
    };
    let username = username.trim().to_string();
    if username.is_empty() {
        bail!("Username cannot be empty");
    }
    let password = if args.password_stdin {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("read the password from stdin")?;
        text.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = args.password {
        p
    } else {
        if !interactive {
            bail!("Cannot perform an interactive login from a non TTY device");
        }
        prompt_hidden("Password: ")?
    };
    if password.is_empty() {
        bail!("Password cannot be empty");
    }
    let credentials = Credentials { username, password };
    berth_registry::login(&host, &credentials, &store, &config)?;
    eprintln!(
        "WARNING! Your password will be stored unencrypted in {}.",
        store.path().display()
    );
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<i32> {
    let host = berth_registry::normalise_server(args.server.as_deref());
    let store = CredentialStore::from_env();
    let shown = CredentialStore::key_for(&host);
    if berth_registry::logout(&host, &store)? {
        println!("Removing login credentials for {shown}");
    } else {
        println!("Not logged in to {shown}");
    }
    Ok(0)
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a line from the terminal with echo off.
fn prompt_hidden(label: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("read the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turn off echo")?;
    let line = prompt(label);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    line
}

pub fn manifest_command(command: ManifestCommand) -> anyhow::Result<i32> {
    match command {
        ManifestCommand::Inspect(args) => manifest_inspect(args),
    }
}

fn manifest_inspect(args: ManifestInspectArgs) -> anyhow::Result<i32> {
    let _ = args.insecure;
    let reference = Reference::parse(&args.image)?;
    let manifest = berth_registry::inspect_manifest(
        &reference,
        &CredentialStore::from_env(),
        &RegistryConfig::load()?,
    )?;
    if args.verbose {
        let document: serde_json::Value = serde_json::from_slice(&manifest.bytes)
            .context("the registry's manifest is not JSON")?;
        let verbose = serde_json::json!({
            "Ref": reference.to_string(),
            "Descriptor": {
                "mediaType": document.get("mediaType").cloned().unwrap_or_default(),
                "digest": manifest.digest.to_string(),
                "size": manifest.bytes.len(),
            },
            "Raw": document,
        });
        println!("{}", serde_json::to_string_pretty(&verbose)?);
    } else {
        // As Docker prints it: the registry's document, key order kept, indented with tabs.
        println!("{}", reindent_json(&manifest.bytes));
    }
    Ok(0)
}

pub fn search(args: SearchArgs) -> anyhow::Result<i32> {
    let (host, term) = match args.term.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first.eq_ignore_ascii_case("localhost") =>
        {
            (first.to_ascii_lowercase(), rest.to_string())
        }
        _ => (
            berth_store::reference::DEFAULT_DOMAIN.to_string(),
            args.term.clone(),
        ),
    };
    let results = berth_registry::search(
        &host,
        &term,
        args.limit,
        &CredentialStore::from_env(),
        &RegistryConfig::load()?,
    )?;
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let description = if args.no_trunc || r.description.chars().count() <= 45 {
                r.description.clone()
            } else {
                format!("{}…", r.description.chars().take(44).collect::<String>())
            };
            serde_json::json!({
                "Name": r.name,
                "Description": description,
                "StarCount": r.stars.to_string(),
                "IsOfficial": if r.official { "[OK]" } else { "" },
            })
        })
        .collect();
    crate::format::print_rows(
        args.format.as_deref(),
        &["NAME", "DESCRIPTION", "STARS", "OFFICIAL"],
        &["Name", "Description", "StarCount", "IsOfficial"],
        &rows,
    )?;
    Ok(0)
}

/// Re-indents a JSON document with tabs, keeping its key order and strings byte for byte.
fn reindent_json(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push('\t');
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}') | Some(']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{progress_bar, reindent_json};

    #[test]
    fn progress_bars_look_like_docker() {
        assert_eq!(
            progress_bar("Downloading", 1_000_000, 4_000_000),
            format!(
                "Downloading [{}>{}]  1MB/4MB",
                "=".repeat(11),
                " ".repeat(38)
            )
        );
        assert_eq!(
            progress_bar("Downloading", 0, 10),
            format!("Downloading [>{}]  0B/10B", " ".repeat(49))
        );
        assert_eq!(
            progress_bar("Downloading", 10, 10),
            format!("Downloading [{}>]  10B/10B", "=".repeat(49))
        );
    }

    #[test]
    fn reindents_keeping_order() {
        assert_eq!(
            reindent_json(br#"{"z":1,"a":[{"k":"v, }"},[]],"e":{}}"#),
            "{\n\t\"z\": 1,\n\t\"a\": [\n\t\t{\n\t\t\t\"k\": \"v, }\"\n\t\t},\n\t\t[]\n\t],\n\t\"e\": {}\n}"
        );
    }
}
