//! Overlay snapshots: each layer unpacked once into `snapshots/layers/<diff-id>/diff`, shared by every image
//! and container using it; each container gets `snapshots/containers/<id>/{diff,work,merged}`, over
//! the store's init layer `snapshots/init` (see [`INIT_DIRS`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::digest::Digest;
use crate::error::{IoContext, StoreError};

/// Owner of the snapshot directories and of the overlay mounts made from them.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    layers: PathBuf,
    containers: PathBuf,
    tmp: PathBuf,
    empty: PathBuf,
    init: PathBuf,
}

/// What every container's runtime mounts onto: `/dev`, `/proc`, `/sys` and the `/etc` files Berth
/// bind-mounts. They sit in one read-only layer under every container's upper dir (Docker makes the
/// same "init layer" per container), so a start creates none of them in its upper dir: no copy-up
/// of `/etc`, no inodes to create and delete, and nothing of them in `diff` or `commit`. Docker's
/// `/.dockerenv` marker is there too.
const INIT_DIRS: [&str; 4] = ["dev", "proc", "sys", "etc"];
const INIT_FILES: [&str; 4] = ["etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv"];

impl Snapshotter {
    /// Opens (and creates) the snapshot directories under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let base = root.join("snapshots");
        let s = Self {
            layers: base.join("layers"),
            containers: base.join("containers"),
            tmp: base.join("tmp"),
            empty: base.join("empty"),
            init: base.join("init"),
        };
        for dir in [&s.layers, &s.containers, &s.tmp, &s.empty] {
            fs::create_dir_all(dir).ctx("create", dir)?;
        }
        Ok(s)
    }

    /// The init layer (see [`INIT_DIRS`]), created on a store's first container mount: in a staging
    /// dir, published with a rename, so that concurrent first mounts agree on one.
    fn init_layer(&self) -> Result<&Path, StoreError> {
        if self.init.is_dir() {
            return Ok(&self.init);
        }
        let staging = self.tmp.join(crate::work_name("init"));
        for dir in INIT_DIRS {
            fs::create_dir_all(staging.join(dir)).ctx("create", staging.join(dir))?;
        }
        for file in INIT_FILES {
            fs::write(staging.join(file), "").ctx("create", staging.join(file))?;
        }
        // Docker's marker that a process runs in a container (empty, mode 755), which tools check.
        fs::set_permissions(
            staging.join(".dockerenv"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .ctx("chmod", staging.join(".dockerenv"))?;
        match fs::rename(&staging, &self.init) {
            Ok(()) => {}
            Err(_) if self.init.is_dir() => remove_tree(&staging)?,
            Err(e) => return Err(e).ctx("publish", &self.init),
        }
        Ok(&self.init)
    }

    /// Unmounts and removes the working snapshots (named by [`crate::work_name`]) whose process is gone;
    /// returns how many there were.
    pub fn remove_abandoned_work(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.containers).ctx("list", &self.containers)?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if crate::abandoned(&name) {
                self.remove_container(&name)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The unpacked content of a layer.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex()).join("diff")
    }

    /// Whether a layer is unpacked.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    /// Where [`Snapshotter::staging_dir`]s are.
    pub fn staging_root(&self) -> &Path {
        &self.tmp
    }

    /// A fresh private directory to unpack a layer into; publish it with [`Snapshotter::commit_layer`].
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.tmp.join(crate::work_name("layer"));
        fs::create_dir_all(dir.join("diff")).ctx("create", &dir)?;
        Ok(dir)
    }

    /// Publishes a staging dir as the layer `diff_id`. When another process published it first, ours is
    /// discarded: both have the same content by definition of the digest.
    pub fn commit_layer(&self, staging: &Path, diff_id: &Digest) -> Result<(), StoreError> {
        let dest = self.layers.join(diff_id.hex());
        match fs::rename(staging, &dest) {
            Ok(()) => Ok(()),
            Err(e) if dest.join("diff").is_dir() => {
                let _ = e;
                remove_tree(staging)
            }
            Err(e) => Err(e).ctx("publish layer", dest),
        }
    }

    /// Removes an unpacked layer.
    pub fn remove_layer(&self, diff_id: &Digest) -> Result<(), StoreError> {
        remove_tree(&self.layers.join(diff_id.hex()))
    }

    /// The directory of a container's snapshot.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers.join(id)
    }

    /// The writable upper dir of a container.
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("diff")
    }

    /// The mount point of a container's root filesystem.
    pub fn merged_dir(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("merged")
    }

    /// Creates a container's empty upper, work and mount-point directories.
    pub fn create_container(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.container_dir(id);
        for sub in ["diff", "work", "merged"] {
            fs::create_dir_all(dir.join(sub)).ctx("create", dir.join(sub))?;
        }
        Ok(())
    }

    /// The lower dirs of an image's layers in overlayfs order (top-most first).
    pub fn lower_dirs(&self, layers: &[Digest]) -> Vec<PathBuf> {
        layers.iter().rev().map(|d| self.layer_dir(d)).collect()
    }

    /// Mounts a container's root filesystem (idempotent) and returns the mount point.
    ///
    /// `volatile` is for a snapshot that is deleted once unmounted (a `--rm` container, a build
    /// step): overlayfs then never syncs it, and in particular skips the sync of the whole upper
    /// filesystem that an unmount otherwise does. Kernels without the option (before 5.10) get a
    /// plain mount.
    pub fn mount_container(
        &self,
        id: &str,
        layers: &[Digest],
        volatile: bool,
    ) -> Result<PathBuf, StoreError> {
        let mut lowers = vec![self.init_layer()?.to_string_lossy().into_owned()];
        lowers.extend(self.lowerdir_option(layers));
        self.mount_writable(id, &lowers, volatile)
    }

    /// Mounts a writable, volatile overlay of the host directory `source` at snapshot `id` (created
    /// here): what is written there lands in the snapshot, never in `source`. The builder's
    /// `RUN --mount=type=bind,rw` of its context. Undone with [`Self::remove_container`].
    pub fn mount_dir_writable(&self, id: &str, source: &Path) -> Result<PathBuf, StoreError> {
        let source = source.to_string_lossy().into_owned();
        if source.contains([':', ',']) {
            return Err(StoreError::Mount {
                op: "overlay a directory whose path has ':' or ','",
                path: PathBuf::from(source),
                source: nix::errno::Errno::EINVAL,
            });
        }
        self.create_container(id)?;
        self.mount_writable(id, &[source], true)
    }

    /// The overlay of `lowers` with snapshot `id`'s upper dir, at its mount point.
    fn mount_writable(
        &self,
        id: &str,
        lowers: &[String],
        volatile: bool,
    ) -> Result<PathBuf, StoreError> {
        let dir = self.container_dir(id);
        let merged = dir.join("merged");
        if is_mount_point(&merged) {
            return Ok(merged);
        }
        // index=off and redirect_dir=off keep the upper dir a plain, portable diff for `commit`.
        let plain = format!(
            "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off",
            lowers.join(":"),
            dir.join("diff").display(),
            dir.join("work").display(),
        );
        let options = if volatile {
            format!("{plain},volatile")
        } else {
            plain.clone()
        };
        let mut mounted = mount_overlay(&merged, &options, MsFlags::empty());
        // A volatile mount leaves work/work/incompat/volatile behind, and overlayfs refuses that work
        // dir until it is removed (after a crash the upper dir may be incomplete). It is only there
        // when a snapshot meant for deletion outlived its mount (a killed monitor): nothing more is
        // lost by mounting it again.
        let incompat = dir.join("work").join("work").join("incompat");
        if mounted.is_err() && incompat.exists() {
            let _ = fs::remove_dir_all(&incompat);
            mounted = mount_overlay(&merged, &options, MsFlags::empty());
        }
        if volatile && mounted == Err(nix::errno::Errno::EINVAL) {
            mounted = mount_overlay(&merged, &plain, MsFlags::empty());
        }
        mounted.map_err(|source| StoreError::Mount {
            op: "mount overlay on",
            path: merged.clone(),
            source,
        })?;
        Ok(merged)
    }

    /// Mounts `layers` read-only (no upper dir) at snapshot `id`'s mount point: the root filesystem
    /// of an image for the builder's `COPY --from`. Undone with [`Self::remove_container`].
    pub fn mount_layers_readonly(
        &self,
        id: &str,
        layers: &[Digest],
    ) -> Result<PathBuf, StoreError> {
        self.create_container(id)?;
        let merged = self.merged_dir(id);
        let mut lowers = self.lowerdir_option(layers);
        // overlayfs without an upper dir needs two lower dirs at least.
        match lowers.len() {
            0 => return Ok(self.empty.clone()),
            1 => lowers.push(self.empty.to_string_lossy().into_owned()),
            _ => {}
        }
        let options = format!("lowerdir={}", lowers.join(":"));
        mount_overlay(&merged, &options, MsFlags::MS_RDONLY).map_err(|source| {
            StoreError::Mount {
                op: "mount overlay on",
                path: merged.clone(),
                source,
            }
        })?;
        Ok(merged)
    }

    /// [`Self::lower_dirs`] as the strings of an overlay `lowerdir=` option.
    fn lowerdir_option(&self, layers: &[Digest]) -> Vec<String> {
        self.lower_dirs(layers)
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// Unmounts a container's root filesystem; not mounted is not an error.
    pub fn unmount_container(&self, id: &str) -> Result<(), StoreError> {
        let merged = self.merged_dir(id);
        unmount(&merged)
    }

    /// Unmounts and deletes a container's snapshot.
    pub fn remove_container(&self, id: &str) -> Result<(), StoreError> {
        self.unmount_container(id)?;
        remove_tree(&self.container_dir(id))
    }

    /// Disk bytes used by a container's writable layer.
    pub fn container_size(&self, id: &str) -> u64 {
        dir_size(&self.upper_dir(id))
    }
}

