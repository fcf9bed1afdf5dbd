//! Containers, end to end: real containers as root, each test with its own store.

mod common;

use common::{p, stderr, stdout, Berth};
use std::path::Path;

#[test]
fn run_prints_output_and_returns_exit_codes() {
    let b = Berth::with_busybox();
    let out = b.run(&["run", "--rm", "busybox", "echo", "hello from berth"]);
    assert_eq!(stdout(&out), "hello from berth\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        b.run(&["run", "--rm", "busybox", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let out = b.run(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("executable file not found"));
    assert_eq!(
        b.run(&["run", "--rm", "busybox", "/etc/passwd"])
            .status
            .code(),
        Some(126)
    );
    // Containers that could not be created gave back the address leased (and the namespace wired)
    // for them while they were being created.
    let leases = b.root.join("networks/bridge/leases");
    assert_eq!(
        std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0),
        0
    );
    let out = b.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    assert_eq!(b.ok(&["ps", "-aq"]), "", "--rm left a container");
}

/// Runs `run --rm ARGS busybox true` for each case: each must be refused (125) with its words.
fn assert_refused_runs(b: &Berth, cases: &[(&[&str], &str)]) {
    for (args, words) in cases {
        let out = b.run(&[&["run", "--rm"][..], args, &["busybox", "true"]].concat());
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn bad_input_exits_125_with_a_clear_error() {
    let b = Berth::with_busybox();
    let out = b.run(&["run", "--no-such-flag", "busybox"]);
    assert_eq!(out.status.code(), Some(125));
    // A missing image is pulled (from Docker Hub, unreachable here or not there): that fails with 125.
    let out = b.run(&["run", "--rm", "nosuchimage"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with("Unable to find image 'nosuchimage:latest' locally\n"),
        "{}",
        stderr(&out)
    );
    let out = b.run(&["run", "--rm", "--pull", "never", "nosuchimage"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("No such image"), "{}", stderr(&out));
    // The monitor is spawned before the image is looked up: a run without one sends it away.
    b.assert_no_monitor_left("runs of missing images");
    let out = b.run(&["run", "--rm", "Bad:Reference::x"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("invalid reference format"),
        "{}",
        stderr(&out)
    );
    let out = b.run(&["run", "--rm", "--memory", "12parsecs", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("invalid size"), "{}", stderr(&out));
    let out = b.run(&["run", "--rm", "--cpus", "abc", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let out = b.run(&["run", "--rm", "--memory", "1m", "busybox", "true"]);
    assert!(
        stderr(&out).contains("Minimum memory limit"),
        "{}",
        stderr(&out)
    );
    // Each refused with Docker's words before anything is made.
    assert_refused_runs(
        &b,
        &[
            (
                &["--cpus", "-1"][..],
                "invalid argument \"-1\" for \"--cpus\" flag",
            ),
            (&["-e", "=x"][..], "invalid environment variable: =x"),
            (
                &["--cpuset-cpus", "abc"][..],
                "Invalid value abc for cpuset cpus",
            ),
            (
                &["--cpuset-cpus", "0-4096"][..],
                "Requested CPUs are not available",
            ),
            (
                &["--security-opt", "bogus"][..],
                "Invalid --security-opt: \"bogus\"",
            ),
            (&["--name", "-x"][..], "Invalid container name (-x)"),
        ],
    );
    assert_eq!(
        b.ok(&["ps", "-aq"]),
        "",
        "failed runs must not leave containers"
    );
    // An option's value may start with '-', as with Docker's flag parser: -1 is unlimited swap.
    assert_eq!(
        b.ok(&[
            "run",
            "--rm",
            "-m",
            "64m",
            "--memory-swap",
            "-1",
            "busybox",
            "echo",
            "ok"
        ]),
        "ok\n"
    );
    // -i -t needs a terminal on stdin (the test's stdin is /dev/null).
    let out = b.run(&["run", "--rm", "-it", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "the input device is not a TTY\n");
}

#[test]
fn name_conflicts_are_refused() {
    let b = Berth::with_busybox();
    b.ok(&["create", "--name", "twin", "busybox", "true"]);
    let out = b.run(&["create", "--name", "twin", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("is already in use"),
        "{}",
        stderr(&out)
    );
    let out = b.run(&["create", "--name", "bad/name", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    // `run` spawns the monitor before it creates the container: a create that fails sends that
    // monitor away without a container.
    let out = b.run(&["run", "--name", "twin", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("is already in use"));
    b.assert_no_monitor_left("a run refused for its name");
    assert_eq!(b.ok(&["ps", "-aq"]).lines().count(), 1);
}

#[test]
fn detached_lifecycle_logs_stop_rm() {
    let b = Berth::with_busybox();
    let id = b.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "echo started; trap 'exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(id.trim().len(), 64);
    let ps = b.ok(&["ps"]);
    assert!(ps.contains("ticker") && ps.contains("Up "), "{ps}");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = b.ok(&["logs", "ticker"]);
        if !logs.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(logs, "started\n");
    let out = b.run(&["rm", "ticker"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("container is running"),
        "{}",
        stderr(&out)
    );
    b.ok(&["stop", "ticker"]);
    assert_eq!(
        b.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "ticker"
        ]),
        "exited 0\n"
    );
    assert_eq!(b.ok(&["wait", "ticker"]), "0\n");
    b.ok(&["start", "ticker"]);
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.State.Running}}", "ticker"]),
        "true\n"
    );
    b.ok(&["kill", "ticker"]);
    assert_eq!(b.ok(&["wait", "ticker"]), "137\n");
    b.ok(&["rm", "ticker"]);
    assert_eq!(b.ok(&["ps", "-aq"]), "");
}

#[test]
fn run_rm_frees_the_name_at_once_and_deletes_the_files_after() {
    let b = Berth::with_busybox();
    for round in 0..2 {
        // The second round reuses the name right away: the record is gone when `run` returns.
        let out = b.ok(&[
            "run",
            "--rm",
            "--name",
            "once",
            "busybox",
            "sh",
            "-c",
            &format!("echo round {round} > /data; cat /data"),
        ]);
        assert_eq!(out, format!("round {round}\n"));
    }
    assert_eq!(b.ok(&["ps", "-aq"]), "");
    // The monitor unmounts and deletes the snapshot and files after reporting the exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let leftovers = |dir: &str| {
        std::fs::read_dir(b.root.join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(b.root.to_str().unwrap())
    };
    let left = || {
        ["trash", "containers", "snapshots/containers"]
            .map(&leftovers)
            .iter()
            .sum::<usize>()
            > 0
            || mounted()
    };
    while left() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(leftovers("trash"), 0, "trash not emptied");
    assert_eq!(leftovers("containers"), 0);
    assert_eq!(leftovers("snapshots/containers"), 0);
    assert!(!mounted(), "rootfs still mounted");
}

#[test]
fn commands_right_after_an_exit_wait_for_its_monitor_to_let_go() {
    let b = Berth::with_busybox();
    // The monitor reports an exit before it unmounts the root filesystem, and that unmount syncs the
    // filesystem under the store: with 256 MiB just written into the container, it takes a while, and
    // the commands below come while it lasts. Each must see a stopped container, not a busy one.
    let write = "dd if=/dev/zero of=/big bs=1M count=256 2>/dev/null; echo written";
    let out = b.ok(&["run", "--name", "big", "busybox", "sh", "-c", write]);
    assert_eq!(out, "written\n");
    // Started again at once, on the default bridge: the first run's veth may still be there.
    assert_eq!(b.ok(&["start", "-a", "big"]), "written\n");
    let listing = b.cmd(&["cp", "big:/etc/hostname", "-"]).output().unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert_eq!(b.ok(&["rm", "big"]), "big\n");
    b.ok(&["run", "--name", "pruned", "busybox", "sh", "-c", write]);
    let pruned = b.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert_eq!(b.ok(&["ps", "-aq"]), "");
}

#[test]
fn prunes_ask_first_and_delete_nothing_without_a_yes() {
    let b = Berth::with_busybox();
    b.ok(&["create", "--name", "kept", "busybox", "true"]);
    for (args, warning) in [
        (
            &["container", "prune"][..],
            "WARNING! This will remove all stopped containers.",
        ),
        (&["system", "prune", "-a"][..], "  - all stopped containers"),
        (
            &["image", "prune", "-a"][..],
            "WARNING! This will remove all images without",
        ),
        (
            &["volume", "prune"][..],
            "WARNING! This will remove anonymous local volumes",
        ),
        (
            &["network", "prune"][..],
            "WARNING! This will remove all custom networks",
        ),
        (
            &["builder", "prune"][..],
            "WARNING! This will remove all dangling build cache.",
        ),
    ] {
        for answer in [&b"n\n"[..], b""] {
            let out = common::output_with_stdin(&mut b.cmd(args), answer);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(warning), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("Are you sure you want to continue? [y/N]"));
            assert_eq!(stdout(&out), "", "{args:?} did something");
        }
    }
    assert_eq!(b.ok(&["ps", "-a", "--format", "{{.Names}}"]), "kept\n");
    assert_eq!(b.ok(&["images", "-q"]).lines().count(), 1);
    let out = common::output_with_stdin(&mut b.cmd(&["container", "prune"]), b"y\n");
    assert!(
        stdout(&out).contains("Deleted Containers:"),
        "{}",
        stdout(&out)
    );
    assert_eq!(b.ok(&["ps", "-aq"]), "");
}

#[test]
fn events_tell_the_lifecycle_as_docker_does() {
    let b = Berth::with_busybox();
    let start = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1
    );
    // A live follower, started before anything happens.
    let mut live = b
        .cmd(&[
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}}",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    b.ok(&["run", "--rm", "--name", "ev", "busybox", "true"]);
    b.ok(&["run", "-d", "--name", "ev2", "busybox", "sleep", "600"]);
    b.ok(&["pause", "ev2"]);
    b.ok(&["unpause", "ev2"]);
    b.ok(&["rm", "-f", "ev2"]);
    b.ok(&["volume", "create", "evvol"]);
    b.ok(&["volume", "rm", "evvol"]);
    b.ok(&["tag", "busybox", "evtag:1"]);
    let actions = |filter: &str| {
        b.ok(&[
            "events",
            "--since",
            &start,
            "--until",
            "0s",
            "--filter",
            filter,
            "--format",
            "{{.Type}} {{.Action}}",
        ])
    };
    // The --rm container's destroy comes from its monitor, after the exit is reported.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !actions("container=ev").contains("destroy") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            actions("container=ev")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        actions("container=ev"),
        "container create\ncontainer start\ncontainer die\ncontainer destroy\n"
    );
    assert_eq!(
        actions("container=ev2"),
        "container create\ncontainer start\ncontainer pause\ncontainer unpause\ncontainer die\ncontainer destroy\n"
    );
    assert_eq!(actions("volume=evvol"), "volume create\nvolume destroy\n");
    assert_eq!(actions("event=tag"), "image tag\n");
    let out = b.ok(&[
        "events",
        "--since",
        &start,
        "--until",
        "0s",
        "--filter",
        "event=die",
        "--format",
        "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
    ]);
    assert!(out.starts_with("ev 0\n"), "{out}");
    let _ = live.kill();
    let mut seen = String::new();
    std::io::Read::read_to_string(live.stdout.as_mut().unwrap(), &mut seen).unwrap();
    let _ = live.wait();
    assert!(seen.starts_with("create\nstart\ndie\n"), "live: {seen}");
    let out = b.run(&["events", "--filter", "colour=red"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn top_lists_the_containers_processes_with_any_ps_options() {
    let b = Berth::with_busybox();
    b.ok(&["run", "-d", "--name", "topped", "busybox", "sleep", "600"]);
    let out = b.ok(&["top", "topped"]);
    let mut lines = out.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.contains("PID") && h.contains("CMD")),
        "{out}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].ends_with("sleep 600"), "{out}");
    // BSD options that select by terminal or user, and -o, still show the container's processes.
    for options in [
        &["c"][..],
        &["u"][..],
        &["-o", "pid,comm"][..],
        &["aux"][..],
    ] {
        let out = b.ok(&[&["top", "topped"][..], options].concat());
        assert_eq!(out.lines().count(), 2, "{options:?}: {out}");
        assert!(
            out.lines().nth(1).is_some_and(|l| l.contains("sleep")),
            "{options:?}: {out}"
        );
    }
    b.ok(&["stop", "-t", "0", "topped"]);
    let out = b.run(&["top", "topped"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
}

#[test]
fn rm_force_kills_and_wait_sees_rm_exit_code() {
    let b = Berth::with_busybox();
    b.ok(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "100"]);
    b.ok(&["rm", "-f", "sleeper"]);
    assert_eq!(b.ok(&["ps", "-aq"]), "");
    let id = b.ok(&[
        "run",
        "-d",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "sleep 0.3; exit 7",
    ]);
    assert_eq!(b.ok(&["wait", id.trim()]), "7\n");
    assert_eq!(b.ok(&["ps", "-aq"]), "");
}

#[test]
fn env_workdir_user_hostname_entrypoint() {
    let b = Berth::with_busybox();
    let out = b.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "-w",
        "/srv/app",
        "-u",
        "www-data",
        "-h",
        "box",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u):$(id -g) $(hostname) $HOME; id -G; grep Groups /proc/self/status",
    ]);
    // The primary group is in the supplementary list too, as with Docker.
    assert_eq!(
        out,
        "hi /srv/app 33:33 box /var/www\n33 50\nGroups:\t33 50 \n"
    );
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox",
        "grep",
        "Groups",
        "/proc/self/status",
    ]);
    assert_eq!(out, "Groups:\t0 \n");
    let out = b.ok(&["run", "--rm", "--entrypoint", "echo", "busybox", "a", "b"]);
    assert_eq!(out, "a b\n");
    // Words after the image belong to the command even when they look like `run`'s own flags
    // (`-c` is also --cpu-shares).
    let out = b.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        "busybox",
        "-c",
        "echo from -c",
    ]);
    assert_eq!(out, "from -c\n");
    let out = b.run(&["run", "--rm", "-u", "nosuchuser", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("unable to find user nosuchuser"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn isolation_defaults() {
    let b = Berth::with_busybox();
    let out = b.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ps -o pid | wc -l; cat /proc/self/status | grep CapEff; ls /dev | sort | tr '\\n' ' '",
    ]);
    let mut lines = out.lines();
    let procs: i32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(procs <= 4, "container sees host processes: {out}");
    assert_eq!(
        lines.next().unwrap(),
        "CapEff:\t00000000a80425fb",
        "Docker's default capability set"
    );
    let devs = lines.next().unwrap();
    assert!(
        devs.contains("null")
            && devs.contains("zero")
            && devs.contains("shm")
            && !devs.contains("sda"),
        "{devs}"
    );
    // The default seccomp profile and capability set refuse mount and friends.
    let out = b.run(&[
        "run", "--rm", "busybox", "mount", "-t", "tmpfs", "t", "/mnt",
    ]);
    assert_ne!(out.status.code(), Some(0));
    // /proc/sys is read-only.
    let out = b.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo x > /proc/sys/kernel/domainname",
    ]);
    assert_ne!(out.status.code(), Some(0), "/proc/sys was writable");
}

#[test]
fn volumes_and_binds() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        b.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    assert!(b.ok(&["volume", "ls", "-q"]).contains("data"));
    // A new named volume is filled from the image's content at its mount point, unless nocopy.
    let out = b.ok(&[
        "run",
        "--rm",
        "-v",
        "etcvol:/etc",
        "busybox",
        "grep",
        "^staff",
        "/etc/group",
    ]);
    assert_eq!(out, "staff:x:50:www-data\n");
    for flag in [
        &["-v", "nc1:/etc:nocopy"][..],
        &["--mount", "type=volume,src=nc2,dst=/etc,volume-nocopy"],
    ] {
        let out = b.run(
            &[
                &["run", "--rm"][..],
                flag,
                &["busybox", "cat", "/etc/group"],
            ]
            .concat(),
        );
        assert_ne!(out.status.code(), Some(0), "{flag:?} filled the volume");
    }
    let host = b.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from host\n").unwrap();
    let spec = format!("{}:/h:ro", host.display());
    assert_eq!(
        b.ok(&["run", "--rm", "-v", &spec, "busybox", "cat", "/h/in"]),
        "from host\n"
    );
    let out = b.run(&[
        "run",
        "--rm",
        "-v",
        &spec,
        "busybox",
        "sh",
        "-c",
        "echo x > /h/new",
    ]);
    assert_ne!(out.status.code(), Some(0), "read-only bind was writable");
    b.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/scratch",
        "busybox",
        "sh",
        "-c",
        "echo t > /scratch/t",
    ]);
    // tmpfs mounts are nosuid,nodev,noexec as Docker's are, unless `exec` is asked for.
    let out = b.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/x",
        "--tmpfs",
        "/z:exec,size=1m",
        "--mount",
        "type=tmpfs,destination=/y",
        "busybox",
        "sh",
        "-c",
        "for d in /x /y /z; do grep \" $d \" /proc/mounts | cut -d' ' -f4; done",
    ]);
    assert_eq!(
        out,
        "rw,nosuid,nodev,noexec,relatime\nrw,nosuid,nodev,noexec,relatime\nrw,nosuid,nodev,relatime,size=1024k\n"
    );
    b.ok(&["volume", "rm", "data"]);
}

