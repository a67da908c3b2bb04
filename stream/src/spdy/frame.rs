//! The SPDY/3 frame codec (SPDY draft 3 and 3.1, section 2.2 and 2.6).
//!
//! [`Encoder`] turns [`Frame`]s into bytes and [`Decoder`] turns bytes back into
//! frames. Each keeps the zlib context of one direction of one session: header
//! blocks (SYN_STREAM, SYN_REPLY, HEADERS) are compressed with the SPDY/3
//! [dictionary](super::dictionary) and a `Z_SYNC_FLUSH` ends every block, so a
//! session needs exactly one `Encoder` for what it sends and one `Decoder` for
//! what it receives, used in frame order.
//!
//! What it implements: the eight control frames of SPDY/3.1 (SYN_STREAM,
//! SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE) and
//! DATA frames with FIN. Control frames of other types (CREDENTIAL, NOOP, types
//! from later drafts) are skipped unread, as the draft asks.
//!
//! What it refuses (the decoder treats all input as hostile):
//! * a control frame of any version other than 3, stream id 0 where the frame
//!   needs a stream, fixed-size frames of the wrong size, a header block that
//!   does not decompress, that grows past [`Limits::max_header_block`], or whose
//!   compressed bytes do not end at a sync flush: these are session errors
//!   ([`FrameError::Session`]), after which the peer is sent GOAWAY and the
//!   decoder refuses to go on (the zlib context can no longer be trusted);
//! * a header block that decompresses but is malformed inside (bad lengths,
//!   empty, upper-case or duplicate names, more than [`Limits::max_headers`]
//!   values, headers that SPDY forbids such as `connection`, bytes that are
//!   not UTF-8): a stream error ([`FrameError::Stream`]) to answer with
//!   RST_STREAM; decoding goes on with the next frame.
//!
//! A DATA frame larger than 64 KiB is handed out in pieces as its bytes arrive
//! (only the last piece carries FIN), so a 16 MiB frame never needs a 16 MiB
//! buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::{DICTIONARY, DICTIONARY_ID};

