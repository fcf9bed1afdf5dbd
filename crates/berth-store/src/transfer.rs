//! `save` and `load`: images to and from one tar archive.
//!
//! [`Store::save_images`] writes what Docker 25+ writes: a tar that is at the same time a
//! *docker-archive* (`manifest.json`, `repositories`, layers as uncompressed tars) and an *OCI image
//! layout* (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), so `docker load`, `skopeo`
//! (`docker-archive:` and `oci-archive:`), containerd and Berth can all read it.
//!
//! [`Store::load_images`] reads both formats (and old docker-archives with `<id>/layer.tar`), gzip-
//! or zstd-compressed or plain. The archive is untrusted: its regular files are spooled into a private
//! directory under the store's `tmp/` under numbered names (an entry name is never used as a path on
//! disk), names that are absolute, contain `..` or are not normalised are refused, links are never
//! followed on disk (a symlink is only resolved by name inside the archive, as old docker-archives
//! share layers that way), hardlinks, devices and fifos are refused, and every file used is verified
//! against a digest before anything of it enters the store. Images are recorded all together at the
//! end, in one transaction: a load that fails adds no image and no tag.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestReader, DigestWriter};
use crate::error::{IoContext, StoreError};
use crate::image::{
    host_platform, is_layer_media_type, Descriptor, ImageConfig, Manifest,
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::images::{ImageRecord, LayerRecord, NewImage};
use crate::reference::Reference;
use crate::Store;

/// containerd's (and Docker 25+'s) annotation with an image's full name on an `index.json` entry.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation with a reference name (Docker writes the tag) on an `index.json` entry.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Docker's `manifest.json` of a docker-archive.
const DOCKER_MANIFEST_FILE: &str = "manifest.json";
/// The OCI image layout's index.
const OCI_INDEX_FILE: &str = "index.json";
/// The OCI image layout's marker file.
const OCI_LAYOUT_FILE: &str = "oci-layout";
/// The legacy repositories file of a docker-archive.
const REPOSITORIES_FILE: &str = "repositories";
/// What `oci-layout` says.
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// JSON documents (manifests, configs, indexes) bigger than this are refused rather than read into memory.
const MAX_JSON: u64 = 16 << 20;
/// How deep image indexes may nest, and how many symlinks a name may go through.
const MAX_DEPTH: usize = 8;

/// One image added by [`Store::load_images`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedImage {
    /// The image ID (its config digest).
    pub id: Digest,
    /// The tags now pointing at it, in archive order; empty when the archive named none
    /// (`docker load` then prints `Loaded image ID: sha256:…`).
    pub tags: Vec<Reference>,
}

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    /// Path of the config file in the archive.
    config: String,
    /// `repo:tag` names, familiar form; null or absent for an untagged image.
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars in the archive, bottom first.
    layers: Vec<String>,
}

/// An OCI image index (`index.json`, or a nested index blob).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

