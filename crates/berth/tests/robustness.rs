//! Robustness claims, end to end: many CLIs on one store at once, CLIs and monitors killed at random
//! moments, log rotation under a follower, rlimits, and the wait/stop/kill contracts. Each test has its
//! own store (common::Berth) and leaves no container, mount, cgroup or process behind, even on failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Berth};

/// Polls `f` every 50 ms until it returns Some, for at most `limit`; None on timeout.
fn poll_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process whose output is collected as it comes (so a full pipe never blocks it).
struct Collecting {
    child: Child,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Collecting {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = Some(drain(Box::new(child.stdout.take().expect("stdout"))));
        let err = Some(drain(Box::new(child.stderr.take().expect("stderr"))));
        Self { child, out, err }
    }

    fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits with a bound; kills the child (and fails) when it does not exit by itself.
    fn wait(&mut self, limit: Duration, what: &str) -> Output {
        let status = poll_until(limit, || self.child.try_wait().ok().flatten());
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("{what} did not exit within {limit:?}");
        };
        Output {
            status,
            stdout: self
                .out
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        // Only reached with the child still running when a test failed: leave no process behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A small xorshift generator: the tests need a little randomness, not a dependency.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        let seed = nanos ^ ((std::process::id() as u64) << 32) | 1;
        eprintln!("random seed: {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `id name state` of every container, keyed by full ID.
fn listing(b: &Berth) -> BTreeMap<String, (String, String)> {
    let out = b.ok(&[
        "ps",
        "-a",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Names}} {{.State}}",
    ]);
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        let (Some(id), Some(name), Some(state)) = (words.next(), words.next(), words.next()) else {
            panic!("unexpected ps line {line:?}");
        };
        let old = map.insert(id.to_string(), (name.to_string(), state.to_string()));
        assert!(old.is_none(), "container {id} listed twice:\n{out}");
    }
    map
}

/// Mount points under the test's directory, but for the run directory's own tmpfs.
fn mounts_under(dir: &Path, runroot: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix) && Path::new(m) != runroot)
        .map(str::to_string)
        .collect()
}

/// Cgroup directories left for a container, in any hierarchy (v1 controllers or the unified tree).
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let base = Path::new("/sys/fs/cgroup");
    let unified = base.join("berth").join(id);
    if unified.exists() {
        found.push(unified);
    }
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let dir = e.path().join("berth").join(id);
            if dir.exists() {
                found.push(dir);
            }
        }
    }
    found
}

/// Host processes that belong to this store (monitors name its root on their command line) or sit in
/// one of the given containers' cgroups.
fn processes_of(b: &Berth, ids: &[String]) -> Vec<String> {
    let root = b.root.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            continue; // a zombie waiting for its reaper owns nothing
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if (cmdline.contains(&root) && cmdline.contains("berth-monitor "))
            || ids
                .iter()
                .any(|id| cgroup.contains(&format!("/berth/{id}")))
        {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Asserts that nothing of the given containers is left: no record, mount, cgroup or process.
fn assert_nothing_left(b: &Berth, ids: &[String]) {
    assert_eq!(b.ok(&["ps", "-aq"]), "", "containers left in the store");
    // A `--rm` container's monitor unmounts its rootfs just after reporting the exit.
    let mounts = poll_until(Duration::from_secs(10), || {
        mounts_under(b.dir.path(), &b.runroot)
            .is_empty()
            .then_some(())
    });
    assert!(
        mounts.is_some(),
        "mounts left: {:?}",
        mounts_under(b.dir.path(), &b.runroot)
    );
    // Cgroups go away with the last process in them, which the kernel may report a moment late.
    let cgroups = poll_until(Duration::from_secs(10), || {
        let left: Vec<PathBuf> = ids.iter().flat_map(|id| cgroups_of(id)).collect();
        left.is_empty().then_some(())
    });
    assert!(
        cgroups.is_some(),
        "cgroups left: {:?}",
        ids.iter().flat_map(|id| cgroups_of(id)).collect::<Vec<_>>()
    );
    let procs = poll_until(Duration::from_secs(10), || {
        processes_of(b, ids).is_empty().then_some(())
    });
    assert!(
        procs.is_some(),
        "processes left: {:?}",
        processes_of(b, ids)
    );
}

/// The monitor process of a container (found by its command line), if alive.
fn monitor_pid(b: &Berth, id: &str) -> Option<i32> {
    let root = b.root.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&c| c == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == &root)
            && args.first().is_some_and(|a| a.ends_with("berth-monitor"))
            && args.iter().rev().find(|a| !a.is_empty()) == Some(&id.to_string())
        {
            return Some(pid);
        }
    }
    None
}

