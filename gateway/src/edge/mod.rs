//! The public HTTPS edge: TLS → host → routing (per host kind) → one forward step → proxy →
//! marked connection → sandbox.
//!
//! - [`tls`]: rustls, ALPN h2/http1.1, certificates by SNI, development CA.
//! - [`host`]: the Host/`:authority`, normalised; 421 when the connection's certificate does not
//!   cover it; the host kind (sandbox, preview, `/v0` API).
//! - `request`: the request path every host kind shares — the request filter, each kind's
//!   routing into a `Routed` (the edge's own answer, or an `Upstream`: sandbox, port, protocol,
//!   request rewrite), and the one forward step (sandbox slot, proxy, latency metric).
//! - [`route`]: `/port/{N}/…` or the sandbox API on 8080, as pure functions.
//! - [`crate::auth`]: the workspace token, then its removal before forwarding.
//! - `preview`: the routing of preview hosts and the `/v0` API host (`crate::service::previews`,
//!   `crate::compat`).
//! - [`proxy`]: streaming HTTP/1.1, h2c, upgrades and WebSocket over HTTP/2; [`headers`]: what
//!   is removed, added and rewritten on the way; [`tcp_tunnel`]: raw TCP to a port over an
//!   authenticated `connect-tcp` upgrade.
//! - `pool`: the upstream connectors (HTTP/1.1 pool, h2c, dedicated upgrade connections) over
//!   [`connect`] (marked sockets, waiting for a port).
//! - [`limits`], [`upstream_errors`]: caps, timeouts, and the answers when things fail.
//! - [`cancellations`]: connections whose client cancels most requests (HTTP/2 rapid reset).
//! - [`workers`]: the threads serving connections, one single-threaded runtime each; a
//!   connection stays on the worker it was handed to.
//!
//! `Edge::handle` wraps the path: framing checks first, errors rendered (JSON or HTML), the
//! request id, and the access log written when the response body ends.

pub mod cancellations;
pub mod connect;
pub mod fleet;
mod h1;
pub mod headers;
pub mod host;
pub mod limits;
mod pool;
mod preview;
pub mod proxy;
mod request;
pub mod route;
pub mod tcp_tunnel;
pub mod tls;
pub mod upstream_errors;
pub mod workers;

use crate::{
    config::{Config, HostHeaderPolicy, IpNet},
    errors::{ApiError, ErrorCode},
    service::App,
    telemetry::{
        access::{self, LoggedBody, RequestLog},
        metrics,
    },
};
use bytes::Bytes;
use cancellations::Cancellations;
use connect::ConnectSettings;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use limits::{Activity, ActivityIo, Admission, Limits, idle_timeout, no_request_by};
use proxy::{Proxy, ProxySettings};
use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};
use tls::{CertEntry, CertStore, SharedCerts};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use upstream_errors::{prefers_html, render, too_many};
use workers::Workers;

/// The body of every edge response.
pub type EdgeBody = BoxBody<Bytes, pool::BoxError>;

/// An empty response body.
fn empty_body() -> EdgeBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// At a drain, how long connections get to end by themselves (HTTP/1.1 answers carry
/// `Connection: close`) before the rest are closed gracefully (idle HTTP/1.1 connections at
/// once, HTTP/2 with a GOAWAY).
const SOFT_DRAIN: Duration = Duration::from_secs(2);
/// Concurrent HTTP/2 streams per client connection.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Errors starting the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// `listen.https` is invalid.
    #[error("listen.https: {0}")]
    Address(String),
    /// Certificates.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The socket handed over by the previous process is not `listen.https`.
    #[error("the inherited HTTPS listener is not {want}: {reason}")]
    Inherited {
        /// `listen.https`.
        want: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The task loading the certificates panicked or was cancelled.
    #[error("the certificate loading task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A worker thread could not be started.
    #[error("cannot start the edge's worker threads: {0}")]
    Workers(#[source] io::Error),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A bound HTTPS listener with its certificates.
pub struct EdgeListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    certs: SharedCerts,
    /// What serves the accepted connections (`proxy.workers` threads; the public TCP ports'
    /// connections too).
    workers: Arc<Workers>,
    /// A fleet member's listener for its peers, and its TLS towards them.
    fleet: Option<FleetListener>,
}

/// The fleet listener (`fleet.listen`): mutual TLS, only the fleet's peers.
struct FleetListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tls: Arc<fleet::pki::FleetTls>,
}

impl EdgeListener {
    /// Where it listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The listening socket (handed to a successor at a zero-downtime restart).
    pub fn raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// The worker threads, which the public TCP ports' connections share.
    pub fn workers(&self) -> Arc<Workers> {
        self.workers.clone()
    }

