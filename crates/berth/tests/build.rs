//! `berth build`: real Dockerfile shapes built from a busybox base, RUN steps in real containers,
//! the cache asserted step by step, built images run and inspected, and bad input refused with
//! file:line errors and nothing tagged or left behind.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{context, p, run_ok, stderr, stdout, Berth};

/// Builds; returns the output (progress on stderr).
fn build(b: &Berth, args: &[&str]) -> Output {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    b.run(&all)
}

fn build_ok(b: &Berth, args: &[&str]) -> String {
    let out = build(b, args);
    assert!(
        out.status.success(),
        "build {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// The steps of a plain progress log that were cache hits and that ran, by their labels.
fn cached_and_run(log: &str) -> (Vec<String>, Vec<String>) {
    let mut labels = std::collections::BTreeMap::new();
    let (mut cached, mut ran) = (Vec::new(), Vec::new());
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((n, text)) = rest.split_once(' ') else {
            continue;
        };
        if text.starts_with('[') {
            labels.insert(n.to_string(), text.to_string());
        } else if text == "CACHED" {
            cached.push(labels[n].clone());
        } else if text.starts_with("DONE") && !labels[n].contains(" FROM ") {
            ran.push(labels[n].clone());
        }
    }
    (cached, ran)
}

/// Asserts that a command's stderr holds `needle`, showing it otherwise.
fn assert_stderr_has(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(err.contains(needle), "{err}");
}

fn inspect(b: &Berth, image: &str, format: &str) -> String {
    b.ok(&["image", "inspect", "--format", format, image])
        .trim()
        .to_string()
}

fn no_containers_left(b: &Berth) {
    assert_eq!(
        b.ok(&["ps", "-aq"]).trim(),
        "",
        "build containers left behind"
    );
}

#[test]
fn multi_stage_build_runs_and_behaves() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            r##"# A Go/Rust-style multi-stage build: compile in one stage, ship the artifact in another.
ARG BASE=busybox
FROM ${BASE} AS build
ARG VERSION=0.1
WORKDIR /src
COPY src/ ./
RUN echo "binary $VERSION built from $(cat main.txt)" > /src/app.bin \
 && echo "#!/bin/sh" > /src/run.sh && echo 'cat /opt/app/app.bin' >> /src/run.sh && chmod 755 /src/run.sh

FROM busybox AS unused
RUN exit 1

FROM busybox
LABEL org.example.role=web
ENV APP_HOME=/opt/app PATH=/opt/app:$PATH
WORKDIR $APP_HOME
COPY --from=build --chown=www-data:www-data /src/app.bin /src/run.sh ./
EXPOSE 8080 53/udp
USER www-data
HEALTHCHECK --interval=5s --retries=2 CMD test -f /opt/app/app.bin
STOPSIGNAL SIGINT
VOLUME /data
ENTRYPOINT ["run.sh"]
"##,
        ),
        ("src/main.txt", "main.go"),
    ]);
    let log = build_ok(
        &b,
        &[
            "-t",
            "app:1",
            "--build-arg",
            "VERSION=2.0",
            "--label",
            "built.by=test",
            p(ctx.path()),
        ],
    );
    assert!(!log.contains("[unused"), "unneeded stage built: {log}");
    assert_eq!(
        b.ok(&["run", "--rm", "app:1"]),
        "binary 2.0 built from main.go\n"
    );
    let who = b.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "",
        "app:1",
        "sh",
        "-c",
        "id -un; pwd; stat -c %U /opt/app/app.bin; echo $PATH",
    ]);
    // A base without PATH gets BuildKit's default, which ENV extends.
    assert_eq!(
        who,
        "www-data\n/opt/app\nwww-data\n/opt/app:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    assert_eq!(inspect(&b, "app:1", "{{.Config.User}}"), "www-data");
    assert_eq!(inspect(&b, "app:1", "{{.Config.WorkingDir}}"), "/opt/app");
    assert_eq!(
        inspect(&b, "app:1", "{{json .Config.Entrypoint}}"),
        r#"["run.sh"]"#
    );
    assert_eq!(inspect(&b, "app:1", "{{json .Config.Cmd}}"), "null");
    let ports = inspect(&b, "app:1", "{{json .Config.ExposedPorts}}");
    assert!(
        ports.contains("8080/tcp") && ports.contains("53/udp"),
        "{ports}"
    );
    let labels = inspect(&b, "app:1", "{{json .Config.Labels}}");
    assert!(labels.contains(r#""org.example.role":"web""#), "{labels}");
    assert!(labels.contains(r#""built.by":"test""#), "{labels}");
    let health = inspect(&b, "app:1", "{{json .Config.Healthcheck}}");
    assert!(
        health.contains(r#""Test":["CMD-SHELL","test -f /opt/app/app.bin"]"#)
            && health.contains(r#""Interval":5000000000"#)
            && health.contains(r#""Retries":2"#),
        "{health}"
    );
    assert_eq!(inspect(&b, "app:1", "{{.Config.StopSignal}}"), "SIGINT");
    assert!(inspect(&b, "app:1", "{{json .Config.Volumes}}").contains("/data"));
    // History records every step, layers only for filesystem steps.
    let history = b.ok(&["history", "--no-trunc", "app:1"]);
    assert!(
        history.contains("COPY /src/app.bin /src/run.sh ./"),
        "{history}"
    );
    assert!(history.contains("HEALTHCHECK"), "{history}");
    no_containers_left(&b);
}

#[test]
fn cache_is_reused_step_by_step_and_pruned() {
    let b = Berth::with_busybox();
    // The Python-app shape: dependencies first, the code last.
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nWORKDIR /app\nCOPY requirements.txt .\nRUN sed 's/^/installed /' requirements.txt > /deps\nCOPY app.py .\nRUN wc -l < app.py > /lines\nCMD [\"cat\", \"/deps\", \"/lines\"]\n",
        ),
        ("requirements.txt", "flask\nrequests\n"),
        ("app.py", "print('hi')\n"),
    ]);
    let dir = p(ctx.path());
    let log = build_ok(&b, &["-t", "py:1", dir]);
    let (cached, ran) = cached_and_run(&log);
    assert!(cached.is_empty(), "{log}");
    assert_eq!(ran.len(), 4, "{log}");
    let first = inspect(&b, "py:1", "{{.Id}}");

    // Nothing changed: every step is a hit and the image is the same.
    let log = build_ok(&b, &["-t", "py:1", dir]);
    let (cached, ran) = cached_and_run(&log);
    assert_eq!((cached.len(), ran.len()), (4, 0), "{log}");
    assert_eq!(inspect(&b, "py:1", "{{.Id}}"), first);

    // Editing the code re-runs only from the COPY that reads it.
    std::fs::write(ctx.path().join("app.py"), "print('hi')\nprint('there')\n").unwrap();
    let log = build_ok(&b, &["-t", "py:1", dir]);
    let (cached, ran) = cached_and_run(&log);
    assert!(cached[0].contains("COPY requirements.txt"), "{log}");
    assert!(cached[1].contains("RUN sed"), "{log}");
    assert_eq!(cached.len(), 2, "{log}");
    assert!(
        ran[0].contains("COPY app.py") && ran[1].contains("RUN wc"),
        "{log}"
    );
    assert_eq!(
        b.ok(&["run", "--rm", "py:1"]),
        "installed flask\ninstalled requests\n2\n"
    );

    // A file's mode is part of its content for the cache; its mtime is not.
    let req = ctx.path().join("requirements.txt");
    std::fs::write(&req, "flask\nrequests\n").unwrap();
    let log = build_ok(&b, &["-t", "py:1", dir]);
    assert_eq!(cached_and_run(&log).0.len(), 4, "{log}");

    // A build arg a RUN sees is part of its key.
    let log = build_ok(&b, &["--no-cache", "-t", "py:1", dir]);
    assert_eq!(
        cached_and_run(&log),
        (vec![], cached_and_run(&log).1),
        "{log}"
    );
    assert_eq!(cached_and_run(&log).1.len(), 4, "{log}");

    // Intermediate images are hidden from `images` but not from `images -a`; prune frees them.
    let listed = b.ok(&["images", "-q"]);
    let all = b.ok(&["images", "-aq"]);
    assert!(
        all.lines().count() > listed.lines().count(),
        "{listed} / {all}"
    );
    let pruned = b.ok(&["builder", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    let log = build_ok(&b, &["-t", "py:1", dir]);
    assert!(
        cached_and_run(&log).0.is_empty(),
        "cache survived prune: {log}"
    );
    assert_eq!(
        b.ok(&["run", "--rm", "py:1"]),
        "installed flask\ninstalled requests\n2\n"
    );
    no_containers_left(&b);
}

#[test]
fn arg_values_reach_run_and_key_the_cache() {
    let b = Berth::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nARG FLAVOUR=plain\nENV SHADOWED=env\nARG SHADOWED=arg\nRUN echo \"$FLAVOUR $SHADOWED\" > /flavour\n",
    )]);
    let dir = p(ctx.path());
    build_ok(&b, &["-t", "f:1", dir]);
    assert_eq!(
        b.ok(&["run", "--rm", "f:1", "cat", "/flavour"]),
        "plain env\n"
    );
    let log = build_ok(&b, &["-t", "f:2", "--build-arg", "FLAVOUR=spicy", dir]);
    assert_eq!(cached_and_run(&log).1.len(), 1, "{log}");
    assert_eq!(
        b.ok(&["run", "--rm", "f:2", "cat", "/flavour"]),
        "spicy env\n"
    );
    // ARGs are not baked into the image's environment.
    assert!(!inspect(&b, "f:2", "{{json .Config.Env}}").contains("FLAVOUR"));
}

#[test]
fn heredocs_escape_directive_and_onbuild() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "# escape=`\nFROM busybox\nENV WHO=world\nRUN <<EOF\nset -e\necho \"hello $WHO\" > /greeting\necho second >> /greeting\nEOF\nCOPY <<-EOT /etc/motd\n\tmotd for $WHO\n\tEOT\nRUN echo one `\n  two > /joined\nRUN cat <<'EOF' > /literal\n$WHO stays\nEOF\nONBUILD COPY trigger.txt /from-child\nONBUILD RUN echo child-ran > /child\n",
        ),
    ]);
    build_ok(&b, &["-t", "parent:1", p(ctx.path())]);
    let out = b.ok(&[
        "run",
        "--rm",
        "parent:1",
        "cat",
        "/greeting",
        "/etc/motd",
        "/joined",
        "/literal",
    ]);
    assert_eq!(
        out,
        "hello world\nsecond\nmotd for world\none two\n$WHO stays\n"
    );
    let triggers = inspect(&b, "parent:1", "{{json .Config.OnBuild}}");
    assert!(
        triggers.contains("COPY trigger.txt /from-child"),
        "{triggers}"
    );

    // The child's build runs the parent's triggers first, and does not inherit them.
    let child = context(&[
        ("Dockerfile", "FROM parent:1\nRUN cat /from-child /child\n"),
        ("trigger.txt", "from the child context\n"),
    ]);
    let log = build_ok(&b, &["-t", "child:1", p(child.path())]);
    assert!(log.contains("from the child context"), "{log}");
    assert!(log.contains("child-ran"), "{log}");
    assert_eq!(inspect(&b, "child:1", "{{json .Config.OnBuild}}"), "null");
    no_containers_left(&b);
}

