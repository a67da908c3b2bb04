//! End-to-end tests of the SPDY session over loopback TCP.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use berth_stream::k8s::{self, header, stream_type};
use berth_stream::spdy::frame::{self, Decoder, Encoder, Frame, SynStream};
use berth_stream::spdy::{
    CloseReason, Config, Error, FlowControl, GoAwayStatus, Headers, RstStatus, Session,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(30);

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let c = c.unwrap();
    let s = s.unwrap().0;
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

async fn pair(client: Config, server: Config) -> (Session, Session) {
    let (c, s) = tcp_pair().await;
    (Session::client(c, client), Session::server(s, server))
}

fn typed(t: &str) -> Headers {
    Headers::new().with(header::STREAM_TYPE, t)
}

/// An exec as remotecommand v4 runs it: error, stdin and stdout streams;
/// stdin is echoed upper-cased on stdout, then the status goes on the error
/// stream. Also a refused stream and a reset one.
#[tokio::test]
async fn remotecommand_streams_with_fin_and_rst() {
    let (client, server) = pair(Config::default(), Config::default()).await;

    let srv = tokio::spawn(async move {
        let mut by_type = HashMap::new();
        while by_type.len() < 3 {
            let inc = server.accept().await.expect("stream");
            assert_eq!(inc.id() % 2, 1, "client streams are odd");
            let t = inc.headers().get(header::STREAM_TYPE).unwrap().to_string();
            assert_eq!(inc.headers().get("x-extra"), Some("1"));
            by_type.insert(t, inc.reply(Headers::new()).unwrap());
        }
        let mut stdin = by_type.remove(stream_type::STDIN).unwrap();
        let mut stdout = by_type.remove(stream_type::STDOUT).unwrap();
        let mut error = by_type.remove(stream_type::ERROR).unwrap();
        let mut input = Vec::new();
        stdin.read_to_end(&mut input).await.unwrap();
        stdout.write_all(&input.to_ascii_uppercase()).await.unwrap();
        stdout.shutdown().await.unwrap();
        error
            .write_all(&k8s::Status::success().to_json())
            .await
            .unwrap();
        error.shutdown().await.unwrap();

        // A stream nobody expects is refused, as kubelet does.
        let inc = server.accept().await.unwrap();
        assert_eq!(inc.headers().get(header::STREAM_TYPE), Some("resize"));
        inc.refuse();
        // One that is accepted, then reset.
        let inc = server.accept().await.unwrap();
        let s = inc.reply(Headers::new().with("replied", "yes")).unwrap();
        s.reset(RstStatus::InternalError);
        (server, stdin, stdout, error)
    });

    let mut error = client
        .open(typed(stream_type::ERROR).with("x-extra", "1"))
        .await
        .unwrap();
    let mut stdin = client
        .open(typed(stream_type::STDIN).with("x-extra", "1"))
        .await
        .unwrap();
    let mut stdout = client
        .open(typed(stream_type::STDOUT).with("x-extra", "1"))
        .await
        .unwrap();
    assert_eq!((error.id(), stdin.id(), stdout.id()), (1, 3, 5));
    stdin.write_all(b"hello from stdin").await.unwrap();
    stdin.shutdown().await.unwrap();
    let mut out = Vec::new();
    timeout(T, stdout.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, b"HELLO FROM STDIN");
    let mut status = Vec::new();
    timeout(T, error.read_to_end(&mut status))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k8s::decode_v4_status(&status), k8s::ExecOutcome::Success);
    // Writing after FIN fails.
    assert_eq!(
        stdin.write_all(b"x").await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );

    let refused = client.open(typed("resize")).await.unwrap_err();
    assert_eq!(refused, Error::Reset(RstStatus::RefusedStream));
    let mut reset = client.open(typed("other")).await.unwrap();
    assert_eq!(reset.reply_headers().get("replied"), Some("yes"));
    let mut buf = [0u8; 8];
    let err = timeout(T, reset.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

    let (server, _stdin, _stdout, _error) = srv.await.unwrap();
    // The server ends the session: the client sees its GOAWAY.
    assert_eq!(
        timeout(T, server.close()).await.unwrap(),
        CloseReason::Closed
    );
    assert_eq!(
        timeout(T, client.closed()).await.unwrap(),
        CloseReason::GoAway(GoAwayStatus::Ok)
    );
    assert!(client.open(Headers::new()).await.is_err());
}

fn pattern(i: usize) -> u8 {
    (i as u64).wrapping_mul(2_654_435_761).wrapping_shr(13) as u8
}

/// 100 MB through one stream to a reader that starts slow: everything
/// arrives intact and what waits in memory never exceeds the windows.
#[tokio::test]
async fn hundred_megabytes_with_a_slow_reader_stay_within_the_windows() {
    const TOTAL: usize = 100 * 1000 * 1000;
    let cfg = Config::default();
    let stream_window = cfg.stream_window as usize;
    let send_buffer = cfg.send_buffer;
    let (client, server) = pair(cfg.clone(), cfg).await;

    let srv = tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        let mut s = inc.reply(Headers::new()).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut bad = 0usize;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != pattern_at(got + k) {
                    bad += 1;
                }
            }
            got += n;
            // Slow for the first 4 MB: the writer must wait for the windows.
            if got < 4_000_000 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        (server, got, bad)
    });

    let mut s = client.open(Headers::new()).await.unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(pattern).collect();
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < TOTAL {
        // The data repeats every 2^20 bytes (pattern_at).
        let n = (TOTAL - sent).min(chunk.len());
        s.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    s.shutdown().await.unwrap();
    let (server, got, bad) = timeout(Duration::from_secs(120), srv)
        .await
        .unwrap()
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got, TOTAL);
    assert_eq!(bad, 0);
    let ss = server.stats();
    let cs = client.stats();
    eprintln!(
        "100 MB in {elapsed:?} ({:.0} MB/s, debug build with a slow start); server {ss:?}; client {cs:?}",
        TOTAL as f64 / elapsed.as_secs_f64() / 1e6
    );
    assert_eq!(ss.flow_control, Some(true));
    assert_eq!(cs.flow_control, Some(true));
    assert!(
        ss.peak_buffered <= stream_window,
        "buffered {} > window {stream_window}",
        ss.peak_buffered
    );
    assert!(ss.peak_buffered > 0);
    assert!(cs.peak_send_queued <= send_buffer);
    assert!(ss.window_updates_sent > 100);
}

