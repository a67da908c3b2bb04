use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn encode(enc: &mut Encoder, f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    enc.encode(f, &mut b).unwrap();
    b.to_vec()
}

/// Decodes everything in `bytes`, expecting no error and no leftovers.
fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

/// Compresses a raw (possibly malformed) header block the way a peer would.
fn compress_raw(z: &mut Compress, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1024);
    z.compress_vec(raw, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.len() < out.capacity());
    out
}

fn dict_compressor() -> Compress {
    let mut z = Compress::new(Compression::default(), true);
    z.set_dictionary(DICTIONARY).unwrap();
    z
}

fn syn_stream_with_block(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_control_header(&mut b, TYPE_SYN_STREAM, 0, 10 + block.len()).unwrap();
    b.put_u32(stream_id);
    b.put_u32(0);
    b.put_u16(0);
    b.extend_from_slice(block);
    b.to_vec()
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

// Frames as Go's framer (github.com/moby/spdystream/spdy, the one kubelet and
// client-go use) writes them, captured with a small Go program; the SYN
// frames come from one framer, in this order.
const GO_SYN_STREAM_1: &str = "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff";
const GO_SYN_STREAM_3: &str = "800300010000001700000003000000000000c22e555c92929907000000ffff";
const GO_SYN_REPLY_EMPTY: &str = "800300020000000e000000016260606000000000ffff";
const GO_SYN_STREAM_MULTI: &str = "800300010000004a0000000100000000000078f9e3c6a7c26260606064606090acd02d2e294a4dccd52d28ca2fc94fcecfd145a450e53213bde48cc4bcbcd41cbd6c8b62bdcc7c863263341100000000ffff";

#[test]
fn dictionary_is_spdy3s() {
    assert_eq!(DICTIONARY.len(), 1423);
    assert_eq!(adler32(DICTIONARY), DICTIONARY_ID);
    assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options"));
    assert!(DICTIONARY.ends_with(b"8859-1,utf-,*,enq=0."));
}

#[test]
fn golden_fixed_frames_match_go() {
    let mut enc = Encoder::new();
    let cases: Vec<(Frame, &str)> = vec![
        (Frame::Ping(Ping { id: 1 }), "800300060000000400000001"),
        (
            Frame::Data(Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"hi"),
            }),
            "00000001010000026869",
        ),
        (
            Frame::RstStream(RstStream {
                stream_id: 3,
                status: RstStatus::Cancel,
            }),
            "80030003000000080000000300000005",
        ),
        (
            Frame::GoAway(GoAway {
                last_good_stream_id: 5,
                status: GoAwayStatus::Ok,
            }),
            "80030007000000080000000500000000",
        ),
        (
            Frame::WindowUpdate(WindowUpdate {
                stream_id: 0,
                delta: 1000,
            }),
            "800300090000000800000000000003e8",
        ),
        (
            Frame::Settings(Settings {
                clear_previous: false,
                entries: vec![
                    Setting {
                        flags: 0,
                        id: setting::INITIAL_WINDOW_SIZE,
                        value: 262_144,
                    },
                    Setting {
                        flags: 1,
                        id: setting::MAX_CONCURRENT_STREAMS,
                        value: 100,
                    },
                ],
            }),
            "80030004000000140000000200000007000400000100000400000064",
        ),
    ];
    let mut dec = Decoder::default();
    for (frame, golden) in cases {
        let bytes = encode(&mut enc, &frame);
        assert_eq!(hex(&bytes), golden, "{frame:?}");
        assert_eq!(decode_all(&mut dec, &unhex(golden)), vec![frame]);
    }
}

#[test]
fn decodes_go_header_frames_in_one_context() {
    let mut dec = Decoder::default();
    let mut wire = unhex(GO_SYN_STREAM_1);
    wire.extend(unhex(GO_SYN_STREAM_3));
    wire.extend(unhex(GO_SYN_REPLY_EMPTY));
    let frames = decode_all(&mut dec, &wire);
    assert_eq!(
        frames,
        vec![
            Frame::SynStream(SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new().with("streamtype", "error"),
            }),
            Frame::SynStream(SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new().with("streamtype", "stdin"),
            }),
            Frame::SynReply(SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            }),
        ]
    );
    // Case-insensitive lookup finds the canonical k8s spelling.
    if let Frame::SynStream(s) = &frames[0] {
        assert_eq!(s.headers.get("streamType"), Some("error"));
    }
}

