//! `login`: checks credentials against a registry the way Docker does (the `/v2/` endpoint with HTTP Basic
//! auth, or, when the registry answers with a Bearer challenge, a token request to its realm), then stores
//! them; `logout` removes them.

use crate::config::RegistryConfig;
use crate::credentials::{CredentialStore, Credentials};
use crate::error::{from_reqwest, RegistryError};

/// The host Docker Hub's API answers on.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The registry host a `login`/`logout` argument names: `https://host:5000/v2/` → `host:5000`, nothing or
/// Docker Hub's URL → `docker.io`.
pub fn normalise_server(server: Option<&str>) -> String {
    let Some(server) = server.map(str::trim).filter(|s| !s.is_empty()) else {
        return berth_store::reference::DEFAULT_DOMAIN.to_string();
    };
    let without_scheme = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => {
            berth_store::reference::DEFAULT_DOMAIN.to_string()
        }
        _ => host,
    }
}

/// Verifies `credentials` against `host` and, when the registry accepts them, stores them in `store`.
pub fn login(
    host: &str,
    credentials: &Credentials,
    store: &CredentialStore,
    config: &RegistryConfig,
) -> Result<(), RegistryError> {
    crate::run(verify(host, credentials, config))??;
    store.store(host, credentials)
}

/// Removes the stored credentials for `host`; returns whether there were any.
pub fn logout(host: &str, store: &CredentialStore) -> Result<bool, RegistryError> {
    store.remove(host)
}

async fn verify(
    host: &str,
    credentials: &Credentials,
    config: &RegistryConfig,
) -> Result<(), RegistryError> {
    let api_host = if host == berth_store::reference::DEFAULT_DOMAIN {
        DOCKER_HUB_API
    } else {
        host
    };
    // The host's settings (certs.d, insecure) are the registry's name's, as for pulls and pushes.
    let transport = crate::tls::transport(host, config).await?;
    let client = transport.http_client(host, std::time::Duration::from_secs(60))?;
    let url = transport.url(api_host, "/v2/");
    let response = client
        .get(&url)
        .basic_auth(&credentials.username, Some(&credentials.password))
        .send()
        .await
        .map_err(|e| from_reqwest(&e, host))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let refused = |detail: String| RegistryError::Unauthorized {
        host: host.to_string(),
        detail,
    };
    if status.as_u16() != 401 {
        return Err(RegistryError::Registry {
            host: host.to_string(),
            message: format!("GET {url}: HTTP {status}"),
        });
    }
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(Challenge::parse);
    let Some(Challenge::Bearer { realm, service }) = challenge else {
        // A Basic challenge to a request that carried Basic credentials: they are wrong.
        return Err(refused("incorrect username or password".to_string()));
    };
    let mut query: Vec<(&str, &str)> = vec![("account", credentials.username.as_str())];
    if let Some(service) = &service {
        query.push(("service", service));
    }
    let token_url =
        reqwest::Url::parse_with_params(&realm, &query).map_err(|e| RegistryError::Registry {
            host: host.to_string(),
            message: format!("invalid token realm {realm:?}: {e}"),
        })?;
    let response = client
        .get(token_url)
        .basic_auth(&credentials.username, Some(&credentials.password))
        .send()
        .await
        .map_err(|e| from_reqwest(&e, host))?;
    match response.status().as_u16() {
        200 => Ok(()),
        401 | 403 => Err(refused("incorrect username or password".to_string())),
        code => Err(RegistryError::Registry {
            host: host.to_string(),
            message: format!("token request to {realm}: HTTP {code}"),
        }),
    }
}

/// A `WWW-Authenticate` challenge, as far as login needs it.
#[derive(Debug, PartialEq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Other,
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"`; any other scheme is `Other`.
    fn parse(header: &str) -> Self {
        let header = header.trim();
        let Some((scheme, params)) = header.split_once(char::is_whitespace) else {
            return Self::Other;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Self::Other;
        }
        let mut realm = None;
        let mut service = None;
        let mut rest = params.trim();
        while !rest.is_empty() {
            let Some((key, after)) = rest.split_once('=') else {
                break;
            };
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let after = after.trim_start();
            let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
                match quoted.find('"') {
                    Some(end) => (&quoted[..end], &quoted[end + 1..]),
                    None => (quoted, ""),
                }
            } else {
                match after.find(',') {
                    Some(end) => (&after[..end], &after[end..]),
                    None => (after, ""),
                }
            };
            match key.as_str() {
                "realm" => realm = Some(value.to_string()),
                "service" => service = Some(value.to_string()),
                _ => {}
            }
            rest = remainder.trim_start().trim_start_matches(',').trim_start();
        }
        match realm {
            Some(realm) => Self::Bearer { realm, service },
            None => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_normalised() {
        assert_eq!(normalise_server(None), "docker.io");
        assert_eq!(
            normalise_server(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(
            normalise_server(Some("http://127.0.0.1:5000/v2/")),
            "127.0.0.1:5000"
        );
        assert_eq!(normalise_server(Some("Reg.Example:443")), "reg.example:443");
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            }
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm=https://a/t, service=svc"#),
            Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("svc".into())
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="basic-realm""#),
            Challenge::Other
        );
        assert_eq!(Challenge::parse(""), Challenge::Other);
    }
}
