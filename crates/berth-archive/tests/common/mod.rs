//! Helpers shared by the integration tests: raw tar construction (so that malicious names the tar
//! crate refuses to write can be produced), sandboxes with a sentinel directory beside the
//! destination, and overlay mounts that are always unmounted.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_archive::{ArchiveError, UnpackOptions, UnpackSummary, WhiteoutMode};

/// The mtime every test entry gets unless it says otherwise.
pub const MTIME: u64 = 1_600_000_000;

/// Builds tars byte by byte.
#[derive(Default)]
pub struct RawTar {
    bytes: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header whose name and link name bytes are copied verbatim (no validation), then
    /// the data padded to 512 bytes.
    pub fn raw(
        mut self,
        name: &[u8],
        kind: tar::EntryType,
        data: &[u8],
        link: &[u8],
        tweak: impl FnOnce(&mut tar::Header),
    ) -> Self {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(match kind {
            tar::EntryType::Directory => 0o755,
            tar::EntryType::Symlink => 0o777,
            _ => 0o644,
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        tweak(&mut header);
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(name.as_bytes(), tar::EntryType::Regular, data, b"", |_| {})
    }

    pub fn file_with(self, name: &str, data: &[u8], tweak: impl FnOnce(&mut tar::Header)) -> Self {
        self.raw(name.as_bytes(), tar::EntryType::Regular, data, b"", tweak)
    }

    pub fn dir(self, name: &str) -> Self {
        self.raw(name.as_bytes(), tar::EntryType::Directory, b"", b"", |_| {})
    }

    pub fn dir_with(self, name: &str, tweak: impl FnOnce(&mut tar::Header)) -> Self {
        self.raw(name.as_bytes(), tar::EntryType::Directory, b"", b"", tweak)
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Symlink,
            b"",
            target.as_bytes(),
            |_| {},
        )
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Link,
            b"",
            target.as_bytes(),
            |_| {},
        )
    }

    pub fn device(self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        self.raw(name.as_bytes(), kind, b"", b"", |h| {
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_mode(0o620);
        })
    }

    /// A PAX extended header applying `records` to the next entry.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw(b"PaxHeaders/x", tar::EntryType::XHeader, &data, b"", |_| {})
    }

    /// The archive with its end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat_n(0u8, 1024));
        self.bytes
    }

    /// The archive without an end marker (to cut it).
    pub fn unfinished(self) -> Vec<u8> {
        self.bytes
    }
}

/// A temp dir holding `dest/` (where archives go) and `sentinel/` beside it, which holds one file
/// `secret` that nothing may touch.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub dest: PathBuf,
    pub sentinel: PathBuf,
}

pub const SECRET: &[u8] = b"host secret\n";
const SENTINEL_MTIME: i64 = 1_000_000;

/// Sets atime and mtime of `path` (not following a symlink).
pub fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("secret"), SECRET).unwrap();
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o751)).unwrap();
        set_mtime(&sentinel, SENTINEL_MTIME);
        Sandbox {
            tmp,
            dest,
            sentinel,
        }
    }

    /// The sentinel's absolute path as a string without the leading `/`.
    pub fn sentinel_rel(&self) -> String {
        self.sentinel
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    }

    /// Asserts that nothing outside `dest` changed: the sentinel holds exactly its secret (same
    /// content, one link), and the temp dir holds only `dest` and `sentinel`.
    pub fn assert_outside_untouched(&self) {
        let names = listing(&self.sentinel);
        assert_eq!(names, vec!["secret".to_string()], "sentinel dir changed");
        let secret = self.sentinel.join("secret");
        assert_eq!(fs::read(&secret).unwrap(), SECRET, "secret changed");
        let meta = fs::symlink_metadata(&secret).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.nlink(), 1, "secret got hardlinked");
        assert_eq!(meta.mode() & 0o7777, 0o644, "secret mode changed");
        let dir = fs::symlink_metadata(&self.sentinel).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.mode() & 0o7777, 0o751, "sentinel dir mode changed");
        assert_eq!(dir.mtime(), SENTINEL_MTIME, "sentinel dir mtime changed");
        assert_eq!(
            listing(self.tmp.path()),
            vec!["dest".to_string(), "sentinel".to_string()],
            "something appeared beside dest"
        );
    }

    pub fn unpack(
        &self,
        tar: &[u8],
        whiteouts: WhiteoutMode,
    ) -> Result<UnpackSummary, ArchiveError> {
        berth_archive::unpack_layer(tar, &self.dest, &opts(whiteouts))
    }
}

pub fn opts(whiteouts: WhiteoutMode) -> UnpackOptions {
    UnpackOptions {
        whiteouts,
        allow_devices: false,
        owner: None,
    }
}

/// Sorted names in a directory.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every path below `dir` (relative, sorted), with a short description of what it is.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for name in listing(dir) {
            let path = dir.join(&name);
            let rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            if ft.is_dir() {
                out.push(format!("{rel}/"));
                walk(&path, &rel, out);
            } else if ft.is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    fs::read_link(&path).unwrap().display()
                ));
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out
}

/// An overlay mount that is unmounted when dropped (even when the test panics).
pub struct OverlayMount {
    pub merged: PathBuf,
}

impl OverlayMount {
    /// Mounts `lowers` (top-most first) with optional upper/work dirs at `merged`.
    pub fn new(lowers: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> Self {
        let lowerdir = lowers
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let mut data = format!("lowerdir={lowerdir}");
        if let Some((upper, work)) = upper {
            data.push_str(&format!(
                ",upperdir={},workdir={}",
                upper.display(),
                work.display()
            ));
        }
        nix::mount::mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay {data}: {e}"));
        OverlayMount {
            merged: merged.to_path_buf(),
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
