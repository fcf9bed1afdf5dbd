//! Resolving `-u name[:group]` against the container's own /etc/passwd and /etc/group, as Docker does.

use std::path::Path;

use crate::error::RuntimeError;

/// A resolved user: what the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups from /etc/group.
    pub additional_gids: Vec<u32>,
    /// Home directory from /etc/passwd (`/` when unknown).
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    let text = crate::rootfs::read_in_root(rootfs, Path::new("/etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn read_group(rootfs: &Path) -> Vec<GroupEntry> {
    let text = crate::rootfs::read_in_root(rootfs, Path::new("/etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves a Docker user spec (`""`, `name`, `uid`, `name:group`, `uid:gid`) in the rootfs.
/// Numeric IDs need no entry; names must exist, else the error Docker gives.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, RuntimeError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let passwd = read_passwd(rootfs);
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(passwd.iter().find(|p| p.name == user_part).ok_or_else(|| {
            RuntimeError::User(format!(
                "unable to find user {user_part}: no matching entries in passwd file"
            ))
        })?),
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or(0),
    };
    let groups = read_group(rootfs);
    let gid = match group_part {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    RuntimeError::User(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?,
        },
        _ => entry.map(|e| e.gid).unwrap_or(0),
    };
    let name = entry.map(|e| e.name.as_str());
    // The primary group comes first in the supplementary list too, as Docker (containerd) sets it:
    // `id` in the container shows it under groups=, and /proc/self/status under Groups.
    let mut additional_gids = vec![gid];
    if let (Some(name), None) = (name, group_part) {
        for member_of in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            if !additional_gids.contains(&member_of.gid) {
                additional_gids.push(member_of.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    })
}

/// Resolves `--group-add` entries (numbers, or names from the rootfs's /etc/group) to gids.
pub fn resolve_groups(rootfs: &Path, names: &[String]) -> Result<Vec<u32>, RuntimeError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let groups = read_group(rootfs);
    names
        .iter()
        .map(|name| match name.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => groups
                .iter()
                .find(|g| g.name == *name)
                .map(|g| g.gid)
                .ok_or_else(|| {
                    RuntimeError::User(format!(
                        "Unable to find group {name}: no matching entries in group file"
                    ))
                }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn resolves_names_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nextra:x:500:www\n",
        )
        .unwrap();
        let u = resolve_user(dir.path(), "www").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), u.home.as_str()),
            (33, 33, vec![33, 500], "/var/www")
        );
        let u = resolve_user(dir.path(), "1000:1000").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/"));
        assert_eq!(u.additional_gids, vec![1000]);
        let u = resolve_user(dir.path(), "www:extra").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (33, 500, vec![500]));
        assert_eq!(resolve_user(dir.path(), "").unwrap().home, "/root");
        assert!(resolve_user(dir.path(), "nobody").is_err());
        assert!(resolve_user(dir.path(), "www:nogroup").is_err());
    }
}
