//! `import`: a root filesystem tarball becomes a one-layer image, with `--change` instructions applied.

use std::collections::BTreeMap;
use std::io::Read;

use crate::digest::Digest;
use crate::error::StoreError;
use crate::image::{
    Descriptor, History, ImageConfig, Manifest, RootFs, RunConfig, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::images::{ImageRecord, LayerRecord, NewImage};
use crate::reference::Reference;
use crate::Store;

/// Applies one `--change` instruction (Dockerfile syntax: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME,
/// WORKDIR, STOPSIGNAL, ONBUILD, SHELL) to an image's run config.
pub fn apply_change(config: &mut RunConfig, change: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::InvalidImage(format!("invalid --change {change:?}: {why}"));
    let change = change.trim();
    let (keyword, rest) = change
        .split_once(char::is_whitespace)
        .unwrap_or((change, ""));
    let rest = rest.trim();
    // JSON (exec) form if it parses as a string array, else shell form.
    let exec_or_shell = |text: &str| -> Vec<String> {
        match serde_json::from_str::<Vec<String>>(text) {
            Ok(v) => v,
            Err(_) => vec!["/bin/sh".into(), "-c".into(), text.to_string()],
        }
    };
    match keyword.to_ascii_uppercase().as_str() {
        "CMD" => config.cmd = Some(exec_or_shell(rest)),
        "ENTRYPOINT" => config.entrypoint = Some(exec_or_shell(rest)),
        "ENV" => {
            for (k, v) in parse_pairs(rest).ok_or_else(|| bad("expected KEY=value"))? {
                let item = format!("{k}={v}");
                match config
                    .env
                    .iter_mut()
                    .find(|e| e.split('=').next() == Some(k.as_str()))
                {
                    Some(slot) => *slot = item,
                    None => config.env.push(item),
                }
            }
        }
        "LABEL" => {
            for (k, v) in parse_pairs(rest).ok_or_else(|| bad("expected key=value"))? {
                config.labels.insert(k, v);
            }
        }
        "EXPOSE" => {
            for port in rest.split_whitespace() {
                let port = if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                };
                config.exposed_ports.insert(port, serde_json::json!({}));
            }
        }
        "USER" => config.user = rest.to_string(),
        "WORKDIR" => config.working_dir = rest.to_string(),
        "STOPSIGNAL" => config.stop_signal = rest.to_string(),
        "VOLUME" => {
            let paths = serde_json::from_str::<Vec<String>>(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(str::to_string).collect());
            for p in paths {
                config.volumes.insert(p, serde_json::json!({}));
            }
        }
        "ONBUILD" => config.on_build.push(rest.to_string()),
        "SHELL" => {
            config.shell =
                serde_json::from_str(rest).map_err(|_| bad("SHELL needs a JSON array"))?
        }
        "" => return Err(bad("empty instruction")),
        other => return Err(bad(&format!("{other} is not supported by --change"))),
    }
    Ok(())
}

/// `K=V K2="v 2"` or the legacy `K V` form.
fn parse_pairs(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    if !text.contains('=') {
        let (k, v) = text.split_once(char::is_whitespace)?;
        return Some(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        chars.next()?; // '='
        let mut value = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, '"') | (None, '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, '\\') => {
                    chars.next();
                    if let Some(&n) = chars.peek() {
                        value.push(n);
                    }
                }
                _ => value.push(c),
            }
            chars.next();
        }
        if key.is_empty() {
            return None;
        }
        out.push((key, value));
    }
    Some(out)
}

impl Store {
    /// Imports a rootfs tarball (plain, gzip or zstd) as a one-layer image tagged `tags`.
    pub fn import_rootfs(
        &self,
        reader: impl Read,
        changes: &[String],
        message: Option<&str>,
        platform: Option<&crate::Platform>,
        tags: &[Reference],
    ) -> Result<ImageRecord, StoreError> {
        let mut run_config = RunConfig::default();
        for change in changes {
            apply_change(&mut run_config, change)?;
        }
        // Store the layer uncompressed: its digest is then also its diff ID, and `save` can copy it as is.
        let (_, stream) = berth_archive::decompress(reader)?;
        let (blob, _) = self.blobs().put(stream, None)?;
        let layer = self.add_layer(&blob, MEDIA_TYPE_OCI_LAYER, None)?;
        let history = History {
            created: Some(crate::now_rfc3339()),
            created_by: Some("berth import".into()),
            comment: Some(message.unwrap_or("Imported from tarball").to_string()),
            ..History::default()
        };
        self.create_image(run_config, vec![layer], vec![history], None, platform, tags)
    }

    /// Writes the config and manifest of a new image made of `layers` and records it.
    pub fn create_image(
        &self,
        run_config: RunConfig,
        layers: Vec<LayerRecord>,
        history: Vec<History>,
        author: Option<String>,
        platform: Option<&crate::Platform>,
        tags: &[Reference],
    ) -> Result<ImageRecord, StoreError> {
        let platform = platform.cloned().unwrap_or_else(crate::Platform::host);
        let config = ImageConfig {
            created: Some(crate::now_rfc3339()),
            author,
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            config: run_config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history,
            extra: BTreeMap::new(),
        };
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = self.blobs().put_bytes(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: MEDIA_TYPE_OCI_CONFIG.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.blob_digest.clone(),
                    size: l.blob_size,
                    annotations: BTreeMap::new(),
                    platform: None,
                })
                .collect(),
            annotations: BTreeMap::new(),
        };
        let manifest_digest: Digest = self.blobs().put_bytes(&serde_json::to_vec(&manifest)?)?;
        self.add_image(
            &NewImage {
                manifest_digest,
                config_digest,
                layers,
            },
            tags,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply() {
        let mut c = RunConfig::default();
        apply_change(&mut c, r#"CMD ["sh"]"#).unwrap();
        apply_change(&mut c, "ENTRYPOINT echo hi").unwrap();
        apply_change(&mut c, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut c, "ENV A 3").unwrap();
        apply_change(&mut c, "WORKDIR /srv").unwrap();
        apply_change(&mut c, "EXPOSE 80 53/udp").unwrap();
        apply_change(&mut c, "LABEL x=y").unwrap();
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.entrypoint.as_ref().unwrap()[2], "echo hi");
        assert_eq!(c.env, vec!["A=3", "B=two words"]);
        assert_eq!(c.working_dir, "/srv");
        assert!(c.exposed_ports.contains_key("80/tcp") && c.exposed_ports.contains_key("53/udp"));
        assert!(apply_change(&mut c, "FROM busybox").is_err());
        assert!(apply_change(&mut c, "ENV =x").is_err());
    }
}
