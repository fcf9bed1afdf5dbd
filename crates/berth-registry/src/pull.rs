//! `pull`: an image from a registry into the store.
//!
//! The manifest is fetched (following an image index to the wanted platform), then the config, then the
//! layers the store does not hold yet, several at once. Every blob is streamed into the store's blob writer
//! with the digest the manifest announces, so content that does not match is discarded before it enters
//! the store; each layer is unpacked (and its diff ID checked against the config) as soon as it is there,
//! while the others still download. The image and its tag are recorded last: a pull that fails adds no
//! image (blobs already stored stay unreferenced until the next garbage collection, so a retried pull does
//! not download them again, and a blob cut off midway is kept under `ingest/` so the next pull, in any
//! process, asks only for the rest). Pulls of Docker Hub images try the configured mirrors first.

use std::io::Write;
use std::sync::Arc;

use berth_store::blobs::BlobWriter;
use berth_store::digest::DigestReader;
use berth_store::image::{
    is_layer_media_type, Descriptor, ImageConfig, Manifest, MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use berth_store::{BlobStore, Digest, LayerRecord, NewImage, Reference, Store, StoreError};
use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use serde::Deserialize;

use crate::client::{Registry, MAX_DOCUMENT};
use crate::config::RegistryConfig;
use crate::credentials::CredentialStore;
use crate::error::{RegistryError, Subject};
use berth_store::Platform;

/// The manifest media types Berth asks for, most wanted first.
const ACCEPTED_MANIFESTS: &[&str] = &[
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST,
];

/// Docker's default number of parallel layer downloads.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to choose from an image index; this host's when `None`. When given, a single-platform
    /// image of another platform is refused, as Docker does.
    pub platform: Option<Platform>,
    /// Where credentials are looked up.
    pub credentials: CredentialStore,
    /// How many layers download at once.
    pub concurrent_downloads: usize,
    /// The registry settings (insecure registries, mirrors, timeouts).
    pub config: RegistryConfig,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: None,
            credentials: CredentialStore::from_env(),
            concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
            config: RegistryConfig::default(),
        }
    }
}

/// What a pull reports as it goes, in the order Docker prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum PullEvent {
    /// The manifest is resolved: Docker's `latest: Pulling from library/busybox`.
    Resolved {
        /// The tag, or the digest for a pull by digest.
        tag_or_digest: String,
        /// The repository path inside the registry (`library/busybox`), as Docker prints it.
        repository: String,
    },
    /// A layer whose blob the store already holds (`Already exists`).
    LayerExists(Digest),
    /// A layer that will be downloaded (`Pulling fs layer`).
    LayerQueued(Digest),
    /// Bytes of a layer received so far (for progress bars; sent every few hundred KiB).
    LayerProgress {
        /// The layer.
        digest: Digest,
        /// Bytes received.
        received: u64,
        /// The layer's size.
        total: u64,
    },
    /// A layer downloaded and verified against its digest (`Download complete`).
    LayerDownloaded(Digest),
    /// A layer being unpacked (`Extracting`).
    LayerExtracting(Digest),
    /// A layer unpacked and ready (`Pull complete`).
    LayerComplete(Digest),
}

/// The outcome of a pull.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference pulled.
    pub reference: Reference,
    /// The image ID (config digest).
    pub id: Digest,
    /// The digest the registry knows the reference by (the index's, for a multi-platform image).
    pub digest: Digest,
    /// True when the reference already named this very image here (Docker's `Image is up to date`).
    pub up_to_date: bool,
}

/// An image index or manifest list.
#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// Pulls `reference` into `store`, reporting progress to `on_event`. See the module documentation.
pub fn pull(
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
    on_event: &mut dyn FnMut(PullEvent),
) -> Result<PulledImage, RegistryError> {
    let credentials = options.credentials.get(reference.domain())?;
    // Shared for the whole pull: garbage collection cannot remove a blob between its download and the
    // image record that references it.
    let _lock = store.lock(false)?;
    crate::run(async {
        // Docker Hub's mirrors first, in order; any failure moves on to the next, then to Docker Hub.
        for mirror in options.config.mirrors_for(reference.domain()) {
            let transport = crate::tls::mirror_transport(mirror, &options.config)?;
            let credentials = options.credentials.get(&mirror.host)?;
            let Ok(registry) =
                Registry::with_transport(&mirror.host, transport, credentials, &options.config)
                    .await
            else {
                continue;
            };
            match pull_one(store, &registry, reference, options, on_event).await {
                Err(RegistryError::Store(e)) => return Err(e.into()),
                Err(_) => continue,
                pulled => return pulled,
            }
        }
        let registry = Registry::connect(reference.domain(), credentials, &options.config).await?;
        pull_one(store, &registry, reference, options, on_event).await
    })?
}

