//! Berth's store: content-addressed blobs, image records and tags, container and volume records in a SQLite
//! metadata database, and overlay snapshots of layers.
//!
//! Layout under the root directory (default `/var/lib/berth`):
//! `blobs/sha256/<hex>`, `snapshots/layers/<diff-id>/diff`, `snapshots/containers/<id>/{diff,work,merged}`,
//! `containers/<id>/` (logs, hosts, resolv.conf), `volumes/<name>/_data`, `metadata.db`, `tmp/`.

pub mod blobs;
mod build_cache;
pub mod container;
mod containers;
pub use containers::validate_name;
mod db;
pub mod digest;
pub mod error;
pub mod image;
mod images;
pub mod import;
pub mod platform;
pub mod reference;
pub mod snapshot;
pub mod transfer;
mod volumes;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rand::RngCore;
use rusqlite::Connection;

pub use blobs::BlobStore;
pub use build_cache::BuildCachePrune;
pub use digest::Digest;
pub use error::StoreError;
pub use images::{ImageRecord, ImageRemoval, LayerRecord, NewImage, RemovedImage};
pub use platform::Platform;
pub use reference::Reference;
pub use snapshot::Snapshotter;
pub use transfer::LoadedImage;
pub use volumes::VolumeRecord;

use error::IoContext;

/// An open store. Cheap to open: one SQLite connection and a few directory checks.
pub struct Store {
    root: PathBuf,
    blobs: BlobStore,
    snapshots: Snapshotter,
    db: Connection,
}

impl Store {
    /// Opens the store at `root`, creating it on first use.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).ctx("create store root", root)?;
        let root = fs::canonicalize(root).ctx("resolve", root)?;
        for sub in ["containers", "volumes"] {
            fs::create_dir_all(root.join(sub)).ctx("create", root.join(sub))?;
        }
        Ok(Self {
            blobs: BlobStore::open(&root)?,
            snapshots: Snapshotter::open(&root)?,
            db: db::open(&root.join("metadata.db"))?,
            root,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lets the database connection give back the memory it caches (pages, prepared statements):
    /// for long-lived processes that have done most of their queries.
    pub fn release_memory(&self) {
        self.db.flush_prepared_statement_cache();
        let _ = self.db.execute_batch("PRAGMA shrink_memory");
        // SAFETY: the handle is this connection's, used from the thread that owns it. LOOKASIDE with
        // a null buffer and zero sizes only frees SQLite's own pool of small allocations (~120 KiB,
        // all of it touched when set up); SQLite refuses (SQLITE_BUSY) while any of it is in use.
        unsafe {
            rusqlite::ffi::sqlite3_db_config(
                self.db.handle(),
                rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
                std::ptr::null_mut::<std::ffi::c_void>(),
                0 as std::ffi::c_int,
                0 as std::ffi::c_int,
            );
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The snapshotter.
    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    /// The per-container directory for logs, hosts, resolv.conf and the like.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// A directory for temporary files on the store's filesystem (so renames into the store are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Moves `paths` (files or whole trees) into the store's trash: one rename each, instant whatever
    /// the size, after which the paths are free. [`Self::empty_trash`] deletes them for good. A
    /// missing path is fine.
    pub fn discard(&self, paths: &[&Path]) -> Result<(), StoreError> {
        let trash = self.root.join("trash");
        fs::create_dir_all(&trash).ctx("create", &trash)?;
        for path in paths {
            match fs::rename(path, trash.join(random_hex(8))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).ctx("discard", path)
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes what [`Self::discard`] moved to the trash, including what a process killed before
    /// emptying it left there. Several processes may empty it at once; failures are left for the next.
    pub fn empty_trash(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("trash")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir_all(&path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Removes what killed processes left in the store: working snapshots (unmounted first), files and
    /// directories under `tmp/` and the snapshotter's staging area, named by [`work_name`] for a process
    /// that no longer exists. Returns how many there were.
    pub fn remove_abandoned_work(&self) -> Result<usize, StoreError> {
        let mut removed = self.snapshots.remove_abandoned_work()?;
        for dir in [self.tmp_dir(), self.snapshots.staging_root().to_path_buf()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !abandoned(&name) {
                    continue;
                }
                let path = entry.path();
                let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match gone {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).ctx("remove", path)
                    }
                    _ => removed += 1,
                }
            }
        }
        Ok(removed)
    }

    /// Takes the store-wide lock that garbage collection holds exclusively and layer creation holds shared,
    /// so a layer is never deleted while another process is making an image that uses it.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let path = self.root.join("gc.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx("open", &path)?;
        let arg = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        #[allow(deprecated)]
        nix::fcntl::flock(std::os::fd::AsRawFd::as_raw_fd(&file), arg).map_err(|e| {
            StoreError::Io {
                op: "lock",
                path,
                source: e.into(),
            }
        })?;
        Ok(StoreLock { _file: file })
    }
}

/// A held store lock; released on drop.
pub struct StoreLock {
    _file: File,
}

/// A name for something short-lived a process makes in the store (a working snapshot, a file being
/// written, a directory being filled): `<kind>-<pid>-<random>`. The maker is in the name, so
/// [`Store::remove_abandoned_work`] can tell what a killed process left from what is still in use.
pub fn work_name(kind: &str) -> String {
    format!("{kind}-{}-{}", std::process::id(), random_hex(8))
}

/// The process in a [`work_name`]; `None` for other names (container IDs, digests).
pub(crate) fn work_owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let (random, pid, kind) = (parts.next()?, parts.next()?, parts.next()?);
    let well_formed = random.len() == 16
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    well_formed.then(|| pid.parse().ok()).flatten()
}

/// Whether the process that made a [`work_name`] is gone.
pub(crate) fn abandoned(name: &str) -> bool {
    work_owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// A directory under the store's `tmp/` that only root can enter, removed with all it holds when dropped
/// (and by [`Store::remove_abandoned_work`] if its process is killed): where a build keeps secrets
/// and the repositories ADD clones.
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates one, named by [`work_name`]`(kind)`.
    pub fn create(store: &Store, kind: &str) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = store.tmp_dir().join(work_name(kind));
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)
            .ctx("create", &path)?;
        Ok(Self { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to a new file in it (mode 0600); returns the file, still open, and its path.
    pub fn write_file(&self, bytes: &[u8]) -> Result<(File, PathBuf), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(random_hex(8));
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx("create", &path)?;
        std::io::Write::write_all(&mut file, bytes).ctx("write", &path)?;
        Ok((file, path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The current time in RFC 3339 with nanoseconds, as Docker prints times.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_killed_processes_left_in_tmp_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let left = store
            .tmp_dir()
            .join(format!("load-{dead}-0123456789abcdef"));
        fs::create_dir_all(left.join("blobs")).unwrap();
        let staging = store
            .snapshots()
            .staging_root()
            .join(format!("layer-{dead}-0123456789abcdef"));
        fs::create_dir_all(&staging).unwrap();
        let mine = store.tmp_dir().join(work_name("blob"));
        fs::write(&mine, b"in use").unwrap();
        let foreign = store.tmp_dir().join("not-ours");
        fs::write(&foreign, b"x").unwrap();
        assert_eq!(store.remove_abandoned_work().unwrap(), 2);
        assert!(!left.exists() && !staging.exists());
        assert!(mine.exists() && foreign.exists());
    }
}
