//! A SPDY/3.1 session: streams multiplexed over one upgraded connection.
//!
//! [`Session::new`] takes any `AsyncRead + AsyncWrite` (a TCP or Unix stream
//! after the HTTP upgrade, or hyper's `Upgraded` through `TokioIo`) and spawns
//! two tasks on the current tokio runtime: one reads and dispatches frames, one
//! writes every frame the session sends (so one zlib context per direction,
//! and no two writers racing on the socket).
//!
//! * Server role (kubelet's and berth's streaming server): [`Session::accept`]
//!   yields the streams the client opens, with their headers; answer each with
//!   [`IncomingStream::reply`] (SYN_REPLY) or [`IncomingStream::refuse`].
//! * Client role (kubectl, crictl, conformance): [`Session::open`] sends
//!   SYN_STREAM and waits for the SYN_REPLY.
//! * Either role can open streams (client ids odd, server ids even).
//!
//! A [`Stream`] is `AsyncRead + AsyncWrite` (and has `recv`/`send` of
//! [`Bytes`] without a copy). Shutting down its write side sends FIN; reading
//! returns end-of-file after the peer's FIN (data that came before a
//! RST_STREAM is still read first), and an error of kind `ConnectionReset`
//! after RST_STREAM. [`Stream::split`] gives an owned read half and write
//! half. Dropping a stream, or its write half, sends FIN after what was
//! written, as closing a socket does (and as spdystream's `Close` does);
//! what the peer still sends on it is dropped, and the session forgets the
//! stream at the peer's FIN. [`Stream::reset`] aborts both directions.
//!
//! PINGs from the peer are answered by the reader task (kubectl pings every
//! 5 s); [`Session::ping`] sends one and waits for the echo.
//!
//! # Flow control
//!
//! SPDY/3.1 gives each stream and the session a window (64 KiB initially) that
//! the receiver widens with WINDOW_UPDATE as data is consumed. This session
//! advertises [`Config::stream_window`] (SETTINGS INITIAL_WINDOW_SIZE) and
//! [`Config::session_window`] (WINDOW_UPDATE on stream 0), sends
//! WINDOW_UPDATE once half of a window has been read by the application, and
//! never sends more than the peer's windows allow.
//!
//! But Kubernetes' SPDY (github.com/moby/spdystream, used by kubelet,
//! client-go, kubectl) has no flow control: it never sends WINDOW_UPDATE and
//! ignores the ones it receives. Holding such a peer to its 64 KiB window
//! would stall every exec after 64 KiB. So with [`FlowControl::Auto`] (the
//! default) the session decides from the peer's first frame: a peer that opens
//! with SETTINGS or WINDOW_UPDATE (this crate always does, and SPDY/3.1 peers
//! generally do) gets full SPDY/3.1 flow control both ways, and overrunning a
//! window is an error (RST_STREAM FLOW_CONTROL_ERROR, or GOAWAY for the
//! session window). Any other peer is treated as spdystream is: its windows
//! are not enforced, no WINDOW_UPDATE is sent to it, and its data is held to
//! [`Config::stream_window`] per stream by back-pressure instead: the reader
//! stops reading the connection until the application has read the stream
//! below that bound (as spdystream itself does). [`FlowControl::Always`]
//! enforces windows whatever the peer's first frame; [`FlowControl::Never`]
//! makes this session such a peer (a client that speaks as kubelet does).
//!
//! Memory stays bounded either way: data received and not yet read is at most
//! the session window (flow-controlled peer) or one stream window per stream
//! (other peers); data written and not yet sent is at most
//! [`Config::send_buffer`] per stream; control frames the reader queues (PING
//! echoes, resets) are bounded too, and a peer that floods them is simply no
//! longer read until they are written.
//!
//! # How a session ends
//!
//! * [`Session::close`] (or dropping the last handle of the session and of all
//!   its streams): new streams are refused, data already written is sent (for
//!   at most [`Config::close_timeout`] while windows allow), streams still
//!   open are reset (CANCEL), GOAWAY(OK) is the last frame, then the
//!   connection is shut down. GOAWAY comes last on purpose: spdystream stops
//!   reading the moment it receives GOAWAY. What the peer still sends after
//!   that is read and dropped until it hangs up (at most `close_timeout`):
//!   a socket dropped with unread data answers with RST, which can destroy
//!   our last frames before the peer reads them.
//! * Idle timeout ([`Config::idle_timeout`]): no frame read or written for
//!   that long ends the session as `close` does (spdystream counts frames in
//!   both directions the same way). The peer's PINGs keep it alive.
//! * The peer's GOAWAY: streams it did not take fail; the session ends once
//!   the others are done.
//! * A protocol error by the peer: GOAWAY(PROTOCOL_ERROR) right away, then
//!   the connection is closed; streams fail with `ConnectionAborted`.
//! * The peer hangs up, or the connection fails: streams fail the same way.
//!
//! [`Session::closed`] waits for the end and says why ([`CloseReason`]).
//!
//! # Refused
//!
//! Server push (`associated_to`) and priorities are carried but not acted on;
//! HEADERS frames are accepted (their FIN honoured) but their headers dropped,
//! and none are sent (spdystream blocks its reader on HEADERS nobody asked
//! for). SETTINGS other than INITIAL_WINDOW_SIZE and MAX_CONCURRENT_STREAMS are
//! ignored. Before the client's first frame the server writes nothing, not
//! even SETTINGS: client-go reads the 101 response through a buffered reader
//! and drops whatever else that read took in.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, oneshot, watch};

use super::frame::{
    self, DEFAULT_WINDOW, Decoder, EncodeError, Encoder, Frame, FrameError, GoAway, GoAwayStatus,
    HeaderBlockKind, Headers, Limits, MAX_STREAM_ID, MAX_WINDOW, Ping, RstStatus, RstStream,
    Setting, Settings, SynReply, SynStream, WindowUpdate,
};

/// Which end of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection (sent the HTTP upgrade request): odd stream ids.
    Client,
    /// Accepted the connection: even stream ids.
    Server,
}