/// Pulls every tag of `repository` (`pull -a`), in the registry's order.
pub fn pull_all_tags(
    store: &Store,
    repository: &Reference,
    options: &PullOptions,
    on_event: &mut dyn FnMut(PullEvent),
) -> Result<Vec<PulledImage>, RegistryError> {
    if repository.tag().is_some() || repository.digest().is_some() {
        return Err(RegistryError::InvalidArgument(
            "tag can't be used with --all-tags/-a".to_string(),
        ));
    }
    let credentials = options.credentials.get(repository.domain())?;
    let _lock = store.lock(false)?;
    crate::run(async {
        let registry = Registry::connect(repository.domain(), credentials, &options.config).await?;
        let familiar = repository.familiar_repository();
        let tags = registry
            .client
            .list_tags(&registry.reference(repository), &registry.auth, None, None)
            .await
            .map_err(|e| {
                RegistryError::from_oci(e, &registry.host, Subject::Repository(&familiar))
            })?;
        let mut pulled = Vec::new();
        for tag in tags.tags {
            let reference = repository.with_tag(&tag)?;
            pulled.push(pull_one(store, &registry, &reference, options, on_event).await?);
        }
        Ok(pulled)
    })?
}

async fn pull_one(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    options: &PullOptions,
    on_event: &mut dyn FnMut(PullEvent),
) -> Result<PulledImage, RegistryError> {
    let host = registry.host.as_str();
    let familiar = reference.familiar();
    let oref = registry.reference(reference);
    let (top_bytes, top_digest) =
        fetch_manifest(registry, &oref, ACCEPTED_MANIFESTS, &familiar).await?;
    let top_digest = Digest::parse(&top_digest).map_err(|_| RegistryError::Registry {
        host: host.to_string(),
        message: format!("manifest {familiar} has an unsupported digest {top_digest}"),
    })?;
    check_document_size(top_bytes.len() as u64, &familiar)?;
    let wanted = options.platform.clone().unwrap_or_else(Platform::host);

    let (manifest_digest, manifest_bytes) = match document_kind(&top_bytes, &familiar)? {
        DocumentKind::Manifest => (top_digest.clone(), top_bytes.to_vec()),
        DocumentKind::Index => {
            let index: Index =
                serde_json::from_slice(&top_bytes).map_err(|e| RegistryError::InvalidImage {
                    what: format!("index {familiar}"),
                    reason: e.to_string(),
                })?;
            let chosen = wanted.choose(&index.manifests).ok_or_else(|| {
                RegistryError::NoMatchingPlatform {
                    wanted: wanted.to_string(),
                    available: Platform::list(&index.manifests),
                }
            })?;
            if !matches!(
                chosen.media_type.as_str(),
                MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST
            ) {
                return Err(RegistryError::UnsupportedMediaType {
                    media_type: chosen.media_type.clone(),
                    what: format!("the {wanted} entry of index {familiar}"),
                });
            }
            check_document_size(chosen.size, &familiar)?;
            let child = oref.clone_with_digest(chosen.digest.to_string());
            let what = format!("{}@{}", reference.familiar_repository(), chosen.digest);
            let (bytes, _) = fetch_manifest(
                registry,
                &child,
                &[MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST],
                &what,
            )
            .await?;
            if bytes.len() as u64 != chosen.size {
                return Err(RegistryError::InvalidImage {
                    what: format!("manifest {what}"),
                    reason: format!(
                        "it has {} bytes but the index says {}",
                        bytes.len(),
                        chosen.size
                    ),
                });
            }
            if document_kind(&bytes, &what)? != DocumentKind::Manifest {
                return Err(RegistryError::UnsupportedMediaType {
                    media_type: "nested image index".to_string(),
                    what,
                });
            }
            (chosen.digest.clone(), bytes.to_vec())
        }
    };
    let manifest = parse_manifest(&manifest_bytes, &familiar)?;

    // The config: small, verified by the blob writer like any blob.
    let config_digest = manifest.config.digest.clone();
    if !store.blobs().contains(&config_digest) {
        check_document_size(manifest.config.size, &familiar)?;
        download(
            &registry.client,
            &oref,
            store.blobs(),
            &manifest.config,
            host,
            &|_| {},
        )
        .await?;
    }
    let config_bytes = store.blobs().read(&config_digest)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::InvalidImage {
            what: format!("config {config_digest}"),
            reason: e.to_string(),
        })?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::InvalidImage {
            what: format!("manifest {familiar}"),
            reason: format!(
                "it lists {} layers but its config has {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    if let Some(asked) = &options.platform {
        let actual = Platform::of_config(&config);
        if !config.os.is_empty() && !asked.accepts(&actual) {
            return Err(RegistryError::PlatformMismatch {
                reference: familiar,
                wanted: asked.to_string(),
                actual: actual.to_string(),
            });
        }
    }

    on_event(PullEvent::Resolved {
        tag_or_digest: reference
            .tag()
            .map(str::to_string)
            .or_else(|| reference.digest().map(|d| d.to_string()))
            .unwrap_or_default(),
        repository: reference.path().to_string(),
    });

    // Layers: those whose blob is here are only unpacked (if need be); the others download in parallel
    // and are unpacked on this thread as each one arrives.
    let mut missing = Vec::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        if store.blobs().contains(&layer.digest) {
            on_event(PullEvent::LayerExists(layer.digest.clone()));
        } else {
            on_event(PullEvent::LayerQueued(layer.digest.clone()));
            missing.push(i);
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(
        options.concurrent_downloads.max(1),
    ));
    let mut downloads = tokio::task::JoinSet::new();
    for &i in &missing {
        let client = registry.client.clone();
        let oref = oref.clone();
        let blobs = store.blobs().clone();
        let layer = manifest.layers[i].clone();
        let host = registry.host.clone();
        let tx = tx.clone();
        let permits = permits.clone();
        downloads.spawn(async move {
            let report = |received| {
                let _ = tx.send(Message::Progress(i, received));
            };
            let result = match permits.acquire_owned().await {
                Ok(_permit) => download(&client, &oref, &blobs, &layer, &host, &report).await,
                Err(_) => Err(RegistryError::InvalidArgument("download cancelled".into())),
            };
            let _ = tx.send(Message::Done(i, result));
        });
    }
    drop(tx);

    let mut layers: Vec<Option<LayerRecord>> = vec![None; manifest.layers.len()];
    for (i, layer) in manifest.layers.iter().enumerate() {
        if !missing.contains(&i) {
            layers[i] = Some(store_layer(store, layer, &diff_ids[i])?);
        }
    }
    while let Some(message) = rx.recv().await {
        let (i, result) = match message {
            Message::Progress(i, received) => {
                on_event(PullEvent::LayerProgress {
                    digest: manifest.layers[i].digest.clone(),
                    received,
                    total: manifest.layers[i].size,
                });
                continue;
            }
            Message::Done(i, result) => (i, result),
        };
        result?;
        let layer = &manifest.layers[i];
        on_event(PullEvent::LayerDownloaded(layer.digest.clone()));
        on_event(PullEvent::LayerExtracting(layer.digest.clone()));
        layers[i] = Some(store_layer(store, layer, &diff_ids[i])?);
        on_event(PullEvent::LayerComplete(layer.digest.clone()));
    }
    while downloads.join_next().await.is_some() {}
    let layers: Vec<LayerRecord> = layers.into_iter().flatten().collect();
    if layers.len() != manifest.layers.len() {
        return Err(RegistryError::Registry {
            host: host.to_string(),
            message: format!("the download of {familiar} stopped before every layer arrived"),
        });
    }

    if !store.blobs().contains(&manifest_digest) {
        store
            .blobs()
            .put(manifest_bytes.as_slice(), Some(&manifest_digest))?;
    }
    let previous = store.image(&reference.to_string()).ok().map(|i| i.id);
    let tags: Vec<Reference> = if reference.tag().is_some() {
        vec![reference.clone()]
    } else {
        Vec::new()
    };
    let record = store.add_image(
        &NewImage {
            manifest_digest,
            config_digest,
            layers,
        },
        &tags,
    )?;
    store.add_repo_digest(&record.id, reference, &top_digest)?;
    Ok(PulledImage {
        reference: reference.clone(),
        up_to_date: previous.as_ref() == Some(&record.id),
        id: record.id,
        digest: top_digest,
    })
}

