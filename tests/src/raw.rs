//! Raw clients of the HTTPS edge for the hardening tests: bytes written exactly as given over a
//! TLS connection (HTTP/1.1), and hand-made HTTP/2 frames whose header blocks are HPACK-encoded
//! without any validation (so connection-specific headers, bad `te` values or CR/LF in values
//! can be sent, which hyper's and the `h2` crate's clients refuse to do).

use crate::edge::{Alpn, EdgeClient};
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

/// One HTTP/1.1 response parsed off the wire.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

/// The values of header `name` (case-insensitive), trimmed, in order, in an HTTP/1.1 `head`
/// (start line, then header lines, `\r\n`-separated).
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

impl RawResponse {
    /// Values of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back on a raw HTTP/1.1 connection.
#[derive(Clone, Debug)]
pub struct RawExchange {
    /// Every byte the gateway sent.
    pub bytes: Vec<u8>,
    /// Whether the gateway closed the connection (EOF or reset) before we stopped reading.
    pub closed: bool,
}

impl RawExchange {
    /// The complete responses, in order (`1xx` other than `101` skipped).
    pub fn responses(&self) -> Vec<RawResponse> {
        parse_responses(&self.bytes).0
    }
    /// Their statuses.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses().iter().map(|r| r.status).collect()
    }
    /// Everything as text (for assertion messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Parses as many complete responses as `bytes` holds; returns them and whether a `101` ended
/// the HTTP part (what follows is tunnel data).
pub fn parse_responses(bytes: &[u8]) -> (Vec<RawResponse>, bool) {
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
            return (out, false);
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut response = RawResponse { status, head, body: Vec::new() };
        rest = &rest[end..];
        if status == 101 {
            out.push(response);
            return (out, true);
        }
        if (100..200).contains(&status) {
            continue;
        }
        let chunked = response.header("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return (out, false) };
                let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
                if rest.len() < eol + 2 + size + 2 {
                    return (out, false);
                }
                response.body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                rest = &rest[eol + 2 + size + 2..];
                if size == 0 {
                    break;
                }
            }
        } else {
            let len: usize = response.header("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
            if rest.len() < len {
                return (out, false);
            }
            response.body.extend_from_slice(&rest[..len]);
            rest = &rest[len..];
        }
        out.push(response);
    }
}

/// A TLS connection (ALPN `http/1.1`) on which bytes are written as they are.
pub struct RawH1 {
    io: TlsStream<TcpStream>,
    /// What the gateway sent so far.
    pub received: Vec<u8>,
    /// Whether it closed the connection.
    pub closed: bool,
}

impl RawH1 {
    /// Connects with this SNI.
    pub async fn connect(c: &EdgeClient, sni: &str) -> Self {
        let io = c.tls(sni, Alpn::H1).await.expect("TLS handshake");
        Self { io, received: Vec::new(), closed: false }
    }

    /// Writes these bytes (ignoring a write error: the gateway may have closed already).
    pub async fn send(&mut self, bytes: &[u8]) {
        if self.io.write_all(bytes).await.is_err() || self.io.flush().await.is_err() {
            self.closed = true;
        }
    }

