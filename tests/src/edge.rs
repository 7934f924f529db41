//! Helpers of the HTTPS edge tests (`tests/tests/edge_*.rs`): a TLS client trusting the
//! gateway's CA (HTTP/1.1 and HTTP/2, any SNI), backends that run inside a sandbox's network
//! namespace (echo, SSE, large bodies, WebSocket echo, h2c/gRPC), sandbox registration and
//! workspace tokens through the admin API, and the gateway's resident memory.
//!
//! Backends bind their socket inside the namespace ([`crate::harness::Netns::run`]) and are then
//! served by the test's tokio runtime: the socket stays in its namespace whatever thread polls
//! it. They stop when their [`Backend`] is dropped.

use crate::{gateway_process::GatewayProcess, harness::Sandbox};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use std::{
    convert::Infallible,
    io,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpStream, sync::Notify};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

/// The workspace of the edge tests.
pub const WS: &str = "acme";
/// The region and domain of the test configuration.
pub const SUFFIX: &str = "local.gw.test";

/// A request or response body of the test client and backends.
pub type TestBody = BoxBody<Bytes, Infallible>;

/// A runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// An empty body.
pub fn empty() -> TestBody {
    Empty::new().boxed()
}

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

/// `sbx-{name}-{ws}.local.gw.test`.
pub fn sandbox_host(name: &str) -> String {
    format!("sbx-{name}-{WS}.{SUFFIX}")
}

/// The admin API body declaring `sb` (its address and host-side interface) with these
/// (port, protocol) declarations.
pub fn sandbox_body(sb: &Sandbox, ports: &[(u16, &str)]) -> Value {
    json!({
        "address": sb.addr().to_string(),
        "interface": sb.link.host_ifname(),
        "ports": ports.iter().map(|(p, proto)| json!({"target": p, "protocol": proto})).collect::<Vec<_>>(),
    })
}

/// Registers `sb` as sandbox `name` of workspace `ws` with these (port, protocol) declarations
/// (asserting 200); returns the sandbox as answered.
pub fn register(gw: &GatewayProcess, ws: &str, name: &str, sb: &Sandbox, ports: &[(u16, &str)]) -> Value {
    let r = gw.client().put_json(&format!("/v1/workspaces/{ws}/sandboxes/{name}"), &sandbox_body(sb, ports));
    assert_eq!(r.status, 200, "register {ws}/{name}: {}", r.text());
    r.json()
}

/// Creates a workspace access token through the admin API and returns its secret.
pub fn create_token(gw: &GatewayProcess, ws: &str, name: &str) -> String {
    let body = serde_json::to_vec(&json!({"name": name})).expect("json");
    let r = gw
        .client()
        .request("POST", &format!("/v1/workspaces/{ws}/tokens"), &[("content-type", "application/json")], Some(&body))
        .expect("POST token");
    assert_eq!(
        r.status,
        201,
        "workspace tokens are needed by this test (POST /v1/workspaces/{ws}/tokens): {}",
        r.text()
    );
    r.json()["token"].as_str().unwrap_or_else(|| panic!("no token in {}", r.text())).to_string()
}

/// Resident memory of a process, KiB (`VmRSS` of /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process, KiB (`VmHWM`).
pub fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------------
// Client

/// An answer, body read in full.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.text()))
    }
    /// Asserts the gateway's error shape with this status and code
    /// ([`crate::gateway_process::assert_error`]); returns the message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        let header = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let e = crate::gateway_process::assert_error(self.status.as_u16(), header, &self.body, status, code);
        e["message"].as_str().unwrap_or_default().to_string()
    }
}

/// Reads a response body in full.
pub async fn read_reply(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read the body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// A TLS client of the gateway's HTTPS listener.
#[derive(Clone)]
pub struct EdgeClient {
    addr: SocketAddr,
    roots: Arc<RootCertStore>,
}

/// ALPN choice of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    H1,
    /// `h2` only.
    H2,
    /// None offered.
    None,
}

impl EdgeClient {
    /// A client of `gw` trusting its development CA.
    pub fn new(gw: &GatewayProcess) -> Self {
        Self::with_ca(gw.https_addr(), &gw.dev_ca_path())
    }