#[test]
fn decodes_go_multi_valued_header() {
    let mut dec = Decoder::default();
    let frames = decode_all(&mut dec, &unhex(GO_SYN_STREAM_MULTI));
    let Frame::SynStream(s) = &frames[0] else {
        panic!("{frames:?}")
    };
    let values: Vec<&str> = s.headers.get_all("X-Stream-Protocol-Version").collect();
    assert_eq!(values, ["v4.channel.k8s.io", "v3.channel.k8s.io"]);
}

/// A SYN_STREAM derived by hand from the draft: the header block is stored
/// (uncompressed) deflate inside a zlib stream that names the SPDY dictionary.
#[test]
fn decodes_hand_made_stored_block_syn_stream() {
    let mut raw = Vec::new();
    raw.extend_from_slice(&1u32.to_be_bytes());
    raw.extend_from_slice(&10u32.to_be_bytes());
    raw.extend_from_slice(b"streamtype");
    raw.extend_from_slice(&5u32.to_be_bytes());
    raw.extend_from_slice(b"error");
    assert_eq!(raw.len(), 27);
    let mut block = vec![0x78, 0xf9]; // CMF: deflate, 32K window; FLG: FDICT, level 3
    block.extend_from_slice(&DICTIONARY_ID.to_be_bytes());
    block.extend_from_slice(&[0x00, 27, 0, !27u8, 0xff]); // stored, not final
    block.extend_from_slice(&raw);
    block.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]); // sync flush
    let wire = syn_stream_with_block(1, &block);
    assert_eq!(
        hex(&wire),
        "800300010000003500000001000000000000\
         78f9e3c6a7c2001b00e4ff\
         000000010000000a73747265616d74797065000000056572726f72\
         000000ffff"
    );
    let frames = decode_all(&mut Decoder::default(), &wire);
    let Frame::SynStream(s) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(s.headers, Headers::new().with("streamtype", "error"));
}

#[test]
fn round_trips_every_frame_type() {
    let mut enc = Encoder::new();
    let mut dec = Decoder::default();
    let frames = vec![
        Frame::SynStream(SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new()
                .with("streamType", "error")
                .with("X-Multi", "a")
                .with("x-multi", "b")
                .with("empty", ""),
        }),
        Frame::SynReply(SynReply {
            stream_id: 1,
            fin: true,
            headers: Headers::new(),
        }),
        Frame::SynStream(SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 2,
            fin: true,
            unidirectional: true,
            headers: Headers::new()
                .with("streamtype", "stdin")
                .with("port", "8080"),
        }),
        Frame::Headers(HeadersFrame {
            stream_id: 3,
            fin: true,
            headers: Headers::new().with("trailer", "x"),
        }),
        Frame::RstStream(RstStream {
            stream_id: 3,
            status: RstStatus::Other(77),
        }),
        Frame::Settings(Settings {
            clear_previous: true,
            entries: vec![],
        }),
        Frame::Ping(Ping { id: 0xffff_fffe }),
        Frame::GoAway(GoAway {
            last_good_stream_id: 9,
            status: GoAwayStatus::ProtocolError,
        }),
        Frame::WindowUpdate(WindowUpdate {
            stream_id: 5,
            delta: MAX_WINDOW,
        }),
        Frame::Data(Data {
            stream_id: 5,
            fin: false,
            data: Bytes::new(),
        }),
        Frame::Data(Data {
            stream_id: MAX_STREAM_ID,
            fin: true,
            data: Bytes::from(vec![7u8; 65_536]),
        }),
    ];
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend(encode(&mut enc, f));
    }
    // Header names come back lower case; multi-values stay in order.
    assert_eq!(decode_all(&mut dec, &wire), frames);
}

