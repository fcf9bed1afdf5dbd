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
pub use images::{ImageRecord, LayerRecord, NewImage, RemovedImage};
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
