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
    cell::RefCell,
    fmt,
    io::Write,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::metrics::{self, RouteKind};
use crate::model::sandbox::Sandbox;

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What is known about a request as it goes through the edge. Built per request, so it holds
/// shared handles (the sandbox, the connection's peer text) rather than copies of their text.
#[derive(Debug)]
pub struct RequestLog {
    /// Unique in the process and across restarts (see [`RequestId`]).
    pub id: RequestId,
    started: Instant,
    method: http::Method,
    /// The client's address as text (formatted once per connection).
    peer: Arc<str>,
    /// Filled in by routing.
    pub route: RouteKind,
    /// The sandbox addressed, once known (its workspace and name are logged).
    pub sandbox: Option<Arc<Sandbox>>,
    /// The port inside the sandbox, once known.
    pub port: Option<u16>,
    /// The NAME of the token that authenticated the request (never the secret).
    pub token: Option<Arc<str>>,
    status: u16,
    ttfb: Duration,
}

/// A request id: `{process tag}-{counter}`, the tag 32 random bits per process so that ids do
/// not repeat across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(process_tag().as_bytes());
        out.push(b'-');
        out.extend_from_slice(itoa::Buffer::new().format(self.0).as_bytes());
    }

    /// The id as a header value, marked sensitive: HTTP/2's HPACK then sends it as a literal
    /// "never indexed" instead of inserting a value that never repeats into the connection's
    /// dynamic table, where each insertion evicts entries (`server`, `content-type`…) that the
    /// next responses would have referenced.
    pub fn header_value(self) -> http::HeaderValue {
        let mut text = Vec::with_capacity(32);
        self.write_to(&mut text);
        // Hex digits, `-` and decimal digits: always a valid header value.
        let mut value =
            http::HeaderValue::from_maybe_shared(Bytes::from(text)).unwrap_or(http::HeaderValue::from_static("-"));
        value.set_sensitive(true);
        value
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", process_tag(), self.0)
    }
}

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
    /// A request just read from `peer` (the client address as text).
    pub fn new(method: &http::Method, peer: Arc<str>) -> Self {
        Self {
            id: RequestId::next(),
            started: Instant::now(),
            method: method.clone(),
            peer,
            route: RouteKind::Edge,
            sandbox: None,
            port: None,
            token: None,
            status: 0,
            ttfb: Duration::ZERO,
        }
    }

    fn workspace(&self) -> Option<&str> {
        self.sandbox.as_deref().map(|s| s.workspace.as_str())
    }

    /// The response head is ready: counts the request in the metrics. Returns the log to
    /// finish when the body ends ([`LoggedBody`]).
    pub fn responded(mut self, status: u16) -> Self {
        self.status = status;
        self.ttfb = self.started.elapsed();
        metrics::global().request(self.route, status, self.workspace(), self.ttfb);
        self
    }

    /// Writes the access line: formatted here straight into the thread's log buffer once
    /// `telemetry::init` chose the format (a fraction of the cost of a `tracing` event, which
    /// records and visits every field), through `tracing` otherwise (library use, tests).
    fn finish(self, bytes: u64, complete: bool) {
        if let Some(format) = FORMAT.get() {
            if tracing::enabled!(target: super::ACCESS_TARGET, tracing::Level::INFO) {
                LINE.with(|line| {
                    let mut line = line.borrow_mut();
                    line.clear();
                    self.write_line(&mut line, *format, bytes, complete);
                    super::logbuf::append(&line);
                });
            }
            return;
        }
        tracing::info!(
            target: super::ACCESS_TARGET,
            id = %self.id,
            method = %self.method,
            route = %self.route.as_str(),
            workspace = %self.workspace().unwrap_or("-"),
            sandbox = %self.sandbox.as_deref().map_or("-", |s| s.name.as_str()),
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

impl RequestLog {
    /// The line `tracing`'s formatter would write for the same event (same fields, order and
    /// spelling), without colours. Written piece by piece (`itoa` for numbers): `core::fmt`
    /// with a dozen arguments cost as much as the rest of the line.
    fn write_line(&self, out: &mut Vec<u8>, format: AccessFormat, bytes: u64, complete: bool) {
        let ttfb_ms = self.ttfb.as_millis() as u64;
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let workspace = self.workspace().unwrap_or("-");
        let sandbox = self.sandbox.as_deref().map_or("-", |s| s.name.as_str());
        let token = self.token.as_deref().unwrap_or("-");
        let port = self.port.unwrap_or(0);
        let mut num = itoa::Buffer::new();
        let mut n = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(num.format(v).as_bytes());
        let complete: &[u8] = if complete { b"true" } else { b"false" };
        if format.json {
            // Writing into a Vec cannot fail.
            let s = |out: &mut Vec<u8>, v: &str| {
                let _ = serde_json::to_writer(&mut *out, v);
            };
            out.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(out);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"id\":\"");
            self.id.write_to(out);
            out.extend_from_slice(b"\",\"method\":");
            s(out, self.method.as_str());
            out.extend_from_slice(b",\"route\":\"");
            out.extend_from_slice(self.route.as_str().as_bytes());
            out.extend_from_slice(b"\",\"workspace\":");
            s(out, workspace);
            out.extend_from_slice(b",\"sandbox\":");
            s(out, sandbox);
            for (key, value) in [
                (&b",\"port\":"[..], u64::from(port)),
                (b",\"status\":", u64::from(self.status)),
                (b",\"bytes\":", bytes),
                (b",\"ttfb_ms\":", ttfb_ms),
                (b",\"duration_ms\":", duration_ms),
            ] {
                out.extend_from_slice(key);
                n(out, value);
            }
            out.extend_from_slice(b",\"token\":");
            s(out, token);
            out.extend_from_slice(b",\"peer\":");
            s(out, &self.peer);
            out.extend_from_slice(b",\"complete\":");
            out.extend_from_slice(complete);
            out.extend_from_slice(b",\"target\":\"");
            out.extend_from_slice(super::ACCESS_TARGET.as_bytes());
            out.extend_from_slice(b"\"}\n");
        } else {
            if format.time {
                timestamp(out);
                out.push(b' ');
            }
            out.extend_from_slice(b" INFO ");
            out.extend_from_slice(super::ACCESS_TARGET.as_bytes());
            out.extend_from_slice(b": request id=");
            self.id.write_to(out);
            for (key, value) in [
                (&b" method="[..], self.method.as_str()),
                (b" route=", self.route.as_str()),
                (b" workspace=", workspace),
                (b" sandbox=", sandbox),
            ] {
                out.extend_from_slice(key);
                out.extend_from_slice(value.as_bytes());
            }
            for (key, value) in [
                (&b" port="[..], u64::from(port)),
                (b" status=", u64::from(self.status)),
                (b" bytes=", bytes),
                (b" ttfb_ms=", ttfb_ms),
                (b" duration_ms=", duration_ms),
            ] {
                out.extend_from_slice(key);
                n(out, value);
            }
            for (key, value) in [(&b" token="[..], token.as_bytes()), (b" peer=", self.peer.as_bytes())] {
                out.extend_from_slice(key);
                out.extend_from_slice(value);
            }
            out.extend_from_slice(b" complete=");
            out.extend_from_slice(complete);
            out.push(b'\n');
        }
    }
}

/// How access lines are written (chosen once by `telemetry::init`).
#[derive(Clone, Copy, Debug)]
pub struct AccessFormat {
    /// One JSON object per line (`--log-format json`).
    pub json: bool,
    /// A timestamp first (not under journald, which records its own).
    pub time: bool,
}

static FORMAT: OnceLock<AccessFormat> = OnceLock::new();

/// Access lines are formatted by this module from now on (see `RequestLog::finish`).
pub fn set_format(format: AccessFormat) {
    let _ = FORMAT.set(format);
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The UTC second last formatted by this thread and its `YYYY-MM-DDTHH:MM:SS.` text.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Appends `2026-12-06T01:41:40.308524Z` (RFC 3339, UTC, microseconds, as `tracing`'s
/// formatter writes it); the date and time of day are formatted once per second per thread.
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            second.1.clear();
            let _ = write!(
                second.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            second.0 = secs;
        }
        out.extend_from_slice(&second.1);
    });
    let mut num = itoa::Buffer::new();
    let micros = num.format(now.subsec_micros());
    out.extend(std::iter::repeat_n(b'0', 6usize.saturating_sub(micros.len())));
    out.extend_from_slice(micros.as_bytes());
    out.push(b'Z');
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
        let peer: Arc<str> = "127.0.0.1:1".into();
        let a = RequestLog::new(&http::Method::GET, peer.clone());
        let b = RequestLog::new(&http::Method::GET, peer);
        assert_ne!(a.id, b.id);
        let body = LoggedBody::new(Full::new(Bytes::from_static(b"hello")), a.responded(200));
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"hello");
        drop(b);
    }

    #[test]
    fn access_lines_as_text_and_json() {
        let mut log = RequestLog::new(&http::Method::GET, "127.0.0.1:5000".into());
        log.sandbox = Some(Arc::new(Sandbox {
            workspace: "acme".into(),
            name: "web".into(),
            address: "198.18.0.2".parse().expect("ip"),
            interface: "lo".into(),
            owner: None,
            exposed: Vec::new(),
            ports: Vec::new(),
        }));
        log.port = Some(3000);
        log.token = Some("ci".into());
        let log = log.responded(200);
        let mut text = Vec::new();
        log.write_line(&mut text, AccessFormat { json: false, time: true }, 42, true);
        let text = String::from_utf8(text).expect("utf-8");
        let (stamp, rest) = text.split_once("  INFO gateway::access: request ").expect("shape");
        assert!(stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{stamp}");
        assert!(time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).is_ok(), "{stamp}");
        assert!(
            rest.starts_with(&format!(
                "id={} method=GET route=edge workspace=acme sandbox=web port=3000 status=200 bytes=42 ttfb_ms=",
                log.id
            )),
            "{rest}"
        );
        assert!(rest.ends_with(" token=ci peer=127.0.0.1:5000 complete=true\n"), "{rest}");
        let mut json = Vec::new();
        log.write_line(&mut json, AccessFormat { json: true, time: true }, 42, false);
        let v: serde_json::Value = serde_json::from_slice(&json).expect("one JSON object");
        let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 17, "{keys:?}");
        assert_eq!(v["id"].as_str(), Some(log.id.to_string().as_str()));
        assert_eq!(v["peer"].as_str(), Some("127.0.0.1:5000"));
        assert_eq!(log.id.header_value().to_str().ok(), Some(log.id.to_string().as_str()));
        assert_eq!(
            (v["message"].as_str(), v["port"].as_u64(), v["complete"].as_bool()),
            (Some("request"), Some(3000), Some(false))
        );
        assert_eq!(
            (v["target"].as_str(), v["sandbox"].as_str(), v["token"].as_str()),
            (Some("gateway::access"), Some("web"), Some("ci"))
        );
    }
}
