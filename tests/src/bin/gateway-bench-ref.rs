//! `gateway-bench-ref`: the reference contender of `gateway-bench-http`, a minimal HTTPS reverse
//! proxy on the gateway's own stack and nothing else, so the bench can tell what the gateway's
//! features cost per request on top of the libraries it is built from ("× reference").
//!
//! The same crates and versions as the gateway (tokio multi-thread runtime, hyper 1, hyper-util,
//! tokio-rustls/rustls with the ring provider, mimalloc as allocator), TLS 1.3 with one
//! certificate, h2 and http/1.1 by ALPN (hyper-util `auto::Builder`). Upstream: plain HTTP/1.1
//! keep-alive to one address over hyper's connection-level client, one spawned task per
//! connection, idle connections in a LIFO stack behind a mutex (a connection goes back when its
//! response body has been read to the end). No routing, authentication, limits, timeouts,
//! metrics or logging. Each request is forwarded with its method, path and headers minus the
//! hop-by-hop ones; the response streams back.
//!
//! Usage: `gateway-bench-ref --listen 127.0.0.1:PORT --cert CERT.pem --key KEY.pem --upstream
//! ADDR:PORT [--workers N]`. Without `--workers`, tokio's default applies (TOKIO_WORKER_THREADS,
//! else one worker per CPU), as for the gateway.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{Either, Empty};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};

/// The gateway's allocator too: the comparison is about the request path, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Idle upstream connections kept, as many as the gateway's pool keeps per destination.
const MAX_IDLE: usize = 256;

type Sender = SendRequest<Incoming>;
type ProxyBody = Either<PooledBody, Empty<Bytes>>;

/// Idle upstream connections, most recently used last.
struct Pool {
    upstream: SocketAddr,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    /// The most recently used idle connection that is still open, else a new one (None when
    /// the backend cannot be reached).
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let popped = self.idle.lock().expect("pool lock").pop();
            let Some(mut sender) = popped else { break };
            // Ready once its connection task has finished the previous exchange; an error
            // means the backend closed it while idle.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        let stream = TcpStream::connect(self.upstream).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(sender)
    }

    fn checkin(&self, sender: Sender) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}

/// The upstream response body; its connection goes back to the pool at the end of the body,
/// and is dropped (closed) with a body abandoned midway.
struct PooledBody {
    inner: Incoming,
    back: Option<(Sender, Arc<Pool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Removes the hop-by-hop headers: those named in `Connection` and the standard ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [header::CONNECTION, header::TE, header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn bad_gateway() -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

async fn forward(pool: Arc<Pool>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // HTTP/2 carries the host in `:authority`; HTTP/1.1 upstream needs it as `Host`.
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.version = Version::HTTP_11;
    let mut req = Request::from_parts(parts, body);
    // A reused connection the backend closed while idle gives the request back unsent: it goes
    // on the next connection (a fresh one at the latest).
    let response = loop {
        let Some(mut sender) = pool.checkout().await else { return bad_gateway() };
        match sender.try_send_request(req).await {
            Ok(response) => break (response, sender),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return bad_gateway(),
            },
        }
    };
    let (response, sender) = response;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let mut body = PooledBody { inner: body, back: Some((sender, pool)) };
    // A body known to be empty (204, 304, HEAD) may never be polled: its connection is free now.
    if body.inner.is_end_stream() {
        body.release();
    }
    Response::from_parts(parts, Either::Left(body))
}

fn tls_config(cert: &str, key: &str) -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("read the certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse the certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("read the private key");
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let need = |name: &str| arg(name).unwrap_or_else(|| panic!("{name} is required (see the file's header)"));
    let listen: SocketAddr = need("--listen").parse().expect("--listen ADDR:PORT");
    let upstream: SocketAddr = need("--upstream").parse().expect("--upstream ADDR:PORT");
    let tls = tokio_rustls::TlsAcceptor::from(tls_config(&need("--cert"), &need("--key")));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = arg("--workers") {
        runtime.worker_threads(n.parse().expect("--workers N"));
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind the listener");
        let pool = Arc::new(Pool { upstream, idle: Mutex::new(Vec::new()) });
        let server = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (tls, pool, server) = (tls.clone(), pool.clone(), server.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(stream).await else { return };
                let service = service_fn(move |req| {
                    let pool = pool.clone();
                    async move { Ok::<_, Infallible>(forward(pool, req).await) }
                });
                let _ = server.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}
