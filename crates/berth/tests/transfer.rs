//! `save` and `load` against real tools: images made by umoci and converted by skopeo are loaded and run;
//! what `berth save` writes is read by skopeo (docker-archive and oci-archive) and umoci; broken and
//! malicious archives are refused without adding anything.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{p, run_ok, skopeo, skopeo_json, stderr, stdout, Berth};
use serde_json::Value;

/// Builds an OCI image layout with umoci in `dir`/oci, tag `t`: the busybox rootfs as its one layer
/// (gzip, as umoci writes it), CMD sh. Returns the layout directory.
fn umoci_image(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = format!("{}:t", p(&layout));
    run_ok(Command::new("umoci").args(["init", "--layout", p(&layout)]));
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    run_ok(Command::new("umoci").args(["unpack", "--image", &image, p(&bundle)]));
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(common::busybox_tar())
            .arg("-C")
            .arg(bundle.join("rootfs")),
    );
    run_ok(Command::new("umoci").args(["repack", "--image", &image, p(&bundle)]));
    run_ok(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "sh"]));
    std::fs::remove_dir_all(&bundle).unwrap();
    layout
}

/// Runs a berth command with `input` on its stdin.
fn with_stdin(b: &Berth, args: &[&str], input: &[u8]) -> Output {
    let mut child = b
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// One entry of a tar, enough to rewrite the archives the tests tamper with.
#[derive(Clone)]
struct Entry {
    name: String,
    kind: tar::EntryType,
    link: String,
    data: Vec<u8>,
}

impl Entry {
    fn file(name: &str, data: &[u8]) -> Self {
        Entry {
            name: name.into(),
            kind: tar::EntryType::Regular,
            link: String::new(),
            data: data.to_vec(),
        }
    }
    fn special(name: &str, kind: tar::EntryType, link: &str) -> Self {
        Entry {
            name: name.into(),
            kind,
            link: link.into(),
            data: Vec::new(),
        }
    }
}

fn read_tar(bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let kind = entry.header().entry_type();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap())
            .unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(Entry {
            name,
            kind,
            link,
            data,
        });
    }
    out
}

/// Writes entries with raw names (the tar crate refuses to write `..` or absolute names itself).
fn write_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_old();
        let name = e.name.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(e.kind);
        header.set_mode(0o644);
        header.set_size(e.data.len() as u64);
        let link = e.link.as_bytes();
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        builder.append(&header, e.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn entry<'a>(entries: &'a mut [Entry], name: &str) -> &'a mut Entry {
    entries
        .iter_mut()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in the archive"))
}

fn docker_manifest(entries: &[Entry]) -> Value {
    let m = entries.iter().find(|e| e.name == "manifest.json").unwrap();
    serde_json::from_slice(&m.data).unwrap()
}

/// The first layer path of the first image of a docker-archive.
fn first_layer(entries: &[Entry]) -> String {
    docker_manifest(entries)[0]["Layers"][0]
        .as_str()
        .unwrap()
        .to_string()
}