#[test]
fn byte_by_byte_feeding_gives_the_same_frames() {
    let mut enc = Encoder::new();
    let frames = vec![
        Frame::SynStream(SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new()
                .with("streamtype", "data")
                .with("requestid", "0"),
        }),
        Frame::Ping(Ping { id: 2 }),
        Frame::Data(Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hello"),
        }),
    ];
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend(encode(&mut enc, f));
    }
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire {
        buf.put_u8(b);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn large_data_frames_come_in_pieces() {
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let mut wire = BytesMut::new();
    put_data_header(&mut wire, 3, true, payload.len()).unwrap();
    wire.extend_from_slice(&payload);
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut pieces = 0;
    let mut fin_seen = false;
    for chunk in wire.chunks(50_000) {
        buf.extend_from_slice(chunk);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            let Frame::Data(d) = f else { panic!() };
            assert_eq!(d.stream_id, 3);
            assert!(!fin_seen);
            fin_seen = d.fin;
            assert!(buf.len() < 100_000, "decoder held back {} bytes", buf.len());
            got.extend_from_slice(&d.data);
            pieces += 1;
        }
    }
    assert!(fin_seen);
    assert!(pieces > 1);
    assert_eq!(got, payload);
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut wire = BytesMut::new();
    // CREDENTIAL (type 10) with a 100 KiB body, then NOOP (type 5), then a PING.
    put_control_header(&mut wire, 10, 0, 100 * 1024).unwrap();
    wire.extend_from_slice(&vec![0xab; 100 * 1024]);
    put_control_header(&mut wire, 5, 0, 0).unwrap();
    Encoder::new()
        .encode(&Frame::Ping(Ping { id: 7 }), &mut wire)
        .unwrap();
    let mut dec = Decoder::default();
    assert_eq!(
        decode_all(&mut dec, &wire),
        vec![Frame::Ping(Ping { id: 7 })]
    );
}

fn session_error(dec: &mut Decoder, wire: &[u8]) -> String {
    let mut buf = BytesMut::from(wire);
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error"),
            Err(FrameError::Session(m)) => {
                // The decoder stays failed.
                assert!(matches!(
                    dec.decode(&mut BytesMut::new()),
                    Err(FrameError::Session(_))
                ));
                return m;
            }
            Err(e) => panic!("not a session error: {e}"),
        }
    }
}

#[test]
fn malformed_frames_are_session_errors() {
    let h = |ty: u16, flags: u8, len: usize, body: &[u8]| {
        let mut b = BytesMut::new();
        put_control_header(&mut b, ty, flags, len).unwrap();
        b.extend_from_slice(body);
        b.to_vec()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("version", {
            let mut b = h(TYPE_PING, 0, 4, &[0, 0, 0, 1]);
            b[1] = 2;
            b
        }),
        ("PING of 5", h(TYPE_PING, 0, 5, &[0; 5])),
        ("RST_STREAM of 4", h(TYPE_RST_STREAM, 0, 4, &[0, 0, 0, 1])),
        (
            "RST_STREAM on stream 0",
            h(TYPE_RST_STREAM, 0, 8, &[0, 0, 0, 0, 0, 0, 0, 1]),
        ),
        ("GOAWAY of 4", h(TYPE_GOAWAY, 0, 4, &[0; 4])),
        (
            "WINDOW_UPDATE of 12",
            h(TYPE_WINDOW_UPDATE, 0, 12, &[0; 12]),
        ),
        (
            "SETTINGS says",
            h(TYPE_SETTINGS, 0, 12, &[0, 0, 0, 5, 0, 0, 0, 7, 0, 0, 0, 1]),
        ),
        ("SYN_STREAM of 6", h(TYPE_SYN_STREAM, 0, 6, &[0; 6])),
        ("sync flush", syn_stream_with_block(1, &[1, 2, 3, 4, 5, 6])),
        (
            "decompress",
            syn_stream_with_block(1, &[0x78, 0x9c, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff]),
        ),
        ("DATA frame on stream 0", vec![0, 0, 0, 0, 0, 0, 0, 1, 9]),
        ("over the limit", h(TYPE_SYN_REPLY, 0, 70 * 1024, &[])),
    ];
    for (want, wire) in cases {
        let msg = session_error(&mut Decoder::default(), &wire);
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
}

#[test]
fn header_block_bomb_is_refused() {
    // 200 KiB of one letter compresses to a few hundred bytes.
    let mut enc = Encoder::new();
    let frame = Frame::SynStream(SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: Headers::new().with("x", "a".repeat(200 * 1024)),
    });
    let wire = encode(&mut enc, &frame);
    assert!(wire.len() < 2048, "{}", wire.len());
    let msg = session_error(&mut Decoder::default(), &wire);
    assert!(msg.contains("more than 65536 bytes"), "{msg}");
    // The same block is fine under a larger limit.
    let mut dec = Decoder::new(Limits {
        max_header_block: 256 * 1024,
        max_headers: 10,
    });
    assert_eq!(decode_all(&mut dec, &wire), vec![frame]);
}

