//! Writing trees, paths inside a rootfs, and overlay upper dirs; `changes()`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use berth_archive::{
    changes, unpack_layer, write_layer_from_upper, write_path_in_root, write_tree, ArchiveError,
    Change, ChangeKind, WhiteoutMode,
};
use common::{opts, set_mtime, RawTar, Sandbox};

/// (name, type, link target, data) of every entry of a tar.
fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let kind = e.header().entry_type();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, kind, link, data)
        })
        .collect()
}

fn names(tar: &[u8]) -> Vec<String> {
    entries(tar).into_iter().map(|e| e.0).collect()
}

/// A small tree with every kind of entry, built in a scrambled order.
fn build_tree(dir: &Path) {
    fs::create_dir_all(dir.join("z/y")).unwrap();
    fs::write(dir.join("z/y/file"), b"deep").unwrap();
    fs::create_dir(dir.join("a")).unwrap();
    fs::write(dir.join("a/b"), b"bee").unwrap();
    fs::hard_link(dir.join("a/b"), dir.join("hard")).unwrap();
    fs::write(dir.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    nix::unistd::chown(
        &dir.join("suid"),
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(2000)),
    )
    .unwrap();
    fs::set_permissions(dir.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("a/b", dir.join("link")).unwrap();
    symlink("/abs/target", dir.join("abs")).unwrap();
    fs::create_dir(dir.join("empty")).unwrap();
    xattr::set(dir.join("a/b"), "user.note", b"v\0\n=1").unwrap();
    nix::unistd::mkfifo(
        &dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // A unix socket: cannot be archived, must be skipped.
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    for (i, p) in [
        "z/y/file", "z/y", "z", "a/b", "a", "suid", "empty", "fifo", "link", "abs",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&dir.join(p), 1_500_000_000 + i as i64);
    }
}

#[test]
fn write_tree_is_complete_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let first = write_tree(&src, Vec::new()).unwrap();
    let second = write_tree(&src, Vec::new()).unwrap();
    assert_eq!(first, second, "same tree, same bytes");
    assert_eq!(
        names(&first),
        vec![
            "a/", "a/b", "abs", "empty/", "fifo", "hard", "link", "suid", "z/", "z/y/", "z/y/file"
        ]
    );
    let by_name: BTreeMap<_, _> = entries(&first)
        .into_iter()
        .map(|(n, k, l, d)| (n, (k, l, d)))
        .collect();
    assert_eq!(by_name["hard"].0, tar::EntryType::Link);
    assert_eq!(by_name["hard"].1, "a/b");
    assert_eq!(by_name["link"].0, tar::EntryType::Symlink);
    assert_eq!(by_name["abs"].1, "/abs/target");
    assert_eq!(by_name["fifo"].0, tar::EntryType::Fifo);
    assert_eq!(by_name["a/b"].2, b"bee");

    // Unpacked elsewhere (created in archive order, with new inodes) and written again: the
    // same bytes, so every piece of metadata made the round trip.
    let copy = tmp.path().join("copy");
    fs::create_dir(&copy).unwrap();
    let options = berth_archive::UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        allow_devices: true,
        owner: None,
    };
    unpack_layer(&first[..], &copy, &options).unwrap();
    assert_eq!(
        xattr::get(copy.join("a/b"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"v\0\n=1"[..])
    );
    let suid = fs::metadata(copy.join("suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1000, 2000));
    assert_eq!(
        fs::metadata(copy.join("hard")).unwrap().ino(),
        fs::metadata(copy.join("a/b")).unwrap().ino()
    );
    let again = write_tree(&copy, Vec::new()).unwrap();
    assert_eq!(first, again, "round trip through unpack is lossless");
}

#[test]
fn write_tree_output_reads_with_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let long = "n".repeat(150);
    fs::create_dir(src.join(&long)).unwrap();
    fs::write(src.join(&long).join("m".repeat(150)), b"long").unwrap();
    symlink("t".repeat(200), src.join("longlink")).unwrap();
    let archive = write_tree(&src, Vec::new()).unwrap();
    let path = tmp.path().join("out.tar");
    fs::write(&path, &archive).unwrap();
    let listing = String::from_utf8(common::run(
        std::process::Command::new("tar").arg("-tf").arg(&path),
    ))
    .unwrap();
    assert!(listing.contains(&format!("{long}/{}", "m".repeat(150))));
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    common::run(
        std::process::Command::new("tar")
            .arg("--xattrs")
            .arg("--xattrs-include=*")
            .arg("-xpf")
            .arg(&path)
            .arg("-C")
            .arg(&out),
    );
    // GNU tar's own check of what it extracted against the archive (content, mode, owner, mtime,
    // link targets), and the xattr made it through.
    common::run(
        std::process::Command::new("tar")
            .arg("--compare")
            .arg("-f")
            .arg(&path)
            .arg("-C")
            .arg(&out),
    );
    assert_eq!(
        xattr::get(out.join("a/b"), "user.note").unwrap().as_deref(),
        Some(&b"v\0\n=1"[..])
    );
    assert_eq!(
        fs::read_link(out.join("longlink"))
            .unwrap()
            .to_str()
            .unwrap(),
        "t".repeat(200)
    );
}

#[test]
fn write_path_in_root_names_the_top_by_basename() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::write(root.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    fs::write(root.join("etc/conf.d/a"), b"a").unwrap();
    symlink("/etc/hosts", root.join("hostlink")).unwrap();
    symlink("etc", root.join("etclink")).unwrap();

    let tar = write_path_in_root(&root, "/etc/hosts".as_ref(), Vec::new()).unwrap();
    assert_eq!(
        entries(&tar),
        vec![(
            "hosts".to_string(),
            tar::EntryType::Regular,
            String::new(),
            b"127.0.0.1 localhost\n".to_vec()
        )]
    );
    let tar = write_path_in_root(&root, "etc/conf.d/".as_ref(), Vec::new()).unwrap();
    assert_eq!(names(&tar), vec!["conf.d/", "conf.d/a"]);
    // A symlink at the path is archived as a symlink...
    let tar = write_path_in_root(&root, "/hostlink".as_ref(), Vec::new()).unwrap();
    let e = entries(&tar);
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].1, e[0].2.as_str()),
        (tar::EntryType::Symlink, "/etc/hosts")
    );
    // ... while symlinks on the way are followed inside the root.
    let tar = write_path_in_root(&root, "/etclink/hosts".as_ref(), Vec::new()).unwrap();
    assert_eq!(entries(&tar)[0].3, b"127.0.0.1 localhost\n");
    // `/` writes the root's contents.
    let tar = write_path_in_root(&root, "/".as_ref(), Vec::new()).unwrap();
    assert_eq!(
        names(&tar),
        vec![
            "etc/",
            "etc/conf.d/",
            "etc/conf.d/a",
            "etc/hosts",
            "etclink",
            "hostlink"
        ]
    );
    // A missing path is an error naming it.
    let err = write_path_in_root(&root, "/nope".as_ref(), Vec::new()).unwrap_err();
    assert!(err.to_string().contains("/nope"), "{err}");
}

