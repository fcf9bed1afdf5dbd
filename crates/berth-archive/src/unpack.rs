//! Unpacking tar streams without ever writing outside the destination.
//!
//! Every entry's parent directory is opened with `openat2(RESOLVE_IN_ROOT)` relative to a
//! descriptor of the root, and the entry itself is created with `*at()` calls on that parent
//! descriptor that never follow the last component. The last parent is cached, so a layer of many
//! files in few directories costs one `openat2` per directory change, not per file.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use xattr::FileExt;

use crate::error::ArchiveError;
use crate::reader::{Header, Kind, TarReader};
use crate::sys;

/// Prefix of a whiteout entry name.
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker entry.
pub(crate) const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of aufs bookkeeping entries (`.wh..wh.plnk`, `.wh..wh.aufs`): they mean nothing outside
/// aufs and are skipped, as Docker does.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// The xattr overlayfs reads to hide everything below a directory from lower layers.
pub(crate) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How `.wh.` whiteout entries in a layer are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Layer unpacked into its own overlayfs lower dir: `.wh.name` becomes a 0/0 character device
    /// `name`, `.wh..wh..opq` sets xattr `trusted.overlay.opaque=y` on its directory.
    #[default]
    Overlay,
    /// Layer applied onto a flattened tree: `.wh.name` deletes `name`, `.wh..wh..opq` empties the
    /// dir of entries that came from earlier layers (entries of this same layer stay).
    Apply,
    /// Not a layer (`cp` archives): `.wh.` names are ordinary files like any other.
    Literal,
}

/// Options of [`unpack_layer`] and [`unpack_in_root`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackOptions {
    /// How whiteout entries are handled.
    pub whiteouts: WhiteoutMode,
    /// Whether device nodes and fifos may be created; when false they are an error
    /// ([`ArchiveError::DeviceNode`]). Whiteouts made by [`WhiteoutMode::Overlay`] are always
    /// allowed.
    pub allow_devices: bool,
    /// Every entry owned by this uid and gid instead of the archive's (`cp` into a container without
    /// `-a`, as Docker: the container's root owns what is copied in).
    pub owner: Option<(u32, u32)>,
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackSummary {
    /// Archive entries processed (extension headers such as PAX and GNU long names not counted).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Unpacks a (possibly gzip or zstd compressed) tar stream into `dest`, an existing directory.
///
/// Nothing outside `dest` is ever written: entry names that are absolute or contain `..` are
/// refused, symlinks met while resolving an entry's parent are followed as if `dest` were `/`, and
/// the entry itself never follows a symlink (a file written where a symlink is replaces the link).
/// A `./` entry sets the owner, mode and mtime of `dest` itself. On error, `dest` is left partially
/// filled: the caller removes it.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    let root = sys::open_dir(dest).map_err(|e| ArchiveError::io(dest.display().to_string(), e))?;
    Extractor::new(root, PathBuf::new(), opts, true).run(reader)
}

/// Unpacks a tar into directory `subdir` *inside* the tree rooted at `root` (a container rootfs),
/// resolving every path (subdir and entries) as if `root` were `/`: symlinks in the rootfs are
/// followed but can never lead outside `root`. Used by `cp` into a container.
///
/// `subdir` is cleaned lexically first (`..` never climbs above `/`, as in `docker cp`) and must be
/// an existing directory. Unlike [`unpack_layer`], a `./` entry does not change `subdir` itself.
pub fn unpack_in_root<R: Read>(
    reader: R,
    root: &Path,
    subdir: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    let root_dir =
        sys::open_dir(root).map_err(|e| ArchiveError::io(root.display().to_string(), e))?;
    let clean = sys::clean_in_root(subdir);
    let sub = sys::open_dir_in_root(&root_dir, &clean, OFlag::empty())
        .map_err(|e| ArchiveError::io(subdir.display().to_string(), e))?;
    // Symlinks along `subdir` were followed; its real place in the root is needed to judge how far
    // up relative symlink entries may climb. Every later resolution is again clamped to the root,
    // so an inexact answer here (e.g. /proc not mounted) could only make that check less precise.
    let base = real_path_in_root(&root_dir, &sub).unwrap_or(clean);
    Extractor::new(root_dir, base, opts, false).run(reader)
}

