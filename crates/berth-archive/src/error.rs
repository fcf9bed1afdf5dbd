//! The error type of the crate.

use std::io;

/// What went wrong with an archive. Every variant names the offending archive entry (or, for
/// errors that are not about one entry, the file or stream involved).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// An entry name that is absolute or has a `..` component.
    #[error("archive entry {path:?} escapes the destination (absolute path or '..' component)")]
    PathEscapes {
        /// The entry name as found in the archive.
        path: String,
    },
    /// A hardlink whose target is not inside the archive root, or a symlink whose relative target
    /// climbs above the root from where the link sits.
    #[error("archive entry {path:?} links to {target:?}, outside the destination")]
    LinkEscapes {
        /// The link entry.
        path: String,
        /// Its target as found in the archive.
        target: String,
    },
    /// A character or block device or a fifo, while devices are not allowed.
    #[error("archive entry {path:?} is a device node or fifo, which is not allowed here")]
    DeviceNode {
        /// The entry.
        path: String,
    },
    /// A parent directory of the entry is a symlink that leads nowhere (or to a non-directory), so
    /// the directory would have to be created through it.
    #[error(
        "archive entry {path:?} would have to be written through the dangling symlink {link:?}"
    )]
    ThroughSymlink {
        /// The entry.
        path: String,
        /// The symlink on its path, relative to the destination.
        link: String,
    },
    /// An entry type this crate does not unpack (e.g. a GNU multi-volume continuation).
    #[error("archive entry {path:?} has unsupported type {kind}")]
    Unsupported {
        /// The entry.
        path: String,
        /// The entry type.
        kind: String,
    },
    /// The stream ended in the middle of an entry or header.
    #[error("archive is truncated (in or after entry {path:?})")]
    Truncated {
        /// The entry being read, or the last complete one.
        path: String,
    },
    /// The stream is not a valid (compressed) tar: bad header checksum, bad number field, corrupt
    /// compression.
    #[error("archive is corrupt at entry {path:?}: {reason}")]
    Corrupt {
        /// The entry being read, or the last complete one.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The archive entry (when unpacking) or file (when writing) involved.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// An [`ArchiveError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<String>, source: impl Into<io::Error>) -> ArchiveError {
        ArchiveError::Io {
            path: path.into(),
            source: source.into(),
        }
    }

    /// An [`ArchiveError::Corrupt`] for `path`.
    pub(crate) fn corrupt(path: impl Into<String>, reason: impl ToString) -> ArchiveError {
        ArchiveError::Corrupt {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