    /// A client of `addr` trusting no CA (for a gateway serving configured certificates).
    pub fn untrusting(addr: SocketAddr) -> Self {
        Self { addr, roots: Arc::new(RootCertStore::empty()) }
    }

    /// A client of `addr` trusting the CA(s) in the PEM file `ca`.
    pub fn with_ca(addr: SocketAddr, ca: &Path) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots.add(cert.expect("CA PEM")).expect("add the CA");
        }
        Self { addr, roots: Arc::new(roots) }
    }

    /// The listener it connects to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS configuration for an ALPN choice.
    pub fn tls_config(&self, alpn: Alpn) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = match alpn {
            Alpn::H1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::None => vec![],
        };
        Arc::new(config)
    }

    /// A TLS connection with this SNI (certificate verified against it).
    pub async fn tls(&self, sni: &str, alpn: Alpn) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| io::Error::other(e.to_string()))?;
        TlsConnector::from(self.tls_config(alpn)).connect(name, tcp).await
    }

    /// An HTTP/1.1 connection (upgrades enabled).
    pub async fn h1(&self, sni: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let tls = self.tls(sni, Alpn::H1).await.expect("TLS handshake");
        let (sender, conn) =
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(tls)).await.expect("h1 handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
    }

    /// An HTTP/2 connection.
    pub async fn h2(&self, sni: &str) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let tls = self.tls(sni, Alpn::H2).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 negotiated by ALPN");
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    /// One HTTP/1.1 request on a new connection whose SNI is the host (without port).
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, host, path, headers, empty()).await
    }

    /// Any HTTP/1.1 request on a new connection whose SNI is `host` without its port.
    pub async fn request(
        &self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Reply {
        let sni = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_end_matches('.');
        let sni = if sni.is_empty() { "any.local.gw.test" } else { sni };
        let mut sender = self.h1(&sni.to_ascii_lowercase()).await;
        let response = sender.send_request(build(method, host, path, headers, body)).await.expect("send");
        read_reply(response).await
    }
}

/// Sends on an HTTP/1.1 connection once it is ready for the next request; reads the answer.
pub async fn send1(conn: &mut hyper::client::conn::http1::SendRequest<TestBody>, req: Request<TestBody>) -> Reply {
    conn.ready().await.expect("connection ready for the next request");
    read_reply(conn.send_request(req).await.expect("send")).await
}

/// An HTTP/1.1-style request (origin form, Host header).
pub fn build(method: Method, host: &str, path: &str, headers: &[(&str, &str)], body: TestBody) -> Request<TestBody> {
    let mut b = Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).expect("request")
}

/// The `Sec-WebSocket-Key` of the test clients (RFC 6455's sample nonce).
pub const WEBSOCKET_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An HTTP/1.1 WebSocket upgrade request to `path` with an `authorization` header.
pub fn websocket_upgrade(host: &str, path: &str, authorization: &str) -> Request<TestBody> {
    build(
        Method::GET,
        host,
        path,
        &[
            ("authorization", authorization),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", WEBSOCKET_KEY),
        ],
        empty(),
    )
}

/// Opens a WebSocket to `path` over a new HTTP/1.1 connection through the edge (asserts the 101).
pub async fn open_websocket(
    client: &EdgeClient,
    host: &str,
    path: &str,
    authorization: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut conn = client.h1(host).await;
    let mut response = conn.send_request(websocket_upgrade(host, path, authorization)).await.expect("send");
    assert_eq!(response.status(), 101, "WebSocket upgrade to {host}{path}");
    let upgraded = hyper::upgrade::on(&mut response).await.expect("upgraded");
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

/// Reads until EOF or an error: how long that took, or None if still open after `limit`.
pub async fn until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// An HTTP/2 request for `https://{host}{path}`.
pub fn build_h2(method: Method, host: &str, path: &str, headers: &[(&str, &str)], body: TestBody) -> Request<TestBody> {
    let mut b = Request::builder().method(method).uri(format!("https://{host}{path}")).version(Version::HTTP_2);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).expect("request")
}

/// A body of `len` bytes of a repeating pattern, produced 64 KiB at a time (never held whole).
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    /// `len` bytes.
    pub fn new(len: u64) -> Self {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        Self { remaining: len, chunk: Bytes::from(chunk) }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// How a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 with upgrades.
    Http1,
    /// HTTP/2 cleartext only (prior knowledge).
    H2c,
}

