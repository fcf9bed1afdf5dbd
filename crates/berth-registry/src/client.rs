//! One connection to a registry: the distribution client configured for the host (plain HTTP for loopback
//! as Docker allows, HTTPS otherwise), the credentials to use, and the mapping of Berth's references.

use std::time::Duration;

use berth_store::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use crate::config::RegistryConfig;
use crate::credentials::Credentials;
use crate::error::RegistryError;
use crate::tls::Transport;

/// The distribution client for `host` over `transport`.
fn distribution_client(
    host: &str,
    transport: &Transport,
    read_timeout: Duration,
    monolithic_push: bool,
) -> Result<oci_client::Client, RegistryError> {
    let config = ClientConfig {
        protocol: if transport.https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        accept_invalid_certificates: !transport.verify,
        extra_root_certificates: transport
            .roots
            .iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data: data.clone(),
            })
            .collect(),
        client_identity_pem: transport.identity.clone(),
        use_monolithic_push: monolithic_push,
        // Berth chooses the platform itself (see `Platform::choose`).
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(read_timeout),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config)
        .map_err(|e| RegistryError::from_oci(e, host, crate::error::Subject::Repository(host)))
}

/// The `User-Agent` Berth sends.
pub(crate) const USER_AGENT: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));
/// How long establishing a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Manifests and configs larger than this are refused rather than held in memory.
pub(crate) const MAX_DOCUMENT: u64 = 16 << 20;

/// A registry and the means to talk to it.
pub(crate) struct Registry {
    /// The distribution client.
    pub client: oci_client::Client,
    /// The credentials (or anonymous).
    pub auth: RegistryAuth,
    /// The host as the reference names it (`docker.io`, `127.0.0.1:5000`), for messages.
    pub host: String,
    /// How it is reached.
    transport: Transport,
    /// How long it may stay silent mid-transfer.
    read_timeout: Duration,
    /// The client for chunked uploads, made when first needed (see [`Registry::chunked_client`]).
    chunked: tokio::sync::OnceCell<oci_client::Client>,
}

impl Registry {
    /// A client for `host`, authenticated with `credentials` when given, reached as the settings say
    /// (see [`crate::tls::transport`]).
    pub async fn connect(
        host: &str,
        credentials: Option<Credentials>,
        config: &RegistryConfig,
    ) -> Result<Self, RegistryError> {
        let transport = crate::tls::transport(host, config).await?;
        Self::with_transport(host, transport, credentials, config).await
    }

    /// A client for `host` reached through `transport`.
    pub async fn with_transport(
        host: &str,
        transport: Transport,
        credentials: Option<Credentials>,
        config: &RegistryConfig,
    ) -> Result<Self, RegistryError> {
        let read_timeout = config.read_timeout();
        // One POST and one PUT per blob, streamed: what every registry accepts and the fewest round trips.
        let client = distribution_client(host, &transport, read_timeout, true)?;
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let registry = Self {
            client,
            auth,
            host: host.to_string(),
            transport,
            read_timeout,
            chunked: tokio::sync::OnceCell::new(),
        };
        registry.authenticate(&registry.client).await;
        Ok(registry)
    }

    /// A second client for this registry that uploads blobs as a series of PATCH requests, for registries
    /// (or proxies in front of them) that refuse a whole blob in one request; made once.
    pub async fn chunked_client(&self) -> Result<&oci_client::Client, RegistryError> {
        self.chunked
            .get_or_try_init(|| async {
                let client =
                    distribution_client(&self.host, &self.transport, self.read_timeout, false)?;
                self.authenticate(&client).await;
                Ok(client)
            })
            .await
    }

    /// Whether this registry refused a whole blob already, so the others go in chunks at once.
    pub fn wants_chunks(&self) -> bool {
        self.chunked.initialized()
    }

    async fn authenticate(&self, client: &oci_client::Client) {
        let probe = oci_client::Reference::with_tag(
            self.host.clone(),
            "library/probe".to_string(),
            "latest".to_string(),
        );
        client
            .store_auth_if_needed(probe.resolve_registry(), &self.auth)
            .await;
    }

    /// The distribution client's reference for a Berth reference, on this registry (which is not the
    /// reference's own for a mirror).
    pub fn reference(&self, reference: &Reference) -> oci_client::Reference {
        match (reference.tag(), reference.digest()) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                self.host.clone(),
                reference.path().to_string(),
                tag.to_string(),
                digest.to_string(),
            ),
            (None, Some(digest)) => oci_client::Reference::with_digest(
                self.host.clone(),
                reference.path().to_string(),
                digest.to_string(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                self.host.clone(),
                reference.path().to_string(),
                tag.unwrap_or(berth_store::reference::DEFAULT_TAG)
                    .to_string(),
            ),
        }
    }
}