/// What a download task tells the pulling thread.
enum Message {
    /// Bytes of layer `i` received so far.
    Progress(usize, u64),
    /// Layer `i` is in the blob store, or failed.
    Done(usize, Result<(), RegistryError>),
}

/// Progress is reported after at least this many new bytes.
const PROGRESS_STEP: u64 = 256 << 10;

/// How many times a transfer is tried before its error is final.
pub(crate) const ATTEMPTS: u32 = 4;

/// The pause before retry number `attempt` (1-based): 250 ms, doubling.
pub(crate) fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250 << attempt.saturating_sub(1).min(4))
}

/// Whether an error of the distribution client is worth another try: the connection failed or broke, it
/// timed out, or the registry answered 5xx or 429. Refusals (4xx) and digest mismatches are final.
pub(crate) fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(e) => transient_reqwest(e),
        OciDistributionError::IoError(e) => transient_io(e),
        _ => false,
    }
}

/// Whether the registry could not be connected to at all.
fn unreachable(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(e) if e.is_connect())
}

fn transient_reqwest(e: &reqwest::Error) -> bool {
    match e.status() {
        Some(status) => status.is_server_error() || status.as_u16() == 429,
        None => e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode(),
    }
}

/// An error raised while reading a body: a transport error is transient, the verifying stream's
/// digest error is not.
fn transient_io(e: &std::io::Error) -> bool {
    match e.get_ref() {
        Some(inner) => inner
            .downcast_ref::<reqwest::Error>()
            .is_some_and(transient_reqwest),
        None => matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Fetches a manifest, retrying transient failures.
async fn fetch_manifest(
    registry: &Registry,
    oref: &oci_client::Reference,
    accepted: &[&str],
    what: &str,
) -> Result<(bytes::Bytes, String), RegistryError> {
    let mut attempt = 1;
    loop {
        match registry
            .client
            .pull_manifest_raw(oref, &registry.auth, accepted)
            .await
        {
            Ok(found) => return Ok(found),
            // A registry that cannot be reached at all is reported at once (a pull of a missing image
            // from `run` should not wait); one that answers 5xx or breaks off is tried again.
            Err(e) if attempt < ATTEMPTS && transient(&e) && !unreachable(&e) => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                let retried = transient(&e) && !unreachable(&e);
                let err = RegistryError::from_oci(e, &registry.host, Subject::Manifest(what));
                return Err(if retried {
                    err.after_attempts(ATTEMPTS)
                } else {
                    err
                });
            }
        }
    }
}

/// Streams one blob into the store, refusing it unless it has exactly the announced size and digest.
/// A transfer that breaks or a 5xx answer is retried, resuming where it stopped when the registry
/// honours ranges (else from the start); the digest is checked over the whole blob either way.
async fn download(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    blobs: &BlobStore,
    layer: &Descriptor,
    host: &str,
    report: &(dyn Fn(u64) + Sync),
) -> Result<(), RegistryError> {
    let digest = &layer.digest;
    // What an interrupted pull (of this or another process) received is kept and continued from.
    let mut writer = match blobs.resumable_writer(digest)? {
        Some(writer) if writer.len() <= layer.size => writer,
        Some(oversized) => {
            oversized.discard();
            blobs.writer()?
        }
        // Another pull is fetching this very blob: fetch a private copy rather than wait for it.
        None => blobs.writer()?,
    };
    let mut attempt = 1;
    loop {
        match fetch_into(client, oref, layer, host, &mut writer, report).await {
            Ok(()) => break,
            Err(Fetch::Transient(_)) if attempt < ATTEMPTS => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(Fetch::Transient(e)) => {
                return Err(
                    RegistryError::from_oci(e, host, Subject::Blob(digest.as_str()))
                        .after_attempts(ATTEMPTS),
                );
            }
            Err(Fetch::Final(e)) => {
                writer.discard();
                return Err(e);
            }
        }
    }
    if writer.len() != layer.size {
        writer.discard();
        return Err(size_mismatch(host, digest, layer.size, "fewer"));
    }
    writer
        .commit(Some(digest))
        .map_err(|e| mismatch(e, host, digest))?;
    Ok(())
}

/// Why one attempt at a blob failed.
enum Fetch {
    /// Worth another try.
    Transient(OciDistributionError),
    /// Final.
    Final(RegistryError),
}

/// One attempt: asks for the bytes `writer` does not have yet and appends them to it.
async fn fetch_into(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    layer: &Descriptor,
    host: &str,
    writer: &mut BlobWriter,
    report: &(dyn Fn(u64) + Sync),
) -> Result<(), Fetch> {
    let digest = &layer.digest;
    let classify = |e: OciDistributionError| {
        if transient(&e) {
            Fetch::Transient(e)
        } else {
            Fetch::Final(RegistryError::from_oci(
                e,
                host,
                Subject::Blob(digest.as_str()),
            ))
        }
    };
    if writer.len() == layer.size {
        // A kept download that was complete: the digest check at commit decides.
        return Ok(());
    }
    let response = client
        .pull_blob_stream_partial(oref, digest.as_str(), writer.len(), None)
        .await
        .map_err(classify)?;
    let mut stream = match response {
        BlobResponse::Partial(stream) => stream,
        BlobResponse::Full(stream) => {
            if !writer.is_empty() {
                // The registry ignored the range: start over.
                writer.restart().map_err(|e| Fetch::Final(e.into()))?;
            }
            stream
        }
    };
    let mut reported = writer.len();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| classify(OciDistributionError::IoError(e)))?;
        let received = writer.len() + chunk.len() as u64;
        if received > layer.size {
            return Err(Fetch::Final(size_mismatch(
                host, digest, layer.size, "more",
            )));
        }
        if let Err(source) = writer.write_all(&chunk) {
            return Err(Fetch::Final(RegistryError::Io {
                op: "write blob",
                path: writer.path().to_path_buf(),
                source,
            }));
        }
        if received - reported >= PROGRESS_STEP {
            report(received);
            reported = received;
        }
    }
    Ok(())
}

