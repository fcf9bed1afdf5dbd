//! How to reach a registry: HTTPS with the system's CAs plus the registry's own CAs from Docker's
//! `certs.d` layout (`/etc/berth/certs.d/<host:port>/*.crt`), or plain HTTP for loopback registries that
//! have no such directory (Docker allows `localhost` and `127.0.0.0/8` without TLS).

use std::fs;
use std::path::PathBuf;

use crate::client::plain_http;
use crate::error::RegistryError;

/// Where per-registry CA certificates live, one directory per `host:port` (Docker's `certs.d` layout).
pub const CERTS_DIR: &str = "/etc/berth/certs.d";

/// The environment variable that moves [`CERTS_DIR`] (tests use it).
pub const CERTS_DIR_ENV: &str = "BERTH_CERTS_DIR";

/// The transport settings for one registry.
#[derive(Debug, Default)]
pub(crate) struct Transport {
    /// HTTPS (else plain HTTP).
    pub https: bool,
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

/// The transport for `host`: its `certs.d` CAs, and HTTPS unless it is a loopback host without any.
pub(crate) fn transport(host: &str) -> Result<Transport, RegistryError> {
    let mut roots = Vec::new();
    let mut has_dir = false;
    // A host name never contains '/', and "." or ".." would leave the directory.
    if !host.is_empty() && !host.contains('/') && host != "." && host != ".." {
        let dir = certs_dir().join(host);
        if dir.is_dir() {
            has_dir = true;
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
        }
    }
    Ok(Transport {
        https: has_dir || !plain_http(host),
        roots,
    })
}
