//! The CRI container log: one record per line of output,
//! `<RFC 3339 nano timestamp> <stdout|stderr> <P|F> <content>\n`, as kubelet
//! reads it. Same rules as containerd's `pkg/cri/io/logger.go`: a line's
//! trailing `\r\n` or `\n` is dropped; a line longer than 16 KiB is cut into
//! partial (P) records of 16 KiB and a final full (F) one; output that does
//! not end in a newline is held until more comes, and written as a partial
//! record only when the stream ends (or the shim flushes at exit).
//!
//! The shim never blocks the container on the log: pipes are read in the
//! poll loop and a record the disk refuses (full, I/O error) is dropped.

#![deny(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

/// The longest content of one record (containerd's max_container_log_line_size).
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("open log file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

pub const TIMESTAMP_LEN: usize = 30;

/// `2016-10-06T00:17:09.669794202Z`: UTC, always nine fraction digits (Go's
/// `time.RFC3339Nano` trims zeros; containerd and CRI-O write fixed width).
pub fn format_timestamp(secs: i64, nanos: u32) -> [u8; TIMESTAMP_LEN] {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = [0u8; TIMESTAMP_LEN];
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, (rem / 3600) as u64);
    put(14, 2, (rem % 3600 / 60) as u64);
    put(17, 2, (rem % 60) as u64);
    put(20, 9, u64::from(nanos.min(999_999_999)));
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out[19] = b'.';
    out[29] = b'Z';
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn now_timestamp() -> [u8; TIMESTAMP_LEN] {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        d.subsec_nanos(),
    )
}

/// Cuts `buf` into records and hands each to `emit`; returns how many bytes
/// were consumed. What is left (at most [`MAX_RECORD`] bytes, no newline)
/// waits for more output, unless `flush`, when it becomes a partial record.
pub fn split_records<'a>(buf: &'a [u8], flush: bool, mut emit: impl FnMut(Tag, &'a [u8])) -> usize {
    let mut start = 0;
    while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
        let mut line = &buf[start..start + i];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        while line.len() > MAX_RECORD {
            emit(Tag::Partial, &line[..MAX_RECORD]);
            line = &line[MAX_RECORD..];
        }
        emit(Tag::Full, line);
        start += i + 1;
    }
    let mut rest = &buf[start..];
    while rest.len() > MAX_RECORD {
        emit(Tag::Partial, &rest[..MAX_RECORD]);
        rest = &rest[MAX_RECORD..];
    }
    if flush && !rest.is_empty() {
        emit(Tag::Partial, rest);
        rest = &[];
    }
    buf.len() - rest.len()
}

/// Records gathered into one writev(2).
const BATCH: usize = 32;

/// The log file, opened for append; records go out with writev so that
/// content is never copied.
pub struct LogFile {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Records lost to write errors (disk full).
    pub dropped: u64,
}

impl LogFile {
    /// An empty path discards output.
    pub fn open(path: &str) -> Result<Self, LogError> {
        if path.is_empty() {
            return Ok(LogFile {
                path: None,
                file: None,
                dropped: 0,
            });
        }
        let path = PathBuf::from(path);
        let file = open_log(&path)?;
        Ok(LogFile {
            path: Some(path),
            file: Some(file),
            dropped: 0,
        })
    }

    /// The log at `path`, opened later by [`Self::reopen`]: the shim's
    /// start leaves the file's create (a disk write) until after its
    /// `ok`, as containerd opens the log at StartContainer. Output that
    /// comes meanwhile waits in the pipes.
    pub fn deferred(path: &str) -> Self {
        LogFile {
            path: (!path.is_empty()).then(|| PathBuf::from(path)),
            file: None,
            dropped: 0,
        }
    }

