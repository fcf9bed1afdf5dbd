//! Where COPY and ADD read from: the build context (a directory, or a tar unpacked into a scratch
//! directory) filtered by `.dockerignore`, or the root filesystem of an earlier stage or another
//! image. Sources are found and read with every path resolved inside their tree
//! ([`berth_archive::resolve_in_root`], [`berth_archive::write_path_in_root_as`]), so neither a
//! `../` in the Dockerfile nor a symlink in the context or in an image can reach a host file.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::dockerignore::Matcher;
use crate::error::BuildError;

/// The build context.
pub struct Context {
    root: PathBuf,
    ignore: Matcher,
    /// Keeps a context that came as a tar alive (and deletes it at the end).
    _scratch: Option<tempfile::TempDir>,
}

impl Context {
    /// A context directory, with the `.dockerignore` that applies to `dockerfile`.
    pub fn dir(root: &Path, dockerfile: Option<&Path>) -> Result<Self, BuildError> {
        let ignore = crate::dockerignore::load(root, dockerfile)
            .map_err(|e| BuildError::Context(e.to_string()))?;
        Ok(Self {
            root: root.to_path_buf(),
            ignore,
            _scratch: None,
        })
    }

    /// A context sent as a tar (`berth build - < ctx.tar`), unpacked safely below `scratch`.
    pub fn tar(reader: impl Read, scratch: &Path) -> Result<Self, BuildError> {
        let dir = tempfile::Builder::new()
            .prefix("build-context-")
            .tempdir_in(scratch)
            .map_err(|e| BuildError::Context(format!("scratch directory: {e}")))?;
        let options = berth_archive::UnpackOptions {
            whiteouts: berth_archive::WhiteoutMode::Literal,
            allow_devices: false,
            owner: None,
        };
        berth_archive::unpack_layer(reader, dir.path(), &options)
            .map_err(|e| BuildError::Context(format!("reading the context tar: {e}")))?;
        let ignore = crate::dockerignore::load(dir.path(), None)
            .map_err(|e| BuildError::Context(e.to_string()))?;
        Ok(Self {
            root: dir.path().to_path_buf(),
            ignore,
            _scratch: Some(dir),
        })
    }

    /// No context at all (a Dockerfile on stdin with `-`): COPY finds nothing.
    pub fn empty(scratch: &Path) -> Result<Self, BuildError> {
        let dir = tempfile::Builder::new()
            .prefix("build-context-")
            .tempdir_in(scratch)
            .map_err(|e| BuildError::Context(format!("scratch directory: {e}")))?;
        Ok(Self {
            root: dir.path().to_path_buf(),
            ignore: Matcher::default(),
            _scratch: Some(dir),
        })
    }

    /// The context's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The context as a source tree for COPY and ADD.
    pub fn tree(&self) -> Tree<'_> {
        Tree {
            root: &self.root,
            ignore: Some(&self.ignore),
            exclude: None,
        }
    }
}

/// A tree sources are read from.
#[derive(Clone, Copy)]
pub struct Tree<'a> {
    /// Its directory on the host, taken as `/`.
    pub root: &'a Path,
    /// `.dockerignore` rules (the build context only).
    pub ignore: Option<&'a Matcher>,
    /// COPY/ADD `--exclude` patterns, matched against paths relative to each directory source (a
    /// file source by its own path).
    pub exclude: Option<&'a Matcher>,
}

/// One source of a COPY or ADD after wildcard expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its real place in the tree (symlinks followed inside the tree), relative to the root.
    pub path: PathBuf,
    /// The name it was matched by (the last component as written or matched), which a file
    /// keeps in the destination.
    pub name: String,
    /// Whether it is a directory (whose contents are copied).
    pub is_dir: bool,
}

/// Owner and mode rewrites of COPY `--chown` / `--chmod`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite {
    /// New owner; `None` keeps the tree's owner.
    pub owner: Option<(u32, u32)>,
    /// New permission bits.
    pub mode: Option<u32>,
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a source as written in the Dockerfile; `..` above the root is an error in the context
/// and clamped in an image (as `docker cp` and BuildKit do there).
fn clean_source(pattern: &str, in_context: bool) -> Result<Vec<String>, BuildError> {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(pattern).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::ParentDir if parts.pop().is_none() && in_context => {
                return Err(BuildError::Context(format!(
                    "forbidden path outside the build context: {pattern}"
                )));
            }
            _ => {}
        }
    }
    Ok(parts)
}

