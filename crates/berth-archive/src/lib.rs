//! Layer tarballs for Berth: safe unpacking (no entry can write outside its destination), overlayfs
//! whiteouts, layer diffs from an overlay upper dir, plain tree archives, change lists, and compression.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Prefix of a whiteout entry in a layer tar.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker entry.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// xattr overlayfs reads to hide everything below a directory from lower layers.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What went wrong with an archive; each variant names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry path that is absolute or climbs with `..`.
    #[error("tar entry {0:?} escapes the destination (absolute path or '..')")]
    PathEscapes(String),
    /// An entry that would be written through a symlink.
    #[error("tar entry {0:?} would be written through a symlink")]
    ThroughSymlink(String),
    /// A link whose target lies outside the destination.
    #[error("tar entry {path:?} links outside the destination ({target:?})")]
    LinkEscapes {
        /// The link entry.
        path: String,
        /// Its target.
        target: String,
    },
    /// A device node or fifo where none are allowed.
    #[error("tar entry {0:?} is a device node or fifo, which is not allowed")]
    DeviceNode(String),
    /// The stream ended inside an entry.
    #[error("tar archive is truncated (in entry {0:?})")]
    Truncated(String),
    /// The stream is not a valid tar.
    #[error("tar archive is corrupt: {0}")]
    Corrupt(String),
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.as_ref().display().to_string();
    move |source| ArchiveError::Io { path, source }
}

/// Compression of a layer stream, sniffed from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (1f 8b).
    Gzip,
    /// zstd (28 b5 2f fd).
    Zstd,
}

/// Wraps a reader so it yields the decompressed stream, with the compression detected.
pub fn decompress<'a, R: Read + 'a>(
    reader: R,
) -> Result<(Compression, Box<dyn Read + 'a>), ArchiveError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered.fill_buf().map_err(io_error("<stream>"))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Compression::Gzip,
            Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(buffered)
            .map_err(io_error("<zstd stream>"))?;
        Ok((Compression::Zstd, Box::new(decoder)))
    } else {
        Ok((Compression::None, Box::new(buffered)))
    }
}

/// How `.wh.` whiteout entries are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Into an overlayfs lower dir: `.wh.x` becomes a 0/0 char device, `.wh..wh..opq` the opaque xattr.
    Overlay,
    /// Onto a flattened tree: `.wh.x` deletes `x`, `.wh..wh..opq` empties the dir of older entries.
    Apply,
}

/// Options of [`unpack_layer`].
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Whiteout handling.
    pub whiteouts: WhiteoutMode,
    /// Whether device nodes and fifos may be created (else they are an error).
    pub allow_devices: bool,
}

/// Counts of what an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Entries processed.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Validates an entry name and returns it as a relative path (`./` and trailing `/` dropped).
fn clean_entry_path(raw: &[u8]) -> Result<PathBuf, ArchiveError> {
    let name = String::from_utf8_lossy(raw).into_owned();
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(ArchiveError::PathEscapes(name))
            }
        }
    }
    Ok(out)
}

/// Refuses a path whose existing parent components include a symlink (writing through it could escape).
fn check_parents(dest: &Path, rel: &Path, name: &str) -> Result<(), ArchiveError> {
    let mut current = dest.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        if components.peek().is_none() {
            break;
        }
        current.push(c);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ArchiveError::ThroughSymlink(name.to_string()))
            }
            Ok(m) if !m.is_dir() => {
                // A file where a directory is needed: replace it, as tar does.
                fs::remove_file(&current).map_err(io_error(&current))?;
                fs::create_dir(&current).map_err(io_error(&current))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(io_error(&current))?;
            }
            Err(e) => return Err(io_error(&current)(e)),
        }
    }
    Ok(())
}

/// Whether a relative symlink target, read from the link's own directory, climbs above the root.
fn symlink_escapes(link_rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false; // rootfs-relative inside the container
    }
    let mut depth: i64 = link_rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

/// Removes whatever is at `path` (file, link, or whole directory); missing is fine.
fn remove_any(path: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_error(path)),
        Ok(_) => fs::remove_file(path).map_err(io_error(path)),
        Err(_) => Ok(()),
    }
}

