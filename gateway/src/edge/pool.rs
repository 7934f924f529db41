//! The upstream connectors, side by side: kept-alive HTTP/1.1 connections per (address, port)
//! ([`H1Pool`]), one multiplexed h2c connection per (address, port) for `HTTP2`/`GRPC` ports
//! ([`H2Pool`]), and a dedicated HTTP/1.1 connection per upgrade ([`upgrade_connection`]).
//! Every one is made through [`connect`], marked.
//!
//! Both pools are per worker ([`super::workers`]): a connection is driven by the worker that
//! made it, and only that worker's requests use it.
//!
//! The HTTP/1.1 pool:
//! A request takes the most recently used idle connection of its destination (or connects one
//! through [`connect`], marked), and the connection goes back to the pool when the response
//! body has been read to its end ([`PooledBody`]); a response abandoned midway takes its
//! connection with it. A request that a reused connection could not carry (the app closed it
//! while it was idle, before the request was written) goes on another connection (a fresh one
//! at the latest), so an app's keep-alive timeout never surfaces as a 502. Idle connections are dropped after
//! [`POOL_IDLE_TIMEOUT`] and beyond [`POOL_MAX_IDLE_PER_HOST`] per destination.
//!
//! Compared with hyper-util's legacy `Client`, no task is spawned and no URI is formatted per
//! request: the connection is checked out and in by the request's own task. A request without
//! a body (most are) goes further: its connection has no task at all, the request's own task
//! writes the head and reads the answer ([`super::h1`], kept in their own idle lists); one
//! with a body goes through hyper's client connection, which sends the body while it watches
//! for an early answer.

use super::{
    connect::{ConnectError, ConnectSettings, connect},
    h1, workers,
};
use crate::model::FastMap;
use bytes::Bytes;
use http::{Request, Response};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{Builder, SendRequest},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    error::Error as StdError,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body type sent to apps.
pub type UpBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle pooled connections kept per (address, port): as many as HTTP/2 streams one client
/// connection may have in flight, so a busy client does not churn connections.
pub const POOL_MAX_IDLE_PER_HOST: usize = super::MAX_CONCURRENT_STREAMS as usize;

/// Why a pooled exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection could be made.
    Connect(ConnectError),
    /// The connection broke or the app answered something invalid.
    Http(hyper::Error),
    /// The same, on a connection of the lean codec.
    Lean(h1::H1Error),
}

struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

struct IdleLean {
    conn: h1::Conn,
    since: Instant,
}

/// Where a pooled connection goes: its worker (whose runtime drives the connection, see
/// [`workers`]) and its destination.
type Key = (usize, SocketAddr);

/// The key of `addr` for the calling worker.
fn key(addr: SocketAddr) -> Key {
    (workers::current(), addr)
}

/// The pool (shared with the response bodies that return connections to it). Connections are
/// kept per worker: a request takes one its own worker drives.
pub struct H1Pool {
    settings: ConnectSettings,
    idle: Mutex<FastMap<Key, Vec<Idle>>>,
    /// Idle connections of the lean codec (requests without a body).
    lean: Mutex<FastMap<Key, Vec<IdleLean>>>,
    sweeper: std::sync::Once,
}

