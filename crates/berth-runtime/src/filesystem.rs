//! A container's filesystem from the host: `cp` in both directions, `export`, `diff` and `commit`.
//!
//! Everything goes through the overlay mount in the host's mount namespace (the rootfs without the
//! container's /proc, /sys and /dev), plus the host directories of its volumes and bind mounts for paths
//! below their mount points, as Docker does. A stopped container's overlay is mounted for the duration
//! of the operation while its monitor lock is held, so it cannot be started underneath us. Every path a
//! container controls is resolved with `berth-archive`'s in-root resolution: a symlink in the container
//! never leads to a host file.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use berth_archive::{Change, UnpackOptions, WhiteoutMode};
use berth_store::container::ContainerRecord;
use berth_store::image::{History, RunConfig};
use berth_store::{Digest, ImageRecord, LayerRecord, Reference};

use crate::engine::Engine;
use crate::error::{io_err, RuntimeError};

/// A container's root filesystem, reachable on the host for as long as this lives.
pub struct ContainerRoot<'a> {
    engine: &'a Engine,
    record: ContainerRecord,
    path: PathBuf,
    /// Held (with the overlay mounted by us) when the container is not running.
    lock: Option<File>,
}

impl ContainerRoot<'_> {
    /// The host directory that is the container's `/`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where container path `path` lives on the host: `(root, path inside root)`. A path at or below a
    /// volume's or bind mount's destination is served from its source, the longest destination winning.
    fn locate(&self, path: &Path) -> (PathBuf, PathBuf) {
        let clean = clean_absolute(path);
        let mut best: Option<(&Path, PathBuf)> = None;
        for m in &self.record.mounts {
            if m.kind != "volume" && m.kind != "bind" {
                continue;
            }
            let dest = Path::new(&m.destination);
            if let Ok(rest) = clean.strip_prefix(dest) {
                if best
                    .as_ref()
                    .is_none_or(|(d, _)| dest.as_os_str().len() > d.as_os_str().len())
                {
                    best = Some((dest, Path::new("/").join(rest)));
                }
            }
        }
        match best {
            Some((dest, rest)) => {
                let m = self
                    .record
                    .mounts
                    .iter()
                    .find(|m| Path::new(&m.destination) == dest);
                match m {
                    Some(m) => (PathBuf::from(&m.source), rest),
                    None => (self.path.clone(), clean),
                }
            }
            None => (self.path.clone(), clean),
        }
    }
}

impl Drop for ContainerRoot<'_> {
    fn drop(&mut self) {
        if self.lock.is_some() {
            let _ = self
                .engine
                .store()
                .snapshots()
                .unmount_container(&self.record.id);
        }
    }
}

/// Mount points of the runtime's own mounts (/dev, /proc, /sys and the bind-mounted /etc files): not
/// the container's changes, so `diff` hides them and `commit` leaves the /etc files out of the layer.
/// The store's init layer provides them under every container now; containers started before it
/// existed have them in their upper dir.
const RUNTIME_MOUNT_POINTS: [&str; 6] = [
    "dev",
    "proc",
    "sys",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
];

/// `/a/./b/../c` → `/a/c`, never above `/`: how Docker cleans container paths (`cp`, WORKDIR,
/// COPY destinations).
pub fn clean_absolute(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Where `cp` puts what it copies.
pub enum CopyTarget<'a> {
    /// A tar stream (`-`).
    Stream(&'a mut dyn Write),
    /// A host path, with Docker's rules for existing and new destinations.
    Path(&'a Path),
}

/// `commit` options.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `-a`: author.
    pub author: Option<String>,
    /// `-m`: commit message.
    pub message: Option<String>,
    /// `-p` (default true): pause the container while its layer is written.
    pub pause: bool,
    /// Repository[:tag] for the new image.
    pub reference: Option<Reference>,
}

/// How `cp` unpacks: `.wh.` names are plain files, no device nodes, and every entry owned by `owner`
/// when given rather than as the archive says.
fn unpack_options(owner: Option<(u32, u32)>) -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutMode::Literal,
        allow_devices: false,
        owner,
    }
}

