//! Unpacking behaviour: compression, metadata, whiteouts in both modes (with a real overlay
//! mount), and `cp`-style unpacking inside a container rootfs.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};

use berth_archive::{
    decompress, unpack_in_root, unpack_layer, ArchiveError, Compression, WhiteoutMode,
};
use common::{opts, RawTar, Sandbox, MTIME};

fn sample() -> Vec<u8> {
    RawTar::new()
        .dir("etc/")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .finish()
}

#[test]
fn compression_is_sniffed() {
    let plain = sample();
    let gz = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).unwrap();
        enc.finish().unwrap()
    };
    let zst = zstd::encode_all(&plain[..], 0).unwrap();
    for (bytes, expected) in [
        (&plain, Compression::None),
        (&gz, Compression::Gzip),
        (&zst, Compression::Zstd),
    ] {
        let (found, mut stream) = decompress(&bytes[..]).unwrap();
        assert_eq!(found, expected);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain, "{expected:?} round trip");

        let sb = Sandbox::new();
        sb.unpack(bytes, WhiteoutMode::Overlay).unwrap();
        assert_eq!(
            common::tree(&sb.dest),
            vec![
                "etc/",
                "etc/hosts",
                "etc/localtime -> /usr/share/zoneinfo/UTC"
            ]
        );
    }
    // A reader delivering one byte at a time still gets sniffed.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }
    let (found, _) = decompress(Trickle(&zst)).unwrap();
    assert_eq!(found, Compression::Zstd);
    // Empty and tiny streams are plain.
    assert_eq!(decompress(&b""[..]).unwrap().0, Compression::None);
    assert_eq!(decompress(&b"\x1f"[..]).unwrap().0, Compression::None);
    // An empty stream is an empty archive.
    let sb = Sandbox::new();
    assert_eq!(sb.unpack(b"", WhiteoutMode::Overlay).unwrap().entries, 0);
}

#[test]
fn corrupt_gzip_is_an_error() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&sample()).unwrap();
    let mut gz = enc.finish().unwrap();
    let n = gz.len();
    gz[n - 6] ^= 0xff; // the CRC32 trailer, checked only at the end of the stream
    let sb = Sandbox::new();
    let err = sb.unpack(&gz, WhiteoutMode::Overlay).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
}