/// The protocol version this codec speaks.
pub const VERSION: u16 = 3;
/// The largest payload a frame's 24-bit length field can describe.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// Stream ids are 31 bits.
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;
/// The largest flow-control window SPDY/3.1 allows (2^31 - 1).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;
/// The initial stream and session window of SPDY/3.1: 64 KiB.
pub const DEFAULT_WINDOW: u32 = 65_536;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// DATA frames up to this size are handed out whole; larger ones in pieces.
const WHOLE_DATA_FRAME: usize = 64 * 1024;
/// The smallest piece of a large DATA frame handed out (except its last).
const MIN_DATA_PIECE: usize = 16 * 1024;
/// The zlib marker a sync flush ends with (an empty stored block).
const SYNC_FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Header names SPDY forbids in SYN_STREAM (draft 3, 3.2.1: connection-level
/// HTTP headers); HEADERS frames are checked against the same list.
const FORBIDDEN_REQUEST_HEADERS: [&str; 5] = [
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];
/// Header names SPDY forbids in SYN_REPLY (draft 3, 3.2.2).
const FORBIDDEN_REPLY_HEADERS: [&str; 4] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// Setting ids of a SETTINGS frame (draft 3, 2.6.4).
pub mod setting {
    /// SETTINGS_UPLOAD_BANDWIDTH.
    pub const UPLOAD_BANDWIDTH: u32 = 1;
    /// SETTINGS_DOWNLOAD_BANDWIDTH.
    pub const DOWNLOAD_BANDWIDTH: u32 = 2;
    /// SETTINGS_ROUND_TRIP_TIME.
    pub const ROUND_TRIP_TIME: u32 = 3;
    /// SETTINGS_MAX_CONCURRENT_STREAMS: how many streams the sender accepts at once.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_CURRENT_CWND.
    pub const CURRENT_CWND: u32 = 5;
    /// SETTINGS_DOWNLOAD_RETRANS_RATE.
    pub const DOWNLOAD_RETRANS_RATE: u32 = 6;
    /// SETTINGS_INITIAL_WINDOW_SIZE: the sender's receive window for each new stream.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
    /// SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE.
    pub const CLIENT_CERTIFICATE_VECTOR_SIZE: u32 = 8;
}

/// The header block of a SYN_STREAM, SYN_REPLY or HEADERS frame.
///
/// Names are kept in lower case (SPDY requires it; [`Headers::append`] folds
/// them) and looked up without regard to case, so `get("streamType")` finds the
/// `streamtype` header Go's `http.Header` puts on the wire. A name may appear
/// several times; on the wire its values travel NUL-separated in one entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value (keeping earlier values of the same name) and returns self.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.append(name, value);
        self
    }

    /// Adds a value, keeping earlier values of the same name.
    pub fn append(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Sets the only value of a name, dropping earlier ones.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.append(name, value);
    }

    /// Removes every value of a name.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The first value of a name, any case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a name, any case, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All (name, value) pairs in order; names in lower case.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks that these headers can be sent in a frame of the given kind:
    /// names non-empty and without NUL, values without NUL, and none of the
    /// names SPDY forbids there. The encoder runs the same check.
    pub fn validate(&self, kind: HeaderBlockKind) -> Result<(), EncodeError> {
        let forbidden: &[&str] = match kind {
            HeaderBlockKind::SynStream | HeaderBlockKind::Headers => &FORBIDDEN_REQUEST_HEADERS,
            HeaderBlockKind::SynReply => &FORBIDDEN_REPLY_HEADERS,
        };
        for (name, value) in &self.entries {
            if name.is_empty() {
                return Err(EncodeError::InvalidHeader("empty header name".into()));
            }
            if name.bytes().any(|b| b == 0 || b.is_ascii_uppercase()) {
                return Err(EncodeError::InvalidHeader(format!(
                    "header name {name:?} has NUL or upper case"
                )));
            }
            if value.as_bytes().contains(&0) {
                return Err(EncodeError::InvalidHeader(format!(
                    "value of header {name:?} contains NUL"
                )));
            }
            if forbidden.contains(&name.as_str()) {
                return Err(EncodeError::InvalidHeader(format!(
                    "header {name:?} is not allowed in SPDY"
                )));
            }
        }
        Ok(())
    }

    /// The uncompressed SPDY/3 header block: count, then length-prefixed names
    /// and NUL-joined values, names in order of first appearance.
    fn write_block(&self, out: &mut Vec<u8>) {
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in &self.entries {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        out.extend_from_slice(&(names.len() as u32).to_be_bytes());
        for name in names {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            let mut first = true;
            for v in self.get_all(name) {
                if !first {
                    out.push(0);
                }
                first = false;
                out.extend_from_slice(v.as_bytes());
            }
            let value_len = (out.len() - len_at - 4) as u32;
            out[len_at..len_at + 4].copy_from_slice(&value_len.to_be_bytes());
        }
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n.as_ref(), v);
        }
        h
    }
}

/// Which frame a header block is for (the forbidden names differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderBlockKind {
    /// SYN_STREAM.
    SynStream,
    /// SYN_REPLY.
    SynReply,
    /// HEADERS.
    Headers,
}

/// RST_STREAM status codes (draft 3, 2.6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RstStatus {
    /// 1: PROTOCOL_ERROR.
    ProtocolError,
    /// 2: INVALID_STREAM.
    InvalidStream,
    /// 3: REFUSED_STREAM.
    RefusedStream,
    /// 4: UNSUPPORTED_VERSION.
    UnsupportedVersion,
    /// 5: CANCEL.
    Cancel,
    /// 6: INTERNAL_ERROR.
    InternalError,
    /// 7: FLOW_CONTROL_ERROR.
    FlowControlError,
    /// 8: STREAM_IN_USE.
    StreamInUse,
    /// 9: STREAM_ALREADY_CLOSED.
    StreamAlreadyClosed,
    /// 10: INVALID_CREDENTIALS.
    InvalidCredentials,
    /// 11: FRAME_TOO_LARGE.
    FrameTooLarge,
    /// Any other code (0 included), kept as received.
    Other(u32),
}

