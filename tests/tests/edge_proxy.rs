//! The HTTPS edge end to end, proxying: WebSocket (HTTP/1.1 upgrade and HTTP/2 extended
//! CONNECT), SSE, 1 GiB streamed both ways with bounded gateway memory, gRPC and h2c to an h2c
//! backend, and the 502/504 answers. Real TLS, data plane enabled, sandboxes in namespaces.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test edge_proxy -- --test-threads=1`.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_tests::{edge::*, env::Env};
use http::Method;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

async fn echo_round_trips(ws: &mut WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) {
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        assert_eq!(back.expect("message").expect("ok").into_text().expect("text").as_str(), text);
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.expect("send");
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
    assert_eq!(back.expect("message").expect("ok").into_data().as_ref(), &big[..]);
}

#[test]
fn websocket_echo_over_http1_and_http2() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("proxy").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);

    rt.block_on(async {
        // HTTP/1.1 Upgrade.
        let mut conn = e.client.h1(&e.host).await;
        let req = build(
            Method::GET,
            &e.host,
            "/port/3000/ws",
            &[
                ("authorization", &e.bearer),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", KEY),
            ],
            empty(),
        );
        let mut response = conn.send_request(req).await.expect("send");
        assert_eq!(response.status(), 101, "{response:?}");
        assert_eq!(response.headers()["sec-websocket-accept"], derive_accept_key(KEY.as_bytes()).as_str());
        let upgraded = hyper::upgrade::on(&mut response).await.expect("upgraded");
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        echo_round_trips(&mut ws).await;
        ws.close(None).await.expect("close");

        // HTTP/2 extended CONNECT (RFC 8441), translated to an HTTP/1.1 upgrade towards the app.
        let mut h2 = e.client.h2("any.local.gw.test").await;
        let mut req = build_h2(
            Method::CONNECT,
            &e.host,
            "/port/3000/ws",
            &[("authorization", &e.bearer), ("sec-websocket-version", "13")],
            empty(),
        );
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let mut response = h2.send_request(req).await.expect("extended CONNECT");
        assert_eq!(response.status(), 200, "{response:?}");
        let upgraded = hyper::upgrade::on(&mut response).await.expect("upgraded h2 stream");
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        echo_round_trips(&mut ws).await;
        // The same h2 connection still serves plain requests.
        let req = build_h2(Method::GET, &e.host, "/port/3000/after", &[("authorization", &e.bearer)], empty());
        assert_eq!(read_reply(h2.send_request(req).await.expect("send")).await.status, 200);
    });
    drop(app);
}

#[test]
fn nothing_is_forwarded_after_an_upgrade_request_unless_the_app_answered_101() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("proxy").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);

    let raw = rt.block_on(async {
        let mut tls = e.client.tls(&e.host, Alpn::H1).await.expect("tls");
        // An upgrade the app refuses, immediately followed (same write) by a second request
        // without credentials: it must be parsed by the gateway as HTTP, not tunnelled.
        let bytes = format!(
            "GET /port/3000/ws-refuse HTTP/1.1\r\nHost: {h}\r\nAuthorization: {b}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\nGET /port/3000/smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n",
            h = e.host,
            b = e.bearer
        );
        tls.write_all(bytes.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let text = String::from_utf8_lossy(&out).to_string();
            if text.matches("HTTP/1.1 ").count() >= 2 && text.contains("AUTHENTICATION_REQUIRED") {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).to_string()
    });
    assert!(raw.starts_with("HTTP/1.1 403"), "the app's refusal is relayed: {raw}");
    assert!(raw.contains("AUTHENTICATION_REQUIRED"), "the next bytes are a request the gateway checks: {raw}");
    let paths = app.paths.lock().expect("paths").clone();
    assert_eq!(paths, vec!["/ws-refuse".to_string()], "nothing smuggled to the app");
}

/// An app cannot set a cookie for the region (cookie tossing to every other sandbox and
/// preview): the `Domain` attribute of its `Set-Cookie` headers is removed over HTTP/1.1 and
/// HTTP/2 alike, the rest of each cookie and the other headers arrive as the app sent them.
#[test]
fn app_cookies_are_host_only() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("proxy").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let want = ["tossed=1; Path=/; HttpOnly", "session=abc; Path=/; Secure", "own=2; Path=/"];
    rt.block_on(async {
        let r = e.client.get(&e.host, "/port/3000/set-cookie", &[("authorization", &e.bearer)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let got: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().expect("ascii")).collect();
        assert_eq!(got, want, "HTTP/1.1");
        assert_eq!(r.text(), "cookies");
        let mut h2 = e.client.h2(&e.host).await;
        let req = build_h2(Method::GET, &e.host, "/port/3000/set-cookie", &[("authorization", &e.bearer)], empty());
        let r = read_reply(h2.send_request(req).await.expect("send")).await;
        let got: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().expect("ascii")).collect();
        assert_eq!(got, want, "HTTP/2");
    });
}

