//! Docker's json-file log format: one JSON object per line, `{"log":"…\n","stream":"stdout","time":"…"}`,
//! with size-based rotation (`max-size`, `max-file`) into `<id>-json.log.1`, `.2`, ….

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
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

/// Appends container output to a json-file log, rotating by size.
pub struct JsonLogWriter {
    path: PathBuf,
    file: io::BufWriter<File>,
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Partial line per stream, waiting for its newline.
    pending: [Vec<u8>; 2],
    scratch: Vec<u8>,
}

impl JsonLogWriter {
    /// Opens (appending) the log at `path`; `max_size` 0 means never rotate.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file: io::BufWriter::with_capacity(256 * 1024, file),
            size,
            max_size,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
            scratch: Vec::with_capacity(64 * 1024),
        })
    }

    /// Logs a chunk of output: complete lines become records now, a trailing partial line waits.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        let time = berth_store::now_rfc3339();
        while let Some(pos) = memchr(b'\n', data) {
            let (line, rest) = data.split_at(pos + 1);
            if self.pending[idx].is_empty() {
                self.record(stream, line, &time)?;
            } else {
                let mut joined = std::mem::take(&mut self.pending[idx]);
                joined.extend_from_slice(line);
                self.record(stream, &joined, &time)?;
            }
            data = rest;
        }
        self.pending[idx].extend_from_slice(data);
        while self.pending[idx].len() >= MAX_LINE {
            let part: Vec<u8> = self.pending[idx].drain(..MAX_LINE).collect();
            self.record(stream, &part, &time)?;
        }
        Ok(())
    }

    /// Writes out partial lines (at exit) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        let time = berth_store::now_rfc3339();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                self.record(stream, &pending, &time)?;
            }
        }
        self.file.flush()
    }

    /// Flushes buffered records to the file (so `logs` sees them).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn record(&mut self, stream: Stream, line: &[u8], time: &str) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(b"{\"log\":\"");
        escape_json(&mut self.scratch, line);
        self.scratch.extend_from_slice(b"\",\"stream\":\"");
        self.scratch.extend_from_slice(stream.as_str().as_bytes());
        self.scratch.extend_from_slice(b"\",\"time\":\"");
        self.scratch.extend_from_slice(time.as_bytes());
        self.scratch.extend_from_slice(b"\"}\n");
        if self.max_size > 0
            && self.size > 0
            && self.size + self.scratch.len() as u64 > self.max_size
        {
            self.rotate()?;
        }
        self.file.write_all(&self.scratch)?;
        self.size += self.scratch.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.max_files <= 1 {
            // Docker truncates in place when only one file is kept.
            let file = self.file.get_mut();
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.max_files - 1).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated_path(&self.path, 1))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = io::BufWriter::with_capacity(256 * 1024, file);
        self.size = 0;
        Ok(())
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
    let mut files = Vec::new();
    let mut n = 1;
    while rotated_path(path, n).exists() {
        files.push(rotated_path(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    files
}

/// Reads every record currently in the logs, oldest first.
pub fn read_all(path: &Path) -> io::Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    for file in log_files(path) {
        let Ok(f) = File::open(&file) else { continue };
        for line in BufReader::with_capacity(256 * 1024, f).lines() {
            let line = line?;
            if let Ok(record) = serde_json::from_str::<LogRecord>(&line) {
                out.push(record);
            }
        }
    }
    Ok(out)
}

/// Follows the current log file from byte `offset`, across rotation (the file is renamed and a new one
/// appears: the rest of the old one is read first, then the new one from the start).
pub struct LogFollower {
    path: PathBuf,
    reader: BufReader<File>,
    inode: u64,
    partial: String,
}

impl LogFollower {
    /// Starts following at the end of what exists now.
    pub fn at_end(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::End(0))?;
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
            // Rotated? The path now names another file: finish the old one (done above), switch.
            match fs::metadata(&self.path) {
                Ok(meta) if std::os::unix::fs::MetadataExt::ino(&meta) != self.inode => {
                    let file = File::open(&self.path)?;
                    self.inode = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
                    self.reader = BufReader::new(file);
                    self.partial.clear();
                }
                Ok(meta) if meta.len() < self.reader.stream_position()? => {
                    // Truncated in place (max-file=1).
                    self.reader.seek(SeekFrom::Start(0))?;
                    self.partial.clear();
                }
                _ => return Ok(out),
            }
        }
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