fn pattern_at(i: usize) -> u8 {
    pattern(i % (1 << 20))
}

#[tokio::test]
async fn ping_round_trips_both_ways() {
    let (client, server) = pair(Config::default(), Config::default()).await;
    let rtt = timeout(T, client.ping()).await.unwrap().unwrap();
    assert!(rtt < T);
    let rtt = timeout(T, server.ping()).await.unwrap().unwrap();
    assert!(rtt < T);
    for _ in 0..10 {
        timeout(T, client.ping()).await.unwrap().unwrap();
    }
    // Pings are frames: they keep an idle timeout at bay.
    drop(server);
}

#[tokio::test]
async fn pings_keep_an_idle_session_alive_and_idleness_ends_it() {
    let idle = Config {
        idle_timeout: Some(Duration::from_millis(800)),
        ..Config::default()
    };
    let (client, server) = pair(Config::default(), idle).await;
    let srv = tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        let s = inc.reply(Headers::new()).unwrap();
        let reason = server.closed().await;
        drop(s);
        reason
    });
    let mut s = client.open(Headers::new()).await.unwrap();
    // 1.5 s of pings every 100 ms: longer than the idle timeout.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.ping().await.unwrap();
    }
    assert!(client.close_reason().is_none());
    // Now stay quiet: the server resets the open stream and goes away.
    let start = Instant::now();
    let mut buf = [0u8; 1];
    let err = timeout(T, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert_eq!(
        timeout(T, srv).await.unwrap().unwrap(),
        CloseReason::IdleTimeout
    );
    assert_eq!(
        timeout(T, client.closed()).await.unwrap(),
        CloseReason::GoAway(GoAwayStatus::Ok)
    );
}