#[test]
fn ps_filters_and_inspect_fields() {
    let b = Berth::with_busybox();
    b.ok(&[
        "create", "--name", "one", "--label", "tier=web", "busybox", "true",
    ]);
    b.ok(&["create", "--name", "two", "busybox", "true"]);
    assert_eq!(
        b.ok(&[
            "ps",
            "-a",
            "--filter",
            "label=tier=web",
            "--format",
            "{{.Names}}"
        ]),
        "one\n"
    );
    assert_eq!(
        b.ok(&["ps", "-a", "--filter", "status=created", "-q"])
            .lines()
            .count(),
        2
    );
    assert_eq!(b.ok(&["ps", "-q"]), "");
    for (filter, names) in [
        ("before=two", "one\n"),
        ("since=one", "two\n"),
        ("network=bridge", "two\none\n"),
        ("network=none", ""),
    ] {
        let out = b.ok(&["ps", "-a", "--filter", filter, "--format", "{{.Names}}"]);
        assert_eq!(out, names, "{filter}");
    }
    // Go templates as Docker users write them.
    assert_eq!(
        b.ok(&[
            "ps",
            "-a",
            "--filter",
            "name=one",
            "--format",
            r#"{{.Names}} {{.Networks}} {{.Label "tier"}} {{if eq .State "created"}}new{{end}}"#,
        ]),
        "one bridge web new\n"
    );
    assert_eq!(
        b.ok(&[
            "inspect", "-f",
            r#"{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}} {{.State.Status | printf "%q"}} {{join .Config.Cmd ","}}"#,
            "one",
        ]),
        "tier=web; \"created\" true\n"
    );
    let out = b.run(&["inspect", "-f", "{{nosuch .Id}}", "one"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("function \"nosuch\" not defined"),
        "{}",
        stderr(&out)
    );
    assert!(!b
        .ok(&["version", "--format", "{{.Client.Version}}"])
        .trim()
        .is_empty());
    let doc: serde_json::Value = serde_json::from_str(&b.ok(&["inspect", "one"])).unwrap();
    let c = &doc[0];
    assert_eq!(c["Name"], "/one");
    assert_eq!(c["State"]["Status"], "created");
    assert_eq!(c["Config"]["Labels"]["tier"], "web");
    assert_eq!(c["Config"]["Cmd"][0], "true");
    assert_eq!(c["HostConfig"]["NetworkMode"], "bridge");
    b.ok(&["rename", "two", "three"]);
    assert!(b.ok(&["ps", "-a"]).contains("three"));
}

#[test]
fn the_container_sees_its_own_cgroups_read_only() {
    let b = Berth::with_busybox();
    // Docker's layout on a v2 host (the container's cgroup is /sys/fs/cgroup) and on a v1 or
    // hybrid host (one directory per controller, each the container's own).
    let script = "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then \
          cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; f=/sys/fs/cgroup/pids.max; \
        else \
          cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes; \
          f=/sys/fs/cgroup/pids/pids.max; \
        fi; \
        echo 1 > $f || echo refused";
    let out = b.run(&[
        "run",
        "--rm",
        "--cpus",
        "0.5",
        "-m",
        "64m",
        "--pids-limit",
        "50",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("50000")),
        "{text}"
    );
    assert_eq!(lines.next(), Some("67108864"), "{text}");
    assert_eq!(
        lines.next(),
        Some("refused"),
        "a container wrote its own limit: {text}"
    );
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn shm_size_sysctls_devices_groups_namespaces_and_cidfile() {
    let b = Berth::with_busybox();
    let cidfile = b.dir.path().join("cid");
    let out = b.ok(&[
        "run",
        "--rm",
        "--shm-size",
        "128m",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        "--sysctl",
        "kernel.shmmax=123456",
        "--group-add",
        "staff",
        "--group-add",
        "4242",
        "--device",
        "/dev/null:/dev/mynull:rw",
        "--cidfile",
        p(&cidfile),
        "busybox",
        "sh",
        "-c",
        "df -k /dev/shm | awk 'NR==2 {print $2}'; cat /proc/sys/net/ipv4/ip_forward \
         /proc/sys/kernel/shmmax; id -G; echo hi > /dev/mynull && echo wrote",
    ]);
    assert_eq!(out, "131072\n1\n123456\n0 50 4242\nwrote\n");
    let id = std::fs::read_to_string(&cidfile).unwrap();
    assert_eq!(id.len(), 64, "{id}");
    // A cidfile that exists is refused before anything is made.
    let out = b.run(&["run", "--rm", "--cidfile", p(&cidfile), "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("Container ID file found"),
        "{}",
        stderr(&out)
    );
    // --pid host sees the host's processes; --ipc host has the host's /dev/shm.
    let out = b.ok(&[
        "run",
        "--rm",
        "--pid",
        "host",
        "busybox",
        "sh",
        "-c",
        "ps -o pid | wc -l",
    ]);
    assert!(out.trim().parse::<u32>().unwrap() > 10, "{out}");
    let marker = format!("berth-ipc-{}", std::process::id());
    std::fs::write(Path::new("/dev/shm").join(&marker), "x").unwrap();
    let seen = b.run(&["run", "--rm", "--ipc", "host", "busybox", "ls", "/dev/shm"]);
    let _ = std::fs::remove_file(Path::new("/dev/shm").join(&marker));
    assert!(stdout(&seen).contains(&marker), "{}", stdout(&seen));
    let inspect = b.ok(&[
        "create", "--name", "hc", "--ipc", "host", "--pid", "host", "busybox",
    ]);
    assert!(!inspect.is_empty());
    assert_eq!(
        b.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.IpcMode}} {{.HostConfig.PidMode}} {{.HostConfig.ShmSize}}",
            "hc"
        ]),
        "host host 67108864\n"
    );
    assert_refused_runs(
        &b,
        &[
            (&["--sysctl", "kernel.hostname=x"][..], "is not whitelisted"),
            (
                &["--network", "host", "--sysctl", "net.ipv4.ip_forward=1"][..],
                "not allowed in host network namespace",
            ),
            (
                &["--device", "/dev/nope"][..],
                "error gathering device information",
            ),
            (&["--device", "/etc/passwd"][..], "is not a device node"),
            (&["--shm-size", "0"][..], "--shm-size"),
            (&["--pid", "container:x"][..], "invalid PID mode"),
            (&["--ipc", "container:x"][..], "invalid IPC mode"),
            (
                &["--group-add", "nosuchgroup"][..],
                "Unable to find group nosuchgroup",
            ),
        ],
    );
}

