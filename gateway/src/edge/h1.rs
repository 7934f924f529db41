//! The upstream HTTP/1.1 exchange of a request without a body, driven by the request's own
//! task ([`Conn`]): the request head goes out in one write, the response head is parsed from
//! the connection's buffer, and the response body is decoded as the client reads it
//! (`Content-Length`, chunked, or until the app closes). Per request this saves what hyper's
//! client connection costs: a task per connection that the request wakes through a channel,
//! and a wake-up back for the response head and again for each body chunk.
//!
//! Requests with a body keep hyper's client ([`super::pool`]): it sends the body while it
//! watches for an early answer (an app refusing an upload before reading it), which this codec
//! does not do.
//!
//! Parsing is httparse's with hyper's client defaults (no obs-fold, at most [`MAX_HEADERS`]
//! headers); framing follows RFC 9112 section 6.3: no body for `HEAD`, 1xx, 204 and 304;
//! chunked when it is the final transfer coding; otherwise a valid `Content-Length`; otherwise
//! until close. A connection is kept only when the response said nothing against it and
//! ended exactly where its framing said (see [`super::pool`]).

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version,
    header::{CONTENT_LENGTH, TRANSFER_ENCODING},
    request::Parts,
};
use hyper::body::{Frame, SizeHint};
use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, Waker, ready},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Headers in a response head (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// Bytes in a response head.
pub const MAX_HEAD: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes in a chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes in the trailer section of a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The request could not be written (the app had closed the connection).
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    /// The connection ended before any byte of a response.
    #[error("the connection closed before a response")]
    Closed,
    /// Reading failed.
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    /// The connection ended within the response head.
    #[error("the connection closed in the middle of the response head")]
    IncompleteHead,
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// httparse refused the head.
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    /// A field of the head is invalid.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The connection ended before the body did.
    #[error("the connection closed before the response body ended")]
    IncompleteBody,
    /// The chunked framing is broken.
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
}

impl H1Error {
    /// Whether the app surely did not act on the request, so that it may go again on another
    /// connection: it was never written (the app had closed the connection), or, for an
    /// idempotent method, the connection closed before any byte of an answer.
    pub fn unanswered(&self, idempotent: bool) -> bool {
        match self {
            H1Error::Write(_) => true,
            H1Error::Closed => idempotent,
            _ => false,
        }
    }
}

/// How the rest of a response body is framed, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked, at this point.
    Chunked(Chunk),
    /// Until the app closes the connection.
    Close,
    /// Read whole.
    Done,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Within a chunk's data, this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
}

