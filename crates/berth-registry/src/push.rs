//! `push`: an image of the store to a registry.
//!
//! The image's manifest is pushed exactly as stored (so its digest is the one `images --digests` shows),
//! with the blobs it names as they are in the store — compressed or, for images imported or committed
//! here, plain tars with the media type recorded for them. Blobs the registry already has are skipped (one
//! HEAD each); a blob that another repository of the same registry got from this store (by a pull or a
//! push) is mounted from there without sending it (Docker's cross-repository mount); the others are
//! streamed from disk, several at once, each in one monolithic upload — or, when the registry or a proxy
//! in front of it refuses that (413, 405, 411, 501), as a series of PATCH requests of 512 KiB; the
//! manifest goes last, once every blob it names is there.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use berth_store::image::{
    Manifest, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST,
};
use berth_store::{Digest, Reference, Store};
use futures_util::StreamExt;

use oci_client::errors::OciDistributionError;

use crate::client::Registry;
use crate::config::RegistryConfig;
use crate::credentials::CredentialStore;
use crate::error::{RegistryError, Subject};
use crate::pull::{backoff, transient, ATTEMPTS};

/// Docker's default number of parallel uploads.
pub const DEFAULT_CONCURRENT_UPLOADS: usize = 5;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Where credentials are looked up.
    pub credentials: CredentialStore,
    /// How many blobs upload at once.
    pub concurrent_uploads: usize,
    /// The registry settings (insecure registries, timeouts).
    pub config: RegistryConfig,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            credentials: CredentialStore::from_env(),
            concurrent_uploads: DEFAULT_CONCURRENT_UPLOADS,
            config: RegistryConfig::default(),
        }
    }
}

/// What a push reports as it goes, in the order Docker prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum PushEvent {
    /// The push starts: Docker's `The push refers to repository [host/repo]`.
    Started {
        /// The full repository name.
        repository: String,
    },
    /// A layer (named by its diff ID, as Docker shows it) the registry already has.
    LayerExists(Digest),
    /// A layer uploaded.
    LayerPushed(Digest),
    /// A layer the registry copied from another of its repositories (`Mounted from …`).
    LayerMounted {
        /// The layer's diff ID.
        layer: Digest,
        /// The repository path it was mounted from.
        from: String,
    },
}

/// How a blob got to the registry.
enum Sent {
    /// It was there already.
    Existed,
    /// Mounted from this repository path.
    Mounted(String),
    /// Uploaded.
    Pushed,
}

/// The outcome of a push.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The tag pushed.
    pub tag: String,
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest size in bytes.
    pub size: u64,
}

/// One blob to send.
struct Upload {
    digest: Digest,
    /// What to report it as: the diff ID for a layer, none for the config.
    shown_as: Option<Digest>,
    path: PathBuf,
    size: u64,
    /// Other repositories of the registry known to have the blob.
    mount_from: Vec<String>,
}

