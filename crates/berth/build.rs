//! Links `berth-monitor` as a position-dependent executable. One monitor runs per container; a PIE
//! binary has every pointer in its read-only data relocated at load, which turns ~400 KiB of it into
//! private memory in each monitor. Without PIE that data stays clean, shared page cache, as the Go
//! runtime's shims (containerd-shim) are built by default. Libraries, heap and stack stay randomised.
fn main() {
    println!("cargo:rustc-link-arg-bin=berth-monitor=-no-pie");
}
