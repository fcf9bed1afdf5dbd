//! pull, push, login and logout against a real registry: Debian's `docker-registry` (distribution 2.8)
//! started by each test on 127.0.0.1 with its own storage, plus `skopeo` on the other side of the wire.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{p, run_ok, skopeo, skopeo_json, stderr, stdout, Berth};
use serde_json::{json, Value};
use sha2::Digest as _;

/// A registry server for one test, killed on drop.
struct Registry {
    child: Child,
    /// The address it listens on (127.0.0.1 unless started with [`Registry::start_at`]).
    ip: String,
    port: u16,
    dir: tempfile::TempDir,
}

/// How a test registry authenticates.
enum Auth<'a> {
    /// Not at all.
    None,
    /// htpasswd Basic auth for one user and password.
    Basic(&'a str, &'a str),
    /// Bearer tokens from this token server.
    Token(&'a TokenServer),
}

impl Registry {
    /// A plain-HTTP registry, authenticating as `auth` says.
    fn start(auth: Auth<'_>) -> Self {
        Self::start_with_tls(auth, None)
    }

    /// A registry serving HTTPS with this certificate and key when given.
    fn start_with_tls(auth: Auth<'_>, tls: Option<(&Path, &Path)>) -> Self {
        Self::start_at("127.0.0.1", auth, tls)
    }

    /// A registry listening on `ip`, serving HTTPS with this certificate and key when given.
    fn start_at(ip: &str, auth: Auth<'_>, tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .unwrap();
        let auth = match auth {
            Auth::Token(server) => format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.port,
                server.cert.display()
            ),
            Auth::Basic(user, password) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd (apache2-utils)");
                assert!(out.status.success(), "htpasswd: {}", stderr(&out));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::None => String::new(),
        };
        let tls = match tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let started = start_on_free_port(ip, |port| {
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n{tls}{auth}",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start /usr/bin/docker-registry (apt package docker-registry)")
        });
        let Some((child, port)) = started else {
            panic!(
                "docker-registry did not start: {}",
                std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
            );
        };
        Self {
            child,
            ip: ip.to_string(),
            port,
            dir,
        }
    }

    fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Where the registry keeps a blob's bytes.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN_SERVICE: &str = "berth-test-registry";
const TOKEN_ISSUER: &str = "berth-test-issuer";

/// A token server (Docker's token authentication): answers `GET /token?service=…&scope=…` carrying the
/// right Basic credentials with a JWT signed (RS256, by `openssl`) with a key whose self-signed certificate
/// the registry trusts, granting every scope asked for; anything else gets 401.
struct TokenServer {
    port: u16,
    dir: tempfile::TempDir,
    cert: PathBuf,
    /// Requests answered with a token, for the test to check the flow really went through here.
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    fn start(user: &'static str, password: &'static str) -> Self {
        Self::with_lifetime(user, password, 300)
    }

    /// A token server whose tokens expire `lifetime` seconds after they are issued.
    fn with_lifetime(user: &'static str, password: &'static str, lifetime: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-token-")
            .tempdir()
            .unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        run_ok(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=berth-test-token-signer",
            "-keyout",
            p(&key),
            "-out",
            p(&cert),
        ]));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in", p(&cert)])
            .output()
            .unwrap()
            .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let _ =
                    answer_token_request(stream, &expected, &key, &der, user, &counter, lifetime);
            }
        });
        Self {
            port,
            dir,
            cert,
            issued,
        }
    }
}