/// Where the open directory `dir` sits below the open directory `root`, from the kernel's view of
/// both descriptors.
fn real_path_in_root(root: &File, dir: &File) -> Option<PathBuf> {
    let root_path = std::fs::read_link(sys::fd_path(root)).ok()?;
    let dir_path = std::fs::read_link(sys::fd_path(dir)).ok()?;
    dir_path
        .strip_prefix(&root_path)
        .ok()
        .map(Path::to_path_buf)
}

/// Size of the copy buffer for file contents.
const COPY_BUFFER: usize = 256 * 1024;

/// State of one unpack.
struct Extractor<'o> {
    /// The tree everything is resolved in, as if it were `/`.
    root: File,
    /// Directory the archive is unpacked into, relative to `root` ("" = `root` itself).
    base: PathBuf,
    /// Number of components of `base`.
    base_depth: usize,
    opts: &'o UnpackOptions,
    /// Whether a `./` entry applies its metadata to the base directory.
    root_meta: bool,
    /// The last parent directory used: its path relative to `base`, and a descriptor.
    /// Invalidated whenever a directory or symlink is removed, the only changes that could make
    /// the same path resolve elsewhere.
    cache: Option<(PathBuf, Rc<File>)>,
    /// Paths (relative to `base`) this archive created, and all their ancestors: entries a whiteout
    /// or opaque marker of the same layer must not remove.
    touched: HashSet<PathBuf>,
    /// Directory mtimes, applied at the end since creating children changes them.
    dir_times: Vec<(PathBuf, TimeSpec)>,
    buf: Vec<u8>,
    summary: UnpackSummary,
}