fn size_mismatch(host: &str, digest: &Digest, size: u64, how: &str) -> RegistryError {
    RegistryError::DigestMismatch {
        host: host.to_string(),
        what: format!("blob {digest}"),
        detail: format!("the registry sent {how} bytes than the {size} the manifest announces"),
    }
}

/// Turns the blob writer's digest mismatch into the registry's.
fn mismatch(e: StoreError, host: &str, digest: &Digest) -> RegistryError {
    match e {
        StoreError::DigestMismatch { expected, actual } => RegistryError::DigestMismatch {
            host: host.to_string(),
            what: format!("blob {digest}"),
            detail: format!("expected {expected}, got {actual}"),
        },
        other => other.into(),
    }
}

/// Unpacks a stored layer blob (unless the layer is there already) and checks its diff ID.
fn store_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<LayerRecord, RegistryError> {
    // The store reuses a layer it has by diff ID without reading the blob: when this blob is not the one
    // that layer came from, check that it really is that layer, so the image never names a blob that is not.
    if let Some(known) = store.layer(diff_id)? {
        if known.blob_digest != layer.digest && store.snapshots().has_layer(diff_id) {
            verify_diff_id(store.blobs(), &layer.digest, diff_id)?;
        }
    }
    store
        .add_layer(&layer.digest, &layer.media_type, Some(diff_id))
        .map_err(|e| match e {
            StoreError::DigestMismatch { expected, actual } => RegistryError::InvalidImage {
                what: format!("layer {}", layer.digest),
                reason: format!(
                    "its content does not match the config's diff ID: expected {expected}, got {actual}"
                ),
            },
            other => other.into(),
        })
}

