//! Links both binaries as position-dependent executables. A PIE binary has every pointer in its
//! read-only data relocated at load: for `berth` about 28,000 relocations that copy ~450 KiB into
//! private memory on every command (a millisecond of each `run`), for `berth-monitor`, which runs
//! once per container, ~400 KiB of private memory each. Without PIE that data stays clean, shared
//! page cache, as the Go runtime's shims (containerd-shim) are built by default. Libraries, heap and
//! stack stay randomised.
fn main() {
    println!("cargo:rustc-link-arg-bin=berth-monitor=-no-pie");
    println!("cargo:rustc-link-arg-bin=berth=-no-pie");
}
