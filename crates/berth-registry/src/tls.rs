//! How to reach a registry: HTTPS with the system's CAs plus the registry's own CAs from Docker's
//! `certs.d` layout (`/etc/berth/certs.d/<host:port>/*.crt`); for insecure registries (loopback, and those
//! the settings list) HTTPS without certificate checks, or plain HTTP when the host does not speak TLS.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{CONNECT_TIMEOUT, USER_AGENT};
use crate::config::{Mirror, RegistryConfig};
use crate::error::{from_reqwest, RegistryError};

/// Where per-registry CA certificates live, one directory per `host:port` (Docker's `certs.d` layout).
pub const CERTS_DIR: &str = "/etc/berth/certs.d";

/// The environment variable that moves [`CERTS_DIR`] (tests use it).
pub const CERTS_DIR_ENV: &str = "BERTH_CERTS_DIR";

/// The transport settings for one registry.
#[derive(Debug)]
pub(crate) struct Transport {
    /// HTTPS (else plain HTTP).
    pub https: bool,
    /// Whether the server's certificate is verified (not for insecure registries, as Docker).
    pub verify: bool,
    /// Extra trusted CA certificates (PEM), from the registry's `certs.d` directory.
    pub roots: Vec<Vec<u8>>,
}

/// The certs.d directory in force.
pub fn certs_dir() -> PathBuf {
    match std::env::var_os(CERTS_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(CERTS_DIR),
    }
}

/// How to reach `host`, in Docker's order: HTTPS with its `certs.d` CAs and the system's; for an insecure
/// registry (loopback, or listed in the settings) HTTPS without verifying the certificate when the host
/// speaks TLS at all, else plain HTTP.
pub(crate) async fn transport(
    host: &str,
    config: &RegistryConfig,
) -> Result<Transport, RegistryError> {
    let roots = certs_d_roots(host)?;
    if !config.is_insecure(host) {
        return Ok(Transport {
            https: true,
            verify: true,
            roots,
        });
    }
    let tls = Transport {
        https: true,
        verify: false,
        roots,
    };
    // Any answer over TLS, even 401 or 404, means the registry speaks HTTPS.
    let client = tls.http_client(host, PROBE_TIMEOUT)?;
    if client.get(tls.url(host, "/v2/")).send().await.is_ok() {
        return Ok(tls);
    }
    Ok(Transport {
        https: false,
        ..tls
    })
}

/// The transport for a mirror: the scheme its URL names, the certificate checked unless it is insecure.
pub(crate) fn mirror_transport(
    mirror: &Mirror,
    config: &RegistryConfig,
) -> Result<Transport, RegistryError> {
    Ok(Transport {
        https: mirror.https,
        verify: !config.is_insecure(&mirror.host),
        roots: certs_d_roots(&mirror.host)?,
    })
}

/// How long the HTTPS probe of an insecure registry may take before plain HTTP is used.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl Transport {
    /// `scheme://host/path`.
    pub fn url(&self, host: &str, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{host}{path}")
    }

    /// A plain HTTP client with these settings, for requests the distribution client does not make
    /// (login's check, the probe above); every request may take at most `timeout`.
    pub fn http_client(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<reqwest::Client, RegistryError> {
        let mut roots = Vec::new();
        for pem in &self.roots {
            roots.extend(
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| from_reqwest(&e, host))?,
            );
        }
        reqwest::Client::builder()
            .tls_certs_merge(roots)
            .danger_accept_invalid_certs(!self.verify)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| from_reqwest(&e, host))
    }
}

/// The CA certificates of `host`'s `certs.d` directory (none when it has no directory).
fn certs_d_roots(host: &str) -> Result<Vec<Vec<u8>>, RegistryError> {
    let mut roots = Vec::new();
    // A host name never contains '/', and "." or ".." would leave the directory.
    if host.is_empty() || host.contains('/') || host == "." || host == ".." {
        return Ok(roots);
    }
    let dir = certs_dir().join(host);
    if !dir.is_dir() {
        return Ok(roots);
    }
    let entries = fs::read_dir(&dir).map_err(|source| RegistryError::Io {
        op: "read",
        path: dir.clone(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    files.sort();
    for file in files {
        let pem = fs::read(&file).map_err(|source| RegistryError::Io {
            op: "read",
            path: file.clone(),
            source,
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(RegistryError::Credentials {
                path: file,
                reason: "not a PEM certificate".to_string(),
            });
        }
        roots.push(pem);
    }
    Ok(roots)
}
