//! Hostile and malformed requests (issue 12): random and mutated
//! RunPodSandbox, CreateContainer, ExecSync, PullImage and
//! UpdateContainerResources messages against a real berthd. Each gets an
//! answer (success, or a gRPC error with a message that is not UNKNOWN or
//! INTERNAL, but for INTERNAL "failed to decode Protobuf message", the
//! code gRPC gives a body that does not parse), berthd never panics or
//! stalls, a witness pod that is not fuzzed keeps running untouched, and
//! at the end nothing is left behind.
//!
//! Bodies are mutated as bytes (bit flips, random bytes, inserts,
//! deletions, truncations, repeats of a valid message's encoding) or
//! random outright, so that both what prost cannot decode and what it
//! decodes into odd values reach the server. A body that decodes into
//! something that would touch the node outside the test's own places (a
//! log directory or mount source elsewhere, a cgroup_parent, sysctls, an
//! image on another host: berthd would make or contact them, as kubelet
//! expects) is drawn again rather than sent.
//!
//! `BERTH_FUZZ_N` requests of each kind (default 10000); CI runs one fixed
//! seed, `BERTH_FUZZ_SEED=random` a new one (printed, to repeat it with
//! `BERTH_FUZZ_SEED=N`). Six random seeds of 10000 each passed when this
//! landed, after the defects they found were fixed.

mod common;

use std::time::{Duration, Instant};

use berth_conformance::Env;
use berth_conformance::cri::sandbox_config;
use berth_conformance::pods::*;
use berth_cri_api::v1 as cri;
use bytes::{Buf, BufMut};
use common::*;
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The seed CI runs (any other: `BERTH_FUZZ_SEED=N` or `=random`).
const DEFAULT_SEED: u64 = 1_796_607_510_125_606_267;

/// splitmix64: small, seedable, good enough to draw mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A body: random bytes (1 in 10), byte-mutated `valid` (2 in 10), else
/// `valid` mutated field by field at the protobuf wire level (it still
/// decodes, with odd values: the handlers' logic is what is tried).
fn draw(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let n = rng.below(256);
            (0..n).map(|_| rng.next() as u8).collect()
        }
        1 | 2 => mutate_bytes(rng, valid),
        _ => {
            let mut fields = parse(valid).expect("a valid message parses");
            for _ in 0..1 + rng.below(4) {
                mutate_fields(rng, &mut fields, 0);
            }
            encode(&fields)
        }
    }
}

fn mutate_bytes(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut b = valid.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = b.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                b.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                b.remove(rng.below(len));
            }
            4 => b.truncate(rng.below(len + 1)),
            _ if len > 0 => {
                // Repeat a slice (a field twice, a length that lies).
                let i = rng.below(len);
                let j = (i + 1 + rng.below(16)).min(len);
                let part = b[i..j].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, part);
            }
            _ => {}
        }
    }
    b
}

/// One field of the protobuf wire format.
#[derive(Clone, Debug)]
enum Val {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&x, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse(mut b: &[u8]) -> Option<Vec<(u32, Val)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let num = u32::try_from(key >> 3).ok().filter(|&n| n > 0)?;
        let val = match key & 7 {
            0 => Val::Varint(varint(&mut b)?),
            1 => {
                let (x, rest) = b.split_at_checked(8)?;
                b = rest;
                Val::Fixed64(u64::from_le_bytes(x.try_into().ok()?))
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let (x, rest) = b.split_at_checked(n)?;
                b = rest;
                Val::Bytes(x.to_vec())
            }
            5 => {
                let (x, rest) = b.split_at_checked(4)?;
                b = rest;
                Val::Fixed32(u32::from_le_bytes(x.try_into().ok()?))
            }
            _ => return None,
        };
        out.push((num, val));
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let x = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(x);
            return;
        }
        out.push(x | 0x80);
    }
}

fn encode(fields: &[(u32, Val)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (num, val) in fields {
        let (wire, body): (u64, Vec<u8>) = match val {
            Val::Varint(v) => {
                let mut b = Vec::new();
                put_varint(&mut b, *v);
                (0, b)
            }
            Val::Fixed64(v) => (1, v.to_le_bytes().to_vec()),
            Val::Bytes(x) => {
                let mut b = Vec::new();
                put_varint(&mut b, x.len() as u64);
                b.extend_from_slice(x);
                (2, b)
            }
            Val::Fixed32(v) => (5, v.to_le_bytes().to_vec()),
        };
        put_varint(&mut out, (u64::from(*num) << 3) | wire);
        out.extend(body);
    }
    out
}

/// Strings a request should never trip over.
const NASTY: &[&str] = &[
    "",
    "/",
    "..",
    "../../../../etc/passwd",
    "/etc/passwd",
    "a\0b",
    "-1",
    "0",
    "9223372036854775808",
    "SIGKILL",
    "localhost/x",
    "%s%n%x",
    "\u{202e}evil",
    "名前",
    " ",
    "a=b",
    "net.ipv4.ip_forward",
    "kernel.shmmax",
    "/proc/self/fd/0",
    "/dev/sda",
    "rwm",
    "*",
];

const NASTY_INTS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    65535,
    65536,
];