#[test]
fn malformed_header_blocks_are_stream_errors_and_decoding_goes_on() {
    let name_value = |n: &[u8], v: &[u8]| {
        let mut r = Vec::new();
        r.extend_from_slice(&(n.len() as u32).to_be_bytes());
        r.extend_from_slice(n);
        r.extend_from_slice(&(v.len() as u32).to_be_bytes());
        r.extend_from_slice(v);
        r
    };
    let block = |n: u32, pairs: &[Vec<u8>]| {
        let mut r = n.to_be_bytes().to_vec();
        for p in pairs {
            r.extend_from_slice(p);
        }
        r
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("upper case", block(1, &[name_value(b"Port", b"80")])),
        (
            "appears twice",
            block(2, &[name_value(b"a", b"1"), name_value(b"a", b"2")]),
        ),
        ("empty header name", block(1, &[name_value(b"", b"1")])),
        ("truncated", block(2, &[name_value(b"a", b"1")])),
        ("after the header block", {
            let mut b = block(1, &[name_value(b"a", b"1")]);
            b.push(0);
            b
        }),
        (
            "not allowed",
            block(1, &[name_value(b"connection", b"close")]),
        ),
        ("not UTF-8", block(1, &[name_value(b"a", &[0xff, 0xfe])])),
        ("more than the limit", block(1000, &[])),
        ("header values", block(1, &[name_value(b"a", &[0u8; 300])])),
        ("truncated", vec![0, 0]),
    ];
    // One compression context for the whole sequence, as on a real session.
    let mut z = dict_compressor();
    let mut dec = Decoder::default();
    let mut enc_ping = Encoder::new();
    for (i, (want, raw)) in cases.into_iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let mut wire = syn_stream_with_block(id, &compress_raw(&mut z, &raw));
        wire.extend(encode(&mut enc_ping, &Frame::Ping(Ping { id })));
        let mut buf = BytesMut::from(&wire[..]);
        match dec.decode(&mut buf) {
            Err(FrameError::Stream {
                stream_id,
                status,
                reason,
            }) => {
                assert_eq!(stream_id, id);
                assert_eq!(status, RstStatus::ProtocolError);
                assert!(reason.contains(want), "{want:?} not in {reason:?}");
            }
            other => panic!("{want}: {other:?}"),
        }
        // The zlib context is intact: the next frame decodes.
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Ping(Ping { id }))
        );
    }
    // And a well-formed block after all that still decodes.
    let raw = block(1, &[name_value(b"ok", b"yes")]);
    let wire = syn_stream_with_block(99, &compress_raw(&mut z, &raw));
    let frames = decode_all(&mut dec, &wire);
    let Frame::SynStream(s) = &frames[0] else {
        panic!()
    };
    assert_eq!(s.headers.get("ok"), Some("yes"));
}