/// A backend app; stops when dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Releases the second event of `/sse`.
    pub sse_release: Arc<Notify>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    /// Paths received, in order.
    pub paths: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend inside `sb`'s namespace on `ip:port` (`ip` = the sandbox address, or
/// 127.0.0.1 for "an app bound to localhost"). Call within the test's runtime.
pub fn spawn_backend(sb: &Sandbox, ip: Ipv4Addr, port: u16, speaks: Speaks) -> Backend {
    let addr = SocketAddr::from((ip, port));
    let std_listener = sb.ns.run(|| std::net::TcpListener::bind(addr)).expect("bind the backend in the sandbox");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    let state = BackendState {
        port,
        sse_release: Arc::new(Notify::new()),
        requests: Arc::new(AtomicUsize::new(0)),
        paths: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let (sse_release, requests, paths) = (state.sse_release.clone(), state.requests.clone(), state.paths.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                });
                let io = TokioIo::new(stream);
                let _ = match speaks {
                    Speaks::Http1 => {
                        hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await
                    }
                    Speaks::H2c => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    Backend { addr, sse_release, requests, paths, task }
}

#[derive(Clone)]
struct BackendState {
    port: u16,
    sse_release: Arc<Notify>,
    requests: Arc<AtomicUsize>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
}

fn respond(status: StatusCode, content_type: &str, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_str(content_type).expect("content type"));
    r
}

impl BackendState {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        self.paths.lock().unwrap_or_else(|p| p.into_inner()).push(pq.clone());
        let path = req.uri().path().to_string();
        if path == "/sse" {
            return self.sse();
        }
        if let Some(n) = path.strip_prefix("/download/") {
            let n: u64 = n.parse().unwrap_or(0);
            return respond(StatusCode::OK, "application/octet-stream", PatternBody::new(n).boxed());
        }
        if path == "/upload" {
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                    Err(_) => break,
                }
            }
            return respond(StatusCode::OK, "application/json", full(json!({"bytes": n}).to_string()));
        }
        if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        if path == "/ws" {
            return websocket_echo(&mut req);
        }
        if path == "/cors" {
            // An app that sets its own CORS header (previews must not add a second one).
            let mut r = self.echo(req, pq);
            r.headers_mut().insert("access-control-allow-origin", HeaderValue::from_static("https://app.example"));
            return r;
        }
        if path == "/set-cookie" {
            // An app setting cookies for the whole region (cookie tossing) next to a host-only one.
            let mut r = respond(StatusCode::OK, "text/plain", full("cookies"));
            for v in [
                "tossed=1; Domain=local.gw.test; Path=/; HttpOnly",
                "session=abc; Path=/; Secure; domain=.gw.test",
                "own=2; Path=/",
            ] {
                r.headers_mut().append("set-cookie", HeaderValue::from_static(v));
            }
            return r;
        }
        if path == "/ws-refuse" {
            return respond(StatusCode::FORBIDDEN, "text/plain", full("no websocket here"));
        }
        if req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")) {
            return grpc_echo(req).await;
        }
        self.echo(req, pq)
    }

    fn echo(&self, req: Request<Incoming>, pq: String) -> Response<TestBody> {
        let mut headers = serde_json::Map::new();
        for (k, v) in req.headers() {
            let entry = headers.entry(k.as_str().to_string()).or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(values) = entry {
                values.push(Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
            }
        }
        let body = json!({
            "port": self.port,
            "method": req.method().as_str(),
            "uri": pq,
            "authority": req.uri().authority().map(|a| a.as_str().to_string()),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        respond(StatusCode::OK, "application/json", full(body.to_string()))
    }

    /// `data: first`, then (after `sse_release` or 20 s) `data: second`, then the end.
    fn sse(&self) -> Response<TestBody> {
        let release = self.sse_release.clone();
        let stream = futures_util::stream::unfold(0u8, move |step| {
            let release = release.clone();
            async move {
                match step {
                    0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: first\n\n"))), 1)),
                    1 => {
                        let _ = tokio::time::timeout(Duration::from_secs(20), release.notified()).await;
                        Some((Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))), 2))
                    }
                    _ => None,
                }
            }
        });
        let mut r = respond(StatusCode::OK, "text/event-stream", BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
        r
    }
}

