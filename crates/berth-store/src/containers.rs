//! Container records in the metadata database.

use rusqlite::{params, OptionalExtension};

use crate::container::ContainerRecord;
use crate::error::StoreError;
use crate::Store;

impl Store {
    /// Records a new container. Fails with [`StoreError::NameConflict`] when the name is taken, and with
    /// [`StoreError::ImageNotFound`] when its image was removed meanwhile.
    pub fn create_container(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        validate_name(&record.name)?;
        let tx = self.write_transaction()?;
        let holder: Option<String> = tx
            .query_row(
                "SELECT id FROM containers WHERE name = ?1",
                [&record.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = holder {
            return Err(StoreError::NameConflict {
                name: record.name.clone(),
                id,
            });
        }
        let image_exists: bool = tx
            .query_row(
                "SELECT 1 FROM images WHERE id = ?1",
                [record.image_id.as_str()],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !image_exists {
            return Err(StoreError::ImageNotFound(record.image_id.to_string()));
        }
        tx.execute(
            "INSERT INTO containers (id, name, image_id, created, record) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.id,
                record.name,
                record.image_id.as_str(),
                record.created,
                serde_json::to_string(record)?
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Finds a container by full ID, name (with or without a leading `/`) or unique ID prefix.
    pub fn container(&self, name_or_id: &str) -> Result<ContainerRecord, StoreError> {
        let key = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        let not_found = || StoreError::ContainerNotFound(name_or_id.to_string());
        if key.is_empty() {
            return Err(not_found());
        }
        let mut stmt = self
            .db_read()
            .prepare_cached("SELECT record FROM containers WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1")?;
        if let Some(json) = stmt
            .query_row([key], |r| r.get::<_, String>(0))
            .optional()?
        {
            return Ok(serde_json::from_str(&json)?);
        }
        if !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let mut stmt = self
            .db_read()
            .prepare_cached("SELECT record FROM containers WHERE id >= ?1 AND id < ?2 LIMIT 2")?;
        let hi = format!("{key}\u{7f}");
        let found: Vec<String> = stmt
            .query_map([key, &hi], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match found.as_slice() {
            [one] => Ok(serde_json::from_str(one)?),
            [] => Err(not_found()),
            _ => Err(StoreError::Ambiguous(name_or_id.to_string())),
        }
    }

    /// All containers, newest first.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let mut stmt = self
            .db_read()
            .prepare_cached("SELECT record FROM containers ORDER BY created DESC")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// Changes a container record atomically (read, `change`, write in one write transaction) and returns the
    /// new record. `change` may refuse by returning an error, which leaves the record as it was.
    pub fn update_container<E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerRecord) -> Result<(), E>,
    ) -> Result<Result<ContainerRecord, E>, StoreError> {
        let tx = self.write_transaction()?;
        let json: Option<String> = tx
            .query_row("SELECT record FROM containers WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(json) = json else {
            return Err(StoreError::ContainerNotFound(id.to_string()));
        };
        let mut record: ContainerRecord = serde_json::from_str(&json)?;
        if let Err(e) = change(&mut record) {
            return Ok(Err(e));
        }
        tx.execute(
            "UPDATE containers SET record = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(&record)?],
        )?;
        tx.commit()?;
        Ok(Ok(record))
    }

    /// Renames a container; the new name must be free.
    pub fn rename_container(&self, id: &str, new_name: &str) -> Result<(), StoreError> {
        validate_name(new_name)?;
        let tx = self.write_transaction()?;
        let holder: Option<String> = tx
            .query_row(
                "SELECT id FROM containers WHERE name = ?1",
                [new_name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(holder) = holder {
            return Err(StoreError::NameConflict {
                name: new_name.to_string(),
                id: holder,
            });
        }
        let json: String = tx
            .query_row("SELECT record FROM containers WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::ContainerNotFound(id.to_string()))?;
        let mut record: ContainerRecord = serde_json::from_str(&json)?;
        record.name = new_name.to_string();
        tx.execute(
            "UPDATE containers SET name = ?2, record = ?3 WHERE id = ?1",
            params![id, new_name, serde_json::to_string(&record)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a container record (its files are the caller's to remove first). Returns whether it existed.
    pub fn delete_container(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .db_read()
            .execute("DELETE FROM containers WHERE id = ?1", [id])?
            > 0)
    }

    pub(crate) fn db_read(&self) -> &rusqlite::Connection {
        &self.db
    }
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && bytes.len() <= 253;
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}
