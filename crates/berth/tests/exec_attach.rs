//! `exec` and `attach` against real running containers.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Berth};

/// Runs `berth ARGS` under a pseudo-terminal (util-linux `script`), typing each chunk of `input` after a
/// pause; returns (exit code, output).
fn under_pty(b: &Berth, args: &str, input: &[&str]) -> (Option<i32>, String) {
    let cmd = format!(
        "stty cols 91 rows 27; {} --root {} --runroot {} {args}",
        env!("CARGO_BIN_EXE_berth"),
        b.root.display(),
        b.runroot.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script");
    let mut stdin = child.stdin.take().unwrap();
    for chunk in input {
        // Give the program time to set up its terminal (and to answer) before typing on.
        std::thread::sleep(Duration::from_millis(700));
        stdin.write_all(chunk.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn exec_joins_the_container_with_its_identity_and_limits() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "ex1",
        "--hostname",
        "inner",
        "busybox",
        "sleep",
        "300",
    ]);
    // Same PID namespace (pid 1 is the container's command), same hostname, same cgroup, seccomp on.
    let out = b.run(&[
        "exec",
        "ex1",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; grep -c . /proc/self/cgroup; \
         grep Seccomp: /proc/self/status; grep CapEff /proc/self/status; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].trim(), "sleep 300");
    assert_eq!(lines[1], "inner");
    assert!(
        lines[3].ends_with('2'),
        "seccomp filter not applied: {text}"
    );
    // Docker's default capability set, not the host's full one.
    assert!(lines[4].ends_with("00000000a80425fb"), "{text}");

    let pid = b.ok(&["inspect", "-f", "{{.State.Pid}}", "ex1"]);
    let host_cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    // The container's process is in the container's cgroup in every controller's hierarchy (on
    // v1 it moved itself there by thread, see vendor/README.md), on v2 in the one hierarchy.
    let id = b.ok(&["inspect", "-f", "{{.Id}}", "ex1"]);
    let own = format!(":/berth/{}", id.trim());
    for line in host_cgroups.lines() {
        let controllers = line.split(':').nth(1).unwrap_or("");
        let controller_line = controllers.split(',').any(|c| {
            [
                "cpu", "cpuset", "memory", "pids", "devices", "freezer", "blkio",
            ]
            .contains(&c)
        });
        if controller_line || line.starts_with("0::") && !host_cgroups.contains(":memory:") {
            assert!(line.ends_with(&own), "{line} is not {own}: {host_cgroups}");
        }
    }
    assert!(host_cgroups.contains(&own), "{host_cgroups}");
    let exec_cgroups = b.ok(&["exec", "ex1", "cat", "/proc/self/cgroup"]);
    assert_eq!(exec_cgroups, host_cgroups);

    // -u, -w, -e and the container's environment.
    let out = b.ok(&[
        "exec",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "-e",
        "FOO=bar",
        "ex1",
        "sh",
        "-c",
        "id -u; pwd; echo $FOO $HOME; echo $PATH",
    ]);
    assert_eq!(
        out,
        "65534\n/tmp\nbar /nonexistent\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );

    // -i passes stdin; without it the process reads nothing.
    let out = common::output_with_stdin(
        &mut b.cmd(&["exec", "-i", "ex1", "sh", "-c", "tr a-z A-Z"]),
        b"piped in\n",
    );
    assert_eq!(stdout(&out), "PIPED IN\n");
    assert_eq!(b.ok(&["exec", "ex1", "cat"]), "");

    // -d returns at once; the process runs on.
    b.ok(&[
        "exec",
        "-d",
        "ex1",
        "sh",
        "-c",
        "sleep 0.3; touch /tmp/done",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b
        .run(&["exec", "ex1", "test", "-f", "/tmp/done"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "exec -d never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exec_errors_use_dockers_codes() {
    let b = Berth::with_busybox();
    b.ok(&["run", "-d", "--name", "ex2", "busybox", "sleep", "300"]);
    // Every exec that cannot start its command is 126 with Docker (a run's missing command is 127).
    let out = b.run(&["exec", "ex2", "nosuchcommand"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(stderr(&out).contains("executable file not found"));
    let out = b.run(&["exec", "ex2", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126));
    let out = b.run(&["exec", "-w", "/nonexistent", "ex2", "pwd"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(stderr(&out).contains("chdir"), "{}", stderr(&out));
    let out = b.run(&["exec", "-w", "relative", "ex2", "pwd"]);
    assert_eq!(out.status.code(), Some(126));
    let out = b.run(&["exec", "-u", "nosuchuser", "ex2", "id"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(stderr(&out).contains("unable to find user nosuchuser"));
    let out = b.run(&["exec", "nosuchcontainer", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No such container"),
        "{}",
        stderr(&out)
    );
    b.ok(&["stop", "-t", "0", "ex2"]);
    let out = b.run(&["exec", "ex2", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    let out = b.run(&["exec", "ex2"]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "missing command is a usage error"
    );
}

#[test]
fn exec_tty_gives_a_terminal_of_the_callers_size() {
    let b = Berth::with_busybox();
    b.ok(&["run", "-d", "--name", "ex3", "busybox", "sleep", "300"]);
    let (code, out) = under_pty(
        &b,
        "exec -t ex3 sh -c 'tty; stty size; echo $TERM; exit 3'",
        &[],
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("27 91"), "{out}");
    assert!(out.contains("xterm"), "{out}");
    // An interactive shell reads what is typed.
    let (code, out) = under_pty(&b, "exec -it ex3 sh", &["echo typed-$((6*7))\rexit 4\r"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("typed-42"), "{out}");
}

#[test]
fn attach_streams_output_forwards_input_and_returns_the_exit_code() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "at1",
        "busybox",
        "sh",
        "-c",
        "while read l; do echo got $l; [ $l = quit ] && exit 5; done",
    ]);
    let mut child = b
        .cmd(&["attach", "at1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a\nb\nquit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stdout(&out), "got a\ngot b\ngot quit\n");
    // The exit is recorded by the time attach returns.
    assert_eq!(
        b.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "at1"
        ]),
        "exited 5\n"
    );
    let out = b.run(&["attach", "at1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("You cannot attach to a stopped container"));
}

#[test]
fn attach_clients_come_and_go_without_disturbing_the_container() {
    let b = Berth::with_busybox();
    b.ok(&[
        "run",
        "-d",
        "--name",
        "at2",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    for _ in 0..3 {
        let mut child = b
            .cmd(&["attach", "--no-stdin", "at2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(stdout(&out).contains("tick"), "no output while attached");
    }
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.State.Running}}", "at2"]),
        "true\n"
    );
    // Detach keys on a tty container leave it running.
    b.ok(&["run", "-d", "-it", "--name", "at3", "busybox", "sh"]);
    let (code, out) = under_pty(&b, "attach at3", &["echo hi-$((1+1))\r", "\x10\x11"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("hi-2"), "{out}");
    assert_eq!(
        b.ok(&["inspect", "-f", "{{.State.Running}}", "at3"]),
        "true\n"
    );
}

#[test]
fn detach_keys_can_be_chosen() {
    let b = Berth::with_busybox();
    let running = |name: &str| b.ok(&["inspect", "-f", "{{.State.Running}}", name]) == "true\n";
    b.ok(&["run", "-d", "-it", "--name", "dk1", "busybox", "sh"]);
    // With other keys, ctrl-p ctrl-q is just input; ctrl-a d detaches.
    let (code, out) = under_pty(
        &b,
        "attach --detach-keys ctrl-a,d dk1",
        &["\x10\x11\r", "echo two-$((1+1))\r", "\x01d"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("two-2"), "{out}");
    assert!(running("dk1"));

    // `run -it` and `exec -it` take them too.
    let (code, out) = under_pty(
        &b,
        "run -it --name dk2 --detach-keys ctrl-x busybox sh",
        &["echo in-run\r", "\x18"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("in-run"), "{out}");
    assert!(running("dk2"));
    let (code, out) = under_pty(&b, "exec -it --detach-keys ctrl-e dk2 sh", &["\x05"]);
    assert_eq!(code, Some(0), "{out}");

    // A key Docker does not know is refused before anything runs.
    let out = b.run(&[
        "run",
        "--detach-keys",
        "ctrl-1",
        "--name",
        "dk3",
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("invalid detach keys (ctrl-1)"),
        "{}",
        stderr(&out)
    );
    assert!(b.run(&["inspect", "dk3"]).status.code() != Some(0));
}
