//! Berth's client for the OCI distribution protocol: `pull` and `push` between a registry and the store,
//! `login`/`logout` with Docker's credentials file.
//!
//! The protocol work is done by the `oci-client` crate, which is async (tokio). Berth's CLI must stay
//! single-threaded, because the container runtime forks and a process must never fork while other threads
//! run. So every entry point of this crate is synchronous: it starts a tokio runtime, does its work, and
//! shuts the runtime down — joining all of its threads — before it returns. Nothing async leaks out.

#![warn(missing_docs)]

mod client;
pub mod config;
pub mod credentials;
mod error;
mod login;
mod pull;
mod push;
mod remote;
mod tls;

use std::future::Future;

pub use berth_store::Platform;
pub use config::RegistryConfig;
pub use credentials::{CredentialStore, Credentials};
pub use error::RegistryError;
pub use login::{login, logout, normalise_server};
pub use pull::{
    pull, pull_all_tags, PullEvent, PullOptions, PulledImage, DEFAULT_CONCURRENT_DOWNLOADS,
};
pub use push::{push, PushEvent, PushOptions, PushedImage, DEFAULT_CONCURRENT_UPLOADS};
pub use remote::{download, inspect_manifest, search, RemoteManifest, SearchResult};
pub use tls::{certs_dir, CERTS_DIR, CERTS_DIR_ENV};

/// Worker threads of the runtime: network I/O and hashing of the blobs in flight, while the calling thread
/// unpacks layers.
const WORKER_THREADS: usize = 2;

/// Runs `future` to completion on a runtime of its own, then shuts that runtime down and waits for all of
/// its threads to exit, so the process is single-threaded again when this returns.
pub(crate) fn run<F: Future>(future: F) -> Result<F::Output, RegistryError> {
    // rustls needs one process-wide crypto provider; a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("berth-registry")
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    let output = runtime.block_on(future);
    // Dropping the runtime cancels what is left and joins every worker and blocking thread.
    drop(runtime);
    Ok(output)
}