impl<'o> Extractor<'o> {
    fn new(root: File, base: PathBuf, opts: &'o UnpackOptions, root_meta: bool) -> Self {
        Extractor {
            root,
            base_depth: base.components().count(),
            base,
            opts,
            root_meta,
            cache: None,
            touched: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUFFER],
            summary: UnpackSummary::default(),
        }
    }

    fn run<R: Read>(mut self, reader: R) -> Result<UnpackSummary, ArchiveError> {
        let (_, stream) = crate::decompress(reader)?;
        let mut tar = TarReader::new(stream);
        while let Some(mut header) = tar.next_entry()? {
            if let Some((uid, gid)) = self.opts.owner {
                (header.uid, header.gid) = (uid, gid);
            }
            self.summary.entries += 1;
            let name = String::from_utf8_lossy(&header.name).into_owned();
            self.entry(&header, &mut tar, &name)?;
        }
        tar.drain()?;
        self.finish_dirs()?;
        Ok(self.summary)
    }

    /// Handles one archive entry.
    fn entry<R: Read>(
        &mut self,
        header: &Header,
        tar: &mut TarReader<R>,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let rel = clean_entry_path(&header.name, name)?;
        let mut kind = header.kind;
        // Pre-POSIX tars mark directories only with a trailing slash on a regular entry.
        if kind == Kind::Regular && header.name.ends_with(b"/") {
            kind = Kind::Directory;
        }
        let Some(file_name) = rel.file_name() else {
            // The entry names the destination itself ("./").
            if kind != Kind::Directory {
                return Err(ArchiveError::corrupt(
                    name,
                    "entry names the destination itself but is not a directory",
                ));
            }
            if self.root_meta {
                self.base_dir_meta(header, name)?;
            }
            return Ok(());
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if file_name.as_bytes().starts_with(WHITEOUT_PREFIX)
            && self.opts.whiteouts != WhiteoutMode::Literal
        {
            return self.whiteout(header, parent, file_name, name);
        }
        match kind {
            Kind::Directory => self.directory(&rel, parent, file_name, header, name)?,
            Kind::Regular => self.regular(tar, parent, file_name, header, name)?,
            Kind::Symlink => self.symlink(&header.link, parent, file_name, header, name)?,
            Kind::Link => self.hardlink(&header.link, parent, file_name, name)?,
            Kind::Char | Kind::Block | Kind::Fifo => {
                self.device(kind, parent, file_name, header, name)?
            }
            Kind::Unsupported(flag) => {
                return Err(ArchiveError::Unsupported {
                    path: name.to_string(),
                    kind: match flag {
                        b'S' => "GNU sparse file".to_string(),
                        b'M' => "GNU multi-volume continuation".to_string(),
                        flag if flag.is_ascii_graphic() => format!("'{}'", flag as char),
                        flag => format!("0x{flag:02x}"),
                    },
                })
            }
        }
        self.touch(&rel);
        Ok(())
    }

    /// `base` joined with `rel`, without the trailing slash `join("")` would add (a trailing slash
    /// makes the kernel follow a final symlink).
    fn in_base(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.base.clone()
        } else {
            self.base.join(rel)
        }
    }

    /// Records `rel` and its ancestors as created by this archive.
    fn touch(&mut self, rel: &Path) {
        let mut path = rel.to_path_buf();
        // Ancestors of a recorded path are always recorded, so stop at the first known one.
        while !path.as_os_str().is_empty() && self.touched.insert(path.clone()) {
            path.pop();
        }
    }

    /// Opens the directory `rel` (relative to `base`), if it exists.
    fn lookup_dir(&mut self, rel: &Path, name: &str) -> Result<Option<Rc<File>>, ArchiveError> {
        if let Some((cached, dir)) = &self.cache {
            if cached == rel {
                return Ok(Some(dir.clone()));
            }
        }
        match sys::open_dir_in_root(&self.root, &self.in_base(rel), OFlag::empty()) {
            Ok(dir) => {
                let dir = Rc::new(dir);
                self.cache = Some((rel.to_path_buf(), dir.clone()));
                Ok(Some(dir))
            }
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
            Err(e) => Err(ArchiveError::io(name, e)),
        }
    }

    /// Opens the directory `rel` (relative to `base`), creating missing directories (mode 0755,
    /// owned by root, as tar does for parents the archive does not list).
    fn parent_dir(&mut self, rel: &Path, name: &str) -> Result<Rc<File>, ArchiveError> {
        if let Some(dir) = self.lookup_dir(rel, name)? {
            return Ok(dir);
        }
        let dir = Rc::new(self.make_dirs(rel, name)?);
        self.cache = Some((rel.to_path_buf(), dir.clone()));
        Ok(dir)
    }

    /// The slow path of [`Self::parent_dir`]: walks `rel` one component at a time, resolving each
    /// prefix in the root and creating what is missing.
    fn make_dirs(&mut self, rel: &Path, name: &str) -> Result<File, ArchiveError> {
        let mut current = sys::open_dir_in_root(&self.root, &self.base, OFlag::empty())
            .map_err(|e| ArchiveError::io(name, e))?;
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            let component = component.as_os_str();
            prefix.push(component);
            match sys::open_dir_in_root(&self.root, &self.in_base(&prefix), OFlag::empty()) {
                Ok(dir) => {
                    current = dir;
                    continue;
                }
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(e) => return Err(ArchiveError::io(name, e)),
            }
            // The prefix does not lead to a directory. Look at the component itself.
            match sys::lstatat(&current, component) {
                Err(Errno::ENOENT) => {}
                Ok(st) if sys::kind(&st) == SFlag::S_IFLNK => {
                    // A symlink that dangles (or loops, or leads to a non-directory). Creating
                    // the directory it names would mean resolving it by hand; refuse instead.
                    return Err(ArchiveError::ThroughSymlink {
                        path: name.to_string(),
                        link: prefix.display().to_string(),
                    });
                }
                Ok(st) if sys::kind(&st) == SFlag::S_IFDIR => {} // appeared meanwhile
                Ok(_) => {
                    // A file where a directory is needed: replace it, as tar does.
                    nix::unistd::unlinkat(
                        Some(current.as_raw_fd()),
                        component,
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    )
                    .map_err(|e| ArchiveError::io(name, e))?;
                }
                Err(e) => return Err(ArchiveError::io(name, e)),
            }
            match nix::sys::stat::mkdirat(
                Some(current.as_raw_fd()),
                component,
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(ArchiveError::io(name, e)),
            }
            let dir =
                sys::open_subdir(&current, component).map_err(|e| ArchiveError::io(name, e))?;
            // mkdirat is subject to the umask; make the result independent of it.
            nix::sys::stat::fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o755))
                .map_err(|e| ArchiveError::io(name, e))?;
            current = dir;
        }
        Ok(current)
    }

    /// Removes whatever is at `file_name` in `dir` to make room for a new entry (a whole tree if it
    /// is a directory). Never follows a symlink: a symlink is removed itself.
    fn make_room(&mut self, dir: &File, file_name: &OsStr, name: &str) -> Result<(), ArchiveError> {
        let st = match sys::lstatat(dir, file_name) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(ArchiveError::io(name, e)),
        };
        if matches!(sys::kind(&st), SFlag::S_IFDIR | SFlag::S_IFLNK) {
            self.cache = None;
        }
        sys::remove_all_at(dir, file_name).map_err(|e| ArchiveError::io(name, e))
    }

    fn base_dir_meta(&mut self, meta: &Header, name: &str) -> Result<(), ArchiveError> {
        let dir = sys::open_dir_in_root(&self.root, &self.base, OFlag::empty())
            .map_err(|e| ArchiveError::io(name, e))?;
        apply_fd_meta(&dir, meta, name)?;
        self.dir_times.push((PathBuf::new(), meta.mtime));
        Ok(())
    }

    fn directory(
        &mut self,
        rel: &Path,
        parent: &Path,
        file_name: &OsStr,
        meta: &Header,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let dir = self.parent_dir(parent, name)?;
        let mkdir = |dir: &File| {
            nix::sys::stat::mkdirat(
                Some(dir.as_raw_fd()),
                file_name,
                Mode::from_bits_truncate(0o700),
            )
        };
        match mkdir(&dir) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let st = sys::lstatat(&dir, file_name).map_err(|e| ArchiveError::io(name, e))?;
                // An existing directory is merged into (its metadata updated); anything else,
                // a symlink included, is replaced.
                if sys::kind(&st) != SFlag::S_IFDIR {
                    self.make_room(&dir, file_name, name)?;
                    mkdir(&dir).map_err(|e| ArchiveError::io(name, e))?;
                }
            }
            Err(e) => return Err(ArchiveError::io(name, e)),
        }
        let created = sys::open_subdir(&dir, file_name).map_err(|e| ArchiveError::io(name, e))?;
        apply_fd_meta(&created, meta, name)?;
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        // The next entries are most likely this directory's children.
        self.cache = Some((rel.to_path_buf(), Rc::new(created)));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        parent: &Path,
        file_name: &OsStr,
        meta: &Header,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let dir = self.parent_dir(parent, name)?;
        // O_EXCL: never open an existing file, and never follow a symlink (even a dangling one)
        // at the last component.
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mode = Mode::from_bits_truncate(0o600);
        let mut file = match sys::openat(&dir, file_name, flags, mode) {
            Ok(file) => file,
            Err(Errno::EEXIST) => {
                self.make_room(&dir, file_name, name)?;
                sys::openat(&dir, file_name, flags, mode).map_err(|e| ArchiveError::io(name, e))?
            }
            Err(e) => return Err(ArchiveError::io(name, e)),
        };
        let written = copy_data(&mut tar.data(), &mut file, &mut self.buf, name)?;
        if written != meta.size {
            // The data reader reports an early end as an error; this is a second line of defence.
            return Err(ArchiveError::Truncated {
                path: name.to_string(),
            });
        }
        self.summary.bytes += written;
        apply_fd_meta(&file, meta, name)?;
        nix::sys::stat::futimens(file.as_raw_fd(), &meta.mtime, &meta.mtime)
            .map_err(|e| ArchiveError::io(name, e))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        target: &[u8],
        parent: &Path,
        file_name: &OsStr,
        meta: &Header,
        name: &str,
    ) -> Result<(), ArchiveError> {
        if target.is_empty() {
            return Err(ArchiveError::corrupt(name, "symlink with an empty target"));
        }
        let depth = self.base_depth + parent.components().count();
        if symlink_escapes(depth, target) {
            return Err(ArchiveError::LinkEscapes {
                path: name.to_string(),
                target: String::from_utf8_lossy(target).into_owned(),
            });
        }
        let dir = self.parent_dir(parent, name)?;
        let target = OsStr::from_bytes(target);
        let link = |dir: &File| nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), file_name);
        match link(&dir) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                self.make_room(&dir, file_name, name)?;
                link(&dir).map_err(|e| ArchiveError::io(name, e))?;
            }
            Err(e) => return Err(ArchiveError::io(name, e)),
        }
        self.node_meta(&dir, file_name, meta, name)
    }

    fn hardlink(
        &mut self,
        target: &[u8],
        parent: &Path,
        file_name: &OsStr,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let escapes = || ArchiveError::LinkEscapes {
            path: name.to_string(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        // The target is another archive path: the same rules as entry names apply.
        let target_rel = clean_entry_path(target, name).map_err(|_| escapes())?;
        let Some(target_name) = target_rel.file_name() else {
            return Err(escapes());
        };
        let missing = || {
            ArchiveError::io(
                name,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "hardlink target {:?} does not exist",
                        String::from_utf8_lossy(target)
                    ),
                ),
            )
        };
        let source_dir = self
            .lookup_dir(target_rel.parent().unwrap_or(Path::new("")), name)?
            .ok_or_else(missing)?;
        let dir = self.parent_dir(parent, name)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never what it points to.
        let link = |dir: &File| {
            nix::unistd::linkat(
                Some(source_dir.as_raw_fd()),
                target_name,
                Some(dir.as_raw_fd()),
                file_name,
                AtFlags::empty(),
            )
        };
        match link(&dir) {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => Err(missing()),
            Err(Errno::EEXIST) => {
                let existing = sys::lstatat(&dir, file_name);
                let source = sys::lstatat(&source_dir, target_name);
                if let (Ok(a), Ok(b)) = (existing, source) {
                    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                        return Ok(()); // already the same file
                    }
                }
                self.make_room(&dir, file_name, name)?;
                match link(&dir) {
                    Ok(()) => Ok(()),
                    Err(Errno::ENOENT) => Err(missing()),
                    Err(e) => Err(ArchiveError::io(name, e)),
                }
            }
            Err(e) => Err(ArchiveError::io(name, e)),
        }
    }

    fn device(
        &mut self,
        kind: Kind,
        parent: &Path,
        file_name: &OsStr,
        meta: &Header,
        name: &str,
    ) -> Result<(), ArchiveError> {
        if !self.opts.allow_devices {
            return Err(ArchiveError::DeviceNode {
                path: name.to_string(),
            });
        }
        let dev = nix::sys::stat::makedev(u64::from(meta.dev_major), u64::from(meta.dev_minor));
        let (sflag, dev) = match kind {
            Kind::Char => (SFlag::S_IFCHR, dev),
            Kind::Block => (SFlag::S_IFBLK, dev),
            _ => (SFlag::S_IFIFO, 0),
        };
        let dir = self.parent_dir(parent, name)?;
        let mknod = |dir: &File| {
            nix::sys::stat::mknodat(
                Some(dir.as_raw_fd()),
                file_name,
                sflag,
                Mode::from_bits_truncate(0o600),
                dev,
            )
        };
        match mknod(&dir) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                self.make_room(&dir, file_name, name)?;
                mknod(&dir).map_err(|e| ArchiveError::io(name, e))?;
            }
            Err(e) => return Err(ArchiveError::io(name, e)),
        }
        // The mode: mknodat applied the umask and there is no fchmod for a node we must not open
        // (opening a device has side effects). chmod through /proc/self/fd of an O_PATH
        // descriptor acts on exactly the inode that descriptor holds; check it is still our node.
        let node = sys::openat(
            &dir,
            file_name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| ArchiveError::io(name, e))?;
        let st = nix::sys::stat::fstat(node.as_raw_fd()).map_err(|e| ArchiveError::io(name, e))?;
        if sys::kind(&st) != sflag {
            return Err(ArchiveError::io(
                name,
                io::Error::other("device node was replaced while unpacking"),
            ));
        }
        nix::unistd::fchownat(
            Some(node.as_raw_fd()),
            "",
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| ArchiveError::io(name, e))?;
        nix::sys::stat::fchmodat(
            None,
            &sys::fd_path(&node),
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| ArchiveError::io(name, e))?;
        set_path_xattrs(&sys::proc_path(&dir, file_name), meta, name)?;
        set_times_at(&dir, file_name, meta, name)
    }

    /// Owner, xattrs and times of a symlink, all without following it.
    fn node_meta(
        &mut self,
        dir: &File,
        file_name: &OsStr,
        meta: &Header,
        name: &str,
    ) -> Result<(), ArchiveError> {
        sys::lchownat(dir, file_name, meta.uid, meta.gid).map_err(|e| ArchiveError::io(name, e))?;
        set_path_xattrs(&sys::proc_path(dir, file_name), meta, name)?;
        set_times_at(dir, file_name, meta, name)
    }

    /// Handles a `.wh.` entry named `file_name` in directory `parent`.
    fn whiteout(
        &mut self,
        header: &Header,
        parent: &Path,
        file_name: &OsStr,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let bytes = file_name.as_bytes();
        if bytes == WHITEOUT_OPAQUE {
            return self.opaque(parent, name);
        }
        if bytes.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        let hidden = &bytes[WHITEOUT_PREFIX.len()..];
        // `.wh..` and `.wh...` would name the directory itself or its parent.
        match hidden {
            b"" => return Err(ArchiveError::corrupt(name, "whiteout of an empty name")),
            b"." | b".." => {
                return Err(ArchiveError::PathEscapes {
                    path: name.to_string(),
                })
            }
            _ => {}
        }
        let hidden = OsStr::from_bytes(hidden);
        let target = parent.join(hidden);
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                // A whiteout only hides lower layers; an entry of this same layer stays (OCI).
                if self.touched.contains(&target) {
                    return Ok(());
                }
                let dir = self.parent_dir(parent, name)?;
                let mknod = |dir: &File| {
                    nix::sys::stat::mknodat(
                        Some(dir.as_raw_fd()),
                        hidden,
                        SFlag::S_IFCHR,
                        Mode::empty(),
                        0,
                    )
                };
                match mknod(&dir) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        self.make_room(&dir, hidden, name)?;
                        mknod(&dir).map_err(|e| ArchiveError::io(name, e))?;
                    }
                    Err(e) => return Err(ArchiveError::io(name, e)),
                }
                sys::lchownat(&dir, hidden, header.uid, header.gid)
                    .map_err(|e| ArchiveError::io(name, e))?;
                Ok(())
            }
            WhiteoutMode::Apply => {
                let Some(dir) = self.lookup_dir(parent, name)? else {
                    return Ok(()); // nothing there to delete
                };
                if !self.touched.contains(&target) {
                    return self.make_room(&dir, hidden, name);
                }
                // The path was (re)created by this layer: only what earlier layers left below it
                // goes.
                match sys::lstatat(&dir, hidden) {
                    Ok(st) if sys::kind(&st) == SFlag::S_IFDIR => {
                        let sub = sys::open_subdir(&dir, hidden)
                            .map_err(|e| ArchiveError::io(name, e))?;
                        self.clear_lower(&sub, &target, name)
                    }
                    _ => Ok(()),
                }
            }
            WhiteoutMode::Literal => Ok(()),
        }
    }

    /// Handles a `.wh..wh..opq` entry in directory `parent`.
    fn opaque(&mut self, parent: &Path, name: &str) -> Result<(), ArchiveError> {
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let dir = self.parent_dir(parent, name)?;
                dir.set_xattr(OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| ArchiveError::io(name, e))
            }
            WhiteoutMode::Apply => match self.lookup_dir(parent, name)? {
                Some(dir) => self.clear_lower(&dir, parent, name),
                None => Ok(()),
            },
            WhiteoutMode::Literal => Ok(()),
        }
    }

    /// Removes everything below `dir` (at `rel`) that this archive did not create.
    fn clear_lower(&mut self, dir: &File, rel: &Path, name: &str) -> Result<(), ArchiveError> {
        for child in sys::list_names(dir).map_err(|e| ArchiveError::io(name, e))? {
            let child_rel = rel.join(&child);
            if !self.touched.contains(&child_rel) {
                self.make_room(dir, &child, name)?;
                continue;
            }
            // Created (or merged into) by this layer: keep it, but clear what is older below it.
            match sys::lstatat(dir, child.as_os_str()) {
                Ok(st) if sys::kind(&st) == SFlag::S_IFDIR => {
                    let sub =
                        sys::open_subdir(dir, &child).map_err(|e| ArchiveError::io(name, e))?;
                    self.clear_lower(&sub, &child_rel, name)?;
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(ArchiveError::io(name, e)),
            }
        }
        Ok(())
    }

    /// Sets directory mtimes, deepest-last-written first, now that their contents are complete.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut done = HashSet::new();
        // Reverse archive order: children before parents, and of two entries for the same
        // directory the later one wins.
        for (rel, mtime) in self.dir_times.iter().rev() {
            if !done.insert(rel) {
                continue;
            }
            // O_NOFOLLOW: if a later entry replaced the directory with a symlink, leave it.
            match sys::open_dir_in_root(&self.root, &self.in_base(rel), OFlag::O_NOFOLLOW) {
                Ok(dir) => nix::sys::stat::futimens(dir.as_raw_fd(), mtime, mtime)
                    .map_err(|e| ArchiveError::io(rel.display().to_string(), e))?,
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(e) => return Err(ArchiveError::io(rel.display().to_string(), e)),
            }
        }
        Ok(())
    }
}

