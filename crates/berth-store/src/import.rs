//! `import`: a root filesystem tarball becomes a one-layer image with the config the caller made.

use std::collections::BTreeMap;
use std::io::Read;

use crate::digest::Digest;
use crate::error::StoreError;
use crate::image::{
    Descriptor, History, ImageConfig, Manifest, RootFs, RunConfig, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::images::{ImageRecord, LayerRecord, NewImage};
use crate::reference::Reference;
use crate::Store;

impl Store {
    /// Imports a rootfs tarball (plain, gzip, zstd, bzip2 or xz) as a one-layer image with `run_config` (the
    /// caller's `--change` instructions applied), tagged `tags`. As `docker import` does, the image's
    /// comment (in its config and its one history entry, which has no `created_by`) is `message`, by
    /// default `Imported from -`: Docker's client streams a file as it does stdin.
    pub fn import_rootfs(
        &self,
        reader: impl Read,
        run_config: RunConfig,
        message: Option<&str>,
        platform: Option<&crate::Platform>,
        tags: &[Reference],
    ) -> Result<ImageRecord, StoreError> {
        // Store the layer uncompressed: its digest is then also its diff ID, and `save` can copy it as is.
        let (_, stream) = berth_archive::decompress(reader)?;
        let (blob, _) = self.blobs().put(stream, None)?;
        let layer = self.add_layer(&blob, MEDIA_TYPE_OCI_LAYER, None)?;
        let comment = message.unwrap_or("Imported from -").to_string();
        let history = History {
            created: Some(crate::now_rfc3339()),
            comment: Some(comment.clone()),
            ..History::default()
        };
        let extra = BTreeMap::from([("comment".to_string(), serde_json::Value::String(comment))]);
        self.create_image_with(
            run_config,
            vec![layer],
            vec![history],
            None,
            platform,
            tags,
            extra,
        )
    }

    /// Writes the config and manifest of a new image made of `layers` and records it.
    pub fn create_image(
        &self,
        run_config: RunConfig,
        layers: Vec<LayerRecord>,
        history: Vec<History>,
        author: Option<String>,
        platform: Option<&crate::Platform>,
        tags: &[Reference],
    ) -> Result<ImageRecord, StoreError> {
        self.create_image_with(
            run_config,
            layers,
            history,
            author,
            platform,
            tags,
            BTreeMap::new(),
        )
    }

    /// [`Store::create_image`] with top-level config fields Berth does not model (`comment`).
    #[allow(clippy::too_many_arguments)]
    fn create_image_with(
        &self,
        run_config: RunConfig,
        layers: Vec<LayerRecord>,
        history: Vec<History>,
        author: Option<String>,
        platform: Option<&crate::Platform>,
        tags: &[Reference],
        extra: BTreeMap<String, serde_json::Value>,
    ) -> Result<ImageRecord, StoreError> {
        let platform = platform.cloned().unwrap_or_else(crate::Platform::host);
        let config = ImageConfig {
            created: Some(crate::now_rfc3339()),
            author,
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            config: run_config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history,
            extra,
        };
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = self.blobs().put_bytes(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: MEDIA_TYPE_OCI_CONFIG.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.blob_digest.clone(),
                    size: l.blob_size,
                    annotations: BTreeMap::new(),
                    platform: None,
                })
                .collect(),
            annotations: BTreeMap::new(),
        };
        let manifest_digest: Digest = self.blobs().put_bytes(&serde_json::to_vec(&manifest)?)?;
        self.add_image(
            &NewImage {
                manifest_digest,
                config_digest,
                layers,
            },
            tags,
        )
    }
}
