//! `GET /metrics` of a real gateway enforcing in the kernel: Prometheus text, the eBPF verdict
//! counters read from the per-CPU maps at scrape time move with real packets in a namespace,
//! and the control-plane metrics (policy apply, state writes) move with admin calls.

use gateway::telemetry::metrics::sum_samples;
use gateway_tests::{env::Env, gateway_process::*, harness::*};
use std::time::{Duration, Instant};

const MARK: u32 = 0x6777;

fn scrape(gw: &GatewayProcess) -> String {
    let r = gw.anonymous_client().get("/metrics");
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content type {ct:?}");
    r.text()
}

/// Every sample line is `name{labels} value` or `name value`, with a numeric value, and every
/// metric has HELP and TYPE lines.
fn assert_well_formed(text: &str) {
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap_or_default().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "non-numeric value in {line:?}");
        let name = series.split('{').next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.contains(*b))
            .unwrap_or(name);
        assert!(typed.contains(base), "{name} has no # TYPE line");
    }
}

fn verdicts(text: &str, hook: &str, reason: &str) -> u64 {
    sum_samples(text, "gateway_dataplane_verdicts_total", &[("hook", hook), ("reason", reason)])
}

#[test]
fn metrics_show_kernel_verdicts_and_control_plane_work() {
    let e = Env::new().unregistered_sandbox("app").start();
    let Env { gw, .. } = &e;
    let sb = e.sb();
    let _apps: Vec<Listener> = [3000, 3001].iter().map(|p| spawn_tcp_echo(sb, sb.sock(*p))).collect();

    let before = scrape(gw);
    assert_well_formed(&before);
    assert!(before.contains("gateway_dataplane_up 1"), "the pinned maps are read:\n{before}");
    assert!(before.contains("gateway_build_info{version="), "{before}");

    e.register(&[(3000, "HTTP")]);

    let registered = scrape(gw);
    assert!(
        sum_samples(&registered, "gateway_policy_apply_seconds_count", &[])
            > sum_samples(&before, "gateway_policy_apply_seconds_count", &[]),
        "policy apply observed:\n{registered}"
    );
    assert!(
        sum_samples(&registered, "gateway_state_writes_total", &[("op", "write"), ("result", "ok")])
            > sum_samples(&before, "gateway_state_writes_total", &[("op", "write"), ("result", "ok")]),
        "state write counted:\n{registered}"
    );
    assert_eq!(sum_samples(&registered, "gateway_dataplane_entries", &[("map", "sandboxes")]), 1);
    assert_eq!(sum_samples(&registered, "gateway_dataplane_entries", &[("map", "policy")]), 1);

    // Allowed: the gateway's mark to a declared port. Dropped: no mark; an undeclared port.
    const N: u64 = 3;
    for _ in 0..N {
        drop(assert_reachable(Origin::host_marked(MARK), sb.sock(3000), "declared port, marked"));
    }
    assert_unreachable(Origin::host(), sb.sock(3000), "declared port, unmarked");
    assert_unreachable(Origin::host_marked(MARK), sb.sock(3001), "undeclared port, marked");

    let after = scrape(gw);
    assert_well_formed(&after);
    let moved = |reason: &str| verdicts(&after, "sandbox_in", reason) - verdicts(&registered, "sandbox_in", reason);
    assert!(moved("pass_allowed") >= N, "pass_allowed moved by {} (want ≥ {N}):\n{after}", moved("pass_allowed"));
    // A dropped SYN is retransmitted while the client waits: at least one drop each.
    assert!(moved("drop_not_from_gateway") >= 1, "drop_not_from_gateway did not move:\n{after}");
    assert!(moved("drop_port_closed") >= 1, "drop_port_closed did not move:\n{after}");
    assert!(
        sum_samples(&after, "gateway_dataplane_verdicts_total", &[("verdict", "drop")])
            > sum_samples(&registered, "gateway_dataplane_verdicts_total", &[("verdict", "drop")])
    );
}

/// The HTTPS edge's hooks: requests by route, status and workspace; upstream latency;
/// connections; TLS handshakes and failures; WebSockets open while they are.
#[test]
fn edge_requests_connections_tls_and_websockets_are_counted() {
    use gateway_tests::edge::*;
    use tokio::io::AsyncWriteExt;

    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("metrics").start();
    let Env { gw, client, rt, host, bearer, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    let before = scrape(gw);

    rt.block_on(async {
        for _ in 0..3 {
            let r = client.get(host, "/port/3000/hello", &[("authorization", bearer)]).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = client.get(host, "/port/3000/hello", &[]).await;
        assert_eq!(r.status, 401);
        // Not TLS at all: a failed handshake.
        let mut raw = tokio::net::TcpStream::connect(gw.https_addr()).await.expect("connect");
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink))
            .await;

        // A WebSocket, open while we scrape.
        let io = open_websocket(client, host, "/port/3000/ws", bearer).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let during = scrape(gw);
            if sum_samples(&during, "gateway_websockets_open", &[]) == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "websockets_open never reached 1:\n{during}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(io);
    });

    let after = scrape(gw);
    assert_well_formed(&after);
    let delta =
        |name: &str, labels: &[(&str, &str)]| sum_samples(&after, name, labels) - sum_samples(&before, name, labels);
    assert_eq!(
        delta("gateway_requests_total", &[("route", "port"), ("status", "200"), ("workspace", "acme")]),
        3,
        "{after}"
    );
    assert_eq!(
        delta("gateway_requests_total", &[("route", "port"), ("status", "401"), ("workspace", "acme")]),
        1,
        "{after}"
    );
    assert!(delta("gateway_requests_total", &[("status", "101")]) >= 1, "{after}");
    assert!(delta("gateway_upstream_latency_seconds_count", &[("route", "port")]) >= 3, "{after}");
    assert!(delta("gateway_tls_handshakes_total", &[("result", "ok")]) >= 5, "{after}");
    assert!(delta("gateway_tls_handshakes_total", &[("result", "error")]) >= 1, "{after}");
    assert!(delta("gateway_connections_total", &[]) >= 6, "{after}");
    assert_eq!(delta("gateway_websockets_total", &[]), 1, "{after}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sum_samples(&scrape(gw), "gateway_websockets_open", &[]) != 0 {
        assert!(Instant::now() < deadline, "the WebSocket is still counted as open");
        std::thread::sleep(Duration::from_millis(20));
    }
}