impl Framing {
    /// Whether the body has been read whole.
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// The body's size, when known.
    pub fn size_hint(&self) -> SizeHint {
        match self {
            Framing::Length(n) => SizeHint::with_exact(*n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A response head, how its body is framed, and whether the connection may carry another
/// request after it.
pub struct Head {
    /// Status, version, headers (the body comes from [`Conn::poll_body`]).
    pub response: Response<()>,
    /// The body's framing.
    pub framing: Framing,
    /// Whether the app lets the connection be reused.
    pub keep_alive: bool,
}

/// An upstream HTTP/1.1 connection and what has been read from it.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    head: Vec<u8>,
}

impl Conn {
    /// A connection over `io`.
    pub fn new(io: TcpStream) -> Self {
        Self { io, buf: BytesMut::new(), head: Vec::new() }
    }

    /// Whether an idle connection can carry a request: nothing arrived since its last
    /// response (an app that closed an idle connection makes it readable). Costs a system call
    /// only when the runtime saw the socket readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match self.io.poll_read_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last read of the response: look.
            Poll::Ready(Ok(())) => {
                matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Whether the connection holds no byte beyond the responses read (a clean end).
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Writes the head of a request without a body and reads the response head; interim
    /// (1xx) responses other than `101` are skipped.
    pub async fn send(&mut self, parts: &Parts) -> Result<Head, H1Error> {
        self.head.clear();
        encode_head(parts, &mut self.head);
        self.io.write_all(&self.head).await.map_err(H1Error::Write)?;
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                match self.parse_head(parts.method == Method::HEAD)? {
                    Parsed::Head(head) => return Ok(head),
                    Parsed::Interim => continue,
                    Parsed::Partial if self.buf.len() >= MAX_HEAD => return Err(H1Error::HeadTooLarge),
                    Parsed::Partial => {}
                }
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if received => return Err(H1Error::IncompleteHead),
                Ok(0) => return Err(H1Error::Closed),
                Ok(_) => {}
                Err(H1Error::Read(e)) if !received && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(H1Error::Closed);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Parses the head at the start of the buffer, and consumes it when complete.
    fn parse_head(&mut self, head_request: bool) -> Result<Parsed, H1Error> {
        let (len, code, version, fields) = {
            let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut r,
                &self.buf,
                &mut headers,
            )? {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(Parsed::Partial),
            };
            // Values are kept as slices of the head (no copy): remember where they are.
            let base = self.buf.as_ptr() as usize;
            let mut fields = Vec::with_capacity(r.headers.len());
            for h in r.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| H1Error::Invalid("header name"))?;
                let start = h.value.as_ptr() as usize - base;
                fields.push((name, start, start + h.value.len()));
            }
            (len, r.code.unwrap_or(0), r.version.unwrap_or(1), fields)
        };
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            self.buf.advance(len);
            return Ok(Parsed::Interim);
        }
        let head = self.buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, start, end) in fields {
            let value =
                HeaderValue::from_maybe_shared(head.slice(start..end)).map_err(|_| H1Error::Invalid("header value"))?;
            headers.append(name, value);
        }
        let version = if version == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        let (framing, keep_alive) = framing(status, version, &headers, head_request)?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(Parsed::Head(Head { response, framing, keep_alive }))
    }

    /// Reads more into the buffer: `Ok(0)` at end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        // `AsyncRead` (not `try_read`): a short read clears the socket's readiness, which is
        // what lets [`Conn::is_reusable`] skip its system call.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf).map_err(H1Error::Read)
    }

    /// The next frame of the body framed by `state` (which it advances): data as it arrives,
    /// trailers of a chunked body, `None` at its end.
    pub fn poll_body(
        &mut self,
        state: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            let short = match state {
                Framing::Done | Framing::Length(0) => {
                    *state = Framing::Done;
                    return Poll::Ready(None);
                }
                Framing::Length(n) | Framing::Chunked(Chunk::Data(n)) if !self.buf.is_empty() => {
                    let take = (*n).min(self.buf.len() as u64);
                    *n -= take;
                    if let Framing::Chunked(c @ Chunk::Data(0)) = state {
                        *c = Chunk::DataEnd;
                    }
                    // `take` ≤ the buffer's length, a `usize`.
                    return Poll::Ready(Some(Ok(Frame::data(self.buf.split_to(take as usize).freeze()))));
                }
                Framing::Length(_) | Framing::Chunked(Chunk::Data(_)) => H1Error::IncompleteBody,
                Framing::Close if !self.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))));
                }
                Framing::Close => {
                    match ready!(self.poll_fill(cx)) {
                        Ok(0) => *state = Framing::Done,
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                    continue;
                }
                Framing::Chunked(c) => match self.chunk_step(c) {
                    Ok(Step::Again) => continue,
                    Ok(Step::More) => H1Error::IncompleteBody,
                    Ok(Step::Trailers(t)) => {
                        *state = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Step::End) => {
                        *state = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            };
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Some(Err(short))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// One step of the chunked decoder outside chunk data.
    fn chunk_step(&mut self, c: &mut Chunk) -> Result<Step, H1Error> {
        match c {
            Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.buf.advance(used);
                    *c = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    Ok(Step::Again)
                }
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_LINE => {
                    Err(H1Error::Chunked("chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err(H1Error::Chunked("invalid chunk size")),
            },
            Chunk::DataEnd => match self.buf.get(..2) {
                Some(b"\r\n") => {
                    self.buf.advance(2);
                    *c = Chunk::Size;
                    Ok(Step::Again)
                }
                Some(_) => Err(H1Error::Chunked("no CRLF after chunk data")),
                None if self.buf.first().is_some_and(|b| *b != b'\r') => {
                    Err(H1Error::Chunked("no CRLF after chunk data"))
                }
                None => Ok(Step::More),
            },
            Chunk::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(&self.buf, &mut headers) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let trailers = if fields.is_empty() {
                            None
                        } else {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| H1Error::Chunked("invalid trailer name"))?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| H1Error::Chunked("invalid trailer value"))?;
                                map.append(name, value);
                            }
                            Some(map)
                        };
                        self.buf.advance(used);
                        Ok(trailers.map_or(Step::End, Step::Trailers))
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_TRAILERS => {
                        Err(H1Error::Chunked("trailer section too large"))
                    }
                    Ok(httparse::Status::Partial) => Ok(Step::More),
                    Err(_) => Err(H1Error::Chunked("invalid trailer section")),
                }
            }
            // Data is handled by the caller.
            Chunk::Data(_) => Ok(Step::Again),
        }
    }
}