    /// The fleet listener's socket, if this gateway is a fleet member.
    pub fn fleet_fd(&self) -> Option<RawFd> {
        self.fleet.as_ref().map(|f| f.tcp.as_raw_fd())
    }

    /// Where the fleet listener listens.
    pub fn fleet_addr(&self) -> Option<SocketAddr> {
        self.fleet.as_ref().and_then(|f| f.tcp.local_addr().ok())
    }

    /// What reloads its certificates on SIGHUP.
    pub fn reloader(&self) -> Arc<dyn crate::lifecycle::Reloadable> {
        Arc::new(tls::CertReloader(self.certs.clone()))
    }
}

/// Loads (or generates) the certificates and binds `listen.https` (and a fleet member's
/// `fleet.listen`), or adopts the listening sockets a predecessor handed over (zero-downtime
/// restart), after checking their addresses.
pub async fn bind(
    config: &Config,
    inherited: Option<OwnedFd>,
    inherited_fleet: Option<OwnedFd>,
) -> Result<EdgeListener, EdgeError> {
    let addr = config.https_addr().map_err(EdgeError::Address)?;
    let owned = config.clone();
    let certs = tokio::task::spawn_blocking(move || CertStore::load(&owned)).await??;
    let certs: SharedCerts = Arc::new(arc_swap::ArcSwap::from_pointee(certs));
    let acceptor = TlsAcceptor::from(tls::server_config(certs.clone())?);
    let tcp = match inherited {
        Some(fd) => adopt(fd, addr)?,
        None => listen(addr, config.proxy.listen_backlog).map_err(|source| EdgeError::Bind { addr, source })?,
    };
    let fleet = match config.fleet.enabled() {
        true => Some(bind_fleet(config, inherited_fleet).await?),
        false => None,
    };
    let workers = Arc::new(Workers::start(config.proxy.worker_count()).map_err(EdgeError::Workers)?);
    Ok(EdgeListener { tcp, acceptor, certs, workers, fleet })
}

async fn bind_fleet(config: &Config, inherited: Option<OwnedFd>) -> Result<FleetListener, EdgeError> {
    let f = config.fleet.clone();
    let addr: SocketAddr =
        f.listen.parse().map_err(|e| EdgeError::Address(format!("fleet.listen {:?}: {e}", f.listen)))?;
    let tls =
        tokio::task::spawn_blocking(move || fleet::pki::FleetTls::load(&f.ca, &f.cert, &f.key, &f.host)).await??;
    let tls = Arc::new(tls);
    let tcp = match inherited {
        Some(fd) => adopt(fd, addr)?,
        None => listen(addr, config.proxy.listen_backlog).map_err(|source| EdgeError::Bind { addr, source })?,
    };
    Ok(FleetListener { tcp, acceptor: TlsAcceptor::from(tls.server.clone()), tls })
}

/// Binds `addr` (with `SO_REUSEADDR`, like [`TcpListener::bind`]) and listens with `backlog`.
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn adopt(fd: OwnedFd, addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    let inherited = |reason: String| EdgeError::Inherited { want: addr, reason };
    let std = std::net::TcpListener::from(fd);
    let local = std.local_addr().map_err(|e| inherited(e.to_string()))?;
    if local != addr && !(addr.port() == local.port() && addr.ip().is_unspecified()) {
        return Err(inherited(format!("it listens on {local}")));
    }
    std.set_nonblocking(true).map_err(|e| inherited(e.to_string()))?;
    TcpListener::from_std(std).map_err(|e| inherited(e.to_string()))
}

/// Per-connection facts the request handler needs, with the texts every request on the
/// connection writes formatted once.
struct ConnInfo {
    edge: Arc<Edge>,
    peer: SocketAddr,
    /// `peer` as the access log writes it.
    peer_text: Arc<str>,
    /// `peer` as the forwarding headers write it.
    forwarding: Arc<headers::PeerText>,
    /// Whether `peer` is a trusted proxy (`proxy.trusted_proxies`).
    trusted: bool,
    cert: Arc<CertEntry>,
    /// Over the connection cap: every request is answered 429.
    reject: bool,
    /// A connection from a fleet peer (its `fleet.host`), on the fleet listener.
    fleet: Option<Arc<str>>,
}

/// The request handler and its shared state.
struct Edge {
    app: Arc<App>,
    proxy: Proxy,
    limits: Arc<Limits>,
    trusted: Vec<IpNet>,
    /// `region` and `domain` (restart-only keys), for telling hosts apart.
    zones: host::Zones,
    host_policy: HostHeaderPolicy,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    serving: auto::Builder<TokioExecutor>,
    rejecting: auto::Builder<TokioExecutor>,
    /// Set when the listener stops accepting: HTTP/1.1 answers close their connection.
    draining: std::sync::atomic::AtomicBool,
}