/// Answers a WebSocket handshake with 101 and echoes every message.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<TestBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", full("not a websocket handshake"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let seen_host = req.headers().get("host").cloned().unwrap_or(HeaderValue::from_static("-"));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("sec-websocket-accept", HeaderValue::from_str(&accept).expect("accept"));
    h.insert("x-seen-host", seen_host);
    r
}

/// One gRPC message frame: compressed flag 0, big-endian length, bytes.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The message of one gRPC frame.
pub fn grpc_unframe(data: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize;
    data.get(5..5 + len)
}

/// A unary gRPC echo: `echo: {message}`, trailers `grpc-status: 0`; the response also says
/// which HTTP version and `:authority` the call arrived with (`x-seen-version`, `x-seen-authority`).
async fn grpc_echo(req: Request<Incoming>) -> Response<TestBody> {
    let version = format!("{:?}", req.version());
    let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let te = req.headers().get("te").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let message = grpc_unframe(&body).unwrap_or(b"");
    let reply = [b"echo: ".as_slice(), message].concat();
    let mut trailers = HeaderMap::new();
    trailers.insert(HeaderName::from_static("grpc-status"), HeaderValue::from_static("0"));
    trailers.insert(HeaderName::from_static("grpc-message"), HeaderValue::from_static("ok"));
    let frames = vec![Ok::<_, Infallible>(Frame::data(grpc_frame(&reply))), Ok(Frame::trailers(trailers))];
    let mut r = respond(
        StatusCode::OK,
        "application/grpc",
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))),
    );
    let h = r.headers_mut();
    h.insert("x-seen-version", HeaderValue::from_str(&version).expect("v"));
    h.insert("x-seen-authority", HeaderValue::from_str(&authority).unwrap_or(HeaderValue::from_static("?")));
    h.insert("x-seen-te", HeaderValue::from_str(&te).unwrap_or(HeaderValue::from_static("?")));
    r
}

// ---------------------------------------------------------------------------------------------
// A backend that records the raw bytes it receives

/// One request as a [`RawBackend`] read it off the wire.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// Index of the connection it came on (0, 1, … in accept order).
    pub conn: usize,
    /// Request line and header lines, exactly as received (up to and including the blank line).
    pub head: String,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
    /// Whether the request arrived complete (head and its whole body); `false` when the
    /// connection ended in the middle (the gateway aborted it).
    pub complete: bool,
}

impl RawRequest {
    /// `GET /x HTTP/1.1`.
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }
    /// The values of header `name` (case-insensitive), trimmed, in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        crate::raw::header_values(&self.head, name)
    }
}

/// What a [`RawBackend`] saw, shared with its connection tasks.
#[derive(Default)]
pub struct RawRecord {
    /// Every byte received, per connection (index = connection number).
    pub bytes: Vec<Vec<u8>>,
    /// Requests in arrival order (partial ones included, marked).
    pub requests: Vec<RawRequest>,
    /// Bytes received on a connection after it answered `101` (the tunnel), per connection.
    pub tunnel: Vec<(usize, Vec<u8>)>,
    /// Bytes that were already waiting behind an upgrade request before the `101` was sent.
    pub early: Vec<(usize, Vec<u8>)>,
}

/// A plain-TCP HTTP/1.1 backend that parses requests itself (strictly: CRLF lines,
/// `Content-Length` or `chunked`), records the exact bytes, and answers every request `200`
/// with body `raw {n} {request line}` (n = index of the request), keep-alive. Paths ending in
/// `/ws` with an `Upgrade` header are answered `101` (then the connection is a tunnel that
/// echoes and records); paths ending in `/refuse` are answered `403`. Stops when dropped.
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub record: Arc<std::sync::Mutex<RawRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    /// The requests received so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).requests.clone()
    }
    /// The complete requests' lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().filter(|r| r.complete).map(|r| r.request_line().to_string()).collect()
    }
    /// Every byte received on every connection, concatenated.
    pub fn all_bytes(&self) -> Vec<u8> {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).bytes.concat()
    }
    /// Forgets everything seen so far (between cases).
    pub fn clear(&self) {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        r.requests.clear();
        r.tunnel.clear();
        r.early.clear();
        for b in &mut r.bytes {
            b.clear();
        }
    }
}