fn verify_diff_id(blobs: &BlobStore, blob: &Digest, diff_id: &Digest) -> Result<(), RegistryError> {
    let bad = |reason: String| RegistryError::InvalidImage {
        what: format!("layer {blob}"),
        reason,
    };
    let file = blobs.open_blob(blob)?;
    let (_, tar) = berth_archive::decompress(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| bad(e.to_string()))?;
    let mut hashed = DigestReader::new(tar);
    std::io::copy(&mut hashed, &mut std::io::sink()).map_err(|e| bad(e.to_string()))?;
    let (actual, _) = hashed.finish();
    if &actual != diff_id {
        return Err(bad(format!(
            "its content does not match the config's diff ID: expected {diff_id}, got {actual}"
        )));
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
enum DocumentKind {
    Manifest,
    Index,
}

/// Whether a manifest document is an image manifest or an index, by its media type (or, for documents
/// without one, by its shape); anything else is refused.
fn document_kind(bytes: &[u8], what: &str) -> Result<DocumentKind, RegistryError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::InvalidImage {
            what: format!("manifest {what}"),
            reason: format!("not JSON: {e}"),
        })?;
    let media_type = value.get("mediaType").and_then(|m| m.as_str());
    match media_type {
        Some(MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST) => Ok(DocumentKind::Manifest),
        Some(MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST) => Ok(DocumentKind::Index),
        Some(other) => Err(RegistryError::UnsupportedMediaType {
            media_type: other.to_string(),
            what: format!("manifest {what}"),
        }),
        None if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) => {
            Err(RegistryError::UnsupportedMediaType {
                media_type: "Docker image manifest schema 1".to_string(),
                what: format!("manifest {what}"),
            })
        }
        None if value.get("manifests").is_some() => Ok(DocumentKind::Index),
        None if value.get("config").is_some() => Ok(DocumentKind::Manifest),
        None => Err(RegistryError::InvalidImage {
            what: format!("manifest {what}"),
            reason: "neither an image manifest nor an image index".to_string(),
        }),
    }
}

