//! tonic answers a method it does not know (one newer than the cri-api
//! release berth-cri-api vendors, or a misspelt one) with a bare
//! UNIMPLEMENTED. This layer only adds a message that names the method, for
//! people reading logs. The calls the bindings do know but berth does not
//! implement yet answer UNIMPLEMENTED themselves (`status::not_yet`).
//!
//! It logs one line per call at debug (method, code, duration), and keeps
//! A call past the client's deadline (its `grpc-timeout`) is answered
//! DEADLINE_EXCEEDED, as the gRPC spec has a server do: tonic's own
//! deadline answers CANCELLED ("Timeout expired"), which clients read as a
//! cancellation (critest's "public image should timeout if requested"
//! wants DEADLINE_EXCEEDED). This layer's timer is made before tonic's,
//! with the same duration, and tonic polls the call before its own timer,
//! so this answer is the one sent.
//!
//! It keeps error messages within what a client takes: a message
//! quoting a 70 KB hostname back would exceed HTTP/2's header list limit
//! (16 KiB in grpc-go and hyper), and the client would see a protocol
//! error instead of the answer. grpc-message is cut to MAX_MESSAGE bytes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

/// The longest error message sent (before percent-encoding).
const MAX_MESSAGE: usize = 2048;

/// `value` (a percent-encoded grpc-message) cut to MAX_MESSAGE bytes of
/// text, on a character boundary, saying how long it was; None if it is
/// short enough.
fn clip(value: &[u8]) -> Option<HeaderValue> {
    if value.len() <= MAX_MESSAGE {
        return None;
    }
    let mut raw = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if value[i] == b'%'
            && let (Some(h), Some(l)) = (
                value.get(i + 1).and_then(|b| hex(*b)),
                value.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            raw.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        raw.push(value[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&raw);
    if text.len() <= MAX_MESSAGE {
        return None;
    }
    let mut cut = MAX_MESSAGE;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let msg = format!("{}… ({} bytes, cut)", &text[..cut], text.len());
    // gRPC's percent-encoding: everything outside printable ASCII, and '%'.
    let mut enc = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&enc).ok()
}

/// The `grpc-timeout` header's duration (gRPC over HTTP/2: at most 8
/// digits and a unit, H M S m u n); None if absent or malformed.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    if n.is_empty() || n.len() > 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A trailers-only gRPC answer: DEADLINE_EXCEEDED.
fn deadline_exceeded<B: Default>(path: &str, after: std::time::Duration) -> http::Response<B> {
    let mut resp = http::Response::new(B::default());
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("4"));
    let msg: String = format!("{path}: the client's deadline ({after:?}) passed")
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '%')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&msg) {
        h.insert("grpc-message", v);
    }
    resp
}

#[derive(Clone)]
pub struct NameUnimplemented<S> {
    inner: S,
}

impl<S> NameUnimplemented<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for NameUnimplemented<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        // The instant now, in call(): tonic's timer is made after this
        // returns, so this one is never the later of the two.
        let deadline = grpc_timeout(req.headers()).map(|d| (d, tokio::time::Instant::now() + d));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = match deadline {
                None => fut.await?,
                Some((d, at)) => match tokio::time::timeout_at(at, fut).await {
                    Ok(r) => r?,
                    Err(_) => deadline_exceeded(&path, d),
                },
            };
            let h = resp.headers_mut();
            // One line per call at debug, as CRI-O and containerd log them:
            // the method, its gRPC code (in the headers when it failed; a
            // success's comes in the trailers) and how long it took.
            let code = h
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0");
            let took = started.elapsed();
            tracing::debug!(
                method = %path,
                code,
                elapsed_ms = took.as_secs_f64() * 1000.0,
                "CRI call answered"
            );
            crate::metrics::get().call(&path, code, took);
            if let Some(v) = h.get("grpc-message").and_then(|v| clip(v.as_bytes())) {
                h.insert("grpc-message", v);
            }
            let unimplemented = h.get("grpc-status").is_some_and(|v| v == "12");
            if unimplemented && !h.contains_key("grpc-message") {
                // Printable ASCII needs no percent-encoding in grpc-message.
                let msg: String = format!("{path} is not implemented by berth")
                    .chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .filter(|c| *c != '%')
                    .collect();
                if let Ok(v) = HeaderValue::from_str(&msg) {
                    h.insert("grpc-message", v);
                }
                tracing::debug!(method = %path, "unknown CRI method");
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_in_each_unit_and_junk_is_none() {
        use std::time::Duration;
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(h("1m"), Some(Duration::from_millis(1)));
        assert_eq!(h("999999u"), Some(Duration::from_micros(999_999)));
        assert_eq!(h("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(h("120S"), Some(Duration::from_secs(120)));
        assert_eq!(h("3M"), Some(Duration::from_secs(180)));
        assert_eq!(h("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S", "+1m"] {
            assert_eq!(h(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    /// The layer over a call that never ends, as tonic's server stacks it
    /// (inside its own deadline, made after the layer's call returns): the
    /// answer is DEADLINE_EXCEEDED, not tonic's CANCELLED.
    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_is_deadline_exceeded_before_tonics_timer() {
        use tower::Service as _;
        let never = tower::service_fn(|_req: http::Request<()>| {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
        });
        let mut svc = NameUnimplemented::new(never);
        let req = http::Request::builder()
            .uri("/runtime.v1.ImageService/PullImage")
            .header("grpc-timeout", "1m")
            .body(())
            .unwrap();
        let fut = svc.call(req);
        // tonic's GrpcTimeout: its sleep made after the inner call, the
        // inner future polled first.
        let tonic_timer = tokio::time::sleep(std::time::Duration::from_millis(1));
        let resp = tokio::select! {
            biased;
            r = fut => r.unwrap(),
            _ = tonic_timer => panic!("tonic's deadline came first"),
        };
        assert_eq!(resp.headers()["grpc-status"], "4");
    }

    #[test]
    fn a_passed_deadline_is_answered_deadline_exceeded() {
        let r: http::Response<()> = deadline_exceeded(
            "/runtime.v1.ImageService/PullImage",
            std::time::Duration::from_millis(1),
        );
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        let msg = r.headers()["grpc-message"].to_str().unwrap();
        assert!(
            msg.contains("PullImage") && msg.contains("deadline"),
            "{msg}"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_and_say_so() {
        assert!(clip(b"short").is_none());
        let long = format!("hostname {} is too long", "a".repeat(70_000));
        let v = clip(long.as_bytes()).unwrap();
        let s = v.to_str().unwrap();
        assert!(s.len() < MAX_MESSAGE + 64, "{}", s.len());
        assert!(s.contains(&format!("{} bytes, cut", long.len())), "{s}");
        assert!(s.starts_with("hostname aaa"));
        // Percent-encoded multi-byte text: cut between characters.
        let e: String = "é"
            .repeat(3000)
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect();
        let v = clip(e.as_bytes()).unwrap();
        let decoded: Vec<u8> = {
            let b = v.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(
                        u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16)
                            .unwrap(),
                    );
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            out
        };
        let text = String::from_utf8(decoded).expect("still UTF-8");
        assert!(
            text.starts_with("éé") && text.ends_with("bytes, cut)"),
            "{text}"
        );
    }
}