impl Store {
    /// Writes the images named by `names` (references, IDs or ID prefixes, as `docker save` takes them)
    /// as one tar to `out`, in both the docker-archive and the OCI image layout formats (see the module
    /// documentation). A repository name without tag saves every tag of that repository, as Docker does; an
    /// image named by ID is saved without tags. The output is deterministic: the same images give the same
    /// bytes (owner 0, mode 0644, mtime 0).
    ///
    /// Layers stored compressed are also written as uncompressed tars named by their diff ID, which is
    /// what `manifest.json` refers to; the OCI manifests keep the compressed blobs. Every blob read from
    /// the store is checked against its digest on the way out.
    ///
    /// Fails with [`StoreError::ImageNotFound`] for a name that matches nothing, before writing anything.
    pub fn save_images(&self, names: &[String], out: impl Write) -> Result<(), StoreError> {
        if names.is_empty() {
            return Err(StoreError::InvalidImage("no image to save".into()));
        }
        let selected = self.select_for_save(names)?;
        let mut images = Vec::with_capacity(selected.len());
        for (record, tags) in selected {
            let manifest_bytes = self.blobs().read(&record.manifest_digest)?;
            let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
                StoreError::InvalidImage(format!("manifest {}: {e}", record.manifest_digest))
            })?;
            if manifest.layers.len() != record.config.rootfs.diff_ids.len() {
                return Err(StoreError::InvalidImage(format!(
                    "image {}: the manifest and the config disagree on the number of layers",
                    record.id
                )));
            }
            let config_bytes = self.config_bytes(&record)?;
            images.push((record, tags, manifest_bytes, manifest, config_bytes));
        }

        let mut w = ArchiveWriter::new(out);
        w.directory("blobs/")?;
        w.directory("blobs/sha256/")?;
        let mut docker_manifest = Vec::new();
        let mut index = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (record, tags, manifest_bytes, manifest, config_bytes) in &images {
            w.blob_bytes(&record.id, config_bytes)?;
            let mut layer_paths = Vec::new();
            for (descriptor, diff_id) in manifest.layers.iter().zip(&record.config.rootfs.diff_ids)
            {
                let blob = self.blobs().open_blob(&descriptor.digest)?;
                w.blob(&descriptor.digest, descriptor.size, blob)?;
                if descriptor.digest != *diff_id {
                    // A compressed layer: docker-archive readers want the tar itself, named by diff ID.
                    let layer = self.layer(diff_id)?.ok_or_else(|| {
                        StoreError::InvalidImage(format!("layer {diff_id} is not in the store"))
                    })?;
                    let blob = self.blobs().open_blob(&descriptor.digest)?;
                    let (_, tar) = berth_archive::decompress(BufReader::new(blob))?;
                    w.blob(diff_id, layer.size, tar)?;
                }
                layer_paths.push(blob_path(diff_id));
            }
            w.blob_bytes(&record.manifest_digest, manifest_bytes)?;
            let legacy_top = w.legacy_layers(record, config_bytes)?;
            let mut platform = serde_json::json!({
                "architecture": record.config.architecture,
                "os": record.config.os,
            });
            if let Some(variant) = &record.config.variant {
                platform["variant"] = serde_json::Value::String(variant.clone());
            }
            let descriptor = |annotations| Descriptor {
                media_type: manifest
                    .media_type
                    .clone()
                    .unwrap_or_else(|| MEDIA_TYPE_OCI_MANIFEST.to_string()),
                digest: record.manifest_digest.clone(),
                size: manifest_bytes.len() as u64,
                annotations,
                platform: Some(platform.clone()),
            };
            if tags.is_empty() {
                index.push(descriptor(BTreeMap::new()));
            }
            for tag in tags {
                let tag_name = tag.tag().unwrap_or(crate::reference::DEFAULT_TAG);
                index.push(descriptor(BTreeMap::from([
                    (ANNOTATION_IMAGE_NAME.to_string(), tag.to_string()),
                    (ANNOTATION_REF_NAME.to_string(), tag_name.to_string()),
                ])));
                if let Some(top) = &legacy_top {
                    repositories
                        .entry(tag.familiar_repository())
                        .or_default()
                        .insert(tag_name.to_string(), top.clone());
                }
            }
            docker_manifest.push(DockerArchiveEntry {
                config: blob_path(&record.id),
                repo_tags: Some(tags.iter().map(Reference::familiar).collect()),
                layers: layer_paths,
            });
        }
        let index = Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()),
            manifests: index,
        };
        w.file(OCI_INDEX_FILE, &serde_json::to_vec(&index)?)?;
        w.file(DOCKER_MANIFEST_FILE, &serde_json::to_vec(&docker_manifest)?)?;
        w.file(OCI_LAYOUT_FILE, OCI_LAYOUT_CONTENT)?;
        if !repositories.is_empty() {
            w.file(REPOSITORIES_FILE, &serde_json::to_vec(&repositories)?)?;
        }
        w.finish()
    }

    /// Resolves `save` arguments to images and the tags to save them under, one entry per image in
    /// argument order.
    fn select_for_save(
        &self,
        names: &[String],
    ) -> Result<Vec<(ImageRecord, Vec<Reference>)>, StoreError> {
        let mut out: Vec<(ImageRecord, Vec<Reference>)> = Vec::new();
        let mut all: Option<Vec<ImageRecord>> = None;
        for name in names {
            let mut found: Vec<(ImageRecord, Option<Reference>)> = Vec::new();
            // A bare repository name means all its tags.
            if let Ok(repo) = Reference::parse_name_only(name) {
                if repo.tag().is_none() && repo.digest().is_none() {
                    let images = match &all {
                        Some(images) => images,
                        None => all.insert(self.images()?),
                    };
                    for image in images {
                        for tag in image.tags.iter().filter_map(|t| Reference::parse(t).ok()) {
                            if tag.repository() == repo.repository() {
                                found.push((image.clone(), Some(tag)));
                            }
                        }
                    }
                }
            }
            if found.is_empty() {
                let image = self.image(name)?;
                let tag = Reference::parse(name)
                    .ok()
                    .filter(|r| r.tag().is_some() && image.tags.contains(&r.to_string()));
                found.push((image, tag));
            }
            for (image, tag) in found {
                let slot = match out.iter().position(|(i, _)| i.id == image.id) {
                    Some(slot) => slot,
                    None => {
                        out.push((image, Vec::new()));
                        out.len() - 1
                    }
                };
                if let Some(tag) = tag {
                    if !out[slot].1.contains(&tag) {
                        out[slot].1.push(tag);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Loads every image of a docker-archive or OCI image layout tar (plain, gzip or zstd) read from
    /// `input`, as `docker load` does, and returns them with their tags.
    ///
    /// Tags come from `manifest.json`'s `RepoTags` (docker-archive) or, for an OCI layout, from each
    /// `index.json` entry's `io.containerd.image.name` annotation, else its `org.opencontainers.image.ref.name`
    /// when that is a full reference (`bb:latest`); a bare tag such as `latest` names no repository and the
    /// image is loaded untagged. An archive with an `index.json` is read as an OCI layout (its manifests
    /// keep their digests), otherwise `manifest.json` is used. Nested indexes are followed to the
    /// manifest for this host's platform.
    ///
    /// Everything is verified before it is used: OCI blobs against their file names and the digests and
    /// sizes of the descriptors pointing at them, layers against the config's `rootfs.diff_ids`. Unsafe
    /// or malformed archives are refused with [`StoreError::InvalidImage`]; mismatching content with
    /// [`StoreError::InvalidImage`] or [`StoreError::DigestMismatch`]. On any error no image and no tag is
    /// added (blobs and layers already stored are unreferenced and go with the next garbage collection),
    /// and the spool directory is removed.
    pub fn load_images(&self, input: impl Read) -> Result<Vec<LoadedImage>, StoreError> {
        let spool = Spool::read(self, input)?;
        check_blob_names(&spool)?;
        let prepared = if spool.files.contains_key(OCI_INDEX_FILE) {
            prepare_oci(&spool)?
        } else if spool.files.contains_key(DOCKER_MANIFEST_FILE) {
            prepare_docker(&spool)?
        } else if spool.files.is_empty() {
            return Err(StoreError::InvalidImage(
                "the archive contains no files: not a docker-archive or OCI image layout".into(),
            ));
        } else {
            return Err(StoreError::InvalidImage(format!(
                "not an image archive: it has neither {DOCKER_MANIFEST_FILE} (docker-archive) nor \
                 {OCI_INDEX_FILE} (OCI image layout)"
            )));
        };
        if prepared.is_empty() {
            return Err(StoreError::InvalidImage(
                "the archive lists no images".into(),
            ));
        }
        // Held shared for the whole commit so garbage collection cannot remove blobs and layers between
        // their writing and the image records that reference them.
        let _lock = self.lock(false)?;
        let mut new_images = Vec::with_capacity(prepared.len());
        for image in &prepared {
            new_images.push(self.store_prepared(image)?);
        }
        let pairs: Vec<(&NewImage, &[Reference])> = new_images
            .iter()
            .zip(&prepared)
            .map(|(new, p)| (new, p.tags.as_slice()))
            .collect();
        self.add_images(&pairs)?;
        Ok(prepared
            .into_iter()
            .map(|p| LoadedImage {
                id: p.id,
                tags: p.tags,
            })
            .collect())
    }

    /// Puts a verified image's blobs into the blob store and creates its layers.
    fn store_prepared(&self, image: &PreparedImage) -> Result<NewImage, StoreError> {
        // Layers first: they are the part whose diff IDs may still turn out wrong (compressed ones are
        // only verified while decompressed), and a failure then leaves as little behind as possible.
        let mut layers: Vec<LayerRecord> = Vec::with_capacity(image.layers.len());
        let mut descriptors = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let (blob_digest, size) = match &layer.blob {
                LayerBlob::AsIs(digest) => {
                    let size = self.put_file(&layer.file.path, digest)?;
                    // add_layer verifies the diff ID while unpacking, except for a layer it already has:
                    // then this blob is checked here, unless it is the very blob that layer came from.
                    if *digest != layer.diff_id
                        && self
                            .layer(&layer.diff_id)?
                            .is_some_and(|known| known.blob_digest != *digest)
                    {
                        verify_decompressed(layer)?;
                    }
                    (digest.clone(), size)
                }
                LayerBlob::Uncompressed => {
                    let diff_id = &layer.diff_id;
                    let size = if self.blobs().contains(diff_id) {
                        if layer.file.digest != *diff_id {
                            verify_decompressed(layer)?;
                        }
                        blob_size(self, diff_id)?
                    } else {
                        let file = File::open(&layer.file.path).ctx("open", &layer.file.path)?;
                        let (_, tar) = berth_archive::decompress(BufReader::new(file))?;
                        self.blobs()
                            .put(tar, Some(diff_id))
                            .map_err(|e| layer_mismatch(e, &layer.name))?
                            .1
                    };
                    (diff_id.clone(), size)
                }
            };
            let record = self
                .add_layer(&blob_digest, &layer.media_type, Some(&layer.diff_id))
                .map_err(|e| layer_mismatch(e, &layer.name))?;
            descriptors.push(Descriptor {
                media_type: layer.media_type.clone(),
                digest: blob_digest,
                size,
                annotations: BTreeMap::new(),
                platform: None,
            });
            layers.push(record);
        }
        self.put_file(&image.config.path, &image.id)?;
        let manifest_digest = match &image.manifest {
            Some((digest, bytes)) => {
                self.blobs().put(bytes.as_slice(), Some(digest))?;
                digest.clone()
            }
            None => {
                // A docker-archive has no manifest blob: write the OCI manifest of what was stored.
                let manifest = Manifest {
                    schema_version: 2,
                    media_type: Some(MEDIA_TYPE_OCI_MANIFEST.into()),
                    config: Descriptor {
                        media_type: MEDIA_TYPE_OCI_CONFIG.into(),
                        digest: image.id.clone(),
                        size: image.config.size,
                        annotations: BTreeMap::new(),
                        platform: None,
                    },
                    layers: descriptors,
                    annotations: BTreeMap::new(),
                };
                self.blobs().put_bytes(&serde_json::to_vec(&manifest)?)?
            }
        };
        Ok(NewImage {
            manifest_digest,
            config_digest: image.id.clone(),
            layers,
        })
    }

    /// Copies a spooled file into the blob store unless the blob is there already; returns its size.
    fn put_file(&self, path: &Path, digest: &Digest) -> Result<u64, StoreError> {
        if self.blobs().contains(digest) {
            return blob_size(self, digest);
        }
        let file = File::open(path).ctx("open", path)?;
        Ok(self.blobs().put(BufReader::new(file), Some(digest))?.1)
    }
}

fn blob_size(store: &Store, digest: &Digest) -> Result<u64, StoreError> {
    let path = store.blobs().path(digest);
    Ok(fs::metadata(&path).ctx("stat", &path)?.len())
}

/// Checks that a (compressed) layer file of the archive decompresses to its diff ID.
fn verify_decompressed(layer: &PreparedLayer) -> Result<(), StoreError> {
    let unreadable =
        |e: &dyn std::fmt::Display| StoreError::InvalidImage(format!("layer {}: {e}", layer.name));
    let file = File::open(&layer.file.path).ctx("open", &layer.file.path)?;
    let (_, tar) = berth_archive::decompress(BufReader::new(file)).map_err(|e| unreadable(&e))?;
    let mut hashed = DigestReader::new(tar);
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| unreadable(&e))?;
    let (actual, _) = hashed.finish();
    if actual != layer.diff_id {
        return Err(layer_mismatch(
            StoreError::DigestMismatch {
                expected: layer.diff_id.to_string(),
                actual: actual.to_string(),
            },
            &layer.name,
        ));
    }
    Ok(())
}

/// Names the layer in a diff ID mismatch found while storing it.
fn layer_mismatch(e: StoreError, name: &str) -> StoreError {
    match e {
        StoreError::DigestMismatch { expected, actual } => StoreError::InvalidImage(format!(
            "layer {name} does not match its diff ID: the config says {expected}, the content is {actual}"
        )),
        other => other,
    }
}

/// `blobs/sha256/<hex>`, where both formats keep a blob.
fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Writes the entries of a saved archive with deterministic headers.
struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
    /// Blobs already written (images share layers and configs).
    written: HashSet<Digest>,
    /// Legacy layer directories already written (images share lower layers).
    legacy: HashSet<String>,
}

impl<W: Write> ArchiveWriter<W> {
    fn new(out: W) -> Self {
        Self {
            builder: tar::Builder::new(out),
            written: HashSet::new(),
            legacy: HashSet::new(),
        }
    }

    /// Writes the legacy layer directories of Docker's old save format (`<id>/VERSION`, `<id>/json`,
    /// `<id>/layer.tar`) for an image whose layer blobs (uncompressed, by diff ID) are written, and
    /// returns the top one's ID: what `repositories` maps each tag to, as `docker save` 20.10 does.
    /// `layer.tar` is a symlink to the layer's blob, so the archive holds each layer once.
    ///
    /// The IDs are made as Docker makes its v1 IDs: the digest of the layer's v1 JSON (without `id`)
    /// with its chain ID as `layer_id` and the parent's ID as `parent`; only the top layer's JSON is
    /// the image config (less `rootfs` and `history`), so images sharing layers share the directories
    /// below their top.
    fn legacy_layers(
        &mut self,
        record: &ImageRecord,
        config_bytes: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let diff_ids = &record.config.rootfs.diff_ids;
        let mut chain: Option<Digest> = None;
        let mut parent: Option<Digest> = None;
        for (i, diff_id) in diff_ids.iter().enumerate() {
            // The chain ID of the layers up to this one (OCI's ChainID).
            let chain_id = match &chain {
                None => diff_id.clone(),
                Some(below) => Digest::of(format!("{below} {diff_id}").as_bytes()),
            };
            let mut v1 = if i + 1 == diff_ids.len() {
                let mut config: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(config_bytes)?;
                config.remove("rootfs");
                config.remove("history");
                config
            } else {
                serde_json::Map::from_iter([(
                    "created".to_string(),
                    serde_json::Value::String("1970-01-01T00:00:00Z".into()),
                )])
            };
            let mut for_id = v1.clone();
            for_id.insert("layer_id".into(), chain_id.to_string().into());
            if let Some(parent) = &parent {
                for_id.insert("parent".into(), parent.to_string().into());
            }
            let id = Digest::of(&serde_json::to_vec(&for_id)?);
            let name = id.hex().to_string();
            if self.legacy.insert(name.clone()) {
                v1.insert("id".into(), name.clone().into());
                if let Some(parent) = &parent {
                    v1.insert("parent".into(), parent.hex().into());
                }
                self.directory(&format!("{name}/"))?;
                self.file(&format!("{name}/VERSION"), b"1.0")?;
                self.file(&format!("{name}/json"), &serde_json::to_vec(&v1)?)?;
                self.symlink(
                    &format!("{name}/layer.tar"),
                    &format!("../{}", blob_path(diff_id)),
                )?;
            }
            chain = Some(chain_id);
            parent = Some(id);
        }
        Ok(parent.map(|id| id.hex().to_string()))
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<(), StoreError> {
        let mut header = Self::header(tar::EntryType::Symlink, 0, 0o777);
        self.builder
            .append_link(&mut header, name, target)
            .ctx("write archive entry", name)
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    fn directory(&mut self, name: &str) -> Result<(), StoreError> {
        let mut header = Self::header(tar::EntryType::Directory, 0, 0o755);
        self.builder
            .append_data(&mut header, name, io::empty())
            .ctx("write archive entry", name)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut header = Self::header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
        self.builder
            .append_data(&mut header, name, bytes)
            .ctx("write archive entry", name)
    }

    fn blob_bytes(&mut self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        self.blob(digest, bytes.len() as u64, bytes)
    }

    /// Writes `size` bytes of `reader` as blob `digest` (once per archive), checking that they are
    /// exactly that many and have that digest.
    fn blob(&mut self, digest: &Digest, size: u64, reader: impl Read) -> Result<(), StoreError> {
        if self.written.contains(digest) {
            return Ok(());
        }
        let name = blob_path(digest);
        let mut header = Self::header(tar::EntryType::Regular, size, 0o644);
        let mut hashed = DigestReader::new(reader.take(size));
        self.builder
            .append_data(&mut header, &name, &mut hashed)
            .ctx("write archive entry", &name)?;
        let (actual, read) = hashed.finish();
        if read != size {
            return Err(StoreError::InvalidImage(format!(
                "blob {digest} has {read} bytes, {size} were expected"
            )));
        }
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        self.written.insert(digest.clone());
        Ok(())
    }

    fn finish(self) -> Result<(), StoreError> {
        let mut out = self
            .builder
            .into_inner()
            .ctx("write archive", "<end of archive>")?;
        out.flush().ctx("write archive", "<end of archive>")
    }
}

/// A regular file of the archive, spooled to disk with its digest.
#[derive(Debug, Clone)]
struct SpooledFile {
    /// Where its content is (a numbered file in the spool directory).
    path: PathBuf,
    digest: Digest,
    size: u64,
}

/// The regular files and symlinks of an archive, spooled into a private directory that is removed
/// when this is dropped (on every exit path of a load).
struct Spool {
    dir: PathBuf,
    /// Normalised entry name → content.
    files: BTreeMap<String, SpooledFile>,
    /// Normalised entry name → link target as written.
    links: BTreeMap<String, String>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = crate::snapshot::remove_tree(&self.dir);
    }
}

/// A tar (or decompression) error, as a message safe to print: the tar crate quotes raw header bytes
/// after a colon, so only what comes before it is kept.
fn bad_tar(e: impl std::fmt::Display, last: Option<&str>) -> StoreError {
    let full = e.to_string();
    let text: String = full
        .split(':')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(120)
        .collect();
    StoreError::InvalidImage(match last {
        None => format!("the input is not a tar archive (plain, gzip or zstd): {text}"),
        Some(last) => format!("corrupt tar archive after entry {last:?}: {text}"),
    })
}

impl Spool {
    fn read(store: &Store, input: impl Read) -> Result<Self, StoreError> {
        let tmp = store.tmp_dir();
        fs::create_dir_all(&tmp).ctx("create", &tmp)?;
        let dir = tmp.join(crate::work_name("load"));
        fs::create_dir(&dir).ctx("create", &dir)?;
        let mut spool = Spool {
            dir,
            files: BTreeMap::new(),
            links: BTreeMap::new(),
        };
        let (_, stream) = berth_archive::decompress(input).map_err(|e| bad_tar(e, None))?;
        let mut archive = tar::Archive::new(stream);
        let mut last: Option<String> = None;
        for (n, entry) in archive.entries().map_err(|e| bad_tar(e, None))?.enumerate() {
            let mut entry = entry.map_err(|e| bad_tar(e, last.as_deref()))?;
            let raw = entry.path_bytes().into_owned();
            let kind = entry.header().entry_type();
            let name = normalize_entry_name(&raw, kind.is_dir())?;
            last = Some(name.clone());
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if spool.files.contains_key(&name) || spool.links.contains_key(&name) {
                        return Err(StoreError::InvalidImage(format!(
                            "archive entry {name:?} appears twice"
                        )));
                    }
                    let path = spool.dir.join(n.to_string());
                    let file = File::options()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .ctx("create", &path)?;
                    let mut writer = DigestWriter::new(BufWriter::with_capacity(1 << 20, file));
                    let expected = entry.size();
                    let copied = io::copy(&mut entry, &mut writer)
                        .map_err(|e| bad_tar(e, last.as_deref()))?;
                    if copied != expected {
                        return Err(StoreError::InvalidImage(format!(
                            "the archive is truncated (in entry {name:?})"
                        )));
                    }
                    let (buf, digest, size) = writer.finish();
                    buf.into_inner()
                        .map_err(|e| e.into_error())
                        .ctx("write", &path)?;
                    spool
                        .files
                        .insert(name, SpooledFile { path, digest, size });
                }
                tar::EntryType::Directory | tar::EntryType::XGlobalHeader => {}
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .and_then(|t| String::from_utf8(t.into_owned()).ok())
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| {
                            StoreError::InvalidImage(format!(
                                "archive entry {name:?} is a symlink without a valid target"
                            ))
                        })?;
                    if spool.files.contains_key(&name) || spool.links.contains_key(&name) {
                        return Err(StoreError::InvalidImage(format!(
                            "archive entry {name:?} appears twice"
                        )));
                    }
                    spool.links.insert(name, target);
                }
                other => {
                    return Err(StoreError::InvalidImage(format!(
                        "archive entry {name:?} is a {}; an image archive may only hold regular files, \
                         directories and symlinks",
                        describe_kind(other)
                    )))
                }
            }
        }
        Ok(spool)
    }

    /// The file an archive path names, following symlinks by name inside the archive only.
    fn resolve(&self, name: &str, referrer: &str) -> Result<(&str, &SpooledFile), StoreError> {
        let missing = || {
            StoreError::InvalidImage(format!(
                "{referrer} refers to {name:?}, which is not a file in the archive"
            ))
        };
        let mut current = normalize_entry_name(name.as_bytes(), false).map_err(|_| {
            StoreError::InvalidImage(format!(
                "{referrer} refers to {name:?}, which is not a relative path inside the archive"
            ))
        })?;
        for _ in 0..MAX_DEPTH {
            if let Some((key, file)) = self.files.get_key_value(&current) {
                return Ok((key.as_str(), file));
            }
            let Some(target) = self.links.get(&current) else {
                return Err(missing());
            };
            let parent = current.rsplit_once('/').map_or("", |(p, _)| p);
            current = join_inside(parent, target).ok_or_else(|| {
                StoreError::InvalidImage(format!(
                    "archive symlink {current:?} points to {target:?}, outside the archive"
                ))
            })?;
        }
        Err(StoreError::InvalidImage(format!(
            "{referrer} refers to {name:?}, which goes through too many symlinks"
        )))
    }

    /// Reads a (small) JSON document of the archive.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        referrer: &str,
    ) -> Result<(T, Vec<u8>), StoreError> {
        let (name, file) = self.resolve(name, referrer)?;
        let bytes = read_small(file, name)?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::InvalidImage(format!("{name} in the archive: {e}")))?;
        Ok((value, bytes))
    }

    /// The OCI blob a descriptor points at, checked against the descriptor's digest and size.
    fn blob(&self, descriptor: &Descriptor, referrer: &str) -> Result<&SpooledFile, StoreError> {
        let name = blob_path(&descriptor.digest);
        let (_, file) = self.resolve(&name, referrer)?;
        if file.digest != descriptor.digest {
            return Err(StoreError::InvalidImage(format!(
                "blob {name} does not match its digest: its content is {}",
                file.digest
            )));
        }
        if file.size != descriptor.size {
            return Err(StoreError::InvalidImage(format!(
                "blob {name} has {} bytes but {referrer} says {}",
                file.size, descriptor.size
            )));
        }
        Ok(file)
    }
}