/// 50 port-forward connections at once: an error and a data stream each,
/// paired by requestID; the data is echoed.
#[tokio::test]
async fn fifty_port_forward_stream_pairs() {
    let (client, server) = pair(Config::default(), Config::default()).await;
    let srv = tokio::spawn(async move {
        let mut pairs: HashMap<String, u8> = HashMap::new();
        let mut tasks = Vec::new();
        while let Some(inc) = server.accept().await {
            let h = inc.headers().clone();
            assert_eq!(h.get(header::PORT), Some("8080"));
            let id = h.get(header::REQUEST_ID).unwrap().to_string();
            *pairs.entry(id).or_default() += 1;
            let mut s = inc.reply(Headers::new()).unwrap();
            match h.get(header::STREAM_TYPE) {
                Some(stream_type::DATA) => tasks.push(tokio::spawn(async move {
                    let mut data = Vec::new();
                    s.read_to_end(&mut data).await.unwrap();
                    s.write_all(&data).await.unwrap();
                    s.shutdown().await.unwrap();
                })),
                Some(stream_type::ERROR) => {
                    // Nothing to report: just end our side.
                    s.shutdown().await.unwrap();
                }
                other => panic!("{other:?}"),
            }
            if pairs.len() == 50 && pairs.values().all(|n| *n == 2) {
                break;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        server
    });

    let mut tasks = Vec::new();
    for i in 0..50usize {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let h = |t: &str| {
                typed(t)
                    .with(header::PORT, "8080")
                    .with(header::REQUEST_ID, i.to_string())
            };
            let mut error = client.open(h(stream_type::ERROR)).await.unwrap();
            // client-go closes its side of the error stream at once.
            error.shutdown().await.unwrap();
            let mut data = client.open(h(stream_type::DATA)).await.unwrap();
            let payload: Vec<u8> = (0..100_000 + i).map(|k| pattern_at(k + i)).collect();
            let (mut rd, mut wr) = data_split(&mut data);
            let (w, r) = tokio::join!(
                async {
                    wr.write_all(&payload).await.unwrap();
                    wr.shutdown().await.unwrap();
                },
                async {
                    let mut echo = Vec::new();
                    rd.read_to_end(&mut echo).await.unwrap();
                    echo
                }
            );
            let () = w;
            assert_eq!(r, payload);
            let mut e = Vec::new();
            error.read_to_end(&mut e).await.unwrap();
            assert!(e.is_empty());
        }));
    }
    for t in tasks {
        timeout(T, t).await.unwrap().unwrap();
    }
    let server = timeout(T, srv).await.unwrap().unwrap();
    // Every stream is finished and dropped: the session forgets them.
    for _ in 0..100 {
        if server.stats().streams == 0 && client.stats().streams == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats().streams, 0, "{:?}", server.stats());
    assert_eq!(client.stats().streams, 0, "{:?}", client.stats());
}

/// Reads and writes one stream from two futures at once.
fn data_split(
    s: &mut berth_stream::spdy::Stream,
) -> (
    tokio::io::ReadHalf<&mut berth_stream::spdy::Stream>,
    tokio::io::WriteHalf<&mut berth_stream::spdy::Stream>,
) {
    tokio::io::split(s)
}

/// Reads frames from a raw connection until EOF.
async fn read_frames(rd: &mut (impl AsyncReadExt + Unpin)) -> Vec<Frame> {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        buf.reserve(64 * 1024);
        match timeout(T, rd.read_buf(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => return frames,
            Ok(_) => {}
        }
    }
}

fn encode(enc: &mut Encoder, f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    enc.encode(f, &mut b).unwrap();
    b.to_vec()
}

fn syn(stream_id: u32, headers: Headers) -> Frame {
    Frame::SynStream(SynStream {
        stream_id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers,
    })
}