#[test]
fn write_path_in_root_never_escapes() {
    let sb = Sandbox::new();
    let root = &sb.dest;
    fs::create_dir(root.join("tmp")).unwrap();
    symlink(&sb.sentinel, root.join("abs")).unwrap();
    symlink("../../../../../../../../..", root.join("tmp/up")).unwrap();
    let secret_rel = format!("{}/secret", sb.sentinel_rel());
    let attempts = [
        format!("../../../../../../{secret_rel}"),
        format!("/tmp/../../../../{secret_rel}"),
        "abs/secret".to_string(),
        format!("tmp/up/{secret_rel}"),
        format!("tmp/up/../../{secret_rel}"),
    ];
    for path in &attempts {
        match write_path_in_root(root, path.as_ref(), Vec::new()) {
            Err(ArchiveError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{path}")
            }
            Ok(tar) => panic!("{path}: archived {:?}", names(&tar)),
            Err(other) => panic!("{path}: {other:?}"),
        }
    }
    // With an in-root file at the sentinel's path, those paths find that file, never the host's.
    fs::create_dir_all(root.join(sb.sentinel_rel())).unwrap();
    fs::write(root.join(&secret_rel), b"container file").unwrap();
    for path in &attempts {
        let tar = write_path_in_root(root, path.as_ref(), Vec::new()).unwrap();
        let e = entries(&tar);
        assert_eq!(e.len(), 1, "{path}");
        assert_eq!(e[0].0, "secret");
        assert_eq!(e[0].3, b"container file", "{path}");
    }
    // The symlink pointing out, asked for itself, is a symlink entry.
    let tar = write_path_in_root(root, "abs".as_ref(), Vec::new()).unwrap();
    let e = entries(&tar);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, tar::EntryType::Symlink);
    sb.assert_outside_untouched();
}

