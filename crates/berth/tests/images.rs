//! Images: import, tag, rmi, and the bad tarballs that must never write outside the store.

mod common;

use std::io::Write;

use common::{stderr, Berth};

/// A tar whose single entry has a raw name (the tar crate refuses to write `..` itself).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_old();
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        if !link.is_empty() {
            let l = link.as_bytes();
            header.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn import_bytes(b: &Berth, bytes: &[u8]) -> std::process::Output {
    let path = b.dir.path().join("in.tar");
    std::fs::write(&path, bytes).unwrap();
    b.run(&["import", path.to_str().unwrap(), "bad:latest"])
}

#[test]
fn malicious_tars_are_refused_and_write_nothing_outside() {
    use tar::EntryType::*;
    let b = Berth::empty();
    let outside = b.dir.path().join("outside");
    let outside_s = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            raw_tar(&[("../../../../../../outside", Regular, "", b"x")]),
        ),
        (
            "absolute",
            raw_tar(&[(outside_s.as_str(), Regular, "", b"x")]),
        ),
        (
            "symlink escape",
            raw_tar(&[
                ("link", Symlink, "../../../../../../..", b""),
                ("link/tmp/x", Regular, "", b"x"),
            ]),
        ),
        (
            "hardlink out",
            raw_tar(&[("h", Link, "../../../../etc/passwd", b"")]),
        ),
        ("device node", raw_tar(&[("dev/sda", Block, "", b"")])),
    ];
    for (what, bytes) in cases {
        let out = import_bytes(&b, &bytes);
        assert_eq!(out.status.code(), Some(1), "{what}: import should fail");
        assert!(!stderr(&out).is_empty(), "{what}: no error message");
        assert!(!outside.exists(), "{what}: wrote outside the store");
    }
    // An absolute symlink is resolved inside the layer, as Docker does: the write lands in the image.
    let through = raw_tar(&[
        ("link", Symlink, "/", b""),
        ("link/outside", Regular, "", b"x"),
    ]);
    let path = b.dir.path().join("through.tar");
    std::fs::write(&path, &through).unwrap();
    b.ok(&[
        "import",
        "-c",
        r#"CMD ["true"]"#,
        path.to_str().unwrap(),
        "through:latest",
    ]);
    assert!(
        !outside.exists(),
        "a write through a symlink left the store"
    );
    b.ok(&["rmi", "through:latest"]);
    // Truncated: a valid tar cut in the middle of a file.
    let mut good = raw_tar(&[("big", Regular, "", &[7u8; 4096])]);
    good.truncate(1024);
    let out = import_bytes(&b, &good);
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert_eq!(
        b.ok(&["images", "-q"]),
        "",
        "a refused import left an image"
    );
}

#[test]
fn import_compressed_tag_and_rmi() {
    let b = Berth::with_busybox();
    // gzip and zstd streams from stdin.
    let tar = std::fs::read(common::busybox_tar()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let mut child = b
        .cmd(&["import", "-c", "ENV A=1", "-", "gz:1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&gz).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(b.ok(&["run", "--rm", "gz:1", "sh", "-c", "echo $A"]), "1\n");
    b.ok(&["tag", "busybox", "localhost:5000/mine/bb:v2"]);
    let images = b.ok(&["images"]);
    assert!(
        images.contains("localhost:5000/mine/bb") && images.contains("v2"),
        "{images}"
    );
    // In use by a container: refused without -f.
    b.ok(&["create", "--name", "user", "gz:1", "true"]);
    let out = b.run(&["rmi", "gz:1"]);
    assert!(
        stderr(&out).contains("being used by container"),
        "{}",
        stderr(&out)
    );
    b.ok(&["rm", "user"]);
    assert!(b.ok(&["rmi", "gz:1"]).contains("Deleted: sha256:"));
    let out = b.run(&["rmi", "gz:1"]);
    assert!(stderr(&out).contains("No such image"));
    assert!(b
        .ok(&["rmi", "localhost:5000/mine/bb:v2"])
        .starts_with("Untagged"));
}
