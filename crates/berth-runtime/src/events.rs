//! Docker's event stream (`docker events`): what happened to containers, images, volumes and
//! networks, in Docker's JSON shape.
//!
//! With no daemon to hold them, events are JSON lines appended to `<root>/events.log` by whichever
//! process made them happen (a CLI, a monitor). One `write` per event on a file opened with
//! `O_APPEND` keeps concurrent writers' lines whole. The file is rotated to `events.log.1` once it
//! passes [`ROTATE_AT`], so the store keeps between one and two files' worth of recent events (Docker
//! keeps the last 1000 in memory); a reader follows across the rotation.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_store::container::ContainerRecord;
use serde::{Deserialize, Serialize};

/// Size at which the event log is rotated.
const ROTATE_AT: u64 = 1 << 20;

/// The object an event is about, with the attributes Docker gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// Container ID, image ID or name, volume or network name/ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// `name`, `image`, `exitCode`, `signal`, … as Docker sets them.
    #[serde(rename = "Attributes", default)]
    pub attributes: BTreeMap<String, String>,
}

/// One event, Docker's JSON (`docker events --format '{{json .}}'`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The action again, for old clients (containers and images only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// The object's ID (containers and images only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The container's image (containers only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// `container`, `image`, `volume` or `network`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `start`, `die`, `destroy`, `tag`, …
    #[serde(rename = "Action")]
    pub action: String,
    /// The object.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `local`.
    pub scope: String,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

impl Event {
    /// An event of `kind` about `id` with `attributes`, stamped now.
    pub fn new(kind: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) -> Self {
        let now = chrono::Utc::now();
        let time_nano = now.timestamp_nanos_opt().unwrap_or_default();
        let legacy = matches!(kind, "container" | "image");
        Self {
            status: if legacy {
                action.to_string()
            } else {
                String::new()
            },
            id: if legacy {
                id.to_string()
            } else {
                String::new()
            },
            from: String::new(),
            kind: kind.to_string(),
            action: action.to_string(),
            actor: Actor {
                id: id.to_string(),
                attributes,
            },
            scope: "local".to_string(),
            time: time_nano / 1_000_000_000,
            time_nano,
        }
    }

    /// A container event: Docker's attributes are the container's labels, its image and name, and
    /// any `extra` (`exitCode`, `signal`).
    pub fn container(record: &ContainerRecord, action: &str, extra: &[(&str, String)]) -> Self {
        let mut attributes = record.config.labels.clone();
        attributes.insert("image".into(), record.config.image.clone());
        attributes.insert("name".into(), record.name.clone());
        for (key, value) in extra {
            attributes.insert(key.to_string(), value.clone());
        }
        let mut event = Self::new("container", action, &record.id, attributes);
        event.from = record.config.image.clone();
        event
    }

    /// An image event (`tag`, `untag`, `delete`, `import`, `load`, `save`, `pull`, `push`): Docker's
    /// actor is the image ID, its one attribute the name the action was about.
    pub fn image(action: &str, image_id: &str, name: &str) -> Self {
        Self::new(
            "image",
            action,
            image_id,
            BTreeMap::from([("name".to_string(), name.to_string())]),
        )
    }

    /// A volume event (`create`, `mount`, `unmount`, `destroy`) of the local driver.
    pub fn volume(action: &str, name: &str) -> Self {
        Self::new(
            "volume",
            action,
            name,
            BTreeMap::from([("driver".to_string(), "local".to_string())]),
        )
    }

    /// A network event (`create`, `connect`, `disconnect`, `destroy`); `container` for connects.
    pub fn network(action: &str, id: &str, name: &str, container: Option<&str>) -> Self {
        let mut attributes = BTreeMap::from([
            ("name".to_string(), name.to_string()),
            ("type".to_string(), "bridge".to_string()),
        ]);
        if let Some(container) = container {
            attributes.insert("container".to_string(), container.to_string());
        }
        Self::new("network", action, id, attributes)
    }

    /// Docker's one-line form: `2026-12-05T21:00:00.123456789Z container start <id> (image=…, name=…)`.
    pub fn line(&self) -> String {
        let time = chrono::DateTime::from_timestamp_nanos(self.time_nano)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let attributes: Vec<String> = self
            .actor
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut line = format!("{time} {} {} {}", self.kind, self.action, self.actor.id);
        if !attributes.is_empty() {
            line.push_str(&format!(" ({})", attributes.join(", ")));
        }
        line
    }
}

