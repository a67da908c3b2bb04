//! tonic answers a method it does not know (one newer than the cri-api
//! release berth-cri-api vendors, or a misspelt one) with a bare
//! UNIMPLEMENTED. This layer only adds a message that names the method, for
//! people reading logs. The calls the bindings do know but berth does not
//! implement yet answer UNIMPLEMENTED themselves (`status::not_yet`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

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
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_string();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers_mut();
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
