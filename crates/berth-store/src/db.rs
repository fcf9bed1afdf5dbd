//! The metadata database (SQLite in WAL mode): transactions give crash safety, and many `berth` processes
//! share one store without corrupting it.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::error::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS layers (
    diff_id TEXT PRIMARY KEY,
    blob_digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    blob_size INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    config TEXT NOT NULL,
    size INTEGER NOT NULL,
    added INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image_id);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image_id TEXT NOT NULL,
    created TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_image ON containers(image_id);
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    labels TEXT NOT NULL,
    anonymous INTEGER NOT NULL
);
";

/// Version 2: the registry digests an image is known by (`docker.io/library/busybox@sha256:…`), Docker's
/// `RepoDigests`, recorded by pull and push; and the digest each tag was pulled or pushed as.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS repo_digests (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS repo_digests_image ON repo_digests(image_id);
ALTER TABLE tags ADD COLUMN digest TEXT;
";

/// Version 3: the build cache. Each row maps the cache key of a build step (its parent's key and
/// the step with everything it reads) to the image that step produced. The foreign key makes an
/// entry vanish with its image, so a removed image is a cache miss, never a dangling hit.
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    last_used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS build_cache_image ON build_cache(image_id);
";

/// Version 4: image sizes in Docker's meaning. Each layer records the size of its unpacked content
/// (what Docker's graphdriver reports, see [`crate::snapshot::content_size`]); until a layer of an
/// older store is next read it is NULL, and computed then. An image's size, the sum of its layers',
/// was the sum of the layer tars' sizes: -1 marks it for recomputing from the layers on next read.
const SCHEMA_V4: &str = "
ALTER TABLE layers ADD COLUMN unpacked_size INTEGER;
UPDATE images SET size = -1;
";

/// How long a statement waits for another process's lock on the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the database, creating the schema on first use.
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Many CLIs and monitors write at once; waiting is better than failing.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block writers; NORMAL sync is crash-safe for the database in WAL mode.
    // WAL is kept in the database file, so it is set by whichever opener of a fresh store comes
    // first. Setting it takes a lock SQLite does not wait for (SQLITE_BUSY at once): an opener that
    // finds it taken tries again.
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            done => break done?,
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Every berth command is a short-lived process. By default the last connection to close
    // checkpoints and deletes the WAL, and the next one re-creates it, syncing it and the directory:
    // about 2 ms of each `run`. So the WAL stays (a crash leaves it the same way) and is checkpointed
    // by commits every 100 pages instead; a first opener re-reads at most that much of it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.pragma_update(None, "wal_autocheckpoint", 100)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 4 {
        // Several processes may open a fresh store at once (`run`: the CLI and the monitor). The
        // version is read again under the write lock: the migration runs once, in one of them.
        let migration = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = migration.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < 1 {
            migration.execute_batch(SCHEMA)?;
        }
        if version < 2 {
            migration.execute_batch(SCHEMA_V2)?;
        }
        if version < 3 {
            migration.execute_batch(SCHEMA_V3)?;
        }
        if version < 4 {
            migration.execute_batch(SCHEMA_V4)?;
        }
        migration.pragma_update(None, "user_version", 4)?;
        migration.commit()?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("{SCHEMA} PRAGMA user_version = 1;"))
                .unwrap();
            conn.execute(
                "INSERT INTO images (id, manifest_digest, config, size, added) VALUES ('i', 'm', '{}', 0, 0)",
                [],
            )
            .unwrap();
            conn.execute("INSERT INTO tags (name, image_id) VALUES ('t', 'i')", [])
                .unwrap();
        }
        let conn = open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 4);
        let size: i64 = conn
            .query_row("SELECT size FROM images WHERE id = 'i'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(size, -1, "image sizes are recomputed in Docker's meaning");
        let digest: Option<String> = conn
            .query_row("SELECT digest FROM tags WHERE name = 't'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(digest, None);
        conn.execute(
            "INSERT INTO repo_digests (name, image_id) VALUES ('r@d', 'i')",
            [],
        )
        .unwrap();
        drop(conn);
        // Opening again changes nothing.
        assert!(open(&path).is_ok());
    }

    #[test]
    fn a_fresh_database_opened_by_many_at_once_is_migrated_once() {
        // `run` opens the store in the CLI and in the container's monitor at the same time.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("metadata.db");
            let opened: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || open(&path).map(drop))
                })
                .collect();
            for handle in opened {
                handle.join().unwrap().unwrap();
            }
        }
    }
}
