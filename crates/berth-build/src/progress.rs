//! Build progress, as BuildKit shows it.
//!
//! - `plain` prints numbered vertices (`#3 [2/4] RUN …`), the output of RUN steps with the time since
//!   the step started, `CACHED`, `DONE 0.4s`, `ERROR`.
//! - `tty` redraws a live view on the terminal: a `[+] Building 2.3s (3/5)` header, one line per
//!   step with its time, and the last lines of the running step's output under it.
//! - `quiet` (`-q`) prints nothing.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain lines on stderr.
    Plain,
    /// A live view redrawn in place on stderr (a terminal).
    Tty,
    /// Nothing (`-q`).
    Quiet,
}

/// Output lines of the running step the live view keeps (BuildKit shows six).
const TAIL_LINES: usize = 6;
/// The live view is redrawn at most this often for output lines (always for step changes).
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// The progress writer of one build. Stages built in parallel share it: each call writes whole
/// lines, and the live view is behind a lock.
pub struct Progress {
    mode: Mode,
    next: AtomicUsize,
    started: Instant,
    view: Mutex<LiveView>,
}

/// One reported step.
pub struct Vertex {
    number: usize,
    started: Instant,
}

/// A step as the live view shows it.
struct Step {
    name: String,
    state: StepState,
    tail: Vec<String>,
}

#[derive(Clone, Copy)]
enum StepState {
    Running(Instant),
    Cached,
    Done(f64),
    Failed(f64),
}

/// What the live view has drawn, so that the next frame can replace it.
#[derive(Default)]
struct LiveView {
    steps: Vec<Step>,
    drawn_lines: usize,
    drawn_at: Option<Instant>,
}

