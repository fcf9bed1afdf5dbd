//! Build progress as BuildKit's `--progress=plain` prints it: numbered vertices (`#3 [2/4] RUN …`),
//! the output of RUN steps with the time since the step started, `CACHED`, `DONE 0.4s`, `ERROR`.
//! `-q` prints nothing.

use std::io::Write;
use std::time::Instant;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain lines on stderr.
    Plain,
    /// Nothing (`-q`).
    Quiet,
}

/// The progress writer of one build.
pub struct Progress {
    mode: Mode,
    next: usize,
    started: Instant,
}

/// One reported step.
pub struct Vertex {
    number: usize,
    started: Instant,
}

impl Progress {
    /// A writer in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            next: 1,
            started: Instant::now(),
        }
    }

    fn line(&self, text: std::fmt::Arguments<'_>) {
        if self.mode == Mode::Plain {
            let mut err = std::io::stderr().lock();
            let _ = err.write_fmt(text);
            let _ = err.write_all(b"\n");
        }
    }

    /// Starts a step named `name`.
    pub fn start(&mut self, name: &str) -> Vertex {
        let number = self.next;
        self.next += 1;
        self.line(format_args!("#{number} {name}"));
        Vertex {
            number,
            started: Instant::now(),
        }
    }

    /// A line of a step's output.
    pub fn output(&self, vertex: &Vertex, text: &str) {
        let t = vertex.started.elapsed().as_secs_f64();
        self.line(format_args!("#{} {t:.3} {text}", vertex.number));
    }

    /// The step was a cache hit.
    pub fn cached(&self, vertex: Vertex) {
        self.line(format_args!("#{} CACHED", vertex.number));
        self.line(format_args!(""));
    }

    /// The step finished.
    pub fn done(&self, vertex: Vertex) {
        let t = vertex.started.elapsed().as_secs_f64();
        self.line(format_args!("#{} DONE {t:.1}s", vertex.number));
        self.line(format_args!(""));
    }

    /// The step failed.
    pub fn failed(&self, vertex: Vertex, message: &str) {
        self.line(format_args!("#{} ERROR: {message}", vertex.number));
    }

    /// Seconds since the build started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