fn read_small(file: &SpooledFile, name: &str) -> Result<Vec<u8>, StoreError> {
    if file.size > MAX_JSON {
        return Err(StoreError::InvalidImage(format!(
            "{name} in the archive is too large ({} bytes) for a JSON document",
            file.size
        )));
    }
    fs::read(&file.path).ctx("read", &file.path)
}

fn describe_kind(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Link => "hardlink",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "entry of an unsupported type",
    }
}

/// Checks an archive entry name and returns it normalised: relative, UTF-8, no `..`, no empty or `.`
/// components except a leading `./` and, for directories, a trailing `/`. The root itself (`.` or `./`)
/// normalises to the empty string and is only accepted for a directory.
fn normalize_entry_name(raw: &[u8], is_dir: bool) -> Result<String, StoreError> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let bad = |why: &str| StoreError::InvalidImage(format!("archive entry {shown:?} {why}"));
    let name = std::str::from_utf8(raw).map_err(|_| bad("is not valid UTF-8"))?;
    if name.starts_with('/') {
        return Err(bad("is an absolute path"));
    }
    let mut rest = name.strip_prefix("./").unwrap_or(name);
    if is_dir {
        rest = rest.strip_suffix('/').unwrap_or(rest);
    }
    if rest.is_empty() || rest == "." {
        return if is_dir {
            Ok(String::new())
        } else {
            Err(bad("has no name"))
        };
    }
    for component in rest.split('/') {
        match component {
            ".." => return Err(bad("has a '..' component and would escape the archive")),
            "" | "." => return Err(bad("is not a normalised path")),
            _ => {}
        }
    }
    Ok(rest.to_string())
}

