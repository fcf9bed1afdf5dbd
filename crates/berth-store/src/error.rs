//! Errors of the store.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store, each with what a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A reference that does not follow Docker's grammar.
    #[error("invalid reference format: {reference:?}: {reason}")]
    InvalidReference {
        /// What the user typed.
        reference: String,
        /// Which rule it broke.
        reason: String,
    },
    /// A digest that is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// A `--platform` value that is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
    InvalidPlatform(String),
    /// Content whose digest is not the one announced.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was announced with.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// No image by that name or ID.
    #[error("No such image: {0}")]
    ImageNotFound(String),
    /// A short ID that matches more than one image or container.
    #[error("{0}: ambiguous ID prefix, matches more than one")]
    Ambiguous(String),
    /// No container by that name or ID.
    #[error("No such container: {0}")]
    ContainerNotFound(String),
    /// A container name that is taken.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameConflict {
        /// The name asked for.
        name: String,
        /// The container that holds it.
        id: String,
    },
    /// A container name outside Docker's grammar.
    #[error("Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    /// The last tag of an image that containers use, removed without -f (Docker's words).
    #[error("conflict: unable to remove repository reference {reference:?} (must force) - container {container} is using its referenced image {image}")]
    ImageInUse {
        /// The tag as the user typed it.
        reference: String,
        /// One container using the image (short ID).
        container: String,
        /// The image (short ID).
        image: String,
    },
    /// An image that cannot be deleted: `hard` when even -f cannot (a running container uses it), as
    /// Docker words it.
    #[error("conflict: unable to delete {image} ({}) - {reason}", force_word(.hard))]
    DeleteConflict {
        /// The image (short ID).
        image: String,
        /// Whether -f could not help.
        hard: bool,
        /// Why (`image is being used by running container 0123456789ab`).
        reason: String,
    },
    /// An image referenced by several tags, removed by ID without -f.
    #[error("conflict: unable to delete {0} (must be forced) - image is referenced in multiple repositories")]
    MultipleTags(String),
    /// No volume by that name.
    #[error("No such volume: {0}")]
    VolumeNotFound(String),
    /// A volume containers still use.
    #[error("remove {name}: volume is in use - [{container}]")]
    VolumeInUse {
        /// The volume.
        name: String,
        /// A container using it.
        container: String,
    },
    /// A layer tar that is unsafe or broken.
    #[error("invalid layer: {0}")]
    Archive(#[from] berth_archive::ArchiveError),
    /// An image manifest or config that cannot be used.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(#[from] rusqlite::Error),
    /// Metadata that does not parse.
    #[error("corrupt metadata: {0}")]
    Json(#[from] serde_json::Error),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A mount or unmount failed.
    #[error("{op} {path}: {source}")]
    Mount {
        /// mount or umount.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

/// Docker's words for whether -f can resolve a [`StoreError::DeleteConflict`].
fn force_word(hard: &bool) -> &'static str {
    if *hard {
        "cannot be forced"
    } else {
        "must be forced"
    }
}

/// Attaches the operation and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io {
            op,
            path: path.into(),
            source,
        })
    }
}