#[test]
fn dockerignore_symlinks_and_copy_semantics() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY . /ctx/\nCOPY dir /flat\nCOPY dir /named/dir\nCOPY *.txt /txt/\nCOPY one.txt /renamed\nCOPY --chmod=600 one.txt /private\nADD bundle.tar /unpacked/\n",
        ),
        (".dockerignore", "secret.env\n**/*.log\n!keep.log\n"),
        ("secret.env", "TOKEN=1"),
        ("one.txt", "1"),
        ("two.txt", "2"),
        ("dir/sub/file", "f"),
        ("dir/noise.log", "n"),
        ("keep.log", "k"),
    ]);
    std::os::unix::fs::symlink("/etc/shadow", ctx.path().join("host-link")).unwrap();
    // A real tar, written by GNU tar.
    let staging = context(&[("inner/data", "from the tar")]);
    run_ok(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(ctx.path().join("bundle.tar"))
            .arg("-C")
            .arg(staging.path())
            .arg("inner"),
    );
    build_ok(&b, &["-t", "cp:1", p(ctx.path())]);
    let listing = b.ok(&[
        "run",
        "--rm",
        "cp:1",
        "sh",
        "-c",
        "cd /ctx && find . | sort; readlink /ctx/host-link; ls /flat /named/dir /txt; cat /renamed /unpacked/inner/data; stat -c %a /private",
    ]);
    assert!(!listing.contains("secret.env"), "{listing}");
    assert!(!listing.contains("noise.log"), "{listing}");
    assert!(listing.contains("./keep.log"), "{listing}");
    // The symlink is copied as a link; its target is not read from the host.
    assert!(listing.contains("/etc/shadow\n"), "{listing}");
    assert!(
        listing.contains("/flat:\nnoise.log\nsub\n") || listing.contains("/flat:\nsub\n"),
        "{listing}"
    );
    assert!(listing.contains("/named/dir:\nsub\n"), "{listing}");
    assert!(listing.contains("/txt:\none.txt\ntwo.txt\n"), "{listing}");
    assert!(listing.contains("1from the tar"), "{listing}");
    assert!(listing.trim_end().ends_with("600"), "{listing}");
    let shadow = b.run(&["run", "--rm", "cp:1", "cat", "/ctx/host-link"]);
    assert!(
        !stdout(&shadow).contains("root:"),
        "host file leaked into the image"
    );
}

