//! Platforms (`linux/amd64`, `linux/arm64/v8`) and the choice of one manifest from an image index.

use std::fmt;

use crate::error::StoreError;
use crate::image::{host_platform, Descriptor};

/// Operating systems a bare `--platform` word is taken as (else it is an architecture).
const KNOWN_OSES: &[&str] = &[
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "illumos", "solaris",
];

/// An OCI platform: operating system, CPU architecture and optional variant, normalised as containerd does
/// (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm64` without variant is `v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7`, `v8`, … when the architecture has variants.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on.
    pub fn host() -> Self {
        let (os, arch) = host_platform();
        Self::normalised(os, arch, None)
    }

    /// Parses `os/arch[/variant]`, or a bare `arch` (with this host's OS), as `--platform` takes it.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::InvalidPlatform(text.to_string());
        let parts: Vec<&str> = text.trim().split('/').collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) {
            return Err(bad());
        }
        let lower: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
        match lower.as_slice() {
            // A bare OS means this host's architecture on it, a bare architecture this host's OS
            // (containerd's rule).
            [os] if KNOWN_OSES.contains(&os.as_str()) => {
                let host = Self::host();
                Ok(Self::normalised(
                    os,
                    &host.architecture,
                    host.variant.as_deref(),
                ))
            }
            [arch] => Ok(Self::normalised(host_platform().0, arch, None)),
            [os, arch] => Ok(Self::normalised(os, arch, None)),
            [os, arch, variant] => Ok(Self::normalised(os, arch, Some(variant))),
            _ => Err(bad()),
        }
    }

    fn normalised(os: &str, arch: &str, variant: Option<&str>) -> Self {
        let os = match os {
            "macos" => "darwin",
            other => other,
        };
        let (arch, variant) = match (arch, variant) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v.filter(|v| *v != "v1")),
            ("aarch64" | "arm64", None | Some("8") | Some("v8")) => ("arm64", Some("v8")),
            ("aarch64" | "arm64", v) => ("arm64", v),
            ("armhf" | "arm", None) => ("arm", Some("v7")),
            ("armel", None) => ("arm", Some("v6")),
            ("armhf" | "armel" | "arm", Some(v)) => ("arm", Some(v)),
            ("i386" | "i686" | "386", v) => ("386", v),
            (other, v) => (other, v),
        };
        let variant = variant.map(|v| {
            if arch == "arm" || arch == "arm64" {
                if v.starts_with('v') {
                    v.to_string()
                } else {
                    format!("v{v}")
                }
            } else {
                v.to_string()
            }
        });
        Self {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant,
        }
    }

    /// A platform as an image describes it, in any case.
    fn described(os: &str, arch: &str, variant: Option<&str>) -> Self {
        Self::normalised(
            &os.to_ascii_lowercase(),
            &arch.to_ascii_lowercase(),
            variant.map(str::to_ascii_lowercase).as_deref(),
        )
    }

    /// The platform of an index entry, if it has one.
    fn of_descriptor(descriptor: &Descriptor) -> Option<Self> {
        let p = descriptor.platform.as_ref()?;
        Some(Self::described(
            p.get("os")?.as_str()?,
            p.get("architecture")?.as_str()?,
            p.get("variant").and_then(|v| v.as_str()),
        ))
    }

    /// The platform of an image config (`os`, `architecture`, `variant`).
    pub fn of_config(config: &crate::image::ImageConfig) -> Self {
        Self::described(&config.os, &config.architecture, config.variant.as_deref())
    }

    /// Whether an image of platform `other` runs here when `self` is wanted: same OS and architecture, and
    /// the same variant when both name one.
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The entry of an image index for this platform: an exact match (variant included) first, then one
    /// whose variant is unknown. Attestation manifests (BuildKit's `unknown/unknown`) never match.
    pub fn choose<'a>(&self, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let candidates: Vec<(&Descriptor, Platform)> = manifests
            .iter()
            .filter(|d| !d.annotations.contains_key("vnd.docker.reference.type"))
            .filter_map(|d| Self::of_descriptor(d).map(|p| (d, p)))
            .filter(|(_, p)| self.accepts(p))
            .collect();
        candidates
            .iter()
            .find(|(_, p)| p.variant == self.variant)
            .or_else(|| candidates.first())
            .map(|(d, _)| *d)
    }

    /// The platforms an index offers, for an error message.
    pub fn list(manifests: &[Descriptor]) -> String {
        let names: Vec<String> = manifests
            .iter()
            .filter_map(Self::of_descriptor)
            .filter(|p| p.os != "unknown")
            .map(|p| p.to_string())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: serde_json::Value, n: u8) -> Descriptor {
        Descriptor {
            media_type: crate::image::MEDIA_TYPE_OCI_MANIFEST.into(),
            digest: crate::Digest::of(&[n]),
            size: 1,
            annotations: Default::default(),
            platform: Some(platform),
        }
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/aarch64").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            Platform::parse("linux/arm/7").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(Platform::parse("amd64").unwrap().to_string(), "linux/amd64");
        assert_eq!(Platform::parse("linux").unwrap(), Platform::host());
        for bad in ["", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chooses_the_matching_entry() {
        let index = vec![
            entry(
                serde_json::json!({"os": "linux", "architecture": "amd64"}),
                1,
            ),
            entry(
                serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v6"}),
                2,
            ),
            entry(
                serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
                3,
            ),
            entry(
                serde_json::json!({"os": "linux", "architecture": "arm64"}),
                4,
            ),
            entry(
                serde_json::json!({"os": "unknown", "architecture": "unknown"}),
                5,
            ),
        ];
        let pick = |p: &str| {
            Platform::parse(p)
                .unwrap()
                .choose(&index)
                .map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64"), Some(index[0].digest.clone()));
        assert_eq!(pick("linux/arm/v6"), Some(index[1].digest.clone()));
        assert_eq!(pick("linux/arm"), Some(index[2].digest.clone()));
        assert_eq!(pick("linux/arm64"), Some(index[3].digest.clone()));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(
            Platform::list(&index),
            "linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8"
        );
    }
}