fn set_owner_mode_time(
    path: &Path,
    header: &tar::Header,
    is_symlink: bool,
) -> Result<(), ArchiveError> {
    let uid = header.uid().ok().map(|u| u as u32);
    let gid = header.gid().ok().map(|g| g as u32);
    std::os::unix::fs::lchown(path, uid, gid).map_err(io_error(path))?;
    if !is_symlink {
        let mode = header
            .mode()
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_error(path))?;
    }
    if let Ok(mtime) = header.mtime() {
        let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
        let _ = nix::sys::stat::utimensat(
            None,
            path,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

/// Unpacks a layer tar (plain, gzip or zstd) into `dest`, which must exist. No entry can write outside
/// `dest`: absolute and `..` paths, writes through symlinks, and links pointing out are refused.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    let (_, stream) = decompress(reader)?;
    let mut archive = tar::Archive::new(stream);
    let mut summary = UnpackSummary::default();
    // Directory times are set last, since writing their contents changes them.
    let mut dir_times: Vec<(PathBuf, tar::Header)> = Vec::new();
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        summary.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean_entry_path(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_parents(dest, &rel, &name)?;
        let target = dest.join(&rel);
        let parent = target.parent().unwrap_or(dest).to_path_buf();

        if file_name == WHITEOUT_OPAQUE {
            match opts.whiteouts {
                WhiteoutMode::Overlay => {
                    xattr::set(&parent, OVERLAY_OPAQUE_XATTR, b"y").map_err(io_error(&parent))?;
                }
                WhiteoutMode::Apply => {
                    if let Ok(children) = fs::read_dir(&parent) {
                        for child in children.flatten() {
                            let child_rel = rel
                                .parent()
                                .unwrap_or(Path::new(""))
                                .join(child.file_name());
                            if !this_layer.contains(&child_rel) {
                                remove_any(&child.path())?;
                            }
                        }
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let victim = parent.join(hidden);
            match opts.whiteouts {
                WhiteoutMode::Overlay => {
                    remove_any(&victim)?;
                    nix::sys::stat::mknod(
                        &victim,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .map_err(|e| io_error(&victim)(e.into()))?;
                }
                WhiteoutMode::Apply => remove_any(&victim)?,
            }
            continue;
        }

        let kind = entry.header().entry_type();
        let header = entry.header().clone();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target)?;
                        fs::create_dir(&target).map_err(io_error(&target))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(io_error(&target))?,
                }
                set_owner_mode_time(&target, &header, false)?;
                dir_times.push((target.clone(), header));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => remove_any(&target)?,
                    Ok(_) => fs::remove_file(&target).map_err(io_error(&target))?,
                    Err(_) => {}
                }
                let expected = entry.size();
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(io_error(&target))?;
                let written = io::copy(&mut entry, &mut file).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        ArchiveError::Truncated(name.clone())
                    } else {
                        io_error(&target)(e)
                    }
                })?;
                if written != expected {
                    return Err(ArchiveError::Truncated(name));
                }
                summary.bytes += written;
                drop(file);
                set_owner_mode_time(&target, &header, false)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| PathBuf::from(OsStr::from_bytes(&l)))
                    .ok_or_else(|| {
                        ArchiveError::Corrupt(format!("symlink {name:?} without target"))
                    })?;
                if symlink_escapes(&rel, &link) {
                    return Err(ArchiveError::LinkEscapes {
                        path: name,
                        target: link.display().to_string(),
                    });
                }
                remove_any(&target)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_error(&target))?;
                set_owner_mode_time(&target, &header, true)?;
            }
            tar::EntryType::Link => {
                let link_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ArchiveError::Corrupt(format!("hardlink {name:?} without target"))
                    })?
                    .into_owned();
                let link_rel =
                    clean_entry_path(&link_raw).map_err(|_| ArchiveError::LinkEscapes {
                        path: name.clone(),
                        target: String::from_utf8_lossy(&link_raw).into_owned(),
                    })?;
                check_parents(dest, &link_rel, &name)?;
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(ArchiveError::LinkEscapes {
                            path: name,
                            target: String::from_utf8_lossy(&link_raw).into_owned(),
                        })
                    }
                }
                remove_any(&target)?;
                fs::hard_link(&source, &target).map_err(io_error(&target))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !opts.allow_devices {
                    return Err(ArchiveError::DeviceNode(name));
                }
                let (kind_flag, dev) = match kind {
                    tar::EntryType::Char => (nix::sys::stat::SFlag::S_IFCHR, device(&header)),
                    tar::EntryType::Block => (nix::sys::stat::SFlag::S_IFBLK, device(&header)),
                    _ => (nix::sys::stat::SFlag::S_IFIFO, 0),
                };
                remove_any(&target)?;
                nix::sys::stat::mknod(
                    &target,
                    kind_flag,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| io_error(&target)(e.into()))?;
                set_owner_mode_time(&target, &header, false)?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(ArchiveError::Corrupt(format!(
                    "entry {name:?} has unsupported type {other:?}"
                )))
            }
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let (Ok(key), value) = (ext.key(), ext.value_bytes()) {
                    if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                        if kind != tar::EntryType::Symlink {
                            let _ = xattr::set(&target, attr, value);
                        }
                    }
                }
            }
        }
        this_layer.insert(rel);
    }
    for (dir, header) in dir_times.iter().rev() {
        if let Ok(mtime) = header.mtime() {
            let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
            let _ = nix::sys::stat::utimensat(
                None,
                dir,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    Ok(summary)
}

fn device(header: &tar::Header) -> u64 {
    let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
    let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
    nix::sys::stat::makedev(major, minor)
}

/// Appends one filesystem object to a tar under `name`, as a hardlink when its inode was seen before.
fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    meta: &fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ArchiveError> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    let ft = meta.file_type();
    if ft.is_file() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = links.get(&key) {
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            builder
                .append_link(&mut header, name, first)
                .map_err(io_error(path))?;
            return Ok(());
        }
        links.insert(key, name.to_path_buf());
    }
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_error(path))?;
        header.set_size(0);
        builder
            .append_link(&mut header, name, &target)
            .map_err(io_error(path))?;
    } else if ft.is_file() {
        let file = File::open(path).map_err(io_error(path))?;
        builder
            .append_data(&mut header, name, file)
            .map_err(io_error(path))?;
    } else if ft.is_dir() {
        header.set_size(0);
        builder
            .append_data(&mut header, name, io::empty())
            .map_err(io_error(path))?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let rdev = meta.rdev();
        header.set_size(0);
        let _ = header.set_device_major(nix::sys::stat::major(rdev) as u32);
        let _ = header.set_device_minor(nix::sys::stat::minor(rdev) as u32);
        builder
            .append_data(&mut header, name, io::empty())
            .map_err(io_error(path))?;
    }
    Ok(())
}

