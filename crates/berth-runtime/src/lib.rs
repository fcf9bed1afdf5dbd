//! Berth's container runtime: container specs from image config and run options, the embedded runtime
//! (youki's libcontainer), the per-container monitor, json-file logs, cgroup readings.

pub mod attach;
pub mod cgroup;
pub mod engine;
pub mod error;
pub mod events;
pub mod exec;
pub mod filesystem;
mod health;
pub mod logs;
pub mod monitor;
mod names;
pub mod network;
pub mod options;
pub mod rootfs;
mod runroot;
mod seccomp;
pub mod session;
pub mod signal;
mod spawn;
pub mod spec;
pub mod update;
pub mod user;

pub use engine::{Engine, MonitorEvent, PendingRun, Started, StdioMode};
pub use error::RuntimeError;
pub use options::RunOptions;