/// What [`Conn::parse_head`] found.
enum Parsed {
    /// A final response head.
    Head(Head),
    /// An interim (1xx) response, consumed.
    Interim,
    /// Not a whole head yet.
    Partial,
}

/// What [`Conn::chunk_step`] found.
enum Step {
    /// It advanced: look again.
    Again,
    /// It needs more bytes.
    More,
    /// The body ended with these trailers.
    Trailers(HeaderMap),
    /// The body ended.
    End,
}

/// `METHOD target HTTP/1.1`, the headers, the empty line. `Transfer-Encoding` is left out: the
/// request has no body.
fn encode_head(parts: &Parts, out: &mut Vec<u8>) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The body's framing and whether the connection may be reused (RFC 9112 section 6.3).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<(Framing, bool), H1Error> {
    let keep_alive = version == Version::HTTP_11 && !super::headers::connection_has(headers, "close");
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Done, false));
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Done, keep_alive));
    }
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = last
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if chunked && version == Version::HTTP_11 {
            // Both framings sent: chunked wins, and the connection is not trusted after it.
            return Ok((Framing::Chunked(Chunk::Size), keep_alive && !headers.contains_key(CONTENT_LENGTH)));
        }
        return Ok((Framing::Close, false));
    }
    match content_length(headers)? {
        Some(n) => Ok((Framing::Length(n), keep_alive)),
        None => Ok((Framing::Close, false)),
    }
}