impl H1Pool {
    /// An empty pool connecting with these settings.
    pub fn new(settings: ConnectSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            idle: Mutex::new(FastMap::default()),
            lean: Mutex::new(FastMap::default()),
            sweeper: std::sync::Once::new(),
        })
    }

    fn take_idle(&self, key: Key) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&key)?;
        while let Some(i) = list.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        idle.remove(&key);
        None
    }

    fn put_idle(self: &Arc<Self>, key: Key, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(key).or_default();
            if list.len() >= POOL_MAX_IDLE_PER_HOST {
                return;
            }
            list.push(Idle { sender, since: Instant::now() });
        }
        self.sweeper.call_once(|| spawn_sweeper(Arc::downgrade(self)));
    }

    fn take_lean(&self, key: Key) -> Option<h1::Conn> {
        let mut lean = self.lean.lock().unwrap_or_else(|p| p.into_inner());
        let list = lean.get_mut(&key)?;
        while let Some(mut i) = list.pop() {
            if i.since.elapsed() < POOL_IDLE_TIMEOUT && i.conn.is_reusable() {
                return Some(i.conn);
            }
        }
        lean.remove(&key);
        None
    }

    fn put_lean(self: &Arc<Self>, key: Key, conn: h1::Conn) {
        {
            let mut lean = self.lean.lock().unwrap_or_else(|p| p.into_inner());
            let list = lean.entry(key).or_default();
            if list.len() >= POOL_MAX_IDLE_PER_HOST {
                return;
            }
            list.push(IdleLean { conn, since: Instant::now() });
        }
        self.sweeper.call_once(|| spawn_sweeper(Arc::downgrade(self)));
    }

    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < POOL_IDLE_TIMEOUT);
            !list.is_empty()
        });
        drop(idle);
        // Only the age here: a connection belongs to its worker's runtime, and a closed one is
        // found (and dropped) at its next checkout.
        let mut lean = self.lean.lock().unwrap_or_else(|p| p.into_inner());
        lean.retain(|_, list| {
            list.retain(|i| i.since.elapsed() < POOL_IDLE_TIMEOUT);
            !list.is_empty()
        });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<UpBody>, ExchangeError> {
        let stream = connect(addr, self.settings).await.map_err(ExchangeError::Connect)?;
        let (sender, conn) = Builder::new().handshake(TokioIo::new(stream)).await.map_err(ExchangeError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `request` to `addr` on a pooled (or new) connection; the response timeout starts
    /// once a connection is ready (a slow connection is the connector's error, 502; only a
    /// slow app is a timeout, 504). The response body returns the connection when read whole.
    pub async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut request: Request<UpBody>,
        response_timeout: Duration,
    ) -> Result<Result<Response<AppBody>, ExchangeError>, tokio::time::error::Elapsed> {
        let key = key(addr);
        if request.body().is_end_stream() {
            return self.exchange_lean(key, addr, request, response_timeout).await;
        }
        loop {
            let (mut sender, reused) = match self.take_idle(key) {
                Some(s) => (s, true),
                // Boxed: connecting is rare, and its future would otherwise size (and be
                // moved with) every request's.
                None => match Box::pin(self.connect(addr)).await {
                    Ok(s) => (s, false),
                    Err(e) => return Ok(Err(e)),
                },
            };
            let deadline = tokio::time::Instant::now() + response_timeout;
            if !sender.is_ready()
                && let Err(e) = tokio::time::timeout_at(deadline, sender.ready()).await?
            {
                // The app closed the idle connection: once more on a new connection.
                if reused {
                    continue;
                }
                return Ok(Err(ExchangeError::Http(e)));
            }
            match tokio::time::timeout_at(deadline, sender.try_send_request(request)).await? {
                Ok(response) => {
                    // After a 101 the connection no longer speaks HTTP: never reused.
                    let back = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (Arc::downgrade(self), key, sender));
                    return Ok(Ok(response.map(|inner| AppBody::Hyper(PooledBody::new(inner, back)))));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: once more on a new connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Ok(Err(ExchangeError::Http(e.into_error()))),
                },
            }
        }
    }

    /// [`H1Pool::exchange`] of a request without a body, on a connection of the lean codec.
    async fn exchange_lean(
        self: &Arc<Self>,
        key: Key,
        addr: SocketAddr,
        request: Request<UpBody>,
        response_timeout: Duration,
    ) -> Result<Result<Response<AppBody>, ExchangeError>, tokio::time::error::Elapsed> {
        let (parts, _empty) = request.into_parts();
        let idempotent = parts.method.is_idempotent();
        loop {
            let (mut conn, reused) = match self.take_lean(key) {
                Some(c) => (c, true),
                // Boxed, as in `exchange`.
                None => match Box::pin(connect(addr, self.settings)).await {
                    Ok(s) => (h1::Conn::new(s), false),
                    Err(e) => return Ok(Err(ExchangeError::Connect(e))),
                },
            };
            let deadline = tokio::time::Instant::now() + response_timeout;
            match tokio::time::timeout_at(deadline, conn.send(&parts)).await? {
                Ok(head) => {
                    let back = head.keep_alive.then(|| (Arc::downgrade(self), key));
                    let body = LeanBody::new(conn, head.framing, back);
                    return Ok(Ok(head.response.map(|()| AppBody::Lean(body))));
                }
                // The app closed the idle connection as the request went: once more on
                // another connection.
                Err(e) if reused && e.unanswered(idempotent) => continue,
                Err(e) => return Ok(Err(ExchangeError::Lean(e))),
            }
        }
    }
}

