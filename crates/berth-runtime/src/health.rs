//! Healthchecks, run by the monitor: the image's HEALTHCHECK or `--health-*` probe is exec'd in the
//! container every interval; its exit code and output go into `State.Health` with Docker's rules
//! (`starting` until the first success, `unhealthy` after `retries` consecutive failures, failures during
//! the start period not counted, a probe over its timeout killed and counted as failed, the last five
//! results kept).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use berth_store::container::{ContainerRecord, Health, HealthLogEntry};
use berth_store::image::HealthConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::engine::Engine;

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u64 = 3;
/// Docker keeps this much of a probe's output, and this many results.
const MAX_OUTPUT: usize = 4096;
const MAX_LOG: usize = 5;

/// The probe of a container and its schedule.
pub(crate) struct Prober {
    command: Vec<String>,
    interval: Duration,
    start_interval: Duration,
    timeout: Duration,
    start_period: Duration,
    retries: u64,
    started: Instant,
    next_at: Instant,
    running: Option<Probe>,
}

/// One probe in flight.
struct Probe {
    pid: Pid,
    output: Option<File>,
    captured: Vec<u8>,
    start: String,
    deadline: Instant,
    exit: Option<i32>,
    timed_out: bool,
}

fn nanos(n: i64, default: Duration) -> Duration {
    if n > 0 {
        Duration::from_nanos(n as u64)
    } else {
        default
    }
}

/// A duration the way Go prints it in Docker's messages: `30s`, `1.5s`, `300ms`.
fn go_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The initial `State.Health` of a container that has a healthcheck.
pub(crate) fn initial_health(config: Option<&HealthConfig>) -> Option<Health> {
    probe_command(config?).map(|_| Health {
        status: "starting".into(),
        failing_streak: 0,
        log: Vec::new(),
    })
}

fn probe_command(config: &HealthConfig) -> Option<Vec<String>> {
    match config.test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
        }
        _ => None,
    }
}

impl Prober {
    /// A prober for a container whose config has a healthcheck (None for none or `NONE`).
    pub(crate) fn new(config: Option<&HealthConfig>) -> Option<Self> {
        let config = config?;
        let command = probe_command(config)?;
        let interval = nanos(config.interval, DEFAULT_INTERVAL);
        let start_interval = nanos(config.start_interval, interval);
        let now = Instant::now();
        Some(Self {
            command,
            interval,
            start_interval,
            timeout: nanos(config.timeout, DEFAULT_TIMEOUT),
            start_period: nanos(config.start_period, Duration::ZERO),
            retries: if config.retries > 0 {
                config.retries as u64
            } else {
                DEFAULT_RETRIES
            },
            started: now,
            next_at: now + start_interval.min(interval),
            running: None,
        })
    }

    fn in_start_period(&self) -> bool {
        self.started.elapsed() < self.start_period
    }

    /// When the monitor must call [`Prober::tick`] next.
    pub(crate) fn wake_at(&self) -> Instant {
        match &self.running {
            Some(p) if p.exit.is_none() => p.deadline,
            // Exited, output still draining: look again soon.
            Some(_) => Instant::now() + Duration::from_millis(20),
            None => self.next_at,
        }
    }

