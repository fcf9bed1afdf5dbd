//! Every way a hostile archive could try to write outside its destination, each checked against a
//! sentinel directory that sits right beside the destination.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};

use berth_archive::{unpack_layer, ArchiveError, UnpackOptions, WhiteoutMode};
use common::{RawTar, Sandbox};

#[test]
fn absolute_entry_names_are_refused() {
    let sb = Sandbox::new();
    let name = format!("{}/pwned", sb.sentinel.display());
    let tar = RawTar::new().file(&name, b"x").finish();
    let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
    match &err {
        ArchiveError::PathEscapes { path } => assert_eq!(path, &name),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains(&name), "error must name the entry");
    sb.assert_outside_untouched();
    assert!(common::listing(&sb.dest).is_empty());
}

#[test]
fn dotdot_entry_names_are_refused() {
    for name in [
        "../sentinel/pwned",
        "a/../../sentinel/pwned",
        "./../sentinel/pwned",
        "a/..",
        "..",
    ] {
        let sb = Sandbox::new();
        let tar = RawTar::new().dir("a/").file(name, b"x").finish();
        let err = sb.unpack(&tar, WhiteoutMode::Apply).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::PathEscapes { path } if path == name),
            "{name}: {err:?}"
        );
        sb.assert_outside_untouched();
    }
    // A `..` hidden in a directory or symlink entry name is refused just the same.
    let sb = Sandbox::new();
    let tar = RawTar::new().dir("../sentinel/newdir/").finish();
    assert!(matches!(
        sb.unpack(&tar, WhiteoutMode::Overlay),
        Err(ArchiveError::PathEscapes { .. })
    ));
    sb.assert_outside_untouched();
}

#[test]
fn leading_dot_slash_is_fine() {
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .dir("./")
        .dir("./etc/")
        .file("./etc/hosts", b"127.0.0.1 localhost\n")
        .finish();
    let summary = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(summary.entries, 3);
    assert_eq!(
        fs::read(sb.dest.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
}

#[test]
fn absolute_symlink_is_never_followed_to_the_host() {
    // `a -> /…/sentinel` (an absolute host path), then `a/pwned`. Resolved as if dest were `/`,
    // `a` points at dest/…/sentinel, which does not exist: the write is refused, never sent to
    // the real sentinel.
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .symlink("a", sb.sentinel.to_str().unwrap())
        .file("a/pwned", b"x")
        .finish();
    let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::ThroughSymlink { path, .. } if path == "a/pwned"),
        "{err:?}"
    );
    sb.assert_outside_untouched();

    // When the in-root target exists, the write lands there: inside dest. (The target is the
    // sentinel's host path, so that a broken resolver would hit the sentinel, not a real file.)
    let sb = Sandbox::new();
    let mut tar = RawTar::new();
    let mut prefix = String::new();
    for part in sb.sentinel_rel().split('/') {
        prefix.push_str(part);
        prefix.push('/');
        tar = tar.dir(&prefix);
    }
    let tar = tar
        .symlink("a", sb.sentinel.to_str().unwrap())
        .file("a/secret", b"in root\n")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        fs::read(sb.dest.join(sb.sentinel_rel()).join("secret")).unwrap(),
        b"in root\n"
    );
    assert!(fs::symlink_metadata(sb.dest.join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
    sb.assert_outside_untouched();
}

#[test]
fn existing_symlinks_in_dest_cannot_lead_out() {
    // Apply mode onto an existing tree whose symlinks point out of it (absolute host path and a
    // relative climb): both resolve inside dest.
    let sb = Sandbox::new();
    symlink(&sb.sentinel, sb.dest.join("abs")).unwrap();
    symlink("../../../../../../../..", sb.dest.join("up")).unwrap();
    symlink("../sentinel", sb.dest.join("rel")).unwrap();
    let tar = RawTar::new().file("abs/pwned", b"x").finish();
    assert!(matches!(
        sb.unpack(&tar, WhiteoutMode::Apply),
        Err(ArchiveError::ThroughSymlink { .. })
    ));
    let tar = RawTar::new().file("rel/pwned", b"x").finish();
    assert!(matches!(
        sb.unpack(&tar, WhiteoutMode::Apply),
        Err(ArchiveError::ThroughSymlink { .. })
    ));
    // `up` climbs to the top of dest and stops there.
    let tar = RawTar::new().file("up/pwned", b"x").finish();
    sb.unpack(&tar, WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read(sb.dest.join("pwned")).unwrap(), b"x");
    sb.assert_outside_untouched();
}

#[test]
fn writing_over_a_symlink_replaces_the_link() {
    let sb = Sandbox::new();
    symlink(sb.sentinel.join("secret"), sb.dest.join("link")).unwrap();
    let tar = RawTar::new()
        .file("link", b"new content")
        // The same again, in one archive: a symlink entry then a file entry of the same name.
        .symlink("link2", sb.sentinel.join("secret").to_str().unwrap())
        .file("link2", b"second")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Apply).unwrap();
    for (name, content) in [("link", &b"new content"[..]), ("link2", b"second")] {
        let meta = fs::symlink_metadata(sb.dest.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is still a symlink");
        assert_eq!(fs::read(sb.dest.join(name)).unwrap(), content);
    }
    sb.assert_outside_untouched();

    // Directories, devices and hardlinks do not write through a symlink either.
    let sb = Sandbox::new();
    symlink(&sb.sentinel, sb.dest.join("d")).unwrap();
    let tar = RawTar::new()
        .dir_with("d/", |h| h.set_mode(0o700))
        .file("f", b"x")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(sb.dest.join("d")).unwrap().is_dir());
    assert!(common::listing(&sb.dest.join("d")).is_empty());
    sb.assert_outside_untouched();
}

