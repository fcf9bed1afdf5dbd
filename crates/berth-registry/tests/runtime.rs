//! The crate's promise to its callers: when an entry point returns, the process has no thread more than
//! before (Berth forks containers afterwards, and forking a multi-threaded process is unsafe).

use berth_registry::{CredentialStore, Credentials, RegistryError};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

#[test]
fn entry_points_leave_no_thread_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::at(dir.path().join("config.json"));
    let before = threads();
    // Nothing listens on port 1: the call starts the runtime, fails to connect, and shuts it down.
    let err = berth_registry::login(
        "127.0.0.1:1",
        &Credentials {
            username: "u".into(),
            password: "p".into(),
        },
        &store,
        &berth_registry::RegistryConfig::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unreachable { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(threads(), before, "the runtime's threads outlived the call");
    assert!(!dir.path().join("config.json").exists());
}