#[test]
fn metadata_is_preserved() {
    let sb = Sandbox::new();
    let long_dir = "d".repeat(120);
    let long_name = format!("{long_dir}/{}", "f".repeat(200));
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o750);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_000_000_000);
        h.set_size(0);
        b.append_data(&mut h, "dir/", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o4755);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(1_234_567_890);
        h.set_size(4);
        b.append_data(&mut h, "dir/suid", &b"\x7fELF"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_uid(42);
        h.set_gid(43);
        h.set_mtime(1_111_111_111);
        h.set_size(0);
        b.append_link(&mut h, "dir/link", "suid").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o1777);
        h.set_mtime(1_222_222_222);
        h.set_size(0);
        b.append_data(&mut h, "dir/empty/", std::io::empty())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        h.set_mtime(MTIME);
        b.append_data(&mut h, &long_name, &b"ok"[..]).unwrap();
        b.into_inner().unwrap()
    };
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();

    let dir = fs::symlink_metadata(sb.dest.join("dir")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o750);
    assert_eq!((dir.uid(), dir.gid()), (1000, 1001));
    assert_eq!(
        dir.mtime(),
        1_000_000_000,
        "dir mtime set after its contents"
    );
    let suid = fs::symlink_metadata(sb.dest.join("dir/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid bit kept");
    assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
    assert_eq!(suid.mtime(), 1_234_567_890);
    let link = fs::symlink_metadata(sb.dest.join("dir/link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!((link.uid(), link.gid()), (42, 43), "lchown on symlinks");
    assert_eq!(link.mtime(), 1_111_111_111);
    let empty = fs::symlink_metadata(sb.dest.join("dir/empty")).unwrap();
    assert!(empty.is_dir());
    assert_eq!(empty.mode() & 0o7777, 0o1777);
    assert_eq!(empty.mtime(), 1_222_222_222);
    assert_eq!(fs::read(sb.dest.join(&long_name)).unwrap(), b"ok");
}

#[test]
fn pax_headers_are_honoured() {
    let sb = Sandbox::new();
    let long = format!("p/{}/{}", "x".repeat(200), "y".repeat(200));
    let tar = RawTar::new()
        .dir("p/")
        .pax(&[
            ("path", long.as_bytes()),
            ("uid", b"3000000"),
            ("gid", b"3000001"),
            ("mtime", b"1500000000.25"),
            ("SCHILY.xattr.user.comment", b"hello\0world"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
        ])
        .file("short-name", b"data")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    let path = sb.dest.join(&long);
    let meta = fs::symlink_metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (3_000_000, 3_000_001));
    assert_eq!(meta.mtime(), 1_500_000_000);
    assert_eq!(meta.mtime_nsec(), 250_000_000);
    assert_eq!(
        xattr::get(&path, "user.comment").unwrap().as_deref(),
        Some(&b"hello\0world"[..])
    );
    // File capabilities survive the chown that precedes them.
    assert!(xattr::get(&path, "security.capability").unwrap().is_some());
    assert!(!sb.dest.join("short-name").exists());
}

#[test]
fn replacing_entries_follows_tar_semantics() {
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .dir("a/")
        .file("a/x", b"1")
        .file("a", b"file now") // a file replaces a whole directory
        .file("b", b"file")
        .dir("b/") // a directory replaces a file
        .file("b/y", b"2")
        .dir("c/")
        .file("c/z", b"3")
        .dir_with("c/", |h| h.set_mode(0o700)) // a directory merges into a directory
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(common::tree(&sb.dest), vec!["a", "b/", "b/y", "c/", "c/z"]);
    assert_eq!(fs::read(sb.dest.join("a")).unwrap(), b"file now");
    assert_eq!(
        fs::metadata(sb.dest.join("c")).unwrap().mode() & 0o7777,
        0o700
    );
    // Parents the archive does not list are created.
    let sb = Sandbox::new();
    let tar = RawTar::new().file("x/y/z", b"deep").finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        fs::metadata(sb.dest.join("x/y")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn overlay_whiteouts_become_devices_and_xattrs() {
    let tmp = tempfile::tempdir().unwrap();
    let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
    fs::create_dir(&l1).unwrap();
    fs::create_dir(&l2).unwrap();
    let base = RawTar::new()
        .file("gone", b"base")
        .file("stays", b"base")
        .dir("d/")
        .file("d/old", b"base")
        .dir("e/")
        .file("e/old", b"base")
        .finish();
    let top = RawTar::new()
        .file_with(".wh.gone", b"", |h| {
            h.set_uid(7);
            h.set_gid(8);
        })
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"top")
        .file("e/.wh.old", b"")
        .finish();
    unpack_layer(&base[..], &l1, &opts(WhiteoutMode::Overlay)).unwrap();
    unpack_layer(&top[..], &l2, &opts(WhiteoutMode::Overlay)).unwrap();

    let wh = fs::symlink_metadata(l2.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!((wh.uid(), wh.gid()), (7, 8));
    assert_eq!(
        xattr::get(l2.join("d"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("d/.wh..wh..opq").exists());
    // `e` is not listed in the top layer: created implicitly to hold the whiteout.
    assert!(fs::symlink_metadata(l2.join("e/old"))
        .unwrap()
        .file_type()
        .is_char_device());

    let merged = tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let mount = common::OverlayMount::new(&[&l2, &l1], None, &merged);
    assert_eq!(
        common::tree(&mount.merged),
        vec!["d/", "d/new", "e/", "stays"]
    );
    drop(mount);
}

#[test]
fn apply_mode_deletes_and_empties() {
    let sb = Sandbox::new();
    let base = RawTar::new()
        .file("gone", b"base")
        .dir("gonedir/")
        .file("gonedir/x", b"base")
        .dir("d/")
        .file("d/old", b"base")
        .dir("d/sub/")
        .file("d/sub/older", b"base")
        .file("keep", b"base")
        .finish();
    sb.unpack(&base, WhiteoutMode::Apply).unwrap();
    let top = RawTar::new()
        .file(".wh.gone", b"")
        .file(".wh.gonedir", b"")
        .file(".wh.never-existed", b"")
        .file("missing/.wh.x", b"")
        .dir("d/")
        .file("d/-early", b"same layer, before the marker")
        .dir("d/sub/")
        .file("d/sub/mine", b"top")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"top")
        .file("samelayer", b"top")
        .file(".wh.samelayer", b"")
        .finish();
    sb.unpack(&top, WhiteoutMode::Apply).unwrap();
    assert_eq!(
        common::tree(&sb.dest),
        vec![
            "d/",
            "d/-early",
            "d/new",
            "d/sub/",
            "d/sub/mine",
            "keep",
            "samelayer"
        ]
    );
    // Whiteouts of things that are not there do not create anything.
    assert!(!sb.dest.join("missing").exists());
    sb.assert_outside_untouched();
}

#[test]
fn unpack_in_root_stays_in_the_rootfs() {
    let sb = Sandbox::new();
    let root = &sb.dest;
    let in_root_sentinel = root.join(sb.sentinel_rel());
    fs::create_dir_all(&in_root_sentinel).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    // The container's /etc is a symlink to what is, on the host, the sentinel.
    symlink(&sb.sentinel, root.join("etc")).unwrap();
    // And a relative symlink that climbs far above the root.
    symlink("../../../../../../../../..", root.join("tmp/up")).unwrap();

    let tar = RawTar::new()
        .file("hosts", b"10.0.0.1 db\n")
        .symlink("esc", sb.sentinel.to_str().unwrap())
        .file("esc/secret", b"overwritten?\n")
        .finish();
    unpack_in_root(&tar[..], root, "/etc".as_ref(), &opts(WhiteoutMode::Apply)).unwrap();
    assert_eq!(
        fs::read(in_root_sentinel.join("hosts")).unwrap(),
        b"10.0.0.1 db\n"
    );
    // `esc` resolved inside the root too: to the in-root copy of the sentinel path.
    assert_eq!(
        fs::read(in_root_sentinel.join("secret")).unwrap(),
        b"overwritten?\n"
    );
    sb.assert_outside_untouched();

    // Through the climbing symlink, and with `..` in the destination path.
    let tar = RawTar::new().file("f", b"f").finish();
    unpack_in_root(
        &tar[..],
        root,
        "/tmp/up".as_ref(),
        &opts(WhiteoutMode::Apply),
    )
    .unwrap();
    assert_eq!(fs::read(root.join("f")).unwrap(), b"f");
    let tar = RawTar::new().file("g", b"g").finish();
    unpack_in_root(
        &tar[..],
        root,
        "../../../tmp".as_ref(),
        &opts(WhiteoutMode::Apply),
    )
    .unwrap();
    assert_eq!(fs::read(root.join("tmp/g")).unwrap(), b"g");
    sb.assert_outside_untouched();

    // A relative symlink entry may climb as far as the root, judged from its real place in it.
    let tar = RawTar::new().symlink("rel", "../etc/hosts").finish();
    unpack_in_root(&tar[..], root, "/tmp".as_ref(), &opts(WhiteoutMode::Apply)).unwrap();
    let tar = RawTar::new().symlink("rel2", "../../etc").finish();
    assert!(matches!(
        unpack_in_root(&tar[..], root, "/tmp".as_ref(), &opts(WhiteoutMode::Apply)),
        Err(ArchiveError::LinkEscapes { .. })
    ));

    // The destination must exist and be a directory.
    let tar = RawTar::new().file("h", b"h").finish();
    assert!(matches!(
        unpack_in_root(&tar[..], root, "/nope".as_ref(), &opts(WhiteoutMode::Apply)),
        Err(ArchiveError::Io { .. })
    ));
    // `./` does not change the destination directory.
    let before = fs::metadata(root.join("tmp")).unwrap().mode();
    let tar = RawTar::new().dir_with("./", |h| h.set_mode(0o700)).finish();
    unpack_in_root(&tar[..], root, "/tmp".as_ref(), &opts(WhiteoutMode::Apply)).unwrap();
    assert_eq!(fs::metadata(root.join("tmp")).unwrap().mode(), before);
    sb.assert_outside_untouched();
}

#[test]
fn root_entry_sets_dest_metadata() {
    let sb = Sandbox::new();
    let tar = RawTar::new()
        .dir_with("./", |h| {
            h.set_mode(0o711);
            h.set_mtime(1_300_000_000);
        })
        .file("x", b"x")
        .finish();
    sb.unpack(&tar, WhiteoutMode::Overlay).unwrap();
    let meta = fs::metadata(&sb.dest).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o711);
    assert_eq!(meta.mtime(), 1_300_000_000);
}
