//! Registry credentials in Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): `{"auths": {"host:port": {"auth": base64("user:password")}}}`, read and written
//! exactly as the `docker` CLI does, so both tools share one login. Other fields of the file are kept as they
//! are; the file is replaced atomically and is readable by its owner only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::RegistryError;

/// The key Docker files Docker Hub credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The Docker client configuration file that holds credentials.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
}

impl CredentialStore {
    /// The file Docker uses: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn from_env() -> Self {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/root"));
                home.join(".docker")
            }
        };
        Self::at(dir.join("config.json"))
    }

    /// A credentials file at `path`.
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key a registry host is filed under: Docker Hub's historical URL for `docker.io`, else the host.
    pub fn key_for(host: &str) -> String {
        match normalise_host(host).as_str() {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
            other => other.to_string(),
        }
    }

    /// The credentials stored for `host`, if any. Keys are compared as Docker does: without scheme and
    /// path, so `https://host:5000/v2/` and `host:5000` are the same registry.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>, RegistryError> {
        let config = self.read()?;
        let wanted = normalise_host(&Self::key_for(host));
        let Some(auths) = config.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        for (key, entry) in auths {
            if normalise_host(key) != wanted {
                continue;
            }
            if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
                if auth.is_empty() {
                    continue;
                }
                return self.decode(key, auth).map(Some);
            }
            if let (Some(u), Some(p)) = (
                entry.get("username").and_then(Value::as_str),
                entry.get("password").and_then(Value::as_str),
            ) {
                return Ok(Some(Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Stores credentials for `host`, replacing any for the same registry.
    pub fn store(&self, host: &str, credentials: &Credentials) -> Result<(), RegistryError> {
        let mut config = self.read()?;
        let key = Self::key_for(host);
        let auths = config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        let Some(auths) = auths.as_object_mut() else {
            return Err(self.bad("\"auths\" is not an object"));
        };
        let wanted = normalise_host(&key);
        auths.retain(|k, _| normalise_host(k) != wanted);
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.username, credentials.password));
        auths.insert(key, serde_json::json!({ "auth": encoded }));
        self.write(&config)
    }

    /// Removes the credentials for `host`; returns whether there were any.
    pub fn remove(&self, host: &str) -> Result<bool, RegistryError> {
        let mut config = self.read()?;
        let wanted = normalise_host(&Self::key_for(host));
        let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else {
            return Ok(false);
        };
        let before = auths.len();
        auths.retain(|k, _| normalise_host(k) != wanted);
        if auths.len() == before {
            return Ok(false);
        }
        self.write(&config)?;
        Ok(true)
    }

    fn decode(&self, key: &str, auth: &str) -> Result<Credentials, RegistryError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| self.bad(&format!("the \"auth\" of {key} is not base64: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| self.bad(&format!("the \"auth\" of {key} is not UTF-8")))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| self.bad(&format!("the \"auth\" of {key} is not user:password")))?;
        Ok(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    fn bad(&self, reason: &str) -> RegistryError {
        RegistryError::Credentials {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn read(&self) -> Result<Map<String, Value>, RegistryError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => {
                return Err(RegistryError::Io {
                    op: "read",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(self.bad("not a JSON object")),
            Err(e) => Err(self.bad(&e.to_string())),
        }
    }

    fn write(&self, config: &Map<String, Value>) -> Result<(), RegistryError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { op, path, source }
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let tmp = dir.join(format!(".config.json.tmp-{}", berth_store::random_hex(6)));
        let text = serde_json::to_vec_pretty(config).map_err(|e| self.bad(&e.to_string()))?;
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            file.write_all(&text).map_err(io("write", &tmp))?;
            file.write_all(b"\n").map_err(io("write", &tmp))?;
            file.sync_all().map_err(io("write", &tmp))?;
            fs::rename(&tmp, &self.path).map_err(io("replace", &self.path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// A registry key without scheme, trailing path and case: `https://Host:5000/v1/` → `host:5000`.
fn normalise_host(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or_default();
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trips_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        let store = CredentialStore::at(path.clone());
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), None);
        let creds = Credentials {
            username: "alice".into(),
            password: "s3:cret".into(),
        };
        store.store("127.0.0.1:5000", &creds).unwrap();
        store.store("docker.io", &creds).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["auths"]["127.0.0.1:5000"]["auth"],
            base64::engine::general_purpose::STANDARD.encode("alice:s3:cret")
        );
        assert!(json["auths"][DOCKER_HUB_KEY].is_object());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), Some(creds.clone()));
        assert_eq!(store.get("index.docker.io").unwrap(), Some(creds.clone()));
        assert!(store.remove("127.0.0.1:5000").unwrap());
        assert!(!store.remove("127.0.0.1:5000").unwrap());
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), None);
        assert_eq!(store.get("docker.io").unwrap(), Some(creds));
    }

    #[test]
    fn keeps_other_fields_and_reads_url_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        fs::write(
            &path,
            format!(r#"{{"auths": {{"https://reg.example:5000/v2/": {{"auth": "{auth}"}}}}, "detachKeys": "ctrl-x"}}"#),
        )
        .unwrap();
        let store = CredentialStore::at(path.clone());
        assert_eq!(
            store.get("reg.example:5000").unwrap().map(|c| c.username),
            Some("bob".to_string())
        );
        store
            .store(
                "other:1",
                &Credentials {
                    username: "x".into(),
                    password: "y".into(),
                },
            )
            .unwrap();
        let json: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["detachKeys"], "ctrl-x");
        assert!(json["auths"]["https://reg.example:5000/v2/"].is_object());
    }

    #[test]
    fn refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "{not json").unwrap();
        let err = CredentialStore::at(path).get("h").unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