fn is_db_busy_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("database is locked") || t.contains("database is busy") || t.contains("sqlite_busy")
}

fn inspect(b: &Berth, format: &str, name: &str) -> String {
    b.ok(&["inspect", "-f", format, name]).trim().to_string()
}

// ---------------------------------------------------------------------------------------------------
// 1. Concurrency
// ---------------------------------------------------------------------------------------------------

/// What one of the parallel CLI calls was.
#[derive(Debug, Clone)]
enum Op {
    RunDetached(String),
    RunRm(String),
    Create(String),
    Rename(String, String),
    RemoveForce(String),
    Ps,
}

impl Op {
    fn args(&self) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Op::RunDetached(n) => v(&["run", "-d", "--name", n, "busybox", "sleep", "300"]),
            Op::RunRm(n) => v(&["run", "--rm", "--name", n, "busybox", "true"]),
            Op::Create(n) => v(&["create", "--name", n, "busybox", "true"]),
            Op::Rename(from, to) => v(&["rename", from, to]),
            Op::RemoveForce(n) => v(&["rm", "-f", n]),
            Op::Ps => v(&["ps", "-a", "--no-trunc"]),
        }
    }
}

/// Runs every command at once (one thread and one CLI process each) and returns their outputs in order.
fn run_parallel(b: &Berth, commands: Vec<Vec<String>>) -> Vec<Output> {
    let barrier = Arc::new(Barrier::new(commands.len()));
    let root = b.root.clone();
    let runroot = b.runroot.clone();
    let handles: Vec<_> = commands
        .into_iter()
        .map(|args| {
            let barrier = barrier.clone();
            let (root, runroot) = (root.clone(), runroot.clone());
            std::thread::spawn(move || {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
                cmd.arg("--root")
                    .arg(&root)
                    .arg("--runroot")
                    .arg(&runroot)
                    .args(&args)
                    .stdin(Stdio::null());
                barrier.wait();
                cmd.output().expect("spawn berth")
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("CLI thread panicked"))
        .collect()
}

#[test]
fn concurrent_clis_share_one_store() {
    let b = Berth::with_busybox();
    // Containers for the parallel rm -f and rename to work on, made beforehand.
    let mut victims = Vec::new();
    for i in 0..6 {
        let name = format!("victim-run-{i}");
        b.ok(&["run", "-d", "--name", &name, "busybox", "sleep", "300"]);
        victims.push(name);
    }
    for i in 0..4 {
        let name = format!("victim-created-{i}");
        b.ok(&["create", "--name", &name, "busybox", "true"]);
        victims.push(name);
    }
    let mut renamed = Vec::new();
    for i in 0..4 {
        let from = format!("before-{i}");
        let id = b.ok(&["create", "--name", &from, "busybox", "true"]);
        renamed.push((id.trim().to_string(), from, format!("after-{i}")));
    }

    let mut ops = Vec::new();
    for i in 0..30 {
        ops.push(Op::RunDetached(format!("par-run-{i}")));
    }
    for i in 0..5 {
        ops.push(Op::RunRm(format!("par-rm-{i}")));
        ops.push(Op::Create(format!("par-created-{i}")));
    }
    for (_, from, to) in &renamed {
        ops.push(Op::Rename(from.clone(), to.clone()));
    }
    for v in &victims {
        ops.push(Op::RemoveForce(v.clone()));
    }
    for _ in 0..8 {
        ops.push(Op::Ps);
    }
    // Interleave the kinds so they really start together rather than in blocks.
    let mut rng = Rng::from_clock();
    for i in (1..ops.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ops.swap(i, j);
    }
    let outputs = run_parallel(&b, ops.iter().map(Op::args).collect());

    let mut expected: BTreeMap<String, (String, &str)> = BTreeMap::new();
    for (op, out) in ops.iter().zip(&outputs) {
        let err = stderr(out);
        assert!(!is_db_busy_error(&err), "{op:?} hit a busy database: {err}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{op:?} failed: {}{err}",
            stdout(out)
        );
        match op {
            Op::RunDetached(name) | Op::Create(name) => {
                let id = stdout(out).trim().to_string();
                assert_eq!(id.len(), 64, "{op:?} printed {id:?}");
                let state = if matches!(op, Op::RunDetached(_)) {
                    "running"
                } else {
                    "created"
                };
                let old = expected.insert(id.clone(), (name.clone(), state));
                assert!(old.is_none(), "ID {id} reported twice");
            }
            _ => {}
        }
    }
    for (id, _, to) in &renamed {
        expected.insert(id.clone(), (to.clone(), "created"));
    }

    let listed = listing(&b);
    let listed_view: BTreeMap<String, (String, &str)> = listed
        .iter()
        .map(|(id, (name, state))| (id.clone(), (name.clone(), state.as_str())))
        .collect();
    assert_eq!(
        listed_view, expected,
        "ps -a does not list exactly the containers reported created"
    );
    let names: BTreeSet<&String> = listed.values().map(|(n, _)| n).collect();
    assert_eq!(names.len(), listed.len(), "duplicate names: {listed:?}");
    for (id, (name, state)) in &expected {
        if *state == "running" {
            assert_eq!(inspect(&b, "{{.State.Running}}", id), "true", "{name}");
        }
    }

    // Now remove everything at once, with listings running meanwhile (a container removed while
    // `ps` looks at it must simply not be listed).
    let ids: Vec<String> = listed.keys().cloned().collect();
    let mut commands: Vec<Vec<String>> = ids
        .iter()
        .map(|id| vec!["rm".to_string(), "-f".to_string(), id.clone()])
        .collect();
    commands.extend((0..8).map(|_| Op::Ps.args()));
    let outputs = run_parallel(&b, commands.clone());
    for (args, out) in commands.iter().zip(&outputs) {
        assert!(!is_db_busy_error(&stderr(out)), "{args:?}: {}", stderr(out));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} failed: {}",
            stderr(out)
        );
    }
    assert_nothing_left(&b, &ids);
}

// ---------------------------------------------------------------------------------------------------
// 2. Crash safety
// ---------------------------------------------------------------------------------------------------

#[test]
fn cli_killed_at_random_moments_leaves_a_usable_store() {
    let b = Berth::with_busybox();
    let mut rng = Rng::from_clock();
    for i in 0..15 {
        let name = format!("crash-{i}");
        let mut child = b
            .cmd(&["run", "-d", "--name", &name, "busybox", "sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn berth run");
        // 0-300 ms; every other time within the first 80 ms, where `run -d` (~70 ms) is still busy
        // creating the record, the snapshot and the monitor.
        let limit = if i % 2 == 0 { 81 } else { 301 };
        std::thread::sleep(Duration::from_millis(rng.below(limit)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }

    let ps = b.run(&["ps", "-a"]);
    assert_eq!(ps.status.code(), Some(0), "ps -a: {}", stderr(&ps));
    let listed = listing(&b);
    let ids: Vec<String> = listed.keys().cloned().collect();
    for (id, (name, state)) in &listed {
        assert!(name.starts_with("crash-"), "unexpected container {name}");
        match state.as_str() {
            "running" => {
                let pid: i32 = inspect(&b, "{{.State.Pid}}", id).parse().unwrap();
                assert!(pid > 0, "{name} running without a pid");
                assert!(
                    Path::new(&format!("/proc/{pid}")).exists(),
                    "{name} shown running but its process {pid} is gone"
                );
            }
            "created" | "exited" => {}
            other => panic!("{name} left in state {other}"),
        }
    }
    // A new container works next to whatever the killed CLIs left.
    assert_eq!(
        b.ok(&[
            "run",
            "--rm",
            "--name",
            "after-crash",
            "busybox",
            "echo",
            "ok"
        ]),
        "ok\n"
    );
    for (id, (name, _)) in &listed {
        let out = b.run(&["rm", "-f", id]);
        assert_eq!(out.status.code(), Some(0), "rm -f {name}: {}", stderr(&out));
    }
    assert_nothing_left(&b, &ids);
}

#[test]
fn killed_monitor_of_restart_always_container_is_exited_and_restartable() {
    let b = Berth::with_busybox();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "always-up",
            "--restart",
            "always",
            "busybox",
            "sleep",
            "300",
        ])
        .trim()
        .to_string();
    let pid: i32 = inspect(&b, "{{.State.Pid}}", &id).parse().unwrap();
    let monitor = monitor_pid(&b, &id).expect("the monitor runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the monitor");
    let state = poll_until(Duration::from_secs(10), || {
        let s = inspect(&b, "{{.State.Status}}", &id);
        (s == "exited").then_some(s)
    });
    assert_eq!(
        state.as_deref(),
        Some("exited"),
        "a container whose monitor died must not stay running or restarting"
    );
    // Nobody restarts it behind our back, and its process is gone.
    assert_eq!(b.ok(&["ps", "-a", "--format", "{{.State}}"]), "exited\n");
    let gone = poll_until(Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.rsplit(')').next().is_some_and(|s| s.contains(" Z"))).then_some(())
    });
    assert!(gone.is_some(), "the container process survived its monitor");
    assert_eq!(b.ok(&["ps", "-q"]), "");

    b.ok(&["start", "always-up"]);
    assert_eq!(inspect(&b, "{{.State.Status}}", &id), "running");
    let new_monitor = monitor_pid(&b, &id).expect("a new monitor runs");
    assert_ne!(new_monitor, monitor);
    b.ok(&["rm", "-f", "always-up"]);
    assert_nothing_left(&b, &[id]);
}