/// Change one thing: a value (varints to edge values, strings to nasty
/// ones or long or invalid UTF-8, nested messages recursively), or drop,
/// repeat or add a field.
fn mutate_fields(rng: &mut Rng, fields: &mut Vec<(u32, Val)>, depth: usize) {
    if fields.is_empty() || rng.below(8) == 0 {
        // A known field number (its wire type may not match: a decode
        // error) or an unknown one (skipped by the decoder).
        let num = if rng.below(2) == 0 {
            1 + rng.below(20) as u32
        } else {
            1000 + rng.below(1000) as u32
        };
        let val = match rng.below(3) {
            0 => Val::Varint(NASTY_INTS[rng.below(NASTY_INTS.len())]),
            1 => Val::Bytes(NASTY[rng.below(NASTY.len())].as_bytes().to_vec()),
            _ => Val::Fixed32(rng.next() as u32),
        };
        fields.push((num, val));
        return;
    }
    let i = rng.below(fields.len());
    match rng.below(10) {
        0 => {
            fields.remove(i);
        }
        1 => {
            let f = fields[i].clone();
            fields.push(f);
        }
        _ => match &mut fields[i].1 {
            Val::Varint(v) => {
                *v = if rng.below(2) == 0 {
                    NASTY_INTS[rng.below(NASTY_INTS.len())]
                } else {
                    rng.next() >> rng.below(64)
                }
            }
            Val::Fixed64(v) => *v = rng.next(),
            Val::Fixed32(v) => *v = rng.next() as u32,
            Val::Bytes(b) => {
                let nested = parse(b).filter(|f| !f.is_empty() && encode(f) == *b);
                match nested {
                    Some(mut sub) if depth < 6 && rng.below(4) != 0 => {
                        mutate_fields(rng, &mut sub, depth + 1);
                        *b = encode(&sub);
                    }
                    _ => {
                        *b = match rng.below(12) {
                            0 => vec![b'a'; 1 + rng.below(70_000)],
                            // Not UTF-8 where a string is: a decode error.
                            1 => (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
                            2..=4 => {
                                let mut s = b.clone();
                                s.extend_from_slice(NASTY[rng.below(NASTY.len())].as_bytes());
                                s
                            }
                            _ => NASTY[rng.below(NASTY.len())].as_bytes().to_vec(),
                        }
                    }
                }
            }
        },
    }
}

/// Bodies as they are: what the server must decode (or refuse) itself.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// What a body may not ask of the node (see the module comment); `tmp` is
/// the test's own directory.
fn safe_pod(c: &cri::PodSandboxConfig, tmp: &str) -> bool {
    let linux = c.linux.clone().unwrap_or_default();
    (c.log_directory.is_empty() || c.log_directory.starts_with(tmp))
        && !c.log_directory.contains("..")
        && linux.cgroup_parent.is_empty()
        && linux.sysctls.is_empty()
}

fn safe_container(c: &cri::ContainerConfig) -> bool {
    c.mounts
        .iter()
        .all(|m| m.host_path.is_empty() || std::path::Path::new(&m.host_path).exists())
}

#[derive(Default, Debug)]
struct Tally {
    sent: usize,
    ok: usize,
    redrawn: usize,
    codes: std::collections::BTreeMap<String, usize>,
    /// The first message of each code, cut to 100 bytes.
    sample: std::collections::BTreeMap<String, String>,
}

#[tokio::test]
async fn malformed_and_mutated_requests_get_answers_and_change_nothing_else() {
    let n: usize = std::env::var("BERTH_FUZZ_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // CI runs one fixed seed, so that main stays green on what it has
    // passed; `BERTH_FUZZ_SEED=random` explores (and prints the seed).
    let seed: u64 = match std::env::var("BERTH_FUZZ_SEED").ok().as_deref() {
        None | Some("") => DEFAULT_SEED,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        Some(v) => v.parse().expect("BERTH_FUZZ_SEED: a number or \"random\""),
    };
    println!("fuzz: BERTH_FUZZ_SEED={seed} BERTH_FUZZ_N={n}");
    let mut rng = Rng(seed);
    let env = Env::start().await;
    let image = push_busybox(&env, "fuzz/busybox:1").await;
    let tmp = tempfile::tempdir().unwrap();
    let tmp_s = tmp.path().display().to_string();

    // The witness: never a target; it must run on untouched.
    let witness = run_pod(&env, sandbox_config("witness"), &image).await;
    let w = run(&env, &witness, container(&witness, "w", &["sleep", "3600"])).await;
    // The targets.
    let target = run_pod(&env, sandbox_config("target"), &image).await;
    let t = run(&env, &target, container(&target, "t", &["sleep", "3600"])).await;

    let mut pod = sandbox_config("fuzzed");
    pod.log_directory = tmp_s.clone();
    pod.hostname = "fuzzed".into();
    pod.labels.insert("fuzz".into(), "1".into());
    pod.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let mut ctr = container(&target, "fuzzed", &["sleep", "3600"]);
    ctr.envs = vec![cri::KeyValue {
        key: "A".into(),
        value: b"b".to_vec(),
    }];
    ctr.working_dir = "/tmp".into();
    ctr.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let baselines: Vec<(&str, Vec<u8>)> = vec![
        (
            "/runtime.v1.RuntimeService/RunPodSandbox",
            cri::RunPodSandboxRequest {
                config: Some(pod),
                runtime_handler: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/CreateContainer",
            cri::CreateContainerRequest {
                pod_sandbox_id: target.id.clone(),
                config: Some(ctr),
                sandbox_config: Some(target.config.clone()),
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ExecSync",
            cri::ExecSyncRequest {
                container_id: t.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/PullImage",
            cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: Some(cri::AuthConfig {
                    username: "u".into(),
                    password: "p".into(),
                    ..Default::default()
                }),
                sandbox_config: None,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/UpdateContainerResources",
            cri::UpdateContainerResourcesRequest {
                container_id: t.clone(),
                linux: Some(cri::LinuxContainerResources {
                    cpu_shares: 256,
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    memory_limit_in_bytes: 128 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    // The registry's host: the only one a PullImage may name.
    let registry_host = image.split('/').next().unwrap().to_string();

    let mut grpc = tonic::client::Grpc::new(env.cri.channel.clone());
    let started = Instant::now();
    for (path, valid) in &baselines {
        let mut tally = Tally::default();
        let kind = path.rsplit('/').next().unwrap();
        while tally.sent < n {
            let body = draw(&mut rng, valid);
            // Bodies that decode into something unsafe for the node are
            // drawn again; undecodable ones go as they are.
            let safe = match kind {
                "RunPodSandbox" => cri::RunPodSandboxRequest::decode(&body[..])
                    .map(|r| r.config.as_ref().is_none_or(|c| safe_pod(c, &tmp_s)))
                    .unwrap_or(true),
                "CreateContainer" => cri::CreateContainerRequest::decode(&body[..])
                    .map(|r| r.config.as_ref().is_none_or(safe_container))
                    .unwrap_or(true),
                "PullImage" => cri::PullImageRequest::decode(&body[..])
                    .map(|r| {
                        let i = r.image.map(|i| i.image).unwrap_or_default();
                        i.is_empty() || i.starts_with(&format!("{registry_host}/"))
                    })
                    .unwrap_or(true),
                _ => true,
            };
            if !safe {
                tally.redrawn += 1;
                continue;
            }
            tally.sent += 1;
            grpc.ready().await.expect("berthd's channel is ready");
            let call = grpc.unary(
                tonic::Request::new(body.clone()),
                http::uri::PathAndQuery::from_static(path),
                Raw,
            );
            // The start of the body, for the failure messages.
            let head = &body[..body.len().min(256)];
            let answer = tokio::time::timeout(Duration::from_secs(60), call)
                .await
                .unwrap_or_else(|_| {
                    panic!("{kind}: no answer within 60 s (seed {seed}, body {head:02x?})")
                });
            match answer {
                Ok(resp) => {
                    tally.ok += 1;
                    // Take away what a successful call made.
                    let bytes = resp.into_inner();
                    match kind {
                        "RunPodSandbox" => {
                            let id = cri::RunPodSandboxResponse::decode(&bytes[..])
                                .expect("a RunPodSandboxResponse")
                                .pod_sandbox_id;
                            let mut rt = env.cri.runtime.clone();
                            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                                pod_sandbox_id: id.clone(),
                            })
                            .await
                            .expect("StopPodSandbox of a fuzzed pod");
                            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                                pod_sandbox_id: id,
                            })
                            .await
                            .expect("RemovePodSandbox of a fuzzed pod");
                        }
                        "CreateContainer" => {
                            let id = cri::CreateContainerResponse::decode(&bytes[..])
                                .expect("a CreateContainerResponse")
                                .container_id;
                            env.cri
                                .runtime
                                .clone()
                                .remove_container(cri::RemoveContainerRequest { container_id: id })
                                .await
                                .expect("RemoveContainer of a fuzzed container");
                        }
                        _ => {}
                    }
                }
                Err(s) => {
                    // A body that does not decode is INTERNAL, as the gRPC
                    // status code table has it ("error parsing request
                    // proto"), with tonic's message naming the field; any
                    // other INTERNAL or UNKNOWN is berth's own failure.
                    let undecodable = s.code() == Code::Internal
                        && s.message().starts_with("failed to decode Protobuf message");
                    assert!(
                        undecodable || !matches!(s.code(), Code::Unknown | Code::Internal),
                        "{kind}: {:?} {:?} (seed {seed}, body {head:02x?})",
                        s.code(),
                        s.message()
                    );
                    assert!(
                        !s.message().is_empty(),
                        "{kind}: {:?} without a message (seed {seed}, body {head:02x?})",
                        s.code()
                    );
                    let code = format!("{:?}", s.code());
                    *tally.codes.entry(code.clone()).or_default() += 1;
                    tally
                        .sample
                        .entry(code)
                        .or_insert_with(|| s.message().chars().take(100).collect());
                }
            }
        }
        println!("fuzz: {kind}: {tally:?}");
    }
    println!(
        "fuzz: {} requests in {:.1} s",
        n * baselines.len(),
        started.elapsed().as_secs_f64()
    );

    // berthd still answers, the witness runs on untouched.
    env.cri.version().await.expect("Version after the fuzzing");
    let st = status(&env, &w).await.expect("the witness's status");
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    assert_eq!(sh(&env, &w, "echo alive").await, "alive\n");
    let pods = env
        .cri
        .runtime
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 2, "only the witness and the target: {pods:?}");
    remove_pod(&env, target).await;
    remove_pod(&env, witness).await;
    env.finish().await;
}

/// Found by the fuzzing above: an ExecSync timeout near i64::MAX
/// overflowed (berthd) and made `Instant + Duration` panic in the shim,
/// which would have left its container without a monitor.
#[tokio::test]
async fn extreme_exec_timeouts_neither_overflow_nor_kill_the_shim() {
    let env = Env::start().await;
    let image = push_busybox(&env, "fuzz/busybox-timeouts:1").await;
    let p = run_pod(&env, sandbox_config("timeouts"), &image).await;
    let id = run(&env, &p, container(&p, "t", &["sleep", "3600"])).await;
    let mut rt = env.cri.runtime.clone();
    for timeout in [
        i64::MAX,
        i64::MAX / 1000 + 1,
        57_146_044_865_688_956,
        i64::MIN,
        -1,
    ] {
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["echo".into(), "ok".into()],
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync with timeout {timeout}: {e:?}"))
            .into_inner();
        assert_eq!(
            (out.exit_code, out.stdout.as_slice()),
            (0, &b"ok\n"[..]),
            "{timeout}"
        );
    }
    let st = status(&env, &id).await.expect("ContainerStatus");
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "the shim lives on"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}

/// Also found by the fuzzing: a request that does not fit the image or
/// the node (a working_dir that is a file of the image, a log_path through
/// a file, a CFS quota the kernel refuses) was INTERNAL; it is the
/// caller's to fix: FAILED_PRECONDITION, naming what.
#[tokio::test]
async fn requests_that_do_not_fit_the_image_or_kernel_are_failed_precondition() {
    let env = Env::start().await;
    let image = push_busybox(&env, "fuzz/busybox-paths:1").await;
    let p = run_pod(&env, sandbox_config("paths"), &image).await;
    let mut c = container(&p, "wd", &["true"]);
    c.working_dir = "/etc/passwd/sub".into();
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::FailedPrecondition],
        "working_dir through a file",
    );
    assert!(s.message().contains("/etc/passwd"), "{}", s.message());
    std::fs::write(p.logs.path().join("file"), "").unwrap();
    let mut c = container(&p, "log", &["true"]);
    c.log_path = "file/c.log".into();
    let s = expect_code(
        create(&env, &p, c).await,
        &[Code::FailedPrecondition],
        "log_path through a file",
    );
    assert!(s.message().contains("file/c.log"), "{}", s.message());
    assert!(
        list_containers(&env, &p.id).await.is_empty(),
        "nothing was made"
    );
    remove_pod(&env, p).await;
    env.finish().await;
}
