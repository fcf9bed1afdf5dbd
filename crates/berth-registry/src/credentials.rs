//! Registry credentials in Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): `{"auths": {"host:port": {"auth": base64("user:password")}}}`, read and written
//! exactly as the `docker` CLI does, so both tools share one login. Other fields of the file are kept as they
//! are; the file is replaced atomically and is readable by its owner only.
//!
//! Credential helpers are honoured as Docker does: a registry listed in `credHelpers`, or every registry
//! when `credsStore` is set, keeps its secret in `docker-credential-<name>` (`get`, `store`, `erase` over
//! stdin/stdout), and `auths` only lists it. A helper that is not installed is skipped: the file's own
//! `auths` are used instead.

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
        if let Some(helper) = self.helper(&config, host) {
            return helper.get(&Self::key_for(host));
        }
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

    /// Stores credentials for `host`, replacing any for the same registry (in its credential helper when
    /// one is configured and installed).
    pub fn store(&self, host: &str, credentials: &Credentials) -> Result<(), RegistryError> {
        let mut config = self.read()?;
        let key = Self::key_for(host);
        let helper = self.helper(&config, host);
        let entry = match &helper {
            // The helper keeps the secret; the file only lists the registry, as Docker writes it.
            Some(_) => serde_json::json!({}),
            None => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", credentials.username, credentials.password));
                serde_json::json!({ "auth": encoded })
            }
        };
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
        auths.insert(key.clone(), entry);
        if let Some(helper) = helper {
            helper.store(&key, credentials)?;
        }
        self.write(&config)
    }

    /// Removes the credentials for `host` (from its credential helper too); returns whether there were
    /// any.
    pub fn remove(&self, host: &str) -> Result<bool, RegistryError> {
        let mut config = self.read()?;
        let key = Self::key_for(host);
        let erased = match self.helper(&config, host) {
            Some(helper) => helper.erase(&key)?,
            None => false,
        };
        let wanted = normalise_host(&key);
        let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else {
            return Ok(erased);
        };
        let before = auths.len();
        auths.retain(|k, _| normalise_host(k) != wanted);
        if auths.len() == before {
            return Ok(erased);
        }
        self.write(&config)?;
        Ok(true)
    }

    /// The credential helper for `host`: its `credHelpers` entry, else `credsStore`; none when the helper
    /// program is not installed.
    fn helper(&self, config: &Map<String, Value>, host: &str) -> Option<Helper> {
        let wanted = normalise_host(&Self::key_for(host));
        let name = config
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|helpers| {
                helpers
                    .iter()
                    .find(|(k, _)| normalise_host(k) == wanted)
                    .and_then(|(_, v)| v.as_str())
            })
            .or_else(|| config.get("credsStore").and_then(Value::as_str))
            .filter(|n| !n.is_empty() && !n.contains('/'))?;
        Helper::find(name, &self.path)
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

/// A `docker-credential-<name>` program.
struct Helper {
    program: PathBuf,
    /// The config file, for messages.
    config: PathBuf,
}

/// What helpers answer to `get`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperCredentials {
    username: String,
    secret: String,
}

impl Helper {
    /// The helper program on `PATH`, if installed.
    fn find(name: &str, config: &Path) -> Option<Self> {
        let file = format!("docker-credential-{name}");
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(&file))
            .find(|candidate| {
                fs::metadata(candidate).is_ok_and(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
            })
            .map(|program| Self {
                program,
                config: config.to_path_buf(),
            })
    }

    /// Runs `docker-credential-<name> <action>` with `input` on stdin; returns whether it succeeded and
    /// its stdout.
    fn call(&self, action: &str, input: &str) -> Result<(bool, String), RegistryError> {
        let mut child = std::process::Command::new(&self.program)
            .arg(action)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| RegistryError::Io {
                op: "run credential helper",
                path: self.program.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is its own business.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| RegistryError::Io {
                op: "run credential helper",
                path: self.program.clone(),
                source,
            })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() && text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        Ok((out.status.success(), text))
    }

    fn failed(&self, action: &str, text: &str) -> RegistryError {
        RegistryError::Credentials {
            path: self.config.clone(),
            reason: format!(
                "credential helper {} {action}: {}",
                self.program.display(),
                text.trim()
            ),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Credentials>, RegistryError> {
        let (ok, text) = self.call("get", key)?;
        if !ok {
            if text.contains("credentials not found") {
                return Ok(None);
            }
            return Err(self.failed("get", &text));
        }
        let found: HelperCredentials =
            serde_json::from_str(&text).map_err(|e| self.failed("get", &e.to_string()))?;
        if found.username.is_empty() && found.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            username: found.username,
            password: found.secret,
        }))
    }

    fn store(&self, key: &str, credentials: &Credentials) -> Result<(), RegistryError> {
        let input = serde_json::json!({
            "ServerURL": key,
            "Username": credentials.username,
            "Secret": credentials.password,
        })
        .to_string();
        match self.call("store", &input)? {
            (true, _) => Ok(()),
            (false, text) => Err(self.failed("store", &text)),
        }
    }

    /// Erases the helper's entry; false when it had none.
    fn erase(&self, key: &str) -> Result<bool, RegistryError> {
        match self.call("erase", key)? {
            (true, _) => Ok(true),
            (false, text) if text.contains("credentials not found") => Ok(false),
            (false, text) => Err(self.failed("erase", &text)),
        }
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
    fn a_helper_that_is_not_installed_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("dan:pw");
        fs::write(
            &path,
            format!(r#"{{"credsStore": "berth-no-such-helper", "auths": {{"h:1": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        let store = CredentialStore::at(path);
        assert_eq!(
            store.get("h:1").unwrap().map(|c| c.username),
            Some("dan".to_string())
        );
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