#[test]
fn stop_and_rm_force_are_final_for_restart_always_containers() {
    let b = Berth::with_busybox();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "keeper",
            "--restart",
            "always",
            "busybox",
            "sleep",
            "300",
        ])
        .trim()
        .to_string();
    // sleep ignores SIGTERM as PID 1: stop ends with SIGKILL after 1 s, and the policy must not
    // bring it back (the user stopped it).
    b.ok(&["stop", "-t", "1", "keeper"]);
    assert_eq!(
        inspect(&b, "{{.State.Status}} {{.RestartCount}}", "keeper"),
        "exited 0"
    );
    // stop returns once the exit is recorded; the monitor leaves after unmounting the rootfs, and
    // without restarting it.
    let gone = poll_until(Duration::from_secs(10), || {
        monitor_pid(&b, &id).is_none().then_some(())
    });
    assert!(gone.is_some(), "the monitor did not leave after stop");
    assert_eq!(
        inspect(&b, "{{.State.Status}} {{.RestartCount}}", "keeper"),
        "exited 0"
    );
    assert_eq!(b.ok(&["ps", "-q"]), "");
    b.ok(&["start", "keeper"]);
    assert_eq!(inspect(&b, "{{.State.Status}}", "keeper"), "running");
    let monitor = monitor_pid(&b, &id).expect("the monitor runs");
    b.ok(&["rm", "-f", "keeper"]);
    assert!(
        !Path::new(&format!("/proc/{monitor}/cmdline")).exists() || monitor_pid(&b, &id).is_none(),
        "rm -f returned with the monitor still running"
    );
    assert_nothing_left(&b, &[id]);
}