/// The digest of the manifest an image has in the store, as `save` lists it in `index.json` (a
/// local image shows no digest in `images`, as in Docker).
fn saved_manifest_digest(b: &Berth, image: &str) -> String {
    let out = b.cmd(&["save", image]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = read_tar(&out.stdout);
    let index = entries.iter().find(|e| e.name == "index.json").unwrap();
    let index: Value = serde_json::from_slice(&index.data).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn load_file(b: &Berth, bytes: &[u8], name: &str) -> Output {
    let path = b.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    b.run(&["load", "-i", p(&path)])
}

/// Every file name under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Nothing is left in the store's tmp dir (spool directories, half-written blobs).
fn assert_tmp_clean(b: &Berth) {
    let left: Vec<_> = walk(&b.root.join("tmp"));
    assert!(left.is_empty(), "left in tmp: {left:?}");
}

#[test]
fn umoci_image_via_skopeo_docker_archive_loads_and_runs() {
    let b = Berth::empty();
    let layout = umoci_image(b.dir.path());
    let archive = b.dir.path().join("bb.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:t", p(&layout)),
        &format!("docker-archive:{}:bb:latest", p(&archive)),
    ]);
    let out = b.ok(&["load", "-i", p(&archive)]);
    assert_eq!(out, "Loaded image: bb:latest\n");
    assert_eq!(b.ok(&["run", "--rm", "bb:latest", "echo", "ok"]), "ok\n");
    // The image ID is the digest of the config skopeo wrote.
    let config = b.dir.path().join("config.json");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--config",
        &format!("oci:{}:t", p(&layout)),
    ]);
    std::fs::write(&config, raw).unwrap();
    let sum = run_ok(Command::new("sha256sum").arg(&config));
    assert_eq!(
        b.ok(&["images", "-q", "--no-trunc", "bb"]).trim(),
        format!("sha256:{}", sum.split_whitespace().next().unwrap())
    );

    // The same archive gzip-compressed, from stdin, with -q.
    b.ok(&["rmi", "bb:latest"]);
    assert_eq!(b.ok(&["images", "-q"]), "");
    let gz = gzip(&std::fs::read(&archive).unwrap());
    let out = with_stdin(&b, &["image", "load", "-q"], &gz);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Loaded image: bb:latest\n");
    assert_eq!(
        b.ok(&["run", "--rm", "bb", "sh", "-c", "echo gz ok"]),
        "gz ok\n"
    );
    assert_tmp_clean(&b);
}

#[test]
fn umoci_image_via_skopeo_oci_archive_loads_runs_and_saves_back() {
    let b = Berth::empty();
    let layout = umoci_image(b.dir.path());
    let source = format!("oci:{}:t", p(&layout));
    let named = b.dir.path().join("named.tar");
    skopeo(&[
        "copy",
        &source,
        &format!("oci-archive:{}:bb:oci", p(&named)),
    ]);
    assert_eq!(b.ok(&["load", "-i", p(&named)]), "Loaded image: bb:oci\n");
    assert_eq!(b.ok(&["run", "--rm", "bb:oci", "echo", "ok"]), "ok\n");
    // The OCI manifest (with its gzip layer) is kept as it was: same digest as in the layout.
    let manifest_digest = skopeo_json(&["inspect", &source])["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(saved_manifest_digest(&b, "bb:oci"), manifest_digest);

    // A bare ref name (`latest`) names no repository: the image is loaded untagged.
    let bare = b.dir.path().join("bare.tar");
    skopeo(&["copy", &source, &format!("oci-archive:{}:latest", p(&bare))]);
    let out = b.ok(&["load", "-i", p(&bare)]);
    let id = out
        .strip_prefix("Loaded image ID: ")
        .unwrap_or_else(|| panic!("{out}"))
        .trim();
    assert_eq!(b.ok(&["run", "--rm", id, "echo", "by id"]), "by id\n");

    // Saving an image whose layer is stored gzip-compressed: docker-archive readers get the plain tar.
    let saved = b.dir.path().join("saved.tar");
    b.ok(&["save", "-o", p(&saved), "bb:oci"]);
    let entries = read_tar(&std::fs::read(&saved).unwrap());
    let layer = first_layer(&entries);
    let layer_data = &entries.iter().find(|e| e.name == layer).unwrap().data;
    assert!(
        layer_data.len() > 512 && &layer_data[257..262] == b"ustar",
        "manifest.json must point at an uncompressed tar"
    );
    let inspect = skopeo_json(&["inspect", &format!("docker-archive:{}", p(&saved))]);
    let config = skopeo_json(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}", p(&saved)),
    ]);
    assert_eq!(inspect["Layers"], config["rootfs"]["diff_ids"]);
    // The OCI side keeps the compressed blob and the original manifest.
    let oci = skopeo_json(&["inspect", &format!("oci-archive:{}:oci", p(&saved))]);
    assert_eq!(oci["Digest"].as_str().unwrap(), manifest_digest);
    // And umoci can unpack what skopeo makes of the docker-archive side.
    let back = b.dir.path().join("back");
    skopeo(&[
        "copy",
        &format!("docker-archive:{}", p(&saved)),
        &format!("oci:{}:x", p(&back)),
    ]);
    let bundle = b.dir.path().join("back-bundle");
    run_ok(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:x", p(&back)),
        p(&bundle),
    ]));
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert_tmp_clean(&b);
}