#[test]
fn stats_show_cpu_memory_network_block_io_and_pids() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "st",
        "-m",
        "64m",
        "busybox",
        "sh",
        "-c",
        "ping -c 3 -W 1 $(ip route | awk '/default/ {print $3}') > /dev/null; \
         echo done > /tmp/pinged; exec sleep 600",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while b
        .run(&["exec", "st", "test", "-e", "/tmp/pinged"])
        .status
        .code()
        != Some(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pings never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = b.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.NetIO}}|{{.BlockIO}}|{{.PIDs}}",
        "st",
    ]);
    let fields: Vec<&str> = out.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{out}");
    assert_eq!(fields[0], "st");
    assert!(fields[1].ends_with('%'), "{out}");
    assert!(fields[2].ends_with(" / 64MiB"), "{out}");
    // Three pings and their answers went through eth0.
    assert!(!fields[3].starts_with("0B"), "nothing received: {out}");
    assert!(!fields[3].ends_with("/ 0B"), "nothing sent: {out}");
    assert!(fields[4].contains(" / "), "{out}");
    assert_eq!(fields[5], "1", "{out}");
    // The default table has Docker's columns.
    let table = b.ok(&["stats", "--no-stream", "st"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "BLOCK I/O",
            "PIDS"
        ],
        "{table}"
    );
    b.ok(&["rm", "-f", "st"]);
}

