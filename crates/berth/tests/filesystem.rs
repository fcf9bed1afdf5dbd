//! `cp`, `export`, `diff` and `commit` against real containers.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::{stderr, stdout, Berth};

fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut child = Command::new("tar")
        .arg("-tf")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn cp_both_directions_with_dockers_destination_rules() {
    let b = Berth::with_busybox();
    let host = b.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "cp1",
        "-v",
        "cpvol:/data",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /srv/d && echo hello > /srv/d/a && chown 123:45 /srv/d/a && chmod 640 /srv/d/a \
         && echo vol > /data/v && touch /tmp/ready && sleep 300",
    ]);
    while !b
        .run(&["exec", "cp1", "test", "-f", "/tmp/ready"])
        .status
        .success()
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Directory to a new host path: created with the directory's contents; the mode kept, the
    // owner the user copying (Docker's), or the container's with -a.
    let out = host.join("d-copy");
    b.ok(&["cp", "cp1:/srv/d", out.to_str().unwrap()]);
    let a = std::fs::metadata(out.join("a")).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "hello\n");
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o777), (0, 0, 0o640));
    let archived = host.join("d-archived");
    b.ok(&["cp", "-a", "cp1:/srv/d", archived.to_str().unwrap()]);
    let a = std::fs::metadata(archived.join("a")).unwrap();
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o777), (123, 45, 0o640));
    std::fs::remove_dir_all(&archived).unwrap();
    // Into an existing directory: lands under the source's name.
    b.ok(&["cp", "cp1:/srv/d", host.to_str().unwrap()]);
    assert!(host.join("d/a").is_file());
    // A file to a new name; from a volume; a tar on stdout.
    b.ok(&["cp", "cp1:/data/v", host.join("v.txt").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(host.join("v.txt")).unwrap(),
        "vol\n"
    );
    let out = b.run(&["cp", "cp1:/srv/d", "-"]);
    assert!(out.status.success());
    assert_eq!(tar_names(&out.stdout), vec!["d/", "d/a"]);

    // Host to container: a file into a directory, to a new name, a directory's contents, a tar on stdin.
    // What is copied in belongs to the container's root, or keeps its owner with -a.
    std::fs::write(host.join("up.txt"), "up\n").unwrap();
    std::os::unix::fs::chown(host.join("up.txt"), Some(321), Some(54)).unwrap();
    b.ok(&["cp", host.join("up.txt").to_str().unwrap(), "cp1:/srv/"]);
    b.ok(&[
        "cp",
        "-a",
        host.join("up.txt").to_str().unwrap(),
        "cp1:/srv/kept.txt",
    ]);
    assert_eq!(
        b.ok(&[
            "exec",
            "cp1",
            "stat",
            "-c",
            "%u:%g",
            "/srv/up.txt",
            "/srv/kept.txt"
        ]),
        "0:0\n321:54\n"
    );
    b.ok(&["exec", "cp1", "rm", "/srv/kept.txt"]);
    b.ok(&[
        "cp",
        host.join("up.txt").to_str().unwrap(),
        "cp1:/srv/renamed",
    ]);
    b.ok(&["cp", &format!("{}/.", out_dir(&host)), "cp1:/srv/d"]);
    assert_eq!(
        b.ok(&[
            "exec",
            "cp1",
            "sh",
            "-c",
            "cat /srv/up.txt /srv/renamed; ls /srv/d | sort | tr '\\n' ' '"
        ]),
        "up\nup\na d-copy up.txt v.txt "
    );
    let tar = Command::new("tar")
        .args(["-cf", "-", "-C", host.to_str().unwrap(), "up.txt"])
        .output()
        .unwrap();
    let mut child = b
        .cmd(&["cp", "-", "cp1:/data"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &tar.stdout).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(b.ok(&["exec", "cp1", "cat", "/data/up.txt"]), "up\n");

    // A stopped container works the same, and its rootfs is unmounted afterwards.
    b.ok(&["stop", "-t", "0", "cp1"]);
    b.ok(&[
        "cp",
        "cp1:/srv/renamed",
        host.join("after-stop").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(host.join("after-stop")).unwrap(),
        "up\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(b.root.to_str().unwrap()), "{mounts}");
}

fn out_dir(host: &std::path::Path) -> String {
    let dir = host.join("contents");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["d-copy", "v.txt", "up.txt"] {
        let _ = std::fs::write(dir.join(name), name);
    }
    dir.to_string_lossy().into_owned()
}

#[test]
fn cp_never_follows_container_symlinks_out_of_the_rootfs() {
    let b = Berth::with_busybox();
    let host = b.dir.path().join("host");
    let victim = b.dir.path().join("victim");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("secret"), "host secret\n").unwrap();
    let victim_abs = victim.to_str().unwrap();
    b.ok(&[
        "run", "-d", "--name", "cp2", "busybox", "sh", "-c",
        &format!(
            "ln -s {victim_abs} /escape && ln -s ../../../../../..{victim_abs} /rel && \
             mkdir -p {victim_abs} && echo container > {victim_abs}/secret && touch /tmp/ready && sleep 300"
        ),
    ]);
    while !b
        .run(&["exec", "cp2", "test", "-f", "/tmp/ready"])
        .status
        .success()
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Reading through the links gives the container's file, never the host's.
    for link in ["/escape/secret", "/rel/secret"] {
        let dest = host.join("read");
        let _ = std::fs::remove_file(&dest);
        b.ok(&["cp", &format!("cp2:{link}"), dest.to_str().unwrap()]);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "container\n");
    }
    // A link itself is copied as a link; -L follows it inside the container.
    b.ok(&["cp", "cp2:/escape", host.join("link").to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(host.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    b.ok(&[
        "cp",
        "-L",
        "cp2:/escape",
        host.join("followed").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(host.join("followed/secret")).unwrap(),
        "container\n"
    );
    // Writing through the links lands in the container.
    std::fs::write(host.join("payload"), "payload\n").unwrap();
    for dest in ["cp2:/escape/", "cp2:/rel/"] {
        b.ok(&["cp", host.join("payload").to_str().unwrap(), dest]);
    }
    assert!(!victim.join("payload").exists(), "cp wrote to the host");
    assert_eq!(
        std::fs::read_to_string(victim.join("secret")).unwrap(),
        "host secret\n"
    );
    assert_eq!(
        b.ok(&["exec", "cp2", "cat", &format!("{victim_abs}/payload")]),
        "payload\n"
    );
    // A tar with ../ entries streamed in is refused and writes nothing outside.
    let evil = b.dir.path().join("evil.tar");
    let status = Command::new("tar")
        .args([
            "-cf",
            evil.to_str().unwrap(),
            "-P",
            "-C",
            host.to_str().unwrap(),
        ])
        .arg("--transform=s,^,../../../../../../..,")
        .arg("payload")
        .status()
        .unwrap();
    assert!(status.success());
    let out = b
        .cmd(&["cp", "-", "cp2:/tmp"])
        .stdin(std::fs::File::open(&evil).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("escape") || stderr(&out).contains(".."),
        "{}",
        stderr(&out)
    );

    // Bad operands.
    let out = b.run(&["cp", "cp2:/nonexistent", host.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Could not find the file /nonexistent"));
    let out = b.run(&["cp", "a", "b"]);
    assert!(stderr(&out).contains("must specify at least one container source"));
    let out = b.run(&["cp", "cp2:/a", "cp2:/b"]);
    assert!(stderr(&out).contains("copying between containers is not supported"));
    let out = b.run(&[
        "cp",
        host.join("payload").to_str().unwrap(),
        "cp2:/no/such/dir/",
    ]);
    assert!(!out.status.success());
}

#[test]
fn commit_of_a_running_container_pauses_it_only_while_it_writes_the_layer() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "live",
        "busybox",
        "sh",
        "-c",
        "echo made > /made; exec sleep 600",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b
        .run(&["exec", "live", "test", "-e", "/made"])
        .status
        .code()
        != Some(0)
    {
        assert!(std::time::Instant::now() < deadline, "/made never appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    b.ok(&["commit", "live", "live:snap"]);
    assert_eq!(
        b.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}}",
            "live"
        ]),
        "running false\n"
    );
    assert_eq!(b.ok(&["exec", "live", "cat", "/made"]), "made\n");
    assert_eq!(
        b.ok(&["run", "--rm", "--entrypoint", "cat", "live:snap", "/made"]),
        "made\n"
    );
    b.ok(&["rm", "-f", "live"]);
}

#[test]
fn diff_commit_and_export() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "--name",
        "cm1",
        "busybox",
        "sh",
        "-c",
        "echo made > /made && rm /bin/vi && mkdir /newdir",
    ]);
    assert_eq!(
        b.ok(&["diff", "cm1"]),
        "C /bin\nD /bin/vi\nA /made\nA /newdir\n"
    );
    assert_eq!(b.ok(&["container", "diff", "cm1"]), b.ok(&["diff", "cm1"]));
    let id = b.ok(&[
        "commit",
        "-a",
        "tester",
        "-m",
        "my change",
        "-c",
        "ENV COMMITTED=yes",
        "-c",
        r#"CMD ["sh", "-c", "cat /made; echo $COMMITTED; test -e /bin/vi || echo novi"]"#,
        "cm1",
        "committed:v1",
    ]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(b.ok(&["run", "--rm", "committed:v1"]), "made\nyes\nnovi\n");
    // A change that is no metadata instruction, or no instruction at all, is refused before
    // anything is written, for commit and import alike.
    let images = b.ok(&["images", "-aq"]);
    for bad in ["RUN echo hi", "EXPOSE 99999", "NOPE x"] {
        let out = b.run(&["commit", "-c", bad, "cm1", "never:1"]);
        assert_ne!(out.status.code(), Some(0), "{bad}");
        assert!(
            stderr(&out).contains("invalid --change"),
            "{bad}: {}",
            stderr(&out)
        );
        let out = b.run(&["import", "-c", bad, "/nonexistent.tar", "never:2"]);
        assert!(
            stderr(&out).contains("invalid --change"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    assert_eq!(b.ok(&["images", "-aq"]), images, "nothing was created");
    // The runtime's mount points for /etc/hosts and friends are not part of the committed layer.
    let layers = b.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .RootFS.Layers}}",
        "committed:v1",
    ]);
    let layers: Vec<String> = serde_json::from_str(layers.trim()).unwrap();
    let top = b
        .root
        .join("snapshots/layers")
        .join(layers.last().unwrap().trim_start_matches("sha256:"))
        .join("diff");
    assert!(top.join("made").is_file(), "{}", top.display());
    for runtime_file in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev",
        "proc",
        ".dockerenv",
    ] {
        assert!(!top.join(runtime_file).exists(), "{runtime_file} committed");
    }
    // A container's export shows them as Docker's does: empty files from the init layer.
    b.ok(&["create", "--name", "fromcommit", "committed:v1"]);
    let out = b.run(&["export", "fromcommit"]);
    let names = tar_names(&out.stdout);
    assert!(names.iter().any(|n| n == "etc/hosts"), "{names:?}");
    assert!(names.iter().any(|n| n == ".dockerenv"), "{names:?}");
    let history = b.ok(&["history", "--no-trunc", "committed:v1"]);
    assert!(history.contains("my change"), "{history}");
    assert_eq!(
        b.ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Author}} {{len .RootFS.Layers}}",
            "committed:v1"
        ]),
        "tester 2\n"
    );
    // Export holds the whole filesystem, changes included, deletions gone.
    let out = b.run(&["export", "cm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = tar_names(&out.stdout);
    assert!(names.iter().any(|n| n == "made"));
    assert!(names.iter().any(|n| n == "bin/sh"));
    assert!(!names.iter().any(|n| n == "bin/vi"));
    let file = b.dir.path().join("export.tar");
    b.ok(&["export", "-o", file.to_str().unwrap(), "cm1"]);
    assert_eq!(std::fs::read(&file).unwrap().len(), out.stdout.len());
    let out = b.run(&["export", "nosuch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("No such container"));
}

#[test]
fn prune_removes_what_a_killed_create_left() {
    let b = Berth::with_busybox();
    b.ok(&["create", "--name", "keep", "busybox", "true"]);
    let orphan = "ab".repeat(32);
    let dirs = [
        b.root.join("containers").join(&orphan),
        b.root
            .join("snapshots/containers")
            .join(&orphan)
            .join("diff"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
        let old = std::process::Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(d.parent().filter(|p| p.ends_with(&orphan)).unwrap_or(d))
            .status()
            .unwrap();
        assert!(old.success());
    }
    b.ok(&["container", "prune", "-f"]);
    assert!(!b.root.join("containers").join(&orphan).exists());
    assert!(!b.root.join("snapshots/containers").join(&orphan).exists());
    // A container with a record is not an orphan (and a created one is pruned by its own rules).
    assert_eq!(b.ok(&["ps", "-aq"]).lines().count(), 0);
}