#[test]
fn save_is_read_by_skopeo_and_loads_into_a_fresh_store() {
    let b = Berth::with_busybox();
    b.ok(&["tag", "busybox", "localhost:5000/other/bb:v1"]);
    let out = b.dir.path().join("out.tar");
    b.ok(&["save", "-o", p(&out), "busybox"]);
    let archive = format!("docker-archive:{}", p(&out));
    let layers: Value =
        serde_json::from_str(&b.ok(&["inspect", "-f", "{{json .RootFS.Layers}}", "busybox"]))
            .unwrap();
    let inspect = skopeo_json(&["inspect", &archive]);
    assert_eq!(inspect["Layers"], layers);
    let config = skopeo_json(&["inspect", "--config", &archive]);
    assert_eq!(config["rootfs"]["diff_ids"], layers);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    let manifest_digest = saved_manifest_digest(&b, "busybox");
    let oci = skopeo_json(&["inspect", &format!("oci-archive:{}:latest", p(&out))]);
    assert_eq!(oci["Digest"].as_str().unwrap(), manifest_digest);
    assert_eq!(oci["Layers"], layers);

    // Deterministic: stdout gets the same bytes.
    let piped = b.cmd(&["save", "busybox:latest"]).output().unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(
        piped.stdout == std::fs::read(&out).unwrap(),
        "save is not deterministic"
    );

    // A fresh store loads it and runs it, with the same image ID.
    let fresh = Berth::empty();
    assert_eq!(
        fresh.ok(&["load", "-i", p(&out)]),
        "Loaded image: busybox:latest\n"
    );
    assert_eq!(
        fresh.ok(&["images", "-q", "--no-trunc"]),
        b.ok(&["images", "-q", "--no-trunc", "busybox"])
    );
    assert_eq!(fresh.ok(&["run", "--rm", "busybox", "echo", "ok"]), "ok\n");

    // Two tags of one image: one manifest.json entry with both, one index.json entry per tag.
    let both = b.dir.path().join("both.tar");
    b.ok(&[
        "image",
        "save",
        "--output",
        p(&both),
        "busybox",
        "localhost:5000/other/bb:v1",
    ]);
    let entries = read_tar(&std::fs::read(&both).unwrap());
    let manifest = docker_manifest(&entries);
    assert_eq!(manifest.as_array().unwrap().len(), 1);
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["busybox:latest", "localhost:5000/other/bb:v1"])
    );
    let index: Value = serde_json::from_slice(
        &entries
            .iter()
            .find(|e| e.name == "index.json")
            .unwrap()
            .data,
    )
    .unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "docker.io/library/busybox:latest",
            "localhost:5000/other/bb:v1"
        ]
    );
    let fresh2 = Berth::empty();
    assert_eq!(
        fresh2.ok(&["load", "-i", p(&both)]),
        "Loaded image: busybox:latest\nLoaded image: localhost:5000/other/bb:v1\n"
    );

    // By ID: no tags, and loading it says so.
    let id = b.ok(&["images", "-q", "--no-trunc", "busybox"]);
    let id = id.trim();
    let by_id = b.dir.path().join("by-id.tar");
    b.ok(&["save", "-o", p(&by_id), &id[7..19]]);
    let entries = read_tar(&std::fs::read(&by_id).unwrap());
    assert_eq!(
        docker_manifest(&entries)[0]["RepoTags"],
        serde_json::json!([])
    );
    let fresh3 = Berth::empty();
    assert_eq!(
        fresh3.ok(&["load", "-i", p(&by_id)]),
        format!("Loaded image ID: {id}\n")
    );
    assert!(fresh3.ok(&["images"]).contains("<none>"));
}

