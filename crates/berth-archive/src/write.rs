//! Writing directory trees as tar streams: plain trees (export, `cp` out) and overlayfs upper dirs
//! as OCI layers (commit).
//!
//! The walk is descriptor-based (`openat` with `O_NOFOLLOW` from the parent's descriptor), so a
//! running container that swaps a directory for a symlink mid-walk cannot make us archive a host
//! directory. Children are visited in bytewise name order, so the same tree always gives the same
//! bytes.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
use xattr::FileExt;

use crate::error::ArchiveError;
use crate::sys;
use crate::unpack::{is_private_xattr, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};

/// Size of the output buffer: the tar crate writes every 512-byte header separately.
const OUTPUT_BUFFER: usize = 256 * 1024;

/// Writes the directory tree `dir` as a tar: entry names are relative to `dir` (the directory
/// itself gets no entry), with mode (setuid bits included), uid/gid, mtime, symlinks, hardlinks (an
/// inode met a second time becomes a link entry), device nodes, fifos and xattrs (as PAX
/// `SCHILY.xattr.*` records). Sockets are skipped. Entries come in bytewise name order per
/// directory, so the output is deterministic for the same tree.
pub fn write_tree<W: Write>(dir: &Path, out: W) -> Result<W, ArchiveError> {
    let root = sys::open_dir(dir).map_err(|e| ArchiveError::io(dir.display().to_string(), e))?;
    let mut writer = TreeWriter::new(out, false);
    writer.contents(&root, Path::new(""))?;
    writer.finish()
}

/// Writes the path `path` (file, dir or symlink) resolved inside `root` as if `root` were `/`
/// (never escaping), as a tar whose top entry is named by the path's basename, like
/// `docker cp ctr:/etc/hosts -`. A symlink at `path` itself is archived as a symlink, not followed;
/// symlinks on the way to it are followed within `root`. `path` is cleaned lexically first (`..`
/// never climbs above `/`). For `/` itself the root's contents are written at the top level.
pub fn write_path_in_root<W: Write>(root: &Path, path: &Path, out: W) -> Result<W, ArchiveError> {
    write_path_in_root_as(root, path, None, out)
}

/// [`write_path_in_root`] with the top entry named `top_name` instead of the path's basename (`cp`
/// to a destination that does not exist yet takes the destination's name). `Some(".")` writes a
/// directory's contents at the top level (`cp ctr:/dir/. dest`).
pub fn write_path_in_root_as<W: Write>(
    root: &Path,
    path: &Path,
    top_name: Option<&Path>,
    out: W,
) -> Result<W, ArchiveError> {
    let root_dir =
        sys::open_dir(root).map_err(|e| ArchiveError::io(root.display().to_string(), e))?;
    let clean = sys::clean_in_root(path);
    let mut writer = TreeWriter::new(out, false);
    match clean.file_name() {
        None => writer.contents(&root_dir, Path::new(""))?,
        Some(name) => {
            let not_found = |e: Errno| ArchiveError::io(path.display().to_string(), e);
            let parent = clean.parent().unwrap_or(Path::new(""));
            let dir =
                sys::open_dir_in_root(&root_dir, parent, OFlag::empty()).map_err(not_found)?;
            sys::lstatat(&dir, name).map_err(not_found)?;
            match top_name {
                Some(top) if top == Path::new(".") => {
                    let sub = sys::open_dir_in_root(&root_dir, &clean, OFlag::empty())
                        .map_err(not_found)?;
                    writer.contents(&sub, Path::new(""))?
                }
                Some(top) => writer.child(&dir, name, top)?,
                None => writer.child(&dir, name, Path::new(name))?,
            }
        }
    }
    writer.finish()
}

/// Writes an overlayfs upper dir as an OCI layer tar: 0/0 character devices (overlayfs whiteouts)
/// become `.wh.name` entries, directories with `trusted.overlay.opaque=y` get a `.wh..wh..opq`
/// entry right after their own, and overlayfs' private xattrs are left out. Deterministic order.
///
/// The upper dir must come from a mount without `redirect_dir` and `metacopy` (the kernel
/// defaults, and what Docker uses): a renamed directory or a metadata-only copy-up is recorded in
/// xattrs that have no representation in an OCI layer.
pub fn write_layer_from_upper<W: Write>(upper: &Path, out: W) -> Result<W, ArchiveError> {
    write_layer_from_upper_skipping(upper, &[], out)
}

