//! Berth's registry settings, from `/etc/berth/config.json` (moved by `BERTH_CONFIG`), with the keys of
//! Docker's `daemon.json` so an existing one can be copied over:
//!
//! ```json
//! {
//!   "insecure-registries": ["registry.lan:5000", "10.0.0.0/8"],
//!   "registry-mirrors": ["https://mirror.example"],
//!   "registry-read-timeout": 120
//! }
//! ```
//!
//! - `insecure-registries`: hosts (`host` or `host:port`) and IPv4/IPv6 networks (CIDR) reached over HTTPS
//!   without verifying the certificate, or over plain HTTP when they do not speak TLS. `localhost` and
//!   `127.0.0.0/8` are always insecure, as in Docker.
//! - `registry-mirrors`: `http(s)://host[:port]` URLs tried in order for pulls of Docker Hub images,
//!   before Docker Hub itself.
//! - `registry-read-timeout` (Berth's own): seconds a registry may stay silent in the middle of a transfer
//!   before it is abandoned and retried (resuming where it stopped). 120 when not given.
//!
//! A missing file means the defaults; a file that does not parse, or names an unknown key, is an error
//! rather than silently ignored (Docker's daemon refuses to start on one too).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::RegistryError;

/// Where the settings live.
pub const CONFIG_FILE: &str = "/etc/berth/config.json";

/// The environment variable that names another settings file (tests use it).
pub const CONFIG_ENV: &str = "BERTH_CONFIG";

/// How long a registry may stay silent mid-transfer unless the settings say otherwise.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The registry settings; see the module documentation. `Default` is what a missing file means.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    insecure_hosts: Vec<String>,
    insecure_networks: Vec<(IpAddr, u8)>,
    mirrors: Vec<Mirror>,
    read_timeout: Option<Duration>,
}

/// A pull-through mirror of Docker Hub.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mirror {
    /// `host[:port]`.
    pub host: String,
    /// Whether the URL said `https`.
    pub https: bool,
}

/// The file's shape.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    registry_mirrors: Vec<String>,
    #[serde(default)]
    registry_read_timeout: Option<u64>,
}

impl RegistryConfig {
    /// The settings in force: the file `BERTH_CONFIG` names, else [`CONFIG_FILE`].
    pub fn load() -> Result<Self, RegistryError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(path) if !path.is_empty() => Self::from_file(Path::new(&path)),
            _ => Self::from_file(Path::new(CONFIG_FILE)),
        }
    }

    /// The settings in `path`; the defaults when there is no such file.
    pub fn from_file(path: &Path) -> Result<Self, RegistryError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(RegistryError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&text).map_err(|reason| RegistryError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the file's text; the error says what is wrong with it.
    fn parse(text: &str) -> Result<Self, String> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        };
        let mut config = Self::default();
        for entry in file.insecure_registries {
            let entry = entry.trim();
            let entry = entry
                .strip_prefix("http://")
                .or_else(|| entry.strip_prefix("https://"))
                .unwrap_or(entry)
                .trim_end_matches('/');
            if let Some((ip, bits)) = entry.split_once('/') {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("insecure registry {entry:?}: not a host or a CIDR"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("insecure registry {entry:?}: bad prefix length"))?;
                config.insecure_networks.push((ip, bits));
            } else if entry.is_empty() || entry.contains(char::is_whitespace) {
                return Err(format!("insecure registry {entry:?}: not a host or a CIDR"));
            } else {
                config.insecure_hosts.push(entry.to_ascii_lowercase());
            }
        }
        for url in file.registry_mirrors {
            config.mirrors.push(parse_mirror(&url)?);
        }
        if let Some(seconds) = file.registry_read_timeout {
            if seconds == 0 {
                return Err("registry-read-timeout must be at least 1 second".to_string());
            }
            config.read_timeout = Some(Duration::from_secs(seconds));
        }
        Ok(config)
    }

    /// Whether `host` (`name[:port]`) may be reached without a verified certificate: loopback, listed, or
    /// an IP address inside a listed network.
    pub(crate) fn is_insecure(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let name = host_name(&host);
        // `localhost` and the loopback addresses always are, as in Docker.
        if name == "localhost" || self.insecure_hosts.iter().any(|h| *h == host || h == name) {
            return true;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            return false;
        };
        ip.is_loopback()
            || self
                .insecure_networks
                .iter()
                .any(|(network, bits)| in_network(ip, *network, *bits))
    }

    /// The mirrors to try, in order, for a pull from `host` (only Docker Hub has them, as in Docker).
    pub(crate) fn mirrors_for(&self, host: &str) -> &[Mirror] {
        if host == berth_store::reference::DEFAULT_DOMAIN {
            &self.mirrors
        } else {
            &[]
        }
    }

    /// How long a registry may stay silent mid-transfer.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT)
    }
}

/// `host` without its port (`[::1]:5000` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// A mirror URL: `http(s)://host[:port]`, with at most a trailing `/`.
fn parse_mirror(url: &str) -> Result<Mirror, String> {
    let bad = |why: &str| format!("registry mirror {url:?}: {why}");
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.contains(char::is_whitespace)
    {
        return Err(bad("must be a scheme and a host[:port], without a path"));
    }
    Ok(Mirror {
        host: host.to_ascii_lowercase(),
        https,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_parsed_and_checked() {
        let c = RegistryConfig::parse(
            r#"{"insecure-registries":["reg.lan:5000","http://other.lan/","10.0.0.0/8","fd00::/8"],
                "registry-mirrors":["https://mirror.example/","http://127.0.0.1:5001"],
                "registry-read-timeout":5}"#,
        )
        .unwrap();
        assert!(c.is_insecure("reg.lan:5000"));
        assert!(!c.is_insecure("reg.lan:5001"));
        assert!(c.is_insecure("other.lan"));
        assert!(c.is_insecure("other.lan:443"));
        assert!(c.is_insecure("10.1.2.3:5000"));
        assert!(!c.is_insecure("11.1.2.3:5000"));
        assert!(c.is_insecure("[fd12::1]:5000"));
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("localhost"));
        assert!(!c.is_insecure("docker.io"));
        let none = RegistryConfig::default();
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(none.is_insecure(host), "{host}");
        }
        for host in [
            "docker.io",
            "registry.example:5000",
            "10.0.0.1:5000",
            "128.0.0.1",
        ] {
            assert!(!none.is_insecure(host), "{host}");
        }
        assert_eq!(
            c.mirrors_for("docker.io"),
            &[
                Mirror {
                    host: "mirror.example".into(),
                    https: true
                },
                Mirror {
                    host: "127.0.0.1:5001".into(),
                    https: false
                }
            ]
        );
        assert!(c.mirrors_for("quay.io").is_empty());
        assert_eq!(c.read_timeout(), Duration::from_secs(5));
        assert_eq!(
            RegistryConfig::parse("").unwrap().read_timeout(),
            DEFAULT_READ_TIMEOUT
        );

        for bad in [
            r#"{"insecure-registry":["x"]}"#,
            r#"{"insecure-registries":["10.0.0.0/33"]}"#,
            r#"{"insecure-registries":["not a host"]}"#,
            r#"{"registry-mirrors":["mirror.example"]}"#,
            r#"{"registry-mirrors":["https://mirror.example/v2/"]}"#,
            r#"{"registry-read-timeout":0}"#,
            "{",
        ] {
            assert!(RegistryConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
