//! A streaming tar reader (V7, ustar, GNU and PAX).
//!
//! Ours rather than the `tar` crate's reader because the latter splits PAX records at newlines: a
//! binary xattr value containing a `0x0a` byte (a capability set or an ACL can) makes it drop
//! every later record of that header, `size` and `path` included. That is both a failure to
//! unpack valid layers and a parser differential (the same bytes meaning different files to us and
//! to Docker). This reader parses PAX records by their length prefix, as POSIX specifies, and
//! fails closed on anything it does not understand.

use std::io::{self, Read};

use nix::sys::time::TimeSpec;

use crate::error::ArchiveError;

const BLOCK: usize = 512;
/// Upper bound for the data of a PAX or GNU long-name header, as Go's archive/tar has: these are
/// held in memory, and nothing legitimate comes near it.
const MAX_SPECIAL: u64 = 1 << 20;

/// The type of an entry, as far as unpacking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    Link,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
    /// A type we do not unpack; the byte is the typeflag.
    Unsupported(u8),
}

/// One entry's header, with GNU long names and PAX records applied.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// Entry name, raw bytes.
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Link target (symlinks and hardlinks), raw bytes.
    pub link: Vec<u8>,
    /// Size of the entry's data.
    pub size: u64,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: TimeSpec,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` PAX records, key without the prefix.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Pulls entries out of a tar stream one at a time.
pub(crate) struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Name of the last entry returned, for error messages.
    last: String,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            last: "<start of archive>".to_string(),
            done: false,
        }
    }

    fn truncated(&self) -> ArchiveError {
        ArchiveError::Truncated {
            path: self.last.clone(),
        }
    }

    fn corrupt(&self, reason: impl ToString) -> ArchiveError {
        ArchiveError::corrupt(self.last.clone(), reason)
    }

    /// Maps an error of the underlying stream.
    fn stream_error(&self, e: io::Error) -> ArchiveError {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => self.truncated(),
            // Decompressors report bad data with these kinds.
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other => {
                self.corrupt(e)
            }
            _ => ArchiveError::io("<archive stream>", e),
        }
    }

    /// Reads exactly one block; `Ok(false)` on a clean end of stream before it.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, ArchiveError> {
        let mut have = 0;
        while have < BLOCK {
            match self.inner.read(&mut block[have..]) {
                Ok(0) if have == 0 => return Ok(false),
                Ok(0) => return Err(self.truncated()),
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        }
        Ok(true)
    }

    /// Reads and discards `n` bytes.
    fn skip(&mut self, mut n: u64) -> Result<(), ArchiveError> {
        let mut scratch = [0u8; 8 * BLOCK];
        while n > 0 {
            let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            match self.inner.read(&mut scratch[..want]) {
                Ok(0) => return Err(self.truncated()),
                Ok(k) => n -= k as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        }
        Ok(())
    }

    /// Reads the data of a special entry (PAX, long name) of `size` bytes plus padding.
    fn read_special(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        if size > MAX_SPECIAL {
            return Err(self.corrupt(format!("extension header of {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        let mut have = 0;
        while have < data.len() {
            match self.inner.read(&mut data[have..]) {
                Ok(0) => return Err(self.truncated()),
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Unread data of the previous entry is
    /// skipped.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Header>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;

        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut pending = false; // extension headers seen, their entry still to come
        let mut block = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut block)? {
                if pending {
                    return Err(self.truncated());
                }
                // No end-of-archive marker: accepted, as GNU tar and Go do.
                self.done = true;
                return Ok(None);
            }
            if block.iter().all(|b| *b == 0) {
                if pending {
                    return Err(self.corrupt("extension header not followed by an entry"));
                }
                self.done = true;
                return Ok(None);
            }
            self.verify_checksum(&block)?;
            let typeflag = block[156];
            let size = self.number(&block[124..136], "size")?;
            let size = u64::try_from(size).map_err(|_| self.corrupt("negative size"))?;
            match typeflag {
                b'x' => {
                    let data = self.read_special(size)?;
                    let records = parse_pax(&data).map_err(|reason| self.corrupt(reason))?;
                    // Several PAX headers for one entry: later records win.
                    pax.extend(records);
                    pending = true;
                }
                b'L' => {
                    long_name = Some(trim_nul(&self.read_special(size)?).to_vec());
                    pending = true;
                }
                b'K' => {
                    long_link = Some(trim_nul(&self.read_special(size)?).to_vec());
                    pending = true;
                }
                // Global PAX defaults and GNU volume labels describe no file.
                b'g' | b'V' => {
                    if pending {
                        return Err(self.corrupt("extension header followed by a global one"));
                    }
                    self.skip(size + padding(size))?;
                }
                _ => {
                    let header = self.finish_header(&block, size, long_name, long_link, pax)?;
                    self.last = String::from_utf8_lossy(&header.name).into_owned();
                    // Link, device, directory and fifo headers carry no data whatever their size
                    // field says (as in Go's archive/tar); GNU dumpdirs do, and it is skipped.
                    let data = match header.kind {
                        Kind::Regular | Kind::Unsupported(_) => header.size,
                        Kind::Directory if typeflag == b'D' => header.size,
                        _ => 0,
                    };
                    self.remaining = data;
                    self.padding = padding(data);
                    return Ok(Some(header));
                }
            }
        }
    }

    /// Reads the current entry's data.
    pub(crate) fn data(&mut self) -> EntryData<'_, R> {
        EntryData { tar: self }
    }

    /// Reads the rest of the stream after the end of the archive. Compressed streams verify their
    /// checksums only at their end, and a producer that died after the end marker shows here.
    pub(crate) fn drain(&mut self) -> Result<(), ArchiveError> {
        let mut scratch = [0u8; 8 * BLOCK];
        loop {
            match self.inner.read(&mut scratch) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_error(e)),
            }
        }
    }

    fn verify_checksum(&self, block: &[u8; BLOCK]) -> Result<(), ArchiveError> {
        let stored = self.number(&block[148..156], "checksum")?;
        // The checksum is computed with its own field as spaces. Some old writers summed signed
        // bytes; accept either, as GNU tar and Go do.
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, b) in block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { *b };
            unsigned += i64::from(b);
            signed += i64::from(b as i8);
        }
        if stored == unsigned || stored == signed {
            Ok(())
        } else {
            Err(self.corrupt("archive header checksum mismatch"))
        }
    }

    fn number(&self, field: &[u8], what: &str) -> Result<i64, ArchiveError> {
        parse_number(field).ok_or_else(|| self.corrupt(format!("bad {what} field in header")))
    }

    /// Builds the entry header from its block and the extension headers that preceded it.
    fn finish_header(
        &self,
        block: &[u8; BLOCK],
        size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: Vec<(String, Vec<u8>)>,
    ) -> Result<Header, ArchiveError> {
        let posix = &block[257..263] == b"ustar\0";
        let mut name = match long_name {
            Some(name) => name,
            None => {
                let name = trim_nul(&block[0..100]);
                let prefix = trim_nul(&block[345..500]);
                // Only POSIX ustar has a prefix field; GNU headers keep other data there.
                if posix && !prefix.is_empty() {
                    [prefix, b"/", name].concat()
                } else {
                    name.to_vec()
                }
            }
        };
        let mut link = long_link.unwrap_or_else(|| trim_nul(&block[157..257]).to_vec());
        let typeflag = block[156];
        let kind = match typeflag {
            b'0' | b'\0' | b'7' => Kind::Regular,
            b'1' => Kind::Link,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' | b'D' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => Kind::Unsupported(other),
        };
        let mode = self.number(&block[100..108], "mode")?;
        let mut uid = self.number(&block[108..116], "uid")?;
        let mut gid = self.number(&block[116..124], "gid")?;
        let mut mtime = TimeSpec::new(self.number(&block[136..148], "mtime")?, 0);
        let mut size = size;
        let mut xattrs = Vec::new();
        let mut kind = kind;
        for (key, value) in pax {
            let number = || -> Result<i64, ArchiveError> {
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| self.corrupt(format!("bad PAX {key} record")))
            };
            match key.as_str() {
                "path" => name = value,
                "linkpath" => link = value,
                "size" => {
                    size =
                        u64::try_from(number()?).map_err(|_| self.corrupt("negative PAX size"))?;
                }
                "uid" => uid = number()?,
                "gid" => gid = number()?,
                "mtime" => {
                    mtime = parse_pax_time(&value)
                        .ok_or_else(|| self.corrupt("bad PAX mtime record"))?;
                }
                _ => {
                    if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.retain(|(k, _): &(String, Vec<u8>)| k != attr);
                        xattrs.push((attr.to_string(), value));
                    } else if key.starts_with("GNU.sparse.") {
                        // PAX-format sparse files store a sparse map in place of the data.
                        kind = Kind::Unsupported(b'S');
                    }
                    // Other records (atime, uname, comment, ...) do not matter here.
                }
            }
        }
        let out_of_range = |what: &str| self.corrupt(format!("{what} out of range"));
        let dev = |field: &[u8], what: &str| -> Result<u32, ArchiveError> {
            // GNU tar leaves the device fields blank for non-devices; parse_number reads 0 then.
            u32::try_from(self.number(field, what)?).map_err(|_| out_of_range(what))
        };
        Ok(Header {
            name,
            kind,
            link,
            size,
            mode: u32::try_from(mode & 0o7777).map_err(|_| out_of_range("mode"))?,
            uid: u32::try_from(uid).map_err(|_| out_of_range("uid"))?,
            gid: u32::try_from(gid).map_err(|_| out_of_range("gid"))?,
            mtime,
            dev_major: dev(&block[329..337], "devmajor")?,
            dev_minor: dev(&block[337..345], "devminor")?,
            xattrs,
        })
    }
}

/// The data of the current entry. Ending early is an `UnexpectedEof` error, never a short file.
pub(crate) struct EntryData<'t, R> {
    tar: &'t mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.tar.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.tar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.tar.remaining -= n as u64;
        Ok(n)
    }
}

/// Padding after `size` bytes of data, up to the next block.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-terminated field without its terminator and what follows.
fn trim_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|b| *b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// Parses a numeric header field: octal text (leading and trailing spaces and NULs ignored, an
/// empty field is 0, as in Go's archive/tar) or GNU base-256 (high bit of the first byte set,
/// two's complement).
pub(crate) fn parse_number(field: &[u8]) -> Option<i64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        let negative = first & 0x40 != 0;
        let mut value: i128 = i128::from(first & 0x7f);
        if negative {
            value -= 0x80; // sign-extend the 7 remaining bits
        }
        for b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(i128::from(*b))?;
            if value.abs() > i128::from(i64::MAX) {
                return None;
            }
        }
        return i64::try_from(value).ok();
    }
    let text: &[u8] = {
        let start = field.iter().position(|b| *b != b' ' && *b != 0);
        match start {
            None => return Some(0),
            Some(start) => {
                let rest = &field[start..];
                let end = rest
                    .iter()
                    .position(|b| *b == b' ' || *b == 0)
                    .unwrap_or(rest.len());
                // Anything but padding after the digits is not a number.
                if rest[end..].iter().any(|b| *b != b' ' && *b != 0) {
                    return None;
                }
                &rest[..end]
            }
        }
    };
    let mut value: i64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(value)
}

/// Parses PAX extended header data: records `"<len> <key>=<value>\n"`, where `<len>` is the
/// length of the whole record. Values are binary and may contain newlines.
pub(crate) fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or("PAX record without length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("bad PAX record length")?;
        if len <= space + 1 || len > data.len() {
            return Err("PAX record length out of bounds".into());
        }
        let record = &data[space + 1..len];
        let Some((b'\n', record)) = record.split_last() else {
            return Err("PAX record not terminated by a newline".into());
        };
        let equals = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without '='")?;
        let key =
            std::str::from_utf8(&record[..equals]).map_err(|_| "PAX record key is not UTF-8")?;
        if key.is_empty() {
            return Err("PAX record with an empty key".into());
        }
        records.push((key.to_string(), record[equals + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(records)
}

/// Parses a PAX time value (`seconds[.fraction]`).
pub(crate) fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Sub-second precision is only kept for non-negative times, where its meaning is unambiguous.
    let mut nanos: i64 = 0;
    if secs >= 0 && !frac.is_empty() {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_like_go() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"   644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"        "), Some(0));
        assert_eq!(parse_number(b"0000 8\0\0"), None);
        assert_eq!(parse_number(b"12x\0\0\0\0\0"), None);
        // base-256
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00]), Some(256));
        assert_eq!(
            parse_number(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Some(-1)
        );
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4] = 0x02; // 2 << 56 fits
        assert_eq!(parse_number(&big), Some(2 << 56));
        big[3] = 0x01; // 1 << 64 does not
        assert_eq!(parse_number(&big), None);
    }

    #[test]
    fn pax_values_may_contain_newlines() {
        let data = b"21 SCHILY.xattr.a=\n\n\n12 path=a/b\n";
        let records = parse_pax(data).unwrap();
        assert_eq!(
            records,
            vec![
                ("SCHILY.xattr.a".to_string(), b"\n\n".to_vec()),
                ("path".to_string(), b"a/b".to_vec())
            ]
        );
        assert!(parse_pax(b"5 a=b\n").is_err()); // length too short for the record
        assert!(parse_pax(b"99 a=b\n").is_err());
        assert!(parse_pax(b"6 a=bc").is_err());
        assert!(parse_pax(b"x a=b\n").is_err());
        assert!(parse_pax(b"6 ab\n\n").is_err());
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.000000001"), Some(TimeSpec::new(1, 1)));
        assert_eq!(parse_pax_time(b"-3.5"), Some(TimeSpec::new(-3, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.2x"), None);
    }
}
