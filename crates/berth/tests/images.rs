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
        stderr(&out)
            .contains(r#"unable to remove repository reference "gz:1" (must force) - container"#),
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

/// The size Docker reports for a layer made from `tar`: the apparent sizes of what is not a
/// directory (regular files, symlinks' target lengths), hard links once (their tar entries have no
/// data), which is what Docker's overlay2 driver measures on the unpacked layer.
fn content_size_of_tar(tar: &[u8]) -> u64 {
    let mut archive = tar::Archive::new(tar);
    let mut total = 0;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        total += match header.entry_type() {
            tar::EntryType::Regular => header.size().unwrap(),
            tar::EntryType::Symlink => entry.link_name_bytes().unwrap().len() as u64,
            _ => 0,
        };
    }
    total
}

/// Where a Docker daemon runs (to compare with; the test stands without it).
fn docker_available() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn image_sizes_are_the_unpacked_content_as_docker_counts_it() {
    let b = Berth::with_busybox();
    let tar = std::fs::read(common::busybox_tar()).unwrap();
    let expected = content_size_of_tar(&tar);
    assert!(
        expected < tar.len() as u64,
        "the content is smaller than its tar"
    );
    let size = |field: &str| -> u64 {
        b.ok(&["image", "inspect", "-f", field, "busybox"])
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(size("{{.Size}}"), expected);
    assert_eq!(size("{{.VirtualSize}}"), expected);
    // `images` and `history` print three significant digits, as Docker's %.3g (busybox is ~2 MB).
    let human = format!("{:.2}MB", expected as f64 / 1e6);
    assert_eq!(b.ok(&["images", "--format", "{{.Size}}"]).trim(), human);
    assert_eq!(
        b.ok(&["history", "--format", "{{.Size}}", "busybox"])
            .trim(),
        human
    );
    assert_eq!(
        b.ok(&["history", "-H=false", "--format", "{{.Size}}", "busybox"])
            .trim(),
        expected.to_string()
    );
    // And Docker, importing the same tar, says the same.
    if docker_available() {
        let tag = format!("berth-size-{}:t", std::process::id());
        common::run_ok(std::process::Command::new("docker").args([
            "import",
            common::p(common::busybox_tar()),
            &tag,
        ]));
        let docker = std::process::Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Size}}", &tag])
            .output()
            .unwrap();
        let _ = std::process::Command::new("docker")
            .args(["rmi", &tag])
            .output();
        assert_eq!(common::stdout(&docker).trim(), expected.to_string());
    }
}

#[test]
fn image_prune_counts_only_the_layers_it_frees() {
    let b = Berth::with_busybox();
    let tar = std::fs::read(common::busybox_tar()).unwrap();
    let expected = content_size_of_tar(&tar);
    // Another image of the same layer (another config), and a container keeping busybox in use.
    b.ok(&[
        "import",
        "-c",
        "ENV A=1",
        common::p(common::busybox_tar()),
        "same-layer:1",
    ]);
    b.ok(&["create", "--name", "user", "busybox", "true"]);
    let out = b.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: same-layer:1"), "{out}");
    assert!(
        out.ends_with("Total reclaimed space: 0B\n"),
        "its only layer is busybox's: nothing is freed\n{out}"
    );
    b.ok(&["rm", "user"]);
    let out = b.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: busybox:latest"), "{out}");
    // `image prune` prints Docker's %.4g (units.HumanSize).
    let human = format!("{:.3}MB", expected as f64 / 1e6);
    assert!(
        out.ends_with(&format!("Total reclaimed space: {human}\n")),
        "{human}: {out}"
    );
}

#[test]
fn a_local_image_has_no_digest() {
    let b = Berth::with_busybox();
    let json: serde_json::Value =
        serde_json::from_str(&b.ok(&["images", "--format", "{{json .}}"])).unwrap();
    assert_eq!(json["Digest"], "<none>");
    let table = b.ok(&["images", "--digests"]);
    let row = table.lines().nth(1).unwrap();
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        ["busybox", "latest", "<none>"],
        "{table}"
    );
}

