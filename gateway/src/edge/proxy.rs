//! Forwarding a routed, authenticated request to an app in a sandbox.
//!
//! - HTTP ports: kept-alive HTTP/1.1 connections ([`H1Pool`]), marked like every upstream
//!   connection. `HTTP2`/`GRPC` ports: one multiplexed h2c connection per
//!   (address, port) ([`H2Pool`]), so gRPC trailers and streaming work end to end. The
//!   connectors are side by side in `pool`.
//! - Bodies stream both ways frame by frame (hyper's flow control bounds memory); nothing is
//!   buffered, so SSE and chunked responses reach the client as the app writes them.
//! - HTTP/1.1 `Upgrade` (WebSocket and others): a dedicated upstream connection; the client's
//!   connection is switched only after the app answered `101`, and no client byte after the
//!   request head is forwarded before that (hyper holds them until the upgrade resolves). Any
//!   other answer is relayed as a normal response and the client connection stays HTTP.
//! - HTTP/2 extended CONNECT (RFC 8441, `:protocol = websocket`): translated to an HTTP/1.1
//!   WebSocket upgrade towards the app; `200` to the client once the app answered `101`.
//! - `connect-tcp` (HTTP/1.1 upgrade or HTTP/2 extended CONNECT): a raw TCP tunnel to the
//!   port ([`super::tcp_tunnel`]).
//! - Tunnels are cut after the idle timeout like any connection.

use super::{
    EdgeBody,
    connect::ConnectSettings,
    fleet::{PeerRoute, forward::PeerPool, pki::FleetTls},
    headers::{self, Forwarding},
    limits::{Activity, ActivityIo, SandboxSlot, idle_timeout},
    pool::{BoxError, ExchangeError, H1Pool, H2Pool, UpBody, upgrade_connection},
    route::Route,
    tcp_tunnel,
    upstream_errors::{Destination, connect_failed, exchange_failed, response_timed_out},
};
use crate::{
    auth,
    errors::{ApiError, ErrorCode},
    model::sandbox::{PortProtocol, Sandbox},
};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, COOKIE, EXPECT, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE},
};
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio_util::task::TaskTracker;

/// Timeouts of the proxy.
#[derive(Clone, Copy, Debug)]
pub struct ProxySettings {
    /// Connecting to apps.
    pub connect: ConnectSettings,
    /// Waiting for a response head.
    pub response_timeout: Duration,
    /// Idle tunnels are closed after this.
    pub idle_timeout: Duration,
}

/// One request on its way to an app.
pub struct Outbound {
    pub sandbox: Arc<Sandbox>,
    /// Where in it.
    pub route: Route,
    /// The Host the app sees (already chosen by the host policy).
    pub upstream_host: String,
    /// The client's address, for the forwarding headers.
    pub peer: Arc<headers::PeerText>,
    /// The host as the client sent it (for `X-Forwarded-Host` and `Forwarded`).
    pub client_host: String,
    /// Whether the peer is a trusted proxy.
    pub trusted: bool,
    /// The sandbox's concurrency slot, held until the response or tunnel ends.
    pub slot: SandboxSlot,
    /// Headers set on the upstream request after the client's credentials were removed (a
    /// preview's `requestHeaders`): they replace the client's of the same name.
    pub set_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Another fleet host runs the sandbox: the request goes to it (`route` then holds the
    /// request target as the client sent it, and `upstream_host` the client's host: the
    /// owner routes the request again).
    pub via: Option<Box<PeerRoute>>,
}

impl Outbound {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.sandbox.address.into(), self.route.port)
    }
    fn destination(&self) -> Destination<'_> {
        Destination { sandbox: &self.sandbox.name, port: self.route.port }
    }
}

