//! A bounded, streaming tar reader for image layers.
//!
//! We do not use the `tar` crate: it reads GNU long names/links and PAX
//! extension headers fully into memory with no size limit, and an image layer
//! is untrusted input where a small gzip stream can inflate to gigabytes.
//! Every piece of metadata this reader keeps in memory is bounded:
//!
//! * a GNU long name or long link (`L`, `K`) is at most [`MAX_GNU_LONG_NAME`];
//! * the PAX extended headers (`x`) in front of one entry are at most
//!   [`MAX_PAX_HEADER`] in total; a global header (`g`) at most the same, and
//!   it is read and ignored;
//! * a path or link target is at most [`MAX_PATH_LEN`] bytes.
//!
//! Sizes are checked against the limits *before* anything is read.
//!
//! Formats: v7, ustar (with the 155-byte prefix; star's 131-byte prefix),
//! GNU (long names, long links, base-256 numbers) and PAX (path, linkpath,
//! size, uid, gid, uname, gname, mtime with fractional seconds,
//! `SCHILY.xattr.*`, `LIBARCHIVE.xattr.*`). Sparse files and multi-volume
//! archives are refused as unsupported.
//!
//! The reader works in 512-byte blocks for headers; entry data is read
//! straight from the underlying reader into the caller's buffer, bounded by
//! the entry size. Wrap the underlying reader in a `BufReader` if it is not
//! already buffered. Whatever data the caller did not read (and the padding up
//! to the next block) is skipped before the next header.
//!
//! The archive ends at the first all-zero block: the reader stops right after
//! it and never reads further (the caller drains the rest of the stream). As
//! GNU tar, libarchive and Go's archive/tar do, a stream that ends cleanly on
//! a block boundary where a header would start also ends the archive (some
//! writers omit the end-of-archive blocks). A stream that ends inside a
//! header, inside entry data or its padding, or between an extension header
//! and its entry is an error.

use std::collections::HashMap;
use std::io::{self, Read};

/// Size of a tar block (headers and the data padding unit).
pub const BLOCK_SIZE: usize = 512;
/// Largest GNU long name or long link (`L`/`K` entry data) we read.
pub const MAX_GNU_LONG_NAME: u64 = 64 * 1024;
/// Largest total size of the PAX extended headers in front of one entry, and
/// of one PAX global header.
pub const MAX_PAX_HEADER: u64 = 1024 * 1024;
/// Longest path or link target (bytes), the Linux `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;

const BLOCK_U64: u64 = BLOCK_SIZE as u64;