/// Validates an archive path and returns it relative, with `.` and empty components dropped.
/// Absolute paths and any `..` component are refused outright: no legitimate layer needs them.
fn clean_entry_path(raw: &[u8], name: &str) -> Result<PathBuf, ArchiveError> {
    if raw.first() == Some(&b'/') {
        return Err(ArchiveError::PathEscapes {
            path: name.to_string(),
        });
    }
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(ArchiveError::PathEscapes {
                    path: name.to_string(),
                })
            }
            part => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok(out)
}

/// Whether a symlink target climbs above the root when read from a directory `depth` levels below
/// it. Absolute targets never do: in a container they are relative to its root.
fn symlink_escapes(depth: usize, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = depth;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

/// Xattrs an archive must not set: overlayfs reads `trusted.overlay.*` (and `user.overlay.*` when
/// mounted with `userxattr`) from its layers as instructions (opaque, redirect, metacopy), so a
/// layer could redirect lookups to elsewhere. Opaque directories come from `.wh..wh..opq` only.
pub(crate) fn is_private_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

/// Copies an entry's data into `file`, returning the bytes written. Read errors are the archive's
/// fault, write errors the destination's.
fn copy_data<R: Read>(
    entry: &mut R,
    file: &mut File,
    buf: &mut [u8],
    name: &str,
) -> Result<u64, ArchiveError> {
    let mut total = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ArchiveError::Truncated {
                    path: name.to_string(),
                })
            }
            Err(e)
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::InvalidInput
                    || e.kind() == io::ErrorKind::Other =>
            {
                return Err(ArchiveError::corrupt(name, e))
            }
            Err(e) => return Err(ArchiveError::io("<archive stream>", e)),
        };
        file.write_all(&buf[..n])
            .map_err(|e| ArchiveError::io(name, e))?;
        total += n as u64;
    }
}