/// A request ready to be sent ([`Proxy::prepare`]).
#[expect(clippy::large_enum_variant, reason = "the common variant inline: boxing it would allocate per request")]
pub enum Exchange<'a> {
    /// The common case, a plain request to an HTTP port, on a pooled HTTP/1.1 connection: held
    /// inline, so the request's future holds only the pool's exchange.
    Http1 {
        proxy: &'a Proxy,
        request: Request<UpBody>,
        sandbox: Arc<Sandbox>,
        port: u16,
        /// The sandbox's concurrency slot, which moves into the response body.
        slot: SandboxSlot,
    },
    /// Upgrades and h2c, each a boxed future: rare enough that their larger futures need not
    /// size every request's.
    Other(Pin<Box<dyn Future<Output = Result<Response<EdgeBody>, ApiError>> + Send + 'a>>),
}

impl Exchange<'_> {
    /// Sends the request and returns the app's response head (or the error to answer).
    pub async fn send(self) -> Result<Response<EdgeBody>, ApiError> {
        let (proxy, request, sandbox, port, slot) = match self {
            Exchange::Other(f) => return f.await,
            Exchange::Http1 { proxy, request, sandbox, port, slot } => (proxy, request, sandbox, port, slot),
        };
        let to = Destination { sandbox: &sandbox.name, port };
        let timeout = proxy.settings.response_timeout;
        let addr = SocketAddr::new(sandbox.address.into(), port);
        match proxy.http1.exchange(addr, request, timeout).await.map_err(|_| response_timed_out(timeout, to))? {
            Ok(response) => from_app(response, slot, to),
            Err(ExchangeError::Connect(e)) => Err(connect_failed(&e, to)),
            Err(ExchangeError::Http(e)) => Err(exchange_failed(&e, to)),
            Err(ExchangeError::Lean(e)) => Err(exchange_failed(&e, to)),
        }
    }
}

/// Added to the response timeout when waiting for a fleet peer, whose own timeout towards the
/// app is the same: its answer (a 504 naming the app) should arrive first.
const PEER_GRACE: Duration = Duration::from_secs(1);

/// The upstream side of the edge.
pub struct Proxy {
    http1: Arc<H1Pool>,
    h2c: H2Pool,
    /// Connections to the other fleet hosts (a fleet member only).
    peers: Option<PeerPool>,
    settings: ProxySettings,
    /// Upgraded connections (WebSockets…), which outlive their HTTP exchange: a drain waits
    /// for them.
    tunnels: TaskTracker,
}

impl Proxy {
    /// A proxy with these settings; `fleet`: this member's TLS towards its peers.
    pub fn new(settings: ProxySettings, fleet: Option<Arc<FleetTls>>) -> Self {
        let http1 = H1Pool::new(settings.connect);
        let peers = fleet.map(|tls| PeerPool::new(tls, settings.connect.timeout));
        Self { http1, h2c: H2Pool::new(settings.connect), peers, settings, tunnels: TaskTracker::new() }
    }

    /// The open tunnels (upgraded connections).
    pub fn tunnels(&self) -> &TaskTracker {
        &self.tunnels
    }