#[test]
fn save_refuses_unknown_images_and_terminals() {
    let b = Berth::with_busybox();
    let target = b.dir.path().join("x.tar");
    let out = b.run(&["save", "-o", p(&target), "busybox", "nosuch:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No such image: nosuch:1"),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(b.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("x.tar"))
        .collect();
    assert!(left.is_empty(), "a failed save left {left:?}");
    // An existing file is not clobbered by a failed save.
    std::fs::write(&target, b"keep").unwrap();
    assert!(!b
        .run(&["save", "-o", p(&target), "nosuch"])
        .status
        .success());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    // stdout on a terminal: `script` gives the command a pty.
    let command = format!(
        "{} --root {} --runroot {} save busybox",
        env!("CARGO_BIN_EXE_berth"),
        p(&b.root),
        p(&b.runroot)
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("cowardly refusing to save to a terminal"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn old_docker_archive_layouts_load() {
    // skopeo's docker-archive has the legacy `<id>/layer.tar` as symlinks to the layer files; point
    // manifest.json at the symlink, then at a plain file in that place, then at a gzip-compressed one.
    let b = Berth::empty();
    let layout = umoci_image(b.dir.path());
    let archive = b.dir.path().join("bb.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:t", p(&layout)),
        &format!("docker-archive:{}:bb:old", p(&archive)),
    ]);
    let entries = read_tar(&std::fs::read(&archive).unwrap());
    let link = entries
        .iter()
        .find(|e| e.kind == tar::EntryType::Symlink && e.name.ends_with("/layer.tar"))
        .expect("skopeo writes legacy layer symlinks")
        .name
        .clone();
    let layer = first_layer(&entries);
    let layer_data = entries
        .iter()
        .find(|e| e.name == layer)
        .unwrap()
        .data
        .clone();
    let with_layers = |entries: &[Entry], path: &str| {
        let mut entries = entries.to_vec();
        let m = entry(&mut entries, "manifest.json");
        let mut manifest: Value = serde_json::from_slice(&m.data).unwrap();
        manifest[0]["Layers"] = serde_json::json!([path]);
        m.data = serde_json::to_vec(&manifest).unwrap();
        entries
    };
    let through_link = with_layers(&entries, &link);
    let out = load_file(&b, &write_tar(&through_link), "link.tar");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Loaded image: bb:old\n");
    b.ok(&["rmi", "bb:old"]);

    let mut plain: Vec<Entry> = with_layers(&entries, &link)
        .into_iter()
        .filter(|e| e.name != link && e.name != layer)
        .collect();
    plain.push(Entry::file(&link, &layer_data));
    let out = load_file(&b, &write_tar(&plain), "plain.tar");
    assert!(out.status.success(), "{}", stderr(&out));
    b.ok(&["rmi", "bb:old"]);

    let mut compressed = plain.clone();
    entry(&mut compressed, &link).data = gzip(&layer_data);
    let out = load_file(&b, &write_tar(&compressed), "gz-layer.tar");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.ok(&["run", "--rm", "bb:old", "echo", "ok"]), "ok\n");
    assert_tmp_clean(&b);
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

#[test]
fn nested_oci_index_picks_this_platform() {
    // index.json → an image index blob → [a manifest for another platform that the archive lacks, ours].
    let b = Berth::with_busybox();
    let saved = b.dir.path().join("saved.tar");
    b.ok(&["save", "-o", p(&saved), "busybox"]);
    let mut entries = read_tar(&std::fs::read(&saved).unwrap());
    entries.retain(|e| e.name != "manifest.json" && e.name != "repositories");
    let index_entry = entry(&mut entries, "index.json");
    let index: Value = serde_json::from_slice(&index_entry.data).unwrap();
    let mut ours = index["manifests"][0].clone();
    ours.as_object_mut().unwrap().remove("annotations");
    let other = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "e".repeat(64)),
        "size": 1234,
        "platform": {"architecture": "s390x", "os": "linux"},
    });
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other, ours],
    }))
    .unwrap();
    let digest = sha256_hex(&nested);
    index_entry.data = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": nested.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/nested:1"},
        }],
    }))
    .unwrap();
    entries.push(Entry::file(&format!("blobs/sha256/{digest}"), &nested));
    let fresh = Berth::empty();
    let out = load_file(&fresh, &write_tar(&entries), "nested.tar");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Loaded image: nested:1\n");
    assert_eq!(fresh.ok(&["run", "--rm", "nested:1", "echo", "ok"]), "ok\n");
}