/// Joins a symlink target to the directory of the link, lexically; `None` when the result would be
/// absolute or climb above the archive root.
fn join_inside(parent: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = parent.split('/').filter(|p| !p.is_empty()).collect();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A layer ready to be stored.
struct PreparedLayer {
    /// Its name in the archive, for messages.
    name: String,
    file: SpooledFile,
    diff_id: Digest,
    /// Media type of the blob as it will be stored.
    media_type: String,
    blob: LayerBlob,
}

/// How a layer's blob is stored.
enum LayerBlob {
    /// The archive file is the blob, with this (verified) digest; its diff ID is checked on unpacking.
    AsIs(Digest),
    /// The archive file, decompressed, is the blob: its digest must be the diff ID (docker-archive
    /// layers, which are stored uncompressed).
    Uncompressed,
}

/// An image of the archive whose files have been checked, ready to be stored.
struct PreparedImage {
    /// The config digest.
    id: Digest,
    config: SpooledFile,
    /// The manifest blob (OCI layout), or none (docker-archive: one is made once the layers are stored).
    manifest: Option<(Digest, Vec<u8>)>,
    layers: Vec<PreparedLayer>,
    tags: Vec<Reference>,
}

/// Adds `image` to `out`, or its tags to the same image already there.
fn merge(out: &mut Vec<PreparedImage>, image: PreparedImage) {
    match out.iter_mut().find(|p| p.id == image.id) {
        Some(existing) => {
            for tag in image.tags {
                if !existing.tags.contains(&tag) {
                    existing.tags.push(tag);
                }
            }
        }
        None => out.push(image),
    }
}

/// Parses the image config, checking it is one.
fn parse_config(file: &SpooledFile, name: &str) -> Result<ImageConfig, StoreError> {
    let bytes = read_small(file, name)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::InvalidImage(format!("image config {name} in the archive: {e}")))
}

