//! The benchmark image, generated in memory from a seed: a busybox base layer
//! and six layers mixing incompressible content (bytes from a seeded
//! xoshiro256++) with compressible content (source-like text, repetitive
//! logs), many small files and a few large ones, all gzip.
//!
//! The last layer (large random files) is sized so that the compressed image
//! (layers + config) is at least the requested size.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use berth_conformance::images::{
    self, Compression, Format, Image, ImageBuilder, Layer, TarBuilder,
};

/// MB as used everywhere in the bench: 10^6 bytes.
pub const MB: f64 = 1_000_000.0;

/// xoshiro256++ seeded through splitmix64: fast, deterministic, good enough
/// to make gzip find nothing to compress.
#[derive(Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Pseudo-words made of syllables: a vocabulary for text-like files.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ne", "ro", "su", "ta", "vi", "xo", "ze", "an", "el", "in", "or", "un",
        "str", "buf", "ctx", "req", "res", "cfg", "get", "set", "new", "map", "err", "val", "key",
        "len", "idx",
    ];
    (0..400)
        .map(|_| {
            let n = rng.range(1, 4);
            (0..n)
                .map(|_| SYL[rng.range(0, SYL.len() as u64 - 1) as usize])
                .collect::<String>()
        })
        .collect()
}

/// Source-code-like text of about `n` bytes (gzip: roughly 3-4x).
fn text(rng: &mut Rng, vocab: &[String], n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n + 128);
    fn pick<'a>(rng: &mut Rng, vocab: &'a [String]) -> &'a str {
        &vocab[rng.range(0, vocab.len() as u64 - 1) as usize]
    }
    let w = |rng: &mut Rng| pick(rng, vocab);
    let mut depth = 0usize;
    while s.len() < n {
        match rng.range(0, 9) {
            0 => {
                s.push_str(&"  ".repeat(depth));
                s.push_str("function ");
                s.push_str(w(rng));
                s.push('_');
                s.push_str(w(rng));
                s.push('(');
                s.push_str(w(rng));
                s.push_str(", ");
                s.push_str(w(rng));
                s.push_str(") {\n");
                depth = (depth + 1).min(6);
            }
            1 if depth > 0 => {
                depth -= 1;
                s.push_str(&"  ".repeat(depth));
                s.push_str("}\n");
            }
            2 => {
                s.push_str(&"  ".repeat(depth));
                s.push_str("// ");
                for _ in 0..rng.range(3, 12) {
                    s.push_str(w(rng));
                    s.push(' ');
                }
                s.push('\n');
            }
            _ => {
                s.push_str(&"  ".repeat(depth));
                s.push_str("const ");
                s.push_str(w(rng));
                s.push_str(" = ");
                s.push_str(w(rng));
                s.push('.');
                s.push_str(w(rng));
                s.push('(');
                s.push_str(&rng.range(0, 100_000).to_string());
                s.push_str(", \"");
                s.push_str(w(rng));
                s.push_str("\");\n");
            }
        }
    }
    s.truncate(n);
    s.into_bytes()
}

/// Log-like lines with counters: very compressible (gzip: roughly 8-15x).
fn logs(rng: &mut Rng, n: usize, file_no: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut s = String::with_capacity(n + 256);
    let paths = [
        "/api/v1/items",
        "/api/v1/users",
        "/healthz",
        "/metrics",
        "/api/v2/orders",
    ];
    let mut i = 0u64;
    while s.len() < n {
        i += 1;
        let _ = writeln!(
            s,
            "2024-01-01T{:02}:{:02}:{:02}.{:03}Z INFO worker={} request id={:08} path={}/{} status={} duration={}ms",
            (i / 3_600_000) % 24,
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000,
            file_no,
            i,
            paths[(i % 5) as usize],
            rng.range(1, 999),
            if rng.range(0, 50) == 0 { 500 } else { 200 },
            rng.range(1, 40)
        );
    }
    s.truncate(n);
    s.into_bytes()
}

/// What one generated layer holds (before compression).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    pub name: String,
    pub files: u64,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub digest: String,
}

/// The generated image and a description of it.
pub struct BenchImage {
    pub image: Image,
    pub layers: Vec<LayerInfo>,
    pub generation: Duration,
}