fn spawn_sweeper(pool: Weak<H1Pool>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POOL_IDLE_TIMEOUT / 3).await;
            match pool.upgrade() {
                Some(p) => p.sweep(),
                None => return,
            }
        }
    });
}

/// The body of an app's response, from either kind of pooled connection.
pub enum AppBody {
    /// Through hyper's client connection.
    Hyper(PooledBody),
    /// Read by the request's task ([`super::h1`]).
    Lean(LeanBody),
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AppBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            AppBody::Lean(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            AppBody::Hyper(b) => b.is_end_stream(),
            AppBody::Lean(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            AppBody::Hyper(b) => b.size_hint(),
            AppBody::Lean(b) => b.size_hint(),
        }
    }
}

/// A response body read by the request's task from a lean connection, which goes back to the
/// pool when the body ended exactly where its framing said and the app allowed reuse.
pub struct LeanBody {
    conn: Option<h1::Conn>,
    framing: h1::Framing,
    back: Option<(Weak<H1Pool>, Key)>,
}

impl LeanBody {
    fn new(conn: h1::Conn, framing: h1::Framing, back: Option<(Weak<H1Pool>, Key)>) -> Self {
        let mut body = Self { conn: Some(conn), framing, back };
        if framing.is_done() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.is_drained()
            && let Some((pool, key)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_lean(key, conn);
        }
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = h1::H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h1::H1Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
        let r = conn.poll_body(&mut this.framing, cx);
        match &r {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.framing.is_done() => this.release(),
            // A broken body: the connection is closed.
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }
    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
}

/// A response body from a pooled connection: returns the connection to the pool once read to
/// its end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Weak<H1Pool>, Key, SendRequest<UpBody>)>,
}

impl PooledBody {
    fn new(inner: Incoming, back: Option<(Weak<H1Pool>, Key, SendRequest<UpBody>)>) -> Self {
        let mut body = Self { inner, back };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((pool, key, sender)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_idle(key, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
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

/// One multiplexed h2c connection per (address, port) and worker, reconnected when closed.
pub struct H2Pool {
    settings: ConnectSettings,
    conns: Mutex<FastMap<Key, hyper::client::conn::http2::SendRequest<UpBody>>>,
}

impl H2Pool {
    pub fn new(settings: ConnectSettings) -> Self {
        Self { settings, conns: Mutex::new(FastMap::default()) }
    }

    fn cached(&self, key: Key) -> Option<hyper::client::conn::http2::SendRequest<UpBody>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        match conns.get(&key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                conns.remove(&key);
                None
            }
            None => None,
        }
    }

    pub async fn sender(&self, addr: SocketAddr) -> Result<hyper::client::conn::http2::SendRequest<UpBody>, BoxError> {
        let key = key(addr);
        if let Some(s) = self.cached(key) {
            return Ok(s);
        }
        let stream = connect(addr, self.settings).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "h2c upstream connection ended with an error");
            }
        });
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(key, sender.clone());
        Ok(sender)
    }

    pub async fn send(
        mut sender: hyper::client::conn::http2::SendRequest<UpBody>,
        request: Request<UpBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }
}

/// A dedicated HTTP/1.1 connection to `addr`, for one upgrade request (WebSocket…): after a
/// `101` it carries the tunnel, so it never goes back to a pool.
pub async fn upgrade_connection(
    addr: SocketAddr,
    settings: ConnectSettings,
    sandbox: &str,
) -> Result<SendRequest<UpBody>, ExchangeError> {
    let stream = connect(addr, settings).await.map_err(ExchangeError::Connect)?;
    let (sender, conn) = Builder::new().handshake(TokioIo::new(stream)).await.map_err(ExchangeError::Http)?;
    let sandbox = sandbox.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(sandbox, error = %e, "upstream upgrade connection ended with an error");
        }
    });
    Ok(sender)
}
