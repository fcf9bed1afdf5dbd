//! Image references, normalised exactly as Docker does (`busybox` → `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::StoreError;

/// The registry a reference without a domain belongs to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The namespace of single-component names on the default registry.
const OFFICIAL_NAMESPACE: &str = "library";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// A fully normalised image reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as `docker` does; `latest` is added when neither tag nor digest is given.
    pub fn parse(input: &str) -> Result<Self, StoreError> {
        let mut reference = Self::parse_name_only(input)?;
        if reference.tag.is_none() && reference.digest.is_none() {
            reference.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(reference)
    }

    /// Parses a reference without adding the default tag (what `images busybox` or `push -a` want).
    pub fn parse_name_only(input: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::InvalidReference {
            reference: input.to_string(),
            reason: why.to_string(),
        };
        if input.is_empty() {
            return Err(bad("empty reference"));
        }
        if input.len() > 255 + 128 + 72 {
            return Err(bad("reference too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(Digest::parse(digest).map_err(|_| bad("invalid digest"))?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/', so `host:5000/repo` has none.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad("invalid tag"));
            }
        }
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder)) if first.contains(['.', ':']) || first == "localhost" => {
                if !valid_domain(first) {
                    return Err(bad("invalid registry host"));
                }
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(bad("invalid repository name"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path
        };
        if domain.len() + 1 + path.len() > 255 {
            return Err(bad("repository name too long"));
        }
        Ok(Self {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path`, the full repository name used as a key in the store.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as Docker prints it: `busybox` rather than `docker.io/library/busybox`.
    pub fn familiar_repository(&self) -> String {
        familiar_name(&self.repository())
    }

    /// `repo:tag` in familiar form, as shown in `images` and `ps`.
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_repository();
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest.as_str());
        }
        out
    }

    /// Returns the same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self, StoreError> {
        if !valid_tag(tag) {
            return Err(StoreError::InvalidReference {
                reference: tag.to_string(),
                reason: "invalid tag".to_string(),
            });
        }
        Ok(Self {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Shortens a full repository or reference name the way Docker prints it.
pub fn familiar_name(full: &str) -> String {
    let without_domain = full.strip_prefix("docker.io/").unwrap_or(full);
    without_domain
        .strip_prefix("library/")
        .filter(|rest| !rest.contains('/'))
        .unwrap_or(without_domain)
        .to_string()
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/ns/app:v1", "localhost:5000/ns/app:v1"),
            ("quay.io/a/b/c:t-1.0_x", "quay.io/a/b/c:t-1.0_x"),
            ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(
            Reference::parse("busybox").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(Reference::parse("me/app:1").unwrap().familiar(), "me/app:1");
        assert_eq!(
            Reference::parse("localhost:5000/app").unwrap().familiar(),
            "localhost:5000/app:latest"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox::1",
            "a//b",
            "-a",
            "a-",
            "a..b",
            ":tag",
            "busybox@sha256:12",
            "host:port/x",
            "a b",
            "busybox:-x",
            "UPPER/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