#[test]
fn anonymous_volumes_and_tmpfs_options_survive_the_store() {
    let b = Berth::with_busybox();
    b.ok(&["run", "--rm", "-v", "/data", "busybox", "true"]);
    assert_eq!(
        b.ok(&["volume", "ls", "-q"]),
        "",
        "--rm left its anonymous volume"
    );
    b.ok(&["run", "--name", "anon", "-v", "/data", "busybox", "true"]);
    assert_eq!(b.ok(&["volume", "ls", "-q"]).lines().count(), 1);
    b.ok(&["rm", "-v", "anon"]);
    assert_eq!(
        b.ok(&["volume", "ls", "-q"]),
        "",
        "rm -v left the anonymous volume"
    );
    let df = b.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/t:size=1m",
        "busybox",
        "df",
        "-k",
        "/t",
    ]);
    let size = df
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    assert_eq!(size, "1024", "tmpfs size option ignored: {df}");
    // Berth's bookkeeping stays out of Docker's inspect document.
    b.ok(&[
        "create", "--name", "quiet", "-v", "/data", "busybox", "true",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&b.ok(&["inspect", "quiet"])).unwrap();
    let c = &doc[0];
    assert!(c["State"].get("StoppedByUser").is_none() && c["State"].get("MonitorPid").is_none());
    assert!(c["Mounts"][0].get("Anonymous").is_none(), "{}", c["Mounts"]);
    b.ok(&["rm", "-v", "quiet"]);
    assert_eq!(b.ok(&["volume", "ls", "-q"]), "");
    assert_nothing_left(&b, &[]);
}

// ---------------------------------------------------------------------------------------------------
// 3. Logs
// ---------------------------------------------------------------------------------------------------

/// The numbers of `line-N` output lines, in order.
fn line_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            l.strip_prefix("line-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected log line {l:?}"))
        })
        .collect()
}

