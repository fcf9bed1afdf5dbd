//! `update`: new resource limits and restart policy for a container (Docker's `docker update`),
//! recorded for its next start and applied to its cgroups at once while it runs.

use std::path::PathBuf;

use berth_store::container::ContainerRecord;
use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use serde_json::json;

use crate::engine::Engine;
use crate::error::RuntimeError;
use crate::options::{
    check_cpuset, check_memory_limits, parse_cpus, parse_memory, parse_memory_swap, parse_restart,
    ResourceOptions,
};

impl Engine {
    /// Changes a container's limits and restart policy: checked as `run` checks them, recorded, and
    /// written to its cgroups if it is running. A running container's monitor reads the restart
    /// policy from the record when the container exits, so a new one takes effect then.
    pub fn update(
        &self,
        name_or_id: &str,
        options: &ResourceOptions,
    ) -> Result<ContainerRecord, RuntimeError> {
        if options.is_empty() {
            return Err(RuntimeError::InvalidOption(
                "you must provide one or more flags when using this command".into(),
            ));
        }
        let record = self.container(name_or_id)?;
        let mut hc = record.host_config.clone();
        if let Some(memory) = options.memory.as_deref() {
            hc.memory = parse_memory(memory)?;
            if options.memory_swap.is_none() && hc.memory_swap > 0 && hc.memory > hc.memory_swap {
                return Err(RuntimeError::InvalidOption(
                    "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time".into(),
                ));
            }
        }
        if let Some(swap) = options.memory_swap.as_deref() {
            hc.memory_swap = parse_memory_swap(swap)?;
        }
        check_memory_limits(hc.memory, hc.memory_swap)?;
        if let Some(cpus) = options.cpus.as_deref() {
            hc.nano_cpus = parse_cpus(cpus)?;
        }
        if let Some(shares) = options.cpu_shares {
            hc.cpu_shares = shares;
        }
        if let Some(list) = options.cpuset_cpus.as_deref() {
            check_cpuset(list)?;
            hc.cpuset_cpus = list.to_string();
        }
        if let Some(limit) = options.pids_limit {
            hc.pids_limit = limit.max(0);
        }
        if let Some(policy) = options.restart.as_deref() {
            hc.restart_policy = parse_restart(Some(policy))?;
            if hc.auto_remove && hc.restart_policy.name != "no" {
                return Err(RuntimeError::InvalidOption(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container"
                        .into(),
                ));
            }
        }
        if record.state.running {
            apply_limits(&record.id, &hc, options)?;
        }
        self.store()
            .update_container(&record.id, |r| {
                r.host_config = hc.clone();
                Ok::<(), ()>(())
            })?
            .map_err(|_| RuntimeError::Io("update".into()))?;
        self.container(&record.id)
    }
}

/// Writes the limits to a running container's cgroups through libcontainer's cgroup manager.
fn apply_limits(
    id: &str,
    hc: &berth_store::container::HostConfig,
    options: &ResourceOptions,
) -> Result<(), RuntimeError> {
    let mut limits = crate::spec::limits(hc);
    // A pids limit lifted is written as "max"; `limits` leaves an unlimited one out.
    if options.pids_limit.is_some() && hc.pids_limit == 0 {
        limits["pids"] = json!({"limit": 0});
    }
    let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(limits)
        .map_err(|e| RuntimeError::Io(format!("container limits: {e}")))?;
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(crate::cgroup::cgroups_path(id)),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| RuntimeError::Io(format!("cgroups of {}: {e}", &id[..12])))?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| {
            RuntimeError::InvalidOption(format!("Cannot update container {}: {e}", &id[..12]))
        })
}
