//! A fixed-rate (open-loop) HTTPS load generator for `gateway-bench-http`: request `i` is due
//! at `start + i / rate` whatever happened to the earlier ones, and its latency is measured
//! from that scheduled instant, so a stall of the server shows up as the queueing it causes
//! (no coordinated omission, like wrk2 or `oha -q`).
//!
//! HTTP/1.1 over TLS 1.3 on `connections` keep-alive connections opened before the clock
//! starts; a free connection takes the next due request, and when all are busy the due
//! requests wait (and count that wait). One current-thread runtime, like `wrk -t1`.

use crate::edge::{TestBody, empty};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// What to load.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// SNI and `Host`.
    pub host: String,
    /// Request target (origin form).
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Failed requests and non-2xx answers.
    pub errors: u64,
    /// Answered requests per second of the run.
    pub achieved_rps: f64,
    /// Latency from the scheduled send time, ms.
    pub p50_ms: f64,
    /// The same, 99th percentile.
    pub p99_ms: f64,
}

pub(crate) fn request(t: &Target) -> Request<TestBody> {
    let mut b = Request::builder().uri(&t.path).header("host", &t.host);
    for (k, v) in &t.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(empty()).expect("request")
}

type Sender = hyper::client::conn::http1::SendRequest<TestBody>;

/// The bench's certificate is self-signed with `CA:TRUE`, which webpki refuses as an end
/// entity: its signatures are checked, its chain is not (every contender serves the same one).
#[derive(Debug)]
struct AnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

pub(crate) fn tls_config() -> Arc<ClientConfig> {
    let provider: CryptoProvider = rustls::crypto::ring::default_provider();
    let algs = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(algs)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn connect(config: &Arc<ClientConfig>, t: &Target) -> Option<Sender> {
    let tcp = tokio::net::TcpStream::connect(t.addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let name = ServerName::try_from(t.host.clone()).ok()?;
    let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(tls)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

/// Sends `rate` requests per second for `duration` to `target` over `connections`
/// connections.
pub fn run(target: &Target, rate: f64, duration: Duration, connections: usize) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let client = tls_config();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    rt.block_on(async move {
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections {
            senders.push(connect(&client, target).await);
        }
        let next = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::<u32>::with_capacity(total as usize)));
        let errors = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::new();
        for sender in senders {
            let (client, target, next, latencies, errors) =
                (client.clone(), target.clone(), next.clone(), latencies.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut sender = sender;
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(due).await;
                    let answered = match sender.as_mut() {
                        Some(s) => {
                            s.ready().await.is_ok()
                                && match s.send_request(request(&target)).await {
                                    Ok(r) => {
                                        let ok = r.status().is_success();
                                        r.into_body().collect().await.is_ok() && ok
                                    }
                                    Err(_) => false,
                                }
                        }
                        None => false,
                    };
                    if answered {
                        mine.push(u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        sender = connect(&client, &target).await;
                    }
                }
                latencies.lock().expect("latencies").extend(mine);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut lat = std::mem::take(&mut *latencies.lock().expect("latencies"));
        lat.sort_unstable();
        let pct = |p: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                f64::from(lat[((lat.len() - 1) as f64 * p).round() as usize]) / 1000.0
            }
        };
        Outcome {
            ok: lat.len() as u64,
            errors: errors.load(Ordering::Relaxed),
            achieved_rps: lat.len() as f64 / elapsed,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        }
    })
}