/// A peer that breaks the protocol gets GOAWAY(PROTOCOL_ERROR) and the
/// session ends without a panic; a broken header block only costs its stream.
#[tokio::test]
async fn malformed_peer_input_ends_the_session_with_goaway() {
    for garbage_first in [false, true] {
        let (mut raw, s) = tcp_pair().await;
        let server = Session::server(s, Config::default());
        let mut enc = Encoder::new();
        if !garbage_first {
            raw.write_all(&encode(
                &mut enc,
                &Frame::Settings(frame::Settings::default()),
            ))
            .await
            .unwrap();
            // A SYN_STREAM whose header block has an upper-case name: RST for that stream only.
            let mut z = flate2::Compress::new(flate2::Compression::default(), true);
            z.set_dictionary(berth_stream::spdy::dictionary::DICTIONARY)
                .unwrap();
            let mut raw_block = Vec::new();
            raw_block.extend_from_slice(&1u32.to_be_bytes());
            raw_block.extend_from_slice(&4u32.to_be_bytes());
            raw_block.extend_from_slice(b"Port");
            raw_block.extend_from_slice(&2u32.to_be_bytes());
            raw_block.extend_from_slice(b"80");
            let mut block = Vec::with_capacity(256);
            z.compress_vec(&raw_block, &mut block, flate2::FlushCompress::Sync)
                .unwrap();
            let mut f = vec![0x80, 0x03, 0x00, 0x01];
            f.extend_from_slice(&((10 + block.len()) as u32).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            f.extend_from_slice(&block);
            raw.write_all(&f).await.unwrap();
            // The session still answers pings.
            raw.write_all(&encode(&mut enc, &Frame::Ping(frame::Ping { id: 7 })))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A PING of 5 bytes: malformed.
        raw.write_all(&[
            0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5,
        ])
        .await
        .unwrap();
        let reason = timeout(T, server.closed()).await.unwrap();
        assert!(
            matches!(reason, CloseReason::ProtocolError(ref m) if m.contains("PING")),
            "{reason:?}"
        );
        let frames = read_frames(&mut raw).await;
        let last = frames.last().cloned();
        assert_eq!(
            last,
            Some(Frame::GoAway(frame::GoAway {
                last_good_stream_id: if garbage_first { 0 } else { 1 },
                status: GoAwayStatus::ProtocolError,
            })),
            "{frames:?}"
        );
        if !garbage_first {
            assert!(frames.contains(&Frame::RstStream(frame::RstStream {
                stream_id: 1,
                status: RstStatus::ProtocolError,
            })));
            assert!(frames.contains(&Frame::Ping(frame::Ping { id: 7 })));
        }
    }
    // Pure noise as the first bytes.
    let (mut raw, s) = tcp_pair().await;
    let server = Session::server(s, Config::default());
    raw.write_all(&[0x80, 0x02, 0xff, 0xff, 0x01, 0x02, 0x03, 0x04, 0xde, 0xad])
        .await
        .unwrap();
    assert!(matches!(
        timeout(T, server.closed()).await.unwrap(),
        CloseReason::ProtocolError(_)
    ));
    // And a peer that just hangs up.
    let (raw, s) = tcp_pair().await;
    let server = Session::server(s, Config::default());
    drop(raw);
    assert_eq!(
        timeout(T, server.closed()).await.unwrap(),
        CloseReason::PeerHungUp
    );
    assert!(server.accept().await.is_none());
}

/// The server stays silent until the client's first frame (client-go drops
/// bytes that arrive with the 101 response).
#[tokio::test]
async fn server_writes_nothing_before_the_client_speaks() {
    let (mut raw, s) = tcp_pair().await;
    let server = Session::server(s, Config::default());
    let ping = tokio::spawn({
        let server = server.clone();
        async move { server.ping().await }
    });
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(300), raw.read(&mut buf))
            .await
            .is_err()
    );
    // Once the client speaks (as spdystream does: SYN_STREAM first), the
    // held PING goes out, and no SETTINGS or WINDOW_UPDATE with it.
    let mut enc = Encoder::new();
    raw.write_all(&encode(&mut enc, &syn(1, typed("error"))))
        .await
        .unwrap();
    let mut dec = Decoder::default();
    let mut rb = BytesMut::new();
    let f = loop {
        if let Some(f) = dec.decode(&mut rb).unwrap() {
            break f;
        }
        timeout(T, raw.read_buf(&mut rb)).await.unwrap().unwrap();
    };
    let Frame::Ping(p) = f else { panic!("{f:?}") };
    assert_eq!(p.id % 2, 0, "server pings are even");
    raw.write_all(&encode(&mut enc, &Frame::Ping(p)))
        .await
        .unwrap();
    timeout(T, ping).await.unwrap().unwrap().unwrap();
    assert_eq!(server.stats().flow_control, Some(false));
}