/// Sorted entries of a directory.
fn sorted_children(dir: &Path) -> Result<Vec<fs::DirEntry>, ArchiveError> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_error(dir))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Writes the tree at `dir` as a tar (names relative to `dir`), in sorted order, not following symlinks.
pub fn write_tree<W: Write>(dir: &Path, out: W) -> Result<W, ArchiveError> {
    let mut builder = tar::Builder::new(out);
    let mut links = HashMap::new();
    walk(&mut builder, dir, Path::new(""), &mut links, false)?;
    builder.into_inner().map_err(io_error(dir))
}

/// Writes an overlayfs upper dir as an OCI layer: 0/0 char devices become `.wh.` entries and opaque
/// directories get a `.wh..wh..opq` entry.
pub fn write_layer_from_upper<W: Write>(upper: &Path, out: W) -> Result<W, ArchiveError> {
    let mut builder = tar::Builder::new(out);
    let mut links = HashMap::new();
    walk(&mut builder, upper, Path::new(""), &mut links, true)?;
    builder.into_inner().map_err(io_error(upper))
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    whiteouts: bool,
) -> Result<(), ArchiveError> {
    for entry in sorted_children(dir)? {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
        if whiteouts && is_whiteout(&meta) {
            let wh = rel.join(format!(
                "{WHITEOUT_PREFIX}{}",
                entry.file_name().to_string_lossy()
            ));
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            header.set_mode(0o644);
            header.set_mtime(meta.mtime().max(0) as u64);
            builder
                .append_data(&mut header, &wh, io::empty())
                .map_err(io_error(&path))?;
            continue;
        }
        append_entry(builder, &path, &name, &meta, links)?;
        if meta.is_dir() {
            if whiteouts
                && xattr::get(&path, OVERLAY_OPAQUE_XATTR)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(b"y")
            {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(0);
                header.set_mode(0o644);
                builder
                    .append_data(&mut header, name.join(WHITEOUT_OPAQUE), io::empty())
                    .map_err(io_error(&path))?;
            }
            walk(builder, &path, &name, links, whiteouts)?;
        }
    }
    Ok(())
}

/// One change of a container filesystem, as `docker diff` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// Absolute path in the container.
    pub path: PathBuf,
}

/// Kind of a [`Change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// `A`.
    Added,
    /// `C`.
    Modified,
    /// `D`.
    Deleted,
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeKind::Added => "A",
            ChangeKind::Modified => "C",
            ChangeKind::Deleted => "D",
        })
    }
}

/// Lists the changes an overlay upper dir holds against its lower dirs (top-most first), sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, ArchiveError> {
    let mut out = Vec::new();
    collect_changes(upper, Path::new(""), lowers, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn collect_changes(
    dir: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    out: &mut Vec<Change>,
) -> Result<(), ArchiveError> {
    for entry in sorted_children(dir)? {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
        let abs = Path::new("/").join(&name);
        if is_whiteout(&meta) {
            out.push(Change {
                kind: ChangeKind::Deleted,
                path: abs,
            });
            continue;
        }
        let in_lower = lowers
            .iter()
            .any(|l| fs::symlink_metadata(l.join(&name)).is_ok());
        out.push(Change {
            kind: if in_lower {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            },
            path: abs,
        });
        if meta.is_dir() {
            collect_changes(&path, &name, lowers, out)?;
        }
    }
    Ok(())
}
