//! Gateways of one fleet on a real three-member etcd, each enforcing in the kernel with its own
//! pin directory, with certificates made by `gateway fleet ca` / `gateway fleet cert`: any
//! gateway serves any sandbox (a request for another host's sandbox is authenticated where it
//! arrives and forwarded to the owner over mutual TLS: HTTP/1.1, HTTP/2, WebSocket both ways,
//! SSE); tokens, previews and sandboxes made through one gateway's admin API are known to the
//! other within milliseconds, revocations too; only the sandbox's host programs its kernel
//! policy, also for a preview made through another gateway; two hosts registering one sandbox
//! at once: exactly one wins; the fleet's internal headers are never believed from a client;
//! the fleet listener refuses a peer without a certificate of the fleet's CA; a stopped owner
//! is answered 503 at once.

use futures_util::{SinkExt, StreamExt};
use gateway_tests::{
    edge::*,
    etcd::EtcdCluster,
    fleet::{fleet_pki, fleet_section},
    gateway_process::{GatewayProcess, dataplane_dump, free_port},
    harness::{BpffsDir, Sandbox},
};
use http::Method;
use http_body_util::BodyExt;
use serde_json::json;
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Polls `check` every millisecond until it holds; how long that took (panics after 5 s: the
/// bound is liveness, the figures are printed).
fn until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Whether a TLS client with this configuration gets an HTTP answer from `addr` (a fleet
/// listener asks for a client certificate: without a valid one, the connection ends).
async fn answers(addr: std::net::SocketAddr, config: rustls::ClientConfig, name: &str) -> bool {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else { return false };
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await else { return false };
    let request = b"GET / HTTP/1.1\r\nHost: sbx-web-acme.local.gw.test\r\n\r\n";
    if tls.write_all(request).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("ca").flatten() {
        roots.add(c).expect("root");
    }
    roots
}

fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca));
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).expect("cert").flatten().collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[test]
fn a_fleet_shares_tokens_previews_and_sandboxes_and_one_host_runs_each() {
    let etcd = EtcdCluster::start(3);
    let pki = fleet_pki(&["host-a", "host-b"]);
    let prefix = format!("/gateway-fleet-test-{}/", std::process::id());
    let (pins_a, pins_b) = (BpffsDir::new(), BpffsDir::new());
    let rt = runtime();
    let _rt = rt.enter();
    let mut a = GatewayProcess::enforcing(
        pins_a.path(),
        &fleet_section(&etcd.endpoints(), pki.path(), &prefix, "host-a", &format!("127.0.0.1:{}", free_port())),
    );
    a.spawn();
    let mut b = GatewayProcess::enforcing(
        pins_b.path(),
        &fleet_section(&etcd.endpoints(), pki.path(), &prefix, "host-b", &format!("127.0.0.1:{}", free_port())),
    );
    b.spawn();
    let (edge_a, edge_b) = (EdgeClient::new(&a), EdgeClient::new(&b));
    let sb = Sandbox::new();
    let _app = spawn_backend(&sb, sb.addr(), 3000, Speaks::Http1);
    let _preview_app = spawn_backend(&sb, sb.addr(), 4000, Speaks::Http1);
    let host = sandbox_host("web");

    // Registered on A: A runs it; B knows it, and names its host.
    let view = register(&a, WS, "web", &sb, &[(3000, "HTTP")]);
    assert_eq!(view["owner"], "host-a", "{view}");
    until("B knows the sandbox registered on A", || b.client().get("/v1/workspaces/acme/sandboxes/web").status == 200);
    let on_b = b.client().get("/v1/workspaces/acme/sandboxes/web");
    assert_eq!(on_b.json()["owner"], "host-a");
    b.client().get("/v1/workspaces/acme/sandboxes/web/policy").assert_error(409, "OWNED_BY_ANOTHER_HOST");
    let dump_a = dataplane_dump(pins_a.path()).to_string();
    assert!(dump_a.contains(&sb.addr().to_string()), "A programs its sandbox: {dump_a}");
    let dump_b = dataplane_dump(pins_b.path()).to_string();
    assert!(!dump_b.contains(&sb.addr().to_string()), "B does not: {dump_b}");

    // B cannot take it over: 409 naming A, nothing changed.
    let r =
        b.client().put_json("/v1/workspaces/acme/sandboxes/web", &sandbox_body(&sb, &[(3000, "HTTP"), (5000, "HTTP")]));
    let message = r.assert_error(409, "OWNED_BY_ANOTHER_HOST");
    assert!(message.to_string().contains("host-a"), "{message}");

    // A token made on B opens the sandbox through A, which runs it, and through B, which
    // forwards to A.
    let token = create_token(&b, WS, "ci");
    let bearer = format!("Bearer {token}");
    until("A accepts the token made on B", || {
        rt.block_on(edge_a.get(&host, "/port/3000/hello", &[("authorization", &bearer)])).status == 200
    });
    rt.block_on(async {
        let spoof = [
            ("authorization", bearer.as_str()),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-gw-fleet-client", "203.0.113.9:1"),
            ("x-gw-fleet-auth", "token acme/other"),
        ];
        for (edge, via) in [(&edge_a, "A"), (&edge_b, "B")] {
            let r = edge.get(&host, "/port/3000/hello?x=1", &spoof).await;
            assert_eq!(r.status, 200, "through {via}: {}", r.text());
            let echo = r.json();
            assert_eq!(echo["uri"], "/hello?x=1", "through {via}");
            let headers = echo["headers"].as_object().expect("headers");
            assert!(
                headers.keys().all(|k| !k.starts_with("x-gw-fleet-") && k != "authorization"),
                "through {via}, the app sees neither credentials nor fleet headers: {headers:?}"
            );
            assert_eq!(echo["headers"]["x-forwarded-for"], json!(["127.0.0.1"]), "through {via}: the client's address");
        }
        // A spoofed vouch is no credential on a public listener.
        let r = edge_b
            .get(
                &host,
                "/port/3000/hello",
                &[("x-gw-fleet-client", "127.0.0.1:1"), ("x-gw-fleet-auth", "token acme/ci")],
            )
            .await;
        r.assert_error(401, "AUTHENTICATION_REQUIRED");
        let r = edge_b.get(&host, "/port/3000/hello", &[("authorization", "Bearer gw_nope")]).await;
        r.assert_error(401, "AUTHENTICATION_FAILED");

        // HTTP/2 through B, SSE as the app writes it, WebSocket over HTTP/1.1 and HTTP/2.
        let mut h2 = edge_b.h2("any.local.gw.test").await;
        let req = build_h2(Method::GET, &host, "/port/3000/h2", &[("authorization", &bearer)], empty());
        let r = read_reply(h2.send_request(req).await.expect("h2")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let req = build_h2(Method::GET, &host, "/port/3000/sse", &[("authorization", &bearer)], empty());
        let response = h2.send_request(req).await.expect("sse");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("first event in time");
        assert_eq!(first.expect("frame").expect("ok").into_data().expect("data"), "data: first\n\n");
        _app.sse_release.notify_one();
        let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.expect("rest").expect("ok");
        assert_eq!(rest.to_bytes(), "data: second\n\n");

        let mut ws = open_websocket(&edge_b, &host, "/port/3000/ws", &bearer).await;
        ws.send(Message::text("over h1")).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        assert_eq!(back.expect("message").expect("ok").into_text().expect("text").as_str(), "over h1");
        let mut req = build_h2(
            Method::CONNECT,
            &host,
            "/port/3000/ws",
            &[("authorization", &bearer), ("sec-websocket-version", "13")],
            empty(),
        );
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let mut response = h2.send_request(req).await.expect("extended CONNECT");
        assert_eq!(response.status(), 200, "{response:?}");
        let upgraded = hyper::upgrade::on(&mut response).await.expect("upgraded");
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        ws.send(Message::text("over h2")).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        assert_eq!(back.expect("message").expect("ok").into_text().expect("text").as_str(), "over h2");

        // A connect-tcp tunnel through B, over HTTP/1.1 and HTTP/2: raw bytes to A's sandbox
        // (here an HTTP request written by hand, read back as bytes).
        let mut h1 = edge_b.h1(&host).await;
        let headers = [("authorization", bearer.as_str()), ("connection", "Upgrade"), ("upgrade", "connect-tcp")];
        let mut response =
            h1.send_request(build(Method::GET, &host, "/port/3000", &headers, empty())).await.expect("upgrade");
        assert_eq!(response.status(), 101, "{response:?}");
        raw_get_through(hyper::upgrade::on(&mut response).await.expect("upgraded"), "/raw-h1").await;
        let mut req = build_h2(Method::CONNECT, &host, "/port/3000", &[("authorization", &bearer)], empty());
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("connect-tcp"));
        let mut response = h2.send_request(req).await.expect("extended CONNECT");
        assert_eq!(response.status(), 200, "{response:?}");
        raw_get_through(hyper::upgrade::on(&mut response).await.expect("upgraded"), "/raw-h2").await;
    });

    // The fleet listener serves only the fleet's members.
    let fleet_a = fleet_listen(&a);
    let ca = pki.path().join("ca.pem");
    let other = fleet_pki(&["host-b"]);
    rt.block_on(async {
        let (cert, key) = (pki.path().join("host-b.pem"), pki.path().join("host-b.key"));
        assert!(answers(fleet_a, client_config(&ca, Some((&cert, &key))), "host-a").await, "a member is served");
        assert!(!answers(fleet_a, client_config(&ca, None), "host-a").await, "no client certificate");
        let (cert, key) = (other.path().join("host-b.pem"), other.path().join("host-b.key"));
        assert!(!answers(fleet_a, client_config(&ca, Some((&cert, &key))), "host-a").await, "another CA's certificate");
    });

    // Convergence of new tokens and revocations, A's admin API → B's edge, over 200 trials:
    // from the admin call's answer until B's edge answers accordingly (one HTTP/2 connection,
    // polled every millisecond; a probe with a live token goes on to A).
    let (mut created, mut revoked) = (Vec::new(), Vec::new());
    let probe = rt.block_on(edge_b.h2("any.local.gw.test"));
    for i in 0..200 {
        let name = format!("t{i}");
        let secret = create_token(&a, WS, &name);
        let bearer = format!("Bearer {secret}");
        let status = || {
            let req = build_h2(Method::GET, &host, "/port/3000/", &[("authorization", &bearer)], empty());
            let mut probe = probe.clone();
            rt.block_on(async move { probe.send_request(req).await.expect("probe").status() })
        };
        created.push(until("a new token accepted on B", || status() == 200));
        assert_eq!(a.client().delete(&format!("/v1/workspaces/acme/tokens/{name}")).status, 204);
        revoked.push(until("a revoked token refused on B", || status() == 401));
    }
    // A new sandbox registered on A, known to B's edge, over 200 trials: `/port/443/` is
    // refused 403 (a reserved port) once B knows the sandbox, 404 before; nothing is sent to
    // the sandbox (whose address leads nowhere).
    let mut sandboxes = Vec::new();
    for i in 0..200u32 {
        let name = format!("new-{i}");
        let mut body = sandbox_body(&sb, &[]);
        body["address"] = json!(format!("198.18.{}.{}", 202 + i / 250, 1 + i % 250));
        let r = a.client().put_json(&format!("/v1/workspaces/acme/sandboxes/{name}"), &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let host = sandbox_host(&name);
        let status = || {
            let req = build_h2(Method::GET, &host, "/port/443/", &[("authorization", &bearer)], empty());
            let mut probe = probe.clone();
            rt.block_on(async move { probe.send_request(req).await.expect("probe").status() })
        };
        sandboxes.push(until("a new sandbox known to B", || status() == 403));
        assert_eq!(a.client().delete(&format!("/v1/workspaces/acme/sandboxes/{name}")).status, 204);
    }
    created.sort();
    revoked.sort();
    sandboxes.sort();
    eprintln!(
        "convergence over 200 trials (admin answer on A → B's edge): new token p50 {:?} p99 {:?}; revocation p50 {:?} p99 {:?}; new sandbox p50 {:?} p99 {:?}",
        percentile(&created, 0.5),
        percentile(&created, 0.99),
        percentile(&revoked, 0.5),
        percentile(&revoked, 0.99),
        percentile(&sandboxes, 0.5),
        percentile(&sandboxes, 0.99)
    );

    // A public preview made on B opens its port in A's kernel; its URL is the same on both.
    let r =
        b.client().put_json("/v1/workspaces/acme/sandboxes/web/previews/site", &json!({"port": 4000, "public": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let preview = r.json();
    let preview_host = preview["url"]
        .as_str()
        .expect("url")
        .trim_start_matches("https://")
        .split(':')
        .next()
        .expect("host")
        .to_string();
    // Read your writes holds on the gateway written to; the other one converges (milliseconds).
    until("A knows the preview made on B", || {
        a.client().get("/v1/workspaces/acme/sandboxes/web/previews/site").status == 200
    });
    let on_a = a.client().get("/v1/workspaces/acme/sandboxes/web/previews/site");
    assert_eq!(on_a.json()["id"], preview["id"], "one preview id (host name) fleet-wide");
    until("A serves the preview made on B", || rt.block_on(edge_a.get(&preview_host, "/", &[])).status == 200);
    let r = rt.block_on(edge_b.get(&preview_host, "/through-b", &[]));
    assert_eq!(
        (r.status.as_u16(), r.json()["port"].clone()),
        (200, json!(4000)),
        "B forwards the preview: {}",
        r.text()
    );
    let policy = a.client().get("/v1/workspaces/acme/sandboxes/web/policy").json();
    assert!(policy.to_string().contains("4000"), "A's kernel opened the preview's port: {policy}");

    // Two hosts registering one new sandbox at once: exactly one wins, the other gets 409.
    for i in 0..10 {
        let path = format!("/v1/workspaces/acme/sandboxes/race-{i}");
        let mut body = sandbox_body(&sb, &[]);
        // An address of its own: the race is about the name, not a clash with "web" on one host.
        body["address"] = json!(format!("198.18.200.{}", i + 1));
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| a.client().put_json(&path, &body));
            let tb = s.spawn(|| b.client().put_json(&path, &body));
            (ta.join().expect("a"), tb.join().expect("b"))
        });
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "race {i}: A {} / B {}", ra.text(), rb.text());
        let winner = if ra.status == 200 { &a } else { &b };
        assert_eq!(winner.client().delete(&path).status, 204);
    }

    // What each member says of the fleet: admin API, CLI, metrics.
    let view = b.client().get("/v1/fleet").json();
    assert_eq!(view["host"], "host-b", "{view}");
    assert!(
        view["revision"].as_i64().unwrap_or(0) > 0 && view["staleForMs"].as_u64().unwrap_or(u64::MAX) < 5_000,
        "{view}"
    );
    let peers: Vec<(String, bool)> = view["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| (p["host"].as_str().unwrap_or_default().to_string(), p["alive"] == true))
        .collect();
    assert_eq!(peers, [("host-a".to_string(), true), ("host-b".to_string(), true)], "{view}");
    let out = b.cli("fleet", &["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("host-a") && table.contains("alive"), "{table}");
    let metrics = b.anonymous_client().get("/metrics").text();
    for needle in [
        "gateway_fleet_forwarded_requests_total{peer=\"host-a\",result=\"ok\"}",
        "gateway_fleet_replica_revision ",
        "gateway_fleet_replica_last_news_timestamp_seconds ",
    ] {
        assert!(metrics.contains(needle), "no {needle} in /metrics:\n{metrics}");
    }

    // Deleted through B: A's kernel forgets it.
    assert_eq!(b.client().delete("/v1/workspaces/acme/sandboxes/web").status, 204);
    until("A removed the deleted sandbox from its kernel", || {
        !dataplane_dump(pins_a.path()).to_string().contains(&sb.addr().to_string())
    });
    a.client().get("/v1/workspaces/acme/sandboxes/web").assert_error(404, "WORKLOAD_NOT_FOUND");

    // A stopped owner: B answers 503 naming it at once (its host key is removed at shutdown).
    let sb2 = Sandbox::new();
    register(&a, WS, "other", &sb2, &[(3000, "HTTP")]);
    let other_host = sandbox_host("other");
    until("B knows A's new sandbox", || b.client().get("/v1/workspaces/acme/sandboxes/other").status == 200);
    a.stop();
    let took = until("B answers 503 for the stopped owner", || {
        let r = rt.block_on(edge_b.get(&other_host, "/port/3000/", &[("authorization", &bearer)]));
        r.status == 503 && r.text().contains("host-a") && r.text().contains("down")
    });
    assert!(took < Duration::from_secs(2), "at once, not after a timeout: {took:?}");
    let view = b.client().get("/v1/fleet").json();
    let a_view = view["peers"].as_array().expect("peers").iter().find(|p| p["host"] == "host-a").cloned();
    assert_eq!(a_view, Some(json!({"host": "host-a", "alive": false})), "{view}");
}

/// The fleet listener's address from a gateway's configuration.
fn fleet_listen(gw: &GatewayProcess) -> std::net::SocketAddr {
    let config = std::fs::read_to_string(gw.config_path()).expect("config");
    let line = config.lines().find(|l| l.starts_with("listen = \"127.0.0.1:")).expect("fleet.listen");
    line.trim_start_matches("listen = \"").trim_end_matches('"').parse().expect("address")
}

/// Writes an HTTP/1.1 request for `path` into a raw tunnel to the echo backend and checks its
/// answer names the path.
async fn raw_get_through(tunnel: hyper::upgrade::Upgraded, path: &str) {
    let mut io = hyper_util::rt::TokioIo::new(tunnel);
    let request = format!("GET {path} HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n");
    io.write_all(request.as_bytes()).await.expect("write through the tunnel");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut answer))
        .await
        .expect("the app's answer in time")
        .expect("read through the tunnel");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(path), "the app saw the raw request: {text}");
}
