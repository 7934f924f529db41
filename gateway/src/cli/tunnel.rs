//! `gateway tunnel {workspace}/{name} {port} --listen ADDR`: a local listener whose every
//! connection reaches the sandbox port through the public HTTPS listener, like
//! `kubectl port-forward`.
//!
//! Each accepted connection opens its own TLS connection to the gateway (SNI and `Host` the
//! sandbox host, as `gateway fetch` does) and sends `GET /port/{N}` with `Upgrade: connect-tcp`
//! and the workspace token; after `101` the bytes flow both ways until either side closes (a
//! half-close is passed on). One tunnel is opened and closed at start, so a wrong token, an
//! undeclared port or an app that is not listening stop the command at once with the gateway's
//! answer instead of failing each client later.
//!
//! The server is verified against the system's roots, the development CA of `state.dir`, the
//! file `SSL_CERT_FILE` names and `--cacert`.

use super::fetch::{load_config, plan::Endpoint, transport::open_tls};
use crate::{config::Config, edge::tcp_tunnel::CONNECT_TCP, paths};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio::net::{TcpListener, TcpStream};

/// How much of a refusal's body is read to explain it.
const ERROR_BODY_KEPT: usize = 16 * 1024;

/// `gateway tunnel`.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// The sandbox, `{workspace}/{name}`.
    ///
    /// Example: acme/db
    #[arg(value_name = "WORKSPACE/NAME")]
    pub sandbox: String,
    /// The sandbox port (one declared when the sandbox was registered, usually TCP or TLS).
    ///
    /// Example: 5432
    #[arg(value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Local address to listen on (default 127.0.0.1 and the sandbox port).
    ///
    /// Example: --listen 127.0.0.1:15432
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Workspace access token (from `gateway token create`).
    ///
    /// Example: --token gw_3q2…  (or GATEWAY_TOKEN=gw_3q2…)
    #[arg(long, value_name = "TOKEN", env = "GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The gateway's HTTPS address to connect to (default: listen.https of the configuration;
    /// 0.0.0.0 and :: mean this host).
    ///
    /// Example: --gateway gw.example.com:443
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "resolve")]
    pub gateway: Option<String>,
    /// Read listen.https, domain, region and state.dir from this configuration file
    /// (default: /etc/gateway/gateway.toml if present, else the built-in defaults).
    ///
    /// Example: --config /etc/gateway/gateway.toml
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Use the settings of `gateway serve --dev`.
    ///
    /// Example: --dev
    #[arg(long)]
    pub dev: bool,
    /// A CA certificate to trust besides the system's roots, the development CA of state.dir
    /// and SSL_CERT_FILE (PEM).
    ///
    /// Example: --cacert ./ca.pem
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Connect to the address DNS gives for the sandbox host instead of listen.https.
    ///
    /// Example: --resolve
    #[arg(long)]
    pub resolve: bool,
}

/// Everything one tunnel needs.
struct Dial {
    endpoint: Endpoint,
    port: u16,
    tls: ClientConfig,
    trusted: String,
    authorization: HeaderValue,
}

pub(super) fn run(args: TunnelArgs) -> anyhow::Result<u8> {
    let config = load_config(args.dev, args.config.as_deref())?;
    let endpoint = Endpoint::new(&args.sandbox, args.gateway.as_deref(), args.resolve, &config)?;
    let Some(token) = args.token.as_deref() else {
        bail!("a workspace access token is needed: --token TOKEN or GATEWAY_TOKEN (see `gateway token create`)");
    };
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| anyhow!("the token holds characters a header cannot carry"))?;
    authorization.set_sensitive(true);
    let (tls, trusted) = tls_config(&config, args.cacert.as_deref())?;
    let listen = args.listen.unwrap_or(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port));
    let dial = Arc::new(Dial { endpoint, port: args.port, tls, trusted, authorization });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(serve(dial, listen))
}