    /// The running probe's output, to poll.
    pub(crate) fn output_fd(&self) -> Option<BorrowedFd<'_>> {
        self.running
            .as_ref()
            .and_then(|p| p.output.as_ref())
            .map(|f| f.as_fd())
    }

    /// The running probe's PID (its exit is reaped by the monitor).
    pub(crate) fn pid(&self) -> Option<Pid> {
        self.running.as_ref().map(|p| p.pid)
    }

    /// Reads what the probe wrote.
    pub(crate) fn read_output(&mut self) {
        let Some(p) = &mut self.running else { return };
        let Some(out) = &mut p.output else { return };
        let mut buf = [0u8; 4096];
        match out.read(&mut buf) {
            Ok(n) if n > 0 => {
                let room = MAX_OUTPUT.saturating_sub(p.captured.len());
                p.captured.extend_from_slice(&buf[..n.min(room)]);
            }
            Ok(_) => p.output = None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => p.output = None,
        }
    }

    /// Records the probe's exit status (from the monitor's reaping).
    pub(crate) fn exited(&mut self, status: i32) {
        if let Some(p) = &mut self.running {
            p.exit = Some(status);
        }
    }

    /// Starts a probe when one is due, kills one over its timeout, and records a finished one.
    pub(crate) fn tick(&mut self, engine: &Engine, record: &ContainerRecord, container_pid: Pid) {
        let now = Instant::now();
        if let Some(p) = &mut self.running {
            if p.exit.is_none() && now >= p.deadline && !p.timed_out {
                let _ = kill(p.pid, Signal::SIGKILL);
                p.timed_out = true;
            }
            // Done once it exited and its output is drained (or a killed probe's children hold it).
            let drained = p.output.is_none() || p.timed_out;
            if p.exit.is_some() && drained {
                if let Some(done) = self.running.take() {
                    self.record(engine, record, done);
                }
                self.next_at = Instant::now()
                    + if self.in_start_period() {
                        self.start_interval
                    } else {
                        self.interval
                    };
            }
            return;
        }
        if now < self.next_at {
            return;
        }
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(_) => return,
        };
        let start = berth_store::now_rfc3339();
        match crate::exec::spawn_probe(
            engine,
            &record.id,
            container_pid,
            &self.command,
            OwnedFd::from(writer),
        ) {
            Ok(pid) => {
                self.running = Some(Probe {
                    pid,
                    output: Some(File::from(OwnedFd::from(reader))),
                    captured: Vec::new(),
                    start,
                    deadline: Instant::now() + self.timeout,
                    exit: None,
                    timed_out: false,
                });
            }
            Err(e) => {
                // The probe could not even start (e.g. command not found): a failed check.
                let probe = Probe {
                    pid: Pid::from_raw(0),
                    output: None,
                    captured: e.to_string().into_bytes(),
                    start,
                    deadline: now,
                    exit: Some(e.exit_code()),
                    timed_out: false,
                };
                self.record(engine, record, probe);
                self.next_at = Instant::now() + self.interval;
            }
        }
    }

    /// Stops a probe still running when the container stops.
    pub(crate) fn abort(&mut self) {
        if let Some(p) = self.running.take() {
            if p.exit.is_none() && p.pid.as_raw() > 0 {
                let _ = kill(p.pid, Signal::SIGKILL);
            }
        }
    }

    fn record(&self, engine: &Engine, record: &ContainerRecord, probe: Probe) {
        let (exit_code, output) = if probe.timed_out {
            (
                -1,
                format!(
                    "Health check exceeded timeout ({})",
                    go_duration(self.timeout)
                ),
            )
        } else {
            (
                probe.exit.unwrap_or(-1) as i64,
                String::from_utf8_lossy(&probe.captured).into_owned(),
            )
        };
        let counts = !self.in_start_period();
        let retries = self.retries;
        let entry = HealthLogEntry {
            start: probe.start,
            end: berth_store::now_rfc3339(),
            exit_code,
            output,
        };
        let mut changed_to = None;
        let _ = engine.store().update_container(&record.id, |r| {
            let health = r.state.health.get_or_insert_with(|| Health {
                status: "starting".into(),
                ..Health::default()
            });
            let before = health.status.clone();
            health.log.push(entry.clone());
            if health.log.len() > MAX_LOG {
                let extra = health.log.len() - MAX_LOG;
                health.log.drain(..extra);
            }
            if exit_code == 0 {
                health.failing_streak = 0;
                health.status = "healthy".into();
            } else if counts {
                health.failing_streak += 1;
                if health.failing_streak >= retries {
                    health.status = "unhealthy".into();
                }
            }
            if health.status != before {
                changed_to = Some(health.status.clone());
            }
            Ok::<(), ()>(())
        });
        // Docker's event for a change of health status.
        if let Some(status) = changed_to {
            engine.emit(&crate::events::Event::container(
                record,
                &format!("health_status: {status}"),
                &[],
            ));
        }
    }
}
