//! The content-addressed blob store: `blobs/sha256/<hex>`, every blob verified on the way in.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, DigestWriter};
use crate::error::{IoContext, StoreError};

/// Blobs (layers, configs, manifests) named by their sha256 digest.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Opens (and creates) the blob directories under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.join("blobs/sha256");
        let tmp = root.join("tmp");
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        fs::create_dir_all(&tmp).ctx("create", &tmp)?;
        Ok(Self { dir, tmp })
    }

    /// The path of a blob (which may not exist).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether the store holds the blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.path(digest);
        File::open(&path).ctx("open blob", path)
    }

    /// Reads a whole (small) blob and checks its digest, so a corrupted file is never trusted.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.path(digest);
        let bytes = fs::read(&path).ctx("read blob", &path)?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Writes bytes as a blob; returns its digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let (digest, _) = self.put(bytes, None)?;
        Ok(digest)
    }

    /// Streams `reader` into the store. With `expected`, a mismatching stream is discarded and is an error.
    /// Returns the digest and size. The blob appears atomically (temp file, fsync, rename).
    pub fn put(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let mut writer = self.writer()?;
        io::copy(&mut reader, &mut writer).ctx("write blob", &writer.tmp_path)?;
        writer.commit(expected)
    }

    /// A writer whose content becomes a blob on [`BlobWriter::commit`]; dropped uncommitted, it leaves nothing.
    pub fn writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp_path = self.tmp.join(format!("blob-{}", crate::random_hex(8)));
        let file = File::create(&tmp_path).ctx("create", &tmp_path)?;
        Ok(BlobWriter {
            inner: Some(DigestWriter::new(io::BufWriter::with_capacity(
                1 << 20,
                file,
            ))),
            tmp_path,
            dir: self.dir.clone(),
        })
    }

    /// Removes a blob; a missing one is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).ctx("remove", path),
            _ => Ok(()),
        }
    }

    /// Every blob digest in the store.
    pub fn list(&self) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).ctx("list", &self.dir)? {
            let entry = entry.ctx("list", &self.dir)?;
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

/// An in-progress blob; see [`BlobStore::writer`].
pub struct BlobWriter {
    inner: Option<DigestWriter<io::BufWriter<File>>>,
    tmp_path: PathBuf,
    dir: PathBuf,
}

impl BlobWriter {
    /// Verifies the digest (if one is expected), syncs and publishes the blob.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let Some(inner) = self.inner.take() else {
            return Err(StoreError::InvalidImage("blob writer used twice".into()));
        };
        let (buf, digest, size) = inner.finish();
        let file = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write blob", &self.tmp_path)?;
        if let Some(expected) = expected {
            if expected != &digest {
                let _ = fs::remove_file(&self.tmp_path);
                return Err(StoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        file.sync_all().ctx("sync blob", &self.tmp_path)?;
        let dest = self.dir.join(digest.hex());
        fs::rename(&self.tmp_path, &dest).ctx("publish blob", &dest)?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("blob already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}
