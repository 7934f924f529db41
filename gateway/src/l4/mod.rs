//! Public TCP ports: one listening socket receives every exposed port of `l4.port_range`
//! (the kernel's `l4_steer` sk_lookup program hands it connections to any exposed port on
//! `l4.address`), and each connection goes, in order:
//!
//! 1. accepted; its local port names the exposure ([`App::sandbox_by_public_port`]), else it is
//!    reset (`no_route`: the port was just unexposed);
//! 2. the client's address checked against the exposure's `allowFrom` (the edge guard already
//!    dropped other sources' SYNs on the public interface; this check holds on every other
//!    path) → `not_allowed`;
//! 3. the caps: `l4.max_connections` in total and `l4.max_connections_per_sandbox` → `limit`;
//! 4. a marked connection to the sandbox's port (tcx admission unchanged) → `connect_failed`
//!    resets the client;
//! 5. the PROXY protocol v2 header first if asked, then the bytes both ways by `l4.engine`
//!    ([`engine`]) until both sides closed, a reset, `l4.idle_timeout`, or a change of the
//!    sandbox's public ports that no longer admits the connection (`revoked`: both sides reset);
//! 6. one access-log line (`gateway::access`, `tcp connection`): source, sandbox, ports,
//!    bytes each way, duration, how it ended; metrics per sandbox and port.
//!
//! The listening socket is handed to a successor at a zero-downtime restart like the HTTPS
//! listener; connections already spliced stay with the old process until they end or its drain
//! deadline.

pub mod engine;
pub mod proxy_header;

use crate::{
    config::{Config, L4Engine},
    connector::connect_marked,
    edge::{
        limits::{Activity, Admission, Limits, idle_timeout},
        workers::Workers,
    },
    model::sandbox::{ProxyProtocol, Sandbox},
    service::App,
    telemetry::metrics,
};
use engine::{End, Mode, Moved, PipePool};
use nix::sys::socket::{setsockopt, sockopt};
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
};
use tokio_util::task::TaskTracker;

/// The listening socket of the public TCP ports. Polled for readiness here and accepted with
/// a plain `accept`, so an accepted socket is registered once, by the worker that serves it
/// (a tokio listener would register it with this runtime first, then move it).
pub struct L4Listener {
    tcp: AsyncFd<std::net::TcpListener>,
    range: std::ops::RangeInclusive<u16>,
}

/// Why the L4 listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    #[error("cannot listen for public TCP ports on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the inherited public TCP listener: {0}")]
    Inherited(String),
}

impl L4Listener {
    /// The socket the kernel steers connections to.
    pub fn raw_fd(&self) -> RawFd {
        self.tcp.get_ref().as_raw_fd()
    }

    /// Where it is bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.get_ref().local_addr()
    }

    /// The next connection, non-blocking and registered nowhere yet.
    async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.tcp.readable().await?;
            if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
                let (stream, peer) = accepted?;
                stream.set_nonblocking(true)?;
                return Ok((stream, peer));
            }
        }
    }

    /// The port range it serves.
    pub fn range(&self) -> std::ops::RangeInclusive<u16> {
        self.range.clone()
    }
}

/// Binds `l4.address` and the first port of `l4.port_range` (or adopts the socket a
/// predecessor handed over); `None` when public TCP ports are off.
pub fn bind(config: &Config, inherited: Option<OwnedFd>) -> Result<Option<L4Listener>, L4Error> {
    let Some(range) = config.l4.range() else { return Ok(None) };
    let addr = SocketAddr::from((config.l4.ipv4(), *range.start()));
    let std = match inherited {
        Some(fd) => {
            let std = std::net::TcpListener::from(fd);
            let local = std.local_addr().map_err(|e| L4Error::Inherited(e.to_string()))?;
            if local != addr {
                return Err(L4Error::Inherited(format!("it listens on {local}, not {addr}")));
            }
            std
        }
        None => {
            let bind = || -> io::Result<std::net::TcpListener> {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                let listener = socket.listen(config.proxy.listen_backlog)?;
                listener.into_std()
            };
            bind().map_err(|source| L4Error::Bind { addr, source })?
        }
    };
    std.set_nonblocking(true).map_err(|e| L4Error::Inherited(e.to_string()))?;
    client_options(&std);
    // SAFETY: the listener owns its descriptor, open until the AsyncFd (its owner) drops it.
    let tcp = unsafe { AsyncFd::register_with_interest(std, Interest::READABLE) }
        .map_err(|e| L4Error::Inherited(e.to_string()))?;
    Ok(Some(L4Listener { tcp, range }))
}