/// Why a tar stream could not be read. Offsets are byte offsets in the
/// (decompressed) stream, to find the culprit with `dd`/`xxd`.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The underlying reader failed.
    #[error("read error: {0}")]
    Io(#[source] io::Error),
    /// The stream ended in the middle of something.
    #[error("archive is truncated: stream ends {what} (at byte offset {offset})")]
    Truncated { what: &'static str, offset: u64 },
    /// A header's checksum does not match its contents.
    #[error(
        "header at byte offset {offset}: checksum mismatch (header says {stored}, computed {computed})"
    )]
    Checksum {
        offset: u64,
        stored: u64,
        computed: u64,
    },
    /// A numeric header field or PAX value that does not parse or is out of range.
    #[error("header at byte offset {offset}: invalid {field} field")]
    BadNumber { offset: u64, field: &'static str },
    /// Something over one of the limits; refused before it was read.
    #[error("header at byte offset {offset}: {what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        offset: u64,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// A tar feature this reader refuses (sparse files, multi-volume archives).
    #[error("header at byte offset {offset}: unsupported: {what}")]
    Unsupported { offset: u64, what: &'static str },
    /// A malformed PAX record or an invalid value in one.
    #[error("header at byte offset {offset}: malformed PAX header: {reason}")]
    BadPax { offset: u64, reason: String },
    /// An extension header not followed by the entry it belongs to.
    #[error("header at byte offset {offset}: {reason}")]
    Malformed { offset: u64, reason: &'static str },
    /// `next_entry` was called again after an error.
    #[error("the archive reader already failed on an earlier error")]
    Failed,
}

impl From<TarError> for io::Error {
    fn from(e: TarError) -> Self {
        match e {
            TarError::Io(e) => e,
            e @ TarError::Truncated { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// The kind of an entry, from its typeflag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `'0'`, `'\0'` (without a trailing `/` in the path) and `'7'` (contiguous).
    Regular,
    /// `'1'`.
    Hardlink,
    /// `'2'`.
    Symlink,
    /// `'3'`.
    Char,
    /// `'4'`.
    Block,
    /// `'5'`, and a v7-style `'\0'` entry whose path ends in `/`.
    Directory,
    /// `'6'`.
    Fifo,
    /// Anything else (for example GNU `'V'` volume labels, `'D'` dump dirs).
    Other(u8),
}

impl EntryKind {
    /// Kinds that carry no data in the archive whatever their size field says
    /// (as Go's archive/tar, which writes most image layers, reads them).
    pub fn is_header_only(self) -> bool {
        matches!(
            self,
            EntryKind::Hardlink
                | EntryKind::Symlink
                | EntryKind::Char
                | EntryKind::Block
                | EntryKind::Directory
                | EntryKind::Fifo
        )
    }

    fn from_typeflag(flag: u8) -> Self {
        match flag {
            b'0' | b'\0' | b'7' => EntryKind::Regular,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' => EntryKind::Directory,
            b'6' => EntryKind::Fifo,
            other => EntryKind::Other(other),
        }
    }
}

/// A modification time: seconds since the epoch (may be negative) and
/// nanoseconds (always `0..1_000_000_000`, counted forward from `secs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

/// The metadata of one entry, with GNU and PAX extensions applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// Path as in the archive (no normalisation), at most [`MAX_PATH_LEN`]
    /// bytes, no NUL.
    pub path: Vec<u8>,
    /// Link target (hardlinks and symlinks), at most [`MAX_PATH_LEN`] bytes.
    pub link: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub mtime: Mtime,
    /// Number of data bytes that follow in the archive (0 for the kinds
    /// where [`EntryKind::is_header_only`]).
    pub size: u64,
    /// Device numbers (only read for character and block devices).
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes from PAX records, each name once (the last record wins).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Byte offset of this entry's own header block in the stream.
    pub header_offset: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Done,
    Failed,
}

/// A streaming tar reader. See the module documentation.
pub struct TarReader<R: Read> {
    inner: R,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding bytes after the current entry's data.
    padding: u64,
    state: State,
    block: [u8; BLOCK_SIZE],
}

/// One entry: its header, and its data through [`Read`] or [`Entry::read_data`].
pub struct Entry<'a, R: Read> {
    header: EntryHeader,
    data: EntryData<'a, R>,
}

/// The data of one entry, bounded by its size. Reads go straight to the
/// underlying reader.
pub struct EntryData<'a, R: Read> {
    tar: &'a mut TarReader<R>,
}

/// PAX values that override the header for the next entry.
#[derive(Default)]
struct PaxOverrides {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    uname: Option<Vec<u8>>,
    gname: Option<Vec<u8>>,
    mtime: Option<Mtime>,
    xattrs: Vec<(String, Vec<u8>)>,
    xattr_index: HashMap<String, usize>,
}

impl PaxOverrides {
    fn add_xattr(&mut self, name: String, value: Vec<u8>) {
        if let Some(&i) = self.xattr_index.get(&name) {
            self.xattrs[i].1 = value;
        } else {
            self.xattr_index.insert(name.clone(), self.xattrs.len());
            self.xattrs.push((name, value));
        }
    }
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            pos: 0,
            remaining: 0,
            padding: 0,
            state: State::Active,
            block: [0; BLOCK_SIZE],
        }
    }

    /// Bytes consumed from the underlying reader so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next entry, or `None` at the end of the archive. Data the caller
    /// left unread in the previous entry is skipped first.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>, TarError> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(TarError::Failed),
            State::Active => {}
        }
        match self.read_next_header() {
            Ok(Some(header)) => Ok(Some(Entry {
                header,
                data: EntryData { tar: self },
            })),
            Ok(None) => {
                self.state = State::Done;
                Ok(None)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn read_next_header(&mut self) -> Result<Option<EntryHeader>, TarError> {
        let rest = self.remaining.saturating_add(self.padding);
        self.remaining = 0;
        self.padding = 0;
        self.skip(rest, "inside entry data")?;

        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<PaxOverrides> = None;
        let mut pax_bytes: u64 = 0;
        loop {
            let offset = self.pos;
            let pending = long_name.is_some() || long_link.is_some() || pax.is_some();
            if !self.read_block()? {
                if pending {
                    return Err(TarError::Truncated {
                        what: "after an extension header, before its entry",
                        offset,
                    });
                }
                return Ok(None);
            }
            if self.block.iter().all(|&b| b == 0) {
                if pending {
                    return Err(TarError::Malformed {
                        offset,
                        reason: "end-of-archive marker right after an extension header",
                    });
                }
                return Ok(None);
            }
            verify_checksum(&self.block, offset)?;
            let typeflag = self.block[156];
            let size = parse_unsigned(&self.block[124..136], offset, "size")?;
            match typeflag {
                b'L' | b'K' => {
                    let what = if typeflag == b'L' {
                        "GNU long name"
                    } else {
                        "GNU long link"
                    };
                    if size > MAX_GNU_LONG_NAME {
                        return Err(TarError::TooLarge {
                            offset,
                            what,
                            size,
                            limit: MAX_GNU_LONG_NAME,
                        });
                    }
                    let mut data = self.read_meta(size)?;
                    if let Some(nul) = data.iter().position(|&b| b == 0) {
                        data.truncate(nul);
                    }
                    if typeflag == b'L' {
                        long_name = Some(data);
                    } else {
                        long_link = Some(data);
                    }
                }
                b'x' => {
                    pax_bytes = pax_bytes.saturating_add(size);
                    if pax_bytes > MAX_PAX_HEADER {
                        return Err(TarError::TooLarge {
                            offset,
                            what: "PAX extended header",
                            size: pax_bytes,
                            limit: MAX_PAX_HEADER,
                        });
                    }
                    let data = self.read_meta(size)?;
                    parse_pax(&data, pax.get_or_insert_with(Default::default), offset)?;
                }
                b'g' => {
                    if size > MAX_PAX_HEADER {
                        return Err(TarError::TooLarge {
                            offset,
                            what: "PAX global header",
                            size,
                            limit: MAX_PAX_HEADER,
                        });
                    }
                    self.skip(size + padding_for(size), "inside a PAX global header")?;
                }
                b'S' => {
                    return Err(TarError::Unsupported {
                        offset,
                        what: "GNU sparse file",
                    });
                }
                b'M' => {
                    return Err(TarError::Unsupported {
                        offset,
                        what: "GNU multi-volume continuation",
                    });
                }
                _ => {
                    let header = self.build_header(
                        offset,
                        size,
                        long_name,
                        long_link,
                        pax.unwrap_or_default(),
                    )?;
                    self.remaining = header.size;
                    self.padding = padding_for(header.size);
                    return Ok(Some(header));
                }
            }
        }
    }

    fn build_header(
        &self,
        offset: u64,
        header_size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: PaxOverrides,
    ) -> Result<EntryHeader, TarError> {
        let b = &self.block;
        let format = Format::of(b);
        let typeflag = b[156];

        let path = match (pax.path, long_name) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => {
                let name = cstr(&b[0..100]);
                let prefix = match format {
                    Format::Ustar => cstr(&b[345..500]),
                    Format::Star => cstr(&b[345..476]),
                    Format::Gnu | Format::V7 => &[],
                };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
                    p.extend_from_slice(prefix);
                    p.push(b'/');
                    p.extend_from_slice(name);
                    p
                }
            }
        };
        if path.len() > MAX_PATH_LEN {
            return Err(TarError::TooLarge {
                offset,
                what: "path",
                size: path.len() as u64,
                limit: MAX_PATH_LEN as u64,
            });
        }
        let link = match (pax.link, long_link) {
            (Some(l), _) => l,
            (None, Some(l)) => l,
            (None, None) => cstr(&b[157..257]).to_vec(),
        };
        if link.len() > MAX_PATH_LEN {
            return Err(TarError::TooLarge {
                offset,
                what: "link target",
                size: link.len() as u64,
                limit: MAX_PATH_LEN as u64,
            });
        }

        let kind = match EntryKind::from_typeflag(typeflag) {
            EntryKind::Regular if typeflag == b'\0' && path.ends_with(b"/") => EntryKind::Directory,
            k => k,
        };
        let mode = (parse_unsigned(&b[100..108], offset, "mode")? & 0o7777) as u32;
        let uid = match pax.uid {
            Some(v) => v,
            None => parse_unsigned(&b[108..116], offset, "uid")?,
        };
        let gid = match pax.gid {
            Some(v) => v,
            None => parse_unsigned(&b[116..124], offset, "gid")?,
        };
        let mtime = match pax.mtime {
            Some(m) => m,
            None => Mtime {
                secs: parse_numeric(&b[136..148]).ok_or(TarError::BadNumber {
                    offset,
                    field: "mtime",
                })?,
                nanos: 0,
            },
        };
        let size = if kind.is_header_only() {
            0
        } else {
            pax.size.unwrap_or(header_size)
        };
        let has_ustar_fields = matches!(format, Format::Ustar | Format::Star | Format::Gnu);
        let (uname, gname) = if has_ustar_fields {
            (
                pax.uname.unwrap_or_else(|| cstr(&b[265..297]).to_vec()),
                pax.gname.unwrap_or_else(|| cstr(&b[297..329]).to_vec()),
            )
        } else {
            (pax.uname.unwrap_or_default(), pax.gname.unwrap_or_default())
        };
        let (dev_major, dev_minor) =
            if has_ustar_fields && matches!(kind, EntryKind::Char | EntryKind::Block) {
                (
                    parse_u32(&b[329..337], offset, "devmajor")?,
                    parse_u32(&b[337..345], offset, "devminor")?,
                )
            } else {
                (0, 0)
            };
        Ok(EntryHeader {
            path,
            link,
            kind,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime,
            size,
            dev_major,
            dev_minor,
            xattrs: pax.xattrs,
            header_offset: offset,
        })
    }

    /// Reads one block into `self.block`. `Ok(false)` on a clean end of
    /// stream before its first byte.
    fn read_block(&mut self) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK_SIZE {
            match self.inner.read(&mut self.block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(TarError::Truncated {
                        what: "inside a header",
                        offset: self.pos + filled as u64,
                    });
                }
                Ok(n) => filled += n.min(BLOCK_SIZE - filled),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.pos += BLOCK_U64;
        Ok(true)
    }

    /// Reads the `size` data bytes of an extension header (already checked
    /// against its limit) and skips their padding.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let len = usize::try_from(size).map_err(|_| TarError::Malformed {
            offset: self.pos,
            reason: "extension header too large for this platform",
        })?;
        let mut data = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.inner.read(&mut data[filled..]) {
                Ok(0) => {
                    return Err(TarError::Truncated {
                        what: "inside an extension header's data",
                        offset: self.pos,
                    });
                }
                Ok(n) => {
                    let n = n.min(len - filled);
                    filled += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.skip(padding_for(size), "inside an extension header's padding")?;
        Ok(data)
    }

    /// Reads and discards `n` bytes; the stream ending first is an error.
    fn skip(&mut self, mut n: u64, what: &'static str) -> Result<(), TarError> {
        if n == 0 {
            return Ok(());
        }
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let want = n.min(scratch.len() as u64) as usize;
            match self.inner.read(&mut scratch[..want]) {
                Ok(0) => {
                    return Err(TarError::Truncated {
                        what,
                        offset: self.pos,
                    });
                }
                Ok(got) => {
                    let got = got.min(want);
                    n -= got as u64;
                    self.pos += got as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        Ok(())
    }
}

impl<'a, R: Read> Entry<'a, R> {
    pub fn header(&self) -> &EntryHeader {
        &self.header
    }

    pub fn path(&self) -> &[u8] {
        &self.header.path
    }

    pub fn kind(&self) -> EntryKind {
        self.header.kind
    }

    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// Splits the entry into its header and its data reader.
    pub fn into_parts(self) -> (EntryHeader, EntryData<'a, R>) {
        (self.header, self.data)
    }

    /// See [`EntryData::read_data`].
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        self.data.read_data(buf)
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

impl<R: Read> EntryData<'_, R> {
    /// Data bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.tar.remaining
    }

    /// Reads up to `buf.len()` bytes of data straight from the underlying
    /// reader. `Ok(0)` only at the end of the entry's data; the stream ending
    /// before is [`TarError::Truncated`].
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let tar = &mut *self.tar;
        if tar.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = tar.remaining.min(buf.len() as u64) as usize;
        loop {
            match tar.inner.read(&mut buf[..max]) {
                Ok(0) => {
                    tar.state = State::Failed;
                    return Err(TarError::Truncated {
                        what: "inside entry data",
                        offset: tar.pos,
                    });
                }
                Ok(n) => {
                    let n = n.min(max);
                    tar.remaining -= n as u64;
                    tar.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tar.state = State::Failed;
                    return Err(TarError::Io(e));
                }
            }
        }
    }
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_data(buf).map_err(io::Error::from)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

impl Format {
    fn of(b: &[u8; BLOCK_SIZE]) -> Self {
        match &b[257..263] {
            b"ustar\0" if &b[508..512] == b"tar\0" => Format::Star,
            b"ustar\0" => Format::Ustar,
            b"ustar " => Format::Gnu,
            _ => Format::V7,
        }
    }
}

fn padding_for(size: u64) -> u64 {
    (BLOCK_U64 - size % BLOCK_U64) % BLOCK_U64
}

/// The bytes of a NUL-terminated header field.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

fn verify_checksum(b: &[u8; BLOCK_SIZE], offset: u64) -> Result<(), TarError> {
    let stored = parse_octal(&b[148..156]).ok_or(TarError::BadNumber {
        offset,
        field: "checksum",
    })?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &byte) in b.iter().enumerate() {
        let byte = if (148..156).contains(&i) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(byte as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(TarError::Checksum {
            offset,
            stored,
            computed: unsigned,
        })
    }
}

/// An octal field: leading and trailing spaces and NULs trimmed, cut at the
/// first NUL; empty is 0.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let Some(start) = field.iter().position(|&b| b != b' ' && b != 0) else {
        return Some(0);
    };
    let digits = cstr(&field[start..]);
    let end = digits.iter().rposition(|&b| b != b' ').map_or(0, |e| e + 1);
    let digits = &digits[..end];
    let mut value: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// A numeric field: octal, or GNU base-256 (first byte has bit 7 set; bit 6
