//! Shared fixtures for the CLI integration tests: every test gets its own store and run dir, a busybox
//! image made from Debian's busybox-static, and a guard that removes every container and mount it left.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A private Berth installation for one test.
pub struct Berth {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub runroot: PathBuf,
}

/// The busybox rootfs tarball, built once per test binary.
pub fn busybox_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        // Under target/, not /tmp: the OnceLock is never dropped, so nothing would remove it.
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("busybox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tar = dir.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-rootfs.sh");
        let status = Command::new(script)
            .arg(&tar)
            .status()
            .expect("run busybox-rootfs.sh");
        assert!(status.success(), "building the busybox rootfs failed");
        tar
    })
}

impl Berth {
    /// A fresh store with `busybox:latest` imported.
    pub fn with_busybox() -> Self {
        let b = Self::empty();
        let out = b.run(&[
            "import",
            "-c",
            r#"CMD ["sh"]"#,
            busybox_tar().to_str().unwrap(),
            "busybox:latest",
        ]);
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    /// The PID of `container`'s monitor: the parent of its init.
    pub fn monitor_of(&self, container: &str) -> i32 {
        let pid = self.ok(&["inspect", "-f", "{{.State.Pid}}", container]);
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
        // The fields after the parenthesised name: state, then the parent's PID.
        stat.rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Asserts that no monitor of this store is left (within 10 s), after `what`: a `run` spawns its
    /// container's monitor first, which must go when the container is not created.
    pub fn assert_no_monitor_left(&self, what: &str) {
        let root = self.root.to_str().unwrap();
        let monitors = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.contains("berth-monitor") && cmdline.contains(root)
                })
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while monitors() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(monitors(), 0, "a monitor outlived {what}");
    }

    /// A fresh, empty store.
    pub fn empty() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        let runroot = dir.path().join("run");
        Self { dir, root, runroot }
    }

    /// A `berth` command bound to this store.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(args);
        // Each store has its own registry settings file (absent until `settings` writes it), so a
        // machine's /etc/berth/config.json never changes what a test sees.
        c.env("BERTH_CONFIG", self.settings_path());
        c.stdin(Stdio::null());
        c
    }

    /// The registry settings file this store's commands read.
    pub fn settings_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// Writes this store's registry settings (see `berth_registry::config`).
    pub fn settings(&self, json: &serde_json::Value) {
        std::fs::write(self.settings_path(), json.to_string()).unwrap();
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn berth")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        // Remove every container (kills them, unmounts rootfs, deletes cgroups), then any stray mount.
        if let Ok(out) = self.cmd(&["ps", "-aq", "--no-trunc"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.cmd(&["rm", "-fv", id]).output();
            }
        }
        // The store's networks: user-defined ones, then the default bridge, with their firewall rules.
        let _ = self.cmd(&["network", "prune", "-f"]).output();
        let _ = self.cmd(&["network", "reset"]).output();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.path().to_string_lossy().into_owned();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix_umount(p);
            }
        }
    }
}

fn nix_umount(path: &str) -> std::io::Result<()> {
    let status = Command::new("umount").arg("-l").arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("umount failed"))
    }
}

/// stdout as a string.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}): {}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// skopeo without a system policy.json.
pub fn skopeo(args: &[&str]) -> String {
    run_ok(Command::new("skopeo").arg("--insecure-policy").args(args))
}

/// skopeo's JSON output.
pub fn skopeo_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&skopeo(args)).expect("skopeo prints JSON")
}

/// A test path as the &str command lines take.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 test path")
}

/// Runs a command to completion with `input` on its stdin, capturing stdout and stderr. A command
/// may exit without reading its input (refused flags): its closed stdin is no failure of the test.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    match child.stdin.take().expect("stdin").write_all(input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.expect("write stdin"),
    }
    child.wait_with_output().expect("wait")
}

/// A directory holding `files` (relative path, content), parents created: a build context.
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}
