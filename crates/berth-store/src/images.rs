//! Image records, tags, layers and their garbage collection.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use crate::digest::{Digest, DigestReader};
use crate::error::{IoContext, StoreError};
use crate::image::{ImageConfig, Manifest};
use crate::reference::Reference;
use crate::Store;

/// A layer known to the store: its blob and its unpacked snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRecord {
    /// Digest of the uncompressed tar (the snapshot key).
    pub diff_id: Digest,
    /// Digest of the blob as stored (compressed or not).
    pub blob_digest: Digest,
    /// Media type of the blob.
    pub media_type: String,
    /// Size of the blob in bytes.
    pub blob_size: u64,
    /// Size of the uncompressed tar in bytes.
    pub size: u64,
    /// Size of the unpacked content as Docker counts it ([`crate::snapshot::content_size`]): what
    /// `history` shows for the layer and what removing it frees.
    pub unpacked_size: u64,
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// The config digest, Docker's image ID.
    pub id: Digest,
    /// The manifest blob.
    pub manifest_digest: Digest,
    /// The parsed config.
    pub config: ImageConfig,
    /// Full references tagging it (`docker.io/library/busybox:latest`), sorted.
    pub tags: Vec<String>,
    /// Registry digests it is known by (`docker.io/library/busybox@sha256:…`), sorted: Docker's
    /// `RepoDigests`, recorded when the image is pulled or pushed.
    pub repo_digests: Vec<String>,
    /// Docker's image size: the sum of the layers' unpacked sizes ([`LayerRecord::unpacked_size`]).
    pub size: u64,
    /// Unix time the image entered this store.
    pub added: i64,
}

impl ImageRecord {
    /// The config's creation time, or the time it was added.
    pub fn created(&self) -> chrono::DateTime<chrono::Utc> {
        self.config
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|d| d.with_timezone(&chrono::Utc))
            .or_else(|| chrono::DateTime::from_timestamp(self.added, 0))
            .unwrap_or_default()
    }
}

/// What an image is made of, for [`Store::add_image`]; the blobs must already be in the store.
pub struct NewImage {
    /// The manifest blob.
    pub manifest_digest: Digest,
    /// The config blob.
    pub config_digest: Digest,
    /// The layers, bottom first, already created with [`Store::add_layer`].
    pub layers: Vec<LayerRecord>,
}

/// What removing an image did: the lines `rmi` prints, and the space freed.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRemoval {
    /// The image the name resolved to.
    pub image: Digest,
    /// What was untagged and deleted, in Docker's order.
    pub actions: Vec<RemovedImage>,
    /// The unpacked sizes of the layers that went with the image (those no other image or container
    /// uses): what Docker counts as reclaimed.
    pub reclaimed: u64,
}

/// What `rmi` did, line by line as Docker prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum RemovedImage {
    /// A tag was removed.
    Untagged(String),
    /// An image was deleted.
    Deleted(Digest),
}