impl Edge {
    fn new(app: Arc<App>, fleet: Option<Arc<fleet::pki::FleetTls>>) -> Self {
        let config = app.config();
        let p = &config.proxy;
        let settings = ProxySettings {
            connect: ConnectSettings {
                mark: config.dataplane.mark,
                timeout: p.connect_timeout.get(),
                wait_for_port: p.wait_for_port.get(),
            },
            response_timeout: p.response_timeout.get(),
            idle_timeout: p.idle_timeout.get(),
        };
        let builder = |keep_alive: bool| {
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(p.header_read_timeout.get())
                .max_buf_size(p.max_header_bytes)
                .keep_alive(keep_alive);
            b.http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .max_header_list_size(u32::try_from(p.max_header_bytes).unwrap_or(u32::MAX));
            b
        };
        Self {
            proxy: Proxy::new(settings, fleet),
            limits: Limits::new(p.max_connections, p.max_connections_per_sandbox),
            trusted: config.trusted_proxies(),
            zones: host::Zones::new(&config.region, &config.domain),
            host_policy: p.host_header,
            header_read_timeout: p.header_read_timeout.get(),
            idle_timeout: p.idle_timeout.get(),
            max_connections: p.max_connections,
            serving: builder(true),
            rejecting: builder(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            app,
        }
    }

    /// Answers one request: the app's response, or an error (JSON, HTML for browsers). Counts
    /// it in the metrics and writes its access-log line when the body has been sent.
    async fn handle(&self, conn: &ConnInfo, mut req: Request<Incoming>) -> Response<LoggedBody<EdgeBody>> {
        let html = prefers_html(req.headers());
        // From a fleet peer: the client is the one it vouches for.
        let vouch = conn.fleet.as_ref().map(|_| fleet::Vouch::from_headers(req.headers()));
        let peer_text = match &vouch {
            Some(Ok(v)) => v.client.to_string().into(),
            _ => conn.peer_text.clone(),
        };
        let mut log = RequestLog::new(req.method(), peer_text);
        let http1 = req.version() < http::Version::HTTP_2;
        // Ambiguous framing: refused before anything else, and an HTTP/1.1 connection closed
        // after the answer (what follows on it cannot be trusted to start a request).
        let ambiguous = headers::framing_violation(req.headers());
        let close = http1 && ambiguous.is_some();
        let ambiguous = match vouch {
            Some(Err(e)) => Some(e.message),
            Some(Ok(v)) => {
                req.extensions_mut().insert(v);
                ambiguous
            }
            None => ambiguous,
        };
        let result = match ambiguous {
            Some(why) => Err(ApiError::new(ErrorCode::BadRequest, why)),
            None => match self.route(conn, req, &mut log) {
                Ok((request::Routed::Answer(response), _)) => Ok(response),
                // Boxed: the API's handlers make a large future that proxied requests need not
                // carry.
                Ok((request::Routed::Api(req), _)) => Ok(Box::pin(self.api_host(req)).await),
                Ok((request::Routed::Forward(upstream, req), client_host)) => {
                    match self.forward(conn, client_host, *upstream, req, &mut log) {
                        Ok(forward) => forward.send().await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        };
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(id = %log.id, peer = %conn.peer, status = e.status(), code = %e.code, message = %e.message, "refused");
                render(&e, html)
            }
        };
        if close {
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        response.headers_mut().insert(access::REQUEST_ID_HEADER, log.id.header_value());
        if http1
            && self.draining.load(std::sync::atomic::Ordering::Acquire)
            && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        let log = log.responded(response.status().as_u16());
        // Not boxed again: hyper polls the logged body directly.
        response.map(|body| LoggedBody::new(body, log))
    }
}

/// The next connection on the fleet listener (never, without one).
async fn accept_fleet(fleet: Option<&FleetListener>) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match fleet {
        Some(f) => f.tcp.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves the HTTPS edge until `shutdown` resolves, then lets in-flight requests finish (up to
/// a few seconds). The listening socket stays open (a successor may be accepting on it).
pub async fn serve(listener: Arc<EdgeListener>, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let edge = Arc::new(Edge::new(app, listener.fleet.as_ref().map(|f| f.tls.clone())));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, from_fleet) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.tcp.accept() => match accepted {
                Ok((s, p)) => (s, p, false),
                Err(e) => {
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            accepted = accept_fleet(listener.fleet.as_ref()) => match accepted {
                Ok((s, p)) => (s, p, true),
                Err(e) => {
                    tracing::warn!(error = %e, "fleet accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (guard, reject) = match edge.limits.admit() {
            Admission::Serve(g) => (g, false),
            Admission::Reject(g) => (g, true),
            Admission::Close => {
                tracing::debug!(%peer, "far over the connection cap; closed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Served by a worker: its reactor drives the socket from here on.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        let edge = edge.clone();
        let acceptor = match (from_fleet, &listener.fleet) {
            (true, Some(f)) => f.acceptor.clone(),
            _ => listener.acceptor.clone(),
        };
        let certs = listener.certs.clone();
        let watcher = graceful.watcher();
        listener.workers.spawn(move || async move {
            let _open = metrics::global().connection_opened();
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "a worker cannot take the connection");
                    return;
                }
            };
            let activity = Activity::new();
            let io = ActivityIo::new(stream, activity.clone());
            // The TLS handshake and the first request head share one header read budget.
            let first_request_by = tokio::time::Instant::now() + edge.header_read_timeout;
            let tls = match tokio::time::timeout_at(first_request_by, acceptor.accept(io)).await {
                Ok(Ok(tls)) => {
                    metrics::global().tls_handshake(true);
                    tls
                }
                Ok(Err(e)) => {
                    metrics::global().tls_handshake(false);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::global().tls_handshake(false);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let fleet = match from_fleet {
                false => None,
                true => match tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(fleet::pki::dns_names) {
                    Some(names) if !names.is_empty() => Some(Arc::<str>::from(names[0].as_str())),
                    _ => {
                        tracing::warn!(%peer, "a fleet peer's certificate names no host; closed");
                        return;
                    }
                },
            };
            let cert = certs.load().select(tls.get_ref().1.server_name()).clone();
            let info = Arc::new(ConnInfo {
                edge: edge.clone(),
                peer,
                peer_text: peer.to_string().into(),
                forwarding: Arc::new(headers::PeerText::new(peer)),
                trusted: headers::is_trusted(peer.ip(), &edge.trusted),
                cert,
                reject,
                fleet,
            });
            let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = requested.clone();
            let cancels = Cancellations::new();
            let counted = cancels.clone();
            let service = service_fn(move |req| {
                seen.store(true, std::sync::atomic::Ordering::Release);
                let watch = counted.start();
                // The connection's own `Arc` (the edge is reached through it): a count that
                // only this worker writes, where the edge's is shared by every worker.
                let info = info.clone();
                // Boxed: the request's future is large, and hyper moves it (HTTP/2: into a
                // spawned task) before polling it; a box moves as a pointer.
                Box::pin(async move {
                    let response = info.edge.handle(&info, req).await;
                    watch.answered();
                    Ok::<_, Infallible>(response)
                })
            });
            let builder = if reject { &edge.rejecting } else { &edge.serving };
            let connection = watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service));
            tokio::select! {
                r = connection => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                },
                () = idle_timeout(&activity, edge.idle_timeout) => {
                    metrics::global().connection_cut(metrics::CutReason::Idle);
                    tracing::debug!(%peer, "client connection idle; closed");
                }
                () = no_request_by(&requested, first_request_by) => {
                    metrics::global().connection_cut(metrics::CutReason::NoRequest);
                    tracing::debug!(%peer, "no request within the header read timeout; closed");
                }
                () = cancels.tripped() => {
                    metrics::global().connection_cut(metrics::CutReason::CancelledRequests);
                    let (requests, cancelled) = cancels.counts();
                    tracing::info!(%peer, requests, cancelled, "the client cancelled most of its requests at once (HTTP/2 rapid reset); connection closed");
                }
            }
            drop(guard);
        });
    }
    drop(listener);
    // Soft drain first: every HTTP/1.1 response now says `Connection: close`, so a client
    // closes after its answer and its next request opens a connection (to a successor, after a
    // handoff) instead of racing a close on an idle keep-alive connection. Connections still
    // in their TLS handshake or before their first request are served too.
    edge.draining.store(true, std::sync::atomic::Ordering::Release);
    let soft_until = Instant::now() + SOFT_DRAIN;
    while graceful.count() > 0 && Instant::now() < soft_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // In-flight requests finish (HTTP/1.1 answers with `Connection: close`, HTTP/2 gets a
    // GOAWAY), then the upgraded tunnels (WebSockets) run until they end. The caller bounds
    // the whole drain (`serve --drain-timeout`).
    graceful.shutdown().await;
    edge.proxy.tunnels().close();
    if !edge.proxy.tunnels().is_empty() {
        tracing::info!(tunnels = edge.proxy.tunnels().len(), "waiting for open tunnels (WebSockets) to end");
    }
    edge.proxy.tunnels().wait().await;
}
