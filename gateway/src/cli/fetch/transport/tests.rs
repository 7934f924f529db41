//! `gateway fetch` against a fake HTTPS edge (rustls + hyper, a CA from rcgen): SNI, Host /
//! `:authority`, path, credentials and body as sent, over h2 and http/1.1.

use super::*;
use http::{HeaderMap, Method};
use hyper::service::service_fn;
use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};
use tokio::sync::mpsc;

/// What the fake edge saw.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    version: Version,
    method: Method,
    uri: String,
    host: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

struct FakeEdge {
    addr: SocketAddr,
    ca: PathBuf,
    seen: mpsc::UnboundedReceiver<Seen>,
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gateway-fetch-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A TLS server for `*.local.gw.test` that answers `status` with `answer`.
async fn fake_edge(alpn: &[&[u8]], status: u16, answer: &'static str) -> FakeEdge {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["*.local.gw.test".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("leaf");
    let dir = temp_dir();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write ca");

    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else { continue };
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let tx = tx.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let (tx, sni) = (tx.clone(), sni.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                    let _ = tx.send(Seen {
                        sni,
                        version: parts.version,
                        method: parts.method,
                        uri: parts.uri.to_string(),
                        host: parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string),
                        headers: parts.headers,
                        body,
                    });
                    let mut r = Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
                    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    r.headers_mut().insert("x-answer", http::HeaderValue::from_static("yes"));
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeEdge { addr, ca: ca_path, seen }
}

fn plan(edge: &FakeEdge, include: bool) -> Plan {
    let mut headers = HeaderMap::new();
    headers.insert("x-blaxel-authorization", http::HeaderValue::from_static("Bearer gw_test"));
    headers.insert("x-blaxel-workspace", http::HeaderValue::from_static("acme"));
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    Plan {
        host: "sbx-web-acme.local.gw.test".into(),
        authority: format!("sbx-web-acme.local.gw.test:{}", edge.addr.port()),
        path: "/port/3000/items?x=1".into(),
        connect: Connect::Addr(edge.addr),
        ca: edge.ca.clone(),
        method: Method::POST,
        headers,
        body: br#"{"a":1}"#.to_vec(),
        include,
    }
}

#[tokio::test]
async fn h2_like_the_sdk() {
    let mut edge = fake_edge(&[b"h2", b"http/1.1"], 200, "hello").await;
    let plan = plan(&edge, false);
    let mut out = Vec::new();
    let outcome = send(&plan, &mut out).await.expect("send");
    assert_eq!(outcome.status, 200);
    assert!(outcome.error_summary().is_none());
    assert_eq!(out, b"hello");
    let seen = edge.seen.recv().await.expect("request");
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.sni.as_deref(), Some("sbx-web-acme.local.gw.test"));
    assert_eq!(seen.uri, format!("https://sbx-web-acme.local.gw.test:{}/port/3000/items?x=1", edge.addr.port()));
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.headers["x-blaxel-authorization"], "Bearer gw_test");
    assert_eq!(seen.headers["x-blaxel-workspace"], "acme");
    assert_eq!(seen.body, br#"{"a":1}"#);
    let _ = std::fs::remove_dir_all(edge.ca.parent().expect("dir"));
}

#[tokio::test]
async fn http1_with_host_and_head() {
    let mut edge = fake_edge(&[b"http/1.1"], 200, "plain").await;
    let plan = plan(&edge, true);
    let mut out = Vec::new();
    send(&plan, &mut out).await.expect("send");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("x-answer: yes\r\n") && text.ends_with("\r\n\r\nplain"), "{text}");
    let seen = edge.seen.recv().await.expect("request");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.uri, "/port/3000/items?x=1");
    assert_eq!(seen.host, Some(format!("sbx-web-acme.local.gw.test:{}", edge.addr.port())));
    assert_eq!(seen.sni.as_deref(), Some("sbx-web-acme.local.gw.test"));
    let _ = std::fs::remove_dir_all(edge.ca.parent().expect("dir"));
}

#[tokio::test]
async fn error_answers_are_summarized() {
    let body = r#"{"error":{"code":"AUTHENTICATION_FAILED","message":"invalid token","status":401,"retryable":false,"origin":"gateway"}}"#;
    let edge = fake_edge(&[b"h2"], 401, body).await;
    let mut out = Vec::new();
    let outcome = send(&plan(&edge, false), &mut out).await.expect("send");
    assert_eq!(outcome.status, 401);
    assert_eq!(out, body.as_bytes(), "the body is printed as is");
    assert_eq!(outcome.error_summary().as_deref(), Some("HTTP 401 AUTHENTICATION_FAILED: invalid token"));
    let edge2 = fake_edge(&[b"h2"], 502, "<html>bad gateway</html>").await;
    let outcome = send(&plan(&edge2, false), &mut Vec::new()).await.expect("send");
    assert_eq!(outcome.error_summary().as_deref(), Some("HTTP 502"));
    for e in [edge, edge2] {
        let _ = std::fs::remove_dir_all(e.ca.parent().expect("dir"));
    }
}

#[tokio::test]
async fn untrusted_or_missing_ca_fails_clearly() {
    let edge = fake_edge(&[b"h2"], 200, "x").await;
    let other = fake_edge(&[b"h2"], 200, "x").await;
    // The other edge's CA does not vouch for this edge's certificate.
    let mut p = plan(&edge, false);
    p.ca = other.ca.clone();
    let e = send(&p, &mut Vec::new()).await.expect_err("untrusted");
    let text = format!("{e:#}");
    assert!(text.contains("TLS handshake") && text.contains("certificate"), "{text}");
    // A host outside the certificate.
    let mut p = plan(&edge, false);
    p.host = "sbx-web-acme.elsewhere.test".into();
    let e = send(&p, &mut Vec::new()).await.expect_err("name");
    assert!(format!("{e:#}").contains("TLS handshake"), "{e:#}");
    // No CA file.
    let mut p = plan(&edge, false);
    p.ca = PathBuf::from("/nonexistent/ca.pem");
    let e = send(&p, &mut Vec::new()).await.expect_err("no ca");
    assert!(format!("{e:#}").contains("--cacert"), "{e:#}");
    // Nothing listening.
    let mut p = plan(&edge, false);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    p.connect = Connect::Addr(closed);
    let e = send(&p, &mut Vec::new()).await.expect_err("closed");
    assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
    for e in [edge, other] {
        let _ = std::fs::remove_dir_all(e.ca.parent().expect("dir"));
    }
}