/// Checks a follower's output: strictly increasing (in order, no duplicates), ending with `last`, and
/// without a gap from `first_on_disk` (the oldest line rotation kept) on. Lines older than that may be
/// missing when the follower fell behind rotation; none may be repeated or out of order.
fn check_followed(what: &str, numbers: &[u64], first_on_disk: u64, last: u64) {
    for w in numbers.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: line {} followed by {} (duplicate or out of order)",
            w[0],
            w[1]
        );
    }
    assert_eq!(
        numbers.last().copied(),
        Some(last),
        "{what}: missing the end"
    );
    let tail: Vec<u64> = numbers
        .iter()
        .copied()
        .filter(|&n| n >= first_on_disk)
        .collect();
    let want: Vec<u64> = (first_on_disk..=last).collect();
    if tail != want {
        let missing: Vec<u64> = want
            .iter()
            .copied()
            .filter(|n| !tail.contains(n))
            .take(20)
            .collect();
        panic!(
            "{what}: lines still on disk from {first_on_disk} to {last} are not all followed; missing {missing:?}…"
        );
    }
}

#[test]
fn logs_follow_behind_a_fast_writer_never_repeats_and_keeps_what_is_on_disk() {
    let b = Berth::with_busybox();
    let host = b.dir.path().join("signal");
    std::fs::create_dir_all(&host).unwrap();
    let volume = format!("{}:/signal", host.display());
    const FAST: u64 = 20000;
    const LAST: u64 = 24000;
    // A fast burst (rotation outruns any follower), then a paced phase the followers keep up with,
    // through many rotations. It waits for /signal/go so the first follower is there from the start.
    let script = format!(
        "while [ ! -e /signal/go ]; do sleep 0.05; done; \
         i=0; while [ $i -lt {FAST} ]; do i=$((i+1)); echo line-$i; done; \
         while [ $i -lt {LAST} ]; do \
           j=0; while [ $j -lt 40 ]; do j=$((j+1)); i=$((i+1)); echo line-$i; done; sleep 0.02; \
         done"
    );
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "chatty",
            "--log-opt",
            "max-size=10k",
            "--log-opt",
            "max-file=3",
            "-v",
            &volume,
            "busybox",
            "sh",
            "-c",
            &script,
        ])
        .trim()
        .to_string();
    let follow = |b: &Berth| Collecting::spawn(b.cmd(&["logs", "-f", "chatty"]));
    let mut early = follow(&b);
    // Start the output only once the first follower has its starting point.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(host.join("go"), "").unwrap();
    // A second follower joins mid-stream, while rotation is going on: its backlog and what it follows
    // must join without a seam.
    let joined = poll_until(Duration::from_secs(60), || {
        let out = b.ok(&["logs", "--tail", "1", "chatty"]);
        let n: u64 = out.trim().strip_prefix("line-")?.parse().ok()?;
        (n >= 2000).then_some(())
    });
    assert!(joined.is_some(), "the container produced no output");
    let mut late = follow(&b);

    assert_eq!(
        poll_until(Duration::from_secs(120), || {
            let s = inspect(&b, "{{.State.Status}}", &id);
            (s == "exited").then_some(s)
        })
        .as_deref(),
        Some("exited")
    );
    assert_eq!(inspect(&b, "{{.State.ExitCode}}", &id), "0");
    let early = early.wait(Duration::from_secs(60), "logs -f (early)");
    let late = late.wait(Duration::from_secs(60), "logs -f (late)");
    assert_eq!(early.status.code(), Some(0), "{}", stderr(&early));
    assert_eq!(late.status.code(), Some(0), "{}", stderr(&late));

    let on_disk = line_numbers(&b.ok(&["logs", "chatty"]));
    let first_on_disk = *on_disk.first().expect("logs are empty");
    assert!(
        first_on_disk > 1,
        "nothing was rotated away: {first_on_disk}"
    );
    assert_eq!(
        on_disk,
        (first_on_disk..=LAST).collect::<Vec<_>>(),
        "the logs on disk have a gap"
    );
    check_followed(
        "early follower",
        &line_numbers(&stdout(&early)),
        first_on_disk,
        LAST,
    );
    check_followed(
        "late follower",
        &line_numbers(&stdout(&late)),
        first_on_disk,
        LAST,
    );

    // --tail and -t.
    let tail = b.ok(&["logs", "--tail", "5", "chatty"]);
    assert_eq!(line_numbers(&tail), ((LAST - 4)..=LAST).collect::<Vec<_>>());
    let stamped = b.ok(&["logs", "-t", "--tail", "3", "chatty"]);
    let mut previous = None;
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 3, "{stamped}");
    for (k, line) in lines.iter().enumerate() {
        let (stamp, text) = line.split_once(' ').expect("timestamp then text");
        assert_eq!(text, format!("line-{}", LAST - 2 + k as u64));
        // RFC 3339 with nanoseconds, as Docker's RFC3339NanoFixed: 2006-01-02T15:04:05.000000000Z
        assert_eq!(stamp.len(), 30, "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{stamp}"
        );
        assert!(stamp[20..29].bytes().all(|c| c.is_ascii_digit()), "{stamp}");
        let t = chrono::DateTime::parse_from_rfc3339(stamp).expect("valid RFC 3339");
        assert!(previous.is_none_or(|p| p <= t), "timestamps go backwards");
        previous = Some(t);
    }
    b.ok(&["rm", "chatty"]);
    assert_nothing_left(&b, &[id]);
}

