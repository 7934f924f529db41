//! Connections to the other members of the fleet: one HTTP/2 connection per peer, shared by
//! every request to it (made again when it closes), and a dedicated HTTP/1.1 connection per
//! upgrade. Both over mutual TLS: the server name is the owner's `fleet.host`, so the
//! connection is refused unless the peer's certificate, chained to the fleet CA, names it.

use super::{PeerRoute, pki::FleetTls};
use crate::{
    edge::pool::UpBody,
    errors::{ApiError, ErrorCode},
};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The fleet's client side.
pub struct PeerPool {
    tls: Arc<FleetTls>,
    connect_timeout: Duration,
    conns: Mutex<HashMap<Arc<str>, http2::SendRequest<UpBody>>>,
}

/// A peer that cannot be reached: 503 naming it.
pub fn unreachable(route: &PeerRoute, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::PeerUnavailable,
        format!("the sandbox runs on fleet host {:?} ({}), which cannot be reached: {why}", route.host, route.addr),
    )
}

impl PeerPool {
    /// A pool with this member's TLS configurations.
    pub fn new(tls: Arc<FleetTls>, connect_timeout: Duration) -> Self {
        Self { tls, connect_timeout, conns: Mutex::new(HashMap::new()) }
    }

    async fn connect(&self, route: &PeerRoute, config: Arc<ClientConfig>) -> Result<TlsStream<TcpStream>, ApiError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(route.addr))
            .await
            .map_err(|_| unreachable(route, format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|e| unreachable(route, e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(route.host.to_string()).map_err(|e| unreachable(route, e))?;
        tokio::time::timeout(self.connect_timeout, TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| unreachable(route, "no TLS handshake in time"))?
            .map_err(|e| unreachable(route, format!("TLS: {e}")))
    }

    /// The HTTP/2 connection to the peer (made now if there is none).
    pub async fn h2(&self, route: &PeerRoute) -> Result<http2::SendRequest<UpBody>, ApiError> {
        {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            match conns.get(&route.host) {
                Some(s) if !s.is_closed() => return Ok(s.clone()),
                Some(_) => {
                    conns.remove(&route.host);
                }
                None => {}
            }
        }
        let tls = self.connect(route, self.tls.client_h2.clone()).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(route, e))?;
        let host = route.host.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %host, error = %e, "fleet connection ended with an error");
            }
        });
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(route.host.clone(), sender.clone());
        Ok(sender)
    }

    /// A new HTTP/1.1 connection to the peer, for one upgrade.
    pub async fn h1_upgrade(&self, route: &PeerRoute) -> Result<http1::SendRequest<UpBody>, ApiError> {
        let tls = self.connect(route, self.tls.client_h1.clone()).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(tls)).await.map_err(|e| unreachable(route, e))?;
        let host = route.host.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(peer = %host, error = %e, "fleet upgrade connection ended with an error");
            }
        });
        Ok(sender)
    }
}
