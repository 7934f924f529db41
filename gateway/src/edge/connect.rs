//! Connections to apps in sandboxes, always through [`crate::connector::connect_marked`] (the
//! data plane drops unmarked SYNs), with the optional "wait for the port" retry.

use crate::connector::connect_marked;
use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

/// Why a connection to an app failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// RST: nothing listens on the sandbox's address at that port.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// Anything else (no route, unreachable, out of descriptors…).
    Other,
}

/// A failed connection to `addr`.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {addr} failed ({kind:?}) after {waited:?}: {source}")]
pub struct ConnectError {
    /// Where.
    pub addr: SocketAddr,
    /// Which failure.
    pub kind: ConnectFailure,
    /// How long was spent, retries included.
    pub waited: Duration,
    /// The last error.
    #[source]
    pub source: io::Error,
}

/// How to connect to apps.
#[derive(Clone, Copy, Debug)]
pub struct ConnectSettings {
    /// `SO_MARK` of every socket.
    pub mark: u32,
    /// Per attempt.
    pub timeout: Duration,
    /// Retry refused connections with backoff for up to this long (0 = no retry).
    pub wait_for_port: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Connects to `addr` with the mark; retries a refused connection with backoff (50 ms doubling
/// up to 1 s) while `wait_for_port` has not elapsed. Never retries a timeout.
pub async fn connect(addr: SocketAddr, settings: ConnectSettings) -> Result<TcpStream, ConnectError> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let err = match connect_marked(addr, settings.mark, settings.timeout).await {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let kind = match err.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
            _ => ConnectFailure::Other,
        };
        let waited = start.elapsed();
        if kind != ConnectFailure::Refused || waited + backoff > settings.wait_for_port {
            return Err(ConnectError { addr, kind, waited, source: err });
        }
        tracing::debug!(%addr, waited_ms = waited.as_millis() as u64, "connection refused; waiting for the port");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_is_retried_until_wait_for_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let settings =
            ConnectSettings { mark: 0, timeout: Duration::from_secs(1), wait_for_port: Duration::from_millis(400) };
        let e = connect(addr, settings).await.expect_err("refused");
        assert_eq!(e.kind, ConnectFailure::Refused);
        assert!(e.waited >= Duration::from_millis(300), "{e}");
        // A listener that appears while waiting is reached.
        let bind_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::net::TcpListener::bind(addr).await.expect("bind later")
        });
        let settings = ConnectSettings { wait_for_port: Duration::from_secs(3), ..settings };
        let stream = connect(addr, settings).await.expect("waited for the port");
        drop(stream);
        drop(bind_later.await);
    }
}
