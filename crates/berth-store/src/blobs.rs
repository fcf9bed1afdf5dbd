//! The content-addressed blob store: `blobs/sha256/<hex>`, every blob verified on the way in.
//!
//! Blobs arrive through a [`BlobWriter`]: into a private file under `tmp/` that vanishes unless committed,
//! or, for a download whose digest is known, into `ingest/<hex>`, which outlives the process so the next
//! pull continues where an interrupted one stopped (containerd's ingests).

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
    ingest: PathBuf,
}

impl BlobStore {
    /// Opens (and creates) the blob directories under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.join("blobs/sha256");
        let tmp = root.join("tmp");
        let ingest = root.join("ingest");
        for d in [&dir, &tmp, &ingest] {
            fs::create_dir_all(d).ctx("create", d)?;
        }
        Ok(Self { dir, tmp, ingest })
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
        let tmp_path = self.tmp.join(crate::work_name("blob"));
        let file = File::create(&tmp_path).ctx("create", &tmp_path)?;
        Ok(BlobWriter {
            inner: Some(DigestWriter::new(io::BufWriter::with_capacity(
                1 << 20,
                file,
            ))),
            tmp_path,
            dir: self.dir.clone(),
            resumable: false,
        })
    }

    /// A writer for the blob `digest` that keeps what it received when dropped uncommitted, and starts
    /// from what an earlier writer for the same digest kept ([`BlobWriter::len`] says how much; the bytes
    /// are hashed again, so the final digest check covers them). `None` while another writer, in this or
    /// another process, holds that blob: the caller then takes a private [`BlobStore::writer`].
    pub fn resumable_writer(&self, digest: &Digest) -> Result<Option<BlobWriter>, StoreError> {
        let path = self.ingest.join(digest.hex());
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open", &path)?;
        // The lock goes with the file: released when the writer closes it, or when its process dies.
        #[allow(deprecated)]
        match nix::fcntl::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EWOULDBLOCK) => return Ok(None),
            Err(e) => return Err(io::Error::from(e)).ctx("lock", &path),
        }
        // Hash what is kept; reading leaves the file offset at its end, where writing continues.
        let mut kept = DigestWriter::new(io::sink());
        io::copy(&mut file, &mut kept).ctx("read", &path)?;
        Ok(Some(BlobWriter {
            inner: Some(kept.replace_inner(io::BufWriter::with_capacity(1 << 20, file))),
            tmp_path: path,
            dir: self.dir.clone(),
            resumable: true,
        }))
    }

    /// Removes what interrupted downloads kept (`ingest/`) and is not being written now; returns the bytes
    /// freed.
    pub fn remove_partial_downloads(&self) -> Result<u64, StoreError> {
        let mut freed = 0;
        for entry in fs::read_dir(&self.ingest).ctx("list", &self.ingest)? {
            let path = entry.ctx("list", &self.ingest)?.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            #[allow(deprecated)]
            let free = nix::fcntl::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                nix::fcntl::FlockArg::LockExclusiveNonblock,
            )
            .is_ok();
            if free {
                freed += file.metadata().map_or(0, |m| m.len());
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(e).ctx("remove", path)
                    }
                    _ => {}
                }
            }
        }
        Ok(freed)
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
    /// Kept when dropped uncommitted (see [`BlobStore::resumable_writer`]).
    resumable: bool,
}

impl BlobWriter {
    /// The bytes written so far, including those a resumable writer started with.
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, DigestWriter::written)
    }

    /// The file the bytes go to until the blob is committed.
    pub fn path(&self) -> &Path {
        &self.tmp_path
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything written so far, to write the blob from its first byte again.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        let Some(inner) = self.inner.take() else {
            return Err(StoreError::InvalidImage("blob writer used twice".into()));
        };
        let (buf, _, _) = inner.finish();
        let mut file = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write blob", &self.tmp_path)?;
        file.set_len(0).ctx("truncate", &self.tmp_path)?;
        io::Seek::rewind(&mut file).ctx("truncate", &self.tmp_path)?;
        self.inner = Some(DigestWriter::new(io::BufWriter::with_capacity(
            1 << 20,
            file,
        )));
        Ok(())
    }

    /// Drops the blob, and for a resumable writer what it kept too: its bytes are known to be wrong.
    pub fn discard(mut self) {
        self.resumable = false;
    }

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
        if let Some(inner) = self.inner.take() {
            if self.resumable {
                // Keep what arrived, for the next pull (the buffer is flushed as the writer drops).
                drop(inner);
            } else {
                let _ = fs::remove_file(&self.tmp_path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumable_writer_continues_what_an_earlier_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let content = b"0123456789abcdef".repeat(1000);
        let digest = Digest::of(&content);

        let mut first = blobs.resumable_writer(&digest).unwrap().unwrap();
        assert!(first.is_empty());
        first.write_all(&content[..5000]).unwrap();
        // Held: a second writer for the same blob is refused, not interleaved.
        assert!(blobs.resumable_writer(&digest).unwrap().is_none());
        drop(first);

        let mut second = blobs.resumable_writer(&digest).unwrap().unwrap();
        assert_eq!(second.len(), 5000);
        second.write_all(&content[5000..]).unwrap();
        assert_eq!(second.commit(Some(&digest)).unwrap().0, digest);
        assert_eq!(blobs.read(&digest).unwrap(), content);
        assert!(fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .next()
            .is_none());

        // Restarted from zero, and discarded: nothing kept.
        let other = Digest::of(b"other");
        let mut w = blobs.resumable_writer(&other).unwrap().unwrap();
        w.write_all(b"garbage").unwrap();
        w.restart().unwrap();
        w.write_all(b"oth").unwrap();
        drop(w);
        let w = blobs.resumable_writer(&other).unwrap().unwrap();
        assert_eq!(w.len(), 3);
        w.discard();
        assert_eq!(blobs.resumable_writer(&other).unwrap().unwrap().len(), 0);
        assert_eq!(blobs.remove_partial_downloads().unwrap(), 0);
        assert!(fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .next()
            .is_none());
    }
}
