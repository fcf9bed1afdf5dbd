//! Paths inside a container's root filesystem, resolved as the container would see them: symlinks are
//! followed but clamped to the rootfs, so an image can never point Berth at a host file.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Resolves `path` (absolute, as seen in the container) to a host path under `root`, following symlinks
/// inside the rootfs the way the kernel would if `root` were `/`. The final component need not exist.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = components_reversed(path);
    let mut links_followed = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        if part == "." || part.is_empty() {
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links_followed += 1;
                if links_followed > 40 {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(components_reversed(&target));
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components_reversed(path: &Path) -> Vec<std::ffi::OsString> {
    let mut parts: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// Reads a text file of the container (e.g. /etc/passwd).
pub fn read_in_root(root: &Path, path: &Path) -> io::Result<String> {
    fs::read_to_string(resolve_in_root(root, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("../../../../../..", root.join("up")).unwrap();
        symlink("/", root.join("abs")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/passwd")).unwrap(),
            root.join("real/etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/up/etc")).unwrap(),
            root.join("real/etc")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/abs/../../x")).unwrap(),
            root.join("x")
        );
    }
}