/// is the sign of a two's-complement number).
fn parse_numeric(field: &[u8]) -> Option<i64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, &c) in field.iter().enumerate() {
                let mut c = c ^ inv;
                if i == 0 {
                    c &= 0x7f;
                }
                if x >> 56 != 0 {
                    return None;
                }
                x = (x << 8) | u64::from(c);
            }
            if x >> 63 != 0 {
                return None;
            }
            let x = x as i64;
            Some(if inv == 0xff { !x } else { x })
        }
        _ => parse_octal(field).and_then(|v| i64::try_from(v).ok()),
    }
}

fn parse_unsigned(field: &[u8], offset: u64, name: &'static str) -> Result<u64, TarError> {
    parse_numeric(field)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or(TarError::BadNumber {
            offset,
            field: name,
        })
}

fn parse_u32(field: &[u8], offset: u64, name: &'static str) -> Result<u32, TarError> {
    u32::try_from(parse_unsigned(field, offset, name)?).map_err(|_| TarError::BadNumber {
        offset,
        field: name,
    })
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &d in s {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// A PAX time: `[+-]secs[.fraction]`, as Go's archive/tar reads it (digits
/// past nanoseconds are dropped).
fn parse_pax_time(s: &[u8]) -> Option<Mtime> {
    let (whole, frac) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => (&s[..dot], &s[dot + 1..]),
        None => (s, &[][..]),
    };
    let (negative, digits) = match whole.first() {
        Some(b'-') => (true, &whole[1..]),
        Some(b'+') => (false, &whole[1..]),
        _ => (false, whole),
    };
    let secs = i64::try_from(parse_decimal(digits)?).ok()?;
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let d = match frac.get(i) {
            Some(&d) => d,
            None => b'0',
        };
        if !d.is_ascii_digit() {
            return None;
        }
        nanos = nanos * 10 + u32::from(d - b'0');
    }
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !negative {
        return Some(Mtime { secs, nanos });
    }
    if nanos == 0 {
        Some(Mtime { secs: -secs, nanos })
    } else {
        Some(Mtime {
            secs: (-secs).checked_sub(1)?,
            nanos: 1_000_000_000 - nanos,
        })
    }
}

fn pax_err(offset: u64, reason: impl Into<String>) -> TarError {
    TarError::BadPax {
        offset,
        reason: reason.into(),
    }
}

fn pax_number(value: &[u8], key: &str, offset: u64) -> Result<Option<u64>, TarError> {
    if value.is_empty() {
        return Ok(None);
    }
    parse_decimal(value)
        .map(Some)
        .ok_or_else(|| pax_err(offset, format!("{key} is not a number")))
}

fn pax_path(value: &[u8], key: &str, offset: u64) -> Result<Option<Vec<u8>>, TarError> {
    if value.contains(&0) {
        return Err(pax_err(offset, format!("{key} contains a NUL byte")));
    }
    if value.len() > MAX_PATH_LEN {
        return Err(TarError::TooLarge {
            offset,
            what: if key == "path" { "path" } else { "link target" },
            size: value.len() as u64,
            limit: MAX_PATH_LEN as u64,
        });
    }
    Ok((!value.is_empty()).then(|| value.to_vec()))
}