    /// Makes `req` ready to go to the app: checks and rewrites it, and picks how it is sent.
    /// Nothing is awaited here: the request's future holds only the [`Exchange`] in flight,
    /// since every `async` layer around it would be copied whole at each call (a future is as
    /// large as its largest state, and is moved into its caller's).
    pub fn prepare(&self, mut req: Request<Incoming>, out: Outbound) -> Result<Exchange<'_>, ApiError> {
        if let Some(ask) = tcp_tunnel::requested(&req) {
            return self.tcp_tunnel(req, ask, out);
        }
        if req.method() == Method::CONNECT {
            return match req.extensions().get::<hyper::ext::Protocol>() {
                Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {
                    Ok(Exchange::Other(Box::pin(self.h2_as_h1_upgrade(req, out, "websocket"))))
                }
                Some(p) => Err(ApiError::new(
                    ErrorCode::NotImplemented,
                    format!(
                        "extended CONNECT with protocol {:?} is not supported (only websocket and {})",
                        p.as_str(),
                        tcp_tunnel::CONNECT_TCP
                    ),
                )),
                None => Err(ApiError::new(ErrorCode::MethodNotAllowed, "CONNECT is not supported")),
            };
        }
        if let Some(upgrade) = requested_upgrade(&req) {
            return Ok(Exchange::Other(Box::pin(self.upgrade_h1(req, upgrade, out))));
        }
        if out.via.is_some() {
            return Ok(Exchange::Other(Box::pin(self.to_peer(req, out))));
        }
        prepare_headers(req.headers_mut(), &out);
        let (mut parts, body) = req.into_parts();
        let body = body.boxed();
        match out.route.protocol {
            PortProtocol::Http2 | PortProtocol::Grpc => {
                parts.version = Version::HTTP_2;
                parts.uri = upstream_uri(&out.upstream_host, &out.route.path_and_query)?;
                parts.headers.remove(HOST);
                Ok(Exchange::Other(Box::pin(self.h2c_exchange(Request::from_parts(parts, body), out))))
            }
            PortProtocol::Tls => Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "port {} of sandbox {:?} is declared TLS (the app terminates its own TLS): reach it through a connect-tcp tunnel (`gateway tunnel`), not with HTTP requests",
                    out.route.port, out.sandbox.name
                ),
            )),
            PortProtocol::Http | PortProtocol::Tcp => {
                parts.version = Version::HTTP_11;
                parts.uri = origin_form(&out.route.path_and_query)?;
                headers::set_host(&mut parts.headers, &out.upstream_host)
                    .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the host cannot be forwarded"))?;
                Ok(Exchange::Http1 {
                    proxy: self,
                    request: Request::from_parts(parts, body),
                    sandbox: out.sandbox,
                    port: out.route.port,
                    slot: out.slot,
                })
            }
        }
    }

    /// A request to an `HTTP2`/`GRPC` port, on the destination's h2c connection.
    async fn h2c_exchange(&self, request: Request<UpBody>, out: Outbound) -> Result<Response<EdgeBody>, ApiError> {
        // Field by field, so that the slot can move into the response.
        let to = Destination { sandbox: &out.sandbox.name, port: out.route.port };
        let sender = self.h2c.sender(out.addr()).await.map_err(|e| exchange_failed(&*e, to))?;
        let response = tokio::time::timeout(self.settings.response_timeout, H2Pool::send(sender, request))
            .await
            .map_err(|_| response_timed_out(self.settings.response_timeout, to))?
            .map_err(|e| exchange_failed(&*e, to))?;
        from_app(response, out.slot, to)
    }

    /// A plain request for another fleet host's sandbox, on the HTTP/2 connection to it.
    async fn to_peer(&self, mut req: Request<Incoming>, out: Outbound) -> Result<Response<EdgeBody>, ApiError> {
        let (Some(via), Some(peers)) = (out.via.as_deref(), self.peers.as_ref()) else {
            return Err(ApiError::new(ErrorCode::Internal, "a peer route without the fleet's connections"));
        };
        prepare_headers(req.headers_mut(), &out);
        let (mut parts, body) = req.into_parts();
        parts.version = Version::HTTP_2;
        parts.uri = Uri::builder()
            .scheme("https")
            .authority(out.upstream_host.as_str())
            .path_and_query(out.route.path_and_query.as_str())
            .build()
            .map_err(|_| bad_target())?;
        parts.headers.remove(HOST);
        let timeout = self.settings.response_timeout + PEER_GRACE;
        let sent = async {
            let sender = peers.h2(via).await?;
            tokio::time::timeout(timeout, H2Pool::send(sender, Request::from_parts(parts, body.boxed())))
                .await
                .map_err(|_| super::fleet::forward::unreachable(via, format!("no answer within {timeout:?}")))?
                .map_err(|e| super::fleet::forward::unreachable(via, e))
        };
        let response = sent.await;
        crate::telemetry::metrics::global().fleet_forwarded(&via.host, response.is_ok());
        let response = response?;
        from_app(response, out.slot, Destination { sandbox: &out.sandbox.name, port: out.route.port })
    }

    /// Sends the upgrade request on a dedicated connection and waits (bounded) for the app's
    /// response head (or the peer's, when another fleet host runs the sandbox).
    async fn send_upgrade(&self, out: &Outbound, request: Request<UpBody>) -> Result<Response<Incoming>, ApiError> {
        let to = out.destination();
        if let (Some(via), Some(peers)) = (out.via.as_deref(), self.peers.as_ref()) {
            let timeout = self.settings.response_timeout + PEER_GRACE;
            let sent = async {
                let mut sender = peers.h1_upgrade(via).await?;
                match tokio::time::timeout(timeout, sender.send_request(request)).await {
                    Err(_) => Err(super::fleet::forward::unreachable(via, format!("no answer within {timeout:?}"))),
                    Ok(Err(e)) => Err(super::fleet::forward::unreachable(via, e)),
                    Ok(Ok(r)) => Ok(r),
                }
            };
            let response = sent.await;
            crate::telemetry::metrics::global().fleet_forwarded(&via.host, response.is_ok());
            return response;
        }
        let mut sender = match upgrade_connection(out.addr(), self.settings.connect, &out.sandbox.name).await {
            Ok(sender) => sender,
            Err(ExchangeError::Connect(e)) => return Err(connect_failed(&e, to)),
            Err(ExchangeError::Http(e)) => return Err(exchange_failed(&e, to)),
            Err(ExchangeError::Lean(e)) => return Err(exchange_failed(&e, to)),
        };
        match tokio::time::timeout(self.settings.response_timeout, sender.send_request(request)).await {
            Err(_) => Err(response_timed_out(self.settings.response_timeout, to)),
            Ok(Err(e)) => Err(exchange_failed(&e, to)),
            Ok(Ok(r)) => Ok(r),
        }
    }

    async fn upgrade_h1(
        &self,
        mut req: Request<Incoming>,
        upgrade: HeaderValue,
        out: Outbound,
    ) -> Result<Response<EdgeBody>, ApiError> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        prepare_headers(req.headers_mut(), &out);
        let (mut parts, body) = req.into_parts();
        parts.version = Version::HTTP_11;
        parts.uri = origin_form(&out.route.path_and_query)?;
        headers::set_host(&mut parts.headers, &out.upstream_host)
            .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the host cannot be forwarded"))?;
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, upgrade);
        let mut response = self.send_upgrade(&out, Request::from_parts(parts, body.boxed())).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            headers::from_app(response.headers_mut());
            return Ok(response.map(|b| GuardedBody::wrap(b, out.slot)));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let mut answer = Response::new(empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = response.headers().clone();
        headers::host_only_cookies(answer.headers_mut());
        spawn_tunnel(&self.tunnels, client_upgrade, upstream_upgrade, out, self.settings.idle_timeout);
        Ok(answer)
    }

    /// A TCP tunnel (`connect-tcp`): opened here when this host runs the sandbox; else passed
    /// to its owner as an HTTP/1.1 upgrade, which opens it.
    fn tcp_tunnel(
        &self,
        mut req: Request<Incoming>,
        ask: tcp_tunnel::Ask,
        out: Outbound,
    ) -> Result<Exchange<'_>, ApiError> {
        if out.via.is_some() {
            return Ok(Exchange::Other(match ask {
                tcp_tunnel::Ask::Upgrade => {
                    let upgrade = HeaderValue::from_static(tcp_tunnel::CONNECT_TCP);
                    Box::pin(self.upgrade_h1(req, upgrade, out))
                }
                tcp_tunnel::Ask::ExtendedConnect => Box::pin(self.h2_as_h1_upgrade(req, out, tcp_tunnel::CONNECT_TCP)),
            }));
        }
        tcp_tunnel::check_target(&out.route.path_and_query, out.route.port)?;
        let client = hyper::upgrade::on(&mut req);
        let addr = out.addr();
        let tunnel = tcp_tunnel::Tunnel {
            sandbox: out.sandbox.name.clone(),
            port: out.route.port,
            slot: out.slot,
            idle: self.settings.idle_timeout,
        };
        Ok(Exchange::Other(Box::pin(tcp_tunnel::open(client, ask, addr, self.settings.connect, tunnel, &self.tunnels))))
    }

    /// An HTTP/2 extended CONNECT (RFC 8441) sent on as an HTTP/1.1 upgrade to `protocol`:
    /// WebSocket towards the app, or any upgrade towards the fleet host that runs the sandbox.
    /// `200` to the client once the other side answered `101`.
    async fn h2_as_h1_upgrade(
        &self,
        mut req: Request<Incoming>,
        out: Outbound,
        protocol: &'static str,
    ) -> Result<Response<EdgeBody>, ApiError> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let websocket = protocol == "websocket";
        let version = req.headers().get(SEC_WEBSOCKET_VERSION).cloned().unwrap_or(HeaderValue::from_static("13"));
        prepare_headers(req.headers_mut(), &out);
        let (mut parts, _tunnel_body) = req.into_parts();
        parts.method = Method::GET;
        parts.version = Version::HTTP_11;
        parts.uri = origin_form(&out.route.path_and_query)?;
        parts.extensions = http::Extensions::new();
        let h = &mut parts.headers;
        headers::set_host(h, &out.upstream_host)
            .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the host cannot be forwarded"))?;
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static(protocol));
        if websocket {
            h.insert(SEC_WEBSOCKET_VERSION, version);
            h.insert(SEC_WEBSOCKET_KEY, websocket_key());
        }
        let mut response = self.send_upgrade(&out, Request::from_parts(parts, empty_up())).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            headers::from_app(response.headers_mut());
            return Ok(response.map(|b| GuardedBody::wrap(b, out.slot)));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let mut answer = Response::new(empty());
        for name in [http::header::SEC_WEBSOCKET_PROTOCOL, http::header::SEC_WEBSOCKET_EXTENSIONS] {
            if let Some(v) = response.headers().get(&name) {
                answer.headers_mut().insert(name, v.clone());
            }
        }
        spawn_tunnel(&self.tunnels, client_upgrade, upstream_upgrade, out, self.settings.idle_timeout);
        Ok(answer)
    }
}