#[test]
fn symlink_targets_may_be_absolute_but_not_climb_out() {
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .dir("bin/")
        .symlink("bin/sh", "/bin/busybox")
        .symlink("bin/up", "../etc/x")
        .symlink("bin/deep/../ok", "x")
        .finish();
    // `bin/deep/../ok` has a `..` in its own name: refused as a name, before anything else.
    assert!(matches!(
        sb.unpack(&tar, WhiteoutMode::Overlay),
        Err(ArchiveError::PathEscapes { .. })
    ));
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .dir("bin/")
        .symlink("bin/sh", "/bin/busybox")
        .symlink("bin/up", "../etc/x")
        .symlink("lib", "usr/lib")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        fs::read_link(sb.dest.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(sb.dest.join("bin/up")).unwrap().to_str(),
        Some("../etc/x")
    );

    for (name, target) in [
        ("etc/x", "../../../host"),
        ("x", "../sentinel/secret"),
        ("a/b/c", "../../../sentinel"),
        ("a/b/c", "d/../../../../sentinel"),
    ] {
        let sb = Sandbox::new();
        let tar = RawTar::new().symlink(name, target).finish();
        let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
        match &err {
            ArchiveError::LinkEscapes { path, target: t } => {
                assert_eq!(path, name);
                assert_eq!(t, target);
            }
            other => panic!("{name} -> {target}: {other:?}"),
        }
        sb.assert_outside_untouched();
    }
}