#[test]
fn known_layers_are_still_verified() {
    // The store already has the busybox layer; archives bring a tampered gzip copy of it claiming the
    // same diff ID. Neither a docker-archive nor an OCI layout may slip it in.
    let b = Berth::with_busybox();
    let saved = b.dir.path().join("saved.tar");
    b.ok(&["save", "-o", p(&saved), "busybox"]);
    let entries = read_tar(&std::fs::read(&saved).unwrap());
    let layer = first_layer(&entries);
    let mut tampered = entries
        .iter()
        .find(|e| e.name == layer)
        .unwrap()
        .data
        .clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    let tampered_gz = gzip(&tampered);
    b.ok(&["rmi", "busybox"]);
    b.ok(&[
        "import",
        "-c",
        r#"CMD ["sh"]"#,
        p(common::busybox_tar()),
        "keeper:1",
    ]);

    // docker-archive: manifest.json points at the gzip copy.
    let mut docker: Vec<Entry> = entries
        .iter()
        .filter(|e| e.name != "index.json" && e.name != layer)
        .cloned()
        .collect();
    {
        let m = entry(&mut docker, "manifest.json");
        let mut manifest: Value = serde_json::from_slice(&m.data).unwrap();
        manifest[0]["Layers"] = serde_json::json!(["layer.tar.gz"]);
        m.data = serde_json::to_vec(&manifest).unwrap();
    }
    docker.push(Entry::file("layer.tar.gz", &tampered_gz));

    // OCI layout: a new manifest whose layer is the gzip copy.
    let index: Value = serde_json::from_slice(
        &entries
            .iter()
            .find(|e| e.name == "index.json")
            .unwrap()
            .data,
    )
    .unwrap();
    let old_manifest_name = format!(
        "blobs/sha256/{}",
        &index["manifests"][0]["digest"].as_str().unwrap()[7..]
    );
    let mut manifest: Value = serde_json::from_slice(
        &entries
            .iter()
            .find(|e| e.name == old_manifest_name)
            .unwrap()
            .data,
    )
    .unwrap();
    let gz_hex = sha256_hex(&tampered_gz);
    manifest["layers"][0] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": format!("sha256:{gz_hex}"),
        "size": tampered_gz.len(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_hex = sha256_hex(&manifest);
    let mut oci: Vec<Entry> = entries
        .iter()
        .filter(|e| e.name != "manifest.json" && e.name != layer)
        .cloned()
        .collect();
    {
        let i = entry(&mut oci, "index.json");
        let mut index = index.clone();
        index["manifests"][0]["digest"] = format!("sha256:{manifest_hex}").into();
        index["manifests"][0]["size"] = manifest.len().into();
        i.data = serde_json::to_vec(&index).unwrap();
    }
    oci.push(Entry::file(&format!("blobs/sha256/{gz_hex}"), &tampered_gz));
    oci.push(Entry::file(
        &format!("blobs/sha256/{manifest_hex}"),
        &manifest,
    ));

    for (what, archive) in [("docker-archive", docker), ("oci layout", oci)] {
        let out = load_file(&b, &write_tar(&archive), "tampered.tar");
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("does not match its diff ID"),
            "{what}: {}",
            stderr(&out)
        );
        assert!(!b.ok(&["images"]).contains("busybox"), "{what}: tagged");
    }
    // The untampered archive still loads next to the existing layer.
    assert_eq!(
        b.ok(&["load", "-i", p(&saved)]),
        "Loaded image: busybox:latest\n"
    );
    assert_tmp_clean(&b);
}