#[test]
fn context_and_dockerfile_from_stdin_and_outputs() {
    let b = Berth::with_busybox();
    // A Dockerfile on stdin, no context.
    let out = common::output_with_stdin(
        &mut b.cmd(&["build", "-q", "-t", "stdin:1", "-"]),
        b"FROM busybox\nRUN echo from-stdin > /s\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(id.starts_with("sha256:"), "-q prints the ID: {id}");
    assert_eq!(
        b.ok(&["run", "--rm", "stdin:1", "cat", "/s"]),
        "from-stdin\n"
    );

    // A context tar on stdin, written by GNU tar.
    let ctx = context(&[
        ("Dockerfile", "FROM busybox\nCOPY hello /hello\n"),
        ("hello", "tar context\n"),
    ]);
    let tar = ctx.path().join("../ctx-for-stdin.tar");
    run_ok(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(ctx.path())
            .arg("."),
    );
    let out = b
        .cmd(&["build", "-t", "tarctx:1", "-"])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    std::fs::remove_file(&tar).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        b.ok(&["run", "--rm", "tarctx:1", "cat", "/hello"]),
        "tar context\n"
    );

    // --output local and tar, --iidfile.
    let dest = tempfile::tempdir().unwrap();
    let local = dest.path().join("rootfs");
    let tarfile = dest.path().join("rootfs.tar");
    let iid = dest.path().join("iid");
    build_ok(
        &b,
        &[
            "-o",
            &format!("type=local,dest={}", local.display()),
            "-o",
            &format!("type=tar,dest={}", tarfile.display()),
            "--iidfile",
            p(&iid),
            p(ctx.path()),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(local.join("hello")).unwrap(),
        "tar context\n"
    );
    assert!(local.join("bin/busybox").is_file());
    let names = run_ok(std::process::Command::new("tar").arg("-tf").arg(&tarfile));
    assert!(
        names.lines().any(|l| l.trim_start_matches("./") == "hello"),
        "{names}"
    );
    assert!(std::fs::read_to_string(&iid)
        .unwrap()
        .starts_with("sha256:"));
}

#[test]
fn failing_run_stops_the_build_and_tags_nothing() {
    let b = Berth::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo before\nRUN echo doomed; exit 3\nRUN echo never > /never\n",
    )]);
    let out = build(&b, &["-t", "broken:1", p(ctx.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("doomed"),
        "the failing step's output is shown: {err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.contains(">>> RUN echo doomed; exit 3"), "{err}");
    assert!(!err.contains("[4/4]"), "{err}");
    assert!(b.run(&["image", "inspect", "broken:1"]).status.code() == Some(1));
    no_containers_left(&b);
    // A command that does not exist.
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN [\"/no/such/binary\"]\n")]);
    let out = build(&b, &[p(ctx.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Dockerfile:2"), "{}", stderr(&out));
    no_containers_left(&b);
}

fn build_fails(b: &Berth, files: &[(&str, &str)], args: &[&str], expect: &[&str]) {
    let ctx = context(files);
    let mut all = args.to_vec();
    all.push(p(ctx.path()));
    let out = build(b, &all);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{files:?}: {err}");
    for e in expect {
        assert!(err.contains(e), "{files:?}: expected {e:?} in:\n{err}");
    }
}

#[test]
fn copy_exclude_leaves_out_matching_paths() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY --exclude=*.log --exclude=tmp . /app/\nCOPY --exclude=*.md src/ /src/\n",
        ),
        ("keep.txt", "k"),
        ("drop.log", "d"),
        ("tmp/x", "x"),
        ("src/a.rs", "a"),
        ("src/README.md", "r"),
        ("src/deep/b.rs", "b"),
    ]);
    build_ok(&b, &["-t", "excl:1", p(ctx.path())]);
    let out = b.ok(&[
        "run",
        "--rm",
        "excl:1",
        "sh",
        "-c",
        "cd /app && find . -type f | sort; cd /src && find . -type f | sort",
    ]);
    assert_eq!(
        out,
        "./Dockerfile\n./keep.txt\n./src/README.md\n./src/a.rs\n./src/deep/b.rs\n./a.rs\n./deep/b.rs\n"
    );
}