impl BenchImage {
    pub fn compressed(&self) -> u64 {
        self.image.compressed_size()
    }
    pub fn uncompressed(&self) -> u64 {
        self.image.unpacked_size()
    }
}

/// One layer to build: a name and a tar-building closure.
type Plan = (String, Box<dyn FnOnce() -> (TarBuilder, u64) + Send>);

fn dirs_for(t: TarBuilder, path: &str) -> TarBuilder {
    let mut t = t;
    let mut acc = String::new();
    for part in path.split('/') {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        t = t.dir(&acc, 0o755);
    }
    t
}

/// Generate the image: compressed size (layers + config) >= `target_bytes`.
pub fn generate(target_bytes: u64, seed: u64) -> Result<BenchImage> {
    let started = Instant::now();
    let s = target_bytes as f64;
    let frac = |f: f64| (s * f) as usize;

    let plans: Vec<Plan> = vec![
        // A few large incompressible files (binaries, models).
        ("large-random".into(), {
            let sizes = [frac(0.12), frac(0.08), frac(0.05)];
            Box::new(move || {
                let mut rng = Rng::new(seed ^ 1);
                let mut t = dirs_for(TarBuilder::new(), "opt/bench/bin");
                for (i, n) in sizes.iter().enumerate() {
                    t = t.file(
                        &format!("opt/bench/bin/blob-{i}.bin"),
                        0o755,
                        &rng.bytes(*n),
                    );
                }
                (t, sizes.len() as u64)
            })
        }),
        // Many small text files (a node_modules-like tree), a few symlinks.
        ("small-text".into(), {
            let total = frac(0.25);
            Box::new(move || {
                let mut rng = Rng::new(seed ^ 2);
                let vocab = vocabulary(&mut rng);
                let mut t = dirs_for(TarBuilder::new(), "usr/lib/node_modules");
                let (mut done, mut files, mut pkg) = (0usize, 0u64, 0usize);
                while done < total {
                    let dir = format!("usr/lib/node_modules/pkg-{pkg:04}");
                    t = t.dir(&dir, 0o755).dir(&format!("{dir}/lib"), 0o755);
                    for f in 0..rng.range(5, 40) {
                        let n = rng.range(200, 12_000) as usize;
                        t = t.file(
                            &format!("{dir}/lib/mod-{f:03}.js"),
                            0o644,
                            &text(&mut rng, &vocab, n),
                        );
                        done += n;
                        files += 1;
                    }
                    t = t.symlink(&format!("{dir}/index.js"), "lib/mod-000.js");
                    pkg += 1;
                }
                (t, files)
            })
        }),
        // Medium files, half random, half text (assets, docs).
        ("medium-mixed".into(), {
            let total = frac(0.20);
            Box::new(move || {
                let mut rng = Rng::new(seed ^ 3);
                let vocab = vocabulary(&mut rng);
                let mut t = dirs_for(TarBuilder::new(), "usr/share/bench/assets");
                let (mut done, mut files) = (0usize, 0u64);
                while done < total {
                    let n = rng.range(16 << 10, 2 << 20) as usize;
                    let (name, data) = if files % 2 == 0 {
                        (
                            format!("usr/share/bench/assets/img-{files:05}.png"),
                            rng.bytes(n),
                        )
                    } else {
                        (
                            format!("usr/share/bench/assets/doc-{files:05}.html"),
                            text(&mut rng, &vocab, n),
                        )
                    };
                    t = t.file(&name, 0o644, &data);
                    done += n;
                    files += 1;
                }
                (t, files)
            })
        }),
        // A few large, very compressible files (logs, data dumps).
        ("large-logs".into(), {
            let total = frac(0.20);
            Box::new(move || {
                let mut rng = Rng::new(seed ^ 4);
                let mut t = dirs_for(TarBuilder::new(), "var/log/bench");
                let per = total / 4;
                for i in 0..4 {
                    t = t.file(
                        &format!("var/log/bench/app-{i}.log"),
                        0o640,
                        &logs(&mut rng, per, i),
                    );
                }
                (t, 4)
            })
        }),
        // Many small incompressible files (compiled modules, icons).
        ("small-random".into(), {
            let total = frac(0.10);
            Box::new(move || {
                let mut rng = Rng::new(seed ^ 5);
                let mut t = dirs_for(TarBuilder::new(), "usr/lib/python3/dist-packages");
                let (mut done, mut files) = (0usize, 0u64);
                while done < total {
                    let dir = format!(
                        "usr/lib/python3/dist-packages/mod{:03}/__pycache__",
                        files / 64
                    );
                    if files % 64 == 0 {
                        t = t
                            .dir(dir.trim_end_matches("/__pycache__"), 0o755)
                            .dir(&dir, 0o755);
                    }
                    let n = rng.range(512, 32 << 10) as usize;
                    t = t.file(
                        &format!("{dir}/m{files:05}.cpython-311.pyc"),
                        0o644,
                        &rng.bytes(n),
                    );
                    done += n;
                    files += 1;
                }
                (t, files)
            })
        }),
    ];

    // Compress the planned layers on two threads (this machine has 2 cores).
    let mut built: Vec<Option<(String, Layer, u64)>> = (0..plans.len()).map(|_| None).collect();
    let (even, odd): (Vec<_>, Vec<_>) =
        plans.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let build = |part: Vec<(usize, Plan)>| -> Vec<(usize, String, Layer, u64)> {
        part.into_iter()
            .map(|(i, (name, f))| {
                let (tar, files) = f();
                (i, name, tar.layer(Compression::Gzip, Format::Oci), files)
            })
            .collect()
    };
    let results = std::thread::scope(|sc| {
        let h = sc.spawn(|| build(odd));
        let mut r = build(even);
        r.extend(
            h.join()
                .map_err(|_| anyhow!("layer generator thread panicked"))?,
        );
        Ok::<_, anyhow::Error>(r)
    })?;
    for (i, name, layer, files) in results {
        built[i] = Some((name, layer, files));
    }

    let base = images::busybox_layer(Compression::Gzip, Format::Oci);
    let mut layers: Vec<(String, Layer, u64)> = vec![(
        "busybox-base".into(),
        base,
        images::busybox_applets().len() as u64 + 1,
    )];
    layers.extend(built.into_iter().flatten());

    // Top up with large random files until the compressed image reaches the target.
    let so_far: u64 = layers.iter().map(|(_, l, _)| l.blob.size()).sum::<u64>() + 4096;
    let missing = target_bytes.saturating_sub(so_far).max(4 << 20) as usize;
    let mut rng = Rng::new(seed ^ 6);
    let mut t = dirs_for(TarBuilder::new(), "opt/bench/data");
    let halves = [missing / 2, missing - missing / 2];
    for (i, n) in halves.iter().enumerate() {
        t = t.file(
            &format!("opt/bench/data/model-{i}.bin"),
            0o644,
            &rng.bytes(*n),
        );
    }
    layers.push((
        "large-random-topup".into(),
        t.layer(Compression::Gzip, Format::Oci),
        2,
    ));

    let mut builder = ImageBuilder::new(Format::Oci)
        .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["sh"])
        .label("berth.bench.seed", &seed.to_string());
    let mut infos = Vec::new();
    for (name, layer, files) in layers {
        infos.push(LayerInfo {
            name,
            files,
            compressed_bytes: layer.blob.size(),
            uncompressed_bytes: layer.tar_size,
            digest: layer.blob.digest.clone(),
        });
        builder = builder.layer(layer);
    }
    let image = builder.build();
    if image.compressed_size() < target_bytes {
        return Err(anyhow!(
            "generated image is {} bytes compressed, below the target {target_bytes}",
            image.compressed_size()
        ));
    }
    Ok(BenchImage {
        image,
        layers: infos,
        generation: started.elapsed(),
    })
}

/// A pause-like image: busybox whose entrypoint sleeps forever.
pub fn pause_image() -> Image {
    ImageBuilder::busybox(Format::Oci)
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done",
        ])
        .cmd(&[])
        .label("berth.bench", "pause")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_fills_tails() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.bytes(13), b.bytes(13));
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn text_and_logs_have_the_asked_size() {
        let mut rng = Rng::new(1);
        let vocab = vocabulary(&mut rng);
        assert_eq!(text(&mut rng, &vocab, 5000).len(), 5000);
        assert_eq!(logs(&mut rng, 7000, 0).len(), 7000);
    }
}