/// An app's answer to a plain request, on its way to the client: hop-by-hop headers removed,
/// cookies made host-only, the body holding the sandbox's slot (boxed once, with the guard).
fn from_app<B>(
    mut response: Response<B>,
    slot: SandboxSlot,
    to: Destination<'_>,
) -> Result<Response<EdgeBody>, ApiError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only an upgrade request (`upgrade_h1`, `h2_as_h1_upgrade`) may be answered 101: an
        // app switching protocols unasked would end the client's HTTP connection on its word.
        return Err(ApiError::new(
            ErrorCode::BadGateway,
            format!(
                "the app on port {} of sandbox {:?} answered 101 Switching Protocols to a request that asked for no upgrade",
                to.port, to.sandbox
            ),
        ));
    }
    headers::from_app(response.headers_mut());
    Ok(response.map(|b| GuardedBody::wrap(b, slot)))
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`).
/// `h2c` is never honoured: the request is then proxied as a plain request.
fn requested_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !headers::connection_has(req.headers(), "upgrade") {
        return None;
    }
    let upgrade = req.headers().get(UPGRADE)?;
    let h2c = upgrade.to_str().map(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))).unwrap_or(true);
    (!h2c).then(|| upgrade.clone())
}

/// The header work every forwarded request gets: credentials the gateway consumed and client
/// `X-Blaxel-*` removed, hop-by-hop removed, `Expect` removed (the client side already
/// answered `100 Continue`), HTTP/2 cookie crumbs joined, forwarding headers set.
///
/// Towards another fleet host, the forwarding headers stay as the client sent them (the owner
/// sets them, from the client's address this gateway vouches for) and the preview's headers
/// are the owner's to set: what this gateway established is written instead.
fn prepare_headers(h: &mut HeaderMap, out: &Outbound) {
    auth::strip_credentials(h);
    headers::remove_hop_by_hop(h);
    h.remove(EXPECT);
    if h.get_all(COOKIE).iter().nth(1).is_some() {
        let cookies: Vec<&str> = h.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
        if let Ok(joined) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(COOKIE, joined);
        }
    }
    if let Some(via) = &out.via {
        via.vouch.write(h);
        return;
    }
    headers::set_forwarding(h, &Forwarding { peer: &out.peer, host: &out.client_host, trusted: out.trusted });
    for (name, value) in &out.set_headers {
        h.insert(name, value.clone());
    }
}

fn bad_target() -> ApiError {
    ApiError::new(ErrorCode::BadRequest, "the request target cannot be forwarded")
}

fn upstream_uri(authority: &str, path_and_query: &str) -> Result<Uri, ApiError> {
    Uri::builder().scheme("http").authority(authority).path_and_query(path_and_query).build().map_err(|_| bad_target())
}

fn origin_form(path_and_query: &str) -> Result<Uri, ApiError> {
    Uri::builder().path_and_query(path_and_query).build().map_err(|_| bad_target())
}

fn empty() -> EdgeBody {
    super::empty_body()
}

fn empty_up() -> UpBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn websocket_key() -> HeaderValue {
    let mut bytes = [0u8; 16];
    if super::tls::provider().secure_random.fill(&mut bytes).is_err() {
        // Not a secret: uniqueness per connection is all RFC 6455 asks for.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    use base64::{Engine, engine::general_purpose::STANDARD};
    HeaderValue::from_str(&STANDARD.encode(bytes)).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// Joins the two upgraded sides once both resolve; closes both when either ends or after the
/// idle timeout. The sandbox slot is held for the tunnel's lifetime.
fn spawn_tunnel(tunnels: &TaskTracker, client: OnUpgrade, upstream: OnUpgrade, out: Outbound, idle: Duration) {
    tunnels.spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(sandbox = %out.sandbox.name, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade did not complete");
                return;
            }
        };
        let _open = crate::telemetry::metrics::global().websocket_opened();
        let activity = Activity::new();
        let mut client = ActivityIo::new(TokioIo::new(client), activity.clone());
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
                Ok((up, down)) => tracing::debug!(sandbox = %out.sandbox.name, port = out.route.port, up, down, "tunnel closed"),
                Err(e) => tracing::debug!(sandbox = %out.sandbox.name, port = out.route.port, error = %e, "tunnel ended with an error"),
            },
            () = idle_timeout(&activity, idle) => {
                tracing::info!(sandbox = %out.sandbox.name, port = out.route.port, idle_secs = idle.as_secs(), "tunnel idle; closed");
            }
        }
        drop(out.slot);
    });
}

/// A response body that holds the sandbox's slot until it ends (or is dropped).
struct GuardedBody<B> {
    inner: B,
    slot: Option<SandboxSlot>,
}

impl<B> GuardedBody<B>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    fn wrap(inner: B, slot: SandboxSlot) -> EdgeBody {
        if inner.is_end_stream() {
            return inner.map_err(Into::into).boxed();
        }
        GuardedBody { inner, slot: Some(slot) }.boxed()
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.slot.take();
        }
        r.map_err(Into::into)
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

    #[test]
    fn websocket_key_is_16_bytes_in_base64() {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let key = websocket_key();
        let text = key.to_str().expect("ascii");
        assert_eq!(text.len(), 24);
        assert_eq!(STANDARD.decode(text).expect("base64").len(), 16);
        assert_ne!(websocket_key(), key);
    }

    #[test]
    fn upgrade_detection() {
        let req = |conn: &str, up: &str| {
            Request::builder().header(CONNECTION, conn).header(UPGRADE, up).body(()).expect("request")
        };
        assert!(requested_upgrade(&req("Upgrade", "websocket")).is_some());
        assert!(requested_upgrade(&req("keep-alive, upgrade", "websocket")).is_some());
        assert!(requested_upgrade(&req("keep-alive", "websocket")).is_none());
        assert!(requested_upgrade(&req("upgrade", "h2c")).is_none());
        let mut r = req("upgrade", "websocket");
        *r.version_mut() = Version::HTTP_10;
        assert!(requested_upgrade(&r).is_none());
    }
}
