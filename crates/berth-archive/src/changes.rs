//! `docker diff`: the changes an overlay upper dir holds relative to its lower dirs.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::sys::stat::SFlag;
use xattr::FileExt;

use crate::error::ArchiveError;
use crate::sys;
use crate::unpack::OVERLAY_OPAQUE_XATTR;

/// One change of a container filesystem, as `docker diff` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    /// What happened to the path.
    pub kind: ChangeKind,
    /// Absolute path inside the container, e.g. `/etc/hosts`.
    pub path: PathBuf,
}

/// The kind of a [`Change`]; displays as `A`, `C` or `D` like `docker diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The path did not exist in the image (`A`).
    Added,
    /// The path existed in the image and was changed (`C`).
    Modified,
    /// The path existed in the image and was deleted (`D`).
    Deleted,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Added => "A",
            ChangeKind::Modified => "C",
            ChangeKind::Deleted => "D",
        })
    }
}

impl fmt::Display for Change {
    /// `C /etc/hosts`, the `docker diff` line format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.path.display())
    }
}

/// Lists the changes an overlay upper dir holds relative to its lower dirs (`lowers`: top-most
/// first, overlayfs order), sorted by path.
///
/// A path present in `upper` is Modified if a lower has it (and it is not whited out there), else
/// Added; an overlayfs whiteout is Deleted. Since overlayfs copies up every parent of a changed
/// path, parents that exist in the image are reported as Modified, as Docker does. An opaque
/// directory (recreated after deletion) also reports as Deleted the entries the image had in it
/// that are gone now. The lower dirs are read without following any symlink in them.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, ArchiveError> {
    let upper_dir =
        sys::open_dir(upper).map_err(|e| ArchiveError::io(upper.display().to_string(), e))?;
    let lowers = lowers
        .iter()
        .map(|l| sys::open_dir(l).map_err(|e| ArchiveError::io(l.display().to_string(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    walk(&upper_dir, Path::new(""), &lowers, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn err(rel: &Path, e: Errno) -> ArchiveError {
    ArchiveError::io(Path::new("/").join(rel).display().to_string(), e)
}

fn walk(
    dir: &File,
    rel: &Path,
    lowers: &[File],
    out: &mut Vec<Change>,
) -> Result<(), ArchiveError> {
    for name in sys::list_names(dir).map_err(|e| err(rel, e))? {
        let child = rel.join(&name);
        let st = match sys::lstatat(dir, name.as_os_str()) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue, // removed meanwhile (running container)
            Err(e) => return Err(err(&child, e)),
        };
        let path = Path::new("/").join(&child);
        if sys::is_whiteout(&st) {
            out.push(Change {
                kind: ChangeKind::Deleted,
                path,
            });
            continue;
        }
        let in_lower = in_lowers(lowers, &child)?;
        out.push(Change {
            kind: if in_lower {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            },
            path,
        });
        if sys::kind(&st) != SFlag::S_IFDIR {
            continue;
        }
        let sub = match sys::open_subdir(dir, &name) {
            Ok(sub) => sub,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(err(&child, e)),
        };
        if in_lower && is_opaque(&sub) {
            for gone in lower_children(lowers, &child)? {
                if let Err(Errno::ENOENT) = sys::lstatat(&sub, gone.as_os_str()) {
                    out.push(Change {
                        kind: ChangeKind::Deleted,
                        path: Path::new("/").join(&child).join(&gone),
                    });
                }
            }
        }
        walk(&sub, &child, lowers, out)?;
    }
    Ok(())
}

/// Resolution inside a lower dir: beneath it and through no symlink at all. Overlayfs does not
/// merge through a non-directory, so a path behind a symlink in a lower is not "in" that lower.
const LOWER_RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// Whether the top-most lower that has `rel` has it as something other than a whiteout.
fn in_lowers(lowers: &[File], rel: &Path) -> Result<bool, ArchiveError> {
    for lower in lowers {
        match sys::openat2(lower, rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, LOWER_RESOLVE) {
            Ok(node) => {
                let st = nix::sys::stat::fstat(node.as_raw_fd()).map_err(|e| err(rel, e))?;
                return Ok(!sys::is_whiteout(&st));
            }
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
            Err(e) => return Err(err(rel, e)),
        }
    }
    Ok(false)
}

/// The names visible in directory `rel` of the merged lower dirs: union over the lowers from the
/// top, minus whiteouts, stopping at an opaque directory or a non-directory.
fn lower_children(lowers: &[File], rel: &Path) -> Result<BTreeSet<OsString>, ArchiveError> {
    let mut hidden = HashSet::new();
    let mut visible = BTreeSet::new();
    for lower in lowers {
        let dir = match sys::openat2(
            lower,
            rel,
            sys::DIR_FLAGS | OFlag::O_NOFOLLOW,
            LOWER_RESOLVE,
        ) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => continue,
            // A whiteout, file or symlink here shadows everything below it.
            Err(Errno::ENOTDIR | Errno::ELOOP) => break,
            Err(e) => return Err(err(rel, e)),
        };
        for name in sys::list_names(&dir).map_err(|e| err(rel, e))? {
            if hidden.contains(&name) || visible.contains(&name) {
                continue;
            }
            match sys::lstatat(&dir, name.as_os_str()) {
                Ok(st) if sys::is_whiteout(&st) => {
                    hidden.insert(name);
                }
                Ok(_) => {
                    visible.insert(name);
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(err(rel, e)),
            }
        }
        if is_opaque(&dir) {
            break;
        }
    }
    Ok(visible)
}

/// Whether a directory carries overlayfs' opaque marker.
fn is_opaque(dir: &File) -> bool {
    dir.get_xattr(OVERLAY_OPAQUE_XATTR)
        .ok()
        .flatten()
        .as_deref()
        == Some(b"y")
}