/// How a connection was refused, or that it was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    NoRoute,
    NotAllowed,
    Limit,
    ConnectFailed,
}

impl Outcome {
    /// Its label in metrics and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::NoRoute => "no_route",
            Outcome::NotAllowed => "not_allowed",
            Outcome::Limit => "limit",
            Outcome::ConnectFailed => "connect_failed",
        }
    }
}

/// What every connection shares.
struct Server {
    app: Arc<App>,
    limits: Arc<Limits>,
    mark: u32,
    connect_timeout: Duration,
    idle: Duration,
    engine: L4Engine,
    pipes: PipePool,
}

/// Accepts until `stop`, each connection served whole by one of the edge's `workers` (like an
/// HTTPS connection: its sockets, timers and wake-ups on one thread), then waits for the
/// connections being served (the caller bounds the wait with the drain deadline).
pub async fn serve(
    listener: Arc<L4Listener>,
    app: Arc<App>,
    workers: Arc<Workers>,
    stop: impl std::future::Future<Output = ()>,
) {
    let config = app.config();
    let server = Arc::new(Server {
        limits: Limits::new(config.l4.max_connections, config.l4.max_connections_per_sandbox),
        mark: config.dataplane.mark,
        connect_timeout: config.proxy.connect_timeout.get(),
        idle: config.l4.idle_timeout.get(),
        engine: config.l4.engine,
        // Enough for one spliced direction of every connection; beyond, directions copy.
        pipes: PipePool::new(config.l4.max_connections),
        app,
    });
    let connections = TaskTracker::new();
    tokio::pin!(stop);
    loop {
        let (client, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a public TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (server, tracked) = (server.clone(), connections.token());
        workers.spawn(move || async move {
            let _tracked = tracked;
            match TcpStream::from_std(client) {
                Ok(client) => server.handle(client, peer).await,
                Err(e) => tracing::warn!(%peer, error = %e, "a worker cannot take the connection"),
            }
        });
    }
    connections.close();
    connections.wait().await;
}

impl Server {
    async fn handle(&self, client: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        // Before the lookup: a change made after it is seen by `revoked`.
        let mut changes = self.app.public_port_changes();
        changes.borrow_and_update();
        let (public, source) = match (client.local_addr(), peer) {
            (Ok(SocketAddr::V4(public)), SocketAddr::V4(source)) => (public, source),
            _ => return refuse(client, None, 0, Outcome::NoRoute),
        };
        let Some(sandbox) = self.app.sandbox_by_public_port(public.port()) else {
            return refuse(client, None, public.port(), Outcome::NoRoute);
        };
        let Some(exposure) = sandbox.exposed.iter().find(|e| e.public_port == public.port()).cloned() else {
            return refuse(client, None, public.port(), Outcome::NoRoute);
        };
        if !exposure.allows(*source.ip()) {
            tracing::debug!(%source, sandbox = %sandbox.id(), port = exposure.target, "source outside allowFrom");
            return refuse(client, Some(&sandbox), exposure.target, Outcome::NotAllowed);
        }
        let _connection = match self.limits.admit() {
            Admission::Serve(guard) => guard,
            Admission::Reject(_) | Admission::Close => {
                return refuse(client, Some(&sandbox), exposure.target, Outcome::Limit);
            }
        };
        let Some(_slot) = self.limits.sandbox_slot(sandbox.address) else {
            return refuse(client, Some(&sandbox), exposure.target, Outcome::Limit);
        };
        let to = SocketAddr::from((sandbox.address, exposure.target));
        let app = match connect_marked(to, self.mark, self.connect_timeout).await {
            Ok(app) => app,
            Err(e) => {
                tracing::debug!(%source, sandbox = %sandbox.id(), port = exposure.target, error = %e, "connecting to the app failed");
                return refuse(client, Some(&sandbox), exposure.target, Outcome::ConnectFailed);
            }
        };
        let m = metrics::global();
        m.l4_connection(&sandbox, exposure.target, Outcome::Accepted.as_str(), Some(self.engine.as_str()));
        let _open = m.l4_opened(&sandbox, exposure.target);
        let moved = Moved::default();
        let revoked = self.revoked(changes, public.port(), &sandbox, exposure.target, *source.ip());
        let header = (exposure.proxy_protocol == ProxyProtocol::V2).then(|| proxy_header::v2_tcp4(source, public));
        let end = self.relay(&client, &app, header.as_ref().map(|h| &h[..]), &moved, revoked).await;
        if end != "closed" {
            engine::reset_on_close(&client);
            engine::reset_on_close(&app);
        }
        let (up, down) = (moved.up.load(Ordering::Relaxed), moved.down.load(Ordering::Relaxed));
        m.l4_bytes(&sandbox, exposure.target, up, down);
        m.l4_spliced(moved.spliced.load(Ordering::Relaxed));
        tracing::info!(
            target: "gateway::access",
            source = %source,
            workspace = %sandbox.workspace,
            sandbox = %sandbox.name,
            port = exposure.target,
            public_port = public.port(),
            engine = self.engine.as_str(),
            bytes_up = up,
            bytes_down = down,
            duration_ms = started.elapsed().as_millis() as u64,
            end,
            "tcp connection"
        );
    }

    /// Resolves once the exposure no longer admits this connection: its sandbox deleted or
    /// replaced, its port unexposed or given another target, its source outside a new
    /// `allowFrom`. A change applies to open connections as to new ones.
    async fn revoked(
        &self,
        mut changes: tokio::sync::watch::Receiver<u64>,
        public: u16,
        sandbox: &Sandbox,
        target: u16,
        source: std::net::Ipv4Addr,
    ) {
        let admits = |s: &Sandbox| {
            s.workspace == sandbox.workspace
                && s.name == sandbox.name
                && s.exposed.iter().any(|e| e.public_port == public && e.target == target && e.allows(source))
        };
        loop {
            if changes.changed().await.is_err() {
                // No more changes (the gateway is stopping): never revoked.
                return std::future::pending().await;
            }
            if !self.app.sandbox_by_public_port(public).is_some_and(|s| admits(&s)) {
                return;
            }
        }
    }

    /// The PROXY header if asked, then the engine, bounded by the idle timeout and by
    /// `revoked`. Returns how the connection ended: `closed`, `reset`, `idle` or `revoked`.
    async fn relay(
        &self,
        client: &TcpStream,
        app: &TcpStream,
        proxy_header: Option<&[u8]>,
        moved: &Moved,
        revoked: impl std::future::Future<Output = ()>,
    ) -> &'static str {
        if let Some(header) = proxy_header
            && let Err(e) = engine::write_all(app, header).await
        {
            tracing::debug!(error = %e, "writing the PROXY header failed");
            return "reset";
        }
        let activity = Activity::new();
        let mode = match self.engine {
            L4Engine::Splice => Mode::Splice(&self.pipes),
            L4Engine::Copy => Mode::Copy,
        };
        tokio::select! {
            end = engine::relay(client, app, mode, moved, &activity) => match end {
                End::Closed => "closed",
                End::Reset => "reset",
            },
            () = idle_timeout(&activity, self.idle) => "idle",
            () = revoked => "revoked",
        }
    }
}