impl RstStatus {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            RstStatus::ProtocolError => 1,
            RstStatus::InvalidStream => 2,
            RstStatus::RefusedStream => 3,
            RstStatus::UnsupportedVersion => 4,
            RstStatus::Cancel => 5,
            RstStatus::InternalError => 6,
            RstStatus::FlowControlError => 7,
            RstStatus::StreamInUse => 8,
            RstStatus::StreamAlreadyClosed => 9,
            RstStatus::InvalidCredentials => 10,
            RstStatus::FrameTooLarge => 11,
            RstStatus::Other(c) => c,
        }
    }

    /// From a wire code.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => RstStatus::ProtocolError,
            2 => RstStatus::InvalidStream,
            3 => RstStatus::RefusedStream,
            4 => RstStatus::UnsupportedVersion,
            5 => RstStatus::Cancel,
            6 => RstStatus::InternalError,
            7 => RstStatus::FlowControlError,
            8 => RstStatus::StreamInUse,
            9 => RstStatus::StreamAlreadyClosed,
            10 => RstStatus::InvalidCredentials,
            11 => RstStatus::FrameTooLarge,
            c => RstStatus::Other(c),
        }
    }
}

/// GOAWAY status codes (SPDY/3: 0 OK, 1 PROTOCOL_ERROR, 2 INTERNAL_ERROR, as
/// Go's framer numbers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoAwayStatus {
    /// 0: a normal end.
    Ok,
    /// 1: the peer broke the protocol.
    ProtocolError,
    /// 2: the sender failed.
    InternalError,
    /// Any other code, kept as received.
    Other(u32),
}

impl GoAwayStatus {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            GoAwayStatus::Ok => 0,
            GoAwayStatus::ProtocolError => 1,
            GoAwayStatus::InternalError => 2,
            GoAwayStatus::Other(c) => c,
        }
    }

    /// From a wire code.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => GoAwayStatus::Ok,
            1 => GoAwayStatus::ProtocolError,
            2 => GoAwayStatus::InternalError,
            c => GoAwayStatus::Other(c),
        }
    }
}

/// SYN_STREAM: opens a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynStream {
    /// The new stream (odd from the client, even from the server).
    pub stream_id: u32,
    /// The stream this one is associated with (server push), or 0.
    pub associated_to: u32,
    /// Priority 0 (highest) to 7.
    pub priority: u8,
    /// Credential slot (0 = none).
    pub slot: u8,
    /// The sender sends nothing more on this stream.
    pub fin: bool,
    /// The receiver must not send on this stream.
    pub unidirectional: bool,
    /// The stream's headers.
    pub headers: Headers,
}

/// SYN_REPLY: accepts a stream the peer opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynReply {
    /// The stream being accepted.
    pub stream_id: u32,
    /// The sender sends nothing more on this stream.
    pub fin: bool,
    /// Reply headers.
    pub headers: Headers,
}

/// RST_STREAM: ends a stream abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstStream {
    /// The stream.
    pub stream_id: u32,
    /// Why.
    pub status: RstStatus,
}

/// One id/value pair of a SETTINGS frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) / FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// The setting (24 bits; see [`setting`]).
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// SETTINGS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// FLAG_SETTINGS_CLEAR_SETTINGS.
    pub clear_previous: bool,
    /// The values.
    pub entries: Vec<Setting>,
}

impl Settings {
    /// The value of a setting, if present (the last one wins).
    pub fn get(&self, id: u32) -> Option<u32> {
        self.entries
            .iter()
            .rev()
            .find(|s| s.id == id)
            .map(|s| s.value)
    }
}

/// PING: the receiver echoes it; ids from the client are odd, from the server even.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// The ping id.
    pub id: u32,
}

/// GOAWAY: the sender stops accepting new streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAway {
    /// The last stream the sender accepted from the receiver.
    pub last_good_stream_id: u32,
    /// Why.
    pub status: GoAwayStatus,
}

/// HEADERS: more headers for a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadersFrame {
    /// The stream.
    pub stream_id: u32,
    /// The sender sends nothing more on this stream.
    pub fin: bool,
    /// The headers.
    pub headers: Headers,
}

/// WINDOW_UPDATE: the receiver of data grants the sender more window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowUpdate {
    /// The stream, or 0 for the session window (SPDY/3.1).
    pub stream_id: u32,
    /// Bytes added to the window (31 bits).
    pub delta: u32,
}

/// DATA (or, from the decoder, a piece of one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// The stream.
    pub stream_id: u32,
    /// The sender sends nothing more on this stream.
    pub fin: bool,
    /// The payload.
    pub data: Bytes,
}