impl Progress {
    /// A writer in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            next: AtomicUsize::new(1),
            started: Instant::now(),
            view: Mutex::new(LiveView::default()),
        }
    }

    fn line(&self, text: std::fmt::Arguments<'_>) {
        if self.mode == Mode::Plain {
            let mut err = std::io::stderr().lock();
            let _ = err.write_fmt(text);
            let _ = err.write_all(b"\n");
        }
    }

    /// Changes the live view's step `number` and redraws (`force`) or redraws when due.
    fn update(&self, number: usize, force: bool, change: impl FnOnce(&mut Step)) {
        if self.mode != Mode::Tty {
            return;
        }
        let mut view = self.view();
        if let Some(step) = view.steps.get_mut(number - 1) {
            change(step);
        }
        let due = view.drawn_at.is_none_or(|at| at.elapsed() >= REDRAW_EVERY);
        if force || due {
            self.draw(&mut view, false);
        }
    }

    /// Replaces the previous frame with the current state. `last` leaves out the output tails.
    fn draw(&self, view: &mut LiveView, last: bool) {
        let width = terminal_width();
        let elapsed = self.started.elapsed().as_secs_f64();
        let finished = view
            .steps
            .iter()
            .filter(|s| !matches!(s.state, StepState::Running(_)))
            .count();
        let mut frame = Vec::new();
        frame.push(format!(
            "[+] Building {elapsed:.1}s ({finished}/{}){}",
            view.steps.len(),
            if last { " FINISHED" } else { "" }
        ));
        for step in &view.steps {
            let (prefix, time) = match step.state {
                StepState::Running(at) => ("", at.elapsed().as_secs_f64()),
                StepState::Cached => ("CACHED ", 0.0),
                StepState::Done(t) => ("", t),
                StepState::Failed(t) => ("ERROR ", t),
            };
            let time = format!("{time:.1}s");
            let text = format!(" => {prefix}{}", step.name);
            frame.push(fit(&text, &time, width));
            if !last && matches!(step.state, StepState::Running(_)) {
                for l in &step.tail {
                    frame.push(fit(&format!(" => => # {l}"), "", width));
                }
            }
        }
        let mut out = Vec::new();
        if view.drawn_lines > 0 {
            // Up to the first line of the previous frame, then clear everything below.
            let _ = write!(out, "\x1b[{}F\x1b[J", view.drawn_lines);
        }
        for line in &frame {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&out);
        let _ = err.flush();
        view.drawn_lines = frame.len();
        view.drawn_at = Some(Instant::now());
    }

    /// The live view, even if a thread panicked while drawing it (it is only text).
    fn view(&self) -> MutexGuard<'_, LiveView> {
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a step named `name`.
    pub fn start(&self, name: &str) -> Vertex {
        let started = Instant::now();
        let number = if self.mode == Mode::Tty {
            // Numbered under the lock, so that step `n` is the view's `n`th line.
            let mut view = self.view();
            let number = self.next.fetch_add(1, Ordering::Relaxed);
            view.steps.push(Step {
                name: name.to_string(),
                state: StepState::Running(started),
                tail: Vec::new(),
            });
            drop(view);
            self.update(number, true, |_| {});
            number
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        self.line(format_args!("#{number} {name}"));
        Vertex { number, started }
    }

    /// A line of a step's output.
    pub fn output(&self, vertex: &Vertex, text: &str) {
        let t = vertex.started.elapsed().as_secs_f64();
        self.line(format_args!("#{} {t:.3} {text}", vertex.number));
        self.update(vertex.number, false, |step| {
            step.tail.push(text.trim_end().to_string());
            if step.tail.len() > TAIL_LINES {
                step.tail.remove(0);
            }
        });
    }

    /// The step was a cache hit.
    pub fn cached(&self, vertex: Vertex) {
        self.line(format_args!("#{} CACHED", vertex.number));
        self.line(format_args!(""));
        self.update(vertex.number, true, |step| step.state = StepState::Cached);
    }

    /// The step finished.
    pub fn done(&self, vertex: Vertex) {
        let t = vertex.started.elapsed().as_secs_f64();
        self.line(format_args!("#{} DONE {t:.1}s", vertex.number));
        self.line(format_args!(""));
        self.update(vertex.number, true, |step| step.state = StepState::Done(t));
    }

    /// The step was stopped because another one failed.
    pub fn canceled(&self, vertex: Vertex) {
        let t = vertex.started.elapsed().as_secs_f64();
        self.line(format_args!("#{} CANCELED", vertex.number));
        self.update(vertex.number, true, |step| {
            step.state = StepState::Failed(t)
        });
    }

    /// The step failed.
    pub fn failed(&self, vertex: Vertex, message: &str) {
        let t = vertex.started.elapsed().as_secs_f64();
        self.line(format_args!("#{} ERROR: {message}", vertex.number));
        self.update(vertex.number, true, |step| {
            step.state = StepState::Failed(t);
            step.tail.push(format!("ERROR: {message}"));
        });
    }

    /// Draws the live view's last frame (`FINISHED`, no output tails); nothing in other modes.
    pub fn finish(&self) {
        if self.mode == Mode::Tty {
            let mut view = self.view();
            self.draw(&mut view, true);
        }
    }

    /// Seconds since the build started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// `text` and `right` on one line of `width` columns: `text` is cut to fit, `right` right-aligned.
fn fit(text: &str, right: &str, width: usize) -> String {
    let room = width.saturating_sub(right.chars().count() + 1).max(10);
    let mut left: String = text.chars().take(room).collect();
    if right.is_empty() {
        return left;
    }
    let pad = room.saturating_sub(left.chars().count());
    left.extend(std::iter::repeat_n(' ', pad));
    format!("{left} {right}")
}

/// The terminal's width on stderr (80 when it is not a terminal).
fn terminal_width() -> usize {
    berth_runtime::session::window_size(2)
        .map(|ws| ws.ws_col as usize)
        .filter(|&cols| cols > 0)
        .unwrap_or(80)
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn fit_cuts_and_aligns() {
        let line = fit(" => [1/2] FROM busybox", "0.1s", 30);
        assert_eq!(line, " => [1/2] FROM busybox    0.1s");
        assert_eq!(line.chars().count(), 30);
        assert_eq!(
            fit(" => RUN a very long command line", "1.0s", 20),
            " => RUN a very  1.0s"
        );
        assert_eq!(fit("abc", "", 80), "abc");
    }
}
