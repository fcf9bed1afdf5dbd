//! `berth-monitor`: Berth's long-running helper processes. Berth spawns them; they are not meant to be
//! run by hand:
//!
//! ```text
//! berth-monitor --root DIR --runroot DIR [--attached DETACH_KEYS_HEX] CONTAINER_ID
//! berth-monitor --root DIR --runroot DIR --dns-server NETWORK
//! ```
//!
//! The first supervises one container for as long as it runs (see `berth_runtime::monitor`); the second
//! answers DNS for a user-defined network (see `berth_net::dns`).
//!
//! It is a binary of its own rather than a mode of `berth` because one runs per container: it links the
//! runtime and nothing of the CLI, the registry client or the builder, and it is linked without PIE
//! (see `build.rs`), so its read-only data needs no relocation at load and stays shared, clean page
//! cache instead of private memory in every monitor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_runtime::session::DetachKeys;

/// The command line, as `Engine::start` or the network code writes it.
struct Args {
    root: PathBuf,
    runroot: PathBuf,
    job: Job,
}

/// What to serve.
#[derive(Debug, PartialEq)]
enum Job {
    /// A container, attached to the starter's stdio until these keys when given.
    Monitor {
        id: String,
        attached: Option<DetachKeys>,
        /// Started before the container's record was written: wait to hear that it is.
        await_record: bool,
    },
    /// A network's DNS.
    DnsServer { network: String },
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut root, mut runroot, mut id, mut attached, mut network) = (None, None, None, None, None);
    let mut await_record = false;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--runroot" => runroot = Some(PathBuf::from(value("--runroot")?)),
            "--attached" => attached = Some(DetachKeys::from_hex(&value("--attached")?)),
            "--dns-server" => network = Some(value("--dns-server")?),
            "--await-record" => await_record = true,
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            _ if id.is_some() => return Err(format!("unexpected argument {arg}")),
            _ => id = Some(arg),
        }
    }
    let job = match (network, id) {
        (Some(network), None) if attached.is_none() && !await_record => Job::DnsServer { network },
        (None, Some(id)) => Job::Monitor {
            id,
            attached,
            await_record,
        },
        (None, None) => return Err("a container ID is required".into()),
        _ => return Err("--dns-server takes no container".into()),
    };
    Ok(Args {
        root: root.ok_or("--root is required")?,
        runroot: runroot.ok_or("--runroot is required")?,
        job,
    })
}

/// Serves a network's DNS until the network is removed; returns the exit code.
fn dns_server(root: &Path, network: &str) -> u8 {
    let served = berth_net::Network::load(&root.join("networks"), network).and_then(|n| match n {
        Some(n) => berth_net::dns::serve(&n),
        None => Err(berth_net::NetError::Invalid(format!(
            "network {network} not found"
        ))),
    });
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth-monitor: {e}");
            1
        }
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("berth-monitor: {e} (it is started by berth itself)");
            return ExitCode::from(125);
        }
    };
    let (id, attached, await_record) = match args.job {
        Job::DnsServer { network } => return ExitCode::from(dns_server(&args.root, &network)),
        Job::Monitor {
            id,
            attached,
            await_record,
        } => (id, attached, await_record),
    };
    // BERTH_DEBUG=1 makes the monitor log its own and libcontainer's steps, timed, to
    // <runroot>/debug/<id>.log (outside the container's run dir: kept after a `--rm` container).
    if std::env::var_os("BERTH_DEBUG").is_some() {
        let dir = args.runroot.join("debug");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(file) = std::fs::File::create(dir.join(format!("{id}.log"))) {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                .with_ansi(false)
                .try_init();
        }
    }
    let code = berth_runtime::monitor::run(&args.root, &args.runroot, &id, attached, await_record);
    ExitCode::from(code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn the_command_lines_berth_writes() {
        let a = args("--root /r --runroot /rr --attached 0102 abc").unwrap();
        assert_eq!((a.root, a.runroot), ("/r".into(), "/rr".into()));
        assert_eq!(
            a.job,
            Job::Monitor {
                id: "abc".into(),
                attached: Some(DetachKeys::from_hex("0102")),
                await_record: false,
            }
        );
        assert_eq!(
            args("--root /r --runroot /rr abc --await-record")
                .unwrap()
                .job,
            Job::Monitor {
                id: "abc".into(),
                attached: None,
                await_record: true,
            }
        );
        assert_eq!(
            args("--root /r --runroot /rr --dns-server net")
                .unwrap()
                .job,
            Job::DnsServer {
                network: "net".into()
            }
        );
        for bad in [
            "--root /r abc",
            "--root /r --runroot /rr",
            "--root /r --runroot /rr a b",
            "--x 1 --root /r --runroot /rr a",
            "--root",
            "--root /r --runroot /rr --dns-server net abc",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }
}