impl Store {
    /// Stores a layer from a blob already in the blob store: verifies the uncompressed digest against
    /// `expected_diff_id` (when given) and unpacks it once into its snapshot. Safe against concurrent callers.
    pub fn add_layer(
        &self,
        blob_digest: &Digest,
        media_type: &str,
        expected_diff_id: Option<&Digest>,
    ) -> Result<LayerRecord, StoreError> {
        let _lock = self.lock(false)?;
        if let Some(diff_id) = expected_diff_id {
            if let Some(existing) = self.unpacked_layer(diff_id)? {
                return Ok(existing);
            }
        }
        let blob = self.blobs.open_blob(blob_digest)?;
        let blob_size = blob.metadata().map(|m| m.len()).unwrap_or(0);
        let (_, stream) = berth_archive::decompress(io::BufReader::with_capacity(1 << 20, blob))?;
        let mut hashed = DigestReader::new(stream);
        let staging = self.snapshots.staging_dir()?;
        let result = (|| {
            let options = berth_archive::UnpackOptions {
                whiteouts: berth_archive::WhiteoutMode::Overlay,
                allow_devices: false,
                owner: None,
            };
            berth_archive::unpack_layer(&mut hashed, &staging.join("diff"), &options)?;
            // The tar reader stops at the end-of-archive marker; hash any padding after it too.
            io::copy(&mut hashed, &mut io::sink()).map_err(|source| StoreError::Io {
                op: "read layer",
                path: self.blobs.path(blob_digest),
                source,
            })?;
            Ok::<_, StoreError>(())
        })();
        if let Err(e) = result {
            let _ = crate::snapshot::remove_tree(&staging);
            return Err(e);
        }
        let (diff_id, size) = hashed.finish();
        if let Some(expected) = expected_diff_id {
            if expected != &diff_id {
                let _ = crate::snapshot::remove_tree(&staging);
                return Err(StoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: diff_id.to_string(),
                });
            }
        }
        let unpacked_size = match crate::snapshot::content_size(&staging.join("diff")) {
            Ok(n) => n,
            Err(e) => {
                let _ = crate::snapshot::remove_tree(&staging);
                return Err(e);
            }
        };
        self.snapshots.commit_layer(&staging, &diff_id)?;
        self.record_layer(LayerRecord {
            diff_id,
            blob_digest: blob_digest.clone(),
            media_type: media_type.to_string(),
            blob_size,
            size,
            unpacked_size,
        })
    }

    /// The layer `diff_id` when it is both recorded and unpacked.
    fn unpacked_layer(&self, diff_id: &Digest) -> Result<Option<LayerRecord>, StoreError> {
        Ok(self
            .layer(diff_id)?
            .filter(|_| self.snapshots.has_layer(diff_id)))
    }

    /// Records a layer whose snapshot is published (a concurrent caller may have recorded it first).
    fn record_layer(&self, record: LayerRecord) -> Result<LayerRecord, StoreError> {
        self.db.execute(
            "INSERT OR IGNORE INTO layers (diff_id, blob_digest, media_type, blob_size, size, unpacked_size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                record.diff_id.as_str(),
                record.blob_digest.as_str(),
                record.media_type,
                record.blob_size as i64,
                record.size as i64,
                record.unpacked_size as i64
            ],
        )?;
        Ok(record)
    }

    /// Records the layer whose uncompressed tar is blob `blob_digest` and whose unpacked content is
    /// already the directory `dir` (an overlay upper dir the blob was written from): `dir` is moved
    /// into the layer store instead of unpacking the blob again, thousands of file creations saved.
    /// overlayfs's own bookkeeping xattrs (`trusted.overlay.origin`, `.impure`…, which point into
    /// the snapshot's lower dirs) are removed first; `opaque` stays, as unpacking would set it. When
    /// the layer exists already, `dir` is left to the caller.
    pub fn adopt_layer_dir(
        &self,
        dir: &Path,
        blob_digest: &Digest,
        media_type: &str,
    ) -> Result<LayerRecord, StoreError> {
        let _lock = self.lock(false)?;
        // An uncompressed layer: its diff ID is the blob's digest.
        let diff_id = blob_digest.clone();
        if let Some(existing) = self.unpacked_layer(&diff_id)? {
            return Ok(existing);
        }
        let blob_size = self
            .blobs
            .open_blob(blob_digest)?
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        berth_archive::remove_overlay_bookkeeping(dir).map_err(|source| StoreError::Io {
            op: "clean overlay xattrs in",
            path: dir.to_path_buf(),
            source,
        })?;
        let unpacked_size = crate::snapshot::content_size(dir)?;
        let staging = self.snapshots.staging_dir()?;
        let published = fs::remove_dir(staging.join("diff"))
            .and_then(|()| fs::rename(dir, staging.join("diff")))
            .ctx("adopt layer", dir)
            .and_then(|()| self.snapshots.commit_layer(&staging, &diff_id));
        if let Err(e) = published {
            let _ = crate::snapshot::remove_tree(&staging);
            return Err(e);
        }
        self.record_layer(LayerRecord {
            diff_id,
            blob_digest: blob_digest.clone(),
            media_type: media_type.to_string(),
            blob_size,
            size: blob_size,
            unpacked_size,
        })
    }

    /// Stores a layer from a tar stream (any compression): the blob is written as given and unpacked.
    pub fn add_layer_from_reader(
        &self,
        reader: impl Read,
        media_type: &str,
    ) -> Result<LayerRecord, StoreError> {
        let (blob_digest, _) = self.blobs.put(reader, None)?;
        self.add_layer(&blob_digest, media_type, None)
    }

    /// A layer by its uncompressed digest.
    pub fn layer(&self, diff_id: &Digest) -> Result<Option<LayerRecord>, StoreError> {
        let row = self
            .db
            .prepare_cached(
                "SELECT blob_digest, media_type, blob_size, size, unpacked_size FROM layers WHERE diff_id = ?1",
            )?
            .query_row([diff_id.as_str()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()?;
        let Some((blob, media_type, blob_size, size, unpacked_size)) = row else {
            return Ok(None);
        };
        let unpacked_size = match unpacked_size {
            Some(n) => n as u64,
            None => self.measure_layer(diff_id, size as u64)?,
        };
        Ok(Some(LayerRecord {
            diff_id: diff_id.clone(),
            blob_digest: Digest::parse(&blob)?,
            media_type,
            blob_size: blob_size as u64,
            size: size as u64,
            unpacked_size,
        }))
    }

    /// The unpacked size of a layer recorded before sizes were (a store older than schema 4),
    /// measured on its snapshot and recorded. A snapshot that cannot be measured (missing) gives the
    /// tar's size, not recorded, rather than failing every command that lists the image.
    fn measure_layer(&self, diff_id: &Digest, tar_size: u64) -> Result<u64, StoreError> {
        match crate::snapshot::content_size(&self.snapshots.layer_dir(diff_id)) {
            Ok(n) => {
                self.db.execute(
                    "UPDATE layers SET unpacked_size = ?1 WHERE diff_id = ?2",
                    params![n as i64, diff_id.as_str()],
                )?;
                Ok(n)
            }
            Err(_) => Ok(tar_size),
        }
    }

    /// Docker's size of an image made of `diff_ids`: the sum of its layers' unpacked sizes.
    fn layers_size(&self, diff_ids: &[Digest]) -> Result<u64, StoreError> {
        let mut total = 0;
        for diff_id in diff_ids {
            total += self.layer(diff_id)?.map_or(0, |l| l.unpacked_size);
        }
        Ok(total)
    }

    /// An image record as read, with its size recomputed and recorded when the store marked it
    /// unknown (-1, see the database's schema 4).
    fn finish_image(&self, raw: RawImage) -> Result<ImageRecord, StoreError> {
        let stored_size = raw.3;
        let mut image = raw_to_image(raw)?;
        if stored_size < 0 {
            image.size = self.layers_size(&image.config.rootfs.diff_ids)?;
            self.db.execute(
                "UPDATE images SET size = ?1 WHERE id = ?2",
                params![image.size as i64, image.id.as_str()],
            )?;
        }
        Ok(image)
    }

    /// Records an image whose blobs and layers are in the store, and points `tags` at it (moving them from
    /// any other image). Returns the record.
    pub fn add_image(
        &self,
        image: &NewImage,
        tags: &[Reference],
    ) -> Result<ImageRecord, StoreError> {
        let mut records = self.add_images(&[(image, tags)])?;
        records
            .pop()
            .ok_or_else(|| StoreError::ImageNotFound(image.config_digest.to_string()))
    }

    /// Records several images and their tags in one transaction: either all of them are added or, when any
    /// of them is invalid, none. Tags move from any other image; a tag given twice ends on the later image.
    pub(crate) fn add_images(
        &self,
        images: &[(&NewImage, &[Reference])],
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let mut checked = Vec::with_capacity(images.len());
        for (image, _) in images {
            checked.push(self.check_new_image(image)?);
        }
        let tx = self.write_transaction()?;
        let now = chrono::Utc::now().timestamp();
        for ((image, tags), (config_text, size)) in images.iter().zip(&checked) {
            tx.execute(
                "INSERT INTO images (id, manifest_digest, config, size, added) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest",
                params![
                    image.config_digest.as_str(),
                    image.manifest_digest.as_str(),
                    config_text,
                    *size as i64,
                    now
                ],
            )?;
            for tag in *tags {
                tx.execute(
                    "INSERT INTO tags (name, image_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, digest = NULL",
                    params![tag.to_string(), image.config_digest.as_str()],
                )?;
            }
        }
        tx.commit()?;
        images
            .iter()
            .map(|(image, _)| {
                self.image_by_id(&image.config_digest)?
                    .ok_or_else(|| StoreError::ImageNotFound(image.config_digest.to_string()))
            })
            .collect()
    }

    /// Checks that a new image's config and manifest are stored and parse, and that its layers are the
    /// config's; returns the config text and the image size for its record.
    fn check_new_image(&self, image: &NewImage) -> Result<(String, u64), StoreError> {
        let config_bytes = self.blobs.read(&image.config_digest)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| StoreError::InvalidImage(format!("image config: {e}")))?;
        let manifest_bytes = self.blobs.read(&image.manifest_digest)?;
        let _: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| StoreError::InvalidImage(format!("image manifest: {e}")))?;
        if config.rootfs.diff_ids.len() != image.layers.len()
            || config
                .rootfs
                .diff_ids
                .iter()
                .zip(&image.layers)
                .any(|(a, b)| a != &b.diff_id)
        {
            return Err(StoreError::InvalidImage(
                "the config's rootfs.diff_ids do not match the layers".into(),
            ));
        }
        let size: u64 = image.layers.iter().map(|l| l.unpacked_size).sum();
        Ok((String::from_utf8_lossy(&config_bytes).into_owned(), size))
    }

    /// All images, newest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT i.id, i.manifest_digest, i.config, i.size, i.added, group_concat(t.name, char(10)),
               (SELECT group_concat(r.name, char(10)) FROM repo_digests r WHERE r.image_id = i.id)
             FROM images i LEFT JOIN tags t ON t.image_id = i.id GROUP BY i.id ORDER BY i.added DESC",
        )?;
        let rows = stmt.query_map([], row_to_raw_image)?;
        let mut out = Vec::new();
        let raws: Vec<RawImage> = rows.collect::<Result<_, _>>()?;
        drop(stmt);
        for raw in raws {
            out.push(self.finish_image(raw)?);
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.created()));
        Ok(out)
    }

    pub(crate) fn image_by_id(&self, id: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT i.id, i.manifest_digest, i.config, i.size, i.added, group_concat(t.name, char(10)),
               (SELECT group_concat(r.name, char(10)) FROM repo_digests r WHERE r.image_id = i.id)
             FROM images i LEFT JOIN tags t ON t.image_id = i.id WHERE i.id = ?1 GROUP BY i.id",
        )?;
        let raw = stmt.query_row([id.as_str()], row_to_raw_image).optional()?;
        drop(stmt);
        raw.map(|raw| self.finish_image(raw)).transpose()
    }

    /// Finds an image by reference (`busybox`, `busybox:1`, `repo@sha256:…`), full ID (`sha256:…`), or a
    /// unique ID prefix, as `docker` does.
    pub fn image(&self, name_or_id: &str) -> Result<ImageRecord, StoreError> {
        let not_found = || StoreError::ImageNotFound(name_or_id.to_string());
        // IDs first: a 64-hex string, sha256:…, or a short hex prefix that is not a tagged name.
        let hex = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
        let looks_like_id =
            !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if looks_like_id {
            if let Ok(reference) = Reference::parse(name_or_id) {
                if let Some(image) = self.image_by_tag(&reference)? {
                    return Ok(image);
                }
            }
            let mut stmt = self
                .db
                .prepare_cached("SELECT id FROM images WHERE id >= ?1 AND id < ?2 LIMIT 2")?;
            let lo = format!("sha256:{hex}");
            let hi = format!("sha256:{hex}\u{7f}");
            let ids: Vec<String> = stmt
                .query_map([&lo, &hi], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            return match ids.as_slice() {
                [one] => self
                    .image_by_id(&Digest::parse(one)?)?
                    .ok_or_else(not_found),
                [] => Err(not_found()),
                _ => Err(StoreError::Ambiguous(name_or_id.to_string())),
            };
        }
        let reference = Reference::parse(name_or_id)?;
        if let Some(digest) = reference.digest() {
            // name@digest: a digest the image was pulled or pushed by in that repository, else the manifest
            // digest or the config digest of an image.
            let by_repo: Option<String> = self
                .db
                .prepare_cached("SELECT image_id FROM repo_digests WHERE name = ?1")?
                .query_row([format!("{}@{digest}", reference.repository())], |r| {
                    r.get(0)
                })
                .optional()?;
            let id: Option<String> = match by_repo {
                Some(id) => Some(id),
                None => self
                    .db
                    .prepare_cached(
                        "SELECT id FROM images WHERE manifest_digest = ?1 OR id = ?1 LIMIT 1",
                    )?
                    .query_row([digest.as_str()], |r| r.get(0))
                    .optional()?,
            };
            return match id {
                Some(id) => self
                    .image_by_id(&Digest::parse(&id)?)?
                    .ok_or_else(not_found),
                None => Err(not_found()),
            };
        }
        self.image_by_tag(&reference)?.ok_or_else(not_found)
    }

    fn image_by_tag(&self, reference: &Reference) -> Result<Option<ImageRecord>, StoreError> {
        let id: Option<String> = self
            .db
            .query_row(
                "SELECT image_id FROM tags WHERE name = ?1",
                [reference.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.image_by_id(&Digest::parse(&id)?),
            None => Ok(None),
        }
    }

    /// Records that the registry knows `image_id` as `repository@digest` (Docker's `RepoDigests`); a digest
    /// recorded for another image moves to this one. When `reference` has a tag that points at the image,
    /// the tag remembers the digest too (it is what `images --digests` shows on that tag's row), until the
    /// tag moves.
    pub fn add_repo_digest(
        &self,
        image_id: &Digest,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        let tx = self.write_transaction()?;
        tx.execute(
            "INSERT INTO repo_digests (name, image_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
            params![format!("{}@{digest}", reference.repository()), image_id.as_str()],
        )?;
        if let Some(tag) = reference.tag() {
            tx.execute(
                "UPDATE tags SET digest = ?1 WHERE name = ?2 AND image_id = ?3",
                params![
                    digest.as_str(),
                    reference.with_tag(tag)?.to_string(),
                    image_id.as_str()
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The registry digest a tag was last pulled or pushed as, if it has not moved since.
    pub fn tag_digest(&self, tag: &Reference) -> Result<Option<Digest>, StoreError> {
        let digest: Option<Option<String>> = self
            .db
            .prepare_cached("SELECT digest FROM tags WHERE name = ?1")?
            .query_row([tag.to_string()], |r| r.get(0))
            .optional()?;
        digest.flatten().map(|d| Digest::parse(&d)).transpose()
    }

    /// Points `reference` at an image (moving it from any other).
    pub fn tag(&self, image_id: &Digest, reference: &Reference) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO tags (name, image_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, digest = NULL",
            params![reference.to_string(), image_id.as_str()],
        )?;
        Ok(())
    }

    /// Removes an image as `rmi` does, treating every container that uses it as running (the store
    /// does not know which are): see [`Store::delete_image`], which callers that know should use.
    pub fn remove_image(
        &self,
        name_or_id: &str,
        force: bool,
    ) -> Result<Vec<RemovedImage>, StoreError> {
        Ok(self.delete_image(name_or_id, force, &|_| true)?.actions)
    }

    /// Removes an image, as Docker's `rmi` does; `running` tells whether a container (by full ID) is
    /// running.
    ///
    /// A tag reference removes that tag; when it was the last one the image goes too, unless a
    /// container still needs it: without `force` that is refused ([`StoreError::ImageInUse`]), with
    /// it only the tag goes when a running container uses the image. An ID removes the image with all
    /// its tags. By ID, an image used by a running container is never deleted and nothing is untagged
    /// ([`StoreError::DeleteConflict`], hard); one used only by stopped containers, or with tags in
    /// several repositories, needs `force` and is then deleted (its containers keep their layers).
    pub fn delete_image(
        &self,
        name_or_id: &str,
        force: bool,
        running: &dyn Fn(&str) -> bool,
    ) -> Result<ImageRemoval, StoreError> {
        let image = self.image(name_or_id)?;
        let by_tag = Reference::parse(name_or_id)
            .ok()
            .filter(|r| image.tags.contains(&r.to_string()));
        let tx = self.write_transaction()?;
        let users: Vec<String> = tx
            .prepare_cached("SELECT id FROM containers WHERE image_id = ?1 ORDER BY created")?
            .query_map([image.id.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let running_user = users.iter().find(|c| running(c));
        let stopped_user = users.iter().find(|c| !running(c));
        let image_short = image.id.short().to_string();
        let conflict = |hard: bool, state: &str, container: &str| StoreError::DeleteConflict {
            image: image_short.clone(),
            hard,
            reason: format!(
                "image is being used by {state} container {}",
                short(container)
            ),
        };
        let mut removal = ImageRemoval {
            image: image.id.clone(),
            actions: Vec::new(),
            reclaimed: 0,
        };
        let tags_to_remove: Vec<String> = match &by_tag {
            Some(reference) => {
                if !force && image.tags.len() == 1 {
                    if let Some(container) = users.first() {
                        return Err(StoreError::ImageInUse {
                            reference: name_or_id.to_string(),
                            container: short(container).to_string(),
                            image: image_short,
                        });
                    }
                }
                vec![reference.to_string()]
            }
            None => {
                // Checked before anything is untagged: a refused rmi changes nothing.
                if let Some(container) = running_user {
                    return Err(conflict(true, "running", container));
                }
                if !force {
                    if image.tags.len() > 1 {
                        return Err(StoreError::MultipleTags(image_short));
                    }
                    if let Some(container) = stopped_user {
                        return Err(conflict(false, "stopped", container));
                    }
                }
                image.tags.clone()
            }
        };
        for tag in &tags_to_remove {
            tx.execute("DELETE FROM tags WHERE name = ?1", [tag])?;
            removal
                .actions
                .push(RemovedImage::Untagged(crate::reference::familiar_name(tag)));
        }
        let remaining = image.tags.len() - tags_to_remove.len();
        // Untagging the last tag deletes the image unless a running container uses it (then Docker
        // keeps it silently); by ID the conflicts were checked above.
        let delete = remaining == 0 && running_user.is_none();
        if delete {
            tx.execute("DELETE FROM images WHERE id = ?1", [image.id.as_str()])?;
            removal
                .actions
                .push(RemovedImage::Deleted(image.id.clone()));
        }
        tx.commit()?;
        if delete {
            removal.reclaimed = self.collect_garbage_counted()?.layers;
        }
        Ok(removal)
    }

    /// Deletes layers, blobs and snapshots no image or container references any more; returns the
    /// bytes freed (unpacked snapshots and blobs).
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        Ok(self.collect_garbage_counted()?.bytes)
    }

    /// [`Store::collect_garbage`], telling apart the bytes freed on disk and the unpacked sizes of the
    /// layers deleted (Docker's measure of what an image removal reclaims).
    fn collect_garbage_counted(&self) -> Result<Freed, StoreError> {
        let mut freed = Freed::default();
        let _lock = self.lock(true)?;
        let mut referenced_layers: HashSet<String> = HashSet::new();
        let mut referenced_blobs: HashSet<String> = HashSet::new();
        {
            let mut stmt = self
                .db
                .prepare("SELECT manifest_digest, config FROM images")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (manifest_digest, config) = row?;
                referenced_blobs.insert(manifest_digest.clone());
                if let Ok(m) = Digest::parse(&manifest_digest).and_then(|d| self.blobs.read(&d)) {
                    if let Ok(manifest) = serde_json::from_slice::<Manifest>(&m) {
                        referenced_blobs.insert(manifest.config.digest.to_string());
                        referenced_blobs
                            .extend(manifest.layers.iter().map(|l| l.digest.to_string()));
                    }
                }
                let config: ImageConfig = serde_json::from_str(&config)?;
                referenced_layers.extend(config.rootfs.diff_ids.iter().map(|d| d.to_string()));
            }
            for record in self.containers()? {
                referenced_layers.extend(record.layers.iter().map(|d| d.to_string()));
            }
        }
        let mut stmt = self
            .db
            .prepare("SELECT diff_id, blob_digest, unpacked_size FROM layers")?;
        let layers: Vec<(String, String, Option<i64>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (diff_id, blob, _) in &layers {
            if referenced_layers.contains(diff_id) {
                referenced_blobs.insert(blob.clone());
            }
        }
        for (diff_id, _, unpacked_size) in layers {
            if !referenced_layers.contains(&diff_id) {
                self.db
                    .execute("DELETE FROM layers WHERE diff_id = ?1", [&diff_id])?;
                let diff_id = Digest::parse(&diff_id)?;
                let dir = self.snapshots.layer_dir(&diff_id);
                freed.layers += match unpacked_size {
                    Some(n) => n as u64,
                    None => crate::snapshot::content_size(&dir).unwrap_or(0),
                };
                freed.bytes += crate::snapshot::dir_size(&dir);
                self.snapshots.remove_layer(&diff_id)?;
            }
        }
        for blob in self.blobs.list()? {
            if !referenced_blobs.contains(blob.as_str()) {
                freed.bytes += fs::metadata(self.blobs.path(&blob)).map_or(0, |m| m.len());
                self.blobs.remove(&blob)?;
            }
        }
        Ok(freed)
    }

    /// Removes the partial downloads that interrupted pulls kept for resuming (see
    /// [`crate::BlobStore::resumable_writer`]); returns the bytes freed. Pulls hold the store lock shared, so
    /// none is under way meanwhile.
    pub fn remove_partial_downloads(&self) -> Result<u64, StoreError> {
        let _lock = self.lock(true)?;
        self.blobs.remove_partial_downloads()
    }

    /// The manifest of an image.
    pub fn manifest(&self, image: &ImageRecord) -> Result<Manifest, StoreError> {
        let bytes = self.blobs.read(&image.manifest_digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::InvalidImage(format!("manifest: {e}")))
    }

    /// The config bytes exactly as stored (their digest is the image ID).
    pub fn config_bytes(&self, image: &ImageRecord) -> Result<Vec<u8>, StoreError> {
        self.blobs.read(&image.id)
    }

    /// Starts a write transaction that takes SQLite's write lock at once, so read-modify-write sequences of
    /// concurrent processes never interleave.
    pub(crate) fn write_transaction(&self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        Ok(rusqlite::Transaction::new_unchecked(
            &self.db,
            TransactionBehavior::Immediate,
        )?)
    }
}

/// What a garbage collection freed.
#[derive(Debug, Default)]
struct Freed {
    /// Bytes of snapshots and blobs deleted.
    bytes: u64,
    /// The unpacked sizes of the layers deleted ([`LayerRecord::unpacked_size`]).
    layers: u64,
}

/// The 12-hex-digit short form of a container ID, as Docker's messages show it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

type RawImage = (
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

fn row_to_raw_image(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawImage> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn raw_to_image(
    (id, manifest, config, size, added, tags, repo_digests): RawImage,
) -> Result<ImageRecord, StoreError> {
    let split = |list: Option<String>| {
        let mut items: Vec<String> = list
            .map(|t| t.split('\n').map(str::to_string).collect())
            .unwrap_or_default();
        items.sort();
        items
    };
    let tags = split(tags);
    let repo_digests = split(repo_digests);
    Ok(ImageRecord {
        id: Digest::parse(&id)?,
        manifest_digest: Digest::parse(&manifest)?,
        config: serde_json::from_str(&config)?,
        tags,
        repo_digests,
        size: size.max(0) as u64,
        added,
    })
}