/// What a copy source is.
struct SourceKind {
    is_dir: bool,
    /// The source ends in `/.`: copy a directory's contents rather than the directory.
    contents_only: bool,
}

/// Docker's `cp` destination rules: given what the source is and what is at the destination, the
/// directory to unpack into and the name the copied top entry takes there.
fn destination(
    source: &SourceKind,
    dest: &str,
    dest_meta: Option<&fs::Metadata>,
) -> Result<(PathBuf, Option<PathBuf>), RuntimeError> {
    let dest_path = Path::new(dest);
    let bad = |m: &str| Err(RuntimeError::InvalidOption(m.to_string()));
    match dest_meta {
        Some(meta) if meta.is_dir() => {
            let top = source.contents_only.then(|| PathBuf::from("."));
            Ok((dest_path.to_path_buf(), top))
        }
        Some(_) if source.is_dir => bad(&format!(
            "cannot copy a directory to a file: {dest} is not a directory"
        )),
        Some(_) => split_parent(dest_path),
        None if dest.ends_with('/') && !source.is_dir => bad(&format!(
            "destination directory {dest} must exist: no such directory"
        )),
        None => split_parent(dest_path),
    }
}

fn split_parent(dest: &Path) -> Result<(PathBuf, Option<PathBuf>), RuntimeError> {
    let name = dest.file_name().ok_or_else(|| {
        RuntimeError::InvalidOption(format!("invalid destination {}", dest.display()))
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, Some(PathBuf::from(name))))
}

/// Streams a tar made by `write` into `unpack` through a pipe, the writer on a helper thread.
fn pipe_through(
    write: impl FnOnce(std::io::PipeWriter) -> Result<(), RuntimeError> + Send,
    unpack: impl FnOnce(std::io::PipeReader) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    let (reader, writer) = std::io::pipe().map_err(|e| io_err("pipe", e))?;
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || write(writer));
        let unpacked = unpack(reader);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(RuntimeError::Io("archive writer panicked".into())));
        // The writer's error (a missing source) explains an unpack failure, so it wins.
        produced.and(unpacked)
    })
}

