//! The build cache: the image each build step produced, under the step's cache key. Keys are chained
//! (a step's key covers its parent's), so one lookup per step decides a hit. Entries are plain
//! untagged images, which keeps their layers alive for the garbage collector with no extra rules;
//! `images` hides them as Docker hides intermediate images, and `builder prune` removes them.

use std::collections::HashSet;

use rusqlite::OptionalExtension;

use crate::digest::Digest;
use crate::error::StoreError;
use crate::images::ImageRecord;
use crate::Store;

/// What [`Store::prune_build_cache`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildCachePrune {
    /// Cache entries deleted.
    pub entries: usize,
    /// Untagged images deleted with them.
    pub images: Vec<Digest>,
    /// Bytes freed on disk.
    pub reclaimed: u64,
}

impl Store {
    /// The image cached under `key`, if any (and still present); marks the entry used.
    pub fn build_cache_get(&self, key: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let id: Option<String> = self
            .db
            .query_row(
                "SELECT image_id FROM build_cache WHERE key = ?1",
                [key.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        self.db.execute(
            "UPDATE build_cache SET last_used = ?2 WHERE key = ?1",
            rusqlite::params![key.as_str(), chrono::Utc::now().timestamp()],
        )?;
        self.image_by_id(&Digest::parse(&id)?)
    }

    /// Records that the step with cache key `key` produced image `image`.
    pub fn build_cache_put(&self, key: &Digest, image: &Digest) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT OR REPLACE INTO build_cache (key, image_id, last_used) VALUES (?1, ?2, ?3)",
            rusqlite::params![key.as_str(), image.as_str(), chrono::Utc::now().timestamp()],
        )?;
        Ok(())
    }

    /// The images the build cache holds (shown by `images -a` only, unless tagged).
    pub fn build_cache_images(&self) -> Result<HashSet<Digest>, StoreError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT DISTINCT image_id FROM build_cache")?;
        let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = HashSet::new();
        for id in ids {
            out.insert(Digest::parse(&id?)?);
        }
        Ok(out)
    }

    /// `builder prune`: forgets every cache entry and deletes the images only the cache kept (not
    /// tagged, not used by a container), then their layers.
    pub fn prune_build_cache(&self) -> Result<BuildCachePrune, StoreError> {
        let cached = self.build_cache_images()?;
        let entries = self.db.execute("DELETE FROM build_cache", [])?;
        let mut images = Vec::new();
        for id in cached {
            let tx = self.write_transaction()?;
            let deleted = tx.execute(
                "DELETE FROM images WHERE id = ?1
                   AND NOT EXISTS (SELECT 1 FROM tags WHERE image_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM containers WHERE image_id = ?1)",
                [id.as_str()],
            )?;
            tx.commit()?;
            if deleted > 0 {
                images.push(id);
            }
        }
        let reclaimed = self.collect_garbage()?;
        Ok(BuildCachePrune {
            entries,
            images,
            reclaimed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RunConfig;

    /// An image with no layers, tagged `tags`.
    fn empty_image(store: &Store, tags: &[crate::Reference]) -> crate::ImageRecord {
        store
            .create_image(
                RunConfig::default(),
                Vec::new(),
                Vec::new(),
                None,
                None,
                tags,
            )
            .unwrap()
    }

    #[test]
    fn entries_follow_their_images_and_prune_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = empty_image(&store, &[]);
        let key = Digest::of(b"step");
        assert!(store.build_cache_get(&key).unwrap().is_none());
        store.build_cache_put(&key, &image.id).unwrap();
        assert_eq!(store.build_cache_get(&key).unwrap().unwrap().id, image.id);
        assert!(store.build_cache_images().unwrap().contains(&image.id));

        let pruned = store.prune_build_cache().unwrap();
        assert_eq!(pruned.entries, 1);
        assert_eq!(pruned.images, vec![image.id.clone()]);
        assert!(store.build_cache_get(&key).unwrap().is_none());
        assert!(store.image(image.id.as_str()).is_err());
    }

    #[test]
    fn a_tagged_cache_image_survives_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tag = crate::Reference::parse("app:1").unwrap();
        let image = empty_image(&store, &[tag]);
        store.build_cache_put(&Digest::of(b"k"), &image.id).unwrap();
        let pruned = store.prune_build_cache().unwrap();
        assert_eq!(pruned.entries, 1);
        assert!(pruned.images.is_empty());
        assert!(store.image("app:1").is_ok());
    }
}