#[test]
fn rmi_by_id_never_deletes_an_image_a_running_container_uses() {
    let b = Berth::with_busybox();
    let id = b.ok(&["images", "-q", "busybox"]).trim().to_string();
    b.ok(&["tag", "busybox", "other/bb:v1"]);
    let running = b.ok(&["run", "-d", "busybox", "sleep", "60"]);
    let running = &running.trim()[..12];
    for args in [vec!["rmi", "-f", &id], vec!["rmi", &id]] {
        let out = b.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "Error response from daemon: conflict: unable to delete {id} (cannot be forced) - \
                 image is being used by running container {running}\n"
            )
        );
        assert_eq!(common::stdout(&out), "", "{args:?} untagged something");
    }
    assert_eq!(
        b.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        "busybox:latest\nother/bb:v1\n",
        "a refused rmi changed the tags"
    );
    b.ok(&["rm", "-f", running]);

    // A stopped container: refused without -f, deleted with it (by ID: all tags), as Docker does;
    // the container keeps its layers and still starts.
    b.ok(&["rmi", "other/bb:v1"]);
    let stopped = b.ok(&[
        "create",
        "--name",
        "stopped",
        "busybox",
        "echo",
        "still here",
    ]);
    let stopped = &stopped.trim()[..12];
    let out = b.run(&["rmi", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "Error response from daemon: conflict: unable to delete {id} (must be forced) - \
             image is being used by stopped container {stopped}\n"
        )
    );
    let out = b.ok(&["rmi", "-f", &id]);
    assert!(
        out.starts_with("Untagged: busybox:latest\nDeleted: sha256:"),
        "{out}"
    );
    assert_eq!(b.ok(&["images", "-q"]), "");
    assert_eq!(b.ok(&["start", "-a", "stopped"]), "still here\n");
}

/// The `SIZE` and `RECLAIMABLE` of the Images row of `system df`, in bytes (Docker's decimal units).
fn df_images(b: &Berth) -> (f64, f64) {
    let table = b.ok(&["system", "df"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("Images"))
        .unwrap_or_else(|| panic!("{table}"))
        .to_string();
    let bytes = |text: &str| {
        let split = text
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale = match unit {
            "B" => 1.0,
            "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            other => panic!("unit {other} in {row}"),
        };
        number.parse::<f64>().unwrap() * scale
    };
    let columns: Vec<&str> = row.split_whitespace().collect();
    (bytes(columns[3]), bytes(columns[4]))
}

#[test]
fn system_df_and_prune_count_shared_layers_once() {
    let b = Berth::with_busybox();
    let (base, _) = df_images(&b);
    // A second image on top of busybox's layer: 100 kB more, not the base twice.
    b.ok(&[
        "run",
        "--name",
        "grow",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/grown bs=1000 count=100 2>/dev/null",
    ]);
    b.ok(&["commit", "grow", "grown:1"]);
    b.ok(&["rm", "grow"]);
    let (total, reclaimable) = df_images(&b);
    assert!(
        (total - base - 100_000.0).abs() < 10_000.0,
        "{base} then {total}"
    );
    assert_eq!(reclaimable, total, "no container uses either image");
    // A container of busybox keeps its layer: only grown:1's own layer is reclaimable.
    b.ok(&["run", "-d", "--name", "keeper", "busybox", "sleep", "600"]);
    let (_, reclaimable) = df_images(&b);
    assert!((reclaimable - 100_000.0).abs() < 10_000.0, "{reclaimable}");
    // And that is what a prune of every unused image frees.
    let out = b.ok(&["system", "prune", "-a", "-f"]);
    assert!(out.contains("Deleted Image:"), "{out}");
    let freed = out
        .lines()
        .find_map(|l| l.strip_prefix("Total reclaimed space: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(freed.starts_with("10") && freed.ends_with("kB"), "{out}");
    b.ok(&["rm", "-f", "keeper"]);
}