/// A base layer, mounted with an upper dir and changed through the merged view, as a container
/// would. Returns (tmp, lower, upper) after unmounting, plus the merged view's tar.
fn container_session() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    Vec<u8>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| {
        let d = tmp.path().join(n);
        fs::create_dir(&d).unwrap();
        d
    };
    let (lower, upper, work, merged) = (p("lower"), p("upper"), p("work"), p("merged"));
    let base = RawTar::new()
        .dir("etc/")
        .file("etc/hosts", b"base hosts\n")
        .file("etc/passwd", b"root:x:0:0\n")
        .dir("var/")
        .dir("var/cache/")
        .file("var/cache/a", b"a")
        .file("var/cache/b", b"b")
        .dir("usr/")
        .dir("usr/bin/")
        .file("usr/bin/tool", b"tool")
        .dir("opt/")
        .file("opt/x", b"x")
        .finish();
    unpack_layer(&base[..], &lower, &opts(WhiteoutMode::Overlay)).unwrap();

    let mount = common::OverlayMount::new(&[&lower], Some((&upper, &work)), &merged);
    let m = &mount.merged;
    fs::write(m.join("etc/hosts"), b"changed hosts\n").unwrap(); // modify
    fs::remove_file(m.join("etc/passwd")).unwrap(); // delete
    fs::write(m.join("etc/new"), b"new").unwrap(); // add
    fs::remove_dir_all(m.join("var/cache")).unwrap(); // delete a dir ...
    fs::create_dir(m.join("var/cache")).unwrap(); // ... and recreate it: opaque
    fs::write(m.join("var/cache/c"), b"c").unwrap();
    fs::create_dir_all(m.join("srv/data")).unwrap(); // new tree
    fs::write(m.join("srv/data/f"), b"f").unwrap();
    fs::remove_dir_all(m.join("opt")).unwrap(); // delete a whole dir
    fs::remove_file(m.join("usr/bin/tool")).unwrap();
    let merged_tar = write_tree(m, Vec::new()).unwrap();
    drop(mount);
    (tmp, lower, upper, merged_tar)
}