/// Parses the records `"<len> <key>=<value>\n"` of one PAX extended header.
fn parse_pax(mut data: &[u8], ov: &mut PaxOverrides, offset: u64) -> Result<(), TarError> {
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break; // some writers pad the record block with NULs
        }
        let space = data
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or_else(|| pax_err(offset, "record without a length"))?;
        let len = parse_decimal(&data[..space])
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| pax_err(offset, "record length is not a number"))?;
        if len <= space + 1 || len > data.len() {
            return Err(pax_err(offset, format!("record length {len} out of range")));
        }
        let record = &data[space + 1..len];
        data = &data[len..];
        let Some((b'\n', kv)) = record.split_last() else {
            return Err(pax_err(offset, "record does not end with a newline"));
        };
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| pax_err(offset, "record without '='"))?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() || key.contains(&0) {
            return Err(pax_err(offset, "empty key or key with a NUL byte"));
        }
        apply_pax_record(key, value, ov, offset)?;
    }
    Ok(())
}

fn apply_pax_record(
    key: &[u8],
    value: &[u8],
    ov: &mut PaxOverrides,
    offset: u64,
) -> Result<(), TarError> {
    match key {
        b"path" => ov.path = pax_path(value, "path", offset)?,
        b"linkpath" => ov.link = pax_path(value, "linkpath", offset)?,
        b"size" => {
            ov.size = pax_number(value, "size", offset)?;
            if ov.size.is_some_and(|v| v > i64::MAX as u64) {
                return Err(pax_err(offset, "size is out of range"));
            }
        }
        b"uid" => ov.uid = pax_number(value, "uid", offset)?,
        b"gid" => ov.gid = pax_number(value, "gid", offset)?,
        b"uname" => ov.uname = (!value.is_empty()).then(|| value.to_vec()),
        b"gname" => ov.gname = (!value.is_empty()).then(|| value.to_vec()),
        b"mtime" => {
            ov.mtime = if value.is_empty() {
                None
            } else {
                Some(parse_pax_time(value).ok_or_else(|| pax_err(offset, "mtime is not a time"))?)
            }
        }
        _ => {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let name = xattr_name(name.to_vec(), offset)?;
                ov.add_xattr(name, value.to_vec());
            } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                let name = url_decode(name)
                    .ok_or_else(|| pax_err(offset, "LIBARCHIVE.xattr name is badly URL-encoded"))?;
                let name = xattr_name(name, offset)?;
                let value = base64_decode(value)
                    .ok_or_else(|| pax_err(offset, "LIBARCHIVE.xattr value is not base64"))?;
                ov.add_xattr(name, value);
            } else if key.starts_with(b"GNU.sparse.") {
                return Err(TarError::Unsupported {
                    offset,
                    what: "GNU sparse file (PAX)",
                });
            }
            // Anything else (atime, ctime, comment, charset, ...) is ignored.
        }
    }
    Ok(())
}