/// Removes overlayfs's bookkeeping xattrs (`trusted.overlay.*`, `user.overlay.*`: origin, impure
/// and the like, which point into the lower dirs of the mount that wrote them) from every entry
/// under `dir`, keeping `opaque`: an overlay upper dir made fit to serve as a layer (a lower dir),
/// exactly as unpacking the layer written from it would be. Symlinks are not followed.
pub fn remove_overlay_bookkeeping(dir: &Path) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for name in xattr::list(&path)? {
            let text = name.to_string_lossy();
            if is_private_xattr(&text) && text != OVERLAY_OPAQUE_XATTR {
                xattr::remove(&path, &name)?;
            }
        }
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// [`write_layer_from_upper`], leaving out the empty regular files at `skip` (archive names such as
/// `etc/hosts`): the mount points a runtime creates for its bind-mounted files are not the
/// container's changes (`commit`).
pub fn write_layer_from_upper_skipping<W: Write>(
    upper: &Path,
    skip: &[&Path],
    out: W,
) -> Result<W, ArchiveError> {
    let root =
        sys::open_dir(upper).map_err(|e| ArchiveError::io(upper.display().to_string(), e))?;
    let mut writer = TreeWriter::new(out, true);
    writer.skip = skip.iter().map(|p| p.to_path_buf()).collect();
    writer.contents(&root, Path::new(""))?;
    writer.finish()
}

/// One archive being written.
struct TreeWriter<W: Write> {
    builder: tar::Builder<BufWriter<W>>,
    /// First archive name of every multiply-linked inode seen, by (device, inode).
    links: HashMap<(libc::dev_t, libc::ino_t), PathBuf>,
    /// Upper-dir mode: translate overlayfs whiteouts and opaque directories.
    layer: bool,
    /// Archive names left out when they are empty regular files.
    skip: Vec<PathBuf>,
}

impl<W: Write> TreeWriter<W> {
    fn new(out: W, layer: bool) -> Self {
        TreeWriter {
            builder: tar::Builder::new(BufWriter::with_capacity(OUTPUT_BUFFER, out)),
            links: HashMap::new(),
            layer,
            skip: Vec::new(),
        }
    }

    /// Writes the end-of-archive marker and hands back the output.
    fn finish(self) -> Result<W, ArchiveError> {
        let buffered = self
            .builder
            .into_inner()
            .map_err(|e| ArchiveError::io("<archive output>", e))?;
        buffered
            .into_inner()
            .map_err(|e| ArchiveError::io("<archive output>", e.into_error()))
    }

    /// Writes every child of `dir`, whose archive name is `prefix`.
    fn contents(&mut self, dir: &File, prefix: &Path) -> Result<(), ArchiveError> {
        let names = sys::list_names(dir).map_err(|e| err(prefix, e))?;
        for name in names {
            let arc = prefix.join(&name);
            self.child(dir, &name, &arc)?;
        }
        Ok(())
    }

    /// Writes `name` inside `dir` under the archive name `arc` (and, for a directory, everything
    /// below it).
    fn child(&mut self, dir: &File, name: &OsStr, arc: &Path) -> Result<(), ArchiveError> {
        let st = match sys::lstatat(dir, name) {
            Ok(st) => st,
            // Removed since the directory was listed (a running container): like GNU tar, skip.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(err(arc, e)),
        };
        if st.st_size == 0 && sys::kind(&st) == SFlag::S_IFREG && self.skip.iter().any(|p| p == arc)
        {
            return Ok(());
        }
        if self.layer && sys::is_whiteout(&st) {
            let mut whiteout = OsString::from(OsStr::from_bytes(WHITEOUT_PREFIX));
            whiteout.push(name);
            let wh_arc = arc.with_file_name(whiteout);
            return self.marker(&st, &wh_arc);
        }
        match sys::kind(&st) {
            SFlag::S_IFDIR => self.directory(dir, name, arc),
            SFlag::S_IFREG => self.regular(dir, name, arc),
            SFlag::S_IFLNK => self.symlink(dir, name, arc, &st),
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => self.device(dir, name, arc, &st),
            // Sockets cannot be archived; whoever listens recreates them.
            _ => Ok(()),
        }
    }

