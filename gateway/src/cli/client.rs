//! A small HTTP/1.1 client for the admin API, over TCP or a unix socket.

use super::AdminArgs;
use crate::{
    config::{self, AdminListen},
    paths,
};
use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::{path::Path, time::Duration};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach the admin API.
pub(super) struct AdminClient {
    target: AdminListen,
    token: Option<String>,
}

impl AdminClient {
    /// From `--admin`, `--config`, `--token`; else the default config file if present; else
    /// the default admin socket.
    pub(super) fn from_args(args: &AdminArgs) -> anyhow::Result<Self> {
        let config = match &args.config {
            Some(path) => Some(load_config(path)?),
            None if args.admin.is_none() && Path::new(paths::DEFAULT_CONFIG).exists() => {
                Some(load_config(Path::new(paths::DEFAULT_CONFIG))?)
            }
            None => None,
        };
        let target = match (&args.admin, &config) {
            (Some(a), _) => config::parse_admin_listen(a).map_err(|e| anyhow::anyhow!("--admin: {e}"))?,
            (None, Some(c)) => c.admin_listen().map_err(|e| anyhow::anyhow!("listen.admin: {e}"))?,
            (None, None) => AdminListen::Unix(paths::DEFAULT_ADMIN_SOCKET.into()),
        };
        let token =
            args.token.clone().or_else(|| config.map(|c| c.admin.secret().to_string()).filter(|t| !t.is_empty()));
        Ok(Self { target, token })
    }

    /// Sends one request; returns the status and body.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(TIMEOUT, self.request_inner(method, path, body))
            .await
            .with_context(|| format!("no answer from the admin API at {} within {TIMEOUT:?}", self.target))?
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, "gateway-admin");
        if let (Some(token), AdminListen::Tcp(_)) = (&self.token, &self.target) {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let cannot = || format!("cannot reach the admin API at {} (is `gateway serve` running?)", self.target);
        let response = match &self.target {
            AdminListen::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await.with_context(cannot)?;
                send(TokioIo::new(stream), request).await?
            }
            AdminListen::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.with_context(cannot)?;
                send(TokioIo::new(stream), request).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
        Ok((status, body))
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> anyhow::Result<http::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(io).await.context("HTTP handshake with the admin API")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.context("sending the request")
}

fn load_config(path: &Path) -> anyhow::Result<config::Config> {
    // A `ConfigErrors` error makes main exit 64 with every problem listed.
    Ok(config::load(path)?)
}