/// Pushes the local image tagged `reference` to its registry. See the module documentation.
pub fn push(
    store: &Store,
    reference: &Reference,
    options: &PushOptions,
    on_event: &mut dyn FnMut(PushEvent),
) -> Result<PushedImage, RegistryError> {
    let Some(tag) = reference.tag().map(str::to_string) else {
        return Err(RegistryError::InvalidArgument(format!(
            "cannot push {}: a digest reference is not a tag",
            reference.familiar()
        )));
    };
    let no_such_tag = || RegistryError::NoSuchLocalTag(reference.familiar());
    let image = store
        .image(&reference.to_string())
        .map_err(|_| no_such_tag())?;
    if !image.tags.contains(&reference.to_string()) {
        return Err(no_such_tag());
    }
    let manifest_bytes = store.blobs().read(&image.manifest_digest)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| RegistryError::InvalidImage {
            what: format!("manifest {} in the store", image.manifest_digest),
            reason: e.to_string(),
        })?;
    if manifest.config.digest != image.id {
        return Err(RegistryError::InvalidImage {
            what: format!("manifest {} in the store", image.manifest_digest),
            reason: "it names another config than the image's".to_string(),
        });
    }
    let content_type = manifest.media_type.clone().unwrap_or_else(|| {
        if manifest.config.media_type == MEDIA_TYPE_DOCKER_CONFIG {
            MEDIA_TYPE_DOCKER_MANIFEST.to_string()
        } else {
            MEDIA_TYPE_OCI_MANIFEST.to_string()
        }
    });
    let diff_ids = &image.config.rootfs.diff_ids;
    let mut uploads = Vec::with_capacity(manifest.layers.len() + 1);
    for (i, layer) in manifest.layers.iter().enumerate() {
        uploads.push(local_blob(
            store,
            &layer.digest,
            Some(diff_ids.get(i).unwrap_or(&layer.digest).clone()),
        )?);
    }
    uploads.push(local_blob(store, &manifest.config.digest, None)?);
    let sources = mount_sources(store, reference)?;
    for upload in &mut uploads {
        upload.mount_from = sources.get(&upload.digest).cloned().unwrap_or_default();
    }

    let credentials = options.credentials.get(reference.domain())?;
    crate::run(async {
        let registry = Registry::connect(reference.domain(), credentials, &options.config).await?;
        let oref = registry.reference(reference);
        let host = registry.host.as_str();
        on_event(PushEvent::Started {
            repository: reference.repository(),
        });
        let mut sends = futures_util::stream::iter(uploads.iter().map(|upload| {
            let registry = &registry;
            let oref = &oref;
            async move {
                send_blob(registry, oref, upload)
                    .await
                    .map(|sent| (upload, sent))
            }
        }))
        .buffer_unordered(options.concurrent_uploads.max(1));
        while let Some(result) = sends.next().await {
            let (upload, sent) = result?;
            if let Some(shown) = &upload.shown_as {
                on_event(match sent {
                    Sent::Pushed => PushEvent::LayerPushed(shown.clone()),
                    Sent::Existed => PushEvent::LayerExists(shown.clone()),
                    Sent::Mounted(from) => PushEvent::LayerMounted {
                        layer: shown.clone(),
                        from,
                    },
                });
            }
        }
        drop(sends);
        let content_type = http::HeaderValue::from_str(&content_type).map_err(|_| {
            RegistryError::InvalidImage {
                what: format!("manifest {}", image.manifest_digest),
                reason: format!("media type {content_type:?} is not a valid header"),
            }
        })?;
        let familiar = reference.familiar();
        registry
            .client
            .push_manifest_raw(&oref, manifest_bytes.clone(), content_type)
            .await
            .map_err(|e| RegistryError::from_oci(e, host, Subject::Manifest(&familiar)))?;
        Ok::<_, RegistryError>(())
    })??;
    store.add_repo_digest(&image.id, reference, &image.manifest_digest)?;
    Ok(PushedImage {
        tag,
        digest: image.manifest_digest,
        size: manifest_bytes.len() as u64,
    })
}

fn local_blob(
    store: &Store,
    digest: &Digest,
    shown_as: Option<Digest>,
) -> Result<Upload, RegistryError> {
    let path = store.blobs().path(digest);
    let size = std::fs::metadata(&path)
        .map_err(|source| RegistryError::Io {
            op: "read blob",
            path: path.clone(),
            source,
        })?
        .len();
    Ok(Upload {
        digest: digest.clone(),
        shown_as,
        path,
        size,
        mount_from: Vec::new(),
    })
}

/// For each blob, the other repositories of `target`'s registry that an image of this store was pulled
/// from or pushed to, and whose manifest names that blob: candidates for a cross-repository mount.
fn mount_sources(
    store: &Store,
    target: &Reference,
) -> Result<HashMap<Digest, Vec<String>>, RegistryError> {
    let mut sources: HashMap<Digest, Vec<String>> = HashMap::new();
    for image in store.images()? {
        let repositories: Vec<String> = image
            .repo_digests
            .iter()
            .filter_map(|d| Reference::parse(d).ok())
            .filter(|r| r.domain() == target.domain() && r.path() != target.path())
            .map(|r| r.path().to_string())
            .collect();
        if repositories.is_empty() {
            continue;
        }
        let Ok(manifest) = store.manifest(&image) else {
            continue;
        };
        for blob in manifest
            .layers
            .iter()
            .map(|l| &l.digest)
            .chain([&manifest.config.digest])
        {
            let entry = sources.entry(blob.clone()).or_default();
            for repository in &repositories {
                if !entry.contains(repository) {
                    entry.push(repository.clone());
                }
            }
        }
    }
    Ok(sources)
}

