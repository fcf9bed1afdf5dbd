//! Docker's json-file log format: one JSON object per line, `{"log":"…\n","stream":"stdout","time":"…"}`,
//! with size-based rotation (`max-size`, `max-file`) into `<id>-json.log.1`, `.2`, ….

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Longest line Docker stores in one record; longer lines are split (no trailing newline on the parts).
const MAX_LINE: usize = 16 * 1024;

/// Which output stream a log record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Records are gathered in memory and written to the file in pieces of this size (or sooner, when
/// the container goes quiet: [`JsonLogWriter::flush`]).
const WRITE_SIZE: usize = 256 * 1024;

/// The log goes to disk in pieces of this size: once a piece is in the file, the kernel is asked to
/// start writing it out, and at most [`WRITEBACK_PIECES`] pieces are in flight. Left to itself, the
/// kernel keeps a chatty container's log in memory (up to `vm.dirty_ratio`, GiBs), and whoever syncs
/// the filesystem next pays for all of it: every overlay unmount does, that is every container's exit,
/// so one container logging a GiB would make its own and other containers' exits wait seconds. With
/// the window, a container that logs faster than the disk writes waits for it (as it waits for a full
/// pipe), and an exit syncs 32 MiB of log at most.
///
/// A piece on disk also leaves the page cache: a log is written once and seldom read again (`logs`
/// reads it from disk), so a chatty container does not push the host's useful cache out, and its
/// log cycles through the same few MiB of memory instead of taking a fresh page for every 4 KiB. On
/// a VM that hands free memory back to its host, a fresh page costs a fault in the host too: the
/// first GiB logged after a quiet minute went at 56 MB/s that way here, at 660 MB/s with the pages
/// given back.
const WRITEBACK_PIECE: u64 = 8 * 1024 * 1024;

/// How many pieces of the log may be on their way to disk at once.
const WRITEBACK_PIECES: usize = 4;

/// Appends container output to a json-file log, rotating by size.
pub struct JsonLogWriter {
    path: PathBuf,
    file: File,
    /// Records not yet written to the file.
    buf: Vec<u8>,
    /// Length of the log file, with what `buf` holds.
    size: u64,
    /// Pieces of the file on their way to disk, oldest first, and where the next one starts.
    writeback: Writeback,
    max_size: u64,
    max_files: u32,
    /// Partial line per stream, waiting for its newline.
    pending: [Vec<u8>; 2],
    /// The end of every record of the current chunk: `","stream":"…","time":"…"}` and newline.
    suffix: Vec<u8>,
}

impl JsonLogWriter {
    /// Opens (appending) the log at `path`; `max_size` 0 means never rotate.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            buf: Vec::new(),
            size,
            writeback: Writeback::from(size),
            max_size,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
            suffix: Vec::new(),
        })
    }

    /// Logs a chunk of output: complete lines become records now, a trailing partial line waits.
    /// All of a chunk's records carry the time it was read.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        self.set_suffix(stream);
        while let Some(pos) = memchr(b'\n', data) {
            let (line, rest) = data.split_at(pos + 1);
            if self.pending[idx].is_empty() {
                self.record(line)?;
            } else {
                let mut joined = std::mem::take(&mut self.pending[idx]);
                joined.extend_from_slice(line);
                self.record(&joined)?;
                joined.clear();
                self.pending[idx] = joined;
            }
            data = rest;
        }
        self.pending[idx].extend_from_slice(data);
        while self.pending[idx].len() >= MAX_LINE {
            let part: Vec<u8> = self.pending[idx].drain(..MAX_LINE).collect();
            self.record(&part)?;
        }
        if self.buf.len() >= WRITE_SIZE {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes out partial lines (at exit) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                self.set_suffix(stream);
                self.record(&pending)?;
            }
        }
        self.flush()
    }

    /// Writes the records gathered so far to the file (so `logs` sees them).
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_out()
    }

    fn set_suffix(&mut self, stream: Stream) {
        self.suffix.clear();
        self.suffix.extend_from_slice(b"\",\"stream\":\"");
        self.suffix.extend_from_slice(stream.as_str().as_bytes());
        self.suffix.extend_from_slice(b"\",\"time\":\"");
        self.suffix
            .extend_from_slice(berth_store::now_rfc3339().as_bytes());
        self.suffix.extend_from_slice(b"\"}\n");
    }

    /// Appends one record, built in place at the end of the buffer.
    fn record(&mut self, line: &[u8]) -> io::Result<()> {
        let start = self.buf.len();
        self.buf.extend_from_slice(b"{\"log\":\"");
        escape_json(&mut self.buf, line);
        self.buf.extend_from_slice(&self.suffix);
        let len = (self.buf.len() - start) as u64;
        if self.max_size > 0 && self.size > 0 && self.size + len > self.max_size {
            // The record opens the next file: what came before it goes to this one.
            let record = self.buf.split_off(start);
            self.write_out()?;
            self.rotate()?;
            self.buf = record;
        }
        self.size += len;
        Ok(())
    }

    /// Writes the buffer to the file, and has the kernel start writing the file to disk once enough
    /// of it has gathered since last time.
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        self.writeback.advance(&self.file, self.size);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.size = 0;
        self.writeback = Writeback::from(0);
        if self.max_files <= 1 {
            // Docker truncates in place when only one file is kept.
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            return Ok(());
        }
        for n in (1..self.max_files - 1).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }
}