fn xattr_name(name: Vec<u8>, offset: u64) -> Result<String, TarError> {
    if name.is_empty() || name.contains(&0) {
        return Err(pax_err(offset, "empty xattr name or one with a NUL byte"));
    }
    String::from_utf8(name).map_err(|_| pax_err(offset, "xattr name is not UTF-8"))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoding, as libarchive encodes xattr names.
fn url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = hex_val(*s.get(i + 1)?)?;
            let lo = hex_val(*s.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64, padding optional, line breaks ignored (libarchive writes
/// xattr values unpadded).
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padded = false;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padded = true;
                continue;
            }
            b'\r' | b'\n' => continue,
            _ => return None,
        };
        if padded {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 6 leftover bits means a lone trailing character: not valid base64.
    (bits < 6).then_some(out)
}

/// Helpers shared with the unpack tests: a raw tar writer that can produce
/// headers the `tar` crate would refuse to write.
#[cfg(test)]
pub(crate) mod testutil {
    use super::BLOCK_SIZE;

    #[derive(Clone)]
    pub(crate) struct RawHeader {
        pub block: [u8; BLOCK_SIZE],
        /// Keep the checksum field as set (to write a bad one).
        pub raw_checksum: bool,
    }

    fn put(block: &mut [u8], start: usize, len: usize, value: &[u8]) {
        let field = &mut block[start..start + len];
        field.fill(0);
        let n = value.len().min(len);
        field[..n].copy_from_slice(&value[..n]);
    }

    fn octal(len: usize, v: u64) -> Vec<u8> {
        format!("{v:0width$o}\0", width = len - 1).into_bytes()
    }

    impl RawHeader {
        /// A ustar header (magic "ustar\0", version "00"), mode 0644, ids 0.
        pub fn ustar(typeflag: u8, path: &[u8]) -> Self {
            let mut h = RawHeader {
                block: [0; BLOCK_SIZE],
                raw_checksum: false,
            };
            put(&mut h.block, 0, 100, path);
            h.block[156] = typeflag;
            put(&mut h.block, 257, 6, b"ustar\0");
            put(&mut h.block, 263, 2, b"00");
            h.mode(0o644).uid(0).gid(0).size(0).mtime(0);
            h
        }

        /// A GNU header (magic "ustar  \0").
        pub fn gnu(typeflag: u8, path: &[u8]) -> Self {
            let mut h = Self::ustar(typeflag, path);
            put(&mut h.block, 257, 8, b"ustar  \0");
            h
        }

        /// A v7 header (no magic).
        pub fn v7(typeflag: u8, path: &[u8]) -> Self {
            let mut h = Self::ustar(typeflag, path);
            put(&mut h.block, 257, 8, b"");
            h
        }

        pub fn field(&mut self, start: usize, len: usize, value: &[u8]) -> &mut Self {
            put(&mut self.block, start, len, value);
            self
        }
        pub fn prefix(&mut self, p: &[u8]) -> &mut Self {
            self.field(345, 155, p)
        }
        pub fn link(&mut self, l: &[u8]) -> &mut Self {
            self.field(157, 100, l)
        }
        pub fn mode(&mut self, m: u32) -> &mut Self {
            self.field(100, 8, &octal(8, m.into()))
        }
        pub fn uid(&mut self, v: u64) -> &mut Self {
            self.field(108, 8, &octal(8, v))
        }
        pub fn gid(&mut self, v: u64) -> &mut Self {
            self.field(116, 8, &octal(8, v))
        }
        pub fn size(&mut self, v: u64) -> &mut Self {
            self.field(124, 12, &octal(12, v))
        }
        pub fn mtime(&mut self, v: u64) -> &mut Self {
            self.field(136, 12, &octal(12, v))
        }
        pub fn names(&mut self, uname: &[u8], gname: &[u8]) -> &mut Self {
            self.field(265, 32, uname).field(297, 32, gname)
        }
        pub fn dev(&mut self, major: u64, minor: u64) -> &mut Self {
            self.field(329, 8, &octal(8, major))
                .field(337, 8, &octal(8, minor))
        }
        /// GNU base-256 encoding of a signed value into a field.
        pub fn base256(&mut self, start: usize, len: usize, v: i64) -> &mut Self {
            let bytes = v.to_be_bytes();
            let fill = if v < 0 { 0xff } else { 0 };
            let field = &mut self.block[start..start + len];
            field.fill(fill);
            let n = len.min(8);
            field[len - n..].copy_from_slice(&bytes[8 - n..]);
            field[0] = if v < 0 { 0xff } else { 0x80 };
            self
        }
        pub fn checksum(&mut self, v: u64) -> &mut Self {
            self.raw_checksum = true;
            self.field(148, 8, &octal(8, v))
        }

        pub fn finish(&self) -> [u8; BLOCK_SIZE] {
            let mut b = self.block;
            if !self.raw_checksum {
                b[148..156].fill(b' ');
                let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
                let c = format!("{sum:06o}\0 ");
                b[148..156].copy_from_slice(c.as_bytes());
            }
            b
        }
    }

    /// Builds a tar stream from raw pieces.
    #[derive(Default)]
    pub(crate) struct TarBuilder {
        pub buf: Vec<u8>,
    }

    impl TarBuilder {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn header(&mut self, h: &RawHeader) -> &mut Self {
            self.buf.extend_from_slice(&h.finish());
            self
        }

        /// Data plus padding to the next block.
        pub fn data(&mut self, d: &[u8]) -> &mut Self {
            self.buf.extend_from_slice(d);
            let pad = (BLOCK_SIZE - d.len() % BLOCK_SIZE) % BLOCK_SIZE;
            self.buf.extend(std::iter::repeat_n(0u8, pad));
            self
        }

        pub fn entry(&mut self, h: &RawHeader, d: &[u8]) -> &mut Self {
            let mut h = h.clone();
            if !d.is_empty() {
                h.size(d.len() as u64);
            }
            self.header(&h).data(d)
        }

        pub fn file(&mut self, path: &str, d: &[u8]) -> &mut Self {
            self.entry(&RawHeader::ustar(b'0', path.as_bytes()), d)
        }

        pub fn dir(&mut self, path: &str) -> &mut Self {
            let mut h = RawHeader::ustar(b'5', path.as_bytes());
            h.mode(0o755);
            self.header(&h)
        }

        pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            let mut h = RawHeader::ustar(b'2', path.as_bytes());
            h.link(target.as_bytes()).mode(0o777);
            self.header(&h)
        }

        pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
            let mut h = RawHeader::ustar(b'1', path.as_bytes());
            h.link(target.as_bytes());
            self.header(&h)
        }

        /// A GNU `L` (or `K`) header carrying `name` (NUL-terminated).
        pub fn gnu_long(&mut self, typeflag: u8, name: &[u8]) -> &mut Self {
            let mut d = name.to_vec();
            d.push(0);
            let h = RawHeader::gnu(typeflag, b"././@LongLink");
            self.entry(&h, &d)
        }

        /// A PAX header (`x` or `g`) with the given records.
        pub fn pax(&mut self, typeflag: u8, records: &[(&str, &[u8])]) -> &mut Self {
            let d = pax_records(records);
            let h = RawHeader::ustar(typeflag, b"PaxHeaders/x");
            self.entry(&h, &d)
        }

        pub fn raw(&mut self, d: &[u8]) -> &mut Self {
            self.buf.extend_from_slice(d);
            self
        }

        /// Appends the two zero blocks.
        pub fn end(&mut self) -> &mut Self {
            self.buf.extend_from_slice(&[0u8; 2 * BLOCK_SIZE]);
            self
        }

        pub fn finish(&mut self) -> Vec<u8> {
            self.end();
            std::mem::take(&mut self.buf)
        }
    }

    pub(crate) fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = k.len() + v.len() + 3; // ' ' '=' '\n'
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use std::io::Cursor;

    /// A reader that counts what was read from it and serves `len` bytes of
    /// `fill` after `prefix`.
    struct Counting {
        prefix: Vec<u8>,
        pos: u64,
        len: u64,
        fill: u8,
    }

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let total = self.prefix.len() as u64 + self.len;
            let n = (total - self.pos).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let p = self.pos + i as u64;
                *b = if p < self.prefix.len() as u64 {
                    self.prefix[p as usize]
                } else {
                    self.fill
                };
            }
            self.pos += n as u64;
            Ok(n)
        }
    }

    fn read_all(archive: &[u8]) -> Result<Vec<(EntryHeader, Vec<u8>)>, TarError> {
        let mut tar = TarReader::new(archive);
        let mut out = Vec::new();
        while let Some(mut e) = tar.next_entry()? {
            let mut data = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = e.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((e.header().clone(), data));
        }
        Ok(out)
    }

    #[test]
    fn reads_ustar_files_dirs_and_links_with_their_fields() {
        let mut h = RawHeader::ustar(b'0', b"etc/passwd");
        h.mode(0o4755).uid(1000).gid(2000).mtime(1_700_000_000);
        h.names(b"alice", b"staff");
        let mut t = TarBuilder::new();
        t.entry(&h, b"root:x:0:0\n")
            .dir("etc/")
            .symlink("etc/link", "/abs/target")
            .hardlink("etc/hard", "etc/passwd");
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries.len(), 4);
        let (h0, d0) = &entries[0];
        assert_eq!(h0.path, b"etc/passwd");
        assert_eq!(h0.kind, EntryKind::Regular);
        assert_eq!(h0.mode, 0o4755);
        assert_eq!((h0.uid, h0.gid), (1000, 2000));
        assert_eq!(
            h0.mtime,
            Mtime {
                secs: 1_700_000_000,
                nanos: 0
            }
        );
        assert_eq!(h0.size, 11);
        assert_eq!(h0.uname, b"alice");
        assert_eq!(h0.gname, b"staff");
        assert_eq!(h0.header_offset, 0);
        assert_eq!(d0, b"root:x:0:0\n");
        assert_eq!(entries[1].0.kind, EntryKind::Directory);
        assert_eq!(entries[1].0.header_offset, 1024);
        assert_eq!(entries[2].0.kind, EntryKind::Symlink);
        assert_eq!(entries[2].0.link, b"/abs/target");
        assert_eq!(entries[3].0.kind, EntryKind::Hardlink);
        assert_eq!(entries[3].0.link, b"etc/passwd");
    }

    #[test]
    fn ustar_prefix_is_joined_to_the_name() {
        let prefix = "p".repeat(150);
        let mut h = RawHeader::ustar(b'0', b"file.txt");
        h.prefix(prefix.as_bytes());
        let mut t = TarBuilder::new();
        t.entry(&h, b"x");
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries[0].0.path, format!("{prefix}/file.txt").as_bytes());
    }

    #[test]
    fn gnu_header_ignores_the_prefix_area() {
        // GNU headers keep atime/ctime where ustar has its prefix.
        let mut h = RawHeader::gnu(b'0', b"name");
        h.field(345, 12, b"00000000000\0");
        let mut t = TarBuilder::new();
        t.header(&h);
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries[0].0.path, b"name");
    }

    #[test]
    fn typeflags_map_to_kinds() {
        let mut t = TarBuilder::new();
        for flag in [b'0', b'\0', b'7', b'1', b'2', b'3', b'4', b'5', b'6', b'V'] {
            t.header(&RawHeader::ustar(flag, b"x"));
        }
        let kinds: Vec<EntryKind> = read_all(&t.finish())
            .unwrap()
            .into_iter()
            .map(|(h, _)| h.kind)
            .collect();
        use EntryKind::*;
        assert_eq!(
            kinds,
            [
                Regular,
                Regular,
                Regular,
                Hardlink,
                Symlink,
                Char,
                Block,
                Directory,
                Fifo,
                Other(b'V')
            ]
        );
    }

    #[test]
    fn v7_header_with_trailing_slash_is_a_directory() {
        let mut t = TarBuilder::new();
        t.header(&RawHeader::v7(b'\0', b"olddir/"))
            .entry(&RawHeader::v7(b'0', b"olddir/f"), b"data");
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries[0].0.kind, EntryKind::Directory);
        assert_eq!(entries[1].0.kind, EntryKind::Regular);
        assert_eq!(entries[1].1, b"data");
        assert!(entries[1].0.uname.is_empty());
    }

    #[test]
    fn device_numbers_are_read_for_device_entries() {
        let mut h = RawHeader::ustar(b'3', b"dev/null");
        h.dev(1, 3);
        let mut t = TarBuilder::new();
        t.header(&h);
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!((entries[0].0.dev_major, entries[0].0.dev_minor), (1, 3));
    }

    #[test]
    fn gnu_longname_and_longlink_apply_to_the_next_entry() {
        let long = format!("{}/file", "d".repeat(300));
        let target = "t".repeat(200);
        let mut t = TarBuilder::new();
        t.gnu_long(b'L', long.as_bytes())
            .gnu_long(b'K', target.as_bytes())
            .header(&RawHeader::gnu(b'2', b"truncated-name"))
            .file("next", b"");
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0.path, long.as_bytes());
        assert_eq!(entries[0].0.link, target.as_bytes());
        assert_eq!(entries[1].0.path, b"next");
        assert!(entries[1].0.link.is_empty());
    }

    #[test]
    fn huge_gnu_longname_is_refused_without_reading_it() {
        let mut h = RawHeader::gnu(b'L', b"././@LongLink");
        h.size(1 << 30);
        let mut reader = Counting {
            prefix: h.finish().to_vec(),
            pos: 0,
            len: 1 << 30,
            fill: b'a',
        };
        let mut tar = TarReader::new(&mut reader);
        let err = tar.next_entry().err().unwrap();
        assert!(
            matches!(err, TarError::TooLarge { what: "GNU long name", size, limit, .. }
                if size == 1 << 30 && limit == MAX_GNU_LONG_NAME),
            "{err}"
        );
        assert_eq!(tar.position(), 512);
        assert_eq!(reader.pos, 512, "only the header was read");
    }

    #[test]
    fn huge_pax_header_is_refused_without_reading_it() {
        let mut h = RawHeader::ustar(b'x', b"PaxHeaders/x");
        h.size(MAX_PAX_HEADER + 1);
        let mut reader = Counting {
            prefix: h.finish().to_vec(),
            pos: 0,
            len: 1 << 30,
            fill: b'1',
        };
        let err = TarReader::new(&mut reader).next_entry().err().unwrap();
        assert!(
            matches!(
                err,
                TarError::TooLarge {
                    what: "PAX extended header",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(reader.pos, 512);
    }

    #[test]
    fn many_pax_headers_for_one_entry_are_limited_in_total() {
        let record = vec![b'v'; 600 * 1024];
        let mut t = TarBuilder::new();
        t.pax(b'x', &[("comment", &record)])
            .pax(b'x', &[("comment", &record)])
            .file("f", b"");
        let err = read_all(&t.finish()).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::TooLarge {
                    what: "PAX extended header",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_global_pax_header_is_refused() {
        let mut h = RawHeader::ustar(b'g', b"global");
        h.size(MAX_PAX_HEADER + 1);
        let err = read_all(&h.finish()).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::TooLarge {
                    what: "PAX global header",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn pax_overrides_path_linkpath_size_ids_names_and_fractional_mtime() {
        let long = "x".repeat(3000);
        let mut t = TarBuilder::new();
        t.pax(
            b'x',
            &[
                ("path", long.as_bytes()),
                ("linkpath", b"/some/target"),
                ("uid", b"4294967296"),
                ("gid", b"70000"),
                ("uname", b"pax-user"),
                ("gname", b"pax-group"),
                ("mtime", b"1700000000.123456789123"),
                ("atime", b"1.5"),
                ("comment", b"ignored = yes\nreally"),
            ],
        );
        let mut h = RawHeader::ustar(b'2', b"short");
        h.link(b"short-target").uid(1).gid(2).mtime(5);
        t.header(&h);
        // size from PAX is what is read as data.
        t.pax(b'x', &[("size", b"3")]);
        let mut h = RawHeader::ustar(b'0', b"sized");
        h.size(0);
        t.header(&h).data(b"abc");
        let entries = read_all(&t.finish()).unwrap();
        let e = &entries[0].0;
        assert_eq!(e.path, long.as_bytes());
        assert_eq!(e.link, b"/some/target");
        assert_eq!((e.uid, e.gid), (4_294_967_296, 70000));
        assert_eq!(
            (e.uname.as_slice(), e.gname.as_slice()),
            (&b"pax-user"[..], &b"pax-group"[..])
        );
        assert_eq!(
            e.mtime,
            Mtime {
                secs: 1_700_000_000,
                nanos: 123_456_789
            }
        );
        assert_eq!(entries[1].0.path, b"sized");
        assert_eq!(entries[1].0.size, 3);
        assert_eq!(entries[1].1, b"abc");
        // The overrides were for one entry only.
        assert_eq!(entries[1].0.uid, 0);
    }

    #[test]
    fn pax_negative_and_short_fractional_mtimes() {
        let mut t = TarBuilder::new();
        for m in [&b"-1.5"[..], b"-0.25", b"-7", b"12.3"] {
            t.pax(b'x', &[("mtime", m)]).file("f", b"");
        }
        let times: Vec<Mtime> = read_all(&t.finish())
            .unwrap()
            .into_iter()
            .map(|(h, _)| h.mtime)
            .collect();
        assert_eq!(
            times,
            [
                Mtime {
                    secs: -2,
                    nanos: 500_000_000
                },
                Mtime {
                    secs: -1,
                    nanos: 750_000_000
                },
                Mtime { secs: -7, nanos: 0 },
                Mtime {
                    secs: 12,
                    nanos: 300_000_000
                },
            ]
        );
    }

    #[test]
    fn pax_xattrs_schily_and_libarchive_are_decoded_and_deduplicated() {
        let cap: &[u8] = &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut t = TarBuilder::new();
        t.pax(
            b'x',
            &[
                ("SCHILY.xattr.user.plain", b"v1"),
                ("SCHILY.xattr.security.capability", cap),
                // libarchive: URL-encoded name, base64 value (unpadded).
                ("LIBARCHIVE.xattr.user.with%3Dequals%25", b"aGVsbG8"),
                // Written by libarchive next to SCHILY for the same name: last wins.
                ("LIBARCHIVE.xattr.user.plain", b"djI="),
                ("SCHILY.xattr.user.empty", b""),
                ("SCHILY.xattr.user.binary", b"a\0b\nc=d"),
            ],
        )
        .file("f", b"");
        let entries = read_all(&t.finish()).unwrap();
        let x = &entries[0].0.xattrs;
        assert_eq!(
            x,
            &vec![
                ("user.plain".to_string(), b"v2".to_vec()),
                ("security.capability".to_string(), cap.to_vec()),
                ("user.with=equals%".to_string(), b"hello".to_vec()),
                ("user.empty".to_string(), Vec::new()),
                ("user.binary".to_string(), b"a\0b\nc=d".to_vec()),
            ]
        );
    }

    #[test]
    fn bad_libarchive_xattr_encoding_is_an_error() {
        for (k, v) in [
            ("LIBARCHIVE.xattr.user.a%zz", &b"aGk="[..]),
            ("LIBARCHIVE.xattr.user.a", b"a"),
            ("LIBARCHIVE.xattr.user.a", b"a*b="),
        ] {
            let mut t = TarBuilder::new();
            t.pax(b'x', &[(k, v)]).file("f", b"");
            let err = read_all(&t.finish()).unwrap_err();
            assert!(matches!(err, TarError::BadPax { .. }), "{k}={v:?}: {err}");
        }
    }

    #[test]
    fn global_pax_header_is_read_and_ignored() {
        let mut t = TarBuilder::new();
        t.pax(b'g', &[("path", b"global-path"), ("uid", b"99")])
            .file("f", b"data");
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.path, b"f");
        assert_eq!(entries[0].0.uid, 0);
        assert_eq!(entries[0].1, b"data");
    }

    #[test]
    fn malformed_pax_records_are_errors() {
        let bad: [&[u8]; 6] = [
            b"abc path=x\n", // length not a number
            b"99 path=x\n",  // length past the end
            b"11 path=xyz",  // no newline (length matches data)
            b"9 pathx\n\n",  // no '='
            b"7 =abc\n",     // empty key
            b"1 \n",         // length too small
        ];
        for rec in bad {
            let mut t = TarBuilder::new();
            t.entry(&RawHeader::ustar(b'x', b"PaxHeaders/x"), rec)
                .file("f", b"");
            let err = read_all(&t.finish()).unwrap_err();
            assert!(matches!(err, TarError::BadPax { .. }), "{rec:?}: {err}");
        }
    }

    #[test]
    fn pax_path_with_nul_is_refused() {
        let mut t = TarBuilder::new();
        t.pax(b'x', &[("path", b"a\0b")]).file("f", b"");
        let err = read_all(&t.finish()).unwrap_err();
        assert!(matches!(err, TarError::BadPax { .. }), "{err}");
    }

    #[test]
    fn pax_numbers_that_do_not_parse_are_refused() {
        for (k, v) in [
            ("size", &b"12a"[..]),
            ("size", b"18446744073709551615"),
            ("size", b"18446744073709551616"),
            ("mtime", b"99999999999999999999"),
            ("uid", b"-1"),
            ("mtime", b"1.2.3"),
            ("mtime", b"x"),
        ] {
            let mut t = TarBuilder::new();
            t.pax(b'x', &[(k, v)]).file("f", b"");
            let err = read_all(&t.finish()).unwrap_err();
            assert!(matches!(err, TarError::BadPax { .. }), "{k}={v:?}: {err}");
        }
    }

    #[test]
    fn path_over_4096_bytes_is_refused() {
        let long = "a".repeat(MAX_PATH_LEN + 1);
        let mut t = TarBuilder::new();
        t.pax(b'x', &[("path", long.as_bytes())]).file("f", b"");
        let err = read_all(&t.finish()).unwrap_err();
        assert!(
            matches!(err, TarError::TooLarge { what: "path", .. }),
            "{err}"
        );

        let mut t = TarBuilder::new();
        t.gnu_long(b'L', long.as_bytes()).file("f", b"");
        let err = read_all(&t.finish()).unwrap_err();
        assert!(
            matches!(err, TarError::TooLarge { what: "path", .. }),
            "{err}"
        );

        let mut t = TarBuilder::new();
        t.gnu_long(b'K', long.as_bytes()).symlink("l", "x");
        let err = read_all(&t.finish()).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::TooLarge {
                    what: "link target",
                    ..
                }
            ),
            "{err}"
        );

        // Exactly at the limit is fine.
        let ok = "b".repeat(MAX_PATH_LEN);
        let mut t = TarBuilder::new();
        t.gnu_long(b'L', ok.as_bytes()).file("f", b"");
        assert_eq!(read_all(&t.finish()).unwrap()[0].0.path.len(), MAX_PATH_LEN);
    }

    #[test]
    fn base256_numbers_are_read() {
        let mut h = RawHeader::gnu(b'0', b"big");
        h.base256(108, 8, 5_000_000_000) // uid beyond octal's 8-byte range
            .base256(116, 8, 3)
            .base256(136, 12, -1_000) // negative mtime
            .base256(124, 12, 5);
        let mut t = TarBuilder::new();
        t.header(&h).data(b"hello");
        let entries = read_all(&t.finish()).unwrap();
        let e = &entries[0].0;
        assert_eq!((e.uid, e.gid), (5_000_000_000, 3));
        assert_eq!(e.mtime.secs, -1_000);
        assert_eq!(entries[0].1, b"hello");
    }

    #[test]
    fn negative_base256_size_is_refused() {
        let mut h = RawHeader::gnu(b'0', b"neg");
        h.base256(124, 12, -5);
        let err = read_all(&h.finish()).unwrap_err();
        assert!(
            matches!(err, TarError::BadNumber { field: "size", .. }),
            "{err}"
        );
    }

    #[test]
    fn invalid_numeric_field_is_an_error() {
        for (start, len, value, field) in [
            (100, 8, &b"0000789\0"[..], "mode"),
            (108, 8, b"12 34\0\0\0", "uid"),
            (124, 12, b"0000000001x\0", "size"),
            (136, 12, b"zzzzzzzzzzz\0", "mtime"),
        ] {
            let mut h = RawHeader::ustar(b'0', b"f");
            h.field(start, len, value);
            let err = read_all(&h.finish()).unwrap_err();
            assert!(
                matches!(err, TarError::BadNumber { field: f, offset: 0 } if f == field),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn numeric_fields_accept_spaces_nuls_and_empty() {
        let mut h = RawHeader::ustar(b'0', b"f");
        h.field(100, 8, b"  755 \0\0")
            .field(108, 8, b"")
            .field(116, 8, b"17\0garbg");
        let e = &read_all(&h.finish()).unwrap()[0].0;
        assert_eq!((e.mode, e.uid, e.gid), (0o755, 0, 0o17));
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_kept_and_type_bits_dropped() {
        let mut h = RawHeader::ustar(b'0', b"f");
        h.mode(0o107755); // S_IFREG | setuid | setgid | sticky | 0755
        let e = &read_all(&h.finish()).unwrap()[0].0;
        assert_eq!(e.mode, 0o7755);
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let mut h = RawHeader::ustar(b'0', b"f");
        h.checksum(1234);
        let err = read_all(&h.finish()).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::Checksum {
                    stored: 1234,
                    offset: 0,
                    ..
                }
            ),
            "{err}"
        );

        // A header whose contents changed after its checksum was computed.
        let mut t = TarBuilder::new();
        t.file("ok", b"x");
        let mut bytes = t.finish();
        bytes[10] = b'!';
        let err = read_all(&bytes).unwrap_err();
        assert!(matches!(err, TarError::Checksum { offset: 0, .. }), "{err}");

        // Not a header at all: garbage after the first entry.
        let mut garbage = vec![b'q'; 512];
        garbage[..2].copy_from_slice(b"hi");
        let mut t = TarBuilder::new();
        t.file("ok", b"x").raw(&garbage);
        let err = read_all(&t.buf).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::BadNumber {
                    field: "checksum",
                    offset: 1024
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn signed_checksum_is_accepted() {
        let mut h = RawHeader::ustar(b'0', b"f");
        h.names(&[0xe9, 0xe9, 0xe9], b"g");
        let mut b = h.finish();
        // Replace the unsigned sum with the signed one (old Sun tar did this).
        b[148..156].fill(b' ');
        let signed: i64 = b.iter().map(|&x| i64::from(x as i8)).sum();
        let unsigned: i64 = b.iter().map(|&x| i64::from(x)).sum();
        assert_ne!(signed, unsigned);
        b[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        let entries = read_all(&b).unwrap();
        assert_eq!(entries[0].0.uname, [0xe9, 0xe9, 0xe9]);
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let mut t = TarBuilder::new();
        t.file("a", &[7u8; 1000]).file("b", b"x");
        let full = t.finish();

        // Inside the data of "a".
        let err = read_all(&full[..512 + 600]).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::Truncated {
                    what: "inside entry data",
                    ..
                }
            ),
            "{err}"
        );
        // Inside the padding of "a" (data complete, stream ends before the next block).
        let err = read_all(&full[..512 + 1000]).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::Truncated {
                    what: "inside entry data",
                    ..
                }
            ),
            "{err}"
        );
        // Inside the header of "b".
        let err = read_all(&full[..512 + 1024 + 100]).unwrap_err();
        assert!(
            matches!(err, TarError::Truncated { what: "inside a header", offset } if offset == 1636),
            "{err}"
        );
        // After a GNU long name, before its entry.
        let mut t = TarBuilder::new();
        t.gnu_long(b'L', b"long");
        let err = read_all(&t.buf).unwrap_err();
        assert!(matches!(err, TarError::Truncated { .. }), "{err}");
        // A long name directly followed by the end marker.
        let err = read_all(&t.finish()).unwrap_err();
        assert!(matches!(err, TarError::Malformed { .. }), "{err}");
        // Inside a PAX header's data.
        let mut t = TarBuilder::new();
        t.pax(b'x', &[("path", b"p")]);
        let err = read_all(&t.buf[..520]).unwrap_err();
        assert!(matches!(err, TarError::Truncated { .. }), "{err}");
    }

    #[test]
    fn skipping_unread_data_into_a_truncated_stream_is_an_error() {
        let mut t = TarBuilder::new();
        t.file("a", &[1u8; 5000]);
        let bytes = t.buf[..3000].to_vec();
        let mut tar = TarReader::new(&bytes[..]);
        assert!(tar.next_entry().unwrap().is_some());
        let err = tar.next_entry().err().unwrap();
        assert!(matches!(err, TarError::Truncated { .. }), "{err}");
        assert!(matches!(tar.next_entry().err(), Some(TarError::Failed)));
    }

    #[test]
    fn read_impl_reports_truncation_as_unexpected_eof() {
        let mut t = TarBuilder::new();
        t.file("a", &[1u8; 1000]);
        let bytes = t.buf[..700].to_vec();
        let mut tar = TarReader::new(&bytes[..]);
        let mut e = tar.next_entry().unwrap().unwrap();
        let mut out = Vec::new();
        let err = e.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out.len(), 188);
    }

    #[test]
    fn archive_without_end_marker_ends_cleanly_at_a_block_boundary() {
        let mut t = TarBuilder::new();
        t.file("a", b"x").file("b", b"y");
        let entries = read_all(&t.buf).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(read_all(&[]).unwrap().is_empty());
    }

    #[test]
    fn unread_data_and_padding_are_skipped_before_the_next_header() {
        let mut t = TarBuilder::new();
        t.file("a", &[1u8; 10_000])
            .file("b", b"bee")
            .file("c", &[2u8; 513]);
        let archive = t.finish();
        let mut tar = TarReader::new(&archive[..]);
        let mut names = Vec::new();
        let mut i = 0;
        while let Some(mut e) = tar.next_entry().unwrap() {
            names.push(e.path().to_vec());
            if i == 1 {
                let mut s = Vec::new();
                e.read_to_end(&mut s).unwrap();
                assert_eq!(s, b"bee");
            } else if i == 2 {
                let mut one = [0u8; 1];
                e.read_exact(&mut one).unwrap(); // partially read
            }
            i += 1;
        }
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn header_only_kinds_carry_no_data_whatever_their_size_says() {
        let mut h = RawHeader::ustar(b'5', b"dir/");
        h.size(100);
        let mut t = TarBuilder::new();
        t.header(&h).file("after", b"z");
        let entries = read_all(&t.finish()).unwrap();
        assert_eq!(entries[0].0.size, 0);
        assert_eq!(entries[1].0.path, b"after");
        assert_eq!(entries[1].1, b"z");
    }

    #[test]
    fn stops_at_the_first_zero_block_leaving_the_rest_unread() {
        let mut t = TarBuilder::new();
        t.file("a", b"x");
        t.raw(&[0u8; 512]).raw(b"trailing junk the caller drains");
        let archive = t.buf.clone();
        let mut cursor = Cursor::new(&archive[..]);
        let mut tar = TarReader::new(&mut cursor);
        assert!(tar.next_entry().unwrap().is_some());
        assert!(tar.next_entry().unwrap().is_none());
        assert!(tar.next_entry().unwrap().is_none());
        assert_eq!(tar.position(), 1536);
        assert_eq!(cursor.position(), 1536);
    }

    #[test]
    fn sparse_and_multivolume_entries_are_unsupported() {
        for flag in [b'S', b'M'] {
            let mut h = RawHeader::gnu(flag, b"sparse");
            h.size(10);
            let err = read_all(&h.finish()).unwrap_err();
            assert!(matches!(err, TarError::Unsupported { .. }), "{err}");
        }
        let mut t = TarBuilder::new();
        t.pax(
            b'x',
            &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
        )
        .file("f", b"");
        let err = read_all(&t.finish()).unwrap_err();
        assert!(matches!(err, TarError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn data_reads_pass_straight_through_in_large_chunks() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut t = TarBuilder::new();
        t.file("big", &data);
        let archive = t.finish();
        let mut tar = TarReader::new(&archive[..]);
        let mut e = tar.next_entry().unwrap().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let n = e.read_data(&mut buf).unwrap();
        // A slice reader gives everything in one call: no 512-byte chunking.
        assert_eq!(n, data.len());
        assert_eq!(&buf[..n], &data[..]);
        assert_eq!(e.read_data(&mut buf).unwrap(), 0);
    }

    #[test]
    fn helpers_decode_base64_and_urls() {
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert_eq!(base64_decode(b"Zg==").unwrap(), b"f");
        assert_eq!(base64_decode(b"Zm8").unwrap(), b"fo");
        assert_eq!(base64_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode(b"Zm9vYg\n").unwrap(), b"foob");
        assert!(base64_decode(b"Z").is_none());
        assert!(base64_decode(b"Zg==Zg").is_none());
        assert_eq!(url_decode(b"a%20b%2F").unwrap(), b"a b/");
        assert!(url_decode(b"a%2").is_none());
        assert_eq!(parse_octal(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"77777777777777777777777"), None); // overflow
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
        assert_eq!(parse_numeric(&[0x80, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]), None); // overflow
    }
}
