//! Archives made by GNU tar and busybox tar unpack exactly as those tools made them (checked by
//! GNU tar's own `--compare`), and ours extract with them. Plus a throughput check.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_archive::{unpack_layer, write_tree, ArchiveError, WhiteoutMode};
use common::{opts, run, tree};

/// A small busybox rootfs: the binary, a symlink per applet (hundreds), and some files with
/// interesting metadata.
fn busybox_rootfs(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    run(Command::new("/usr/bin/busybox")
        .arg("--install")
        .arg("-s")
        .arg(root.join("bin")));
    // Make the applet links point inside the rootfs, as in a real image.
    for entry in fs::read_dir(root.join("bin")).unwrap() {
        let path = entry.unwrap().path();
        if fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
        {
            fs::remove_file(&path).unwrap();
            symlink("busybox", &path).unwrap();
        }
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/shadow"), "root:*:19000::::::\n").unwrap();
    fs::set_permissions(root.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    nix::unistd::chown(
        &root.join("etc/shadow"),
        None,
        Some(nix::unistd::Gid::from_raw(42)),
    )
    .unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd-")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    // Not an applet name: `bin/su` is a symlink to /bin/busybox by now, and writing through it
    // would hit the host's busybox.
    let suid = root.join("bin/setuid-tool");
    assert!(fs::symlink_metadata(&suid).is_err());
    fs::write(&suid, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let deep = root.join(format!("usr/share/{}/{}", "d".repeat(120), "e".repeat(120)));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f".repeat(130)), b"long").unwrap();
    symlink(
        "../".to_string() + &"x".repeat(150),
        root.join("usr/longlink"),
    )
    .unwrap();
    nix::unistd::fchownat(
        None,
        &root.join("usr/longlink"),
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(1000)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    xattr::set(root.join("etc/passwd"), "user.origin", b"test\nvalue").unwrap();
}

/// Unpacks `archive` into a fresh dir under `tmp` and has GNU tar compare it with the archive.
fn unpack_and_compare(tmp: &Path, name: &str, archive: &Path) -> std::path::PathBuf {
    let dest = tmp.join(name);
    fs::create_dir(&dest).unwrap();
    let file = fs::File::open(archive).unwrap();
    let summary = unpack_layer(file, &dest, &opts(WhiteoutMode::Overlay)).unwrap();
    assert!(summary.entries > 250, "{name}: {summary:?}");
    run(Command::new("tar")
        .arg("--compare")
        .arg("--numeric-owner")
        .arg("-f")
        .arg(archive)
        .arg("-C")
        .arg(&dest));
    dest
}

#[test]
fn gnu_and_busybox_tars_unpack_faithfully() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    busybox_rootfs(&src);
    let applets = fs::read_dir(src.join("bin")).unwrap().count();
    assert!(applets > 200, "busybox installed {applets} links");
    let expected = tree(&src);

    let variants: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu"]),
        (
            "pax",
            &["--format=posix", "--xattrs", "--xattrs-include=user.*"],
        ),
        ("gnu-gz", &["--format=gnu", "-z"]),
        ("ustar-ish", &["--format=ustar"]),
    ];
    for (name, flags) in variants {
        let archive = tmp.path().join(format!("{name}.tar"));
        let mut cmd = Command::new("tar");
        cmd.args(flags).arg("--numeric-owner").arg("-C").arg(&src);
        if name == "ustar-ish" {
            // ustar cannot hold the long names: leave them out.
            cmd.arg("--exclude=./usr");
        }
        cmd.arg("-cf").arg(&archive).arg(".");
        run(&mut cmd);
        let dest = unpack_and_compare(tmp.path(), name, &archive);
        if name != "ustar-ish" {
            assert_eq!(tree(&dest), expected, "{name}");
            let su = fs::symlink_metadata(dest.join("bin/setuid-tool")).unwrap();
            assert_eq!(su.mode() & 0o7777, 0o4755, "{name}");
            let a = fs::metadata(dest.join("etc/passwd")).unwrap();
            let b = fs::metadata(dest.join("etc/passwd-")).unwrap();
            assert_eq!(a.ino(), b.ino(), "{name}: hardlink kept");
            let link = fs::symlink_metadata(dest.join("usr/longlink")).unwrap();
            assert_eq!(link.uid(), 1000, "{name}: symlink owner");
        }
        if name == "pax" {
            assert_eq!(
                xattr::get(dest.join("etc/passwd"), "user.origin")
                    .unwrap()
                    .as_deref(),
                Some(&b"test\nvalue"[..])
            );
        }
    }

    // busybox tar.
    let archive = tmp.path().join("busybox.tar");
    run(Command::new("busybox")
        .arg("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let dest = unpack_and_compare(tmp.path(), "busybox", &archive);
    assert_eq!(tree(&dest), expected);
}

#[test]
fn our_archives_extract_with_busybox_and_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    busybox_rootfs(&src);
    let archive = tmp.path().join("ours.tar");
    fs::write(&archive, write_tree(&src, Vec::new()).unwrap()).unwrap();
    for tool in ["busybox", "gnu"] {
        let out = tmp.path().join(tool);
        fs::create_dir(&out).unwrap();
        let mut cmd = if tool == "busybox" {
            let mut c = Command::new("busybox");
            c.arg("tar");
            c
        } else {
            let mut c = Command::new("tar");
            c.arg("--numeric-owner")
                .arg("--xattrs")
                .arg("--xattrs-include=*");
            c
        };
        run(cmd.arg("-xpf").arg(&archive).arg("-C").arg(&out));
        assert_eq!(tree(&out), tree(&src), "{tool}");
        run(Command::new("tar")
            .arg("--compare")
            .arg("--numeric-owner")
            .arg("-f")
            .arg(&archive)
            .arg("-C")
            .arg(&out));
    }
}

#[test]
fn gnu_sparse_files_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(10 << 20).unwrap();
    drop(f);
    let archive = tmp.path().join("sparse.tar");
    run(Command::new("tar")
        .arg("--sparse")
        .arg("--format=gnu")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&archive)
        .arg("sparse"));
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let err = unpack_layer(
        fs::File::open(&archive).unwrap(),
        &dest,
        &opts(WhiteoutMode::Overlay),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Unsupported { path, .. } if path == "sparse"),
        "{err:?}"
    );
}

