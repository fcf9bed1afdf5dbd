//! Looking at a registry without pulling: `manifest inspect` and `search`.

use berth_store::image::{
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};
use berth_store::{Digest, Reference};
use serde::Deserialize;

use crate::client::{Registry, MAX_DOCUMENT};
use crate::config::RegistryConfig;
use crate::credentials::CredentialStore;
use crate::error::{from_reqwest, RegistryError, Subject};

/// A manifest or image index as the registry serves it.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    /// The document, byte for byte.
    pub bytes: Vec<u8>,
    /// Its digest (verified against the bytes).
    pub digest: Digest,
}

/// Fetches the manifest (or image index) `reference` names, without pulling anything.
pub fn inspect_manifest(
    reference: &Reference,
    credentials: &CredentialStore,
    config: &RegistryConfig,
) -> Result<RemoteManifest, RegistryError> {
    let credentials = credentials.get(reference.domain())?;
    crate::run(async {
        let registry = Registry::connect(reference.domain(), credentials, config).await?;
        let familiar = reference.familiar();
        let (bytes, digest) = registry
            .client
            .pull_manifest_raw(
                &registry.reference(reference),
                &registry.auth,
                &[
                    MEDIA_TYPE_OCI_INDEX,
                    MEDIA_TYPE_DOCKER_LIST,
                    MEDIA_TYPE_OCI_MANIFEST,
                    MEDIA_TYPE_DOCKER_MANIFEST,
                ],
            )
            .await
            .map_err(|e| {
                RegistryError::from_oci(e, &registry.host, Subject::Manifest(&familiar))
            })?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(RegistryError::InvalidImage {
                what: format!("manifest {familiar}"),
                reason: format!("{} bytes is too large", bytes.len()),
            });
        }
        let digest = Digest::parse(&digest).map_err(|_| RegistryError::Registry {
            host: registry.host.clone(),
            message: format!("manifest {familiar} has an unsupported digest {digest}"),
        })?;
        Ok(RemoteManifest {
            bytes: bytes.to_vec(),
            digest,
        })
    })?
}

/// One repository found by [`search`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResult {
    /// The repository as it is pulled (`127.0.0.1:5000/team/app`, or `nginx` on Docker Hub).
    pub name: String,
    /// Its description, when the registry keeps one.
    pub description: String,
    /// Docker Hub stars (0 elsewhere).
    pub stars: u64,
    /// Whether Docker Hub marks it as an official image.
    pub official: bool,
}

#[derive(Deserialize)]
struct V1SearchResults {
    #[serde(default)]
    results: Vec<V1SearchResult>,
}

#[derive(Deserialize)]
struct V1SearchResult {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    star_count: u64,
    #[serde(default)]
    is_official: bool,
}

/// Searches `host` for repositories whose name contains `term`, at most `limit` of them: Docker Hub with
/// its search API, other registries by listing their catalog (`/v2/_catalog`, which private registries
/// such as `registry:2` serve to clients allowed to list it).
pub fn search(
    host: &str,
    term: &str,
    limit: usize,
    credentials: &CredentialStore,
    config: &RegistryConfig,
) -> Result<Vec<SearchResult>, RegistryError> {
    let credentials = credentials.get(host)?;
    crate::run(async {
        if host == berth_store::reference::DEFAULT_DOMAIN {
            return search_docker_hub(term, limit).await;
        }
        let registry = Registry::connect(host, credentials, config).await?;
        // The catalog endpoint is per registry; the reference only names the host.
        let probe = oci_client::Reference::with_tag(
            host.to_string(),
            "catalog".to_string(),
            "latest".to_string(),
        );
        const PAGE: usize = 1000;
        let mut found = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = registry
                .client
                .catalog(&probe, &registry.auth, Some(PAGE), last.as_deref())
                .await
                .map_err(|e| RegistryError::from_oci(e, host, Subject::Repository("_catalog")))?;
            let count = page.repositories.len();
            last = page.repositories.last().cloned();
            for repository in page.repositories {
                if repository.contains(term) && found.len() < limit {
                    found.push(SearchResult {
                        name: format!("{host}/{repository}"),
                        description: String::new(),
                        stars: 0,
                        official: false,
                    });
                }
            }
            if count < PAGE || found.len() >= limit || last.is_none() {
                break;
            }
        }
        Ok(found)
    })?
}

async fn search_docker_hub(term: &str, limit: usize) -> Result<Vec<SearchResult>, RegistryError> {
    let host = "index.docker.io";
    let client = reqwest::Client::builder()
        .connect_timeout(crate::client::CONNECT_TIMEOUT)
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| from_reqwest(&e, host))?;
    let url = reqwest::Url::parse_with_params(
        "https://index.docker.io/v1/search",
        &[("q", term), ("n", &limit.to_string())],
    )
    .map_err(|e| RegistryError::InvalidArgument(format!("search term {term:?}: {e}")))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| from_reqwest(&e, host))?
        .error_for_status()
        .map_err(|e| from_reqwest(&e, host))?;
    let body = response.bytes().await.map_err(|e| from_reqwest(&e, host))?;
    let results: V1SearchResults =
        serde_json::from_slice(&body).map_err(|e| RegistryError::Registry {
            host: host.to_string(),
            message: format!("search answer is not the expected JSON: {e}"),
        })?;
    Ok(results
        .results
        .into_iter()
        .take(limit)
        .map(|r| SearchResult {
            name: r.name,
            description: r.description.unwrap_or_default(),
            stars: r.star_count,
            official: r.is_official,
        })
        .collect())
}

/// Downloads `url` (http or https, system CAs, redirects followed) into `out`, streaming: the
/// builder's `ADD https://…`. A non-2xx answer is an error naming the status.
pub fn download(url: &str, out: &mut dyn std::io::Write) -> Result<u64, RegistryError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| RegistryError::InvalidArgument(format!("invalid URL {url:?}: {e}")))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    crate::run(async {
        let client = reqwest::Client::builder()
            .connect_timeout(crate::client::CONNECT_TIMEOUT)
            .build()
            .map_err(|e| from_reqwest(&e, &host))?;
        let mut response = client
            .get(parsed)
            .send()
            .await
            .map_err(|e| from_reqwest(&e, &host))?
            .error_for_status()
            .map_err(|e| from_reqwest(&e, &host))?;
        let mut written = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| from_reqwest(&e, &host))?
        {
            out.write_all(&chunk).map_err(|e| RegistryError::Registry {
                host: host.clone(),
                message: format!("writing the download: {e}"),
            })?;
            written += chunk.len() as u64;
        }
        Ok(written)
    })?
}