#[test]
fn log_driver_none_keeps_no_log_but_attached_output_flows() {
    let b = Berth::with_busybox();
    let out = b.ok(&[
        "run",
        "--name",
        "quiet",
        "--log-driver",
        "none",
        "busybox",
        "echo",
        "hi",
    ]);
    assert_eq!(out, "hi\n");
    let logs = b.run(&["logs", "quiet"]);
    assert_eq!(logs.status.code(), Some(1));
    assert!(
        stderr(&logs).contains("configured logging driver does not support reading"),
        "{}",
        stderr(&logs)
    );
    let out = b.ok(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "quiet"]);
    assert_eq!(out, "none\n");
    assert_refused_runs(
        &b,
        &[
            (&["--log-driver", "syslog"][..], "not supported"),
            (
                &["--log-driver", "none", "--log-opt", "max-size=1m"][..],
                "for none log driver",
            ),
        ],
    );
}

#[test]
fn update_changes_the_limits_of_a_running_container_and_its_record() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run", "-d", "--name", "up", "-m", "64m", "busybox", "sleep", "600",
    ]);
    assert_eq!(
        b.ok(&[
            "update",
            "-m",
            "128m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "20",
            "--restart",
            "on-failure:3",
            "up",
        ]),
        "up\n"
    );
    // The cgroups have it at once (v2 or v1 names).
    let script = "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then \
          cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max; \
        else \
          cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
            /sys/fs/cgroup/pids/pids.max; \
        fi";
    let out = b.ok(&["exec", "up", "sh", "-c", script]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "134217728", "{out}");
    assert!(lines[1].starts_with("50000"), "{out}");
    assert_eq!(lines[2], "20", "{out}");
    assert_eq!(
        b.ok(&[
            "inspect", "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            "up",
        ]),
        "134217728 500000000 20 on-failure:3\n"
    );
    b.ok(&["container", "update", "--pids-limit", "-1", "up"]);
    let out = b.ok(&[
        "exec",
        "up",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
    ]);
    assert_eq!(out, "max\n");
    for (args, words) in [
        (&["up"][..], "you must provide one or more flags"),
        (&["-m", "1m", "up"][..], "Minimum memory limit"),
        (&["--cpus", "1", "nosuch"][..], "No such container: nosuch"),
        (&["--restart", "sometimes", "up"][..], "restart"),
    ] {
        let out = b.run(&[&["update"][..], args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
    b.ok(&["rm", "-f", "up"]);
}

#[test]
fn memory_limit_oom_is_recorded() {
    let b = Berth::with_busybox();
    let out = b.run(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        "--memory-swap",
        "16m",
        "busybox",
        "sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", stdout(&out));
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.State.OOMKilled}}", "hog"]),
        "true\n"
    );
}