/// Closes a refused connection with a reset (the client learns at once, like a closed port),
/// counts it and logs it.
fn refuse(client: TcpStream, sandbox: Option<&Sandbox>, port: u16, outcome: Outcome) {
    engine::reset_on_close(&client);
    let peer = client.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    drop(client);
    match sandbox {
        Some(s) => {
            metrics::global().l4_connection(s, port, outcome.as_str(), None);
            tracing::info!(target: "gateway::access", source = %peer, workspace = %s.workspace, sandbox = %s.name, port, end = outcome.as_str(), "tcp connection refused");
        }
        None => {
            metrics::global().l4_unrouted();
            tracing::debug!(source = %peer, public_port = port, "tcp connection to no exposed port");
        }
    }
}

/// The clients' side of every connection, set once on the listener: accepted sockets inherit
/// them, so they cost no system call per connection. No Nagle delay (the proxy forwards what it
/// reads at once), and TCP keepalive: a client that vanished without a FIN is noticed within
/// about two minutes instead of holding its connection until the idle timeout. The app's side
/// has no keepalive: the app runs on this host, and the idle timeout bounds what a dead one
/// leaves.
fn client_options(s: &impl AsFd) {
    let _ = setsockopt(s, sockopt::TcpNoDelay, &true);
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    let _ = setsockopt(s, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(s, sockopt::TcpKeepInterval, &15);
    let _ = setsockopt(s, sockopt::TcpKeepCount, &4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_the_client_options() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        client_options(&listener);
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        use nix::sys::socket::getsockopt;
        assert!(getsockopt(&accepted, sockopt::TcpNoDelay).expect("nodelay"));
        assert!(getsockopt(&accepted, sockopt::KeepAlive).expect("keepalive"));
        assert_eq!(getsockopt(&accepted, sockopt::TcpKeepIdle).expect("idle"), 60);
        assert_eq!(getsockopt(&accepted, sockopt::TcpKeepInterval).expect("interval"), 15);
        assert_eq!(getsockopt(&accepted, sockopt::TcpKeepCount).expect("count"), 4);
    }
}