/// Gets one blob to the registry unless it has it: mounted from another repository when one is known to
/// have it and the registry agrees, else uploaded. Transient failures (broken connections, 5xx) are
/// retried, the upload starting over from the file.
async fn send_blob(
    registry: &Registry,
    oref: &oci_client::Reference,
    upload: &Upload,
) -> Result<Sent, RegistryError> {
    let mut attempt = 1;
    loop {
        match try_send_blob(registry, oref, upload).await {
            Ok(sent) => return Ok(sent),
            Err(Attempt::Transient(_)) if attempt < ATTEMPTS => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(Attempt::Transient(e)) => {
                return Err(RegistryError::from_oci(
                    e,
                    &registry.host,
                    Subject::Blob(upload.digest.as_str()),
                )
                .after_attempts(ATTEMPTS))
            }
            Err(Attempt::Final(e)) => return Err(e),
        }
    }
}

/// Why one attempt at sending a blob failed.
enum Attempt {
    /// Worth another try.
    Transient(OciDistributionError),
    /// Final.
    Final(RegistryError),
}

async fn try_send_blob(
    registry: &Registry,
    oref: &oci_client::Reference,
    upload: &Upload,
) -> Result<Sent, Attempt> {
    let host = registry.host.as_str();
    let digest = upload.digest.as_str();
    let classify = |e: OciDistributionError| {
        if transient(&e) {
            Attempt::Transient(e)
        } else {
            Attempt::Final(RegistryError::from_oci(e, host, Subject::Blob(digest)))
        }
    };
    if registry
        .client
        .blob_exists(oref, digest)
        .await
        .map_err(classify)?
    {
        return Ok(Sent::Existed);
    }
    for from in &upload.mount_from {
        let source = oci_client::Reference::with_digest(
            oref.registry().to_string(),
            from.clone(),
            digest.to_string(),
        );
        // A registry that cannot mount answers 202 with an upload session instead: then upload.
        if registry
            .client
            .mount_blob(oref, &source, digest)
            .await
            .is_ok()
        {
            return Ok(Sent::Mounted(from.clone()));
        }
    }
    // Once the registry refused a whole blob, the others go in chunks straight away.
    if !registry.wants_chunks() {
        let whole = registry
            .client
            .push_blob_stream(
                oref,
                blob_body(upload, WHOLE_BLOB_READ)?,
                digest,
                Some(upload.size),
            )
            .await;
        match whole {
            // The registry, or a proxy in front of it, refuses a whole blob in one request (nginx's
            // `client_max_body_size` answers 413): send it as a series of PATCH requests instead.
            Err(OciDistributionError::ServerError {
                code: 405 | 411 | 413 | 501,
                ..
            }) => {}
            other => {
                other.map_err(classify)?;
                return Ok(Sent::Pushed);
            }
        }
    }
    registry
        .chunked_client()
        .await
        .map_err(Attempt::Final)?
        .push_blob_stream(oref, blob_body(upload, UPLOAD_CHUNK)?, digest, None)
        .await
        .map_err(classify)?;
    Ok(Sent::Pushed)
}

/// The read size of a blob sent in one request.
const WHOLE_BLOB_READ: usize = 1 << 20;

/// The size of each PATCH of a chunked upload: under the 1 MiB request body limit nginx applies by default.
const UPLOAD_CHUNK: usize = 512 << 10;

/// A blob's bytes from disk, `piece` bytes at a time (the distribution client sends each piece of a
/// chunked upload as one PATCH).
fn blob_body(
    upload: &Upload,
    piece: usize,
) -> Result<
    impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static,
    Attempt,
> {
    let file = std::fs::File::open(&upload.path).map_err(|source| {
        Attempt::Final(RegistryError::Io {
            op: "open blob",
            path: upload.path.clone(),
            source,
        })
    })?;
    Ok(futures_util::stream::unfold(
        Some(file),
        move |file| async move {
            let mut file = file?;
            // Up to `piece` bytes (fewer only at the end: a chunk must not come out short because
            // one read did).
            let mut buf = Vec::with_capacity(piece);
            match (&mut file).take(piece as u64).read_to_end(&mut buf) {
                Ok(0) => None,
                Ok(_) => Some((Ok(bytes::Bytes::from(buf)), Some(file))),
                Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
            }
        },
    ))
}