#[test]
fn restart_policy_on_failure_counts_restarts() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "echo ran; exit 1",
    ]);
    assert_eq!(b.ok(&["wait", "flaky"]), "1\n");
    assert_eq!(
        b.ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky"
        ]),
        "2 exited\n"
    );
    // A start by the user counts restarts from zero again, as Docker's.
    b.ok(&["start", "flaky"]);
    assert_eq!(b.ok(&["wait", "flaky"]), "1\n");
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"]),
        "2\n",
        "two new restarts, not four"
    );
    // --tail of all, a negative number or a word shows every line (Docker's reading).
    let everything = b.ok(&["logs", "flaky"]);
    assert_eq!(everything.lines().count(), 6, "{everything}");
    for tail in ["all", "-1", "x"] {
        assert_eq!(
            b.ok(&["logs", "--tail", tail, "flaky"]),
            everything,
            "{tail}"
        );
    }
}

#[test]
fn a_killed_monitor_leaves_an_exited_container_not_a_ghost() {
    let b = Berth::with_busybox();
    b.ok(&["run", "-d", "--name", "orphan", "busybox", "sleep", "300"]);
    let pid: i32 = b
        .ok(&["inspect", "-f", "{{.State.Pid}}", "orphan"])
        .trim()
        .parse()
        .unwrap();
    let monitor = b.monitor_of("orphan");
    std::process::Command::new("kill")
        .args(["-9", &monitor.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = b.ok(&["ps", "-a", "--format", "{{.State}}"]);
    assert_eq!(status, "exited\n");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true),
        "container process survived its monitor's cleanup"
    );
    b.ok(&["rm", "orphan"]);
    let again = b.ok(&["run", "--rm", "busybox", "echo", "ok"]);
    assert_eq!(again, "ok\n");
}