    /// Reads until `responses` complete responses arrived and then `quiet` passed without
    /// data, or the gateway closed, or `deadline` passed.
    pub async fn read(&mut self, responses: usize, quiet: Duration, deadline: Duration) {
        let until = Instant::now() + deadline;
        let mut chunk = vec![0u8; 64 * 1024];
        while !self.closed && Instant::now() < until {
            let have = parse_responses(&self.received).0.len();
            let wait = if have >= responses { quiet } else { until.saturating_duration_since(Instant::now()) };
            match tokio::time::timeout(wait, self.io.read(&mut chunk)).await {
                Err(_) => {
                    if have >= responses {
                        break;
                    }
                }
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.received.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// What came back so far.
    pub fn exchange(&self) -> RawExchange {
        RawExchange { bytes: self.received.clone(), closed: self.closed }
    }
}

/// Sends `bytes` on a new connection and reads the answers: until `responses` complete ones
/// arrived and 500 ms passed quietly, or the connection closed (10 s at most).
pub async fn h1_exchange(c: &EdgeClient, sni: &str, bytes: &[u8], responses: usize) -> RawExchange {
    let mut conn = RawH1::connect(c, sni).await;
    conn.send(bytes).await;
    conn.read(responses, Duration::from_millis(500), Duration::from_secs(10)).await;
    conn.exchange()
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 by hand

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

use frame_flags::*;
use frame_types::*;

/// Frame types (RFC 9113 §6).
mod frame_types {
    pub(super) const DATA: u8 = 0;
    pub(super) const HEADERS: u8 = 1;
    pub(super) const RST_STREAM: u8 = 3;
    pub(super) const SETTINGS: u8 = 4;
    pub(super) const PING: u8 = 6;
    pub(super) const GOAWAY: u8 = 7;
    pub(super) const CONTINUATION: u8 = 9;
}

/// Frame flags (RFC 9113 §6): END_STREAM on DATA and HEADERS, ACK on SETTINGS and PING.
mod frame_flags {
    pub(super) const END_STREAM: u8 = 0x1;
    pub(super) const ACK: u8 = 0x1;
    pub(super) const END_HEADERS: u8 = 0x4;
    pub(super) const PADDED: u8 = 0x8;
    pub(super) const PRIORITY: u8 = 0x20;
}

/// How an HTTP/2 stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Outcome {
    /// A response (its `:status`, headers, body).
    Response {
        /// `:status`.
        status: u16,
        /// The other fields.
        headers: Vec<(String, String)>,
        /// DATA.
        body: Vec<u8>,
    },
    /// `RST_STREAM` with this error code (1 = `PROTOCOL_ERROR`).
    Reset(u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
    /// The connection closed.
    Closed,
}

impl H2Outcome {
    /// The status, if a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            H2Outcome::Response { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An HTTP/2 connection whose frames are written by hand.
pub struct RawH2 {
    io: TlsStream<TcpStream>,
    encoder: fluke_hpack::Encoder<'static>,
    decoder: fluke_hpack::Decoder<'static>,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects (ALPN h2), sends the preface and an empty SETTINGS.
    pub async fn connect(c: &EdgeClient, sni: &str) -> Self {
        let io = c.tls(sni, Alpn::H2).await.expect("TLS handshake");
        assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 negotiated");
        let mut h2 =
            Self { io, encoder: fluke_hpack::Encoder::new(), decoder: fluke_hpack::Decoder::new(), buf: Vec::new() };
        h2.io.write_all(PREFACE).await.expect("preface");
        h2.frame(SETTINGS, 0, 0, &[]).await;
        h2
    }

    async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        let _ = self.io.write_all(&f).await;
        let _ = self.io.flush().await;
    }

    /// Sends a request on `stream` (odd, increasing): these fields in this order (pseudo-headers
    /// first, as the caller gives them), then `body` as one DATA frame if any.
    pub async fn send(&mut self, stream: u32, fields: &[(&str, &str)], body: Option<&[u8]>) {
        let block = self.encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, stream, &block).await;
        if let Some(body) = body {
            self.frame(DATA, END_STREAM, stream, body).await;
        }
    }

    async fn read_frame(&mut self, until: Instant) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let kind = self.buf[3];
                    let flags = self.buf[4];
                    let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Some((kind, flags, stream, payload));
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads frames until `stream` ends (10 s at most), answering SETTINGS and PING.
    pub async fn outcome(&mut self, stream: u32) -> H2Outcome {
        let until = Instant::now() + Duration::from_secs(10);
        let mut response: Option<(u16, Vec<(String, String)>)> = None;
        let mut body = Vec::new();
        let mut block = Vec::new();
        loop {
            let Some((kind, flags, id, payload)) = self.read_frame(until).await else { return H2Outcome::Closed };
            match kind {
                SETTINGS if flags & ACK == 0 => self.frame(SETTINGS, ACK, 0, &[]).await,
                PING if flags & ACK == 0 => self.frame(PING, ACK, 0, &payload).await,
                GOAWAY => {
                    let code = payload.get(4..8).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    return H2Outcome::GoAway(code);
                }
                RST_STREAM if id == stream => {
                    let code = payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    return H2Outcome::Reset(code);
                }
                HEADERS | CONTINUATION => {
                    let mut p = &payload[..];
                    if kind == HEADERS {
                        let pad = if flags & PADDED != 0 { usize::from(p[0]) } else { 0 };
                        if flags & PADDED != 0 {
                            p = &p[1..];
                        }
                        if flags & PRIORITY != 0 {
                            p = &p[5..];
                        }
                        p = &p[..p.len() - pad];
                    }
                    block.extend_from_slice(p);
                    if flags & END_HEADERS == 0 {
                        continue;
                    }
                    let fields = self.decoder.decode(&block).expect("HPACK from the gateway");
                    block.clear();
                    if id != stream {
                        continue;
                    }
                    let mut status = 0;
                    let mut headers = Vec::new();
                    for (n, v) in fields {
                        let (n, v) =
                            (String::from_utf8_lossy(&n).into_owned(), String::from_utf8_lossy(&v).into_owned());
                        if n == ":status" {
                            status = v.parse().unwrap_or(0);
                        } else {
                            headers.push((n, v));
                        }
                    }
                    if response.is_none() && !(100..200).contains(&status) {
                        response = Some((status, headers));
                    }
                    if flags & END_STREAM != 0 {
                        let (status, headers) = response.take().unwrap_or_default();
                        return H2Outcome::Response { status, headers, body };
                    }
                }
                DATA if id == stream => {
                    let mut p = &payload[..];
                    if flags & PADDED != 0 {
                        let pad = usize::from(p[0]);
                        p = &p[1..p.len() - pad];
                    }
                    body.extend_from_slice(p);
                    if flags & END_STREAM != 0 {
                        let (status, headers) = response.take().unwrap_or_default();
                        return H2Outcome::Response { status, headers, body };
                    }
                }
                _ => {}
            }
        }
    }

    /// [`RawH2::send`] then [`RawH2::outcome`].
    pub async fn request(&mut self, stream: u32, fields: &[(&str, &str)], body: Option<&[u8]>) -> H2Outcome {
        self.send(stream, fields, body).await;
        self.outcome(stream).await
    }
}
