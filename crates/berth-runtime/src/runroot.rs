//! The run directory: monitor locks, attach and console sockets, container bundles and
//! libcontainer's state. All of it lives only as long as its containers run, so it belongs on a
//! tmpfs, as `/run` is on most hosts: a reboot then leaves nothing stale behind, and starting a
//! container creates no inodes on disk. Where the run directory is not on one, Berth mounts one.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// When `runroot` (created by `Engine::open`) is a directory on disk with nothing in use inside,
/// mounts a tmpfs on it. A run directory that already holds files (monitors of running containers
/// may use them) stays where it is, and so does one that cannot be mounted over (no privilege): both
/// work, only slower.
pub fn prepare(runroot: &Path) -> io::Result<()> {
    if on_tmpfs(runroot) {
        return Ok(());
    }
    // Several berth processes may find the directory unmounted at once; only one may mount, or a
    // second tmpfs would hide the first one's files. The lock is on the directory on disk, which
    // every contender opened before any mount.
    let _locked = Flock::lock(File::open(runroot)?, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io::Error::from(errno))?;
    if on_tmpfs(runroot) || !vacant(runroot) {
        return Ok(());
    }
    let _ = mount(
        Some("tmpfs"),
        runroot,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    Ok(())
}

/// Whether `path` (as looked up now, mounts included) is on a tmpfs.
fn on_tmpfs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// Whether `dir` holds nothing but empty directories (what a run directory keeps when no container
/// runs).
fn vacant(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|e| {
            e.file_type().is_ok_and(|t| t.is_dir())
                && fs::read_dir(e.path()).is_ok_and(|mut inner| inner.next().is_none())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_directories_are_vacant() {
        let dir = tempfile::tempdir().unwrap();
        assert!(vacant(dir.path()));
        fs::create_dir(dir.path().join("containers")).unwrap();
        assert!(vacant(dir.path()));
        fs::write(dir.path().join("containers/monitor.lock"), "").unwrap();
        assert!(!vacant(dir.path()));
    }
}