async fn serve(dial: Arc<Dial>, listen: SocketAddr) -> anyhow::Result<u8> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let target = format!("{}/{} port {}", dial.endpoint.workspace, dial.endpoint.name, dial.port);
    if let Err(e) = dial.open().await {
        eprintln!("error: {e:#}");
        return Ok(1);
    }
    eprintln!(
        "Forwarding {local} -> {target} through https://{} (at {}); Ctrl-C to stop",
        dial.endpoint.authority, dial.endpoint.connect
    );
    loop {
        let (client, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("accepting a local connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let dial = Arc::clone(&dial);
        tokio::spawn(async move {
            if let Err(e) = dial.carry(client).await {
                eprintln!("connection from {from}: {e:#}");
            }
        });
    }
}

impl Dial {
    /// One tunnel, ready to carry bytes.
    async fn open(&self) -> anyhow::Result<Upgraded> {
        let what = format!("trusted: {}", self.trusted);
        let stream = open_tls(&self.endpoint.connect, &self.endpoint.host, self.tls.clone(), &what).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake with the gateway")?;
        tokio::spawn(connection.with_upgrades());
        let request = Request::get(format!("/port/{}", self.port))
            .header(header::HOST, &self.endpoint.authority)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, CONNECT_TCP)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::USER_AGENT, concat!("gateway-tunnel/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await.context("sending the tunnel request")?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let mut body = response.into_body();
            let mut kept = Vec::new();
            while kept.len() < ERROR_BODY_KEPT {
                match body.frame().await {
                    Some(Ok(frame)) => kept.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d.as_ref())),
                    _ => break,
                }
            }
            bail!("the gateway refused the tunnel: {}", refusal(status, &kept));
        }
        hyper::upgrade::on(response).await.context("switching the connection to the tunnel")
    }

    /// Carries one local connection through its own tunnel.
    async fn carry(&self, mut client: TcpStream) -> anyhow::Result<()> {
        let _ = client.set_nodelay(true);
        let mut tunnel = TokioIo::new(self.open().await?);
        tokio::io::copy_bidirectional(&mut client, &mut tunnel).await.context("carrying bytes")?;
        Ok(())
    }
}

/// `HTTP 403 FORBIDDEN: message` from the gateway's JSON error, else the status.
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")).filter(|e| e.get("code").is_some()) {
        Some(e) => format!(
            "HTTP {} {}: {}",
            status.as_u16(),
            e["code"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        ),
        None => format!("HTTP {status}"),
    }
}

/// The CAs trusted: the system's bundle and the development CA when present, `SSL_CERT_FILE`
/// and `--cacert` (which must be readable). Returns them with a list for error messages.
fn tls_config(config: &Config, cacert: Option<&Path>) -> anyhow::Result<(ClientConfig, String)> {
    let mut roots = RootCertStore::empty();
    let mut used = Vec::new();
    let optional = [PathBuf::from(paths::SYSTEM_CA_BUNDLE), paths::tls_ca(&config.state.dir)];
    for file in optional.iter().filter(|f| f.exists()) {
        add_pem(&mut roots, file)?;
        used.push(file.display().to_string());
    }
    let named = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let given = named.as_deref().map(|f| (f, "SSL_CERT_FILE")).into_iter().chain(cacert.map(|f| (f, "--cacert")));
    for (file, from) in given {
        add_pem(&mut roots, file).with_context(|| format!("{from} {}", file.display()))?;
        used.push(file.display().to_string());
    }
    if roots.is_empty() {
        bail!("no CA certificate to trust: give one with --cacert FILE or SSL_CERT_FILE");
    }
    let mut tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // One tunnel per TLS connection: HTTP/1.1's upgrade is all it needs.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tls, used.join(", ")))
}

/// Adds every certificate of a PEM file; certificates the store refuses are skipped (a system
/// bundle may hold some), but a file with none usable is an error.
fn add_pem(roots: &mut RootCertStore, file: &Path) -> anyhow::Result<()> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not PEM certificates", file.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!("{} holds no usable CA certificate", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_the_gateway_code() {
        let body = br#"{"error":{"code":"AUTHENTICATION_FAILED","message":"invalid token (unknown or revoked)"}}"#;
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, body),
            "HTTP 401 AUTHENTICATION_FAILED: invalid token (unknown or revoked)"
        );
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"<html>"), "HTTP 502 Bad Gateway");
    }
}
