//! Access log: one line per request answered by the HTTPS edge (target `gateway::access`,
//! level info), made when the response body has been sent (or the client went away), so
//! `bytes` and `duration_ms` are the whole exchange, and written by [`super::logbuf`]:
//!
//! ```text
//! INFO gateway::access: request id=5f3a…-17 method=GET route=port workspace=acme sandbox=demo
//!      port=3000 status=200 bytes=1234 ttfb_ms=2 duration_ms=3 token=ci peer=127.0.0.1:50412
//! ```
//!
//! The path is not logged (its query may hold a preview token); credentials never are, only
//! the NAME of the token that authenticated the request. The id is also sent to the client as
//! `x-request-id`. Every line also counts in the `requests` metric at response-head time.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::metrics::{self, RouteKind};

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What is known about a request as it goes through the edge.
#[derive(Debug)]
pub struct RequestLog {
    /// Unique in the process and across restarts: `{process tag}-{counter}`.
    pub id: String,
    started: Instant,
    method: http::Method,
    peer: SocketAddr,
    /// Filled in by routing.
    pub route: RouteKind,
    /// The sandbox's workspace, once known.
    pub workspace: Option<String>,
    /// The sandbox, once known.
    pub sandbox: Option<String>,
    /// The port inside the sandbox, once known.
    pub port: Option<u16>,
    /// The NAME of the token that authenticated the request (never the secret).
    pub token: Option<String>,
    status: u16,
    ttfb: Duration,
}

/// 32 random bits per process, so ids do not repeat across restarts.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let mut b = [0u8; 4];
        if getrandom::fill(&mut b).is_err() {
            b = std::process::id().to_le_bytes();
        }
        hex::encode(b)
    })
}

impl RequestLog {
    /// A request just read.
    pub fn new(method: &http::Method, peer: SocketAddr) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: format!("{}-{}", process_tag(), NEXT.fetch_add(1, Ordering::Relaxed)),
            started: Instant::now(),
            method: method.clone(),
            peer,
            route: RouteKind::Edge,
            workspace: None,
            sandbox: None,
            port: None,
            token: None,
            status: 0,
            ttfb: Duration::ZERO,
        }
    }

    /// The response head is ready: counts the request in the metrics. Returns the log to
    /// finish when the body ends ([`LoggedBody`]).
    pub fn responded(mut self, status: u16) -> Self {
        self.status = status;
        self.ttfb = self.started.elapsed();
        metrics::global().request(self.route, status, self.workspace.as_deref(), self.ttfb);
        self
    }

    /// Writes the access line.
    fn finish(self, bytes: u64, complete: bool) {
        tracing::info!(
            target: super::ACCESS_TARGET,
            id = %self.id,
            method = %self.method,
            route = %self.route.as_str(),
            workspace = %self.workspace.as_deref().unwrap_or("-"),
            sandbox = %self.sandbox.as_deref().unwrap_or("-"),
            port = self.port.unwrap_or(0),
            status = self.status,
            bytes,
            ttfb_ms = self.ttfb.as_millis() as u64,
            duration_ms = self.started.elapsed().as_millis() as u64,
            token = %self.token.as_deref().unwrap_or("-"),
            peer = %self.peer,
            complete,
            "request"
        );
    }
}

/// A response body that counts the bytes sent and writes the access line when it ends (or
/// is dropped: the client went away, `complete=false`).
pub struct LoggedBody<B> {
    inner: B,
    bytes: u64,
    log: Option<RequestLog>,
}

impl<B: Body<Data = Bytes>> LoggedBody<B> {
    /// Wraps `inner`; an empty body is logged at once.
    pub fn new(inner: B, log: RequestLog) -> Self {
        let mut body = Self { inner, bytes: 0, log: Some(log) };
        if body.inner.is_end_stream()
            && let Some(log) = body.log.take()
        {
            log.finish(0, true);
        }
        body
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish(self.bytes, false);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream()
                    && let Some(log) = self.log.take()
                {
                    log.finish(self.bytes, true);
                }
            }
            Poll::Ready(None) => {
                if let Some(log) = self.log.take() {
                    log.finish(self.bytes, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(log) = self.log.take() {
                    log.finish(self.bytes, false);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn ids_are_unique_and_bodies_are_counted() {
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let a = RequestLog::new(&http::Method::GET, peer);
        let b = RequestLog::new(&http::Method::GET, peer);
        assert_ne!(a.id, b.id);
        let body = LoggedBody::new(Full::new(Bytes::from_static(b"hello")), a.responded(200));
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"hello");
        drop(b);
    }
}
