//! `berth-monitor`: the process that supervises one container, for as long as the container runs
//! (see `berth_runtime::monitor`). `berth run`/`start` spawn it; it is not meant to be run by hand:
//!
//! ```text
//! berth-monitor --root DIR --runroot DIR [--attached DETACH_KEYS_HEX] CONTAINER_ID
//! ```
//!
//! It is a binary of its own rather than a mode of `berth` because one runs per container: it links the
//! runtime and nothing of the CLI, the registry client or the builder, and it is linked without PIE
//! (see `build.rs`), so its read-only data needs no relocation at load and stays shared, clean page
//! cache instead of private memory in every monitor.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_runtime::session::DetachKeys;

/// The command line, as `Engine::start` writes it.
struct Args {
    root: PathBuf,
    runroot: PathBuf,
    id: String,
    attached: Option<DetachKeys>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut root, mut runroot, mut id, mut attached) = (None, None, None, None);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--runroot" => runroot = Some(PathBuf::from(value("--runroot")?)),
            "--attached" => attached = Some(DetachKeys::from_hex(&value("--attached")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            _ if id.is_some() => return Err(format!("unexpected argument {arg}")),
            _ => id = Some(arg),
        }
    }
    Ok(Args {
        root: root.ok_or("--root is required")?,
        runroot: runroot.ok_or("--runroot is required")?,
        id: id.ok_or("a container ID is required")?,
        attached,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("berth-monitor: {e} (it is started by berth run/start)");
            return ExitCode::from(125);
        }
    };
    // BERTH_DEBUG=1 makes the monitor log libcontainer's steps to <runroot>/containers/<id>/monitor.log.
    if std::env::var_os("BERTH_DEBUG").is_some() {
        let dir = args.runroot.join("containers").join(&args.id);
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(file) = std::fs::File::create(dir.join("monitor.log")) {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                .with_ansi(false)
                .try_init();
        }
    }
    let code = berth_runtime::monitor::run(&args.root, &args.runroot, &args.id, args.attached);
    ExitCode::from(code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn the_command_line_engine_start_writes() {
        let a = args("--root /r --runroot /rr --attached 0102 abc").unwrap();
        assert_eq!(
            (a.root, a.runroot, a.id),
            ("/r".into(), "/rr".into(), "abc".into())
        );
        assert_eq!(a.attached, Some(DetachKeys::from_hex("0102")));
        assert!(args("--root /r --runroot /rr abc")
            .unwrap()
            .attached
            .is_none());
        for bad in [
            "--root /r abc",
            "--root /r --runroot /rr",
            "--root /r --runroot /rr a b",
            "--x 1 --root /r --runroot /rr a",
            "--root",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }
}