    /// If the inode of `st` was already archived, writes a hardlink entry to it and returns true.
    fn hardlink(&mut self, st: &FileStat, arc: &Path) -> Result<bool, ArchiveError> {
        if st.st_nlink < 2 {
            return Ok(false);
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(first) = self.links.get(&key) {
            let mut header = header(st, tar::EntryType::Link);
            self.builder
                .append_link(&mut header, arc, first)
                .map_err(|e| err(arc, e))?;
            return Ok(true);
        }
        self.links.insert(key, arc.to_path_buf());
        Ok(false)
    }

    fn directory(&mut self, dir: &File, name: &OsStr, arc: &Path) -> Result<(), ArchiveError> {
        let sub = match sys::open_subdir(dir, name) {
            Ok(sub) => sub,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(err(arc, e)),
        };
        // The descriptor is what gets walked, so its stat is the one archived.
        let st = nix::sys::stat::fstat(sub.as_raw_fd()).map_err(|e| err(arc, e))?;
        let xattrs = fd_xattrs(&sub).map_err(|e| err(arc, e))?;
        self.pax(&xattrs, arc)?;
        let mut header = header(&st, tar::EntryType::Directory);
        // Directories are named with a trailing slash, as tar and Docker do.
        let mut dir_arc = arc.as_os_str().to_os_string();
        dir_arc.push("/");
        self.builder
            .append_data(&mut header, Path::new(&dir_arc), io::empty())
            .map_err(|e| err(arc, e))?;
        if self.layer
            && sub
                .get_xattr(OVERLAY_OPAQUE_XATTR)
                .ok()
                .flatten()
                .as_deref()
                == Some(b"y")
        {
            self.marker(&st, &arc.join(OsStr::from_bytes(WHITEOUT_OPAQUE)))?;
        }
        self.contents(&sub, arc)
    }

    fn regular(&mut self, dir: &File, name: &OsStr, arc: &Path) -> Result<(), ArchiveError> {
        // O_PATH first: if the file was swapped for a device node or fifo since the listing,
        // opening it for reading could block or have side effects. Only a confirmed regular file
        // is reopened (through its /proc/self/fd link, which reopens exactly that inode).
        let node = match sys::openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(node) => node,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(err(arc, e)),
        };
        let st = nix::sys::stat::fstat(node.as_raw_fd()).map_err(|e| err(arc, e))?;
        if sys::kind(&st) != SFlag::S_IFREG {
            return Err(err(
                arc,
                io::Error::other("changed type while being archived"),
            ));
        }
        if self.hardlink(&st, arc)? {
            return Ok(());
        }
        let file = File::open(sys::fd_path(&node)).map_err(|e| err(arc, e))?;
        let xattrs = fd_xattrs(&file).map_err(|e| err(arc, e))?;
        self.pax(&xattrs, arc)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mut header = header(&st, tar::EntryType::Regular);
        header.set_size(size);
        self.builder
            .append_data(&mut header, arc, ExactSize::new(file, size))
            .map_err(|e| err(arc, e))
    }

    fn symlink(
        &mut self,
        dir: &File,
        name: &OsStr,
        arc: &Path,
        st: &FileStat,
    ) -> Result<(), ArchiveError> {
        if self.hardlink(st, arc)? {
            return Ok(());
        }
        let target =
            nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name).map_err(|e| err(arc, e))?;
        let xattrs = path_xattrs(&sys::proc_path(dir, name)).map_err(|e| err(arc, e))?;
        self.pax(&xattrs, arc)?;
        let mut header = header(st, tar::EntryType::Symlink);
        self.builder
            .append_link(&mut header, arc, Path::new(&target))
            .map_err(|e| err(arc, e))
    }

    fn device(
        &mut self,
        dir: &File,
        name: &OsStr,
        arc: &Path,
        st: &FileStat,
    ) -> Result<(), ArchiveError> {
        if self.hardlink(st, arc)? {
            return Ok(());
        }
        let kind = match sys::kind(st) {
            SFlag::S_IFCHR => tar::EntryType::Char,
            SFlag::S_IFBLK => tar::EntryType::Block,
            _ => tar::EntryType::Fifo,
        };
        let mut header = header(st, kind);
        if kind != tar::EntryType::Fifo {
            let too_big = |_| err(arc, io::Error::other("device number too large for tar"));
            let major = u32::try_from(nix::sys::stat::major(st.st_rdev)).map_err(too_big)?;
            let minor = u32::try_from(nix::sys::stat::minor(st.st_rdev)).map_err(too_big)?;
            header.set_device_major(major).map_err(|e| err(arc, e))?;
            header.set_device_minor(minor).map_err(|e| err(arc, e))?;
        }
        let xattrs = path_xattrs(&sys::proc_path(dir, name)).map_err(|e| err(arc, e))?;
        self.pax(&xattrs, arc)?;
        self.builder
            .append_data(&mut header, arc, io::empty())
            .map_err(|e| err(arc, e))
    }

    /// Writes an empty marker entry (whiteout or opaque marker) with owner and mtime of `st`.
    fn marker(&mut self, st: &FileStat, arc: &Path) -> Result<(), ArchiveError> {
        let mut header = header(st, tar::EntryType::Regular);
        header.set_mode(0);
        self.builder
            .append_data(&mut header, arc, io::empty())
            .map_err(|e| err(arc, e))
    }

    /// Writes a PAX extended header carrying `xattrs` for the entry that follows.
    fn pax(&mut self, xattrs: &[(String, Vec<u8>)], arc: &Path) -> Result<(), ArchiveError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (key, value) in xattrs {
            pax_record(&mut data, &format!("SCHILY.xattr.{key}"), value);
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, "PaxHeaders/entry", data.as_slice())
            .map_err(|e| err(arc, e))
    }
}