    /// Close and open the path again (kubelet renamed the file to rotate
    /// it). On failure the old file stays in use.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        if let Some(path) = &self.path {
            self.file = Some(open_log(path)?);
        }
        Ok(())
    }

    /// Writes the complete records in `buf` (all of it if `flush`) and
    /// returns how many bytes were consumed.
    pub fn write_records(&mut self, stream: Stream, buf: &[u8], flush: bool) -> usize {
        let Some(file) = self.file.as_mut() else {
            return split_records(buf, flush, |_, _| {});
        };
        let ts = now_timestamp();
        let header = |tag: &[u8]| {
            let mut h = [0u8; TIMESTAMP_LEN + 10];
            let mut n = 0;
            for part in [&ts[..], b" ", stream.name(), b" ", tag, b" "] {
                h[n..n + part.len()].copy_from_slice(part);
                n += part.len();
            }
            (h, n)
        };
        let (full_h, full_n) = header(b"F");
        let (part_h, part_n) = header(b"P");
        let mut iov = [IoSlice::new(&[]); 3 * BATCH];
        let mut n = 0;
        let mut records = 0u64;
        let mut dropped = 0u64;
        let mut flush_iov = |iov: &[IoSlice<'_>], records: u64| {
            let want: usize = iov.iter().map(|s| s.len()).sum();
            match file.write_vectored(iov) {
                Ok(w) if w == want => {}
                // Short write or error: the disk is full or failing. Drop
                // rather than wait; the container must not block on us.
                _ => dropped += records,
            }
        };
        let consumed = split_records(buf, flush, |tag, content| {
            let h: &[u8] = match tag {
                Tag::Full => &full_h[..full_n],
                Tag::Partial => &part_h[..part_n],
            };
            iov[n] = IoSlice::new(h);
            iov[n + 1] = IoSlice::new(content);
            iov[n + 2] = IoSlice::new(b"\n");
            n += 3;
            records += 1;
            if n == iov.len() {
                flush_iov(&iov[..n], records);
                n = 0;
                records = 0;
            }
        });
        if n > 0 {
            flush_iov(&iov[..n], records);
        }
        self.dropped += dropped;
        consumed
    }
}

fn open_log(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.display().to_string(),
            source,
        })
}

/// What one read of a stream found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Data came (and was logged); more may follow.
    Data,
    /// Nothing to read now.
    WouldBlock,
    /// The stream ended; its held partial line was flushed.
    Eof,
}

/// Bytes read from a stream at a time.
pub const READ_CHUNK: usize = 8 * 1024;

/// Relays a stream (a pipe or the pty master) into the log. `carry` holds
/// a line waiting for its end between reads (at most [`MAX_RECORD`] plus a
/// chunk, usually nothing); `scratch` is one buffer shared by all streams,
/// allocated on first use.
pub struct Relay {
    scratch: Vec<u8>,
    /// Bytes the last read brought (in `scratch`).
    last: usize,
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay {
    pub fn new() -> Self {
        Relay {
            scratch: Vec::new(),
            last: 0,
        }
    }

    /// What the last [`Relay::read_once`] read, before it became log
    /// records (for attach clients).
    pub fn last_chunk(&self) -> &[u8] {
        self.scratch.get(..self.last).unwrap_or_default()
    }

    /// One read from `fd` into the log.
    pub fn read_once(
        &mut self,
        fd: impl AsFd,
        stream: Stream,
        carry: &mut Vec<u8>,
        log: &mut LogFile,
    ) -> ReadOutcome {
        if self.scratch.len() != READ_CHUNK {
            self.scratch = vec![0; READ_CHUNK];
        }
        let n = loop {
            match nix::unistd::read(fd.as_fd(), &mut self.scratch) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return ReadOutcome::WouldBlock,
                // EIO: the pty's other side is closed. Any other error ends
                // the stream too: there is nothing better to do with it.
                Err(_) => break 0,
                Ok(n) => break n,
            }
        };
        let eof = n == 0;
        self.last = n;
        if carry.is_empty() {
            let used = log.write_records(stream, &self.scratch[..n], eof);
            carry.extend_from_slice(&self.scratch[used..n]);
        } else {
            carry.extend_from_slice(&self.scratch[..n]);
            let used = log.write_records(stream, carry, eof);
            carry.drain(..used);
        }
        if carry.is_empty() && carry.capacity() > 256 {
            // A long partial line came and went: give its memory back.
            *carry = Vec::new();
        }
        if eof {
            ReadOutcome::Eof
        } else {
            ReadOutcome::Data
        }
    }