#[test]
fn hardlinks_must_stay_inside() {
    let sb = Sandbox::new();
    let secret = sb.sentinel.join("secret");
    for target in [
        "../sentinel/secret".to_string(),
        secret.to_str().unwrap().to_string(),
        "a/../../sentinel/secret".to_string(),
        "./".to_string(),
    ] {
        let tar = RawTar::new().hardlink("h", &target).finish();
        let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::LinkEscapes { path, .. } if path == "h"),
            "{target}: {err:?}"
        );
        sb.assert_outside_untouched();
    }
    // Through a symlink pointing at the host: resolved inside dest, where there is no such file.
    symlink(&sb.sentinel, sb.dest.join("s")).unwrap();
    let tar = RawTar::new().hardlink("h", "s/secret").finish();
    let err = sb.unpack(&tar, WhiteoutMode::Apply).unwrap_err();
    assert!(matches!(err, ArchiveError::Io { .. }), "{err:?}");
    // ... and a symlink that is the link target itself is linked, not followed.
    let tar = RawTar::new()
        .symlink("sym", sb.sentinel.join("secret").to_str().unwrap())
        .hardlink("h2", "sym")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(sb.dest.join("h2"))
        .unwrap()
        .file_type()
        .is_symlink());
    sb.assert_outside_untouched();

    // A legitimate hardlink works and shares the inode.
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .dir("bin/")
        .file("bin/a", b"data")
        .hardlink("bin/b", "bin/a")
        .hardlink("./c", "./bin/a")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    let a = fs::metadata(sb.dest.join("bin/a")).unwrap();
    let b = fs::metadata(sb.dest.join("bin/b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 3);
}

#[test]
fn devices_and_fifos_need_permission() {
    for (kind, name) in [
        (tar::EntryType::Char, "dev/null"),
        (tar::EntryType::Block, "dev/sda"),
        (tar::EntryType::Fifo, "run/fifo"),
    ] {
        let sb = Sandbox::new();
        let tar = RawTar::new().device(name, kind, 1, 3).finish();
        let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::DeviceNode { path } if path == name),
            "{err:?}"
        );
        assert!(err.to_string().contains(name));
        sb.assert_outside_untouched();
    }
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/loop9", tar::EntryType::Block, 7, 9)
        .device("fifo", tar::EntryType::Fifo, 0, 0)
        .finish();
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Overlay,
        allow_devices: true,
        owner: None,
    };
    unpack_layer(&tar[..], &sb.dest, &opts).unwrap();
    let null = fs::symlink_metadata(sb.dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o620);
    let loop9 = fs::symlink_metadata(sb.dest.join("dev/loop9")).unwrap();
    assert!(loop9.file_type().is_block_device());
    assert_eq!(loop9.rdev(), nix::sys::stat::makedev(7, 9));
    assert!(fs::symlink_metadata(sb.dest.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn truncated_archives_are_errors() {
    let data = vec![b'z'; 10_000];
    let full = RawTar::new()
        .dir("d/")
        .file("d/big", &data)
        .file("d/after", b"x")
        .finish();
    // Cut inside the data of d/big, inside the next header, and right after d/big's header.
    for cut in [512 + 512 + 5000, 512 + 512 + 10_240 + 100, 512 + 512] {
        let sb = Sandbox::new();
        let err = sb.unpack(&full[..cut], WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    // Truncated compressed streams as well.
    let gz = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &full).unwrap();
        enc.finish().unwrap()
    };
    let sb = Sandbox::new();
    let err = sb
        .unpack(&gz[..gz.len() / 2], WhiteoutMode::Overlay)
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::Truncated { .. }),
        "gzip: {err:?}"
    );
    let zst = zstd::encode_all(&full[..], 3).unwrap();
    let sb = Sandbox::new();
    let err = sb
        .unpack(&zst[..zst.len() - 10], WhiteoutMode::Overlay)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::Truncated { .. } | ArchiveError::Corrupt { .. }
        ),
        "zstd: {err:?}"
    );
    // The whole archive is fine.
    let sb = Sandbox::new();
    let summary = sb.unpack(&full, WhiteoutMode::Overlay).unwrap();
    assert_eq!(summary.entries, 3);
    assert_eq!(summary.bytes, 10_001);
}

#[test]
fn bad_checksums_are_corrupt() {
    let mut tar = RawTar::new().file("a", b"x").file("b", b"y").finish();
    tar[1024 + 10] ^= 0x55; // inside the name of "b"
    let sb = Sandbox::new();
    let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn whiteout_names_cannot_escape() {
    for name in [".wh..", ".wh...", "a/.wh.."] {
        for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
            let sb = Sandbox::new();
            fs::write(sb.dest.join("keep"), b"k").unwrap();
            let tar = RawTar::new().dir("a/").file(name, b"").finish();
            let err = sb.unpack(&tar, mode).unwrap_err();
            assert!(
                matches!(&err, ArchiveError::PathEscapes { path } if path == name),
                "{name} {mode:?}: {err:?}"
            );
            assert!(sb.dest.join("keep").exists());
            sb.assert_outside_untouched();
        }
    }
    // Apply-mode removal through a symlink to the host: resolved inside dest, nothing outside
    // is removed; a whiteout of the symlink itself removes only the link.
    let sb = Sandbox::new();
    symlink(&sb.sentinel, sb.dest.join("lnk")).unwrap();
    symlink("../sentinel", sb.dest.join("rel")).unwrap();
    let tar = RawTar::new()
        .file("lnk/.wh.secret", b"")
        .file("rel/.wh.secret", b"")
        .file("lnk/.wh..wh..opq", b"")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Apply).unwrap();
    sb.assert_outside_untouched();
    let tar = RawTar::new().file(".wh.lnk", b"").finish();
    sb.unpack(&tar, WhiteoutMode::Apply).unwrap();
    assert!(fs::symlink_metadata(sb.dest.join("lnk")).is_err());
    sb.assert_outside_untouched();
}