/// Parses an image manifest and checks it describes a container image Berth can unpack.
fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest, RegistryError> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::InvalidImage {
            what: format!("manifest {what}"),
            reason: e.to_string(),
        })?;
    if manifest.schema_version != 2 {
        return Err(RegistryError::InvalidImage {
            what: format!("manifest {what}"),
            reason: format!("schema version {} (2 expected)", manifest.schema_version),
        });
    }
    if !matches!(
        manifest.config.media_type.as_str(),
        MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG
    ) {
        return Err(RegistryError::UnsupportedMediaType {
            media_type: manifest.config.media_type.clone(),
            what: format!("the config of {what} (not a container image)"),
        });
    }
    for layer in &manifest.layers {
        if !is_layer_media_type(&layer.media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                media_type: layer.media_type.clone(),
                what: format!("layer {} of {what}", layer.digest),
            });
        }
    }
    Ok(manifest)
}

fn check_document_size(size: u64, what: &str) -> Result<(), RegistryError> {
    if size > MAX_DOCUMENT {
        return Err(RegistryError::InvalidImage {
            what: what.to_string(),
            reason: format!("a manifest or config of {size} bytes is too large"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_documents() {
        let kind = |s: &str| document_kind(s.as_bytes(), "x");
        assert_eq!(
            kind(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#).unwrap(),
            DocumentKind::Index
        );
        assert_eq!(
            kind(r#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            DocumentKind::Index
        );
        assert_eq!(
            kind(r#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            DocumentKind::Manifest
        );
        assert!(matches!(
            kind(r#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            kind(r#"{"mediaType":"application/vnd.example+json"}"#),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            kind("not json"),
            Err(RegistryError::InvalidImage { .. })
        ));
    }

    #[test]
    fn manifests_must_be_images() {
        let layer = |mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},"layers":[{{"mediaType":"{mt}","digest":"{d}","size":1}}]}}"#,
                d = Digest::of(b"x")
            )
        };
        assert!(parse_manifest(
            layer("application/vnd.oci.image.layer.v1.tar+gzip").as_bytes(),
            "x"
        )
        .is_ok());
        assert!(matches!(
            parse_manifest(layer("application/vnd.example.blob").as_bytes(), "x"),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
    }
}