/// When to enforce SPDY/3.1 flow control (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlowControl {
    /// Only with a peer whose first frame is SETTINGS or WINDOW_UPDATE.
    #[default]
    Auto,
    /// With every peer (a spdystream peer would stall after 64 KiB).
    Always,
    /// With no peer, as spdystream does: no SETTINGS or WINDOW_UPDATE is
    /// sent, the peer's windows are ignored and its data is held back by
    /// not reading (a client that speaks as kubelet and crictl do).
    Never,
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// End the session when no frame has been read or written for this long.
    pub idle_timeout: Option<Duration>,
    /// When to enforce flow control.
    pub flow_control: FlowControl,
    /// Receive window of each stream (advertised with SETTINGS; at least 64 KiB,
    /// at most 2^31 - 1). Also the most a peer without flow control may have
    /// buffered on one stream before the session stops reading.
    pub stream_window: u32,
    /// Receive window of the whole session (at least 64 KiB).
    pub session_window: u32,
    /// Bytes a stream may have written but not yet sent before writes wait.
    pub send_buffer: usize,
    /// Largest DATA frame this session sends.
    pub max_frame: usize,
    /// Most streams the peer may have open at once; more are refused
    /// (RST_STREAM REFUSED_STREAM). Advertised with SETTINGS.
    pub max_concurrent_streams: u32,
    /// Streams the peer opened that may wait for [`Session::accept`] before
    /// the session stops reading the connection.
    pub accept_backlog: usize,
    /// How long closing may wait for written data to be sent, and then again
    /// for the last frames to be written, before the connection is dropped.
    pub close_timeout: Duration,
    /// Limits on what the peer may send.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: None,
            flow_control: FlowControl::Auto,
            stream_window: 256 * 1024,
            session_window: 1024 * 1024,
            send_buffer: 256 * 1024,
            max_frame: 32 * 1024,
            max_concurrent_streams: 1000,
            accept_backlog: 128,
            close_timeout: Duration::from_secs(5),
            limits: Limits::default(),
        }
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Session::close`], or every handle was dropped.
    Closed,
    /// No frame for [`Config::idle_timeout`].
    IdleTimeout,
    /// The peer sent GOAWAY (and the streams it had taken were done).
    GoAway(GoAwayStatus),
    /// The peer closed the connection without GOAWAY.
    PeerHungUp,
    /// The peer broke the protocol; it was sent GOAWAY(PROTOCOL_ERROR).
    ProtocolError(String),
    /// Reading or writing the connection failed.
    Io(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Closed => write!(f, "closed"),
            CloseReason::IdleTimeout => write!(f, "idle timeout"),
            CloseReason::GoAway(s) => write!(f, "peer sent GOAWAY ({s:?})"),
            CloseReason::PeerHungUp => write!(f, "peer closed the connection"),
            CloseReason::ProtocolError(m) => write!(f, "protocol error: {m}"),
            CloseReason::Io(m) => write!(f, "connection error: {m}"),
        }
    }
}

/// Errors of session and stream operations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The session has ended or is closing.
    #[error("SPDY session closed: {0}")]
    Closed(CloseReason),
    /// The stream was reset (by the peer, or locally).
    #[error("SPDY stream reset ({0:?})")]
    Reset(RstStatus),
    /// The peer sent GOAWAY: it takes no new streams.
    #[error("SPDY peer sent GOAWAY and takes no new streams")]
    GoneAway,
    /// All 2^30 stream ids of this side were used.
    #[error("no stream ids left on this SPDY session")]
    StreamIdsExhausted,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    #[error("the SPDY peer accepts at most {0} streams at once")]
    TooManyStreams(u32),
    /// Headers that cannot be sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Too many of our pings are waiting for their echo.
    #[error("too many SPDY pings in flight")]
    TooManyPings,
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Reset(_) => io::ErrorKind::ConnectionReset,
            Error::Encode(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, e)
    }
}

/// Counters of a session, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Streams the session tracks now.
    pub streams: usize,
    /// Received bytes waiting to be read, all streams together.
    pub buffered: usize,
    /// The most `buffered` has been.
    pub peak_buffered: usize,
    /// The most bytes one stream has had written and not yet sent.
    pub peak_send_queued: usize,
    /// Frames (or DATA pieces) read.
    pub frames_read: u64,
    /// Frames written.
    pub frames_written: u64,
    /// WINDOW_UPDATE frames written.
    pub window_updates_sent: u64,
    /// Whether flow control is in force (None before the peer's first frame).
    pub flow_control: Option<bool>,
}

/// Control frames the reader may queue before it waits for the writer.
const READER_CTRL_CAP: usize = 256;
/// Our pings that may wait for their echo at once.
const MAX_PINGS: usize = 64;
/// Bytes of DATA the writer puts in one batch before looking at control frames again.
const WRITE_BUDGET: usize = 256 * 1024;
/// The reader's buffer grows by this much when nearly full.
const READ_CHUNK: usize = 128 * 1024;
/// DATA pieces smaller than this are copied out of the read buffer rather
/// than keep a whole read chunk alive.
const COPY_BELOW: usize = 8 * 1024;

struct StreamState {
    local: bool,
    replied: bool,
    reply_tx: Option<oneshot::Sender<Result<Headers, Error>>>,
    // Receive side.
    recv: VecDeque<Bytes>,
    recv_buffered: usize,
    remote_fin: bool,
    recv_window: i64,
    recv_unacked: u32,
    wu_pending: u32,
    reader_gone: bool,
    read_waker: Option<Waker>,
    // Send side.
    send: VecDeque<Bytes>,
    send_queued: usize,
    fin_queued: bool,
    local_fin_sent: bool,
    send_window: i64,
    write_waker: Option<Waker>,
    in_ready: bool,
    // Both.
    reset: Option<RstStatus>,
    handle_gone: bool,
}

impl StreamState {
    fn new(local: bool, send_window: i64, recv_window: i64) -> Self {
        StreamState {
            local,
            replied: false,
            reply_tx: None,
            recv: VecDeque::new(),
            recv_buffered: 0,
            remote_fin: false,
            recv_window,
            recv_unacked: 0,
            wu_pending: 0,
            reader_gone: false,
            read_waker: None,
            send: VecDeque::new(),
            send_queued: 0,
            fin_queued: false,
            local_fin_sent: false,
            send_window,
            write_waker: None,
            in_ready: false,
            reset: None,
            handle_gone: false,
        }
    }

    fn finished(&self) -> bool {
        self.reset.is_some() || (self.remote_fin && self.local_fin_sent)
    }

    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    fn has_pending_send(&self) -> bool {
        self.reset.is_none() && !self.local_fin_sent && (self.send_queued > 0 || self.fin_queued)
    }
}

enum Closing {
    /// Flush, reset what is open, GOAWAY(OK), shut down.
    Graceful {
        reason: CloseReason,
        since: Instant,
        forced: bool,
    },
    /// GOAWAY(status) now, shut down.
    Abort(GoAwayStatus, CloseReason),
}

struct State {
    streams: HashMap<u32, StreamState>,
    next_stream_id: u32,
    last_peer_stream_id: u32,
    accept_queue: VecDeque<(u32, Headers)>,
    ctrl: VecDeque<Frame>,
    wu_streams: Vec<u32>,
    session_wu: u32,
    ready: VecDeque<u32>,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_streams: u32,
    recv_window: i64,
    recv_unacked: u32,
    fc: Option<bool>,
    peer_spoke: bool,
    pings: HashMap<u32, (Instant, oneshot::Sender<Duration>)>,
    next_ping_id: u32,
    goaway_received: Option<(u32, GoAwayStatus)>,
    closing: Option<Closing>,
    closed: Option<CloseReason>,
    stats: Stats,
}

struct Shared {
    role: Role,
    config: Config,
    state: Mutex<State>,
    writer_wake: Notify,
    reader_wake: Notify,
    accept_wake: Notify,
    closed_tx: watch::Sender<Option<CloseReason>>,
    start: Instant,
    last_activity_ms: AtomicU64,
}

/// Why the reader must wait before reading more.
enum Backpressure {
    None,
    Accept,
    Buffer(u32),
    Ctrl,
}

fn sanitize(mut c: Config) -> Config {
    let clamp = |w: u32| w.clamp(DEFAULT_WINDOW, MAX_WINDOW);
    c.stream_window = clamp(c.stream_window);
    c.session_window = clamp(c.session_window);
    c.send_buffer = c.send_buffer.max(1);
    c.max_frame = c.max_frame.clamp(1, frame::MAX_FRAME_LEN);
    c.accept_backlog = c.accept_backlog.max(1);
    c
}

impl State {
    fn fc_on(&self) -> bool {
        self.fc == Some(true)
    }

    fn closing_or_closed(&self) -> bool {
        self.closing.is_some() || self.closed.is_some()
    }

    fn close_error(&self) -> Error {
        Error::Closed(self.closed.clone().unwrap_or(match &self.closing {
            Some(Closing::Graceful { reason, .. }) | Some(Closing::Abort(_, reason)) => {
                reason.clone()
            }
            None => CloseReason::Closed,
        }))
    }

    /// Starts a graceful close unless the session is already ending.
    fn begin_close(&mut self, reason: CloseReason) {
        if self.closing.is_none() && self.closed.is_none() {
            self.closing = Some(Closing::Graceful {
                reason,
                since: Instant::now(),
                forced: false,
            });
        }
    }

    fn abort(&mut self, status: GoAwayStatus, reason: CloseReason) {
        if self.closed.is_none() && !matches!(self.closing, Some(Closing::Abort(..))) {
            self.closing = Some(Closing::Abort(status, reason));
        }
    }

    fn push_ready(&mut self, id: u32) {
        if let Some(st) = self.streams.get_mut(&id)
            && !st.in_ready
            && st.has_pending_send()
        {
            st.in_ready = true;
            self.ready.push_back(id);
        }
    }

    fn rst(&mut self, stream_id: u32, status: RstStatus) {
        self.ctrl
            .push_back(Frame::RstStream(RstStream { stream_id, status }));
    }

    /// Resets a stream locally (and tells the peer unless `tell` is false).
    fn reset_stream(&mut self, cfg: &Config, id: u32, status: RstStatus, tell: bool) {
        let Some(st) = self.streams.get_mut(&id) else {
            if tell {
                self.rst(id, status);
            }
            return;
        };
        if st.reset.is_some() {
            return;
        }
        st.reset = Some(status);
        st.send.clear();
        st.send_queued = 0;
        if let Some(tx) = st.reply_tx.take() {
            let _ = tx.send(Err(Error::Reset(status)));
        }
        st.wake();
        if st.handle_gone || st.reader_gone {
            self.discard_recv(cfg, id);
        }
        if tell {
            self.rst(id, status);
        }
    }

    /// Drops the unread data of a stream, crediting the session window.
    fn discard_recv(&mut self, cfg: &Config, id: u32) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        let n = st.recv_buffered;
        st.recv.clear();
        st.recv_buffered = 0;
        self.stats.buffered -= n;
        self.credit(cfg, Some(id), n);
    }

    /// Notes that `n` received bytes were consumed (read or dropped) and queues
    /// WINDOW_UPDATEs once half a window is used up.
    fn credit(&mut self, cfg: &Config, id: Option<u32>, n: usize) {
        if !self.fc_on() || n == 0 {
            return;
        }
        let n = n as u32;
        self.recv_unacked += n;
        if self.recv_unacked >= cfg.session_window / 2 {
            self.session_wu += self.recv_unacked;
            self.recv_window += self.recv_unacked as i64;
            self.recv_unacked = 0;
        }
        let Some(id) = id else { return };
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if st.remote_fin || st.reset.is_some() {
            return;
        }
        st.recv_unacked += n;
        if st.recv_unacked >= cfg.stream_window / 2 {
            if st.wu_pending == 0 {
                self.wu_streams.push(id);
            }
            st.wu_pending += st.recv_unacked;
            st.recv_window += st.recv_unacked as i64;
            st.recv_unacked = 0;
        }
    }

    /// Forgets a stream nobody can use any more.
    fn maybe_remove(&mut self, cfg: &Config, id: u32) {
        let Some(st) = self.streams.get(&id) else {
            return;
        };
        if st.handle_gone && st.finished() {
            if st.recv_buffered > 0 {
                self.discard_recv(cfg, id);
            }
            self.streams.remove(&id);
        }
    }

    fn active_streams(&self, local: bool) -> usize {
        self.streams
            .values()
            .filter(|s| s.local == local && !s.finished())
            .count()
    }

    /// After the peer's GOAWAY the session ends once no stream is left open.
    fn check_drained(&mut self) {
        if let Some((_, status)) = self.goaway_received
            && !self
                .streams
                .values()
                .any(|s| !s.finished() || s.has_pending_send())
        {
            self.begin_close(CloseReason::GoAway(status));
        }
    }

    fn is_peer_id(&self, role: Role, id: u32) -> bool {
        match role {
            Role::Server => id % 2 == 1,
            Role::Client => id.is_multiple_of(2),
        }
    }
}

fn initial_frames(cfg: &Config) -> Vec<Frame> {
    let mut out = vec![Frame::Settings(Settings {
        clear_previous: false,
        entries: vec![
            Setting {
                flags: 0,
                id: frame::setting::MAX_CONCURRENT_STREAMS,
                value: cfg.max_concurrent_streams,
            },
            Setting {
                flags: 0,
                id: frame::setting::INITIAL_WINDOW_SIZE,
                value: cfg.stream_window,
            },
        ],
    })];
    if cfg.session_window > DEFAULT_WINDOW {
        out.push(Frame::WindowUpdate(WindowUpdate {
            stream_id: 0,
            delta: cfg.session_window - DEFAULT_WINDOW,
        }));
    }
    out
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_deadline(&self) -> Option<tokio::time::Instant> {
        let idle = self.config.idle_timeout?;
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        Some(tokio::time::Instant::from_std(self.start + last + idle))
    }

    /// Marks the session over and wakes everything waiting on it.
    fn terminate(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        tracing::debug!(role = ?self.role, %reason, "SPDY session ended");
        st.closed = Some(reason.clone());
        for s in st.streams.values_mut() {
            if let Some(tx) = s.reply_tx.take() {
                let _ = tx.send(Err(Error::Closed(reason.clone())));
            }
            s.wake();
        }
        st.pings.clear();
        drop(st);
        self.closed_tx.send_replace(Some(reason));
        self.accept_wake.notify_waiters();
        self.reader_wake.notify_one();
        self.writer_wake.notify_one();
    }

    fn begin_close(&self, reason: CloseReason) {
        self.lock().begin_close(reason);
        self.accept_wake.notify_waiters();
        self.writer_wake.notify_one();
    }

    fn closed_reason(&self) -> Option<CloseReason> {
        self.closed_tx.borrow().clone()
    }

    async fn wait_closed(&self) -> CloseReason {
        let mut rx = self.closed_tx.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return CloseReason::Closed;
            }
        }
    }

    // ---- reader side ----

    fn on_frame(&self, frame: Frame) -> Backpressure {
        let cfg = &self.config;
        let mut st = self.lock();
        st.stats.frames_read += 1;
        if !st.peer_spoke {
            st.peer_spoke = true;
            let aware = matches!(frame, Frame::Settings(_) | Frame::WindowUpdate(_));
            let fc = match cfg.flow_control {
                FlowControl::Auto => aware,
                FlowControl::Always => true,
                FlowControl::Never => false,
            };
            st.fc = Some(fc);
            st.stats.flow_control = Some(fc);
            tracing::debug!(role = ?self.role, flow_control = fc, "SPDY peer's first frame");
            if self.role == Role::Server && fc {
                for f in initial_frames(cfg) {
                    st.ctrl.push_back(f);
                }
            }
            self.writer_wake.notify_one();
        }
        let bp = match frame {
            Frame::SynStream(s) => self.on_syn_stream(&mut st, s),
            Frame::SynReply(r) => {
                self.on_syn_reply(&mut st, r);
                Backpressure::Ctrl
            }
            Frame::RstStream(r) => {
                if let Some(s) = st.streams.get_mut(&r.stream_id) {
                    if s.reset.is_none() {
                        s.reset = Some(r.status);
                        s.send.clear();
                        s.send_queued = 0;
                        if let Some(tx) = s.reply_tx.take() {
                            let _ = tx.send(Err(Error::Reset(r.status)));
                        }
                        s.wake();
                    }
                    st.maybe_remove(cfg, r.stream_id);
                }
                Backpressure::None
            }
            Frame::Settings(s) => {
                if let Some(v) = s.get(frame::setting::INITIAL_WINDOW_SIZE) {
                    if v > MAX_WINDOW {
                        st.abort(
                            GoAwayStatus::ProtocolError,
                            CloseReason::ProtocolError(format!(
                                "initial window size {v} is over 2^31-1"
                            )),
                        );
                    } else {
                        let delta = v as i64 - st.peer_initial_window;
                        st.peer_initial_window = v as i64;
                        let ids: Vec<u32> = st.streams.keys().copied().collect();
                        for id in ids {
                            if let Some(s) = st.streams.get_mut(&id) {
                                s.send_window += delta;
                            }
                            st.push_ready(id);
                        }
                    }
                }
                if let Some(v) = s.get(frame::setting::MAX_CONCURRENT_STREAMS) {
                    st.peer_max_streams = v;
                }
                Backpressure::None
            }
            Frame::Ping(p) => {
                let ours = (p.id % 2 == 1) == (self.role == Role::Client);
                if ours {
                    if let Some((t0, tx)) = st.pings.remove(&p.id) {
                        let _ = tx.send(t0.elapsed());
                    }
                    Backpressure::None
                } else {
                    st.ctrl.push_back(Frame::Ping(p));
                    Backpressure::Ctrl
                }
            }
            Frame::GoAway(g) => {
                tracing::debug!(role = ?self.role, last_good = g.last_good_stream_id, status = ?g.status, "SPDY GOAWAY received");
                st.goaway_received = Some((g.last_good_stream_id, g.status));
                let refused: Vec<u32> = st
                    .streams
                    .iter()
                    .filter(|(id, s)| s.local && **id > g.last_good_stream_id && s.reset.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                for id in refused {
                    if let Some(s) = st.streams.get_mut(&id)
                        && let Some(tx) = s.reply_tx.take()
                    {
                        let _ = tx.send(Err(Error::GoneAway));
                    }
                    st.reset_stream(cfg, id, RstStatus::RefusedStream, false);
                    st.maybe_remove(cfg, id);
                }
                Backpressure::None
            }
            Frame::Headers(h) => {
                if let Some(s) = st.streams.get_mut(&h.stream_id)
                    && s.reset.is_none()
                    && h.fin
                {
                    s.remote_fin = true;
                    s.wake();
                    st.maybe_remove(cfg, h.stream_id);
                }
                Backpressure::None
            }
            Frame::WindowUpdate(w) => {
                if st.fc_on() && w.delta > 0 {
                    if w.stream_id == 0 {
                        st.send_window += w.delta as i64;
                        if st.send_window > MAX_WINDOW as i64 {
                            st.abort(
                                GoAwayStatus::ProtocolError,
                                CloseReason::ProtocolError("session window over 2^31-1".into()),
                            );
                        }
                        let ids: Vec<u32> = st.streams.keys().copied().collect();
                        for id in ids {
                            st.push_ready(id);
                        }
                    } else if let Some(s) = st.streams.get_mut(&w.stream_id) {
                        s.send_window += w.delta as i64;
                        if s.send_window > MAX_WINDOW as i64 {
                            st.reset_stream(cfg, w.stream_id, RstStatus::FlowControlError, true);
                        } else {
                            st.push_ready(w.stream_id);
                        }
                    }
                }
                Backpressure::None
            }
            Frame::Data(d) => self.on_data(&mut st, d),
        };
        st.check_drained();
        if !st.ctrl.is_empty() || !st.ready.is_empty() || st.closing.is_some() {
            self.writer_wake.notify_one();
        }
        bp
    }

    fn on_syn_stream(&self, st: &mut State, s: SynStream) -> Backpressure {
        let cfg = &self.config;
        let id = s.stream_id;
        if !st.is_peer_id(self.role, id) || id <= st.last_peer_stream_id {
            st.abort(
                GoAwayStatus::ProtocolError,
                CloseReason::ProtocolError(format!(
                    "SYN_STREAM {id} after {} or of the wrong parity",
                    st.last_peer_stream_id
                )),
            );
            return Backpressure::None;
        }
        st.last_peer_stream_id = id;
        if st.closing_or_closed() {
            // Draft 3, 2.6.6: after GOAWAY new streams are ignored.
            return Backpressure::None;
        }
        if st.active_streams(false) >= cfg.max_concurrent_streams as usize {
            st.rst(id, RstStatus::RefusedStream);
            return Backpressure::Ctrl;
        }
        let mut state = StreamState::new(false, st.peer_initial_window, cfg.stream_window as i64);
        state.remote_fin = s.fin;
        state.local_fin_sent = s.unidirectional;
        st.streams.insert(id, state);
        st.accept_queue.push_back((id, s.headers));
        self.accept_wake.notify_waiters();
        if st.accept_queue.len() > cfg.accept_backlog {
            Backpressure::Accept
        } else {
            Backpressure::None
        }
    }

    fn on_syn_reply(&self, st: &mut State, r: SynReply) {
        let cfg = &self.config;
        let id = r.stream_id;
        match st.streams.get_mut(&id) {
            Some(s) if s.local && !s.replied => {
                s.replied = true;
                if r.fin {
                    s.remote_fin = true;
                }
                if let Some(tx) = s.reply_tx.take() {
                    let _ = tx.send(Ok(r.headers));
                }
                s.wake();
            }
            Some(s) if s.reset.is_some() => {}
            Some(s) => {
                let status = if s.local {
                    RstStatus::StreamInUse
                } else {
                    RstStatus::ProtocolError
                };
                st.reset_stream(cfg, id, status, true);
            }
            None => {
                let ours_before = !st.is_peer_id(self.role, id) && id < st.next_stream_id;
                if !ours_before {
                    st.rst(id, RstStatus::InvalidStream);
                }
            }
        }
    }

    fn on_data(&self, st: &mut State, d: frame::Data) -> Backpressure {
        let cfg = &self.config;
        let id = d.stream_id;
        let n = d.data.len();
        let fc = st.fc_on();
        if fc {
            if n as i64 > st.recv_window {
                st.abort(
                    GoAwayStatus::ProtocolError,
                    CloseReason::ProtocolError("peer overran the session window".into()),
                );
                return Backpressure::None;
            }
            st.recv_window -= n as i64;
        }
        let Some(s) = st.streams.get_mut(&id) else {
            st.credit(cfg, None, n);
            let known = if st.is_peer_id(self.role, id) {
                id <= st.last_peer_stream_id
            } else {
                id < st.next_stream_id
            };
            if !known {
                st.rst(id, RstStatus::InvalidStream);
                return Backpressure::Ctrl;
            }
            return Backpressure::None;
        };
        if s.reset.is_some() {
            st.credit(cfg, None, n);
            return Backpressure::None;
        }
        if s.remote_fin {
            st.credit(cfg, None, n);
            st.reset_stream(cfg, id, RstStatus::StreamAlreadyClosed, true);
            return Backpressure::Ctrl;
        }
        if fc {
            if n as i64 > s.recv_window {
                st.credit(cfg, None, n);
                st.reset_stream(cfg, id, RstStatus::FlowControlError, true);
                return Backpressure::Ctrl;
            }
            s.recv_window -= n as i64;
        }
        if d.fin {
            s.remote_fin = true;
        }
        let mut wait = false;
        if s.reader_gone {
            st.credit(cfg, Some(id), n);
        } else if n > 0 {
            let data = if n < COPY_BELOW {
                Bytes::copy_from_slice(&d.data)
            } else {
                d.data
            };
            s.recv.push_back(data);
            s.recv_buffered += n;
            wait = !fc && s.recv_buffered > cfg.stream_window as usize;
            st.stats.buffered += n;
            st.stats.peak_buffered = st.stats.peak_buffered.max(st.stats.buffered);
        }
        if let Some(s) = st.streams.get_mut(&id) {
            s.wake();
        }
        st.maybe_remove(cfg, id);
        if wait {
            Backpressure::Buffer(id)
        } else {
            Backpressure::None
        }
    }

    fn on_stream_error(&self, stream_id: u32, status: RstStatus, reason: &str) {
        tracing::debug!(role = ?self.role, stream_id, ?status, reason, "SPDY stream error");
        let cfg = &self.config;
        let mut st = self.lock();
        if st.is_peer_id(self.role, stream_id) && stream_id > st.last_peer_stream_id {
            st.last_peer_stream_id = stream_id;
        }
        if st.streams.contains_key(&stream_id) {
            st.reset_stream(cfg, stream_id, status, true);
            st.maybe_remove(cfg, stream_id);
        } else {
            st.rst(stream_id, status);
        }
        drop(st);
        self.writer_wake.notify_one();
    }

    /// Whether the reader may read on.
    fn relieved(&self, bp: &Backpressure) -> bool {
        let st = self.lock();
        if st.closed.is_some() || matches!(st.closing, Some(Closing::Abort(..))) {
            return true;
        }
        match bp {
            Backpressure::None => true,
            Backpressure::Accept => {
                st.accept_queue.len() <= self.config.accept_backlog || st.closing.is_some()
            }
            Backpressure::Ctrl => st.ctrl.len() < READER_CTRL_CAP,
            Backpressure::Buffer(id) => match st.streams.get(id) {
                Some(s) => {
                    s.recv_buffered <= self.config.stream_window as usize
                        || s.reset.is_some()
                        || s.reader_gone
                }
                None => true,
            },
        }
    }

    /// Why the session ends when the peer closes the connection: the close
    /// under way, or the peer's GOAWAY, or else a hang-up.
    fn eof_reason(&self) -> CloseReason {
        let st = self.lock();
        match (&st.closing, st.goaway_received) {
            (Some(Closing::Graceful { reason, .. }), _) | (Some(Closing::Abort(_, reason)), _) => {
                reason.clone()
            }
            (None, Some((_, status))) => CloseReason::GoAway(status),
            (None, None) => CloseReason::PeerHungUp,
        }
    }

    fn reader_should_stop(&self) -> bool {
        let st = self.lock();
        st.closed.is_some() || matches!(st.closing, Some(Closing::Abort(..)))
    }

    // ---- writer side ----

    /// Takes what the writer should write next.
    fn next_batch(&self, batch: &mut Vec<Out>) -> Step {
        let cfg = &self.config;
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closed.is_some() {
            return Step::Exit;
        }
        if let Some(Closing::Abort(status, reason)) = &st.closing {
            batch.push(Out::Frame(Frame::GoAway(GoAway {
                last_good_stream_id: st.last_peer_stream_id,
                status: *status,
            })));
            return Step::Finish(reason.clone());
        }
        if self.role == Role::Server && !st.peer_spoke {
            if let Some(Closing::Graceful { reason, .. }) = &st.closing {
                return Step::Finish(reason.clone());
            }
            return Step::Wait;
        }
        batch.extend(st.ctrl.drain(..).map(Out::Frame));
        if !st.wu_streams.is_empty() {
            let ids = std::mem::take(&mut st.wu_streams);
            for id in ids {
                if let Some(s) = st.streams.get_mut(&id) {
                    let delta = std::mem::take(&mut s.wu_pending);
                    if delta > 0 && s.reset.is_none() && !s.remote_fin {
                        batch.push(Out::Frame(Frame::WindowUpdate(WindowUpdate {
                            stream_id: id,
                            delta,
                        })));
                        st.stats.window_updates_sent += 1;
                    }
                }
            }
        }
        if st.session_wu > 0 {
            let delta = std::mem::take(&mut st.session_wu);
            batch.push(Out::Frame(Frame::WindowUpdate(WindowUpdate {
                stream_id: 0,
                delta,
            })));
            st.stats.window_updates_sent += 1;
        }
        let fc = st.fc_on();
        let mut budget = WRITE_BUDGET;
        while budget > 0 {
            let Some(id) = st.ready.pop_front() else {
                break;
            };
            let session_window = st.send_window;
            let Some(s) = st.streams.get_mut(&id) else {
                continue;
            };
            s.in_ready = false;
            if !s.has_pending_send() {
                continue;
            }
            let mut allow = cfg.max_frame.min(budget);
            if fc {
                allow = allow
                    .min(s.send_window.max(0) as usize)
                    .min(session_window.max(0) as usize);
            }
            let take = allow.min(s.send_queued);
            if take == 0 && s.send_queued > 0 {
                // Blocked by a window: a WINDOW_UPDATE puts it back.
                continue;
            }
            let mut pieces = Vec::new();
            let mut left = take;
            while left > 0 {
                let Some(front) = s.send.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    if let Some(b) = s.send.pop_front() {
                        pieces.push(b);
                    }
                } else {
                    pieces.push(front.split_to(left));
                    left = 0;
                }
            }
            s.send_queued -= take;
            if fc {
                s.send_window -= take as i64;
            }
            let fin = s.fin_queued && s.send_queued == 0;
            if fin {
                s.local_fin_sent = true;
            }
            if let Some(w) = s.write_waker.take() {
                w.wake();
            }
            let again = s.has_pending_send();
            if fc {
                st.send_window -= take as i64;
            }
            batch.push(Out::Data {
                stream_id: id,
                fin,
                pieces,
                len: take,
            });
            budget -= take.min(budget);
            if again {
                st.push_ready(id);
            }
            st.maybe_remove(cfg, id);
        }
        st.check_drained();
        if let Some(Closing::Graceful { reason, forced, .. }) = &st.closing {
            let reason = reason.clone();
            let forced = *forced;
            if !batch.is_empty() && !forced {
                return Step::Write;
            }
            let pending = st.streams.values().any(|s| s.has_pending_send());
            if pending && !forced {
                // Data waits for the peer's window: wait for it, up to the close timeout.
                return Step::Wait;
            }
            let last_good = st.last_peer_stream_id;
            let ids: Vec<u32> = st.streams.keys().copied().collect();
            for id in ids {
                if let Some(s) = st.streams.get_mut(&id)
                    && !s.finished()
                {
                    s.reset = Some(RstStatus::Cancel);
                    s.send.clear();
                    s.send_queued = 0;
                    s.wake();
                    batch.push(Out::Frame(Frame::RstStream(RstStream {
                        stream_id: id,
                        status: RstStatus::Cancel,
                    })));
                }
            }
            batch.push(Out::Frame(Frame::GoAway(GoAway {
                last_good_stream_id: last_good,
                status: GoAwayStatus::Ok,
            })));
            return Step::Finish(reason);
        }
        if batch.is_empty() {
            Step::Wait
        } else {
            Step::Write
        }
    }

    fn close_deadlines(&self) -> Option<(Instant, bool)> {
        match &self.lock().closing {
            Some(Closing::Graceful { since, forced, .. }) => {
                Some((*since + self.config.close_timeout, *forced))
            }
            _ => None,
        }
    }

    fn force_close(&self) {
        if let Some(Closing::Graceful { forced, .. }) = &mut self.lock().closing {
            *forced = true;
        }
    }
}

enum Out {
    Frame(Frame),
    Data {
        stream_id: u32,
        fin: bool,
        pieces: Vec<Bytes>,
        len: usize,
    },
}

enum Step {
    Wait,
    Write,
    Finish(CloseReason),
    Exit,
}

async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R) {
    if read_frames(&shared, &mut rd).await {
        linger(&shared, &mut rd).await;
    }
}

/// After this end's GOAWAY (a close, or a protocol error): what the peer
/// still sends (its FINs, its GOAWAY) is read and dropped until it hangs up
/// too, for at most [`Config::close_timeout`]. Dropping a TCP connection
/// with unread data, or receiving data after dropping it, makes the kernel
/// answer with RST, and an RST lets the peer's kernel throw away what this
/// end wrote last and the peer has not read yet (an exec's status on the
/// error stream): the close has to linger, as HTTP servers' does. The
/// session is over already ([`Session::closed`] does not wait for this).
async fn linger<R: AsyncRead + Unpin>(shared: &Shared, rd: &mut R) {
    if matches!(shared.closed_reason(), Some(CloseReason::Io(_))) {
        return;
    }
    let mut scratch = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(shared.config.close_timeout, drain).await;
}

/// Reads and dispatches frames until the session ends; true if it ended by
/// this end's GOAWAY (the peer has not hung up: [`linger`]).
async fn read_frames<R: AsyncRead + Unpin>(shared: &Shared, rd: &mut R) -> bool {
    let mut dec = Decoder::new(shared.config.limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut closed_rx = shared.closed_tx.subscribe();
    loop {
        // Dispatch every complete frame in the buffer.
        loop {
            if shared.reader_should_stop() {
                return true;
            }
            let bp = match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    shared.touch();
                    shared.on_frame(frame)
                }
                Ok(None) => break,
                Err(FrameError::Stream {
                    stream_id,
                    status,
                    reason,
                }) => {
                    shared.touch();
                    shared.on_stream_error(stream_id, status, &reason);
                    Backpressure::Ctrl
                }
                Err(FrameError::Session(msg)) => {
                    tracing::debug!(role = ?shared.role, %msg, "SPDY protocol error from peer");
                    shared
                        .lock()
                        .abort(GoAwayStatus::ProtocolError, CloseReason::ProtocolError(msg));
                    shared.writer_wake.notify_one();
                    return true;
                }
            };
            if !matches!(bp, Backpressure::None) {
                shared.writer_wake.notify_one();
            }
            while !shared.relieved(&bp) {
                tokio::select! {
                    _ = shared.reader_wake.notified() => {}
                    _ = idle(shared) => shared.begin_close(CloseReason::IdleTimeout),
                    _ = closed_rx.changed() => {}
                }
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => {
                    shared.terminate(shared.eof_reason());
                    return false;
                }
                Ok(_) => {}
                Err(e) => {
                    shared.terminate(CloseReason::Io(e.to_string()));
                    return false;
                }
            },
            _ = idle(shared) => shared.begin_close(CloseReason::IdleTimeout),
            _ = closed_rx.changed() => {}
        }
    }
}

/// Resolves when the session has been idle for its idle timeout (never while
/// it is already closing, or without a timeout).
async fn idle(shared: &Shared) {
    loop {
        let Some(deadline) = shared.idle_deadline() else {
            return std::future::pending().await;
        };
        if shared.lock().closing_or_closed() {
            return std::future::pending().await;
        }
        tokio::time::sleep_until(deadline).await;
        if shared
            .idle_deadline()
            .is_some_and(|d| d <= tokio::time::Instant::now())
        {
            return;
        }
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut wr: W) {
    let mut enc = Encoder::new();
    let mut out = BytesMut::with_capacity(WRITE_BUDGET + 4096);
    let mut batch = Vec::new();
    loop {
        let step = shared.next_batch(&mut batch);
        let finish = match step {
            Step::Exit => return,
            Step::Wait => {
                match shared.close_deadlines() {
                    Some((deadline, false)) => {
                        let deadline = tokio::time::Instant::from_std(deadline);
                        tokio::select! {
                            _ = shared.writer_wake.notified() => {}
                            _ = tokio::time::sleep_until(deadline) => shared.force_close(),
                        }
                    }
                    _ => shared.writer_wake.notified().await,
                }
                continue;
            }
            Step::Write => None,
            Step::Finish(reason) => Some(reason),
        };
        let mut n_frames = 0u64;
        for item in batch.drain(..) {
            let r = match item {
                Out::Frame(f) => enc.encode(&f, &mut out),
                Out::Data {
                    stream_id,
                    fin,
                    pieces,
                    len,
                } => frame::put_data_header(&mut out, stream_id, fin, len).map(|()| {
                    for p in pieces {
                        out.extend_from_slice(&p);
                    }
                }),
            };
            if let Err(e) = r {
                // Headers are validated before they are queued, so this is a bug.
                tracing::error!(role = ?shared.role, error = %e, "SPDY frame could not be encoded");
                shared.terminate(CloseReason::Io(format!("encoding a frame: {e}")));
                return;
            }
            n_frames += 1;
        }
        let closing = shared.close_deadlines().is_some() || finish.is_some();
        let write = async {
            wr.write_all(&out).await?;
            if finish.is_some() || !closing {
                wr.flush().await?;
            }
            if finish.is_some() {
                wr.shutdown().await?;
            }
            Ok::<(), io::Error>(())
        };
        let res = if closing {
            match tokio::time::timeout(shared.config.close_timeout, write).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer is not reading",
                )),
            }
        } else {
            write.await
        };
        out.clear();
        if out.capacity() > 4 * WRITE_BUDGET {
            out = BytesMut::with_capacity(WRITE_BUDGET + 4096);
        }
        {
            let mut st = shared.lock();
            st.stats.frames_written += n_frames;
        }
        shared.touch();
        match (res, finish) {
            (Err(e), Some(reason)) => {
                tracing::debug!(role = ?shared.role, error = %e, "SPDY last frames not written");
                shared.terminate(reason);
                return;
            }
            (Err(e), None) => {
                shared.terminate(CloseReason::Io(e.to_string()));
                return;
            }
            (Ok(()), Some(reason)) => {
                shared.terminate(reason);
                return;
            }
            (Ok(()), None) => {}
        }
    }
}

/// Keeps the session open while any handle (session, incoming stream,
/// stream) lives; the last one to go closes it.
struct Guard {
    shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.begin_close(CloseReason::Closed);
    }
}

/// A SPDY session (cheap to clone; all clones are the same session).
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.shared.role)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Session {
    /// Starts a session over `io`, spawning its reader and writer tasks on the
    /// current tokio runtime (panics outside one, as `tokio::spawn` does).
    pub fn new<T>(io: T, role: Role, config: Config) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let config = sanitize(config);
        let (rd, wr) = tokio::io::split(io);
        let mut ctrl = VecDeque::new();
        if role == Role::Client && config.flow_control != FlowControl::Never {
            ctrl.extend(initial_frames(&config));
        }
        let state = State {
            streams: HashMap::new(),
            next_stream_id: if role == Role::Client { 1 } else { 2 },
            last_peer_stream_id: 0,
            accept_queue: VecDeque::new(),
            ctrl,
            wu_streams: Vec::new(),
            session_wu: 0,
            ready: VecDeque::new(),
            send_window: DEFAULT_WINDOW as i64,
            peer_initial_window: DEFAULT_WINDOW as i64,
            peer_max_streams: u32::MAX,
            recv_window: config.session_window as i64,
            recv_unacked: 0,
            fc: None,
            peer_spoke: false,
            pings: HashMap::new(),
            next_ping_id: if role == Role::Client { 1 } else { 2 },
            goaway_received: None,
            closing: None,
            closed: None,
            stats: Stats::default(),
        };
        let shared = Arc::new(Shared {
            role,
            config,
            state: Mutex::new(state),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            accept_wake: Notify::new(),
            closed_tx: watch::Sender::new(None),
            start: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        });
        tokio::spawn(reader_task(shared.clone(), rd));
        tokio::spawn(writer_task(shared.clone(), wr));
        Session {
            guard: Arc::new(Guard {
                shared: shared.clone(),
            }),
            shared,
        }
    }

    /// [`Session::new`] in the client role.
    pub fn client<T>(io: T, config: Config) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::new(io, Role::Client, config)
    }

    /// [`Session::new`] in the server role.
    pub fn server<T>(io: T, config: Config) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::new(io, Role::Server, config)
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// Opens a stream (SYN_STREAM with `headers`) and waits for the peer's
    /// SYN_REPLY. Dropping the future before then resets the stream (CANCEL).
    pub async fn open(&self, headers: Headers) -> Result<Stream, Error> {
        headers.validate(HeaderBlockKind::SynStream)?;
        let cfg = &self.shared.config;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            if st.closing_or_closed() {
                return Err(st.close_error());
            }
            if st.goaway_received.is_some() {
                return Err(Error::GoneAway);
            }
            let id = st.next_stream_id;
            if id > MAX_STREAM_ID {
                return Err(Error::StreamIdsExhausted);
            }
            if st.active_streams(true) >= st.peer_max_streams as usize {
                return Err(Error::TooManyStreams(st.peer_max_streams));
            }
            st.next_stream_id += 2;
            let mut s = StreamState::new(true, st.peer_initial_window, cfg.stream_window as i64);
            s.reply_tx = Some(tx);
            st.streams.insert(id, s);
            st.ctrl.push_back(Frame::SynStream(SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: headers.clone(),
            }));
            id
        };
        self.shared.writer_wake.notify_one();
        let pending = Pending {
            core: Some(StreamCore {
                shared: self.shared.clone(),
                _guard: self.guard.clone(),
                id,
            }),
            status: RstStatus::Cancel,
        };
        let reply = match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.shared.lock().close_error()),
        };
        let reply_headers = reply?;
        Ok(Stream::new(pending.take(), headers, reply_headers))
    }

    /// The next stream the peer opened, or None once the session is closing.
    /// Answer it with [`IncomingStream::reply`].
    pub async fn accept(&self) -> Option<IncomingStream> {
        loop {
            let notified = self.shared.accept_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let cfg = &self.shared.config;
                let mut st = self.shared.lock();
                while let Some((id, headers)) = st.accept_queue.pop_front() {
                    self.shared.reader_wake.notify_one();
                    match st.streams.get_mut(&id) {
                        Some(s) if s.reset.is_none() => {
                            return Some(IncomingStream {
                                pending: Pending {
                                    core: Some(StreamCore {
                                        shared: self.shared.clone(),
                                        _guard: self.guard.clone(),
                                        id,
                                    }),
                                    status: RstStatus::RefusedStream,
                                },
                                headers,
                            });
                        }
                        Some(s) => {
                            s.handle_gone = true;
                            s.reader_gone = true;
                            st.maybe_remove(cfg, id);
                        }
                        None => {}
                    }
                }
                if st.closing_or_closed() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Sends a PING and waits for its echo; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.closing_or_closed() {
                return Err(st.close_error());
            }
            if st.pings.len() >= MAX_PINGS {
                return Err(Error::TooManyPings);
            }
            let id = st.next_ping_id;
            // Client pings are odd, server pings even; 0 is never used (Go's framer refuses it).
            st.next_ping_id = if id >= u32::MAX - 2 {
                2 - id % 2
            } else {
                id + 2
            };
            st.pings.insert(id, (Instant::now(), tx));
            st.ctrl.push_back(Frame::Ping(Ping { id }));
        }
        self.shared.writer_wake.notify_one();
        match rx.await {
            Ok(d) => Ok(d),
            Err(_) => Err(self.shared.lock().close_error()),
        }
    }

    /// Closes the session (see the module docs) and waits until it is over.
    pub async fn close(&self) -> CloseReason {
        self.shared.begin_close(CloseReason::Closed);
        self.shared.wait_closed().await
    }

    /// Waits until the session is over.
    pub async fn closed(&self) -> CloseReason {
        self.shared.wait_closed().await
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.closed_reason()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        Stats {
            streams: st.streams.len(),
            ..st.stats
        }
    }
}

/// One stream's link to its session; the last handle of a stream drops it.
struct StreamCore {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
    id: u32,
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        let cfg = &self.shared.config;
        let mut st = self.shared.lock();
        let id = self.id;
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        s.handle_gone = true;
        s.reader_gone = true;
        if s.reset.is_none() && !s.fin_queued && !s.local_fin_sent {
            // Like closing a socket: FIN after what was written. What the
            // peer still sends is dropped (and credited) until its FIN.
            s.fin_queued = true;
            st.push_ready(id);
        }
        st.discard_recv(cfg, id);
        st.maybe_remove(cfg, id);
        st.check_drained();
        drop(st);
        self.shared.writer_wake.notify_one();
        self.shared.reader_wake.notify_one();
    }
}

/// A stream not yet answered (opened, awaiting SYN_REPLY; or accepted, not
/// yet replied): dropping it resets the stream with `status`.
struct Pending {
    core: Option<StreamCore>,
    status: RstStatus,
}

impl Pending {
    fn take(mut self) -> StreamCore {
        match self.core.take() {
            Some(c) => c,
            None => unreachable!("Pending holds its core until taken"),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(core) = &self.core {
            let cfg = &core.shared.config;
            let mut st = core.shared.lock();
            if st.closed.is_none() {
                st.reset_stream(cfg, core.id, self.status, true);
            }
            drop(st);
            core.shared.writer_wake.notify_one();
        }
    }
}

/// A stream the peer opened, waiting for our answer. Dropping it refuses the
/// stream (RST_STREAM REFUSED_STREAM).
pub struct IncomingStream {
    pending: Pending,
    headers: Headers,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id())
            .field("headers", &self.headers)
            .finish()
    }
}

impl IncomingStream {
    /// The stream id (odd when the client opened it).
    pub fn id(&self) -> u32 {
        self.pending.core.as_ref().map_or(0, |c| c.id)
    }

    /// The headers of the peer's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Accepts the stream: queues SYN_REPLY with `headers` (which goes out
    /// before anything written to the stream).
    pub fn reply(self, headers: Headers) -> Result<Stream, Error> {
        headers.validate(HeaderBlockKind::SynReply)?;
        let core = self.pending.core.as_ref().map(|c| (c.shared.clone(), c.id));
        let Some((shared, id)) = core else {
            return Err(Error::Closed(CloseReason::Closed));
        };
        {
            let mut st = shared.lock();
            if st.closing_or_closed() {
                return Err(st.close_error());
            }
            match st.streams.get_mut(&id) {
                Some(s) if s.reset.is_none() => s.replied = true,
                Some(s) => return Err(Error::Reset(s.reset.unwrap_or(RstStatus::Cancel))),
                None => return Err(Error::Reset(RstStatus::Cancel)),
            }
            st.ctrl.push_back(Frame::SynReply(SynReply {
                stream_id: id,
                fin: false,
                headers: headers.clone(),
            }));
            st.push_ready(id);
        }
        shared.writer_wake.notify_one();
        let IncomingStream {
            pending,
            headers: request,
        } = self;
        Ok(Stream::new(pending.take(), request, headers))
    }

    /// Refuses the stream (RST_STREAM REFUSED_STREAM), as kubelet does with a
    /// stream it does not expect.
    pub fn refuse(self) {
        drop(self);
    }

    /// Resets the stream with another status.
    pub fn reset(mut self, status: RstStatus) {
        self.pending.status = status;
    }
}

/// A stream: read with `AsyncRead` or [`Stream::recv`], write with
/// `AsyncWrite` or [`Stream::send`]; `shutdown` sends FIN.
pub struct Stream {
    recv: RecvStream,
    send: SendStream,
    headers: Headers,
    reply_headers: Headers,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id())
            .field("headers", &self.headers)
            .finish()
    }
}

impl Stream {
    fn new(core: StreamCore, headers: Headers, reply_headers: Headers) -> Stream {
        let core = Arc::new(core);
        Stream {
            recv: RecvStream { core: core.clone() },
            send: SendStream { core },
            headers,
            reply_headers,
        }
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.recv.core.id
    }

    /// The headers of the SYN_STREAM that opened it (ours or the peer's).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers of its SYN_REPLY (the peer's or ours).
    pub fn reply_headers(&self) -> &Headers {
        &self.reply_headers
    }

    /// The next received chunk without copying it; `None` after the peer's FIN.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        self.recv.recv().await
    }

    /// Queues `data` without copying it (waits while the send buffer is full).
    pub async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.send.send(data).await
    }

    /// Sends FIN after what was written, and waits until it is written out.
    pub async fn finish(&mut self) -> io::Result<()> {
        self.send.finish().await
    }

    /// Resets the stream (RST_STREAM): both directions end at once, unsent
    /// data is dropped.
    pub fn reset(&self, status: RstStatus) {
        self.send.reset(status);
    }

    /// Splits into an owned read half and write half.
    pub fn split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

fn reset_error(status: RstStatus) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, Error::Reset(status))
}

fn closed_error(st: &State) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, st.close_error())
}

/// The read half of a [`Stream`]. Dropping it drops unread data (the peer's
/// window is credited as if it had been read).
pub struct RecvStream {
    core: Arc<StreamCore>,
}

impl RecvStream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// The next received chunk without copying it; `None` after the peer's FIN.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.poll_chunk(cx, usize::MAX)).await
    }

    /// Takes up to `max` bytes of the front chunk.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let shared = &self.core.shared;
        let id = self.core.id;
        let mut st = shared.lock();
        let fc = st.fc_on();
        let closed = st.closed.is_some();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(closed_error(&st)));
        };
        if let Some(front) = s.recv.front_mut() {
            let chunk = if front.len() <= max {
                s.recv.pop_front().unwrap_or_default()
            } else {
                front.split_to(max)
            };
            let n = chunk.len();
            s.recv_buffered -= n;
            st.stats.buffered -= n;
            st.credit(&shared.config, Some(id), n);
            let wake_writer = !st.wu_streams.is_empty() || st.session_wu > 0;
            drop(st);
            if wake_writer {
                shared.writer_wake.notify_one();
            }
            if !fc {
                shared.reader_wake.notify_one();
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(None));
        }
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        if closed {
            return Poll::Ready(Err(closed_error(&st)));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let shared = &this.core.shared;
        let id = this.core.id;
        let mut st = shared.lock();
        let fc = st.fc_on();
        let closed = st.closed.is_some();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(closed_error(&st)));
        };
        if !s.recv.is_empty() {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = s.recv.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    s.recv.pop_front();
                }
                n += k;
            }
            s.recv_buffered -= n;
            st.stats.buffered -= n;
            st.credit(&shared.config, Some(id), n);
            let wake_writer = !st.wu_streams.is_empty() || st.session_wu > 0;
            drop(st);
            if wake_writer {
                shared.writer_wake.notify_one();
            }
            if !fc {
                shared.reader_wake.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        if closed {
            return Poll::Ready(Err(closed_error(&st)));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let cfg = &self.core.shared.config;
        let mut st = self.core.shared.lock();
        if let Some(s) = st.streams.get_mut(&self.core.id) {
            s.reader_gone = true;
        }
        st.discard_recv(cfg, self.core.id);
        drop(st);
        self.core.shared.writer_wake.notify_one();
        self.core.shared.reader_wake.notify_one();
    }
}

/// The write half of a [`Stream`]. Dropping it sends FIN (after what was
/// written), as closing a socket's write half would.
pub struct SendStream {
    core: Arc<StreamCore>,
}

impl SendStream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// Queues `data` without copying it (waits while the send buffer is full).
    pub async fn send(&mut self, data: Bytes) -> io::Result<()> {
        let mut data = Some(data);
        poll_fn(|cx| {
            self.poll_queue(cx, &mut QueueItem::Whole(&mut data))
                .map_ok(|_| ())
        })
        .await
    }

    /// Sends FIN after what was written and waits until it is written out.
    pub async fn finish(&mut self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut *self).poll_shutdown(cx)).await
    }

    /// Resets the stream (both directions).
    pub fn reset(&self, status: RstStatus) {
        let cfg = &self.core.shared.config;
        let mut st = self.core.shared.lock();
        if st.closed.is_none() {
            st.reset_stream(cfg, self.core.id, status, true);
        }
        drop(st);
        self.core.shared.writer_wake.notify_one();
    }

    fn poll_queue(
        &mut self,
        cx: &mut Context<'_>,
        item: &mut QueueItem<'_>,
    ) -> Poll<io::Result<usize>> {
        let shared = &self.core.shared;
        let id = self.core.id;
        let cap = shared.config.send_buffer;
        let mut st = shared.lock();
        if st.closing_or_closed() {
            return Poll::Ready(Err(closed_error(&st)));
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(closed_error(&st)));
        };
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        if s.fin_queued || s.local_fin_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write on a SPDY stream after FIN",
            )));
        }
        if s.send_queued >= cap {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = match item {
            QueueItem::Copy(buf) => {
                let n = buf.len().min(cap - s.send_queued);
                if n == 0 {
                    return Poll::Ready(Ok(0));
                }
                s.send.push_back(Bytes::copy_from_slice(&buf[..n]));
                n
            }
            QueueItem::Whole(b) => {
                let Some(b) = b.take() else {
                    return Poll::Ready(Ok(0));
                };
                let n = b.len();
                if n > 0 {
                    s.send.push_back(b);
                }
                n
            }
        };
        s.send_queued += n;
        let queued = s.send_queued;
        st.stats.peak_send_queued = st.stats.peak_send_queued.max(queued);
        st.push_ready(id);
        drop(st);
        shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }
}

enum QueueItem<'a> {
    Copy(&'a [u8]),
    Whole(&'a mut Option<Bytes>),
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_queue(cx, &mut QueueItem::Copy(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.core.shared.lock();
        let closed = st.closed.is_some();
        let Some(s) = st.streams.get_mut(&self.core.id) else {
            return Poll::Ready(Ok(()));
        };
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        let done = s.send_queued == 0 && (!s.fin_queued || s.local_fin_sent);
        if done {
            return Poll::Ready(Ok(()));
        }
        if closed {
            return Poll::Ready(Err(closed_error(&st)));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut st = self.core.shared.lock();
            let id = self.core.id;
            if let Some(s) = st.streams.get_mut(&id)
                && s.reset.is_none()
                && !s.fin_queued
                && !s.local_fin_sent
            {
                s.fin_queued = true;
                st.push_ready(id);
                drop(st);
                self.core.shared.writer_wake.notify_one();
            }
        }
        self.poll_flush(cx)
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut st = self.core.shared.lock();
        let id = self.core.id;
        if let Some(s) = st.streams.get_mut(&id)
            && s.reset.is_none()
            && !s.fin_queued
            && !s.local_fin_sent
        {
            s.fin_queued = true;
            st.push_ready(id);
            drop(st);
            self.core.shared.writer_wake.notify_one();
        }
    }
}