#[test]
fn encoder_refuses_what_spdy_cannot_carry() {
    let mut enc = Encoder::new();
    let syn = |headers: Headers, stream_id: u32| {
        Frame::SynStream(SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        })
    };
    let mut dst = BytesMut::new();
    for bad in [
        syn(Headers::new().with("host", "x"), 1),
        syn(Headers::new().with("", "x"), 1),
        syn(Headers::new().with("a", "x\0y"), 1),
        syn(Headers::new(), 0),
        Frame::WindowUpdate(WindowUpdate {
            stream_id: 1,
            delta: 0,
        }),
        Frame::RstStream(RstStream {
            stream_id: 0,
            status: RstStatus::Cancel,
        }),
    ] {
        assert!(enc.encode(&bad, &mut dst).is_err(), "{bad:?}");
        assert!(dst.is_empty());
    }
    // `host` is fine in a reply; the context still works after the refusals.
    let ok = Frame::SynReply(SynReply {
        stream_id: 1,
        fin: false,
        headers: Headers::new().with("host", "x"),
    });
    let wire = encode(&mut enc, &ok);
    assert_eq!(decode_all(&mut Decoder::default(), &wire), vec![ok]);
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds `wire` in random chunks; must end without panicking or looping.
fn chew(wire: &[u8], rng: &mut Rng) {
    let mut dec = Decoder::new(Limits {
        max_header_block: 4096,
        max_headers: 16,
    });
    let mut buf = BytesMut::new();
    let mut pos = 0;
    'feed: while pos < wire.len() {
        let n = (1 + rng.below(64)).min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        for _ in 0..10_000 {
            match dec.decode(&mut buf) {
                Ok(Some(_)) | Err(FrameError::Stream { .. }) => continue,
                Ok(None) => continue 'feed,
                Err(FrameError::Session(_)) => return,
            }
        }
        panic!("decoder does not make progress");
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Valid traffic to mutate.
    let mut enc = Encoder::new();
    let mut valid = Vec::new();
    for i in 0..20u32 {
        let f = match i % 5 {
            0 => Frame::SynStream(SynStream {
                stream_id: 2 * i + 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new()
                    .with("streamtype", "data")
                    .with("port", i.to_string()),
            }),
            1 => Frame::SynReply(SynReply {
                stream_id: 2 * i + 1,
                fin: false,
                headers: Headers::new().with("a", "b"),
            }),
            2 => Frame::Data(Data {
                stream_id: 2 * i + 1,
                fin: i % 2 == 0,
                data: Bytes::from(vec![i as u8; 100]),
            }),
            3 => Frame::WindowUpdate(WindowUpdate {
                stream_id: i,
                delta: 1 + i,
            }),
            _ => Frame::Settings(Settings {
                clear_previous: false,
                entries: vec![Setting {
                    flags: 0,
                    id: setting::INITIAL_WINDOW_SIZE,
                    value: i,
                }],
            }),
        };
        valid.extend(encode(&mut enc, &f));
    }
    for round in 0..3000 {
        let wire: Vec<u8> = match round % 4 {
            // Pure noise, often with the control bit and version 3 set.
            0 => (0..rng.below(300))
                .map(|i| match i % 8 {
                    0 if rng.below(2) == 0 => 0x80,
                    1 if rng.below(2) == 0 => 0x03,
                    _ => rng.next() as u8,
                })
                .collect(),
            // Valid traffic with bytes flipped.
            1 => {
                let mut w = valid.clone();
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(w.len());
                    w[i] ^= 1 << rng.below(8);
                }
                w
            }
            // Valid traffic cut short or with a slice removed.
            2 => {
                let mut w = valid.clone();
                let a = rng.below(w.len());
                let b = (a + rng.below(64)).min(w.len());
                w.drain(a..b);
                w
            }
            // Random frame headers with random bodies.
            _ => {
                let mut w = Vec::new();
                for _ in 0..rng.below(10) {
                    let len = rng.below(40);
                    let ty = rng.below(12) as u16;
                    if rng.below(2) == 0 {
                        w.extend_from_slice(&(0x8003u16).to_be_bytes());
                        w.extend_from_slice(&ty.to_be_bytes());
                    } else {
                        w.extend_from_slice(&(rng.next() as u32 & 0x7fff_ffff).to_be_bytes());
                    }
                    w.push(rng.next() as u8);
                    w.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
                    w.extend((0..len).map(|_| rng.next() as u8));
                }
                w
            }
        };
        chew(&wire, &mut rng);
    }
}

#[test]
fn print_our_frames_for_go() {
    // Not a check: `cargo test -- --nocapture print_our_frames` prints frames
    // that were fed to Go's framer to confirm it reads what we write.
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    for f in [
        Frame::SynStream(SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new()
                .with("streamtype", "error")
                .with("x-stream-protocol-version", "v4.channel.k8s.io")
                .with("x-stream-protocol-version", "v3.channel.k8s.io"),
        }),
        Frame::SynReply(SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new(),
        }),
        Frame::Data(Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hi"),
        }),
    ] {
        wire.extend(encode(&mut enc, &f));
    }
    println!("ours: {}", hex(&wire));
}