/// The `Content-Length`: every value (and every item of a list) must be the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(H1Error::Invalid("content-length"));
            }
            let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("content-length"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use tokio::io::AsyncReadExt;

    /// A connection to a listener that answers `answer` (in pieces of `piece` bytes) to the
    /// first request head and then closes; returns what the app received.
    async fn exchange(
        method: Method,
        answer: &'static [u8],
        piece: usize,
    ) -> (Result<Head, H1Error>, Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            for p in answer.chunks(piece) {
                s.write_all(p).await.expect("write");
                s.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            got
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.expect("connect"));
        let (parts, ()) = Request::builder()
            .method(method)
            .uri("/p?q=1")
            .header("host", "app")
            .header("x-a", "1")
            .header("transfer-encoding", "chunked")
            .body(())
            .expect("request")
            .into_parts();
        let head = conn.send(&parts).await;
        (head, conn, app)
    }

    async fn body(conn: &mut Conn, mut state: Framing) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| conn.poll_body(&mut state, cx)).await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(state.is_done());
        Ok((data, trailers))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn writes_the_head_and_reads_a_content_length_body_in_pieces() {
        rt().block_on(async {
            let answer = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-b: two\r\nx-b: three\r\n\r\nhello world";
            for piece in [1, 7, answer.len()] {
                let (head, mut conn, app) = exchange(Method::GET, answer, piece).await;
                let head = head.expect("head");
                assert_eq!(head.response.status(), 200);
                assert_eq!(head.response.version(), Version::HTTP_11);
                let b: Vec<_> = head.response.headers().get_all("x-b").iter().collect();
                assert_eq!(b, ["two", "three"]);
                assert_eq!((head.framing, head.keep_alive), (Framing::Length(11), true));
                assert_eq!(body(&mut conn, head.framing).await.expect("body").0, b"hello world");
                assert!(conn.is_drained());
                let sent = app.await.expect("app");
                assert_eq!(sent, b"GET /p?q=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\n\r\n", "no transfer-encoding");
            }
        });
    }

    #[test]
    fn decodes_chunked_bodies_with_trailers() {
        rt().block_on(async {
            let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-t: 1\r\n\r\n";
            for piece in [1, 3, answer.len()] {
                let (head, mut conn, _app) = exchange(Method::GET, answer, piece).await;
                let head = head.expect("head");
                assert_eq!((head.framing, head.keep_alive), (Framing::Chunked(Chunk::Size), true));
                let (data, trailers) = body(&mut conn, head.framing).await.expect("body");
                assert_eq!(data, b"hello world");
                assert_eq!(trailers.expect("trailers")["x-t"], "1");
                assert!(conn.is_drained());
            }
        });
    }

    #[test]
    fn framing_follows_the_rfc() {
        rt().block_on(async {
            let cases: [(Method, &'static [u8], Framing, bool); 7] = [
                (Method::HEAD, b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Framing::Done, true),
                (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n", Framing::Done, true),
                (Method::GET, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", Framing::Done, true),
                (Method::GET, b"HTTP/1.1 200 OK\r\n\r\nuntil close", Framing::Close, false),
                (
                    Method::GET,
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx",
                    Framing::Length(1),
                    false,
                ),
                (Method::GET, b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx", Framing::Length(1), false),
                (
                    Method::GET,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                    Framing::Chunked(Chunk::Size),
                    false,
                ),
            ];
            for (method, answer, framing, keep_alive) in cases {
                let (head, mut conn, _app) = exchange(method, answer, answer.len()).await;
                let head = head.expect("head");
                assert_eq!(
                    (head.framing, head.keep_alive),
                    (framing, keep_alive),
                    "{}",
                    String::from_utf8_lossy(answer)
                );
                if framing == Framing::Close {
                    assert_eq!(body(&mut conn, head.framing).await.expect("body").0, b"until close");
                }
            }
        });
    }

    #[test]
    fn broken_answers_are_errors() {
        rt().block_on(async {
            let cases: [(&'static [u8], &str); 8] = [
                (b"", "closed before a response"),
                (b"HTTP/1.1 200 OK\r\ncontent-le", "middle of the response head"),
                (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", "content-length"),
                (b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok", "content-length"),
                (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n x-b: 1\r\n\r\nok", "invalid response head"),
                (b"x-injected: 1\r\n\r\n", "invalid response head"),
                (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok", "body ended"),
                (
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff1\r\nx\r\n0\r\n\r\n",
                    "chunk size",
                ),
            ];
            for (answer, want) in cases {
                let (head, mut conn, _app) = exchange(Method::GET, answer, answer.len().max(1)).await;
                let err = match head {
                    Ok(h) => body(&mut conn, h.framing).await.expect_err("a broken body"),
                    Err(e) => e,
                };
                assert!(err.to_string().contains(want), "{}: {err}", String::from_utf8_lossy(answer));
            }
            let closed = H1Error::Closed;
            assert!(closed.unanswered(true) && !closed.unanswered(false));
            assert!(H1Error::Write(io::ErrorKind::BrokenPipe.into()).unanswered(false));
        });
    }

    #[test]
    fn an_idle_connection_closed_by_the_app_is_not_reused() {
        rt().block_on(async {
            let (head, mut conn, app) =
                exchange(Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 64).await;
            let head = head.expect("head");
            body(&mut conn, head.framing).await.expect("body");
            assert!(conn.is_reusable(), "open and quiet");
            app.await.expect("app");
            // The app's socket is gone: the close arrives.
            for _ in 0..100 {
                if !conn.is_reusable() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("a closed connection looked reusable");
        });
    }
}
