//! The HTTPS edge end to end, limits and timeouts: connection caps (429 with Retry-After),
//! slow clients (header read timeout, stalled TLS handshake), idle connections and tunnels,
//! oversized request heads. Real TLS, data plane enabled, sandboxes in namespaces.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test edge_limits -- --test-threads=1`.

use futures_util::{SinkExt, StreamExt};
use gateway_tests::{edge::*, env::Env, harness::Sandbox};
use http::Method;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[test]
fn per_sandbox_cap_answers_429_with_retry_after() {
    let e = Env::new()
        .config("[proxy]\nmax_connections_per_sandbox = 2\n")
        .sandbox("busy", &[(3000, "HTTP")])
        .token("caps")
        .start();
    let Env { gw, client: c, rt, bearer, .. } = &e;
    let busy = e.sb();
    let _rt = rt.enter();
    let calm = Sandbox::new();
    register(gw, WS, "calm", &calm, &[(3000, "HTTP")]);
    let _a = spawn_backend(busy, busy.addr(), 3000, Speaks::Http1);
    let _b = spawn_backend(&calm, calm.addr(), 3000, Speaks::Http1);

    rt.block_on(async {
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let (c, bearer) = (c.clone(), bearer.clone());
                tokio::spawn(async move {
                    c.get(&sandbox_host("busy"), "/port/3000/slow/2000", &[("authorization", &bearer)]).await.status
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = c.get(&sandbox_host("busy"), "/port/3000/", &[("authorization", bearer)]).await;
        let m = r.assert_error(429, "TOO_MANY_REQUESTS");
        assert_eq!(r.headers["retry-after"], "1");
        assert!(m.contains("busy"), "{m}");
        // Other sandboxes are not affected.
        assert_eq!(c.get(&sandbox_host("calm"), "/port/3000/", &[("authorization", bearer)]).await.status, 200);
        for t in slow {
            assert_eq!(t.await.expect("task"), 200);
        }
        // Slots are released when the responses end.
        assert_eq!(c.get(&sandbox_host("busy"), "/port/3000/", &[("authorization", bearer)]).await.status, 200);
    });
}

/// `proxy.listen_backlog` is the HTTPS listener's accept queue (what `ss` shows as Send-Q of a
/// listening socket), default 4096: a burst of connections waits there instead of having its
/// SYNs dropped.
#[test]
fn the_listen_backlog_is_configured() {
    let backlog = |e: Env| -> u32 {
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{}", e.gw.https_port())])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let cols: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(cols.first(), Some(&"LISTEN"), "ss: {text}");
        cols[2].parse().unwrap_or_else(|_| panic!("ss: {text}"))
    };
    assert_eq!(backlog(Env::new().start()), 4096);
    assert_eq!(backlog(Env::new().config("[proxy]\nlisten_backlog = 100\n").start()), 100);
}

#[test]
fn total_connection_cap_answers_429_with_retry_after() {
    let e = Env::new().config("[proxy]\nmax_connections = 3\n").start();
    let Env { client: c, rt, .. } = &e;
    let _rt = rt.enter();
    let host = sandbox_host("web");
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = c.h1(&host).await;
            let r = send1(&mut conn, build(Method::GET, &host, "/", &[], empty())).await;
            r.assert_error(404, "WORKLOAD_NOT_FOUND");
            held.push(conn);
        }
        let r = c.get(&host, "/", &[]).await;
        r.assert_error(429, "TOO_MANY_REQUESTS");
        assert_eq!(r.headers["retry-after"], "1");
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.get(&host, "/", &[]).await.assert_error(404, "WORKLOAD_NOT_FOUND");
    });
}

#[test]
fn slow_clients_are_cut_after_the_header_read_timeout() {
    let e = Env::new().config("[proxy]\nheader_read_timeout = \"1s\"\n").start();
    let Env { gw, client: c, rt, .. } = &e;
    let _rt = rt.enter();
    let host = sandbox_host("web");
    rt.block_on(async {
        // Slowloris: a request head trickled one byte every 200 ms never completes.
        let mut tls = c.tls(&host, Alpn::H1).await.expect("tls");
        tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes()).await.expect("write");
        let (mut reader, mut writer) = tokio::io::split(tls);
        let trickle = tokio::spawn(async move {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if writer.write_all(b"X").await.is_err() || writer.flush().await.is_err() {
                    return;
                }
            }
        });
        let closed = until_closed(&mut reader, Duration::from_secs(6)).await;
        trickle.abort();
        let closed = closed.expect("the slow client was not cut");
        assert!(closed >= Duration::from_millis(700) && closed <= Duration::from_secs(4), "cut after {closed:?}");

        // A TCP connection that never starts its TLS handshake.
        let mut tcp = tokio::net::TcpStream::connect(gw.https_addr()).await.expect("connect");
        let closed = until_closed(&mut tcp, Duration::from_secs(6)).await.expect("the stalled handshake was not cut");
        assert!(closed >= Duration::from_millis(700) && closed <= Duration::from_secs(4), "cut after {closed:?}");

        // A normal client is unaffected.
        c.get(&host, "/", &[]).await.assert_error(404, "WORKLOAD_NOT_FOUND");
    });
}

#[test]
fn idle_connections_and_tunnels_are_closed_after_the_idle_timeout() {
    let e =
        Env::new().config("[proxy]\nidle_timeout = \"2s\"\n").sandbox("web", &[(3000, "HTTP")]).token("idle").start();
    let Env { client: c, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);

    let open_ws = |c: EdgeClient, host: String, bearer: String| async move {
        open_websocket(&c, &host, "/port/3000/ws", &bearer).await
    };

    rt.block_on(async {
        // A kept-alive HTTP connection left idle.
        let mut tls = c.tls(host, Alpn::H1).await.expect("tls");
        tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.expect("write");
        let closed = until_closed(&mut tls, Duration::from_secs(6)).await.expect("idle connection not closed");
        assert!(closed >= Duration::from_millis(1500), "closed after {closed:?}");

        // An idle WebSocket is closed; an active one is not.
        let mut idle = open_ws(c.clone(), host.clone(), bearer.clone()).await;
        let mut active = open_ws(c.clone(), host.clone(), bearer.clone()).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            active.send(Message::text("ping")).await.expect("active tunnel still open");
            let echo = tokio::time::timeout(Duration::from_secs(2), active.next()).await.expect("echo");
            assert!(echo.is_some_and(|m| m.is_ok()), "active tunnel echoed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let end = tokio::time::timeout(Duration::from_secs(1), idle.next()).await.expect("idle tunnel ended");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "idle tunnel closed: {end:?}");
    });
}

#[test]
fn oversized_request_heads_are_refused() {
    let e = Env::new().config("[proxy]\nmax_header_bytes = 16384\n").start();
    let Env { client: c, rt, .. } = &e;
    let _rt = rt.enter();
    let host = sandbox_host("web");
    rt.block_on(async {
        let big = "x".repeat(32 * 1024);
        let mut tls = c.tls(&host, Alpn::H1).await.expect("tls");
        tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n").as_bytes()).await.ok();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        // Within the limit: served.
        c.get(&host, "/", &[("x-ok", &"y".repeat(8 * 1024))]).await.assert_error(404, "WORKLOAD_NOT_FOUND");
    });
}