/// Checks that every file under `blobs/sha256/` is named by its digest: one that is not makes the
/// archive corrupt, whether an image uses it or not (both formats keep blobs there since Docker 25).
fn check_blob_names(spool: &Spool) -> Result<(), StoreError> {
    for (name, file) in &spool.files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let named = Digest::parse(&format!("sha256:{hex}")).map_err(|_| {
                StoreError::InvalidImage(format!("{name} in the archive is not named by a digest"))
            })?;
            if named != file.digest {
                return Err(StoreError::InvalidImage(format!(
                    "blob {name} does not match its digest: its content is {}",
                    file.digest
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a layer file that is an uncompressed tar whose digest is not its diff ID; a compressed one is
/// checked when it is decompressed into the store.
fn check_uncompressed_layer(
    file: &SpooledFile,
    name: &str,
    diff_id: &Digest,
) -> Result<(), StoreError> {
    if &file.digest == diff_id {
        return Ok(());
    }
    let mut head = [0u8; 4];
    let mut have = 0;
    let mut f = File::open(&file.path).ctx("open", &file.path)?;
    while have < head.len() {
        match f.read(&mut head[have..]).ctx("read", &file.path)? {
            0 => break,
            n => have += n,
        }
    }
    if berth_archive::Compression::sniff(&head[..have]) == berth_archive::Compression::None {
        return Err(StoreError::InvalidImage(format!(
            "layer {name} does not match its diff ID: the config says {diff_id}, the content is {}",
            file.digest
        )));
    }
    Ok(())
}

/// A docker-archive: `manifest.json` lists configs and layer tars by path.
fn prepare_docker(spool: &Spool) -> Result<Vec<PreparedImage>, StoreError> {
    let (entries, _): (Vec<DockerArchiveEntry>, _) =
        spool.json(DOCKER_MANIFEST_FILE, DOCKER_MANIFEST_FILE)?;
    let mut out = Vec::new();
    for entry in entries {
        let (config_name, config_file) = spool.resolve(&entry.config, DOCKER_MANIFEST_FILE)?;
        let config = parse_config(config_file, config_name)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(StoreError::InvalidImage(format!(
                "{DOCKER_MANIFEST_FILE} lists {} layers for {config_name} but its config has {} diff IDs",
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
            let (name, file) = spool.resolve(path, DOCKER_MANIFEST_FILE)?;
            check_uncompressed_layer(file, name, diff_id)?;
            layers.push(PreparedLayer {
                name: name.to_string(),
                file: file.clone(),
                diff_id: diff_id.clone(),
                media_type: MEDIA_TYPE_OCI_LAYER.to_string(),
                blob: LayerBlob::Uncompressed,
            });
        }
        let mut tags = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let reference = Reference::parse(&tag)?;
            if reference.digest().is_some() {
                return Err(StoreError::InvalidImage(format!(
                    "{DOCKER_MANIFEST_FILE}: invalid tag {tag:?}: a digest is not a tag"
                )));
            }
            if !tags.contains(&reference) {
                tags.push(reference);
            }
        }
        merge(
            &mut out,
            PreparedImage {
                id: config_file.digest.clone(),
                config: config_file.clone(),
                manifest: None,
                layers,
                tags,
            },
        );
    }
    Ok(out)
}

/// An OCI image layout: `index.json` points at manifests (maybe through nested indexes) by digest.
fn prepare_oci(spool: &Spool) -> Result<Vec<PreparedImage>, StoreError> {
    let (index, _): (Index, _) = spool.json(OCI_INDEX_FILE, OCI_INDEX_FILE)?;
    let mut out = Vec::new();
    for descriptor in &index.manifests {
        let tags = tags_from_annotations(&descriptor.annotations)?;
        let (manifest_descriptor, manifest_bytes, manifest) =
            resolve_manifest(spool, descriptor, OCI_INDEX_FILE, 0)?;
        let referrer = format!("manifest {}", manifest_descriptor.digest);
        if !matches!(
            manifest.config.media_type.as_str(),
            MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG
        ) {
            return Err(StoreError::InvalidImage(format!(
                "{referrer} is not a container image (its config is {})",
                manifest.config.media_type
            )));
        }
        let config_file = spool.blob(&manifest.config, &referrer)?;
        let config = parse_config(config_file, &blob_path(&manifest.config.digest))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::InvalidImage(format!(
                "{referrer} has {} layers but its config has {} diff IDs",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            if !is_layer_media_type(&layer.media_type) {
                return Err(StoreError::InvalidImage(format!(
                    "{referrer}: layer {} has unsupported media type {}",
                    layer.digest, layer.media_type
                )));
            }
            let file = spool.blob(layer, &referrer)?;
            check_uncompressed_layer(file, &blob_path(&layer.digest), diff_id)?;
            layers.push(PreparedLayer {
                name: blob_path(&layer.digest),
                file: file.clone(),
                diff_id: diff_id.clone(),
                media_type: layer.media_type.clone(),
                blob: LayerBlob::AsIs(layer.digest.clone()),
            });
        }
        merge(
            &mut out,
            PreparedImage {
                id: manifest.config.digest.clone(),
                config: config_file.clone(),
                manifest: Some((manifest_descriptor.digest.clone(), manifest_bytes)),
                layers,
                tags,
            },
        );
    }
    Ok(out)
}

/// The tags an `index.json` entry names (see [`Store::load_images`]).
fn tags_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<Reference>, StoreError> {
    let name = match (
        annotations.get(ANNOTATION_IMAGE_NAME),
        annotations.get(ANNOTATION_REF_NAME),
    ) {
        (Some(full), _) => full,
        // A bare tag (`latest`) names no repository; a name with one (`bb:latest`, `repo/x`) does.
        (None, Some(reference)) if reference.contains([':', '/', '@']) => reference,
        _ => return Ok(Vec::new()),
    };
    let reference = Reference::parse(name)?;
    // containerd names images pulled by digest `repo@sha256:…`: that is not a tag.
    Ok(if reference.tag().is_some() {
        vec![reference]
    } else {
        Vec::new()
    })
}

/// Follows a descriptor through image indexes to one image manifest for this platform.
fn resolve_manifest(
    spool: &Spool,
    descriptor: &Descriptor,
    referrer: &str,
    depth: usize,
) -> Result<(Descriptor, Vec<u8>, Manifest), StoreError> {
    if depth >= MAX_DEPTH {
        return Err(StoreError::InvalidImage(format!(
            "image indexes nest too deep at {}",
            descriptor.digest
        )));
    }
    let file = spool.blob(descriptor, referrer)?;
    let name = blob_path(&descriptor.digest);
    let bytes = read_small(file, &name)?;
    match descriptor.media_type.as_str() {
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::InvalidImage(format!("manifest {name}: {e}")))?;
            Ok((descriptor.clone(), bytes, manifest))
        }
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST => {
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::InvalidImage(format!("image index {name}: {e}")))?;
            let chosen = pick_platform(spool, &index.manifests).ok_or_else(|| {
                let (os, arch) = host_platform();
                StoreError::InvalidImage(format!(
                    "image index {} has no manifest for {os}/{arch} in the archive",
                    descriptor.digest
                ))
            })?;
            resolve_manifest(
                spool,
                chosen,
                &format!("image index {}", descriptor.digest),
                depth + 1,
            )
        }
        other => Err(StoreError::InvalidImage(format!(
            "{referrer} points at {} of unsupported media type {other}",
            descriptor.digest
        ))),
    }
}

/// The entry of an index for this host whose blob the archive holds: one for the host's OS and
/// architecture, else one without platform. Attestations (BuildKit's `unknown/unknown`) never match.
fn pick_platform<'a>(spool: &Spool, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
    let (os, arch) = host_platform();
    let present = |d: &&Descriptor| spool.files.contains_key(&blob_path(&d.digest));
    let exact = manifests.iter().filter(present).find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.get("os").and_then(|v| v.as_str()) == Some(os)
                && p.get("architecture").and_then(|v| v.as_str()) == Some(arch)
        })
    });
    exact.or_else(|| {
        manifests.iter().filter(present).find(|d| {
            d.platform.is_none() && !d.annotations.contains_key("vnd.docker.reference.type")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_normalised_or_refused() {
        assert_eq!(
            normalize_entry_name(b"manifest.json", false).unwrap(),
            "manifest.json"
        );
        assert_eq!(
            normalize_entry_name(b"./blobs/sha256/ab", false).unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(normalize_entry_name(b"blobs/", true).unwrap(), "blobs");
        assert_eq!(normalize_entry_name(b"./", true).unwrap(), "");
        for bad in [
            &b"../evil"[..],
            b"a/../../evil",
            b"/etc/passwd",
            b"a//b",
            b"a/./b",
            b"",
            b"\xff",
            b"blobs/",
        ] {
            assert!(normalize_entry_name(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_resolve_by_name_inside_the_archive_only() {
        assert_eq!(join_inside("abc", "../def.tar").as_deref(), Some("def.tar"));
        assert_eq!(join_inside("a/b", "./c").as_deref(), Some("a/b/c"));
        assert_eq!(join_inside("abc", "../../etc/passwd"), None);
        assert_eq!(join_inside("abc", "/etc/passwd"), None);
        assert_eq!(join_inside("", ".."), None);
    }

    #[test]
    fn annotations_name_tags() {
        let tags = |pairs: &[(&str, &str)]| {
            tags_from_annotations(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .map(|t| t.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            tags(&[
                (ANNOTATION_IMAGE_NAME, "docker.io/library/bb:1"),
                (ANNOTATION_REF_NAME, "1")
            ])
            .unwrap(),
            vec!["docker.io/library/bb:1"]
        );
        assert_eq!(
            tags(&[(ANNOTATION_REF_NAME, "bb:oci")]).unwrap(),
            vec!["docker.io/library/bb:oci"]
        );
        assert!(tags(&[(ANNOTATION_REF_NAME, "latest")]).unwrap().is_empty());
        assert!(tags(&[]).unwrap().is_empty());
        let by_digest = format!("docker.io/library/bb@sha256:{}", "a".repeat(64));
        assert!(tags(&[(ANNOTATION_IMAGE_NAME, by_digest.as_str())])
            .unwrap()
            .is_empty());
        assert!(tags(&[(ANNOTATION_IMAGE_NAME, "Bad Name")]).is_err());
    }
}