#[test]
fn overlay_private_xattrs_from_archives_are_ignored() {
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.keep", b"1"),
        ])
        .dir("d/")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    let d = sb.dest.join("d");
    assert_eq!(xattr::get(&d, "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(xattr::get(&d, "trusted.overlay.opaque").unwrap(), None);
    assert_eq!(
        xattr::get(&d, "user.keep").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn dangling_parent_symlink_is_refused_not_followed() {
    // A symlink whose in-root target is missing (a dangling link in the middle of an entry path).
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .symlink("d", "nowhere/deeper")
        .file("d/x", b"x")
        .finish();
    let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
    match err {
        ArchiveError::ThroughSymlink { path, link } => {
            assert_eq!(path, "d/x");
            assert_eq!(link, "d");
        }
        other => panic!("{other:?}"),
    }
    assert!(!sb.dest.join("nowhere").exists());
    sb.assert_outside_untouched();
}

#[test]
fn pax_records_are_parsed_by_length_not_by_line() {
    // A binary xattr value with a newline comes before `size` and `path` (Go sorts records, and
    // "SCHILY..." sorts first). A line-splitting parser drops the later records and reads the
    // entry with the header's size (0) and name: a different archive than Docker sees.
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.user.bin", b"a\nb"),
            ("path", b"real-name"),
            ("size", b"5"),
        ])
        .raw(b"decoy", tar::EntryType::Regular, b"", b"", |_| {})
        .raw(b"hello", tar::EntryType::Regular, b"", b"", |_| {})
        .finish();
    // The raw "decoy" header says size 0, but PAX says 5: the "hello" header block is that
    // entry's data (and padding), as Go's archive/tar reads it too. A line-splitting parser would
    // have made an empty "decoy" and a file "hello" instead.
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(common::listing(&sb.dest), vec!["real-name".to_string()]);
    assert_eq!(fs::read(sb.dest.join("real-name")).unwrap(), b"hello");

    // Well-formed: the PAX size and name win, and the binary value arrives intact.
    let sb = Sandbox::new();
    let mut body = b"12345".to_vec();
    body.resize(512, 0);
    let mut tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.user.bin", b"a\nb"),
            ("path", b"real-name"),
            ("size", b"5"),
        ])
        .raw(b"decoy", tar::EntryType::Regular, b"", b"", |_| {})
        .unfinished();
    tar.extend_from_slice(&body);
    tar.extend(std::iter::repeat_n(0u8, 1024));
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(fs::read(sb.dest.join("real-name")).unwrap(), b"12345");
    assert_eq!(
        xattr::get(sb.dest.join("real-name"), "user.bin")
            .unwrap()
            .as_deref(),
        Some(&b"a\nb"[..])
    );
    assert!(!sb.dest.join("decoy").exists());
}

#[test]
fn malformed_extension_headers_are_corrupt() {
    for tar in [
        // A record whose length runs past the header data.
        RawTar::new().pax(&[("path", b"x")]).file("f", b"").finish(),
        // A PAX header with no entry after it.
        RawTar::new().pax(&[("path", b"x")]).finish(),
    ] {
        let sb = Sandbox::new();
        let mut tar = tar;
        if tar.len() > 2048 {
            // Corrupt the length of the record ("9 path=x\n" -> "7 path=x\n"): the record then
            // ends inside the value, not at a newline.
            assert_eq!(&tar[512..521], b"9 path=x\n");
            tar[512] = b'7';
        }
        let err = sb.unpack(&tar, WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::Corrupt { .. } | ArchiveError::Truncated { .. }
            ),
            "{err:?}"
        );
        sb.assert_outside_untouched();
    }
}

#[test]
fn overlay_whiteout_does_not_hide_its_own_layer() {
    let sb = Sandbox::new();
    let tar = RawTar::new().file("f", b"mine").file(".wh.f", b"").finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"mine");
    // A whiteout replacing something that is not from this layer (dest reused) is made.
    let tar = RawTar::new().file(".wh.f", b"").finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert!(fs::symlink_metadata(sb.dest.join("f"))
        .unwrap()
        .file_type()
        .is_char_device());
}