impl Tree<'_> {
    fn excluded(&self, rel: &Path) -> bool {
        self.ignore
            .is_some_and(|m| !rel.as_os_str().is_empty() && m.excluded(&rel.to_string_lossy()))
    }

    /// The sources a pattern names: wildcards (`*`, `?`, `[…]`, per path component) are expanded
    /// in name order; no match, a missing path or an excluded one is an error naming the pattern.
    pub fn sources(&self, pattern: &str) -> Result<Vec<Source>, BuildError> {
        let parts = clean_source(pattern, self.ignore.is_some())?;
        let not_found = || {
            BuildError::Context(format!(
                "\"{pattern}\": not found (the file is missing in the build context or excluded by .dockerignore)"
            ))
        };
        // Candidates as (path as matched, last name).
        let mut candidates: Vec<PathBuf> = vec![PathBuf::new()];
        for part in &parts {
            let mut next = Vec::new();
            for base in &candidates {
                if has_wildcard(part) {
                    let matcher = Matcher::new(&[part.as_str()])
                        .map_err(|e| BuildError::Context(e.to_string()))?;
                    let Some(dir) = self.resolve(base)? else {
                        continue;
                    };
                    if !dir.is_dir {
                        continue;
                    }
                    let Ok(entries) = std::fs::read_dir(self.root.join(&dir.path)) else {
                        continue;
                    };
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| matcher.excluded(n))
                        .collect();
                    names.sort();
                    next.extend(names.into_iter().map(|n| base.join(n)));
                } else {
                    next.push(base.join(part));
                }
            }
            candidates = next;
        }
        let mut out = Vec::new();
        for candidate in candidates {
            let Some(resolved) = self.resolve(&candidate)? else {
                continue;
            };
            if !resolved.is_dir && self.excluded(&resolved.path) {
                continue;
            }
            let name = candidate
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(Source {
                path: resolved.path,
                name,
                is_dir: resolved.is_dir,
            });
        }
        if out.is_empty() {
            return Err(not_found());
        }
        Ok(out)
    }

    fn resolve(&self, path: &Path) -> Result<Option<berth_archive::Resolved>, BuildError> {
        berth_archive::resolve_in_root(self.root, path)
            .map_err(|e| BuildError::Context(format!("{}: {e}", path.display())))
    }

    /// Streams one source as tar entries named below `dest` (an archive path relative to the
    /// target root: the directory a directory's contents go into, or a file's new path), applying
    /// the rewrite and `.dockerignore`, into `sink`.
    pub fn stream(
        &self,
        source: &Source,
        dest: &Path,
        rewrite: Rewrite,
        sink: &mut Sink<'_>,
    ) -> Result<(), BuildError> {
        let top: &Path = if source.is_dir {
            Path::new(".")
        } else {
            Path::new(&source.name)
        };
        let (reader, writer) = std::io::pipe().map_err(|e| BuildError::Io(format!("pipe: {e}")))?;
        let root = self.root;
        let path = Path::new("/").join(&source.path);
        std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                berth_archive::write_path_in_root_as(root, &path, Some(top), writer)
                    .map(drop)
                    .map_err(|e| BuildError::Context(format!("{}: {e}", path.display())))
            });
            let consumed = self.rewrite_entries(reader, source, dest, rewrite, sink);
            let produced = producer
                .join()
                .unwrap_or_else(|_| Err(BuildError::Io("archive writer panicked".into())));
            produced.and(consumed)
        })
    }

    fn rewrite_entries(
        &self,
        reader: impl Read,
        source: &Source,
        dest: &Path,
        rewrite: Rewrite,
        sink: &mut Sink<'_>,
    ) -> Result<(), BuildError> {
        let bad = |e: std::io::Error| BuildError::Context(format!("reading sources: {e}"));
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = entry.path().map_err(bad)?.into_owned();
            // Where the entry is in the tree, for .dockerignore, and where it goes.
            let (in_tree, target, rel_in_source) = if source.is_dir {
                let rel = name.strip_prefix(".").unwrap_or(&name).to_path_buf();
                (source.path.join(&rel), dest.join(&rel), rel)
            } else {
                (source.path.clone(), dest.to_path_buf(), PathBuf::new())
            };
            let own_path = if source.is_dir {
                &rel_in_source
            } else {
                &in_tree
            };
            if self.excluded(&in_tree)
                || self.exclude.is_some_and(|m| {
                    !own_path.as_os_str().is_empty() && m.excluded(&own_path.to_string_lossy())
                })
            {
                continue;
            }
            let mut header = entry.header().clone();
            if let Some((uid, gid)) = rewrite.owner {
                header.set_uid(uid.into());
                header.set_gid(gid.into());
            }
            if let Some(mode) = rewrite.mode {
                header.set_mode(mode);
            }
            let link = match entry.header().entry_type() {
                tar::EntryType::Link => entry.link_name().map_err(bad)?.map(|l| {
                    let l = l.strip_prefix(".").unwrap_or(&l).to_path_buf();
                    if source.is_dir {
                        dest.join(l)
                    } else {
                        dest.to_path_buf()
                    }
                }),
                _ => entry.link_name().map_err(bad)?.map(|l| l.into_owned()),
            };
            sink.entry(&target, header, link.as_deref(), &mut entry)?;
        }
        Ok(())
    }
}