#[test]
fn many_small_files_unpack_quickly() {
    // 20,000 files of 1 KiB in 200 directories.
    let mut builder = tar::Builder::new(Vec::new());
    let data = vec![b'x'; 1024];
    for d in 0..200 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        builder
            .append_data(&mut h, format!("usr/lib/d{d:03}/"), std::io::empty())
            .unwrap();
        for f in 0..100 {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            builder
                .append_data(&mut h, format!("usr/lib/d{d:03}/file{f:03}.so"), &data[..])
                .unwrap();
        }
    }
    let tar = builder.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let start = Instant::now();
    let summary = unpack_layer(&tar[..], &dest, &opts(WhiteoutMode::Overlay)).unwrap();
    let ours = start.elapsed();
    assert_eq!(summary.entries, 20_200);
    assert_eq!(summary.bytes, 20_000 * 1024);

    let archive = tmp.path().join("many.tar");
    fs::write(&archive, &tar).unwrap();
    let gnu_dest = tmp.path().join("gnu");
    fs::create_dir(&gnu_dest).unwrap();
    let start = Instant::now();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&gnu_dest));
    let gnu = start.elapsed();
    eprintln!("20,200 entries: berth-archive {ours:?}, GNU tar {gnu:?}");
    // Generous: a debug build on a busy 2-core machine. What matters is no per-file fsync and no
    // quadratic path work, which would be far slower than this.
    assert!(ours.as_secs() < 30, "unpack took {ours:?}");
}