impl Engine {
    /// Makes a container's root filesystem reachable on the host (see [`ContainerRoot`]).
    pub fn container_root(&self, name_or_id: &str) -> Result<ContainerRoot<'_>, RuntimeError> {
        let record = self.container(name_or_id)?;
        let snapshots = self.store().snapshots();
        let merged = snapshots.merged_dir(&record.id);
        self.await_monitor_finish(&record.id);
        if self.monitor_alive(&record.id) {
            if berth_store::snapshot::is_mount_point(&merged) {
                return Ok(ContainerRoot {
                    engine: self,
                    record,
                    path: merged,
                    lock: None,
                });
            }
            return Err(RuntimeError::InvalidOption(format!(
                "container {} is starting; try again",
                record.id
            )));
        }
        let lock = self.lock_monitor(&record.id)?.ok_or_else(|| {
            RuntimeError::InvalidOption(format!(
                "container {} is being started or used; try again",
                record.id
            ))
        })?;
        let path = snapshots.mount_container(&record.id, &record.layers, false)?;
        Ok(ContainerRoot {
            engine: self,
            record,
            path,
            lock: Some(lock),
        })
    }

    /// `export`: the container's whole filesystem (volumes excluded, as Docker) as a tar.
    pub fn export(&self, name_or_id: &str, out: impl Write) -> Result<(), RuntimeError> {
        let root = self.container_root(name_or_id)?;
        berth_archive::write_tree(root.path(), out)
            .map_err(|e| RuntimeError::Io(format!("export: {e}")))?;
        Ok(())
    }

    /// `cp CONTAINER:SRC DEST`. With `follow_link`, a symlink at SRC is copied as what it points to.
    pub fn copy_from_container(
        &self,
        name_or_id: &str,
        src: &str,
        target: CopyTarget<'_>,
        follow_link: bool,
        keep_owners: bool,
    ) -> Result<(), RuntimeError> {
        let root = self.container_root(name_or_id)?;
        let (src_root, mut src_path) = root.locate(Path::new(src));
        // Docker's: what is copied out belongs to the user copying, unless `-a` keeps the owners.
        let owner = (!keep_owners).then(|| {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        });
        let missing = || {
            RuntimeError::InvalidOption(format!(
                "Could not find the file {src} in container {name_or_id}"
            ))
        };
        // What is at the path itself (a symlink stays one), and what it leads to inside the root.
        let resolved =
            crate::rootfs::resolve_in_root(&src_root, &src_path).map_err(|e| io_err(src, e))?;
        let at_path = match (src_path.parent(), src_path.file_name()) {
            (Some(parent), Some(name)) => crate::rootfs::resolve_in_root(&src_root, parent)
                .map_err(|e| io_err(src, e))?
                .join(name),
            _ => src_root.clone(),
        };
        let link_meta = fs::symlink_metadata(&at_path).map_err(|_| missing())?;
        let is_dir = if follow_link || !link_meta.file_type().is_symlink() {
            fs::symlink_metadata(&resolved)
                .map_err(|_| missing())?
                .is_dir()
        } else {
            false
        };
        if follow_link {
            src_path = Path::new("/").join(resolved.strip_prefix(&src_root).unwrap_or(&resolved));
        }
        let source = SourceKind {
            is_dir,
            contents_only: src.ends_with("/.") && is_dir,
        };
        match target {
            CopyTarget::Stream(out) => {
                let top = source.contents_only.then(|| PathBuf::from("."));
                berth_archive::write_path_in_root_as(&src_root, &src_path, top.as_deref(), out)
                    .map_err(|e| RuntimeError::Io(format!("copy {src}: {e}")))?;
                Ok(())
            }
            CopyTarget::Path(dest) => {
                let dest_str = dest.to_string_lossy();
                let (dir, top) = destination(&source, &dest_str, fs::metadata(dest).ok().as_ref())?;
                if !dir.is_dir() {
                    return Err(RuntimeError::InvalidOption(format!(
                        "destination directory {} must exist: no such directory",
                        dir.display()
                    )));
                }
                pipe_through(
                    |w| {
                        berth_archive::write_path_in_root_as(
                            &src_root,
                            &src_path,
                            top.as_deref(),
                            w,
                        )
                        .map(drop)
                        .map_err(|e| RuntimeError::Io(format!("copy {src}: {e}")))
                    },
                    |r| {
                        berth_archive::unpack_in_root(
                            r,
                            &dir,
                            Path::new("/"),
                            &unpack_options(owner),
                        )
                        .map(drop)
                        .map_err(|e| RuntimeError::Io(format!("copy to {}: {e}", dir.display())))
                    },
                )
            }
        }
    }

    /// `cp SRC CONTAINER:DEST`: a host path, or with `src` None a tar stream read from `input`.
    pub fn copy_to_container(
        &self,
        name_or_id: &str,
        src: Option<&Path>,
        input: &mut dyn Read,
        dest: &str,
        follow_link: bool,
        keep_owners: bool,
    ) -> Result<(), RuntimeError> {
        let root = self.container_root(name_or_id)?;
        let (dest_root, dest_path) = root.locate(Path::new(dest));
        // Docker's: what is copied in belongs to the container's root, unless `-a` keeps the owners.
        let owner = (!keep_owners).then_some((0, 0));
        let resolved =
            crate::rootfs::resolve_in_root(&dest_root, &dest_path).map_err(|e| io_err(dest, e))?;
        let dest_meta = fs::metadata(&resolved).ok();
        let Some(src) = src else {
            if !dest_meta.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(RuntimeError::InvalidOption(format!(
                    "destination \"{name_or_id}:{dest}\" must be a directory"
                )));
            }
            berth_archive::unpack_in_root(input, &dest_root, &dest_path, &unpack_options(owner))
                .map_err(|e| RuntimeError::Io(format!("copy to {dest}: {e}")))?;
            return Ok(());
        };
        let src_meta = if follow_link {
            fs::metadata(src)
        } else {
            fs::symlink_metadata(src)
        }
        .map_err(|e| io_err(src.display(), e))?;
        let src_str = src.to_string_lossy();
        let source = SourceKind {
            is_dir: src_meta.is_dir(),
            contents_only: src_str.ends_with("/.") && src_meta.is_dir(),
        };
        let (dir_in_container, top) = destination(&source, dest, dest_meta.as_ref())?;
        let dir_resolved = crate::rootfs::resolve_in_root(&dest_root, &dir_in_container)
            .map_err(|e| io_err(dest, e))?;
        if !dir_resolved.is_dir() {
            return Err(RuntimeError::InvalidOption(format!(
                "destination directory {} must exist: no such directory",
                dir_in_container.display()
            )));
        }
        let src_abs = std::path::absolute(src).map_err(|e| io_err(src.display(), e))?;
        let src_abs = if follow_link {
            fs::canonicalize(&src_abs).map_err(|e| io_err(src.display(), e))?
        } else {
            src_abs
        };
        let (src_root, src_name) = match (src_abs.parent(), src_abs.file_name()) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), PathBuf::from(name)),
            _ => (src_abs.clone(), PathBuf::from("/")),
        };
        let src_root = if source.contents_only {
            src_abs.clone()
        } else {
            src_root
        };
        let (src_in_root, top) = if source.contents_only {
            (PathBuf::from("/"), None)
        } else {
            (Path::new("/").join(&src_name), top.or(Some(src_name)))
        };
        pipe_through(
            |w| {
                berth_archive::write_path_in_root_as(&src_root, &src_in_root, top.as_deref(), w)
                    .map(drop)
                    .map_err(|e| RuntimeError::Io(format!("copy {}: {e}", src.display())))
            },
            |r| {
                berth_archive::unpack_in_root(
                    r,
                    &dest_root,
                    &dir_in_container,
                    &unpack_options(owner),
                )
                .map(drop)
                .map_err(|e| RuntimeError::Io(format!("copy to {dest}: {e}")))
            },
        )
    }

    /// `diff`: what changed in the container's filesystem relative to its image.
    pub fn diff(&self, name_or_id: &str) -> Result<Vec<Change>, RuntimeError> {
        let record = self.container(name_or_id)?;
        let snapshots = self.store().snapshots();
        let lowers = snapshots.lower_dirs(&record.layers);
        let changes = berth_archive::changes(&snapshots.upper_dir(&record.id), &lowers)
            .map_err(|e| RuntimeError::Io(format!("diff: {e}")))?;
        // The mount points the runtime itself creates are not the container's changes (Docker keeps
        // them in a hidden init layer).
        let (hidden, kept): (Vec<Change>, Vec<Change>) = changes.into_iter().partition(|c| {
            c.kind == berth_archive::ChangeKind::Added
                && RUNTIME_MOUNT_POINTS
                    .iter()
                    .any(|p| c.path == Path::new("/").join(p))
        });
        // A directory shown modified only because of those entries (`/etc`) is not a change either.
        let only_hidden_below = |c: &Change| {
            c.kind == berth_archive::ChangeKind::Modified
                && hidden.iter().any(|h| h.path.starts_with(&c.path))
                && !kept
                    .iter()
                    .any(|k| k.path != c.path && k.path.starts_with(&c.path))
        };
        Ok(kept
            .iter()
            .filter(|c| !only_hidden_below(c))
            .cloned()
            .collect())
    }

    /// `commit`: the container's upper dir becomes a new layer on top of its image's, with the
    /// container's config, edited by `change_config` (the caller's `--change` instructions), as the
    /// image config.
    pub fn commit(
        &self,
        name_or_id: &str,
        options: &CommitOptions,
        change_config: &dyn Fn(&mut RunConfig) -> Result<(), String>,
    ) -> Result<ImageRecord, RuntimeError> {
        let record = self.container(name_or_id)?;
        let pause = options.pause && record.state.running && !record.state.paused;
        if pause {
            self.set_paused(&record.id, true)?;
        }
        let result = self.commit_paused(&record, options, change_config);
        if pause {
            // A container that exited meanwhile has nothing left to thaw.
            match self.set_paused(&record.id, false) {
                Err(RuntimeError::NotRunning(_)) => {}
                thawed => thawed?,
            }
        }
        result
    }

    /// Writes what a container changed (its upper dir, less the runtime's /etc mount points) as a
    /// layer and records it in the store. `commit` and the builder's RUN steps use it.
    pub fn write_changes_as_layer(&self, id: &str) -> Result<LayerRecord, RuntimeError> {
        // The mount points of the bind-mounted /etc files are the runtime's, not the container's.
        let skip: Vec<&Path> = RUNTIME_MOUNT_POINTS
            .iter()
            .filter(|p| p.starts_with("etc/"))
            .map(Path::new)
            .collect();
        let blob_digest = self.write_upper_as_blob(id, &skip)?;
        let store = self.store();
        Ok(store.add_layer(&blob_digest, berth_store::image::MEDIA_TYPE_OCI_LAYER, None)?)
    }

    /// Removes from a stopped container's upper dir the mount points the runtime created for `targets`
    /// (container paths): each target and its parents, as long as the image did not have them and they
    /// are still empty. The builder calls it before a RUN step's changes become a layer, so a
    /// `--mount` leaves nothing behind (BuildKit removes its mount stubs too). An upper-dir path with a
    /// symlink in it is left alone: nothing is ever followed out of the upper dir.
    pub fn remove_mount_stubs(&self, id: &str, targets: &[String]) -> Result<(), RuntimeError> {
        let record = self.container(id)?;
        let snapshots = self.store().snapshots();
        let upper = snapshots.upper_dir(&record.id);
        let lowers = snapshots.lower_dirs(&record.layers);
        for target in targets {
            let rel = clean_absolute(Path::new(target));
            let parts: Vec<_> = rel.components().skip(1).collect();
            let mut stubs = Vec::new();
            for depth in 1..=parts.len() {
                let sub: PathBuf = parts[..depth].iter().collect();
                let Ok(meta) = fs::symlink_metadata(upper.join(&sub)) else {
                    break; // not created here: nor are the deeper ones
                };
                if meta.file_type().is_symlink() {
                    stubs.clear();
                    break;
                }
                let in_image = lowers
                    .iter()
                    .any(|l| fs::symlink_metadata(l.join(&sub)).is_ok());
                if !in_image {
                    stubs.push((sub, meta.is_dir()));
                }
            }
            // Deepest first; stop at the first one that holds something.
            for (sub, is_dir) in stubs.iter().rev() {
                let path = upper.join(sub);
                let removed = if *is_dir {
                    fs::remove_dir(&path).is_ok()
                } else {
                    fs::metadata(&path).is_ok_and(|m| m.len() == 0)
                        && fs::remove_file(&path).is_ok()
                };
                if !removed {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Writes the changes of a snapshot that never ran as a container (the builder's COPY and ADD
    /// steps) as a layer, whose content becomes the snapshot's upper dir itself: moved into the
    /// layer store rather than unpacked again from the blob (one file creation per file instead of
    /// two). The snapshot must be unmounted; its upper dir is gone afterwards.
    pub fn adopt_changes_as_layer(&self, id: &str) -> Result<LayerRecord, RuntimeError> {
        let blob_digest = self.write_upper_as_blob(id, &[])?;
        let store = self.store();
        let upper = store.snapshots().upper_dir(id);
        Ok(store.adopt_layer_dir(
            &upper,
            &blob_digest,
            berth_store::image::MEDIA_TYPE_OCI_LAYER,
        )?)
    }

    /// Writes snapshot `id`'s upper dir, less the empty files at `skip`, as an uncompressed layer blob.
    fn write_upper_as_blob(&self, id: &str, skip: &[&Path]) -> Result<Digest, RuntimeError> {
        let store = self.store();
        let upper = store.snapshots().upper_dir(id);
        let mut blob = store.blobs().writer()?;
        berth_archive::write_layer_from_upper_skipping(&upper, skip, &mut blob)
            .map_err(|e| RuntimeError::Io(format!("write layer: {e}")))?;
        let (blob_digest, _) = blob.commit(None)?;
        Ok(blob_digest)
    }

    fn commit_paused(
        &self,
        record: &ContainerRecord,
        options: &CommitOptions,
        change_config: &dyn Fn(&mut RunConfig) -> Result<(), String>,
    ) -> Result<ImageRecord, RuntimeError> {
        let store = self.store();
        let layer = self.write_changes_as_layer(&record.id)?;
        let mut layers = Vec::new();
        for diff_id in &record.layers {
            let l = store.layer(diff_id)?.ok_or_else(|| {
                RuntimeError::InvalidOption(format!(
                    "layer {diff_id} of the container's image is gone"
                ))
            })?;
            layers.push(l);
        }
        layers.push(layer);
        let base = store.image(record.image_id.as_str()).ok();
        let mut history = base
            .as_ref()
            .map(|i| i.config.history.clone())
            .unwrap_or_default();
        history.push(History {
            created: Some(berth_store::now_rfc3339()),
            created_by: Some(
                crate::spec::process_args(record)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            author: options.author.clone(),
            comment: options.message.clone(),
            ..History::default()
        });
        let c = &record.config;
        let mut run_config = RunConfig {
            user: c.user.clone(),
            exposed_ports: c.exposed_ports.clone(),
            env: c.env.clone(),
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            volumes: c.volumes.clone(),
            working_dir: c.working_dir.clone(),
            labels: c.labels.clone(),
            stop_signal: c.stop_signal.clone(),
            healthcheck: c.healthcheck.clone(),
            ..base
                .as_ref()
                .map(|i| i.config.config.clone())
                .unwrap_or_default()
        };
        change_config(&mut run_config).map_err(RuntimeError::InvalidOption)?;
        let tags: Vec<Reference> = options.reference.iter().cloned().collect();
        // A commit is for the platform of the image the container runs.
        let platform = base
            .as_ref()
            .map(|image| berth_store::Platform::of_config(&image.config));
        Ok(store.create_image(
            run_config,
            layers,
            history,
            options.author.clone(),
            platform.as_ref(),
            &tags,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_container_paths() {
        assert_eq!(clean_absolute(Path::new("a/./b/../c")), Path::new("/a/c"));
        assert_eq!(clean_absolute(Path::new("/../../etc")), Path::new("/etc"));
    }

    #[test]
    fn docker_destination_rules() {
        let file = SourceKind {
            is_dir: false,
            contents_only: false,
        };
        let dir = SourceKind {
            is_dir: true,
            contents_only: false,
        };
        let tmp = tempfile::tempdir().unwrap();
        let existing_dir = fs::metadata(tmp.path()).unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, "x").unwrap();
        let existing_file = fs::metadata(&f).unwrap();
        assert_eq!(
            destination(&file, "/d", Some(&existing_dir)).unwrap(),
            (PathBuf::from("/d"), None)
        );
        assert_eq!(
            destination(&file, "/d/new", None).unwrap(),
            (PathBuf::from("/d"), Some(PathBuf::from("new")))
        );
        assert!(destination(&file, "/d/new/", None).is_err());
        assert!(destination(&dir, "/d/f", Some(&existing_file)).is_err());
        assert_eq!(
            destination(&file, "/d/f", Some(&existing_file)).unwrap(),
            (PathBuf::from("/d"), Some(PathBuf::from("f")))
        );
    }
}