/// Owner, then mode (a chown clears setuid bits), then xattrs (a chown clears
/// `security.capability`) of an open file or directory.
fn apply_fd_meta(file: &File, meta: &Header, name: &str) -> Result<(), ArchiveError> {
    nix::unistd::fchown(
        file.as_raw_fd(),
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| ArchiveError::io(name, e))?;
    nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(meta.mode))
        .map_err(|e| ArchiveError::io(name, e))?;
    for (key, value) in meta.xattrs.iter().filter(|(k, _)| !is_private_xattr(k)) {
        if let Err(e) = file.set_xattr(key, value) {
            check_xattr_error(key, e, name)?;
        }
    }
    Ok(())
}

/// Sets xattrs on `path` without following its last component.
fn set_path_xattrs(path: &Path, meta: &Header, name: &str) -> Result<(), ArchiveError> {
    for (key, value) in meta.xattrs.iter().filter(|(k, _)| !is_private_xattr(k)) {
        if let Err(e) = xattr::set(path, key, value) {
            check_xattr_error(key, e, name)?;
        }
    }
    Ok(())
}

/// A `security.*` xattr the filesystem does not support (no LSM, e.g. `security.selinux`) is
/// dropped, as Docker does; any other failure is an error.
fn check_xattr_error(key: &str, e: io::Error, name: &str) -> Result<(), ArchiveError> {
    if key.starts_with("security.") && e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        Ok(())
    } else {
        Err(ArchiveError::io(
            name,
            io::Error::new(e.kind(), format!("setting xattr {key}: {e}")),
        ))
    }
}