/// Where streamed sources go: a content hash (the cache key of a COPY) or a tar for unpacking.
pub enum Sink<'w> {
    /// Hashes names, types, modes, owners, link targets and contents; not times, which BuildKit's
    /// cache ignores as well.
    Hash(Sha256),
    /// Writes a tar.
    Tar(tar::Builder<&'w mut dyn Write>),
}

impl Sink<'_> {
    /// Adds bytes to a hash (a tar ignores them).
    pub fn hash(&mut self, bytes: &[u8]) {
        if let Sink::Hash(h) = self {
            h.update(bytes);
        }
    }

    /// The hex digest of a hash; `None` for a tar.
    pub fn hex_digest(self) -> Option<String> {
        match self {
            Sink::Hash(h) => Some(hex::encode(h.finalize())),
            Sink::Tar(_) => None,
        }
    }

    /// Adds one entry.
    pub fn entry(
        &mut self,
        name: &Path,
        mut header: tar::Header,
        link: Option<&Path>,
        data: &mut dyn Read,
    ) -> Result<(), BuildError> {
        let io = |e: std::io::Error| BuildError::Io(format!("{}: {e}", name.display()));
        match self {
            Sink::Hash(hash) => {
                hash.update(name.as_os_str().as_encoded_bytes());
                hash.update([0, header.entry_type().as_byte()]);
                hash.update(header.mode().unwrap_or(0).to_le_bytes());
                hash.update(header.uid().unwrap_or(0).to_le_bytes());
                hash.update(header.gid().unwrap_or(0).to_le_bytes());
                if let Some(l) = link {
                    hash.update(l.as_os_str().as_encoded_bytes());
                }
                hash.update([0]);
                std::io::copy(data, &mut HashWriter(hash)).map_err(io)?;
            }
            Sink::Tar(builder) => {
                let name = name.strip_prefix("/").unwrap_or(name);
                if name.as_os_str().is_empty() {
                    return Ok(());
                }
                match link {
                    Some(l) => builder.append_link(&mut header, name, l).map_err(io)?,
                    None => builder.append_data(&mut header, name, data).map_err(io)?,
                }
            }
        }
        Ok(())
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    #[test]
    fn wildcards_expand_per_component_in_name_order() {
        let dir = tree_with(&[
            ("a.txt", "a"),
            ("b.txt", "b"),
            ("c.md", "c"),
            ("d/e.txt", "e"),
        ]);
        let m = Matcher::default();
        let tree = Tree {
            root: dir.path(),
            ignore: Some(&m),
            exclude: None,
        };
        let names: Vec<String> = tree
            .sources("*.txt")
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert_eq!(
            tree.sources("?/*.txt").unwrap()[0].path,
            Path::new("d/e.txt")
        );
        assert!(tree.sources("*.rs").is_err());
    }

    #[test]
    fn context_sources_cannot_leave_the_context() {
        let dir = tree_with(&[("a", "a")]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("../../../..", dir.path().join("up")).unwrap();
        let m = Matcher::default();
        let tree = Tree {
            root: dir.path(),
            ignore: Some(&m),
            exclude: None,
        };
        let err = tree.sources("../a").unwrap_err().to_string();
        assert!(err.contains("outside the build context"), "{err}");
        // A symlink to a host path resolves inside the context, where there is no /etc/passwd.
        assert!(tree.sources("link").is_err());
        let up = tree.sources("up").unwrap();
        assert_eq!(up[0].path, Path::new(""), "clamped at the context root");
    }

    #[test]
    fn ignored_files_are_not_sources_and_not_streamed() {
        let dir = tree_with(&[
            ("keep", "k"),
            ("secret.env", "s"),
            ("d/x", "x"),
            ("d/y.log", "y"),
        ]);
        let m = Matcher::new(&["*.env", "**/*.log"]).unwrap();
        let tree = Tree {
            root: dir.path(),
            ignore: Some(&m),
            exclude: None,
        };
        assert!(tree.sources("secret.env").is_err());
        let d = &tree.sources("d").unwrap()[0];
        let mut out = Vec::new();
        {
            let w: &mut dyn Write = &mut out;
            let mut sink = Sink::Tar(tar::Builder::new(w));
            tree.stream(d, Path::new("app"), Rewrite::default(), &mut sink)
                .unwrap();
            if let Sink::Tar(b) = sink {
                b.into_inner().unwrap();
            }
        }
        let mut names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["app/x"]);
    }
}
