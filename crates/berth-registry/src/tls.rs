//! How to reach a registry: HTTPS with the system's CAs plus the registry's own CAs from Docker's
//! `certs.d` layout (`/etc/berth/certs.d/<host:port>/*.crt`, and a client certificate `*.cert` + `*.key`
//! for registries that ask for one); for insecure registries (loopback, and those
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
    /// The client certificate and key (PEM, one buffer) to present, from `certs.d` (`*.cert` + `*.key`).
    pub identity: Option<Vec<u8>>,
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
    let CertsD { roots, identity } = certs_d(host)?;
    if !config.is_insecure(host) {
        return Ok(Transport {
            https: true,
            verify: true,
            roots,
            identity,
        });
    }
    let tls = Transport {
        https: true,
        verify: false,
        roots,
        identity,
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
    let CertsD { roots, identity } = certs_d(&mirror.host)?;
    Ok(Transport {
        https: mirror.https,
        verify: !config.is_insecure(&mirror.host),
        roots,
        identity,
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
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &self.identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(pem).map_err(|e| from_reqwest(&e, host))?);
        }
        builder
            .tls_certs_merge(roots)
            .danger_accept_invalid_certs(!self.verify)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| from_reqwest(&e, host))
    }
}

/// What a registry's `certs.d` directory holds.
#[derive(Default)]
struct CertsD {
    /// CA certificates (`*.crt`), PEM.
    roots: Vec<Vec<u8>>,
    /// A client certificate (`<name>.cert`) followed by its key (`<name>.key`), PEM.
    identity: Option<Vec<u8>>,
}

/// Reads `host`'s `certs.d` directory (nothing when it has none), with Docker's rules: every `*.crt` is a
/// CA; a `<name>.cert` needs its `<name>.key` and the other way round; the first pair by name is used.
fn certs_d(host: &str) -> Result<CertsD, RegistryError> {
    let mut found = CertsD::default();
    // A host name never contains '/', and "." or ".." would leave the directory.
    if host.is_empty() || host.contains('/') || host == "." || host == ".." {
        return Ok(found);
    }
    let dir = certs_dir().join(host);
    if !dir.is_dir() {
        return Ok(found);
    }
    let entries = fs::read_dir(&dir).map_err(|source| RegistryError::Io {
        op: "read",
        path: dir.clone(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let read_pem = |file: &PathBuf, marker: &str| {
        let pem = fs::read(file).map_err(|source| RegistryError::Io {
            op: "read",
            path: file.clone(),
            source,
        })?;
        if !String::from_utf8_lossy(&pem).contains(marker) {
            return Err(RegistryError::Credentials {
                path: file.clone(),
                reason: format!("not a PEM file (no {marker})"),
            });
        }
        Ok(pem)
    };
    for file in &files {
        let pair = |ext: &str| file.with_extension(ext);
        match file.extension().and_then(|e| e.to_str()) {
            Some("crt") => found
                .roots
                .push(read_pem(file, "-----BEGIN CERTIFICATE-----")?),
            Some("cert") => {
                let key = pair("key");
                if !key.is_file() {
                    return Err(RegistryError::Credentials {
                        path: file.clone(),
                        reason: format!("client certificate without its key {}", key.display()),
                    });
                }
                if found.identity.is_none() {
                    let mut pem = read_pem(file, "-----BEGIN CERTIFICATE-----")?;
                    pem.push(b'\n');
                    pem.extend(read_pem(&key, "PRIVATE KEY-----")?);
                    found.identity = Some(pem);
                }
            }
            Some("key") if !pair("cert").is_file() => {
                return Err(RegistryError::Credentials {
                    path: file.clone(),
                    reason: format!(
                        "client key without its certificate {}",
                        pair("cert").display()
                    ),
                })
            }
            _ => {}
        }
    }
    Ok(found)
}
