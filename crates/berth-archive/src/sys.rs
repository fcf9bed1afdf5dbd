//! Thin helpers over the `*at()` system calls. Directories are held as [`File`]s so that every
//! operation is relative to a descriptor that was resolved safely once, and the last component of
//! a path is never followed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Flags for opening a directory we are going to read, modify or use as a base for `*at()` calls.
/// Not `O_PATH`: `fsetxattr`, `fchown` and `getdents` need a real open file.
pub(crate) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// How many times an `openat2` that failed with `EAGAIN` is retried. The kernel returns `EAGAIN`
/// for `RESOLVE_IN_ROOT` when a concurrent rename could have made a `..` step unsafe; a retry is
/// the documented answer.
const EAGAIN_RETRIES: usize = 32;

/// Takes ownership of a descriptor just returned by a successful open call.
fn file_from_raw(fd: RawFd) -> File {
    // SAFETY: `fd` was just returned by a successful open/openat/openat2 call in this module, so it
    // is a valid descriptor that nothing else owns; the File becomes its only owner.
    unsafe { File::from_raw_fd(fd) }
}

/// Opens `path` (a host path chosen by the caller, followed normally) as a directory.
pub(crate) fn open_dir(path: &Path) -> nix::Result<File> {
    nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map(file_from_raw)
}

/// `openat(dir, name, flags, mode)`.
pub(crate) fn openat<P: ?Sized + nix::NixPath>(
    dir: &File,
    name: &P,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<File> {
    nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_CLOEXEC, mode)
        .map(file_from_raw)
}

/// Opens the directory `name` inside `dir` without following a symlink there.
pub(crate) fn open_subdir(dir: &File, name: &OsStr) -> nix::Result<File> {
    openat(dir, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
}

/// `openat2(dir, path, flags, resolve)`, retried on `EAGAIN`. An empty path means `dir` itself.
pub(crate) fn openat2(
    dir: &File,
    path: &Path,
    flags: OFlag,
    resolve: ResolveFlag,
) -> nix::Result<File> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve);
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir.as_raw_fd(), path, how) {
            Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            Err(Errno::EINTR) => {}
            other => return other.map(file_from_raw),
        }
    }
}

/// Opens directory `path` inside the tree rooted at `root`, resolving it as if `root` were `/`:
/// symlinks (absolute or relative) and `..` are followed but clamped at `root`, and magic links
/// (`/proc/self/fd/…`) are refused. `extra` can add `O_NOFOLLOW` for the last component.
pub(crate) fn open_dir_in_root(root: &File, path: &Path, extra: OFlag) -> nix::Result<File> {
    openat2(
        root,
        path,
        DIR_FLAGS | extra,
        ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn lstatat<P: ?Sized + nix::NixPath>(dir: &File, name: &P) -> nix::Result<FileStat> {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: owns the entry itself, never a link's target.
pub(crate) fn lchownat(dir: &File, name: &std::ffi::OsStr, uid: u32, gid: u32) -> nix::Result<()> {
    nix::unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// The file type bits of a stat result.
pub(crate) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Whether a stat result is an overlayfs whiteout: a character device with device number 0/0.
pub(crate) fn is_whiteout(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// The names in directory `dir` (without `.` and `..`), sorted bytewise so that every walk is
/// deterministic.
pub(crate) fn list_names(dir: &File) -> nix::Result<Vec<OsString>> {
    // A fresh open file description of the same directory: iterating must not disturb (or be
    // disturbed by) the offset of `dir`, which may be listed again.
    let mut listing = nix::dir::Dir::openat(Some(dir.as_raw_fd()), ".", DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Removes `name` inside `dir`, whatever it is (a whole directory tree included), never following
/// a symlink. A missing `name` is not an error.
pub(crate) fn remove_all_at(dir: &File, name: &OsStr) -> nix::Result<()> {
    match nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        // Linux reports EISDIR for unlink on a directory.
        Err(Errno::EISDIR) => {
            let sub = open_subdir(dir, name)?;
            for child in list_names(&sub)? {
                remove_all_at(&sub, &child)?;
            }
            drop(sub);
            match nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The `/proc` path of `name` inside the directory open as `dir`. Used for the few calls that have
/// no descriptor-relative, no-follow form (`lsetxattr`, `llistxattr`): the kernel follows the
/// magic link of our own descriptor and then does not follow `name`.
pub(crate) fn proc_path(dir: &File, name: &OsStr) -> PathBuf {
    let mut path = fd_path(dir);
    path.push(name);
    path
}

/// `/proc/self/fd/N` of an open file: reopening or `chmod`ing it acts on exactly that inode.
pub(crate) fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Cleans a path lexically with chroot semantics: a leading `/` and `.` components are dropped,
/// and `..` removes the previous component but never climbs above the root. The result is a
/// relative path of normal components (empty for the root itself). Docker cleans `cp` paths the
/// same way before resolving them in the container.
pub(crate) fn clean_in_root(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}