/// Starts a [`RawBackend`] inside `sb`'s namespace on `ip:port`. Call within the test's runtime.
pub fn spawn_raw_backend(sb: &Sandbox, ip: Ipv4Addr, port: u16) -> RawBackend {
    let addr = SocketAddr::from((ip, port));
    let std_listener = sb.ns.run(|| std::net::TcpListener::bind(addr)).expect("bind the raw backend in the sandbox");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    let record = Arc::new(std::sync::Mutex::new(RawRecord::default()));
    let shared = record.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let record = shared.clone();
            let conn = {
                let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
                r.bytes.push(Vec::new());
                r.bytes.len() - 1
            };
            tokio::spawn(raw_connection(stream, conn, record));
        }
    });
    RawBackend { addr, record, task }
}

async fn raw_connection(mut stream: TcpStream, conn: usize, record: Arc<std::sync::Mutex<RawRecord>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lock = || record.lock().unwrap_or_else(|p| p.into_inner());
    let mut buf: Vec<u8> = Vec::new();
    // Reads more bytes into `buf`; false at EOF or error.
    async fn fill(
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        conn: usize,
        record: &std::sync::Mutex<RawRecord>,
    ) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                record.lock().unwrap_or_else(|p| p.into_inner()).bytes[conn].extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut stream, &mut buf, conn, &record).await {
                if !buf.is_empty() {
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    lock().requests.push(RawRequest { conn, head, body: Vec::new(), complete: false });
                }
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut request = RawRequest { conn, head, body: Vec::new(), complete: false };
        let chunked = request.header("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
        let length: usize = request.header("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
        // The body.
        let complete = if chunked {
            loop {
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if fill(&mut stream, &mut buf, conn, &record).await {
                        continue;
                    }
                    break false;
                };
                let size_text = String::from_utf8_lossy(&buf[..eol]).into_owned();
                let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
                    break false;
                };
                if size == 0 {
                    // Trailers until the blank line.
                    let Some(end) = (loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break Some(i + 4);
                        }
                        if !fill(&mut stream, &mut buf, conn, &record).await {
                            break None;
                        }
                    }) else {
                        break false;
                    };
                    buf.drain(..end);
                    break true;
                }
                while buf.len() < eol + 2 + size + 2 {
                    if !fill(&mut stream, &mut buf, conn, &record).await {
                        break;
                    }
                }
                if buf.len() < eol + 2 + size + 2 {
                    request.body.extend_from_slice(&buf[(eol + 2).min(buf.len())..]);
                    break false;
                }
                request.body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
                buf.drain(..eol + 2 + size + 2);
            }
        } else {
            while buf.len() < length {
                if !fill(&mut stream, &mut buf, conn, &record).await {
                    break;
                }
            }
            let n = length.min(buf.len());
            request.body.extend(buf.drain(..n));
            n == length
        };
        request.complete = complete;
        let line = request.request_line().to_string();
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let upgrade = !request.header("upgrade").is_empty();
        let index = {
            let mut r = lock();
            r.requests.push(request);
            r.requests.len() - 1
        };
        if !complete {
            return;
        }
        if upgrade && path.ends_with("/ws") {
            // Whatever is already behind the upgrade request before we answer.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                lock().bytes[conn].extend_from_slice(&chunk[..n]);
            }
            if !buf.is_empty() {
                lock().early.push((conn, buf.clone()));
            }
            let answer = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
            if stream.write_all(answer).await.is_err() {
                return;
            }
            let mut tunnel = std::mem::take(&mut buf);
            loop {
                if !tunnel.is_empty() {
                    lock().tunnel.push((conn, tunnel.clone()));
                    if stream.write_all(&tunnel).await.is_err() {
                        return;
                    }
                    tunnel.clear();
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        tunnel.extend_from_slice(&chunk[..n]);
                        lock().bytes[conn].extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        let (status, body) = if path.ends_with("/refuse") {
            ("403 Forbidden", format!("refused {index}"))
        } else {
            ("200 OK", format!("raw {index} {line}"))
        };
        let answer =
            format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