/// A SPDY/3 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM.
    SynStream(SynStream),
    /// SYN_REPLY.
    SynReply(SynReply),
    /// RST_STREAM.
    RstStream(RstStream),
    /// SETTINGS.
    Settings(Settings),
    /// PING.
    Ping(Ping),
    /// GOAWAY.
    GoAway(GoAway),
    /// HEADERS.
    Headers(HeadersFrame),
    /// WINDOW_UPDATE.
    WindowUpdate(WindowUpdate),
    /// DATA.
    Data(Data),
}

/// What the decoder found wrong with its input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The session cannot go on: send GOAWAY(PROTOCOL_ERROR) and close. The
    /// decoder returns this again on every later call.
    #[error("SPDY protocol error: {0}")]
    Session(String),
    /// One stream is broken: send RST_STREAM with `status`. The frame was
    /// consumed and the decoder can go on.
    #[error("SPDY stream {stream_id}: {reason}")]
    Stream {
        /// The stream.
        stream_id: u32,
        /// The status to reset it with.
        status: RstStatus,
        /// What was wrong.
        reason: String,
    },
}

/// Why a frame could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A header name or value SPDY cannot carry.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// Stream id 0 or above 2^31 - 1 where a stream is needed.
    #[error("invalid stream id {0}")]
    InvalidStreamId(u32),
    /// A payload over the 24-bit frame length.
    #[error("frame payload of {0} bytes is over the SPDY limit of 16 MiB")]
    TooLong(usize),
    /// A value over 31 bits where the protocol allows only 31.
    #[error("value {0} does not fit in 31 bits")]
    TooLarge(u32),
    /// zlib failed.
    #[error("header compression failed: {0}")]
    Compression(String),
}

/// Bounds the decoder puts on what the peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest decompressed header block (default 64 KiB). Control frames may
    /// be at most this plus 4 KiB on the wire.
    pub max_header_block: usize,
    /// Most header values in one block, NUL-separated values counted one by
    /// one (default 256).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_block: 64 * 1024,
            max_headers: 256,
        }
    }
}

fn check_stream_id(id: u32) -> Result<(), EncodeError> {
    if id == 0 || id > MAX_STREAM_ID {
        return Err(EncodeError::InvalidStreamId(id));
    }
    Ok(())
}

fn put_control_header(
    dst: &mut BytesMut,
    ty: u16,
    flags: u8,
    len: usize,
) -> Result<(), EncodeError> {
    if len > MAX_FRAME_LEN {
        return Err(EncodeError::TooLong(len));
    }
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(ty);
    dst.put_u32(((flags as u32) << 24) | len as u32);
    Ok(())
}

/// Writes the 8-byte header of a DATA frame of `len` bytes, for callers that
/// append the payload themselves.
pub fn put_data_header(
    dst: &mut BytesMut,
    stream_id: u32,
    fin: bool,
    len: usize,
) -> Result<(), EncodeError> {
    check_stream_id(stream_id)?;
    if len > MAX_FRAME_LEN {
        return Err(EncodeError::TooLong(len));
    }
    dst.put_u32(stream_id);
    let flags = if fin { FLAG_FIN } else { 0 };
    dst.put_u32(((flags as u32) << 24) | len as u32);
    Ok(())
}

/// Encodes frames for one direction of a session (it owns that direction's
/// zlib context: encode frames in the order they go on the wire).
pub struct Encoder {
    deflate: Option<Compress>,
    raw: Vec<u8>,
    compressed: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// A fresh compression context.
    pub fn new() -> Self {
        Encoder {
            deflate: None,
            raw: Vec::new(),
            compressed: Vec::new(),
        }
    }

