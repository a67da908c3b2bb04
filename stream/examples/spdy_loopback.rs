//! Loopback tools for the SPDY session.
//!
//! ```text
//! cargo run --release -p berth-stream --example spdy_loopback -- bench [MB]
//!     one stream, MB megabytes (default 100) client to server on 127.0.0.1,
//!     then the same server to client; prints MB/s
//! cargo run --release -p berth-stream --example spdy_loopback -- tcp [MB]
//!     the same transfer over plain TCP, for comparison
//! cargo run --release -p berth-stream --example spdy_loopback -- server ADDR
//!     raw SPDY (no HTTP upgrade) echo server: every stream's data comes back
//!     on it, then FIN; for checking other implementations against this one
//! cargo run --release -p berth-stream --example spdy_loopback -- client ADDR [MB]
//!     raw SPDY client for such a server: three streams, MB each way, checked
//! ```

use std::time::Instant;

use berth_stream::spdy::{Config, Headers, Session, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn byte_at(i: usize) -> u8 {
    (i % 251) as u8
}

/// Writes `total` bytes of the pattern and FIN.
async fn send(s: &mut (impl AsyncWriteExt + Unpin), total: usize) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..PERIOD).map(byte_at).collect();
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(chunk.len());
        s.write_all(&chunk[..n]).await?;
        sent += n;
    }
    s.shutdown().await
}

const PERIOD: usize = 251 * 256;
const READ_BUF: usize = 256 * 1024;

/// Reads to FIN; returns the count and whether every byte was right.
async fn drain(s: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(usize, bool)> {
    // The pattern repeats every PERIOD bytes: compare slices (memcmp).
    let pat: Vec<u8> = (0..PERIOD + READ_BUF).map(byte_at).collect();
    let mut buf = vec![0u8; READ_BUF];
    let mut got = 0;
    let mut ok = true;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok((got, ok));
        }
        let off = got % PERIOD;
        ok &= buf[..n] == pat[off..off + n];
        got += n;
    }
}

async fn bench(mb: usize) {
    let total = mb * 1_000_000;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (c, s) = (c.unwrap(), s.unwrap().0);
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    let client = Session::client(c, Config::default());
    let server = Session::server(s, Config::default());
    let srv = tokio::spawn(async move {
        let mut st = server
            .accept()
            .await
            .unwrap()
            .reply(Headers::new())
            .unwrap();
        let t0 = Instant::now();
        let (got, ok) = drain(&mut st).await.unwrap();
        let up = t0.elapsed();
        let t1 = Instant::now();
        send(&mut st, total).await.unwrap();
        (server, st, got, ok, up, t1)
    });
    let mut st: Stream = client.open(Headers::new()).await.unwrap();
    send(&mut st, total).await.unwrap();
    let (got_down, ok_down) = drain(&mut st).await.unwrap();
    let (server, _st, got, ok, up, t1) = srv.await.unwrap();
    let down = t1.elapsed();
    assert_eq!((got, ok, got_down, ok_down), (total, true, total, true));
    let rate = |d: std::time::Duration| total as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{mb} MB client->server in {up:.2?} ({:.0} MB/s), server->client in {down:.2?} ({:.0} MB/s)",
        rate(up),
        rate(down)
    );
    println!("server {:?}", server.stats());
    println!("client {:?}", client.stats());
}

/// The same transfer over plain TCP, for comparison.
async fn tcp_baseline(mb: usize) {
    let total = mb * 1_000_000;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap().0);
    let t0 = Instant::now();
    let rx = tokio::spawn(async move { drain(&mut s).await.unwrap() });
    send(&mut c, total).await.unwrap();
    let (got, ok) = rx.await.unwrap();
    assert_eq!((got, ok), (total, true));
    let d = t0.elapsed();
    println!(
        "{mb} MB over plain TCP in {d:.2?} ({:.0} MB/s)",
        total as f64 / d.as_secs_f64() / 1e6
    );
}

async fn server(addr: &str) {
    let l = TcpListener::bind(addr).await.unwrap();
    println!("listening on {}", l.local_addr().unwrap());
    loop {
        let (tcp, peer) = l.accept().await.unwrap();
        tokio::spawn(async move {
            let session = Session::server(tcp, Config::default());
            while let Some(inc) = session.accept().await {
                let headers = inc.headers().clone();
                let mut st = inc.reply(Headers::new().with("echo", "yes")).unwrap();
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tokio::io::split(&mut st);
                    let n = tokio::io::copy(&mut rd, &mut wr).await;
                    let _ = wr.shutdown().await;
                    println!("{peer}: stream {headers:?} echoed {n:?}");
                });
            }
            println!("{peer}: session ended: {}", session.closed().await);
        });
    }
}

async fn client(addr: &str, mb: usize) {
    let total = mb * 1_000_000;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let session = Session::client(tcp, Config::default());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in ["stdin", "stdout", "error"] {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = session
                .open(Headers::new().with("streamType", t))
                .await
                .unwrap();
            let (mut rd, mut wr) = tokio::io::split(&mut st);
            let (w, r) = tokio::join!(send(&mut wr, total), drain(&mut rd));
            w.unwrap();
            let (got, ok) = r.unwrap();
            assert_eq!((got, ok), (total, true), "stream {t}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rtt = session.ping().await.unwrap();
    println!(
        "3 streams x {mb} MB each way in {:.2?}; ping {rtt:?}; {:?}",
        t0.elapsed(),
        session.stats()
    );
    println!("closed: {}", session.close().await);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mb = |i: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(100);
    match args.first().map(String::as_str) {
        Some("bench") | None => bench(mb(1)).await,
        Some("tcp") => tcp_baseline(mb(1)).await,
        Some("server") => server(args.get(1).map_or("127.0.0.1:0", String::as_str)).await,
        Some("client") => client(args.get(1).map_or("127.0.0.1:9999", String::as_str), mb(2)).await,
        Some(other) => {
            eprintln!("unknown mode {other}: bench [MB] | server ADDR | client ADDR [MB]")
        }
    }
}
