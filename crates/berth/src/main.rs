//! `berth`: the command-line interface. Each command maps its flags onto one library call in berth-runtime or
//! berth-store and prints the result the way Docker does.

mod commands;
mod format;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A daemonless, Docker-compatible container engine.
#[derive(Parser)]
#[command(name = "berth", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// Root directory of the store (images, containers, volumes).
    #[arg(
        long,
        global = true,
        env = "BERTH_ROOT",
        default_value = "/var/lib/berth"
    )]
    pub root: PathBuf,
    /// Run directory (monitor locks and sockets, runtime state).
    #[arg(
        long,
        global = true,
        env = "BERTH_RUNROOT",
        default_value = "/run/berth"
    )]
    pub runroot: PathBuf,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                // Docker exits 125 when its own flags are wrong.
                _ => 125,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if cli.command.writes_only_to_stdout() {
        // `berth ps -q | head -1`: a reader that goes away ends us quietly, as it ends C tools,
        // instead of a panic in `println!`. Commands that talk to monitors keep SIGPIPE ignored
        // and handle EPIPE themselves.
        // SAFETY: SIG_DFL installs no handler code; we are single-threaded here.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let code = commands::run(cli.command, &cli.root, &cli.runroot);
    ExitCode::from(code.clamp(0, 255) as u8)
}