    /// Appends the encoding of `frame` to `dst`. On error nothing is appended
    /// and the compression context is unchanged (headers are validated first).
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match frame {
            Frame::SynStream(f) => {
                check_stream_id(f.stream_id)?;
                if f.associated_to > MAX_STREAM_ID {
                    return Err(EncodeError::InvalidStreamId(f.associated_to));
                }
                f.headers.validate(HeaderBlockKind::SynStream)?;
                self.compress_block(&f.headers)?;
                let mut flags = 0;
                if f.fin {
                    flags |= FLAG_FIN;
                }
                if f.unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                put_control_header(dst, TYPE_SYN_STREAM, flags, 10 + self.compressed.len())?;
                dst.put_u32(f.stream_id);
                dst.put_u32(f.associated_to);
                dst.put_u8((f.priority & 0x07) << 5);
                dst.put_u8(f.slot);
                dst.extend_from_slice(&self.compressed);
            }
            Frame::SynReply(f) => {
                check_stream_id(f.stream_id)?;
                f.headers.validate(HeaderBlockKind::SynReply)?;
                self.compress_block(&f.headers)?;
                let flags = if f.fin { FLAG_FIN } else { 0 };
                put_control_header(dst, TYPE_SYN_REPLY, flags, 4 + self.compressed.len())?;
                dst.put_u32(f.stream_id);
                dst.extend_from_slice(&self.compressed);
            }
            Frame::Headers(f) => {
                check_stream_id(f.stream_id)?;
                f.headers.validate(HeaderBlockKind::Headers)?;
                self.compress_block(&f.headers)?;
                let flags = if f.fin { FLAG_FIN } else { 0 };
                put_control_header(dst, TYPE_HEADERS, flags, 4 + self.compressed.len())?;
                dst.put_u32(f.stream_id);
                dst.extend_from_slice(&self.compressed);
            }
            Frame::RstStream(f) => {
                check_stream_id(f.stream_id)?;
                put_control_header(dst, TYPE_RST_STREAM, 0, 8)?;
                dst.put_u32(f.stream_id);
                dst.put_u32(f.status.code());
            }
            Frame::Settings(f) => {
                let len = 4 + 8 * f.entries.len();
                if len > MAX_FRAME_LEN {
                    return Err(EncodeError::TooLong(len));
                }
                if let Some(s) = f.entries.iter().find(|s| s.id > 0x00ff_ffff) {
                    return Err(EncodeError::TooLarge(s.id));
                }
                let flags = if f.clear_previous {
                    FLAG_SETTINGS_CLEAR
                } else {
                    0
                };
                put_control_header(dst, TYPE_SETTINGS, flags, len)?;
                dst.put_u32(f.entries.len() as u32);
                for s in &f.entries {
                    dst.put_u32(((s.flags as u32) << 24) | s.id);
                    dst.put_u32(s.value);
                }
            }
            Frame::Ping(f) => {
                put_control_header(dst, TYPE_PING, 0, 4)?;
                dst.put_u32(f.id);
            }
            Frame::GoAway(f) => {
                if f.last_good_stream_id > MAX_STREAM_ID {
                    return Err(EncodeError::InvalidStreamId(f.last_good_stream_id));
                }
                put_control_header(dst, TYPE_GOAWAY, 0, 8)?;
                dst.put_u32(f.last_good_stream_id);
                dst.put_u32(f.status.code());
            }
            Frame::WindowUpdate(f) => {
                if f.stream_id > MAX_STREAM_ID {
                    return Err(EncodeError::InvalidStreamId(f.stream_id));
                }
                if f.delta == 0 || f.delta > MAX_WINDOW {
                    return Err(EncodeError::TooLarge(f.delta));
                }
                put_control_header(dst, TYPE_WINDOW_UPDATE, 0, 8)?;
                dst.put_u32(f.stream_id);
                dst.put_u32(f.delta);
            }
            Frame::Data(f) => {
                put_data_header(dst, f.stream_id, f.fin, f.data.len())?;
                dst.extend_from_slice(&f.data);
            }
        }
        Ok(())
    }

    /// Compresses a header block into `self.compressed`, ending with a sync flush.
    fn compress_block(&mut self, headers: &Headers) -> Result<(), EncodeError> {
        self.raw.clear();
        headers.write_block(&mut self.raw);
        if self.raw.len() > MAX_FRAME_LEN {
            return Err(EncodeError::TooLong(self.raw.len()));
        }
        let z = match &mut self.deflate {
            Some(z) => z,
            None => {
                // Go's framer uses zlib.BestCompression; header blocks are tiny.
                let mut z = Compress::new(Compression::best(), true);
                z.set_dictionary(DICTIONARY)
                    .map_err(|e| EncodeError::Compression(e.to_string()))?;
                self.deflate.insert(z)
            }
        };
        self.compressed.clear();
        let mut pos = 0;
        loop {
            if self.compressed.capacity() - self.compressed.len() < 64 {
                self.compressed.reserve(self.raw.len() - pos + 64);
            }
            let before = z.total_in();
            z.compress_vec(&self.raw[pos..], &mut self.compressed, FlushCompress::Sync)
                .map_err(|e| EncodeError::Compression(e.to_string()))?;
            pos += (z.total_in() - before) as usize;
            // A sync flush is complete once all input is in and zlib stopped
            // with output space to spare.
            if pos == self.raw.len() && self.compressed.len() < self.compressed.capacity() {
                break;
            }
        }
        Ok(())
    }
}