/// A peer like spdystream (kubelet, client-go): no SETTINGS, never a
/// WINDOW_UPDATE, sends without regard to windows. Nothing stalls, nothing is
/// reset, and what it sends is held to one window by back-pressure.
#[tokio::test]
async fn a_peer_without_flow_control_is_not_held_to_windows() {
    const N: usize = 2 * 1024 * 1024;
    let cfg = Config::default();
    let window = cfg.stream_window as usize;
    let (raw, s) = tcp_pair().await;
    let server = Session::server(s, cfg);
    let (mut rd, mut wr) = raw.into_split();

    let srv = tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        let mut s = inc.reply(Headers::new()).unwrap();
        // Write 2 MiB back while reading slowly.
        let payload: Vec<u8> = (0..N).map(pattern_at).collect();
        let (mut r, mut w) = tokio::io::split(&mut s);
        let (got, ()) = tokio::join!(
            async {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break got;
                    }
                    got.extend_from_slice(&buf[..n]);
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            },
            async {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            }
        );
        (server, got)
    });

    let writer = tokio::spawn(async move {
        let mut enc = Encoder::new();
        wr.write_all(&encode(&mut enc, &syn(1, typed("data"))))
            .await
            .unwrap();
        let payload: Vec<u8> = (0..N).map(pattern_at).collect();
        for (i, c) in payload.chunks(32 * 1024).enumerate() {
            let last = (i + 1) * 32 * 1024 >= N;
            let f = Frame::Data(frame::Data {
                stream_id: 1,
                fin: last,
                data: Bytes::copy_from_slice(c),
            });
            wr.write_all(&encode(&mut enc, &f)).await.unwrap();
        }
        wr
    });
    // Read what the server sends until its FIN on stream 1.
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut echo = Vec::new();
    let mut frames = Vec::new();
    'read: loop {
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            if let Frame::Data(d) = &f {
                echo.extend_from_slice(&d.data);
                if d.fin {
                    break 'read;
                }
            } else {
                frames.push(f);
            }
        }
        buf.reserve(64 * 1024);
        let n = timeout(T, rd.read_buf(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "server hung up");
    }
    assert_eq!(echo.len(), N);
    assert!(echo.iter().enumerate().all(|(i, b)| *b == pattern_at(i)));
    let _wr = writer.await.unwrap();
    let (server, got) = timeout(T, srv).await.unwrap().unwrap();
    assert_eq!(got.len(), N);
    assert!(got.iter().enumerate().all(|(i, b)| *b == pattern_at(i)));
    // Only the SYN_REPLY: no SETTINGS, WINDOW_UPDATE or RST to this peer.
    assert!(
        frames.iter().all(|f| matches!(f, Frame::SynReply(_))),
        "{frames:?}"
    );
    let st = server.stats();
    assert_eq!(st.flow_control, Some(false));
    assert_eq!(st.window_updates_sent, 0);
    assert!(st.peak_buffered <= window + 32 * 1024, "{st:?}");
}

/// A client that speaks as spdystream does (FlowControl::Never) against a
/// default server: neither sends SETTINGS or WINDOW_UPDATE, neither holds the
/// other to a window, and 4 MiB each way pass without a stall.
#[tokio::test]
async fn a_never_client_and_an_auto_server_move_data_without_windows() {
    const N: usize = 4 * 1024 * 1024;
    let client_cfg = Config {
        flow_control: FlowControl::Never,
        ..Config::default()
    };
    let (client, server) = pair(client_cfg, Config::default()).await;
    let srv = tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        let mut s = inc.reply(Headers::new()).unwrap();
        let payload: Vec<u8> = (0..N).map(pattern_at).collect();
        let (mut r, mut w) = tokio::io::split(&mut s);
        let (got, ()) = tokio::join!(
            async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            },
            async {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            }
        );
        (server, got)
    });
    let mut s = client.open(typed("data")).await.unwrap();
    let payload: Vec<u8> = (0..N).map(pattern_at).collect();
    let (mut r, mut w) = tokio::io::split(&mut s);
    let (echo, ()) = tokio::join!(
        async {
            let mut got = Vec::new();
            timeout(T, r.read_to_end(&mut got)).await.unwrap().unwrap();
            got
        },
        async {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        }
    );
    let (server, got) = timeout(T, srv).await.unwrap().unwrap();
    assert_eq!(echo, payload);
    assert_eq!(got, payload);
    let (ss, cs) = (server.stats(), client.stats());
    assert_eq!(ss.flow_control, Some(false), "{ss:?}");
    assert_eq!(cs.flow_control, Some(false), "{cs:?}");
    assert_eq!(ss.window_updates_sent + cs.window_updates_sent, 0);
}

