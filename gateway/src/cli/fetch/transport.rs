//! The wire side of `gateway fetch`: TCP, TLS (rustls, SNI = the sandbox host, ALPN h2 then
//! http/1.1), one request over hyper, and the answer streamed to the output.

use super::plan::{Connect, Plan};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Request, Response, Uri, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use std::{sync::Arc, time::Duration};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// How long the TCP connection and the TLS handshake may take, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer is kept to explain it on stderr.
const ERROR_BODY_KEPT: usize = 64 * 1024;

/// What came back.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The HTTP status.
    pub status: u16,
    /// The start of the body, kept for error answers only.
    pub error_body: Vec<u8>,
}

impl Outcome {
    /// For HTTP ≥ 400, one line that says what went wrong: the gateway's error code and
    /// message when the body is its JSON error, else the status.
    pub fn error_summary(&self) -> Option<String> {
        if self.status < 400 {
            return None;
        }
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&self.error_body).ok();
        Some(match parsed.as_ref().and_then(|v| v.get("error")).filter(|e| e.get("code").is_some()) {
            Some(e) => format!(
                "HTTP {} {}: {}",
                self.status,
                e["code"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            ),
            None => format!("HTTP {}", self.status),
        })
    }
}

/// Sends the planned request; writes the body (after the head with `-i`) to `out` as it arrives.
pub(super) async fn send(plan: &Plan, out: &mut (impl AsyncWrite + Unpin)) -> anyhow::Result<Outcome> {
    let tls = tls_config(plan)?;
    let what = format!("the CA trusted is {}", plan.ca.display());
    let stream = open_tls(&plan.connect, &plan.host, tls, &what).await?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .context("HTTP/2 handshake with the gateway")?;
        tokio::spawn(connection);
        sender.send_request(request(plan, true)?).await.context("sending the request over HTTP/2")?
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(io).await.context("HTTP/1.1 handshake with the gateway")?;
        tokio::spawn(connection);
        sender.send_request(request(plan, false)?).await.context("sending the request over HTTP/1.1")?
    };
    receive(plan, response, out).await
}

/// A TLS connection to the gateway at `connect`, with SNI `host`, each step bounded;
/// `trusted` says which CAs were trusted when the handshake fails.
pub(in crate::cli) async fn open_tls(
    connect: &Connect,
    host: &str,
    tls: ClientConfig,
    trusted: &str,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect_to(connect))
        .await
        .map_err(|_| anyhow!("connecting to {connect} timed out after {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("cannot connect to the gateway at {connect} (is `gateway serve` running?)"))?;
    let _ = tcp.set_nodelay(true);
    let server_name = ServerName::try_from(host.to_string()).with_context(|| format!("SNI {host:?}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(Arc::new(tls)).connect(server_name, tcp))
        .await
        .map_err(|_| anyhow!("the TLS handshake with {connect} timed out"))?
        .with_context(|| format!("TLS handshake with {connect} (SNI {host}) failed; {trusted}"))
}

/// Trusts the certificates of the CA file only; TLS 1.2 and 1.3; ALPN h2, http/1.1.
fn tls_config(plan: &Plan) -> anyhow::Result<ClientConfig> {
    let ca = &plan.ca;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read the CA file {} (give another with --cacert)", ca.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
        roots.add(cert).with_context(|| format!("{}: unusable CA certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca.display());
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn connect_to(target: &Connect) -> std::io::Result<TcpStream> {
    match target {
        Connect::Addr(addr) => TcpStream::connect(addr).await,
        Connect::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
    }
}

/// HTTP/2 takes the absolute URL (`:authority` from it); HTTP/1.1 the path and `Host`.
fn request(plan: &Plan, h2: bool) -> anyhow::Result<Request<Full<Bytes>>> {
    let uri: Uri = if h2 { plan.url().parse()? } else { plan.path.parse()? };
    let mut builder = Request::builder().method(plan.method.clone()).uri(uri);
    if !h2 {
        builder = builder.header(header::HOST, &plan.authority);
    }
    let mut request = builder.body(Full::new(Bytes::from(plan.body.clone())))?;
    request.headers_mut().extend(plan.headers.clone());
    Ok(request)
}

async fn receive(
    plan: &Plan,
    response: Response<Incoming>,
    out: &mut (impl AsyncWrite + Unpin),
) -> anyhow::Result<Outcome> {
    let status = response.status().as_u16();
    if plan.include {
        out.write_all(head(&response).as_bytes()).await?;
    }
    let mut body = response.into_body();
    let mut error_body = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the answer")?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await?;
            out.flush().await?;
            if status >= 400 && error_body.len() < ERROR_BODY_KEPT {
                let room = ERROR_BODY_KEPT - error_body.len();
                error_body.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }
    out.flush().await?;
    Ok(Outcome { status, error_body })
}

/// `HTTP/x status reason`, the headers, a blank line.
fn head(response: &Response<Incoming>) -> String {
    let version = match response.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let status = response.status();
    let mut text = format!("{version} {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    for (name, value) in response.headers() {
        text.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes())));
    }
    text.push_str("\r\n");
    text
}

#[cfg(test)]
mod tests;