fn answer_token_request(
    mut stream: TcpStream,
    expected_auth: &str,
    key: &Path,
    cert_der: &[u8],
    user: &str,
    issued: &std::sync::atomic::AtomicUsize,
    lifetime: u64,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut access = Vec::new();
    for pair in query.split('&') {
        if let Some(scope) = pair.strip_prefix("scope=") {
            let scope = url_decode(scope);
            // repository:name:actions (a name may contain ':' only before a port, never here)
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if let [kind, name, actions] = parts.as_slice() {
                access.push(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
            }
        }
    }
    if authorization.as_deref() != Some(expected_auth) {
        let body = r#"{"details":"incorrect username or password"}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    });
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": user,
        "aud": TOKEN_SERVICE,
        "exp": now + lifetime,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", issued.load(std::sync::atomic::Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())?;
    let signature = openssl.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", b64(&signature));
    issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A port nothing listens on right now.
/// Starts a server with `spawn(port)` on a free port of `ip` and waits until it listens; another port
/// is tried when the server exits first (the port was taken meanwhile). `None` after five tries.
fn start_on_free_port(ip: &str, mut spawn: impl FnMut(u16) -> Child) -> Option<(Child, u16)> {
    for _ in 0..5 {
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = spawn(port);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect((ip, port)).is_ok() {
                return Some((child, port));
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A berth command failing with exit code `code`; returns its stderr.
fn fails(b: &Berth, args: &[&str], code: i32) -> String {
    let out = b.run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "berth {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// Runs berth with `DOCKER_CONFIG` pointing at `config_dir` (and `input` on stdin).
fn with_config(b: &Berth, config_dir: &Path, args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = b.cmd(args);
    cmd.env("DOCKER_CONFIG", config_dir);
    match input {
        Some(input) => common::output_with_stdin(&mut cmd, input.as_bytes()),
        None => cmd.output().unwrap(),
    }
}

/// The image IDs in a store.
fn image_ids(b: &Berth) -> Vec<String> {
    b.ok(&["images", "-q", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// What interrupted downloads kept in the store for the next pull to resume.
fn partial_downloads(b: &Berth) -> Vec<(String, u64)> {
    std::fs::read_dir(b.root.join("ingest"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let size = e.metadata().map_or(0, |m| m.len());
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Files left in the store's tmp dir (aborted downloads must leave none).
fn tmp_files(b: &Berth) -> Vec<String> {
    std::fs::read_dir(b.root.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn push_is_read_by_skopeo_and_pulled_into_a_fresh_store() {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let target = format!("{}/berth/bb:v1", registry.host());
    b.ok(&["tag", "busybox", &target]);
    let out = b.ok(&["push", &target]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "The push refers to repository [{}/berth/bb]",
            registry.host()
        ),
        "{out}"
    );
    assert!(lines[1].ends_with(": Pushed"), "{out}");
    let last = lines.last().unwrap();
    assert!(last.starts_with("v1: digest: sha256:"), "{out}");
    let digest = last.split_whitespace().nth(2).unwrap().to_string();
    let size: u64 = last.rsplit(' ').next().unwrap().parse().unwrap();

    // skopeo sees the very manifest Berth has, with Berth's layer.
    let remote = format!("docker://{target}");
    let inspect = skopeo_json(&["inspect", "--tls-verify=false", &remote]);
    assert_eq!(inspect["Digest"], json!(digest));
    let layers: Value =
        serde_json::from_str(&b.ok(&["inspect", "-f", "{{json .RootFS.Layers}}", "busybox"]))
            .unwrap();
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &remote]);
    assert_eq!(raw.len() as u64, size);
    let config = skopeo_json(&["inspect", "--config", "--tls-verify=false", &remote]);
    assert_eq!(config["rootfs"]["diff_ids"], layers);
    // After a push the image is known by its registry digest.
    assert_eq!(
        b.ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", &target])
            .trim(),
        json!([format!("{}/berth/bb@{digest}", registry.host())]).to_string()
    );

    // A fresh store pulls it and runs it.
    let fresh = Berth::empty();
    let out = fresh.ok(&["pull", &target]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "v1: Pulling from berth/bb", "{out}");
    assert!(out.contains(": Pull complete\n"), "{out}");
    assert!(out.contains(&format!("Digest: {digest}\n")), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {target}\n")),
        "{out}"
    );
    assert_eq!(*lines.last().unwrap(), target);
    assert_eq!(
        fresh.ok(&["run", "--rm", &target, "echo", "pulled"]),
        "pulled\n"
    );
    assert_eq!(
        fresh
            .ok(&[
                "images",
                "--digests",
                "--format",
                "{{.Repository}} {{.Tag}} {{.Digest}}"
            ])
            .trim(),
        format!("{}/berth/bb v1 {digest}", registry.host())
    );
    assert_eq!(
        fresh.ok(&["inspect", "-f", "{{.Id}}", &target]),
        b.ok(&["inspect", "-f", "{{.Id}}", "busybox"])
    );
    // By digest too, and pulling again downloads nothing.
    let by_digest = format!("{}/berth/bb@{digest}", registry.host());
    assert_eq!(
        fresh.ok(&["run", "--rm", &by_digest, "echo", "by digest"]),
        "by digest\n"
    );
    let again = fresh.ok(&["pull", &target]);
    assert!(again.contains(": Already exists\n"), "{again}");
    assert!(!again.contains("Pull complete"), "{again}");
    assert!(again.contains("Status: Image is up to date for"), "{again}");
    assert_eq!(fresh.ok(&["pull", "-q", &target]), format!("{target}\n"));

    // Re-pushing skips every blob.
    let out = b.ok(&["push", &target]);
    assert!(!out.contains("Pushed"), "{out}");
    assert!(out.contains(": Layer already exists\n"), "{out}");
    assert!(
        out.ends_with(&format!("v1: digest: {digest} size: {size}\n")),
        "{out}"
    );

    // A committed image (its new layer a plain tar, as commit stores it) is pushable as it is.
    b.ok(&[
        "run",
        "--name",
        "maker",
        "busybox",
        "sh",
        "-c",
        "echo committed > /made",
    ]);
    let committed = format!("{}/berth/committed:1", registry.host());
    b.ok(&["commit", "maker", &committed]);
    let out = b.ok(&["push", &committed]);
    // Its base layer is mounted from the repository busybox was pushed to, not sent again.
    assert!(out.contains(": Mounted from berth/bb\n"), "{out}");
    assert_eq!(out.matches(": Pushed\n").count(), 1, "{out}");
    assert_eq!(
        fresh.ok(&["run", "--rm", &committed, "cat", "/made"]),
        "committed\n"
    );

    // push -a pushes every tag of the repository.
    b.ok(&[
        "tag",
        "busybox",
        &format!("{}/berth/bb:v2", registry.host()),
    ]);
    let out = b.ok(&["push", "-a", &format!("{}/berth/bb", registry.host())]);
    assert!(
        out.contains("v1: digest:") && out.contains("v2: digest:"),
        "{out}"
    );
    let tags = skopeo_json(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/berth/bb", registry.host()),
    ]);
    assert_eq!(tags["Tags"], json!(["v1", "v2"]));
    // pull -a brings them all.
    let all = Berth::empty();
    let out = all.ok(&["pull", "-a", &format!("{}/berth/bb", registry.host())]);
    assert!(
        out.contains("v1: Pulling from") && out.contains("v2: Pulling from"),
        "{out}"
    );
    assert_eq!(
        all.ok(&["images", "--format", "{{.Tag}}"]).lines().count(),
        2
    );
}

#[test]
fn images_pushed_by_skopeo_are_pulled_and_run_and_run_pulls_what_is_missing() {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let archive = b.dir.path().join("bb.tar");
    b.ok(&["save", "-o", p(&archive), "busybox"]);
    // A Docker schema 2 manifest with gzip layers, and an OCI manifest.
    let docker_ref = format!("{}/skopeo/bb:docker", registry.host());
    let oci_ref = format!("{}/skopeo/bb:oci", registry.host());
    for (reference, format) in [(&docker_ref, "v2s2"), (&oci_ref, "oci")] {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-compress",
            "--format",
            format,
            &format!("docker-archive:{}", p(&archive)),
            &format!("docker://{reference}"),
        ]);
    }
    let raw: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{docker_ref}"),
    ]))
    .unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let fresh = Berth::empty();
    // run pulls a missing image, reporting on stderr; stdout is the container's alone.
    let out = fresh.run(&["run", "--rm", &docker_ref, "echo", "from skopeo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from skopeo\n");
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("Unable to find image '{docker_ref}' locally\n")),
        "{err}"
    );
    assert!(err.contains("Status: Downloaded newer image for"), "{err}");
    // create too; the OCI manifest is kept as the registry has it.
    let out = fresh.run(&["create", "--name", "c", &oci_ref, "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim().len(), 64);
    assert!(
        stderr(&out).contains("Unable to find image"),
        "{}",
        stderr(&out)
    );
    let oci_digest = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{oci_ref}"),
    ])["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fresh
            .ok(&["images", "--digests", "--format", "{{.Digest}}", &oci_ref])
            .trim(),
        oci_digest
    );
    // Each tag shows the digest it was pulled as, even when both name the same image (skopeo kept the
    // config, so the Docker and the OCI manifests describe one image).
    let docker_digest = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{docker_ref}"),
    ])["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fresh
            .ok(&[
                "images",
                "--digests",
                "--format",
                "{{.Digest}}",
                &docker_ref
            ])
            .trim(),
        docker_digest
    );
    assert_eq!(fresh.ok(&["start", "-a", "c"]), "");

    // --pull never does not pull; --pull always does even when the image is there.
    let never = Berth::empty();
    let err = fails(
        &never,
        &["run", "--rm", "--pull", "never", &docker_ref, "true"],
        125,
    );
    assert!(err.contains("No such image"), "{err}");
    assert!(image_ids(&never).is_empty());
    let out = fresh.run(&[
        "run",
        "--rm",
        "--pull",
        "always",
        &docker_ref,
        "echo",
        "again",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "again\n");
    assert!(!stderr(&out).contains("Unable to find"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Status: Image is up to date for"),
        "{}",
        stderr(&out)
    );
    // A missing image that the registry does not have either.
    let err = fails(
        &fresh,
        &[
            "run",
            "--rm",
            &format!("{}/skopeo/none:1", registry.host()),
            "true",
        ],
        125,
    );
    assert!(err.contains("manifest unknown"), "{err}");
}

/// Writes a blob into an OCI layout directory; returns its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

#[test]
fn an_image_index_is_pulled_for_the_wanted_platform() {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    // An OCI layout with one index of two images: the busybox of this store (amd64 or whatever this host
    // is) and the same layer under a config that says arm64/v8.
    let archive = b.dir.path().join("bb.tar");
    b.ok(&["save", "-o", p(&archive), "busybox"]);
    let layout = b.dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let host_entry = index["manifests"][0].clone();
    let blob = |digest: &Value| {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    };
    let manifest: Value = serde_json::from_slice(&blob(&host_entry["digest"])).unwrap();
    let mut config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
    let host_arch = config["architecture"].as_str().unwrap().to_string();
    let other_arch = if host_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    config["architecture"] = json!(other_arch);
    if other_arch == "arm64" {
        config["variant"] = json!("v8");
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(&layout, &config_bytes);
    let mut other = manifest.clone();
    other["config"]["digest"] = json!(config_digest);
    other["config"]["size"] = json!(config_bytes.len());
    let other_bytes = serde_json::to_vec(&other).unwrap();
    let other_digest = put_blob(&layout, &other_bytes);
    let mut other_platform = json!({"os": "linux", "architecture": other_arch});
    if other_arch == "arm64" {
        other_platform["variant"] = json!("v8");
    }
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": other_digest,
                "size": other_bytes.len(),
                "platform": other_platform,
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": host_entry["digest"],
                "size": host_entry["size"],
                "platform": {"os": "linux", "architecture": host_arch},
            },
        ],
    });
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_digest = put_blob(&layout, &nested_bytes);
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested_digest,
            "size": nested_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let target = format!("{}/multi/bb:1", registry.host());
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", p(&layout)),
        &format!("docker://{target}"),
    ]);

    // skopeo may rewrite the index on the way: the registry's copy is the reference.
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", stderr(&raw));
    let index: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    let nested_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw.stdout)));

    // This host's platform by default; the index digest is what the reference is known by.
    let fresh = Berth::empty();
    let out = fresh.ok(&["pull", &target]);
    assert!(out.contains(&format!("Digest: {nested_digest}\n")), "{out}");
    assert_eq!(
        fresh
            .ok(&["inspect", "-f", "{{.Architecture}}", &target])
            .trim(),
        host_arch
    );
    assert_eq!(
        fresh.ok(&["run", "--rm", &target, "echo", "native"]),
        "native\n"
    );
    assert_eq!(
        fresh
            .ok(&["inspect", "-f", "{{json .RepoDigests}}", &target])
            .trim(),
        json!([format!("{}/multi/bb@{nested_digest}", registry.host())]).to_string()
    );
    // Another platform when asked.
    let other_store = Berth::empty();
    other_store.ok(&[
        "pull",
        "--platform",
        &format!("linux/{other_arch}"),
        &target,
    ]);
    assert_eq!(
        other_store
            .ok(&["inspect", "-f", "{{.Architecture}}", &target])
            .trim(),
        other_arch
    );
    // None that the index lacks.
    let err = fails(
        &Berth::empty(),
        &["pull", "--platform", "linux/s390x", &target],
        1,
    );
    assert!(
        err.contains("no matching manifest for linux/s390x"),
        "{err}"
    );
    let err = fails(
        &Berth::empty(),
        &["pull", "--platform", "linux/", &target],
        1,
    );
    assert!(err.contains("invalid platform"), "{err}");
}