/// The event log of the store at `root`.
pub fn log_path(root: &Path) -> PathBuf {
    root.join("events.log")
}

/// Appends an event to the store's log. Losing an event is better than failing what it reports,
/// so errors are only logged.
pub fn record(root: &Path, event: &Event) {
    if let Err(e) = append(root, event) {
        tracing::debug!("event not recorded: {e}");
    }
}

fn append(root: &Path, event: &Event) -> io::Result<()> {
    let path = log_path(root);
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    file.write_all(&line)?;
    if file.metadata()?.len() >= ROTATE_AT {
        // Writers still holding the old file finish their line there; readers read both.
        fs::rename(&path, root.join("events.log.1"))?;
    }
    Ok(())
}

/// Reads the store's events, oldest first: the rotated file, then the current one. Lines that are
/// not events (a torn last line) are skipped.
pub fn read_all(root: &Path) -> Vec<Event> {
    let mut events = Vec::new();
    for path in [root.join("events.log.1"), log_path(root)] {
        if let Ok(file) = File::open(&path) {
            events.extend(
                BufReader::new(file)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| serde_json::from_str(&l).ok()),
            );
        }
    }
    events
}

/// Follows the store's event log from its current end: [`Follower::poll`] returns what was added
/// since, across rotations.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    partial: String,
}

impl Follower {
    /// Starts at the current end of the log (or its beginning, once it exists).
    pub fn new(root: &Path) -> Self {
        let path = log_path(root);
        let mut follower = Self {
            path,
            file: None,
            inode: 0,
            offset: 0,
            partial: String::new(),
        };
        if let Ok(meta) = fs::metadata(&follower.path) {
            follower.inode = meta.ino();
            follower.offset = meta.len();
            follower.file = File::open(&follower.path).ok();
        }
        follower
    }

    /// The events appended since the last call.
    pub fn poll(&mut self) -> Vec<Event> {
        let mut events = self.read_new();
        // Rotated: what the old file got before the rename is read above; go on with the new file.
        if let Ok(meta) = fs::metadata(&self.path) {
            if meta.ino() != self.inode {
                self.inode = meta.ino();
                self.offset = 0;
                self.partial.clear();
                self.file = File::open(&self.path).ok();
                events.extend(self.read_new());
            }
        }
        events
    }

    fn read_new(&mut self) -> Vec<Event> {
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let read = io::Read::read_to_string(file, &mut text).unwrap_or(0);
        self.offset += read as u64;
        self.partial.push_str(&text);
        let mut events = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            if let Ok(event) = serde_json::from_str(line.trim_end()) {
                events.push(event);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_appended_read_back_and_followed_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut follower = Follower::new(root);
        let event = |n: usize| {
            Event::new(
                "volume",
                "create",
                &format!("v{n}"),
                BTreeMap::from([("driver".to_string(), "local".to_string())]),
            )
        };
        record(root, &event(0));
        let seen = follower.poll();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].actor.id, "v0");
        assert!(
            seen[0].id.is_empty() && seen[0].status.is_empty(),
            "volumes have no legacy fields"
        );
        // Past the rotation size: the follower sees every event once, in order.
        let line_size = serde_json::to_vec(&event(1)).unwrap().len() as u64 + 1;
        let count = (ROTATE_AT / line_size + 10) as usize;
        let mut followed = Vec::new();
        for n in 1..=count {
            record(root, &event(n));
            if n % 1000 == 0 {
                followed.extend(follower.poll());
            }
        }
        followed.extend(follower.poll());
        let ids: Vec<String> = followed.iter().map(|e| e.actor.id.clone()).collect();
        let want: Vec<String> = (1..=count).map(|n| format!("v{n}")).collect();
        assert_eq!(ids, want);
        assert!(root.join("events.log.1").exists());
        let all = read_all(root);
        assert_eq!(
            all.last().map(|e| e.actor.id.clone()),
            Some(format!("v{count}"))
        );
        assert!(event(1).line().contains(" volume create v1 (driver=local)"));
    }
}
