//! One connection to a registry: the distribution client configured for the host (plain HTTP for loopback
//! as Docker allows, HTTPS otherwise), the credentials to use, and the mapping of Berth's references.

use std::net::IpAddr;
use std::time::Duration;

use berth_store::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use crate::credentials::Credentials;
use crate::error::RegistryError;

/// The `User-Agent` Berth sends.
const USER_AGENT: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));
/// How long establishing a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a response may stay silent before the transfer is abandoned.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(120);
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
}

impl Registry {
    /// A client for `host`, authenticated with `credentials` when given.
    pub async fn connect(
        host: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, RegistryError> {
        let transport = crate::tls::transport(host)?;
        let protocol = if transport.https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        };
        let config = ClientConfig {
            protocol,
            extra_root_certificates: transport
                .roots
                .into_iter()
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
                .collect(),
            // One POST and one PUT per blob, streamed: what every registry accepts and the fewest round trips.
            use_monolithic_push: true,
            // Berth chooses the platform itself (see `Platform::choose`).
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| {
            RegistryError::from_oci(e, host, crate::error::Subject::Repository(host))
        })?;
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let registry = Self {
            client,
            auth,
            host: host.to_string(),
        };
        let probe = oci_client::Reference::with_tag(
            host.to_string(),
            "library/probe".to_string(),
            "latest".to_string(),
        );
        registry
            .client
            .store_auth_if_needed(probe.resolve_registry(), &registry.auth)
            .await;
        Ok(registry)
    }

    /// The distribution client's reference for a Berth reference.
    pub fn reference(&self, reference: &Reference) -> oci_client::Reference {
        match (reference.tag(), reference.digest()) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                reference.domain().to_string(),
                reference.path().to_string(),
                tag.to_string(),
                digest.to_string(),
            ),
            (None, Some(digest)) => oci_client::Reference::with_digest(
                reference.domain().to_string(),
                reference.path().to_string(),
                digest.to_string(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                reference.domain().to_string(),
                reference.path().to_string(),
                tag.unwrap_or(berth_store::reference::DEFAULT_TAG)
                    .to_string(),
            ),
        }
    }
}

/// Whether Docker talks plain HTTP to `host` without being told: `localhost` and the loopback
/// addresses (`127.0.0.0/8`, `::1`), with or without a port.
pub fn plain_http(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:5000
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_plain_http() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(plain_http(host), "{host}");
        }
        for host in [
            "docker.io",
            "registry.example:5000",
            "10.0.0.1:5000",
            "128.0.0.1",
        ] {
            assert!(!plain_http(host), "{host}");
        }
    }
}