enum Partial {
    None,
    Data {
        stream_id: u32,
        fin: bool,
        remaining: usize,
    },
    Skip {
        remaining: usize,
    },
}

/// Decodes frames from one direction of a session (it owns that direction's
/// zlib context).
pub struct Decoder {
    inflate: Option<Decompress>,
    limits: Limits,
    partial: Partial,
    failed: Option<String>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("limits", &self.limits)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder {
    /// A fresh decompression context with these limits.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            inflate: None,
            limits,
            partial: Partial::None,
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn fail(&mut self, msg: String) -> FrameError {
        self.failed = Some(msg.clone());
        FrameError::Session(msg)
    }

    /// Takes the next frame (or piece of a large DATA frame) from the front of
    /// `buf`. `Ok(None)`: more bytes are needed (append them to `buf` and call
    /// again; a control frame needs all its bytes in `buf`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(msg) = &self.failed {
            return Err(FrameError::Session(msg.clone()));
        }
        loop {
            match self.partial {
                Partial::Skip { remaining } => {
                    let n = remaining.min(buf.len());
                    buf.advance(n);
                    if n < remaining {
                        self.partial = Partial::Skip {
                            remaining: remaining - n,
                        };
                        return Ok(None);
                    }
                    self.partial = Partial::None;
                    continue;
                }
                Partial::Data {
                    stream_id,
                    fin,
                    remaining,
                } => {
                    let n = remaining.min(buf.len());
                    if n == 0 || (n < remaining && n < MIN_DATA_PIECE) {
                        return Ok(None);
                    }
                    let data = buf.split_to(n).freeze();
                    let last = n == remaining;
                    self.partial = if last {
                        Partial::None
                    } else {
                        Partial::Data {
                            stream_id,
                            fin,
                            remaining: remaining - n,
                        }
                    };
                    return Ok(Some(Frame::Data(Data {
                        stream_id,
                        fin: fin && last,
                        data,
                    })));
                }
                Partial::None => {}
            }
            if buf.len() < 8 {
                return Ok(None);
            }
            let w0 = be32(&buf[0..4]);
            let w1 = be32(&buf[4..8]);
            let flags = (w1 >> 24) as u8;
            let len = (w1 & 0x00ff_ffff) as usize;
            if w0 & 0x8000_0000 == 0 {
                let stream_id = w0 & MAX_STREAM_ID;
                if stream_id == 0 {
                    return Err(self.fail("DATA frame on stream 0".into()));
                }
                let fin = flags & FLAG_FIN != 0;
                if len <= WHOLE_DATA_FRAME {
                    if buf.len() < 8 + len {
                        return Ok(None);
                    }
                    buf.advance(8);
                    let data = buf.split_to(len).freeze();
                    return Ok(Some(Frame::Data(Data {
                        stream_id,
                        fin,
                        data,
                    })));
                }
                buf.advance(8);
                self.partial = Partial::Data {
                    stream_id,
                    fin,
                    remaining: len,
                };
                continue;
            }
            let version = ((w0 >> 16) & 0x7fff) as u16;
            let ty = (w0 & 0xffff) as u16;
            if version != VERSION {
                return Err(self.fail(format!("control frame of SPDY version {version}, not 3")));
            }
            let known = matches!(
                ty,
                TYPE_SYN_STREAM
                    | TYPE_SYN_REPLY
                    | TYPE_RST_STREAM
                    | TYPE_SETTINGS
                    | TYPE_PING
                    | TYPE_GOAWAY
                    | TYPE_HEADERS
                    | TYPE_WINDOW_UPDATE
            );
            if !known {
                // Draft 3, 2.2.1: unknown control frames must be ignored.
                buf.advance(8);
                self.partial = Partial::Skip { remaining: len };
                continue;
            }
            let max = self.limits.max_header_block + 4096;
            if len > max {
                return Err(self.fail(format!(
                    "control frame type {ty} of {len} bytes is over the limit of {max}"
                )));
            }
            if buf.len() < 8 + len {
                return Ok(None);
            }
            buf.advance(8);
            let payload = buf.split_to(len);
            return self.control(ty, flags, &payload).map(Some);
        }
    }

    fn control(&mut self, ty: u16, flags: u8, p: &[u8]) -> Result<Frame, FrameError> {
        let fin = flags & FLAG_FIN != 0;
        match ty {
            TYPE_SYN_STREAM => {
                if p.len() < 10 {
                    return Err(self.fail(format!("SYN_STREAM of {} bytes", p.len())));
                }
                let stream_id = be32(&p[0..4]) & MAX_STREAM_ID;
                let associated_to = be32(&p[4..8]) & MAX_STREAM_ID;
                let priority = p[8] >> 5;
                let slot = p[9];
                let headers = self.header_block(&p[10..], stream_id, HeaderBlockKind::SynStream)?;
                Ok(Frame::SynStream(SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }))
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if p.len() < 4 {
                    return Err(self.fail(format!("SYN_REPLY/HEADERS of {} bytes", p.len())));
                }
                let stream_id = be32(&p[0..4]) & MAX_STREAM_ID;
                let kind = if ty == TYPE_SYN_REPLY {
                    HeaderBlockKind::SynReply
                } else {
                    HeaderBlockKind::Headers
                };
                let headers = self.header_block(&p[4..], stream_id, kind)?;
                Ok(if ty == TYPE_SYN_REPLY {
                    Frame::SynReply(SynReply {
                        stream_id,
                        fin,
                        headers,
                    })
                } else {
                    Frame::Headers(HeadersFrame {
                        stream_id,
                        fin,
                        headers,
                    })
                })
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(self.fail(format!("RST_STREAM of {} bytes, not 8", p.len())));
                }
                let stream_id = be32(&p[0..4]) & MAX_STREAM_ID;
                if stream_id == 0 {
                    return Err(self.fail("RST_STREAM on stream 0".into()));
                }
                Ok(Frame::RstStream(RstStream {
                    stream_id,
                    status: RstStatus::from_code(be32(&p[4..8])),
                }))
            }
            TYPE_SETTINGS => {
                if p.len() < 4 {
                    return Err(self.fail(format!("SETTINGS of {} bytes", p.len())));
                }
                let n = be32(&p[0..4]) as usize;
                if !(p.len() - 4).is_multiple_of(8) || (p.len() - 4) / 8 != n {
                    return Err(
                        self.fail(format!("SETTINGS says {n} entries in {} bytes", p.len()))
                    );
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|c| {
                        let w = be32(&c[0..4]);
                        Setting {
                            flags: (w >> 24) as u8,
                            id: w & 0x00ff_ffff,
                            value: be32(&c[4..8]),
                        }
                    })
                    .collect();
                Ok(Frame::Settings(Settings {
                    clear_previous: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }))
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(self.fail(format!("PING of {} bytes, not 4", p.len())));
                }
                Ok(Frame::Ping(Ping { id: be32(p) }))
            }
            TYPE_GOAWAY => {
                if p.len() != 8 {
                    return Err(self.fail(format!("GOAWAY of {} bytes, not 8", p.len())));
                }
                Ok(Frame::GoAway(GoAway {
                    last_good_stream_id: be32(&p[0..4]) & MAX_STREAM_ID,
                    status: GoAwayStatus::from_code(be32(&p[4..8])),
                }))
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(self.fail(format!("WINDOW_UPDATE of {} bytes, not 8", p.len())));
                }
                Ok(Frame::WindowUpdate(WindowUpdate {
                    stream_id: be32(&p[0..4]) & MAX_STREAM_ID,
                    delta: be32(&p[4..8]) & MAX_WINDOW,
                }))
            }
            _ => Err(self.fail(format!("unexpected control frame type {ty}"))),
        }
    }

    /// Decompresses and parses a header block. Decompression problems are
    /// session errors; problems inside the block are stream errors.
    fn header_block(
        &mut self,
        compressed: &[u8],
        stream_id: u32,
        kind: HeaderBlockKind,
    ) -> Result<Headers, FrameError> {
        if !compressed.ends_with(&SYNC_FLUSH_TAIL) {
            return Err(self.fail(format!(
                "header block of stream {stream_id} does not end with a zlib sync flush"
            )));
        }
        let raw = match self.inflate_block(compressed) {
            Ok(raw) => raw,
            Err(msg) => return Err(self.fail(msg)),
        };
        if stream_id == 0 {
            return Err(self.fail("header block on stream 0".into()));
        }
        parse_block(&raw, self.limits.max_headers, kind).map_err(|reason| FrameError::Stream {
            stream_id,
            status: RstStatus::ProtocolError,
            reason,
        })
    }

    fn inflate_block(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let limit = self.limits.max_header_block;
        let z = self.inflate.get_or_insert_with(|| Decompress::new(true));
        let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4 + 256).min(limit + 1));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(format!(
                        "header block decompresses to more than {limit} bytes"
                    ));
                }
                let want = (out.capacity() * 2).clamp(1024, limit + 1);
                out.reserve_exact(want - out.len());
            }
            let before_in = z.total_in();
            let before_out = out.len();
            let res = z.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (z.total_in() - before_in) as usize;
            match res {
                Ok(Status::StreamEnd) => return Err("peer ended its zlib stream".into()),
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(id) if id == DICTIONARY_ID => {
                        z.set_dictionary(DICTIONARY)
                            .map_err(|e| format!("zlib dictionary: {e}"))?;
                        continue;
                    }
                    Some(id) => {
                        return Err(format!(
                            "header block wants zlib dictionary {id:#010x}, not SPDY/3's"
                        ));
                    }
                    None => return Err(format!("header block does not decompress: {e}")),
                },
            }
            if out.len() > limit {
                return Err(format!(
                    "header block decompresses to more than {limit} bytes"
                ));
            }
            if out.len() < out.capacity() {
                if pos == input.len() {
                    return Ok(out);
                }
                if z.total_in() == before_in && out.len() == before_out {
                    return Err("header block decompression made no progress".into());
                }
            }
        }
    }
}

