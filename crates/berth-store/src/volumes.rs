//! Named and anonymous volumes: `volumes/<name>/_data`.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use crate::error::{IoContext, StoreError};
use crate::Store;

/// A volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRecord {
    /// Its name (64 hex characters for anonymous ones).
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Made by `-v /path` or an image VOLUME rather than by name.
    pub anonymous: bool,
    /// The directory containers see.
    pub mountpoint: PathBuf,
}

impl Store {
    /// The data directory of a volume.
    pub fn volume_path(&self, name: &str) -> PathBuf {
        self.root().join("volumes").join(name).join("_data")
    }

    /// Creates a volume, or returns the existing one of that name (as `docker volume create` does).
    /// The second value is true when it was created now (and so is still empty).
    pub fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<(VolumeRecord, bool), StoreError> {
        crate::containers::validate_name(name)
            .map_err(|_| StoreError::InvalidName(name.to_string()))?;
        let path = self.volume_path(name);
        let inserted = self.db_read().execute(
            "INSERT OR IGNORE INTO volumes (name, created, labels, anonymous) VALUES (?1, ?2, ?3, ?4)",
            params![name, crate::now_rfc3339(), serde_json::to_string(labels)?, anonymous],
        )? > 0;
        fs::create_dir_all(&path).ctx("create volume", &path)?;
        Ok((self.volume(name)?, inserted))
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Result<VolumeRecord, StoreError> {
        let row: Option<(String, String, bool)> = self
            .db_read()
            .query_row(
                "SELECT created, labels, anonymous FROM volumes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (created, labels, anonymous) =
            row.ok_or_else(|| StoreError::VolumeNotFound(name.to_string()))?;
        Ok(VolumeRecord {
            name: name.to_string(),
            created,
            labels: serde_json::from_str(&labels)?,
            anonymous,
            mountpoint: self.volume_path(name),
        })
    }

    /// All volumes, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        let mut stmt = self
            .db_read()
            .prepare("SELECT name FROM volumes ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names.iter().map(|n| self.volume(n)).collect()
    }

    /// Names of containers that mount a volume.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .containers()?
            .into_iter()
            .filter(|c| {
                c.mounts
                    .iter()
                    .any(|m| m.kind == "volume" && m.name == name)
            })
            .map(|c| c.id)
            .collect())
    }

    /// Removes a volume and its data; refused while a container uses it unless `force`... Docker refuses even
    /// with force for a volume in use, and so does Berth.
    pub fn remove_volume(&self, name: &str) -> Result<(), StoreError> {
        self.volume(name)?;
        if let Some(user) = self.volume_users(name)?.first() {
            return Err(StoreError::VolumeInUse {
                name: name.to_string(),
                container: user.clone(),
            });
        }
        self.db_read()
            .execute("DELETE FROM volumes WHERE name = ?1", [name])?;
        crate::snapshot::remove_tree(&self.root().join("volumes").join(name))
    }
}