/// Mounts an overlay filesystem with `options` and `flags` at `target`.
fn mount_overlay(target: &Path, options: &str, flags: MsFlags) -> nix::Result<()> {
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
}

/// Unmounts `path` (detaching if busy); a path that is not a mount point is fine.
pub fn unmount(path: &Path) -> Result<(), StoreError> {
    loop {
        match umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue, // stacked mounts: unmount until nothing is left
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                return umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(
                    |source| StoreError::Mount {
                        op: "unmount",
                        path: path.to_path_buf(),
                        source,
                    },
                )
            }
            Err(source) => {
                return Err(StoreError::Mount {
                    op: "unmount",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Whether something is mounted on `path` (its device differs from its parent's, or it is listed).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Some(parent)) = (fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    match fs::metadata(parent) {
        Ok(parent_meta) => meta.dev() != parent_meta.dev() || meta.ino() == parent_meta.ino(),
        Err(_) => false,
    }
}

/// Removes a directory tree; missing is fine. Immutable files cannot stop it since we are root.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).ctx("remove", path),
        _ => Ok(()),
    }
}

/// Bytes used by regular files under `dir` (hard links counted once is not attempted).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// The size of a layer's content as Docker reports it (the graphdriver's `DiffSize`, Go's
/// `directory.Size`): the apparent sizes of everything under `dir` that is not a directory (regular
/// files, symlinks' target lengths; whiteouts are 0), a hard-linked file counted once. Image sizes
/// in `images`, `image inspect`, `history` and what `image prune` reclaims are sums of it.
pub fn content_size(dir: &Path) -> Result<u64, StoreError> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).ctx("list", &d)? {
            let entry = entry.ctx("list", &d)?;
            // DirEntry::metadata does not follow symlinks: a symlink counts as itself.
            let meta = entry.metadata().ctx("stat", entry.path())?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.len() > 0 && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volatile_snapshot_mounts_again_after_its_mount_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Snapshotter::open(dir.path()).unwrap();
        snapshots.create_container("c").unwrap();
        let merged = snapshots.mount_container("c", &[], true).unwrap();
        fs::write(merged.join("file"), b"x").unwrap();
        snapshots.unmount_container("c").unwrap();
        // The volatile marker overlayfs left would make a plain remount fail.
        let merged = snapshots.mount_container("c", &[], false).unwrap();
        assert_eq!(fs::read(merged.join("file")).unwrap(), b"x");
        snapshots.remove_container("c").unwrap();
    }

    #[test]
    fn work_snapshots_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Snapshotter::open(dir.path()).unwrap();
        let mine = crate::work_name("build-out");
        assert_eq!(crate::work_owner(&mine), Some(std::process::id()));
        // A process that has exited (its PID is free: reaped just now).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let theirs = format!("build-{dead}-0123456789abcdef");
        let container = "a".repeat(64);
        for id in [&mine, &theirs, &container] {
            snapshots.create_container(id).unwrap();
        }
        snapshots.mount_container(&theirs, &[], true).unwrap();
        assert_eq!(snapshots.remove_abandoned_work().unwrap(), 1);
        assert!(!snapshots.container_dir(&theirs).exists());
        assert!(snapshots.container_dir(&mine).exists());
        assert!(snapshots.container_dir(&container).exists());
        assert_eq!(crate::work_owner("build-12-xyz"), None);
        assert_eq!(crate::work_owner(&"f".repeat(64)), None);
        snapshots.remove_container(&mine).unwrap();
    }

    #[test]
    fn content_size_counts_as_docker_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/file"), [0u8; 1000]).unwrap();
        // A hard link to it is the same content: counted once.
        fs::hard_link(root.join("a/b/file"), root.join("a/link")).unwrap();
        // A symlink counts its target's length, not the target.
        std::os::unix::fs::symlink("b/file", root.join("a/sym")).unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        assert_eq!(content_size(root).unwrap(), 1000 + "b/file".len() as u64);
    }
}