#[test]
fn bad_archives_are_refused_and_add_nothing() {
    let b = Berth::empty();
    // A valid docker-archive (from skopeo) and a valid berth save to tamper with.
    let layout = umoci_image(b.dir.path());
    let skopeo_tar = b.dir.path().join("skopeo.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:t", p(&layout)),
        &format!("docker-archive:{}:bb:latest", p(&skopeo_tar)),
    ]);
    let docker = read_tar(&std::fs::read(&skopeo_tar).unwrap());
    let layer = first_layer(&docker);
    let saver = Berth::with_busybox();
    let saved_path = saver.dir.path().join("saved.tar");
    saver.ok(&["save", "-o", p(&saved_path), "busybox"]);
    let saved = read_tar(&std::fs::read(&saved_path).unwrap());
    let saved_layer = first_layer(&saved);

    let evil_abs = std::env::temp_dir().join(format!("berth-evil-{}", std::process::id()));
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut with = |what, mut entries: Vec<Entry>, extra: Vec<Entry>, expect| {
        entries.extend(extra);
        cases.push((what, write_tar(&entries), expect));
    };
    with(
        "dotdot entry",
        vec![Entry::file("../evil", b"x")],
        docker.clone(),
        "'..'",
    );
    with(
        "absolute entry",
        vec![Entry::file(p(&evil_abs), b"x")],
        docker.clone(),
        "absolute",
    );
    with(
        "hardlink",
        docker.clone(),
        vec![Entry::special(
            "h",
            tar::EntryType::Link,
            "../../etc/passwd",
        )],
        "hardlink",
    );
    with(
        "device",
        docker.clone(),
        vec![Entry::special("dev", tar::EntryType::Block, "")],
        "block device",
    );
    // A manifest.json pointing through a symlink that leaves the archive.
    let mut escape = docker.clone();
    {
        let m = entry(&mut escape, "manifest.json");
        let mut manifest: Value = serde_json::from_slice(&m.data).unwrap();
        manifest[0]["Layers"] = serde_json::json!(["sneaky"]);
        m.data = serde_json::to_vec(&manifest).unwrap();
    }
    with(
        "symlink out",
        escape,
        vec![Entry::special(
            "sneaky",
            tar::EntryType::Symlink,
            "../../../etc/passwd",
        )],
        "outside the archive",
    );
    // A byte of the layer changed: it no longer matches the config's diff ID.
    let mut edited = docker.clone();
    {
        let l = entry(&mut edited, &layer);
        let mid = l.data.len() / 2;
        l.data[mid] ^= 0xff;
    }
    with(
        "edited layer",
        edited.clone(),
        vec![],
        "does not match its diff ID",
    );
    // The same, gzip-compressed: only found while decompressing into the store.
    let mut edited_gz = edited;
    {
        let l = entry(&mut edited_gz, &layer);
        l.data = gzip(&l.data);
    }
    with(
        "edited compressed layer",
        edited_gz.clone(),
        vec![],
        "does not match its diff ID",
    );
    // In an OCI layout, a blob whose content is not its name.
    let mut edited_oci = saved.clone();
    {
        let l = entry(&mut edited_oci, &saved_layer);
        let mid = l.data.len() / 2;
        l.data[mid] ^= 0xff;
    }
    with(
        "edited OCI blob",
        edited_oci,
        vec![],
        "does not match its digest",
    );
    // An index.json descriptor whose size is not the blob's.
    let mut wrong_size = saved.clone();
    {
        let i = entry(&mut wrong_size, "index.json");
        let mut index: Value = serde_json::from_slice(&i.data).unwrap();
        let size = index["manifests"][0]["size"].as_u64().unwrap();
        index["manifests"][0]["size"] = (size + 1).into();
        i.data = serde_json::to_vec(&index).unwrap();
    }
    with("descriptor size", wrong_size, vec![], "but index.json says");
    // manifest.json naming a file the archive lacks.
    let missing: Vec<Entry> = docker.iter().filter(|e| e.name != layer).cloned().collect();
    with(
        "missing layer",
        missing,
        vec![],
        "which is not a file in the archive",
    );
    cases.push((
        "garbage",
        (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        "not a tar archive",
    ));
    cases.push(("empty", Vec::new(), "no files"));
    cases.push((
        "a rootfs, not an image",
        std::fs::read(common::busybox_tar()).unwrap(),
        "neither manifest.json",
    ));
    // Two images, the second broken only in its compressed layer: the first must not be added either.
    let mut two = saved.clone();
    {
        let m = entry(&mut two, "manifest.json");
        let mut manifest: Value = serde_json::from_slice(&m.data).unwrap();
        let second = &docker_manifest(&edited_gz)[0];
        manifest.as_array_mut().unwrap().push(second.clone());
        m.data = serde_json::to_vec(&manifest).unwrap();
    }
    two.retain(|e| e.name != "index.json");
    two.extend(
        edited_gz
            .into_iter()
            .filter(|e| e.name != "manifest.json" && e.name != "repositories"),
    );
    cases.push((
        "second image broken",
        write_tar(&two),
        "does not match its diff ID",
    ));

    for (what, bytes, expect) in cases {
        let out = load_file(&b, &bytes, "bad.tar");
        eprintln!("{what}: {}", stderr(&out).trim_end());
        assert_eq!(out.status.code(), Some(1), "{what}: load should fail");
        assert!(
            stderr(&out).contains(expect),
            "{what}: expected {expect:?} in: {}",
            stderr(&out)
        );
        assert_eq!(b.ok(&["images", "-q"]), "", "{what}: an image was added");
        assert_tmp_clean(&b);
        assert!(!evil_abs.exists(), "{what}: wrote {}", evil_abs.display());
        let evil: Vec<_> = walk(b.dir.path())
            .into_iter()
            .filter(|f| f.file_name().is_some_and(|n| n == "evil"))
            .collect();
        assert!(evil.is_empty(), "{what}: wrote {evil:?}");
    }
    // Same from stdin, gzip-compressed.
    let out = with_stdin(
        &b,
        &["load"],
        &gzip(&write_tar(&[Entry::file("../evil", b"x")])),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("'..'"), "{}", stderr(&out));
    // The good archive still loads after all that.
    let out = b.ok(&["load", "-i", p(&skopeo_tar)]);
    assert_eq!(out, "Loaded image: bb:latest\n");
}