/// Sets atime and mtime of `file_name` in `dir` without following it.
fn set_times_at(
    dir: &File,
    file_name: &OsStr,
    meta: &Header,
    name: &str,
) -> Result<(), ArchiveError> {
    nix::sys::stat::utimensat(
        Some(dir.as_raw_fd()),
        file_name,
        &meta.mtime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| ArchiveError::io(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_cleaned_or_refused() {
        let ok = |raw: &str| clean_entry_path(raw.as_bytes(), raw).unwrap();
        assert_eq!(ok("./a/b/"), PathBuf::from("a/b"));
        assert_eq!(ok("a//./b"), PathBuf::from("a/b"));
        assert_eq!(ok("./"), PathBuf::new());
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/..", "//x"] {
            assert!(
                matches!(
                    clean_entry_path(bad.as_bytes(), bad),
                    Err(ArchiveError::PathEscapes { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn symlink_escape_is_judged_from_the_link_location() {
        assert!(!symlink_escapes(0, b"/etc/passwd"));
        assert!(!symlink_escapes(1, b"../x"));
        assert!(symlink_escapes(0, b"../x"));
        assert!(symlink_escapes(1, b"../../x"));
        assert!(!symlink_escapes(2, b"a/../../b"));
        assert!(symlink_escapes(1, b"a/../../../b"));
        assert!(!symlink_escapes(0, b"./a/./b"));
    }
}