#[test]
fn bad_input_is_refused_with_file_and_line() {
    let b = Berth::with_busybox();
    let df = |text: &'static str| vec![("Dockerfile", text), ("a", "a"), ("b", "b")];
    build_fails(
        &b,
        &df("FROM busybox\nADD --checksum=sha256:00 a /x\n"),
        &[],
        &[
            "Dockerfile:2",
            "checksum can't be specified for non-HTTP(S) sources",
        ],
    );
    build_fails(
        &b,
        &df("FROM busybox\nADD https://example.invalid/repo.git a /src/\n"),
        &[],
        &["Dockerfile:2", "git repository", "only source"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nCOPY ../outside /x\n"),
        &[],
        &["Dockerfile:2", "outside the build context"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nCOPY missing /x\n"),
        &[],
        &["Dockerfile:2", "\"missing\": not found"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nCOPY a b /x\n"),
        &[],
        &["Dockerfile:2", "must be a directory and end with a /"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nFOO bar\n"),
        &[],
        &["Dockerfile:2", "unknown instruction"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nRUN [\"sh\", \n"),
        &[],
        &["Dockerfile:2"],
    );
    build_fails(
        &b,
        &df("FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n"),
        &[],
        &["Dockerfile:2", "circular dependency detected on stage: b"],
    );
    build_fails(
        &b,
        &df("FROM busybox AS a\nCOPY --from=a /x /x\n"),
        &[],
        &["Dockerfile:2", "circular dependency"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nCOPY --from=nosuchstage /x /x\n"),
        &[],
        &["Dockerfile:2", "nosuchstage"],
    );
    build_fails(
        &b,
        &df("FROM busybox\n"),
        &["--target", "nope"],
        &["target stage \"nope\" could not be found"],
    );
    build_fails(
        &b,
        &df("FROM no-such-image-here:1\n"),
        &[],
        &["Dockerfile:1"],
    );
    build_fails(
        &b,
        &df("RUN true\nFROM busybox\n"),
        &[],
        &["Dockerfile:1", "FROM"],
    );
    build_fails(
        &b,
        &df("FROM busybox\nEXPOSE notaport\n"),
        &[],
        &["Dockerfile:2", "notaport"],
    );
    // A context tar with `../` is refused and writes nothing outside.
    let out = b
        .cmd(&["build", "-"])
        .stdin(std::fs::File::open(evil_tar(b.dir.path())).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("escapes"), "{}", stderr(&out));
    assert!(!b.dir.path().join("escaped").exists());
    assert!(
        b.ok(&["images", "-aq"]).lines().count() == 1,
        "only busybox"
    );
    no_containers_left(&b);
}

/// A tar whose second entry climbs out with `../`.
fn evil_tar(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("evil.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let df = b"FROM busybox\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(df.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    builder.append_data(&mut h, "Dockerfile", &df[..]).unwrap();
    let mut h = tar::Header::new_old();
    let name = b"../../escaped";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    builder.append(&h, &b"x"[..]).unwrap();
    builder.finish().unwrap();
    path
}

/// Python's `http.server` serving a directory on 127.0.0.1, stopped on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn serving(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn remote_add_and_its_failure() {
    let b = Berth::with_busybox();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("remote.txt"), "served over http\n").unwrap();
    let server = HttpServer::serving(files.path());
    let port = server.port;
    let good = format!("FROM busybox\nADD http://127.0.0.1:{port}/remote.txt /downloads/\n");
    let ok = context(&[("Dockerfile", &good)]);
    let out = build(&b, &["-t", "remote:1", p(ok.path())]);
    let bad = format!("FROM busybox\nADD http://127.0.0.1:{port}/nothing-here /x\n");
    let missing = context(&[("Dockerfile", &bad)]);
    let failed = build(&b, &[p(missing.path())]);
    // ADD --checksum verifies the download.
    use sha2::Digest as _;
    let sum = hex::encode(sha2::Sha256::digest(b"served over http\n"));
    let checked = format!(
        "FROM busybox\nADD --checksum=sha256:{sum} http://127.0.0.1:{port}/remote.txt /c/\n"
    );
    let checked_out = build(
        &b,
        &[
            "-t",
            "checked:1",
            p(context(&[("Dockerfile", &checked)]).path()),
        ],
    );
    let wrong = format!(
        "FROM busybox\nADD --checksum=sha256:{} http://127.0.0.1:{port}/remote.txt /c/\n",
        "0".repeat(64)
    );
    let wrong_out = build(&b, &[p(context(&[("Dockerfile", &wrong)]).path())]);
    drop(server);
    assert!(checked_out.status.success(), "{}", stderr(&checked_out));
    assert_eq!(
        b.ok(&["run", "--rm", "checked:1", "cat", "/c/remote.txt"]),
        "served over http\n"
    );
    assert_eq!(wrong_out.status.code(), Some(1));
    assert_stderr_has(&wrong_out, "checksum mismatch");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        b.ok(&["run", "--rm", "remote:1", "cat", "/downloads/remote.txt"]),
        "served over http\n"
    );
    assert_eq!(failed.status.code(), Some(1));
    let err = stderr(&failed);
    assert!(err.contains("Dockerfile:2") && err.contains("404"), "{err}");
}

#[test]
fn an_interrupted_build_leaves_no_container() {
    let b = Berth::with_busybox();
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo started && sleep 60\n")]);
    let mut child = b
        .cmd(&["build", "--progress", "plain", p(ctx.path())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while b.ok(&["ps", "-q"]).trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the RUN step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Ctrl-C reaches the CLI only (the monitor has its own session).
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !b.ok(&["ps", "-aq"]).trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build container outlived its build: {}",
            b.ok(&["ps", "-a"])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn tty_progress_redraws_a_live_view() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        ("Dockerfile", "FROM busybox\nCOPY a /a\nRUN echo from-run\n"),
        ("a", "a"),
    ]);
    let out = b.run(&["build", "--progress", "tty", "-t", "tty:1", p(ctx.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    // Frames replace each other: cursor up, clear below.
    assert!(err.contains("\x1b[") && err.contains("F\x1b[J"), "{err:?}");
    let last = err.rsplit("\x1b[J").next().unwrap_or_default();
    assert!(last.contains("[+] Building"), "{last}");
    assert!(last.contains("(3/3) FINISHED"), "{last}");
    assert!(last.contains(" => [2/3] COPY a /a"), "{last}");
    assert!(last.contains(" => [3/3] RUN echo from-run"), "{last}");
    // Without a terminal, `auto` prints plain lines.
    let plain = b.run(&["build", "--no-cache", p(ctx.path())]);
    assert!(!stderr(&plain).contains("\x1b["), "{}", stderr(&plain));
    assert!(stderr(&plain).contains("#3 [3/3] RUN echo from-run"));
}

#[test]
fn run_mounts_secrets_ssh_and_other_stages() {
    let b = Berth::with_busybox();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "file-s3cret").unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = agent_dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let dockerfile = r#"FROM busybox AS tools
RUN mkdir -p /opt/tool && echo from-tools > /opt/tool/version

FROM busybox
RUN --mount=type=secret,id=tok test "$(cat /run/secrets/tok)" = "file-s3cre""t" \
 && test "$(stat -c %a:%u /run/secrets/tok)" = 400:0
RUN --mount=type=secret,id=tok,target=/etc/tok,mode=0440,uid=7 test "$(stat -c %a:%u /etc/tok)" = 440:7
RUN --mount=type=secret,id=envtok,env=TOKEN test "$TOKEN" = "env-s3cre""t" && test ! -e /run/secrets/envtok
RUN --mount=type=secret,id=absent echo optional secrets may be missing
RUN --mount=type=ssh test -S "$SSH_AUTH_SOCK" && echo "agent at $SSH_AUTH_SOCK" > /ssh.txt
RUN --mount=type=bind,from=tools,source=/opt/tool,target=/mnt/tool cat /mnt/tool/version > /tool.txt
RUN --mount=type=bind,from=tools,target=/mnt/rw,rw touch /mnt/rw/scratch && ls /mnt/rw/opt > /listed.txt
"#;
    let ctx = context(&[("Dockerfile", dockerfile)]);
    let secret_arg = format!("id=tok,src={}", p(secret_file.path()));
    let ssh_arg = format!("default={}", p(&agent));
    let args = [
        "--secret",
        &secret_arg,
        "--secret",
        "id=envtok,env=BERTH_TEST_TOKEN",
        "--ssh",
        &ssh_arg,
        "-t",
        "mounts:1",
        p(ctx.path()),
    ];
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(&args);
    let out = b
        .cmd(&all)
        .env("BERTH_TEST_TOKEN", "env-s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = |cmd: &str| b.ok(&["run", "--rm", "mounts:1", "sh", "-c", cmd]);
    assert_eq!(run("cat /tool.txt /listed.txt"), "from-tools\ntool\n");
    assert_eq!(run("cat /ssh.txt"), "agent at /run/buildkit/ssh_agent.0\n");
    // Nothing of the secrets, the agent or the mounts is in the image.
    assert_eq!(
        run("ls -a /run/secrets /run/buildkit /etc/tok /mnt 2>&1 | grep -v 'No such' | tr '\\n' ' '"),
        ""
    );
    let saved = b.ok(&["save", "mounts:1"]);
    assert!(!saved.contains("s3cret"), "a secret leaked into the image");
    let tmp = std::fs::read_dir(b.root.join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "secret copies left in the store");
    no_containers_left(&b);

    // Secret values are not part of the cache key: a new value reuses the steps.
    std::fs::write(secret_file.path(), "file-s3cret").unwrap();
    let out = b
        .cmd(&all)
        .env("BERTH_TEST_TOKEN", "another-value")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, ran) = cached_and_run(&stderr(&out));
    assert!(ran.is_empty(), "{ran:?}");

    // A required secret or agent that was not given, and bad flags, fail clearly.
    let required = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=secret,id=needed,required true\n",
    )]);
    let out = build(&b, &[p(required.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "secret needed not found");
    let out = build(&b, &["--secret", "src=/nonexistent", p(required.path())]);
    assert!(stderr(&out).contains("id= is required"), "{}", stderr(&out));
    let out = build(
        &b,
        &["--secret", "id=x,src=/nonexistent", p(required.path())],
    );
    assert_stderr_has(&out, "is not a readable file");
    let out = build(
        &b,
        &[
            "--ssh",
            &format!("default={}", p(secret_file.path())),
            p(required.path()),
        ],
    );
    assert_stderr_has(&out, "is not an SSH agent socket");
    no_containers_left(&b);
}

#[test]
fn add_extracts_bzip2_and_xz_tars() {
    let b = Berth::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nADD app.tar.bz2 /opt/\nADD data.tar.xz /srv/\n",
    )]);
    // Real archives, written by GNU tar with bzip2 and xz.
    let staging = context(&[("app/run.sh", "bzip2 inside"), ("data/x.txt", "xz inside")]);
    for (flag, name, dir) in [
        ("-cjf", "app.tar.bz2", "app"),
        ("-cJf", "data.tar.xz", "data"),
    ] {
        run_ok(
            std::process::Command::new("tar")
                .arg(flag)
                .arg(ctx.path().join(name))
                .arg("-C")
                .arg(staging.path())
                .arg(dir),
        );
    }
    build_ok(&b, &["-t", "compressed:1", p(ctx.path())]);
    assert_eq!(
        b.ok(&[
            "run",
            "--rm",
            "compressed:1",
            "cat",
            "/opt/app/run.sh",
            "/srv/data/x.txt"
        ]),
        "bzip2 insidexz inside"
    );
    // `import` takes them too, as Docker's does.
    let xz = b.dir.path().join("rootfs.tar.xz");
    run_ok(std::process::Command::new("sh").arg("-c").arg(format!(
        "xz -1 -c {} > {}",
        common::busybox_tar().display(),
        xz.display()
    )));
    b.ok(&["import", "-c", "CMD [\"sh\"]", p(&xz), "fromxz:1"]);
    assert_eq!(
        b.ok(&["run", "--rm", "fromxz:1", "echo", "from xz"]),
        "from xz\n"
    );
    no_containers_left(&b);
}

#[test]
fn a_builder_killed_mid_copy_leaves_nothing_mounted() {
    let b = Berth::with_busybox();
    let files: Vec<(String, String)> = (0..4000)
        .map(|i| (format!("many/f{i}"), format!("{i}")))
        .collect();
    let mut all: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    all.push(("Dockerfile", "FROM busybox\nCOPY many /many/\n"));
    let ctx = context(&all);
    let snapshots = b.root.join("snapshots/containers");
    let work = || -> Vec<String> {
        std::fs::read_dir(&snapshots)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("build-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut child = b
        .cmd(&["build", "--progress", "plain", p(ctx.path())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while work().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = work();
    assert_eq!(left.len(), 1, "the COPY step's snapshot: {left:?}");
    // The next build (or `system prune`) removes it, mounted or not.
    let next = context(&[("Dockerfile", "FROM busybox\nRUN true\n")]);
    build_ok(&b, &[p(next.path())]);
    assert!(work().is_empty(), "{:?}", work());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&left[0]), "{mounts}");
    no_containers_left(&b);
}

#[test]
fn add_clones_git_repositories() {
    let b = Berth::with_busybox();
    // A repository with a tag and a later commit, served as a bare repo over (dumb) HTTP.
    let served = tempfile::tempdir().unwrap();
    let work = served.path().join("work");
    std::fs::create_dir_all(work.join("docs")).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        run_ok(
            std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(["-c", "init.defaultBranch=main"])
                .arg("-C")
                .arg(dir)
                .args(args),
        )
    };
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "one").unwrap();
    std::fs::write(work.join("docs/guide.txt"), "guide").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["tag", "v1"]);
    std::fs::write(work.join("README"), "two").unwrap();
    git(&work, &["commit", "-qam", "two"]);
    git(
        served.path(),
        &["clone", "-q", "--bare", "work", "repo.git"],
    );
    git(&served.path().join("repo.git"), &["update-server-info"]);
    let server = HttpServer::serving(served.path());
    let port = server.port;
    let repo = format!("http://127.0.0.1:{port}/repo.git");
    let dockerfile = format!(
        "FROM busybox\nADD {repo}#v1 /v1\nADD {repo} /latest\nADD {repo}#v1:docs /docs\nADD --keep-git-dir=true {repo} /withgit\n"
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out = build(&b, &["-t", "git:1", p(ctx.path())]);
    let missing = context(&[(
        "Dockerfile",
        &format!("FROM busybox\nADD http://127.0.0.1:{port}/missing.git /x\n"),
    )]);
    let failed = build(&b, &[p(missing.path())]);
    drop(server);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        b.ok(&[
            "run",
            "--rm",
            "git:1",
            "sh",
            "-c",
            "cat /v1/README /latest/README /docs/guide.txt; echo; ls -a /v1 | tr '\\n' ' '; test -d /withgit/.git && echo kept",
        ]),
        "onetwoguide\n. .. README docs kept\n"
    );
    assert_eq!(failed.status.code(), Some(1));
    assert_stderr_has(&failed, "failed to clone");
    no_containers_left(&b);
}

#[test]
fn copy_parents_keeps_source_paths() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nCOPY --parents x/a.txt z/*.txt /flat/\nCOPY --parents ./lib/./pkg /pivot/\nCOPY --parents x/y /dirs\nCOPY x/a.txt /plain/\n",
        ),
        ("x/a.txt", "a"),
        ("x/y/b.txt", "b"),
        ("z/c.txt", "c"),
        ("lib/pkg/mod.txt", "m"),
    ]);
    build_ok(&b, &["-t", "parents:1", p(ctx.path())]);
    assert_eq!(
        b.ok(&[
            "run",
            "--rm",
            "parents:1",
            "sh",
            "-c",
            "cd / && find flat pivot dirs plain -type f | sort | tr '\\n' ' '",
        ]),
        "dirs/x/y/b.txt flat/x/a.txt flat/z/c.txt pivot/pkg/mod.txt plain/a.txt "
    );
    no_containers_left(&b);
}

#[test]
fn builds_for_another_platform() {
    let b = Berth::with_busybox();
    // An arm64 base: busybox's files, recorded as linux/arm64 (only steps that run nothing use it).
    b.ok(&[
        "import",
        "--platform",
        "linux/arm64",
        "-c",
        "CMD [\"sh\"]",
        common::busybox_tar().to_str().unwrap(),
        "armbase:1",
    ]);
    assert_eq!(inspect(&b, "armbase:1", "{{.Architecture}}"), "arm64");
    // The usual cross-compiling shape: a build stage on the build platform told the target, the
    // result copied into the target's base.
    let ctx = context(&[(
        "Dockerfile",
        "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETPLATFORM TARGETARCH BUILDARCH\nRUN echo \"$BUILDARCH -> $TARGETARCH ($TARGETPLATFORM)\" > /made\nFROM armbase:1\nARG TARGETARCH\nCOPY --from=build /made /made\nLABEL arch=$TARGETARCH\n",
    )]);
    build_ok(
        &b,
        &["--platform", "linux/arm64", "-t", "cross:1", p(ctx.path())],
    );
    assert_eq!(inspect(&b, "cross:1", "{{.Architecture}}"), "arm64");
    assert_eq!(inspect(&b, "cross:1", "{{.Config.Labels.arch}}"), "arm64");
    let out = b.ok(&["create", "--name", "crossed", "cross:1"]);
    assert!(!out.trim().is_empty());
    let made = b.dir.path().join("made");
    b.ok(&["cp", "crossed:/made", made.to_str().unwrap()]);
    let host = inspect(&b, "busybox", "{{.Architecture}}");
    assert_eq!(
        std::fs::read_to_string(&made).unwrap(),
        format!("{host} -> arm64 (linux/arm64)\n")
    );
    b.ok(&["rm", "crossed"]);

    // A RUN on the target platform needs an emulator.
    if !Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        let run = context(&[("Dockerfile", "FROM armbase:1\nRUN true\n")]);
        let out = build(&b, &["--platform", "linux/arm64", p(run.path())]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("RUN for linux/arm64") && stderr(&out).contains("emulator"),
            "{}",
            stderr(&out)
        );
    }
    // Bad values are refused before anything runs.
    let out = build(&b, &["--platform", "linux/arm64/v8/x", p(ctx.path())]);
    assert_stderr_has(&out, "invalid platform");
    let out = build(
        &b,
        &["--platform", "linux/amd64,linux/arm64", p(ctx.path())],
    );
    assert_stderr_has(&out, "several platforms");
    no_containers_left(&b);
}

#[test]
fn an_unreadable_context_file_fails_the_step_clearly() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        ("Dockerfile", "FROM busybox\nCOPY . /x/\n"),
        ("locked.txt", "secret"),
    ]);
    let locked = ctx.path().join("locked.txt");
    std::os::unix::fs::chown(&locked, Some(12345), Some(12345)).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // Root reads anything: the build runs without the capabilities that let it (as a user would).
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-dac_override,-dac_read_search"])
        .arg(env!("CARGO_BIN_EXE_berth"))
        .arg("--root")
        .arg(&b.root)
        .arg("--runroot")
        .arg(&b.runroot)
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "unreadable:1",
            p(ctx.path()),
        ])
        .env("BERTH_CONFIG", b.settings_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Dockerfile:2")
            && stderr(&out).contains("locked.txt: Permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(b.run(&["image", "inspect", "unreadable:1"]).status.code() != Some(0));
    no_containers_left(&b);
}

#[test]
fn a_rw_bind_of_the_context_never_writes_into_it() {
    let b = Berth::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=bind,source=src,target=/src,rw sh -c 'echo changed > /src/f && touch /src/new && test \"$(cat /src/f)\" = changed'\n",
        ),
        ("src/f", "original"),
    ]);
    build_ok(&b, &["-t", "rwbind:1", p(ctx.path())]);
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("src/f")).unwrap(),
        "original"
    );
    assert!(!ctx.path().join("src/new").exists());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(b.root.to_str().unwrap()), "{mounts}");
    no_containers_left(&b);
}

/// A RUN that leaves `mine` in the cache mount both stages share, then waits up to 30 s for
/// `theirs`: two such stages only both finish when they run at the same time.
fn rendezvous(mine: &str, theirs: &str) -> String {
    format!(
        "RUN --mount=type=cache,id=meet,target=/meet touch /meet/{mine} && \
         for i in $(seq 300); do [ -e /meet/{theirs} ] && exit 0; sleep 0.1; done; \
         echo {theirs} never came; exit 7"
    )
}

#[test]
fn independent_stages_build_in_parallel() {
    let b = Berth::with_busybox();
    let dockerfile = format!(
        "FROM busybox AS left\n{}\nRUN echo left > /left\n\n\
         FROM busybox AS right\n{}\nRUN echo right > /right\n\n\
         FROM busybox AS unused\nRUN exit 9\n\n\
         FROM busybox\nCOPY --from=left /left /\nCOPY --from=right /right /\nCMD cat /left /right\n",
        rendezvous("left", "right"),
        rendezvous("right", "left"),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    // Built one stage after the other, the first RUN would give up waiting (exit 7).
    let log = build_ok(&b, &["-t", "both:1", p(ctx.path())]);
    assert!(!log.contains("[unused"), "unneeded stage built: {log}");
    assert_eq!(b.ok(&["run", "--rm", "both:1"]), "left\nright\n");
    // Rebuilt, every step of both stages is a cache hit.
    let (cached, ran) = cached_and_run(&build_ok(&b, &["-t", "both:1", p(ctx.path())]));
    assert!(ran.is_empty(), "ran again: {ran:?}");
    assert_eq!(cached.len(), 6, "{cached:?}");
    no_containers_left(&b);
}

#[test]
fn a_failing_stage_cancels_the_stages_running_beside_it() {
    let b = Berth::with_busybox();
    // `doomed` fails once `slow` is running; `slow` would take a minute.
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox AS slow\n\
         RUN --mount=type=cache,id=meet,target=/meet touch /meet/slow && sleep 60\n\n\
         FROM busybox AS doomed\n\
         RUN --mount=type=cache,id=meet,target=/meet \
         for i in $(seq 300); do [ -e /meet/slow ] && break; sleep 0.1; done; echo doomed; exit 5\n\n\
         FROM busybox\nCOPY --from=slow /etc/passwd /a\nCOPY --from=doomed /etc/passwd /b\n",
    )]);
    let out = build(&b, &["-t", "never:1", p(ctx.path())]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exit code: 5"), "{err}");
    assert!(
        err.contains("Dockerfile:5"),
        "the failing step is named: {err}"
    );
    assert!(
        err.contains("CANCELED"),
        "the running stage is stopped: {err}"
    );
    assert!(!err.contains("cancelled"), "{err}");
    assert_eq!(
        b.run(&["image", "inspect", "never:1"]).status.code(),
        Some(1)
    );
    no_containers_left(&b);
}
