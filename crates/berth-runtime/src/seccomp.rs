//! Seccomp profiles: Berth's default (as data, in `default-seccomp.json`), `unconfined`, or a user file.
//!
//! The default profile denies with EPERM the syscalls Docker's default profile keeps from a container with
//! the default capabilities (kernel modules, kexec, reboot, clock setting, keyrings, bpf, perf, ptrace and
//! process_vm_*, mount/unshare/setns family …); a syscall is allowed again when the capability Docker ties it
//! to is added (`--cap-add SYS_ADMIN` re-allows mount, `SYS_PTRACE` ptrace, …), as Docker does.

use std::collections::BTreeMap;

use berth_store::container::ContainerRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::RuntimeError;

const DEFAULT_PROFILE: &str = include_str!("default-seccomp.json");

#[derive(Deserialize)]
struct DenyProfile {
    /// Capability that lifts a group ("" = never lifted) → syscalls.
    deny: BTreeMap<String, Vec<String>>,
}

/// The seccomp section of the OCI spec for a container, or None when unconfined or privileged.
pub fn profile_for(record: &ContainerRecord) -> Result<Option<Value>, RuntimeError> {
    let hc = &record.host_config;
    let mut custom = None;
    for opt in &hc.security_opt {
        if let Some(value) = opt
            .strip_prefix("seccomp=")
            .or_else(|| opt.strip_prefix("seccomp:"))
        {
            custom = Some(value.to_string());
        }
    }
    match custom.as_deref() {
        Some("unconfined") => return Ok(None),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                RuntimeError::InvalidOption(format!("opening seccomp profile ({path}) failed: {e}"))
            })?;
            return docker_profile_to_oci(&text).map(Some);
        }
        None if hc.privileged => return Ok(None),
        None => {}
    }
    let caps = crate::spec::capabilities(record)?;
    let profile: DenyProfile = serde_json::from_str(DEFAULT_PROFILE)
        .map_err(|e| RuntimeError::Io(format!("built-in seccomp profile: {e}")))?;
    let mut names: Vec<&str> = Vec::new();
    for (cap, syscalls) in &profile.deny {
        if cap.is_empty() || !caps.iter().any(|c| c == cap) {
            names.extend(syscalls.iter().map(String::as_str));
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(Some(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": native_architectures(),
        "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })))
}

/// The native architecture and its compat ABIs (a filter may only name those the kernel can run).
fn native_architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => vec![],
    }
}

/// Converts a Docker seccomp profile (`defaultAction`, `syscalls[].names/action/args`, optional `archMap`)
/// into the OCI form libcontainer reads.
fn docker_profile_to_oci(text: &str) -> Result<Value, RuntimeError> {
    let bad = |why: String| RuntimeError::InvalidOption(format!("invalid seccomp profile: {why}"));
    let profile: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let default_action = profile
        .get("defaultAction")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing defaultAction".into()))?;
    let mut architectures: Vec<Value> = profile
        .get("architectures")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(arch_map) = profile.get("archMap").and_then(Value::as_array) {
        for entry in arch_map {
            if let Some(a) = entry.get("architecture") {
                architectures.push(a.clone());
            }
            if let Some(subs) = entry.get("subArchitectures").and_then(Value::as_array) {
                architectures.extend(subs.iter().cloned());
            }
        }
    }
    let mut syscalls = Vec::new();
    for rule in profile
        .get("syscalls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let mut names: Vec<Value> = rule
            .get("names")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(name) = rule.get("name") {
            names.push(name.clone());
        }
        let action = rule
            .get("action")
            .cloned()
            .ok_or_else(|| bad("syscall rule without action".into()))?;
        let mut out = json!({"names": names, "action": action});
        if let Some(args) = rule.get("args").filter(|a| !a.is_null()) {
            out["args"] = args.clone();
        }
        if let Some(errno) = rule.get("errnoRet") {
            out["errnoRet"] = errno.clone();
        }
        syscalls.push(out);
    }
    let mut out = json!({"defaultAction": default_action, "syscalls": syscalls});
    if !architectures.is_empty() {
        out["architectures"] = Value::Array(architectures);
    }
    if let Some(errno) = profile.get("defaultErrnoRet") {
        out["defaultErrnoRet"] = errno.clone();
    }
    Ok(out)
}
