//! The authenticated TCP tunnel: raw bytes to a sandbox port over the HTTPS listener.
//!
//! - HTTP/1.1: `GET /port/{N}` with `Connection: Upgrade` and `Upgrade: connect-tcp` → `101`,
//!   then the connection carries the port's bytes both ways.
//! - HTTP/2: extended CONNECT with `:protocol = connect-tcp` and `:path = /port/{N}` → `200`,
//!   then the stream carries them.
//!
//! The request is routed and authenticated like any other (same token, same 401/403/404, same
//! per-sandbox concurrency slot, held for the tunnel's life). The gateway connects to the port
//! with its mark before answering, so a refused or unreachable port is an HTTP error (502) the
//! client can read, not a tunnel that closes at once. Bytes are copied in userspace: rustls
//! terminates the client's TLS, so there is nothing to splice.

use super::{
    EdgeBody,
    connect::{ConnectSettings, connect},
    limits::{Activity, ActivityIo, SandboxSlot, idle_timeout},
    upstream_errors::{Destination, connect_failed},
};
use crate::errors::{ApiError, ErrorCode};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

/// The protocol token of the upgrade (HTTP/1.1 `Upgrade`, HTTP/2 `:protocol`).
pub const CONNECT_TCP: &str = "connect-tcp";

/// Each direction's copy buffer: large enough that a bulk transfer moves in few system calls.
const COPY_BUFFER: usize = 64 * 1024;

/// How a request asks for a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// `Upgrade: connect-tcp` (HTTP/1.1).
    Upgrade,
    /// Extended CONNECT, `:protocol = connect-tcp` (HTTP/2).
    ExtendedConnect,
}

/// Whether `req` asks for a TCP tunnel, and how.
pub fn requested<B>(req: &Request<B>) -> Option<Ask> {
    if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
        return protocol.as_str().eq_ignore_ascii_case(CONNECT_TCP).then_some(Ask::ExtendedConnect);
    }
    if req.version() != Version::HTTP_11 || !super::headers::connection_has(req.headers(), "upgrade") {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?.to_str().ok()?;
    upgrade.split(',').any(|p| p.trim().eq_ignore_ascii_case(CONNECT_TCP)).then_some(Ask::Upgrade)
}

/// A tunnel's request target must be `/port/{N}` itself: anything after it would be ignored.
pub fn check_target(path_and_query: &str, port: u16) -> Result<(), ApiError> {
    if path_and_query == "/" {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::BadRequest,
        format!("a connect-tcp tunnel is opened on /port/{port} itself, without a path or query after it"),
    ))
}

/// What a tunnel needs once its upstream connection is made.
pub struct Tunnel {
    pub sandbox: String,
    pub port: u16,
    /// Held until the tunnel ends.
    pub slot: SandboxSlot,
    /// Closed after this long without a byte either way.
    pub idle: Duration,
}

/// Connects to the port, answers `101` (HTTP/1.1) or `200` (HTTP/2), and copies bytes both ways
/// once the client's side of the upgrade resolves.
pub async fn open(
    client: OnUpgrade,
    ask: Ask,
    addr: SocketAddr,
    settings: ConnectSettings,
    tunnel: Tunnel,
    tunnels: &TaskTracker,
) -> Result<Response<EdgeBody>, ApiError> {
    let to = Destination { sandbox: &tunnel.sandbox, port: tunnel.port };
    let upstream = connect(addr, settings).await.map_err(|e| connect_failed(&e, to))?;
    let _ = upstream.set_nodelay(true);
    let mut answer = Response::new(super::empty_body());
    if ask == Ask::Upgrade {
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        answer.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(CONNECT_TCP));
    }
    tunnels.spawn(relay(client, upstream, tunnel));
    Ok(answer)
}

/// Copies until either side closes (each direction's end is passed on as a half-close), an
/// error, or the idle timeout.
async fn relay(client: OnUpgrade, upstream: TcpStream, tunnel: Tunnel) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(sandbox = %tunnel.sandbox, port = tunnel.port, error = %e, "tcp tunnel: the client's upgrade did not complete");
            return;
        }
    };
    let metrics = crate::telemetry::metrics::global();
    let _open = metrics.tcp_tunnel_opened();
    let started = Instant::now();
    let activity = Activity::new();
    let mut client = ActivityIo::new(TokioIo::new(client), Arc::clone(&activity));
    let mut upstream = upstream;
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER);
    let (end, up, down) = tokio::select! {
        r = copy => match r {
            Ok((up, down)) => ("closed", up, down),
            Err(e) => {
                tracing::debug!(sandbox = %tunnel.sandbox, port = tunnel.port, error = %e, "tcp tunnel ended with an error");
                ("error", 0, 0)
            }
        },
        () = idle_timeout(&activity, tunnel.idle) => ("idle", 0, 0),
    };
    metrics.tcp_tunnel_closed(up, down);
    tracing::info!(
        sandbox = %tunnel.sandbox,
        port = tunnel.port,
        end,
        bytes_up = up,
        bytes_down = down,
        duration_ms = started.elapsed().as_millis() as u64,
        "tcp tunnel closed"
    );
    drop(tunnel.slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        let h1 = |conn: &str, up: &str| {
            Request::builder().header(header::CONNECTION, conn).header(header::UPGRADE, up).body(()).expect("request")
        };
        assert_eq!(requested(&h1("Upgrade", "connect-tcp")), Some(Ask::Upgrade));
        assert_eq!(requested(&h1("keep-alive, upgrade", "Connect-TCP")), Some(Ask::Upgrade));
        assert_eq!(requested(&h1("keep-alive", "connect-tcp")), None);
        assert_eq!(requested(&h1("upgrade", "websocket")), None);
        let mut connect = Request::builder().method(Method::CONNECT).body(()).expect("request");
        assert_eq!(requested(&connect), None);
        connect.extensions_mut().insert(hyper::ext::Protocol::from_static("connect-tcp"));
        assert_eq!(requested(&connect), Some(Ask::ExtendedConnect));
        let mut ws = Request::builder().method(Method::CONNECT).body(()).expect("request");
        ws.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(requested(&ws), None);
    }

    #[test]
    fn target_is_the_port_itself() {
        assert!(check_target("/", 5432).is_ok());
        let e = check_target("/x?y", 5432).expect_err("path after the port");
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("/port/5432"), "{}", e.message);
    }
}
