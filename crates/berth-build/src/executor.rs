//! The build executor: stages planned from the target backwards (stages it does not need are
//! skipped), then every needed stage run step by step on a thread of its own, as soon as the stages it
//! reads are built, so independent stages build at the same time. The first failure stops the
//! others (their running RUN containers are killed).
//!
//! A stage's state is its image config, history and layers plus a *cache key* that chains the base
//! image's ID with every step and what the step reads (expanded arguments, the ARG values a RUN
//! sees, the content hash of COPY sources). Filesystem steps look their key up in the store's
//! build cache before doing anything; a miss runs the step and records the image it produced. RUN
//! runs in a real container (the engine's, with the stage's image, user, workdir, env, the
//! build's ARGs and the default network); COPY and ADD write into an overlay of the stage's layers.
//! Either way the overlay's upper dir becomes the new layer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use berth_runtime::{Engine, MonitorEvent, RunOptions, StdioMode};
use berth_store::image::{History, RunConfig};
use berth_store::Platform;
use berth_store::{Digest, ImageRecord, LayerRecord};
use nix::sys::signal::Signal;
use sha2::{Digest as _, Sha256};

use crate::context::{Context, Rewrite, Sink, Source, Tree};
use crate::error::BuildError;
use crate::expand::{expand_word, Scope, PROXY_ARGS};
use crate::parser::{Command, CommandLine, Instruction, Transfer};
use crate::progress::{Progress, Vertex};

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// Its name, for messages.
    pub dockerfile_name: String,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--label` values for the final image.
    pub labels: BTreeMap<String, String>,
    /// `--network` for RUN (default: the engine's default network).
    pub network: Option<String>,
    /// `--add-host` for RUN.
    pub add_hosts: Vec<String>,
    /// `--secret` values: each id and the file holding the secret (for RUN `--mount=type=secret`).
    pub secrets: BTreeMap<String, PathBuf>,
    /// `--ssh` values: each id and the SSH agent socket forwarded to RUN `--mount=type=ssh`.
    pub ssh: BTreeMap<String, PathBuf>,
    /// `--platform`: the platform to build for; this host's when `None`.
    pub platform: Option<Platform>,
}

/// What the builder needs from outside the store: base images (pulled when missing, as the
/// caller's policy says) and remote ADD sources. Stages built in parallel share it, each with its own
/// engine.
pub trait Host {
    /// The image `reference` names for `platform` (any when `None`), pulling it into `engine`'s
    /// store if needed.
    fn base_image(
        &self,
        engine: &Engine,
        reference: &str,
        platform: Option<&Platform>,
    ) -> Result<ImageRecord, String>;
    /// Downloads `url` into `out`.
    fn download(&self, url: &str, out: &mut dyn Write) -> Result<(), String>;
    /// Clones the git repository at `url` into the empty directory `into`, checked out at `reference`
    /// (a branch, tag or commit) when given, else at the remote's default branch.
    fn clone_git(&self, url: &str, reference: Option<&str>, into: &Path) -> Result<(), String>;
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image of the target stage.
    pub image: ImageRecord,
    /// Filesystem steps run.
    pub steps_run: usize,
    /// Filesystem steps taken from the cache.
    pub steps_cached: usize,
}

/// Builds `options.dockerfile` with `context`; returns the target stage's image (untagged).
pub fn build(
    engine: &Engine,
    context: &Context,
    options: &BuildOptions,
    host: &(dyn Host + Sync),
    progress: &Progress,
) -> Result<Built, BuildError> {
    let dockerfile = crate::parse(&options.dockerfile).map_err(|error| BuildError::Parse {
        file: options.dockerfile_name.clone(),
        error,
    })?;
    let escape = dockerfile.directives.escape;
    let mut scope = Scope::new(options.build_args.clone());
    scope.target = options.platform.clone();
    let mut stages: Vec<Stage<'_>> = Vec::new();
    for ins in &dockerfile.instructions {
        match (&ins.command, stages.last_mut()) {
            (Command::From { name, .. }, _) => stages.push(Stage {
                name: name.as_ref().map(|n| n.to_ascii_lowercase()),
                from: ins,
                body: Vec::new(),
            }),
            (Command::Arg(decls), None) => {
                for d in decls {
                    let default = match &d.default {
                        Some(v) => Some(expand(&scope.from_vars(), v, escape, ins)?),
                        None => None,
                    };
                    scope.declare_global(&d.name, default);
                }
            }
            (_, None) => {
                return Err(step_error(
                    ins,
                    "no build stage in current context: the first instruction must be FROM".into(),
                ))
            }
            (_, Some(stage)) => stage.body.push(ins),
        }
    }
    if stages.is_empty() {
        return Err(BuildError::Invalid(
            "the Dockerfile has no FROM instruction".into(),
        ));
    }
    let target = match &options.target {
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))
            .ok_or_else(|| {
                BuildError::Invalid(format!("target stage \"{t}\" could not be found"))
            })?,
        None => stages.len() - 1,
    };
    let globals = scope.from_vars();
    let plan = needed_stages(&stages, target, &globals, escape)?;
    let shared = Shared {
        context,
        options,
        host,
        progress,
        escape,
        stages: &stages,
        scope,
        results: Mutex::new(vec![Slot::Pending; stages.len()]),
        settled: Condvar::new(),
        error: Mutex::new(None),
        running: Mutex::new(BTreeSet::new()),
        steps_run: AtomicUsize::new(0),
        steps_cached: AtomicUsize::new(0),
    };
    // Every stage the target needs starts at once on a thread of its own (with its own handle on the
    // store: a SQLite connection serves one thread) and waits for the stages it reads; the target
    // runs on this thread, with the caller's engine. A build of one stage spawns nothing.
    let (root, runroot) = (engine.store().root(), engine.runroot());
    std::thread::scope(|threads| {
        for (&index, deps) in plan.iter().filter(|(&i, _)| i != target) {
            let shared = &shared;
            threads.spawn(move || {
                let outcome = if shared.wait_for(deps) {
                    match Engine::open(root, runroot) {
                        Ok(engine) => shared.build_stage(&engine, index, false),
                        Err(e) => shared.fail(e.into(), None),
                    }
                } else {
                    Slot::Failed
                };
                shared.settle(index, outcome);
            });
        }
        let outcome = if shared.wait_for(&plan[&target]) {
            shared.build_stage(engine, target, true)
        } else {
            Slot::Failed
        };
        shared.settle(target, outcome);
    });
    if let Some(error) = lock(&shared.error).take() {
        return Err(error);
    }
    let image = match &lock(&shared.results)[target] {
        Slot::Built(image) => ImageRecord::clone(image),
        _ => return Err(BuildError::Invalid("the target stage was not built".into())),
    };
    Ok(Built {
        image,
        steps_run: shared.steps_run.load(Ordering::Relaxed),
        steps_cached: shared.steps_cached.load(Ordering::Relaxed),
    })
}

/// A stage's outcome, as the stages that read it wait for it.
#[derive(Clone)]
enum Slot {
    /// Not finished.
    Pending,
    /// Built: its image.
    Built(Box<ImageRecord>),
    /// Failed, or given up because the build failed elsewhere.
    Failed,
}

/// What the threads building stages share: the inputs, the stages' outcomes, the first error.
struct Shared<'a> {
    context: &'a Context,
    options: &'a BuildOptions,
    host: &'a (dyn Host + Sync),
    progress: &'a Progress,
    escape: char,
    stages: &'a [Stage<'a>],
    /// The global ARGs; each stage starts from a copy.
    scope: Scope,
    results: Mutex<Vec<Slot>>,
    /// Signalled whenever a stage settles.
    settled: Condvar,
    /// The first error; once set, stages not started are skipped and running ones stop at their
    /// next step.
    error: Mutex<Option<BuildError>>,
    /// The RUN containers running now, by ID.
    running: Mutex<BTreeSet<String>>,
    steps_run: AtomicUsize,
    steps_cached: AtomicUsize,
}

/// A lock, even if a thread panicked while holding it: what it guards (outcomes, an error) is whole
/// after every write.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared<'_> {
    /// Waits until the stages `deps` are built: true, or false once the build has failed.
    fn wait_for(&self, deps: &BTreeSet<usize>) -> bool {
        let mut results = lock(&self.results);
        loop {
            if self.failed() || deps.iter().any(|&d| matches!(results[d], Slot::Failed)) {
                return false;
            }
            if deps.iter().all(|&d| matches!(results[d], Slot::Built(_))) {
                return true;
            }
            results = self
                .settled
                .wait(results)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Builds stage `index` with `engine`.
    fn build_stage(&self, engine: &Engine, index: usize, is_target: bool) -> Slot {
        let mut builder = Builder {
            engine,
            shared: self,
        };
        let mut scope = self.scope.clone();
        match builder.run_stage(index, is_target, &mut scope) {
            Ok(image) => Slot::Built(Box::new(image)),
            Err(e) => self.fail(e, Some(engine)),
        }
    }

    /// Records the outcome of stage `index` and wakes the stages waiting for it.
    fn settle(&self, index: usize, outcome: Slot) {
        lock(&self.results)[index] = outcome;
        self.settled.notify_all();
    }

    /// Whether a stage has failed.
    fn failed(&self) -> bool {
        lock(&self.error).is_some()
    }

    /// Records `error` unless another came first (a stage stopped because of it), kills the RUN
    /// containers of other stages (with `engine`, when there is one) and wakes the stages waiting,
    /// so that they give up.
    fn fail(&self, error: BuildError, engine: Option<&Engine>) -> Slot {
        let mut first = lock(&self.error);
        if first.is_none() {
            *first = Some(error);
        }
        drop(first);
        if let Some(engine) = engine {
            for id in lock(&self.running).iter() {
                // It may have exited meanwhile: nothing to stop then.
                let _ = engine.kill(id, Signal::SIGKILL);
            }
        }
        // Taken so that no waiter is between its check and its wait when woken.
        drop(lock(&self.results));
        self.settled.notify_all();
        Slot::Failed
    }

    /// Notes a started RUN container, so that a failure elsewhere stops it; stops it at once when
    /// the build has already failed.
    fn track(&self, engine: &Engine, id: &str) {
        lock(&self.running).insert(id.to_string());
        if self.failed() {
            let _ = engine.kill(id, Signal::SIGKILL);
        }
    }

    /// Forgets a RUN container that has exited.
    fn untrack(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    /// The image of stage `dep`, which the plan built before the stage asking for it.
    fn result(&self, dep: usize) -> Option<ImageRecord> {
        match lock(&self.results).get(dep) {
            Some(Slot::Built(image)) => Some(ImageRecord::clone(image)),
            _ => None,
        }
    }
}

struct Stage<'a> {
    name: Option<String>,
    from: &'a Instruction,
    body: Vec<&'a Instruction>,
}

/// What a stage reference (`FROM x`, `COPY --from=x`) names among the stages before `before`.
fn stage_ref(stages: &[Stage<'_>], reference: &str, before: usize) -> Option<usize> {
    let lower = reference.to_ascii_lowercase();
    if let Ok(i) = reference.parse::<usize>() {
        return (i < before.min(stages.len())).then_some(i);
    }
    stages[..before.min(stages.len())]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
}

/// The stages the target needs, each with the (earlier) stages it reads: its `FROM`, `COPY --from`
/// and `RUN --mount=from=`. Naming the stage itself or a later one is a cycle.
fn needed_stages(
    stages: &[Stage<'_>],
    target: usize,
    globals: &BTreeMap<String, String>,
    escape: char,
) -> Result<BTreeMap<usize, BTreeSet<usize>>, BuildError> {
    let mut needed: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if needed.contains_key(&i) {
            continue;
        }
        let deps = needed.entry(i).or_default();
        let stage = &stages[i];
        if let Command::From { image, .. } = &stage.from.command {
            let base = expand(globals, image, escape, stage.from)?;
            if let Some(dep) = stage_ref(stages, &base, i) {
                deps.insert(dep);
                todo.push(dep);
            }
        }
        for ins in &stage.body {
            let mut refs: Vec<String> = Vec::new();
            if matches!(ins.command, Command::Copy(_) | Command::Add(_)) {
                if let Some(Some(from)) = ins.flag("from") {
                    refs.push(from.to_string());
                }
            }
            if matches!(ins.command, Command::Run(_)) {
                for f in ins.flags.iter().filter(|f| f.name == "mount") {
                    let spec = parse_mount(f.value.as_deref().unwrap_or(""));
                    if let Some(from) = spec.get("from") {
                        refs.push(from.clone());
                    }
                }
            }
            for r in refs {
                let lower = r.to_ascii_lowercase();
                let later = stages[i..]
                    .iter()
                    .any(|s| s.name.as_deref() == Some(lower.as_str()));
                if later && stage_ref(stages, &r, i).is_none() {
                    return Err(step_error(
                        ins,
                        format!("circular dependency detected on stage: {r}"),
                    ));
                }
                match r.parse::<usize>() {
                    Ok(n) if n >= i => {
                        return Err(step_error(
                            ins,
                            format!(
                            "invalid stage index {n}: a stage can only copy from an earlier one"
                        ),
                        ))
                    }
                    _ => {}
                }
                if let Some(dep) = stage_ref(stages, &r, i) {
                    deps.insert(dep);
                    todo.push(dep);
                }
            }
        }
    }
    Ok(needed)
}

/// The variables a stage's instructions see: its ARGs and ENVs, the config's ENV last.
fn stage_vars(scope: &Scope, config: &RunConfig) -> BTreeMap<String, String> {
    let mut vars = scope.stage.clone();
    vars.extend(crate::config::env_vars(config));
    vars
}

pub(crate) fn step_error(ins: &Instruction, message: String) -> BuildError {
    BuildError::Step {
        line: ins.line,
        instruction: ins.original.clone(),
        message,
    }
}

/// Attaches the instruction to an error that has no position yet.
fn at(ins: &Instruction) -> impl Fn(BuildError) -> BuildError + '_ {
    move |e| match e {
        BuildError::Step { .. } => e,
        other => step_error(ins, other.to_string()),
    }
}

fn expand(
    vars: &BTreeMap<String, String>,
    word: &str,
    escape: char,
    ins: &Instruction,
) -> Result<String, BuildError> {
    expand_word(word, vars, escape)
        .map(|e| e.value)
        .map_err(|e| step_error(ins, e.to_string()))
}

/// `--mount=type=cache,target=/x,…` as key/value pairs (a bare key is `true`).
fn parse_mount(spec: &str) -> BTreeMap<String, String> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (p.trim().to_ascii_lowercase(), "true".into()),
        })
        .collect()
}

/// Whether this host runs binaries of `platform`: its own, or through a binfmt_misc handler (QEMU).
fn can_run(platform: &Platform) -> bool {
    if Platform::host().accepts(platform) {
        return true;
    }
    let qemu = match platform.architecture.as_str() {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        other => other,
    };
    Path::new("/proc/sys/fs/binfmt_misc")
        .join(format!("qemu-{qemu}"))
        .exists()
}

/// A numeric `--mount` option (`mode=0400` in octal, `uid=1000`), or its default.
fn mount_number(
    ins: &Instruction,
    spec: &BTreeMap<String, String>,
    key: &str,
    radix: u32,
    default: u32,
) -> Result<u32, BuildError> {
    match spec.get(key) {
        None => Ok(default),
        Some(v) => u32::from_str_radix(v, radix)
            .map_err(|_| step_error(ins, format!("invalid --mount {key}={v}"))),
    }
}

/// A RUN mount prepared only when the step really runs (not when it is cached).
enum DeferredMount {
    /// `type=bind,from=…`: a path of another stage's or image's tree.
    Image {
        image: Box<ImageRecord>,
        source: String,
        target: String,
        rw: bool,
    },
    /// `type=bind,rw` of a context directory: an overlay of it whose writes are thrown away.
    ContextCopy { path: PathBuf, target: String },
    /// `type=secret`: a copy of the secret, owned and moded as asked.
    Secret {
        source: PathBuf,
        target: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// What a RUN step prepared for its mounts, undone when dropped: the snapshots mounted for `from=`
/// and the private directory holding its copies of secrets.
struct StepMounts<'e> {
    engine: &'e Engine,
    snapshots: Vec<String>,
    secrets: Option<berth_store::PrivateDir>,
}

impl<'e> StepMounts<'e> {
    fn new(engine: &'e Engine) -> Self {
        Self {
            engine,
            snapshots: Vec::new(),
            secrets: None,
        }
    }

    /// Prepares one mount; returns its `-v` spec for the RUN container.
    fn realize(&mut self, mount: DeferredMount) -> Result<String, String> {
        match mount {
            DeferredMount::Image {
                image,
                source,
                target,
                rw,
            } => {
                let snapshots = self.engine.store().snapshots();
                let snapshot = berth_store::work_name("build");
                self.snapshots.push(snapshot.clone());
                let layers = &image.config.rootfs.diff_ids;
                // Writes to a rw bind from another stage are the step's own, and thrown away.
                let root = if rw {
                    snapshots
                        .create_container(&snapshot)
                        .and_then(|()| snapshots.mount_container(&snapshot, layers, true))
                } else {
                    snapshots.mount_layers_readonly(&snapshot, layers)
                }
                .map_err(|e| e.to_string())?;
                let wanted = if source.is_empty() { "/" } else { &source };
                let found = berth_archive::resolve_in_root(&root, Path::new(wanted))
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{source}: not found in the --mount from= tree"))?;
                Ok(format!(
                    "{}:{target}:{}",
                    root.join(found.path).display(),
                    if rw { "rw" } else { "ro" }
                ))
            }
            DeferredMount::ContextCopy { path, target } => {
                let snapshot = berth_store::work_name("build");
                self.snapshots.push(snapshot.clone());
                let merged = self
                    .engine
                    .store()
                    .snapshots()
                    .mount_dir_writable(&snapshot, &path)
                    .map_err(|e| e.to_string())?;
                Ok(format!("{}:{target}:rw", merged.display()))
            }
            DeferredMount::Secret {
                source,
                target,
                mode,
                uid,
                gid,
            } => {
                use std::os::unix::fs::PermissionsExt;
                let dir = match &mut self.secrets {
                    Some(dir) => dir,
                    none => none.insert(
                        berth_store::PrivateDir::create(self.engine.store(), "secrets")
                            .map_err(|e| e.to_string())?,
                    ),
                };
                let bytes =
                    std::fs::read(&source).map_err(|e| format!("{}: {e}", source.display()))?;
                let (file, copy) = dir.write_file(&bytes).map_err(|e| e.to_string())?;
                let failed = |e: std::io::Error| format!("{}: {e}", copy.display());
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(failed)?;
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(failed)?;
                Ok(format!("{}:{target}:ro", copy.display()))
            }
        }
    }
}

impl Drop for StepMounts<'_> {
    fn drop(&mut self) {
        let snapshots = self.engine.store().snapshots();
        for snapshot in &self.snapshots {
            let _ = snapshots.remove_container(snapshot);
        }
        // (The secrets' directory goes with its own drop.)
    }
}

/// The key of a step: its parent's key and everything the step depends on.
fn chain(parent: &Digest, parts: &[&str]) -> Digest {
    let mut bytes = parent.as_str().as_bytes().to_vec();
    for p in parts {
        bytes.push(0);
        bytes.extend_from_slice(p.as_bytes());
    }
    Digest::of(&bytes)
}

/// A stage's state between steps.
struct State {
    config: RunConfig,
    history: Vec<History>,
    layers: Vec<Digest>,
    author: Option<String>,
    key: Digest,
    /// The stored image equal to this state, when there is one.
    image: Option<ImageRecord>,
    /// ARGs declared in the stage (RUN sees them as environment variables).
    args: BTreeSet<String>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    /// The platform the stage is for: its base image's, or the target's for `scratch`.
    platform: Platform,
}

impl State {
    fn scratch() -> Self {
        Self {
            config: RunConfig::default(),
            history: Vec::new(),
            layers: Vec::new(),
            author: None,
            key: Digest::of(b"scratch"),
            image: None,
            args: BTreeSet::new(),
            cmd_set: false,
            platform: Platform::host(),
        }
    }

    fn from_image(image: ImageRecord) -> Self {
        let mut state = Self::scratch();
        state.adopt(Digest::of(format!("from {}", image.id).as_bytes()), image);
        state
    }

    /// Takes over the content of `image` (a base, or a cache hit) as the state for `key`; the
    /// stage's ARGs and whether CMD was set stay.
    fn adopt(&mut self, key: Digest, image: ImageRecord) {
        self.config = image.config.config.clone();
        self.history = image.config.history.clone();
        self.layers = image.config.rootfs.diff_ids.clone();
        self.author = image.config.author.clone();
        self.platform = Platform::of_config(&image.config);
        self.key = key;
        self.image = Some(image);
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.config.env.iter().find_map(|e| {
            e.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
    }

    fn set_env(&mut self, name: &str, value: &str) {
        crate::config::set_env(&mut self.config, name, value);
    }

    /// A metadata-only step: the config changed, the layers did not.
    fn metadata(&mut self, created_by: String) {
        self.key = chain(&self.key, &[&created_by]);
        self.history.push(History {
            created: Some(berth_store::now_rfc3339()),
            created_by: Some(created_by),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: true,
            ..History::default()
        });
        self.image = None;
    }
}

/// The builder of one stage, on its thread: its own engine, and what all stages share.
struct Builder<'a> {
    engine: &'a Engine,
    shared: &'a Shared<'a>,
}

/// The flags of a COPY or ADD step, expanded.
struct CopyFlags {
    chown: Option<String>,
    chmod: Option<u32>,
    from: Option<String>,
    exclude: Option<crate::dockerignore::Matcher>,
    checksum: Option<String>,
    /// `--parents`: sources keep their path (from the context root, or from a `/./` in the source).
    parents: bool,
}

/// A COPY or ADD source once found.
enum Found {
    /// Files or directories in a tree, with the path they keep under the destination for
    /// `--parents` (else a file keeps its name and a directory gives its contents).
    Tree(Source, Option<PathBuf>),
    /// A heredoc or a downloaded file: content for a new file named `name`.
    Content { name: String, data: Vec<u8> },
    /// A local archive ADD extracts.
    Archive(Source),
}

impl Builder<'_> {
    fn vars(&self, state: &State, scope: &Scope) -> BTreeMap<String, String> {
        stage_vars(scope, &state.config)
    }

    fn expand_in(
        &self,
        state: &State,
        scope: &Scope,
        word: &str,
        ins: &Instruction,
    ) -> Result<String, BuildError> {
        expand(&self.vars(state, scope), word, self.shared.escape, ins)
    }

    fn label(&self, index: usize, is_target: bool, step: usize, total: usize) -> String {
        match &self.shared.stages[index].name {
            Some(n) => format!("[{n} {step}/{total}]"),
            None if is_target => format!("[{step}/{total}]"),
            None => format!("[stage-{index} {step}/{total}]"),
        }
    }

    fn run_stage(
        &mut self,
        index: usize,
        is_target: bool,
        scope: &mut Scope,
    ) -> Result<ImageRecord, BuildError> {
        let stage = &self.shared.stages[index];
        scope.enter_stage();
        let Command::From { image, .. } = &stage.from.command else {
            return Err(BuildError::Invalid("stage without FROM".into()));
        };
        let base = expand(&scope.from_vars(), image, self.shared.escape, stage.from)?;
        // FROM --platform, else the build's --platform.
        let platform = match stage.from.flag("platform") {
            Some(Some(p)) => {
                let text = expand(&scope.from_vars(), p, self.shared.escape, stage.from)?;
                Some(Platform::parse(&text).map_err(|e| step_error(stage.from, e.to_string()))?)
            }
            _ => self.shared.options.platform.clone(),
        };
        if base.is_empty() {
            return Err(step_error(
                stage.from,
                "base name (FROM) must not be empty".into(),
            ));
        }
        let fs_steps = stage
            .body
            .iter()
            .filter(|i| {
                matches!(
                    i.command,
                    Command::Run(_) | Command::Copy(_) | Command::Add(_)
                )
            })
            .count();
        let total = fs_steps + 1;
        let vertex = self.shared.progress.start(&format!(
            "{} FROM {base}",
            self.label(index, is_target, 1, total)
        ));
        let mut state = if base.eq_ignore_ascii_case("scratch") {
            let mut state = State::scratch();
            state.platform = platform.clone().unwrap_or_else(Platform::host);
            // Nothing else tells the platforms' scratch stages apart in the cache.
            state.key = Digest::of(format!("scratch {}", state.platform).as_bytes());
            state
        } else if let Some(dep) = stage_ref(self.shared.stages, &base, index) {
            let image = self
                .shared
                .result(dep)
                .ok_or_else(|| step_error(stage.from, format!("stage {base} was not built")))?;
            State::from_image(image)
        } else {
            let image = self
                .shared
                .host
                .base_image(self.engine, &base, platform.as_ref())
                .map_err(|e| step_error(stage.from, e))?;
            State::from_image(image)
        };
        self.shared.progress.done(vertex);
        // As BuildKit does, a stage whose base sets no PATH gets the default one.
        if state.env("PATH").is_none() {
            state.set_env("PATH", berth_runtime::options::DEFAULT_PATH);
        }
        // The base's ONBUILD triggers run first, and are not inherited.
        let triggers = std::mem::take(&mut state.config.on_build);
        let mut step = 1;
        for trigger in &triggers {
            let parsed = crate::parse(trigger).map_err(|e| {
                step_error(
                    stage.from,
                    format!("ONBUILD trigger {trigger:?}: {}", e.message),
                )
            })?;
            for ins in &parsed.instructions {
                if matches!(ins.command, Command::From { .. } | Command::Onbuild(_)) {
                    return Err(step_error(
                        stage.from,
                        format!(
                            "{} is not allowed as an ONBUILD trigger",
                            ins.command.name()
                        ),
                    ));
                }
                self.step(index, is_target, &mut state, scope, ins, &mut step, total)?;
            }
        }
        for ins in &stage.body {
            self.step(index, is_target, &mut state, scope, ins, &mut step, total)?;
        }
        if is_target && !self.shared.options.labels.is_empty() {
            for (k, v) in &self.shared.options.labels {
                state.config.labels.insert(k.clone(), v.clone());
            }
            let labels: Vec<String> = self
                .shared
                .options
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            state.key = chain(&state.key, &["--label", &labels.join("\n")]);
            state.image = None;
        }
        self.materialize(&mut state)
    }

    /// The stored image equal to `state`: the cached one for its key, else a new one recorded
    /// under it.
    fn materialize(&self, state: &mut State) -> Result<ImageRecord, BuildError> {
        if let Some(image) = &state.image {
            return Ok(image.clone());
        }
        let store = self.engine.store();
        if let Some(image) = store.build_cache_get(&state.key)? {
            state.image = Some(image.clone());
            return Ok(image);
        }
        let mut layers: Vec<LayerRecord> = Vec::new();
        for diff_id in &state.layers {
            layers.push(store.layer(diff_id)?.ok_or_else(|| {
                BuildError::Invalid(format!("layer {diff_id} is missing from the store"))
            })?);
        }
        let image = store.create_image(
            state.config.clone(),
            layers,
            state.history.clone(),
            state.author.clone(),
            Some(&state.platform),
            &[],
        )?;
        store.build_cache_put(&state.key, &image.id)?;
        state.image = Some(image.clone());
        Ok(image)
    }

    /// A cache lookup for a filesystem step; adopts the hit.
    fn cached(&mut self, state: &mut State, key: &Digest) -> Result<bool, BuildError> {
        if self.shared.options.no_cache {
            return Ok(false);
        }
        match self.engine.store().build_cache_get(key)? {
            Some(image) => {
                state.adopt(key.clone(), image);
                self.shared.steps_cached.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records a filesystem step's result.
    fn commit_step(
        &mut self,
        state: &mut State,
        key: Digest,
        layer: Option<LayerRecord>,
        created_by: String,
    ) -> Result<(), BuildError> {
        state.history.push(History {
            created: Some(berth_store::now_rfc3339()),
            created_by: Some(created_by),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: layer.is_none(),
            ..History::default()
        });
        if let Some(layer) = layer {
            state.layers.push(layer.diff_id);
        }
        state.key = key;
        state.image = None;
        self.materialize(state)?;
        self.shared.steps_run.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        index: usize,
        is_target: bool,
        state: &mut State,
        scope: &mut Scope,
        ins: &Instruction,
        step: &mut usize,
        total: usize,
    ) -> Result<(), BuildError> {
        if self.shared.failed() {
            // Another stage failed: its error is the build's; this one only stops.
            return Err(BuildError::Cancelled);
        }
        match &ins.command {
            Command::From { .. } => return Err(step_error(ins, "FROM inside a stage".into())),
            Command::Arg(decls) => {
                for d in decls {
                    let default = match &d.default {
                        Some(v) => Some(self.expand_in(state, scope, v, ins)?),
                        None => None,
                    };
                    scope.declare_arg(&d.name, default);
                    state.args.insert(d.name.clone());
                }
            }
            Command::Maintainer(name) => {
                state.author = Some(name.clone());
                state.metadata(format!("MAINTAINER {name}"));
            }
            Command::Run(line) => {
                *step += 1;
                let label = format!(
                    "{} {}",
                    self.label(index, is_target, *step, total),
                    ins.original.trim()
                );
                self.run(index, state, scope, ins, line, &label)
                    .map_err(at(ins))?;
            }
            Command::Copy(t) | Command::Add(t) => {
                *step += 1;
                let label = format!(
                    "{} {}",
                    self.label(index, is_target, *step, total),
                    ins.original.trim()
                );
                let is_add = matches!(ins.command, Command::Add(_));
                self.copy(index, state, scope, ins, t, is_add, &label)
                    .map_err(at(ins))?;
            }
            // The rest only changes the config.
            _ => {
                let escape = self.shared.escape;
                let mut expand_now = |config: &RunConfig, word: &str| {
                    expand(&stage_vars(scope, config), word, escape, ins)
                };
                let applied = crate::config::apply(
                    &mut state.config,
                    &mut state.cmd_set,
                    ins,
                    &mut expand_now,
                )?
                .ok_or_else(|| step_error(ins, "not a metadata instruction".into()))?;
                for (key, value) in applied.env {
                    scope.set_env(&key, value);
                }
                state.metadata(applied.created_by);
            }
        }
        Ok(())
    }

    /// The shell script of a RUN with heredocs: `RUN <<EOF` alone runs the body; otherwise the
    /// heredocs are given back to the shell, which feeds them to the command as it would.
    fn run_args(&self, state: &State, ins: &Instruction, line: &CommandLine) -> Vec<String> {
        match line {
            CommandLine::Shell(text) if !ins.heredocs.is_empty() => {
                let only_heredoc = ins.heredocs.len() == 1
                    && text
                        .trim()
                        .trim_start_matches("<<")
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == ins.heredocs[0].name;
                let script = if only_heredoc {
                    ins.heredocs[0].content.clone()
                } else {
                    let mut s = text.clone();
                    s.push('\n');
                    for h in &ins.heredocs {
                        s.push_str(&h.content);
                        s.push_str(&h.name);
                        s.push('\n');
                    }
                    s
                };
                crate::config::command_line(&state.config, &CommandLine::Shell(script))
            }
            other => crate::config::command_line(&state.config, other),
        }
    }

    fn run(
        &mut self,
        index: usize,
        state: &mut State,
        scope: &Scope,
        ins: &Instruction,
        line: &CommandLine,
        label: &str,
    ) -> Result<(), BuildError> {
        if !can_run(&state.platform) {
            return Err(step_error(
                ins,
                format!(
                    "RUN for {} needs an emulator, and this host has none for it (binfmt_misc, e.g. qemu-user-static)",
                    state.platform
                ),
            ));
        }
        let args = self.run_args(state, ins, line);
        // ARGs reach RUN as environment variables, unless an ENV of the same name wins.
        let mut env: Vec<String> = Vec::new();
        for name in &state.args {
            if state.env(name).is_none() {
                if let Some(v) = scope.stage.get(name) {
                    env.push(format!("{name}={v}"));
                }
            }
        }
        for name in PROXY_ARGS {
            if let Some(v) = self.shared.options.build_args.get(*name) {
                if !state.args.contains(*name) {
                    env.push(format!("{name}={v}"));
                }
            }
        }
        let network = match ins.flag("network") {
            Some(Some("default")) | None => self.shared.options.network.clone(),
            Some(Some(n @ ("none" | "host"))) => Some(n.to_string()),
            Some(other) => {
                return Err(step_error(
                    ins,
                    format!("unsupported RUN --network value {:?}", other.unwrap_or("")),
                ))
            }
        };
        let mut volumes = Vec::new();
        let mut tmpfs = Vec::new();
        let mut mount_keys = Vec::new();
        // Mounts that need work once the step is known not to be cached, and environment that must
        // not reach the cache key (secret values, the agent socket's path).
        let mut deferred: Vec<DeferredMount> = Vec::new();
        let mut private_env: Vec<String> = Vec::new();
        let mut ssh_mounts = 0;
        for f in ins.flags.iter().filter(|f| f.name == "mount") {
            let spec = parse_mount(f.value.as_deref().unwrap_or(""));
            mount_keys.push(f.value.clone().unwrap_or_default());
            let kind = spec.get("type").map(String::as_str).unwrap_or("bind");
            let target = spec
                .get("target")
                .or_else(|| spec.get("dst"))
                .or_else(|| spec.get("destination"));
            let target = match (target, kind) {
                (Some(t), _) => Some(crate::config::in_workdir(&state.config, t)),
                (None, "secret" | "ssh") => None,
                (None, _) => return Err(step_error(ins, "--mount needs a target".into())),
            };
            let required = spec.get("required").is_some_and(|v| v != "false");
            match kind {
                "cache" => {
                    let target = target.unwrap_or_default();
                    let id = spec.get("id").cloned().unwrap_or_else(|| target.clone());
                    let dir = self
                        .engine
                        .store()
                        .root()
                        .join("build-cache-mounts")
                        .join(Digest::of(id.as_bytes()).hex());
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| BuildError::Io(format!("{}: {e}", dir.display())))?;
                    volumes.push(format!("{}:{target}", dir.display()));
                }
                "tmpfs" => tmpfs.push(target.unwrap_or_default()),
                "bind" => {
                    let target = target.unwrap_or_default();
                    let source = spec
                        .get("source")
                        .or_else(|| spec.get("src"))
                        .cloned()
                        .unwrap_or_default();
                    let rw = spec.contains_key("rw") || spec.contains_key("readwrite");
                    if let Some(from) = spec.get("from") {
                        // Another stage's or image's tree; its ID keys the cache.
                        let image = self.copy_source_image(index, ins, from)?;
                        mount_keys.push(format!("from={}", image.id));
                        deferred.push(DeferredMount::Image {
                            image: Box::new(image),
                            source,
                            target,
                            rw,
                        });
                        continue;
                    }
                    let found = self.shared.context.tree().sources(if source.is_empty() {
                        "."
                    } else {
                        &source
                    })?;
                    let path = self.shared.context.root().join(&found[0].path);
                    if rw && found[0].is_dir {
                        // Writes go to a throwaway overlay, never into the user's context.
                        deferred.push(DeferredMount::ContextCopy { path, target });
                    } else {
                        // (A file bound rw is bound read-only: its writes would reach the context.)
                        volumes.push(format!("{}:{target}:ro", path.display()));
                    }
                }
                "secret" => {
                    // BuildKit: the id defaults to the target's file name, the target to
                    // /run/secrets/<id>; with env= and no target, only the variable is set.
                    let id = spec
                        .get("id")
                        .cloned()
                        .or_else(|| {
                            target.as_ref().and_then(|t| {
                                Path::new(t)
                                    .file_name()
                                    .map(|n| n.to_string_lossy().into_owned())
                            })
                        })
                        .ok_or_else(|| step_error(ins, "a secret mount needs an id".into()))?;
                    let Some(source) = self.shared.options.secrets.get(&id) else {
                        if required {
                            return Err(step_error(ins, format!("secret {id} not found: give it with --secret id={id},src=<file>")));
                        }
                        continue;
                    };
                    if let Some(var) = spec.get("env") {
                        let value = std::fs::read_to_string(source).map_err(|e| {
                            step_error(ins, format!("secret {id} ({}): {e}", source.display()))
                        })?;
                        private_env.push(format!("{var}={value}"));
                        if target.is_none() {
                            continue;
                        }
                    }
                    let mode = mount_number(ins, &spec, "mode", 8, 0o400)?;
                    deferred.push(DeferredMount::Secret {
                        source: source.clone(),
                        target: target.unwrap_or_else(|| format!("/run/secrets/{id}")),
                        mode,
                        uid: mount_number(ins, &spec, "uid", 10, 0)?,
                        gid: mount_number(ins, &spec, "gid", 10, 0)?,
                    });
                }
                "ssh" => {
                    let id = spec.get("id").map_or("default", String::as_str);
                    let Some(socket) = self.shared.options.ssh.get(id) else {
                        if required {
                            return Err(step_error(ins, format!("no SSH agent socket {id:?} forwarded: give it with --ssh {id}[=<socket>]")));
                        }
                        continue;
                    };
                    let target =
                        target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_mounts}"));
                    if ssh_mounts == 0 {
                        private_env.push(format!("SSH_AUTH_SOCK={target}"));
                    }
                    ssh_mounts += 1;
                    volumes.push(format!("{}:{target}", socket.display()));
                }
                other => {
                    return Err(step_error(
                        ins,
                        format!("RUN --mount type {other:?} is not supported"),
                    ))
                }
            }
        }
        let created_by = format!("RUN {} # buildkit", args.join(" "));
        let env_key = env.join("\n");
        let net_key = network.clone().unwrap_or_default();
        let key = chain(
            &state.key,
            &[
                "RUN",
                &json(&args),
                &env_key,
                &net_key,
                &mount_keys.join("\n"),
            ],
        );
        let vertex = self.shared.progress.start(label);
        if self.cached(state, &key)? {
            self.shared.progress.cached(vertex);
            return Ok(());
        }
        let parent = self.materialize(state)?;
        // Released (unmounted, deleted) when the step is over, however it ends.
        let mut mounts = StepMounts::new(self.engine);
        for m in deferred {
            volumes.push(mounts.realize(m).map_err(|e| step_error(ins, e))?);
        }
        // Where the mounts go: their mount points are not the step's changes.
        let mount_targets: Vec<String> = volumes
            .iter()
            .filter_map(|v| v.split(':').nth(1).map(str::to_string))
            .chain(tmpfs.iter().cloned())
            .collect();
        env.extend(private_env);
        let options = RunOptions {
            image: parent.id.to_string(),
            command: args.clone(),
            entrypoint: Some(String::new()),
            env,
            network,
            add_hosts: self.shared.options.add_hosts.clone(),
            volumes,
            tmpfs,
            attach: true,
            labels: vec![format!(
                "{}=true",
                berth_runtime::options::BUILD_CONTAINER_LABEL
            )],
            ..RunOptions::default()
        };
        let record = self.engine.create(&options)?;
        let outcome = self.run_container(&record.id, &vertex);
        let layer = match &outcome {
            Ok(0) => match self
                .engine
                .remove_mount_stubs(&record.id, &mount_targets)
                .and_then(|()| self.engine.diff(&record.id))
            {
                Ok(changes) if changes.is_empty() => Ok(None),
                Ok(_) => self.engine.write_changes_as_layer(&record.id).map(Some),
                Err(e) => Err(e),
            },
            _ => Ok(None),
        };
        let removed = self.engine.remove(&record.id, true, true);
        let code = match outcome {
            Ok(code) => code,
            Err(e) => {
                self.shared.progress.failed(vertex, &e.to_string());
                return Err(e);
            }
        };
        if code != 0 && self.shared.failed() {
            // Killed because another stage failed.
            self.shared.progress.canceled(vertex);
            return Err(BuildError::Cancelled);
        }
        if code != 0 {
            let err = BuildError::RunFailed {
                command: args.join(" "),
                code,
            };
            self.shared.progress.failed(vertex, &err.to_string());
            return Err(err);
        }
        let layer = layer?;
        removed?;
        self.commit_step(state, key, layer, created_by)?;
        self.shared.progress.done(vertex);
        Ok(())
    }

    /// Starts the build container with its output on a pipe, shows the output, returns the exit
    /// code.
    fn run_container(&self, id: &str, vertex: &Vertex) -> Result<i32, BuildError> {
        let (reader, writer) = std::io::pipe().map_err(|e| BuildError::Io(format!("pipe: {e}")))?;
        let started = self
            .engine
            .start(id, StdioMode::Output(std::os::fd::OwnedFd::from(writer)))?;
        self.shared.track(self.engine, id);
        let code = self.show_output(id, reader, started, vertex);
        self.shared.untrack(id);
        code
    }

    /// Shows the output of started build container `id` from `reader`, then returns its exit code.
    fn show_output(
        &self,
        id: &str,
        reader: std::io::PipeReader,
        started: berth_runtime::Started,
        vertex: &Vertex,
    ) -> Result<i32, BuildError> {
        let mut lines = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    self.shared
                        .progress
                        .output(vertex, text.trim_end_matches(['\n', '\r']));
                }
            }
        }
        let mut events = started
            .events
            .ok_or_else(|| BuildError::Io("the build container's monitor gave no status".into()))?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = events
                .read_line(&mut line)
                .map_err(|e| BuildError::Io(format!("monitor status: {e}")))?;
            if n == 0 {
                // The monitor is gone without a word: take the code it recorded.
                let record = self.engine.container(id)?;
                return Ok(record.state.exit_code);
            }
            if let Some(MonitorEvent::Exited(code)) = MonitorEvent::parse(&line) {
                return Ok(code);
            }
        }
    }

    /// The tree a COPY/ADD `--from` reads: an earlier stage's image or another image, mounted
    /// read-only under snapshot `snapshot`.
    fn copy_source_image(
        &self,
        index: usize,
        ins: &Instruction,
        from: &str,
    ) -> Result<ImageRecord, BuildError> {
        match stage_ref(self.shared.stages, from, index) {
            Some(dep) => self
                .shared
                .result(dep)
                .ok_or_else(|| step_error(ins, format!("stage {from} was not built"))),
            None => self
                .shared
                .host
                .base_image(self.engine, from, self.shared.options.platform.as_ref())
                .map_err(|e| step_error(ins, e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        index: usize,
        state: &mut State,
        scope: &Scope,
        ins: &Instruction,
        t: &Transfer,
        is_add: bool,
        label: &str,
    ) -> Result<(), BuildError> {
        let what = ins.command.name();
        let dest = self.expand_in(state, scope, &t.dest, ins)?;
        if t.sources.len() > 1 && !dest.ends_with('/') {
            return Err(step_error(ins, format!("When using {what} with more than one source file, the destination must be a directory and end with a /")));
        }
        let dest_abs = crate::config::in_workdir(&state.config, &dest);
        let flags = self.copy_flags(state, scope, ins, t)?;
        if is_add {
            if let Some(result) =
                self.add_git(state, scope, ins, t, label, &dest, &dest_abs, &flags)
            {
                return result;
            }
        }
        // The tree sources come from: the context, or an image mounted for `--from`.
        let Some(from) = &flags.from else {
            return self.copy_from(
                state, scope, ins, t, is_add, label, &dest, &dest_abs, &flags, None,
            );
        };
        let image = self.copy_source_image(index, ins, from)?;
        let snapshots = self.engine.store().snapshots();
        let from_snapshot = berth_store::work_name("build");
        let from_root =
            snapshots.mount_layers_readonly(&from_snapshot, &image.config.rootfs.diff_ids)?;
        let result = self.copy_from(
            state,
            scope,
            ins,
            t,
            is_add,
            label,
            &dest,
            &dest_abs,
            &flags,
            Some(&from_root),
        );
        let _ = snapshots.remove_container(&from_snapshot);
        result
    }

    /// `ADD <git repository>[#ref[:subdir]]`: the repository cloned by the host into a private directory,
    /// then copied like a directory of the context (its `.git` left out unless `--keep-git-dir`).
    /// `None` when the ADD has no git source.
    #[allow(clippy::too_many_arguments)]
    fn add_git(
        &mut self,
        state: &mut State,
        scope: &Scope,
        ins: &Instruction,
        t: &Transfer,
        label: &str,
        dest: &str,
        dest_abs: &str,
        flags: &CopyFlags,
    ) -> Option<Result<(), BuildError>> {
        let mut sources = Vec::new();
        for src in &t.sources {
            match self.expand_in(state, scope, src, ins) {
                Ok(s) => sources.push(s),
                Err(e) => return Some(Err(e)),
            }
        }
        let git = sources.iter().find(|s| is_git_source(s))?.clone();
        if sources.len() > 1 || flags.from.is_some() {
            return Some(Err(step_error(
                ins,
                format!(
                    "ADD of a git repository ({git}) takes it as its only source, without --from"
                ),
            )));
        }
        let (url, fragment) = git.split_once('#').unwrap_or((&git, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let keep_git_dir = matches!(ins.flag("keep-git-dir"), Some(None) | Some(Some("true")));
        // Removed, with the clone, when the step is over.
        let dir = match berth_store::PrivateDir::create(self.engine.store(), "git") {
            Ok(dir) => dir,
            Err(e) => return Some(Err(e.into())),
        };
        let result = (|| {
            self.shared
                .host
                .clone_git(
                    url,
                    (!reference.is_empty()).then_some(reference),
                    dir.path(),
                )
                .map_err(|e| step_error(ins, format!("failed to clone {url}: {e}")))?;
            if !keep_git_dir {
                let _ = std::fs::remove_dir_all(dir.path().join(".git"));
            }
            let source = if subdir.is_empty() {
                ".".to_string()
            } else {
                subdir.trim_start_matches('/').to_string()
            };
            let cloned = Transfer {
                sources: vec![source],
                dest: t.dest.clone(),
                json: t.json,
            };
            self.copy_from(
                state,
                scope,
                ins,
                &cloned,
                false,
                label,
                dest,
                dest_abs,
                flags,
                Some(dir.path()),
            )
        })();
        Some(result)
    }

    /// The flags of a COPY or ADD, expanded and checked.
    fn copy_flags(
        &self,
        state: &State,
        scope: &Scope,
        ins: &Instruction,
        t: &Transfer,
    ) -> Result<CopyFlags, BuildError> {
        let expanded = |name: &str| match ins.flag(name) {
            Some(Some(v)) => self.expand_in(state, scope, v, ins).map(Some),
            _ => Ok(None),
        };
        let chmod = match ins.flag("chmod") {
            Some(Some(v)) => Some(u32::from_str_radix(v, 8).map_err(|_| {
                step_error(
                    ins,
                    format!("invalid --chmod value {v:?}: an octal mode is expected"),
                )
            })?),
            _ => None,
        };
        let mut excludes = Vec::new();
        for f in ins.flags.iter().filter(|f| f.name == "exclude") {
            let pattern = f.value.as_deref().unwrap_or_default();
            excludes.push(self.expand_in(state, scope, pattern, ins)?);
        }
        let exclude = (!excludes.is_empty())
            .then(|| crate::dockerignore::Matcher::new(&excludes))
            .transpose()
            .map_err(|e| step_error(ins, format!("invalid --exclude pattern: {e}")))?;
        let checksum = expanded("checksum")?;
        if checksum.is_some() && !t.sources.iter().all(|s| is_url(s)) {
            return Err(step_error(
                ins,
                "checksum can't be specified for non-HTTP(S) sources".to_string(),
            ));
        }
        Ok(CopyFlags {
            chown: expanded("chown")?,
            chmod,
            from: expanded("from")?,
            exclude,
            checksum,
            parents: matches!(ins.flag("parents"), Some(None) | Some(Some("true"))),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_from(
        &mut self,
        state: &mut State,
        scope: &Scope,
        ins: &Instruction,
        t: &Transfer,
        is_add: bool,
        label: &str,
        dest: &str,
        dest_abs: &str,
        flags: &CopyFlags,
        from_root: Option<&Path>,
    ) -> Result<(), BuildError> {
        let base = match from_root {
            Some(root) => Tree {
                root,
                ignore: None,
                exclude: None,
            },
            None => self.shared.context.tree(),
        };
        let tree = Tree {
            exclude: flags.exclude.as_ref(),
            ..base
        };
        let mut found: Vec<Found> = Vec::new();
        for src in &t.sources {
            if let Some(name) = src.strip_prefix("<<") {
                let name = name.trim_start_matches('-').trim_matches(['"', '\'']);
                let doc = ins
                    .heredocs
                    .iter()
                    .find(|h| h.name == name)
                    .ok_or_else(|| step_error(ins, format!("heredoc {name} not found")))?;
                let data = if doc.expand {
                    self.expand_in(state, scope, &doc.content, ins)
                        .unwrap_or_else(|_| doc.content.clone())
                } else {
                    doc.content.clone()
                };
                found.push(Found::Content {
                    name: name.to_string(),
                    data: data.into_bytes(),
                });
                continue;
            }
            let src = self.expand_in(state, scope, src, ins)?;
            if is_add && is_url(&src) {
                let mut data = Vec::new();
                self.shared
                    .host
                    .download(&src, &mut data)
                    .map_err(|e| step_error(ins, format!("failed to download {src}: {e}")))?;
                if let Some(expected) = &flags.checksum {
                    verify_checksum(expected, &data)
                        .map_err(|e| step_error(ins, format!("{src}: {e}")))?;
                }
                let name = src
                    .split(['?', '#'])
                    .next()
                    .and_then(|u| u.rsplit('/').next())
                    .filter(|n| !n.is_empty())
                    .unwrap_or("index.html")
                    .to_string();
                found.push(Found::Content { name, data });
                continue;
            }
            // `--parents`: what comes before a `/./` in the source is not kept.
            let pivot = src
                .split_once("/./")
                .map(|(before, _)| PathBuf::from(before.trim_start_matches("./")));
            for s in tree.sources(&src)? {
                if is_add
                    && flags.from.is_none()
                    && !s.is_dir
                    && is_archive(&tree.root.join(&s.path))
                {
                    found.push(Found::Archive(s));
                } else {
                    let kept = flags.parents.then(|| match &pivot {
                        Some(p) => s.path.strip_prefix(p).unwrap_or(&s.path).to_path_buf(),
                        None => s.path.clone(),
                    });
                    found.push(Found::Tree(s, kept));
                }
            }
        }
        // The cache key: the instruction and the content of everything it copies.
        let mut sink = Sink::Hash(Sha256::new());
        for f in &found {
            match f {
                Found::Tree(s, kept) => {
                    sink.hash(s.name.as_bytes());
                    if let Some(kept) = kept {
                        sink.hash(kept.as_os_str().as_encoded_bytes());
                    }
                    tree.stream(s, Path::new(""), Rewrite::default(), &mut sink)?;
                }
                Found::Archive(s) => {
                    sink.hash(s.name.as_bytes());
                    tree.stream(s, Path::new(""), Rewrite::default(), &mut sink)?;
                }
                Found::Content { name, data } => {
                    sink.hash(name.as_bytes());
                    sink.hash(data);
                }
            }
        }
        let content = sink.hex_digest().unwrap_or_default();
        let flag_words: Vec<String> = ins
            .flags
            .iter()
            .map(|f| format!("{}={}", f.name, f.value.as_deref().unwrap_or("")))
            .collect();
        let what = ins.command.name();
        let key = chain(
            &state.key,
            &[
                what,
                &flag_words.join(" "),
                &json(&t.sources),
                dest,
                &content,
            ],
        );
        let created_by = format!("{what} {} {dest} # buildkit", t.sources.join(" "));
        let vertex = self.shared.progress.start(label);
        if self.cached(state, &key)? {
            self.shared.progress.cached(vertex);
            return Ok(());
        }
        let snapshots = self.engine.store().snapshots();
        let snapshot = berth_store::work_name("build");
        snapshots.create_container(&snapshot)?;
        let result = (|| {
            let root = snapshots.mount_container(&snapshot, &state.layers, true)?;
            let owner = match &flags.chown {
                Some(spec) => {
                    let u = berth_runtime::user::resolve_user(&root, spec)?;
                    Some((u.uid, u.gid))
                }
                None if flags.from.is_none() => Some((0, 0)),
                None => None,
            };
            let rewrite = Rewrite {
                owner,
                mode: flags.chmod,
            };
            let into_dir = dest.ends_with('/')
                || dest == "."
                || dest.ends_with("/.")
                || found.len() > 1
                || berth_archive::resolve_in_root(&root, Path::new(dest_abs))
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.is_dir);
            self.write_sources(&root, &tree, &found, Path::new(dest_abs), into_dir, rewrite)?;
            snapshots.unmount_container(&snapshot)?;
            Ok::<_, BuildError>(self.engine.adopt_changes_as_layer(&snapshot)?)
        })();
        let _ = snapshots.remove_container(&snapshot);
        let layer = match result {
            Ok(layer) => layer,
            Err(e) => {
                self.shared.progress.failed(vertex, &e.to_string());
                return Err(e);
            }
        };
        self.commit_step(state, key, Some(layer), created_by)?;
        self.shared.progress.done(vertex);
        Ok(())
    }

    /// Writes the sources into the mounted root: one tar stream unpacked in-root (never outside),
    /// archives extracted into the destination directory.
    fn write_sources(
        &self,
        root: &Path,
        tree: &Tree<'_>,
        found: &[Found],
        dest: &Path,
        into_dir: bool,
        rewrite: Rewrite,
    ) -> Result<(), BuildError> {
        let options = berth_archive::UnpackOptions {
            whiteouts: berth_archive::WhiteoutMode::Literal,
            allow_devices: false,
            owner: None,
        };
        let rel_dest = dest.strip_prefix("/").unwrap_or(dest).to_path_buf();
        let (reader, mut writer) =
            std::io::pipe().map_err(|e| BuildError::Io(format!("pipe: {e}")))?;
        std::thread::scope(|scope| {
            let producer = scope.spawn(move || -> Result<(), BuildError> {
                let w: &mut dyn Write = &mut writer;
                let mut sink = Sink::Tar(tar::Builder::new(w));
                // The destination directory, owned as --chown says when it is new.
                if (into_dir
                    || found.iter().any(|f| {
                        matches!(
                            f,
                            Found::Archive(_) | Found::Tree(Source { is_dir: true, .. }, _)
                        )
                    }))
                    && berth_archive::resolve_in_root(root, dest)
                        .ok()
                        .flatten()
                        .is_none()
                {
                    let header = new_entry(tar::EntryType::Directory, 0o755, rewrite.owner, 0);
                    sink.entry(&rel_dest, header, None, &mut std::io::empty())?;
                }
                for f in found {
                    match f {
                        Found::Tree(s, kept) => {
                            let target = match kept {
                                Some(kept) => rel_dest.join(kept),
                                None if s.is_dir || !into_dir => rel_dest.clone(),
                                None => rel_dest.join(&s.name),
                            };
                            tree.stream(s, &target, rewrite, &mut sink)?;
                        }
                        Found::Content { name, data } => {
                            let target = if into_dir {
                                rel_dest.join(name)
                            } else {
                                rel_dest.clone()
                            };
                            let mode = rewrite.mode.unwrap_or(0o644);
                            let size = data.len() as u64;
                            let header =
                                new_entry(tar::EntryType::Regular, mode, rewrite.owner, size);
                            sink.entry(&target, header, None, &mut &data[..])?;
                        }
                        Found::Archive(_) => {}
                    }
                }
                if let Sink::Tar(b) = sink {
                    b.into_inner()
                        .map_err(|e| BuildError::Io(format!("writing sources: {e}")))?;
                }
                Ok(())
            });
            let unpacked = berth_archive::unpack_in_root(reader, root, Path::new("/"), &options)
                .map(drop)
                .map_err(|e| BuildError::Context(format!("copying into the image: {e}")));
            let produced = producer
                .join()
                .unwrap_or_else(|_| Err(BuildError::Io("source writer panicked".into())));
            produced.and(unpacked)
        })?;
        for f in found {
            if let Found::Archive(s) = f {
                let file = std::fs::File::open(tree.root.join(&s.path))
                    .map_err(|e| BuildError::Context(format!("{}: {e}", s.path.display())))?;
                let (_, stream) = berth_archive::decompress(std::io::BufReader::new(file))
                    .map_err(|e| BuildError::Context(format!("{}: {e}", s.path.display())))?;
                berth_archive::unpack_in_root(stream, root, dest, &options)
                    .map_err(|e| BuildError::Context(format!("extracting {}: {e}", s.name)))?;
            }
        }
        Ok(())
    }
}

/// The header of an entry the builder makes itself (a new destination directory, a heredoc or
/// downloaded file): owned by `owner` (root by default), modified now.
fn new_entry(kind: tar::EntryType, mode: u32, owner: Option<(u32, u32)>, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    let (uid, gid) = owner.unwrap_or((0, 0));
    header.set_uid(uid.into());
    header.set_gid(gid.into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    header.set_mtime(now);
    header.set_size(size);
    header
}

/// Whether ADD extracts this local file: a tar, plain or gzip, zstd, bzip2 or xz compressed.
fn is_archive(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    berth_archive::looks_like_tar(&head[..n])
}

pub(crate) fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A container path cleaned as Docker does, as a string.
pub(crate) fn clean_absolute(path: &Path) -> String {
    berth_runtime::filesystem::clean_absolute(path)
        .to_string_lossy()
        .into_owned()
}

/// Whether an ADD source is a URL to download.
fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// Whether an ADD source names a git repository (BuildKit clones those; Berth does not).
fn is_git_source(src: &str) -> bool {
    src.starts_with("git@")
        || src.starts_with("git://")
        || (is_url(src)
            && src
                .split(['?', '#'])
                .next()
                .is_some_and(|u| u.ends_with(".git")))
}

/// Checks downloaded `data` against ADD `--checksum` (`sha256:`, `sha384:` or `sha512:` and hex).
fn verify_checksum(expected: &str, data: &[u8]) -> Result<(), String> {
    let (algorithm, hex) = expected
        .split_once(':')
        .ok_or_else(|| format!("invalid checksum {expected:?}: expected sha256:<hex>"))?;
    let actual = match algorithm {
        "sha256" => hex::encode(sha2::Sha256::digest(data)),
        "sha384" => hex::encode(sha2::Sha384::digest(data)),
        "sha512" => hex::encode(sha2::Sha512::digest(data)),
        other => return Err(format!("unsupported checksum algorithm {other:?}")),
    };
    if actual.eq_ignore_ascii_case(hex) {
        Ok(())
    } else {
        Err(format!(
            "checksum mismatch: expected {expected}, got {algorithm}:{actual}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain() {
        let a = chain(&Digest::of(b"base"), &["RUN", "x"]);
        let b = chain(&Digest::of(b"base"), &["RUN", "x"]);
        let c = chain(&Digest::of(b"other"), &["RUN", "x"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(chain(&a, &["a", "b"]), chain(&a, &["ab"]));
    }

    #[test]
    fn ports_and_paths() {
        let expose = berth_runtime::options::parse_expose;
        assert_eq!(expose("80").unwrap(), ["80/tcp"]);
        assert_eq!(expose("53/udp").unwrap(), ["53/udp"]);
        assert_eq!(expose("8000-8001").unwrap(), ["8000/tcp", "8001/tcp"]);
        assert!(expose("x").is_err());
        assert_eq!(clean_absolute(Path::new("/app/../srv/./x")), "/srv/x");
        assert_eq!(clean_absolute(Path::new("/../..")), "/");
    }

    #[test]
    fn mount_specs() {
        let m = parse_mount("type=cache,target=/root/.cache,sharing=locked");
        assert_eq!(m["type"], "cache");
        assert_eq!(m["target"], "/root/.cache");
        assert_eq!(parse_mount("type=bind,rw")["rw"], "true");
    }
}