#[test]
fn healthchecks_go_starting_unhealthy_healthy_and_time_out() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "hc1",
        "--health-cmd",
        "test -f /tmp/ok && echo fine",
        "--health-interval",
        "100ms",
        "--health-retries",
        "2",
        "busybox",
        "sleep",
        "300",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "hc2",
        "--health-cmd",
        "sleep 30",
        "--health-timeout",
        "200ms",
        "--health-interval",
        "100ms",
        "--health-retries",
        "1",
        "busybox",
        "sleep",
        "300",
    ]);
    b.ok(&["run", "-d", "--name", "hc3", "busybox", "sleep", "300"]);
    let status = |name: &str| b.ok(&["inspect", "-f", "{{.State.Health.Status}}", name]);
    let wait_for = |name: &str, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if status(name).trim() == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never became {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for("hc1", "unhealthy");
    assert!(b
        .ok(&["ps", "--filter", "name=hc1"])
        .contains("(unhealthy)"));
    b.ok(&["exec", "hc1", "touch", "/tmp/ok"]);
    wait_for("hc1", "healthy");
    let log = b.ok(&["inspect", "-f", "{{json .State.Health}}", "hc1"]);
    let health: serde_json::Value = serde_json::from_str(&log).unwrap();
    assert_eq!(health["FailingStreak"], 0);
    let entries = health["Log"].as_array().unwrap();
    assert!(entries.len() <= 5);
    let last = entries.last().unwrap();
    assert_eq!(
        (last["ExitCode"].as_i64(), last["Output"].as_str()),
        (Some(0), Some("fine\n"))
    );
    // A probe over its timeout is killed and counted as failed.
    wait_for("hc2", "unhealthy");
    let log = b.ok(&["inspect", "-f", "{{json .State.Health.Log}}", "hc2"]);
    assert!(
        log.contains("Health check exceeded timeout (200ms)"),
        "{log}"
    );
    // No healthcheck: no Health at all.
    assert_eq!(
        b.ok(&["inspect", "-f", "{{json .State.Health}}", "hc3"]),
        "null\n"
    );
}