#[test]
fn layer_from_upper_round_trips_through_apply() {
    let (tmp, _lower, upper, merged_tar) = container_session();
    let layer = write_layer_from_upper(&upper, Vec::new()).unwrap();
    assert_eq!(layer, write_layer_from_upper(&upper, Vec::new()).unwrap());
    let n = names(&layer);
    // (A directory deleted whole, like /opt, is a plain whiteout; overlayfs keeps nothing below.)
    for expected in [
        "etc/.wh.passwd",
        "var/cache/.wh..wh..opq",
        ".wh.opt",
        "usr/bin/.wh.tool",
        "etc/hosts",
    ] {
        assert!(
            n.iter().any(|x| x == expected),
            "{expected} missing from {n:?}"
        );
    }
    assert!(!n.iter().any(|x| x.contains("trusted.overlay")));
    // The opaque marker comes right after its directory.
    let cache = n.iter().position(|x| x == "var/cache/").unwrap();
    assert_eq!(n[cache + 1], "var/cache/.wh..wh..opq");

    // Flatten: base layer then the new layer, in Apply mode; the result equals the merged view.
    let flat = tmp.path().join("flat");
    fs::create_dir(&flat).unwrap();
    let base = write_tree(&tmp.path().join("lower"), Vec::new()).unwrap();
    unpack_layer(&base[..], &flat, &opts(WhiteoutMode::Apply)).unwrap();
    unpack_layer(&layer[..], &flat, &opts(WhiteoutMode::Apply)).unwrap();
    let flat_tar = write_tree(&flat, Vec::new()).unwrap();
    assert_eq!(names(&flat_tar), names(&merged_tar));
    assert_eq!(
        flat_tar, merged_tar,
        "flattened layers == merged overlay view"
    );

    // And as an overlay lower: base + new layer mounted read-only show the same tree.
    let l2 = tmp.path().join("l2");
    fs::create_dir(&l2).unwrap();
    unpack_layer(&layer[..], &l2, &opts(WhiteoutMode::Overlay)).unwrap();
    let view = tmp.path().join("view");
    fs::create_dir(&view).unwrap();
    let mount = common::OverlayMount::new(&[&l2, &tmp.path().join("lower")], None, &view);
    let view_tar = write_tree(&mount.merged, Vec::new()).unwrap();
    drop(mount);
    assert_eq!(names(&view_tar), names(&merged_tar));
}

#[test]
fn changes_lists_what_docker_diff_shows() {
    let (_tmp, lower, upper, _) = container_session();
    let list = changes(&upper, std::slice::from_ref(&lower)).unwrap();
    let shown: Vec<String> = list.iter().map(Change::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "C /etc",
            "A /etc/new",
            "D /etc/passwd",
            "C /etc/hosts",
            "D /opt",
            "A /srv",
            "A /srv/data",
            "A /srv/data/f",
            "C /usr",
            "C /usr/bin",
            "D /usr/bin/tool",
            "C /var",
            "C /var/cache",
            "D /var/cache/a",
            "D /var/cache/b",
            "A /var/cache/c",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
        .tap_sort()
    );
    assert_eq!(ChangeKind::Added.to_string(), "A");
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<String> {
    /// Sorted the way `changes()` sorts: by path, component-wise.
    fn tap_sort(mut self) -> Self {
        self.sort_by(|a, b| Path::new(&a[2..]).cmp(Path::new(&b[2..])));
        self
    }
}

#[test]
fn overlay_bookkeeping_is_removed_but_opaque_kept() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path();
    fs::create_dir_all(upper.join("etc/sub")).unwrap();
    fs::write(upper.join("etc/file"), b"x").unwrap();
    symlink("/etc/shadow", upper.join("link")).unwrap();
    // What overlayfs leaves in an upper dir after a copy-up: origin and impure (root only: trusted.*).
    xattr::set(upper.join("etc"), "trusted.overlay.origin", b"\0fh").unwrap();
    xattr::set(upper.join("etc"), "trusted.overlay.impure", b"y").unwrap();
    xattr::set(upper.join("etc/sub"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(upper.join("etc/file"), "trusted.overlay.origin", b"\0fh").unwrap();
    xattr::set(upper.join("etc/file"), "user.keep", b"1").unwrap();
    berth_archive::remove_overlay_bookkeeping(upper).unwrap();
    let names = |p: &Path| {
        let mut v: Vec<String> = xattr::list(p)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(names(&upper.join("etc")).is_empty());
    assert_eq!(names(&upper.join("etc/sub")), ["trusted.overlay.opaque"]);
    assert_eq!(names(&upper.join("etc/file")), ["user.keep"]);
    // The symlink was not followed (its target is the host's).
    assert!(fs::symlink_metadata(upper.join("link"))
        .unwrap()
        .is_symlink());
}