#[test]
fn basic_auth_needs_login_and_logout_forgets() {
    let registry = Registry::start(Auth::Basic("alice", "s3cret"));
    let b = Berth::with_busybox();
    let config_dir = b.dir.path().join("docker-config");
    let config_file = config_dir.join("config.json");
    let host = registry.host();
    let target = format!("{host}/private/bb:1");
    b.ok(&["tag", "busybox", &target]);

    let out = with_config(&b, &config_dir, &["push", &target], None);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("{host}: unauthorized: authentication required")),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("berth login {host}")),
        "{}",
        stderr(&out)
    );

    // Wrong password: refused, nothing stored.
    let out = with_config(
        &b,
        &config_dir,
        &["login", "-u", "alice", "-p", "wrong", &host],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("incorrect username or password"),
        "{}",
        stderr(&out)
    );
    assert!(!config_file.exists());

    let out = with_config(
        &b,
        &config_dir,
        &["login", "-u", "alice", "-p", "s3cret", &host],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Login Succeeded\n");
    assert!(stderr(&out).contains("Using --password via the CLI is insecure"));
    let config: Value = serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    // base64("alice:s3cret"), as docker writes it.
    assert_eq!(config["auths"][&host]["auth"], "YWxpY2U6czNjcmV0");

    let out = with_config(&b, &config_dir, &["push", &target], None);
    assert!(out.status.success(), "{}", stderr(&out));
    // Pulling needs the credentials too.
    let fresh = Berth::empty();
    let out = with_config(&fresh, &config_dir, &["pull", &target], None);
    assert!(out.status.success(), "{}", stderr(&out));
    // skopeo reads the same credentials file.
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(&config_file)
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = with_config(&b, &config_dir, &["logout", &host], None);
    assert_eq!(
        stdout(&out),
        format!("Removing login credentials for {host}\n")
    );
    let config: Value = serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    assert!(config["auths"].get(&host).is_none(), "{config}");
    let out = with_config(&b, &config_dir, &["logout", &host], None);
    assert_eq!(stdout(&out), format!("Not logged in to {host}\n"));
    let out = with_config(&Berth::empty(), &config_dir, &["pull", &target], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    // --password-stdin.
    let out = with_config(
        &b,
        &config_dir,
        &["login", "-u", "alice", "--password-stdin", &host],
        Some("s3cret\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Login Succeeded\n");
    let out = with_config(&Berth::empty(), &config_dir, &["pull", "-q", &target], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{target}\n"));
    // Misuse of the flags.
    let out = with_config(
        &b,
        &config_dir,
        &["login", "--password-stdin", &host],
        Some("x"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Must provide --username with --password-stdin"));
    let out = with_config(&b, &config_dir, &["login", &host], None);
    assert!(
        out.status.success(),
        "stored credentials are reused: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("Authenticating with existing credentials"));
}

#[test]
fn bad_input_fails_clearly_and_adds_nothing() {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let host = registry.host();
    let target = format!("{host}/bad/bb:1");
    b.ok(&["tag", "busybox", &target]);
    b.ok(&["push", &target]);
    let fresh = Berth::empty();

    // An unknown tag, an unknown repository.
    let err = fails(&fresh, &["pull", &format!("{host}/bad/bb:nope")], 1);
    assert!(
        err.contains(&format!(
            "manifest for {host}/bad/bb:nope not found: manifest unknown"
        )),
        "{err}"
    );
    let err = fails(&fresh, &["pull", &format!("{host}/no/such:1")], 1);
    assert!(err.contains("not found"), "{err}");
    // A registry that is down.
    let down = format!("127.0.0.1:{}", free_port());
    let err = fails(&fresh, &["pull", &format!("{down}/bb:1")], 1);
    assert!(
        err.contains(&format!("cannot reach registry {down}")) && err.contains("refused"),
        "{err}"
    );
    let err = fails(&b, &["push", &format!("{down}/bb:1")], 1);
    assert!(
        err.contains("An image does not exist locally with the tag"),
        "{err}"
    );
    b.ok(&["tag", "busybox", &format!("{down}/bb:1")]);
    let err = fails(&b, &["push", &format!("{down}/bb:1")], 1);
    assert!(
        err.contains("cannot reach registry") && err.contains("refused"),
        "{err}"
    );
    // Malformed references.
    for bad in ["Bad/Name", "bb::1", &format!("{host}/bb@sha256:12")] {
        let err = fails(&fresh, &["pull", bad], 1);
        assert!(err.contains("invalid reference format"), "{bad}: {err}");
    }
    let err = fails(&fresh, &["pull", "-a", &target], 1);
    assert!(err.contains("tag can't be used with --all-tags"), "{err}");
    assert!(image_ids(&fresh).is_empty());

    // A layer whose bytes in the registry no longer match its digest.
    let layer = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{target}"),
    ])["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let blob = registry.blob_path(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let err = fails(&fresh, &["pull", &target], 1);
    assert!(
        err.contains(&format!("blob {layer}")) && err.contains("does not match its digest"),
        "{err}"
    );
    assert!(
        image_ids(&fresh).is_empty(),
        "a failed pull must add no image"
    );
    assert!(!fresh.root.join("blobs/sha256").join(&layer[7..]).exists());
    assert!(tmp_files(&fresh).is_empty(), "{:?}", tmp_files(&fresh));
    assert!(
        partial_downloads(&fresh).is_empty(),
        "bytes known to be wrong are not kept for resuming"
    );
    let err = fails(&fresh, &["run", "--rm", &target, "true"], 125);
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(image_ids(&fresh).is_empty());
}

#[test]
fn bearer_token_auth_from_a_token_server() {
    let tokens = TokenServer::start("bob", "t0ken-pw");
    let registry = Registry::start(Auth::Token(&tokens));
    let b = Berth::with_busybox();
    let config_dir = b.dir.path().join("docker-config");
    let host = registry.host();
    let target = format!("{host}/team/bb:1");
    b.ok(&["tag", "busybox", &target]);

    // Anonymous: the token server refuses, so does the registry.
    let out = with_config(&b, &config_dir, &["push", &target], None);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = with_config(
        &b,
        &config_dir,
        &["login", "-u", "bob", "--password-stdin", &host],
        Some("wrong\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("incorrect username or password"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Login gets a token (checking the password); push and pull use tokens the registry verifies.
    let out = with_config(
        &b,
        &config_dir,
        &["login", "-u", "bob", "--password-stdin", &host],
        Some("t0ken-pw\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Login Succeeded\n");
    let out = with_config(&b, &config_dir, &["push", &target], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(": Pushed\n"), "{}", stdout(&out));
    let fresh = Berth::empty();
    let out = with_config(
        &fresh,
        &config_dir,
        &["run", "--rm", &target, "echo", "with a token"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "with a token\n");
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    assert!(tokens.dir.path().exists());
}

/// This machine's address on its default route (else its first global IPv4 address): a registry there
/// is not on loopback, so Berth treats it as a remote one.
fn host_address() -> String {
    let route = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.1"])
        .output()
        .unwrap();
    let text = stdout(&route);
    if let Some(src) = text.split_whitespace().skip_while(|w| *w != "src").nth(1) {
        return src.to_string();
    }
    let addrs = stdout(
        &Command::new("ip")
            .args(["-4", "-o", "addr", "show", "scope", "global"])
            .output()
            .unwrap(),
    );
    addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .expect("a non-loopback IPv4 address for the insecure-registry tests")
        .to_string()
}

/// Writes a CA (`ca.crt`) and a server certificate it signs for `ip` (`server.crt`, `server.key`) in `dir`.
fn make_pki(dir: &Path, ip: &str) {
    let openssl = |args: &[&str]| run_ok(Command::new("openssl").args(args).current_dir(dir));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=berth-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={ip}"),
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext",
        "-out",
        "server.crt",
    ]);
}

#[test]
fn tls_with_a_ca_from_certs_d_or_listed_as_insecure() {
    // A registry on this machine's network address (not loopback) with a certificate from a private CA.
    let ip = host_address();
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &ip);
    let file = |name: &str| pki.path().join(name);
    let registry = Registry::start_at(
        &ip,
        Auth::None,
        Some((&file("server.crt"), &file("server.key"))),
    );
    let host = registry.host();
    let certs_d = pki.path().join("certs.d");
    let host_dir = certs_d.join(&host);
    let b = Berth::with_busybox();
    let target = format!("{host}/tls/bb:1");
    b.ok(&["tag", "busybox", &target]);
    let berth = |store: &Berth, args: &[&str]| {
        store
            .cmd(args)
            .env("BERTH_CERTS_DIR", &certs_d)
            .env("DOCKER_CONFIG", pki.path().join("docker"))
            .output()
            .unwrap()
    };

    // Without its CA the server's certificate is not trusted.
    let out = berth(&b, &["push", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("cannot reach registry") && stderr(&out).contains("certificate"),
        "{}",
        stderr(&out)
    );
    // Listed in insecure-registries: HTTPS without checking the certificate, as Docker.
    b.settings(&json!({ "insecure-registries": [host] }));
    let out = berth(&b, &["push", &target]);
    assert!(out.status.success(), "insecure: {}", stderr(&out));
    std::fs::remove_file(b.settings_path()).unwrap();

    // The CA in certs.d/<host:port>: verified HTTPS.
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(file("ca.crt"), host_dir.join("ca.crt")).unwrap();
    let out = berth(&b, &["push", &target]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("skopeo")
        .args(["inspect", "--cert-dir"])
        .arg(&host_dir)
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo over TLS: {}", stderr(&out));
    let fresh = Berth::empty();
    let out = berth(&fresh, &["run", "--rm", &target, "echo", "over tls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "over tls\n");
    let out = berth(&b, &["login", "-u", "any", "--password-stdin", &host]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdin is empty: {}",
        stdout(&out)
    );
    let out = berth(&b, &["login", "-u", "any", "-p", "pw", &host]);
    assert!(out.status.success(), "login over TLS: {}", stderr(&out));

    // Loopback is insecure without being listed (Docker's 127.0.0.0/8 rule): a TLS registry there is
    // used although nothing vouches for its certificate.
    let local =
        Registry::start_with_tls(Auth::None, Some((&file("server.crt"), &file("server.key"))));
    let local_target = format!("{}/tls/bb:2", local.host());
    b.ok(&["tag", "busybox", &local_target]);
    b.ok(&["push", &local_target]);
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{local_target}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn insecure_registries_fall_back_to_plain_http() {
    let ip = host_address();
    let registry = Registry::start_at(&ip, Auth::None, None);
    let host = registry.host();
    let b = Berth::with_busybox();
    let target = format!("{host}/plain/bb:1");
    b.ok(&["tag", "busybox", &target]);

    // Not loopback and not listed: HTTPS only, which this registry does not speak.
    let err = fails(&b, &["push", &target], 1);
    assert!(
        err.contains(&format!("cannot reach registry {host}")),
        "{err}"
    );

    // A network in insecure-registries covers it: HTTPS is tried, then plain HTTP.
    let settings = json!({ "insecure-registries": [format!("{ip}/32")] });
    b.settings(&settings);
    b.ok(&["push", &target]);
    let fresh = Berth::empty();
    fresh.settings(&settings);
    fresh.ok(&["pull", &target]);
    assert_eq!(
        fresh.ok(&["run", "--rm", &target, "echo", "plain"]),
        "plain\n"
    );
    let out = fresh
        .cmd(&["login", "-u", "any", "-p", "pw", &host])
        .env("DOCKER_CONFIG", fresh.dir.path().join("docker"))
        .output()
        .unwrap();
    assert!(out.status.success(), "login over HTTP: {}", stderr(&out));

    // A settings file that cannot be used is an error that names it, for every registry command.
    fresh.settings(&json!({ "insecure-registry": [host] }));
    let err = fails(&fresh, &["pull", &target], 1);
    assert!(
        err.contains("settings file") && err.contains("unknown field `insecure-registry`"),
        "{err}"
    );
    fresh.settings(&json!({ "registry-mirrors": ["mirror.example"] }));
    let err = fails(
        &fresh,
        &["run", "--rm", "--pull", "always", &target, "true"],
        125,
    );
    assert!(err.contains("must start with http:// or https://"), "{err}");
}

#[test]
fn docker_hub_pulls_go_through_the_configured_mirrors() {
    let mirror = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let id = b.ok(&["inspect", "-f", "{{.Id}}", "busybox"]);
    let in_mirror = format!("{}/library/busybox:latest", mirror.host());
    b.ok(&["tag", "busybox", &in_mirror]);
    b.ok(&["push", &in_mirror]);
    // The first mirror is down: the next one serves the pull.
    let settings = json!({
        "registry-mirrors": [format!("http://127.0.0.1:{}", free_port()), format!("http://{}/", mirror.host())]
    });

    let fresh = Berth::empty();
    fresh.settings(&settings);
    let out = fresh.ok(&["pull", "busybox"]);
    assert!(
        out.contains("latest: Pulling from library/busybox")
            && out.contains("Status: Downloaded newer image for busybox:latest"),
        "{out}"
    );
    assert_eq!(fresh.ok(&["inspect", "-f", "{{.Id}}", "busybox"]), id);
    let inspect: Value = serde_json::from_str(&fresh.ok(&["image", "inspect", "busybox"])).unwrap();
    let digests = inspect[0]["RepoDigests"].to_string();
    assert!(digests.contains("busybox@sha256:"), "{digests}");

    // `run` of a missing Docker Hub image pulls it through the mirror too.
    let other = Berth::empty();
    other.settings(&settings);
    let out = other.run(&["run", "--rm", "busybox", "echo", "mirrored"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "mirrored\n");
    assert!(
        stderr(&out).contains("Unable to find image 'busybox:latest' locally"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn manifest_inspect_and_search_look_without_pulling() {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let host = registry.host();
    for name in ["team/app:1", "team/web:2", "other:3"] {
        let target = format!("{host}/{name}");
        b.ok(&["tag", "busybox", &target]);
        b.ok(&["push", &target]);
    }
    let target = format!("{host}/team/app:1");
    let shown = b.ok(&["manifest", "inspect", &target]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{target}"),
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&shown).unwrap(),
        serde_json::from_str::<Value>(&raw).unwrap()
    );
    assert!(shown.starts_with("{\n\t\"schemaVersion\": 2,"), "{shown}");
    let verbose: Value =
        serde_json::from_str(&b.ok(&["manifest", "inspect", "-v", &target])).unwrap();
    assert_eq!(
        verbose["Descriptor"]["digest"],
        json!(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(raw.as_bytes()))
        ))
    );
    let err = fails(
        &b,
        &["manifest", "inspect", &format!("{host}/team/app:nope")],
        1,
    );
    assert!(err.contains("manifest unknown"), "{err}");
    assert_eq!(image_ids(&Berth::empty()).len(), 0);

    let found = b.ok(&["search", "--format", "{{.Name}}", &format!("{host}/team")]);
    assert_eq!(found, format!("{host}/team/app\n{host}/team/web\n"));
    let table = b.ok(&["search", &format!("{host}/other")]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[1].starts_with(&format!("{host}/other ")), "{table}");
    assert_eq!(
        b.ok(&[
            "search",
            "--limit",
            "1",
            "--format",
            "{{.Name}}",
            &format!("{host}/")
        ])
        .lines()
        .count(),
        1
    );
    let err = fails(&b, &["search", &format!("127.0.0.1:{}/x", free_port())], 1);
    assert!(err.contains("cannot reach registry"), "{err}");
}

/// A plain HTTP/1.1 PUT to a test registry; returns the status code.
fn http_put(host: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
    use std::io::Read;
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn broken_or_foreign_registry_content_is_refused() {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let host = registry.host();
    let base = format!("{host}/broken/bb:1");
    b.ok(&["tag", "busybox", &base]);
    b.ok(&["push", &base]);
    let manifest: Value = serde_json::from_str(&b.ok(&["manifest", "inspect", &base])).unwrap();
    let fresh = Berth::empty();

    // Manifests whose blobs are all in the registry but that are not container images Berth can run.
    let mut artifact = manifest.clone();
    artifact["config"]["mediaType"] = json!("application/vnd.example.config.v1+json");
    let mut foreign_layer = manifest.clone();
    foreign_layer["layers"][0]["mediaType"] = json!("application/vnd.example.blob");
    for (tag, document) in [("artifact", &artifact), ("foreign", &foreign_layer)] {
        let status = http_put(
            &host,
            &format!("/v2/broken/bb/manifests/{tag}"),
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(document).unwrap(),
        );
        assert_eq!(status, 201, "PUT manifest {tag}");
        let err = fails(&fresh, &["pull", &format!("{host}/broken/bb:{tag}")], 1);
        assert!(
            err.contains("unsupported media type application/vnd.example."),
            "{err}"
        );
    }

    // A layer blob the registry lost.
    let lost = format!("{host}/broken/lost:1");
    b.ok(&[
        "run",
        "--name",
        "maker",
        "busybox",
        "sh",
        "-c",
        "echo lost > /lost",
    ]);
    b.ok(&["commit", "maker", &lost]);
    b.ok(&["push", &lost]);
    let lost_manifest: Value =
        serde_json::from_str(&b.ok(&["manifest", "inspect", &lost])).unwrap();
    let top_layer = lost_manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(registry.blob_path(&top_layer)).unwrap();
    let err = fails(&fresh, &["pull", &lost], 1);
    assert!(err.contains(&top_layer), "{err}");

    // A manifest whose bytes no longer match its digest.
    let digest = skopeo_json(&["inspect", "--tls-verify=false", &format!("docker://{base}")])
        ["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = registry.blob_path(&digest);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replacen("\"schemaVersion\":2", "\"schemaVersion\": 2", 1);
    std::fs::write(&path, text).unwrap();
    let err = fails(&fresh, &["pull", &base], 1);
    assert!(err.contains("does not match its digest"), "{err}");

    assert!(image_ids(&fresh).is_empty(), "nothing may be added");
    assert!(tmp_files(&fresh).is_empty(), "{:?}", tmp_files(&fresh));
    // (The good layer that was downloading when the lost one failed may be kept in ingest/ for the
    // next pull: it is not part of any image.)
}

/// What a [`FlakyProxy`] does to the downloads of one blob.
#[derive(Clone, Copy)]
enum Flaw {
    /// The first `times` responses are cut off after 64 KiB.
    Cut { times: usize },
    /// The first `times` requests are answered `503 Service Unavailable`.
    Unavailable { times: usize },
    /// The first `times` responses stop after 64 KiB, the connection left open and silent.
    Stall { times: usize },
    /// Every request is redirected (307) to the registry under another host name, as registries that
    /// keep blobs in object storage do.
    Redirect,
}

/// A TCP proxy in front of a registry that spoils the downloads of one blob, for the retry tests.
struct FlakyProxy {
    port: u16,
    /// Requests for the blob seen so far.
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Whether a request for the blob asked for a byte range (a resumed download).
    ranged: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyProxy {
    fn start(upstream: u16, digest: &str, flaw: Flaw) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let ranged = Arc::new(AtomicBool::new(false));
        let (seen, range_seen) = (requests.clone(), ranged.clone());
        let needle = format!("/blobs/{digest}");
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    break;
                };
                // Response bytes at which the proxy cuts the connection (or stops sending, when the flag
                // says so), set when a spoilt request passes.
                let cut_at: Arc<Mutex<Option<(u64, bool)>>> = Arc::new(Mutex::new(None));
                let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let (seen, range_seen, needle) = (seen.clone(), range_seen.clone(), needle.clone());
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let mut reply = client.try_clone().unwrap();
                let (cut, count) = (cut_at.clone(), sent.clone());
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        if text.starts_with("GET ") && text.contains(&needle) {
                            let nth = seen.fetch_add(1, Ordering::SeqCst);
                            if text.to_ascii_lowercase().contains("\r\nrange: bytes=")
                                && !text.to_ascii_lowercase().contains("range: bytes=0-")
                            {
                                range_seen.store(true, Ordering::SeqCst);
                            }
                            match flaw {
                                Flaw::Unavailable { times } if nth < times => {
                                    let _ = reply.write_all(
                                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                    );
                                    let _ = reply.shutdown(std::net::Shutdown::Both);
                                    break;
                                }
                                Flaw::Cut { times } if nth < times => {
                                    *cut.lock().unwrap() =
                                        Some((count.load(Ordering::SeqCst) + 64 * 1024, false));
                                }
                                Flaw::Stall { times } if nth < times => {
                                    *cut.lock().unwrap() =
                                        Some((count.load(Ordering::SeqCst) + 64 * 1024, true));
                                }
                                Flaw::Redirect => {
                                    let path = text.split(' ').nth(1).unwrap_or("/");
                                    let _ = reply.write_all(
                                        format!(
                                            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://localhost:{upstream}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                        )
                                        .as_bytes(),
                                    );
                                    let _ = reply.shutdown(std::net::Shutdown::Both);
                                    break;
                                }
                                _ => {}
                            }
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let before = sent.load(Ordering::SeqCst);
                        let limit = *cut_at.lock().unwrap();
                        if let Some((limit, stall)) = limit {
                            if before + n as u64 >= limit {
                                let keep = (limit.saturating_sub(before)) as usize;
                                let _ = to_client.write_all(&buf[..keep]);
                                if stall {
                                    // Silent, connection open, until the client gives up on it.
                                    std::thread::sleep(Duration::from_secs(30));
                                }
                                let _ = to_client.shutdown(std::net::Shutdown::Both);
                                let _ = from_server.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                        }
                        if to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self {
            port,
            requests,
            ranged,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

#[test]
fn broken_transfers_and_5xx_are_retried_and_resumed() {
    use std::sync::atomic::Ordering;
    let (registry, _b, layer, id) = registry_with_busybox();

    // Cut off once: the download resumes where it stopped and the image is whole.
    let proxy = FlakyProxy::start(registry.port, &layer, Flaw::Cut { times: 1 });
    let fresh = Berth::empty();
    let via = format!("{}/flaky/bb:1", proxy.host());
    fresh.ok(&["pull", &via]);
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 2);
    assert!(
        proxy.ranged.load(Ordering::SeqCst),
        "the retry asks for the rest only"
    );
    assert_eq!(fresh.ok(&["inspect", "-f", "{{.Id}}", &via]), id);
    assert_eq!(fresh.ok(&["run", "--rm", &via, "echo", "whole"]), "whole\n");

    // 503 twice, then served.
    let proxy = FlakyProxy::start(registry.port, &layer, Flaw::Unavailable { times: 2 });
    let fresh = Berth::empty();
    let via = format!("{}/flaky/bb:1", proxy.host());
    fresh.ok(&["pull", &via]);
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 3);

    // Always cut: a few tries, then a clear failure that leaves nothing behind.
    let proxy = FlakyProxy::start(registry.port, &layer, Flaw::Cut { times: usize::MAX });
    let fresh = Berth::empty();
    let via = format!("{}/flaky/bb:1", proxy.host());
    let err = fails(&fresh, &["pull", &via], 1);
    assert!(err.contains(&layer), "{err}");
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 4, "{err}");
    assert!(image_ids(&fresh).is_empty());
    assert!(tmp_files(&fresh).is_empty(), "{:?}", tmp_files(&fresh));
    // Always 503.
    let proxy = FlakyProxy::start(
        registry.port,
        &layer,
        Flaw::Unavailable { times: usize::MAX },
    );
    let err = fails(
        &fresh,
        &["pull", &format!("{}/flaky/bb:1", proxy.host())],
        1,
    );
    assert!(
        err.contains("HTTP 503 Service Unavailable") && err.contains("gave up after 4 attempts"),
        "{err}"
    );
    assert!(image_ids(&fresh).is_empty());
}

/// Pushes busybox to a fresh registry as `flaky/bb:1`; returns the registry, the store, the digest of the
/// image's layer blob and the image ID.
fn registry_with_busybox() -> (Registry, Berth, String, String) {
    let registry = Registry::start(Auth::None);
    let b = Berth::with_busybox();
    let target = format!("{}/flaky/bb:1", registry.host());
    b.ok(&["tag", "busybox", &target]);
    b.ok(&["push", &target]);
    let manifest: Value = serde_json::from_str(&b.ok(&["manifest", "inspect", &target])).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let id = b.ok(&["inspect", "-f", "{{.Id}}", "busybox"]);
    (registry, b, layer, id)
}

#[test]
fn redirects_to_another_host_and_stalled_transfers() {
    use std::sync::atomic::Ordering;
    let (registry, _b, layer, id) = registry_with_busybox();

    // Blobs served from another host (object storage behind the registry): the redirect is followed.
    let proxy = FlakyProxy::start(registry.port, &layer, Flaw::Redirect);
    let fresh = Berth::empty();
    let via = format!("{}/flaky/bb:1", proxy.host());
    fresh.ok(&["pull", &via]);
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 1);
    assert_eq!(fresh.ok(&["inspect", "-f", "{{.Id}}", &via]), id);
    assert_eq!(
        fresh.ok(&["run", "--rm", &via, "echo", "redirected"]),
        "redirected\n"
    );

    // A registry that goes silent mid-blob: after the read timeout the transfer is abandoned and
    // resumed where it stopped.
    let proxy = FlakyProxy::start(registry.port, &layer, Flaw::Stall { times: 1 });
    let fresh = Berth::empty();
    fresh.settings(&json!({ "registry-read-timeout": 2 }));
    let via = format!("{}/flaky/bb:1", proxy.host());
    fresh.ok(&["pull", &via]);
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 2);
    assert!(proxy.ranged.load(Ordering::SeqCst), "resumed with a range");
    assert_eq!(fresh.ok(&["inspect", "-f", "{{.Id}}", &via]), id);
}

#[test]
fn an_expired_token_is_renewed_mid_pull() {
    use std::sync::atomic::Ordering;
    let tokens = TokenServer::with_lifetime("dora", "short-lived", 1);
    let registry = Registry::start(Auth::Token(&tokens));
    let b = Berth::with_busybox();
    let config_dir = b.dir.path().join("docker-config");
    let target = format!("{}/renew/bb:1", registry.host());
    b.ok(&["tag", "busybox", &target]);
    let login = ["login", "-u", "dora", "--password-stdin", &registry.host()];
    let out = with_config(&b, &config_dir, &login, Some("short-lived\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_config(&b, &config_dir, &["push", &target], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = with_config(&b, &config_dir, &["manifest", "inspect", &target], None);
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // The layer stalls for longer than the token lives: the resumed request carries a new token.
    let proxy = FlakyProxy::start(registry.port, &layer, Flaw::Stall { times: 1 });
    let via = format!("{}/renew/bb:1", proxy.host());
    // Credentials are per host: log in to the proxy's too.
    let proxy_host = proxy.host();
    let proxy_login = ["login", "-u", "dora", "--password-stdin", &proxy_host];
    let out = with_config(&b, &config_dir, &proxy_login, Some("short-lived\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = Berth::empty();
    fresh.settings(&json!({ "registry-read-timeout": 2 }));
    let before = tokens.issued.load(Ordering::SeqCst);
    let out = with_config(&fresh, &config_dir, &["pull", &via], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 2);
    assert!(
        tokens.issued.load(Ordering::SeqCst) - before >= 2,
        "one token for the start of the pull, a new one after it expired"
    );
}

#[test]
fn an_interrupted_pull_is_resumed_by_the_next_one() {
    use std::sync::atomic::Ordering;
    let (registry, _b, layer, id) = registry_with_busybox();

    // Every transfer is cut: the pull fails, and what arrived is kept for the next one.
    let broken = FlakyProxy::start(registry.port, &layer, Flaw::Cut { times: usize::MAX });
    let fresh = Berth::empty();
    let err = fails(
        &fresh,
        &["pull", &format!("{}/flaky/bb:1", broken.host())],
        1,
    );
    assert!(err.contains(&layer), "{err}");
    assert!(image_ids(&fresh).is_empty());
    let kept = partial_downloads(&fresh);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].0, layer["sha256:".len()..]);
    assert!(kept[0].1 >= 64 * 1024, "{kept:?}");

    // The next pull, another process, asks only for the rest.
    let healthy = FlakyProxy::start(registry.port, &layer, Flaw::Cut { times: 0 });
    let via = format!("{}/flaky/bb:1", healthy.host());
    fresh.ok(&["pull", &via]);
    assert_eq!(healthy.requests.load(Ordering::SeqCst), 1);
    assert!(
        healthy.ranged.load(Ordering::SeqCst),
        "the one request asks for a range"
    );
    assert_eq!(fresh.ok(&["inspect", "-f", "{{.Id}}", &via]), id);
    assert!(partial_downloads(&fresh).is_empty());
    assert_eq!(fresh.ok(&["run", "--rm", &via, "echo", "whole"]), "whole\n");

    // `system prune` removes what interrupted pulls kept.
    fresh.ok(&["rmi", &via]);
    fails(
        &fresh,
        &["pull", &format!("{}/flaky/bb:1", broken.host())],
        1,
    );
    assert_eq!(partial_downloads(&fresh).len(), 1);
    fresh.ok(&["system", "prune", "-f"]);
    assert!(partial_downloads(&fresh).is_empty());
}

/// nginx as a reverse proxy in front of a registry, refusing request bodies over 1 MiB (its default
/// `client_max_body_size`, which many registry deployments keep); killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// How an [`Nginx`] serves: plain HTTP, or HTTPS requiring a client certificate.
enum Front<'a> {
    Http,
    /// The server's certificate and key, and the CA client certificates must come from.
    MutualTls {
        cert: &'a Path,
        key: &'a Path,
        client_ca: &'a Path,
    },
}

impl Nginx {
    fn start(upstream: u16) -> Self {
        Self::start_at("127.0.0.1", upstream, Front::Http)
    }

    fn start_at(ip: &str, upstream: u16, front: Front<'_>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-nginx-")
            .tempdir()
            .unwrap();
        let tls = match front {
            Front::Http => String::new(),
            Front::MutualTls {
                cert,
                key,
                client_ca,
            } => format!(
                "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;\n",
                cert.display(),
                key.display(),
                client_ca.display()
            ),
        };
        let ssl = if tls.is_empty() { "" } else { " ssl" };
        let started = start_on_free_port(ip, |port| {
            let d = dir.path().display();
            let config = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen {ip}:{port}{ssl};\n{tls}    client_max_body_size 1m;\n    location / {{\n      proxy_pass http://127.0.0.1:{upstream};\n      proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_request_buffering off;\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
            );
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, config).unwrap();
            Command::new("nginx")
                .arg("-c")
                .arg(&file)
                .arg("-p")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx (apt package nginx)")
        });
        let Some((child, port)) = started else {
            panic!(
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        };
        Self { child, port, dir }
    }

    /// The access log so far.
    fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn blobs_a_proxy_refuses_whole_are_pushed_in_chunks() {
    let registry = Registry::start(Auth::None);
    let nginx = Nginx::start(registry.port);
    let b = Berth::with_busybox();
    // The imported layer is a plain tar of about 2 MiB: over the proxy's limit in one request.
    let target = format!("127.0.0.1:{}/chunked/bb:1", nginx.port);
    b.ok(&["tag", "busybox", &target]);
    let out = b.ok(&["push", &target]);
    assert!(out.contains("1: digest: sha256:"), "{out}");
    let log = nginx.requests();
    assert!(
        log.contains("\"PUT /v2/chunked/bb/blobs/uploads/") && log.contains("\" 413 "),
        "the whole blob was refused: {log}"
    );
    assert!(
        log.contains("\"PATCH /v2/chunked/bb/blobs/uploads/"),
        "then sent in chunks: {log}"
    );
    // What arrived is whole: skopeo reads it from the registry itself, and a fresh store runs it.
    let direct = format!("{}/chunked/bb:1", registry.host());
    let inspected = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{direct}"),
    ]);
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1));
    let fresh = Berth::empty();
    assert_eq!(
        fresh.ok(&["run", "--rm", &target, "echo", "chunked"]),
        "chunked\n"
    );
}

#[test]
fn client_certificates_from_certs_d() {
    // A registry behind nginx on this machine's network address, which wants a client certificate
    // signed by the test CA.
    let ip = host_address();
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &ip);
    let file = |name: &str| pki.path().join(name);
    let openssl =
        |args: &[&str]| run_ok(Command::new("openssl").args(args).current_dir(pki.path()));
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=berth-client",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
    ]);
    std::fs::write(file("client-ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "client-ext",
        "-out",
        "client.cert",
    ]);
    let registry = Registry::start(Auth::None);
    let nginx = Nginx::start_at(
        &ip,
        registry.port,
        Front::MutualTls {
            cert: &file("server.crt"),
            key: &file("server.key"),
            client_ca: &file("ca.crt"),
        },
    );
    let host = format!("{ip}:{}", nginx.port);
    let certs_d = pki.path().join("certs.d");
    let host_dir = certs_d.join(&host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(file("ca.crt"), host_dir.join("ca.crt")).unwrap();
    let b = Berth::with_busybox();
    let target = format!("{host}/mtls/bb:1");
    b.ok(&["tag", "busybox", &target]);
    let berth = |store: &Berth, args: &[&str]| {
        store
            .cmd(args)
            .env("BERTH_CERTS_DIR", &certs_d)
            .output()
            .unwrap()
    };

    // The CA alone: the server is trusted, but it refuses a client without a certificate.
    let out = berth(&b, &["push", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("400"), "{}", stderr(&out));

    // A key without its certificate is a clear error.
    std::fs::copy(file("client.key"), host_dir.join("client.key")).unwrap();
    let out = berth(&b, &["push", &target]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("client key without its certificate"),
        "{}",
        stderr(&out)
    );

    // client.cert + client.key: mutual TLS.
    std::fs::copy(file("client.cert"), host_dir.join("client.cert")).unwrap();
    let out = berth(&b, &["push", &target]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = Berth::empty();
    let out = berth(&fresh, &["run", "--rm", &target, "echo", "mutual"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "mutual\n");
    let out = fresh
        .cmd(&["login", "-u", "any", "-p", "pw", &host])
        .env("BERTH_CERTS_DIR", &certs_d)
        .env("DOCKER_CONFIG", pki.path().join("docker"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "login with a client certificate: {}",
        stderr(&out)
    );
}

/// A credential helper following Docker's protocol (`get`/`store`/`erase` on stdin), keeping one file per
/// server beside itself, as `docker-credential-berthtest` in `dir`.
fn install_credential_helper(dir: &Path) {
    let script = r#"#!/bin/sh
store="$(dirname "$0")/helper-store"
mkdir -p "$store"
input=$(cat)
case "$1" in
  store)
    url=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
    printf '%s' "$input" > "$store/$(printf '%s' "$url" | tr '/:' '__')" ;;
  get)
    file="$store/$(printf '%s' "$input" | tr '/:' '__')"
    if [ -f "$file" ]; then cat "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  erase)
    file="$store/$(printf '%s' "$input" | tr '/:' '__')"
    if [ -f "$file" ]; then rm "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  *) exit 1 ;;
esac
"#;
    let path = dir.join("docker-credential-berthtest");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credential_helpers_keep_the_secret() {
    let registry = Registry::start(Auth::Basic("carol", "helper-pw"));
    let b = Berth::with_busybox();
    let host = registry.host();
    let bin = b.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    install_credential_helper(&bin);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let target = format!("{host}/helped/bb:1");
    b.ok(&["tag", "busybox", &target]);
    for (n, config) in [
        json!({"credsStore": "berthtest"}),
        json!({"credHelpers": {host.clone(): "berthtest"}, "credsStore": "not-installed"}),
    ]
    .into_iter()
    .enumerate()
    {
        let config_dir = b.dir.path().join(format!("docker-{n}"));
        std::fs::create_dir(&config_dir).unwrap();
        std::fs::write(config_dir.join("config.json"), config.to_string()).unwrap();
        let berth = |store: &Berth, args: &[&str], input: Option<&str>| {
            let mut cmd = store.cmd(args);
            cmd.env("DOCKER_CONFIG", &config_dir).env("PATH", &path);
            let Some(input) = input else {
                return cmd.output().unwrap();
            };
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        };
        let out = berth(
            &b,
            &["login", "-u", "carol", "--password-stdin", &host],
            Some("helper-pw"),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        // The secret is in the helper, the file only lists the registry.
        let written = std::fs::read_to_string(config_dir.join("config.json")).unwrap();
        assert!(
            !written.contains("helper-pw") && !written.contains("\"auth\""),
            "{written}"
        );
        let kept =
            std::fs::read_to_string(bin.join("helper-store").join(host.replace(':', "_"))).unwrap();
        assert!(kept.contains("\"Secret\":\"helper-pw\""), "{kept}");
        let out = berth(&b, &["push", &target], None);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = berth(&Berth::empty(), &["pull", "-q", &target], None);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = berth(&b, &["logout", &host], None);
        assert_eq!(
            stdout(&out),
            format!("Removing login credentials for {host}\n")
        );
        assert!(!bin
            .join("helper-store")
            .join(host.replace(':', "_"))
            .exists());
        let out = berth(&Berth::empty(), &["pull", &target], None);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    }
}
