//! Image configuration and manifest types with Docker's and OCI's JSON field names.
//!
//! Berth keeps its own types for the image config (rather than oci-spec's) because Docker images carry
//! fields the OCI spec lacks (`Healthcheck`, `OnBuild`, `Shell`) that `build` and `run` need; unknown fields
//! are kept in `extra` so re-serialising never drops anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// OCI image manifest media type.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer.
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip OCI layer.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd OCI layer.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The image configuration JSON (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (`amd64`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub os: String,
    /// CPU variant (`v8`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The defaults for containers run from the image.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: RunConfig,
    /// The uncompressed layer digests, bottom first.
    pub rootfs: RootFs,
    /// One entry per build step.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    /// Fields Berth does not interpret, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One step of an image's history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment (`import`, `commit -m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub empty_layer: bool,
}

/// Docker's `Healthcheck` config, in both image config and container config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Nanoseconds between probes (0 = default 30 s).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub interval: i64,
    /// Nanoseconds before a probe counts as failed (0 = default 30 s).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub timeout: i64,
    /// Nanoseconds of grace after start (failures do not count).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_period: i64,
    /// Nanoseconds between probes during the start period.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_interval: i64,
    /// Consecutive failures before unhealthy (0 = default 3).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The `config` section shared by images and containers (Docker's `Config`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user (`name`, `uid`, `uid:gid`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    /// Exposed ports as `"80/tcp": {}`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// `KEY=value` pairs.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// Entrypoint (exec form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default command (exec form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volumes as `"/data": {}`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// Working directory.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Signal that stops the container.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    /// Healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// ONBUILD triggers.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    /// SHELL for shell-form instructions.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
    /// ArgsEscaped (Windows only; preserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
}

/// A content descriptor (OCI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    pub media_type: String,
    /// Digest of the target.
    pub digest: Digest,
    /// Size in bytes of the target.
    pub size: u64,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// An image manifest (OCI or Docker schema 2: same shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// Reads a JSON `null` as the type's default. Docker writes `null` for an unset list or map
/// (`"Env": null`, `"Volumes": null`, `"OnBuild": null`), where `#[serde(default)]` alone only covers
/// a missing field.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Whether a layer media type is one Berth can unpack.
pub fn is_layer_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_OCI_LAYER
            | MEDIA_TYPE_OCI_LAYER_GZIP
            | MEDIA_TYPE_OCI_LAYER_ZSTD
            | MEDIA_TYPE_DOCKER_LAYER
            | MEDIA_TYPE_DOCKER_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

/// The operating system and architecture this binary runs on, in OCI's words.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config of an image `docker build` (classic builder) wrote, nulls and all.
    #[test]
    fn docker_configs_with_nulls_parse_as_empty() {
        let json = r#"{"architecture":"amd64","os":"linux","created":"2026-12-05T20:00:00Z",
            "config":{"Hostname":"","User":"","Env":null,"Cmd":["sh"],"Entrypoint":null,
            "Volumes":null,"WorkingDir":"","Labels":null,"OnBuild":null,"Shell":null,
            "ExposedPorts":null,"StopSignal":null,"Healthcheck":null},
            "container_config":{"Env":null},
            "history":null,
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config: ImageConfig = serde_json::from_str(json).unwrap();
        assert!(config.config.env.is_empty());
        assert!(config.config.volumes.is_empty());
        assert!(config.config.labels.is_empty());
        assert!(config.config.on_build.is_empty());
        assert!(config.config.entrypoint.is_none());
        assert_eq!(config.config.cmd, Some(vec!["sh".to_string()]));
        assert!(config.history.is_empty());
        // Fields Berth does not read are kept as they were.
        assert_eq!(
            config.extra["container_config"]["Env"],
            serde_json::Value::Null
        );
    }
}