fn parse_block(raw: &[u8], max_headers: usize, kind: HeaderBlockKind) -> Result<Headers, String> {
    fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if r.len() < n {
            return Err("header block is truncated".into());
        }
        let (a, b) = r.split_at(n);
        *r = b;
        Ok(a)
    }
    fn take_u32(r: &mut &[u8]) -> Result<usize, String> {
        Ok(be32(take(r, 4)?) as usize)
    }
    let forbidden: &[&str] = match kind {
        HeaderBlockKind::SynStream | HeaderBlockKind::Headers => &FORBIDDEN_REQUEST_HEADERS,
        HeaderBlockKind::SynReply => &FORBIDDEN_REPLY_HEADERS,
    };
    let mut r = raw;
    let n = take_u32(&mut r)?;
    if n > max_headers {
        return Err(format!("{n} headers, more than the limit of {max_headers}"));
    }
    let mut headers = Headers::new();
    let mut names: Vec<&[u8]> = Vec::with_capacity(n);
    for _ in 0..n {
        let name_len = take_u32(&mut r)?;
        let name = take(&mut r, name_len)?;
        if name.is_empty() {
            return Err("empty header name".into());
        }
        if name.iter().any(|b| *b == 0 || b.is_ascii_uppercase()) {
            return Err(format!(
                "header name {:?} has NUL or upper case",
                String::from_utf8_lossy(name)
            ));
        }
        if names.contains(&name) {
            return Err(format!(
                "header {:?} appears twice",
                String::from_utf8_lossy(name)
            ));
        }
        names.push(name);
        let name = std::str::from_utf8(name).map_err(|_| "header name is not UTF-8".to_string())?;
        if forbidden.contains(&name) {
            return Err(format!("header {name:?} is not allowed in SPDY"));
        }
        let value_len = take_u32(&mut r)?;
        let value = take(&mut r, value_len)?;
        let value = std::str::from_utf8(value)
            .map_err(|_| format!("value of header {name:?} is not UTF-8"))?;
        for v in value.split('\0') {
            if headers.len() >= max_headers {
                return Err(format!("more than {max_headers} header values"));
            }
            headers.entries.push((name.to_string(), v.to_string()));
        }
    }
    if !r.is_empty() {
        return Err(format!("{} bytes after the header block", r.len()));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests;