/// `logs -f` in a child, its `line-N` numbers collected as they arrive.
struct LineFollower {
    child: Collecting,
    rx: std::sync::mpsc::Receiver<u64>,
    seen: Vec<u64>,
}

impl LineFollower {
    fn spawn(b: &Berth, name: &str) -> Self {
        let mut cmd = b.cmd(&["logs", "-f", name]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let n = line
                    .strip_prefix("line-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX); // shows up as out of order
                if tx.send(n).is_err() {
                    break;
                }
            }
            Vec::new()
        });
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut { stderr }, &mut buf);
            buf
        });
        Self {
            child: Collecting {
                child,
                out: Some(out),
                err: Some(err),
            },
            rx,
            seen: Vec::new(),
        }
    }

    /// The last line seen so far.
    fn last(&mut self) -> Option<u64> {
        self.seen.extend(self.rx.try_iter());
        self.seen.last().copied()
    }

    /// Waits for `logs -f` to exit by itself and returns every line number it printed.
    fn finish(mut self, what: &str) -> Vec<u64> {
        let out = self.child.wait(Duration::from_secs(60), what);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
        self.seen.extend(self.rx.try_iter());
        self.seen
    }
}

#[test]
fn logs_follow_keeps_up_across_rotation_without_gaps_or_repeats() {
    let b = Berth::with_busybox();
    let host = b.dir.path().join("signal");
    std::fs::create_dir_all(&host).unwrap();
    let volume = format!("{}:/signal", host.display());
    // Batches of 200 lines (~15 KB of log, one or two rotations each). The container writes batch k+1
    // only once the test saw every follower print batch k, so no follower ever falls behind by more
    // than the log keeps: every line must reach every follower, once, in order.
    const BATCH: u64 = 200;
    const BATCHES: u64 = 30;
    let script = format!(
        "i=0; k=0; while [ $k -lt {BATCHES} ]; do \
           while [ ! -e /signal/$k ]; do sleep 0.02; done; k=$((k+1)); \
           j=0; while [ $j -lt {BATCH} ]; do j=$((j+1)); i=$((i+1)); echo line-$i; done; \
         done"
    );
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "paced",
            "--log-opt",
            "max-size=10k",
            "--log-opt",
            "max-file=3",
            "-v",
            &volume,
            "busybox",
            "sh",
            "-c",
            &script,
        ])
        .trim()
        .to_string();
    let mut followers = vec![LineFollower::spawn(&b, "paced")];
    for k in 0..BATCHES {
        if k == BATCHES / 3 {
            // One joins mid-stream: its backlog and what it follows must meet without a seam. It
            // reads the backlog before the next batch comes: a batch rotates twice, and a follower
            // still starting up could find the two oldest files rotated out before it read them.
            let mut late = LineFollower::spawn(&b, "paced");
            let read = poll_until(Duration::from_secs(60), || {
                late.last().is_some_and(|n| n >= k * BATCH).then_some(())
            });
            assert!(read.is_some(), "the late follower never read the backlog");
            followers.push(late);
        }
        std::fs::write(host.join(k.to_string()), "").unwrap();
        let want = (k + 1) * BATCH;
        let caught_up = poll_until(Duration::from_secs(60), || {
            followers
                .iter_mut()
                .all(|f| f.last().is_some_and(|n| n >= want))
                .then_some(())
        });
        assert!(
            caught_up.is_some(),
            "a follower never printed line {want}: {:?}",
            followers.iter_mut().map(|f| f.last()).collect::<Vec<_>>()
        );
    }
    let last = BATCH * BATCHES;
    let mut outputs = followers
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.finish(&format!("logs -f #{i}")));
    let early = outputs.next().unwrap();
    assert!(
        early == (1..=last).collect::<Vec<_>>(),
        "the first follower missed or repeated lines: {} lines, breaks at {:?}",
        early.len(),
        early
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .take(10)
            .collect::<Vec<_>>()
    );
    let late = outputs.next().unwrap();
    let first = *late.first().expect("the late follower printed nothing");
    assert!(first > 1, "rotation kept the whole log?");
    assert!(
        late == (first..=last).collect::<Vec<_>>(),
        "the late follower missed or repeated lines: breaks at {:?}",
        late.windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .take(10)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        inspect(&b, "{{.State.Status}} {{.State.ExitCode}}", &id),
        "exited 0"
    );
    b.ok(&["rm", "paced"]);
    assert_nothing_left(&b, &[id]);
}