/// The log's way to disk: pieces written out in the background, a bounded number at a time.
struct Writeback {
    /// Where the next piece starts.
    next: u64,
    /// Pieces whose writing the kernel has started and we have not waited for, oldest first.
    in_flight: std::collections::VecDeque<(u64, u64)>,
}

impl Writeback {
    /// Nothing in flight; the next piece starts at `offset`.
    fn from(offset: u64) -> Self {
        Self {
            next: offset,
            in_flight: Default::default(),
        }
    }

    /// The file is `len` long now: starts writing out what makes a whole piece, and waits for the
    /// oldest piece when too many are in flight.
    fn advance(&mut self, file: &File, len: u64) {
        if len < self.next + WRITEBACK_PIECE {
            return;
        }
        let piece = (self.next, len - self.next);
        self.next = len;
        // Start the I/O and return (a failure only means the kernel writes the range later itself).
        sync_range(file, piece, libc::SYNC_FILE_RANGE_WRITE);
        self.in_flight.push_back(piece);
        if self.in_flight.len() > WRITEBACK_PIECES {
            if let Some(oldest) = self.in_flight.pop_front() {
                sync_range(
                    file,
                    oldest,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                drop_cached(file, oldest);
            }
        }
    }
}

/// `sync_file_range(2)` on `(offset, length)` of `file`.
fn sync_range(file: &File, (offset, len): (u64, u64), flags: libc::c_uint) {
    // SAFETY: a plain system call on a descriptor we hold open; it touches no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

/// Drops the pages of `(offset, length)` of `file`, on disk by now, from the page cache.
fn drop_cached(file: &File, (offset, len): (u64, u64)) {
    // SAFETY: a plain system call on a descriptor we hold open; it touches no memory of ours.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// `<log>.N`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

/// Bytes Docker's (Go's) JSON encoder escapes in a string: controls, `"`, `\`, and `<`, `>`, `&`.
const fn escape_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[b'<' as usize] = true;
    table[b'>' as usize] = true;
    table[b'&' as usize] = true;
    table
}
static NEEDS_ESCAPE: [bool; 256] = escape_table();

/// Printable ASCII that JSON-encodes as itself; written without short-circuits so it vectorises.
fn is_plain(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b)
            & (b != b'"')
            & (b != b'\\')
            & (b != b'<')
            & (b != b'>')
            & (b != b'&')
    })
}

/// Escapes bytes as a JSON string body; invalid UTF-8 becomes U+FFFD as Docker's encoder does.
fn escape_json(out: &mut Vec<u8>, bytes: &[u8]) {
    // The common case, a line of printable ASCII: one branch-free (vectorised) check, one copy.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if is_plain(body) {
        out.extend_from_slice(body);
        if body.len() < bytes.len() {
            out.extend_from_slice(b"\\n");
        }
        return;
    }
    // ASCII needs no UTF-8 repair (and checking that is much cheaper than the lossy conversion).
    let text = if bytes.is_ascii() {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        match String::from_utf8_lossy(bytes) {
            std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
        }
    };
    let text = text.as_ref();
    // Copy runs of plain bytes at once; most log lines have nothing to escape but their newline.
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        out.extend_from_slice(&text[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
    }
    out.extend_from_slice(&text[start..]);
}

/// One parsed log record.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LogRecord {
    /// The text, with its newline.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 with nanoseconds.
    pub time: String,
}

impl LogRecord {
    /// The record's time.
    pub fn timestamp(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// The log files of a container, oldest first (rotated ones, then the current).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = chain(path)
        .into_iter()
        .map(|(n, _)| numbered_path(path, n))
        .collect();
    files.reverse();
    files
}

/// `<log>` for 0, `<log>.N` otherwise.
fn numbered_path(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        path.to_path_buf()
    } else {
        rotated_path(path, n)
    }
}