/// The client's GOAWAY: the server's open stream is reset and the server
/// session ends.
#[tokio::test]
async fn closing_resets_open_streams_and_sends_goaway_last() {
    let (client, server) = pair(Config::default(), Config::default()).await;
    let srv = tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        let mut s = inc.reply(Headers::new()).unwrap();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf).await;
        (server.closed().await, r.map_err(|e| e.kind()), buf)
    });
    let mut s = client.open(Headers::new()).await.unwrap();
    s.write_all(b"partial").await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        timeout(T, client.close()).await.unwrap(),
        CloseReason::Closed
    );
    let (reason, read, buf) = timeout(T, srv).await.unwrap().unwrap();
    assert_eq!(reason, CloseReason::GoAway(GoAwayStatus::Ok));
    assert_eq!(read, Err(io::ErrorKind::ConnectionReset));
    assert_eq!(buf, b"partial");
    drop(s);
}

/// Dropping every handle closes the session.
#[tokio::test]
async fn dropping_the_last_handle_closes_the_session() {
    let (client, server) = pair(Config::default(), Config::default()).await;
    let srv = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .accept()
                .await
                .unwrap()
                .reply(Headers::new())
                .unwrap()
        })
    };
    let s = client.open(Headers::new()).await.unwrap();
    let _server_side = srv.await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        server.close_reason().is_none(),
        "a stream still holds the client session"
    );
    drop(s);
    assert_eq!(
        timeout(T, server.closed()).await.unwrap(),
        CloseReason::GoAway(GoAwayStatus::Ok)
    );
}

/// The server's close lingers: after its status, GOAWAY and FIN, what the
/// client still sends (the FINs of the streams it finished reading) is read
/// and dropped, not answered with a TCP RST, which would let the client's
/// kernel throw away the status before the client read it (remotecommand's
/// exit code lost). `closed()` does not wait for the linger.
#[tokio::test]
async fn a_closing_session_reads_the_peers_late_frames_instead_of_resetting() {
    let (mut raw, s) = tcp_pair().await;
    let server = Session::server(s, Config::default());
    let mut enc = Encoder::new();
    raw.write_all(&encode(&mut enc, &syn(1, typed("error"))))
        .await
        .unwrap();
    let mut err = timeout(T, server.accept())
        .await
        .unwrap()
        .unwrap()
        .reply(Headers::new())
        .unwrap();
    err.write_all(br#"{"status":"Failure"}"#).await.unwrap();
    err.shutdown().await.unwrap();
    drop(err);
    assert_eq!(
        timeout(T, server.close()).await.unwrap(),
        CloseReason::Closed
    );
    // Everything up to the server's FIN, then a moment for its socket to go.
    let frames = read_frames(&mut raw).await;
    assert!(
        matches!(frames.last(), Some(Frame::GoAway(_))),
        "{frames:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The client's late FIN on the error stream, as client-go sends it.
    let fin = Frame::Data(frame::Data {
        stream_id: 1,
        fin: true,
        data: Bytes::new(),
    });
    raw.write_all(&encode(&mut enc, &fin)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reset = raw.take_error().unwrap();
    assert!(
        reset.is_none(),
        "the server answered with RST instead of reading: {reset:?}"
    );
    let ping = Frame::Ping(frame::Ping { id: 1 });
    raw.write_all(&encode(&mut enc, &ping)).await.unwrap();
}