// ---------------------------------------------------------------------------------------------------
// 4. ulimit
// ---------------------------------------------------------------------------------------------------

#[test]
fn ulimit_lowers_limits_and_refuses_bad_values() {
    let b = Berth::with_busybox();
    let out = b.ok(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=512:1024",
        "busybox",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn",
    ]);
    assert_eq!(out, "512\n1024\n");
    // One value sets both.
    let out = b.ok(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=256",
        "busybox",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn",
    ]);
    assert_eq!(out, "256\n256\n");

    // -1 is unlimited (Docker's meaning). Raising a hard limit needs CAP_SYS_RESOURCE, so this only
    // works where the host's own hard limit is already unlimited.
    let (_, core_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)
        .expect("getrlimit");
    if core_hard == nix::sys::resource::RLIM_INFINITY {
        let out = b.ok(&[
            "run",
            "--rm",
            "--ulimit",
            "core=-1",
            "busybox",
            "sh",
            "-c",
            "ulimit -c; ulimit -Hc",
        ]);
        assert_eq!(out, "unlimited\nunlimited\n");
    }
    // Raising the hard limit above ours: refused by the kernel without CAP_SYS_RESOURCE (this
    // machine's case), and then the failure is clean.
    let cap_sys_resource = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0);
    let (_, nofile_hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
    if !cap_sys_resource && nofile_hard < 1024 * 1024 {
        let raised = format!("nofile={}", nofile_hard + 1);
        let out = b.run(&["run", "--rm", "--ulimit", &raised, "busybox", "true"]);
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("Operation not permitted"),
            "{}",
            stderr(&out)
        );
    }

    for (bad, message) in [
        ("nofile=-5", "invalid ulimit argument"),
        (
            "core=-1:1024",
            "soft limit must be less than or equal to hard limit",
        ),
        ("nofile=abc", "invalid ulimit argument"),
        ("nofile", "invalid ulimit argument"),
        ("nofile=1:x", "invalid ulimit argument"),
        ("nosuchlimit=1:2", "invalid ulimit type"),
        (
            "nofile=1024:512",
            "soft limit must be less than or equal to hard limit",
        ),
    ] {
        let out = b.run(&["run", "--rm", "--ulimit", bad, "busybox", "true"]);
        assert_eq!(
            out.status.code(),
            Some(125),
            "--ulimit {bad}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(message),
            "--ulimit {bad}: {}",
            stderr(&out)
        );
    }
    assert_eq!(b.ok(&["ps", "-aq"]), "", "refused runs left containers");
    assert_nothing_left(&b, &[]);
}

// ---------------------------------------------------------------------------------------------------
// 5. wait, stop, kill
// ---------------------------------------------------------------------------------------------------