/// Where a Docker daemon runs (the tests never need one; this one checks interop when it is there).
fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn save_is_loaded_and_run_by_docker_where_dockerd_runs() {
    if !docker_available() {
        eprintln!("dockerd is not running here: skipping the docker load round trip");
        return;
    }
    let b = Berth::with_busybox();
    let tag = format!("berth-interop-{}:t", std::process::id());
    b.ok(&["tag", "busybox", &tag]);
    let archive = b.dir.path().join("for-docker.tar");
    b.ok(&["save", "-o", p(&archive), &tag]);
    let loaded = run_ok(Command::new("docker").args(["load", "-i", p(&archive)]));
    assert!(loaded.contains(&tag), "{loaded}");
    let out = Command::new("docker")
        .args(["run", "--rm", &tag, "echo", "ran in docker"])
        .output()
        .unwrap();
    // And back: what `docker save` writes loads into a fresh Berth store and runs.
    let from_docker = b.dir.path().join("from-docker.tar");
    let saved = Command::new("docker")
        .args(["save", "-o", p(&from_docker), &tag])
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert_eq!(stdout(&out), "ran in docker\n", "{}", stderr(&out));
    assert!(saved.status.success(), "{}", stderr(&saved));
    let fresh = Berth::empty();
    let loaded = fresh.ok(&["load", "-i", p(&from_docker)]);
    assert!(loaded.contains(&tag), "{loaded}");
    assert_eq!(fresh.ok(&["run", "--rm", &tag, "echo", "back"]), "back\n");
}

