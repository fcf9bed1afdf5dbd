//! Errors of the registry client, each saying what failed against which registry in words a user can act on.

use std::io;
use std::path::PathBuf;

use berth_store::StoreError;
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// Everything that can go wrong talking to a registry or moving images between it and the store.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store refused or failed (including a malformed reference).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry has no manifest under that tag or digest.
    #[error("manifest for {reference} not found: manifest unknown")]
    ManifestUnknown {
        /// The reference asked for.
        reference: String,
    },
    /// The registry has no such repository.
    #[error("repository {repository} not found: name unknown")]
    RepositoryUnknown {
        /// The repository asked for.
        repository: String,
    },
    /// The registry wants credentials that were not given, or refused the ones given.
    #[error("{host}: unauthorized: {detail}")]
    Unauthorized {
        /// The registry.
        host: String,
        /// What the registry said, or how to log in.
        detail: String,
    },
    /// The registry could not be reached (connection refused, DNS, TLS, timeout).
    #[error("cannot reach registry {host}: {reason}")]
    Unreachable {
        /// The registry.
        host: String,
        /// The underlying cause.
        reason: String,
    },
    /// Content whose digest is not the one announced: the blob is refused and nothing of it is kept.
    #[error("{what} from {host} does not match its digest: {detail}")]
    DigestMismatch {
        /// The registry.
        host: String,
        /// Which blob or manifest.
        what: String,
        /// Expected and actual digests.
        detail: String,
    },
    /// Any other answer of the registry that is not what the distribution protocol expects.
    #[error("registry {host}: {message}")]
    Registry {
        /// The registry.
        host: String,
        /// What happened, with the registry's own message when it sent one.
        message: String,
    },
    /// A manifest, index or config that cannot be used.
    #[error("invalid image {what}: {reason}")]
    InvalidImage {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest or layer of a media type Berth does not handle.
    #[error("unsupported media type {media_type} for {what}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// Of what.
        what: String,
    },
    /// An image index without an entry for the wanted platform.
    #[error(
        "no matching manifest for {wanted} in the manifest list entries (it has: {available})"
    )]
    NoMatchingPlatform {
        /// The platform asked for.
        wanted: String,
        /// The platforms the index offers.
        available: String,
    },
    /// A single-platform image that is not of the platform asked for.
    #[error("image with reference {reference} was found but does not match the specified platform: wanted {wanted}, actual: {actual}")]
    PlatformMismatch {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The image's platform.
        actual: String,
    },
    /// `push` of a name no local image has.
    #[error("An image does not exist locally with the tag: {0}")]
    NoSuchLocalTag(String),
    /// A bad request from the caller (for example a tag with `--all-tags`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The Docker credentials file cannot be read or written.
    #[error("credentials file {path}: {reason}")]
    Credentials {
        /// The config.json.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Berth's registry settings file cannot be used.
    #[error("settings file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The async runtime that drives the network could not be started.
    #[error("start the network runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// What a request was about, to turn a protocol error into a message that names it.
#[derive(Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// A manifest by reference (`host/repo:tag`).
    Manifest(&'a str),
    /// A blob by digest.
    Blob(&'a str),
    /// Anything else about a repository.
    Repository(&'a str),
}

impl RegistryError {
    /// Translates an error of the distribution client, for `host`, about `subject`.
    pub(crate) fn from_oci(err: OciDistributionError, host: &str, subject: Subject<'_>) -> Self {
        let host = host.to_string();
        let not_found = |subject: Subject<'_>| match subject {
            Subject::Manifest(reference) => RegistryError::ManifestUnknown {
                reference: reference.to_string(),
            },
            Subject::Repository(repository) => RegistryError::RepositoryUnknown {
                repository: repository.to_string(),
            },
            Subject::Blob(digest) => RegistryError::Registry {
                host: host.clone(),
                message: format!("blob {digest} not found: blob unknown to registry"),
            },
        };
        let login_hint = format!("authentication required (log in with `berth login {host}`)");
        match err {
            OciDistributionError::UnauthorizedError { .. } => RegistryError::Unauthorized {
                host,
                detail: login_hint,
            },
            OciDistributionError::AuthenticationFailure(reason) => RegistryError::Unauthorized {
                host,
                detail: first_line(&reason),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                match first.map(|e| &e.code) {
                    Some(OciErrorCode::ManifestUnknown) | Some(OciErrorCode::NotFound) => {
                        not_found(subject)
                    }
                    Some(OciErrorCode::NameUnknown) => match subject {
                        Subject::Manifest(reference) => RegistryError::ManifestUnknown {
                            reference: reference.to_string(),
                        },
                        other => not_found(other),
                    },
                    Some(OciErrorCode::BlobUnknown) => not_found(Subject::Blob(match subject {
                        Subject::Blob(d) => d,
                        _ => "",
                    })),
                    Some(OciErrorCode::Unauthorized) => RegistryError::Unauthorized {
                        host,
                        detail: login_hint,
                    },
                    Some(OciErrorCode::Denied) => RegistryError::Unauthorized {
                        host,
                        detail: format!(
                            "denied: {}",
                            first.map(|e| e.message.as_str()).unwrap_or_default()
                        ),
                    },
                    _ => RegistryError::Registry {
                        host,
                        message: envelope
                            .errors
                            .iter()
                            .map(|e| format!("{:?}: {}", e.code, e.message))
                            .collect::<Vec<_>>()
                            .join("; "),
                    },
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 => RegistryError::Unauthorized {
                    host,
                    detail: login_hint,
                },
                403 => RegistryError::Unauthorized {
                    host,
                    detail: format!("denied: {}", first_line(&message)),
                },
                404 => not_found(subject),
                _ => {
                    let reason = reqwest::StatusCode::from_u16(code)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("");
                    let detail = first_line(&message);
                    RegistryError::Registry {
                        host,
                        message: if detail.is_empty() {
                            format!("{}: HTTP {code} {reason}", describe(subject))
                        } else {
                            format!("{}: HTTP {code} {reason}: {detail}", describe(subject))
                        },
                    }
                }
            },
            OciDistributionError::RequestError(e) => from_reqwest(&e, &host),
            OciDistributionError::DigestError(e) => RegistryError::DigestMismatch {
                host,
                what: describe(subject),
                detail: e.to_string(),
            },
            OciDistributionError::IoError(e) => io_chain(&e, &host, subject),
            other => RegistryError::Registry {
                host,
                message: format!("{}: {other}", describe(subject)),
            },
        }
    }
}

impl RegistryError {
    /// Says that a transient failure was tried `attempts` times before it became this error.
    pub(crate) fn after_attempts(self, attempts: u32) -> Self {
        let note = format!(" (gave up after {attempts} attempts)");
        match self {
            RegistryError::Registry { host, message } => RegistryError::Registry {
                host,
                message: message + &note,
            },
            RegistryError::Unreachable { host, reason } => RegistryError::Unreachable {
                host,
                reason: reason + &note,
            },
            other => other,
        }
    }
}

/// Maps a transport error: connection and timeout problems are [`RegistryError::Unreachable`].
pub(crate) fn from_reqwest(e: &reqwest::Error, host: &str) -> RegistryError {
    let host = host.to_string();
    if let Some(status) = e.status() {
        return match status.as_u16() {
            401 | 403 => RegistryError::Unauthorized {
                detail: format!("authentication required (log in with `berth login {host}`)"),
                host,
            },
            code => RegistryError::Registry {
                host,
                message: format!("HTTP {code}"),
            },
        };
    }
    if e.is_connect() || e.is_timeout() {
        // The innermost cause says it best ("Connection refused", "dns error: …"); the URL says where.
        let mut cause: &(dyn std::error::Error + 'static) = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let what = if e.is_timeout() && !e.is_connect() {
            "timed out".to_string()
        } else {
            cause.to_string()
        };
        let reason = match e.url() {
            Some(url) => format!("{what} ({url})"),
            None => what,
        };
        RegistryError::Unreachable { host, reason }
    } else {
        let reason = root_cause(e);
        RegistryError::Registry {
            host,
            message: reason,
        }
    }
}

/// An I/O error raised inside a body stream: a digest failure of the verifying stream, or a transport error.
fn io_chain(e: &io::Error, host: &str, subject: Subject<'_>) -> RegistryError {
    let text = root_cause(e);
    if text.contains("digest") {
        return RegistryError::DigestMismatch {
            host: host.to_string(),
            what: describe(subject),
            detail: text,
        };
    }
    RegistryError::Registry {
        host: host.to_string(),
        message: format!("{}: {text}", describe(subject)),
    }
}

fn describe(subject: Subject<'_>) -> String {
    match subject {
        Subject::Manifest(r) => format!("manifest {r}"),
        Subject::Blob(d) => format!("blob {d}"),
        Subject::Repository(r) => format!("repository {r}"),
    }
}

/// The messages of an error and its sources, without repeats, joined with `: `.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else {
        line.to_string()
    }
}