    /// Writes a held partial line at exit.
    pub fn flush(stream: Stream, carry: &mut Vec<u8>, log: &mut LogFile) {
        if !carry.is_empty() {
            log.write_records(stream, carry, true);
            *carry = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(buf: &[u8], flush: bool) -> (Vec<(Tag, Vec<u8>)>, usize) {
        let mut out = Vec::new();
        let used = split_records(buf, flush, |t, c| out.push((t, c.to_vec())));
        (out, used)
    }

    #[test]
    fn timestamps_are_utc_with_nine_fraction_digits() {
        assert_eq!(
            &format_timestamp(1_475_713_029, 669_794_202),
            b"2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(&format_timestamp(0, 0), b"1970-01-01T00:00:00.000000000Z");
        // A leap day and the end of a year.
        assert_eq!(
            &format_timestamp(951_782_400, 5),
            b"2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            &format_timestamp(1_704_067_199, 999_999_999),
            b"2023-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn whole_lines_are_full_records_without_their_newline() {
        let (r, used) = records(b"one\ntwo\r\n\nthr", false);
        assert_eq!(
            r,
            vec![
                (Tag::Full, b"one".to_vec()),
                (Tag::Full, b"two".to_vec()),
                (Tag::Full, b"".to_vec()),
            ]
        );
        assert_eq!(used, 10, "the unfinished line waits");
    }

    #[test]
    fn an_unfinished_line_is_a_partial_record_only_when_flushed() {
        let (r, used) = records(b"prompt> ", false);
        assert!(r.is_empty());
        assert_eq!(used, 0);
        let (r, used) = records(b"prompt> ", true);
        assert_eq!(r, vec![(Tag::Partial, b"prompt> ".to_vec())]);
        assert_eq!(used, 8);
    }

    #[test]
    fn long_lines_are_cut_at_16k_into_partials_then_a_full() {
        let mut line = vec![b'a'; MAX_RECORD];
        line.extend_from_slice(b"bc\n");
        let (r, used) = records(&line, false);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (Tag::Partial, vec![b'a'; MAX_RECORD]));
        assert_eq!(r[1], (Tag::Full, b"bc".to_vec()));
        assert_eq!(used, line.len());

        // Exactly 16 KiB and its newline: one full record, as containerd.
        let mut exact = vec![b'x'; MAX_RECORD];
        exact.push(b'\n');
        let (r, _) = records(&exact, false);
        assert_eq!(r, vec![(Tag::Full, vec![b'x'; MAX_RECORD])]);

        // 16 KiB + 1 with no newline yet: 16 KiB go out, one byte waits.
        let (r, used) = records(&[b'y'; MAX_RECORD + 1], false);
        assert_eq!(r, vec![(Tag::Partial, vec![b'y'; MAX_RECORD])]);
        assert_eq!(used, MAX_RECORD);
    }

    #[test]
    fn the_log_file_gets_well_formed_records_and_reopens_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(path.to_str().unwrap()).unwrap();
        assert_eq!(log.write_records(Stream::Stdout, b"hello\nwor", false), 6);
        assert_eq!(log.write_records(Stream::Stderr, b"ld", true), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(&lines[0][30..], " stdout F hello");
        assert_eq!(&lines[1][30..], " stderr P ld");
        assert!(lines[0].as_bytes()[29] == b'Z' && lines[0].as_bytes()[19] == b'.');
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777 & !0o022, 0o640 & !0o022);

        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_records(Stream::Stdout, b"after\n", false);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(" stdout F after\n"), "{text}");
    }

    #[test]
    fn many_lines_go_out_in_batches_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = LogFile::open(path.to_str().unwrap()).unwrap();
        let mut buf = Vec::new();
        for i in 0..1000 {
            buf.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        assert_eq!(log.write_records(Stream::Stdout, &buf, false), buf.len());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines[999].ends_with(" stdout F line 999"));
        assert_eq!(log.dropped, 0);
    }

    #[test]
    fn an_empty_path_discards_output() {
        let mut log = LogFile::open("").unwrap();
        assert_eq!(log.write_records(Stream::Stdout, b"x\ny", false), 2);
    }

    #[test]
    fn a_stream_relayed_in_chunks_keeps_its_lines_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.log");
        let mut log = LogFile::open(path.to_str().unwrap()).unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let mut relay = Relay::new();
        let mut carry = Vec::new();
        let mut feed = |bytes: &[u8], carry: &mut Vec<u8>| {
            nix::unistd::write(&w, bytes).unwrap();
            while relay.read_once(&r, Stream::Stdout, carry, &mut log) == ReadOutcome::Data {}
        };
        feed(b"one\ntw", &mut carry);
        assert_eq!(carry, b"tw");
        feed(b"o\n", &mut carry);
        assert!(carry.is_empty());
        // A line of 20000 bytes, in pieces smaller than a read chunk.
        let long = vec![b'z'; 20_000];
        for piece in long.chunks(3000) {
            feed(piece, &mut carry);
        }
        feed(b"\n", &mut carry);
        drop(w);
        assert_eq!(
            relay.read_once(&r, Stream::Stdout, &mut carry, &mut log),
            ReadOutcome::Eof
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let recs: Vec<(&str, usize)> = text.lines().map(|l| (&l[31..39], l.len() - 40)).collect();
        assert_eq!(
            recs,
            vec![
                ("stdout F", 3),
                ("stdout F", 3),
                ("stdout P", MAX_RECORD),
                ("stdout F", 20_000 - MAX_RECORD)
            ]
        );
    }
}