/// Follows an archive symlink by name (relative to its directory) to the regular file it names.
fn resolve_in_archive<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    let e = entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in the archive"));
    if e.kind != tar::EntryType::Symlink {
        return e;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for part in e.link.split('/') {
        match part {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            p => parts.push(p),
        }
    }
    resolve_in_archive(entries, &parts.join("/"))
}

#[test]
fn repositories_names_legacy_layer_directories_that_are_in_the_archive() {
    let b = Berth::with_busybox();
    // A two-layer image sharing its bottom layer with busybox.
    b.ok(&["run", "--name", "c", "busybox", "touch", "/added"]);
    b.ok(&["commit", "c", "two:1"]);
    let layers = |image: &str| -> Vec<String> {
        serde_json::from_str(&b.ok(&["inspect", "-f", "{{json .RootFS.Layers}}", image])).unwrap()
    };
    let out = b.dir.path().join("both.tar");
    b.ok(&["save", "-o", p(&out), "busybox", "two:1"]);
    let entries = read_tar(&std::fs::read(&out).unwrap());
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "an entry is written twice");
    let repositories: Value = serde_json::from_slice(
        &entries
            .iter()
            .find(|e| e.name == "repositories")
            .expect("a repositories file")
            .data,
    )
    .unwrap();
    for (repo, tag, image) in [("busybox", "latest", "busybox"), ("two", "1", "two:1")] {
        let id = repositories[repo][tag].as_str().unwrap();
        let version = entries.iter().find(|e| e.name == format!("{id}/VERSION"));
        assert_eq!(
            version.map(|e| e.data.as_slice()),
            Some(&b"1.0"[..]),
            "{id}/VERSION"
        );
        let json: Value =
            serde_json::from_slice(&entry_data(&entries, &format!("{id}/json"))).unwrap();
        assert_eq!(json["id"], id);
        // The top layer's JSON is the image's v1 config; the layer is the image's top layer.
        assert_eq!(json["architecture"], "amd64");
        let layer = resolve_in_archive(&entries, &format!("{id}/layer.tar"));
        let top = layers(image).pop().unwrap();
        assert_eq!(
            format!("sha256:{}", sha256_hex(&layer.data)),
            top,
            "{image}"
        );
        if image == "two:1" {
            // Its parent is the directory of busybox's layer, written once for both images.
            let parent = json["parent"].as_str().expect("a parent");
            let below = resolve_in_archive(&entries, &format!("{parent}/layer.tar"));
            assert_eq!(
                format!("sha256:{}", sha256_hex(&below.data)),
                layers("busybox")[0]
            );
        }
    }
    // skopeo still reads both images, and a fresh store loads them.
    for name in ["busybox:latest", "two:1"] {
        let inspect = skopeo_json(&["inspect", &format!("docker-archive:{}:{name}", p(&out))]);
        assert_eq!(
            serde_json::to_value(layers(name)).unwrap(),
            inspect["Layers"]
        );
    }
    let fresh = Berth::empty();
    assert_eq!(
        fresh.ok(&["load", "-i", p(&out)]),
        "Loaded image: busybox:latest\nLoaded image: two:1\n"
    );
    assert_eq!(
        fresh.ok(&["run", "--rm", "two:1", "ls", "/added"]),
        "/added\n"
    );
}

fn entry_data(entries: &[Entry], name: &str) -> Vec<u8> {
    resolve_in_archive(entries, name).data.clone()
}