#[test]
fn concurrent_waiters_all_get_the_exit_code() {
    let b = Berth::with_busybox();
    let host = b.dir.path().join("signal");
    std::fs::create_dir_all(&host).unwrap();
    let volume = format!("{}:/signal", host.display());
    let script = "while [ ! -e /signal/go ]; do sleep 0.05; done; exit 42";
    let mut ids = Vec::new();
    for (name, rm) in [("waited", false), ("waited-rm", true)] {
        let _ = std::fs::remove_file(host.join("go"));
        let mut args = vec!["run", "-d", "--name", name, "-v", &volume];
        if rm {
            args.push("--rm");
        }
        args.extend(["busybox", "sh", "-c", script]);
        ids.push(b.ok(&args).trim().to_string());
        let waiters: Vec<Collecting> = (0..5)
            .map(|_| Collecting::spawn(b.cmd(&["wait", name])))
            .collect();
        // Every waiter is blocked on the monitor's lock while the container runs (none returned early).
        let pids: BTreeSet<String> = waiters.iter().map(|w| w.id().to_string()).collect();
        let settled = poll_until(Duration::from_secs(30), || {
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            let blocked = locks
                .lines()
                .filter(|l| l.contains("->"))
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|pid| pids.contains(*pid))
                .count();
            (blocked == pids.len()).then_some(())
        });
        assert!(
            settled.is_some(),
            "the waiters are not all blocked on the monitor's lock: {}",
            std::fs::read_to_string("/proc/locks").unwrap_or_default()
        );
        assert_eq!(inspect(&b, "{{.State.Running}}", name), "true");
        std::fs::write(host.join("go"), "").unwrap();
        // ... and each gets the code.
        for mut w in waiters {
            let out = w.wait(Duration::from_secs(60), "berth wait");
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            assert_eq!(stdout(&out), "42\n", "{name}: {}", stderr(&out));
        }
        if rm {
            let gone = poll_until(Duration::from_secs(10), || {
                b.ok(&["ps", "-aq"]).is_empty().then_some(())
            });
            assert!(gone.is_some(), "--rm left the container");
        } else {
            assert_eq!(inspect(&b, "{{.State.ExitCode}}", name), "42");
            assert_eq!(b.ok(&["wait", name]), "42\n", "a late waiter");
            b.ok(&["rm", name]);
        }
    }
    assert_nothing_left(&b, &ids);
}

#[test]
fn stop_of_a_trapping_container_records_its_own_exit_code() {
    let b = Berth::with_busybox();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "trapper",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    let ready = poll_until(Duration::from_secs(30), || {
        b.ok(&["logs", "trapper"]).contains("ready").then_some(())
    });
    assert!(ready.is_some(), "the trap was never installed");
    // A long timeout: stop must return when the container exits, not when the timeout runs out. The
    // bound below is a sanity limit far from both (the container exits within ~0.1 s).
    let started = Instant::now();
    b.ok(&["stop", "-t", "120", "trapper"]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stop waited for its timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        inspect(&b, "{{.State.Status}} {{.State.ExitCode}}", "trapper"),
        "exited 3"
    );
    assert_eq!(b.ok(&["wait", "trapper"]), "3\n");
    assert!(b.ok(&["logs", "trapper"]).contains("got-term"));
    b.ok(&["rm", "trapper"]);
    assert_nothing_left(&b, &[id]);
}

#[test]
fn kill_with_a_signal_reaches_the_containers_trap() {
    let b = Berth::with_busybox();
    let id = b
        .ok(&[
            "run",
            "-d",
            "--name",
            "listener",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    let ready = poll_until(Duration::from_secs(30), || {
        b.ok(&["logs", "listener"]).contains("ready").then_some(())
    });
    assert!(ready.is_some(), "the trap was never installed");
    b.ok(&["kill", "-s", "USR1", "listener"]);
    let got = poll_until(Duration::from_secs(30), || {
        b.ok(&["logs", "listener"])
            .contains("got-usr1")
            .then_some(())
    });
    assert!(got.is_some(), "USR1 never reached the trap");
    // The container survives a signal it handles.
    assert_eq!(inspect(&b, "{{.State.Running}}", "listener"), "true");
    b.ok(&["kill", "-s", "SIGUSR1", "listener"]);
    let twice = poll_until(Duration::from_secs(30), || {
        (b.ok(&["logs", "listener"]).matches("got-usr1").count() == 2).then_some(())
    });
    assert!(
        twice.is_some(),
        "SIGUSR1 (with prefix) never reached the trap"
    );
    b.ok(&["kill", "listener"]);
    assert_eq!(b.ok(&["wait", "listener"]), "137\n");
    b.ok(&["rm", "listener"]);
    assert_nothing_left(&b, &[id]);
}

#[test]
fn a_missing_monitor_binary_is_a_clear_error() {
    let b = Berth::with_busybox();
    // `berth` copied somewhere without its `berth-monitor`.
    let alone = b.dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), alone.join("berth")).unwrap();
    let out = Command::new(alone.join("berth"))
        .arg("--root")
        .arg(&b.root)
        .arg("--runroot")
        .arg(&b.runroot)
        .args(["run", "--rm", "--name", "lonely", "busybox", "true"])
        .env("BERTH_CONFIG", b.settings_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("berth-monitor not found: it is installed beside"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        b.ok(&["ps", "-aq", "--filter", "name=lonely"]),
        "",
        "--rm removes the container that could not start"
    );
}