/// The log's names that exist now, newest first, with their inodes: `(0, current)`, `(1, <log>.1)`, ….
/// While the writer rotates, one name in the chain can be briefly missing, so only two missing names
/// in a row end it.
fn chain(path: &Path) -> Vec<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut missing = 0;
    let mut n = 0;
    while missing < 2 {
        match fs::metadata(numbered_path(path, n)) {
            Ok(meta) => {
                out.push((n, meta.ino()));
                missing = 0;
            }
            Err(_) if n > 0 => missing += 1,
            Err(_) => {}
        }
        n += 1;
    }
    out
}

/// Reads every record currently in the logs, oldest first. Rotation meanwhile neither skips nor
/// repeats records (the files are read as a follower reads them).
pub fn read_all(path: &Path) -> io::Result<Vec<LogRecord>> {
    match LogFollower::from_oldest(path) {
        Ok(mut follower) => follower.poll(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// How often a follower looks again when rotation renamed files under it while it was looking.
const RACE_RETRIES: usize = 100;

/// Reads a log from its oldest file on and follows it across rotation: the writer renames the current
/// file to `<log>.1` (and older ones one number up) and starts a new one. The follower holds its file
/// open, so it reads it to the end even after it was renamed or deleted, then moves to the file that
/// came next, wherever the renames have put it by then. Nothing still on disk is skipped and nothing is
/// read twice; only files rotated out (deleted) before the follower got to them are missed.
pub struct LogFollower {
    path: PathBuf,
    reader: BufReader<File>,
    inode: u64,
    partial: String,
}

impl LogFollower {
    /// Starts at the beginning of the oldest log file there is. `NotFound` when there is no log yet.
    pub fn from_oldest(path: &Path) -> io::Result<Self> {
        for _ in 0..RACE_RETRIES {
            let Some(&(n, _)) = chain(path).last() else {
                return Err(io::ErrorKind::NotFound.into());
            };
            match File::open(numbered_path(path, n)) {
                Ok(file) => return Self::on(path, file),
                // Renamed meanwhile: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::NotFound.into())
    }

    fn on(path: &Path, file: File) -> io::Result<Self> {
        let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            inode,
            partial: String::new(),
        })
    }

    /// Returns the records written since the last call (possibly none).
    pub fn poll(&mut self) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        loop {
            self.read_available(&mut out)?;
            if let Some(next) = self.successor()? {
                // Ours is no longer the current file, so the writer is done with it; what it wrote
                // between our last read and the rename is read now, before moving on.
                self.read_available(&mut out)?;
                let inode = std::os::unix::fs::MetadataExt::ino(&next.metadata()?);
                self.reader = BufReader::new(next);
                self.inode = inode;
                self.partial.clear();
                continue;
            }
            match fs::metadata(&self.path) {
                Ok(meta)
                    if std::os::unix::fs::MetadataExt::ino(&meta) == self.inode
                        && meta.len() < self.reader.stream_position()? =>
                {
                    // Truncated in place (max-file=1). (A shorter file of another inode is a new
                    // current file that a rotation made after we looked: the next poll moves to it.)
                    self.reader.seek(SeekFrom::Start(0))?;
                    self.partial.clear();
                }
                _ => return Ok(out),
            }
        }
    }

    /// The file that came after ours, once ours has been rotated; None while ours is current (or the
    /// writer is between renaming it and creating the next).
    fn successor(&self) -> io::Result<Option<File>> {
        for _ in 0..RACE_RETRIES {
            let names = chain(&self.path);
            match names.iter().find(|(_, inode)| *inode == self.inode) {
                Some(&(0, _)) => return Ok(None),
                Some(&(n, _)) => {
                    let next = match File::open(numbered_path(&self.path, n - 1)) {
                        Ok(file) => file,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    // Renames only move files to higher numbers, the older first: if ours is still
                    // at n, the one at n - 1 had not moved when we opened it, so it is the next one.
                    let still = fs::metadata(numbered_path(&self.path, n))
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == self.inode)
                        .unwrap_or(false);
                    if still {
                        return Ok(Some(next));
                    }
                }
                None => {
                    let links =
                        std::os::unix::fs::MetadataExt::nlink(&self.reader.get_ref().metadata()?);
                    if links > 0 {
                        continue; // renamed while we looked: look again
                    }
                    // Ours was rotated out while we were behind: every file left is newer than it,
                    // and the oldest of them comes next.
                    let Some(&(oldest, _)) = names.last() else {
                        return Ok(None);
                    };
                    match File::open(numbered_path(&self.path, oldest)) {
                        Ok(file) => return Ok(Some(file)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(None)
    }

    fn read_available(&mut self, out: &mut Vec<LogRecord>) -> io::Result<()> {
        loop {
            let n = self.reader.read_line(&mut self.partial)?;
            if n == 0 {
                return Ok(());
            }
            if !self.partial.ends_with('\n') {
                return Ok(()); // the writer is mid-record; the rest comes later
            }
            if let Ok(record) = serde_json::from_str::<LogRecord>(&self.partial) {
                out.push(record);
            }
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_docker_format_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = JsonLogWriter::open(&path, 200, 3).unwrap();
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"err \"quoted\"\n").unwrap();
        w.write(Stream::Stdout, b"ld\n").unwrap();
        for i in 0..20 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        w.finish().unwrap();
        let files = log_files(&path);
        assert_eq!(files.len(), 3, "rotated into max-file files");
        let first = fs::read_to_string(&path).unwrap();
        assert!(first.lines().all(|l| l.starts_with("{\"log\":\"")));
        let all = read_all(&path).unwrap();
        assert_eq!(all.last().unwrap().log, "line 19\n");
        let text = fs::read_to_string(rotated_path(&path, 2)).unwrap_or_default();
        let _ = text;
    }

    fn numbers(records: &[LogRecord]) -> Vec<u32> {
        records
            .iter()
            .map(|r| r.log.trim_end().parse().unwrap())
            .collect()
    }

    fn write_lines(w: &mut JsonLogWriter, range: std::ops::Range<u32>) {
        for i in range {
            w.write(Stream::Stdout, format!("{i}\n").as_bytes())
                .unwrap();
        }
        w.flush().unwrap();
    }

    #[test]
    fn follower_crosses_several_rotations_between_polls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        // ~60 bytes a record: about 4 records a file, 3 files kept.
        let mut w = JsonLogWriter::open(&path, 250, 3).unwrap();
        write_lines(&mut w, 0..3);
        let mut f = LogFollower::from_oldest(&path).unwrap();
        let mut seen = numbers(&f.poll().unwrap());
        assert_eq!(seen, vec![0, 1, 2]);
        // Two rotations before the next poll: the middle file must not be skipped, and what was
        // appended to the follower's file just before it was rotated must not be lost.
        write_lines(&mut w, 3..10);
        assert!(rotated_path(&path, 2).exists());
        seen.extend(numbers(&f.poll().unwrap()));
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // Far behind: files rotated out are missed, nothing else, nothing twice.
        write_lines(&mut w, 10..40);
        seen.extend(numbers(&f.poll().unwrap()));
        for pair in seen.windows(2) {
            assert!(pair[0] < pair[1], "{seen:?}");
        }
        let on_disk = numbers(&read_all(&path).unwrap());
        assert!(seen.ends_with(&on_disk), "{seen:?} vs {on_disk:?}");
        assert_eq!(on_disk.last(), Some(&39));
    }

    #[test]
    fn follower_starts_while_the_current_file_is_being_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = JsonLogWriter::open(&path, 0, 3).unwrap();
        write_lines(&mut w, 0..3);
        drop(w);
        // The writer renamed the current file and has not created the next one yet.
        fs::rename(&path, rotated_path(&path, 1)).unwrap();
        let mut f = LogFollower::from_oldest(&path).unwrap();
        assert_eq!(numbers(&f.poll().unwrap()), vec![0, 1, 2]);
        let mut w = JsonLogWriter::open(&path, 0, 3).unwrap();
        write_lines(&mut w, 3..5);
        assert_eq!(numbers(&f.poll().unwrap()), vec![3, 4]);
        assert_eq!(
            numbers(&read_all(&path).unwrap()),
            (0..5).collect::<Vec<_>>()
        );
    }

    /// How many of the first `len` bytes' pages of `path` are in the page cache (`mincore`).
    fn cached_pages(path: &Path, len: usize) -> usize {
        let file = File::open(path).unwrap();
        let pages = len.div_ceil(4096);
        let mut resident = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of `len` bytes of a file at least that long, only
        // passed to mincore (never read) and unmapped before returning; `resident` has one byte
        // per page of it.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
        }
        resident.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn a_long_log_goes_to_disk_piece_by_piece_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut w = JsonLogWriter::open(&path, 0, 1).unwrap();
        // Chunks as a pipe delivers them, lines cut across chunks: about 60 MiB of records, more
        // pieces than may be in flight at once.
        let text: String = (0..600_000).map(|i| format!("line {i:>80}\n")).collect();
        for chunk in text.as_bytes().chunks(65_536) {
            w.write(Stream::Stdout, chunk).unwrap();
        }
        w.finish().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        assert!(
            len > (WRITEBACK_PIECES as u64 + 2) * WRITEBACK_PIECE,
            "{len}"
        );
        // The first piece, long on disk, has left the page cache.
        let cached = cached_pages(&path, WRITEBACK_PIECE as usize);
        assert_eq!(cached, 0, "{cached} pages of the first piece still cached");
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 600_000);
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, r)| r.log == format!("line {i:>80}\n")));
    }

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        escape_json(&mut out, b"a\"b\\c\x01<\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\\"b\\\\c\\u0001\\u003c\\n"
        );
    }
}
