//! Layer tarballs for Berth: safe unpacking, overlayfs whiteouts, layer diffs from an overlay upper
//! dir, plain tree archives, `docker diff` change lists, and compression sniffing.
//!
//! # Security model
//!
//! A tar stream comes from a user (a pulled image, `docker load`, `docker cp`) and must never cause
//! a write outside the directory it is unpacked into. The unpacker therefore:
//!
//! * rejects absolute entry names and every `..` component ([`ArchiveError::PathEscapes`]);
//! * resolves the parent directory of every entry with `openat2(RESOLVE_IN_ROOT)` from a file
//!   descriptor of the destination, so symlinks met on the way (made by earlier entries, or already
//!   present in a container rootfs) are followed as if the destination were `/` and can never lead
//!   out of it;
//! * acts on the last component only through `*at()` calls relative to that parent descriptor and
//!   never follows it: a file written where a symlink is replaces the symlink;
//! * refuses hardlinks whose target is not an archive path, relative symlinks that climb above the
//!   root, and (unless allowed) device nodes and fifos;
//! * treats a stream that ends early as an error, never as a partial success.
//!
//! Walking a tree to archive it ([`write_tree`], [`write_path_in_root`],
//! [`write_layer_from_upper`], [`changes`]) is descriptor-based as well (`openat` with
//! `O_NOFOLLOW` from the parent), so a running container that swaps a directory for a symlink
//! cannot make us read a host directory.
//!
//! # Tar dialects
//!
//! The reader (our own, see `reader.rs` for why not the `tar` crate's) understands V7, ustar, GNU
//! (long names and link targets) and PAX (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime`,
//! `SCHILY.xattr.*`) headers, following Go's `archive/tar` (and so Docker) where tools disagree.
//! GNU sparse files and multi-volume archives are refused ([`ArchiveError::Unsupported`]). The
//! writer emits GNU headers (long names as GNU extensions) with PAX records for xattrs.

#![warn(missing_docs)]

mod changes;
mod error;
mod reader;
mod sys;
mod unpack;
mod write;

use std::io::{BufReader, Read};

pub use changes::{changes, Change, ChangeKind};
pub use error::ArchiveError;
pub use unpack::{unpack_in_root, unpack_layer, UnpackOptions, UnpackSummary, WhiteoutMode};
pub use write::{
    remove_overlay_bookkeeping, write_layer_from_upper, write_layer_from_upper_skipping,
    write_path_in_root, write_path_in_root_as, write_tree,
};

/// Compression of a tar stream, sniffed from its first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`,
/// bzip2 `BZh`, xz `fd 37 7a 58 5a 00`; anything else is taken as a plain tar). Layers are gzip, zstd
/// or plain; `import` and ADD take bzip2 and xz too, as Docker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain, uncompressed tar.
    None,
    /// gzip (magic `1f 8b`).
    Gzip,
    /// zstd (magic `28 b5 2f fd`).
    Zstd,
    /// bzip2 (magic `BZh`).
    Bzip2,
    /// xz (magic `fd 37 7a 58 5a 00`).
    Xz,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream (6 bytes are enough).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b))
        {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }
}

/// Whether a stream starting with `head` (512 bytes are enough) is a tar archive, plain (the
/// `ustar` magic of POSIX and GNU headers) or gzip/zstd compressed: what `build -` and ADD take
/// for a context or an archive to extract rather than a file.
pub fn looks_like_tar(head: &[u8]) -> bool {
    match Compression::sniff(head) {
        Compression::None => head.get(257..262) == Some(b"ustar"),
        _ => true,
    }
}

/// Read-ahead used in front of the decompressors and the tar parser: large enough that the many
/// 512-byte header reads of a layer of small files are served from memory.
const STREAM_BUFFER: usize = 256 * 1024;

