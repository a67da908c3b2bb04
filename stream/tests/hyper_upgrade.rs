//! The upgrade handshake with a real HTTP server: hyper 1 answers with 101,
//! `hyper::upgrade::on` hands over the connection, and SPDY runs on it
//! against this crate's client side over loopback TCP.

use std::convert::Infallible;

use berth_stream::k8s::{self, header, stream_type};
use berth_stream::spdy::{Config, Headers, Session};
use berth_stream::upgrade::{self, ClientHandshakeError, UpgradeRequest};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What berth's streaming server will do, in small: negotiate, answer 101,
/// then serve SPDY on the upgraded connection (here: echo every stream, and
/// say which protocol was chosen in the reply headers).
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let accepted = match upgrade::accept(req.headers(), k8s::protocol::REMOTECOMMAND_SPDY) {
        Ok(a) => a,
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(e.to_string())));
            *resp.status_mut() = e.status();
            resp.headers_mut().extend(e.response_headers());
            return Ok(resp);
        }
    };
    let protocol = accepted.protocol.to_string();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => panic!("upgrade failed: {e}"),
        };
        let session = Session::server(TokioIo::new(upgraded), Config::default());
        while let Some(inc) = session.accept().await {
            let mut s = inc
                .reply(Headers::new().with("protocol", protocol.clone()))
                .unwrap();
            tokio::spawn(async move {
                let mut data = Vec::new();
                s.read_to_end(&mut data).await.unwrap();
                s.write_all(&data).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = accepted.headers;
    Ok(resp)
}

async fn serve() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(handle))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn hyper_server_upgrades_to_spdy() {
    let addr = serve().await;
    let host = addr.to_string();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = UpgradeRequest {
        method: "POST",
        path: "/exec/token?command=cat&input=1&output=1",
        host: &host,
        protocols: &["v4.channel.k8s.io", "v3.channel.k8s.io"],
        headers: &[],
    };
    let up = upgrade::client_handshake(tcp, &req).await.unwrap();
    assert_eq!(up.protocol.as_deref(), Some("v4.channel.k8s.io"));
    let session = Session::client(up.io, Config::default());

    let mut tasks = Vec::new();
    for t in [stream_type::STDIN, stream_type::STDOUT, stream_type::ERROR] {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = session
                .open(Headers::new().with(header::STREAM_TYPE, t))
                .await
                .unwrap();
            assert_eq!(s.reply_headers().get("protocol"), Some("v4.channel.k8s.io"));
            let payload: Vec<u8> = t.bytes().cycle().take(300_000).collect();
            let (mut rd, mut wr) = tokio::io::split(&mut s);
            let ((), echo) = tokio::join!(
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
            assert_eq!(echo, payload);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    session.ping().await.unwrap();
    session.close().await;
}

#[tokio::test]
async fn hyper_server_refuses_unknown_protocols_with_403() {
    let addr = serve().await;
    let host = addr.to_string();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = UpgradeRequest {
        method: "POST",
        path: "/exec/token",
        host: &host,
        protocols: &["v9.channel.k8s.io"],
        headers: &[],
    };
    match upgrade::client_handshake(tcp, &req).await {
        Err(ClientHandshakeError::Refused {
            status,
            headers,
            body,
        }) => {
            assert_eq!(status, 403);
            let accepted: Vec<_> = headers
                .get_all(header::ACCEPTED_PROTOCOL_VERSIONS)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            assert_eq!(accepted, k8s::protocol::REMOTECOMMAND_SPDY);
            assert!(body.contains("unable to negotiate protocol"), "{body}");
        }
        other => panic!("{other:?}"),
    }
}