#[test]
fn sse_events_arrive_before_the_stream_ends() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("proxy").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);

    rt.block_on(async {
        for h2 in [false, true] {
            let headers = [("authorization", e.bearer.as_str()), ("accept", "text/event-stream")];
            let response = if h2 {
                let mut c = e.client.h2("any.local.gw.test").await;
                c.send_request(build_h2(Method::GET, &e.host, "/port/3000/sse", &headers, empty())).await
            } else {
                let mut c = e.client.h1(&e.host).await;
                c.send_request(build(Method::GET, &e.host, "/port/3000/sse", &headers, empty())).await
            }
            .expect("send");
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut body = response.into_body();
            // The app holds the second event until released: the first must arrive on its own.
            let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("first event not delivered before the stream ended (h2={h2})"))
                .expect("frame")
                .expect("ok");
            assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"data: first\n\n"));
            assert!(!hyper::body::Body::is_end_stream(&body));
            app.sse_release.notify_one();
            let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.expect("rest").expect("ok");
            assert_eq!(rest.to_bytes(), Bytes::from_static(b"data: second\n\n"));
        }
    });
}

#[test]
fn a_gibibyte_streams_both_ways_with_bounded_gateway_memory() {
    const GIB: u64 = 1 << 30;
    const BOUND_KIB: u64 = 12 * 1024;
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("proxy").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let pid = e.gw.pid().expect("pid");

    let upload = |len: u64| {
        let (client, host, bearer) = (e.client.clone(), e.host.clone(), e.bearer.clone());
        async move {
            let mut c = client.h1(&host).await;
            let req = build(
                Method::POST,
                &host,
                "/port/3000/upload",
                &[("authorization", &bearer)],
                PatternBody::new(len).boxed(),
            );
            let r = read_reply(c.send_request(req).await.expect("send")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["bytes"].as_u64().expect("bytes")
        }
    };
    let download = |len: u64| {
        let (client, host, bearer) = (e.client.clone(), e.host.clone(), e.bearer.clone());
        async move {
            let mut c = client.h1(&host).await;
            let req = build(
                Method::GET,
                &host,
                &format!("/port/3000/download/{len}"),
                &[("authorization", &bearer)],
                empty(),
            );
            let response = c.send_request(req).await.expect("send");
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                n += frame.expect("frame").data_ref().map(|d| d.len() as u64).unwrap_or(0);
            }
            n
        }
    };
    rt.block_on(async {
        // Warm up (allocator arenas, pools, TLS buffers), then measure from there.
        assert_eq!(upload(32 << 20).await, 32 << 20);
        assert_eq!(download(32 << 20).await, 32 << 20);
    });
    let baseline = vm_rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    rt.block_on(async {
        let (up, down) = tokio::join!(upload(GIB), download(GIB));
        assert_eq!(up, GIB, "upload complete");
        assert_eq!(down, GIB, "download complete");
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "1 GiB up and 1 GiB down concurrently in {:.1} s; gateway RSS baseline {baseline} KiB, peak growth {growth} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(growth <= BOUND_KIB, "gateway RSS grew by {growth} KiB (> {BOUND_KIB} KiB) while streaming");
}

#[test]
fn grpc_and_h2c_reach_an_h2c_backend() {
    let e = Env::new().sandbox("web", &[(50051, "GRPC"), (8081, "HTTP2")]).token("proxy").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let _grpc = spawn_backend(sb, sb.addr(), 50051, Speaks::H2c);
    let _h2c = spawn_backend(sb, sb.addr(), 8081, Speaks::H2c);

    rt.block_on(async {
        let mut h2 = e.client.h2("any.local.gw.test").await;
        for i in 0..3 {
            let message = format!("hello {i}");
            let req = build_h2(
                Method::POST,
                &e.host,
                "/port/50051/grpc.Echo/Say",
                &[("authorization", &e.bearer), ("content-type", "application/grpc"), ("te", "trailers")],
                full(grpc_frame(message.as_bytes())),
            );
            let response = h2.send_request(req).await.expect("send");
            assert_eq!(response.status(), 200);
            let h = response.headers().clone();
            assert_eq!(h["content-type"], "application/grpc");
            assert_eq!(h["x-seen-version"], "HTTP/2.0", "h2c towards the app");
            assert_eq!(h["x-seen-te"], "trailers");
            assert_eq!(h["x-seen-authority"], e.host.as_str(), ":authority preserved");
            let collected = response.into_body().collect().await.expect("body");
            let trailers = collected.trailers().cloned().expect("gRPC trailers relayed");
            assert_eq!(trailers["grpc-status"], "0");
            let data = collected.to_bytes();
            assert_eq!(grpc_unframe(&data), Some(format!("echo: {message}").as_bytes()));
        }
        // An HTTP/1.1 client reaching an HTTP2 port: the gateway speaks h2c to the app.
        let r = e.client.get(&e.host, "/port/8081/plain?x=1", &[("authorization", &e.bearer)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["version"], "HTTP/2.0", "{v}");
        assert_eq!(v["uri"], "/plain?x=1", "{v}");
        assert_eq!(v["authority"], e.host.as_str(), "{v}");
    });
}

#[test]
fn upstream_failures_say_what_is_wrong() {
    let e = Env::new()
        .config("[proxy]\nconnect_timeout = \"1s\"\nresponse_timeout = \"1s\"\n")
        .sandbox("web", &[(3000, "HTTP"), (3001, "HTTP"), (3002, "HTTP"), (3003, "HTTP"), (3004, "HTTP")])
        .token("proxy")
        .start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let _local_only = spawn_backend(sb, Ipv4Addr::LOCALHOST, 3002, Speaks::Http1);
    // Port 3003 drops SYNs inside the sandbox: the connection times out.
    sb.ns
        .exec(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "3003", "-j", "DROP"])
        .expect("iptables in the sandbox");
    let auth = [("authorization", e.bearer.as_str())];

    rt.block_on(async {
        // Nothing listening.
        let m = e.client.get(&e.host, "/port/3001/", &auth).await.assert_error(502, "BAD_GATEWAY");
        assert!(m.contains("0.0.0.0:3001") && m.contains("127.0.0.1") && m.contains("refused"), "{m}");
        // Listening on 127.0.0.1 only inside the sandbox.
        let m = e.client.get(&e.host, "/port/3002/", &auth).await.assert_error(502, "BAD_GATEWAY");
        assert!(m.contains("0.0.0.0:3002") && m.contains("refused"), "{m}");
        // Connect timeout.
        let started = Instant::now();
        let m = e.client.get(&e.host, "/port/3003/", &auth).await.assert_error(502, "BAD_GATEWAY");
        assert!(m.contains("timed out") && m.contains("0.0.0.0:3003"), "{m}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The app accepts but answers too late.
        let m = e.client.get(&e.host, "/port/3000/slow/3000", &auth).await.assert_error(504, "GATEWAY_TIMEOUT");
        assert!(m.contains("3000"), "{m}");
        // Browsers get a page.
        let r = e
            .client
            .get(&e.host, "/port/3001/", &[auth[0], ("accept", "text/html,application/xhtml+xml,*/*;q=0.8")])
            .await;
        assert_eq!(r.status, 502);
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        assert!(r.text().contains("0.0.0.0:3001"), "{}", r.text());
    });
}

#[test]
fn wait_for_port_holds_the_first_request_while_the_app_starts() {
    let e = Env::new()
        .config("[proxy]\nwait_for_port = \"3s\"\n")
        .sandbox("web", &[(3000, "HTTP"), (3001, "HTTP")])
        .token("proxy")
        .start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let auth = [("authorization", e.bearer.as_str())];
    rt.block_on(async {
        let started = Instant::now();
        let late = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            spawn_backend(sb, sb.addr(), 3000, Speaks::Http1)
        };
        let (r, _app) = tokio::join!(e.client.get(&e.host, "/port/3000/late", &auth), late);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(started.elapsed() >= Duration::from_millis(700));
        // Never listening: 502 after the wait, saying so.
        let started = Instant::now();
        let m = e.client.get(&e.host, "/port/3001/", &auth).await.assert_error(502, "BAD_GATEWAY");
        assert!(started.elapsed() >= Duration::from_millis(2000), "{:?}", started.elapsed());
        assert!(m.contains("retried"), "{m}");
    });
}