/// Wraps a reader so it yields the decompressed tar stream, with the detected compression.
///
/// The magic bytes are read and then chained back in front of the stream, so a plain tar passes
/// through unchanged. Concatenated gzip members, zstd frames, bzip2 and xz streams are decoded as one
/// stream.
pub fn decompress<'a, R: Read + 'a>(
    mut reader: R,
) -> Result<(Compression, Box<dyn Read + 'a>), ArchiveError> {
    // Loop rather than a single read: a pipe may deliver the magic number a byte at a time.
    let mut head = [0u8; 6];
    let mut have = 0;
    while have < head.len() {
        match reader.read(&mut head[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ArchiveError::Io {
                    path: "<archive stream>".into(),
                    source,
                })
            }
        }
    }
    let compression = Compression::sniff(&head[..have]);
    let stream = BufReader::with_capacity(
        STREAM_BUFFER,
        std::io::Cursor::new(head).take(have as u64).chain(reader),
    );
    match compression {
        Compression::Gzip => Ok((
            compression,
            Box::new(flate2::read::MultiGzDecoder::new(stream)),
        )),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(stream).map_err(|source| {
                ArchiveError::Io {
                    path: "<zstd stream>".into(),
                    source,
                }
            })?;
            Ok((compression, Box::new(decoder)))
        }
        Compression::Bzip2 => Ok((
            compression,
            Box::new(bzip2::read::MultiBzDecoder::new(stream)),
        )),
        Compression::Xz => Ok((
            compression,
            Box::new(lzma_rust2::XzReader::new(stream, true)),
        )),
        Compression::None => Ok((compression, Box::new(stream))),
    }
}

/// What [`resolve_in_root`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The real path relative to the root, with every symlink (the last one too) followed inside
    /// the root; empty for the root itself.
    pub path: std::path::PathBuf,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// Resolves `path` inside the tree at `root` as if `root` were `/`: `..` and symlinks, absolute or
/// relative, are followed but can never leave `root`. `Ok(None)` when nothing is there. Used by the
/// builder to find COPY sources (whose top-level symlinks Docker follows) and destinations.
pub fn resolve_in_root(
    root: &std::path::Path,
    path: &std::path::Path,
) -> Result<Option<Resolved>, ArchiveError> {
    use nix::fcntl::{OFlag, ResolveFlag};
    let root_dir =
        sys::open_dir(root).map_err(|e| ArchiveError::io(root.display().to_string(), e))?;
    let clean = sys::clean_in_root(path);
    let file = match sys::openat2(
        &root_dir,
        &clean,
        OFlag::O_PATH,
        ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    ) {
        Ok(f) => f,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(ArchiveError::io(path.display().to_string(), e)),
    };
    let is_dir = file
        .metadata()
        .map_err(|e| ArchiveError::io(path.display().to_string(), e))?
        .is_dir();
    let real = |f: &std::fs::File| std::fs::read_link(sys::fd_path(f));
    let root_path = real(&root_dir).map_err(|e| ArchiveError::io(root.display().to_string(), e))?;
    let file_path = real(&file).map_err(|e| ArchiveError::io(path.display().to_string(), e))?;
    let rel = file_path
        .strip_prefix(&root_path)
        .map_err(|_| ArchiveError::PathEscapes {
            path: path.display().to_string(),
        })?;
    Ok(Some(Resolved {
        path: rel.to_path_buf(),
        is_dir,
    }))
}

/// Creates directory `path` and its missing parents inside the tree at `root` (mode 0755, owned
/// by the caller), resolving what exists as [`resolve_in_root`] does, so a symlink in the tree
/// cannot place the directories outside it. The runtime uses it for a missing working directory,
/// which Docker creates.
pub fn create_dir_all_in_root(
    root: &std::path::Path,
    path: &std::path::Path,
) -> Result<(), ArchiveError> {
    let clean = sys::clean_in_root(path);
    let parts: Vec<_> = clean.components().collect();
    for existing in (0..=parts.len()).rev() {
        let prefix: std::path::PathBuf = parts[..existing].iter().collect();
        let Some(found) = resolve_in_root(root, &prefix)? else {
            continue;
        };
        if !found.is_dir {
            return Err(ArchiveError::io(
                path.display().to_string(),
                std::io::Error::from(std::io::ErrorKind::NotADirectory),
            ));
        }
        let mut dir = root.join(found.path);
        for part in &parts[existing..] {
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(ArchiveError::io(dir.display().to_string(), e))
                }
                _ => {}
            }
        }
        return Ok(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compression_is_sniffed() {
        for (head, want) in [
            (&b"\x1f\x8b\x08\0\0\0"[..], Compression::Gzip),
            (&b"\x28\xb5\x2f\xfd\0\0"[..], Compression::Zstd),
            (&b"BZh91AY"[..], Compression::Bzip2),
            (&b"\xfd7zXZ\0"[..], Compression::Xz),
            (&b"BZh0"[..], Compression::None),
            (&b"hello!"[..], Compression::None),
        ] {
            assert_eq!(Compression::sniff(head), want, "{head:?}");
        }
    }
}