/// An [`ArchiveError::Io`] naming archive path `arc`.
fn err(arc: &Path, e: impl Into<io::Error>) -> ArchiveError {
    ArchiveError::io(arc.display().to_string(), e)
}

/// A GNU header with the common metadata of `st`.
fn header(st: &FileStat, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(st.st_mode & 0o7777);
    header.set_uid(u64::from(st.st_uid));
    header.set_gid(u64::from(st.st_gid));
    // Times before 1970 cannot be stored in the unsigned header field.
    header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record
/// including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The xattrs of an open file worth archiving, sorted by name for determinism.
fn fd_xattrs(file: &File) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match file.list_xattr() {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    collect_xattrs(names, |name| file.get_xattr(name))
}

/// The xattrs of `path` (not following its last component) worth archiving, sorted by name.
fn path_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    collect_xattrs(names, |name| xattr::get(path, name))
}

fn collect_xattrs(
    names: xattr::XAttrs,
    get: impl Fn(&OsStr) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in names {
        // PAX keys are UTF-8; overlayfs' own attributes describe the upper dir, not the content.
        let Some(key) = name.to_str() else { continue };
        if is_private_xattr(key) {
            continue;
        }
        if let Some(value) = get(&name)? {
            out.push((key.to_string(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Yields exactly `size` bytes of a file whose header was already written: a file that grows
/// while being archived is cut, one that shrinks is padded with zeros, so the archive stays
/// well-formed either way.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> ExactSize<R> {
    fn new(inner: R, size: u64) -> Self {
        ExactSize {
            inner,
            remaining: size,
        }
    }
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, "SCHILY.xattr.user.a", b"1");
        assert_eq!(out, b"25 SCHILY.xattr.user.a=1\n");
        assert_eq!(out.len(), 25);
        // Crossing a digit boundary: body 98 → 98 + 2 = 100 needs three digits → 101.
        let mut out = Vec::new();
        pax_record(&mut out, "k", &[b'x'; 94]);
        assert_eq!(out.len(), 101);
        assert!(out.starts_with(b"101 k="));
        // What we write, our reader reads back, binary values included.
        let mut out = Vec::new();
        pax_record(&mut out, "SCHILY.xattr.a", b"\n=\0\n");
        pax_record(&mut out, "path", &[b'p'; 300]);
        let records = crate::reader::parse_pax(&out).unwrap();
        assert_eq!(records[0].1, b"\n=\0\n");
        assert_eq!(records[1].1, vec![b'p'; 300]);
    }

    #[test]
    fn exact_size_pads_and_cuts() {
        let mut padded = Vec::new();
        ExactSize::new(&b"ab"[..], 4)
            .read_to_end(&mut padded)
            .unwrap();
        assert_eq!(padded, b"ab\0\0");
        let mut cut = Vec::new();
        ExactSize::new(&b"abcdef"[..], 3)
            .read_to_end(&mut cut)
            .unwrap();
        assert_eq!(cut, b"abc");
    }
}