#[test]
fn init_runs_as_pid_1_and_forwards_signals() {
    let b = Berth::with_busybox();
    let out = b.run(&[
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stdout(&out).starts_with("/sbin/docker-init -- sh -c"),
        "{}",
        stdout(&out)
    );
    // A `sleep` as the child of an init stops at SIGTERM instead of waiting out the stop timeout.
    b.ok(&[
        "run", "-d", "--init", "--name", "in1", "busybox", "sleep", "300",
    ]);
    // The init has set its signal handling up once it has started its child: a SIGTERM that comes
    // before is lost, as it is for Docker's (pid 1 ignores what it does not handle).
    let pid = b.ok(&["inspect", "-f", "{{.State.Pid}}", "in1"]);
    let children = format!("/proc/{0}/task/{0}/children", pid.trim());
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&children)
        .unwrap_or_default()
        .trim()
        .is_empty()
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    b.ok(&["stop", "-t", "30", "in1"]);
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.State.ExitCode}}", "in1"]),
        "143\n"
    );
}

#[test]
fn a_closed_stdout_ends_listing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let b = Berth::with_busybox();
    b.ok(&["create", "--name", "listed", "busybox", "true"]);
    for args in [
        &["ps", "-a"][..],
        &["container", "ls", "-a"][..],
        &["images"][..],
        &["image", "ls"][..],
        &["inspect", "listed"][..],
    ] {
        // A pipe whose reader is already gone: the first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = b
            .cmd(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: killed by SIGPIPE, as docker is"
        );
    }
}

#[test]
fn the_monitor_holds_the_container_mount_namespace_while_it_runs() {
    // The container's mounts are torn down by the monitor after the exit is recorded, not in the
    // init's own exit (where the kernel waits for an RCU grace period before the monitor hears).
    let b = Berth::with_busybox();
    let id = b
        .ok(&["run", "-d", "busybox", "sleep", "60"])
        .trim()
        .to_string();
    let pid = b.ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let namespace = std::fs::read_link(format!("/proc/{}/ns/mnt", pid.trim())).unwrap();
    let monitor = b.monitor_of(&id);
    let holds = std::fs::read_dir(format!("/proc/{monitor}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).ok().as_ref() == Some(&namespace));
    assert!(
        holds,
        "monitor {monitor} holds no descriptor of {namespace:?}"
    );
    b.ok(&["rm", "-f", &id]);
    assert_eq!(b.ok(&["ps", "-aq"]), "");
}
